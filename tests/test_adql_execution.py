"""Translated ADQL run on DuckDB, checked against astropy/numpy on the same rows."""

from __future__ import annotations

import math

import astropy.units as u
import duckdb
import numpy as np
import pyarrow as pa
import pytest
from astropy.coordinates import FK4NoETerms, Galactic, SkyCoord
from matplotlib.path import Path

from romerea_vo.adql import ADQLError, Catalog, ColumnInfo, TableInfo, translate

N_BULGE = 20_000


def _points() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240611)
    parts = [
        (268 + rng.uniform(-1, 1, N_BULGE), -29 + rng.uniform(-1, 1, N_BULGE)),
        (rng.uniform(-1.5, 1.5, 1000) % 360, rng.uniform(-1.5, 1.5, 1000)),  # across RA 0
        (
            rng.uniform(0, 360, 1000),
            np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(87)), 1, 1000))),
        ),
        (
            rng.uniform(0, 360, 1000),
            -np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(87)), 1, 1000))),
        ),
    ]
    ra = np.concatenate([p[0] for p in parts])
    dec = np.concatenate([p[1] for p in parts])
    order = np.argsort(dec)  # dec-sorted, as the ingested tables are
    ra, dec = ra[order], dec[order]
    n = len(ra)
    return {
        "id": np.arange(1, n + 1, dtype=np.int64),
        "ra": ra,
        "dec": dec,
        "mag": rng.uniform(12, 20, n),
        "name": np.array([f"Star{i % 97}" for i in range(n)]),
        "filter": np.array(["g", "r", "i"])[np.arange(n) % 3],
        "index": (np.arange(n) % 7).astype(np.int32),
    }


STARS = _points()
_rng = np.random.default_rng(7)
_pick = _rng.choice(N_BULGE + 3000, 300, replace=False)
TARGETS = {
    "id": np.arange(1, 301, dtype=np.int64),
    "ra": (STARS["ra"][_pick] + _rng.normal(0, 0.004, 300)) % 360,
    "dec": np.clip(STARS["dec"][_pick] + _rng.normal(0, 0.004, 300), -90, 90),
}

STAR_COLUMNS = (
    ColumnInfo("id", "long"),
    ColumnInfo("ra", "double", unit="deg"),
    ColumnInfo("dec", "double", unit="deg"),
    ColumnInfo("mag", "double", unit="mag"),
    ColumnInfo("name", "char", arraysize="*"),
    ColumnInfo("filter", "char", arraysize="*"),
    ColumnInfo("index", "int"),
)


def _squares(centres: list[tuple[float, float]], half: float) -> list[list[float]]:
    """Small DALI polygons (great-circle squares) around the given centres."""
    out = []
    for ra, dec in centres:
        w = half / math.cos(math.radians(dec))
        out.append([ra - w, dec - half, ra + w, dec - half, ra + w, dec + half, ra - w, dec + half])
    return out


REGION_CENTRES = [(268.0 + 0.1 * i, -29.0 + 0.05 * i) for i in range(10)]
REGIONS = _squares(REGION_CENTRES, 0.08)


@pytest.fixture(scope="module")
def db():
    con = duckdb.connect()
    con.execute("CREATE SCHEMA rome")
    stars = pa.table(STARS)  # noqa: F841 (read by DuckDB's replacement scan)
    con.execute("CREATE TABLE rome.stars AS SELECT * FROM stars")
    targets = pa.table(TARGETS)  # noqa: F841
    con.execute("CREATE TABLE upload_t1 AS SELECT * FROM targets")
    con.execute("CREATE TABLE rome.fields (field VARCHAR, footprint DOUBLE[], n INTEGER)")
    con.executemany(
        "INSERT INTO rome.fields VALUES (?, ?, ?)",
        [(f"F{i:02d}", r, i) for i, r in enumerate(REGIONS)],
    )
    yield con
    con.close()


CATALOG = Catalog(
    [
        TableInfo("rome.stars", 'rome."stars"', STAR_COLUMNS),
        TableInfo(
            "rome.fields",
            "rome.fields",
            (
                ColumnInfo("field", "char", arraysize="*"),
                ColumnInfo("footprint", "double", xtype="polygon", arraysize="*"),
                ColumnInfo("n", "int"),
            ),
        ),
    ]
).with_tables(
    [
        TableInfo(
            "TAP_UPLOAD.targets",
            "upload_t1",
            (ColumnInfo("id", "long"), ColumnInfo("ra", "double"), ColumnInfo("dec", "double")),
        )
    ]
)


