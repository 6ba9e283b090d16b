"""Issue 16, items 3-5: uploads that declare more than they hold, redirects to internal
hosts, async jobs and result bytes of one client. Scaled-down versions of the attacks;
each asserts on behaviour (the error, the memory taken, a limit reached), never on time."""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import ClassVar

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from romerea_vo.errors import InvalidRequestError
from romerea_vo.service.uploads import UploadGuard, fetch_remote_upload, read_upload_table


def votable(fields: str, rows: str, table_attrs: str = "") -> bytes:
    return (
        '<?xml version="1.0"?>\n<VOTABLE version="1.4" '
        'xmlns="http://www.ivoa.net/xml/VOTable/v1.3"><RESOURCE type="results">'
        f"<TABLE{table_attrs}>{fields}<DATA><TABLEDATA>{rows}</TABLEDATA></DATA></TABLE>"
        "</RESOURCE></VOTABLE>"
    ).encode()


CHAR3 = "".join(f'<FIELD name="c{i}" datatype="char" arraysize="*"/>' for i in range(3))


def wide_votable(n_columns: int) -> bytes:
    fields = "".join(f'<FIELD name="c{i}" datatype="int"/>' for i in range(n_columns))
    row = "<TR>" + "<TD>1</TD>" * n_columns + "</TR>"
    return votable(fields, row)


def sync(url, query, files=None, **params):
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, **params}
    return httpx.post(f"{url}/tap/sync", data=data, files=files, timeout=120)


def dali_error(response) -> str:
    assert 'name="QUERY_STATUS"' in response.text and 'value="ERROR"' in response.text
    assert "Traceback" not in response.text
    return response.text


# --- item 3: upload guards ------------------------------------------------------------


