"""The README's quick start and CI stay one and the same."""

from __future__ import annotations

import re
from importlib import metadata

import pytest

from .conftest import REPO


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quick)


def test_quick_start_is_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands)
    assert commands[0].endswith("romerea-vo demo")
    assert "pytest" in commands[1] and "[test]" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci_lines


def test_schemas_ship_inside_the_wheel():
    """An installed (non-editable) romerea-vo carries votable_schemas/ inside the package."""
    try:
        files = {str(f) for f in metadata.files("romerea-vo") or ()}
    except metadata.PackageNotFoundError:
        pytest.skip("romerea-vo is not installed")
    if "romerea_vo/cli.py" not in files:
        pytest.skip("editable install: schemas are read from the source tree")
    for schema in (REPO / "votable_schemas").glob("*.toml"):
        assert f"romerea_vo/votable_schemas/{schema.name}" in files
