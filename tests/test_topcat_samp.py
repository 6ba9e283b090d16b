"""TOPCAT (Debian package, under Xvfb) loads a lightcurve from our service over SAMP.

A real SAMP hub (pyvo's) on loopback, TOPCAT started with ``-samp -nohub``, and a pyvo
SAMP client in the test sending ``table.load.votable`` with the lightcurve URL; TOPCAT's
own ``table.get.stil`` then hands back what it loaded, whose rows we count.
"""

from __future__ import annotations

import os
import shutil
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
    client, topcat_id, _ = topcat
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
