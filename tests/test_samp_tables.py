"""Tables for the SAMP bridge: URL policy, fetch-once cache, rows resolved to stars."""

from __future__ import annotations

import io
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table

from romerea_vo.errors import RomeReaError
from romerea_vo.samp.sources import LocalSource, ServiceSource
from romerea_vo.samp.tables import (
    RefusedURL,
    TableCache,
    TableFetchError,
    TableFormatError,
    TableTooLarge,
    UnresolvableTable,
    UrlPolicy,
    parse_table,
    resolve_rows,
)
from romerea_vo.store.database import Database

F1 = "ROME-FIELD-01"


def votable_bytes(table: Table) -> bytes:
    out = io.BytesIO()
    table.write(out, format="votable")
    return out.getvalue()


SMALL = Table({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5]})


class TinyServer:
    """http.server on loopback serving fixed documents by path; counts requests."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]):
        self.routes = routes
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                status, headers, body = outer.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers and not headers.get("X-No-Length"):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tiny():
    fits_buf = io.BytesIO()
    SMALL.write(fits_buf, format="fits")
    csv_buf = io.StringIO()
    SMALL.write(csv_buf, format="ascii.csv")
    big = votable_bytes(Table({"x": np.arange(20000.0)}))
    routes = {
        "/t.vot": (200, {"Content-Type": "application/x-votable+xml"}, votable_bytes(SMALL)),
        "/t.fits": (200, {"Content-Type": "application/fits"}, fits_buf.getvalue()),
        "/t.csv": (200, {"Content-Type": "text/plain"}, csv_buf.getvalue().encode()),
        "/page": (200, {"Content-Type": "text/html"}, b"<!DOCTYPE html><html>hi</html>"),
        "/big": (200, {}, big),
        "/big-nolength": (200, {"X-No-Length": "1"}, big),
        "/error": (
            200,
            {},
            b'<?xml version="1.0"?><VOTABLE version="1.4"><RESOURCE type="results">'
            b'<INFO name="QUERY_STATUS" value="ERROR">no such table</INFO></RESOURCE></VOTABLE>',
        ),
        "/away": (302, {"Location": "http://example.org/t.vot"}, b""),
        "/hop": (302, {"Location": "/t.vot"}, b""),
    }
    server = TinyServer(routes)
    yield server
    server.close()


# --------------------------------------------------------------------------- policy


def test_policy_accepts_loopback_and_trusted(tmp_path):
    policy = UrlPolicy(["https://rome.example.org/vo"], [tmp_path])
    for url in [
        "http://127.0.0.1:8000/x.vot",
        "http://127.2.3.4/x",
        "http://localhost:9/t",
        "https://[::1]:8443/t",
        "https://rome.example.org/vo/lightcurve?ID=x",
        "https://rome.example.org:443/vo/tap/sync?QUERY=x",
        "https://rome.example.org/vo",
    ]:
        policy.check(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.org/x.vot",
        "https://rome.example.org/vox/t",  # not under the trusted path
        "https://rome.example.org.evil.net/vo/t",
        "http://rome.example.org/vo/t",  # scheme differs
        "https://rome.example.org:8443/vo/t",  # port differs
        "http://127.0.0.1@example.org/t",
        "http://127.0.0.1:80\\@example.org/t",
        "http://10.0.0.1/t",
        "http://0.0.0.0/t",
        "http://2130706433/t",
        "ftp://127.0.0.1/t.vot",
        "data:text/plain,abc",
        "gopher://localhost/",
        "file://otherhost/tmp/x.vot",
        "/tmp/x.vot",
        "",
        "http://127.0.0.1:99999/t",
    ],
)
def test_policy_refuses(url, tmp_path):
    policy = UrlPolicy(["https://rome.example.org/vo"], [tmp_path])
    with pytest.raises(RefusedURL, match="refusing to fetch"):
        policy.check(url)


def test_policy_files(tmp_path):
    allowed = tmp_path / "data"
    allowed.mkdir()
    outside = tmp_path / "secret.vot"
    outside.write_bytes(votable_bytes(SMALL))
    inside = allowed / "t.vot"
    inside.write_bytes(votable_bytes(SMALL))
    (allowed / "link.vot").symlink_to(outside)
    (allowed / "dirlink").symlink_to(tmp_path)
    policy = UrlPolicy(["http://127.0.0.1:8000"], [allowed])
    policy.check(inside.as_uri())
    policy.check(f"file:{inside}")  # Java's File.toURL spelling
    policy.check(f"file://localhost{inside}")
    assert policy.local_path(inside.as_uri()) == inside.resolve()
    for url in [
        outside.as_uri(),
        f"file://{allowed}/../secret.vot",
        f"file://{allowed}/%2e%2e/secret.vot",
        (allowed / "link.vot").as_uri(),
        f"file://{allowed}/dirlink/secret.vot",
        "file:///etc/passwd",
        "file:relative/t.vot",
    ]:
        with pytest.raises(RefusedURL) as info:
            policy.check(url)
        message = str(info.value)
        assert "only loopback, this bridge's service (http://127.0.0.1:8000)" in message
        assert f"file URLs under {allowed.resolve()} are fetched" in message
    with pytest.raises(RefusedURL, match="no file URLs"):
        UrlPolicy().check(inside.as_uri())


# --------------------------------------------------------------------------- cache


def test_cache_fetches_once(tiny):
    cache = TableCache(UrlPolicy())
    url = tiny.url + "/t.vot"
    threads = [threading.Thread(target=cache.get, args=(url,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    table = cache.get(url)
    assert list(table["a"]) == [1, 2, 3]
    assert tiny.hits["/t.vot"] == 1 and cache.fetches == 1
    assert url in cache


def test_cache_formats_by_sniffing(tiny):
    cache = TableCache(UrlPolicy())
    for path in ("/t.fits", "/t.csv"):
        table = cache.get(tiny.url + path)
        assert list(table["a"]) == [1, 2, 3]
        np.testing.assert_allclose(table["b"], [0.5, 1.5, 2.5])
    assert len(cache.get(tiny.url + "/hop")) == 3  # a redirect within loopback


def test_cache_size_limit(tiny):
    cache = TableCache(UrlPolicy(), max_bytes=50_000)
    for path in ("/big", "/big-nolength"):
        with pytest.raises(TableTooLarge, match="larger than"):
            cache.get(tiny.url + path)
    assert len(TableCache(UrlPolicy()).get(tiny.url + "/big")) == 20000


def test_cache_errors(tiny, tmp_path):
    cache = TableCache(UrlPolicy(allowed_dirs=[tmp_path]))
    with pytest.raises(TableFormatError, match="HTML page"):
        cache.get(tiny.url + "/page")
    with pytest.raises(TableFetchError, match="HTTP 404"):
        cache.get(tiny.url + "/missing.vot")
    with pytest.raises(TableFormatError, match="error document: no such table"):
        cache.get(tiny.url + "/error")
    with pytest.raises(RefusedURL, match=r"example\.org"):
        cache.get(tiny.url + "/away")  # a redirect off loopback
    with pytest.raises(RefusedURL):
        cache.get("http://example.org/t.vot")
    with pytest.raises(TableFetchError, match="no such file"):
        cache.get((tmp_path / "nothing.vot").as_uri())
    (tmp_path / "junk.vot").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(TableFormatError):
        cache.get((tmp_path / "junk.vot").as_uri())
    assert isinstance(TableTooLarge("x"), RomeReaError)


def test_cache_files_and_lru(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"t{i}.vot"
        p.write_bytes(votable_bytes(Table({"i": [i]})))
        paths.append(p.as_uri())
    cache = TableCache(UrlPolicy(allowed_dirs=[tmp_path]), max_tables=2)
    assert cache.get(paths[0])["i"][0] == 0
    cache.get(paths[1])
    cache.get(paths[0])  # most recent now
    cache.get(paths[2])  # evicts paths[1]
    assert paths[0] in cache and paths[2] in cache and paths[1] not in cache
    assert cache.fetches == 3
    cache.remember("http://elsewhere/broadcast.vot", SMALL)
    assert cache.get("http://elsewhere/broadcast.vot") is SMALL  # known, so not refused
    with pytest.raises(TableTooLarge):
        TableCache(UrlPolicy(allowed_dirs=[tmp_path]), max_bytes=10).get(paths[0])


def test_parse_table_gzip():
    import gzip

    table = parse_table(gzip.compress(votable_bytes(SMALL)), "t.vot.gz")
    assert list(table["a"]) == [1, 2, 3]
    with pytest.raises(TableTooLarge):
        parse_table(gzip.compress(b" " * 100_000), "bomb.gz", limit=1000)
    with pytest.raises(TableFormatError, match="empty"):
        parse_table(b"  \n", "empty.vot")


# --------------------------------------------------------------------------- resolve_rows


@pytest.fixture(scope="module")
def local(tap_db):
    src = LocalSource.from_db(tap_db)
    yield src
    src.close()


@pytest.fixture(scope="module")
def service(tap_server):
    return ServiceSource(tap_server)


def test_resolve_tap_result_from_our_service(tap_server, local, service):
    query = (
        "SELECT TOP 20 field, field_id, ra, dec, did FROM rome.field_index "
        f"WHERE field = '{F1}' ORDER BY field_id"
    )
    url = f"{tap_server}/tap/sync?" + urllib.parse.urlencode(
        {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query}
    )
    cache = TableCache(UrlPolicy([tap_server]))
    table = cache.get(url)
    for src in (local, service):
        res = resolve_rows(table, [0, 3, "5"], src)
        assert res.method == "did column"
        assert [s.field_id for s in res.stars] == [1, 4, 6]
        assert (res.matched, res.unmatched) == (3, 0)
        assert res.summary() == "3 of 3 rows matched ROME stars (did column)"
        assert res.stars[1].did == str(table["did"][3])


def test_resolve_lightcurve_table_id_column(local):
    stars = local.stars_by_ids([(F1, 2), (F1, 9)])
    table = parse_table(local.lightcurve_votable(stars), "lc.vot")
    res = resolve_rows(table, [0, len(table) - 1], local)
    assert res.method == "id column (DIDs)"
    assert res.stars == stars
    assert res.found == stars


def test_resolve_field_and_field_id(local, service):
    table = Table({"Field": [F1, F1, "ROME-FIELD-02", "NOPE"], "field_id": [10, 11, 3, 1]})
    for src in (local, service):
        res = resolve_rows(table, [0, 1, 2, 3], src)
        assert res.method == "Field/field_id columns"
        assert [s and (s.field, s.field_id) for s in res.stars] == [
            (F1, 10),
            (F1, 11),
            ("ROME-FIELD-02", 3),
            None,
        ]
        assert res.summary() == "3 of 4 rows matched ROME stars (Field/field_id columns)"


def offsets(field_positions, ids, arcsec: float):
    rows = np.asarray(ids) - 1
    base = SkyCoord(field_positions["ra"][rows] * u.deg, field_positions["dec"][rows] * u.deg)
    return base.directional_offset_by(45 * u.deg, arcsec * u.arcsec)


@pytest.mark.parametrize("which", ["local", "service"])
def test_resolve_foreign_positions(which, local, service, field_positions):
    src = local if which == "local" else service
    ids = [5, 50, 500, 700]
    near = offsets(field_positions, ids, 0.3)
    far = offsets(field_positions, ids, 5.0)
    table = Table(
        {
            "name": ["a", "b", "c", "d"],
            "RAJ2000": np.concatenate([near.ra.deg[:2], far.ra.deg[2:]]),
            "DEJ2000": np.concatenate([near.dec.deg[:2], far.dec.deg[2:]]),
        }
    )
    table["RAJ2000"].unit = u.deg
    res = resolve_rows(table, [0, 1, 2, 3], src)
    assert res.method == "positions (RAJ2000, DEJ2000) within 1.0 arcsec"
    assert [s and s.field_id for s in res.stars] == [5, 50, None, None]
    assert res.summary() == (
        "2 of 4 rows matched ROME stars (positions (RAJ2000, DEJ2000) within 1.0 arcsec)"
    )
    all_near = Table({"ra": near.ra.deg, "dec": near.dec.deg})
    assert resolve_rows(all_near, range(4), src).matched == 4
    all_far = Table({"ra": far.ra.deg, "dec": far.dec.deg})
    res = resolve_rows(all_far, range(4), src)
    assert (res.matched, res.unmatched) == (0, 4)
    assert resolve_rows(all_far, range(4), src, radius_arcsec=6).matched == 4


def test_resolve_by_ucd_units_and_text(local, field_positions):
    near = offsets(field_positions, [7, 8], 0.2)
    # UCD beats names; units in hours and radians; meta.main preferred
    table = Table(
        {
            "ra": [0.0, 0.0],
            "dec": [0.0, 0.0],
            "alpha_h": near.ra.hourangle,
            "delta_rad": near.dec.rad,
            "ra_other": near.ra.deg + 1,
        }
    )
    table["alpha_h"].unit = u.hourangle
    table["alpha_h"].meta["ucd"] = "pos.eq.ra;meta.main"
    table["delta_rad"].unit = u.rad
    table["delta_rad"].meta["ucd"] = "POS.EQ.DEC;META.MAIN"
    table["ra_other"].meta["ucd"] = "pos.eq.ra"
    res = resolve_rows(table, [0, 1], local)
    assert res.method.startswith("positions (alpha_h, delta_rad)")
    assert [s.field_id for s in res.stars] == [7, 8]
    # sexagesimal text (VizieR style), a masked row
    text = Table(
        {
            "RA": near.ra.to_string(unit=u.hourangle, sep=" ", precision=4),
            "Dec": near.dec.to_string(unit=u.deg, sep=":", precision=3, alwayssign=True),
        },
        masked=True,
    )
    text["RA"].mask = [False, True]
    res = resolve_rows(text, [0, 1], local)
    assert [s and s.field_id for s in res.stars] == [7, None]
    bad = Table({"ra": [1.0], "dec": [2.0]})
    bad["ra"].unit = u.mag
    with pytest.raises(UnresolvableTable, match="not an angle"):
        resolve_rows(bad, [0], local)


def test_foreign_dids_fall_back_to_positions(local, field_positions):
    near = offsets(field_positions, [12], 0.1)
    table = Table({"did": ["ivo://other.org/cat?x/1"], "ra": near.ra.deg, "dec": near.dec.deg})
    table["did"].meta["ucd"] = "meta.ref.ivoid"
    res = resolve_rows(table, [0], local)
    assert res.method.startswith("positions (ra, dec)")
    assert res.stars[0].field_id == 12
    table.remove_columns(["ra", "dec"])
    res = resolve_rows(table, [0], local)
    assert (res.method, res.matched, res.unmatched) == ("did column", 0, 1)
    assert res.summary() == "0 of 1 row matched ROME stars (did column)"


def test_resolve_errors(local):
    table = Table({"name": ["x"], "mag": [12.0]})
    table["mag"].meta["ucd"] = "phot.mag"
    with pytest.raises(UnresolvableTable, match=r"its columns: name, mag \(phot.mag\)"):
        resolve_rows(table, [0], local)
    ok = Table({"field": [F1], "field_id": [1]})
    with pytest.raises(UnresolvableTable, match="out of range: the table has 1 rows"):
        resolve_rows(ok, [0, 1], local)
    with pytest.raises(UnresolvableTable, match="out of range"):
        resolve_rows(ok, [-1], local)
    with pytest.raises(UnresolvableTable, match="not a row number"):
        resolve_rows(ok, ["x"], local)
    assert resolve_rows(ok, [], local).summary() == (
        "0 of 0 rows matched ROME stars (field/field_id columns)"
    )
    assert isinstance(UnresolvableTable("x"), RomeReaError)


def test_authority_consistent(tap_db, local):
    db = Database(tap_db)
    try:
        assert local.authority == db.authority
    finally:
        db.close()


def test_policy_accepts_str_dirs(tmp_path):
    assert isinstance(UrlPolicy(allowed_dirs=[str(tmp_path)]).allowed_dirs[0], Path)
