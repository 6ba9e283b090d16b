"""SQL text both targets write alike: unit-vector arithmetic and the plain functions.

Vectors are lists of three SQL expressions. The results are plain SQL arithmetic, which
DuckDB and PostgreSQL read the same way; literals (whose types differ between the
engines) are the callers' business.
"""

from __future__ import annotations

SIMPLE_FUNCTIONS = {
    "ABS": "abs",
    "DEGREES": "degrees",
    "EXP": "exp",
    "LOG": "ln",
    "LOG10": "log10",
    "RADIANS": "radians",
    "SQRT": "sqrt",
    "ACOS": "acos",
    "ASIN": "asin",
    "ATAN": "atan",
    "ATAN2": "atan2",
    "COS": "cos",
    "COT": "cot",
    "SIN": "sin",
    "TAN": "tan",
    "POWER": "power",
    "PI": "pi",
    "LOWER": "lower",
    "UPPER": "upper",
    "COALESCE": "coalesce",
    "COUNT": "count",
    "MIN": "min",
    "MAX": "max",
}
"""ADQL functions that are the same function, under these names, on both engines."""


def dot(a: list[str], b: list[str]) -> str:
    return f"(({a[0]}) * ({b[0]}) + ({a[1]}) * ({b[1]}) + ({a[2]}) * ({b[2]}))"


def cross(a: list[str], b: list[str]) -> list[str]:
    return [
        f"(({a[1]}) * ({b[2]}) - ({a[2]}) * ({b[1]}))",
        f"(({a[2]}) * ({b[0]}) - ({a[0]}) * ({b[2]}))",
        f"(({a[0]}) * ({b[1]}) - ({a[1]}) * ({b[0]}))",
    ]


def clamp(x: str, lo: str, hi: str) -> str:
    """``x`` limited to [lo, hi], NULL if ``x`` is: least()/greatest() skip NULLs on both
    engines, where arithmetic propagates them."""
    return f"(CASE WHEN ({x}) < {lo} THEN {lo} WHEN ({x}) > {hi} THEN {hi} ELSE ({x}) END)"


def vec_angle(a: list[str], b: list[str]) -> str:
    """Angle in degrees between two unit vectors (atan2: accurate at all angles)."""
    c = cross(a, b)
    return f"degrees(atan2(sqrt({dot(c, c)}), {dot(a, b)}))"
