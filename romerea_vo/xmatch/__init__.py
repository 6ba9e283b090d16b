"""Positional cross-matching: the spatial-join core (:mod:`.core`) and what is built on it."""

from .core import (
    MAX_RADIUS_ARCSEC,
    MODES,
    MatchCancelled,
    MatchResult,
    SkyIndex,
    TooManyPairs,
    crossmatch,
    propagate,
    zone_height,
)

__all__ = [
    "MAX_RADIUS_ARCSEC",
    "MODES",
    "MatchCancelled",
    "MatchResult",
    "SkyIndex",
    "TooManyPairs",
    "crossmatch",
    "propagate",
    "zone_height",
]
