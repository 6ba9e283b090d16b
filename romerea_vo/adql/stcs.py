"""The simple STC-S shapes REGION accepts: Position, Circle, Box and Polygon."""

from __future__ import annotations

import re

from . import frames

_ARITY = {"POSITION": 2, "CIRCLE": 3, "BOX": 4}
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\Z")


def parse_stcs(text: str) -> tuple[str, str, list[float]]:
    """(shape, frame, numbers) for an STC-S string; ValueError with the reason if not."""
    words = text.replace("(", " ( ").replace(")", " ) ").split()
    if not words:
        raise ValueError("the STC-S string is empty")
    shape = words[0].upper()
    if shape not in (*_ARITY, "POLYGON"):
        raise ValueError(
            f"{words[0]!r} regions are not supported; REGION takes Position, Circle, Box or Polygon"
        )
    rest = words[1:]
    if len(rest) >= 2 and rest[0].upper() == "FILLFACTOR":
        rest = rest[2:]
    if len(rest) >= 2 and rest[-2].upper() == "UNIT":
        if rest[-1].lower() != "deg":
            raise ValueError(f"unit {rest[-1]!r} is not supported; give positions in deg")
        rest = rest[:-2]
    i = 0
    while i < len(rest) and not _NUMBER.match(rest[i]):
        i += 1
    frame = frames.parse_frame(" ".join(rest[:i]))
    if frame is None:
        raise ValueError(
            f"unknown coordinate system {' '.join(rest[:i])!r}; this service knows "
            f"{frames.SUPPORTED}"
        )
    numbers = []
    for word in rest[i:]:
        if not _NUMBER.match(word):
            raise ValueError(f"{word!r} is not a number")
        numbers.append(float(word))
    n = len(numbers)
    if shape in _ARITY and n != _ARITY[shape]:
        raise ValueError(f"{shape.title()} takes {_ARITY[shape]} numbers, not {n}")
    if shape == "POLYGON" and (n < 6 or n % 2):
        raise ValueError("Polygon takes pairs of coordinates for at least 3 vertices")
    return shape, frame, numbers
