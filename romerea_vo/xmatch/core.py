"""Positional cross-match of two catalogues: a declination-zone range join.

The second catalogue is sorted once by ``(zone, ra)`` where zones are declination
bands at least one match radius high.  Every source of the first catalogue then
looks up the three neighbouring zones and, inside each, an RA window wide enough
for the radius at its declination (the whole zone when the circle reaches a
pole, both sides of RA = 0/360 when the window wraps).  The window bounds are
found with :func:`numpy.searchsorted`, the candidate pairs are expanded with
vectorised index arithmetic, and the exact great-circle separation (haversine,
stable at small separations) decides.  Python loops run only over chunks of the
first catalogue, so memory stays bounded whatever the catalogue sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from romerea_vo.errors import InvalidRequestError

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

MODES = ("all", "best", "best-unique")
MAX_RADIUS_ARCSEC = 3600.0

#: Zones are never lower than this (degrees) so ``zone * _KEY_STRIDE + ra`` keeps
#: sub-milliarcsecond resolution in float64 even for tiny radii.
_MIN_ZONE_HEIGHT_DEG = 1.0 / 3600.0
#: Stride between zones in the combined sort key; larger than any RA value.
_KEY_STRIDE = 512.0
#: Padding (degrees) added to RA windows and the polar test; the exact test follows.
_PAD_DEG = 1e-6
#: Rows of the first catalogue handled per chunk.
_CHUNK_ROWS = 65536
#: Candidate pairs handled at once (a single row may exceed it).
_MAX_CANDIDATES = 4_000_000
#: Rows of the first catalogue sampled to estimate the pairs before matching.
_SAMPLE_ROWS = 4096
#: Share of a candidate window (3 zones x 2 half-widths, about 6 r^2) inside the circle.
_CIRCLE_SHARE = np.pi / 6.0
#: A match is refused up front when the estimate exceeds ``max_pairs`` by this factor
#: (the estimate is a sample; the exact count still stops at ``max_pairs``).
_ESTIMATE_MARGIN = 2.0


class TooManyPairs(InvalidRequestError):
    """A match would produce more pairs than the caller allows."""


class MatchCancelled(InvalidRequestError):
    """The caller's ``cancelled`` check said stop (a client gone, a deadline passed)."""


@dataclass
class MatchResult:
    """Matched pairs: row indices into each catalogue and their separation."""

    left: np.ndarray  # int64 row indices into the first catalogue
    right: np.ndarray  # int64 row indices into the second catalogue
    sep_arcsec: np.ndarray  # float64 great-circle separation

    def __len__(self) -> int:
        return int(self.left.size)

    @classmethod
    def empty(cls) -> MatchResult:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))


