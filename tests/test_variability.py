"""Variability indices and point-lens fits against independent references: per-star
numpy straight from the published definitions, and MulensModel for the PSPL model."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps
from scipy.optimize import minimize

from romerea_vo.variability import candidates, indices, pspl

# --- references, one star at a time, straight from the definitions ------------------


def ref_band(t, mag, err, good, attempted, window=indices.ABBE_WINDOW_DAYS):
    t, m, s = t[good], mag[good], err[good]
    n = m.size
    out = {"n_good": n}
    w = 1 / s**2
    out["weighted_mean_mag"] = np.sum(w * m) / np.sum(w) if n else np.nan
    out["flagged_fraction"] = 1 - n / attempted.sum() if attempted.sum() else np.nan
    for key, value in (
        ("median_mag", np.median), ("mean_mag", np.mean), ("min_mag", np.min),
        ("max_mag", np.max), ("median_err", lambda _: np.median(s)),
        ("mad_std_mag", lambda x: 1.482602218505602 * np.median(np.abs(x - np.median(x)))),
    ):  # fmt: skip
        out[key] = value(m) if n else np.nan
    out["std_mag"] = np.std(m, ddof=1) if n >= 2 else np.nan
    if n:
        med = np.median(m)
        run = best = 0
        for mi, si in zip(m, s, strict=True):
            run = run + 1 if (med - mi) / si >= 3 else 0
            best = max(best, run)
        out["bright_run"] = best
    else:
        out["bright_run"] = 0
    out["chi2_reduced"] = (
        np.sum((m - out["weighted_mean_mag"]) ** 2 * w) / (n - 1) if n >= 2 else np.nan
    )
    if n < 3:
        for k in ("amplitude_mag", "iqr_mag", "inv_eta", "skewness", "excess_abbe"):
            out[k] = np.nan
        return out
    p5, p25, p75, p95 = np.percentile(m, [5, 25, 75, 95])
    out["amplitude_mag"] = p95 - p5
    out["iqr_mag"] = p75 - p25
    eta = np.sum(np.diff(m) ** 2) / ((n - 1) * np.var(m, ddof=1))
    out["inv_eta"] = 1 / eta
    out["skewness"] = sps.skew(m, bias=False)

    def abbe(x):
        k = x.size
        return k / (2 * (k - 1)) * np.sum(np.diff(x) ** 2) / np.sum((x - x.mean()) ** 2)

    subs = []
    for ti in t:
        x = m[np.abs(t - ti) <= window / 2]
        if x.size >= 3 and np.ptp(x) > 0:
            subs.append(abbe(x))
    out["excess_abbe"] = np.mean(subs) - abbe(m) if subs else np.nan
    return out


def ref_stetson(mag, err, good, band, visits):
    delta = np.full(mag.shape, np.nan)
    for b in np.unique(band):
        sel = (band == b) & good
        n = sel.sum()
        if n < 2:
            continue
        w = 1 / err[sel] ** 2
        mean = np.sum(w * mag[sel]) / np.sum(w)
        delta[sel] = math.sqrt(n / (n - 1)) * (mag[sel] - mean) / err[sel]
    p = []
    for visit in visits:
        ds = [delta[i] for i in visit if i >= 0 and not np.isnan(delta[i])]
        if len(ds) >= 2:
            p.append(ds[0] * ds[1])
            p.extend(d * d - 1 for d in ds[2:])
        elif ds:
            p.append(ds[0] ** 2 - 1)
    d = delta[~np.isnan(delta)]
    j = np.mean([np.sign(x) * math.sqrt(abs(x)) for x in p]) if p else np.nan
    k = np.mean(np.abs(d)) / math.sqrt(np.mean(d**2)) if d.size >= 2 else np.nan
    return j, k, j * k / 0.798


# --- data -----------------------------------------------------------------------------


def _block(rng, n_stars=12, n_img=300):
    t = np.sort(rng.uniform(2458000, 2458400, n_img))
    err = rng.uniform(0.01, 0.05, (n_stars, n_img))
    mag = 17 + rng.normal(0, 1, (n_stars, n_img)) * err
    mag[1] += 0.3 * np.sin(t / 40.0)  # a slow variable
    mag[2, 100:110] -= 0.5  # a brightening
    mag[3, ::37] -= 1.0  # outliers
    good = rng.random((n_stars, n_img)) > 0.1
    attempted = good | (rng.random((n_stars, n_img)) > 0.5)
    good[4] = False  # all flagged
    good[5] = False
    good[5, [3, 50]] = True  # two good points
    good[6] = False
    good[6, [3, 50, 51]] = True  # three
    return t, mag, err, good, attempted


def test_band_indices_equal_reference_definitions():
    rng = np.random.default_rng(4)
    t, mag, err, good, attempted = _block(rng)
    got = indices.band_indices(t, np.where(good, mag, -1.0), err, good, attempted)
    for star in range(mag.shape[0]):
        ref = ref_band(t, mag[star], err[star], good[star], attempted[star])
        for name, value in ref.items():
            np.testing.assert_allclose(
                got[name][star], value, rtol=1e-9, atol=1e-12, err_msg=f"{name} star {star}"
            )
    assert got["n_good"][4] == 0 and np.isnan(got["weighted_mean_mag"][4])
    assert np.isnan(got["inv_eta"][5]) and np.isfinite(got["chi2_reduced"][5])
    assert np.isfinite(got["inv_eta"][6])
    assert got["flagged_fraction"][4] == 1.0
    assert got["bright_run"][2] >= 8 and got["bright_run"][0] <= 2
    assert got["inv_eta"][1] > 5 > 0.7 > got["inv_eta"][0]
    # white noise: ~N/(N - 1) - 1 from the windows of ~15 points; slow variation: ~1
    assert got["excess_abbe"][1] > 0.5 > 0.3 > abs(got["excess_abbe"][0])


def test_band_indices_with_stars_without_good_points_first_and_last():
    """Stars with no good point at the start and the end of a block (a block's per-star
    sums run over the good points of all its stars, row after row)."""
    rng = np.random.default_rng(8)
    t, mag, err, good, attempted = _block(rng, n_stars=8, n_img=120)
    good[[0, 6, 7]] = False
    got = indices.band_indices(t, mag, err, good, attempted)
    for star in range(8):
        ref = ref_band(t, mag[star], err[star], good[star], attempted[star])
        for name, value in ref.items():
            np.testing.assert_allclose(
                got[name][star], value, rtol=1e-9, atol=1e-12, err_msg=f"{name} star {star}"
            )
    assert list(got["n_good"][[0, 6, 7]]) == [0, 0, 0]


def test_mad_from_sorted_rows_equals_numpy_with_ties_and_short_rows():
    """The bisection over the two runs of deviations gives numpy's median(|x - median|)
    exactly, for 0 to 9 values per row (NaN after them), ties at the median included."""
    rng = np.random.default_rng(7)
    for width in (1, 2, 5, 9):
        values = np.round(rng.normal(size=(400, width)), 1)  # rounded: many ties
        n = rng.integers(0, width + 1, size=400)
        ordered = np.where(np.arange(width) < n[:, None], values, np.nan)
        ordered.sort(axis=1)
        median = np.array(
            [np.median(r[:k]) if k else np.nan for r, k in zip(ordered, n, strict=True)]
        )
        got = indices._median_absolute_deviation(ordered, n, median)
        expected = [np.median(np.abs(r[:k] - np.median(r[:k]))) if k else np.nan
                    for r, k in zip(ordered, n, strict=True)]  # fmt: skip
        np.testing.assert_array_equal(got, expected)


def test_band_indices_shape_errors_and_empty():
    with pytest.raises(ValueError):
        indices.band_indices(np.arange(3.0), np.zeros((2, 4)), np.ones((2, 4)), np.ones((2, 4)))
    out = indices.band_indices(np.zeros(0), np.zeros((2, 0)), np.zeros((2, 0)), np.zeros((2, 0)))
    assert list(out["n_good"]) == [0, 0] and np.all(np.isnan(out["flagged_fraction"]))


def _visit_images(rng, n_visits=120):
    """i' every visit, r' and g' minutes later on most visits, two instruments."""
    hjd, band, inst = [], [], []
    for v in range(n_visits):
        start = 2458000 + v * 0.4 + rng.uniform(0, 0.01)
        which = "a" if v % 2 else "b"
        for b, lag, p in ((2, 0.0, 1.0), (1, 0.004, 0.7), (0, 0.008, 0.5)):
            if rng.random() < p:
                hjd.append(start + lag)
                band.append(b)
                inst.append(which)
    order = np.argsort(hjd)
    return np.array(hjd)[order], np.array(band)[order], np.array(inst)[order]


