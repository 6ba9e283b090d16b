"""ADQL 2.1 → SQL: a sqlglot dialect, a validator, and a rewrite per target engine.

Usage::

    catalog = Catalog([TableInfo("rome.stars", 'romerea_data."rome"."stars"', columns), ...])
    t = translate("SELECT TOP 5 * FROM rome.stars WHERE 1 = CONTAINS(POINT(ra, dec),"
                  " CIRCLE(268.0, -29.5, 0.1))", catalog)
    t.sql, t.columns, t.top

Catalogue, physical names, uploads
----------------------------------
:class:`TableInfo` ``name`` is the ADQL name users write (``rome.stars``,
``TAP_SCHEMA.columns``, ``TAP_UPLOAD.mylist``; delimited parts keep their quotes);
``physical`` is what the engine needs, parsed as DuckDB SQL (``romerea_data."rome".
"stars"`` or a registered view name such as ``tap_upload_3f2a``). Per request,
``catalog.with_tables([...])`` adds the TAP_UPLOAD tables without touching the shared
catalogue. Lookups ignore case for regular identifiers; a table may be named by a
trailing part of its name when that is unambiguous. Geometry columns are declared with
``xtype`` point/circle/polygon and hold DALI double lists; ``unit`` enables IN_UNIT.

Pipeline
--------
1. :mod:`.parser` tokenizes with sqlglot and enforces ADQL's lexical rules (symbols,
   identifiers, numbers, one statement, clause order, CAST types), then parses with an
   ADQL sqlglot dialect in which every function call is left anonymous.
2. :mod:`.analyzer` validates and rewrites target-independently: a whitelist of node
   types and clauses; reserved words; tables and columns resolved against the
   :class:`Catalog` through every scope; functions (ADQL's plus declared UDFs) and
   their arity; joins (a JOIN without ON/USING is a cross join, an outer join needs a
   condition); TOP/OFFSET; types. :func:`check_syntax` runs the same code without the
   catalogue lookups and type checks: the grammar only.
   Every table gets a unique alias, every column is qualified, ``*`` is expanded,
   every output column gets a unique quoted name.
3. A :class:`~.targets.Backend` turns what is engine-specific into SQL and generates
   the text.

Backend interface (:class:`.targets.base.Backend`)
---------------------------------------------------
A target implements ``table``, ``number``, ``function`` (maths, strings, aggregates,
UDFs), ``divide`` (with an ``integer`` flag), ``cast``, ``scale`` (IN_UNIT),
``geometry`` (a geometry as a result value), ``geometry_function`` (AREA, CENTROID,
COORD1/2, COORDSYS, DISTANCE, CONTAINS/INTERSECTS as 0/1 values),
``geometry_predicate`` (``CONTAINS/INTERSECTS(...) = 1/0`` as a condition, the place
for index-friendly rewrites), ``distance_predicate`` (``DISTANCE(...) < r``),
``output`` (last touch on result columns, e.g. timestamps as ISO strings) and
``generate``. Arguments arrive as :class:`.model.Value` (target SQL + type) and
geometry in structured form (:mod:`.model`: Point/Circle/Polygon in the coordinate
system written, or Stored for geometry columns). Register a new one with
:func:`.targets.register`. Targets: ``duckdb`` (the default) and ``pgsphere``
(PostgreSQL + pgSphere, :mod:`.targets.pgsphere`: positions as
``spoint(radians(ra), radians(dec))``, the expression to index with GiST).

Semantics worth knowing
-----------------------
* ``LOG`` is the natural logarithm, ``LOG10`` base 10.
* integer / integer is integer division truncated towards zero (as in PostgreSQL);
  write ``1.0/3600`` for a fraction. Decimal literals are DOUBLE.
* ``RAND(seed)``: DuckDB cannot seed one call; the seed is accepted and ignored.
* ``TRUNCATE(x, n)``, ``ROUND(x, n)``, ``MOD`` (integer or floating).
* ``CAST(x AS CHAR)`` is CHAR(1), as in SQL.
* coordinate systems: ICRS/''/NULL as is; FK5 (J2000), FK4 (B1950, no E-terms) and
  GALACTIC are rotated to ICRS; others are rejected. ``COORDSYS`` gives 'ICRS'.
* ``BOX(ra, dec, w, h)`` is the polygon with corners (ra ± w/2, dec ± h/2) and great
  circle edges; a polygon is the smaller region its edges bound (order does not matter).
* ``DISTANCE`` of a point and a circle/polygon (extension): 0 inside, else to the edge.
* ``REGION`` takes the STC-S shapes Position, Circle, Box and Polygon (not Union,
  Intersection, Not...); ``CASE WHEN`` is accepted as an extension.
"""

from __future__ import annotations

from .catalog import Catalog, ColumnInfo, TableInfo
from .errors import ADQLError
from .targets import Backend, get_backend, register
from .translate import OutputColumn, Translation, check_syntax, translate

__all__ = [
    "ADQLError",
    "Backend",
    "Catalog",
    "ColumnInfo",
    "OutputColumn",
    "TableInfo",
    "Translation",
    "check_syntax",
    "get_backend",
    "register",
    "translate",
]
