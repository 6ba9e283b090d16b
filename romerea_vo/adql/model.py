"""Types and geometry values shared by the analyser and the target backends."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sqlglot import exp

from .catalog import ColumnInfo

GEOMETRY_SHAPES = ("point", "circle", "polygon")
_INT_TYPES = {"short", "int", "long", "unsignedByte"}
_FLOAT_TYPES = {"float", "double"}
_STRING_TYPES = {"char", "unicodeChar"}

Unit = tuple | None
"""A unit as a small expression tree, evaluated with astropy only when IN_UNIT needs it:
``("u", "mas/yr")``, ``("mul", a, b)``, ``("div", a, b)``, ``("pow", a, 0.5)``."""


@dataclass(frozen=True)
class VType:
    """What an expression yields. ``kind``: int, float, string, bool, timestamp,
    geometry (with ``shape``), null or unknown; the VOTable fields are set when known."""

    kind: str
    shape: str | None = None
    datatype: str | None = None
    arraysize: str | None = None
    xtype: str | None = None
    unit: Unit = None

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "float")

    def with_unit(self, unit: Unit) -> VType:
        return replace(self, unit=unit)

    def bare(self) -> VType:
        """The same kind without column-specific details."""
        return VType(self.kind, self.shape, unit=self.unit)


INT = VType("int")
LONG = VType("int", datatype="long")
FLOAT = VType("float")
DOUBLE = VType("float", datatype="double")
STRING = VType("string")
BOOL = VType("bool")
TIMESTAMP = VType("timestamp")
NULL = VType("null")
UNKNOWN = VType("unknown")


def geometry_type(shape: str) -> VType:
    return VType(
        "geometry",
        shape=shape,
        datatype="double",
        arraysize={"point": "2", "circle": "3"}.get(shape, "*"),
        xtype=shape,
        unit=("u", "deg"),
    )


def column_type(col: ColumnInfo) -> VType:
    """The VType of a catalogue column."""
    xtype = (col.xtype or "").lower()
    unit = ("u", col.unit) if col.unit else None
    if xtype in GEOMETRY_SHAPES:
        return VType("geometry", xtype, col.datatype, col.arraysize, col.xtype, unit)
    if xtype in ("timestamp", "adql:timestamp"):
        return VType("timestamp", None, col.datatype, col.arraysize, col.xtype)
    if col.datatype in _INT_TYPES:
        kind = "int"
    elif col.datatype in _FLOAT_TYPES:
        kind = "float"
    elif col.datatype in _STRING_TYPES:
        kind = "string"
    elif col.datatype == "boolean":
        kind = "bool"
    else:
        kind = "unknown"
    if col.arraysize and kind in ("int", "float", "bool"):
        kind = "unknown"  # arrays: nothing ADQL can compute on
    return VType(kind, None, col.datatype, col.arraysize, col.xtype, unit)


@dataclass
class Value:
    """An analysed expression: its target SQL and what is known about it."""

    sql: exp.Expression
    type: VType
    const: float | int | str | None = None  # the value of a literal (after unary minus)
    geom: Geometry | None = None  # structured form of a geometry value
    column: bool = False  # a plain column reference
    name: str | None = None  # the output name it would get in a select list
    source: tuple[str, str] | None = None  # (table, column) of a plain column reference
    aggregate: bool = False  # contains an aggregate function
    is_null: bool = False  # the NULL literal

    @property
    def is_const(self) -> bool:
        return self.const is not None and not isinstance(self.const, str)

    @property
    def number(self) -> float:
        """The numeric literal's value (only where `is_const` holds)."""
        if self.const is None or isinstance(self.const, str):
            raise TypeError(f"not a numeric constant: {self.const!r}")
        return float(self.const)


# --- geometry -------------------------------------------------------------------------
# Constructors keep their coordinates as Values in the system they were written in; the
# backend rotates them to ICRS.


@dataclass
class Point:
    ra: Value
    dec: Value
    frame: str = "ICRS"

    def column_table(self) -> str | None:
        """The table alias when the point is two plain columns of one table (what a
        position index or the cross-match core can serve), else None."""
        ra, dec = self.ra.sql, self.dec.sql
        if not (self.ra.column and self.dec.column):
            return None
        if not (isinstance(ra, exp.Column) and isinstance(dec, exp.Column)):
            return None
        if not ra.table or ra.table != dec.table:
            return None
        return ra.table


@dataclass
class Circle:
    center: Point
    radius: Value


@dataclass
class Polygon:
    vertices: list[Point] = field(default_factory=list)


@dataclass
class Stored:
    """A geometry that exists only as a target value: a geometry column, a CAST from a
    string, the result of a geometry function."""

    value: Value
    shape: str


Geometry = Point | Circle | Polygon | Stored


def shape_of(g: Geometry) -> str:
    if isinstance(g, Point):
        return "point"
    if isinstance(g, Circle):
        return "circle"
    if isinstance(g, Polygon):
        return "polygon"
    return g.shape


# --- positional joins run outside SQL ---------------------------------------------------


@dataclass(frozen=True)
class SpatialJoinSide:
    """One table of a positional join: its physical name, row key and position columns
    (SQL text, already quoted)."""

    physical: str
    row_key: str
    ra: str
    dec: str


@dataclass(frozen=True)
class SpatialJoin:
    """A positional join the translated SQL expects as a relation named ``pairs`` with
    columns ``l`` and ``r``: the row keys of every (left, right) pair whose positions are
    within ``radius_deg`` (strictly, with ``strict``)."""

    pairs: str
    left: SpatialJoinSide
    right: SpatialJoinSide
    radius_deg: float
    strict: bool
