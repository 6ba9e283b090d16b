"""TOPCAT (Debian package, under Xvfb) loads a lightcurve from our service over SAMP.

A real SAMP hub (pyvo's) on loopback, TOPCAT started with ``-samp -nohub``, and a pyvo
SAMP client in the test sending ``table.load.votable`` with the lightcurve URL; TOPCAT's
own ``table.get.stil`` then hands back what it loaded, whose rows we count.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from astropy.io.votable import parse_single_table

TOPCAT_JAR = Path("/usr/share/java/starlink-topcat.jar")
needs_topcat = pytest.mark.skipif(
    not (TOPCAT_JAR.exists() and shutil.which("Xvfb") and shutil.which("java")),
    reason="TOPCAT and Xvfb not installed (apt-get install topcat xvfb)",
)


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def topcat(tmp_path_factory):
    """Xvfb + pyvo SAMP hub + TOPCAT; yields a connected pyvo SAMP client and TOPCAT's id."""
    from pyvo.samp import SAMPHubServer, SAMPIntegratedClient
    from pyvo.samp.lockfile_helpers import read_lockfile

    root = tmp_path_factory.mktemp("samp")
    home = root / "home"
    home.mkdir()
    lockfile = home / ".samp"
    procs = []
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x900x24", "-nolisten",
         "tcp", "-noreset"],
        pass_fds=(write_fd,), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    procs.append(xvfb)
    os.close(write_fd)
    display = os.read(read_fd, 16).decode().strip()
    os.close(read_fd)
    hub = SAMPHubServer(lockfile=str(lockfile), web_profile=False, addr="127.0.0.1")
    hub.start()
    env = {**os.environ, "DISPLAY": f":{display}", "HOME": str(home),
           "SAMP_HUB": f"std-lockurl:file://{lockfile}"}  # fmt: skip
    client = SAMPIntegratedClient(name="romerea-vo test", addr="127.0.0.1")
    try:
        client.connect(hub_params=read_lockfile(str(lockfile)))
        topcat_proc = subprocess.Popen(
            ["java", "-Xmx512m", f"-Duser.home={home}", "-cp", str(TOPCAT_JAR),
             "uk.ac.starlink.topcat.Driver", "-samp", "-nohub"],
            env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(topcat_proc)

        def topcat_id():
            for cid in client.get_registered_clients():
                meta = client.get_metadata(cid)
                if meta.get("samp.name", "").lower() == "topcat":
                    subs = client.get_subscriptions(cid)
                    if "table.load.votable" in subs and "table.get.stil" in subs:
                        return cid
            return None

        yield client, _wait(topcat_id, 180, "TOPCAT to register with the hub")
    finally:
        if client.is_connected:
            client.disconnect()
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        hub.stop()


def count_rows(url: str) -> int:
    with urllib.request.urlopen(url, timeout=60) as resp:
        data = resp.read()
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"romerea-count-{os.getpid()}.vot"
    path.write_bytes(data)
    try:
        return len(parse_single_table(str(path)).array)
    finally:
        path.unlink()


@needs_topcat
def test_topcat_loads_a_lightcurve_over_samp(topcat, tap_server):
    client, topcat_id = topcat
    url = f"{tap_server}/lightcurve?ID=ivo://romerea-vo.local/rome?ROME-FIELD-01/3"
    expected = count_rows(url)
    assert expected > 10
    reply = client.call_and_wait(
        topcat_id,
        {"samp.mtype": "table.load.votable",
         "samp.params": {"url": url, "table-id": "rome-lc-3", "name": "ROME-FIELD-01 3 lc"}},
        "120",
    )  # fmt: skip
    assert reply["samp.status"] == "samp.ok", reply

    def loaded():
        # TOPCAT answers samp.ok before the table is in its list (see vo_clients gotchas)
        r = client.call_and_wait(
            topcat_id,
            {"samp.mtype": "table.get.stil",
             "samp.params": {"format": "votable", "index": "0"}},
            "60",
        )  # fmt: skip
        return r.get("samp.result", {}).get("url") if r["samp.status"] == "samp.ok" else None

    held = _wait(loaded, 30, "TOPCAT to hold the table")
    assert count_rows(held) == expected