def run(db, adql: str):
    t = translate(adql, CATALOG)
    return db.execute(t.sql).fetchall(), t


def ids(db, adql: str) -> set[int]:
    rows, _ = run(db, adql)
    return {r[0] for r in rows}


def sky(ra, dec) -> SkyCoord:
    return SkyCoord(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg)


STAR_SKY = sky(STARS["ra"], STARS["dec"])


def cone_truth(ra0: float, dec0: float, r: float) -> set[int]:
    sep = STAR_SKY.separation(sky(ra0, dec0)).deg
    return set(STARS["id"][sep <= r].tolist())


def inside_polygon(vertices: list[tuple[float, float]]) -> set[int]:
    """Reference: great circles are straight lines in the gnomonic projection, so a
    spherical polygon is a plane polygon there (projected about its centre)."""
    v = np.array([sky(*p).cartesian.xyz.value for p in vertices])
    c = v.sum(axis=0)
    c /= np.linalg.norm(c)
    e = np.cross([0, 0, 1.0], c) if abs(c[2]) < 0.9 else np.cross([1.0, 0, 0], c)
    e /= np.linalg.norm(e)
    n = np.cross(c, e)

    def project(xyz):
        d = xyz @ c
        return np.stack([(xyz @ e) / d, (xyz @ n) / d], axis=-1), d

    path = Path(project(v)[0])
    xyz = STAR_SKY.cartesian.xyz.value.T
    plane, d = project(xyz)
    inside = path.contains_points(plane) & (d > 0)
    return set(STARS["id"][inside].tolist())


CONES = [
    (268.1, -29.2, 0.2),
    (0.3, 0.2, 0.6),
    (359.9, -0.5, 0.8),
    (10.0, 89.5, 1.2),
    (123.0, -89.2, 1.5),
]


@pytest.mark.parametrize(("ra0", "dec0", "r"), CONES)
def test_cone_forms_agree_with_astropy(db, ra0, dec0, r):
    truth = cone_truth(ra0, dec0, r)
    assert truth
    forms = [
        f"1=CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra0}, {dec0}, {r}))",
        f"CONTAINS(POINT(ra, dec), CIRCLE({ra0}, {dec0}, {r})) = 1",
        f"1 = CONTAINS(POINT(ra, dec), CIRCLE(POINT({ra0}, {dec0}), {r}))",
        f"1=INTERSECTS(CIRCLE('', {ra0}, {dec0}, {r}), POINT('', ra, dec))",
        f"INTERSECTS(POINT(ra, dec), CIRCLE({ra0}, {dec0}, {r})) = 1",
        f"DISTANCE(POINT(ra, dec), POINT({ra0}, {dec0})) <= {r}",
        f"{r} >= DISTANCE(POINT({ra0}, {dec0}), POINT(ra, dec))",
        f"DISTANCE(ra, dec, {ra0}, {dec0}) <= {r}",
    ]
    for where in forms:
        assert ids(db, f"SELECT id FROM rome.stars WHERE {where}") == truth, where
    outside = ids(
        db,
        f"SELECT id FROM rome.stars WHERE 0 = CONTAINS(POINT(ra, dec), CIRCLE({ra0}, {dec0}, {r}))",
    )
    assert outside == set(STARS["id"].tolist()) - truth


def test_cone_has_declination_band(db):
    _, t = run(
        db, "SELECT id FROM rome.stars WHERE 1=CONTAINS(POINT(ra, dec), CIRCLE(268.1, -29.2, 0.2))"
    )
    assert '"stars"."dec" >= (-29.400000001e0)' in t.sql
    assert '"stars"."dec" <= (-28.999999999e0)' in t.sql
    plan = db.execute("EXPLAIN " + t.sql).fetchall()[0][1]
    assert "Filters" in plan or "dec>=" in plan.replace(" ", "")


