"""The TAP service end to end: a real uvicorn server on loopback, real pyvo/STILTS clients."""

from __future__ import annotations

import concurrent.futures
import io
import json
import shutil
import socket
import subprocess
import time

import httpx
import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io.votable import parse_single_table
from astropy.table import Table

from romerea_vo.products import open_field

pyvo = pytest.importorskip("pyvo")
STILTS = shutil.which("stilts")
needs_stilts = pytest.mark.skipif(
    STILTS is None, reason="STILTS not installed (apt install stilts)"
)


@pytest.fixture(scope="session")
def tap_server(tap_server_both):
    """Every test here runs against the DuckDB and the PostgreSQL + pgSphere backends."""
    return tap_server_both


@pytest.fixture(scope="session")
def tap_work(tap_work_both):
    return tap_work_both


@pytest.fixture(scope="module")
def tap(tap_server):
    return pyvo.dal.TAPService(f"{tap_server}/tap")


def sync(url, query, **params):
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, **params}
    return httpx.post(f"{url}/tap/sync", data=data, timeout=60)


def error_message(response) -> str:
    """The text of a DALI error document (asserting that it is one)."""
    text = response.text
    assert 'name="QUERY_STATUS"' in text and 'value="ERROR"' in text, text[:500]
    return text


# --- metadata ---


def test_capabilities_and_tables_via_pyvo(tap):
    caps = tap.capabilities
    std_ids = {str(c.standardid) for c in caps}
    assert "ivo://ivoa.net/std/TAP" in std_ids
    assert "ivo://ivoa.net/std/VOSI#tables-1.1" in std_ids
    tables = tap.tables
    names = set(tables.keys())
    assert {"rome.field_index", "rome.stars", "rome.lightcurve_stats"} <= names
    ra = next(c for c in tables["rome.field_index"].columns if c.name == "ra")
    assert ra.unit == "deg" and ra.ucd == "pos.eq.ra;meta.main"
    assert tap.maxrec == 5000 and tap.hardlimit == 50_000


def test_examples_and_landing(tap_server):
    ex = httpx.get(f"{tap_server}/tap/examples", timeout=120)
    assert ex.status_code == 200 and 'property="query"' in ex.text
    page = httpx.get(f"{tap_server}/", timeout=120)
    assert page.status_code == 200 and "ROME-FIELD-01" in page.text and "/tap" in page.text
    assert (
        httpx.get(f"{tap_server}/tap/availability", timeout=120).text.count("<avl:available>true")
        == 1
    )


# --- sync queries ---


def test_sync_values_units_and_64bit_ids(tap, synthetic_field):
    res = tap.search(
        "SELECT field_id, ra, dec, gaia_source_id, did FROM rome.field_index "
        "WHERE field = 'ROME-FIELD-01' ORDER BY field_id"
    )
    table = res.to_table()
    with open_field(synthetic_field) as field:
        fi = field.field_index
        np.testing.assert_array_equal(table["field_id"], fi["field_id"])
        np.testing.assert_array_equal(table["ra"], fi["ra"])
        gaia = fi["gaia_source_id"]
        np.testing.assert_array_equal(np.ma.getmaskarray(table["gaia_source_id"]), gaia.mask)
        np.testing.assert_array_equal(
            table["gaia_source_id"].data[~gaia.mask], gaia.data[~gaia.mask]
        )
    assert table["ra"].unit == u.deg
    ra_field = res.resultstable.get_field_by_id_or_name("ra")
    assert ra_field.ucd == "pos.eq.ra;meta.main" and ra_field.unit == u.deg
    assert table["did"][0].endswith("?ROME-FIELD-01/1")


def test_cone_matches_astropy(tap, field_positions):
    centre = SkyCoord(
        np.median(field_positions["ra"]), np.median(field_positions["dec"]), unit="deg"
    )
    radius = 2.0 / 60
    res = tap.search(
        "SELECT field_id FROM rome.field_index WHERE field = 'ROME-FIELD-01' AND "
        f"1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {float(centre.ra.deg)!r}, "
        f"{float(centre.dec.deg)!r}, {radius!r}))"
    ).to_table()
    sep = SkyCoord(field_positions["ra"], field_positions["dec"], unit="deg").separation(centre)
    expected = set(field_positions["field_id"][sep.deg <= radius])
    assert len(expected) > 5
    assert set(res["field_id"]) == expected


def test_maxrec_overflow(tap):
    res = tap.search("SELECT field_id FROM rome.field_index", maxrec=7)
    assert len(res) == 7 and res.query_status == "OVERFLOW"
    exact = tap.search("SELECT TOP 7 field_id FROM rome.field_index", maxrec=7)
    assert len(exact) == 7 and exact.query_status == "OK"