def test_visits_pair_bands_of_one_instrument():
    rng = np.random.default_rng(5)
    hjd, band, inst = _visit_images(rng)
    visits = indices.visit_slots(hjd, band, inst)
    assert len(visits) == 120
    used = visits[visits >= 0]
    assert np.array_equal(np.sort(used), np.arange(hjd.size))  # every image once
    for slot, b in enumerate((2, 1, 0)):
        sel = visits[:, slot]
        assert np.all(band[sel[sel >= 0]] == b)
    for row in visits:
        members = row[row >= 0]
        assert len(set(inst[members])) == 1 and np.ptp(hjd[members]) < 1 / 48


def test_stetson_equals_reference_with_one_band_and_missing_points():
    rng = np.random.default_rng(6)
    hjd, band, inst = _visit_images(rng)
    visits = indices.visit_slots(hjd, band, inst)
    n_stars, n_img = 6, hjd.size
    err = rng.uniform(0.01, 0.03, (n_stars, n_img))
    mag = 17 + rng.normal(0, 1, (n_stars, n_img)) * err
    mag[1] += 0.2 * np.sin(hjd / 3.0)  # correlated across bands: J large
    good = rng.random((n_stars, n_img)) > 0.15
    good[2] &= band == 2  # one band only: no pairs, singles only
    good[3] = False  # all flagged
    got = indices.stetson_indices(mag, err, good, band, visits)
    for star in range(n_stars):
        j, k, l_ = ref_stetson(mag[star], err[star], good[star], band, visits)
        np.testing.assert_allclose(
            [got["stetson_j"][star], got["stetson_k"][star], got["stetson_l"][star]],
            [j, k, l_],
            rtol=1e-9,
            atol=1e-12,
        )
    assert got["n_pairs"][2] == 0 and np.isfinite(got["stetson_j"][2])
    assert np.isnan(got["stetson_j"][3]) and np.isnan(got["stetson_k"][3])
    assert got["stetson_j"][1] > 1.0 > abs(got["stetson_j"][0])


