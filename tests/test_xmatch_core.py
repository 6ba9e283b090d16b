"""The positional cross-match core against astropy's independent implementation."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord, search_around_sky

from romerea_vo.errors import InvalidRequestError
from romerea_vo.xmatch import crossmatch, propagate

MAS = 1e-3  # arcsec


def _cloud(rng, n, ra0, dec0, size_deg):
    """Uniform-ish random points in a box of ``size_deg`` around (ra0, dec0)."""
    dec = dec0 + rng.uniform(-size_deg / 2, size_deg / 2, n)
    dec = np.clip(dec, -90.0, 90.0)
    cosd = max(np.cos(np.radians(dec0)), 1e-3)
    ra = (ra0 + rng.uniform(-size_deg / 2, size_deg / 2, n) / cosd) % 360.0
    return ra, dec


def _pole_cloud(rng, n, sign):
    """Points scattered over all RA within ~0.15 deg of a pole."""
    return rng.uniform(0, 360, n), sign * (90.0 - rng.uniform(0, 0.15, n))


def _pairs_with_jitter(rng, ra, dec, n, jitter_arcsec):
    """Catalogue 1: ``n`` positions of catalogue 2 moved by up to ``jitter_arcsec``."""
    pick = rng.choice(ra.size, n, replace=False)
    c = SkyCoord(ra[pick] * u.deg, dec[pick] * u.deg)
    moved = c.directional_offset_by(
        rng.uniform(0, 360, n) * u.deg, rng.uniform(0, jitter_arcsec, n) * u.arcsec
    )
    return moved.ra.deg, moved.dec.deg


def _astropy_all(ra1, dec1, ra2, dec2, radius):
    c1 = SkyCoord(ra1 * u.deg, dec1 * u.deg)
    c2 = SkyCoord(ra2 * u.deg, dec2 * u.deg)
    i1, i2, d2d, _ = search_around_sky(c1, c2, radius * u.arcsec)
    return {(int(a), int(b)): s for a, b, s in zip(i1, i2, d2d.arcsec, strict=True)}


def _check_all_and_best(ra1, dec1, ra2, dec2, radius):
    res = crossmatch(ra1, dec1, ra2, dec2, radius, mode="all")
    assert res.left.dtype == np.int64 and res.right.dtype == np.int64
    ours = {
        (int(a), int(b)): s for a, b, s in zip(res.left, res.right, res.sep_arcsec, strict=True)
    }
    theirs = _astropy_all(ra1, dec1, ra2, dec2, radius)
    assert set(ours) == set(theirs)
    assert len(ours) == len(res.left)  # no duplicate pairs
    for k, s in theirs.items():
        assert abs(ours[k] - s) < MAS

    best = crossmatch(ra1, dec1, ra2, dec2, radius, mode="best")
    c1 = SkyCoord(ra1 * u.deg, dec1 * u.deg)
    c2 = SkyCoord(ra2 * u.deg, dec2 * u.deg)
    idx, d2d, _ = c1.match_to_catalog_sky(c2)
    within = np.flatnonzero(d2d.arcsec <= radius)
    np.testing.assert_array_equal(best.left, within)
    np.testing.assert_array_equal(best.right, idx[within])
    np.testing.assert_allclose(best.sep_arcsec, d2d.arcsec[within], rtol=0, atol=MAS)

    uniq = crossmatch(ra1, dec1, ra2, dec2, radius, mode="best-unique")
    idx_back, _, _ = c2.match_to_catalog_sky(c1)
    mutual = within[idx_back[idx[within]] == within]
    np.testing.assert_array_equal(uniq.left, mutual)
    np.testing.assert_array_equal(uniq.right, idx[mutual])
    return res


@pytest.mark.parametrize(
    ("ra0", "dec0", "size"),
    [(268.0, -29.5, 0.05), (0.0, -29.5, 0.05), (359.99, 10.0, 0.04), (0.0, 0.0, 0.05)],
)
def test_random_catalogues_match_astropy(ra0, dec0, size):
    rng = np.random.default_rng(abs(int(ra0 * 10 + dec0)))
    ra2, dec2 = _cloud(rng, 3000, ra0, dec0, size)
    ra1a, dec1a = _pairs_with_jitter(rng, ra2, dec2, 800, 3.0)
    ra1b, dec1b = _cloud(rng, 800, ra0, dec0, size)
    ra1, dec1 = np.r_[ra1a, ra1b], np.r_[dec1a, dec1b]
    res = _check_all_and_best(ra1, dec1, ra2, dec2, 2.0)
    assert len(res) > 500
    if ra0 in (0.0, 359.99):  # some pairs really do straddle RA = 0/360
        assert np.any(np.abs(ra1[res.left] - ra2[res.right]) > 180)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("radius", [1.0, 30.0])
def test_near_poles_match_astropy(sign, radius):
    rng = np.random.default_rng(7 if sign > 0 else 8)
    ra2, dec2 = _pole_cloud(rng, 4000, sign)
    ra1a, dec1a = _pairs_with_jitter(rng, ra2, dec2, 500, radius * 1.5)
    ra1b, dec1b = _pole_cloud(rng, 500, sign)
    ra1 = np.r_[ra1a, ra1b, 123.0, 0.0]
    dec1 = np.r_[dec1a, dec1b, sign * 90.0, sign * 89.9]
    res = _check_all_and_best(ra1, dec1, ra2, dec2, radius)
    assert len(res) > 300


def test_large_radius_near_pole_and_wrap():
    rng = np.random.default_rng(3)
    ra2, dec2 = _cloud(rng, 2000, 0.0, 88.5, 3.0)
    ra1, dec1 = _cloud(rng, 300, 0.0, 88.5, 3.0)
    _check_all_and_best(ra1, dec1, ra2, dec2, 3600.0)


@pytest.mark.parametrize(("ra0", "dec0"), [(268.0, -29.5), (359.9999, 0.0), (10.0, -89.9)])
def test_radius_boundary(ra0, dec0):
    radius = 1.0
    centre = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    pas = np.arange(0, 360, 15.0) * u.deg
    inside = centre.directional_offset_by(pas, 0.999 * radius * u.arcsec)
    outside = centre.directional_offset_by(pas, 1.001 * radius * u.arcsec)
    ra2 = np.r_[inside.ra.deg, outside.ra.deg]
    dec2 = np.r_[inside.dec.deg, outside.dec.deg]
    res = crossmatch([ra0], [dec0], ra2, dec2, radius)
    np.testing.assert_array_equal(np.sort(res.right), np.arange(len(pas)))
    np.testing.assert_allclose(res.sep_arcsec, 0.999 * radius, atol=MAS)
    _check_all_and_best(np.array([ra0]), np.array([dec0]), ra2, dec2, radius)


def test_nan_and_out_of_range_never_match():
    ra1 = np.array([10.0, np.nan, 10.0, 10.0, 400.0, -5.0, 10.0])
    dec1 = np.array([20.0, 20.0, np.nan, 95.0, 20.0, 20.0, np.inf])
    ra2 = np.array([10.0, np.nan, 10.0, 40.0, 355.0])
    dec2 = np.array([20.0, 20.0, np.inf, 20.0, 20.0])
    for mode in ("all", "best", "best-unique"):
        res = crossmatch(ra1, dec1, ra2, dec2, 10.0, mode=mode)
        assert res.left.tolist() == [0] and res.right.tolist() == [0]
        assert res.sep_arcsec.tolist() == [0.0]


def test_ra_360_is_ra_0():
    res = crossmatch([360.0], [5.0], [0.0], [5.0], 0.5)
    assert res.left.tolist() == [0] and res.right.tolist() == [0]


def test_empty_inputs():
    e = np.array([], dtype=float)
    for args in ((e, e, [1.0], [2.0]), ([1.0], [2.0], e, e), (e, e, e, e)):
        for mode in ("all", "best", "best-unique"):
            res = crossmatch(*args, 1.0, mode=mode)
            assert len(res) == 0
            assert res.left.dtype == np.int64 and res.right.dtype == np.int64
    res = crossmatch([np.nan], [np.nan], [1.0], [1.0], 1.0)
    assert len(res) == 0


@pytest.mark.parametrize("radius", [0, -1.0, 3600.0001, 1e9, np.nan, np.inf, "big", None, True])
def test_bad_radius(radius):
    with pytest.raises(InvalidRequestError, match="radius"):
        crossmatch([1.0], [1.0], [1.0], [1.0], radius)


def test_bad_mode_and_lengths():
    with pytest.raises(InvalidRequestError, match="mode"):
        crossmatch([1.0], [1.0], [1.0], [1.0], 1.0, mode="nearest")
    with pytest.raises(InvalidRequestError, match="first catalogue"):
        crossmatch([1.0, 2.0], [1.0], [1.0], [1.0], 1.0)
    with pytest.raises(InvalidRequestError, match="second catalogue"):
        crossmatch([1.0], [1.0], [1.0], [1.0, 2.0], 1.0)


def test_best_unique_is_symmetric():
    # Two left sources compete for one right source; only the nearer keeps it.
    res = crossmatch([10.0, 10.0 + 0.5 / 3600], [0.0, 0.0], [10.0 + 0.2 / 3600], [0.0], 1.0)
    assert sorted(res.left.tolist()) == [0, 1]
    best = crossmatch(
        [10.0, 10.0 + 0.5 / 3600], [0.0, 0.0], [10.0 + 0.2 / 3600], [0.0], 1.0, mode="best"
    )
    assert best.left.tolist() == [0, 1] and best.right.tolist() == [0, 0]
    uniq = crossmatch(
        [10.0, 10.0 + 0.5 / 3600],
        [0.0, 0.0],
        [10.0 + 0.2 / 3600],
        [0.0],
        1.0,
        mode="best-unique",
    )
    assert uniq.left.tolist() == [0] and uniq.right.tolist() == [0]  # 0.2″ beats 0.3″


def test_propagate():
    ra = np.array([268.0, 10.0, 0.0001, 50.0])
    dec = np.array([-29.5, 0.0, 0.0, 89.99999])
    pmra = np.array([-5.0, 1000.0, -1000.0, np.nan])
    pmdec = np.array([-200.0, 0.0, 0.0, 10.0])
    new_ra, new_dec = propagate(ra, dec, pmra, pmdec, 2016.0, 2026.0)
    c0 = SkyCoord(ra * u.deg, dec * u.deg)
    c1 = SkyCoord(new_ra * u.deg, new_dec * u.deg)
    moved = c0.separation(c1).arcsec
    expected = np.hypot(pmra, pmdec) * 10.0 / 1000.0
    np.testing.assert_allclose(moved[:3], expected[:3], rtol=1e-6)
    assert new_ra[3] == ra[3] and new_dec[3] == dec[3]  # NaN pm: unchanged
    assert np.all((new_ra >= 0) & (new_ra < 360))
    assert new_ra[2] > 359.99  # crossed RA = 0
    np.testing.assert_allclose(new_ra[1] - ra[1], 10.0 / 3600, rtol=1e-6)
    # position angle of the motion: mostly south for the first star
    assert new_dec[0] < dec[0]
    back_ra, back_dec = propagate(new_ra, new_dec, pmra, pmdec, 2026.0, 2016.0)
    sep_back = SkyCoord(back_ra * u.deg, back_dec * u.deg).separation(c0).arcsec
    assert np.all(sep_back[:3] < 1e-3)


def test_field_sized_match_equals_astropy():
    """10,000 x 400,000 within 1 arcsec around a ROME field: the same pairs as astropy.
    (Its speed is measured in benchmarks/bench_xmatch.py, not here.)"""
    rng = np.random.default_rng(2024)
    ra2, dec2 = _cloud(rng, 400_000, 268.0, -29.5, 0.7)
    ra1a, dec1a = _pairs_with_jitter(rng, ra2, dec2, 5000, 1.2)
    ra1b, dec1b = _cloud(rng, 5000, 268.0, -29.5, 0.7)
    ra1, dec1 = np.r_[ra1a, ra1b], np.r_[dec1a, dec1b]
    res = crossmatch(ra1, dec1, ra2, dec2, 1.0)
    i1, i2, _, _ = search_around_sky(
        SkyCoord(ra1 * u.deg, dec1 * u.deg), SkyCoord(ra2 * u.deg, dec2 * u.deg), 1.0 * u.arcsec
    )
    assert len(res) > 1000
    assert set(zip(res.left.tolist(), res.right.tolist(), strict=True)) == set(
        zip(i1.tolist(), i2.tolist(), strict=True)
    )


def test_small_chunks_give_same_result(monkeypatch):
    import romerea_vo.xmatch.core as xm

    rng = np.random.default_rng(11)
    ra2, dec2 = _cloud(rng, 2000, 0.0, -29.5, 0.05)
    ra1, dec1 = _pairs_with_jitter(rng, ra2, dec2, 600, 3.0)
    ref = {m: crossmatch(ra1, dec1, ra2, dec2, 5.0, mode=m) for m in xm.MODES}
    monkeypatch.setattr(xm, "_CHUNK_ROWS", 37)
    monkeypatch.setattr(xm, "_MAX_CANDIDATES", 5)
    for m in xm.MODES:
        got = crossmatch(ra1, dec1, ra2, dec2, 5.0, mode=m)
        np.testing.assert_array_equal(got.left, ref[m].left)
        np.testing.assert_array_equal(got.right, ref[m].right)
        np.testing.assert_array_equal(got.sep_arcsec, ref[m].sep_arcsec)
    _check_all_and_best(ra1, dec1, ra2, dec2, 5.0)


def test_pair_order_equals_lexsort():
    """The run-aware ordering of 'all' pairs is exactly (left, sep, right)."""
    from romerea_vo.xmatch.core import _pair_order

    rng = np.random.default_rng(0)
    for _ in range(100):
        runs = rng.integers(1, 4, 50)
        left = np.repeat(rng.permutation(50), runs)
        sep = rng.integers(0, 3, left.size).astype(float)  # ties in sep on purpose
        right = rng.permutation(left.size)
        assert (_pair_order(left, right, sep) == np.lexsort((right, sep, left))).all()
