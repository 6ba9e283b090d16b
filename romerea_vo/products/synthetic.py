"""Deterministic, realistic synthetic ROME/REA field data products (era E).

:func:`synthesize_field` writes a complete pyDANDIA field (crossmatch FITS + four
quadrant cubes) in the era-E layout of ``ROME_FORMATS.md`` (§2-§8, §11), plus a
truth table of the injected signals. The quirks of the shipped TEST1 sample that real
files do not share (§10) are *not* imitated: quadrants follow the midpoint rule,
IMAGES ``index`` runs across datasets, Gaia ids are full 19-digit strings, datetimes
are 23-character LCO DATE-OBS strings, GAIA_DR is set, and there are undetected
(0.0) and failed-fit (-9999.99) entries with realistic qc bits.

What the generator models (everything vectorised; no Python loop over stars x images):

* Datasets: the three ROME survey instruments in g', r', i' plus three REA domes; the
  primary reference is lsc-doma i' (listed first).
* Images: counts per dataset (i' dominant), exposure start times at night at each
  site with the field above 30 deg altitude, inside the Feb-Oct bulge seasons of
  2017-2020 (HJD 2457813-2458940); g'/r' exposures follow i' exposures within a
  survey visit. HJD = mid-exposure JD + a low-precision heliocentric correction.
* Stars: uniform over the Sinistro footprint, i' luminosity function rising to the
  faint end, bulge colours, detection per dataset from magnitude/band/depth, per
  dataset catalogue ids in raster (y, x) order, pyDANDIA field-index construction
  (primary catalogue first, then orphans per dataset), midpoint-rule quadrants.
* Cubes: noise from a magnitude- and image-dependent error model, per-dataset
  normalisation (a0, a1) and zero points, failed fits and qc bits 1/2/4/8/16, images
  without photometry.
* What makes real difference-imaging photometry hard (generator 2.0): reported errors
  that underestimate the true scatter in some datasets (a factor per dataset), and
  unflagged heavy-tailed outliers (bad subtractions, cosmic rays, near-saturation) at a
  rate that grows for bright stars, for outlier-prone stars and in poor-seeing images.
* Signals (truth table, one row per star): Paczynski microlensing events over the
  realistic range (tE log-uniform 1-300 d, u0 0-1.5, source fraction 0.05-1, t0 from
  before the first season to after the last, so events in season gaps and partly
  covered events occur), sinusoidal, eclipsing-binary and sawtooth periodic variables,
  semi-regular/irregular red-giant variability and long-term trends; rates are options.

Randomness: every quantity comes from a numpy Generator seeded by
``SeedSequence(seed, spawn_key=(stream, ...))``. Cube noise is drawn per fixed tile of
``_TILE_ROWS`` star rows of a quadrant, so the bytes written do not depend on
``chunk_stars`` (only on seed, field, n_stars and n_images).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table
from tqdm import tqdm

from romerea_vo.errors import InvalidRequestError
from romerea_vo.products import layout
from romerea_vo.products.writer import QuadrantCubeWriter, assign_quadrants, write_crossmatch

__all__ = [
    "GENERATOR_VERSION",
    "IRREGULAR_KINDS",
    "KINDS",
    "NOMINAL_FIELD_CENTRES",
    "PERIODIC_KINDS",
    "TRUTH_COLUMNS",
    "TRUTH_SUFFIX",
    "SignalRates",
    "field_centre",
    "synthesize_field",
    "truth_filename",
]

GENERATOR_VERSION = "2.0"
"""Bumped whenever the same arguments would produce different bytes."""

TRUTH_SUFFIX = "_synthetic_truth.ecsv"
TRUTH_COLUMNS = (
    "field_id",
    "kind",
    "t0",
    "tE",
    "u0",
    "fs",
    "period",
    "amplitude",
    "phase",
    "timescale",
    "width",
    "base_mag_i",
    "base_mag_r",
    "base_mag_g",
    "outlier_rate",
    "n_outliers",
)
KINDS = (
    "constant",
    "microlensing",
    "periodic",
    "eclipsing",
    "sawtooth",
    "irregular",
    "trend",
)
"""``kind`` values of the truth table, in code order (0 = constant)."""
PERIODIC_KINDS = ("periodic", "eclipsing", "sawtooth")
IRREGULAR_KINDS = ("irregular", "trend")
PHASE_REFERENCE_HJD = 2458000.0
"""Periodic signals: dm = amplitude * sin(2 pi (hjd - PHASE_REFERENCE_HJD) / period + phase)."""


def truth_filename(field: str) -> str:
    """``<FIELD>_synthetic_truth.ecsv``: the injected signals (readers ignore it)."""
    return f"{field}{TRUTH_SUFFIX}"


NOMINAL_FIELD_CENTRES: dict[int, tuple[float, float]] = {
    1: (267.835895, -30.060818),
    2: (269.636745, -27.978266),
    3: (268.000050, -28.819557),
    4: (268.180172, -29.278513),
    5: (268.354350, -30.257836),
    6: (268.356125, -29.772982),
    7: (268.529571, -28.693707),
    8: (268.709737, -29.186725),
    9: (268.881109, -29.770467),
    10: (269.048498, -28.644068),
    11: (269.238832, -29.271668),
    12: (269.394789, -30.099236),
    13: (269.563719, -28.442233),
    14: (269.758843, -29.179603),
    15: (269.783599, -29.639404),
    16: (270.074982, -28.537559),
    17: (270.810000, -28.097833),
    18: (270.290887, -27.998603),
    19: (270.312764, -29.008424),
    20: (270.836741, -28.843157),
}
"""Nominal ROME field centres (RA, Dec in degrees), ROME_FORMATS §7."""

DEFAULT_CENTRE = (268.0, -29.0)
_FIELD_NAME = re.compile(r"^ROME-FIELD-(\d+)$")


def field_centre(field: str) -> tuple[float, float]:
    """Nominal centre of ``ROME-FIELD-NN`` (NN 1-20), else (268.0, -29.0)."""
    match = _FIELD_NAME.match(field)
    if match and int(match.group(1)) in NOMINAL_FIELD_CENTRES:
        return NOMINAL_FIELD_CENTRES[int(match.group(1))]
    return DEFAULT_CENTRE


# --- instrument and survey constants -------------------------------------------------

PIXEL_SCALE_ARCSEC = 0.389  # Sinistro, §7
FRAME_PIXELS = 4096
FRAME_CENTRE = FRAME_PIXELS / 2.0
FOOTPRINT_MARGIN_PIXELS = 40.0
"""Stars are drawn over the primary frame plus this margin, so a few edge stars are
seen only by other (slightly offset) instruments and become field-index orphans."""
STAMP_SIZE = 1000
STAMP_OVERLAP = 10
STAMP_GRID = 4

SITES = {  # longitude (deg, east positive), latitude (deg): pyDANDIA time_utils sites
    "lsc": (-70.8049, -30.1673),
    "cpt": (20.8101, -32.3806),
    "coj": (149.0708, -31.2733),
}
RED_DIR_ROOT = "/data/romerea"
GAIA_DR = "Gaia-EDR3"

# Bulge seasons (UTC dates, inclusive start, exclusive end): the bulge is not
# observable from about November to January. ROME ran 2017-03 .. 2020-03.
_SEASONS_UTC = (
    ("2017-03-01T02:00", "2017-11-01"),
    ("2018-02-01", "2018-11-01"),
    ("2019-02-01", "2019-11-01"),
    ("2020-02-01", "2020-03-30T12:00"),
)
_UNIX_EPOCH_JD = 2440587.5


def _iso_to_jd(text: str) -> float:
    return float(np.datetime64(text, "s").astype(np.int64)) / 86400.0 + _UNIX_EPOCH_JD


SEASONS_JD = tuple((_iso_to_jd(a), _iso_to_jd(b)) for a, b in _SEASONS_UTC)
FIRST_HJD, LAST_HJD = 2457813.0, 2458940.0


@dataclass(frozen=True)
class _Instrument:
    name: str  # e.g. lsc-doma-1m0-05-fa15
    site: str
    telnum: str
    file_camera: str  # camera as it appears in image file names (fl/fa renaming, §7)
    survey: bool
    frame_dx: float  # reference-frame offset from the primary frame, pixels
    frame_dy: float
    frame_rot_deg: float

    @property
    def file_prefix(self) -> str:
        return f"{self.site}1m0{self.telnum}-{self.file_camera}"


_LSC_A = _Instrument("lsc-doma-1m0-05-fa15", "lsc", "05", "fa15", True, 0.0, 0.0, 0.0)
_CPT_A = _Instrument("cpt-doma-1m0-10-fa16", "cpt", "10", "fa16", True, 12.4, -8.7, 0.021)
_COJ_A = _Instrument("coj-doma-1m0-11-fa12", "coj", "11", "fa12", True, -9.3, 14.1, -0.016)
_COJ_B = _Instrument("coj-domb-1m0-03-fa11", "coj", "03", "fa11", False, -28.6, -31.2, -0.043)
_LSC_B = _Instrument("lsc-domb-1m0-09-fa03", "lsc", "09", "fa03", False, 35.1, 22.8, 0.052)
# Real ROME-FIELD-01 images of this REA dome are named cpt1m012-fl06-... (§3.5, §7).
_CPT_C = _Instrument("cpt-domc-1m0-12-fa06", "cpt", "12", "fl06", False, 41.0, -17.5, 0.030)


@dataclass(frozen=True)
class _DatasetPlan:
    instrument: _Instrument
    filter: str
    image_weight: float  # share of the field's images
    m50: float  # magnitude (own band) of 50 % detection completeness
    exptime: float  # s


# DATASETS order: primary reference first, then the survey datasets, REA domes last
# (real ROME-FIELD-01 IMAGES start with lsc-doma i' and end with cpt1m012-fl06 images).
# i' is observed every survey visit, g'/r' on about half of them (cadence ~10 h vs
# ~15 h), so i' rows dominate IMAGES.
_PLAN = (
    _DatasetPlan(_LSC_A, "ip", 0.160, 20.3, 300.0),
    _DatasetPlan(_LSC_A, "rp", 0.080, 20.9, 300.0),
    _DatasetPlan(_LSC_A, "gp", 0.080, 21.6, 300.0),
    _DatasetPlan(_CPT_A, "ip", 0.140, 20.0, 300.0),
    _DatasetPlan(_CPT_A, "rp", 0.070, 20.7, 300.0),
    _DatasetPlan(_CPT_A, "gp", 0.070, 21.4, 300.0),
    _DatasetPlan(_COJ_A, "ip", 0.150, 20.1, 300.0),
    _DatasetPlan(_COJ_A, "rp", 0.075, 20.8, 300.0),
    _DatasetPlan(_COJ_A, "gp", 0.075, 21.5, 300.0),
    _DatasetPlan(_COJ_B, "rp", 0.025, 20.2, 200.0),
    _DatasetPlan(_LSC_B, "ip", 0.050, 19.6, 200.0),
    _DatasetPlan(_CPT_C, "gp", 0.025, 20.9, 200.0),
)
_BAND = {"gp": 0, "rp": 1, "ip": 2}  # column of the (g, r, i) magnitude arrays

# Star population (tuned so that the band split resembles ROME-FIELD-01, §3.2:
# ~37 % of field-index stars in all three bands, ~35 % in two, ~28 % in one).
_MAG_I_RANGE = (14.0, 21.5)
_LF_SLOPE = 0.3  # dlog10 N / dm of the i' luminosity function
_DETECTION_WIDTH = 0.2  # mag, logistic width of the completeness curve
_COMPLETENESS = 0.97  # maximum per-dataset completeness (crowding)
_ERROR_FLOOR = 0.003
_M10_BELOW_M50 = 0.5  # the error reaches 0.1 mag this far above the 50 % limit
_ASTROMETRIC_NOISE_PX = 0.12

# Per-point / per-image rates
_FAILED_FIT_RATE = 0.01
_LOW_SCALE_RATE = 0.01  # qc bit 4 per point
_RESIDUAL_IMAGE_RATE = 0.03  # qc bit 2 per image
_WARP_IMAGE_RATE = 0.01  # qc bit 8 per image
_STAMP_RATE = 0.02  # qc bit 16 per image-stamp
_NO_PHOTOMETRY_RATE = 0.005

_AU_LIGHT_DAYS = 149597870.7 / 299792.458 / 86400.0

_TILE_ROWS = 64
_N_POINT_RANDOMS = 10
_DEFAULT_BLOCK_BYTES = 128 * 1024**2

# random-stream identifiers (first element of every spawn key)
_S_DATASETS, _S_IMAGES, _S_STARS, _S_GAIA, _S_SIGNALS, _S_CUBE = range(1, 7)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


# --- small astronomy helpers (low precision is plenty here) -------------------------


def _sun(jd: np.ndarray):
    """Geocentric Sun RA, Dec (rad), distance (AU) and ecliptic longitude (rad)."""
    n = jd - 2451545.0
    mean_lon = np.radians(280.460 + 0.9856474 * n)
    g = np.radians(357.528 + 0.9856003 * n)
    lam = mean_lon + np.radians(1.915 * np.sin(g) + 0.020 * np.sin(2 * g))
    eps = np.radians(23.439 - 4e-7 * n)
    ra = np.arctan2(np.cos(eps) * np.sin(lam), np.cos(lam))
    dec = np.arcsin(np.sin(eps) * np.sin(lam))
    dist = 1.00014 - 0.01671 * np.cos(g) - 0.00014 * np.cos(2 * g)
    return ra, dec, dist


def _moon(jd: np.ndarray):
    """Geocentric Moon RA, Dec (rad) and illuminated fraction."""
    d = jd - 2451545.0
    mean_lon = 218.3164477 + 13.17639648 * d
    anomaly = np.radians(134.9633964 + 13.06499295 * d)
    arg_lat = np.radians(93.2720950 + 13.22935024 * d)
    elongation = np.radians(297.8501921 + 12.19074912 * d)
    lam = np.radians(mean_lon + 6.289 * np.sin(anomaly))
    beta = np.radians(5.128 * np.sin(arg_lat))
    eps = np.radians(23.439 - 4e-7 * d)
    x = np.cos(beta) * np.cos(lam)
    y = np.cos(eps) * np.cos(beta) * np.sin(lam) - np.sin(eps) * np.sin(beta)
    z = np.sin(eps) * np.cos(beta) * np.sin(lam) + np.cos(eps) * np.sin(beta)
    return np.arctan2(y, x), np.arcsin(z), (1.0 - np.cos(elongation)) / 2.0


def _separation(ra1, dec1, ra2, dec2):
    """Angular separation (rad) of points given in radians."""
    c = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(ra1 - ra2)
    return np.arccos(np.clip(c, -1.0, 1.0))


def _altitude(jd, lon_deg, lat_deg, ra, dec):
    """Altitude (rad) of a source at (ra, dec) (rad) from a site at time jd (UT)."""
    gmst = np.radians(280.46061837 + 360.98564736629 * (jd - 2451545.0))
    hour_angle = gmst + np.radians(lon_deg) - ra
    lat = np.radians(lat_deg)
    s = np.sin(lat) * np.sin(dec) + np.cos(lat) * np.cos(dec) * np.cos(hour_angle)
    return np.arcsin(np.clip(s, -1.0, 1.0))


def _heliocentric_correction(jd, ra, dec):
    """HJD - JD (days) for a source at (ra, dec) (rad): -(r/c) (n_sun . n_source)."""
    sun_ra, sun_dec, dist = _sun(jd)
    cos_angle = np.sin(dec) * np.sin(sun_dec) + np.cos(dec) * np.cos(sun_dec) * np.cos(ra - sun_ra)
    return -_AU_LIGHT_DAYS * dist * cos_angle


def _deproject(x_p, y_p, ra0_deg, dec0_deg):
    """Primary-frame pixels -> (RA, Dec) in degrees (gnomonic; North up, East left)."""
    scale = np.radians(PIXEL_SCALE_ARCSEC / 3600.0)
    xi = -(np.asarray(x_p) - FRAME_CENTRE) * scale
    eta = (np.asarray(y_p) - FRAME_CENTRE) * scale
    ra0, dec0 = np.radians(ra0_deg), np.radians(dec0_deg)
    denom = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _healpix_nest(nside: int, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """HEALPix NESTED pixel index (uint64) of (ra, dec); used for Gaia source ids."""
    z = np.sin(np.radians(dec_deg))
    za = np.abs(z)
    tt = np.mod(np.radians(ra_deg), 2 * np.pi) / (np.pi / 2)
    face = np.empty(z.shape, np.int64)
    ix = np.empty(z.shape, np.int64)
    iy = np.empty(z.shape, np.int64)
    eq = za <= 2.0 / 3.0
    t1 = nside * (0.5 + tt[eq])
    t2 = nside * z[eq] * 0.75
    jp = (t1 - t2).astype(np.int64)
    jm = (t1 + t2).astype(np.int64)
    ifp, ifm = jp // nside, jm // nside
    face[eq] = np.where(ifp == ifm, ifp | 4, np.where(ifp < ifm, ifp, ifm + 8))
    ix[eq] = jm & (nside - 1)
    iy[eq] = nside - (jp & (nside - 1)) - 1
    po = ~eq
    ntt = np.minimum(tt[po].astype(np.int64), 3)
    tp = tt[po] - ntt
    tmp = nside * np.sqrt(3 * (1 - za[po]))
    jp = np.minimum((tp * tmp).astype(np.int64), nside - 1)
    jm = np.minimum(((1 - tp) * tmp).astype(np.int64), nside - 1)
    north = z[po] >= 0
    face[po] = np.where(north, ntt, ntt + 8)
    ix[po] = np.where(north, nside - jm - 1, jp)
    iy[po] = np.where(north, nside - jp - 1, jm)

    def spread(v):
        v = v.astype(np.uint64)
        out = np.zeros_like(v)
        for bit in range(int(nside).bit_length()):
            out |= ((v >> np.uint64(bit)) & np.uint64(1)) << np.uint64(2 * bit)
        return out

    return (
        face.astype(np.uint64) * np.uint64(nside * nside)
        + spread(ix)
        + (spread(iy) << np.uint64(1))
    )


def _sexagesimal(value_deg: float, hours: bool) -> str:
    """'HH:MM:SS.SSS' for RA, '-DD:MM:SS.SS' for Dec, as in LCO headers."""
    if hours:
        total = round((value_deg % 360.0) / 15.0 * 3600.0 * 1000)
        h, rest = divmod(total, 3600 * 1000)
        m, rest = divmod(rest, 60 * 1000)
        return f"{h % 24:02d}:{m:02d}:{rest / 1000:06.3f}"
    sign = "-" if value_deg < 0 else "+"
    total = round(abs(value_deg) * 3600.0 * 100)
    d, rest = divmod(total, 3600 * 100)
    m, rest = divmod(rest, 60 * 100)
    return f"{sign}{d:02d}:{m:02d}:{rest / 100:05.2f}"


def _stamp_bounds() -> np.ndarray:
    """(16, 4) xmin, xmax, ymin, ymax of the 4x4 stamp grid (§3.6)."""
    lo = np.clip(np.arange(STAMP_GRID) * STAMP_SIZE - STAMP_OVERLAP, 0, FRAME_PIXELS)
    hi = np.arange(1, STAMP_GRID + 1) * STAMP_SIZE + STAMP_OVERLAP
    hi[-1] = FRAME_PIXELS  # the last row/column extends to the frame edge
    rows = np.repeat(np.arange(STAMP_GRID), STAMP_GRID)  # stamp_id = 4*row + column
    cols = np.tile(np.arange(STAMP_GRID), STAMP_GRID)
    return np.stack([lo[cols], hi[cols], lo[rows], hi[rows]], axis=1).astype(np.float64)


def _stamp_index(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Stamp containing a pixel position: strict inequalities, last overlapping stamp
    wins (§4.2), i.e. the highest column/row whose open interval contains the point."""
    bounds = _stamp_bounds()[:STAMP_GRID]  # first row: the column intervals
    col = np.zeros(np.shape(x), np.int64)
    row = np.zeros(np.shape(y), np.int64)
    for c in range(STAMP_GRID):
        col = np.where((x > bounds[c, 0]) & (x < bounds[c, 1]), c, col)
        row = np.where((y > bounds[c, 0]) & (y < bounds[c, 1]), c, row)
    return STAMP_GRID * row + col


