"""Issue 16, items 6-7: ids in one canonical spelling, a DALI document for any unexpected
exception, and links that no other request's Host header decides."""

from __future__ import annotations

import logging
import re
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import StreamingResponse
from starlette.routing import Route

from romerea_vo.ids import MAX_FIELD_ID, parse_did, parse_field_id
from romerea_vo.service.responses import CatchAllErrors

from .conftest import LiveServer, _test_limits

FIELD = "ROME-FIELD-01"

# --- item 7: ids ---------------------------------------------------------------------

NON_CANONICAL = [
    "²",  # a Unicode digit int() refuses: was a 500
    "\u0661\u0660\u0660",  # Arabic-Indic 100: was taken as star 100
    "\uff11\uff10\uff10",  # fullwidth 100: likewise
    "9" * 5000,  # beyond int()'s digit limit: was a 500
    str(MAX_FIELD_ID + 1),
    "0100",
    "+100",
    "0",
]


@pytest.mark.parametrize("text", NON_CANONICAL)
def test_field_ids_have_one_ascii_spelling(text):
    assert parse_field_id(text) is None
    with pytest.raises(Exception, match="malformed ID") as info:
        parse_did(f"ivo://x/rome?{FIELD}/{text}", "ivo://x/rome")
    assert len(str(info.value)) < 400  # a 5,000-digit id is not echoed whole


def test_canonical_field_ids_parse():
    assert parse_field_id("100") == 100
    assert parse_field_id(str(MAX_FIELD_ID)) == MAX_FIELD_ID
    assert parse_did("ivo://x/rome?F/7", "ivo://x/rome") == ("F", 7)


@pytest.mark.parametrize("text", ["²", "\u0661\u0660\u0660", "9" * 5000])
def test_endpoints_refuse_non_canonical_ids_with_a_dali_error(tap_server_both, authority, text):
    did = f"{authority}?{FIELD}/{text}"
    for path in ("/lightcurve", "/datalink/links"):
        r = httpx.get(f"{tap_server_both}{path}", params={"ID": did}, timeout=120)
        body = r.text
        if path == "/datalink/links":  # DataLink reports a bad ID in its row, with 200
            assert r.status_code in (200, 400), (path, r.status_code, body[:500])
            assert "UsageFault" in body and "malformed ID" in body, body[:500]
        else:
            assert r.status_code == 400, (path, r.status_code, body[:500])
            assert 'value="ERROR"' in body and "malformed ID" in body, body[:500]
        assert "Traceback" not in body
    page = httpx.get(f"{tap_server_both}/star/{FIELD}/{text}", timeout=120)
    assert page.status_code == 404 and "not a star number" in page.text
    # and the service goes on serving
    ok = httpx.get(f"{tap_server_both}/star/{FIELD}/1", timeout=120)
    assert ok.status_code == 200


# --- item 7: a catch-all for what no endpoint handled ------------------------------------


def _buggy_app() -> Starlette:
    async def broken(request):
        raise KeyError("no such thing")

    async def broken_mid_stream(request):
        async def chunks():
            yield b"first part"
            raise RuntimeError("failed half-way")

        return StreamingResponse(chunks(), media_type="text/plain")

    routes = [Route("/broken", broken), Route("/stream", broken_mid_stream)]
    return Starlette(routes=routes, middleware=[Middleware(CatchAllErrors)])


@pytest.fixture(scope="module")
def buggy_server():
    live = LiveServer(_buggy_app())
    yield live.url
    live.stop()


def test_an_unexpected_exception_is_a_dali_500_and_one_log_line(buggy_server, caplog):
    caplog.set_level(logging.INFO, logger="romerea_vo.service")
    r = httpx.get(f"{buggy_server}/broken", timeout=120)
    assert r.status_code == 500
    assert 'value="ERROR"' in r.text and "internal error: KeyError" in r.text
    assert "Traceback" not in r.text and "File " not in r.text
    records = [rec for rec in caplog.records if rec.name == "romerea_vo.service"]
    assert len(records) == 1 and records[0].exc_info is None
    assert "KeyError" in records[0].getMessage()
    assert re.search(r"test_abuse_input\.py:\d+", records[0].getMessage())


def test_an_exception_mid_stream_ends_the_response_incomplete(buggy_server, caplog):
    caplog.set_level(logging.INFO, logger="romerea_vo.service")
    url = f"{buggy_server}/stream"
    # not a body that looks complete
    with pytest.raises(httpx.HTTPError), httpx.stream("GET", url, timeout=120) as r:
        assert r.status_code == 200  # what could be sent was sent
        r.read()
    assert any("failed half-way" in rec.getMessage() for rec in caplog.records)
    assert httpx.get(f"{buggy_server}/broken", timeout=120).status_code == 500  # still serving


