"""Star sources of the SAMP bridge: local (database, field directories) and service."""

from __future__ import annotations

import io
import urllib.request

import astropy.units as u
import httpx
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io.votable import parse_single_table

from romerea_vo.client import is_loopback_host
from romerea_vo.errors import InvalidRequestError, RomeReaError
from romerea_vo.products import open_field
from romerea_vo.samp import sources
from romerea_vo.samp.sources import (
    LocalSource,
    ServiceSource,
    SourceError,
    StarId,
    open_source,
)

F1, F2 = "ROME-FIELD-01", "ROME-FIELD-02"


@pytest.fixture(scope="module")
def local_db(tap_db):
    src = open_source(db=tap_db)
    yield src
    src.close()


@pytest.fixture(scope="module")
def local_dirs(synthetic_field, second_field, authority):
    src = LocalSource.from_field_dirs([synthetic_field, second_field], authority=authority)
    yield src
    src.close()


@pytest.fixture(scope="module")
def service(tap_server):
    src = open_source(service=tap_server)
    yield src
    src.close()


@pytest.fixture(scope="module")
def all_sources(local_db, local_dirs, service):
    return {"db": local_db, "dirs": local_dirs, "service": service}


@pytest.fixture(scope="module")
def catalogue(synthetic_field, second_field):
    """(field, field_id, ra, dec) of both synthetic fields, read from their FITS files."""
    names, ids, ras, decs = [], [], [], []
    for d in (synthetic_field, second_field):
        with open_field(d) as field:
            fi = field.field_index
            n = len(fi)
            names += [field.name] * n
            ids.append(np.asarray(fi["field_id"]))
            ras.append(np.asarray(fi["ra"], float))
            decs.append(np.asarray(fi["dec"], float))
    return np.array(names), np.concatenate(ids), np.concatenate(ras), np.concatenate(decs)


def test_ids_agree_across_sources(all_sources, authority, field_positions):
    pairs = [(F1, 5), (F2, 1), (F1, 800), (F2, 400), (F1, 0), (F1, 801), ("NOPE", 3), (F1, 5)]
    results = {k: s.stars_by_ids(pairs) for k, s in all_sources.items()}
    assert results["db"] == results["dirs"] == results["service"]
    got = results["db"]
    assert [s is None for s in got] == [False] * 4 + [True] * 3 + [False]
    star = got[0]
    assert star == StarId(
        F1,
        5,
        f"{authority}?{F1}/5",
        float(field_positions["ra"][4]),
        float(field_positions["dec"][4]),
    )


def test_dids_agree_across_sources(all_sources, authority):
    dids = [
        f"{authority}?{F1}/7",
        f"{authority}?{F2}/12",
        "junk",
        f"ivo://elsewhere/rome?{F1}/7",
        f"{authority}?{F1}/0",
        f"{authority}?{F1}/99999",
        f"{authority}?NOPE/1",
        "",
    ]
    results = {k: s.stars_by_dids(dids) for k, s in all_sources.items()}
    assert results["db"] == results["dirs"] == results["service"]
    got = results["db"]
    assert [s.field_id for s in got[:2]] == [7, 12]
    assert got[2:] == [None] * 6
    assert got[0].did == dids[0]


def test_positions_match_astropy(all_sources, catalogue):
    names, ids, ras, decs = catalogue
    rng = np.random.default_rng(3)
    pick = rng.choice(len(ids), 60, replace=False)
    # 0.3" and 5" offsets in random directions, and a few impossible positions
    angle = rng.uniform(0, 2 * np.pi, len(pick))
    base = SkyCoord(ras[pick] * u.deg, decs[pick] * u.deg)
    near = base.directional_offset_by(angle * u.rad, 0.3 * u.arcsec)
    far = base.directional_offset_by(angle * u.rad, 5 * u.arcsec)
    ra = np.concatenate([near.ra.deg, far.ra.deg, [np.nan, 10.0, 267.7]])
    dec = np.concatenate([near.dec.deg, far.dec.deg, [-30.0, np.nan, 95.0]])
    ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
    cat = SkyCoord(ras * u.deg, decs * u.deg)
    idx, sep, _ = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg).match_to_catalog_sky(cat)
    truth: list = [None] * len(ra)
    for j, i, s in zip(np.flatnonzero(ok), idx, sep.arcsec, strict=True):
        if s <= 1.0:
            truth[j] = (str(names[i]), int(ids[i]))
    assert sum(t is not None for t in truth[:60]) == 60  # jittered by 0.3": all match
    results = {k: s.match_positions(ra, dec, 1.0) for k, s in all_sources.items()}
    assert results["db"] == results["dirs"] == results["service"]
    got = [None if s is None else (s.field, s.field_id) for s in results["db"]]
    assert got == truth