def test_upload_join_equals_astropy(tap, field_positions):
    rng = np.random.default_rng(3)
    pick = field_positions[rng.choice(len(field_positions), 60, replace=False)]
    mine = Table({"id": np.arange(60), "ra": pick["ra"] + 0.3 / 3600, "dec": pick["dec"]})
    res = tap.search(
        "SELECT u.id, f.field_id FROM TAP_UPLOAD.mine AS u JOIN rome.field_index AS f "
        "ON 1 = CONTAINS(POINT('ICRS', f.ra, f.dec), CIRCLE('ICRS', u.ra, u.dec, 1.0/3600)) "
        "WHERE f.field = 'ROME-FIELD-01'",
        uploads={"mine": mine},
    ).to_table()
    c_mine = SkyCoord(mine["ra"], mine["dec"], unit="deg")
    c_all = SkyCoord(field_positions["ra"], field_positions["dec"], unit="deg")
    i, j, _, _ = c_all.search_around_sky(c_mine, 1 * u.arcsec)
    expected = {
        (int(mine["id"][a]), int(field_positions["field_id"][b])) for a, b in zip(i, j, strict=True)
    }
    got = {(int(a), int(b)) for a, b in zip(res["id"], res["field_id"], strict=True)}
    assert got == expected and len(got) >= 60


@pytest.mark.parametrize(
    "fmt",
    [
        "votable",
        "votable/td",
        "votable/b",
        "csv",
        "tsv",
        "fits",
        "application/x-votable+xml;serialization=TABLEDATA",
    ],
)
def test_output_formats_roundtrip(tap_server, fmt, tmp_path):
    query = (
        "SELECT TOP 50 field, field_id, ra, gaia_source_id, n_datasets_ip FROM "
        "rome.field_index WHERE field = 'ROME-FIELD-01' ORDER BY field_id"
    )
    r = sync(tap_server, query, RESPONSEFORMAT=fmt)
    assert r.status_code == 200, r.text[:300]
    path = tmp_path / "out"
    path.write_bytes(r.content)
    if fmt.startswith(("votable", "application")):
        table = parse_single_table(str(path)).to_table()
    elif fmt == "fits":
        table = Table.read(path, format="fits")
    else:
        table = Table.read(path, format="ascii.csv" if fmt == "csv" else "ascii.tab")
    assert len(table) == 50 and list(table["field_id"]) == list(range(1, 51))
    assert str(table["field"][0]) == "ROME-FIELD-01"


@needs_stilts
@pytest.mark.parametrize("fmt", ["votable", "votable/td", "votable/b"])
def test_votlint_clean(tap_server, fmt, tmp_path):
    r = sync(tap_server, "SELECT TOP 200 * FROM rome.stars", RESPONSEFORMAT=fmt)
    path = tmp_path / "out.vot"
    path.write_bytes(r.content)
    out = subprocess.run(
        [STILTS, "votlint", str(path)], capture_output=True, text=True, timeout=120
    )
    problems = [line for line in out.stdout.splitlines() if line.startswith(("ERROR", "WARNING"))]
    assert problems == []


# --- errors ---


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"QUERY": "SELECT FROM WHERE"}, "line 1"),
        ({"QUERY": "SELECT nosuchcol FROM rome.field_index"}, "nosuchcol"),
        ({"QUERY": "SELECT * FROM rome.nosuchtable"}, "nosuchtable"),
        ({"QUERY": "SELECT * FROM read_csv('/etc/passwd')"}, "table functions"),
        ({"QUERY": "SELECT 1 FROM rome.field_index", "MAXREC": "-3"}, "MAXREC"),
        ({"QUERY": "SELECT 1 FROM rome.field_index", "MAXREC": "lots"}, "MAXREC"),
        ({"QUERY": "SELECT 1 FROM rome.field_index", "LANG": "SQL"}, "LANG"),
        ({"QUERY": "SELECT 1 FROM rome.field_index", "RESPONSEFORMAT": "pdf"}, "pdf"),
        ({"QUERY": ""}, "QUERY"),
    ],
)
def test_bad_requests_get_dali_errors(tap_server, params, needle):
    data = {"REQUEST": "doQuery", "LANG": "ADQL", **params}
    r = httpx.post(f"{tap_server}/tap/sync", data=data, timeout=120)
    assert r.status_code == 400
    assert needle in error_message(r)