def test_the_real_service_refuses_an_absurd_id_with_a_dali_document(tap_server):
    r = httpx.post(f"{tap_server}/lightcurve", data={"ID": "x" * 100_000}, timeout=120)
    assert r.status_code == 400 and 'value="ERROR"' in r.text
    assert len(r.content) < 10_000  # the id is not echoed whole


# --- item 6: links from the right URL ---------------------------------------------------


def _run_job(url: str, query: str, host: str) -> str:
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query}
    r = httpx.post(f"{url}/tap/async", data=data, headers={"Host": host}, timeout=120)
    assert r.status_code in (200, 303), r.text
    job = f"{url}/tap/async/{r.headers['location'].rstrip('/').rsplit('/', 1)[1]}"
    return job


def _wait_done(job: str) -> str:
    deadline = time.monotonic() + 300
    phase = "PENDING"
    while time.monotonic() < deadline:
        phase = httpx.get(f"{job}/phase", timeout=120).text.strip()
        if phase in ("COMPLETED", "ERROR", "ABORTED"):
            return phase
        httpx.get(job, params={"WAIT": "5", "PHASE": phase}, timeout=120)
    return phase


def test_an_async_job_links_to_the_url_it_was_created_at(tap_server):
    """A Host header sent by someone else, before the job runs, does not change where
    the job's DataLink descriptor points."""
    own = tap_server.removeprefix("http://")
    job = _run_job(tap_server, "SELECT TOP 3 did, field_id FROM rome.field_index", own)
    # another client names another host while the job waits to be run
    query = "SELECT TOP 1 did FROM rome.field_index"
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query}
    attacker = {"Host": "attacker.example"}
    httpx.post(f"{tap_server}/tap/sync", data=data, headers=attacker, timeout=120)
    httpx.post(f"{job}/phase", data={"PHASE": "RUN"}, timeout=120)
    assert _wait_done(job) == "COMPLETED"
    result = httpx.get(f"{job}/results/result", timeout=120).text
    httpx.delete(job, timeout=120)
    assert "attacker.example" not in result
    assert f"http://{own}/datalink/links" in result


@pytest.fixture(scope="module")
def published_server(tap_db, tmp_path_factory):
    """A service configured with a public URL and a list of allowed hosts."""
    from romerea_vo.service.app import ServiceConfig, create_app

    config = ServiceConfig(
        db_path=tap_db,
        work_dir=tmp_path_factory.mktemp("published"),
        limits=_test_limits(),
        public_url="https://vo.example.org/rome",
        allowed_hosts=("127.0.0.1", "vo.example.org"),
    )
    live = LiveServer(create_app(config))
    yield live.url
    live.stop()


def test_a_public_url_is_what_documents_link_to(published_server):
    caps = httpx.get(f"{published_server}/tap/capabilities", timeout=120).text
    assert "https://vo.example.org/rome/tap" in caps
    assert "https://vo.example.org/rome/datalink/links" in caps
    assert "127.0.0.1" not in caps
    data = {"REQUEST": "doQuery", "LANG": "ADQL",
            "QUERY": "SELECT TOP 2 did FROM rome.field_index"}  # fmt: skip
    result = httpx.post(f"{published_server}/tap/sync", data=data, timeout=120).text
    assert "https://vo.example.org/rome/datalink/links" in result


def test_hosts_outside_the_allowed_list_are_refused(published_server):
    r = httpx.get(
        f"{published_server}/tap/capabilities", headers={"Host": "attacker.example"}, timeout=120
    )
    assert r.status_code == 400
    assert "attacker.example" not in r.text
    assert r.headers["content-type"].startswith("application/x-votable+xml")
    assert 'name="QUERY_STATUS" value="ERROR"' in r.text and "allowed_hosts" in r.text
    port = published_server.rsplit(":", 1)[1]
    ok = httpx.get(
        f"{published_server}/tap/availability", headers={"Host": f"vo.example.org:{port}"},
        timeout=120,
    )  # fmt: skip
    assert ok.status_code == 200


def test_trusted_hosts_match_names_ports_and_patterns():
    from romerea_vo.service.responses import TrustedHosts

    hosts = TrustedHosts(None, ["vo.example.org", "*.rome.example", "::1", "127.0.0.1"])
    for ok in ("vo.example.org", "VO.Example.org:8443", "a.rome.example", "x.y.rome.example:80",
               "127.0.0.1:8000", "[::1]:8000"):  # fmt: skip
        assert hosts.allows(ok), ok
    for refused in (None, "", "example.org", "vo.example.org.evil", "rome.example.evil",
                    "evilrome.example", "[::2]:80", "attacker.example"):  # fmt: skip
        assert not hosts.allows(refused), refused
