"""ADQL cross-match joins run through the xmatch core (romerea_vo.adql.spatial_join).

Each query is run twice in the same session: as the service runs it (pairs from the core,
hash joins on row keys) and as plain SQL (the declination band + haversine condition);
both must give the same rows, which must also be astropy's pairs.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table

from romerea_vo.adql import translate
from romerea_vo.errors import InvalidRequestError
from romerea_vo.service.params import DaliParams
from romerea_vo.service.tap import TapEngine
from romerea_vo.store.database import Database

NON_HASH_JOINS = ("NESTED_LOOP_JOIN", "PIECEWISE_MERGE_JOIN", "IE_JOIN", "CROSS_PRODUCT")


@pytest.fixture(scope="module")
def engine(tap_db):
    db = Database(tap_db)
    yield TapEngine(db)
    db.close()


@pytest.fixture(scope="module")
def mine(field_positions):
    """60 stars of ROME-FIELD-01, 0.3 to 0.9 arcsec away, plus 20 positions in nowhere."""
    rng = np.random.default_rng(11)
    pick = field_positions[rng.choice(len(field_positions), 60, replace=False)]
    offset = rng.uniform(0.3, 0.9, 60) / 3600
    ra = np.concatenate(
        [pick["ra"] + offset / np.cos(np.radians(pick["dec"])), rng.uniform(0, 5, 20)]
    )
    dec = np.concatenate([pick["dec"], rng.uniform(-5, 5, 20)])
    return Table({"id": np.arange(80), "ra": ra, "dec": dec})


def _params(query: str, uploads: dict[str, Table], tmp_path) -> DaliParams:
    params = DaliParams()
    for k, v in {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query}.items():
        params.add(k, v)
    for name, table in uploads.items():
        path = tmp_path / f"{name}.xml"
        table.write(path, format="votable", overwrite=True)
        params.files[name] = path
        params.add("UPLOAD", f"{name},param:{name}")
    return params


def run_both(engine, query, uploads, tmp_path):
    """(rows through the core, rows as plain SQL, EXPLAIN of the core plan, pair counts)."""
    session = engine.db.session()
    try:
        params = _params(query, uploads, tmp_path)
        prepared = engine.prepare(params, session, tmp_path)
        assert prepared.translation.spatial_joins, "the join did not go through the core"
        core = session.fetchall(prepared.sql)
        explained = session.fetchall("EXPLAIN " + prepared.sql)
        # Operator names as DuckDB prints them ("Hash Join"), spelt as in its docs.
        plan = "\n".join(str(r[1]) for r in explained).upper().replace(" ", "_")
        catalog, _ = engine.register_uploads(params, session, tmp_path)
        plain = session.fetchall(translate(query, catalog, target="duckdb").sql)
        return sorted(core), sorted(plain), plan, engine.spatial_joins.last_pair_counts
    finally:
        session.close()


def astropy_pairs(a: Table, b: Table, radius_arcsec: float) -> set[tuple[int, int]]:
    ca = SkyCoord(a["ra"], a["dec"], unit="deg")
    cb = SkyCoord(b["ra"], b["dec"], unit="deg")
    i, j, _, _ = cb.search_around_sky(ca, radius_arcsec * u.arcsec)
    return set(zip(i.tolist(), j.tolist(), strict=True))


UPLOAD_SHAPES = [
    # CONTAINS in ON, the upload in the circle
    "SELECT u.id, f.field_id FROM rome.field_index AS f JOIN TAP_UPLOAD.mine AS u "
    "ON 1 = CONTAINS(POINT('ICRS', f.ra, f.dec), CIRCLE('ICRS', u.ra, u.dec, 1.0/3600))",
    # the other way round, CONTAINS(...) = 1, upload first
    "SELECT u.id, f.field_id FROM TAP_UPLOAD.mine AS u JOIN rome.field_index AS f "
    "ON CONTAINS(POINT('ICRS', u.ra, u.dec), CIRCLE('ICRS', f.ra, f.dec, 0.000277777777778)) = 1",
    # DISTANCE < r in WHERE over a comma join, point arguments reversed
    "SELECT u.id, f.field_id FROM TAP_UPLOAD.mine u, rome.field_index f "
    "WHERE DISTANCE(POINT('ICRS', f.ra, f.dec), POINT('ICRS', u.ra, u.dec)) < 1/3600.0",
    # r > DISTANCE with the four-number form, in ON with another condition
    "SELECT u.id, f.field_id FROM TAP_UPLOAD.mine u JOIN rome.field_index f "
    "ON f.field = 'ROME-FIELD-01' AND 0.000277777777778 >= DISTANCE(u.ra, u.dec, f.ra, f.dec)",
    # INTERSECTS with the circle first, extra WHERE
    "SELECT u.id, f.field_id FROM TAP_UPLOAD.mine u INNER JOIN rome.field_index f "
    "ON 1 = INTERSECTS(CIRCLE('ICRS', u.ra, u.dec, 1.0/3600), POINT('ICRS', f.ra, f.dec)) "
    "WHERE f.field = 'ROME-FIELD-01' AND u.id >= 0",
]


@pytest.mark.parametrize("query", UPLOAD_SHAPES)
def test_upload_join_through_core_equals_sql_and_astropy(
    engine, mine, field_positions, tmp_path, query
):
    core, plain, plan, counts = run_both(engine, query, {"mine": mine}, tmp_path)
    assert core == plain
    expected = {
        (int(mine["id"][i]), int(field_positions["field_id"][j]))
        for i, j in astropy_pairs(mine, field_positions, 1.0)
    }
    assert len(expected) >= 60
    assert set(core) == expected and len(core) == len(expected)
    assert counts[0] >= len(expected)  # other fields' stars may be in the pairs too
    assert "HASH_JOIN" in plan
    assert not any(op in plan for op in NON_HASH_JOINS), plan


def test_join_between_stored_tables(engine, field_positions, tmp_path):
    """Close pairs within one ROME field: a self-join of a stored table, both cached."""
    query = (
        "SELECT a.field_id, b.field_id FROM rome.field_index AS a JOIN rome.field_index AS b "
        "ON 1 = CONTAINS(POINT('ICRS', a.ra, a.dec), CIRCLE('ICRS', b.ra, b.dec, 20.0/3600)) "
        "WHERE a.field = 'ROME-FIELD-01' AND b.field = 'ROME-FIELD-01' AND a.field_id < b.field_id"
    )
    core, plain, plan, _ = run_both(engine, query, {}, tmp_path)
    assert core == plain and len(core) > 10
    fid = field_positions["field_id"]
    expected = {
        (int(fid[i]), int(fid[j]))
        for i, j in astropy_pairs(field_positions, field_positions, 20.0)
        if fid[i] < fid[j]
    }
    assert set(core) == expected
    assert not any(op in plan for op in NON_HASH_JOINS), plan


def test_two_uploads_across_ra_wrap_and_pole(engine, tmp_path):
    rng = np.random.default_rng(5)
    n = 400
    ra = np.concatenate([rng.uniform(359.99, 360.0, n // 2), rng.uniform(0, 0.01, n // 2)])
    dec = rng.uniform(-0.01, 0.01, n)
    ra[:40] = rng.uniform(0, 360, 40)
    dec[:40] = rng.uniform(89.998, 90.0, 40)
    a = Table({"k": np.arange(n), "ra": ra, "dec": dec})
    b = Table({"k": np.arange(n), "ra": (ra + rng.normal(0, 2e-4, n)) % 360, "dec": dec})
    b["dec"] = np.clip(b["dec"] + rng.normal(0, 2e-4, n), -90, 90)
    query = (
        "SELECT a.k, b.k FROM TAP_UPLOAD.a AS a JOIN TAP_UPLOAD.b AS b "
        "ON DISTANCE(POINT('ICRS', a.ra, a.dec), POINT('ICRS', b.ra, b.dec)) <= 3.0/3600"
    )
    core, plain, _, _ = run_both(engine, query, {"a": a, "b": b}, tmp_path)
    assert core == plain
    assert set(core) == astropy_pairs(a, b, 3.0)
    wrapped = {(i, j) for i, j in core if (ra[i] > 180) != (b["ra"][j] > 180) and abs(dec[i]) < 1}
    assert wrapped, "no pair across RA = 0/360 was tested"


LEFT_TO_SQL = [
    # an outer join: the pairs relation would drop unmatched upload rows
    "SELECT u.id, f.field_id FROM TAP_UPLOAD.mine u LEFT OUTER JOIN rome.field_index f "
    "ON 1 = CONTAINS(POINT('ICRS', f.ra, f.dec), CIRCLE('ICRS', u.ra, u.dec, 1.0/3600))",
    # inside OR
    "SELECT u.id, f.field_id FROM TAP_UPLOAD.mine u, rome.field_index f "
    "WHERE DISTANCE(POINT('ICRS', f.ra, f.dec), POINT('ICRS', u.ra, u.dec)) < 1/3600.0 OR u.id < 0",
    # CONTAINS = 0
    "SELECT TOP 5 u.id FROM TAP_UPLOAD.mine u JOIN rome.field_index f "
    "ON 0 = CONTAINS(POINT('ICRS', f.ra, f.dec), CIRCLE('ICRS', u.ra, u.dec, 1.0/3600))",
    # a radius per row
    "SELECT u.id, f.field_id FROM TAP_UPLOAD.mine u JOIN rome.field_index f "
    "ON 1 = CONTAINS(POINT('ICRS', f.ra, f.dec), CIRCLE('ICRS', u.ra, u.dec, u.id / 3600.0))",
    # 1/3600 is integer division: radius 0, exact coincidence only
    "SELECT u.id, f.field_id FROM TAP_UPLOAD.mine u JOIN rome.field_index f "
    "ON 1 = CONTAINS(POINT('ICRS', f.ra, f.dec), CIRCLE('ICRS', u.ra, u.dec, 1/3600))",
    # a derived table has no row key
    "SELECT u.id, f.field_id FROM TAP_UPLOAD.mine u JOIN "
    "(SELECT field_id, ra, dec FROM rome.field_index WHERE field = 'ROME-FIELD-01') AS f "
    "ON 1 = CONTAINS(POINT('ICRS', f.ra, f.dec), CIRCLE('ICRS', u.ra, u.dec, 1.0/3600))",
    # a galactic point would need rotating first
    "SELECT u.id, f.field_id FROM TAP_UPLOAD.mine u JOIN rome.field_index f "
    "ON 1 = CONTAINS(POINT('GALACTIC', f.ra, f.dec), CIRCLE('ICRS', u.ra, u.dec, 1.0/3600))",
]


@pytest.mark.parametrize("query", LEFT_TO_SQL)
def test_other_shapes_stay_sql(engine, mine, tmp_path, query):
    session = engine.db.session()
    try:
        prepared = engine.prepare(_params(query, {"mine": mine}, tmp_path), session, tmp_path)
        assert prepared.translation.spatial_joins == []
        assert "romerea_xmatch" not in prepared.sql
        session.fetchall(prepared.sql)  # and it still runs
    finally:
        session.close()


def test_left_join_keeps_unmatched_rows(engine, mine, tmp_path):
    query = LEFT_TO_SQL[0]
    session = engine.db.session()
    try:
        prepared = engine.prepare(_params(query, {"mine": mine}, tmp_path), session, tmp_path)
        rows = session.fetchall(prepared.sql)
    finally:
        session.close()
    assert {r[0] for r in rows} == set(range(80))
    assert sum(r[1] is None for r in rows) == 20


def test_too_many_pairs_is_a_clear_error(tap_db, mine, tmp_path):
    db = Database(tap_db)
    engine = TapEngine(db)
    engine.spatial_joins.max_pairs = 10
    session = db.session()
    try:
        with pytest.raises(InvalidRequestError, match="more than 10 pairs"):
            engine.prepare(_params(UPLOAD_SHAPES[0], {"mine": mine}, tmp_path), session, tmp_path)
    finally:
        session.close()
        db.close()


def test_null_and_out_of_range_positions_never_match(engine, mine, tmp_path):
    """NULL never matches (as in SQL); RA outside [0, 360) matches modulo 360 (as in SQL)."""
    odd = Table(mine, copy=True)
    odd["ra"] = np.ma.masked_array(odd["ra"], mask=np.arange(80) % 3 == 0)
    odd["ra"][1] = odd["ra"][1] - 360.0
    core, plain, _, _ = run_both(
        engine, UPLOAD_SHAPES[0].replace("mine", "odd"), {"odd": odd}, tmp_path
    )
    assert core == plain
    ids = {r[0] for r in core}
    assert 1 in ids and not any(i % 3 == 0 for i in ids)
