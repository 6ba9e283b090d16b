"""mypy over romerea_vo/ (settings in pyproject.toml's [tool.mypy]) reports no errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def mypy(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    pytest.importorskip("mypy")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", "/dev/null", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_package_type_checks():
    out = mypy()
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_check_fails_on_a_type_error(tmp_path):
    """The same settings do find errors: a None passed where a str is expected."""
    (tmp_path / "wrong.py").write_text(
        "def shout(text: str) -> str:\n    return text.upper()\n\n\nshout(None)\n"
    )
    out = mypy("--config-file", str(REPO / "pyproject.toml"), "wrong.py", cwd=tmp_path)
    assert out.returncode == 1 and "wrong.py:5: error" in out.stdout, out.stdout