def test_stetson_leaves_out_images_without_a_band_and_takes_given_band_means():
    """The statistics pass gives every image of the cube, those it leaves out with band
    -1 and the visits as cube positions, and the band means it has worked out."""
    rng = np.random.default_rng(7)
    hjd, band, inst = _visit_images(rng)
    n_stars = 5
    err = rng.uniform(0.01, 0.03, (n_stars, hjd.size))
    mag = 17 + rng.normal(0, 1, (n_stars, hjd.size)) * err
    good = rng.random((n_stars, hjd.size)) > 0.15
    kept = np.flatnonzero(band != 0)  # a pass over i' and r' only
    visits = indices.visit_slots(hjd[kept], band[kept], inst[kept])
    alone = indices.stetson_indices(mag[:, kept], err[:, kept], good[:, kept], band[kept], visits)
    cube_band = np.where(band != 0, band, -1)
    cube_visits = np.where(visits >= 0, kept[np.maximum(visits, 0)], -1)
    means = {
        b: indices.band_indices(hjd[sel], mag[:, sel], err[:, sel], good[:, sel])[
            "weighted_mean_mag"
        ]
        for b in (1, 2)
        for sel in [np.flatnonzero(band == b)]
    }
    for band_means in (None, means):
        got = indices.stetson_indices(mag, err, good, cube_band, cube_visits, band_means=band_means)
        for name in ("stetson_j", "stetson_k", "stetson_l", "n_pairs"):
            np.testing.assert_allclose(got[name], alone[name], rtol=1e-9, err_msg=name)


