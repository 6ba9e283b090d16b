"""Pages for people (star pages, the cone-search form) in headless Chromium.

Chromium is driven through its command line only (``--dump-dom``, ``--screenshot``),
so the pages are tested as a browser without a script sees them. The tests that need
it skip when Debian's ``chromium`` is not installed.
"""

from __future__ import annotations

import html
import io
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from astropy.io.votable import parse_single_table
from matplotlib.image import imread

from romerea_vo.plotting import BAND_COLOURS

FIELD = "ROME-FIELD-01"
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (apt install chromium)"
)


class Dom(HTMLParser):
    """Elements of a page: every tag's attributes, and the text of elements with an id."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text_by_id: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attrs))
        if tag not in ("img", "input", "meta", "br", "link"):
            self._open.append((tag, attrs.get("id")))
            if attrs.get("id"):
                self.text_by_id.setdefault(attrs["id"], "")

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data):
        for _, ident in self._open:
            if ident:
                self.text_by_id[ident] += data

    def find(self, tag: str, **attrs) -> list[dict[str, str]]:
        return [
            a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())
        ]


def chromium(url: str, tmp_path, *args: str, attempts: int = 3) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url`` with ``args`` (a fresh profile each attempt:
    start-up on a busy machine may fail or hang, so it is retried)."""
    last = None
    for _ in range(attempts):
        profile = tempfile.mkdtemp(dir=tmp_path, prefix="chromium-")
        cmd = [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
            url,
        ]
        if os.geteuid() == 0:
            cmd.insert(1, "--no-sandbox")
        try:
            last = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired as exc:
            last = exc
            continue
        finally:
            shutil.rmtree(profile, ignore_errors=True)
        if last.returncode == 0:
            return last
    pytest.fail(f"chromium failed {attempts} times on {url}: {last!r}"[:3000])


def dump_dom(url: str, tmp_path) -> Dom:
    out = chromium(url, tmp_path, "--dump-dom")
    assert "<html" in out.stdout, out.stderr[-2000:]
    return Dom(out.stdout)


def screenshot(url: str, tmp_path, size=(1280, 2400)) -> np.ndarray:
    path = tmp_path / "shot.png"
    path.unlink(missing_ok=True)
    chromium(url, tmp_path, f"--screenshot={path}", f"--window-size={size[0]},{size[1]}")
    assert path.is_file()
    pixels = imread(path)  # floats in [0, 1]
    return np.round(pixels[..., :3] * 255).astype(np.uint8)


def did_of(authority: str, field_id: int, field: str = FIELD) -> str:
    return f"{authority}?{field}/{field_id}"


def assert_png(url: str) -> np.ndarray:
    r = httpx.get(url, timeout=120)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"] == "image/png"
    assert r.content.startswith(b"\x89PNG\r\n\x1a\n")
    img = imread(io.BytesIO(r.content), format="png")
    assert img.shape[0] > 100 and img.shape[1] > 100
    return img


# --- star pages ---


@needs_chromium
def test_star_page_renders_from_its_did(tap_server, authority, tmp_path):
    did = did_of(authority, 3)
    # the resolver: Chromium follows its redirect to /star/<field>/<field_id>
    dom = dump_dom(str(httpx.URL(f"{tap_server}/star", params={"ID": did})), tmp_path)
    assert dom.text_by_id["did"].strip() == did
    assert [h for h in dom.find("h1")]
    assert "links" in dom.text_by_id and "downloads" in dom.text_by_id
    text = dom.text_by_id["links"]
    assert "#this" in text and "#preview" in text and "#auxiliary" in text
    # the plot: the <img> Chromium was given is the lightcurve service's PNG
    (img,) = dom.find("img", id="plot")
    query = parse_qs(urlsplit(img["src"]).query)
    assert query["ID"] == [did] and query["RESPONSEFORMAT"] == ["png"]
    assert_png(img["src"])