def test_box_is_a_great_circle_polygon(db):
    for ra0, dec0, w, h in [
        (268.1, -29.25, 0.4, 0.5),
        (0.0, 0.0, 1.0, 1.2),
        (359.5, 0.3, 0.6, 0.4),
    ]:
        corners = [
            (ra0 - w / 2, dec0 - h / 2),
            (ra0 + w / 2, dec0 - h / 2),
            (ra0 + w / 2, dec0 + h / 2),
            (ra0 - w / 2, dec0 + h / 2),
        ]
        truth = inside_polygon(corners)
        assert truth
        got = ids(
            db,
            f"SELECT id FROM rome.stars WHERE 1=CONTAINS(POINT(ra, dec), "
            f"BOX('ICRS', {ra0}, {dec0}, {w}, {h}))",
        )
        assert got == truth


POLYGONS = [
    # concave ("L") around the bulge field
    [
        (267.5, -29.6),
        (268.6, -29.6),
        (268.6, -29.3),
        (267.9, -29.3),
        (267.9, -28.5),
        (267.5, -28.5),
    ],
    # across RA 0
    [(359.2, -1.0), (0.9, -0.8), (1.1, 1.0), (0.0, 0.4), (358.8, 1.2)],
    # around the north pole
    [(0, 88.5), (72, 88.5), (144, 88.5), (216, 88.5), (288, 88.5)],
]


@pytest.mark.parametrize("vertices", POLYGONS)
def test_polygon_either_order(db, vertices):
    truth = inside_polygon(vertices)
    assert truth
    for vs in (vertices, vertices[::-1]):
        text = ", ".join(f"{a}, {d}" for a, d in vs)
        got = ids(
            db,
            f"SELECT id FROM rome.stars WHERE 1=CONTAINS(POINT(ra, dec), POLYGON('ICRS', {text}))",
        )
        assert got == truth
        points = ", ".join(f"POINT({a}, {d})" for a, d in vs)
        got = ids(
            db, f"SELECT id FROM rome.stars WHERE INTERSECTS(POINT(ra, dec), POLYGON({points})) = 1"
        )
        assert got == truth


def test_join_within_radius_uses_a_range_join(db):
    adql = (
        "SELECT s.id, t.id FROM rome.stars AS s JOIN TAP_UPLOAD.targets AS t "
        "ON 1=CONTAINS(POINT('ICRS', s.ra, s.dec), CIRCLE('ICRS', t.ra, t.dec, 0.01))"
    )
    rows, t = run(db, adql)
    truth = set()
    for tid, ra, dec in zip(TARGETS["id"], TARGETS["ra"], TARGETS["dec"], strict=True):
        near = STAR_SKY.separation(sky(ra, dec)).deg <= 0.01
        truth |= {(int(sid), int(tid)) for sid in STARS["id"][near]}
    assert set(rows) == truth
    assert len(truth) > 300
    plan = db.execute("EXPLAIN " + t.sql).fetchall()[0][1]
    assert "IE Join" in plan or "Piecewise" in plan
    assert "Nested Loop" not in plan and "Blockwise" not in plan
    # The same as a comma join with DISTANCE in WHERE.
    rows2, t2 = run(
        db,
        "SELECT s.id, t.id FROM rome.stars s, TAP_UPLOAD.targets t "
        "WHERE DISTANCE(POINT(t.ra, t.dec), POINT(s.ra, s.dec)) <= 0.01",
    )
    assert set(rows2) == truth
    plan = db.execute("EXPLAIN " + t2.sql).fetchall()[0][1]
    assert "IE Join" in plan or "Piecewise" in plan


def test_distance_values(db):
    rows, t = run(
        db,
        "SELECT id, DISTANCE(POINT(ra, dec), POINT(268.1, -29.2)) AS d, "
        "DISTANCE(ra, dec, 0.0, 90.0) FROM rome.stars",
    )
    d = np.array([r[1] for r in rows])
    idx = np.array([r[0] for r in rows]) - 1
    truth = STAR_SKY[idx].separation(sky(268.1, -29.2)).deg
    assert np.max(np.abs(d - truth)) < 1e-9
    pole = STAR_SKY[idx].separation(sky(0.0, 90.0)).deg
    assert np.max(np.abs(np.array([r[2] for r in rows]) - pole)) < 1e-9
    assert t.columns[1].name == "d" and t.columns[1].datatype == "double"
    assert t.columns[1].unit == "deg"
    # Stable at tiny separations (1 mas) and near 180 degrees.
    rows, _ = run(
        db,
        "SELECT TOP 1 DISTANCE(POINT(10.0, 20.0), POINT(10.0, 20.000000277777776)), "
        "DISTANCE(POINT(10.0, 20.0), POINT(190.0, -19.9999)) FROM rome.stars",
    )
    assert rows[0][0] == pytest.approx(1 / 3.6e6, rel=1e-9)
    assert rows[0][1] == pytest.approx(179.9999, abs=1e-9)


