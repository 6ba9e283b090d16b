"""The functions ADQL 2.1 defines, with their number of arguments."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FunctionSpec:
    kind: str  # math, string, aggregate, geometry, unit
    min_args: int
    max_args: int | None  # None: any number


def _specs(kind: str, names: str, lo: int, hi: int | None) -> dict[str, FunctionSpec]:
    return {name: FunctionSpec(kind, lo, hi) for name in names.split()}


FUNCTIONS: dict[str, FunctionSpec] = {
    **_specs("math", "ABS CEILING DEGREES EXP FLOOR LOG LOG10 RADIANS SQRT", 1, 1),
    **_specs("math", "ACOS ASIN ATAN COS COT SIN TAN", 1, 1),
    **_specs("math", "MOD POWER ATAN2", 2, 2),
    **_specs("math", "PI", 0, 0),
    **_specs("math", "RAND", 0, 1),
    **_specs("math", "ROUND TRUNCATE", 1, 2),
    **_specs("string", "LOWER UPPER", 1, 1),
    **_specs("string", "COALESCE", 1, None),
    **_specs("aggregate", "COUNT AVG MIN MAX SUM", 1, 1),
    **_specs("geometry", "POINT", 2, 3),
    **_specs("geometry", "CIRCLE", 2, 4),
    **_specs("geometry", "BOX", 3, 5),
    **_specs("geometry", "POLYGON", 3, None),
    **_specs("geometry", "CONTAINS INTERSECTS", 2, 2),
    **_specs("geometry", "DISTANCE", 2, 4),
    **_specs("geometry", "COORD1 COORD2 COORDSYS AREA CENTROID REGION", 1, 1),
    **_specs("unit", "IN_UNIT", 2, 2),
}

GEOMETRY_CONSTRUCTORS = {"POINT", "CIRCLE", "BOX", "POLYGON"}
# Functions whose result keeps the argument's type (int stays int).
TYPE_PRESERVING = {"ABS", "CEILING", "FLOOR", "ROUND", "TRUNCATE"}
# Functions whose result keeps the argument's unit.
UNIT_PRESERVING = TYPE_PRESERVING | {"AVG", "MIN", "MAX", "SUM", "COALESCE"}


def arity_text(spec: FunctionSpec) -> str:
    if spec.max_args is None:
        return f"at least {spec.min_args} argument{'s' if spec.min_args != 1 else ''}"
    if spec.min_args == spec.max_args:
        n = spec.min_args
        return f"{n} argument{'s' if n != 1 else ''}" if n else "no arguments"
    return f"{spec.min_args} to {spec.max_args} arguments"
