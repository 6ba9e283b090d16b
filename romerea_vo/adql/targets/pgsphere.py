"""PostgreSQL + pgSphere target: ADQL functions as PostgreSQL SQL, geometry as pgSphere.

Positions are plain ra/dec columns in degrees (ICRS); a point is
``spoint(radians(ra), radians(dec))``, the expression a GiST index is built on
(``CREATE INDEX ... USING gist (spoint(radians(ra), radians(dec)))``), so cones, polygons
and positional joins written on a table's position columns are index scans:

* CONTAINS(POINT, CIRCLE) and DISTANCE(POINT, POINT) < r become ``spoint <@ scircle``
  with the column side on the left (a join between two tables' positions gets the test
  both ways round, so the planner can use the index of either table); radii over 90° (the
  largest scircle) are the complement of the antipodal cap; a radius that is an
  expression is folded by the planner;
* CONTAINS(POINT, POLYGON/BOX) is ``spoint <@ spoly``; circle and polygon tests are
  pgSphere's ``<@`` (CONTAINS) and ``&&`` (INTERSECTS). pgSphere compares with a
  tolerance of 1e-9 rad (0.2 mas).

Results that are geometries are DALI double arrays in degrees (``double precision[]``),
built from the coordinates, as the DuckDB target builds them, so both targets give the
same values. What pgSphere computes imprecisely is computed as the DuckDB target does:
DISTANCE values (Vincenty's formula; ``<->`` loses ~1e-8 relative at small separations),
polygon areas (signed spherical excess; pgSphere's ``area(spoly)`` is wrong for polygons
below ~1′), centroids (normalised mean of the vertices).

ADQL semantics kept equal to the DuckDB target: LOG is ``ln``; integer / integer truncates;
ROUND is half away from zero; AVG is double, SUM of integers bigint; LIKE has no escape
character; RAND(seed) ignores the seed; BOX is a polygon with great-circle edges (not
pgSphere's ``sbox``, whose edges are parallels and meridians).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.generators.postgres import PostgresGenerator
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from .. import sphere
from ..catalog import TableInfo
from ..errors import ADQLError
from ..frames import ICRS, ROTATIONS
from ..model import (
    DOUBLE,
    INT,
    STRING,
    Circle,
    Geometry,
    Point,
    Polygon,
    Stored,
    Value,
    geometry_type,
    shape_of,
)
from .base import Backend, Raw
from .common import SIMPLE_FUNCTIONS, clamp, cross, dot, vec_angle


class _Dialect(Postgres):
    class Generator(PostgresGenerator):
        TRANSFORMS: ClassVar = {
            **PostgresGenerator.TRANSFORMS,
            Raw: lambda self, e: f"({e.this})",
        }


_DIALECT = _Dialect()

_SIMPLE = SIMPLE_FUNCTIONS
# Functions PostgreSQL computes in double precision whatever the argument: an integer
# argument must come back as an integer, as ADQL (and the DuckDB target) types it.
_INT_PRESERVED = {"CEILING": "ceil", "FLOOR": "floor"}
_CAST = {
    "SMALLINT": "SMALLINT",
    "INTEGER": "INTEGER",
    "BIGINT": "BIGINT",
    "REAL": "REAL",
    "DOUBLE PRECISION": "DOUBLE PRECISION",
    "TIMESTAMP": "TIMESTAMP",
}
_MAX_CIRCLE = 90.0  # pgSphere's largest scircle radius, degrees
_FOUR_PI = 4 * math.pi


def _num(x: float) -> str:
    """A double precision literal (a bare 0.5 is NUMERIC in PostgreSQL)."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError(f"not a finite number: {x}")
    text = repr(float(x))
    return f"({text}::float8)" if text.startswith("-") else f"{text}::float8"


