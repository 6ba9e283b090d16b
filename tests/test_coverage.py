"""Issue 18 item 2: the service's coverage (MOC 2.0 per field and for the service, time and
spectral coverage, the space–time MOC), checked against the catalogue it is made from."""

from __future__ import annotations

import io

import astropy.units as u
import httpx
import numpy as np
import pytest
from astropy.coordinates import Latitude, Longitude, SkyCoord
from astropy.io import fits
from astropy.time import Time
from mocpy import MOC, STMOC
from scipy.spatial import cKDTree

from romerea_vo.store import open_database
from romerea_vo.store.coverage import HJD_TO_MJD, compute_coverage, footprint

FIELD = "ROME-FIELD-01"


def unit_vectors(ra, dec):
    ra, dec = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def contains(moc: MOC, ra, dec) -> np.ndarray:
    return moc.contains_lonlat(Longitude(np.asarray(ra) * u.deg), Latitude(np.asarray(dec) * u.deg))


@pytest.fixture(scope="module", params=["duckdb", "postgresql"])
def database(request):
    target = request.getfixturevalue("tap_db" if request.param == "duckdb" else "pg_tap_db")
    db = open_database(target)
    yield db
    db.close()


def catalogue(db, sql: str) -> list[tuple]:
    session = db.session()
    try:
        return session.fetchall(sql)
    finally:
        session.close()


def test_every_star_is_inside_and_nothing_far_outside(database):
    from romerea_vo.votable.schema import load_table_schema

    coverage = compute_coverage(database)
    index = database.physical_name(load_table_schema("field_index"))
    assert {f.field for f in coverage.fields} == set(database.fields)
    for field in coverage.fields:
        rows = catalogue(database, f"SELECT ra, dec FROM {index} WHERE field = '{field.field}'")
        ra, dec = np.array(rows, dtype=float).T
        assert field.n_stars == len(ra)
        assert contains(field.moc, ra, dec).all()
        assert contains(coverage.moc, ra, dec).all()
        # points around the field: none 4' or more from every star is covered
        rng = np.random.default_rng(1)
        centre_ra, centre_dec = np.mean(ra), np.mean(dec)
        span = max(np.ptp(dec), np.ptp(ra) * np.cos(np.radians(centre_dec))) + 0.2
        probe_dec = centre_dec + rng.uniform(-span, span, 20_000)
        probe_ra = centre_ra + rng.uniform(-span, span, 20_000) / np.cos(np.radians(centre_dec))
        tree = cKDTree(unit_vectors(ra, dec))
        chord, _ = tree.query(unit_vectors(probe_ra, probe_dec))
        far = 2 * np.degrees(np.arcsin(chord / 2)) * 60 > 4.0
        assert far.sum() > 1000  # the probes do reach outside
        assert not contains(field.moc, probe_ra[far], probe_dec[far]).any()
        # and the inside is covered: probes among the stars (within the central half)
        inner = (np.abs(probe_dec - centre_dec) < np.ptp(dec) / 4) & (
            np.abs(probe_ra - centre_ra) < np.ptp(ra) / 4
        )
        assert inner.sum() > 100 and contains(field.moc, probe_ra[inner], probe_dec[inner]).all()


def test_time_and_spectral_coverage_come_from_the_catalogue(database):
    from romerea_vo.votable.schema import load_table_schema

    coverage = compute_coverage(database)
    images = database.physical_name(load_table_schema("images"))
    for field in coverage.fields:
        ((first, last, n),) = catalogue(
            database,
            f"SELECT MIN(hjd), MAX(hjd), COUNT(*) FROM {images} "
            f"WHERE field = '{field.field}' AND hjd > 0",
        )
        assert field.n_epochs == n
        # HJD is of mid-exposure: the coverage starts half an exposure earlier
        assert first - HJD_TO_MJD - 0.01 <= field.t_min <= first - HJD_TO_MJD
        assert last - HJD_TO_MJD <= field.t_max <= last - HJD_TO_MJD + 0.01
    assert coverage.t_min == min(f.t_min for f in coverage.fields)
    # SDSS g' to i' (ObsCore em_min/em_max)
    assert 3.5e-7 < coverage.em_min < 4.5e-7 and 7.5e-7 < coverage.em_max < 9e-7


