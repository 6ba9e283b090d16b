"""Unit conversion for IN_UNIT (astropy is imported only when a query uses it)."""

from __future__ import annotations


def _unit(tree):
    import astropy.units as u

    kind = tree[0]
    if kind == "u":
        text = tree[1]
        if not text:
            return u.dimensionless_unscaled
        for fmt in ("vounit", "generic"):
            try:
                return u.Unit(text, format=fmt)
            except ValueError:
                continue
        raise ValueError(f"unit {text!r} is not a unit this service understands")
    if kind == "mul":
        return _unit(tree[1]) * _unit(tree[2])
    if kind == "div":
        return _unit(tree[1]) / _unit(tree[2])
    if kind == "pow":
        return _unit(tree[1]) ** tree[2]
    raise ValueError(f"bad unit expression {tree!r}")


def conversion_factor(source: tuple, target: str) -> float:
    """The factor that converts values in ``source`` (a unit tree) to ``target``."""
    import astropy.units as u

    src = _unit(source)
    dst = _unit(("u", target))
    try:
        return float(src.to(dst))
    except u.UnitConversionError:
        raise ValueError(f"{src.to_string()} cannot be converted to {target}") from None
