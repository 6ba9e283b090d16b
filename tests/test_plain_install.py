"""The README's install, as a user does it: a wheel in a fresh venv, without extras.

The suite itself runs with the test extras, which once hid a runtime dependency of the
SAMP bridge (pyvo). Here every subcommand's help, the SAMP bridge starting its own hub
and stopping on Ctrl-C, and ``xmatch --service`` against a live service run from a
plain ``pip install romerea-vo`` - and nothing prints a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from astropy.table import Table

from romerea_vo.cli import build_parser

from .conftest import REPO


def _run(cmd: list, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory) -> Path:
    """A fresh venv holding the project's wheel and its declared dependencies only."""
    root = tmp_path_factory.mktemp("plain")
    wheels = root / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                  str(REPO)])  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("romerea_vo-*.whl")
    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    installed = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)])
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv


def _env(home: Path) -> dict[str, str]:
    # HOME: the SAMP lockfile (~/.samp) and caches stay inside the test's directory;
    # no PYTHONPATH, so nothing of the source tree or the test venv leaks in
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SAMP_"))}
    return {**env, "HOME": str(home)}


def test_the_plain_install_has_no_extras(plain_venv):
    probe = _run([str(plain_venv / "bin" / "python"), "-c",
                  "import importlib.util as u; print(u.find_spec('pytest') is None, "
                  "u.find_spec('psycopg') is None)"])  # fmt: skip
    assert probe.stdout.split() == ["True", "True"], probe


def test_every_subcommand_has_help(plain_venv, tmp_path):
    exe = str(plain_venv / "bin" / "romerea-vo")
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = sorted(sub.choices)
    assert {"demo", "serve", "samp", "xmatch", "lightcurve"} <= set(commands)
    for args in ([], *([c] for c in commands)):
        out = _run([exe, *args, "--help"], timeout=120, env=_env(tmp_path))
        assert out.returncode == 0, (args, out.stderr[-2000:])
        assert "usage: romerea-vo" in out.stdout, args
        assert "Traceback" not in out.stderr, (args, out.stderr)


def test_samp_bridge_starts_a_hub_and_stops_on_ctrl_c(plain_venv, tap_server, tmp_path):
    proc = subprocess.Popen(
        [str(plain_venv / "bin" / "romerea-vo"), "samp", "--hub", "start",
         "--service", tap_server],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_env(tmp_path), start_new_session=True,
    )  # fmt: skip
    lines = []
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:  # the bridge prints this once registered with its hub
            lines.append(line)
            if "SAMP bridge registered" in line or time.monotonic() > deadline:
                break
        assert any("SAMP bridge registered" in line for line in lines), "".join(lines)
        assert (tmp_path / ".samp").exists()  # the hub's lockfile, in our HOME
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "SAMP bridge stopped" in output and "Traceback" not in output, output
    assert not (tmp_path / ".samp").exists()  # the hub it started is gone with it


def test_xmatch_against_a_live_service(plain_venv, tap_server, field_positions, tmp_path):
    mine = Table({"ra": field_positions["ra"][:25], "dec": field_positions["dec"][:25]})
    mine["ra"].unit = mine["dec"].unit = "deg"
    src, out = tmp_path / "mine.ecsv", tmp_path / "matched.ecsv"
    mine.write(src, format="ascii.ecsv")
    result = _run(
        [str(plain_venv / "bin" / "romerea-vo"), "xmatch", str(src), "--service", tap_server,
         "--radius", "1arcsec", "-o", str(out)],
        env=_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    matched = Table.read(out, format="ascii.ecsv")
    assert len(matched) >= 25
    assert set(matched["field_id"]) >= set(field_positions["field_id"][:25])


def test_a_shared_job_store_says_how_to_install_postgresql_support(plain_venv, tap_db, tmp_path):
    """Without the postgres extra, --jobs-db is one line naming the extra to install."""
    result = _run(
        [str(plain_venv / "bin" / "romerea-vo"), "serve", "--db", str(tap_db), "--workers", "2",
         "--jobs-db", "postgresql://127.0.0.1:1/jobs", "--work-dir", str(tmp_path / "work"),
         "--port", "0"],
        timeout=300, env=_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.startswith("romerea-vo: error: "), result.stderr[-3000:]
    assert "pip install 'romerea-vo[postgres]'" in result.stderr
    assert "Traceback" not in result.stderr