# --- point lens -------------------------------------------------------------------------

MulensModel = pytest.importorskip("MulensModel")


def test_magnification_equals_mulensmodel():
    times = np.linspace(2458000, 2458100, 2001)
    for u0, te in ((0.01, 3.0), (0.3, 25.0), (1.2, 80.0)):
        model = MulensModel.Model({"t_0": 2458050.0, "u_0": u0, "t_E": te})
        u = np.hypot(u0, (times - 2458050.0) / te)
        np.testing.assert_allclose(
            pspl.magnification(u), model.get_magnification(times), rtol=1e-10
        )


def _simulated_event(rng, t0=2458210.0, te=22.0, u0=0.15, n=1500, seasons=True):
    """Three datasets with their own source and blend fluxes, made with MulensModel."""
    t = np.sort(rng.uniform(2457850, 2458600, n))
    if seasons:  # a season gap like the bulge's
        t = t[(t < 2458050) | (t > 2458150)]
    ds = rng.integers(0, 3, t.size)
    model = MulensModel.Model({"t_0": t0, "u_0": u0, "t_E": te})
    a = model.get_magnification(t)
    fs, fb = np.array([1.0, 0.6, 0.3]), np.array([0.5, 0.2, 0.9])
    flux = fs[ds] * a + fb[ds]
    mag = pspl.FLUX_ZERO_POINT - 2.5 * np.log10(flux)
    err = np.full(t.size, 0.01) + 0.01 * rng.random(t.size)
    return t, mag + rng.normal(0, 1, t.size) * err, err, ds