def test_area_centroid_coords(db):
    ring = "0,80, 270,80, 180,80, 90,80"
    ring_rev = "90,80, 180,80, 270,80, 0,80"
    rows, t = run(
        db,
        "SELECT TOP 1 AREA(CIRCLE(268, -29, 1)), AREA(POINT(1, 2)), "
        f"AREA(POLYGON({ring})), AREA(POLYGON({ring_rev})), "
        "AREA(BOX(268, -29, 1, 1)), "
        "CENTROID(CIRCLE(268, -29, 1)), CENTROID(BOX(10, 20, 2, 2)), "
        "COORD1(POINT(12.5, -3.25)), COORD2(POINT(12.5, -3.25)), "
        "COORD1(CENTROID(POLYGON(10, 0, 12, 0, 11, 1))), COORDSYS(POINT(1, 2)), "
        f"CONTAINS(POINT(0, 90), POLYGON({ring})), CONTAINS(POINT(0, -90), POLYGON({ring})) "
        "FROM rome.stars",
    )
    r = rows[0]
    assert r[0] == pytest.approx(
        2 * math.pi * (1 - math.cos(math.radians(1))) * (180 / math.pi) ** 2
    )
    assert r[1] == 0
    # Spherical excess from the interior angles (an independent formula).
    vs = sky([0, 270, 180, 90], [80] * 4).cartesian.xyz.value.T
    angles = []
    for i in range(4):
        a, b, c = vs[i - 1], vs[i], vs[(i + 1) % 4]
        t1 = np.cross(b, a)
        t2 = np.cross(b, c)
        angles.append(np.arccos(np.dot(t1, t2) / np.linalg.norm(t1) / np.linalg.norm(t2)))
    excess = (sum(angles) - 2 * math.pi) * (180 / math.pi) ** 2
    assert r[2] == pytest.approx(excess, rel=1e-9)
    assert r[3] == pytest.approx(excess, rel=1e-9)
    assert 0.85 < r[4] < 0.90  # 1 deg x 1 deg of RA at dec -29: ~cos(29 deg)
    assert r[5] == pytest.approx([268, -29])
    corners = sky([9, 11, 11, 9], [19, 19, 21, 21]).cartesian.xyz.value.sum(axis=1)
    c = SkyCoord(*corners, representation_type="cartesian").spherical
    assert r[6] == pytest.approx([c.lon.deg, c.lat.deg], abs=1e-12)
    assert (r[7], r[8]) == (12.5, -3.25)
    assert r[9] == pytest.approx(11.0)
    assert r[10] == "ICRS"
    assert (r[11], r[12]) == (1, 0)
    names = [c.name for c in t.columns]
    assert names[:2] == ["area", "area_1"]
    assert t.columns[5].xtype == "point" and t.columns[5].arraysize == "2"


def test_geometry_values(db):
    rows, t = run(
        db,
        "SELECT TOP 2 POINT(ra, dec) AS p, CIRCLE(ra, dec, 0.5) AS c, "
        "POLYGON(1, 2, 3, 4, 5, 6) AS poly, BOX(10, 20, 2, 4) AS b, ra, dec "
        "FROM rome.stars ORDER BY id",
    )
    for p, c, poly, box, ra, dec in rows:
        assert p == pytest.approx([ra, dec])
        assert c == pytest.approx([ra, dec, 0.5])
        assert poly == pytest.approx([1, 2, 3, 4, 5, 6])
        assert box == pytest.approx([9, 18, 11, 18, 11, 22, 9, 22])
    xt = [(c.name, c.datatype, c.arraysize, c.xtype) for c in t.columns[:4]]
    assert xt == [
        ("p", "double", "2", "point"),
        ("c", "double", "3", "circle"),
        ("poly", "double", "*", "polygon"),
        ("b", "double", "*", "polygon"),
    ]