def _error(mag, m10, scale):
    """Magnitude uncertainty: floor 0.003, 0.1 * scale at m10, x2.5 per magnitude fainter."""
    phot = 0.1 * scale * np.exp((mag - m10) * (0.4 * math.log(10.0)))
    return np.sqrt(_ERROR_FLOOR**2 + phot * phot)


def _allocate(n: int, weights: np.ndarray) -> np.ndarray:
    """Split n into integer counts proportional to weights (largest remainder), giving
    every dataset at least one image when there are enough images."""
    w = np.asarray(weights, float) / np.sum(weights)
    exact = n * w
    counts = np.floor(exact).astype(np.int64)
    order = np.lexsort((np.arange(w.size), -(exact - counts)))
    counts[order[: n - counts.sum()]] += 1
    minimum = 1 if n >= w.size else 0
    for i in range(w.size):
        if counts[i] < minimum or (i == 0 and counts[0] == 0 and n > 0):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[i] += 1
    return counts


# --- datasets ------------------------------------------------------------------------


@dataclass
class _Datasets:
    codes: list[str]
    plans: tuple[_DatasetPlan, ...]
    band: np.ndarray  # (n_ds,) 0/1/2 = g/r/i
    m50: np.ndarray
    m10: np.ndarray
    zp: np.ndarray  # instrumental = calibrated - zp
    a0: np.ndarray  # normalized = a0 * calibrated + a1
    a1: np.ndarray
    covar: np.ndarray  # (n_ds, 4) covariance of (a0, a1), row-major
    frame: np.ndarray  # (n_ds, 3) dx, dy, rotation (rad) of the dataset reference frame
    table: Table
    true_error_scale: np.ndarray  # true scatter / reported error (>= 1: underestimated)

    @property
    def n(self) -> int:
        return len(self.codes)


