"""The romerea-vo command end to end: synth, info, lightcurve in every format, demo."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from astropy.table import Table

from romerea_vo import lightcurves
from romerea_vo.products import open_field


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "romerea_vo.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_info_summarises_the_field(synthetic_field):
    out = run_cli("info", str(synthetic_field)).stdout
    with open_field(synthetic_field) as field:
        assert f"stars            {field.n_stars}" in out
        for q, n in field.quadrant_counts.items():
            assert f"quadrant {q}" in out and f"{n} stars" in out
        for code in field.dataset_codes:
            assert code in out
        assert "format era       E (17-column cubes" in out
        assert "(primary reference)" in out
        n_ip = int((np.asarray(field.images["filter"]) == "ip").sum())
        assert f"ip             {n_ip:>8}" in out


def test_info_counts_candidates_in_a_database(synthetic_field, tap_db):
    from romerea_vo.store import Database
    from romerea_vo.votable.schema import load_table_schema

    out = run_cli("info", str(synthetic_field), "--db", str(tap_db)).stdout
    db = Database(tap_db)
    try:
        with db.session() as session:
            n, fitted = session.fetchall(
                "SELECT COUNT(*) FILTER (WHERE classification = 'candidate'), COUNT(*) FROM "
                f"{db.physical_name(load_table_schema('microlensing_candidates'))} "
                "WHERE field = 'ROME-FIELD-01'"
            )[0]
    finally:
        db.close()
    assert f"microlensing     {n} candidates among {fitted} fitted stars" in out


@pytest.mark.parametrize("suffix", [".vot", ".csv", ".fits", ".ecsv"])
def test_lightcurve_formats_round_trip(synthetic_field, tmp_path, suffix):
    out = tmp_path / f"lc{suffix}"
    with open_field(synthetic_field) as field:
        star = field.star(3)
        expected = lightcurves.lightcurve(field, star, filters=["ip", "gp"])
    printed = run_cli(
        "lightcurve", str(synthetic_field), "--ra", str(star.ra), "--dec", str(star.dec),
        "--filter", "ip,gp", "-o", str(out),
    ).stdout  # fmt: skip
    assert f"field_id {star.field_id}" in printed and f"{len(expected)} good points" in printed
    got = Table.read(out)
    assert len(got) == len(expected) > 0
    np.testing.assert_allclose(got["hjd"], expected["hjd"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(got["normalized_mag"], expected["normalized_mag"], rtol=1e-12)
    assert list(got["filter"]) == list(expected["filter"])
    if suffix != ".csv":
        assert str(got["hjd"].unit) == "d"


def test_lightcurve_png(synthetic_field, tmp_path):
    out = tmp_path / "lc.png"
    run_cli("lightcurve", str(synthetic_field), "--field-id", "3", "-o", str(out))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 900 and height > 300  # one panel per band present


def test_lightcurve_prints_without_output(synthetic_field):
    out = run_cli("lightcurve", str(synthetic_field), "--field-id", "2", "--qc", "all").stdout
    assert "HDF5 row" in out and "hjd" in out


def test_synth_then_demo(tmp_path):
    target = tmp_path / "f"
    run_cli("synth", str(target), "--field", "ROME-FIELD-05", "--stars", "300", "--images", "60",
            "--seed", "2", "--quiet")  # fmt: skip
    with open_field(target) as field:
        assert field.name == "ROME-FIELD-05" and field.n_stars >= 300 and field.n_images == 60
    cache = tmp_path / "cache"
    first = run_cli("demo", "--cache-dir", str(cache), "--quiet", "--no-serve").stdout
    assert "field            ROME-FIELD-01" in first and "microlensing events" in first
    assert not list((cache / "demo").glob(".*partial"))
    mtime = (
        (cache / "demo" / "ROME-FIELD-01" / "ROME-FIELD-01_field_crossmatch.fits").stat().st_mtime
    )
    second = run_cli("demo", "--cache-dir", str(cache), "--quiet", "--no-serve").stdout
    assert second == first  # reused, not regenerated
    path = cache / "demo" / "ROME-FIELD-01" / "ROME-FIELD-01_field_crossmatch.fits"
    assert path.stat().st_mtime == mtime
