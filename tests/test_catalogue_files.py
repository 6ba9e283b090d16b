"""romerea_vo.catalogue_files: reading catalogue files, finding and converting positions."""

from __future__ import annotations

import gzip
import hashlib
import shutil

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import MaskedColumn, Table

from romerea_vo.catalogue_files import (
    CatalogueError,
    find_position_columns,
    position_arrays,
    read_catalogue,
)
from romerea_vo.errors import InvalidRequestError, RomeReaError

RA = np.array([267.81, 267.92, 268.03])
DEC = np.array([-30.05, -29.95, -30.12])


def sample() -> Table:
    t = Table(
        {
            "id": np.array([1, 2, 3], dtype=np.int64),
            "RAJ2000": RA,
            "DEJ2000": DEC,
            "mag": np.array([15.5, 16.25, 17.0], dtype=np.float32),
            "name": ["a", "b", "c"],
        }
    )
    t["RAJ2000"].unit = u.deg
    t["DEJ2000"].unit = u.deg
    t["mag"].unit = u.mag
    t["mag"].meta["ucd"] = "phot.mag;em.opt.V"
    t["mag"].description = "V magnitude"
    return t


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path):
    t = sample()
    out = {}
    for name, fmt in [
        ("c.vot", "votable"),
        ("c.fits", "fits"),
        ("c.csv", "ascii.csv"),
        ("c.ecsv", "ascii.ecsv"),
    ]:
        t.write(tmp_path / name, format=fmt)
        out[name] = tmp_path / name
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Parquet as astropy writes it (YAML metadata), without needing pandas to write it
    yaml = "\n".join(
        [
            "datatype:",
            "- {name: id, datatype: int64}",
            "- {name: RAJ2000, unit: deg, datatype: float64}",
            "- {name: DEJ2000, unit: deg, datatype: float64}",
            "- name: mag",
            "  unit: mag",
            "  datatype: float32",
            "  description: V magnitude",
            "  meta: !!omap",
            "  - {ucd: phot.mag;em.opt.V}",
            "- {name: name, datatype: string}",
        ]
    )
    arrow = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "RAJ2000": RA,
            "DEJ2000": DEC,
            "mag": pa.array([15.5, 16.25, None], pa.float32()),
            "name": ["a", "b", None],
        }
    ).replace_schema_metadata({"table_meta_yaml": yaml})
    pq.write_table(arrow, tmp_path / "c.parquet")
    out["c.parquet"] = tmp_path / "c.parquet"
    with (tmp_path / "c.fits").open("rb") as f, gzip.open(tmp_path / "c.fits.gz", "wb") as g:
        g.write(f.read())
    out["c.fits.gz"] = tmp_path / "c.fits.gz"
    return out


@pytest.mark.parametrize("name", ["c.vot", "c.fits", "c.fits.gz", "c.csv", "c.ecsv", "c.parquet"])
def test_each_format(files, name):
    path = files[name]
    before = digest(path)
    t = read_catalogue(path)
    assert t.colnames == ["id", "RAJ2000", "DEJ2000", "mag", "name"]
    np.testing.assert_allclose(t["RAJ2000"], RA)
    assert list(t["id"]) == [1, 2, 3]
    if name != "c.csv":  # CSV has no metadata
        assert t["mag"].unit == u.mag
        assert t["mag"].meta["ucd"] == "phot.mag;em.opt.V"
        assert t["mag"].description == "V magnitude"
    if name == "c.parquet":
        assert t["mag"].mask.tolist() == [False, False, True]
        assert t["name"].mask.tolist() == [False, False, True]
    assert digest(path) == before


@pytest.mark.parametrize("name", ["c.vot", "c.fits", "c.ecsv", "c.parquet", "c.csv"])
def test_sniffed_without_extension_and_forced_format(files, tmp_path, name):
    plain = tmp_path / f"noext_{name.split('.')[1]}"
    shutil.copy(files[name], plain)
    assert read_catalogue(plain).colnames[:3] == ["id", "RAJ2000", "DEJ2000"]
    # an explicit format beats a misleading extension
    odd = tmp_path / f"odd_{name.split('.')[1]}.dat"
    shutil.copy(files[name], odd)
    fmt = {"vot": "VOTable", "fits": "fits", "ecsv": "ecsv", "parquet": "pq", "csv": "csv"}
    assert len(read_catalogue(odd, fmt[name.split(".")[1]])) == 3