def _build_datasets(field: str, seed: int) -> _Datasets:
    rng = _rng(seed, _S_DATASETS)
    n = len(_PLAN)
    codes = [f"{field}_{p.instrument.name}_{p.filter}" for p in _PLAN]
    zp = rng.uniform(0.6, 2.4, n)
    # Normalisation: the lsc-doma dataset of each band *defines* the normalised scale
    # of that band (pyDANDIA normalises onto the primary reference's instrument), so
    # it gets the identity transform a0 = 1, a1 = 0 with zero covariance; the primary
    # reference (lsc-doma i') is one of them. Other datasets: a0 ~ 1, a1 chosen so the
    # two scales differ by a few hundredths of a magnitude at mag ~17, and the
    # covariance of a straight-line fit of n ~ 300-3000 stars with 0.02-0.05 mag scatter.
    a0 = 1.0 + rng.normal(0.0, 0.006, n)
    a1 = -(a0 - 1.0) * 17.0 + rng.normal(0.0, 0.04, n)
    n_fit = rng.integers(300, 3000, n)
    sigma = rng.uniform(0.02, 0.05, n)
    var_x = 16.0 / 12.0  # fit magnitudes ~ U(15, 19)
    c00 = sigma**2 / (n_fit * var_x)
    c01 = -(sigma**2) * 17.0 / (n_fit * var_x)
    c11 = sigma**2 * (17.0**2 + var_x) / (n_fit * var_x)
    covar = np.stack([c00, c01, c01, c11], axis=1)
    reference = np.array([p.instrument is _LSC_A for p in _PLAN])
    a0[reference], a1[reference], covar[reference] = 1.0, 0.0, 0.0
    primary = np.zeros(n, np.int64)
    primary[0] = 1
    table = Table()
    table["dataset_code"] = codes
    table["dataset_red_dir"] = [f"{RED_DIR_ROOT}/{c}" for c in codes]
    table["dataset_filter"] = [p.filter for p in _PLAN]
    table["primary_ref"] = primary
    table["norm_a0"] = a0
    table["norm_a1"] = a1
    for k in range(4):
        table[f"norm_covar_{k}"] = covar[:, k]
    assert tuple(table.colnames) == layout.DATASETS_COLUMNS_E
    m50 = np.array([p.m50 for p in _PLAN])
    frame = np.array(
        [
            [p.instrument.frame_dx, p.instrument.frame_dy, np.radians(p.instrument.frame_rot_deg)]
            for p in _PLAN
        ]
    )
    return _Datasets(
        codes=codes,
        plans=_PLAN,
        band=np.array([_BAND[p.filter] for p in _PLAN]),
        m50=m50,
        m10=m50 - _M10_BELOW_M50,
        zp=zp,
        a0=a0,
        a1=a1,
        covar=covar,
        frame=frame,
        table=table,
        true_error_scale=_true_error_scale(seed, n),
    )


def _true_error_scale(seed: int, n: int) -> np.ndarray:
    """Per dataset: 1, or the factor by which the pipeline underestimates its errors."""
    rng = _rng(seed, _S_DATASETS, 1)
    under = rng.random(n) < _UNDERESTIMATED_ERROR_SHARE
    return np.where(under, rng.uniform(*_UNDERESTIMATE_RANGE, n), 1.0)


def _dataset_xy(x_p: np.ndarray, y_p: np.ndarray, frame: np.ndarray):
    """Positions of stars (primary-frame pixels) in each dataset's reference frame."""
    dx, dy, rot = frame[:, 0], frame[:, 1], frame[:, 2]
    u = (x_p - FRAME_CENTRE)[:, None]
    v = (y_p - FRAME_CENTRE)[:, None]
    x = FRAME_CENTRE + np.cos(rot) * u - np.sin(rot) * v + dx
    y = FRAME_CENTRE + np.sin(rot) * u + np.cos(rot) * v + dy
    return x, y


# --- images --------------------------------------------------------------------------


@dataclass
class _Images:
    dataset: np.ndarray  # (n_img,) dataset row of every IMAGES row
    band: np.ndarray
    hjd: np.ndarray  # 0.0 for images without photometry
    phot: np.ndarray  # bool: image produced photometry
    offset: np.ndarray  # per-image zero-point residual (mag)
    err_scale: np.ndarray
    seeing_factor: np.ndarray  # outlier-rate factor: (fwhm / median fwhm)^2
    pscale: np.ndarray
    sky: np.ndarray
    bit2: np.ndarray
    bit8: np.ndarray
    bit16: np.ndarray  # (n_img, 16)
    table: Table
    stamps: Table

    @property
    def n(self) -> int:
        return self.dataset.size


def _night_times(rng, n: int, site: str, ra0: float, dec0: float) -> np.ndarray:
    """n exposure start JDs (UT), sorted, at night at ``site`` with the field above
    30 deg, inside the bulge seasons; consecutive ones >= 20 min apart."""
    if n == 0:
        return np.zeros(0)
    lon, lat = SITES[site]
    starts = np.array([s for s, _ in SEASONS_JD])
    lengths = np.array([e - s for s, e in SEASONS_JD])
    found: list[np.ndarray] = []
    have = 0
    while have < n:
        m = max(256, 8 * (n - have))
        season = rng.choice(len(starts), size=m, p=lengths / lengths.sum())
        jd = starts[season] + rng.random(m) * lengths[season]
        sun_ra, sun_dec, _ = _sun(jd)
        night = _altitude(jd, lon, lat, sun_ra, sun_dec) < np.radians(-15.0)
        up = _altitude(jd, lon, lat, np.radians(ra0), np.radians(dec0)) > np.radians(30.0)
        found.append(jd[night & up])
        have += int(np.count_nonzero(night & up))
    jd = np.sort(np.concatenate(found)[:n])
    gap = 20.0 / 1440.0
    k = np.arange(n)
    return k * gap + np.maximum.accumulate(jd - k * gap)


