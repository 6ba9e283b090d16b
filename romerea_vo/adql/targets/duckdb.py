"""DuckDB target: ADQL functions and geometry as plain DuckDB SQL.

Positions are plain ra/dec DOUBLE columns in degrees (ICRS). Geometry values are DALI
double lists: ``[ra, dec]`` (point), ``[ra, dec, radius]`` (circle), ``[ra1, dec1, ...]``
(polygon). All spherical tests work on unit vectors:

* distances use ``atan2(|u×v|, u·v)`` (exact at every separation); cone tests compare
  haversines, ``sin²(Δδ/2) + cosδ₁cosδ₂ sin²(Δα/2) <= sin²(r/2)``, without inverse trig;
* a cone adds a declination band, ``dec BETWEEN dec0 - r AND dec0 + r``, so DuckDB can
  skip row groups of a dec-sorted table, and a join on a cone becomes a range join;
* polygons follow :mod:`..sphere` (winding number, smaller region); a constant polygon
  is unrolled with precomputed edge vectors behind a declination band and a bounding cap,
  a polygon column is handled with list lambdas.

No RA prefilter is emitted: it would assume RA in [0, 360), which uploaded tables need
not follow, and on a dec-sorted table the declination band does the pruning.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import ClassVar

import duckdb
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.generators.duckdb import DuckDBGenerator

from .. import spatial_join, sphere
from ..catalog import TableInfo
from ..frames import ICRS, ROTATIONS
from ..model import (
    DOUBLE,
    INT,
    STRING,
    Circle,
    Geometry,
    Point,
    Polygon,
    SpatialJoin,
    Stored,
    Value,
    geometry_type,
    shape_of,
)
from .base import Backend, Raw
from .common import SIMPLE_FUNCTIONS, clamp, cross, dot, vec_angle


class _Dialect(DuckDB):
    class Generator(DuckDBGenerator):
        TRANSFORMS: ClassVar = {
            **DuckDBGenerator.TRANSFORMS,
            Raw: lambda self, e: f"({e.this})",
            # A positional-join marker generated as such is its plain SQL condition.
            spatial_join.Marker: lambda self, e: self.sql(e, "this"),
        }


_DIALECT = _Dialect()

_SIMPLE = {**SIMPLE_FUNCTIONS, "CEILING": "ceil", "FLOOR": "floor", "AVG": "avg"}
_CAST = {
    "SMALLINT": "SMALLINT",
    "INTEGER": "INTEGER",
    "BIGINT": "BIGINT",
    "REAL": "REAL",
    "DOUBLE PRECISION": "DOUBLE",
    "TIMESTAMP": "TIMESTAMP",
}
_ORIENT_LIMIT = 2 * math.pi


def _num(x: float) -> str:
    """A DOUBLE literal."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError(f"not a finite number: {x}")
    text = repr(float(x))
    if "e" not in text:
        text += "e0"  # DuckDB reads 0.5 as DECIMAL; 0.5e0 is a DOUBLE
    return f"({text})" if text.startswith("-") else text


@dataclass
class _P:
    """A point in ICRS as SQL text, with its constant value when known."""

    ra: str
    dec: str
    const: tuple[float, float] | None = None
    dec_is_column: bool = False

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
    """A polygon: constant vertices (unit vectors), or a DALI list as SQL text."""

    vectors: list[sphere.Vec] | None = None
    flat: str | None = None

    def list_sql(self) -> str:
        if self.flat is not None:
            return self.flat
        coords: list[float] = []
        for v in self.vectors or []:
            coords.extend(sphere.radec(v))
        return "[" + ", ".join(_num(c) for c in coords) + "]"


def _comps(v: str) -> list[str]:
    return [f"{v}[1]", f"{v}[2]", f"{v}[3]"]


def _let(value: str, name: str, body: str) -> str:
    """Evaluate ``value`` once and use it as ``name`` in ``body`` (a one-element lambda)."""
    return f"list_transform([{value}], lambda {name}: {body})[1]"


def _min(*items: str) -> str:
    body = "CASE WHEN list_count(adql_m) < len(adql_m) THEN NULL ELSE list_min(adql_m) END"
    return _let(f"[{', '.join(items)}]", "adql_m", body)