def _coords(ra, dec, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (ra in [0, 360), dec, valid mask) as float64 1-D arrays."""
    ra = np.atleast_1d(np.asarray(ra, dtype=np.float64))
    dec = np.atleast_1d(np.asarray(dec, dtype=np.float64))
    if ra.ndim != 1 or dec.ndim != 1:
        raise InvalidRequestError(f"{which} catalogue: ra and dec must be one-dimensional")
    if ra.shape != dec.shape:
        raise InvalidRequestError(
            f"{which} catalogue: ra and dec have different lengths ({ra.size} and {dec.size})"
        )
    with np.errstate(invalid="ignore"):
        valid = (
            np.isfinite(ra)
            & np.isfinite(dec)
            & (ra >= 0.0)
            & (ra <= 360.0)
            & (dec >= -90.0)
            & (dec <= 90.0)
        )
    ra = np.where(valid, np.where(ra >= 360.0, ra - 360.0, ra), 0.0)
    dec = np.where(valid, dec, 0.0)
    return ra, dec, valid


def _check_radius(radius_arcsec) -> float:
    if isinstance(radius_arcsec, bool):
        raise InvalidRequestError(f"radius must be a number of arcseconds, not {radius_arcsec!r}")
    try:
        radius = float(radius_arcsec)
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"radius must be a number of arcseconds, not {radius_arcsec!r}"
        ) from None
    if not np.isfinite(radius) or radius <= 0.0 or radius > MAX_RADIUS_ARCSEC:
        raise InvalidRequestError(
            f"radius must be > 0 and <= {MAX_RADIUS_ARCSEC:g} arcsec (1 degree); "
            f"got {radius_arcsec!r}"
        )
    return radius


def _haversine_rad(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation in radians; inputs in degrees."""
    ra1, dec1, ra2, dec2 = (np.radians(a) for a in (ra1, dec1, ra2, dec2))
    s_dec = np.sin(0.5 * (dec2 - dec1))
    s_ra = np.sin(0.5 * (ra2 - ra1))
    h = s_dec * s_dec + np.cos(dec1) * np.cos(dec2) * s_ra * s_ra
    return 2.0 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def _first_per_group(group: np.ndarray, sep: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Indices of the smallest ``sep`` per ``group`` (ties: smallest ``other``)."""
    if group.size == 0:
        return np.empty(0, np.int64)
    order = np.lexsort((other, sep, group))
    g = group[order]
    first = np.ones(g.size, dtype=bool)
    first[1:] = g[1:] != g[:-1]
    return order[first]


def _first_per_run(group: np.ndarray, sep: np.ndarray, other: np.ndarray) -> np.ndarray:
    """As :func:`_first_per_group` when equal ``group`` values are contiguous (pairs of one
    row come out together); linear instead of a sort."""
    if group.size == 0:
        return np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    lengths = np.diff(np.r_[starts, group.size])
    is_min = sep == np.repeat(np.minimum.reduceat(sep, starts), lengths)
    tied_other = np.where(is_min, other, np.iinfo(np.int64).max)
    best_other = np.repeat(np.minimum.reduceat(tied_other, starts), lengths)
    return np.flatnonzero(is_min & (other == best_other))


def _pair_order(left: np.ndarray, right: np.ndarray, sep: np.ndarray) -> np.ndarray:
    """The order (left, sep, right) of pairs whose equal ``left`` values are contiguous.

    Equivalent to ``np.lexsort((right, sep, left))`` but sorts by (sep, right) only
    inside the (few) runs of more than one pair, then by ``left`` with a stable integer
    sort: several times faster for the mostly one-to-one matches of catalogues.
    """
    n = left.size
    perm = np.arange(n)
    if n < 2:
        return perm
    new_run = np.r_[True, left[1:] != left[:-1]]
    run = np.cumsum(new_run)
    lengths = np.bincount(run)
    multi = np.flatnonzero(lengths[run] > 1)
    if multi.size:
        perm[multi] = multi[np.lexsort((right[multi], sep[multi], run[multi]))]
    return perm[np.argsort(left[perm], kind="stable")]


def zone_height(radius_arcsec: float) -> float:
    """The declination-zone height (degrees) an index needs for matches within the radius."""
    return max(_check_radius(radius_arcsec) / 3600.0, _MIN_ZONE_HEIGHT_DEG)


class SkyIndex:
    """A catalogue sorted once by ``(zone, ra)``, to be matched against repeatedly.

    An index built with zone height ``h`` (:func:`zone_height`) serves every radius up to
    ``h``; the TAP service keeps indexes of its (read-only) tables between queries.
    """

    def __init__(self, ra, dec, height_deg: float):
        ra, dec, ok = _coords(ra, dec, "second")
        self.size = int(ra.size)
        self.height = float(height_deg)
        idx = np.flatnonzero(ok)
        key = np.floor((dec[idx] + 90.0) / self.height) * _KEY_STRIDE + ra[idx]
        order = np.argsort(key)
        self.key = key[order]
        self.rows = idx[order]  # original row of each sorted entry
        self.ra = ra[self.rows]
        self.dec = dec[self.rows]

    @property
    def nbytes(self) -> int:
        return self.key.nbytes + self.rows.nbytes + self.ra.nbytes + self.dec.nbytes

    def match(
        self,
        ra,
        dec,
        radius_arcsec: float,
        *,
        mode: str = "all",
        strict: bool = False,
        max_pairs: int | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> MatchResult:
        """Match ``(ra, dec)`` (the first catalogue) against the index (the second).

        Same modes and output as :func:`crossmatch`; ``strict`` keeps only separations
        strictly below the radius (ADQL ``DISTANCE(...) < r``); more than ``max_pairs``
        pairs raise :class:`TooManyPairs`, before matching when a sample of the rows
        predicts them well beyond it, else as soon as they are found (memory stays bounded
        until then). ``cancelled`` is asked between blocks; when it answers True the match
        stops with :class:`MatchCancelled`.
        """
        radius = _check_radius(radius_arcsec)
        if mode not in MODES:
            raise InvalidRequestError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        r_deg = radius / 3600.0
        if r_deg > self.height * (1.0 + 1e-12):
            raise ValueError(f"index zones ({self.height} deg) are lower than the radius")
        ra1, dec1, ok1 = _coords(ra, dec, "first")
        idx1 = np.flatnonzero(ok1)
        if idx1.size == 0 or self.key.size == 0:
            return MatchResult.empty()
        r_rad = np.radians(r_deg)

        if max_pairs is not None:
            estimate = self.estimate_pairs(ra1[idx1], dec1[idx1], r_deg)
            if estimate > _ESTIMATE_MARGIN * max_pairs:
                raise TooManyPairs(
                    f"the positional match would yield more than {max_pairs:,} pairs (about "
                    f"{estimate:,.0f}, estimated before matching); use a smaller radius or "
                    "fewer rows"
                )

        # Visit catalogue 1 in the same (zone, ra) order: cache-friendly look-ups.
        z1 = np.floor((dec1[idx1] + 90.0) / self.height)
        idx1 = idx1[np.argsort(z1 * _KEY_STRIDE + ra1[idx1])]

        lefts, rights, seps = [], [], []
        found = 0
        for c0 in range(0, idx1.size, _CHUNK_ROWS):
            rows1 = idx1[c0 : c0 + _CHUNK_ROWS]
            starts, counts = _candidate_ranges(
                ra1[rows1], dec1[rows1], self.key, r_deg, self.height
            )
            per_row = counts.sum(axis=1)
            # Split the chunk so that each block expands to at most _MAX_CANDIDATES pairs.
            cum = np.cumsum(per_row)
            b0 = 0
            while b0 < rows1.size:
                if cancelled is not None and cancelled():
                    raise MatchCancelled("the positional match was cancelled")
                base = cum[b0 - 1] if b0 else 0
                b1 = int(np.searchsorted(cum, base + _MAX_CANDIDATES, side="right"))
                b1 = max(b1, b0 + 1)
                li, ri = _expand(rows1[b0:b1], starts[b0:b1], counts[b0:b1])
                b0 = b1
                if li.size == 0:
                    continue
                sep = _haversine_rad(ra1[li], dec1[li], self.ra[ri], self.dec[ri])
                keep = sep < r_rad if strict else sep <= r_rad
                li, ri, sep = li[keep], self.rows[ri[keep]], sep[keep]
                if mode == "best":
                    sel = _first_per_run(li, sep, ri)
                    li, ri, sep = li[sel], ri[sel], sep[sel]
                lefts.append(li)
                rights.append(ri)
                seps.append(sep)
                found += li.size
                if max_pairs is not None and found > max_pairs:
                    raise TooManyPairs(
                        f"the positional match yields more than {max_pairs:,} pairs; "
                        "use a smaller radius or fewer rows"
                    )

        if not lefts:
            return MatchResult.empty()
        left = np.concatenate(lefts).astype(np.int64, copy=False)
        right = np.concatenate(rights).astype(np.int64, copy=False)
        sep = np.concatenate(seps)

        if mode == "best-unique":
            best_l = _first_per_group(left, sep, right)
            best_r = _first_per_group(right, sep, left)
            mutual = np.intersect1d(best_l, best_r, assume_unique=True)
            left, right, sep = left[mutual], right[mutual], sep[mutual]

        order = _pair_order(left, right, sep) if mode == "all" else np.argsort(left, kind="stable")
        return MatchResult(left[order], right[order], np.degrees(sep[order]) * 3600.0)

    def estimate_pairs(self, ra, dec, r_deg: float) -> float:
        """Pairs within ``r_deg`` expected for valid positions ``(ra, dec)``, from the
        candidate windows of an evenly spaced sample of at most ``_SAMPLE_ROWS`` rows
        (no pairs are expanded)."""
        n = ra.size
        if n == 0 or self.key.size == 0:
            return 0.0
        step = max(1, n // _SAMPLE_ROWS)
        _, counts = _candidate_ranges(ra[::step], dec[::step], self.key, r_deg, self.height)
        per_row = counts.sum(axis=1)
        share = _CIRCLE_SHARE * min(1.0, r_deg / self.height)
        return float(per_row.mean()) * n * share


def crossmatch(ra1, dec1, ra2, dec2, radius_arcsec: float, *, mode: str = "all") -> MatchResult:
    """Match catalogue 1 against catalogue 2 within ``radius_arcsec`` (degrees in, ICRS).

    ``mode``: ``"all"`` every pair within the radius; ``"best"`` the nearest row of
    catalogue 2 for each row of catalogue 1; ``"best-unique"`` only pairs that are
    each other's nearest.  Rows with NaN or out-of-range coordinates never match.
    Pairs come out sorted by left index, then separation, then right index.
    """
    height = zone_height(radius_arcsec)
    if mode not in MODES:
        raise InvalidRequestError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return SkyIndex(ra2, dec2, height).match(ra1, dec1, radius_arcsec, mode=mode)


def _candidate_ranges(ra, dec, key2, r_deg, height):
    """Start positions and counts (n, 9) in ``key2`` for 3 zones x 3 RA intervals."""
    n = ra.size
    zone = np.floor((dec + 90.0) / height)
    # Half-width of the RA window; the whole circle when the cap reaches a pole.
    cosd = np.cos(np.radians(dec))
    polar = np.abs(dec) + r_deg + _PAD_DEG >= 90.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sin(np.radians(r_deg)) / cosd
    full = polar | ~(ratio < 0.999)
    w = np.degrees(np.arcsin(np.where(full, 0.0, ratio))) * (1.0 + 1e-9) + _PAD_DEG
    full |= w >= 90.0
    lo = ra - w
    hi = ra + w
    inf = np.inf
    # Three RA intervals: main (clipped) and the two wrapped parts, empty if unused.
    main_lo = np.where(full, -1.0, np.maximum(lo, -1.0))
    main_hi = np.where(full, 361.0, np.minimum(hi, 361.0))
    wl_lo = np.where(~full & (lo < 0.0), lo + 360.0, inf)
    wl_hi = np.where(~full & (lo < 0.0), 361.0, -inf)
    wh_lo = np.where(~full & (hi >= 360.0), -1.0, inf)
    wh_hi = np.where(~full & (hi >= 360.0), hi - 360.0, -inf)
    ivl_lo = np.stack([main_lo, wl_lo, wh_lo], axis=1)  # (n, 3)
    ivl_hi = np.stack([main_hi, wl_hi, wh_hi], axis=1)
    zones = zone[:, None] + np.array([-1.0, 0.0, 1.0])[None, :]  # (n, 3)
    base = (zones * _KEY_STRIDE)[:, :, None]  # (n, 3, 1)
    klo = (base + ivl_lo[:, None, :]).reshape(n, 9)
    khi = (base + ivl_hi[:, None, :]).reshape(n, 9)
    # Search only the intervals in use (the wrapped ones rarely are), one column at a
    # time: each column is nearly sorted, as the rows are, which binary search exploits.
    starts = np.zeros((n, 9), np.int64)
    ends = np.zeros((n, 9), np.int64)
    for c in range(9):
        used = np.isfinite(klo[:, c])
        if used.all():
            starts[:, c] = np.searchsorted(key2, klo[:, c], side="left")
            ends[:, c] = np.searchsorted(key2, khi[:, c], side="right")
        elif used.any():
            starts[used, c] = np.searchsorted(key2, klo[used, c], side="left")
            ends[used, c] = np.searchsorted(key2, khi[used, c], side="right")
    counts = np.maximum(ends - starts, 0)
    return starts, counts


def _expand(rows, starts, counts):
    """Expand (row, start, count) ranges into flat candidate index pairs."""
    counts = counts.ravel()
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    li = np.repeat(np.repeat(rows, starts.shape[1]), counts)
    offsets = np.cumsum(counts) - counts
    ri = np.repeat(starts.ravel() - offsets, counts) + np.arange(total)
    return li, ri


def propagate(
    ra, dec, pmra_masyr, pmdec_masyr, from_epoch: float, to_epoch: float
) -> tuple[np.ndarray, np.ndarray]:
    """Move positions linearly on the sphere from ``from_epoch`` to ``to_epoch`` (years).

    ``pmra_masyr`` includes the cos(dec) factor.  The displacement is applied along
    the local east/north tangent vectors and the result renormalised onto the
    sphere.  Rows whose proper motion is NaN keep their position.
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    pmra = np.broadcast_to(np.asarray(pmra_masyr, dtype=np.float64), ra.shape)
    pmdec = np.broadcast_to(np.asarray(pmdec_masyr, dtype=np.float64), ra.shape)
    dt = float(to_epoch) - float(from_epoch)
    mas = np.pi / (180.0 * 3600.0 * 1000.0)
    has_pm = np.isfinite(pmra) & np.isfinite(pmdec)
    da = np.where(has_pm, pmra, 0.0) * mas * dt
    dd = np.where(has_pm, pmdec, 0.0) * mas * dt
    a = np.radians(ra)
    d = np.radians(dec)
    sa, ca, sd, cd = np.sin(a), np.cos(a), np.sin(d), np.cos(d)
    x = cd * ca - da * sa - dd * sd * ca
    y = cd * sa + da * ca - dd * sd * sa
    z = sd + dd * cd
    new_ra = np.degrees(np.arctan2(y, x)) % 360.0
    new_dec = np.degrees(np.arctan2(z, np.hypot(x, y)))
    new_ra = np.where(has_pm, new_ra, ra)
    new_dec = np.where(has_pm, new_dec, dec)
    return new_ra, new_dec
