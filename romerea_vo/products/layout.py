"""The on-disk layout of pyDANDIA field data products, as named constants.

Everything here restates ``ROME_FORMATS.md`` (the format reference, with sources):
photometry cube column layouts of every era, the qc_flag bits, the sentinels and the
validity rule, and the era-E (pyDANDIA ``main``) table layouts that the writer
reproduces. Readers look columns up *by name* through these objects; nothing else
in the package hard-codes a column number.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

CUBE_DATASET = "dataset_photometry"
"""Name of the single root HDF5 dataset in every quadrant file (§4.1)."""

FAILED_FIT = -9999.99
"""Sentinel written by stage 6 when a star's fit failed in an image (§4.3)."""

NOT_MEASURED = 0.0
"""Value of every cube column where the star was not detected in a dataset (§4.3)."""

MJD_OFFSET = 2400000.5
"""JD - MJD: the points' hjd are (heliocentric) Julian days; VO intervals are MJD."""

QUADRANTS = (1, 2, 3, 4)
FILTERS = ("gp", "rp", "ip")
"""LCO filter names as used in DATASETS, IMAGES and dataset codes."""

BANDPASSES = {"gp": (4.02e-7, 5.52e-7), "rp": (5.52e-7, 6.91e-7), "ip": (6.91e-7, 8.19e-7)}
"""Wavelength edges (m) of the SDSS g', r', i' filters of LCO's Sinistro cameras."""

STARS_FILTER = {"gp": "g", "rp": "r", "ip": "i"}
"""STARS column names drop the ``p`` of the LCO filter name (§3.4)."""

SURVEY_SITE_DOMES = ("lsc_doma", "cpt_doma", "coj_doma")
"""The three ROME survey instruments, in normalisation preference order (§7)."""

ALL_SITE_DOMES = tuple(
    f"{site}_{dome}" for site in ("lsc", "cpt", "coj") for dome in ("doma", "domb", "domc")
)
"""The nine site-domes of era-E STARS columns, in file order (§3.4)."""


class QCFlag(enum.IntFlag):
    """Per-point quality bits of the cube's ``qc_flag`` column (§4.4); 0 = no problem."""

    NO_VALID_MEASUREMENT = 1
    HIGH_IMAGE_RESIDUAL = 2
    LOW_PHOT_SCALE = 4
    BAD_RESAMPLING = 8
    POOR_DIFFERENCE_IMAGE = 16


QC_FLAG_MEANINGS = {
    QCFlag.NO_VALID_MEASUREMENT: "no valid photometric measurement (calibrated_mag <= 0)",
    QCFlag.HIGH_IMAGE_RESIDUAL: "the image's mean photometric residual exceeds 0.15 mag",
    QCFlag.LOW_PHOT_SCALE: "low photometric scale factor (x ref_exptime / exptime < 0.7)",
    QCFlag.BAD_RESAMPLING: "unreliable resampling (a warp-matrix coefficient > 100)",
    QCFlag.POOR_DIFFERENCE_IMAGE: "poor difference image (stamp std > 1500 ADU)",
}
"""What each qc bit means (enum member docstrings are not kept by Python, hence a dict)."""

QC_FLAG_DESCRIPTION = (
    "Quality bits, summed (0 = no problem): "
    + "; ".join(f"{int(b)} = {b.name}: {QC_FLAG_MEANINGS[b]}" for b in QCFlag)
    + "."
)


@dataclass(frozen=True)
class PhotometryLayout:
    """The columns (third axis) of a quadrant photometry cube of one era."""

    era: str
    columns: tuple[str, ...]

    @property
    def width(self) -> int:
        return len(self.columns)

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def index(self, name: str) -> int:
        """Column number of ``name``; KeyError naming the layout if absent."""
        try:
            return self.columns.index(name)
        except ValueError:
            raise KeyError(
                f"photometry column {name!r} does not exist in the {self.width}-column "
                f"(era {self.era}) layout; columns are {', '.join(self.columns)}"
            ) from None

    @property
    def has_qc(self) -> bool:
        return "qc_flag" in self.columns

    @property
    def science_mag(self) -> str:
        """The magnitude column science uses: normalised when the era has it."""
        return "normalized_mag" if "normalized_mag" in self.columns else "calibrated_mag"


_ERA_A = (
    "hjd",
    "instrumental_mag",
    "instrumental_mag_err",
    "calibrated_mag",
    "calibrated_mag_err",
    "corrected_mag",
    "corrected_mag_err",
)
_ERA_C_TAIL = (
    "phot_scale_factor",
    "phot_scale_factor_err",
    "stamp_index",
    "sub_image_sky_bkgd",
    "sub_image_sky_bkgd_err",
    "residual_x",
    "residual_y",
)

PHOTOMETRY_LAYOUTS: dict[int, PhotometryLayout] = {
    7: PhotometryLayout("A", _ERA_A),
    14: PhotometryLayout("B", _ERA_A + _ERA_C_TAIL),
    15: PhotometryLayout("C", _ERA_A + _ERA_C_TAIL + ("qc_flag",)),
    17: PhotometryLayout(
        "D/E", _ERA_A + ("normalized_mag", "normalized_mag_err") + _ERA_C_TAIL + ("qc_flag",)
    ),
}
"""Cube layouts by width (§4.2). Era D and E cubes are identical (17 columns)."""

ERA_E_PHOTOMETRY = PHOTOMETRY_LAYOUTS[17]

MAGNITUDE_COLUMNS = ("instrumental_mag", "calibrated_mag", "corrected_mag", "normalized_mag")


def error_column(mag_column: str) -> str:
    """The uncertainty column paired with a magnitude column."""
    return f"{mag_column}_err"


