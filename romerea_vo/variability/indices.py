"""Variability indices of many stars at once, on (stars, images) arrays.

Every function takes the points of a block of stars as 2-D arrays whose image axis is
in time order and shared by all stars (the layout of a quadrant cube), with a boolean
mask of the points to use; a star's index is NaN where it is undefined (too few good
points). Nothing here reads files.

Definitions follow Stetson (1996, PASP 108, 851) for J, K and L, and Sokolovsky et al.
(2017, MNRAS 464, 274, "Comparative performance of selected variability detection
techniques in photometric time series data", section 2) for the scatter- and
correlation-based indices; they recommend the interquartile range and 1/eta together.
The excess Abbe value is that of Mowlavi et al. (2014, A&A 568, A78) as used there.

Written on numpy rather than with scipy.stats per star: the ingest pass computes these
for ~400,000 stars x 2,214 images per field, and per-star Python calls would dominate.
The tests check every index against a per-star reference straight from the formula.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ABBE_WINDOW_DAYS",
    "BRIGHT_RUN_SIGMA",
    "MIN_POINTS",
    "band_indices",
    "stetson_indices",
    "visit_slots",
]

MIN_POINTS = 3
"""Fewer good points than this give NaN for every index but the weighted mean, the
brightening run and the flagged fraction."""
ABBE_WINDOW_DAYS = 20.0
"""Width of the sub-intervals of the excess Abbe value (Mowlavi et al. 2014's dT_sub)."""
BRIGHT_RUN_SIGMA = 3.0
"""A point counts towards the brightening run when (median - mag) / err >= this."""
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _sorted_quantiles(values: np.ndarray, n: np.ndarray) -> dict[float, np.ndarray]:
    """Quantiles (numpy's default 'linear' method) of each row's first n sorted values."""
    out = {}
    rows = np.arange(values.shape[0])
    if values.shape[1] == 0:
        return {q: np.full(values.shape[0], np.nan) for q in _QUANTILES}
    for q in _QUANTILES:
        pos = q * np.maximum(n - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        frac = pos - lo
        v_lo, v_hi = values[rows, lo], values[rows, hi]
        out[q] = np.where(n > 0, v_lo + frac * (v_hi - v_lo), np.nan)
    return out


def _previous_index(good: np.ndarray) -> np.ndarray:
    """Per point, the index of the previous good point of its row (-1 if none)."""
    idx = np.where(good, np.arange(good.shape[1])[None, :], -1)
    last = np.maximum.accumulate(idx, axis=1)
    prev = np.full_like(last, -1)
    prev[:, 1:] = last[:, :-1]
    return prev


def _next_index(good: np.ndarray) -> np.ndarray:
    """Per position, the index of the first good point at or after it (n if none)."""
    n = good.shape[1]
    idx = np.where(good, np.arange(n)[None, :], n)
    return np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]


def _prefix(values: np.ndarray) -> np.ndarray:
    out = np.zeros((values.shape[0], values.shape[1] + 1))
    np.cumsum(values, axis=1, out=out[:, 1:])
    return out


def band_indices(
    t: np.ndarray,
    mag: np.ndarray,
    err: np.ndarray,
    good: np.ndarray,
    attempted: np.ndarray | None = None,
    *,
    abbe_window: float = ABBE_WINDOW_DAYS,
) -> dict[str, np.ndarray]:
    """Per-star variability indices of one band.

    ``t`` (n_images,) ascending times shared by all stars; ``mag``, ``err`` (n_stars,
    n_images) magnitudes and errors (any value where ``good`` is False); ``good`` the
    points to use; ``attempted`` the points the pipeline measured or tried to (for the
    flagged fraction; default ``good``). Returns arrays of n_stars:

    * ``n_good``: N, the number of good points; ``median_mag`` their median;
    * ``weighted_mean_mag``: sum(m/s^2) / sum(1/s^2);
    * ``amplitude_mag``: 95th - 5th percentile of the magnitudes (robust amplitude);
    * ``iqr_mag``: 75th - 25th percentile (Sokolovsky et al. 2017, IQR);
    * ``inv_eta``: 1/eta, eta = sum_i (m_{i+1} - m_i)^2 / ((N - 1) var(m)), var with
      ddof = 1, points in time order (von Neumann 1941; Sokolovsky et al. 2017);
    * ``chi2_reduced``: sum((m - weighted mean)^2 / s^2) / (N - 1);
    * ``skewness``: adjusted Fisher-Pearson G1 = sqrt(N(N-1))/(N-2) m3 / m2^1.5;
    * ``excess_abbe``: mean over points of the Abbe value A of the points within
      +-abbe_window/2 days of it (windows of >= 3 points), minus the A of the whole
      lightcurve, A = N/(2(N-1)) sum (m_{i+1} - m_i)^2 / sum (m - mean)^2 (Mowlavi et
      al. 2014): ~0 for noise, towards 1 for variations slower than the window;
    * ``bright_run``: the longest run of consecutive good points >= 3 errors brighter
      than the median;
    * ``flagged_fraction``: 1 - N / (number of attempted points).

    Raises ValueError when the shapes disagree.
    """
    mag = np.asarray(mag, dtype=float)
    err = np.asarray(err, dtype=float)
    good = np.asarray(good, dtype=bool)
    t = np.asarray(t, dtype=float)
    if mag.shape != err.shape or mag.shape != good.shape or mag.shape[-1:] != t.shape:
        raise ValueError("t, mag, err and good must be (n_images,) and (n_stars, n_images)")
    n_stars, n_img = mag.shape
    n = good.sum(axis=1)
    few = n < MIN_POINTS
    out: dict[str, np.ndarray] = {"n_good": n}
    m = np.where(good, mag, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(good, 1.0 / np.where(good, err, 1.0) ** 2, 0.0)
        wsum = w.sum(axis=1)
        wmean = (np.where(good, mag, 0.0) * w).sum(axis=1) / wsum
        out["weighted_mean_mag"] = np.where(n > 0, wmean, np.nan)

        q = _sorted_quantiles(np.sort(m, axis=1), n)
        median = q[0.5]
        out["median_mag"] = median
        out["amplitude_mag"] = np.where(few, np.nan, q[0.95] - q[0.05])
        out["iqr_mag"] = np.where(few, np.nan, q[0.75] - q[0.25])

        # deviations from the median keep the prefix sums below well conditioned
        dev = np.where(good, mag - median[:, None], 0.0)
        mean_dev = dev.sum(axis=1) / n
        centred = np.where(good, dev - mean_dev[:, None], 0.0)
        m2_sum = (centred**2).sum(axis=1)
        m3_sum = (centred**3).sum(axis=1)
        prev = _previous_index(good)
        has_prev = good & (prev >= 0)
        prev_dev = np.take_along_axis(dev, np.maximum(prev, 0), axis=1)
        d2 = np.where(has_prev, (dev - prev_dev) ** 2, 0.0)
        d2_sum = d2.sum(axis=1)
        eta = d2_sum / m2_sum  # = sum d^2 / ((N-1) var), var with ddof=1
        out["inv_eta"] = np.where(few, np.nan, 1.0 / eta)
        chi2 = (np.where(good, mag - wmean[:, None], 0.0) ** 2 * w).sum(axis=1)
        out["chi2_reduced"] = np.where(n >= 2, chi2 / (n - 1), np.nan)
        g1 = (m3_sum / n) / (m2_sum / n) ** 1.5
        out["skewness"] = np.where(few, np.nan, g1 * np.sqrt(n * (n - 1.0)) / (n - 2.0))

        abbe_all = n / (2.0 * (n - 1.0)) * eta
        lo = np.searchsorted(t, t - abbe_window / 2.0, side="left")
        hi = np.searchsorted(t, t + abbe_window / 2.0, side="right")
        c_n, c_1, c_2, c_d = (_prefix(x) for x in (good.astype(float), dev, dev**2, d2))

        def window(c):
            return c[:, hi] - c[:, lo]

        n_w = window(c_n)
        first = _next_index(good)[:, lo]  # first good point of each window
        first_d2 = np.take_along_axis(
            np.concatenate([d2, np.zeros((n_stars, 1))], axis=1), first, axis=1
        )
        d2_w = window(c_d) - np.where(first < hi[None, :], first_d2, 0.0)
        var_w = window(c_2) - window(c_1) ** 2 / n_w
        abbe_w = n_w / (2.0 * (n_w - 1.0)) * d2_w / var_w
        use = good & (n_w >= 3) & (var_w > 0)
        n_use = use.sum(axis=1)
        mean_sub = np.where(use, abbe_w, 0.0).sum(axis=1) / n_use
        out["excess_abbe"] = np.where(few | (n_use == 0), np.nan, mean_sub - abbe_all)

        pull = (median[:, None] - mag) / np.where(good, err, 1.0)
        bright = good & (pull >= BRIGHT_RUN_SIGMA)
        reset = good & ~bright
        run_count = np.cumsum(bright, axis=1)
        last_reset = np.maximum.accumulate(np.where(reset, run_count, 0), axis=1)
        out["bright_run"] = (
            (run_count - last_reset).max(axis=1) if n_img else np.zeros(n_stars, np.int64)
        )

        total = (attempted if attempted is not None else good).sum(axis=1)
        out["flagged_fraction"] = np.where(total > 0, 1.0 - n / total, np.nan)
    return out


def visit_slots(
    hjd: np.ndarray, band: np.ndarray, instrument: np.ndarray, max_gap_days: float = 1 / 48
) -> np.ndarray:
    """Group images into survey visits: (n_visits, 3) image indices, -1 where a visit
    has no image in a band; columns in pairing priority i', r', g' (``band`` 2, 1, 0).

    A visit is a run of one instrument's images, each within ``max_gap_days`` (30 min)
    of the visit's first and of a band not yet in the visit; images without a time
    (hjd <= 0) belong to no visit.
    """
    hjd, band = np.asarray(hjd, float), np.asarray(band, np.int64)
    instrument = np.asarray(instrument)
    rows: list[list[int]] = []
    for inst in np.unique(instrument):
        idx = np.flatnonzero((instrument == inst) & (hjd > 0))
        idx = idx[np.argsort(hjd[idx], kind="stable")]
        current: list[int] = [-1, -1, -1]
        start = -np.inf
        for i in idx:  # a loop over images (thousands), once per field
            slot = 2 - band[i]
            if hjd[i] - start > max_gap_days or current[slot] >= 0:
                if max(current) >= 0:
                    rows.append(current)
                current, start = [-1, -1, -1], hjd[i]
            current[slot] = int(i)
        if max(current) >= 0:
            rows.append(current)
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def stetson_indices(
    mag: np.ndarray, err: np.ndarray, good: np.ndarray, band: np.ndarray, visits: np.ndarray
) -> dict[str, np.ndarray]:
    """Stetson (1996) J, K and L per star across bands, with points paired in visits.

    ``mag``, ``err``, ``good`` (n_stars, n_images); ``band`` (n_images,) 0/1/2;
    ``visits`` from :func:`visit_slots`. Each point's normalised residual is
    delta = sqrt(n_b/(n_b - 1)) (m - mean_b)/s with its band's error-weighted mean and
    number of good points n_b (bands with n_b < 2 are left out). In each visit the first
    two good points in the order i', r', g' form a pair, P = delta_1 delta_2, and a
    remaining point is single, P = delta^2 - 1; with unit weights
    J = sum sgn(P) sqrt|P| / n_P, K = mean|delta| / sqrt(mean delta^2) over all points,
    L = J K / 0.798 (Stetson 1996, eqs. 1-3). NaN without any pair or single (J, L) or
    with fewer than 2 residuals (K). Returns ``stetson_j``, ``stetson_k``, ``stetson_l``
    and ``n_pairs``.
    """
    mag = np.asarray(mag, dtype=float)
    good = np.asarray(good, dtype=bool)
    n_stars = mag.shape[0]
    delta = np.full(mag.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for b in np.unique(band):
            cols = np.flatnonzero(band == b)
            g = good[:, cols]
            m, e = mag[:, cols], np.where(g, err[:, cols], 1.0)
            w = np.where(g, 1.0 / e**2, 0.0)
            n_b = g.sum(axis=1)
            mean = (np.where(g, m, 0.0) * w).sum(axis=1) / w.sum(axis=1)
            factor = np.sqrt(n_b / (n_b - 1.0))
            d = factor[:, None] * (m - mean[:, None]) / e
            delta[:, cols] = np.where(g & (n_b >= 2)[:, None], d, np.nan)
        # each visit's points in pairing order; NaN where absent or not good
        a, b, c = (
            np.where(visits[:, k] >= 0, delta[:, np.maximum(visits[:, k], 0)], np.nan)
            for k in range(3)
        )
        va, vb = ~np.isnan(a), ~np.isnan(b)
        first = np.where(va, a, np.where(vb, b, c))
        second = np.where(va, np.where(vb, b, c), np.where(vb, c, np.nan))
        third = np.where(va & vb, c, np.nan)
        pair = first * second  # NaN unless both exist
        single_first = np.where(np.isnan(second), first**2 - 1.0, np.nan)
        single_third = third**2 - 1.0
        p = np.stack([pair, single_first, single_third], axis=2).reshape(n_stars, -1)
        has = ~np.isnan(p)
        n_p = has.sum(axis=1)
        j = np.where(has, np.sign(p) * np.sqrt(np.abs(p)), 0.0).sum(axis=1) / n_p
        j = np.where(n_p > 0, j, np.nan)
        valid = ~np.isnan(delta)
        n_d = valid.sum(axis=1)
        abs_mean = np.where(valid, np.abs(delta), 0.0).sum(axis=1) / n_d
        sq_mean = np.where(valid, delta**2, 0.0).sum(axis=1) / n_d
        k = np.where(n_d >= 2, abs_mean / np.sqrt(sq_mean), np.nan)
    return {
        "stetson_j": j,
        "stetson_k": k,
        "stetson_l": j * k / 0.798,
        "n_pairs": np.count_nonzero(~np.isnan(pair), axis=1),
    }
