"""rome.photometry: points of named stars, read from the cubes per query, via real TAP."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from romerea_vo import lightcurves
from romerea_vo.products import open_field

pyvo = pytest.importorskip("pyvo")


@pytest.fixture(scope="session")
def tap_server(tap_server_both):
    """Every test here runs against the DuckDB and the PostgreSQL + pgSphere backends."""
    return tap_server_both


@pytest.fixture(scope="module")
def tap(tap_server):
    return pyvo.dal.TAPService(f"{tap_server}/tap")


def test_points_of_named_stars_equal_the_cube(tap, synthetic_field):
    res = tap.search(
        "SELECT field_id, hjd, filter, normalized_mag, qc_flag FROM rome.photometry "
        "WHERE field = 'ROME-FIELD-01' AND field_id IN (3, 7) AND qc_flag = 0 "
        "ORDER BY field_id, hjd"
    ).to_table()
    with open_field(synthetic_field) as field:
        ref = lightcurves.lightcurves(field, [3, 7], quality="all")
    ref = ref[ref["qc_flag"] == 0]
    assert len(res) == len(ref) > 10
    np.testing.assert_array_equal(res["field_id"], ref["field_id"])
    np.testing.assert_array_equal(res["hjd"], ref["hjd"])
    np.testing.assert_array_equal(res["normalized_mag"], ref["normalized_mag"])
    assert set(res["filter"]) <= {"gp", "rp", "ip"}
    assert str(res["hjd"].unit) == "d"


def test_join_and_aggregate_over_named_stars(tap):
    res = tap.search(
        "SELECT p.filter, COUNT(*) AS n, AVG(p.normalized_mag) AS mean_mag, f.ra "
        "FROM rome.photometry AS p JOIN rome.field_index AS f "
        "ON f.field = p.field AND f.field_id = p.field_id "
        "WHERE p.field = 'ROME-FIELD-01' AND p.field_id = 5 AND p.qc_flag = 0 "
        "GROUP BY p.filter, f.ra"
    ).to_table()
    assert len(res) >= 1 and all(n > 0 for n in res["n"])


def test_unbounded_queries_are_refused_with_the_rule(tap_server):
    for query in (
        "SELECT * FROM rome.photometry WHERE qc_flag = 0",
        "SELECT * FROM rome.photometry WHERE field = 'ROME-FIELD-01' OR field_id = 3",
        "SELECT COUNT(*) FROM rome.photometry",
    ):
        r = httpx.post(f"{tap_server}/tap/sync", data={"LANG": "ADQL", "QUERY": query}, timeout=120)
        assert r.status_code == 400
        assert "must name its stars" in r.text and "field_id IN" in r.text


def test_unknown_stars_give_no_rows_and_table_is_published(tap):
    res = tap.search(
        "SELECT * FROM rome.photometry WHERE field = 'NO-SUCH-FIELD' AND field_id IN (1)"
    )
    assert len(res) == 0 and "normalized_mag" in res.fieldnames
    names = list(tap.tables.keys())
    assert "rome.photometry" in names


def test_top_n_sample_like_topcat_sends(tap):
    res = tap.search("SELECT TOP 5 * FROM rome.photometry").to_table()
    assert len(res) == 5 and set(res["field_id"]) <= {1, 2, 3}