def test_the_space_time_moc_answers_was_it_observed_then(database):
    from romerea_vo.votable.schema import load_table_schema

    coverage = compute_coverage(database)
    images = database.physical_name(load_table_schema("images"))
    field = coverage.field(FIELD)
    hjd = np.array(
        [r[0] for r in catalogue(database, f"SELECT hjd FROM {images} WHERE field = '{FIELD}' "
                                            "AND hjd > 0 ORDER BY hjd")]
    )  # fmt: skip
    centre = field.moc.barycenter()
    times = Time(hjd[:5] - HJD_TO_MJD, format="mjd", scale="utc")
    observed = coverage.stmoc.contains(
        times, Longitude([centre.ra.deg] * 5 * u.deg), Latitude([centre.dec.deg] * 5 * u.deg)
    )
    assert observed.all()
    gaps = np.diff(hjd)
    widest = int(np.argmax(gaps))
    between = Time([(hjd[widest] + hjd[widest + 1]) / 2 - HJD_TO_MJD], format="mjd")
    lon, lat = Longitude([centre.ra.deg] * u.deg), Latitude([centre.dec.deg] * u.deg)
    assert not coverage.stmoc.contains(between, lon, lat).any()
    away = Longitude([(centre.ra.deg + 30) % 360] * u.deg)
    assert not coverage.stmoc.contains(times[:1], away, lat).any()


def test_footprint_of_a_few_stars():
    assert contains(footprint(np.array([10.0]), np.array([-30.0])), [10.0], [-30.0]).all()
    line = footprint(np.array([10.0, 10.1, 10.2]), np.array([-30.0, -30.0, -30.0]))
    assert contains(line, [10.0, 10.1, 10.2], [-30.0] * 3).all()


# --- over HTTP -------------------------------------------------------------------------


def test_coverage_documents_are_served(tap_server_both, tmp_path):
    summary = httpx.get(f"{tap_server_both}/coverage", timeout=120)
    assert summary.status_code == 200, summary.text
    data = summary.json()
    assert FIELD in {f["field"] for f in data["fields"]}
    assert data["area_deg2"] > 0 and data["t_min_mjd"] < data["t_max_mjd"]
    docs = data["documents"]
    moc = fits_moc(httpx.get(docs["moc_fits"], timeout=120), tmp_path / "moc.fits", MOC)
    field_doc = next(f for f in data["fields"] if f["field"] == FIELD)
    one = fits_moc(httpx.get(field_doc["moc_fits"], timeout=120), tmp_path / "f.fits", MOC)
    assert one.intersection(moc) == one  # a field is inside the service's footprint
    as_json = MOC.from_json(httpx.get(docs["moc_json"], timeout=120).json())
    as_text = MOC.from_string(httpx.get(docs["moc_ascii"], timeout=120).text, format="ascii")
    assert as_json == moc == as_text
    stmoc = fits_moc(httpx.get(docs["stmoc_fits"], timeout=120), tmp_path / "st.fits", STMOC)
    assert not stmoc.empty()
    plot = httpx.get(docs["plot"], timeout=120)
    assert plot.headers["content-type"] == "image/png" and plot.content[:8] == b"\x89PNG\r\n\x1a\n"
    landing = httpx.get(f"{tap_server_both}/", timeout=120).text
    assert "<h2>Coverage</h2>" in landing and "/coverage/moc.png" in landing


def fits_moc(response, path, kind):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fits"
    with fits.open(io.BytesIO(response.content)) as hdus:
        assert hdus[1].header["MOCVERS"] == "2.0"
    path.write_bytes(response.content)
    return kind.from_fits(path)


def test_unknown_coverage_documents_are_dali_404s(tap_server):
    for path in ("/coverage/NO-SUCH-FIELD/moc.fits", "/coverage/moc.exe", f"/coverage/{FIELD}/x"):
        r = httpx.get(f"{tap_server}{path}", timeout=120)
        assert r.status_code == 404, (path, r.text)
        assert 'value="ERROR"' in r.text


def test_a_star_position_is_in_the_served_moc(tap_server, field_positions, tmp_path):
    r = httpx.get(f"{tap_server}/coverage/{FIELD}/moc.fits", timeout=120)
    moc = fits_moc(r, tmp_path / "m.fits", MOC)
    stars = SkyCoord(field_positions["ra"] * u.deg, field_positions["dec"] * u.deg)
    assert moc.contains_skycoords(stars).all()
