"""`romerea-vo ingest`, `serve` and `demo` as a user runs them: real processes, real HTTP."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import pyvo

from tests.test_cli import run_cli
from tests.test_service_examples import check_examples


def start_service(*args: str, env=None) -> tuple[subprocess.Popen, str]:
    """Start ``romerea-vo <args> --port 0`` and return it with its TAP URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "romerea_vo.cli", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("TAP service:"):
            return proc, line.split()[2]
        if time.time() > deadline:
            break
    proc.kill()
    raise AssertionError("service did not start:\n" + "".join(lines))


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def count_stars(tap_url: str) -> dict[str, int]:
    r = httpx.get(
        f"{tap_url}/sync",
        params={
            "LANG": "ADQL",
            "QUERY": "SELECT field, COUNT(*) AS n FROM rome.field_index GROUP BY field",
            "RESPONSEFORMAT": "csv",
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    rows = [line.split(",") for line in r.text.strip().splitlines()[1:]]
    return {f: int(n) for f, n in rows}


def test_ingest_then_serve_db_alone(tmp_path, second_field):
    db = tmp_path / "rome.duckdb"
    # two worker processes for the statistics pass, as a big field gets by default
    out = run_cli("ingest", str(second_field), "--db", str(db), "--quiet", "--workers", "2").stdout
    assert "ROME-FIELD-02" in out and db.exists()
    proc, url = start_service("serve", "--db", str(db))
    try:
        assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        assert count_stars(url) == {"ROME-FIELD-02": 400}
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_serve_field_dirs_alone_uses_a_cache_database(tmp_path, second_field):
    env = {**os.environ, "ROMEREA_VO_CACHE": str(tmp_path / "cache")}
    proc, url = start_service("serve", str(second_field), "--quiet", env=env)
    try:
        assert count_stars(url) == {"ROME-FIELD-02": 400}
    finally:
        stop(proc)
    assert list((tmp_path / "cache" / "serve").glob("*.duckdb"))


def test_serve_without_anything_is_an_error():
    r = subprocess.run(
        [sys.executable, "-m", "romerea_vo.cli", "serve"], capture_output=True, text=True
    )
    assert r.returncode == 1 and "give --db PATH" in r.stderr


def test_serve_bad_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "nope.duckdb"
    r = subprocess.run(
        [sys.executable, "-m", "romerea_vo.cli", "serve", "--db", str(bad), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "no such database" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("quiet", [True])
def test_demo_synthesises_ingests_and_serves(tmp_path, quiet):
    cache: Path = tmp_path / "cache"
    proc, url = start_service("demo", "--cache-dir", str(cache), "--quiet")
    try:
        counts = count_stars(url)
        assert counts["ROME-FIELD-01"] >= 2000
        page = httpx.get(url.removesuffix("/tap") + "/", timeout=120)
        assert "ROME-FIELD-01" in page.text
    finally:
        stop(proc)
    assert (cache / "demo" / "demo.duckdb").exists()


# --- what `demo` prints next, and `demo --samp` -----------------------------------------


class Output:
    """The lines a started service prints, read by a thread (a wait has a limit even
    when the process prints nothing)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = 240) -> str:
        """The first line (after those already seen) starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no line {prefix!r}; output:\n" + "".join(self.seen))
            self.seen.append(line)
            if line.strip().startswith(prefix):
                return line.strip()


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory) -> Path:
    """A cache with the demo field synthesised once for the tests below."""
    from romerea_vo.cli import ensure_demo_field

    cache = tmp_path_factory.mktemp("demo-cache")
    ensure_demo_field(cache, quiet=True)
    return cache


def example_star(out: Output) -> tuple[str, str]:
    """The DID and lightcurve URL that `demo` prints."""
    did = out.wait_for("Example star:").rpartition("DID ")[2]
    lightcurve = out.wait_for("lightcurve:").split(None, 1)[1]
    return did, lightcurve


def isolated_samp_env(home: Path) -> dict[str, str]:
    """The environment with HOME (and so the SAMP lockfile ~/.samp) the test's own."""
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "SAMP_HUB"}
    env["HOME"] = str(home)
    return env


def test_demo_prints_the_samp_command_and_an_example_star(demo_cache):
    proc, url = start_service("demo", "--cache-dir", str(demo_cache), "--quiet")
    root = url.removesuffix("/tap")
    try:
        out = Output(proc)
        assert out.wait_for("romerea-vo samp") == f"romerea-vo samp --service {root}"
        did, lightcurve = example_star(out)
        assert lightcurve.startswith(f"{root}/lightcurve?ID=")
        r = httpx.get(lightcurve, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "application/x-votable+xml"
        )
        assert did in r.text  # the star's identity, as a PARAM
        field, field_id = did.rpartition("?")[2].split("/")
        rows = httpx.get(
            f"{url}/sync",
            params={
                "LANG": "ADQL",
                "RESPONSEFORMAT": "csv",
                "QUERY": f"SELECT did FROM rome.field_index WHERE field = '{field}' "
                f"AND field_id = {int(field_id)}",
            },
            timeout=60,
        )
        assert rows.text.split() == ["did", did]
        # every service example runs on the demo field (the upload: 5 of its stars)
        targets = pyvo.dal.TAPService(url).run_sync(
            "SELECT TOP 5 ra, dec FROM rome.field_index ORDER BY field_id"
        )
        check_examples(root, targets.to_table())
    finally:
        stop(proc)
    assert proc.returncode == 0


def _bridge_id(client) -> str | None:
    for cid in client.get_registered_clients():
        if client.get_metadata(cid).get("samp.name") == "romerea-vo":
            return cid
    return None


def test_demo_samp_starts_a_hub_when_none_runs(tmp_path, demo_cache):
    from pyvo.samp.lockfile_helpers import read_lockfile

    from romerea_vo.samp.bridge import LC_MTYPE
    from tests.test_samp_bridge import Scripted

    env = isolated_samp_env(tmp_path / "home")
    lockfile = tmp_path / "home" / ".samp"
    proc, url = start_service("demo", "--samp", "--cache-dir", str(demo_cache), "--quiet", env=env)
    root = url.removesuffix("/tap")
    try:
        out = Output(proc)
        did, _ = example_star(out)
        out.wait_for("SAMP bridge registered as")
        assert lockfile.exists()  # the bridge's own hub, in the test's HOME
        s = Scripted(read_lockfile(str(lockfile)))
        try:
            cid = _bridge_id(s.client)
            assert cid is not None
            reply = s.call(cid, LC_MTYPE, {"ids": [did], "target": "scripted"})
            assert reply["samp.status"] == "samp.ok", reply
            assert reply["samp.result"]["matched"] == "1"
            sent = s.next_load()["url"]
            assert sent.startswith(f"{root}/lightcurve?")  # from the demo's own service
            assert httpx.get(sent, timeout=60).status_code == 200
        finally:
            s.close()
        stop(proc)
        out.wait_for("SAMP bridge stopped", 60)
        out.wait_for("service stopped", 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert not lockfile.exists()  # the hub the bridge started stopped with it


def test_demo_samp_joins_a_running_hub(tmp_path, demo_cache):
    from tests.test_samp_bridge import Scripted, start_hub

    env = isolated_samp_env(tmp_path / "home")
    hub = start_hub(tmp_path / "home" / ".samp")  # ~/.samp of the demo's HOME
    try:
        proc, _ = start_service(
            "demo", "--samp", "--cache-dir", str(demo_cache), "--quiet", env=env
        )
        try:
            out = Output(proc)
            out.wait_for("SAMP bridge registered as")
            s = Scripted(hub.params, load=False)
            try:
                assert _bridge_id(s.client) is not None
                stop(proc)
                out.wait_for("SAMP bridge stopped", 60)
                assert proc.returncode == 0
                assert hub.is_running  # not the bridge's to stop
                assert _bridge_id(s.client) is None  # unregistered on Ctrl-C
            finally:
                s.close()
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        hub.stop()
