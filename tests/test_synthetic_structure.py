"""Structural check of a synthesised field against ROME_FORMATS.md (era E, §2-§8, §11).

Deliberately independent of ``romerea_vo.products.layout``: the expectations below
restate the format reference literally, and the files are read back with nothing but
astropy.io.fits, h5py and numpy, so a wrong constant in layout.py cannot hide a
wrong file. The writer's own contracts are checked at the end.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from romerea_vo.errors import FieldFormatError, InvalidRequestError
from romerea_vo.products.synthetic import SignalRates, synthesize_field
from romerea_vo.products.writer import QuadrantCubeWriter, assign_quadrants, write_field

FIELD = "ROME-FIELD-01"
N_STARS, N_IMAGES, SEED = 600, 120, 11
FAILED = -9999.99

# --- the format, restated from ROME_FORMATS.md ------------------------------------

HDU_NAMES = ["PRIMARY", "FIELD_INDEX", "DATASETS", "STARS", "IMAGES", "STAMPS"]  # §3.1

FIELD_INDEX_FIXED = [  # §3.2
    ("field_id", "K"),
    ("ra", "D"),
    ("dec", "D"),
    ("quadrant", "K"),
    ("quadrant_id", "K"),
    ("gaia_source_id", "19A"),
]

DATASETS_COLUMNS = [  # §3.3, era E; None = string at the width of the longest value
    ("dataset_code", None),
    ("dataset_red_dir", None),
    ("dataset_filter", "8A"),
    ("primary_ref", "K"),
    ("norm_a0", "D"),
    ("norm_a1", "D"),
    ("norm_covar_0", "D"),
    ("norm_covar_1", "D"),
    ("norm_covar_2", "D"),
    ("norm_covar_3", "D"),
]

SITE_DOMES = [
    f"{site}_{dome}" for site in ("lsc", "cpt", "coj") for dome in ("doma", "domb", "domc")
]
GAIA_COLUMNS = [  # §3.4, init_stars_table spelling (pm_ra)
    ("gaia_source_id", "19A"),
    ("gaia_ra", "D"),
    ("gaia_ra_error", "D"),
    ("gaia_dec", "D"),
    ("gaia_dec_error", "D"),
    ("phot_g_mean_flux", "D"),
    ("phot_g_mean_flux_error", "D"),
    ("phot_bp_mean_flux", "D"),
    ("phot_bp_mean_flux_error", "D"),
    ("phot_rp_mean_flux", "D"),
    ("phot_rp_mean_flux_error", "D"),
    ("pm", "D"),
    ("pm_ra", "D"),
    ("pm_ra_error", "D"),
    ("pm_dec", "D"),
    ("pm_dec_error", "D"),
    ("parallax", "D"),
    ("parallax_error", "D"),
]
STARS_COLUMNS = (
    [("field_id", "K"), ("ra", "D"), ("dec", "D")]
    + [
        (f"{kind}_{f}_{what}_{sd}", "D")
        for sd in SITE_DOMES
        for f in ("g", "r", "i")
        for kind in ("cal", "norm")
        for what in ("mag", "magerr")
    ]
    + GAIA_COLUMNS
)

IMAGES_COLUMNS = (  # §3.5, 48 columns
    [
        ("index", "K"),
        ("filename", "80A"),
        ("dataset_code", "80A"),
        ("filter", "10A"),
        ("hjd", "D"),
        ("datetime", "25A"),
        ("exposure", "D"),
        ("RA", "15A"),
        ("Dec", "15A"),
    ]
    + [(n, "D") for n in ("moon_ang_separation", "moon_fraction", "airmass")]
    + [(n, "D") for n in ("sigma_x", "sigma_y", "sky", "median_sky", "fwhm", "corr_xy")]
    + [("nstars", "K"), ("frac_sat_pix", "D"), ("symmetry", "D")]
    + [("use_phot", "K"), ("use_ref", "K")]
    + [
        (n, "D")
        for n in (
            "shift_x",
            "shift_y",
            "pscale",
            "pscale_err",
            "var_per_pix_diff",
            "n_unmasked",
            "skew_diff",
            "kurtosis_diff",
        )
    ]
    + [(f"warp_matrix_{k}", "D") for k in range(16)]
    + [("qc_flag", "K")]
)

STAMPS_COLUMNS = (  # §3.6
    [("dataset_code", "80A"), ("filename", "80A"), ("stamp_id", "K")]
    + [(n, "D") for n in ("xmin", "xmax", "ymin", "ymax")]
    + [(f"warp_matrix_{k}", "D") for k in range(9)]
)
# stamp_id = 4*row + column (row along y); x ranges of the columns / y ranges of the rows
STAMP_RANGES = [(0.0, 1010.0), (990.0, 2010.0), (1990.0, 3010.0), (2990.0, 4096.0)]

CUBE_COLUMNS = [  # §4.2, 17 columns (era D/E)
    "hjd",
    "instrumental_mag",
    "instrumental_mag_err",
    "calibrated_mag",
    "calibrated_mag_err",
    "corrected_mag",
    "corrected_mag_err",
    "normalized_mag",
    "normalized_mag_err",
    "phot_scale_factor",
    "phot_scale_factor_err",
    "stamp_index",
    "sub_image_sky_bkgd",
    "sub_image_sky_bkgd_err",
    "residual_x",
    "residual_y",
    "qc_flag",
]
C = {name: k for k, name in enumerate(CUBE_COLUMNS)}
FAILED_COLUMNS = [C[n] for n in CUBE_COLUMNS[1:7]] + [C[n] for n in CUBE_COLUMNS[12:16]]

DATASET_CODE = re.compile(
    r"^ROME-FIELD-\d{2}_(lsc|cpt|coj)-dom[abc]-1m0-\d{2}-f[al]\d{2}_(gp|rp|ip)$"
)
IMAGE_FILENAME = re.compile(r"^(lsc|cpt|coj)1m0\d{2}-f[al]\d{2}-\d{8}-\d{4}-e91\.fits$")
SURVEY_INSTRUMENTS = ("lsc-doma-1m0-05-fa15", "cpt-doma-1m0-10-fa16", "coj-doma-1m0-11-fa12")
FIRST_HJD, LAST_HJD = 2457813.0, 2458940.0


# --- fixtures ------------------------------------------------------------------------


def _crossmatch_path(directory: Path) -> Path:
    return directory / f"{FIELD}_field_crossmatch.fits"


def _quad_path(directory: Path, q: int) -> Path:
    return directory / f"{FIELD}_quad{q}_photometry.hdf5"


@pytest.fixture(scope="module")
def field_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("field") / "products"
    result = synthesize_field(out, field=FIELD, n_stars=N_STARS, n_images=N_IMAGES, seed=SEED)
    assert Path(result) == out
    return out


@pytest.fixture(scope="module")
def hdus(field_dir):
    with fits.open(_crossmatch_path(field_dir)) as hdul:
        hdul.verify("exception")
        copied = [hdul[0].header.copy()] + [
            (h.name, h.header.copy(), h.columns, np.array(h.data)) for h in hdul[1:]
        ]
    return copied


@pytest.fixture(scope="module")
def tables(hdus):
    return {name: data for name, _, _, data in hdus[1:]}


@pytest.fixture(scope="module")
def cubes(field_dir):
    out = {}
    for q in (1, 2, 3, 4):
        with h5py.File(_quad_path(field_dir, q), "r") as f:
            out[q] = f["dataset_photometry"][()]
    return out


def _text(values) -> np.ndarray:
    return np.char.strip(np.char.decode(np.asarray(values, dtype=bytes), "ascii"))


def _datasets(tables):
    ds = tables["DATASETS"]
    return list(_text(ds["dataset_code"])), list(_text(ds["dataset_filter"]))


def _dataset_index(tables) -> np.ndarray:
    codes, _ = _datasets(tables)
    fi = tables["FIELD_INDEX"]
    return np.stack([fi[f"{code}_index"] for code in codes], axis=1)


def _image_dataset_rows(tables) -> np.ndarray:
    codes, _ = _datasets(tables)
    lookup = {code: k for k, code in enumerate(codes)}
    return np.array([lookup[c] for c in _text(tables["IMAGES"]["dataset_code"])])


def _star_rows(tables, q: int) -> np.ndarray:
    """FIELD_INDEX rows of quadrant q ordered by quadrant_id (= cube rows)."""
    fi = tables["FIELD_INDEX"]
    rows = np.flatnonzero(fi["quadrant"] == q)
    return rows[np.argsort(fi["quadrant_id"][rows])]


def _iso_to_jd(values) -> np.ndarray:
    stamps = np.array(list(_text(values)), dtype="datetime64[ms]")
    return stamps.astype(np.int64) / 86400000.0 + 2440587.5


# --- crossmatch file -----------------------------------------------------------------


def test_hdu_names_order_and_primary_header(hdus):
    header = hdus[0]
    assert [h[0] for h in hdus[1:]] == HDU_NAMES[1:]
    assert header["NAXIS"] == 0
    assert header["NAME"] == "Field crossmatch table"
    assert "PRIREFID" in header
    assert header["GAIA_DR"] == "Gaia-EDR3"


@pytest.mark.parametrize(
    ("hdu", "expected"),
    [
        ("DATASETS", DATASETS_COLUMNS),
        ("STARS", STARS_COLUMNS),
        ("IMAGES", IMAGES_COLUMNS),
        ("STAMPS", STAMPS_COLUMNS),
    ],
)
def test_table_columns_and_formats(hdus, hdu, expected):
    _, header, columns, _ = next(h for h in hdus[1:] if h[0] == hdu)
    assert columns.names == [n for n, _ in expected]
    for (col_name, fmt), column in zip(expected, columns, strict=True):
        if fmt is None:
            assert re.fullmatch(r"\d+A", column.format), (col_name, column.format)
        else:
            assert column.format == fmt, (hdu, col_name, column.format)
    assert not [k for k in header if k.startswith(("TUNIT", "TNULL", "TSCAL", "TZERO"))]


def test_column_counts(hdus):
    counts = {h[0]: len(h[2].names) for h in hdus[1:]}
    n_datasets = len(hdus[2][3])
    assert counts == {
        "FIELD_INDEX": 6 + n_datasets,
        "DATASETS": 10,
        "STARS": 129,
        "IMAGES": 48,
        "STAMPS": 16,
    }
    stars_names = hdus[3][2].names
    assert "pm_ra" in stars_names and "pmra" not in stars_names


def test_field_index_columns(hdus, tables):
    _, header, columns, _ = hdus[1]
    assert columns.names[:6] == [n for n, _ in FIELD_INDEX_FIXED]
    assert columns.formats[:6] == [f for _, f in FIELD_INDEX_FIXED]
    codes, _ = _datasets(tables)
    assert columns.names[6:] == [f"{code}_index" for code in codes]
    assert set(columns.formats[6:]) == {"K"}
    assert not [k for k in header if k.startswith(("TUNIT", "TNULL"))]


def test_datasets(tables):
    ds = tables["DATASETS"]
    codes, filters = _datasets(tables)
    assert all(DATASET_CODE.match(code) for code in codes), codes
    assert [c.rsplit("_", 1)[1] for c in codes] == filters
    for instrument in SURVEY_INSTRUMENTS:
        for f in ("gp", "rp", "ip"):
            assert f"{FIELD}_{instrument}_{f}" in codes
    assert list(ds["primary_ref"]).count(1) == 1
    assert set(ds["primary_ref"]) == {0, 1}
    assert ds["primary_ref"][0] == 1 and codes[0] == f"{FIELD}_lsc-doma-1m0-05-fa15_ip"
    assert ds["norm_a0"][0] == 1.0 and ds["norm_a1"][0] == 0.0
    assert np.all(np.abs(ds["norm_a0"] - 1.0) < 0.05)
    assert np.all(np.abs(ds["norm_a1"]) < 1.0)
    red_dirs = _text(ds["dataset_red_dir"])
    assert all(
        d.startswith("/") and d.endswith("/" + c) for d, c in zip(red_dirs, codes, strict=True)
    )


def test_field_ids_and_stars_rows(tables):
    fi, stars = tables["FIELD_INDEX"], tables["STARS"]
    assert len(fi) == N_STARS
    assert np.array_equal(fi["field_id"], np.arange(1, N_STARS + 1))
    assert np.array_equal(stars["field_id"], fi["field_id"])
    assert np.array_equal(stars["ra"], fi["ra"]) and np.array_equal(stars["dec"], fi["dec"])


def test_quadrants_follow_the_midpoint_rule(tables):
    """§5, literally: closed intervals, tests in turn, last match wins."""
    fi = tables["FIELD_INDEX"]
    ra, dec = np.asarray(fi["ra"]), np.asarray(fi["dec"])
    dra = (ra.max() - ra.min()) / 2.0
    ddec = (dec.max() - dec.min()) / 2.0
    boxes = {
        1: (ra.min(), ra.min() + dra, dec.min(), dec.min() + ddec),
        2: (ra.min() + dra, ra.max(), dec.min(), dec.min() + ddec),
        3: (ra.min() + dra, ra.max(), dec.min() + ddec, dec.max()),
        4: (ra.min(), ra.min() + dra, dec.min() + ddec, dec.max()),
    }
    counters = dict.fromkeys(boxes, 0)
    quadrant = np.zeros(len(fi), int)
    quadrant_id = np.zeros(len(fi), int)
    for j in range(len(fi)):
        for q, (r0, r1, d0, d1) in boxes.items():
            if r0 <= ra[j] <= r1 and d0 <= dec[j] <= d1:
                counters[q] += 1
                quadrant[j], quadrant_id[j] = q, counters[q]
    assert np.array_equal(fi["quadrant"], quadrant)
    assert np.array_equal(fi["quadrant_id"], quadrant_id)
    for q in (1, 2, 3, 4):
        ids = np.asarray(fi["quadrant_id"][fi["quadrant"] == q])
        assert np.array_equal(ids, np.arange(1, ids.size + 1))  # running, field order
        assert 0.15 * N_STARS < ids.size < 0.35 * N_STARS


def test_dataset_index_columns(tables):
    index = _dataset_index(tables)
    assert np.all(index >= 0)
    assert np.all(index.max(axis=1) > 0), "every star is detected by some dataset"
    for k in range(index.shape[1]):
        ids = index[:, k][index[:, k] > 0]
        assert np.array_equal(np.sort(ids), np.arange(1, ids.size + 1)), k
    # rows 1..N are the primary catalogue in catalogue order, orphans after them
    primary = index[:, 0]
    n_primary = np.count_nonzero(primary)
    assert 0.6 * N_STARS < n_primary < N_STARS
    assert np.array_equal(primary[:n_primary], np.arange(1, n_primary + 1))
    assert np.all(primary[n_primary:] == 0)
    # orphans are grouped by the first dataset that saw them, in DATASETS order
    first = np.argmax(index[n_primary:] > 0, axis=1)
    assert np.all(np.diff(first) >= 0)
    # catalogues have their own order: not the field order for other datasets
    cpt = index[:n_primary, 3]
    assert np.any(np.diff(cpt[cpt > 0]) < 0)


def test_band_split_resembles_rome_field_01(tables):
    index = _dataset_index(tables)
    _, filters = _datasets(tables)
    bands = np.stack(
        [
            (index[:, [k for k, f in enumerate(filters) if f == b]] > 0).any(axis=1)
            for b in ("gp", "rp", "ip")
        ],
        axis=1,
    )
    n_bands = bands.sum(axis=1)
    assert 0.25 < np.mean(n_bands == 3) < 0.5
    assert 0.2 < np.mean(n_bands == 2) < 0.5
    assert 0.15 < np.mean(n_bands == 1) < 0.4
    assert np.mean(bands[:, 0]) < np.mean(bands[:, 1]) < np.mean(bands[:, 2])  # g sees fewest


def test_gaia_columns(tables):
    fi, stars = tables["FIELD_INDEX"], tables["STARS"]
    fi_id, st_id = _text(fi["gaia_source_id"]), _text(stars["gaia_source_id"])
    matched = fi_id != "None"
    assert 0.7 < matched.mean() < 0.95
    assert np.array_equal(st_id == "0.0", ~matched)
    assert np.array_equal(st_id[matched], fi_id[matched])
    assert all(re.fullmatch(r"[1-9]\d{18}", s) for s in fi_id[matched])
    assert len(set(fi_id[matched])) == matched.sum()
    gaia_float = [n for n, f in GAIA_COLUMNS if f == "D"]
    for name in gaia_float:
        assert np.all(stars[name][~matched] == 0.0), name
    assert np.all(stars["phot_g_mean_flux"][matched] > 0)
    sep = np.hypot(
        (stars["gaia_ra"] - stars["ra"]) * np.cos(np.radians(stars["dec"])),
        stars["gaia_dec"] - stars["dec"],
    )
    assert np.all(sep[matched] * 3600 < 0.5)


def test_stars_reference_magnitudes(tables):
    stars, ds = tables["STARS"], tables["DATASETS"]
    codes, filters = _datasets(tables)
    index = _dataset_index(tables)
    for k, (code, f) in enumerate(zip(codes, filters, strict=True)):
        instrument = code.split("_")[-2]
        sd = "_".join(instrument.split("-")[:2])
        band = f[0]
        cal = stars[f"cal_{band}_mag_{sd}"]
        norm = stars[f"norm_{band}_mag_{sd}"]
        detected = index[:, k] > 0
        assert np.array_equal(cal > 0, detected), code
        assert np.all(cal[detected] > 10) and np.all(cal[detected] < 26)
        if k == 0:
            assert np.all(norm == 0.0) and np.all(stars[f"norm_{band}_magerr_{sd}"] == 0.0)
        else:
            expected = ds["norm_a0"][k] * cal[detected] + ds["norm_a1"][k]
            assert np.allclose(norm[detected], expected, rtol=0, atol=1e-9), code
            assert np.all(norm[~detected] == 0.0)


def test_images(tables):
    im = tables["IMAGES"]
    codes, filters = _datasets(tables)
    rows = _image_dataset_rows(tables)
    assert len(im) == N_IMAGES
    assert np.array_equal(im["index"], np.arange(N_IMAGES))
    assert np.all(np.diff(rows) >= 0), "grouped by dataset in DATASETS order"
    assert np.array_equal(_text(im["filter"]), np.array(filters)[rows])
    names = _text(im["filename"])
    assert all(IMAGE_FILENAME.match(n) for n in names)
    assert len(set(names)) == N_IMAGES
    assert np.bincount(rows, minlength=len(codes)).argmax() in {
        k for k, f in enumerate(filters) if f == "ip"
    }
    assert set(im["qc_flag"]) <= {0, -1}
    nophot = im["qc_flag"] == -1
    assert nophot.any()
    assert np.array_equal(im["hjd"] == 0.0, nophot)
    hjd = im["hjd"][~nophot]
    assert np.all((hjd > FIRST_HJD) & (hjd < LAST_HJD))
    start = _iso_to_jd(im["datetime"])
    mid = start + im["exposure"] / 2.0 / 86400.0
    assert np.all(np.abs(im["hjd"][~nophot] - mid[~nophot]) < 0.01)
    assert np.all(im["airmass"] >= 1.0) and np.all(im["exposure"] > 0)
    assert np.all((im["moon_fraction"] >= 0) & (im["moon_fraction"] <= 1))
    for k in range(9, 16):
        assert np.all(im[f"warp_matrix_{k}"] == 0.0)
    ok = ~nophot
    assert np.allclose(im["warp_matrix_0"][ok], 1.0, atol=0.01)
    assert np.allclose(im["warp_matrix_4"][ok], 1.0, atol=0.01)


def test_images_not_time_sorted(tables):
    im = tables["IMAGES"]
    rows = _image_dataset_rows(tables)
    ok = im["hjd"] > 0
    assert np.any(np.diff(im["hjd"][ok]) < 0)
    primary = ok & (rows == 0)
    assert np.any(np.diff(im["hjd"][primary]) < 0), "shuffled within a dataset"


def test_seasonal_gap(tables):
    im = tables["IMAGES"]
    ok = im["hjd"] > 0
    months = np.array([int(s[5:7]) for s in _text(im["datetime"])[ok]])
    assert not np.isin(months, [11, 12, 1]).any(), "the bulge is not observed Nov-Jan"
    hjd = np.sort(im["hjd"][ok])
    assert np.diff(hjd).max() > 60.0
    assert hjd[-1] - hjd[0] > 2 * 365.0


def test_stamps(tables):
    st, im = tables["STAMPS"], tables["IMAGES"]
    codes, _ = _datasets(tables)
    rows = _image_dataset_rows(tables)
    non_primary = rows != 0
    assert len(st) == 16 * np.count_nonzero(non_primary)
    stamp_codes = _text(st["dataset_code"])
    assert codes[0] not in set(stamp_codes), "pyDANDIA records no stamps for the primary"
    assert np.array_equal(stamp_codes[::16], _text(im["dataset_code"])[non_primary])
    assert np.array_equal(_text(st["filename"])[::16], _text(im["filename"])[non_primary])
    assert np.array_equal(st["stamp_id"], np.tile(np.arange(16), np.count_nonzero(non_primary)))
    for sid in range(16):
        row, col = divmod(sid, 4)
        sel = st["stamp_id"] == sid
        assert np.all(st["xmin"][sel] == STAMP_RANGES[col][0])
        assert np.all(st["xmax"][sel] == STAMP_RANGES[col][1])
        assert np.all(st["ymin"][sel] == STAMP_RANGES[row][0])
        assert np.all(st["ymax"][sel] == STAMP_RANGES[row][1])


# --- quadrant cubes --------------------------------------------------------------------


def test_cube_containers(field_dir, tables):
    for q in (1, 2, 3, 4):
        path = _quad_path(field_dir, q)
        with h5py.File(path, "r") as f:
            assert list(f.keys()) == ["dataset_photometry"]
            assert len(f.attrs) == 0
            ds = f["dataset_photometry"]
            assert isinstance(ds, h5py.Dataset)
            assert ds.dtype.str == "<f8"
            assert ds.chunks is None and ds.compression is None
            assert ds.id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS
            assert ds.id.get_create_plist().get_nfilters() == 0
            assert len(ds.attrs) == 0
            n_q = np.count_nonzero(tables["FIELD_INDEX"]["quadrant"] == q)
            assert ds.shape == (n_q, N_IMAGES, 17)
            nbytes = ds.size * 8
        overhead = path.stat().st_size - nbytes
        assert 0 < overhead <= 4096, overhead


def test_cube_contents(tables, cubes):
    im, ds = tables["IMAGES"], tables["DATASETS"]
    index = _dataset_index(tables)
    img_ds = _image_dataset_rows(tables)
    hjd = np.asarray(im["hjd"])
    phot = hjd > 0
    n_failed = n_valid = 0
    for q, cube in cubes.items():
        rows = _star_rows(tables, q)
        detected = (index[rows][:, img_ds] > 0) & phot[None, :]  # (stars, images)
        # no-photometry images: all zero
        assert np.all(cube[:, ~phot, :] == 0.0)
        # column 0 = IMAGES hjd everywhere
        assert np.all(cube[:, :, 0] == hjd[None, :])
        # undetected: all columns but hjd are 0.0
        assert np.all(cube[:, :, 1:][~detected] == 0.0)
        points = cube[detected]  # (n_points, 17)
        failed = points[:, C["calibrated_mag"]] == FAILED
        valid = (points[:, C["calibrated_mag"]] > 0) & (points[:, C["calibrated_mag_err"]] > 0)
        assert np.array_equal(failed, ~valid)
        assert np.all(points[failed][:, FAILED_COLUMNS] == FAILED)
        assert np.all(points[failed][:, [C["normalized_mag"], C["normalized_mag_err"]]] == 0.0)
        qc = points[:, C["qc_flag"]]
        assert np.all(qc == np.round(qc)) and np.all((qc >= 0) & (qc <= 31))
        assert np.all(qc[failed].astype(int) & 1 == 1)
        assert np.all(qc[valid].astype(int) & 1 == 0)
        good = points[valid]
        assert np.all(good[:, C["corrected_mag"]] == good[:, C["calibrated_mag"]])
        stamp = good[:, C["stamp_index"]]
        assert np.all(stamp == np.round(stamp)) and np.all((stamp >= 0) & (stamp <= 15))
        for name in ("residual_x", "residual_y"):
            assert np.all((good[:, C[name]] > 0) & (good[:, C[name]] < 4096))
        sky = good[:, C["sub_image_sky_bkgd"]]
        assert np.all((sky > 300) & (sky < 5000))
        err = good[:, C["calibrated_mag_err"]]
        assert err.min() >= 0.003 - 1e-12 and np.median(err) < 0.2
        # normalized = a0 * calibrated + a1 with the dataset's DATASETS coefficients
        point_ds = np.broadcast_to(img_ds, detected.shape)[detected][valid]
        a0, a1 = np.asarray(ds["norm_a0"])[point_ds], np.asarray(ds["norm_a1"])[point_ds]
        assert np.allclose(
            good[:, C["normalized_mag"]], a0 * good[:, C["calibrated_mag"]] + a1, rtol=0, atol=1e-9
        )
        # instrumental = calibrated - one zero point per dataset
        zp = good[:, C["calibrated_mag"]] - good[:, C["instrumental_mag"]]
        for k in np.unique(point_ds):
            assert np.ptp(zp[point_ds == k]) < 1e-9
        n_failed += np.count_nonzero(failed)
        n_valid += np.count_nonzero(valid)
    assert n_failed > 0 and n_valid > 0
    assert 0.003 < n_failed / (n_failed + n_valid) < 0.03


def test_qc_bits_all_occur(cubes):
    qc = np.concatenate([c[:, :, 16].ravel() for c in cubes.values()]).astype(int)
    for bit in (1, 2, 4, 8, 16):
        assert np.any(qc & bit), bit


def test_stamp_index_matches_position(cubes):
    """§4.2: stamp containing the star, strict inequalities, last overlapping stamp wins."""

    def grid_index(v):
        out = np.zeros(v.shape, int)
        for k, (lo, hi) in enumerate(STAMP_RANGES):
            out = np.where((v > lo) & (v < hi), k, out)
        return out

    for cube in cubes.values():
        pts = cube.reshape(-1, 17)
        pts = pts[pts[:, C["calibrated_mag"]] > 0]
        x, y = pts[:, C["residual_x"]], pts[:, C["residual_y"]]
        expected = 4 * grid_index(y) + grid_index(x)
        edges = np.array([lo for lo, _ in STAMP_RANGES[1:]] + [hi for hi, _ in STAMP_RANGES[:-1]])
        near_edge = (np.abs(x[:, None] - edges).min(axis=1) < 0.2) | (
            np.abs(y[:, None] - edges).min(axis=1) < 0.2
        )
        agree = pts[:, C["stamp_index"]] == expected
        assert np.all(agree | near_edge)
        assert agree.mean() > 0.99


# --- truth, determinism ---------------------------------------------------------------


def test_truth_table(field_dir, tables):
    truth = Table.read(field_dir / f"{FIELD}_synthetic_truth.ecsv", format="ascii.ecsv")
    for name in (
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
        "outlier_rate",
        "n_outliers",
    ):
        assert name in truth.colnames
    assert truth.meta["seed"] == SEED and "generator_version" in truth.meta
    assert np.array_equal(truth["field_id"], np.arange(1, len(tables["FIELD_INDEX"]) + 1))
    kinds = np.asarray(truth["kind"])
    assert np.count_nonzero(kinds == "microlensing") >= 5
    periodic = np.isin(kinds, ["periodic", "eclipsing", "sawtooth"])
    irregular = np.isin(kinds, ["irregular", "trend"])
    assert np.count_nonzero(periodic) >= 5 and np.count_nonzero(irregular) >= 3
    assert set(kinds) == {
        "constant", "microlensing", "periodic", "eclipsing", "sawtooth", "irregular", "trend"
    }  # fmt: skip
    signal = kinds != "constant"
    primary_index = tables["FIELD_INDEX"][f"{FIELD}_lsc-doma-1m0-05-fa15_ip_index"]
    assert np.all(primary_index[np.asarray(truth["field_id"][signal]) - 1] > 0)
    assert np.all(truth["base_mag_i"][signal] < 19.0)
    ml = kinds == "microlensing"
    for name in ("t0", "tE", "u0", "fs"):
        assert np.all(np.isfinite(truth[name][ml])) and np.all(np.isnan(truth[name][~ml]))
    for name in ("period", "phase"):
        assert np.all(np.isfinite(truth[name][periodic]))
        assert np.all(np.isnan(truth[name][~periodic]))
    assert np.all(np.isfinite(truth["amplitude"][periodic | irregular]))
    assert np.all((truth["tE"][ml] >= 1) & (truth["tE"][ml] <= 300))
    assert np.all((truth["u0"][ml] >= 0) & (truth["u0"][ml] <= 1.5))
    assert np.all((truth["fs"][ml] >= 0.05) & (truth["fs"][ml] <= 1))
    assert np.all((truth["t0"][ml] > FIRST_HJD - 200) & (truth["t0"][ml] < LAST_HJD + 200))
    assert np.all((truth["period"][periodic] >= 0.3) & (truth["period"][periodic] <= 30))
    assert np.all(truth["outlier_rate"] > 0) and np.sum(truth["n_outliers"]) > 0
    scales = np.array(list(truth.meta["true_error_scale"].values()))
    assert np.all(scales >= 1.0) and np.any(scales > 1.1)


def test_signal_rates_option(tmp_path):
    rates = SignalRates(microlensing=0.05, periodic=0.02, irregular=0.0)
    out = synthesize_field(tmp_path / "r", n_stars=400, n_images=20, seed=2, rates=rates)
    truth = Table.read(out / f"{FIELD}_synthetic_truth.ecsv", format="ascii.ecsv")
    kinds = np.asarray(truth["kind"])
    assert np.count_nonzero(kinds == "microlensing") == 20
    assert np.count_nonzero(np.isin(kinds, ["periodic", "eclipsing", "sawtooth"])) == 8
    assert not np.any(np.isin(kinds, ["irregular", "trend"]))
    with pytest.raises(InvalidRequestError):
        synthesize_field(tmp_path / "bad", n_stars=10, n_images=10, rates=SignalRates(-0.1))


def test_outliers_and_underestimated_errors_are_in_the_cube(field_dir, tables, cubes):
    """Constant stars: points > 5 sigma from the median are the truth's outliers; the
    scatter of datasets with underestimated errors exceeds their reported errors."""
    truth = Table.read(field_dir / f"{FIELD}_synthetic_truth.ecsv", format="ascii.ecsv")
    fi = tables["FIELD_INDEX"]
    img_ds = _image_dataset_rows(tables)
    codes = _text(tables["DATASETS"]["dataset_code"])
    scale = np.array([truth.meta["true_error_scale"][c] for c in codes])
    constant = np.flatnonzero(np.asarray(truth["kind"]) == "constant")
    far = expected = 0
    pulls = {True: [], False: []}
    for star in constant:
        lc = cubes[fi["quadrant"][star]][fi["quadrant_id"][star] - 1]
        ok = (lc[:, C["normalized_mag"]] > 0) & (lc[:, C["qc_flag"]] == 0)
        for d in np.unique(img_ds[ok]):
            sel = ok & (img_ds == d)
            if sel.sum() < 5:
                continue
            mag, err = lc[sel, C["normalized_mag"]], lc[sel, C["normalized_mag_err"]]
            pull = (mag - np.median(mag)) / err
            far += np.count_nonzero(np.abs(pull) > 5)
            pulls[bool(scale[d] > 1.1)].append(np.median(np.abs(pull)))
        expected += truth["n_outliers"][star]
    assert expected > 20 and 0.7 * expected <= far <= 1.3 * expected
    # median |pull| is 0.674 for correct errors
    assert np.median(pulls[False]) < 0.8 < 0.9 < np.median(pulls[True])


def test_microlensing_signal_is_in_the_cube(field_dir, tables, cubes):
    """The brightest injected event: normalised i' photometry follows the truth model."""
    truth = Table.read(field_dir / f"{FIELD}_synthetic_truth.ecsv", format="ascii.ecsv")
    event = truth[truth["kind"] == "microlensing"]
    event = event[np.argmin(event["base_mag_i"])]
    fi = tables["FIELD_INDEX"]
    star = event["field_id"] - 1
    lc = cubes[fi["quadrant"][star]][fi["quadrant_id"][star] - 1]
    ip = _text(tables["IMAGES"]["filter"]) == "ip"
    ok = ip & (lc[:, C["normalized_mag"]] > 0) & (lc[:, C["qc_flag"]] == 0)
    t = lc[ok, 0]
    u = np.hypot(event["u0"], (t - event["t0"]) / event["tE"])
    magnification = (u**2 + 2) / (u * np.sqrt(u**2 + 4))
    model = event["base_mag_i"] - 2.5 * np.log10(event["fs"] * magnification + 1 - event["fs"])
    pull = (lc[ok, C["normalized_mag"]] - model) / lc[ok, C["normalized_mag_err"]]
    # median: the generator adds unflagged outliers and underestimates some errors
    assert ok.sum() > 20 and np.median(pull**2) < 2.0


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_deterministic_and_independent_of_chunking(tmp_path, field_dir):
    again = synthesize_field(
        tmp_path / "again", field=FIELD, n_stars=N_STARS, n_images=N_IMAGES, seed=SEED
    )
    chunked = synthesize_field(
        tmp_path / "chunked",
        field=FIELD,
        n_stars=N_STARS,
        n_images=N_IMAGES,
        seed=SEED,
        chunk_stars=37,
    )
    reference = _files(field_dir)
    assert len(reference) == 6
    assert _files(again) == reference
    assert _files(chunked) == reference