def test_declared_nrows_does_not_drive_allocation(tmp_path):
    """A few hundred bytes declaring millions of rows: astropy would allocate them all."""
    path = tmp_path / "bomb.vot"
    row = "<TR><TD>a</TD><TD>b</TD><TD>c</TD></TR>"
    path.write_bytes(votable(CHAR3, row, ' nrows="1"'))
    read_upload_table("warm-up", path, max_rows=10)  # astropy's lazy imports take memory
    path.write_bytes(votable(CHAR3, row, ' nrows="4000000"'))
    assert path.stat().st_size < 600
    tracemalloc.start()
    try:
        table, _ = read_upload_table("bomb", path, max_rows=5_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert table.num_rows == 1 and table.column("c2").to_pylist() == ["c"]
    # 4 M object pointers + masks would be > 100 MB; one row needs next to nothing
    assert peak < 20 * 2**20, peak


def test_nrows_bomb_through_the_service(tap_server):
    bomb = votable(CHAR3, "<TR><TD>a</TD><TD>b</TD><TD>c</TD></TR>", ' nrows="100000000"')
    r = sync(
        tap_server,
        "SELECT * FROM TAP_UPLOAD.t",
        files={"t": ("t.vot", bomb)},
        UPLOAD="t,param:t",
        RESPONSEFORMAT="csv",
    )
    assert r.status_code == 200, r.text[:500]
    assert r.text.strip().splitlines()[1:] == ["a,b,c"]


def test_too_many_columns_refused_by_the_streaming_scan(tap_server):
    """100,000 columns made astropy's parser quadratic (325 s); 20,000 here: refused
    after the 1,001st FIELD, whatever follows."""
    doc = wide_votable(20_000)
    r = sync(
        tap_server, "SELECT * FROM TAP_UPLOAD.t", files={"t": ("t.vot", doc)}, UPLOAD="t,param:t"
    )
    assert r.status_code == 400
    assert "upload 't' has more than 1000 columns (the limit)" in dali_error(r)
    # the service keeps serving
    assert sync(tap_server, "SELECT TOP 1 field_id FROM rome.field_index").status_code == 200


def test_column_limit_allows_the_limit(tmp_path):
    path = tmp_path / "wide.vot"
    path.write_bytes(wide_votable(1000))
    table, _ = read_upload_table("w", path, max_rows=10)
    assert table.num_columns == 1000


@pytest.mark.parametrize(
    "fields, rows, message",
    [
        (
            '<FIELD name="s" datatype="char" arraysize="100000000"/>',
            "<TR><TD>x</TD></TR>",
            "declares arraysize='100000000' (100000000 bytes per value)",
        ),
        (
            '<FIELD name="s" datatype="double" arraysize="100x100x100"/>',
            "<TR><TD>1</TD></TR>",
            "(8000000 bytes per value)",
        ),
        (
            '<FIELD name="s" datatype="char" arraysize="*"/>',
            "<TR><TD>" + "x" * 70_000 + "</TD></TR>",
            "a table cell longer than 65536",
        ),
    ],
)
def test_cell_size_limit(tmp_path, fields, rows, message):
    path = tmp_path / "cells.vot"
    path.write_bytes(votable(fields, rows))
    with pytest.raises(InvalidRequestError, match="upload 'u'") as info:
        read_upload_table("u", path, max_rows=10)
    assert message in str(info.value)


def test_row_limit_enforced_while_streaming(tmp_path):
    """The 11th row stops the reading: what follows (here: broken XML) is never parsed."""
    rows = "<TR><TD>1</TD></TR>" * 11
    doc = votable('<FIELD name="i" datatype="int"/>', rows).split(b"</TABLEDATA>")[0]
    path = tmp_path / "long.vot"
    path.write_bytes(doc + b"<TR><TD>oops")
    with pytest.raises(InvalidRequestError, match="has more than 10 rows"):
        read_upload_table("u", path, max_rows=10)


def test_reading_stops_at_the_deadline_or_when_cancelled(tmp_path):
    path = tmp_path / "t.vot"
    path.write_bytes(wide_votable(10))
    past = UploadGuard(max_rows=10, deadline=time.monotonic() - 1)
    with pytest.raises(InvalidRequestError, match="longer than the execution duration"):
        read_upload_table("u", path, max_rows=10, guard=past)
    aborted = UploadGuard(max_rows=10, cancelled=lambda: True)
    with pytest.raises(InvalidRequestError, match="reading upload 'u' was aborted"):
        read_upload_table("u", path, max_rows=10, guard=aborted)


def test_entity_declarations_refused(tmp_path):
    path = tmp_path / "lol.vot"
    path.write_bytes(
        b'<?xml version="1.0"?><!DOCTYPE VOTABLE [<!ENTITY a "aaaaaaaaaa">]>'
        + votable('<FIELD name="s" datatype="char" arraysize="*"/>', "<TR><TD>&a;</TD></TR>").split(
            b"?>", 1
        )[1]
    )
    with pytest.raises(InvalidRequestError, match="declares XML entities"):
        read_upload_table("u", path, max_rows=10)


def test_csv_and_parquet_column_and_row_limits(tmp_path):
    csv = tmp_path / "wide.csv"
    csv.write_text(",".join(f"c{i}" for i in range(1001)) + "\n" + ",".join(["1"] * 1001) + "\n")
    with pytest.raises(InvalidRequestError, match="has 1001 columns; the limit is 1000"):
        read_upload_table("u", csv, max_rows=10)
    wide = tmp_path / "wide.parquet"
    pq.write_table(pa.table({f"c{i}": [1] for i in range(1001)}), wide)
    with pytest.raises(InvalidRequestError, match="has 1001 columns; the limit is 1000"):
        read_upload_table("u", wide, max_rows=10)
    long = tmp_path / "long.parquet"
    pq.write_table(pa.table({"i": list(range(11))}), long)
    with pytest.raises(InvalidRequestError, match="has 11 rows; the limit is 10"):
        read_upload_table("u", long, max_rows=10)


def test_sigterm_stops_the_server_during_a_heavy_upload(tap_db):
    """The 10^6-column upload kept a core busy after its client left and SIGTERM could
    not stop the server; here 10^5 columns (5 MB), SIGTERM as soon as the body is sent."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "romerea_vo.cli", "serve", "--db", str(tap_db), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("TAP service:"):
                url = line.split()[2]
                break
        else:
            raise AssertionError("service did not start")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain
        doc = wide_votable(100_000)
        body = io.BytesIO()
        boundary = "romereaboundary"
        for name, value in [
            ("LANG", "ADQL"),
            ("QUERY", "SELECT * FROM TAP_UPLOAD.t"),
            ("UPLOAD", "t,param:t"),
        ]:
            body.write(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n".encode()
            )
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="t"; filename="t.vot"\r\n'
            "Content-Type: application/x-votable+xml\r\n\r\n".encode()
            + doc
            + f"\r\n--{boundary}--\r\n".encode()
        )
        payload = body.getvalue()
        host, port = url.split("//")[1].split("/")[0].split(":")
        sock = socket.create_connection((host, int(port)), timeout=300)
        sock.sendall(
            f"POST /tap/sync HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=120)  # generous: only a hang fails
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the service did not stop on SIGTERM during an upload") from None
        reply = b""
        with sock:
            while chunk := sock.recv(65536):
                reply += chunk
        assert b" 500 " not in reply.split(b"\r\n", 1)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- item 4: SSRF through redirects -----------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}
    hits: ClassVar[list[str]] = []

    def do_GET(self):
        self.hits.append(self.path)
        status, headers, body = self.routes.get(self.path, (404, {}, b"no"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def two_servers():
    """A "public" server (allowed by name:port) and an internal one on another port."""
    servers = []
    for _ in range(2):
        handler = type("H", (_Handler,), {"routes": {}, "hits": []})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
    yield servers
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _url(httpd, path):
    return f"http://127.0.0.1:{httpd.server_address[1]}{path}"


def test_redirect_to_an_internal_host_is_refused(two_servers, tmp_path):
    public, internal = two_servers
    secret = b"id\nsecret-value\n"
    internal.RequestHandlerClass.routes["/internal-secret"] = (200, {}, secret)
    public.RequestHandlerClass.routes["/table.csv"] = (
        302,
        {"Location": _url(internal, "/internal-secret")},
        b"",
    )
    allowed = (f"127.0.0.1:{public.server_address[1]}",)
    with pytest.raises(InvalidRequestError) as info:
        fetch_remote_upload(
            "t",
            _url(public, "/table.csv"),
            tmp_path / "x",
            max_bytes=2**20,
            allow_private=False,
            allowed_hosts=allowed,
        )
    message = str(info.value)
    assert "non-public address (127.0.0.1)" in message
    assert "/internal-secret" in message and "redirected from" in message
    assert internal.RequestHandlerClass.hits == []  # never contacted
    assert not (tmp_path / "x").exists()


def test_redirect_between_allowed_hosts_is_followed(two_servers, tmp_path):
    public, other = two_servers
    other.RequestHandlerClass.routes["/t.csv"] = (200, {}, b"id\n1\n")
    public.RequestHandlerClass.routes["/a"] = (301, {"Location": _url(other, "/t.csv")}, b"")
    allowed = tuple(f"127.0.0.1:{s.server_address[1]}" for s in two_servers)
    path = fetch_remote_upload(
        "t",
        _url(public, "/a"),
        tmp_path / "x",
        max_bytes=2**20,
        allow_private=False,
        allowed_hosts=allowed,
    )
    assert path.read_bytes() == b"id\n1\n"


def test_redirect_loops_and_oversized_fetches_are_refused(two_servers, tmp_path):
    public, _ = two_servers
    public.RequestHandlerClass.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    public.RequestHandlerClass.routes["/big"] = (200, {}, b"x" * 5000)
    allowed = (f"127.0.0.1:{public.server_address[1]}",)
    with pytest.raises(InvalidRequestError, match="redirects more than 5 times"):
        fetch_remote_upload(
            "t",
            _url(public, "/loop"),
            tmp_path / "x",
            max_bytes=2**20,
            allow_private=False,
            allowed_hosts=allowed,
        )
    with pytest.raises(InvalidRequestError, match="exceeds 1000 bytes"):
        fetch_remote_upload(
            "t",
            _url(public, "/big"),
            tmp_path / "x",
            max_bytes=1000,
            allow_private=False,
            allowed_hosts=allowed,
        )
    assert not (tmp_path / "x").exists()


def test_connects_to_the_checked_address(two_servers, tmp_path):
    """The name is resolved once: the connection goes to the address that was checked
    (here a name that only an allow-list entry makes acceptable)."""
    public, _ = two_servers
    public.RequestHandlerClass.routes["/t.csv"] = (200, {}, b"id\n2\n")
    port = public.server_address[1]
    url = f"http://localhost:{port}/t.csv"
    path = fetch_remote_upload(
        "t",
        url,
        tmp_path / "x",
        max_bytes=2**20,
        allow_private=False,
        allowed_hosts=(f"localhost:{port}",),
    )
    assert path.read_bytes() == b"id\n2\n"


# --- item 5: async quotas, for both job stores ---------------------------------------


@pytest.fixture(scope="module")
def abuse_jobs_db(request) -> str:
    pg_cluster = request.getfixturevalue("pg_cluster")  # skips without PostgreSQL
    return pg_cluster.create_database("romerea_abuse_jobs")


@pytest.fixture(params=["memory", "postgresql"])
def make_store(request, tmp_path):
    """A job store factory of each kind (the PostgreSQL one emptied first)."""
    from romerea_vo.service.uws import JobStore

    from .test_uws import Calls, make_runner

    stores = []

    def make(**kwargs):
        if request.param == "memory":
            store = JobStore(tmp_path / "jobs", make_runner(Calls()), **kwargs)
        else:
            import psycopg

            from romerea_vo.service.uws.pg_store import PostgresJobStore

            conninfo = request.getfixturevalue("abuse_jobs_db")
            with psycopg.connect(conninfo, autocommit=True) as con:
                if con.execute("SELECT to_regclass('romerea_uws.jobs')").fetchone()[0]:
                    con.execute("TRUNCATE romerea_uws.jobs, romerea_uws.workers")
            store = PostgresJobStore(conninfo, tmp_path / "jobs", make_runner(Calls()), **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def _complete(store, job_id):
    store.run(job_id)
    job = store.wait(job_id, 30)
    while job.phase in ("QUEUED", "EXECUTING"):
        job = store.wait(job_id, 30)
    assert job.phase == "COMPLETED", job.error_message
    return job


def test_jobs_per_client_limit_over_http(make_store):
    """793 creations by one client filled the service's 1,000 jobs for everyone; now one
    address holds at most its quota (3 here) and others still get theirs."""
    from starlette.applications import Starlette

    from romerea_vo.service.uws import uws_routes

    from .test_params import running_server

    store = make_store(max_jobs_per_client=3, max_wait=10)
    app = Starlette(routes=uws_routes(store, prefix="/tap/async"))
    with running_server(app) as base, httpx.Client(timeout=30) as client:
        url = f"{base}/tap/async"
        created = []
        for i in range(3):
            r = client.post(url, data={"LANG": "ADQL", "QUERY": f"ROWS {i}"})
            assert r.status_code == 303, r.text
            created.append(r.headers["location"])
        r = client.post(url, data={"LANG": "ADQL", "QUERY": "ROWS 9"})
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) > 0
        assert "client 127.0.0.1 holds 3 async jobs, the limit per client" in dali_error(r)
        # another address is not affected (Linux routes all of 127/8 to loopback)
        other = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(timeout=30, transport=other) as neighbour:
            r = neighbour.post(url, data={"LANG": "ADQL", "QUERY": "ROWS 1"})
            assert r.status_code == 303, r.text
        # deleting a job frees a place
        assert client.delete(created[0]).status_code in (200, 303)
        r = client.post(url, data={"LANG": "ADQL", "QUERY": "ROWS 9"})
        assert r.status_code == 303, r.text
        # the address is not published in the job document
        assert "127.0.0.1" not in client.get(r.headers["location"]).text.split("<uws:results")[0]


def test_results_quota_evicts_the_clients_oldest_completed_jobs(make_store):
    store = make_store(max_result_bytes=1, max_jobs_per_client=0)
    first = _complete(store, store.create({"QUERY": "ROWS 100"}, client="10.0.0.1").job_id)
    assert first.results[0].size > 0
    # another client cannot evict what it does not own: refused, with the reason
    with pytest.raises(InvalidRequestError, match="fill the service's quota of 1 bytes"):
        store.create({"QUERY": "ROWS 1"}, client="10.0.0.2")
    # the owner's new job evicts its oldest COMPLETED job
    second = store.create({"QUERY": "ROWS 1"}, client="10.0.0.1")
    assert [j.job_id for j in store.list()] == [second.job_id]
    assert not first.directory.exists()


def test_async_result_larger_than_the_job_limit_ends_in_error(tap_db, tmp_path):
    from romerea_vo.service.app import ServiceConfig, create_app
    from romerea_vo.service.tap import TapLimits

    from .conftest import LiveServer

    limits = TapLimits(default_maxrec=5000, hard_maxrec=50_000, job_result_bytes=20_000)
    app = create_app(ServiceConfig(db_path=tap_db, work_dir=tmp_path, limits=limits))
    live = LiveServer(app)
    try:
        with httpx.Client(timeout=60) as client:
            r = client.post(
                f"{live.url}/tap/async",
                data={"LANG": "ADQL", "QUERY": "SELECT * FROM rome.field_index", "PHASE": "RUN"},
            )
            assert r.status_code == 303, r.text
            job_url = r.headers["location"]
            phase = client.get(f"{job_url}/phase").text.strip()
            while phase in ("PENDING", "QUEUED", "EXECUTING"):  # UWS blocking wait
                client.get(job_url, params={"WAIT": 30, "PHASE": phase})
                phase = client.get(f"{job_url}/phase").text.strip()
            assert phase == "ERROR"
            error = client.get(f"{job_url}/error").text
            assert "exceeds 20000 bytes, the limit for one async job" in error
            assert not list((tmp_path / "jobs").glob("*/result.*"))
    finally:
        live.stop()


def test_existing_job_schema_gets_the_client_column(request, tmp_path):
    """A job database made before per-client quotas is brought up to date on start."""
    import psycopg

    from romerea_vo.service.uws.pg_store import PostgresJobStore

    from .test_uws import Calls, make_runner

    conninfo = request.getfixturevalue("abuse_jobs_db")
    PostgresJobStore(conninfo, tmp_path / "a", make_runner(Calls())).close()
    with psycopg.connect(conninfo, autocommit=True) as con:
        con.execute("TRUNCATE romerea_uws.jobs, romerea_uws.workers")
        con.execute("ALTER TABLE romerea_uws.jobs DROP COLUMN client")
    store = PostgresJobStore(conninfo, tmp_path / "b", make_runner(Calls()), max_jobs_per_client=1)
    try:
        store.create({"QUERY": "ROWS 1"}, client="10.0.0.3")
        with pytest.raises(InvalidRequestError, match="holds 1 async jobs"):
            store.create({"QUERY": "ROWS 1"}, client="10.0.0.3")
    finally:
        store.close()


def test_fits_declaring_more_data_than_it_holds(tmp_path):
    """The FITS form of the nrows bomb: a header declaring 10^8 rows of 1 kB."""
    import numpy as np
    from astropy.io import fits

    path = tmp_path / "bomb.fits"
    hdu = fits.BinTableHDU.from_columns([fits.Column("s", "1000A", array=np.array([b"x"]))])
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"NAXIS2  =")
    raw[at : at + 80] = f"{'NAXIS2':8}= {100_000_000:>20}".ljust(80).encode()
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidRequestError, match="declares 100000000000 bytes of FITS data"):
        read_upload_table("f", path, max_rows=10**9)


def test_engine_stops_reading_uploads_when_cancelled(tap_db, tmp_path):
    """What a stopping server or an ABORTed job does to a query still reading uploads."""
    from romerea_vo.service.params import DaliParams
    from romerea_vo.service.tap import TapEngine
    from romerea_vo.store import Database

    path = tmp_path / "t.vot"
    path.write_bytes(wide_votable(3))
    params = DaliParams(
        values={"LANG": ["ADQL"], "QUERY": ["SELECT * FROM TAP_UPLOAD.t"], "UPLOAD": ["t,param:t"]},
        files={"t": path},
    )
    db = Database(tap_db)
    try:
        engine = TapEngine(db)
        with db.session() as session:
            with pytest.raises(InvalidRequestError, match="reading upload 't' was aborted"):
                engine.prepare(params, session, tmp_path, cancelled=lambda: True)
            with pytest.raises(InvalidRequestError, match="longer than the execution duration"):
                engine.prepare(params, session, tmp_path, deadline=time.monotonic() - 1)
            prepared = engine.prepare(params, session, tmp_path, deadline=time.monotonic() + 600)
            assert "tap_upload_" in prepared.sql
    finally:
        db.close()


def test_a_server_dripping_bytes_is_cut_at_the_fetch_time_limit(tmp_path):
    """Each read has a socket timeout; a server sending a byte now and then must still
    not hold the fetch beyond its time limit (1 s here; the server never finishes)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip():
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.05):
                conn.sendall(b"X-Slow: y\r\n")

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        with pytest.raises(InvalidRequestError, match="took longer than the 1 s allowed"):
            fetch_remote_upload("t", f"http://127.0.0.1:{port}/t.csv", tmp_path / "x",
                                max_bytes=2**20, allow_private=False,
                                allowed_hosts=(f"127.0.0.1:{port}",), max_time=1)  # fmt: skip
    finally:
        stop.set()
        thread.join(30)
        listener.close()
