"""Positional joins handed to the cross-match core instead of being run as SQL.

A join condition of the shapes users write for cross-matches,

* ``1 = CONTAINS(POINT('ICRS', a.ra, a.dec), CIRCLE('ICRS', b.ra, b.dec, r))``
  (either table inside the circle, ``INTERSECTS`` too),
* ``DISTANCE(POINT('ICRS', a.ra, a.dec), POINT('ICRS', b.ra, b.dec)) < r`` (or ``<=``,
  either argument order, the four-number form),

between plain position columns of two different stored or uploaded tables, with a
constant radius, is a pure positional join. A backend that can run such joins outside
SQL (the DuckDB target, with :mod:`romerea_vo.xmatch`) emits a :class:`Marker` for it;
:func:`place` then rewrites the finished query so that a relation of matched row keys
joins the two tables by equality (hash joins), or falls back to the SQL condition where
that rewrite would not mean the same (outer joins, OR, NOT, derived tables...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sqlglot import exp

from .frames import ICRS
from .model import Circle, Geometry, Point, SpatialJoin, SpatialJoinSide, Value

#: Radii (degrees) run by the core; anything else stays SQL (the core refuses 0, and
#: beyond a degree a positional "join" is a different kind of query).
MAX_RADIUS_DEG = 1.0


@dataclass(frozen=True)
class _Position:
    alias: str
    ra: exp.Column
    dec: exp.Column


@dataclass(frozen=True)
class Candidate:
    """A join condition that may run through the core."""

    left: _Position
    right: _Position
    radius: Value
    strict: bool


class Marker(exp.Expression):
    """Stands for a :class:`Candidate` in the query tree until :func:`place` decides;
    ``this`` is the plain SQL condition to use when it cannot."""

    arg_types: ClassVar[dict[str, bool]] = {"this": True}


def _position(p: Geometry) -> _Position | None:
    """The alias and columns of ``POINT('ICRS', t.ra, t.dec)`` over plain columns."""
    if not isinstance(p, Point) or p.frame != ICRS:
        return None
    table = p.column_table()
    ra, dec = p.ra.sql, p.dec.sql
    if table is None or not isinstance(ra, exp.Column) or not isinstance(dec, exp.Column):
        return None  # (column_table already saw to it that both are columns)
    return _Position(table, ra, dec)


def _pair(a: Geometry, b: Geometry, radius: Value, strict: bool) -> Candidate | None:
    pa, pb = _position(a), _position(b)
    if pa is None or pb is None or pa.alias == pb.alias:
        return None
    return Candidate(pa, pb, radius, strict)


def contains_candidate(name: str, a: Geometry, b: Geometry, truth: bool) -> Candidate | None:
    """``CONTAINS(a, b) = 1`` / ``INTERSECTS(a, b) = 1`` of a point and a circle."""
    if not truth or name not in ("CONTAINS", "INTERSECTS"):
        return None
    if name == "INTERSECTS" and isinstance(a, Circle):
        a, b = b, a
    if not isinstance(b, Circle):
        return None
    return _pair(a, b.center, b.radius, strict=False)


def distance_candidate(a: Geometry, b: Geometry, op: str, radius: Value) -> Candidate | None:
    """``DISTANCE(a, b) < r`` / ``<= r`` of two points."""
    return _pair(a, b, radius, strict=op == "<")


def radius_tree_of(radius: Value) -> exp.Expression | None:
    """The radius SQL when it is a constant expression (no column, no subquery)."""
    tree = radius.sql
    if tree.find(exp.Column, exp.Select, exp.Subquery) is not None:
        return None
    return tree


def place(
    marker: Marker, candidate: Candidate, pairs: str, radius_deg: float
) -> SpatialJoin | None:
    """Rewrite the query around ``marker`` to join through the relation ``pairs`` (columns
    ``l``, ``r``); returns the join to compute, or None (the marker is then left alone).

    The marker must be a conjunct of a WHERE clause or of the ON condition of an inner
    join, and both aliases must name tables (not derived tables) with a row key in the
    FROM clause of that same SELECT.
    """
    if not 0.0 < radius_deg <= MAX_RADIUS_DEG:
        return None
    node: exp.Expression = marker
    while isinstance(node.parent, (exp.And, exp.Paren)):
        node = node.parent
    holder = node.parent
    join: exp.Join | None = None
    if isinstance(holder, exp.Where):
        select = holder.parent
    elif isinstance(holder, exp.Join) and node.arg_key == "on":
        join = holder
        select = holder.parent
        if join.args.get("side") or (join.args.get("kind") or "").upper() not in ("", "INNER"):
            return None
    else:
        return None
    if not isinstance(select, exp.Select) or select.args.get("from_") is None:
        return None
    joins: list[exp.Join] = list(select.args.get("joins") or [])
    items = [select.args["from_"].this] + [j.this for j in joins]

    def find(alias: str) -> tuple[int, exp.Table] | None:
        hits = [
            (i, t)
            for i, t in enumerate(items)
            if isinstance(t, exp.Table) and t.alias_or_name == alias and t.meta.get("row_key")
        ]
        return hits[0] if len(hits) == 1 else None

    left, right = find(candidate.left.alias), find(candidate.right.alias)
    if left is None or right is None:
        return None
    pairs_alias = f"{pairs}_p"

    def key_equals(side: tuple[int, exp.Table], alias: str, column: str) -> exp.Expression:
        key = exp.column(side[1].meta["row_key"], table=alias, quoted=True)
        return exp.EQ(this=key, expression=exp.column(column, table=pairs_alias, quoted=True))

    conditions = [
        (left[0], key_equals(left, candidate.left.alias, "l")),
        (right[0], key_equals(right, candidate.right.alias, "r")),
    ]
    pairs_table = exp.Table(
        this=exp.to_identifier(pairs, quoted=True),
        alias=exp.TableAlias(this=exp.to_identifier(pairs_alias, quoted=True)),
    )
    if join is None:
        # WHERE: the pairs relation joins the FROM list; equalities replace the test.
        select.append("joins", exp.Join(this=pairs_table))
        marker.replace(exp.and_(*(c for _, c in conditions)))
    else:
        position = joins.index(join) + 1
        if any(i > position for i, _ in conditions):
            return None
        before = [c for i, c in conditions if i < position]
        here = [c for i, c in conditions if i == position]
        inserted = exp.Join(this=pairs_table, on=exp.and_(*before) if before else None)
        if not before:
            inserted.set("kind", "CROSS")
        select.set("joins", [*joins[: position - 1], inserted, *joins[position - 1 :]])
        marker.replace(exp.and_(*here) if here else exp.true())
    return SpatialJoin(
        pairs=pairs,
        left=_side(left[1], candidate.left),
        right=_side(right[1], candidate.right),
        radius_deg=radius_deg,
        strict=candidate.strict,
    )


def _side(table: exp.Table, position: _Position) -> SpatialJoinSide:
    return SpatialJoinSide(
        physical=table.meta["physical"],
        row_key=table.meta["row_key"],
        ra=exp.to_identifier(position.ra.name, quoted=True).sql(),
        dec=exp.to_identifier(position.dec.name, quoted=True).sql(),
    )