def test_different_seed_differs(tmp_path, cubes):
    other = synthesize_field(
        tmp_path / "other", field=FIELD, n_stars=N_STARS, n_images=N_IMAGES, seed=SEED + 1
    )
    with h5py.File(_quad_path(other, 1), "r") as f:
        cube = f["dataset_photometry"][()]
    assert cube.shape != cubes[1].shape or not np.array_equal(cube, cubes[1])


def test_refuses_existing_field_and_bad_arguments(field_dir, tmp_path):
    before = _files(field_dir)
    with pytest.raises(FileExistsError):
        synthesize_field(field_dir, field=FIELD, n_stars=10, n_images=10)
    assert _files(field_dir) == before
    for bad in ({"n_stars": 0}, {"n_images": 0}, {"seed": -1}, {"chunk_stars": 0}):
        with pytest.raises(InvalidRequestError):
            synthesize_field(tmp_path / "bad", **({"n_stars": 10, "n_images": 10} | bad))


def test_field_centre_and_footprint(tmp_path, tables):
    fi = tables["FIELD_INDEX"]
    ra, dec = np.asarray(fi["ra"]), np.asarray(fi["dec"])
    assert abs(np.median(ra) - 267.835895) < 0.05 and abs(np.median(dec) + 30.060818) < 0.05
    width_ra = (ra.max() - ra.min()) * np.cos(np.radians(np.median(dec))) * 60
    width_dec = (dec.max() - dec.min()) * 60
    assert 25.0 < width_ra < 28.5 and 25.0 < width_dec < 28.5  # arcmin, Sinistro
    other = synthesize_field(tmp_path / "x", field="TESTFIELD", n_stars=50, n_images=15, seed=1)
    with fits.open(other / "TESTFIELD_field_crossmatch.fits") as hdul:
        ra2, dec2 = hdul["FIELD_INDEX"].data["ra"], hdul["FIELD_INDEX"].data["dec"]
        codes = _text(hdul["DATASETS"].data["dataset_code"])
    assert abs(np.median(ra2) - 268.0) < 0.1 and abs(np.median(dec2) + 29.0) < 0.1
    assert all(c.startswith("TESTFIELD_") for c in codes)