def test_fits_first_table_hdu_and_stilts_keywords(tmp_path):
    cols = [
        fits.Column(name="ra_icrs", format="D", unit="deg", array=RA),
        fits.Column(name="de_icrs", format="D", unit="deg", array=DEC),
        fits.Column(name="g", format="E", unit="mag", array=np.ones(3)),
    ]
    table = fits.BinTableHDU.from_columns(cols)
    table.header["TUCD3"] = "phot.mag;em.opt.V"
    table.header["TCOMM3"] = "G magnitude"
    other = fits.BinTableHDU.from_columns([fits.Column(name="x", format="J", array=[1])])
    path = tmp_path / "multi.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((2, 2))), table, other]).writeto(path)
    t = read_catalogue(path)
    assert t.colnames == ["ra_icrs", "de_icrs", "g"]
    assert t["g"].meta["ucd"] == "phot.mag;em.opt.V"
    assert t["g"].description == "G magnitude"
    assert find_position_columns(t) == ("ra_icrs", "de_icrs")


def test_read_errors(tmp_path, files):
    cases = {}
    cases["missing"] = (tmp_path / "nope.csv", r"nope\.csv: no such file")
    cases["dir"] = (tmp_path, "is a directory, not a catalogue file")
    (tmp_path / "empty.vot").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.vot", r"empty\.vot is empty, not a catalogue")
    (tmp_path / "bad.fits").write_bytes(b"not fits at all" * 10)
    cases["fits"] = (tmp_path / "bad.fits", r"bad\.fits is not a readable FITS file")
    (tmp_path / "bad.vot").write_bytes(b"<VOTABLE><RESOURCE><TABLE><FIELD")
    cases["vot"] = (tmp_path / "bad.vot", r"bad\.vot is not a readable VOTable file")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 truncated")
    cases["pq"] = (tmp_path / "bad.parquet", r"bad\.parquet is not a readable Parquet file")
    (tmp_path / "page").write_bytes(b"<!DOCTYPE html><html><body>Not found</body></html>")
    cases["html"] = (tmp_path / "page", "cannot tell the format of .*page")
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 4)
    cases["binary"] = (tmp_path / "blob", "cannot tell the format of .*blob.*give the format")
    fits.PrimaryHDU(np.zeros((2, 2))).writeto(tmp_path / "image.fits")
    cases["image"] = (tmp_path / "image.fits", "FITS without a table HDU")
    (tmp_path / "err.vot").write_text(
        '<?xml version="1.0"?><VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">'
        '<RESOURCE type="results"><INFO name="QUERY_STATUS" value="ERROR">bad query</INFO>'
        "</RESOURCE></VOTABLE>"
    )
    cases["error document"] = (tmp_path / "err.vot", "VOTable error document: bad query")
    for what, (path, message) in cases.items():
        with pytest.raises(CatalogueError, match=message):
            read_catalogue(path)
        assert issubclass(CatalogueError, InvalidRequestError), what
    with pytest.raises(CatalogueError, match="unknown catalogue format 'xls'; use one of votable"):
        read_catalogue(files["c.csv"], "xls")
    with pytest.raises(RomeReaError, match="not a readable CSV"):
        read_catalogue(files["c.fits"], "csv")


def test_find_position_columns_by_ucd_then_name():
    t = Table(
        {
            "ra": [1.0],
            "dec": [2.0],
            "alpha": [3.0],
            "delta": [4.0],
            "ra_other": [5.0],
        }
    )
    assert find_position_columns(t) == ("ra", "dec")
    t["ra_other"].meta["ucd"] = "pos.eq.ra"
    assert find_position_columns(t)[0] == "ra_other"  # any UCD beats a name
    t["alpha"].meta["ucd"] = "pos.eq.ra;meta.main"
    t["delta"].meta["ucd"] = "POS.EQ.DEC;META.MAIN"
    assert find_position_columns(t) == ("alpha", "delta")  # meta.main beats plain UCDs
    ucd1 = Table({"x": [1.0], "y": [2.0], "RA": [0.0]})
    ucd1["x"].meta["ucd"] = "POS_EQ_RA_MAIN"
    ucd1["y"].meta["ucd"] = "POS_EQ_DEC_MAIN"
    assert find_position_columns(ucd1) == ("x", "y")
    for names in (("RAJ2000", "DEJ2000"), ("RA_ICRS", "DE_ICRS"), ("ra_deg", "dec_deg"),
                  ("_RAJ2000", "_DEJ2000"), ("ALPHA_J2000", "DELTA_J2000")):  # fmt: skip
        assert find_position_columns(Table({n: [0.0] for n in names})) == names