def test_coordinate_systems_are_rotated_to_icrs(db):
    rows, _ = run(
        db,
        "SELECT TOP 1 POINT('GALACTIC', 0, 0), POINT('FK5', 10, 20), POINT('FK4', 10, 20), "
        "POINT('J2000', 10, 20), POINT('ICRS GEOCENTER', 10, 20) FROM rome.stars",
    )
    gc = SkyCoord(0 * u.deg, 0 * u.deg, frame=Galactic()).icrs
    assert rows[0][0] == pytest.approx([gc.ra.deg, gc.dec.deg], abs=1e-9)
    fk5 = SkyCoord(10 * u.deg, 20 * u.deg, frame="fk5").icrs
    assert rows[0][1] == pytest.approx([fk5.ra.deg, fk5.dec.deg], abs=1e-9)
    fk4 = SkyCoord(10 * u.deg, 20 * u.deg, frame=FK4NoETerms(equinox="B1950", obstime="B1950"))
    assert rows[0][2] == pytest.approx([fk4.icrs.ra.deg, fk4.icrs.dec.deg], abs=1e-9)
    assert rows[0][3] == rows[0][1]
    assert rows[0][4] == pytest.approx([10, 20])
    # A cone given in galactic coordinates (constant) and points given as galactic columns.
    l0, b0 = 1.5, -1.8
    c = SkyCoord(l0 * u.deg, b0 * u.deg, frame=Galactic()).icrs
    truth = cone_truth(c.ra.deg, c.dec.deg, 0.3)
    got = ids(
        db,
        f"SELECT id FROM rome.stars WHERE 1=CONTAINS(POINT(ra, dec), "
        f"CIRCLE('GALACTIC', {l0}, {b0}, 0.3))",
    )
    assert got == truth and truth
    rows, _ = run(
        db,
        "SELECT TOP 50 id, COORD1(POINT('GALACTIC', ra, dec)), "
        "COORD2(POINT('GALACTIC', ra, dec)) FROM rome.stars ORDER BY id",
    )
    idx = np.array([r[0] for r in rows]) - 1
    g = SkyCoord(STARS["ra"][idx] * u.deg, STARS["dec"][idx] * u.deg, frame=Galactic()).icrs
    assert np.allclose([r[1] for r in rows], g.ra.deg, atol=1e-9)
    assert np.allclose([r[2] for r in rows], g.dec.deg, atol=1e-9)
    with pytest.raises(ADQLError, match="unknown coordinate system 'QUARK'"):
        translate("SELECT POINT('QUARK', 1, 2) FROM rome.stars", CATALOG)


def test_polygon_column(db):
    # CONTAINS(point, polygon column), AREA, DISTANCE and INTERSECTS on a stored polygon.
    rows, _ = run(
        db,
        "SELECT s.id, f.field FROM rome.stars AS s JOIN rome.fields AS f "
        "ON 1 = CONTAINS(POINT(s.ra, s.dec), f.footprint)",
    )
    truth = set()
    for i, region in enumerate(REGIONS):
        vs = list(zip(region[0::2], region[1::2], strict=True))
        truth |= {(sid, f"F{i:02d}") for sid in inside_polygon(vs)}
    assert set(rows) == truth and truth
    rows, _ = run(
        db,
        "SELECT field, AREA(footprint), DISTANCE(footprint, POINT(268.0, -29.0)), "
        "INTERSECTS(CIRCLE(268.0, -29.0, 0.2), footprint), CENTROID(footprint) "
        "FROM rome.fields ORDER BY n",
    )
    ring = np.array([268.0, -29.0])
    for (field, area, dist, hit, centroid), (ra, dec) in zip(rows, REGION_CENTRES, strict=True):
        half = 0.08
        assert area == pytest.approx((2 * half) ** 2, rel=0.01), field
        d = sky(ra, dec).separation(sky(*ring)).deg
        expected = 0.0 if d < half else d - half * 1.42
        assert dist == pytest.approx(expected, abs=0.06), field
        assert hit == (1 if dist <= 0.2 else 0)
        assert centroid == pytest.approx([ra, dec], abs=1e-3)
    # Polygon/polygon: neighbouring squares overlap, a square contains a smaller one.
    rows, _ = run(
        db,
        "SELECT a.n, b.n FROM rome.fields a JOIN rome.fields b ON "
        "INTERSECTS(a.footprint, b.footprint) = 1 AND a.n < b.n",
    )
    assert set(rows) == {(i, i + 1) for i in range(9)}
    rows, _ = run(
        db,
        "SELECT n FROM rome.fields WHERE "
        "CONTAINS(POLYGON(267.93, -29.05, 267.95, -29.05, 267.94, -29.04), footprint) = 1",
    )
    assert rows == [(0,)]