# --- writer contracts ---------------------------------------------------------------------


def test_assign_quadrants_midpoint_edge_case():
    # star 3 lies exactly on the RA midpoint (and the Dec minimum): it passes the
    # quadrant-1 and quadrant-2 tests; the later one wins and both counters advance
    ra = np.array([10.0, 12.0, 11.0, 10.5, 11.5])
    dec = np.array([0.0, 2.0, 0.0, 0.5, 0.5])
    quadrant, quadrant_id = assign_quadrants(ra, dec)
    assert quadrant.dtype == np.int64 and quadrant_id.dtype == np.int64
    assert quadrant.tolist() == [1, 3, 2, 1, 2]
    assert quadrant_id.tolist() == [1, 1, 1, 3, 2]  # gap: quadrant 1 has ids 1 and 3


def test_cube_writer_refuses_incomplete_and_existing(tmp_path):
    with pytest.raises(FieldFormatError), QuadrantCubeWriter(tmp_path, "F", 1, 4, 3) as writer:
        writer.write_rows(0, np.ones((2, 3, 17)))
    assert list(tmp_path.iterdir()) == [], "no final file, no temporary left"
    with QuadrantCubeWriter(tmp_path, "F", 1, 4, 3, 7) as writer:
        writer.write_rows(2, np.full((2, 3, 7), 2.0))
        writer.write_rows(0, np.ones((2, 3, 7)))
    assert [p.name for p in tmp_path.iterdir()] == ["F_quad1_photometry.hdf5"]
    with h5py.File(tmp_path / "F_quad1_photometry.hdf5", "r") as f:
        data = f["dataset_photometry"][()]
    assert data.shape == (4, 3, 7) and data[0, 0, 0] == 1.0 and data[3, 2, 6] == 2.0
    with pytest.raises(FileExistsError):
        QuadrantCubeWriter(tmp_path, "F", 1, 4, 3)
    with pytest.raises(RuntimeError), QuadrantCubeWriter(tmp_path, "F", 2, 1, 3) as writer:
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["F_quad1_photometry.hdf5"]