@dataclass
class _P:
    """A point in ICRS as SQL text (degrees), with its constant value when known; ``table``
    is the alias of the table whose plain position columns these are."""

    ra: str
    dec: str
    const: tuple[float, float] | None = None
    table: str | None = None

    def spoint(self) -> str:
        # Exactly the expression of the position index: keep it so.
        return f"spoint(radians({self.ra}), radians({self.dec}))"

    def antipode(self) -> str:
        if self.const is not None:
            ra, dec = self.const
            return f"spoint(radians({_num((ra + 180.0) % 360.0)}), radians({_num(-dec)}))"
        return f"spoint(radians({self.ra}) + pi(), -radians({self.dec}))"

    def vec(self) -> list[str]:
        if self.const is not None:
            return [_num(c) for c in sphere.unit(*self.const)]
        cd = f"cos(radians({self.dec}))"
        return [
            f"{cd} * cos(radians({self.ra}))",
            f"{cd} * sin(radians({self.ra}))",
            f"sin(radians({self.dec}))",
        ]


@dataclass
class _C:
    center: _P
    radius: str
    radius_const: float | None


@dataclass
class _Poly:
    """A polygon: constant vertices (unit vectors), or a DALI array as SQL text."""

    vectors: list[sphere.Vec] | None = None
    flat: str | None = None

    def array_sql(self) -> str:
        if self.flat is not None:
            return self.flat
        coords: list[float] = []
        for v in self.vectors or []:
            coords.extend(sphere.radec(v))
        return "ARRAY[" + ", ".join(_num(c) for c in coords) + "]"


def _wrap360(angle: str) -> str:
    """``(angle + 360) mod 360`` for an angle in [-180, 180], as DuckDB's ``%`` computes it
    (PostgreSQL has no ``%`` for doubles)."""
    s = f"(({angle}) + 360.0::float8)"
    return f"(CASE WHEN {s} >= 360.0::float8 THEN {s} - 360.0::float8 ELSE {s} END)"


def _polygon_text(vectors: list[sphere.Vec]) -> str:
    """A constant spoly, vertices in radians (exact: no degree conversion in pgSphere)."""
    parts = []
    for v in vectors:
        ra, dec = sphere.radec(v)
        parts.append(f"({math.radians(ra)!r},{math.radians(dec)!r})")
    return "'{" + ",".join(parts) + "}'::spoly"


