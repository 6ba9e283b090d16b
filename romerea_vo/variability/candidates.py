"""Microlensing candidates: which stars to fit, and a score that separates point-lens
events from variable stars and artefacts.

Pre-selection (on the indices of :mod:`.indices`, any band with >= 10 good points):
a run of >= PRESELECT_LONG_RUN consecutive good points >= 3 errors brighter than the
median, or a run of >= PRESELECT_RUN with a von Neumann ratio 1/eta >=
PRESELECT_INV_ETA (white noise gives 0.5: the brightening is correlated in time rather
than scattered points). Stars passing it get a PSPL fit (:func:`.pspl.fit_pspl`) on
all their good points, and a row.

Score and flags (all in units of the star's own white-noise level, so that datasets
with underestimated errors do not inflate them):

* noise^2: the median of (m_i - m_j)^2 / (s_i^2 + s_j^2) over consecutive points of
  one dataset less than half a day apart, divided by 0.455 (the median of chi^2 with
  one degree of freedom): ~1 when the errors are right, whatever slow variation the
  star has, and robust to outliers;
* score = (sum min(r_const^2, 25) - sum min(r_pspl^2, 25)) / max(noise^2, 1): the
  improvement of the PSPL over the constant model with each point's chi^2 capped at
  25 (so that a few outliers cannot make an event);
* baseline_ratio: median of r_pspl^2 for the baseline points, / 0.455 / noise^2: ~1 for
  a flat baseline, large for variable stars. Baseline points are those further than
  2 tE from t0, or, when fewer than MIN_BASELINE_POINTS are (long events), the 20 %
  of points furthest from t0 that are further than tE;
* baseline_correlation: the significance r1 sqrt(n) of the lag-1 autocorrelation of the
  baseline residuals (consecutive points of a dataset < 10 d apart, outliers left out):
  ~N(0, 1) for white noise, >> 1 for the slow variability of red giants, which a PSPL
  bump with a median-flat baseline can otherwise fit (on the tuning fields it was 10-23
  for every semi-regular variable classed a candidate without it, < 5 for 95 % of events);
* the points that see the event: those within t0 +- tE and those where the model is
  >= 3 errors above its baseline (an event peaking in a season gap is seen in its wings);
* flags (bits): 1 the fit did not converge, 2 no uncertainties (singular covariance),
  4 fewer than MIN_POINTS_IN_WINDOW good points see the event, 8 no baseline: fewer
  than MIN_BASELINE_POINTS baseline points, or, for a long event (fewer than that
  beyond 2 tE), fewer than MIN_SIDE_POINTS points more than tE/2 before or after t0
  (a trend is one-sided), 16 baseline_ratio > MAX_BASELINE_RATIO or
  baseline_correlation > MAX_BASELINE_CORRELATION (variable baseline), 32 the model
  misses the points that see the event (their median chi^2 over noise^2 >
  MAX_WINDOW_RATIO), 64 tE at a bound of the fit,
  128 no positive baseline flux in any band, 256 tE > MAX_TE (how slow trends fit);
* classification: ``candidate`` when score >= SCORE_MIN, the peak amplitude is
  >= MIN_AMPLITUDE and no flag is set; ``variable`` with flag 16, 32 or 256; ``artefact``
  with any other flag; ``weak`` otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from .pspl import FLUX_ZERO_POINT, TE_RANGE, PsplFit, fit_pspl, mag_to_flux, magnification

__all__ = [
    "CLASSES",
    "FLAGS",
    "SCORE_MIN",
    "candidate_row",
    "preselect",
]

PRESELECT_RUN = 3
PRESELECT_LONG_RUN = 5
PRESELECT_INV_ETA = 0.6
PRESELECT_MIN_POINTS = 10
SCORE_MIN = 100.0
MIN_AMPLITUDE = 0.05  # mag
MIN_POINTS_IN_WINDOW = 5
MIN_BASELINE_POINTS = 20
MIN_SIDE_POINTS = 10
MAX_TE = 500.0  # days
MAX_BASELINE_RATIO = 2.0
MAX_BASELINE_CORRELATION = 10.0  # sigma
_CORRELATION_GAP_DAYS = 10.0
_CORRELATION_CLIP = 4.0  # noise-scaled residuals beyond this are outliers, left out
MAX_WINDOW_RATIO = 3.0
_CAP = 25.0
_MEDIAN_CHI2_1 = 0.4549364231195724  # median of chi^2 with one degree of freedom
_PAIR_GAP_DAYS = 0.5

FLAGS = {
    "not_converged": 1,
    "no_uncertainty": 2,
    "few_points_in_window": 4,
    "no_baseline": 8,
    "variable_baseline": 16,
    "poor_fit_in_window": 32,
    "te_at_bound": 64,
    "no_baseline_flux": 128,
    "outside_prior": 256,
}
_VARIABLE = FLAGS["variable_baseline"] | FLAGS["poor_fit_in_window"] | FLAGS["outside_prior"]
CLASSES = ("candidate", "weak", "variable", "artefact")
BANDS = ("gp", "rp", "ip")


def preselect(inv_eta: np.ndarray, bright_run: np.ndarray, n_good: np.ndarray) -> np.ndarray:
    """Stars to fit: (n_stars, n_bands) indices -> (n_stars,) bool (see module doc)."""
    with np.errstate(invalid="ignore"):
        ok = (n_good >= PRESELECT_MIN_POINTS) & (
            (bright_run >= PRESELECT_LONG_RUN)
            | ((bright_run >= PRESELECT_RUN) & (inv_eta >= PRESELECT_INV_ETA))
        )
    return np.any(ok, axis=1)


def _noise2(t: np.ndarray, mag: np.ndarray, err: np.ndarray, dataset: np.ndarray) -> float:
    order = np.lexsort((t, dataset))
    t, mag, err, dataset = t[order], mag[order], err[order], dataset[order]
    pair = (dataset[1:] == dataset[:-1]) & (np.diff(t) < _PAIR_GAP_DAYS)
    if pair.sum() < 5:
        return 1.0
    ratio = np.diff(mag)[pair] ** 2 / (err[1:][pair] ** 2 + err[:-1][pair] ** 2)
    return float(np.median(ratio) / _MEDIAN_CHI2_1)


def _baseline_correlation(
    t: np.ndarray, dataset: np.ndarray, pull: np.ndarray, baseline: np.ndarray
) -> float:
    """Significance r1 sqrt(n) of the lag-1 autocorrelation of the baseline pulls (see the
    baseline_correlation column); NaN with fewer than 20 pairs."""
    order = np.lexsort((t, dataset))
    order = order[baseline[order] & (np.abs(pull[order]) < _CORRELATION_CLIP)]
    t, dataset, pull = t[order], dataset[order], pull[order]
    pair = (dataset[1:] == dataset[:-1]) & (np.diff(t) < _CORRELATION_GAP_DAYS)
    n = int(pair.sum())
    if n < 20:
        return math.nan
    a, b = pull[:-1][pair], pull[1:][pair]
    norm = math.sqrt(float(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / norm * math.sqrt(n)) if norm > 0 else math.nan


def candidate_row(
    t: np.ndarray,
    mag: np.ndarray,
    err: np.ndarray,
    dataset: np.ndarray,
    dataset_band: np.ndarray,
) -> dict | None:
    """Fit and score one star's good points; ``dataset`` (per point) indexes
    ``dataset_band`` (0/1/2 = g', r', i' per dataset). Returns the row's values (the
    columns of rome.microlensing_candidates after field and field_id), or None when
    there are too few points to fit."""
    t, mag, err = (np.asarray(a, dtype=float) for a in (t, mag, err))
    dataset = np.asarray(dataset, dtype=np.int64)
    fit = fit_pspl(t, mag, err, dataset)
    if fit is None:
        return None
    return _score(fit, t, mag, err, dataset, np.asarray(dataset_band))


def _band_mags(fit: PsplFit, dataset_band: np.ndarray, counts: np.ndarray):
    """Per band: (peak, baseline) magnitude from the band's best-sampled dataset."""
    out = {}
    a_peak = float(magnification(np.array(fit.u0))) if fit.u0 > 0 else np.inf
    for b, name in enumerate(BANDS):
        sel = np.flatnonzero(dataset_band[fit.datasets] == b)
        if sel.size == 0:
            out[name] = (math.nan, math.nan)
            continue
        k = sel[np.argmax(counts[sel])]
        fs, fb = fit.fs[k], fit.fb[k]
        peak, base = fs * a_peak + fb, fs + fb
        if not (base > 0 and peak > 0 and np.isfinite(peak)):
            out[name] = (math.nan, math.nan)
            continue
        out[name] = (
            FLUX_ZERO_POINT - 2.5 * math.log10(peak),
            FLUX_ZERO_POINT - 2.5 * math.log10(base),
        )
    return out


def _score(fit, t, mag, err, dataset, dataset_band) -> dict:
    flux, ferr = mag_to_flux(mag, err)
    model = fit.model_flux(t, dataset)
    r2 = ((flux - model) / ferr) ** 2
    k = np.searchsorted(fit.datasets, dataset)
    w = 1.0 / ferr**2
    base = np.bincount(k, w * flux) / np.bincount(k, w)
    r2_const = ((flux - base[k]) / ferr) ** 2
    noise2 = _noise2(t, mag, err, dataset)
    noise_ref = max(noise2, 1.0)
    score = float(np.sum(np.minimum(r2_const, _CAP)) - np.sum(np.minimum(r2, _CAP))) / noise_ref
    dt = np.abs(t - fit.t0)
    inside, outside = dt <= fit.tE, dt > 2.0 * fit.tE
    n_in, n_beyond = int(inside.sum()), int(outside.sum())
    # the points that see the event: within t0 +- tE, or where the model is >= 3 errors
    # above its baseline (an event peaking in a season gap is seen in its wings only)
    with np.errstate(invalid="ignore"):
        seen = inside | (model - fit.fs[k] - fit.fb[k] >= 3.0 * ferr)
    n_seen = int(seen.sum())
    long_event = n_beyond < MIN_BASELINE_POINTS
    if long_event:
        outside = (dt > fit.tE) & (dt >= np.quantile(dt, 0.8))
    n_out = int(outside.sum())
    baseline_ratio = (
        float(np.median(r2[outside]) / _MEDIAN_CHI2_1 / noise_ref) if n_out else math.nan
    )
    pull = (flux - model) / ferr / math.sqrt(noise_ref)
    correlation = _baseline_correlation(t, dataset, pull, outside)
    sides = min(
        np.count_nonzero(t < fit.t0 - fit.tE / 2), np.count_nonzero(t > fit.t0 + fit.tE / 2)
    )
    window_ratio = float(np.median(r2[seen]) / _MEDIAN_CHI2_1 / noise_ref) if n_seen else math.nan
    mags = _band_mags(fit, dataset_band, np.bincount(k, minlength=len(fit.datasets)))
    amplitudes = [b - p for p, b in mags.values() if np.isfinite(p)]
    amplitude = max(amplitudes) if amplitudes else math.nan

    flags = 0
    if not fit.converged:
        flags |= FLAGS["not_converged"]
    if not np.all(np.isfinite([fit.t0_err, fit.tE_err, fit.u0_err])):
        flags |= FLAGS["no_uncertainty"]
    if n_seen < MIN_POINTS_IN_WINDOW:
        flags |= FLAGS["few_points_in_window"]
    if n_out < MIN_BASELINE_POINTS or (long_event and sides < MIN_SIDE_POINTS):
        flags |= FLAGS["no_baseline"]
    if (n_out and baseline_ratio > MAX_BASELINE_RATIO) or correlation > MAX_BASELINE_CORRELATION:
        flags |= FLAGS["variable_baseline"]
    if n_seen and window_ratio > MAX_WINDOW_RATIO:
        flags |= FLAGS["poor_fit_in_window"]
    if not TE_RANGE[0] * 1.01 < fit.tE < TE_RANGE[1] / 1.01:
        flags |= FLAGS["te_at_bound"]
    if not amplitudes:
        flags |= FLAGS["no_baseline_flux"]
    if fit.tE > MAX_TE:
        flags |= FLAGS["outside_prior"]
    if flags == 0 and score >= SCORE_MIN and amplitude >= MIN_AMPLITUDE:
        classification = "candidate"
    elif flags & _VARIABLE:
        classification = "variable"
    elif flags:
        classification = "artefact"
    else:
        classification = "weak"

    def finite(x):
        return float(x) if np.isfinite(x) else None

    return {
        "t0": fit.t0,
        "t0_err": finite(fit.t0_err),
        "te": fit.tE,
        "te_err": finite(fit.tE_err),
        "u0": fit.u0,
        "u0_err": finite(fit.u0_err),
        "chi2": fit.chi2,
        "dof": fit.dof,
        "chi2_const": fit.chi2_const,
        "delta_chi2": fit.delta_chi2,
        "n_points": fit.n_points,
        "n_in_window": n_in,
        "n_baseline": n_beyond,
        **{f"peak_mag_{b}": finite(mags[b][0]) for b in BANDS},
        **{f"baseline_mag_{b}": finite(mags[b][1]) for b in BANDS},
        "peak_amplitude": finite(amplitude),
        "noise_scale": math.sqrt(noise2),
        "baseline_ratio": finite(baseline_ratio),
        "baseline_correlation": finite(correlation),
        "score": score,
        "flags": flags,
        "classification": classification,
    }