def test_star_page_content_and_every_link_works(tap_server, authority):
    did = did_of(authority, 7)
    r = httpx.get(f"{tap_server}/star/{FIELD}/7", timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    dom = Dom(r.text)
    assert dom.text_by_id["did"].strip() == did
    assert not dom.find("script")  # plain HTML: readable without JavaScript
    for heading in ("rome.field_index", "rome.stars", "rome.lightcurve_stats"):
        assert heading in r.text
    gaia = httpx.get(
        f"{tap_server}/tap/sync",
        params={
            "REQUEST": "doQuery",
            "LANG": "ADQL",
            "QUERY": f"SELECT gaia_source_id FROM rome.field_index WHERE field = '{FIELD}' "
            "AND field_id = 7",
        },
        timeout=60,
    )
    value = parse_single_table(io.BytesIO(gaia.content)).array["gaia_source_id"][0]
    if not np.ma.is_masked(value):
        assert str(value) in r.text
    hrefs = {a["href"] for a in dom.find("a") if a.get("href")}
    downloads = [h for h in hrefs if "RESPONSEFORMAT=" in h and "png" not in h]
    assert {parse_qs(urlsplit(h).query)["RESPONSEFORMAT"][0] for h in downloads} == {
        "votable",
        "csv",
        "parquet",
        "fits",
    }
    assert any("/tap/sync?" in h for h in hrefs) and any("/datalink/links?" in h for h in hrefs)
    for href in sorted(hrefs):
        resp = httpx.get(href, timeout=120, follow_redirects=True)
        assert resp.status_code == 200, (href, resp.text[:400])
        assert resp.content


def test_datalink_lists_the_star_page(tap_server, authority):
    did = did_of(authority, 5)
    r = httpx.get(f"{tap_server}/datalink/links", params={"ID": did}, timeout=60)
    table = parse_single_table(io.BytesIO(r.content)).to_table()
    (doc,) = table[table["local_semantics"] == "star-page"]
    assert doc["semantics"] == "#auxiliary" and doc["content_type"] == "text/html"
    assert str(doc["access_url"]) == f"{tap_server}/star/{FIELD}/5"
    page = httpx.get(str(doc["access_url"]), timeout=120)
    assert page.status_code == 200 and Dom(page.text).text_by_id["did"].strip() == did


@needs_chromium
def test_star_page_screenshot_shows_the_plot(tap_server, tmp_path):
    shot = screenshot(f"{tap_server}/star/{FIELD}/3", tmp_path)
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50  # not a blank page
    # the plot's band colours appear only when Chromium loaded and drew the <img>
    colours = [tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in BAND_COLOURS.values()]
    found = [
        int(np.sum(np.all(np.abs(shot.astype(int) - np.array(c)) <= 8, axis=-1))) for c in colours
    ]
    assert max(found) > 200, found


@needs_chromium
@pytest.mark.parametrize(
    "path, message",
    [
        (f"/star/{FIELD}/99999999", "has no star 99999999"),
        ("/star/NO-SUCH-FIELD/1", "there is no field"),
        (f"/star/{FIELD}/abc", "is not a star number"),
    ],
)
def test_unknown_star_is_a_404_page(tap_server, tmp_path, path, message):
    r = httpx.get(f"{tap_server}{path}", timeout=60)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    dom = dump_dom(f"{tap_server}{path}", tmp_path)
    assert dom.find("h1") and message in dom.text_by_id["error"]
    assert dom.find("form", id="cone-form")


@pytest.mark.parametrize("did", ["", "junk", "ivo://elsewhere.org/x?ROME-FIELD-01/1"])
def test_bad_did_is_a_400_page(tap_server, did):
    r = httpx.get(f"{tap_server}/star", params={"ID": did}, timeout=60)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    assert 'id="error"' in r.text


# --- the cone-search form ---


def scs_dids(tap_server, ra, dec, sr) -> list[str]:
    r = httpx.get(f"{tap_server}/scs", params={"RA": ra, "DEC": dec, "SR": sr}, timeout=60)
    return [str(d) for d in parse_single_table(io.BytesIO(r.content)).to_table()["did"]]


@needs_chromium
def test_cone_form_returns_star_rows(tap_server, field_positions, tmp_path):
    landing = dump_dom(f"{tap_server}/", tmp_path)
    (form,) = landing.find("form", id="cone-form")
    assert form["method"] == "get" and form["action"] == f"{tap_server}/search"
    names = {i["name"] for i in landing.find("input")}
    assert {"RA", "DEC", "RADIUS"} <= names
    ra, dec = float(field_positions["ra"][0]), float(field_positions["dec"][0])
    # submitting a GET form is loading its URL
    url = str(httpx.URL(form["action"], params={"RA": ra, "DEC": dec, "RADIUS": "0.5"}))
    dom = dump_dom(url, tmp_path)
    stars = [a["href"] for a in dom.find("a") if a.get("class") == "star"]
    expected = scs_dids(tap_server, ra, dec, 0.5 / 60)
    assert stars and len(stars) == len(expected)
    assert stars[0] == f"{tap_server}/star/{FIELD}/{int(field_positions['field_id'][0])}"
    assert [h.rsplit("/star/", 1)[1] for h in stars] == [d.rsplit("?", 1)[1] for d in expected]
    assert not dom.find("script")
    # the form shows what was asked
    assert {i["name"]: i["value"] for i in dom.find("input")}["RADIUS"] == "0.5"


def test_cone_search_overflow_and_maxrec(tap_server, field_positions):
    ra, dec = float(field_positions["ra"][0]), float(field_positions["dec"][0])
    r = httpx.get(f"{tap_server}/search", params={"RA": ra, "DEC": dec, "RADIUS": 30, "MAXREC": 3})
    assert r.status_code == 200
    dom = Dom(r.text)
    assert len([a for a in dom.find("a") if a.get("class") == "star"]) == 3
    assert "overflow" in dom.text_by_id


def test_cone_search_takes_sexagesimal_positions(tap_server, field_positions):
    from astropy.coordinates import Angle

    ra, dec = float(field_positions["ra"][0]), float(field_positions["dec"][0])
    sexa = {
        "RA": Angle(ra, "deg").to_string(unit="hourangle", sep=":", precision=4),
        "DEC": Angle(dec, "deg").to_string(unit="deg", sep="dms", precision=3),
    }

    def stars(params):
        r = httpx.get(f"{tap_server}/search", params={**params, "RADIUS": 0.5}, timeout=60)
        assert r.status_code == 200, r.text
        return [a["href"] for a in Dom(r.text).find("a") if a.get("class") == "star"]

    assert stars(sexa) == stars({"RA": ra, "DEC": dec}) and stars(sexa)


@needs_chromium
def test_cone_form_bad_input_is_a_readable_page(tap_server, tmp_path):
    url = str(httpx.URL(f"{tap_server}/search", params={"RA": "<b>x</b>", "DEC": "-29"}))
    dom = dump_dom(url, tmp_path)
    assert "RA = '<b>x</b>' is not a valid angle" in dom.text_by_id["error"]
    assert not dom.find("b")  # reflected input is escaped, not markup


@pytest.mark.parametrize(
    "params, needle",
    [
        ({}, "RA is missing"),
        ({"RA": "10", "DEC": "95"}, "DEC=95 is out of range"),
        (
            {"RA": "25:00:00", "DEC": "0"},
            "RA = '25:00:00' is not a valid angle (An invalid value for 'hours'",
        ),
        ({"RA": "10", "DEC": "12x"}, "DEC = '12x' is not a valid angle"),
        ({"RA": "10", "DEC": "-29", "RADIUS": "nan"}, "RADIUS=nan is out of range"),
        ({"RA": "10", "DEC": "-29", "RADIUS": "-1"}, "RADIUS=-1 is out of range"),
        ({"RA": "10", "DEC": "-29", "MAXREC": "x"}, "MAXREC must be"),
        ({"RA": '"><script>alert(1)</script>', "DEC": "0"}, "is not a valid angle"),
    ],
)
def test_cone_search_errors(tap_server, params, needle):
    r = httpx.get(f"{tap_server}/search", params=params, timeout=60)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    assert needle in html.unescape(r.text)
    assert "<script>" not in r.text


# --- PostgreSQL + pgSphere ---


def test_pages_on_postgresql(pg_tap_server, field_positions):
    """The same pages over PostgreSQL (no browser needed: the HTML is the backend's only
    difference)."""
    field_id = int(field_positions["field_id"][0])
    ra, dec = float(field_positions["ra"][0]), float(field_positions["dec"][0])
    r = httpx.get(f"{pg_tap_server}/search", params={"RA": ra, "DEC": dec, "RADIUS": 0.5})
    assert r.status_code == 200
    stars = [a["href"] for a in Dom(r.text).find("a") if a.get("class") == "star"]
    expected = scs_dids(pg_tap_server, ra, dec, 0.5 / 60)
    assert [h.rsplit("/star/", 1)[1] for h in stars] == [d.rsplit("?", 1)[1] for d in expected]
    page = httpx.get(stars[0], timeout=120)
    assert page.status_code == 200 and "rome.lightcurve_stats" in page.text
    assert Dom(page.text).text_by_id["did"].strip() == expected[0]
    assert f"/star/{FIELD}/{field_id}" in stars[0]
    (img,) = Dom(page.text).find("img", id="plot")
    assert_png(img["src"])
    missing = httpx.get(f"{pg_tap_server}/star/{FIELD}/99999999", timeout=60)
    assert missing.status_code == 404 and 'id="error"' in missing.text