# --- non-geometry ---------------------------------------------------------------------


def test_log_is_natural_and_log10(db):
    rows, _ = run(db, "SELECT TOP 5 mag, LOG(mag), LOG10(mag), EXP(LOG(mag)) FROM rome.stars")
    for m, ln, lg, back in rows:
        assert ln == pytest.approx(math.log(m))
        assert lg == pytest.approx(math.log10(m))
        assert back == pytest.approx(m)


def test_integer_division_is_integer(db):
    rows, t = run(
        db,
        "SELECT TOP 1 7/2, -7/2, 1/3600, 1.0/3600, 7/2.0, 1./60, 6/2*3, "
        "MOD(7, 3), MOD(-7, 3), MOD(7.5, 2) FROM rome.stars",
    )
    assert rows[0] == pytest.approx((3, -3, 0, 1 / 3600, 3.5, 1 / 60, 9, 1, -1, 1.5))
    assert [c.datatype for c in t.columns] == ["long"] * 3 + ["double"] * 3 + ["long"] * 3 + [
        "double"
    ]
    rows, _ = run(db, "SELECT id, id/2 FROM rome.stars WHERE id <= 5 ORDER BY id")
    assert [r[1] for r in rows] == [0, 1, 1, 2, 2]


def test_math_functions(db):
    rows, _ = run(
        db,
        "SELECT TOP 1 TRUNCATE(3.1499, 2), TRUNCATE(-3.9), ROUND(3.14159, 3), ROUND(2.5), "
        "POWER(2, 10), SQRT(16.0), ABS(-3), CEILING(1.2), FLOOR(-1.2), DEGREES(PI()), "
        "RADIANS(180), ATAN2(1, 1), COT(1.0), RAND(), RAND(42), "
        "TRUNCATE(1234, -2) FROM rome.stars",
    )
    r = rows[0]
    assert r[:13] == pytest.approx(
        (3.14, -3, 3.142, 3, 1024, 4, 3, 2, -2, 180, math.pi, math.pi / 4, 1 / math.tan(1))
    )
    assert 0 <= r[13] < 1 and 0 <= r[14] < 1
    assert r[15] == 1200


def test_top_offset_and_subqueries(db):
    rows, t = run(db, "SELECT COUNT(*) FROM (SELECT TOP 10 id FROM rome.stars) AS q")
    assert rows == [(10,)] and t.top is None
    rows, t = run(db, "SELECT TOP 3 id FROM rome.stars ORDER BY id OFFSET 5")
    assert rows == [(6,), (7,), (8,)] and t.top == 3
    rows, _ = run(
        db,
        "SELECT id FROM rome.stars WHERE id IN (SELECT TOP 2 id FROM rome.stars ORDER BY id DESC)",
    )
    assert {r[0] for r in rows} == {len(STARS["id"]), len(STARS["id"]) - 1}
    rows, _ = run(
        db,
        "SELECT TOP 1 (SELECT COUNT(*) FROM TAP_UPLOAD.targets) FROM rome.stars",
    )
    assert rows == [(300,)]