def test_oversized_upload_refused_before_reading(tap_server):
    """A 2 GB upload is refused from its headers: the server answers after 1 MB of body."""
    host, port = tap_server.removeprefix("http://").split(":")
    head = (
        "POST /tap/sync?REQUEST=doQuery&LANG=ADQL&QUERY=SELECT+1 HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: multipart/form-data; boundary=XyZ\r\n"
        f"Content-Length: {2 * 2**30}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + b"--XyZ\r\n" + b"x" * 2**20)
        reply = b""
        while b"</VOTABLE>" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status = reply.split(b"\r\n", 1)[0]
    assert b" 413 " in status or b" 400 " in status, status
    assert b"limit" in reply and b'value="ERROR"' in reply
    assert sync(tap_server, "SELECT TOP 1 field_id FROM rome.field_index").status_code == 200


def test_clients_leaving_mid_stream_release_their_sessions(tap_server):
    """More abandoned streams than the PostgreSQL pool has connections: each one's session
    is released (and its query stopped), so the service keeps answering."""
    host, port = tap_server.removeprefix("http://").split(":")
    query = (
        "SELECT TOP 50000 a.field_id, b.field_id, a.ra, b.dec FROM rome.field_index AS a, "
        "rome.field_index AS b"
    ).replace(" ", "+")
    request = (
        f"GET /tap/sync?LANG=ADQL&RESPONSEFORMAT=votable/td&QUERY={query} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n\r\n"
    ).encode()
    for _ in range(12):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(request)
            assert b" 200 " in sock.recv(4096).split(b"\r\n", 1)[0]
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    r = httpx.post(
        f"{tap_server}/tap/sync",
        data={"LANG": "ADQL", "QUERY": "SELECT COUNT(*) AS n FROM rome.field_index"},
        timeout=20,
    )
    assert r.status_code == 200 and b"QUERY_STATUS" in r.content


# --- async ---


def test_async_run_wait_fetch_delete(tap, tap_server, tap_work):
    job = tap.submit_job(
        "SELECT field, COUNT(*) AS n FROM rome.field_index GROUP BY field ORDER BY field"
    )
    job.run()
    job.wait(phases=["COMPLETED", "ERROR", "ABORTED"], timeout=60)
    assert job.phase == "COMPLETED"
    table = job.fetch_result().to_table()
    assert dict(zip(table["field"], table["n"], strict=True))["ROME-FIELD-01"] >= 800
    job_url = job.url
    job_dir = tap_work / "jobs" / job.job_id
    assert (job_dir / "job.json").exists()
    job.delete()
    assert httpx.get(job_url, timeout=120).status_code == 404
    assert not job_dir.exists()  # nothing left behind


def test_async_execution_duration_enforced(tap_server):
    slow = "SELECT COUNT(*) FROM rome.stars AS a, rome.stars AS b, rome.stars AS c, rome.stars AS d"
    r = httpx.post(
        f"{tap_server}/tap/async",
        data={
            "REQUEST": "doQuery",
            "LANG": "ADQL",
            "QUERY": slow,
            "EXECUTIONDURATION": "1",
            "PHASE": "RUN",
        },
        timeout=120,
    )
    job_url = str(r.url) if r.status_code == 200 else r.headers.get("location")
    assert job_url
    for _ in range(30):
        phase = httpx.get(f"{job_url}/phase", timeout=120).text.strip()
        if phase in ("ERROR", "COMPLETED", "ABORTED"):
            break
        httpx.get(job_url, params={"WAIT": "2", "PHASE": phase}, timeout=10)
    assert phase == "ERROR"
    assert "execution duration" in httpx.get(f"{job_url}/error", timeout=120).text
    httpx.delete(job_url, timeout=120)


# --- concurrency ---


def test_twenty_concurrent_clients_mixed(tap_server, tap_work):
    """Sync queries, uploads, bad ADQL, forbidden functions, absurd MAXREC, oversized
    uploads and async jobs that overrun their execution duration, all at once: each
    gets its correct answer or a DALI error, and the service keeps serving."""
    good = "SELECT TOP 100 * FROM rome.field_index"
    upload = b"id,ra,dec\n1,268.0,-29.9\n2,268.1,-30.0\n"
    # 4-way cross join: ~10^12 rows, far beyond a 1 s execution duration on any machine
    slow = "SELECT COUNT(*) FROM rome.stars AS a, rome.stars AS b, rome.stars AS c, rome.stars AS d"
    sync_cases = [
        ({"QUERY": good}, None, 200),
        ({"QUERY": "SELECT quadrant, COUNT(*) FROM rome.field_index GROUP BY quadrant"}, None, 200),
        ({"QUERY": "SELECT oops FROM"}, None, 400),
        ({"QUERY": "SELECT * FROM rome.stars", "MAXREC": "-1"}, None, 400),
        ({"QUERY": "SELECT pg_sleep(1) FROM rome.stars"}, None, 400),
        ({"QUERY": "SELECT * FROM TAP_UPLOAD.t", "UPLOAD": "t,param:t"}, upload, 200),
        ({"QUERY": "SELECT * FROM TAP_UPLOAD.t", "UPLOAD": "t,param:t"}, b"x" * (21 * 2**20), 400),
    ]

    def one_sync(i):
        params, body, status = sync_cases[i % len(sync_cases)]
        data = {"REQUEST": "doQuery", "LANG": "ADQL", **params}
        files = {"t": ("t.csv", body)} if body else None
        r = httpx.post(f"{tap_server}/tap/sync", data=data, files=files, timeout=120)
        return r.status_code == status and "QUERY_STATUS" in r.text

    deleted: list[str] = []

    def one_async(_):
        data = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": slow, "PHASE": "RUN",
                "EXECUTIONDURATION": "1"}  # fmt: skip
        r = httpx.post(f"{tap_server}/tap/async", data=data, timeout=60)
        job = r.headers.get("location") or str(r.url)
        phase = "QUEUED"
        for _ in range(40):
            phase = httpx.get(f"{job}/phase", timeout=120).text.strip()
            if phase in ("ERROR", "COMPLETED", "ABORTED"):
                break
            httpx.get(job, params={"WAIT": "2", "PHASE": phase}, timeout=10)
        message = httpx.get(f"{job}/error", timeout=120).text
        httpx.delete(job, timeout=120)
        deleted.append(job.rstrip("/").rsplit("/", 1)[1])
        return phase == "ERROR" and "execution duration" in message

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        sync_results = pool.map(one_sync, range(56))
        async_results = pool.map(one_async, range(4))
        results = list(sync_results) + list(async_results)
    assert all(results), results
    assert sync(tap_server, good).status_code == 200
    # The deleted jobs' files go when their queries have stopped, which on a busy machine
    # can be a while after DELETE has answered: wait for that, not for a fixed time. (Only
    # these jobs: other tests, taplint's among them, leave jobs of their own.)
    left = [tap_work / "jobs" / job_id for job_id in deleted]
    assert len(left) == 4
    deadline = time.monotonic() + 120
    while any(p.exists() for p in left) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in left if p.exists()]