def test_service_positions_in_batches(service, local_db, catalogue, monkeypatch):
    _, _, ras, decs = catalogue
    ra, dec = ras[::40] + 1e-5, decs[::40]
    monkeypatch.setattr(sources, "_POSITIONS_PER_QUERY", 7)
    assert service.match_positions(ra, dec, 1.0) == local_db.match_positions(ra, dec, 1.0)


def test_nearest(all_sources, field_positions):
    ra, dec = float(field_positions["ra"][9]), float(field_positions["dec"][9])
    for src in all_sources.values():
        star = src.nearest(ra, dec + 0.2 / 3600, 1.0)
        assert (star.field, star.field_id) == (F1, 10)
        assert src.nearest(ra + 1.0, dec, 1.0) is None
    with pytest.raises(InvalidRequestError):
        all_sources["db"].nearest(ra, dec, -1)


def _rows(body: bytes) -> int:
    return len(parse_single_table(io.BytesIO(body)).to_table())


@pytest.mark.parametrize("quality", ["good", "all"])
def test_lightcurves_equal_the_service(all_sources, tap_server, quality):
    stars = all_sources["db"].stars_by_ids([(F1, 3), (F2, 8), (F1, 40)])
    for chosen in (stars[:1], stars):
        r = httpx.get(
            f"{tap_server}/lightcurve",
            params=[("ID", s.did) for s in chosen] + [("QUALITY", quality)],
            timeout=60,
        )
        assert r.status_code == 200, r.text[:300]
        want = _rows(r.content)
        assert want > 0
        for name, src in all_sources.items():
            body = src.lightcurve_votable(chosen, quality=quality)
            assert _rows(body) == want, name
        table = parse_single_table(io.BytesIO(body)).to_table()
        if len(chosen) > 1:
            assert list(dict.fromkeys(np.asarray(table["id"]).astype(str))) == [
                s.did for s in chosen
            ]
        else:
            assert "id" not in table.colnames


def test_lightcurve_url(all_sources, tap_server, local_dirs):
    service = all_sources["service"]
    stars = service.stars_by_ids([(F1, 3), (F1, 4)])
    url = service.lightcurve_url(stars)
    assert url.startswith(f"{tap_server}/lightcurve?ID=")
    with urllib.request.urlopen(url, timeout=60) as resp:
        fetched = resp.read()
    assert _rows(fetched) == _rows(service.lightcurve_votable(stars))
    assert "QUALITY=all" in service.lightcurve_url(stars, quality="all")
    assert local_dirs.lightcurve_url(stars) is None  # no service
    with_service = LocalSource(local_dirs.catalog, service_url=tap_server + "/")
    assert with_service.lightcurve_url(stars) == url
    many = [StarId(F1, i, f"{s.did[:-2]}/{i}", 0.0, 0.0) for i, s in enumerate([stars[0]] * 400)]
    assert service.lightcurve_url(many) is None  # too long for a URL: serve it another way
    assert service.lightcurve_url([]) is None


def test_lightcurve_errors(all_sources, authority):
    ghost = StarId(F1, 99999, f"{authority}?{F1}/99999", 0.0, 0.0)
    for src in all_sources.values():
        with pytest.raises(RomeReaError):
            src.lightcurve_votable([ghost])
        with pytest.raises(InvalidRequestError):
            src.lightcurve_votable([])


def test_service_errors():
    with pytest.raises(InvalidRequestError):
        ServiceSource("ftp://127.0.0.1/")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = ServiceSource(f"http://127.0.0.1:{port}/tap", timeout=5)
    assert src.service_url == f"http://127.0.0.1:{port}"
    with pytest.raises(SourceError, match="cannot reach"):
        src.stars_by_ids([(F1, 1)])


def test_open_source_arguments(tap_db, synthetic_field, tap_server):
    with pytest.raises(InvalidRequestError):
        open_source()
    with pytest.raises(InvalidRequestError):
        open_source(service=tap_server, db=tap_db)
    with pytest.raises(InvalidRequestError):
        open_source(db=tap_db, field_dirs=[synthetic_field])
    with pytest.raises(InvalidRequestError, match="twice"):
        LocalSource.from_field_dirs([synthetic_field, synthetic_field])
    src = open_source(field_dirs=[synthetic_field])
    try:
        assert isinstance(src, LocalSource) and src.field_names == [F1]
        assert src.authority == "ivo://romerea-vo.local/rome"
    finally:
        src.close()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example.org", False),
        ("localhost.example.org", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback_host(host, loopback):
    assert is_loopback_host(host) is loopback