def _marker(sql: exp.Expression, candidate: spatial_join.Candidate) -> exp.Expression:
    marker = spatial_join.Marker(this=sql)
    marker.meta["candidate"] = candidate
    return marker


_CONSTANTS: duckdb.DuckDBPyConnection | None = None
_CONSTANTS_LOCK = threading.Lock()


def _evaluate_constant(sql: str) -> float | None:
    """Evaluate a column-free numeric expression of translated ADQL (only ADQL's own
    functions can occur) on a private in-memory DuckDB without file or network access."""
    global _CONSTANTS
    with _CONSTANTS_LOCK:
        if _CONSTANTS is None:
            con = duckdb.connect(":memory:")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            _CONSTANTS = con
        try:
            row = _CONSTANTS.execute(f"SELECT CAST({sql} AS DOUBLE)").fetchone()
        except duckdb.Error:
            return None
    return None if row is None or row[0] is None else float(row[0])


class DuckDBBackend(Backend):
    name: ClassVar[str] = "duckdb"

    def __init__(self) -> None:
        self._var = 0
        self.spatial_join_core = False
        """Emit positional joins for the cross-match core (see :mod:`..spatial_join`)."""
        self.spatial_joins: list[SpatialJoin] = []

    # --- plumbing ---------------------------------------------------------------------

    def sql(self, node: exp.Expression) -> str:
        return _DIALECT.generate(node, identify=True, comments=False)

    def generate(self, tree: exp.Expression) -> str:
        for marker in list(tree.find_all(spatial_join.Marker)):
            candidate = marker.meta["candidate"]
            radius = self.constant(candidate.radius)
            placed = None
            if radius is not None:
                pairs = f"romerea_xmatch_{len(self.spatial_joins) + 1}"
                placed = spatial_join.place(marker, candidate, pairs, radius)
            if placed is None:
                marker.replace(marker.this)
            else:
                self.spatial_joins.append(placed)
        return self.sql(tree)

    def constant(self, value: Value) -> float | None:
        """The value of a constant numeric expression, computed as DuckDB would."""
        if value.is_const:
            return value.number
        tree = spatial_join.radius_tree_of(value)
        if tree is None:
            return None
        return _evaluate_constant(self.sql(tree))

    def var(self, base: str) -> str:
        self._var += 1
        return f"adql_{base}{self._var}"

    def text(self, v: Value) -> str:
        if v.is_const:
            return _num(v.number)
        return self.sql(v.sql)

    # --- scalars ----------------------------------------------------------------------

    def table(self, info: TableInfo) -> exp.Expression:
        table = exp.to_table(info.physical, dialect=_DIALECT)
        table.meta["physical"] = info.physical
        table.meta["row_key"] = info.row_key
        return table

    def number(self, text: str, integer: bool) -> exp.Expression:
        if integer:
            return exp.Literal.number(text)
        # DuckDB reads 3.14 as DECIMAL; ADQL's approximate numbers are doubles.
        if "e" not in text.lower():
            text += "e0"
        return exp.Literal.number(text)

    def function(self, name: str, args: list[Value]) -> exp.Expression:
        sqls = [a.sql for a in args]
        if name in _SIMPLE:
            return exp.Anonymous(this=_SIMPLE[name], expressions=sqls)
        if name == "SUM":
            total = exp.Anonymous(this="sum", expressions=sqls)
            if args[0].type.kind == "int":
                # DuckDB sums integers to HUGEINT, which has no VOTable type.
                return exp.Cast(this=total, to=exp.DataType.build("BIGINT"))
            return total
        if name == "MOD":
            if all(a.type.kind == "int" for a in args):
                return exp.Anonymous(this="mod", expressions=sqls)
            # The remainder with the sign of x, as for integers (DuckDB's fmod floors).
            x, y = self.text(args[0]), self.text(args[1])
            return Raw(this=f"({x}) - trunc(({x}) / ({y})) * ({y})")
        if name == "RAND":
            # DuckDB has no per-call seed; RAND(seed) returns a random number as RAND() does.
            return exp.Anonymous(this="random", expressions=[])
        if name == "ROUND":
            if len(args) == 1:
                return exp.Anonymous(this="round", expressions=sqls)
            return exp.Anonymous(this="round", expressions=[sqls[0], self.int_arg(args[1])])
        if name == "TRUNCATE":
            if len(args) == 1:
                return exp.Anonymous(this="trunc", expressions=sqls)
            x, n = self.text(args[0]), self.sql(self.int_arg(args[1]))
            shifted = f"trunc({x} * power(10, {n})) / power(10, {n})"
            if args[0].type.kind == "int":
                return Raw(this=f"CAST({shifted} AS BIGINT)")
            return Raw(this=shifted)
        # A declared user-defined function, called by its declared name.
        return exp.Anonymous(this=name, expressions=sqls)

    def int_arg(self, v: Value) -> exp.Expression:
        return exp.Cast(this=v.sql, to=exp.DataType.build("INTEGER"))

    def divide(self, left: Value, right: Value, integer: bool) -> exp.Expression:
        # Integer / integer is integer division (truncating), as in PostgreSQL and SQL.
        if integer:
            return exp.IntDiv(this=left.sql, expression=right.sql)
        return exp.Div(this=left.sql, expression=right.sql)

    def cast(self, value: Value, target: str, length: int | None) -> exp.Expression:
        if target in _CAST:
            return Raw(this=f"CAST({self.sql(value.sql)} AS {_CAST[target]})")
        if target in ("CHAR", "VARCHAR"):
            text = self.sql(value.sql)
            if value.type.kind == "geometry":
                text = f"array_to_string({text}, ' ')"
            if target == "CHAR" and length is None:
                length = 1  # SQL's CHAR means CHAR(1)
            cast = f"CAST({text} AS VARCHAR)"
            return Raw(this=f"left({cast}, {length})" if length is not None else cast)
        # POINT/CIRCLE/POLYGON from a string of numbers, e.g. '12.3 45.6'.
        text = self.sql(value.sql)
        return Raw(this=f"CAST(regexp_split_to_array(trim({text}), '[\\s,]+') AS DOUBLE[])")

    def output(self, value: Value) -> exp.Expression:
        if value.type.kind == "null":
            return Raw(this="CAST(NULL AS VARCHAR)")
        if value.type.kind == "timestamp":
            # DALI timestamps are ISO 8601 strings.
            return Raw(this=f"strftime({self.sql(value.sql)}, '%Y-%m-%dT%H:%M:%S.%f')")
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
            return _P(ra_sql, dec_sql, None, p.dec.column)
        m = ROTATIONS[p.frame]
        v = _P(ra_sql, dec_sql).vec()
        x, y, z = ([_num(m[i][j]) for j in range(3)] for i in range(3))
        rx, ry, rz = dot(x, v), dot(y, v), dot(z, v)
        return _P(
            f"((degrees(atan2({ry}, {rx})) + 360.0) % 360.0)",
            f"degrees(asin({clamp(rz, '-1.0', '1.0')}))",
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
                coords += [f"CAST({p.ra} AS DOUBLE)", f"CAST({p.dec} AS DOUBLE)"]
            return _Poly(flat="[" + ", ".join(coords) + "]")
        return _Poly(flat="(" + self.sql(g.value.sql) + ")")  # type: ignore[union-attr]

    # --- geometry: values -------------------------------------------------------------

    def geometry(self, geom: Geometry) -> exp.Expression:
        if isinstance(geom, Stored):
            return geom.value.sql
        if isinstance(geom, Point):
            p = self.point(geom)
            return Raw(this=self.point_list(p))
        if isinstance(geom, Circle):
            c = self.as_circle(geom)
            parts = [c.center.ra, c.center.dec, c.radius]
            return Raw(this=self.null_guarded(parts))
        poly = self.as_polygon(geom)
        if poly.vectors is not None:
            return Raw(this=poly.list_sql())
        return Raw(this=poly.flat)

    def point_list(self, p: _P) -> str:
        return self.null_guarded([p.ra, p.dec])

    def null_guarded(self, parts: list[str]) -> str:
        items = ", ".join(f"CAST({x} AS DOUBLE)" for x in parts)
        tests = " OR ".join(f"({x}) IS NULL" for x in parts)
        return f"CASE WHEN {tests} THEN NULL ELSE [{items}] END"

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
            point = Point(ra, dec)
            value = Value(Raw(this=self.point_list(p)), geometry_type("point"), geom=point)
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
            return "0.0e0"  # 0.0 would be a DECIMAL
        if shape == "circle":
            c = self.as_circle(g)
            if c.radius_const is not None:
                r = math.radians(min(abs(c.radius_const), 180.0))
                return _num(2 * math.pi * (1 - math.cos(r)) * sphere.SR_TO_DEG2)
            return (
                f"(2 * pi() * (1 - cos(radians({clamp(f'abs({c.radius})', '0.0', '180.0')})))"
                f" * {_num(sphere.SR_TO_DEG2)})"
            )
        poly = self.as_polygon(g)
        if poly.vectors is not None:
            return _num(sphere.area(poly.vectors) * sphere.SR_TO_DEG2)
        v = self.var("v")
        s = self.signed_area_sql(v)
        # s reduced to [-2π, 2π], as sphere.area: exact for small polygons.
        t = self.var("s")
        reduced = f"abs({t} - 4 * pi() * round({t} / (4 * pi())))"
        body = _let(s, t, f"{reduced} * {_num(sphere.SR_TO_DEG2)}")
        return _let(self.vectors_sql(poly.flat), v, body)  # type: ignore[arg-type]

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
        v = self.var("v")
        sums = [f"list_sum(list_transform({v}, lambda adql_w: adql_w[{k}]))" for k in (1, 2, 3)]
        vec = self.vectors_sql(poly.flat)  # type: ignore[arg-type]
        ra_sql = _let(vec, v, f"(degrees(atan2({sums[1]}, {sums[0]})) + 360.0) % 360.0")
        norm = f"sqrt({sums[0]} * {sums[0]} + {sums[1]} * {sums[1]} + {sums[2]} * {sums[2]})"
        dec_sql = _let(vec, v, f"degrees(asin({clamp(f'{sums[2]} / {norm}', '-1.0', '1.0')}))")
        return _P(ra_sql, dec_sql)

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
            return clamp(gap, "0.0", "180.0")
        poly = self.as_polygon(b)
        inside = self.pip(p, poly)
        return f"CASE WHEN {inside} THEN 0.0 ELSE {self.boundary_distance(p, poly)} END"

    def point_distance(self, p: _P, q: _P) -> str:
        """Great-circle distance in degrees (Vincenty's formula: stable everywhere)."""
        d1, d2 = f"radians({p.dec})", f"radians({q.dec})"
        da = f"radians(({q.ra}) - ({p.ra}))"
        if p.const is not None and q.const is not None:
            return _num(sphere.separation(*p.const, *q.const))
        y1 = f"cos({d2}) * sin({da})"
        y2 = f"cos({d1}) * sin({d2}) - sin({d1}) * cos({d2}) * cos({da})"
        x = f"sin({d1}) * sin({d2}) + cos({d1}) * cos({d2}) * cos({da})"
        return f"degrees(atan2(sqrt(pow({y1}, 2) + pow({y2}, 2)), {x}))"

    # --- geometry: predicates ---------------------------------------------------------

    def geometry_predicate(
        self, name: str, a: Geometry, b: Geometry, truth: bool
    ) -> exp.Expression:
        if truth:
            sql = Raw(this=self.predicate(name, a, b, prefilter=True))
            if self.spatial_join_core:
                candidate = spatial_join.contains_candidate(name, a, b, truth)
                if candidate is not None:
                    return _marker(sql, candidate)
            return sql
        return Raw(this=f"NOT {self.predicate(name, a, b)}")

    def distance_predicate(
        self, a: Geometry, b: Geometry, op: str, radius: Value
    ) -> exp.Expression | None:
        if shape_of(a) != "point" or shape_of(b) != "point":
            return None
        p, q = self.as_point(a), self.as_point(b)
        r = self.text(radius)
        rc = radius.number if radius.is_const else None
        sql = Raw(this=self.cone(p, q, r, rc, strict=op == "<"))
        if self.spatial_join_core:
            candidate = spatial_join.distance_candidate(a, b, op, radius)
            if candidate is not None:
                return _marker(sql, candidate)
        return sql

    def predicate(self, name: str, a: Geometry, b: Geometry, prefilter: bool = False) -> str:
        sa, sb = shape_of(a), shape_of(b)
        if name == "INTERSECTS":
            if sb == "point" and sa != "point":
                a, b, sa, sb = b, a, sb, sa
            if sa == "point":
                return self.predicate("CONTAINS", a, b, prefilter)
            if sa == "polygon" and sb == "circle":
                a, b, sa, sb = b, a, sb, sa
            if sa == "circle" and sb == "circle":
                ca, cb = self.as_circle(a), self.as_circle(b)
                radius = f"({ca.radius}) + ({cb.radius})"
                rc = None
                if ca.radius_const is not None and cb.radius_const is not None:
                    rc = ca.radius_const + cb.radius_const
                return self.cone(ca.center, cb.center, radius, rc, prefilter=prefilter)
            if sa == "circle":
                c, poly = self.as_circle(a), self.as_polygon(b)
                near = f"{self.boundary_distance(c.center, poly)} <= ({c.radius})"
                return f"({self.pip(c.center, poly)} OR {near})"
            pa, pb = self.as_polygon(a), self.as_polygon(b)
            return (
                f"({self.any_vertex_in(pa, pb)} OR {self.any_vertex_in(pb, pa)}"
                f" OR {self.edges_cross(pa, pb)})"
            )
        # CONTAINS(a, b): a lies within b.
        if sa == "point":
            p = self.as_point(a)
            if sb == "point":
                return f"({self.point_distance(p, self.as_point(b))} = 0.0)"
            if sb == "circle":
                c = self.as_circle(b)
                return self.cone(p, c.center, c.radius, c.radius_const, prefilter=prefilter)
            return self.pip(self.as_point(a), self.as_polygon(b), prefilter=prefilter)
        if sa == "circle":
            c = self.as_circle(a)
            if sb == "point":
                q = self.as_point(b)
                return f"(({c.radius}) = 0.0 AND {self.point_distance(c.center, q)} = 0.0)"
            if sb == "circle":
                o = self.as_circle(b)
                d = self.point_distance(c.center, o.center)
                return f"({d} + ({c.radius}) <= ({o.radius}))"
            poly = self.as_polygon(b)
            far = f"{self.boundary_distance(c.center, poly)} >= ({c.radius})"
            return f"({self.pip(c.center, poly)} AND {far})"
        pa = self.as_polygon(a)
        if sb == "point":
            q = self.as_point(b)
            return self.all_vertices(pa, lambda v: f"{vec_angle(v, q.vec())} = 0.0")
        if sb == "circle":
            o = self.as_circle(b)
            return self.all_vertices(
                pa, lambda v: f"{vec_angle(v, o.center.vec())} <= ({o.radius})"
            )
        pb = self.as_polygon(b)
        return f"({self.all_vertices_in(pa, pb)} AND NOT {self.edges_cross(pa, pb)})"

    def cone(
        self,
        p: _P,
        c: _P,
        radius: str,
        radius_const: float | None,
        strict: bool = False,
        prefilter: bool = True,
    ) -> str:
        """Whether p is within ``radius`` degrees of c: declination band + haversine test."""
        op = "<" if strict else "<="
        if p.dec_is_column is False and c.dec_is_column:
            p, c = c, p
        if radius_const is not None:
            if radius_const < 0 or (strict and radius_const == 0):
                return "FALSE"
            if radius_const >= 180:
                return f"(({p.dec}) IS NOT NULL AND ({p.ra}) IS NOT NULL AND ({c.dec}) IS NOT NULL)"
            limit = _num(math.sin(math.radians(radius_const) / 2) ** 2)
        else:
            limit = f"pow(sin(radians({clamp(radius, '0.0', '180.0')}) / 2), 2)"
        if c.const is not None:
            ra0, dec0 = c.const
            cos0 = _num(math.cos(math.radians(dec0)))
            hav = (
                f"pow(sin(radians(({p.dec}) - {_num(dec0)}) / 2), 2) + {cos0} * "
                f"cos(radians({p.dec})) * pow(sin(radians(({p.ra}) - {_num(ra0)}) / 2), 2)"
            )
        else:
            hav = (
                f"pow(sin(radians(({p.dec}) - ({c.dec})) / 2), 2) + cos(radians({c.dec})) * "
                f"cos(radians({p.dec})) * pow(sin(radians(({p.ra}) - ({c.ra})) / 2), 2)"
            )
        test = f"{hav} {op} {limit}"
        if not prefilter or not p.dec_is_column:
            return f"({test})"
        if c.const is not None and radius_const is not None:
            lo = _num(c.const[1] - radius_const - 1e-9)
            hi = _num(c.const[1] + radius_const + 1e-9)
        else:
            lo = f"({c.dec}) - ({radius}) - 1e-9"
            hi = f"({c.dec}) + ({radius}) + 1e-9"
        band = f"{p.dec} >= {lo} AND {p.dec} <= {hi}"
        if radius_const is None:
            test = f"({radius}) >= 0.0 AND {test}"
        return f"({band} AND {test})"

    # --- polygons ---------------------------------------------------------------------

    def vectors_sql(self, flat: str) -> str:
        """SQL for the list of unit vectors of a DALI polygon list."""
        f, i = self.var("f"), self.var("i")
        lat, lon = f"radians({f}[2 * {i}])", f"radians({f}[2 * {i} - 1])"
        body = (
            f"list_transform(range(1, len({f}) // 2 + 1), lambda {i}: "
            f"[cos({lat}) * cos({lon}), cos({lat}) * sin({lon}), sin({lat})])"
        )
        return _let(flat, f, body)

    def signed_area_sql(self, v: str) -> str:
        i = self.var("i")
        a, b, c = _comps(f"{v}[1]"), _comps(f"{v}[{i}]"), _comps(f"{v}[{i} + 1]")
        num = dot(a, cross(b, c))
        den = f"(1 + {dot(a, b)} + {dot(b, c)} + {dot(c, a)})"
        return f"list_sum(list_transform(range(2, len({v})), lambda {i}: 2 * atan2({num}, {den})))"

    def winding_sql(self, p: list[str], v: str) -> str:
        i = self.var("i")
        a, b = _comps(f"{v}[{i}]"), _comps(f"{v}[{i} % len({v}) + 1]")
        term = f"atan2({dot(p, cross(a, b))}, {dot(a, b)} - {dot(a, p)} * {dot(b, p)})"
        return f"list_sum(list_transform(range(1, len({v}) + 1), lambda {i}: {term}))"

    def orient_sql(self, v: str) -> str:
        s = self.signed_area_sql(v)
        m = f"((({s}) % (4 * pi())) + 4 * pi()) % (4 * pi())"
        return f"(CASE WHEN {m} <= 2 * pi() THEN 1.0 ELSE -1.0 END)"

    def pip(self, p: _P, poly: _Poly, prefilter: bool = False) -> str:
        """Whether point p is inside the polygon."""
        if poly.vectors is not None:
            return self.pip_const(p, poly.vectors, prefilter)
        v = self.var("v")
        pv = self.var("p")
        body = f"{self.winding_sql(_comps(pv), v)} * {self.orient_sql(v)} > pi()"
        inner = _let(f"[{', '.join(p.vec())}]", pv, body)
        return "(" + _let(self.vectors_sql(poly.flat), v, inner) + ")"  # type: ignore[arg-type]

    def pip_const(self, p: _P, vs: list[sphere.Vec], prefilter: bool) -> str:
        if p.const is not None:
            return "TRUE" if sphere.contains(vs, sphere.unit(*p.const)) else "FALSE"
        orient = sphere.orientation(vs)
        pc = p.vec()
        terms = []
        n = len(vs)
        for k in range(n):
            a, b = vs[k], vs[(k + 1) % n]
            c = sphere.cross(a, b)
            num = " + ".join(f"{_num(c[j])} * {pc[j]}" for j in range(3))
            ap = " + ".join(f"{_num(a[j])} * {pc[j]}" for j in range(3))
            bp = " + ".join(f"{_num(b[j])} * {pc[j]}" for j in range(3))
            terms.append(f"atan2({num}, {_num(sphere.dot(a, b))} - ({ap}) * ({bp}))")
        winding = " + ".join(terms)
        test = f"({winding}) * {orient}.0 > pi()"
        if not prefilter:
            return f"({test})"
        lo, hi = sphere.latitude_range(vs)
        parts = []
        if p.dec_is_column and (lo > -90 or hi < 90):
            parts.append(f"{p.dec} >= {_num(lo - 1e-9)} AND {p.dec} <= {_num(hi + 1e-9)}")
        center, radius = sphere.bounding_cap(vs)
        if radius < math.pi / 2:
            cra, cdec = sphere.radec(center)
            r = math.degrees(radius) * 1.0001 + 1e-9
            parts.append(
                self.cone(p, _P(_num(cra), _num(cdec), (cra, cdec)), _num(r), r, prefilter=False)
            )
        parts.append(test)
        return "(" + " AND ".join(parts) + ")"

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
            return _min(*items)
        v, i = self.var("v"), self.var("i")
        a, b = _comps(f"{v}[{i}]"), _comps(f"{v}[{i} % len({v}) + 1]")
        body = (
            f"list_min(list_transform(range(1, len({v}) + 1), lambda {i}: "
            f"{self.arc_distance(pc, a, b)}))"
        )
        return _let(self.vectors_sql(poly.flat), v, body)  # type: ignore[arg-type]

    def arc_distance(self, p: list[str], a: list[str], b: list[str]) -> str:
        n = cross(a, b)
        nn = f"sqrt({dot(n, n)})"
        inside = f"{dot(cross(a, p), n)} >= 0 AND {dot(cross(p, b), n)} >= 0 AND {nn} > 0"
        perp = f"degrees(asin({clamp(f'abs({dot(p, n)}) / {nn}', '0.0', '1.0')}))"
        ends = _min(vec_angle(p, a), vec_angle(p, b))
        return f"(CASE WHEN {inside} THEN {perp} ELSE {ends} END)"

    def poly_vectors(self, poly: _Poly) -> str:
        if poly.vectors is not None:
            return (
                "["
                + ", ".join("[" + ", ".join(_num(x) for x in v) + "]" for v in poly.vectors)
                + "]"
            )
        return self.vectors_sql(poly.flat)  # type: ignore[arg-type]

    def all_vertices(self, poly: _Poly, test) -> str:
        v, w = self.var("v"), self.var("w")
        body = f"list_bool_and(list_transform({v}, lambda {w}: {test(_comps(w))}))"
        return "(" + _let(self.poly_vectors(poly), v, body) + ")"

    def vertex_in_test(self, outer: _Poly, w: str) -> str:
        """SQL: is the vertex vector ``w`` inside polygon ``outer``?"""
        u = self.var("u")
        body = f"{self.winding_sql(_comps(w), u)} * {self.orient_sql(u)} > pi()"
        return _let(self.poly_vectors(outer), u, body)

    def all_vertices_in(self, inner: _Poly, outer: _Poly) -> str:
        v, w = self.var("v"), self.var("w")
        body = f"list_bool_and(list_transform({v}, lambda {w}: {self.vertex_in_test(outer, w)}))"
        return "(" + _let(self.poly_vectors(inner), v, body) + ")"

    def any_vertex_in(self, inner: _Poly, outer: _Poly) -> str:
        v, w = self.var("v"), self.var("w")
        body = f"list_bool_or(list_transform({v}, lambda {w}: {self.vertex_in_test(outer, w)}))"
        return "(" + _let(self.poly_vectors(inner), v, body) + ")"

    def edges_cross(self, pa: _Poly, pb: _Poly) -> str:
        va, vb, i, j = self.var("v"), self.var("v"), self.var("i"), self.var("j")
        a1, a2 = _comps(f"{va}[{i}]"), _comps(f"{va}[{i} % len({va}) + 1]")
        b1, b2 = _comps(f"{vb}[{j}]"), _comps(f"{vb}[{j} % len({vb}) + 1]")
        n1, n2 = cross(a1, a2), cross(b1, b2)
        t = cross(n1, n2)
        s = [
            dot(cross(n1, a1), t),
            dot(cross(a2, n1), t),
            dot(cross(n2, b1), t),
            dot(cross(b2, n2), t),
        ]
        test = f"(({' > 0 AND '.join(s)} > 0) OR ({' < 0 AND '.join(s)} < 0))"
        inner = f"list_bool_or(list_transform(range(1, len({vb}) + 1), lambda {j}: {test}))"
        outer = f"list_bool_or(list_transform(range(1, len({va}) + 1), lambda {i}: {inner}))"
        return "(" + _let(self.poly_vectors(pa), va, _let(self.poly_vectors(pb), vb, outer)) + ")"