# --- taplint ---


@needs_stilts
def test_taplint_zero_errors(tap_server, tmp_path):
    out = subprocess.run(
        [STILTS, "taplint", f"tapurl={tap_server}/tap", "format=json", "maxrepeat=20"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads(out.stdout)
    assert report["sections"], out.stdout[:2000]
    errors = [
        f"{section['code']}-{r['code']}: {r.get('text', '')} ({r.get('more', '')} more)"
        for section in report["sections"]
        for r in section["reports"]
        if r.get("level") in ("ERROR", "FAILURE", "E", "F")
        # ObsLocTAP (ivoa.obsplan) does not apply to a survey catalogue service
        and f"{section['code']}-{r['code']}" != "LOC-NOTP"
    ]
    (tmp_path / "taplint.json").write_text(out.stdout)
    assert errors == [], "\n".join(errors[:40])


def test_remote_upload_keeps_column_metadata(tap_server, tmp_path, field_positions):
    import functools
    import http.server
    import threading

    from astropy.io.votable import from_table

    mine = Table({"name": ["a", "b"], "ra": field_positions["ra"][:2] * u.deg,
                  "dec": field_positions["dec"][:2] * u.deg})  # fmt: skip
    vot = from_table(mine)
    vot.get_first_table().get_field_by_id("ra").ucd = "pos.eq.ra"
    vot.to_xml(str(tmp_path / "mine.xml"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/mine.xml"
        r = sync(tap_server, "SELECT name, ra FROM TAP_UPLOAD.mine", UPLOAD=f"mine,{url}")
    finally:
        httpd.shutdown()
    assert r.status_code == 200, r.text[:400]
    table = parse_single_table(io.BytesIO(r.content))
    assert table.get_field_by_id_or_name("ra").ucd == "pos.eq.ra"
    assert str(table.get_field_by_id_or_name("ra").unit) == "deg"
    assert list(table.array["name"]) == ["a", "b"]


def test_remote_upload_refuses_private_hosts_by_default(tmp_path):
    from romerea_vo.errors import InvalidRequestError
    from romerea_vo.service.uploads import fetch_remote_upload

    with pytest.raises(InvalidRequestError, match="non-public address"):
        fetch_remote_upload(
            "t", "http://127.0.0.1:9/x.xml", tmp_path / "x", max_bytes=100, allow_private=False
        )
    assert not (tmp_path / "x").exists()


@needs_stilts
def test_votlint_clean_on_error_documents(tap_server, tmp_path):
    r = sync(tap_server, "SELECT nosuchcol FROM rome.field_index")
    assert r.status_code == 400
    path = tmp_path / "error.vot"
    path.write_bytes(r.content)
    out = subprocess.run(
        [STILTS, "votlint", str(path)], capture_output=True, text=True, timeout=120
    )
    assert [line for line in out.stdout.splitlines() if line.startswith(("ERROR", "WARNING"))] == []
