"""The real pyDANDIA TEST1 field products read correctly (skipped when the folder is absent).

Expected values are taken from the files with astropy/h5py directly, not from our reader.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from astropy.io import fits

from romerea_vo import lightcurves, statistics_pass
from romerea_vo.products import QCFlag, open_field
from romerea_vo.products.layout import PHOTOMETRY_LAYOUTS

from .conftest import file_digests

QUADRANT_SHAPES = {1: (239, 40, 17), 2: (245, 40, 17), 3: (242, 40, 17), 4: (274, 40, 17)}


@pytest.fixture(scope="module")
def field(pydandia_test1):
    before = file_digests(pydandia_test1)
    with open_field(pydandia_test1) as f:
        yield f
    assert file_digests(pydandia_test1) == before, "reading modified an input file"


@pytest.fixture(scope="module")
def raw(pydandia_test1):
    with fits.open(pydandia_test1 / "TEST1_field_crossmatch.fits") as hdul:
        tables = {h.name: h.data.copy() for h in hdul[1:]}
    cubes = {}
    for q in QUADRANT_SHAPES:
        with h5py.File(pydandia_test1 / f"TEST1_quad{q}_photometry.hdf5", "r") as h:
            cubes[q] = h["dataset_photometry"][()]
    return tables, cubes


def test_every_table_reads(field, raw):
    tables, _ = raw
    assert field.name == "TEST1"
    assert field.n_stars == 1000 and field.n_images == 40
    assert field.era == "E"
    assert field.photometry_layout is PHOTOMETRY_LAYOUTS[17]
    assert field.dataset_codes == ("TEST1_lsc-doma-1m0-05-fa15_ip", "TEST1_cpt-doma-1m0-10-fa16_ip")
    assert field.primary_dataset == "TEST1_lsc-doma-1m0-05-fa15_ip"  # PRIREFID is blank
    assert field.primary_ref_id is None and field.gaia_release is None
    assert len(field.stars.colnames) == 129 and len(field.stars) == 1000
    # TEST1 spells proper motions pmra/pmdec; the reader maps them to pm_ra/pm_dec.
    assert {"pm_ra", "pm_ra_error", "pm_dec", "pm_dec_error"} <= set(field.stars.colnames)
    assert "pmra" not in field.stars.colnames
    np.testing.assert_array_equal(field.stars["pm_ra"], tables["STARS"]["pmra"])
    np.testing.assert_array_equal(
        field.stars["cal_i_mag_lsc_doma"], tables["STARS"]["cal_i_mag_lsc_doma"]
    )
    assert len(field.images.colnames) == 48
    np.testing.assert_array_equal(field.images["hjd"], tables["IMAGES"]["hjd"])
    assert list(field.images["filename"][:2]) == [
        "lsc1m005-fa15-20190601-0001-e91.fits",
        "lsc1m005-fa15-20190601-0002-e91.fits",
    ]
    assert len(field.stamps) == 640 and len(field.stamps.colnames) == 16
    assert field.normalizations == {}
    np.testing.assert_array_equal(field.field_index["ra"], tables["FIELD_INDEX"]["ra"])
    np.testing.assert_array_equal(field.datasets["norm_a1"], tables["DATASETS"]["norm_a1"])


def test_truncated_gaia_ids_are_null(field, raw):
    tables, _ = raw
    # TEST1's ids are truncated float reprs ("4.056350970744342e+"): they identify nothing.
    assert str(tables["FIELD_INDEX"]["gaia_source_id"][0]).endswith("e+")
    assert field.field_index["gaia_source_id"].mask.all()
    assert field.stars["gaia_source_id"].mask.all()


@pytest.mark.parametrize("quadrant", [1, 2, 3, 4])
def test_every_quadrant_and_star_matches_raw_rows(field, raw, quadrant):
    tables, cubes = raw
    fi = tables["FIELD_INDEX"]
    assert field.cube(quadrant).shape == QUADRANT_SHAPES[quadrant]
    members = fi["field_id"][fi["quadrant"] == quadrant]
    points = lightcurves.read_points_many(field, list(members), quality="all")
    time_order = np.argsort(tables["IMAGES"]["hjd"], kind="stable")
    for fid, p in zip(members, points, strict=True):
        row = fi["quadrant_id"][fid - 1] - 1
        assert p.star.row == row and p.star.quadrant == quadrant
        # every image is a valid measurement in TEST1, so "all" keeps every raw row
        np.testing.assert_array_equal(p.image_index, time_order)
        np.testing.assert_array_equal(p.data, cubes[quadrant][row][time_order])


def test_lightcurve_table_values_and_units(field, raw):
    tables, cubes = raw
    star = field.star(78)
    table = lightcurves.lightcurve(field, star, filters="ip", quality="good")
    raw_rows = cubes[star.quadrant][star.row]
    order = np.argsort(raw_rows[:, 0], kind="stable")
    np.testing.assert_array_equal(table["hjd"], raw_rows[order, 0])
    np.testing.assert_array_equal(table["normalized_mag"], raw_rows[order, 7])
    np.testing.assert_array_equal(table["calibrated_mag_err"], raw_rows[order, 4])
    np.testing.assert_array_equal(table["qc_flag"], raw_rows[order, 16].astype(int))
    np.testing.assert_array_equal(table["airmass"], tables["IMAGES"]["airmass"][order])
    np.testing.assert_array_equal(
        table["image"], np.char.strip(tables["IMAGES"]["filename"][order])
    )
    assert str(table["hjd"].unit) == "d"
    assert str(table["normalized_mag"].unit) == "mag"
    assert str(table["exposure"].unit) == "s"
    assert table.meta["field_id"] == 78 and table.meta["quality"] == "good"
    assert set(table["filter"]) == {"ip"}


def test_single_and_batch_paths_agree(field):
    ids = [1000, 3, 500, 3, 250]
    batch = lightcurves.read_points_many(field, ids, filters="ip")
    for fid, p in zip(ids, batch, strict=True):
        single = lightcurves.read_points(field, fid, filters="ip")
        assert p.star.field_id == fid
        np.testing.assert_array_equal(p.data, single.data)


def test_lookups(field, raw):
    tables, _ = raw
    fi = tables["FIELD_INDEX"]
    for fid in (1, 17, 999):
        s = field.star(fid)
        assert (s.quadrant, s.quadrant_id) == (fi["quadrant"][fid - 1], fi["quadrant_id"][fid - 1])
        near = field.nearest_star(s.ra, s.dec + 0.2 / 3600, radius=1.0)
        assert near.field_id == fid and near.separation_arcsec == pytest.approx(0.2, rel=1e-6)
    cpt = "TEST1_cpt-doma-1m0-10-fa16_ip"
    col = fi[cpt + "_index"]
    target = int(np.flatnonzero(col == 7)[0]) + 1
    assert field.star_by_dataset_index(cpt, 7).field_id == target
    # cone: compare with a brute-force haversine over every star
    s = field.star(17)
    ra, dec = np.radians(fi["ra"]), np.radians(fi["dec"])
    ra0, dec0 = np.radians(s.ra), np.radians(s.dec)
    h = np.sin((dec - dec0) / 2) ** 2 + np.cos(dec) * np.cos(dec0) * np.sin((ra - ra0) / 2) ** 2
    sep_arcsec = np.degrees(2 * np.arcsin(np.sqrt(h))) * 3600
    expected = set(fi["field_id"][sep_arcsec <= 90])
    got = field.cone(s.ra, s.dec, 90)
    assert {r.field_id for r in got} == expected and len(expected) > 3
    assert [r.separation_arcsec for r in got] == sorted(r.separation_arcsec for r in got)


def test_statistics_match_numpy(field, raw):
    _, cubes = raw
    stats = statistics_pass.lightcurve_statistics(field)
    assert len(stats) == 1000  # one filter (ip), every star has good points
    for fid in (1, 444, 1000):
        s = field.star(fid)
        rows = cubes[s.quadrant][s.row]
        good = (rows[:, 16] == 0) & (rows[:, 7] > 0) & (rows[:, 8] > 0) & (rows[:, 0] > 0)
        mag = rows[good, 7]
        row = stats[(stats["field_id"] == fid) & (stats["filter"] == "ip")][0]
        assert row["n_good"] == good.sum()
        assert row["mean_mag"] == pytest.approx(mag.mean(), rel=1e-12)
        assert row["median_mag"] == pytest.approx(np.median(mag), rel=1e-12)
        assert row["std_mag"] == pytest.approx(mag.std(ddof=1), rel=1e-9)
        assert row["min_mag"] == mag.min() and row["max_mag"] == mag.max()
        assert row["time_span"] == pytest.approx(rows[good, 0].max() - rows[good, 0].min())


def test_qc_bits_are_an_intflag():
    assert QCFlag(0) == 0
    flags = QCFlag(1 | 8)
    assert QCFlag.NO_VALID_MEASUREMENT in flags and QCFlag.BAD_RESAMPLING in flags
    assert QCFlag.HIGH_IMAGE_RESIDUAL not in flags
    assert [int(b) for b in QCFlag] == [1, 2, 4, 8, 16]


def test_gaia_source_id_rule():
    """1-20 decimal digits with blanks around and > 0; everything else is NULL."""
    from romerea_vo.products.reader import parse_gaia_source_ids

    raw = ["4056350970744342528", " 12 ", "0", "0.0", "", "None", "4.056350970744342e+",
           "-5", "1 2", "٣", "00042"]  # fmt: skip
    col = parse_gaia_source_ids(raw)
    assert col.mask.tolist() == [False, False, True, True, True, True, True,
                                 True, True, False, False]  # fmt: skip
    assert col[0] == 4056350970744342528 and col[1] == 12 and col[-1] == 42 and col[-2] == 3