def test_set_operations_with_top_members(db):
    rows, _ = run(
        db,
        "(SELECT TOP 2 id FROM rome.stars ORDER BY id ASC) UNION "
        "(SELECT TOP 2 id FROM rome.stars ORDER BY id DESC) ORDER BY 1",
    )
    n = len(STARS["id"])
    assert [r[0] for r in rows] == [1, 2, n - 1, n]
    rows, _ = run(
        db,
        "SELECT TOP 3 id FROM rome.stars WHERE id < 100 UNION SELECT TOP 2 id FROM "
        "TAP_UPLOAD.targets WHERE id > 250 EXCEPT SELECT id FROM rome.stars WHERE id = 1",
    )
    assert len(rows) <= 4
    rows, _ = run(
        db,
        "SELECT id FROM rome.stars WHERE id <= 10 INTERSECT SELECT id FROM TAP_UPLOAD.targets "
        "ORDER BY id",
    )
    assert [r[0] for r in rows] == list(range(1, 11))
    rows, _ = run(
        db,
        "WITH a AS (SELECT TOP 5 id FROM rome.stars ORDER BY id), b AS (SELECT id FROM a "
        "WHERE MOD(id, 2) = 1) SELECT * FROM a EXCEPT SELECT * FROM b ORDER BY id",
    )
    assert [r[0] for r in rows] == [2, 4]


def test_strings_and_keywords_as_column_names(db):
    rows, t = run(
        db,
        'SELECT TOP 3 LOWER(name), UPPER(name), name || \'/\' || "filter", "index", '
        "\"filter\" FROM rome.stars WHERE name ILIKE 'star1%' AND name NOT LIKE 'Star2%' "
        "ORDER BY id",
    )
    for low, up, cat, index, band in rows:
        assert low.startswith("star1") and up == low.upper()
        assert cat == f"{low[0].upper()}{low[1:]}/{band}"
        assert 0 <= index < 7
    assert [c.name for c in t.columns] == ["lower", "upper", "expr", "index", "filter"]
    assert t.columns[3].source == ("rome.stars", "index")


def test_order_by_position_alias_and_expression(db):
    rows, _ = run(db, "SELECT TOP 3 id, mag AS m FROM rome.stars ORDER BY 2 DESC, 1")
    mags = sorted(STARS["mag"], reverse=True)[:3]
    assert [r[1] for r in rows] == pytest.approx(mags)
    rows, _ = run(db, "SELECT TOP 3 id, mag AS m FROM rome.stars ORDER BY m")
    assert [r[1] for r in rows] == pytest.approx(sorted(STARS["mag"])[:3])
    rows, _ = run(db, "SELECT TOP 3 id FROM rome.stars ORDER BY ABS(dec) DESC")
    assert rows[0][0] in (1, len(STARS["id"]))


def test_group_by_alias_having_and_aggregates(db):
    rows, t = run(
        db,
        'SELECT "filter" AS band, COUNT(*) AS n, AVG(mag), SUM("index"), MIN(mag), MAX(ra) '
        "FROM rome.stars GROUP BY band HAVING COUNT(*) > 10 ORDER BY band",
    )
    assert [r[0] for r in rows] == ["g", "i", "r"]
    assert sum(r[1] for r in rows) == len(STARS["id"])
    assert [c.datatype for c in t.columns] == ["char", "long", "double", "long", "double", "double"]
    assert t.columns[4].unit == "mag"


def test_joins_using_natural_and_star_expansion(db):
    rows, t = run(
        db,
        "SELECT * FROM rome.stars JOIN TAP_UPLOAD.targets USING (id) WHERE id <= 3 ORDER BY id",
    )
    assert [c.name for c in t.columns] == [
        "id",
        "ra",
        "dec",
        "mag",
        "name",
        "filter",
        "index",
        "ra_1",
        "dec_1",
    ]
    assert len(rows[0]) == len(t.columns) and [r[0] for r in rows] == [1, 2, 3]
    rows, t = run(
        db,
        "SELECT * FROM (SELECT id, ra FROM rome.stars) AS a NATURAL JOIN "
        "(SELECT id, ra FROM TAP_UPLOAD.targets) AS b",
    )
    assert [c.name for c in t.columns] == ["id", "ra"] and rows == []
    rows, t = run(
        db,
        "SELECT s.id, t.id FROM rome.stars AS s LEFT OUTER JOIN TAP_UPLOAD.targets AS t "
        "ON s.id = t.id + 1000000 WHERE s.id <= 2",
    )
    assert sorted(rows) == [(1, None), (2, None)]
    assert [c.name for c in t.columns] == ["id", "id_1"]