def _build_images(ds: _Datasets, n_images: int, seed: int, centre) -> _Images:
    rng = _rng(seed, _S_IMAGES)
    ra0, dec0 = centre
    counts = _allocate(n_images, np.array([p.image_weight for p in ds.plans]))

    # Exposure start times. A survey visit is an i' exposure, followed on some visits
    # by r' and g' exposures on the same telescope.
    start_jd: list[np.ndarray] = [np.zeros(0)] * ds.n
    visits: dict[str, np.ndarray] = {}
    for d, plan in enumerate(ds.plans):
        if plan.instrument.survey and plan.filter == "ip":
            visits[plan.instrument.name] = _night_times(
                rng, int(counts[d]), plan.instrument.site, ra0, dec0
            )
    for d, plan in enumerate(ds.plans):
        inst = plan.instrument
        if inst.survey and plan.filter == "ip":
            start_jd[d] = visits[inst.name]
            continue
        if inst.survey:
            base = visits.get(inst.name, np.zeros(0))
            take = min(int(counts[d]), base.size)
            chosen: np.ndarray | list = (
                np.sort(rng.choice(base.size, size=take, replace=False)) if take else []
            )
            lag = (300.0 + 45.0) * (1 if plan.filter == "rp" else 2) / 86400.0
            extra = _night_times(rng, int(counts[d]) - take, inst.site, ra0, dec0)
            start_jd[d] = np.concatenate([base[chosen] + lag, extra])
        else:
            start_jd[d] = _night_times(rng, int(counts[d]), inst.site, ra0, dec0)

    dataset = np.concatenate([np.full(int(c), d) for d, c in enumerate(counts)]).astype(np.int64)
    jd0 = np.concatenate(start_jd)
    # IMAGES order within a dataset is that of the dataset's headers summary, not
    # chronological (§3.5): shuffle each dataset's block.
    order = np.concatenate(
        [rng.permutation(np.flatnonzero(dataset == d)) for d in range(ds.n)]
    ).astype(np.int64)
    jd0 = jd0[order]
    n = n_images
    plans = [ds.plans[d] for d in dataset]
    exptime = np.array([p.exptime for p in plans])
    band = ds.band[dataset]
    site = [p.instrument.site for p in plans]
    lon = np.array([SITES[s][0] for s in site])
    lat = np.array([SITES[s][1] for s in site])

    # DATE-OBS with millisecond precision, then the mid-exposure HJD from it.
    ms = np.round((jd0 - _UNIX_EPOCH_JD) * 86400000.0).astype(np.int64)
    date_obs = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms")
    jd_start = ms / 86400000.0 + _UNIX_EPOCH_JD
    jd_mid = jd_start + exptime / 2.0 / 86400.0
    ra_r, dec_r = np.radians(ra0), np.radians(dec0)
    hjd = jd_mid + _heliocentric_correction(jd_mid, ra_r, dec_r)

    alt = _altitude(jd_mid, lon, lat, ra_r, dec_r)
    airmass = np.maximum(1.0, 1.0 / np.sin(np.maximum(alt, np.radians(5.0))))
    moon_ra, moon_dec, moon_frac = _moon(jd_mid)
    moon_sep = np.degrees(_separation(moon_ra, moon_dec, ra_r, dec_r))

    band_seeing = np.array([1.10, 1.05, 1.0])[band]
    seeing = 1.4 * np.exp(rng.normal(0.0, 0.18, n)) * airmass**0.6 * band_seeing  # arcsec
    fwhm = np.minimum(seeing, 3.2) / PIXEL_SCALE_ARCSEC
    band_sky = np.array([0.8, 0.9, 1.0])[band]
    sky = (
        1100.0 * np.exp(rng.normal(0.0, 0.08, n)) * band_sky * (1.0 + 0.3 * (airmass - 1.0))
        + 1900.0 * moon_frac * (1.0 - moon_sep / 180.0) ** 2
    )
    extinction = np.array([0.20, 0.12, 0.08])[band]
    pscale = np.clip(
        rng.normal(0.98, 0.04, n) * 10 ** (-0.4 * extinction * (airmass - 1.0)), 0.75, 1.15
    )
    # photometric error scale of an image relative to a typical one (seeing, sky,
    # transparency, exposure time), softened so that the faint-end errors of most
    # images stay ~0.1-0.3 mag
    err_scale = ((fwhm / 4.0) * np.sqrt(sky / 1500.0 / (pscale * exptime / 300.0))) ** 0.75

    # Images that produced no photometry (failed a stage before 6): hjd 0, qc -1.
    n_nophot = round(_NO_PHOTOMETRY_RATE * n) if n >= 100 else int(n >= 20)
    eligible = np.flatnonzero(counts[dataset] >= 3)
    nophot = np.zeros(n, bool)
    if n_nophot and eligible.size:
        nophot[rng.choice(eligible, size=min(n_nophot, eligible.size), replace=False)] = True
    phot = ~nophot
    phot_rows = np.flatnonzero(phot)

    def pick(rate):
        flags = np.zeros(n, bool)
        k = round(rate * phot_rows.size)
        if k:
            flags[rng.choice(phot_rows, size=k, replace=False)] = True
        return flags

    bit2 = pick(_RESIDUAL_IMAGE_RATE)
    bit8 = pick(_WARP_IMAGE_RATE)
    bit16 = (rng.random((n, STAMP_GRID**2)) < _STAMP_RATE) & phot[:, None]
    # Per-image zero-point residual; images flagged with bit 2 have a mean
    # photometric residual above 0.15 mag (that is what the flag means).
    offset = rng.normal(0.0, 0.004, n)
    offset[bit2] = rng.choice([-1.0, 1.0], bit2.sum()) * rng.uniform(0.16, 0.3, bit2.sum())

    shift_x = np.clip(rng.normal(0.0, 6.0, n), -50, 50)
    shift_y = np.clip(rng.normal(0.0, 6.0, n), -50, 50)
    warp = np.zeros((n, 16))
    warp[:, 0] = 1.0 + rng.normal(0.0, 2e-4, n)
    warp[:, 1] = rng.normal(0.0, 2e-4, n)
    warp[:, 2] = shift_x + rng.normal(0.0, 0.05, n)
    warp[:, 3] = rng.normal(0.0, 2e-4, n)
    warp[:, 4] = 1.0 + rng.normal(0.0, 2e-4, n)
    warp[:, 5] = shift_y + rng.normal(0.0, 0.05, n)
    warp[:, 8] = 1.0
    # qc bit 8 = a warp-matrix coefficient > 100: make those resamplings bad.
    warp[bit8, 2] = rng.choice([-1.0, 1.0], bit8.sum()) * rng.uniform(120.0, 400.0, bit8.sum())
    warp[nophot] = 0.0

    use_ref = np.zeros(n, np.int64)
    for d in range(ds.n):
        rows = np.flatnonzero((dataset == d) & phot)
        if rows.size:
            use_ref[rows[fwhm[rows] <= np.quantile(fwhm[rows], 0.1)]] = 1

    # File names: <site>1m0<tel>-<camera>-<DAY-OBS>-<frame>-e91.fits; frame numbers
    # increase through each instrument's night (other targets observed in between).
    inst_id = np.array([[p.instrument for p in _PLAN].index(p.instrument) for p in plans])
    day_obs = np.floor(jd_start - _UNIX_EPOCH_JD + lon / 360.0 - 0.5).astype(np.int64)
    by_time = np.lexsort((jd_start, day_obs, inst_id))
    group = inst_id[by_time] * 10**6 + day_obs[by_time]
    first = np.ones(n, bool)
    first[1:] = group[1:] != group[:-1]
    step = np.where(first, rng.integers(8, 80, n), rng.integers(1, 7, n))
    cumulative = np.cumsum(step)
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    frame_no = np.empty(n, np.int64)
    frame_no[by_time] = np.minimum(cumulative - cumulative[start] + step[start], 9999)
    day_str = np.datetime_as_string(day_obs.astype("datetime64[D]"), unit="D")
    filenames = [
        f"{p.instrument.file_prefix}-{day.replace('-', '')}-{f:04d}-e91.fits"
        for p, day, f in zip(plans, day_str, frame_no, strict=True)
    ]

    point_ra = ra0 + shift_x * PIXEL_SCALE_ARCSEC / 3600.0 / np.cos(dec_r)
    point_dec = dec0 + shift_y * PIXEL_SCALE_ARCSEC / 3600.0

    def absent(values):  # alignment / difference-image statistics: -1.0 where absent
        return np.where(nophot, -1.0, values)

    table = Table()
    table["index"] = np.arange(n, dtype=np.int64)
    table["filename"] = filenames
    table["dataset_code"] = [ds.codes[d] for d in dataset]
    table["filter"] = [p.filter for p in plans]
    table["hjd"] = np.where(phot, hjd, 0.0)
    table["datetime"] = date_obs
    table["exposure"] = exptime
    table["RA"] = [_sexagesimal(v, True) for v in point_ra]
    table["Dec"] = [_sexagesimal(v, False) for v in point_dec]
    table["moon_ang_separation"] = moon_sep
    table["moon_fraction"] = moon_frac
    table["airmass"] = airmass
    table["sigma_x"] = fwhm / 2.3548 * (1.0 + rng.normal(0.0, 0.04, n))
    table["sigma_y"] = fwhm / 2.3548 * (1.0 + rng.normal(0.0, 0.04, n))
    table["sky"] = sky
    table["median_sky"] = sky * (1.0 - rng.uniform(0.0, 0.01, n))
    table["fwhm"] = fwhm
    table["corr_xy"] = rng.normal(0.0, 0.05, n)
    table["nstars"] = np.round(55000.0 * (4.5 / fwhm) ** 1.2 * rng.uniform(0.9, 1.1, n)).astype(
        np.int64
    )
    table["frac_sat_pix"] = 10 ** rng.uniform(-4.3, -2.7, n)
    table["symmetry"] = rng.uniform(0.02, 0.25, n)
    table["use_phot"] = phot.astype(np.int64)
    table["use_ref"] = use_ref
    table["shift_x"] = absent(shift_x)
    table["shift_y"] = absent(shift_y)
    table["pscale"] = absent(pscale)
    table["pscale_err"] = absent(10 ** rng.uniform(-4.0, -3.0, n))
    table["var_per_pix_diff"] = absent(rng.uniform(0.02, 0.06, n))
    table["n_unmasked"] = absent(np.round(FRAME_PIXELS**2 * rng.uniform(0.96, 0.995, n)))
    table["skew_diff"] = absent(rng.normal(0.0, 0.3, n))
    table["kurtosis_diff"] = absent(3.0 * np.exp(rng.normal(0.0, 0.5, n)))
    for k in range(16):
        table[f"warp_matrix_{k}"] = warp[:, k]
    table["qc_flag"] = np.where(phot, 0, -1).astype(np.int64)
    assert tuple(table.colnames) == layout.IMAGES_COLUMNS_E

    # STAMPS: 16 rows per image, but only for the non-primary datasets: pyDANDIA's
    # crossmatch_datasets.py calls record_dataset_stamps only for them (§3.6 quirk).
    stamp_rows = np.flatnonzero(dataset != 0)
    bounds = _stamp_bounds()
    m = stamp_rows.size * STAMP_GRID**2
    stamp_warp = np.zeros((m, 9))
    stamp_warp[:, 0] = 1.0 + rng.normal(0.0, 5e-4, m)
    stamp_warp[:, 1] = rng.normal(0.0, 1e-5, m)
    stamp_warp[:, 2] = rng.normal(0.0, 0.02, m)
    stamp_warp[:, 3] = rng.normal(0.0, 1e-5, m)
    stamp_warp[:, 4] = 1.0 + rng.normal(0.0, 5e-4, m)
    stamp_warp[:, 5] = rng.normal(0.0, 0.02, m)
    stamp_warp[:, 8] = 1.0
    stamp_warp[np.repeat(nophot[stamp_rows], STAMP_GRID**2)] = 0.0  # 0 if missing
    stamps = Table()
    stamps["dataset_code"] = np.repeat(np.array(table["dataset_code"])[stamp_rows], 16)
    stamps["filename"] = np.repeat(np.array(filenames)[stamp_rows], 16)
    stamps["stamp_id"] = np.tile(np.arange(16, dtype=np.int64), stamp_rows.size)
    for k, name in enumerate(("xmin", "xmax", "ymin", "ymax")):
        stamps[name] = np.tile(bounds[:, k], stamp_rows.size)
    for k in range(9):
        stamps[f"warp_matrix_{k}"] = stamp_warp[:, k]
    assert tuple(stamps.colnames) == layout.STAMPS_COLUMNS

    return _Images(
        dataset=dataset,
        band=band,
        hjd=np.where(phot, hjd, 0.0),
        phot=phot,
        offset=offset,
        err_scale=err_scale,
        seeing_factor=(fwhm / np.median(fwhm)) ** 2,
        pscale=pscale,
        sky=sky,
        bit2=bit2,
        bit8=bit8,
        bit16=bit16,
        table=table,
        stamps=stamps,
    )