def _mulens_chi2(t, mag, err, ds, params):
    t0, te, u0 = params
    model = MulensModel.Model({"t_0": t0, "u_0": abs(u0), "t_E": abs(te)})
    data = [
        MulensModel.MulensData([t[ds == d], mag[ds == d], err[ds == d]], phot_fmt="mag")
        for d in np.unique(ds)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MulensModel.Event(datasets=data, model=model).get_chi2()


def test_fit_recovers_a_simulated_event_and_mulensmodel_agrees():
    rng = np.random.default_rng(7)
    truth = {"t0": 2458210.0, "tE": 22.0, "u0": 0.15}
    t, mag, err, ds = _simulated_event(rng, **{"t0": 2458210.0, "te": 22.0, "u0": 0.15})
    fit = pspl.fit_pspl(t, mag, err, ds)
    assert fit is not None and fit.converged
    for name in ("t0", "tE", "u0"):
        sigma = getattr(fit, f"{name}_err")
        assert 0 < sigma < 0.1 * max(truth[name], 1)
        assert abs(getattr(fit, name) - truth[name]) < 4 * sigma, name
    # MulensModel's chi2 at our parameters (it solves the fluxes per dataset too)
    ours = (fit.t0, fit.tE, fit.u0)
    assert _mulens_chi2(t, mag, err, ds, ours) == pytest.approx(fit.chi2, rel=1e-6)
    # a fit with MulensModel's chi2 (the package's own example: scipy minimise) lands
    # within our uncertainties
    theirs = minimize(
        lambda p: _mulens_chi2(t, mag, err, ds, p), ours, method="Nelder-Mead",
        options={"xatol": 1e-4, "fatol": 1e-3},
    ).x  # fmt: skip
    for k, name in enumerate(("t0", "tE", "u0")):
        assert abs(theirs[k] - ours[k]) < getattr(fit, f"{name}_err"), name
    assert fit.chi2 / fit.dof == pytest.approx(1.0, abs=0.15)
    row = candidates.candidate_row(t, mag, err, ds, np.array([2, 1, 0]))
    assert row["classification"] == "candidate" and row["flags"] == 0
    assert row["n_in_window"] > 50 and row["peak_amplitude"] > 1.0


def test_projected_jacobian_equals_finite_differences_of_the_profiled_residuals():
    """At the true parameters of a noiseless event (residuals zero, where Kaufman's
    Jacobian is exact) it equals central differences of the residuals with the fluxes
    re-solved at every step; away from them it still points the same way."""
    rng = np.random.default_rng(3)
    t, _, err, ds = _simulated_event(rng, t0=2458210.0, te=22.0, u0=0.15)
    flux = (
        np.array([1.0, 0.6, 0.3])[ds] * pspl.magnification(np.hypot(0.15, (t - 2458210.0) / 22.0))
        + np.array([0.5, 0.2, 0.9])[ds]
    )
    ferr = 0.4 * math.log(10) * flux * err
    w = 1.0 / ferr**2
    onehot = np.eye(3)[ds]

    def residuals(p):
        a = pspl.magnification(np.hypot(p[2], (t - p[0]) / math.exp(p[1])))
        fs, fb, _ = pspl._linear(a[None, :], flux, w, onehot, ds)
        return np.sqrt(w) * (flux - fs[0][ds] * a - fb[0][ds])

    def numeric(p, h=(1e-4, 1e-6, 1e-6)):
        cols = []
        for j in range(3):
            step = np.zeros(3)
            step[j] = h[j]
            cols.append((residuals(p + step) - residuals(p - step)) / (2 * h[j]))
        return np.stack(cols, axis=1)

    true = np.array([2458210.0, math.log(22.0), 0.15])
    assert np.abs(residuals(true)).max() < 1e-8
    analytic = pspl.projected_jacobian(true, t, flux, w, onehot, ds)
    np.testing.assert_allclose(
        analytic, numeric(true), rtol=1e-4, atol=1e-6 * np.abs(analytic).max()
    )
    # the fit keeps its points grouped by dataset (sums by segment): the same rows
    grouped = np.lexsort((t, ds))
    assert not np.array_equal(grouped, np.arange(t.size))
    np.testing.assert_allclose(
        pspl.projected_jacobian(true, t[grouped], flux[grouped], w[grouped], onehot, ds[grouped]),
        analytic[grouped],
        rtol=1e-9,
        atol=1e-12 * np.abs(analytic).max(),
    )
    off = true + np.array([0.5, 0.05, 0.02])
    a_off, n_off = pspl.projected_jacobian(off, t, flux, w, onehot, ds), numeric(off)
    for j in range(3):
        cosine = (
            a_off[:, j] @ n_off[:, j] / np.linalg.norm(a_off[:, j]) / np.linalg.norm(n_off[:, j])
        )
        assert cosine > 0.99


@pytest.mark.parametrize(
    "case",
    ["no_baseline", "peak_in_gap", "u0_above_1", "constant", "outliers", "few_points"],
)
def test_degenerate_cases_never_crash_nor_give_unflagged_nans(case):
    rng = np.random.default_rng(8)
    kwargs = {}
    if case == "no_baseline":
        kwargs = {"t0": 2458200.0, "te": 900.0, "u0": 0.1}
    elif case == "peak_in_gap":
        kwargs = {"t0": 2458100.0, "te": 8.0, "u0": 0.05}
    elif case == "u0_above_1":
        kwargs = {"t0": 2458300.0, "te": 30.0, "u0": 1.4}
    t, mag, err, ds = _simulated_event(rng, **kwargs)
    if case in ("constant", "outliers"):
        mag = 17.0 + rng.normal(0, 1, t.size) * err
    if case == "outliers":
        mag[rng.random(t.size) < 0.05] -= 0.5
    if case == "few_points":
        t, mag, err, ds = t[:6], mag[:6], err[:6], ds[:6]
        assert candidates.candidate_row(t, mag, err, ds, np.array([2, 1, 0])) is None
        return
    row = candidates.candidate_row(t, mag, err, ds, np.array([2, 1, 0]))
    assert row is not None
    for name in ("t0", "te", "u0", "chi2", "chi2_const", "score", "noise_scale"):
        assert np.isfinite(row[name]), name
    for name in ("t0_err", "te_err", "u0_err"):
        assert row[name] is None or np.isfinite(row[name])
        if row[name] is None:
            assert row["flags"] & candidates.FLAGS["no_uncertainty"]
    if row["baseline_ratio"] is None:
        assert row["flags"] & candidates.FLAGS["no_baseline"]
    if case in ("constant", "outliers"):
        assert row["classification"] != "candidate"
    if case == "no_baseline":
        assert row["classification"] != "candidate" or row["te_err"] > 50
    if case == "u0_above_1":
        assert row["classification"] == "candidate" and row["u0"] > 0.8


def test_fit_converges_on_a_high_magnification_event():
    """u0 = 0.002: least_squares must not stop on its step tolerance before u0 and tE
    are found (it did while t0 was an absolute HJD: steps of 0.02 looked converged)."""
    rng = np.random.default_rng(12)
    t, mag, err, ds = _simulated_event(rng, t0=2458300.0, te=12.0, u0=0.002, n=3000)
    fit = pspl.fit_pspl(t, mag, err, ds)
    assert fit is not None and fit.converged
    assert abs(fit.tE - 12.0) < max(4 * fit.tE_err, 0.05)
    assert abs(fit.u0 - 0.002) < max(4 * fit.u0_err, 0.001)
    assert fit.chi2 / fit.dof == pytest.approx(1.0, abs=0.15)


def test_an_event_peaking_in_a_season_gap_is_seen_in_its_wings():
    """No point within t0 +- tE, but hundreds on the wings where the model is well above
    its baseline: a candidate, not an artefact with 'few points in the window'."""
    rng = np.random.default_rng(5)
    t, mag, err, ds = _simulated_event(rng, t0=2458100.0, te=40.0, u0=0.1)
    row = candidates.candidate_row(t, mag, err, ds, np.array([2, 1, 0]))
    assert row["n_in_window"] == 0
    assert row["flags"] == 0 and row["classification"] == "candidate"


def _reference_correlation(t, ds, pull, baseline):
    """r1 sqrt(n) straight from the column's description."""
    a, b = [], []
    for d in np.unique(ds):
        sel = np.flatnonzero((ds == d) & baseline & (np.abs(pull) < 4))
        sel = sel[np.argsort(t[sel])]
        for i, j in itertools.pairwise(sel):
            if t[j] - t[i] < 10:
                a.append(pull[i])
                b.append(pull[j])
    a, b = np.array(a), np.array(b)
    return np.sum(a * b) / math.sqrt(np.sum(a * a) * np.sum(b * b)) * math.sqrt(a.size)


def test_baseline_correlation_separates_red_giant_variability_from_white_noise():
    rng = np.random.default_rng(9)
    t, mag, err, ds = _simulated_event(rng)
    baseline = np.abs(t - 2458210.0) > 44.0
    pull = rng.normal(0, 1, t.size)
    pull[:3] = 50.0  # outliers are left out
    assert candidates._baseline_correlation(t, ds, pull, baseline) == pytest.approx(
        _reference_correlation(t, ds, pull, baseline), rel=1e-12
    )
    white = candidates.candidate_row(t, mag, err, ds, np.array([2, 1, 0]))
    assert abs(white["baseline_correlation"]) < 4 and white["classification"] == "candidate"
    # a semi-regular variable's slow wander (0.03 mag, ~60 d) under the same event: the
    # baseline's median residual hardly moves, its autocorrelation does
    slow = 0.03 * np.sin(2 * np.pi * t / 60.0) + 0.02 * np.sin(2 * np.pi * t / 97.0 + 1.0)
    red = candidates.candidate_row(t, mag + slow, err, ds, np.array([2, 1, 0]))
    assert red["baseline_correlation"] > candidates.MAX_BASELINE_CORRELATION
    assert red["flags"] & candidates.FLAGS["variable_baseline"]
    assert red["classification"] == "variable"