def test_write_field_accepts_old_eras(tmp_path):
    """Era A: 4-column DATASETS, 31-column-style IMAGES, no STAMPS HDU, 7-column cubes."""
    field_index = Table(
        {
            "field_id": np.array([1, 2]),
            "ra": [268.0, 268.1],
            "dec": [-29.0, -29.1],
            "quadrant": np.array([1, 3]),
            "quadrant_id": np.array([1, 1]),
            "gaia_source_id": ["4056350970744342123", "None"],
            "OLD_lsc-doma-1m0-05-fa15_ip_index": np.array([1, 2]),
        }
    )
    datasets = Table(
        {
            "dataset_code": ["OLD_lsc-doma-1m0-05-fa15_ip"],
            "dataset_red_dir": ["/x/OLD_lsc-doma-1m0-05-fa15_ip"],
            "dataset_filter": ["ip"],
            "primary_ref": np.array([1]),
        }
    )
    stars = Table({"field_id": np.array([1, 2]), "ra": [268.0, 268.1], "dec": [-29.0, -29.1]})
    images = Table({"index": np.array([0]), "filename": ["a.fits"], "hjd": [2458000.5]})
    cubes = {1: np.zeros((1, 1, 7)), 3: np.ones((1, 1, 7))}
    write_field(
        tmp_path,
        "OLD",
        field_index=field_index,
        datasets=datasets,
        stars=stars,
        images=images,
        stamps=None,
        cubes=cubes,
    )
    with fits.open(tmp_path / "OLD_field_crossmatch.fits") as hdul:
        assert [h.name for h in hdul] == HDU_NAMES[:5]
        assert hdul["FIELD_INDEX"].columns["gaia_source_id"].format == "19A"
        assert hdul["DATASETS"].columns["dataset_filter"].format == "8A"
        assert hdul["DATASETS"].columns["dataset_code"].format == "27A"
        assert hdul["IMAGES"].columns["filename"].format == "80A"
    assert sorted(p.name for p in tmp_path.glob("OLD_quad*")) == [
        "OLD_quad1_photometry.hdf5",
        "OLD_quad3_photometry.hdf5",
    ]
    with pytest.raises(FileExistsError):
        write_field(
            tmp_path,
            "OLD",
            field_index=field_index,
            datasets=datasets,
            stars=stars,
            images=images,
            stamps=None,
            cubes=cubes,
        )
    with pytest.raises(InvalidRequestError):
        write_field(
            tmp_path / "b",
            "OLD",
            field_index=field_index[["field_id", "ra"]],
            datasets=datasets,
            stars=stars,
            images=images,
            stamps=None,
            cubes={},
        )
