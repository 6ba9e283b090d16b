"""Ingest: field products → DuckDB tables equal to the files; atomic replace; TAP_SCHEMA."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from romerea_vo.errors import RomeReaError
from romerea_vo.products import open_field
from romerea_vo.statistics_pass import lightcurve_statistics
from romerea_vo.store import Database, ingest_fields
from romerea_vo.store.ingest import in_order
from romerea_vo.votable.schema import adql_column_name, tap_tables
from tests.conftest import file_digests


@pytest.fixture(scope="module")
def db(tap_db):
    database = Database(tap_db)
    yield database
    database.close()


def query(db, sql, params=None):
    cur = db.cursor()
    try:
        return cur.execute(sql, params or []).fetchall()
    finally:
        cur.close()


def test_field_index_equals_file(db, synthetic_field):
    with open_field(synthetic_field) as field:
        fi = field.field_index
        rows = query(
            db,
            "SELECT field_id, ra, dec, quadrant, quadrant_id, gaia_source_id, did "
            "FROM romerea_data.rome.field_index WHERE field = 'ROME-FIELD-01' ORDER BY field_id",
        )
        assert len(rows) == len(fi)
        ids, ra, dec, quad, qid, gaia, did = map(list, zip(*rows, strict=True))
        assert ids == list(fi["field_id"])
        np.testing.assert_array_equal(ra, fi["ra"])
        np.testing.assert_array_equal(dec, fi["dec"])
        assert quad == list(fi["quadrant"]) and qid == list(fi["quadrant_id"])
        expected = [
            None if m else int(v)
            for v, m in zip(fi["gaia_source_id"].data, fi["gaia_source_id"].mask, strict=True)
        ]
        assert gaia == expected
        assert None in gaia and any(g and g > 2**53 for g in gaia)  # NULLs and 64-bit ids
        assert did[4] == "ivo://romerea-vo.local/rome?ROME-FIELD-01/5"
        # per-filter detection counts equal the index columns
        for flt in ("gp", "rp", "ip"):
            cols = [
                field.dataset_index_column(str(r["dataset_code"]).strip())
                for r in field.datasets
                if str(r["dataset_filter"]).strip() == flt
            ]
            expected_n = sum((np.asarray(fi[c]) > 0).astype(int) for c in cols)
            got = [
                r[0]
                for r in query(
                    db,
                    f"SELECT n_datasets_{flt} FROM romerea_data.rome.field_index "
                    "WHERE field = 'ROME-FIELD-01' ORDER BY field_id",
                )
            ]
            assert got == list(expected_n)


def test_positions_are_clustered_by_dec(db):
    decs = [
        r[0]
        for r in query(
            db, "SELECT dec FROM romerea_data.rome.field_index WHERE field = 'ROME-FIELD-01'"
        )
    ]
    assert decs == sorted(decs)


def test_obscore_rows_are_stored_in_declination_order(db):
    for field in ("ROME-FIELD-01", "ROME-FIELD-02"):
        decs = [
            r[0]
            for r in query(
                db, "SELECT s_dec FROM romerea_data.ivoa.obscore WHERE target_name = ?", [field]
            )
        ]
        assert decs and decs == sorted(decs)


def test_in_order_is_what_order_by_leaves_unchanged():
    t = pa.table({"f": ["a", "a", "b", "b"], "x": [2.0, 3.0, 1.0, 1.0], "n": [1, 2, 2, 1]})
    assert in_order(t, ["f", "x"])  # ties (last two) in any order
    assert in_order(t.slice(0, 1), ["f", "x", "n"]) and in_order(t.slice(0, 0), ["x"])
    assert not in_order(t, ["f", "x", "n"])  # the tied pair is descending in n
    assert not in_order(t, ["x"])
    assert in_order(t, ["f"]) and not in_order(t.take([2, 0, 1, 3]), ["f"])
    assert not in_order(t, ["F"])  # not a column of the Arrow table: ORDER BY decides
    # ORDER BY puts NULL and NaN where a vectorised comparison cannot say: sorted again
    assert not in_order(pa.table({"x": pa.array([1.0, None, 2.0])}), ["x"])
    assert not in_order(pa.table({"x": [1.0, 2.0, float("nan")]}), ["x"])


def test_stars_nulls_and_gaia_magnitudes(db, synthetic_field):
    with open_field(synthetic_field) as field:
        stars = field.stars
        col = "cal_i_mag_lsc_doma"
        rows = dict(
            query(
                db,
                f"SELECT field_id, {col} FROM romerea_data.rome.stars WHERE field='ROME-FIELD-01'",
            )
        )
        raw = np.asarray(stars[col])
        for fid, value in zip(stars["field_id"], raw, strict=True):
            assert rows[int(fid)] == (None if value == 0.0 else value)
        flux = dict(
            query(
                db,
                "SELECT field_id, phot_g_mean_flux FROM romerea_data.rome.stars "
                "WHERE field='ROME-FIELD-01' AND gaia_source_id IS NOT NULL",
            )
        )
        mags = dict(
            query(
                db,
                "SELECT field_id, gaia_g_mag FROM romerea_data.rome.stars "
                "WHERE field='ROME-FIELD-01' AND gaia_source_id IS NOT NULL",
            )
        )
        fid = next(k for k, v in flux.items() if v)
        assert mags[fid] == pytest.approx(-2.5 * np.log10(flux[fid]) + 25.6874)
        # unmatched stars have no Gaia values at all
        assert (
            query(
                db,
                "SELECT COUNT(*) FROM romerea_data.rome.stars WHERE gaia_source_id IS NULL AND "
                "(gaia_ra IS NOT NULL OR parallax IS NOT NULL)",
            )[0][0]
            == 0
        )


def test_images_datasets_stamps_dataset_stars(db, synthetic_field):
    with open_field(synthetic_field) as field:
        n_img = query(
            db, "SELECT COUNT(*) FROM romerea_data.rome.images WHERE field='ROME-FIELD-01'"
        )[0][0]
        assert n_img == field.n_images
        per_ds = dict(
            query(
                db,
                "SELECT dataset_code, n_images FROM romerea_data.rome.datasets "
                "WHERE field='ROME-FIELD-01'",
            )
        )
        codes, counts = np.unique(
            np.char.strip(np.asarray(field.images["dataset_code"]).astype(str)), return_counts=True
        )
        assert per_ds == dict(zip(codes.tolist(), counts.tolist(), strict=True))
        primary = query(db, "SELECT dataset_code FROM romerea_data.rome.datasets WHERE primary_ref")
        assert ("ROME-FIELD-01_" in primary[0][0]) and len(primary) >= 1
        n_pairs = sum(
            int((np.asarray(field.field_index[field.dataset_index_column(c)]) > 0).sum())
            for c in field.dataset_codes
        )
        assert (
            query(
                db,
                "SELECT COUNT(*) FROM romerea_data.rome.dataset_stars WHERE field='ROME-FIELD-01'",
            )[0][0]
            == n_pairs
        )
        assert query(
            db, "SELECT COUNT(*) FROM romerea_data.rome.stamps WHERE field='ROME-FIELD-01'"
        )[0][0] == len(field.stamps)
        # hjd 0.0 (no photometry) becomes NULL, never 0
        assert query(db, "SELECT COUNT(*) FROM romerea_data.rome.images WHERE hjd <= 0")[0][0] == 0


def test_lightcurve_stats_equal_direct_computation(db, synthetic_field):
    with open_field(synthetic_field) as field:
        stats = lightcurve_statistics(field)
    rows = query(
        db,
        "SELECT field_id, filter, n_good, median_mag, mad_std_mag, time_span "
        "FROM romerea_data.rome.lightcurve_stats WHERE field='ROME-FIELD-01' "
        "ORDER BY field_id, filter",
    )
    assert len(rows) == len(stats)
    for row, ref in zip(rows, stats, strict=True):
        assert row[:3] == (ref["field_id"], ref["filter"], ref["n_good"])
        assert row[3] == pytest.approx(ref["median_mag"])
        assert row[5] == pytest.approx(ref["time_span"])


def test_tap_schema_describes_every_column(db):
    for table in tap_tables():
        cols = [
            r[0]
            for r in query(
                db,
                "SELECT column_name FROM romerea_data.tap_schema.columns WHERE "
                "table_name = ? ORDER BY column_index",
                [table.qualified_name],
            )
        ]
        assert cols == [adql_column_name(c) for c in table.column_names]
    keys = query(
        db,
        "SELECT k.from_table, k.target_table, c.from_column FROM romerea_data.tap_schema.keys k "
        "JOIN romerea_data.tap_schema.key_columns c USING (key_id)",
    )
    assert ("rome.lightcurve_stats", "rome.field_index", "field_id") in keys


def test_database_is_sandboxed(db):
    with pytest.raises(duckdb.Error, match=r"disabled|Permission"):
        query(db, "SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(duckdb.Error):
        query(db, "SET enable_external_access = true")


def test_reingest_replaces_and_failed_ingest_changes_nothing(tmp_path, second_field):
    path = tmp_path / "x.duckdb"
    before = file_digests(second_field)
    ingest_fields(path, [second_field])
    ingest_fields(path, [second_field])  # replace, not append
    db = Database(path)
    n = query(db, "SELECT COUNT(*) FROM romerea_data.rome.field_index")[0][0]
    db.close()
    with open_field(second_field) as field:
        assert n == field.n_stars
    bad = tmp_path / "ROME-FIELD-09"
    bad.mkdir()
    (bad / "ROME-FIELD-09_field_crossmatch.fits").write_bytes(b"SIMPLE  = garbage")
    with pytest.raises(RomeReaError):
        ingest_fields(path, [second_field, bad])
    db = Database(path)
    assert query(db, "SELECT COUNT(*) FROM romerea_data.rome.field_index")[0][0] == n
    assert list(db.fields) == ["ROME-FIELD-02"]
    db.close()
    assert file_digests(second_field) == before
    # a failed ingest into a new file leaves no file behind
    with pytest.raises(RomeReaError):
        ingest_fields(tmp_path / "new.duckdb", [bad])
    assert not (tmp_path / "new.duckdb").exists()


def test_service_refuses_a_database_with_other_metadata(tmp_path, tap_db):
    from romerea_vo.service.app import ServiceConfig, create_app
    from romerea_vo.store.database import DatabaseError

    copy = tmp_path / "old.duckdb"
    copy.write_bytes(tap_db.read_bytes())
    con = duckdb.connect(str(copy))
    con.execute("UPDATE tap_schema.columns SET description = 'old' WHERE column_name = 'ra'")
    con.close()
    db = Database(copy)
    assert not db.metadata_is_current()
    db.close()
    with pytest.raises(DatabaseError, match="ingest the fields again"):
        create_app(ServiceConfig(db_path=copy))
    fresh = Database(tap_db)
    assert fresh.metadata_is_current()
    fresh.close()


@pytest.mark.parametrize(
    "update",
    [
        "UPDATE tap_schema.tables SET description = 'e.g. field_id IN (78284, 78285)' "
        "WHERE table_name = 'rome.photometry'",
        "UPDATE tap_schema.schemas SET description = 'old' WHERE schema_name = 'rome'",
    ],
)
def test_stale_table_or_schema_descriptions_are_not_current(tmp_path, tap_db, update):
    """A database whose TAP_SCHEMA table or schema descriptions are another version's is
    not served as current (TOPCAT reads them from TAP_SCHEMA): `demo` re-ingests it."""
    copy = tmp_path / "old.duckdb"
    copy.write_bytes(tap_db.read_bytes())
    con = duckdb.connect(str(copy))
    con.execute(update)
    con.close()
    db = Database(copy)
    try:
        assert not db.metadata_is_current()
    finally:
        db.close()