# --- stars ---------------------------------------------------------------------------


@dataclass
class _Stars:
    x_p: np.ndarray  # true position, primary-frame pixels
    y_p: np.ndarray
    mags: np.ndarray  # (n, 3) g, r, i base magnitudes on the normalised scale
    det: np.ndarray  # (n, n_ds) bool
    cat_id: np.ndarray  # (n, n_ds) 1-based id in each dataset's catalogue, 0 = not detected
    ra: np.ndarray  # FIELD_INDEX position (as measured by the first detecting dataset)
    dec: np.ndarray
    quadrant: np.ndarray
    quadrant_id: np.ndarray
    kind: np.ndarray  # code of KINDS (0 = constant)
    params: np.ndarray  # (n, 9) t0, tE, u0, fs, period, amplitude, phase, timescale, width
    outlier_rate: np.ndarray | None = None  # per point in a median-seeing image
    irregular: tuple | None = None  # rows, (n, K) periods, amplitudes, phases of the modes

    @property
    def n(self) -> int:
        return self.x_p.size


def _draw_star_candidates(rng, m: int, ds: _Datasets):
    lo, hi = -FOOTPRINT_MARGIN_PIXELS, FRAME_PIXELS + FOOTPRINT_MARGIN_PIXELS
    x_p = rng.uniform(lo, hi, m)
    y_p = rng.uniform(lo, hi, m)
    span = 10 ** (_LF_SLOPE * (_MAG_I_RANGE[1] - _MAG_I_RANGE[0])) - 1.0
    mag_i = _MAG_I_RANGE[0] + np.log10(1.0 + rng.random(m) * span) / _LF_SLOPE
    g_i = rng.uniform(2.0, 3.5, m)
    r_i = np.clip(0.8 + 0.4 * (g_i - 2.0) / 1.5 + rng.normal(0.0, 0.04, m), 0.8, 1.2)
    mags = np.stack([mag_i + g_i, mag_i + r_i, mag_i], axis=1)
    x_d, y_d = _dataset_xy(x_p, y_p, ds.frame)
    inside = (x_d > 0.5) & (x_d < FRAME_PIXELS - 0.5) & (y_d > 0.5) & (y_d < FRAME_PIXELS - 0.5)
    m_band = mags[:, ds.band]
    p_det = _COMPLETENESS / (1.0 + np.exp((m_band - ds.m50) / _DETECTION_WIDTH))
    det = inside & (rng.random((m, ds.n)) < p_det)
    noise = rng.normal(0.0, _ASTROMETRIC_NOISE_PX, (m, 2))
    return x_p, y_p, mags, det, noise


def _build_stars(n_stars: int, ds: _Datasets, seed: int, centre) -> _Stars:
    rng = _rng(seed, _S_STARS)
    parts = []
    have = 0
    while have < n_stars:  # keep only stars that some dataset detects
        cand = _draw_star_candidates(rng, max(4096, 2 * (n_stars - have)), ds)
        keep = cand[3].any(axis=1)
        parts.append([a[keep] for a in cand])
        have += int(keep.sum())
    x_p, y_p, mags, det, noise = (np.concatenate(a)[:n_stars] for a in zip(*parts, strict=True))

    # Each dataset's reference catalogue lists its stars in raster (y, x) order of
    # its own frame; the 1-based position is the star's id in that dataset.
    x_d, y_d = _dataset_xy(x_p, y_p, ds.frame)
    cat_id = np.zeros(det.shape, np.int64)
    for d in range(ds.n):
        rows = np.flatnonzero(det[:, d])
        cat_id[rows[np.lexsort((x_d[rows, d], y_d[rows, d]))], d] = np.arange(1, rows.size + 1)

    # Field index as pyDANDIA builds it: the primary catalogue in catalogue order, then
    # for each further dataset (DATASETS order) its unmatched stars ("orphans").
    in_primary = det[:, 0]
    primary_rows = np.flatnonzero(in_primary)
    primary_rows = primary_rows[np.argsort(cat_id[primary_rows, 0])]
    orphan_rows = np.flatnonzero(~in_primary)
    first_ds = np.argmax(det[orphan_rows], axis=1)
    orphan_rows = orphan_rows[np.lexsort((cat_id[orphan_rows, first_ds], first_ds))]
    order = np.concatenate([primary_rows, orphan_rows])
    x_p, y_p, mags, det, cat_id, noise = (a[order] for a in (x_p, y_p, mags, det, cat_id, noise))

    ra, dec = _deproject(x_p + noise[:, 0], y_p + noise[:, 1], *centre)
    quadrant, quadrant_id = assign_quadrants(ra, dec)
    for q in layout.QUADRANTS:
        ids = quadrant_id[quadrant == q]
        if not np.array_equal(ids, np.arange(1, ids.size + 1)):
            raise RuntimeError(
                f"a synthetic star fell exactly on a quadrant boundary (quadrant {q}); "
                "pyDANDIA's writer would fail on this field - use another seed"
            )
    return _Stars(
        x_p=x_p,
        y_p=y_p,
        mags=mags,
        det=det,
        cat_id=cat_id,
        ra=ra,
        dec=dec,
        quadrant=quadrant,
        quadrant_id=quadrant_id,
        kind=np.zeros(n_stars, np.int8),
        params=np.full((n_stars, 9), np.nan),
    )


