"""Shared fixtures: the pyDANDIA TEST1 files (skipped when absent) and synthetic fields."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYDANDIA_TEST1 = (
    Path(os.environ.get("ROMEREA_VO_FIXTURES", REPO.parent / "shared" / "fixtures"))
    / "pydandia_TEST1"
)


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file in a directory: proof that reading modified nothing."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="session")
def pydandia_test1() -> Path:
    if not (PYDANDIA_TEST1 / "TEST1_field_crossmatch.fits").exists():
        pytest.skip(f"pyDANDIA TEST1 fixtures not found at {PYDANDIA_TEST1}")
    return PYDANDIA_TEST1


@pytest.fixture(scope="session")
def synthetic_field(tmp_path_factory) -> Path:
    """A small synthetic ROME field, made once per test session."""
    from romerea_vo.products.synthetic import synthesize_field

    out = tmp_path_factory.mktemp("synth") / "ROME-FIELD-01"
    synthesize_field(out, field="ROME-FIELD-01", n_stars=800, n_images=160, seed=7)
    return out
