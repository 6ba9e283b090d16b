"""Coordinate systems named in geometry constructors, and their rotations to ICRS.

ADQL 2.1 deprecates the coordinate-system argument but lets services convert between
systems. Values in a known system are rotated to ICRS, the system of every published
position; an unknown system is an error rather than silently read as ICRS.
"""

from __future__ import annotations

Matrix = tuple[tuple[float, float, float], ...]

# v_icrs = M @ v_frame. Computed with astropy 8 from its frame transformations (checked by
# tests/test_adql_geometry.py). FK4 ignores the E-terms of aberration (at most 0.34").
ROTATIONS: dict[str, Matrix] = {
    "FK5": (
        (0.9999999999999929, 1.1102233716270564e-07, 4.411803424865383e-08),
        (-1.1102233290551095e-07, 0.9999999999999892, -9.647792747341903e-08),
        (-4.4118044980967755e-08, 9.647792246010134e-08, 0.9999999999999944),
    ),
    "FK4": (
        (0.9999256809514502, -0.011181372203849847, -0.004858959705285337),
        (0.011181371753884808, 0.9999374861373455, -2.725853209429685e-05),
        (0.00485896074073883, -2.7073328535966572e-05, 0.9999881948140963),
    ),
    "GALACTIC": (
        (-0.05487565771259219, 0.49410943719272665, -0.8676661375596586),
        (-0.8734370519556163, -0.4448297212232957, -0.19807633727300059),
        (-0.4838350736167157, 0.7469821839866677, 0.4559838136873021),
    ),
}

ICRS = "ICRS"
_ALIASES = {
    "": ICRS,
    "ICRS": ICRS,
    "UNKNOWNFRAME": ICRS,
    "FK5": "FK5",
    "J2000": "FK5",
    "FK4": "FK4",
    "B1950": "FK4",
    "GALACTIC": "GALACTIC",
    "GALACTIC_II": "GALACTIC",
}
# STC-S reference positions and flavours that may follow the frame; they do not change
# the direction of a position on the sky.
_IGNORED = {
    "GEOCENTER",
    "BARYCENTER",
    "HELIOCENTER",
    "TOPOCENTER",
    "LSR",
    "LSRK",
    "LSRD",
    "GALACTIC_CENTER",
    "LOCAL_GROUP_CENTER",
    "EMBARYCENTER",
    "UNKNOWNREFPOS",
    "SPHERICAL2",
    "UNITSPHERE",
}
_EQUINOX = {"FK5": "J2000", "FK4": "B1950"}

SUPPORTED = "ICRS, FK5 (J2000), FK4 (B1950), GALACTIC, or '' for the default (ICRS)"


def parse_frame(text: str | None) -> str | None:
    """The canonical system for a coordinate-system string; None if it is not known."""
    if text is None:
        return ICRS
    words = text.upper().split()
    if not words:
        return ICRS
    frame = _ALIASES.get(words[0])
    if frame is None:
        return None
    for word in words[1:]:
        if word not in _IGNORED and word != _EQUINOX.get(frame):
            return None
    return frame
