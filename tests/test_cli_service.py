"""`romerea-vo ingest`, `serve` and `demo` as a user runs them: real processes, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.test_cli import run_cli


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
    out = run_cli("ingest", str(second_field), "--db", str(db), "--quiet").stdout
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
