"""Older pyDANDIA eras (ROME_FORMATS.md §2), built by hand here with astropy and h5py."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from romerea_vo import lightcurves
from romerea_vo.products import open_field

FIELD = "ROME-FIELD-07"
DATASETS = [
    f"{FIELD}_lsc-doma-1m0-05-fa15_ip",
    f"{FIELD}_cpt-doma-1m0-10-fa16_rp",
    f"{FIELD}_coj-doma-1m0-11-fa12_gp",
]
IMAGES_31 = [
    "index",
    "filename",
    "dataset_code",
    "filter",
    "hjd",
    "datetime",
    "exposure",
    "RA",
    "Dec",
    "moon_ang_separation",
    "moon_fraction",
    "airmass",
    "sigma_x",
    "sigma_y",
    "sky",
    "median_sky",
    "fwhm",
    "corr_xy",
    "nstars",
    "frac_sat_pix",
    "symmetry",
    "use_phot",
    "use_ref",
    "shift_x",
    "shift_y",
    "pscale",
    "pscale_err",
    "var_per_pix_diff",
    "n_unmasked",
    "skew_diff",
    "kurtosis_diff",
]
GAIA_11 = [
    "gaia_ra",
    "gaia_ra_error",
    "gaia_dec",
    "gaia_dec_error",
    "phot_g_mean_flux",
    "phot_g_mean_flux_error",
    "phot_bp_mean_flux",
    "phot_bp_mean_flux_error",
    "phot_rp_mean_flux",
    "phot_rp_mean_flux_error",
]
ERAS = {
    # era: (cube width, proper-motion columns, IMAGES columns, STAMPS columns or None)
    "A": (7, ["proper_motion", "pm_ra", "pm_ra_error", "pm_dec", "pm_dec_error"], 31, None),
    "B": (14, ["pm", "pm_ra", "pm_ra_error", "pm_dec", "pm_dec_error"], 31, 12),
    "C": (15, ["pm", "pm_ra", "pm_ra_error", "pm_dec", "pm_dec_error"], 41, 16),
}


def build_old_field(directory: Path, era: str, n_stars=60, n_images=30, seed=3, append_norm=False):
    """Write a crossmatch file and four cubes laid out as pyDANDIA wrote them in ``era``."""
    width, pm_cols, n_image_cols, stamp_cols = ERAS[era]
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    ra = 268.5 + rng.uniform(-0.2, 0.2, n_stars)
    dec = -28.7 + rng.uniform(-0.2, 0.2, n_stars)
    quadrant = rng.integers(1, 5, n_stars)
    quadrant_id = np.zeros(n_stars, dtype=np.int64)
    for q in range(1, 5):
        quadrant_id[quadrant == q] = np.arange(1, (quadrant == q).sum() + 1)
    gaia = np.array(["None"] * n_stars, dtype="U19")
    gaia[::3] = [str(4056000000000000000 + i) for i in range(len(gaia[::3]))]
    fi = Table(
        [np.arange(1, n_stars + 1), ra, dec, quadrant, quadrant_id, gaia],
        names=["field_id", "ra", "dec", "quadrant", "quadrant_id", "gaia_source_id"],
    )
    for code in DATASETS:
        fi[code + "_index"] = np.where(rng.random(n_stars) < 0.8, np.arange(1, n_stars + 1), 0)
    ds = Table(
        [DATASETS, ["/data/" + c for c in DATASETS], ["ip", "rp", "gp"], [1, 0, 0]],
        names=["dataset_code", "dataset_red_dir", "dataset_filter", "primary_ref"],
    )
    stars = Table([fi["field_id"], ra, dec], names=["field_id", "ra", "dec"])
    for sd in ("lsc_doma", "cpt_doma", "coj_doma"):
        for f in "gri":
            stars[f"cal_{f}_mag_{sd}"] = rng.uniform(15, 20, n_stars)
            stars[f"cal_{f}_magerr_{sd}"] = rng.uniform(0.001, 0.1, n_stars)
    stars["gaia_source_id"] = np.where(gaia == "None", "0.0", gaia)
    for name in GAIA_11:
        stars[name] = rng.normal(size=n_stars)
    for name in [*pm_cols, "parallax", "parallax_error"]:
        stars[name] = rng.normal(size=n_stars)
    if append_norm:  # a 2021 file normalised later: norm_* columns appended at the end
        stars["norm_i_mag_cpt_doma"] = rng.uniform(15, 20, n_stars)
    assert len(stars.colnames) == 39 + append_norm
    image_ds = np.repeat(np.arange(3), n_images // 3)
    n_img = len(image_ds)
    special = {
        "index": np.arange(n_img),
        "filename": [f"lsc1m005-fa15-20190601-{i:04d}-e91.fits" for i in range(n_img)],
        "dataset_code": np.array(DATASETS)[image_ds],
        "filter": np.array(["ip", "rp", "gp"])[image_ds],
        "hjd": 2458600.0 + rng.permutation(n_img) * 0.4,
        "datetime": ["2019-06-01T00:05:00.000"] * n_img,
        "RA": ["17:54:00"] * n_img,
        "Dec": ["-28:42:00"] * n_img,
    }
    images = Table()
    for name in IMAGES_31:
        images[name] = special[name] if name in special else rng.uniform(1, 2, n_img)
    for i in range(n_image_cols - 31):  # era C: warp_matrix_0..8 then qc_flag
        images[f"warp_matrix_{i}" if i < 9 else "qc_flag"] = rng.normal(size=len(image_ds))
    hdus = [fits.PrimaryHDU(), fits.table_to_hdu(fi), fits.table_to_hdu(ds)]
    hdus += [fits.table_to_hdu(stars), fits.table_to_hdu(images)]
    hdus[0].header["NAME"] = "Field crossmatch table"
    hdus[0].header["PRIREFID"] = ""
    hdus[0].header["GAIA_DR"] = "Gaia-EDR3"
    for hdu, name in zip(hdus[1:], ["FIELD_INDEX", "DATASETS", "STARS", "IMAGES"], strict=True):
        hdu.name = name
    if stamp_cols:
        st = Table()
        st["dataset_code"] = [DATASETS[1]] * 16
        if stamp_cols == 16:
            st["filename"] = ["x.fits"] * 16
        st["stamp_id"] = np.arange(16)
        for c in ("xmin", "xmax", "ymin", "ymax"):
            st[c] = np.zeros(16)
        for i in range(9 if stamp_cols == 16 else 6):
            st[f"warp_matrix_{i}" if stamp_cols == 16 else f"transform_{i}"] = np.zeros(16)
        hdus.append(fits.table_to_hdu(st))
        hdus[-1].name = "STAMPS"
    fits.HDUList(hdus).writeto(directory / f"{FIELD}_field_crossmatch.fits")
    cubes = {}
    for q in range(1, 5):
        n = int((quadrant == q).sum())
        cube = rng.uniform(14, 20, (n, len(image_ds), width))
        cube[:, :, 0] = images["hjd"][None, :]
        if width >= 15:
            cube[:, :, 14 if width == 15 else 16] = rng.choice([0, 0, 0, 2, 4], (n, len(image_ds)))
        cube[:, : n_images // 6, 1:] = 0.0  # non-detections
        cube[:, -2:, 1:5] = -9999.99  # failed fits
        with h5py.File(directory / f"{FIELD}_quad{q}_photometry.hdf5", "w") as h:
            h.create_dataset("dataset_photometry", data=cube)
        cubes[q] = cube
    return cubes, images


@pytest.mark.parametrize("era", ["A", "B", "C"])
def test_old_era_reads_and_extracts(tmp_path, era):
    cubes, _ = build_old_field(tmp_path / era, era)
    width = ERAS[era][0]
    with open_field(tmp_path / era) as field:
        assert field.era == era
        assert field.photometry_layout.width == width
        assert field.photometry_layout.science_mag == "calibrated_mag"
        assert ("qc_flag" in field.photometry_layout) == (width == 15)
        assert field.primary_ref_id is None and field.gaia_release == "Gaia-EDR3"
        assert (field.stamps is None) == (era == "A")
        assert {"pm_ra", "pm_dec", "pm"} <= set(field.stars.colnames)
        gaia = field.field_index["gaia_source_id"]
        assert gaia.mask.sum() == len(gaia) - len(gaia[::3])
        assert int(gaia[0]) == 4056000000000000000
        assert field.stars["gaia_source_id"].mask[1]  # '0.0' = unmatched
        assert field.star_by_gaia(4056000000000000001).field_id == 4
        for fid in (1, 2, 30, 60):
            star = field.star(fid)
            raw = cubes[star.quadrant][star.row]
            lc = lightcurves.lightcurve(field, star, quality="good")
            qc_ok = raw[:, 14] == 0 if width == 15 else True
            good = (raw[:, 3] > 0) & (raw[:, 4] > 0) & qc_ok
            order = np.argsort(raw[good, 0])
            np.testing.assert_array_equal(lc["hjd"], raw[good, 0][order])
            np.testing.assert_array_equal(lc["calibrated_mag"], raw[good, 3][order])
            assert "normalized_mag" not in lc.colnames
            everything = lightcurves.read_points(field, star, quality="all")
            attempted = ~((raw[:, 3] == 0) & (raw[:, 4] == 0))
            assert len(everything) == attempted.sum()
            assert (everything.column("calibrated_mag") == -9999.99).sum() == 2


def test_norm_columns_appended_at_the_end_are_found_by_name(tmp_path):
    build_old_field(tmp_path / "f", "C", append_norm=True)
    with open_field(tmp_path / "f") as field:
        assert field.stars.colnames[-1] == "norm_i_mag_cpt_doma"
        assert field.era == "C"  # a 15-column cube stays era C