def test_find_position_columns_given_and_errors():
    t = Table({"ident": [1], "lon": [10.0], "lat": [20.0], "mag": [1.0]})
    t["mag"].meta["ucd"] = "phot.mag"
    with pytest.raises(
        CatalogueError,
        match=r"no RA and no Dec column found .*its columns: ident, lon, lat, mag \(phot.mag\)",
    ):
        find_position_columns(t)
    assert find_position_columns(t, "lon", "lat") == ("lon", "lat")
    assert find_position_columns(t, "LON", "Lat") == ("lon", "lat")  # case-insensitive
    with pytest.raises(CatalogueError, match=r"no column 'ra' for RA .*its columns: ident, lon"):
        find_position_columns(t, "ra", "lat")
    with pytest.raises(CatalogueError, match="no Dec column found"):
        find_position_columns(t, ra_col="lon")
    with pytest.raises(CatalogueError, match="cannot be both RA and Dec"):
        find_position_columns(t, "lon", "lon")


def test_position_arrays_units():
    c = SkyCoord(RA * u.deg, DEC * u.deg)
    t = Table(
        {
            "ra_h": c.ra.hourangle,
            "dec_rad": c.dec.rad,
            "ra_hour": c.ra.hourangle,
            "dec_arcsec": c.dec.arcsec,
            "ra_plain": c.ra.deg,
            "dec_mas": c.dec.to_value(u.mas),
        }
    )
    t["ra_h"].unit = u.hourangle
    t["dec_rad"].unit = u.rad
    t["ra_hour"].unit = u.hour  # VizieR writes RA hours as a time unit
    t["dec_arcsec"].unit = u.arcsec
    t["dec_mas"].unit = u.mas
    for ra_name, dec_name in [("ra_h", "dec_rad"), ("ra_hour", "dec_arcsec"),
                              ("ra_plain", "dec_mas")]:  # fmt: skip
        ra, dec, bad = position_arrays(t, ra_name, dec_name)
        assert ra.dtype == np.float64 and bad.dtype == bool
        np.testing.assert_allclose(ra, RA, rtol=0, atol=1e-9)
        np.testing.assert_allclose(dec, DEC, rtol=0, atol=1e-9)
        assert not bad.any()
    t["mag"] = [1.0, 2.0, 3.0]
    t["mag"].unit = u.mag
    with pytest.raises(CatalogueError, match="column mag has unit mag, not an angle"):
        position_arrays(t, "mag", "dec_rad")


def test_position_arrays_text_and_bad_rows():
    c = SkyCoord(RA * u.deg, DEC * u.deg)
    sexa = Table(
        {
            "RA": list(c.ra.to_string(unit=u.hourangle, sep=":", precision=4)) + ["n/a", ""],
            "Dec": list(c.dec.to_string(unit=u.deg, sep=" ", precision=3, alwayssign=True))
            + ["-30 00 00", "+10:00:00"],
        }
    )
    ra, dec, bad = position_arrays(sexa, "RA", "Dec")
    assert bad.tolist() == [False, False, False, True, True]
    got = SkyCoord(ra[:3] * u.deg, dec[:3] * u.deg)
    assert got.separation(c).arcsec.max() < 0.01
    assert np.isnan(ra[3:]).all() and np.isnan(dec[3:]).all()
    hms = Table({"ra": ["17h51m22.5s"], "dec": ["-30d03m12s"]})
    ra, dec, _ = position_arrays(hms, "ra", "dec")
    assert ra[0] == pytest.approx(267.84375) and dec[0] == pytest.approx(-30.0533333)
    # decimal degrees that came through as text (a CSV column with a placeholder)
    text = Table({"ra": ["267.5", "x", "-10", "400", "10"], "dec": ["-30", "1", "2", "3", "95"]})
    ra, dec, bad = position_arrays(text, "ra", "dec")
    assert bad.tolist() == [False, True, False, True, True]
    assert ra[0] == 267.5 and ra[2] == 350.0  # RA wrapped into [0, 360)
    masked = Table(
        {
            "ra": MaskedColumn([1.0, 2.0, np.nan, 4.0], mask=[False, True, False, False]),
            "dec": MaskedColumn([1.0, 2.0, 3.0, -90.5], mask=[False, False, False, False]),
        }
    )
    ra, dec, bad = position_arrays(masked, "ra", "dec")
    assert bad.tolist() == [False, True, True, True]
    assert ra[0] == 1.0 and np.isnan(ra[1:]).all() and np.isnan(dec[1:]).all()