class PgSphereBackend(Backend):
    name: ClassVar[str] = "pgsphere"

    def __init__(self) -> None:
        self._var = 0

    # --- plumbing ---------------------------------------------------------------------

    def sql(self, node: exp.Expression) -> str:
        return _DIALECT.generate(node, identify=True, comments=False)

    def generate(self, tree: exp.Expression) -> str:
        for like in list(tree.find_all(exp.Like, exp.ILike)):
            # ADQL's LIKE has no escape character; PostgreSQL's default one is '\'.
            if not isinstance(like.parent, exp.Escape):
                like.replace(exp.Escape(this=like.copy(), expression=exp.Literal.string("")))
        for concat in list(tree.find_all(exp.DPipe)):
            # PostgreSQL's || needs a string on one side (DuckDB converts either side).
            for key in ("this", "expression"):
                part = concat.args[key]
                if not isinstance(part, exp.DPipe) and not (
                    isinstance(part, exp.Literal) and part.is_string
                ):
                    part.replace(exp.Cast(this=part.copy(), to=exp.DataType.build("TEXT")))
        return self.sql(tree)

    def var(self, base: str) -> str:
        self._var += 1
        return f"adql_{base}{self._var}"

    def text(self, v: Value) -> str:
        if v.is_const:
            return _num(v.number)
        return self.sql(v.sql)

    # --- scalars ----------------------------------------------------------------------

    def table(self, info: TableInfo) -> exp.Expression:
        # Unquoted parts of the physical name fold to lower case, as PostgreSQL reads them;
        # the generated SQL quotes every identifier.
        table = normalize_identifiers(exp.to_table(info.physical, dialect=_DIALECT), _DIALECT)
        table.meta["physical"] = info.physical
        return table

    def number(self, text: str, integer: bool) -> exp.Expression:
        if integer:
            return exp.Literal.number(text)
        # 3.14 is NUMERIC in PostgreSQL; ADQL's approximate numbers are doubles.
        return exp.Cast(this=exp.Literal.number(text), to=exp.DataType.build("DOUBLE"))

    def function(self, name: str, args: list[Value]) -> exp.Expression:
        sqls = [a.sql for a in args]
        is_int = bool(args) and args[0].type.kind == "int"
        if name in _SIMPLE:
            return exp.Anonymous(this=_SIMPLE[name], expressions=sqls)
        if name in _INT_PRESERVED:
            call = exp.Anonymous(this=_INT_PRESERVED[name], expressions=sqls)
            return self.as_bigint(call) if is_int else call
        if name == "SUM":
            total = exp.Anonymous(this="sum", expressions=sqls)
            # sum(bigint) is NUMERIC in PostgreSQL.
            return self.as_bigint(total) if is_int else total
        if name == "AVG":
            avg = exp.Anonymous(this="avg", expressions=sqls)
            return exp.Cast(this=avg, to=exp.DataType.build("DOUBLE"))
        if name == "MOD":
            if all(a.type.kind == "int" for a in args):
                return exp.Anonymous(this="mod", expressions=sqls)
            x, y = self.text(args[0]), self.text(args[1])
            # fmod: the remainder has the sign of x.
            return Raw(this=f"({x}) - trunc(({x}) / ({y})) * ({y})")
        if name == "RAND":
            # As on the DuckDB target: RAND(seed) returns a random number as RAND() does
            # (setseed() would change the session, not this call).
            return exp.Anonymous(this="random", expressions=[])
        if name == "ROUND":
            return self.round(args)
        if name == "TRUNCATE":
            x = self.text(args[0])
            if len(args) == 1:
                out = f"trunc({x})"
            else:
                n = self.sql(self.int_arg(args[1]))
                out = f"trunc(({x}) * power(10, {n})) / power(10, {n})"
            return Raw(this=f"CAST({out} AS BIGINT)" if is_int else out)
        # A declared user-defined function, called by its declared name.
        return exp.Anonymous(this=name, expressions=sqls)

    def round(self, args: list[Value]) -> exp.Expression:
        """ROUND as on the DuckDB target: half away from zero (PostgreSQL's round of a
        double rounds half to even); with n digits, round(x * 10^n) / 10^n."""
        x = self.text(args[0])
        if args[0].type.kind == "int":
            if len(args) == 1:
                return self.as_bigint(args[0].sql)
            n = self.sql(self.int_arg(args[1]))
            return Raw(this=f"CAST(round(CAST({x} AS NUMERIC), {n}) AS BIGINT)")
        if len(args) == 1:
            return Raw(this=self.half_away(x))
        n = self.sql(self.int_arg(args[1]))
        scaled = f"({x}) * power(10, {n})"
        return Raw(this=f"{self.half_away(scaled)} / power(10, {n})")

    @staticmethod
    def half_away(x: str) -> str:
        # x - trunc(x) is exact, so this is exactly C's round().
        return (
            f"(trunc({x}) + CASE WHEN abs(({x}) - trunc({x})) >= 0.5::float8 "
            f"THEN sign({x}) ELSE 0.0::float8 END)"
        )

    def as_bigint(self, node: exp.Expression) -> exp.Expression:
        return exp.Cast(this=node, to=exp.DataType.build("BIGINT"))

    def int_arg(self, v: Value) -> exp.Expression:
        return exp.Cast(this=v.sql, to=exp.DataType.build("INT"))

    def divide(self, left: Value, right: Value, integer: bool) -> exp.Expression:
        # PostgreSQL's integer / integer truncates towards zero, as ADQL means (and as
        # the DuckDB target's // does).
        return exp.Div(this=left.sql, expression=right.sql, typed=True)

    def cast(self, value: Value, target: str, length: int | None) -> exp.Expression:
        text = self.sql(value.sql)
        if target in _CAST:
            return Raw(this=f"CAST({text} AS {_CAST[target]})")
        if target in ("CHAR", "VARCHAR"):
            if value.type.kind == "geometry":
                text = f"array_to_string({text}, ' ')"
            if target == "CHAR" and length is None:
                length = 1  # SQL's CHAR means CHAR(1)
            cast = f"CAST({text} AS VARCHAR)"
            return Raw(this=f"left({cast}, {length})" if length is not None else cast)
        # POINT/CIRCLE/POLYGON from a string of numbers, e.g. '12.3 45.6'.
        return Raw(
            this=f"CAST(regexp_split_to_array(trim({text}), '[\\s,]+') AS DOUBLE PRECISION[])"
        )

    def output(self, value: Value) -> exp.Expression:
        if value.type.kind == "null":
            return Raw(this="CAST(NULL AS VARCHAR)")
        if value.type.kind == "timestamp":
            # DALI timestamps are ISO 8601 strings.
            return Raw(this=f"""to_char({self.sql(value.sql)}, 'YYYY-MM-DD"T"HH24:MI:SS.US')""")
        return value.sql

    def scale(self, value: Value, factor: float) -> exp.Expression:
        return Raw(this=f"({self.sql(value.sql)}) * {_num(factor)}")

    # --- geometry: normalisation ------------------------------------------------------

    def point(self, p: Point) -> _P:
        """The point in ICRS."""
        if p.ra.is_const and p.dec.is_const:
            ra, dec = p.ra.number, p.dec.number
            if p.frame != ICRS:
                ra, dec = sphere.radec(sphere.rotate(ROTATIONS[p.frame], sphere.unit(ra, dec)))
            return _P(_num(ra), _num(dec), (ra, dec))
        ra_sql, dec_sql = self.text(p.ra), self.text(p.dec)
        if p.frame == ICRS:
            return _P(ra_sql, dec_sql, None, p.column_table())
        m = ROTATIONS[p.frame]
        v = _P(ra_sql, dec_sql).vec()
        x, y, z = ([_num(m[i][j]) for j in range(3)] for i in range(3))
        rx, ry, rz = dot(x, v), dot(y, v), dot(z, v)
        return _P(
            _wrap360(f"degrees(atan2({ry}, {rx}))"),
            f"degrees(asin({clamp(rz, '(-1.0::float8)', '1.0::float8')}))",
        )

    def stored_point(self, s: Stored) -> _P:
        text = self.sql(s.value.sql)
        return _P(f"({text})[1]", f"({text})[2]")

    def as_point(self, g: Geometry) -> _P:
        return self.point(g) if isinstance(g, Point) else self.stored_point(g)  # type: ignore[arg-type]

    def as_circle(self, g: Geometry) -> _C:
        if isinstance(g, Circle):
            center = self.as_point(g.center)
            r = g.radius
            return _C(center, self.text(r), r.number if r.is_const else None)
        text = self.sql(g.value.sql)  # type: ignore[union-attr]
        return _C(_P(f"({text})[1]", f"({text})[2]"), f"({text})[3]", None)

    def as_polygon(self, g: Geometry) -> _Poly:
        if isinstance(g, Polygon):
            points = [self.point(v) for v in g.vertices]
            if all(p.const is not None for p in points):
                return _Poly(vectors=[sphere.unit(*p.const) for p in points])  # type: ignore[misc]
            coords = []
            for p in points:
                coords += [
                    f"CAST({p.ra} AS DOUBLE PRECISION)",
                    f"CAST({p.dec} AS DOUBLE PRECISION)",
                ]
            return _Poly(flat="(ARRAY[" + ", ".join(coords) + "])")
        return _Poly(flat="(" + self.sql(g.value.sql) + ")")  # type: ignore[union-attr]

    # --- geometry: pgSphere objects ---------------------------------------------------

    def scircle(self, c: _C) -> str:
        if c.radius_const is not None and not 0 <= c.radius_const <= _MAX_CIRCLE:
            raise ADQLError(
                f"a CIRCLE radius of {c.radius_const:g} degrees: on this service a circle "
                f"compared with another circle or a polygon must have a radius between 0 "
                f"and {_MAX_CIRCLE:g} degrees"
            )
        return f"scircle({c.center.spoint()}, radians({c.radius}))"

    def spoly(self, poly: _Poly) -> str:
        if poly.vectors is not None:
            return _polygon_text(poly.vectors)
        a, i = poly.array_sql(), self.var("i")
        lon, lat = f"radians({a}[2 * {i} - 1])", f"radians({a}[2 * {i}])"
        build = (
            f"(SELECT spoly(spoint({lon}, {lat}) ORDER BY {i}) "
            f"FROM generate_series(1, array_length({a}, 1) / 2) AS {i})"
        )
        return _no_nulls(a, build)

    def region(self, g: Geometry) -> str:
        """A circle or polygon as a pgSphere object."""
        if shape_of(g) == "circle":
            return self.scircle(self.as_circle(g))
        return self.spoly(self.as_polygon(g))

    # --- geometry: values -------------------------------------------------------------

    def geometry(self, geom: Geometry) -> exp.Expression:
        if isinstance(geom, Stored):
            return geom.value.sql
        if isinstance(geom, Point):
            p = self.point(geom)
            return Raw(this=self.point_array(p))
        if isinstance(geom, Circle):
            c = self.as_circle(geom)
            return Raw(this=self.null_guarded([c.center.ra, c.center.dec, c.radius]))
        return Raw(this=self.as_polygon(geom).array_sql())

    def point_array(self, p: _P) -> str:
        return self.null_guarded([p.ra, p.dec])

    def null_guarded(self, parts: list[str]) -> str:
        items = ", ".join(f"CAST({x} AS DOUBLE PRECISION)" for x in parts)
        tests = " OR ".join(f"({x}) IS NULL" for x in parts)
        return f"CASE WHEN {tests} THEN NULL ELSE ARRAY[{items}] END"

    def geometry_function(self, name: str, args: list[Value]) -> Value:
        g = [a.geom for a in args]
        if name in ("COORD1", "COORD2"):
            p = self.as_point(g[0])  # type: ignore[arg-type]
            return Value(
                Raw(this=p.ra if name == "COORD1" else p.dec),
                DOUBLE.with_unit(("u", "deg")),
                name=name.lower(),
            )
        if name == "COORDSYS":
            return Value(exp.Literal.string(ICRS), STRING, name="coordsys")
        if name == "AREA":
            return Value(
                Raw(this=self.area(g[0])),  # type: ignore[arg-type]
                DOUBLE.with_unit(("u", "deg**2")),
                name="area",
            )
        if name == "CENTROID":
            p = self.centroid(g[0])  # type: ignore[arg-type]
            ra = Value(Raw(this=p.ra), DOUBLE, const=p.const[0] if p.const else None)
            dec = Value(Raw(this=p.dec), DOUBLE, const=p.const[1] if p.const else None)
            value = Value(
                Raw(this=self.point_array(p)), geometry_type("point"), geom=Point(ra, dec)
            )
            value.name = "centroid"
            return value
        if name == "DISTANCE":
            return Value(
                Raw(this=self.distance(g[0], g[1])),  # type: ignore[arg-type]
                DOUBLE.with_unit(("u", "deg")),
                name="distance",
            )
        # CONTAINS / INTERSECTS as a value: 1, 0 or NULL.
        pred = self.predicate(name, g[0], g[1])  # type: ignore[arg-type]
        return Value(Raw(this=f"CAST({pred} AS INTEGER)"), INT, name=name.lower())

    def area(self, g: Geometry) -> str:
        shape = shape_of(g)
        if shape == "point":
            return "0.0::float8"
        if shape == "circle":
            c = self.as_circle(g)
            if c.radius_const is not None:
                r = math.radians(min(abs(c.radius_const), 180.0))
                return _num(2 * math.pi * (1 - math.cos(r)) * sphere.SR_TO_DEG2)
            r_sql = clamp(f"abs({c.radius})", "0.0::float8", "180.0::float8")
            return f"(2 * pi() * (1 - cos(radians({r_sql}))) * {_num(sphere.SR_TO_DEG2)})"
        poly = self.as_polygon(g)
        if poly.vectors is not None:
            return _num(sphere.area(poly.vectors) * sphere.SR_TO_DEG2)
        # The signed spherical excess of the fan from vertex 1, as sphere.signed_area;
        # the polygon is the smaller region.
        a = poly.array_sql()
        rows, refs = self.vertex_rows(
            a, "2", f"array_length({a}, 1) / 2 - 1", {"f": "1", "b": "{i}", "c": "{i} + 1"}
        )
        first, second, third = refs["f"], refs["b"], refs["c"]
        term = (
            f"2 * atan2({dot(first, cross(second, third))}, "
            f"1 + {dot(first, second)} + {dot(second, third)} + {dot(third, first)})"
        )
        s = f"sum({term})"
        smaller = f"abs({s} - {_num(_FOUR_PI)} * round({s} / {_num(_FOUR_PI)}))"
        return _no_nulls(a, f"(SELECT {smaller} * {_num(sphere.SR_TO_DEG2)} FROM {rows})")

    def vertex(self, flat: str, k: str) -> list[str]:
        """SQL for the unit vector of vertex ``k`` (1-based) of a DALI polygon array."""
        lon, lat = f"radians({flat}[2 * ({k}) - 1])", f"radians({flat}[2 * ({k})])"
        return [f"cos({lat}) * cos({lon})", f"cos({lat}) * sin({lon})", f"sin({lat})"]

    def vertex_rows(
        self,
        flat: str,
        start: str,
        stop: str,
        vertices: dict[str, str],
        extra: dict[str, list[str]] | None = None,
    ) -> tuple[str, dict[str, list[str]]]:
        """A FROM item with one row per ``i`` from start to stop, holding the unit vectors
        of the vertices ``vertices`` names (``{i}`` in an index is the row's ``i``) and the
        ``extra`` vectors; and the column references of each vector. Computed once per row
        (OFFSET 0 keeps PostgreSQL from expanding them into every use)."""
        e, i = self.var("e"), self.var("i")
        vectors = {k: self.vertex(flat, idx.format(i=i)) for k, idx in vertices.items()}
        vectors.update(extra or {})
        cols = ", ".join(f"{v} AS {k}{j}" for k, vec in vectors.items() for j, v in enumerate(vec))
        refs = {k: [f"{e}.{k}{j}" for j in range(3)] for k in vectors}
        rows = f"(SELECT {cols} FROM generate_series({start}, {stop}) AS {i} OFFSET 0) AS {e}"
        return rows, refs

    def centroid(self, g: Geometry) -> _P:
        shape = shape_of(g)
        if shape == "point":
            return self.as_point(g)
        if shape == "circle":
            return self.as_circle(g).center
        poly = self.as_polygon(g)
        if poly.vectors is not None:
            ra, dec = sphere.radec(sphere.centroid(poly.vectors))
            return _P(_num(ra), _num(dec), (ra, dec))
        a, i = poly.array_sql(), self.var("i")
        x, y, z = (f"sum({c})" for c in self.vertex(a, i))
        rows = f"FROM generate_series(1, array_length({a}, 1) / 2) AS {i}"
        norm = f"sqrt({x} * {x} + {y} * {y} + {z} * {z})"
        ra_sql = f"(SELECT {_wrap360(f'degrees(atan2({y}, {x}))')} {rows})"
        dec_sql = (
            f"(SELECT degrees(asin({clamp(f'{z} / {norm}', '(-1.0::float8)', '1.0::float8')}))"
            f" {rows})"
        )
        return _P(_no_nulls(a, ra_sql), _no_nulls(a, dec_sql))

    def distance(self, a: Geometry, b: Geometry) -> str:
        if shape_of(a) != "point":
            a, b = b, a
        p = self.as_point(a)
        shape = shape_of(b)
        if shape == "point":
            return self.point_distance(p, self.as_point(b))
        if shape == "circle":
            c = self.as_circle(b)
            gap = f"{self.point_distance(p, c.center)} - ({c.radius})"
            return clamp(gap, "0.0::float8", "180.0::float8")
        poly = self.as_polygon(b)
        inside = f"{p.spoint()} <@ {self.spoly(poly)}"
        return f"CASE WHEN {inside} THEN 0.0::float8 ELSE {self.boundary_distance(p, poly)} END"

    def point_distance(self, p: _P, q: _P) -> str:
        """Great-circle distance in degrees (Vincenty's formula: stable everywhere)."""
        if p.const is not None and q.const is not None:
            return _num(sphere.separation(*p.const, *q.const))
        d1, d2 = f"radians({p.dec})", f"radians({q.dec})"
        da = f"radians(({q.ra}) - ({p.ra}))"
        y1 = f"cos({d2}) * sin({da})"
        y2 = f"cos({d1}) * sin({d2}) - sin({d1}) * cos({d2}) * cos({da})"
        x = f"sin({d1}) * sin({d2}) + cos({d1}) * cos({d2}) * cos({da})"
        return f"degrees(atan2(sqrt(power({y1}, 2) + power({y2}, 2)), {x}))"

    def boundary_distance(self, p: _P, poly: _Poly) -> str:
        """Distance in degrees from p to the nearest edge of the polygon."""
        pc = p.vec()
        if poly.vectors is not None:
            vs = poly.vectors
            n = len(vs)
            items = []
            for k in range(n):
                a = [_num(x) for x in vs[k]]
                b = [_num(x) for x in vs[(k + 1) % n]]
                items.append(self.arc_distance(pc, a, b))
            # The items are NULL together (p is NULL) or not at all.
            return f"LEAST({', '.join(items)})"
        f = poly.array_sql()
        count = f"(array_length({f}, 1) / 2)"
        rows, refs = self.vertex_rows(
            f, "1", count, {"a": "{i}", "b": f"{{i}} % {count} + 1"}, {"p": pc}
        )
        arc = self.arc_distance(refs["p"], refs["a"], refs["b"])
        return _no_nulls(f, f"(SELECT min({arc}) FROM {rows})")

    def arc_distance(self, p: list[str], a: list[str], b: list[str]) -> str:
        n = cross(a, b)
        nn = f"sqrt({dot(n, n)})"
        inside = f"{dot(cross(a, p), n)} >= 0 AND {dot(cross(p, b), n)} >= 0 AND {nn} > 0"
        perp = f"degrees(asin({clamp(f'abs({dot(p, n)}) / {nn}', '0.0::float8', '1.0::float8')}))"
        ends = f"LEAST({vec_angle(p, a)}, {vec_angle(p, b)})"
        return f"(CASE WHEN {inside} THEN {perp} ELSE {ends} END)"

    # --- geometry: predicates ---------------------------------------------------------

    def geometry_predicate(
        self, name: str, a: Geometry, b: Geometry, truth: bool
    ) -> exp.Expression:
        pred = self.predicate(name, a, b)
        return Raw(this=pred if truth else f"NOT ({pred})")

    def distance_predicate(
        self, a: Geometry, b: Geometry, op: str, radius: Value
    ) -> exp.Expression | None:
        if shape_of(a) != "point" or shape_of(b) != "point":
            return None
        p, q = self.as_point(a), self.as_point(b)
        rc = radius.number if radius.is_const else None
        return Raw(this=self.cone(p, q, self.text(radius), rc, strict=op == "<"))

    def predicate(self, name: str, a: Geometry, b: Geometry) -> str:
        sa, sb = shape_of(a), shape_of(b)
        if name == "INTERSECTS":
            if sb == "point" and sa != "point":
                a, b, sa, sb = b, a, sb, sa
            if sa == "point":
                return self.predicate("CONTAINS", a, b)
            if sa == "circle" and sb == "circle":
                ca, cb = self.as_circle(a), self.as_circle(b)
                radius = f"({ca.radius}) + ({cb.radius})"
                rc = None
                if ca.radius_const is not None and cb.radius_const is not None:
                    rc = ca.radius_const + cb.radius_const
                return self.cone(ca.center, cb.center, radius, rc)
            return f"({self.region(a)} && {self.region(b)})"
        # CONTAINS(a, b): a lies within b.
        if sa == "point":
            p = self.as_point(a)
            if sb == "point":
                return f"({p.spoint()} = {self.as_point(b).spoint()})"
            if sb == "circle":
                c = self.as_circle(b)
                return self.cone(p, c.center, c.radius, c.radius_const)
            return f"({p.spoint()} <@ {self.spoly(self.as_polygon(b))})"
        if sb == "point":
            # A circle lies within a point only when it is that point; a polygon never.
            q = self.as_point(b)
            if sa == "circle":
                c = self.as_circle(a)
                return f"(({c.radius}) = 0.0::float8 AND {c.center.spoint()} = {q.spoint()})"
            poly = self.spoly(self.as_polygon(a))
            return f"(CASE WHEN {poly} IS NULL OR {q.spoint()} IS NULL THEN NULL ELSE FALSE END)"
        return f"({self.region(a)} <@ {self.region(b)})"

    def cone(
        self, p: _P, c: _P, radius: str, radius_const: float | None, strict: bool = False
    ) -> str:
        """Whether p is within ``radius`` degrees of c."""
        if p.table is None and c.table is not None:
            p, c = c, p
        if radius_const is not None:
            if radius_const < 0 or (strict and radius_const == 0):
                return "FALSE"
            if radius_const >= 180:
                return f"({p.spoint()} IS NOT NULL AND {c.spoint()} IS NOT NULL)"
            if radius_const > _MAX_CIRCLE:
                return self.outside_cap(p, c, _num(180.0 - radius_const))
            return self.within(p, c, radius)
        # A radius that is an expression: PostgreSQL folds a constant one, and with it
        # this CASE, leaving the index-friendly arm.
        r = f"({radius})"
        return (
            f"(CASE WHEN {r} {'<=' if strict else '<'} 0.0::float8 THEN FALSE "
            f"WHEN {r} <= {_num(_MAX_CIRCLE)} THEN {self.within(p, c, radius)} "
            f"WHEN {r} < 180.0::float8 THEN {self.outside_cap(p, c, f'180.0::float8 - {r}')} "
            f"WHEN {r} >= 180.0::float8 THEN "
            f"({p.spoint()} IS NOT NULL AND {c.spoint()} IS NOT NULL) END)"
        )

    def within(self, p: _P, c: _P, radius: str) -> str:
        """p within a cap of at most 90° around c, as index conditions."""
        test = f"{p.spoint()} <@ scircle({c.spoint()}, radians({radius}))"
        if p.table is not None and c.table is not None and p.table != c.table:
            # A positional join: the same test the other way round lets the planner use
            # the position index of either table.
            test += f" AND {c.spoint()} <@ scircle({p.spoint()}, radians({radius}))"
        return f"({test})"

    def outside_cap(self, p: _P, c: _P, radius: str) -> str:
        """p not within ``radius`` (< 90°) of the antipode of c: p within 180° - radius of c."""
        return f"(NOT ({p.spoint()} <@ scircle({c.antipode()}, radians({radius}))))"


def _no_nulls(flat: str, sql: str) -> str:
    """``sql`` about a DALI polygon array, NULL when a coordinate is NULL (aggregates over
    the vertices would skip it)."""
    return f"(CASE WHEN array_position({flat}, NULL) IS NULL THEN {sql} END)"
