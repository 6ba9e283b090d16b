"""The service's DALI examples and landing page work on the data being served.

Every example of ``/tap/examples`` (parsed from the document, as TOPCAT and pyvo read it)
is run against the served synthetic fields, on DuckDB and on PostgreSQL + pgSphere: each
returns rows, those listing stars carry a ``did`` that the lightcurve service knows, and
the upload example runs with the upload named as TOPCAT names it (``t1``). The landing
page names an example star from the database and every link it shows answers.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx
import pytest
import pyvo
from astropy.table import Table

AGGREGATES = {"per_quadrant"}
"""Examples that count stars rather than list them (no did expected)."""


@pytest.fixture(scope="session")
def tap_server(tap_server_both):
    """Both backends (see tests/conftest.py)."""
    return tap_server_both


def dali_examples(tap_url: str) -> list[dict[str, str]]:
    """id, name and query of each example in the DALI examples document."""
    r = httpx.get(f"{tap_url}/tap/examples", timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xhtml+xml")
    root = ET.fromstring(r.content)
    out = []
    for div in root.iter():
        if div.get("typeof") != "example":
            continue
        props = {el.get("property"): "".join(el.itertext()) for el in div.iter()}
        out.append({"id": div.get("id"), "name": props["name"], "query": props["query"]})
    return out


def check_examples(root: str, targets: Table) -> None:
    """Run every example of the service at ``root``: each returns rows, those listing
    stars a ``did`` the lightcurve service knows; the upload example gets ``targets``
    (ra, dec of stars of the field) as TOPCAT's table 1."""
    examples = dali_examples(root)
    tap = pyvo.dal.TAPService(f"{root}/tap")
    assert [e["QUERY"] for e in tap.examples] == [e["query"] for e in examples]  # pyvo agrees
    assert {e["id"] for e in examples} >= {"cone", "cmd", "variables", "upload_xmatch"}
    assert not re.search(r"7828[45]", "".join(e["query"] for e in examples))
    for ex in examples:
        uploads = {"t1": targets} if "TAP_UPLOAD." in ex["query"] else None
        if uploads:
            assert "TAP_UPLOAD.t1 " in ex["query"], "TOPCAT uploads its table 1 as t1"
        result = tap.run_sync(ex["query"], uploads=uploads, maxrec=1000).to_table()
        assert len(result) > 0, f"example {ex['id']} ({ex['name']}) returned no rows"
        if ex["id"] in AGGREGATES:
            continue
        assert "did" in result.colnames, f"example {ex['id']} has no did column"
        did = str(result["did"][0])
        r = httpx.get(f"{root}/lightcurve", params={"ID": did}, timeout=60)
        assert r.status_code == 200, (ex["id"], did, r.text[:300])
        if uploads:
            assert len(result) >= len(targets)  # each uploaded star finds itself


def test_every_example_returns_rows_and_dids(tap_server, field_positions):
    # what a user uploads: the positions of a few stars of the field
    check_examples(tap_server, Table(field_positions[:5])["ra", "dec"])


def test_example_star_comes_from_the_database(tap_server):
    """The examples name a star (and a field) that the served database holds."""
    examples = {e["id"]: e for e in dali_examples(tap_server)}
    tap = pyvo.dal.TAPService(f"{tap_server}/tap")
    cone = examples["cone"]["query"]
    ra, dec = (float(v) for v in re.findall(r"CIRCLE\('ICRS', ([-\d.]+), ([-\d.]+)", cone)[0])
    nearest = tap.run_sync(
        "SELECT TOP 1 field, field_id FROM rome.field_index WHERE 1 = CONTAINS("
        f"POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra}, {dec}, 0.1/3600))"
    ).to_table()
    assert len(nearest) == 1  # the cone is centred on a star


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def test_landing_page_offers_the_services_and_an_example_star(tap_server):
    r = httpx.get(tap_server + "/", timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for offer in ("TAP", "Lightcurves", "DataLink", "Simple Cone Search", "SAMP bridge"):
        assert offer in page
    assert f"romerea-vo samp --service {tap_server}" in page
    assert "78284" not in page and "78285" not in page
    photometry = re.search(r"<code>rome\.photometry</code></td><td>([^<]*)</td>", page)
    assert photometry and "on demand" in photometry.group(1)
    tables = page.split("<h2>Tables</h2>", 1)[1]
    assert "<td>0</td>" not in tables  # no table shown with 0 rows

    did = re.search(r"DID <code>([^<]+)</code>", page).group(1)
    field, field_id = did.rpartition("?")[2].split("/")
    tap = pyvo.dal.TAPService(f"{tap_server}/tap")
    found = tap.run_sync(
        f"SELECT did FROM rome.field_index WHERE field = '{field}' AND field_id = {field_id}"
    ).to_table()
    assert [str(d) for d in found["did"]] == [did]

    parser = _Links()
    parser.feed(page)
    hrefs = [urljoin(tap_server + "/", h) for h in parser.hrefs]
    kinds = {
        "lightcurve": [h for h in hrefs if "/lightcurve?" in h and "RESPONSEFORMAT" not in h],
        "plot": [h for h in hrefs if "RESPONSEFORMAT=png" in h],
        "datalink": [h for h in hrefs if "/datalink/links?" in h],
        "scs": [h for h in hrefs if "/scs?" in h],
    }
    assert all(len(v) == 1 for v in kinds.values()), kinds
    for href in hrefs:
        assert href.startswith(tap_server), href
        got = httpx.get(href, timeout=60)
        assert got.status_code == 200, (href, got.text[:300])
    assert httpx.get(kinds["plot"][0], timeout=60).content[:8] == b"\x89PNG\r\n\x1a\n"
    links = httpx.get(kinds["datalink"][0], timeout=60).text
    assert "#this" in links and "error_message" in links and "NotFoundFault" not in links
    lc = httpx.get(kinds["lightcurve"][0], timeout=60)
    assert lc.headers["content-type"].startswith("application/x-votable+xml")
