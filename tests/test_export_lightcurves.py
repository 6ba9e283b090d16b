"""romerea-vo export-lightcurves: Parquet partitioned by field and quadrant, resumable."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading

import duckdb
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from romerea_vo.cli import main
from romerea_vo.export_lightcurves import quadrant_path
from romerea_vo.lightcurves import read_points
from romerea_vo.products import open_field
from romerea_vo.statistics_pass import lightcurve_statistics


def digests(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.parquet"))
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_field):
    out = tmp_path_factory.mktemp("export") / "lc"
    assert main(["export-lightcurves", str(synthetic_field), "-o", str(out), "--quiet"]) == 0
    return out


def test_rows_equal_good_points_and_readers_agree(exported, synthetic_field):
    with open_field(synthetic_field) as field:
        n_good = int(lightcurve_statistics(field)["n_good"].sum())
        pts = read_points(field, 17)
    con = duckdb.connect()
    rows = con.sql(
        f"SELECT field, quadrant, COUNT(*) FROM read_parquet('{exported}/**/*.parquet', "
        "hive_partitioning = true) GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert sum(r[2] for r in rows) == n_good
    assert {r[0] for r in rows} == {"ROME-FIELD-01"} and [r[1] for r in rows] == [1, 2, 3, 4]
    dataset = ds.dataset(exported, partitioning="hive").to_table()
    assert dataset.num_rows == n_good
    frame = pq.read_table(exported).to_pandas()  # pandas through pyarrow's dataset
    star = frame[frame["field_id"] == 17].sort_values("hjd", kind="stable")
    np.testing.assert_array_equal(star["hjd"].to_numpy(), pts.hjd)
    np.testing.assert_array_equal(star["normalized_mag"].to_numpy(), pts.column("normalized_mag"))
    mag = 22 - 2.5 * np.log10(star["flux"].to_numpy())
    np.testing.assert_allclose(mag, pts.column("normalized_mag"), atol=1e-9)
    t = Table.read(quadrant_path(exported, "ROME-FIELD-01", 1), format="parquet.votable")
    assert t["hjd"].unit == "d" and t["flux"].meta["ucd"] == "phot.flux"


def test_interrupted_export_resumes_to_the_same_files(tmp_path, exported, synthetic_field, capsys):
    out = tmp_path / "lc"
    args = ["export-lightcurves", str(synthetic_field), "-o", str(out), "--quiet"]
    assert main(args) == 0
    before = digests(out)
    assert before == digests(exported)  # deterministic
    # an interruption leaves finished quadrants, a partial file and missing ones
    q3 = quadrant_path(out, "ROME-FIELD-01", 3)
    partial = q3.with_name(f".{q3.name}.partial")
    partial.write_bytes(q3.read_bytes()[:1000])
    q3.unlink()
    quadrant_path(out, "ROME-FIELD-01", 4).unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "2 files written, 2 already complete" in capsys.readouterr().out
    assert digests(out) == before and not partial.exists()
    assert main([*args, "--quality", "valid"]) == 1  # other options: refused, one line
    assert "other options" in capsys.readouterr().err


def test_a_failing_quadrant_stops_the_export_and_a_rerun_completes_it(
    tmp_path, exported, synthetic_field, capsys
):
    """Quadrants are exported two at a time: a cube that cannot be read stops the export
    with its error (the quadrant beside it stops at its next block, the rest never
    start), leaves no thread and no torn file, and once the cube is whole again a rerun
    ends with the same files as an uninterrupted export."""
    field = tmp_path / "ROME-FIELD-01"
    shutil.copytree(synthetic_field, field)
    cube = field / "ROME-FIELD-01_quad2_photometry.hdf5"
    intact = cube.read_bytes()
    os.truncate(cube, len(intact) // 2)
    out = tmp_path / "lc"
    args = ["export-lightcurves", str(field), "-o", str(out), "--quiet"]
    assert main(args) == 1
    assert "truncated" in capsys.readouterr().err
    assert not quadrant_path(out, "ROME-FIELD-01", 2).exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("export")]
    for written in out.rglob("*.parquet"):  # whatever was finished is whole
        assert pq.read_metadata(written).num_rows > 0
    cube.write_bytes(intact)
    assert main(args) == 0
    assert digests(out) == digests(exported)


def test_db_source_with_where(tmp_path, tap_db, capsys):
    out = tmp_path / "lc"
    args = ["export-lightcurves", "--db", str(tap_db), "-o", str(out), "--quiet"]
    assert main([*args, "--where", "field = 'ROME-FIELD-02' AND field_id <= 40"]) == 0
    assert "of 40 stars" in capsys.readouterr().out
    table = ds.dataset(out, partitioning="hive").to_table()
    assert set(table["field"].to_pylist()) == {"ROME-FIELD-02"}
    assert max(table["field_id"].to_pylist()) <= 40
    bad = ["export-lightcurves", "--db", str(tap_db), "-o", str(tmp_path / "bad"), "--quiet"]
    assert main([*bad, "--where", "nonsense((("]) == 1
    assert "--where" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