def test_cast_in_unit_coalesce_case(db):
    rows, t = run(
        db,
        "SELECT TOP 1 CAST(3.7 AS INTEGER), CAST(id AS DOUBLE PRECISION), CAST(id AS VARCHAR), "
        "CAST(name AS CHAR(3)), CAST('2021-01-14T11:25:00' AS TIMESTAMP), "
        "CAST('12.5 45.25' AS POINT), IN_UNIT(ra, 'rad'), IN_UNIT(ra, 'arcsec'), "
        "COALESCE(NULL, mag), CASE WHEN mag > 15 THEN 'faint' ELSE 'bright' END, NULL "
        "FROM rome.stars ORDER BY id",
    )
    r = rows[0]
    assert r[0] == 4 and r[1] == 1.0 and r[2] == "1" and r[3] == STARS["name"][0][:3]
    assert r[4] == "2021-01-14T11:25:00.000000" and t.columns[4].xtype == "timestamp"
    assert r[5] == [12.5, 45.25] and t.columns[5].xtype == "point"
    assert r[6] == pytest.approx(math.radians(STARS["ra"][0]))
    assert r[7] == pytest.approx(STARS["ra"][0] * 3600)
    assert t.columns[6].unit == "rad"
    assert r[8] == pytest.approx(STARS["mag"][0])
    assert r[9] in ("faint", "bright")
    assert r[10] is None and t.columns[10].datatype == "char"
    with pytest.raises(ADQLError, match="cannot be converted"):
        translate("SELECT IN_UNIT(ra, 'm') FROM rome.stars", CATALOG)
    with pytest.raises(ADQLError, match="unit of this expression is not known"):
        translate("SELECT IN_UNIT(id, 'm') FROM rome.stars", CATALOG)


def test_output_names_are_unique_and_quoted(db):
    rows, t = run(
        db,
        'SELECT TOP 1 s.ra, t.ra, s.ra AS "RA", 1 AS "select", s."index" FROM rome.stars s, '
        "TAP_UPLOAD.targets t",
    )
    assert [c.name for c in t.columns] == ["ra", "ra_1", "RA_2", "select", "index"]
    assert len(rows[0]) == 5
    assert [c.source for c in t.columns[:2]] == [("rome.stars", "ra"), ("TAP_UPLOAD.targets", "ra")]


def test_null_geometry_gives_null_not_a_value():
    con = duckdb.connect()
    con.execute("CREATE TABLE g (id INT, fp DOUBLE[], p DOUBLE[], c DOUBLE[], ra DOUBLE)")
    con.execute(
        "INSERT INTO g VALUES (1, NULL, NULL, NULL, NULL), "
        "(2, [10, 10, 11, 10, 11, 11, 10, 11], [10.5, 10.5], [10.5, 10.5, 0.2], 10.5)"
    )
    cols = (
        ColumnInfo("id", "int"),
        ColumnInfo("fp", "double", xtype="polygon", arraysize="*"),
        ColumnInfo("p", "double", xtype="point", arraysize="2"),
        ColumnInfo("c", "double", xtype="circle", arraysize="3"),
        ColumnInfo("ra", "double"),
    )
    catalog = Catalog([TableInfo("g", "g", cols)])
    items = [
        "CONTAINS(p, fp)", "AREA(fp)", "CENTROID(fp)", "DISTANCE(p, fp)", "INTERSECTS(c, fp)",
        "CONTAINS(fp, c)", "INTERSECTS(fp, fp)", "CONTAINS(p, c)", "COORD1(p)", "AREA(c)",
        "CENTROID(c)", "DISTANCE(p, c)", "POINT(ra, 1)", "COORD2(POINT('GALACTIC', ra, 1))",
        "DISTANCE(POINT(ra, 1), POLYGON(0, 0, 1, 0, 0.5, 1))",
    ]  # fmt: skip
    t = translate(f"SELECT {', '.join(items)} FROM g ORDER BY id", catalog)
    null_row, row = con.execute(t.sql).fetchall()
    assert all(v is None for v in null_row), list(zip(items, null_row, strict=True))
    assert all(v is not None for v in row)
    # 0 = CONTAINS(...) keeps NULLs out, as 1 = CONTAINS(...) does.
    rows = con.execute(translate("SELECT id FROM g WHERE 0 = CONTAINS(p, c)", catalog).sql)
    assert rows.fetchall() == []