def valid_measurement(
    mag: np.ndarray, err: np.ndarray, hjd: np.ndarray | None = None
) -> np.ndarray:
    """True where a point is a real measurement (§4.3).

    mag > 0 and err > 0 exclude both the 0.0 "not detected" fill and the -9999.99
    failed-fit sentinel; hjd > 0 (when given) excludes images that produced no
    photometry. ``qc_flag == 0`` alone does not imply a measurement exists.
    """
    ok = (mag > 0.0) & (err > 0.0)  # False for NaN too
    if hjd is not None:
        ok &= hjd > 0.0
    return ok


def good_measurement(
    mag: np.ndarray, err: np.ndarray, qc: np.ndarray | None, hjd: np.ndarray | None = None
) -> np.ndarray:
    """The ``good`` quality cut: qc_flag == 0 and a valid measurement."""
    ok = valid_measurement(mag, err, hjd)
    if qc is not None:
        ok &= qc == 0
    return ok


# --- crossmatch FITS (era E, pyDANDIA main) ---------------------------------------

PRIMARY_NAME = "Field crossmatch table"
HDU_ORDER = ("FIELD_INDEX", "DATASETS", "STARS", "IMAGES", "STAMPS")
"""Extension names in file order after the primary HDU (§3.1)."""

FIELD_INDEX_FIXED = ("field_id", "ra", "dec", "quadrant", "quadrant_id", "gaia_source_id")
"""FIELD_INDEX columns before the per-dataset ``<dataset_code>_index`` columns."""

DATASET_INDEX_SUFFIX = "_index"

DATASETS_COLUMNS_E = (
    "dataset_code",
    "dataset_red_dir",
    "dataset_filter",
    "primary_ref",
    "norm_a0",
    "norm_a1",
    "norm_covar_0",
    "norm_covar_1",
    "norm_covar_2",
    "norm_covar_3",
)

GAIA_COLUMNS_HEAD = (
    "gaia_source_id",
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
    "pm",
)
GAIA_COLUMNS_TAIL = ("parallax", "parallax_error")

PROPER_MOTION_SPELLINGS: tuple[tuple[str, str, str, str], ...] = (
    ("pm_ra", "pm_ra_error", "pm_dec", "pm_dec_error"),  # init_stars_table [DR1-LIKELY]
    ("pmra", "pmra_error", "pmdec", "pmdec_error"),  # create_stars_table (TEST1)
)
"""Proper-motion component spellings in STARS, canonical first (§3.4). Era A's
``proper_motion`` column is the total proper motion (mapped to ``pm``)."""

CANONICAL_PM = PROPER_MOTION_SPELLINGS[0]


def stars_photometry_columns(site_domes: tuple[str, ...] = ALL_SITE_DOMES, normalised: bool = True):
    """STARS reference-magnitude column names in file order (§3.4)."""
    kinds = ("cal", "norm") if normalised else ("cal",)
    cols = []
    for sd in site_domes:
        for f in ("g", "r", "i"):
            for kind in kinds:
                cols += [f"{kind}_{f}_mag_{sd}", f"{kind}_{f}_magerr_{sd}"]
    return tuple(cols)


STARS_COLUMNS_E = (
    ("field_id", "ra", "dec")
    + stars_photometry_columns()
    + GAIA_COLUMNS_HEAD
    + CANONICAL_PM
    + GAIA_COLUMNS_TAIL
)
"""The 129 era-E STARS columns with the DR1-likely ``pm_ra`` spelling."""

IMAGES_COLUMNS_E = (
    ("index", "filename", "dataset_code", "filter", "hjd", "datetime", "exposure", "RA", "Dec")
    + ("moon_ang_separation", "moon_fraction", "airmass")
    + ("sigma_x", "sigma_y", "sky", "median_sky", "fwhm", "corr_xy", "nstars")
    + ("frac_sat_pix", "symmetry", "use_phot", "use_ref")
    + ("shift_x", "shift_y", "pscale", "pscale_err", "var_per_pix_diff", "n_unmasked")
    + ("skew_diff", "kurtosis_diff")
    + tuple(f"warp_matrix_{i}" for i in range(16))
    + ("qc_flag",)
)
"""The 48 era-E IMAGES columns (§3.5)."""

IMAGES_INT_COLUMNS = ("index", "nstars", "use_phot", "use_ref", "qc_flag")
IMAGES_STRING_WIDTHS = {
    "filename": 80,
    "dataset_code": 80,
    "filter": 10,
    "datetime": 25,
    "RA": 15,
    "Dec": 15,
}

STAMPS_COLUMNS = ("dataset_code", "filename", "stamp_id", "xmin", "xmax", "ymin", "ymax") + tuple(
    f"warp_matrix_{i}" for i in range(9)
)
STAMPS_STRING_WIDTHS = {"dataset_code": 80, "filename": 80}


def site_dome(dataset_code: str) -> str:
    """``ROME-FIELD-01_lsc-doma-1m0-05-fa15_ip`` -> ``lsc_doma`` (§3.4)."""
    instrument = dataset_code.split("_")[-2]
    return "_".join(instrument.split("-")[:2])


def dataset_shortcode(dataset_code: str) -> str:
    """``ROME-FIELD-01_lsc-doma-1m0-05-fa15_ip`` -> ``lsc-doma_ip`` (§6)."""
    parts = dataset_code.split("_")
    return "-".join(parts[-2].split("-")[:2]) + "_" + parts[-1]


def crossmatch_filename(field: str) -> str:
    return f"{field}_field_crossmatch.fits"


def quadrant_filename(field: str, quadrant: int) -> str:
    return f"{field}_quad{quadrant}_photometry.hdf5"
