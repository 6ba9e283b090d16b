"""Spherical geometry on unit vectors, in plain Python (for constant shapes and tests).

Conventions shared with the SQL the backends generate:

* a polygon's edges are great-circle arcs between consecutive vertices;
* a polygon is the *smaller* of the two regions its edges bound, whatever the vertex
  order (as in pgSphere), so a clockwise list is not read as "the rest of the sky";
* a point is inside when the polygon winds around it (winding number, from the angles
  the edges subtend at the point), with the sign the smaller region has. This is exact
  for any simple polygon that does not contain a pair of antipodal points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

Vec = tuple[float, float, float]
FOUR_PI = 4 * math.pi
SR_TO_DEG2 = (180 / math.pi) ** 2


def unit(ra: float, dec: float) -> Vec:
    a, d = math.radians(ra), math.radians(dec)
    return (math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d))


def radec(v: Vec) -> tuple[float, float]:
    x, y, z = v
    r = math.sqrt(x * x + y * y + z * z)
    ra = math.degrees(math.atan2(y, x)) % 360.0
    dec = math.degrees(math.asin(max(-1.0, min(1.0, z / r))))
    return ra, dec


def dot(a: Vec, b: Vec) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def cross(a: Vec, b: Vec) -> Vec:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def norm(a: Vec) -> float:
    return math.sqrt(dot(a, a))


def normalize(a: Vec) -> Vec:
    n = norm(a)
    return (a[0] / n, a[1] / n, a[2] / n)


def rotate(m: Sequence[Sequence[float]], v: Vec) -> Vec:
    return (dot(m[0], v), dot(m[1], v), dot(m[2], v))  # type: ignore[arg-type]


def angle(a: Vec, b: Vec) -> float:
    """Angle between two unit vectors in radians, accurate at all separations."""
    return math.atan2(norm(cross(a, b)), dot(a, b))


def separation(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle distance in degrees."""
    return math.degrees(angle(unit(ra1, dec1), unit(ra2, dec2)))


def signed_area(vs: Sequence[Vec]) -> float:
    """Area (sr) of the region to the left of the edges, signed, modulo 4π."""
    total = 0.0
    a = vs[0]
    for b, c in pairwise(vs[1:]):
        num = dot(a, cross(b, c))
        den = 1 + dot(a, b) + dot(b, c) + dot(c, a)
        total += 2 * math.atan2(num, den)
    return total


def orientation(vs: Sequence[Vec]) -> int:
    """+1 if the region left of the edges is the smaller one, else -1."""
    return 1 if signed_area(vs) % FOUR_PI <= 2 * math.pi else -1


def area(vs: Sequence[Vec]) -> float:
    """Area of the polygon (the smaller region) in steradians."""
    s = signed_area(vs)
    # s reduced to [-2π, 2π]: exact for a small polygon of either orientation, where
    # (s mod 4π) and 4π minus it would lose digits to cancellation.
    return abs(s - FOUR_PI * round(s / FOUR_PI))


def winding(p: Vec, vs: Sequence[Vec]) -> float:
    """Sum of the angles the edges subtend at p: ±2π if the edges wind around p, else 0."""
    total = 0.0
    n = len(vs)
    for i in range(n):
        a, b = vs[i], vs[(i + 1) % n]
        total += math.atan2(dot(p, cross(a, b)), dot(a, b) - dot(a, p) * dot(b, p))
    return total


def contains(vs: Sequence[Vec], p: Vec) -> bool:
    return winding(p, vs) * orientation(vs) > math.pi


def centroid(vs: Sequence[Vec]) -> Vec:
    """Normalised mean of the vertices (exact for boxes and regular polygons)."""
    return normalize((sum(v[0] for v in vs), sum(v[1] for v in vs), sum(v[2] for v in vs)))


def arc_distance(p: Vec, a: Vec, b: Vec) -> float:
    """Angular distance (radians) from p to the great-circle arc a→b."""
    n = cross(a, b)
    nn = norm(n)
    if nn > 0 and dot(cross(a, p), n) >= 0 and dot(cross(p, b), n) >= 0:
        return math.asin(min(1.0, abs(dot(p, n)) / nn))
    return min(angle(p, a), angle(p, b))


def arcs_cross(a1: Vec, a2: Vec, b1: Vec, b2: Vec) -> bool:
    """Whether two short great-circle arcs cross."""
    n1, n2 = cross(a1, a2), cross(b1, b2)
    t = cross(n1, n2)
    s = (
        dot(cross(n1, a1), t),
        dot(cross(a2, n1), t),
        dot(cross(n2, b1), t),
        dot(cross(b2, n2), t),
    )
    return all(x > 0 for x in s) or all(x < 0 for x in s)


def latitude_range(vs: Sequence[Vec]) -> tuple[float, float]:
    """(min, max) declination in degrees over the polygon (edges and interior)."""
    lo, hi = 90.0, -90.0
    n = len(vs)
    for i in range(n):
        a, b = vs[i], vs[(i + 1) % n]
        for v in (a, b):
            d = math.degrees(math.asin(max(-1.0, min(1.0, v[2]))))
            lo, hi = min(lo, d), max(hi, d)
        nrm = cross(a, b)
        if norm(nrm) == 0:
            continue
        nrm = normalize(nrm)
        for sign in (1.0, -1.0):
            # The point of the edge's great circle nearest the pole: z - (z.n) n.
            zc = (0.0, 0.0, sign)
            m = (
                zc[0] - nrm[2] * sign * nrm[0],
                zc[1] - nrm[2] * sign * nrm[1],
                zc[2] - nrm[2] * sign * nrm[2],
            )
            if norm(m) == 0:
                continue
            m = normalize(m)
            if dot(cross(a, m), nrm) >= 0 and dot(cross(m, b), nrm) >= 0:
                d = math.degrees(math.asin(max(-1.0, min(1.0, m[2]))))
                lo, hi = min(lo, d), max(hi, d)
    if contains(vs, (0.0, 0.0, 1.0)):
        hi = 90.0
    if contains(vs, (0.0, 0.0, -1.0)):
        lo = -90.0
    return lo, hi


def bounding_cap(vs: Sequence[Vec]) -> tuple[Vec, float]:
    """A cap (centre, radius in radians) that contains the polygon."""
    c = centroid(vs)
    radius = 0.0
    n = len(vs)
    for i in range(n):
        a, b = vs[i], vs[(i + 1) % n]
        for k in range(17):
            t = k / 16
            p = normalize(tuple(a[j] * (1 - t) + b[j] * t for j in range(3)))  # type: ignore[arg-type]
            radius = max(radius, angle(c, p))
    if not contains(vs, c):
        return c, math.pi
    return c, radius