@dataclass(frozen=True)
class SignalRates:
    """How many stars carry each kind of signal, as fractions of all stars.

    Signals go to bright (i' < 19) stars detected in the primary reference; each
    non-zero rate gives at least 5 stars (3 for irregular) when there are enough.
    ``periodic`` is split equally between sinusoidal, eclipsing and sawtooth variables,
    ``irregular`` two to one between semi-regular/irregular variability and trends.
    """

    microlensing: float = 0.01
    periodic: float = 0.01
    irregular: float = 0.005

    def counts(self, n_stars: int, n_eligible: int) -> tuple[int, int, int]:
        """Numbers of events, periodic and irregular variables (scaled to fit)."""
        wanted = []
        for rate, minimum in ((self.microlensing, 5), (self.periodic, 5), (self.irregular, 3)):
            wanted.append(0 if rate <= 0 else max(minimum, math.ceil(rate * n_stars)))
        total = sum(wanted)
        if total > n_eligible:
            wanted = [int(w * n_eligible // total) for w in wanted]
        return wanted[0], wanted[1], wanted[2]


_KIND_CODE = {name: k for k, name in enumerate(KINDS)}
_N_IRREGULAR_TERMS = 6
_ECLIPSE_SECONDARY_RATIO = 0.4
_T0_MARGIN_DAYS = 150.0  # events peak up to this long before/after the survey
_OUTLIER_RATE = 0.002  # per point, faint star, median seeing
_OUTLIER_PRONE_FRACTION = 0.03  # stars next to a bright neighbour, on a bad column...
_OUTLIER_PRONE_BOOST = 10.0
_OUTLIER_BRIGHT_BOOST = 4.0  # extra factor reached at i' <= 14 (near saturation)
_OUTLIER_BRIGHTER_SHARE = 0.6  # cosmic rays, positive subtraction residuals
_UNDERESTIMATED_ERROR_SHARE = 0.5  # datasets whose reported errors are too small
_UNDERESTIMATE_RANGE = (1.15, 1.6)  # true scatter / reported error there


def _inject_signals(stars: _Stars, seed: int, rates: SignalRates) -> None:
    """Signals among bright primary-detected stars, and every star's outlier rate."""
    rng = _rng(seed, _S_SIGNALS)
    eligible = np.flatnonzero(stars.det[:, 0] & (stars.mags[:, 2] < 19.0))
    n_ml, n_per, n_irr = rates.counts(stars.n, eligible.size)
    chosen = rng.permutation(eligible)
    ml = chosen[:n_ml]
    per = chosen[n_ml : n_ml + n_per]
    irr = chosen[n_ml + n_per : n_ml + n_per + n_irr]
    p = stars.params

    p[ml, 0] = rng.uniform(FIRST_HJD - _T0_MARGIN_DAYS, LAST_HJD + _T0_MARGIN_DAYS, n_ml)
    p[ml, 1] = np.exp(rng.uniform(np.log(1.0), np.log(300.0), n_ml))  # tE
    p[ml, 2] = rng.uniform(0.0, 1.5, n_ml)  # u0
    p[ml, 3] = rng.uniform(0.05, 1.0, n_ml)  # fs
    stars.kind[ml] = _KIND_CODE["microlensing"]

    per_kind = np.array([_KIND_CODE[k] for k in PERIODIC_KINDS])[np.arange(n_per) % 3]
    stars.kind[per] = per_kind
    sine, ecl, saw = (per[per_kind == _KIND_CODE[k]] for k in PERIODIC_KINDS)
    p[sine, 4] = np.exp(rng.uniform(np.log(0.3), np.log(30.0), sine.size))
    p[sine, 5] = rng.uniform(0.05, 0.5, sine.size)  # semi-amplitude
    p[ecl, 4] = np.exp(rng.uniform(np.log(0.5), np.log(20.0), ecl.size))
    p[ecl, 5] = rng.uniform(0.1, 0.8, ecl.size)  # primary eclipse depth
    p[ecl, 8] = rng.uniform(0.02, 0.08, ecl.size)  # eclipse Gaussian width (phase)
    p[saw, 4] = np.exp(rng.uniform(np.log(0.3), np.log(10.0), saw.size))
    p[saw, 5] = rng.uniform(0.1, 0.5, saw.size)  # semi-amplitude
    p[saw, 8] = rng.uniform(0.1, 0.2, saw.size)  # rising share of the cycle
    p[per, 6] = rng.uniform(0.0, 2 * np.pi, n_per)

    irr_kind = np.where(np.arange(n_irr) % 3 == 2, _KIND_CODE["trend"], _KIND_CODE["irregular"])
    stars.kind[irr] = irr_kind
    semi, trend = irr[irr_kind == _KIND_CODE["irregular"]], irr[irr_kind == _KIND_CODE["trend"]]
    p[semi, 5] = rng.uniform(0.03, 0.3, semi.size)  # rms
    p[semi, 7] = np.exp(rng.uniform(np.log(20.0), np.log(200.0), semi.size))  # timescale
    p[trend, 5] = rng.choice([-1.0, 1.0], trend.size) * rng.uniform(0.05, 0.3, trend.size)
    # Semi-regular variability: a few incoherent modes around the timescale.
    semi = np.sort(semi)
    terms = (semi.size, _N_IRREGULAR_TERMS)
    weights = rng.rayleigh(1.0, terms)
    weights *= np.sqrt(2.0 / np.sum(weights**2, axis=1, keepdims=True))  # rms 1
    stars.irregular = (
        semi,
        p[semi, 7][:, None] * np.exp(rng.normal(0.0, 0.35, terms)),
        weights * p[semi, 5][:, None],
        rng.uniform(0.0, 2 * np.pi, terms),
    )

    # Outliers: every star has a rate; bright and outlier-prone stars have more.
    rng = _rng(seed, _S_SIGNALS, 1)
    prone = rng.random(stars.n) < _OUTLIER_PRONE_FRACTION
    bright = 1.0 + _OUTLIER_BRIGHT_BOOST * np.clip((16.0 - stars.mags[:, 2]) / 2.0, 0.0, 1.0)
    stars.outlier_rate = _OUTLIER_RATE * bright * np.where(prone, _OUTLIER_PRONE_BOOST, 1.0)


def _signal_delta_mag(rows: np.ndarray, stars: _Stars, hjd: np.ndarray) -> np.ndarray:
    """(n_rows, n_images) magnitude change of the given stars (field rows) at hjd."""
    kind, params = stars.kind[rows], stars.params[rows]
    dm = np.zeros((kind.size, hjd.size))
    t = hjd[None, :]

    def select(name):
        sel = np.flatnonzero(kind == _KIND_CODE[name])
        return sel, [params[sel, k][:, None] for k in range(params.shape[1])]

    sel, (t0, te, u0, fs, *_) = select("microlensing")
    if sel.size:
        u = np.sqrt(u0**2 + ((t - t0) / te) ** 2)
        dm[sel] = -2.5 * np.log10(fs * _pspl_magnification(u) + 1.0 - fs)
    sel, (*_, period, amplitude, phase, _ts, _w) = select("periodic")
    if sel.size:
        dm[sel] = amplitude * np.sin(2 * np.pi * (t - PHASE_REFERENCE_HJD) / period + phase)
    sel, (*_, period, depth, phase, _ts, width) = select("eclipsing")
    if sel.size:
        x = np.mod((t - PHASE_REFERENCE_HJD) / period + phase / (2 * np.pi), 1.0)
        primary = np.minimum(x, 1.0 - x)
        secondary = np.abs(x - 0.5)
        dm[sel] = depth * (
            np.exp(-0.5 * (primary / width) ** 2)
            + _ECLIPSE_SECONDARY_RATIO * np.exp(-0.5 * (secondary / width) ** 2)
        )
    sel, (*_, period, amplitude, phase, _ts, rise) = select("sawtooth")
    if sel.size:
        x = np.mod((t - PHASE_REFERENCE_HJD) / period + phase / (2 * np.pi), 1.0)
        dm[sel] = amplitude * np.where(
            x < rise, 1.0 - 2.0 * x / rise, -1.0 + 2.0 * (x - rise) / (1.0 - rise)
        )
    sel, (*_, amplitude, _p, _ts, _w) = select("trend")
    if sel.size:
        tc = np.clip(t, FIRST_HJD, LAST_HJD)  # images without photometry have hjd 0
        dm[sel] = amplitude * (2.0 * (tc - FIRST_HJD) / (LAST_HJD - FIRST_HJD) - 1.0)
    sel = np.flatnonzero(kind == _KIND_CODE["irregular"])
    if sel.size:
        assert stars.irregular is not None  # made with the stars when any is irregular
        irr_rows, periods, amps, phases = stars.irregular
        k = np.searchsorted(irr_rows, rows[sel])
        arg = 2 * np.pi * (t[:, :, None] - PHASE_REFERENCE_HJD) / periods[k][:, None, :]
        dm[sel] = np.sum(amps[k][:, None, :] * np.sin(arg + phases[k][:, None, :]), axis=2)
    return dm


def _pspl_magnification(u: np.ndarray) -> np.ndarray:
    """Point-source point-lens magnification A(u) = (u^2 + 2) / (u sqrt(u^2 + 4))."""
    return (u**2 + 2.0) / (u * np.sqrt(u**2 + 4.0))


# --- tables ----------------------------------------------------------------------------


def _gaia_columns(stars: _Stars, seed: int, centre) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """STARS Gaia columns (EDR3 units) and the FIELD_INDEX gaia_source_id strings."""
    rng = _rng(seed, _S_GAIA)
    n = stars.n
    g_i = stars.mags[:, 0] - stars.mags[:, 2]
    gmag = stars.mags[:, 2] + 0.55 + 0.2 * (g_i - 2.75) + rng.normal(0.0, 0.03, n)
    bpmag = gmag + 1.1 + 0.35 * (g_i - 2.75)
    rpmag = gmag - 0.95 - 0.1 * (g_i - 2.75)
    p_match = 0.95 - 0.25 * np.clip((gmag - 18.0) / 3.5, 0.0, 1.0)
    matched = rng.random(n) < p_match
    sigma_pos = np.clip(0.02 + 0.35 * 10 ** (0.4 * (gmag - 20.0)), 0.01, 3.0)  # mas
    true_ra, true_dec = _deproject(stars.x_p, stars.y_p, *centre)
    offset = rng.normal(0.0, 1.0, (n, 2)) * (sigma_pos + 15.0)[:, None] / 3.6e6  # deg
    gaia_ra = true_ra + offset[:, 0] / np.cos(np.radians(true_dec))
    gaia_dec = true_dec + offset[:, 1]
    bulge = rng.random(n) < 0.75
    pm_ra = np.where(bulge, rng.normal(-2.8, 2.8, n), rng.normal(-1.0, 2.0, n))
    pm_dec = np.where(bulge, rng.normal(-5.6, 2.6, n), rng.normal(-2.5, 2.0, n))
    pm_err = 1.3 * sigma_pos * rng.uniform(0.8, 1.2, n)
    pm_ra += rng.normal(0.0, 1.0, n) * pm_err
    pm_dec += rng.normal(0.0, 1.0, n) * pm_err
    plx_err = 1.1 * sigma_pos * rng.uniform(0.8, 1.2, n)
    parallax = np.where(bulge, 0.125, rng.uniform(0.2, 1.0, n)) + rng.normal(0.0, 1.0, n) * plx_err

    def flux(mag, zp, rel):
        f = 10 ** (-0.4 * (mag - zp))
        return f, f * rel

    rel_g = 0.0005 + 0.02 * 10 ** (0.4 * (gmag - 20.0))
    g_flux, g_err = flux(gmag, 25.6874, rel_g)
    bp_flux, bp_err = flux(bpmag, 25.3385, 3.0 * rel_g)
    rp_flux, rp_err = flux(rpmag, 24.7479, 2.0 * rel_g)

    # Source ids: HEALPix level-12 nested index << 35 + a running number (Gaia's rule).
    hpx = _healpix_nest(4096, gaia_ra, gaia_dec)
    ids = (hpx << np.uint64(35)) + rng.integers(1, 2**34, n, dtype=np.uint64)
    while np.unique(ids).size < n:  # practically never: make duplicates unique
        _, first = np.unique(ids, return_index=True)
        dup = np.setdiff1d(np.arange(n), first)
        ids[dup] += np.uint64(1)
    id_text = ids.astype("U19")
    values = {
        "gaia_source_id": np.where(matched, id_text, "0.0"),
        "gaia_ra": gaia_ra,
        "gaia_ra_error": sigma_pos,
        "gaia_dec": gaia_dec,
        "gaia_dec_error": sigma_pos * rng.uniform(0.8, 1.2, n),
        "phot_g_mean_flux": g_flux,
        "phot_g_mean_flux_error": g_err,
        "phot_bp_mean_flux": bp_flux,
        "phot_bp_mean_flux_error": bp_err,
        "phot_rp_mean_flux": rp_flux,
        "phot_rp_mean_flux_error": rp_err,
        "pm": np.hypot(pm_ra, pm_dec),
        "pm_ra": pm_ra,
        "pm_ra_error": pm_err,
        "pm_dec": pm_dec,
        "pm_dec_error": pm_err * rng.uniform(0.8, 1.2, n),
        "parallax": parallax,
        "parallax_error": plx_err,
    }
    for name, column in values.items():
        if name != "gaia_source_id":
            values[name] = np.where(matched, column, 0.0)  # unmatched: all zeros
    return values, np.where(matched, id_text, "None")


def _reference_mags(stars: _Stars, ds: _Datasets, rng) -> tuple[np.ndarray, np.ndarray]:
    """Each dataset's reference-image calibrated magnitude and error, (n, n_ds)."""
    true = stars.mags[:, ds.band]
    err = _error(true, ds.m10, 0.3)
    cal = (true - ds.a1) / ds.a0 + rng.normal(0.0, 1.0, true.shape) * err
    return np.where(stars.det, cal, 0.0), np.where(stars.det, err, 0.0)


def _norm_error(err, cal, a0, covar):
    var = (a0 * err) ** 2 + cal**2 * covar[..., 0] + 2 * cal * covar[..., 1] + covar[..., 3]
    return np.sqrt(np.maximum(var, 0.0))


def _build_tables(stars: _Stars, ds: _Datasets, seed: int, centre):
    gaia, field_gaia_id = _gaia_columns(stars, seed, centre)
    field_index = Table()
    field_index["field_id"] = np.arange(1, stars.n + 1, dtype=np.int64)
    field_index["ra"] = stars.ra
    field_index["dec"] = stars.dec
    field_index["quadrant"] = stars.quadrant
    field_index["quadrant_id"] = stars.quadrant_id
    field_index["gaia_source_id"] = field_gaia_id
    for d, code in enumerate(ds.codes):
        field_index[code + layout.DATASET_INDEX_SUFFIX] = stars.cat_id[:, d]

    columns: dict[str, np.ndarray] = {
        "field_id": np.array(field_index["field_id"]),
        "ra": stars.ra,
        "dec": stars.dec,
    }
    zeros = np.zeros(stars.n)
    for name in layout.stars_photometry_columns():
        columns[name] = zeros
    cal, err = _reference_mags(stars, ds, _rng(seed, _S_STARS, 1))
    for d, code in enumerate(ds.codes):
        f = layout.STARS_FILTER[ds.plans[d].filter]
        sd = layout.site_dome(code)
        columns[f"cal_{f}_mag_{sd}"] = cal[:, d]
        columns[f"cal_{f}_magerr_{sd}"] = err[:, d]
        if d != 0:  # norm_* stay 0 for the primary reference (§3.4)
            det = stars.det[:, d]
            norm = ds.a0[d] * cal[:, d] + ds.a1[d]
            norm_err = _norm_error(err[:, d], cal[:, d], ds.a0[d], ds.covar[d])
            columns[f"norm_{f}_mag_{sd}"] = np.where(det, norm, 0.0)
            columns[f"norm_{f}_magerr_{sd}"] = np.where(det, norm_err, 0.0)
    columns.update(gaia)
    stars_table = Table(
        [columns[name] for name in layout.STARS_COLUMNS_E], names=layout.STARS_COLUMNS_E
    )
    return field_index, stars_table


def _truth_table(
    field: str, stars: _Stars, seed: int, n_images: int, ds: _Datasets, n_outliers: np.ndarray
) -> Table:
    """One row per star (``kind`` = constant for most), its signal and outliers."""
    p = stars.params
    truth = Table()
    truth["field_id"] = np.arange(1, stars.n + 1, dtype=np.int64)
    truth["kind"] = np.array(KINDS, dtype="U12")[stars.kind]
    names = ("t0", "tE", "u0", "fs", "period", "amplitude", "phase", "timescale", "width")
    units = ("d", "d", None, None, "d", "mag", "rad", "d", None)
    for k, (name, unit) in enumerate(zip(names, units, strict=True)):
        truth[name] = p[:, k]
        if unit:
            truth[name].unit = unit
    truth["base_mag_i"] = stars.mags[:, 2]
    truth["base_mag_r"] = stars.mags[:, 1]
    truth["base_mag_g"] = stars.mags[:, 0]
    for name in ("base_mag_i", "base_mag_r", "base_mag_g"):
        truth[name].unit = "mag"
    truth["outlier_rate"] = stars.outlier_rate
    truth["n_outliers"] = n_outliers
    assert tuple(truth.colnames) == TRUTH_COLUMNS
    truth.meta.update(
        {
            "generator": "romerea_vo.products.synthetic",
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "field": field,
            "n_stars": int(stars.n),
            "n_images": int(n_images),
            "t0_scale": "HJD (UTC), like cube column 0",
            "microlensing_model": "Paczynski point lens: m = base - 2.5 log10(fs A(u) + 1 - fs),"
            " u = sqrt(u0^2 + ((t - t0)/tE)^2), achromatic (same in every band)",
            "periodic_model": "m = base + amplitude sin(2 pi (t - phase_reference_hjd)/period"
            " + phase), same in every band",
            "eclipsing_model": "x = frac((t - phase_reference_hjd)/period + phase/(2 pi));"
            " m = base + amplitude (exp(-(min(x, 1-x)/width)^2/2)"
            f" + {_ECLIPSE_SECONDARY_RATIO} exp(-((x - 0.5)/width)^2/2))",
            "sawtooth_model": "x as for eclipsing; m = base + amplitude (1 - 2x/width) for"
            " x < width (rise), else amplitude (-1 + 2 (x - width)/(1 - width))",
            "irregular_model": f"sum of {_N_IRREGULAR_TERMS} incoherent sinusoids with periods"
            " ~ timescale (log-normal, 0.35), total rms = amplitude",
            "trend_model": "m = base + amplitude (2 (t - first_hjd)/(last_hjd - first_hjd) - 1)",
            "first_hjd": FIRST_HJD,
            "last_hjd": LAST_HJD,
            "phase_reference_hjd": PHASE_REFERENCE_HJD,
            "base_mags": "unlensed magnitudes on the normalised (primary-reference) scale",
            "outliers": "unflagged points offset by 5-40 x their reported error; outlier_rate"
            " is the per-point probability in a median-seeing image, scaled by"
            " (fwhm/median fwhm)^2; n_outliers counts those among good (qc_flag 0) points",
            "true_error_scale": {
                code: float(f) for code, f in zip(ds.codes, ds.true_error_scale, strict=True)
            },
        }
    )
    return truth


# --- cubes ---------------------------------------------------------------------------


def _point_randoms(seed: int, quadrant: int, start: int, stop: int, n_images: int) -> np.ndarray:
    """(10, stop-start, n_images) float32 randoms for rows start..stop of a quadrant.

    Drawn per tile of ``_TILE_ROWS`` rows from a generator keyed by (quadrant, tile),
    so a row's numbers do not depend on how rows are grouped into chunks.
    """
    out = np.empty((_N_POINT_RANDOMS, stop - start, n_images), np.float32)
    kinds = ("n", "u", "u", "n", "n", "n", "n", "n", "u", "n")
    for tile in range(start // _TILE_ROWS, (stop - 1) // _TILE_ROWS + 1):
        t0, t1 = tile * _TILE_ROWS, (tile + 1) * _TILE_ROWS
        rng = _rng(seed, _S_CUBE, quadrant, tile)
        lo, hi = max(t0, start), min(t1, stop)
        whole = lo == t0 and hi == t1
        buf = None if whole else np.empty((_TILE_ROWS, n_images), np.float32)
        for k, kind in enumerate(kinds):
            target = out[k, lo - start : hi - start] if whole else buf
            if kind == "n":
                rng.standard_normal(dtype=np.float32, out=target)
            else:
                rng.random(dtype=np.float32, out=target)
            if buf is not None:  # not whole
                out[k, lo - start : hi - start] = buf[lo - t0 : hi - t0]
    return out


_COL = {name: k for k, name in enumerate(layout.ERA_E_PHOTOMETRY.columns)}


def _cube_block(
    rows: np.ndarray, randoms: np.ndarray, stars: _Stars, ds: _Datasets, im: _Images
) -> tuple[np.ndarray, np.ndarray]:
    """The 17-column photometry of the given stars (field rows) in every image, and
    each star's number of outliers among its good (qc_flag 0) points."""
    n_rows, n_img = rows.size, im.n
    out = np.zeros((n_rows, n_img, layout.ERA_E_PHOTOMETRY.width))
    # Column 0 = the IMAGES hjd everywhere (verify_timestamps.py, §4.3); 0 for images
    # without photometry.
    out[:, :, _COL["hjd"]] = im.hjd[None, :]
    if n_rows == 0:
        return out, np.zeros(0, np.int64)
    d_img = im.dataset
    measured = stars.det[rows][:, d_img] & im.phot[None, :]

    x_d, y_d = _dataset_xy(stars.x_p[rows], stars.y_p[rows], ds.frame)
    stamp = _stamp_index(x_d, y_d)[:, d_img]
    mag = stars.mags[rows][:, im.band]
    mag += _signal_delta_mag(rows, stars, im.hjd)
    a0, a1 = ds.a0[d_img], ds.a1[d_img]
    covar = ds.covar[d_img]
    err = _error(mag, ds.m10[d_img], im.err_scale)
    noise, u_fail, u_low, n_scale, n_sky, n_x, n_y, n_scale_err, u_out, n_out = randoms

    # Outliers: unflagged points far outside their error bars (|dm| of 5-40 sigma),
    # more often brighter (cosmic rays) than fainter; u_out also picks the sign.
    assert stars.outlier_rate is not None  # set by the star generator
    rate = stars.outlier_rate[rows][:, None] * im.seeing_factor[None, :]
    outlier = u_out < rate
    sign = np.where(u_out < _OUTLIER_BRIGHTER_SHARE * rate, -1.0, 1.0)
    jump = np.where(outlier, sign * err * (5.0 + 10.0 * np.abs(n_out)), 0.0)
    # calibrated: true magnitude taken off the normalised scale (normalized = a0 cal + a1);
    # the true scatter exceeds the reported error in some datasets
    cal = (mag - a1) / a0 + im.offset + noise * err * ds.true_error_scale[d_img] + jump
    failed = u_fail < _FAILED_FIT_RATE
    low_scale = u_low < _LOW_SCALE_RATE
    scale = np.where(
        low_scale,
        0.40 + 0.29 * (u_low / _LOW_SCALE_RATE),  # qc bit 4: scale factor < 0.7
        np.maximum(im.pscale * (1.0 + 0.01 * n_scale), 0.705),
    )
    sky = im.sky * (1.0 + 0.02 * n_sky)

    def put(name, values, on_failure=layout.FAILED_FIT):
        values = np.where(failed, on_failure, values) if on_failure is not None else values
        out[:, :, _COL[name]] = np.where(measured, values, 0.0)

    put("instrumental_mag", cal - ds.zp[d_img])
    put("instrumental_mag_err", err)
    put("calibrated_mag", cal)
    put("calibrated_mag_err", err)
    put("corrected_mag", cal)  # main branch: corrected = calibrated (§4.2)
    put("corrected_mag_err", err)
    # normalize_photometry only transforms valid input: 0 for failed fits (§4.3)
    put("normalized_mag", a0 * cal + a1, 0.0)
    put("normalized_mag_err", _norm_error(err, cal, a0, covar), 0.0)
    put("phot_scale_factor", scale, None)  # the kernel sum exists even for failed fits
    put("phot_scale_factor_err", 0.002 * (1.0 + 0.25 * np.abs(n_scale_err)), None)
    put("stamp_index", stamp.astype(np.float64), None)
    put("sub_image_sky_bkgd", sky)
    put("sub_image_sky_bkgd_err", np.sqrt(np.abs(sky)))
    put("residual_x", x_d[:, d_img] + 0.03 * n_x)  # stage 6 stores the fit position
    put("residual_y", y_d[:, d_img] + 0.03 * n_y)
    # qc: bit 1 assigned first (failed fit), then bits 2, 4, 8, 16 added (§4.4)
    qc = failed.astype(np.float64)
    qc += 2.0 * im.bit2[None, :]
    qc += 4.0 * low_scale
    qc += 8.0 * im.bit8[None, :]
    qc += 16.0 * im.bit16[np.arange(n_img)[None, :], stamp]
    put("qc_flag", qc, None)
    return out, np.count_nonzero(outlier & measured & (qc == 0), axis=1)


def _default_chunk(n_images: int) -> int:
    row_bytes = max(1, n_images) * layout.ERA_E_PHOTOMETRY.width * 8
    rows = max(1, _DEFAULT_BLOCK_BYTES // row_bytes)
    return rows - rows % _TILE_ROWS if rows >= _TILE_ROWS else rows


# --- entry point -------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidRequestError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return int(value)


def synthesize_field(
    outdir: str | os.PathLike,
    *,
    field: str = "ROME-FIELD-01",
    n_stars: int = 2000,
    n_images: int = 300,
    seed: int = 0,
    progress: bool = False,
    chunk_stars: int | None = None,
    rates: SignalRates | None = None,
) -> Path:
    """Write a complete era-E field into outdir (created if needed; refuse if it already
    holds this field's files) and return outdir.

    Files: ``<FIELD>_field_crossmatch.fits``, ``<FIELD>_quad{1..4}_photometry.hdf5`` and
    ``<FIELD>_synthetic_truth.ecsv`` (the injected signals). The result depends only on
    (field, n_stars, n_images, seed), not on ``chunk_stars`` (star rows generated and
    written per block; default: blocks of at most 128 MiB) or ``progress`` (tqdm bar
    per quadrant, counting stars). ``rates``: how many stars carry events and variable
    signals (default :class:`SignalRates`). On any error the files written so far are
    removed; bad arguments raise :class:`InvalidRequestError`.
    """
    n_stars = _check_int("n_stars", n_stars, 1)
    n_images = _check_int("n_images", n_images, 1)
    seed = _check_int("seed", seed, 0)
    if chunk_stars is not None:
        chunk_stars = _check_int("chunk_stars", chunk_stars, 1)
    if rates is not None:
        for name in ("microlensing", "periodic", "irregular"):
            value = getattr(rates, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise InvalidRequestError(f"rates.{name} must be in [0, 1], not {value!r}")
    if not isinstance(field, str) or not field or "/" in field or field.strip() != field:
        raise InvalidRequestError(f"field must be a non-empty name without '/', not {field!r}")
    outdir = Path(outdir)
    targets = [outdir / layout.crossmatch_filename(field)]
    targets += [outdir / layout.quadrant_filename(field, q) for q in layout.QUADRANTS]
    targets.append(outdir / truth_filename(field))
    existing = [p.name for p in targets if p.exists()]
    if existing:
        raise FileExistsError(
            f"{outdir} already holds files of {field} ({', '.join(existing)}); "
            "remove them or choose another directory"
        )
    outdir.mkdir(parents=True, exist_ok=True)

    centre = field_centre(field)
    ds = _build_datasets(field, seed)
    im = _build_images(ds, n_images, seed, centre)
    stars = _build_stars(n_stars, ds, seed, centre)
    _inject_signals(stars, seed, rates or SignalRates())
    chunk = chunk_stars or _default_chunk(n_images)
    n_outliers = np.zeros(stars.n, np.int64)

    created: list[Path] = []
    try:
        field_index, stars_table = _build_tables(stars, ds, seed, centre)
        write_crossmatch(
            targets[0],
            field_index=field_index,
            datasets=ds.table,
            stars=stars_table,
            images=im.table,
            stamps=im.stamps,
            primary_ref_id=None,  # finished pyDANDIA files carry a blank PRIREFID (§3.1)
            gaia_dr=GAIA_DR,
        )
        created.append(targets[0])
        del field_index, stars_table
        for q in layout.QUADRANTS:
            members = np.flatnonzero(stars.quadrant == q)  # field order = quadrant_id order
            with (
                QuadrantCubeWriter(outdir, field, q, members.size, im.n) as writer,
                tqdm(
                    total=members.size,
                    unit="star",
                    desc=f"{field} quad{q}",
                    disable=not progress,
                ) as bar,
            ):
                for start in range(0, members.size, chunk):
                    stop = min(start + chunk, members.size)
                    randoms = _point_randoms(seed, q, start, stop, im.n)
                    block, outliers = _cube_block(members[start:stop], randoms, stars, ds, im)
                    n_outliers[members[start:stop]] = outliers
                    del randoms
                    writer.write_rows(start, block)
                    del block
                    bar.update(stop - start)
            created.append(writer.path)
        truth = _truth_table(field, stars, seed, n_images, ds, n_outliers)
        tmp = outdir / f".{truth_filename(field)}.partial"
        truth.write(tmp, format="ascii.ecsv", overwrite=True)
        os.replace(tmp, targets[-1])
        created.append(targets[-1])
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    return outdir
