"""UWS 1.1 job store and REST binding, through a real uvicorn server and pyvo."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree

import httpx
import numpy as np
import pytest
from astropy.io.votable import parse_single_table
from astropy.table import Table
from pyvo.dal import AsyncTAPJob
from pyvo.io.uws import parse_job, parse_job_list
from starlette.applications import Starlette
from starlette.routing import Mount

from romerea_vo.errors import InvalidRequestError
from romerea_vo.service.params import read_dali_params
from romerea_vo.service.uws import CancelToken, Job, JobStore, JobStoreBase, uws_routes
from romerea_vo.votable.writer import error_votable

from .test_params import read_response, running_server, stream_until_answer

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
XLINK = "{http://www.w3.org/1999/xlink}"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
VOT = "application/x-votable+xml"
UPLOAD_LIMIT = 2**20

# The element sequence of uws:JobSummary in UWS-1.1.xsd: (name, required).
JOB_SEQUENCE = [
    ("jobId", True),
    ("runId", False),
    ("ownerId", True),
    ("phase", True),
    ("quote", False),
    ("creationTime", False),
    ("startTime", True),
    ("endTime", True),
    ("executionDuration", True),
    ("destruction", True),
    ("parameters", False),
    ("results", False),
    ("errorSummary", False),
    ("jobInfo", False),
]
NILLABLE = {"ownerId", "quote", "startTime", "endTime", "destruction"}


class Calls:
    """What the runner saw, for assertions."""

    def __init__(self) -> None:
        self.interrupted = threading.Event()
        self.uploads: dict[str, list[tuple[str, int]]] = {}


def make_runner(calls: Calls):
    """A real runner: QUERY 'SLEEP s', 'BLOCK' (until interrupted), 'FAIL msg', or rows."""

    def runner(job: Job, token: CancelToken) -> None:
        query = job.parameters.get("QUERY", "")
        verb, _, arg = query.partition(" ")
        if verb == "SLEEP":
            if token.wait(float(arg)):
                raise RuntimeError("interrupted while sleeping")
        elif verb == "BLOCK":  # like a DuckDB query: only the interrupt callback stops it
            stop = threading.Event()
            token.on_cancel(stop.set)
            token.on_cancel(calls.interrupted.set)
            stop.wait(30)
            raise RuntimeError("INTERRUPT: query interrupted")
        elif verb == "FAIL":
            raise InvalidRequestError(arg)
        tables = [(name, path.stat().st_size) for name, path in job.upload_tables()]
        calls.uploads[job.job_id] = tables
        path = job.directory / "result.vot"
        n = int(arg) if verb == "ROWS" else 3
        Table({"n": np.arange(n, dtype=np.int32)}).write(path, format="votable")
        job.add_result("result", path, VOT)

    return runner


@contextlib.contextmanager
def uws_service(root: Path, *, mount: bool = False, **kwargs) -> Iterator[tuple[str, JobStore]]:
    """A JobStore under root and a server publishing it at /tap/async; yields (url, store)."""
    calls = kwargs.pop("calls", None) or Calls()
    store = JobStore(root, make_runner(calls), **kwargs)

    async def read_params(request, directory):
        return await read_dali_params(request, directory, max_upload_bytes=UPLOAD_LIMIT)

    if mount:
        app = Starlette(routes=[Mount("/tap/async", routes=uws_routes(store))])
    else:
        routes = uws_routes(store, read_params=read_params, prefix="/tap/async")
        app = Starlette(routes=routes)
    try:
        with running_server(app) as url:
            yield f"{url}/tap/async", store
    finally:
        store.close()


@pytest.fixture
def calls() -> Calls:
    return Calls()


@contextlib.contextmanager
def pg_uws_service(jobs_db: str, root: Path, calls: Calls, **kwargs):
    """A PostgresJobStore and a server publishing it at /tap/async; yields (url, store)."""
    from romerea_vo.service.uws.pg_store import PostgresJobStore

    store = PostgresJobStore(jobs_db, root, make_runner(calls), **kwargs)

    async def read_params(request, directory):
        return await read_dali_params(request, directory, max_upload_bytes=UPLOAD_LIMIT)

    app = Starlette(routes=uws_routes(store, read_params=read_params, prefix="/tap/async"))
    try:
        with running_server(app) as url:
            yield f"{url}/tap/async", store
    finally:
        store.close()


@pytest.fixture(params=["file", "postgresql"])
def service(request, tmp_path, calls) -> Iterator[tuple[str, JobStoreBase]]:
    """The UWS binding over each job store: every test that uses it runs on both (the
    PostgreSQL one skips, saying why, where PostgreSQL cannot run)."""
    settings = dict(max_execution_duration=60, max_wait=10)
    if request.param == "file":
        with uws_service(tmp_path / "jobs", calls=calls, **settings) as served:
            yield served
        return
    pytest.importorskip("psycopg_pool", reason="psycopg_pool not installed (the postgres extra)")
    jobs_db = request.getfixturevalue("empty_uws_jobs_db")
    with pg_uws_service(jobs_db, tmp_path / "jobs", calls, **settings) as served:
        yield served


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def create(client: httpx.Client, url: str, **params) -> str:
    response = client.post(url, data=params)
    assert response.status_code == 303, response.text
    return response.headers["location"]


def job_info(client: httpx.Client, job_url: str, **params):
    response = client.get(job_url, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    return parse_job(io.BytesIO(response.content))


def wait_final(client: httpx.Client, job_url: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while True:
        job = job_info(client, job_url, WAIT="5")
        if job.phase in ("COMPLETED", "ERROR", "ABORTED"):
            return job
        assert time.monotonic() < deadline, f"job still {job.phase}"


def params_of(job) -> dict[str, tuple[str, bool]]:
    return {p.id_: (p.content, bool(p.byreference)) for p in job.parameters}


# --- the whole life of a job -------------------------------------------------------------


def test_pyvo_async_job_lifecycle(service):
    url, store = service
    base = url.removesuffix("/async")
    job = AsyncTAPJob.create(base, "ROWS 5", language="ADQL")
    assert job.phase == "PENDING" and job.query == "ROWS 5"
    job.execution_duration = 30
    assert job.execution_duration.sec == 30
    job.run().wait(timeout=30)
    assert job.phase == "COMPLETED"
    table = job.fetch_result().to_table()
    assert list(table["n"]) == [0, 1, 2, 3, 4]
    directory = store.root / job.job_id
    assert directory.is_dir()
    job.delete()
    assert not directory.exists()


def test_create_run_wait_results_delete(service, client):
    url, store = service
    job_url = create(client, url, QUERY="SLEEP 0.3", LANG="ADQL", RUNID="mine")
    assert job_url.startswith(url + "/")
    job = job_info(client, job_url)
    assert (job.phase, job.runid, job.jobid) == ("PENDING", "mine", job_url.rsplit("/", 1)[1])
    assert params_of(job)["QUERY"] == ("SLEEP 0.3", False)
    assert params_of(job)["RUNID"] == ("mine", False)
    # the plain-text resources agree with the job document, string for string
    doc = ElementTree.fromstring(client.get(job_url).content)
    for name, tag in [("executionduration", "executionDuration"), ("destruction", "destruction")]:
        response = client.get(f"{job_url}/{name}")
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text == doc.find(UWS + tag).text
    assert client.get(f"{job_url}/phase").text == "PENDING"
    assert client.get(f"{job_url}/quote").text == ""
    assert client.get(f"{job_url}/owner").text == ""
    assert client.get(f"{job_url}/error").status_code == 404

    response = client.post(f"{job_url}/phase", data={"PHASE": "RUN"})
    assert (response.status_code, response.headers["location"]) == (303, job_url)
    job = wait_final(client, job_url)
    assert job.phase == "COMPLETED" and job.starttime and job.endtime
    results = ElementTree.fromstring(client.get(f"{job_url}/results").content)
    (ref,) = results.findall(UWS + "result")
    assert ref.get("id") == "result" and ref.get(XLINK + "href") == f"{job_url}/results/result"
    assert ref.get("mime-type") == VOT and int(ref.get("size")) > 0
    response = client.get(ref.get(XLINK + "href"))
    assert response.status_code == 200 and response.headers["content-type"] == VOT
    assert len(parse_single_table(io.BytesIO(response.content)).array) == 3
    assert int(ref.get("size")) == len(response.content)

    response = client.delete(job_url)
    assert (response.status_code, response.headers["location"]) == (303, url)
    assert client.get(job_url).status_code == 404
    assert client.get(f"{job_url}/results/result").status_code == 404
    assert [p for p in store.root.rglob("*") if p.name != ".incoming"] == []


def test_phase_run_at_creation_and_blocking_wait(service, client):
    url, _ = service
    started = time.monotonic()
    job_url = create(client, url, QUERY="SLEEP 1", PHASE="RUN")
    job = job_info(client, job_url)
    assert job.phase in ("QUEUED", "EXECUTING")
    # WAIT blocks while the phase stays the same; it ends with the phase change
    while job.phase != "COMPLETED":
        job = job_info(client, job_url, WAIT="-1")
    assert 0.9 < time.monotonic() - started < 5
    # a WAIT on a finished job, or one naming another phase, returns at once
    t0 = time.monotonic()
    assert job_info(client, job_url, WAIT="30").phase == "COMPLETED"
    assert job_info(client, job_url, WAIT="30", PHASE="EXECUTING").phase == "COMPLETED"
    assert time.monotonic() - t0 < 3  # (max_wait is 10 s)
    # a WAIT on a PENDING job lasts its timeout
    pending = create(client, url, QUERY="SLEEP 0")
    t0 = time.monotonic()
    assert job_info(client, pending, WAIT="1").phase == "PENDING"
    assert 0.9 < time.monotonic() - t0 < 3
    # the service caps WAIT (max_wait=10 here), and bad values are refused
    response = client.get(pending, params={"WAIT": "soon"})
    assert response.status_code == 400 and "WAIT" in response.text


def test_wait_returns_when_other_client_acts(service, client):
    url, store = service
    job_url = create(client, url, QUERY="SLEEP 0")
    job_id = job_url.rsplit("/", 1)[1]
    threading.Timer(0.5, store.run, (job_id,)).start()
    t0 = time.monotonic()
    job = job_info(client, job_url, WAIT="8", PHASE="PENDING")
    assert job.phase != "PENDING" and time.monotonic() - t0 < 4
    # the store's own blocking wait, as a library user would call it
    phase = job.phase
    while phase not in ("COMPLETED", "ERROR"):
        phase = store.wait(job_id, 8).phase
    assert phase == "COMPLETED"


def test_abort_long_job_interrupts_it(service, client, calls):
    url, store = service
    job_url = create(client, url, QUERY="BLOCK", PHASE="RUN")
    job = job_info(client, job_url)
    while job.phase != "EXECUTING":
        job = job_info(client, job_url, WAIT="5")
    response = client.post(f"{job_url}/phase", data={"PHASE": "ABORT"})
    assert response.status_code == 303
    assert calls.interrupted.wait(5), "the runner's cancel callback was not called"
    job = job_info(client, job_url)
    assert job.phase == "ABORTED" and job.endtime
    assert job.errorsummary.message.content == "job aborted on request"
    assert "job aborted on request" in client.get(f"{job_url}/error").text
    assert client.get(f"{job_url}/results").text.count("<uws:result ") == 0
    # the worker is released, and a finished job cannot be run or re-aborted into another phase
    deadline = time.monotonic() + 5
    while store._tokens and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not store._tokens
    response = client.post(f"{job_url}/phase", data={"PHASE": "RUN"})
    assert response.status_code == 400 and "cannot be run again" in response.text
    assert client.post(f"{job_url}/phase", data={"PHASE": "ABORT"}).status_code == 303
    response = client.post(f"{job_url}/phase", data={"PHASE": "SUSPEND"})
    assert response.status_code == 400 and "RUN or ABORT" in response.text


def test_execution_duration_exceeded(service, client, calls):
    url, _ = service
    job_url = create(client, url, QUERY="BLOCK", EXECUTIONDURATION="1")
    assert client.get(f"{job_url}/executionduration").text == "1"
    started = time.monotonic()
    client.post(f"{job_url}/phase", data={"PHASE": "RUN"})
    job = wait_final(client, job_url)
    assert 0.9 < time.monotonic() - started < 5
    assert job.phase == "ERROR"
    message = "query exceeded the execution duration of 1 s"
    assert job.errorsummary.message.content == message
    assert calls.interrupted.is_set()
    error = client.get(f"{job_url}/error")  # a DALI error VOTable
    assert error.status_code == 200 and error.headers["content-type"] == VOT
    root = ElementTree.fromstring(error.content)
    (status,) = [i for i in root.iter() if i.get("name") == "QUERY_STATUS"]
    assert status.get("value") == "ERROR" and status.text == message


def test_runner_error_becomes_job_error(service, client):
    url, _ = service
    job_url = create(client, url, QUERY="FAIL no such table rome.nothing", PHASE="RUN")
    job = wait_final(client, job_url)
    assert job.phase == "ERROR"
    assert job.errorsummary.message.content == "no such table rome.nothing"
    assert job.errorsummary.type_ == "fatal"


def test_execution_duration_and_destruction_settings(service, client):
    url, _ = service
    job_url = create(client, url, QUERY="SLEEP 0")
    # clamped to the maximum (60 s here); 0 (unlimited) too
    for asked in ("99999", "0"):
        response = client.post(f"{job_url}/executionduration", data={"EXECUTIONDURATION": asked})
        assert response.status_code == 303 and response.headers["location"] == job_url
        assert client.get(f"{job_url}/executionduration").text == "60"
    client.post(f"{job_url}/executionduration", data={"EXECUTIONDURATION": "20"})
    assert job_info(client, job_url).executionduration.sec == 20
    for bad in ("-5", "ten"):
        response = client.post(f"{job_url}/executionduration", data={"EXECUTIONDURATION": bad})
        assert response.status_code == 400
    # destruction: clamped to creation + 30 days; earlier times accepted as given
    far = (datetime.now(UTC) + timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert client.post(f"{job_url}/destruction", data={"DESTRUCTION": far}).status_code == 303
    job = job_info(client, job_url)
    limit = job.creationtime.datetime + timedelta(days=30)
    assert abs((job.destruction.datetime - limit).total_seconds()) < 1
    soon = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    client.post(f"{job_url}/destruction", data={"DESTRUCTION": soon})
    assert client.get(f"{job_url}/destruction").text[:19] == soon[:19]
    response = client.post(f"{job_url}/destruction", data={"DESTRUCTION": "next week"})
    assert response.status_code == 400 and "ISO 8601" in response.text
    # once the job has run, its execution duration is fixed
    client.post(f"{job_url}/phase", data={"PHASE": "RUN"})
    wait_final(client, job_url)
    response = client.post(f"{job_url}/executionduration", data={"EXECUTIONDURATION": "5"})
    assert response.status_code == 400 and "before the job runs" in response.text


def test_destruction_sweep_removes_everything(tmp_path, client):
    with uws_service(tmp_path / "jobs", sweep_interval=0.1) as (url, store):
        job_url = create(client, url, QUERY="ROWS 2", PHASE="RUN")
        wait_final(client, job_url)
        job_id = job_url.rsplit("/", 1)[1]
        assert (store.root / job_id / "result.vot").is_file()
        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        assert client.post(f"{job_url}/destruction", data={"DESTRUCTION": past}).status_code == 303
        deadline = time.monotonic() + 5
        while (store.root / job_id).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (store.root / job_id).exists()
        assert client.get(job_url).status_code == 404
        assert [p for p in store.root.iterdir() if not p.name.startswith(".")] == []


def test_sweep_method(tmp_path):
    store = JobStore(tmp_path / "jobs", make_runner(Calls()), sweep_interval=3600)
    try:
        keep = store.create({"QUERY": "x"})
        gone = store.create({"QUERY": "y"})
        store.set_destruction(gone.job_id, datetime.now(UTC) - timedelta(minutes=1))
        assert store.sweep() == 1
        assert [j.job_id for j in store.list()] == [keep.job_id]
        assert not gone.directory.exists() and keep.directory.exists()
    finally:
        store.close()


def test_restart_over_same_root(tmp_path, client):
    root = tmp_path / "jobs"
    with uws_service(root) as (url, _):
        done_url = create(client, url, QUERY="ROWS 4", PHASE="RUN", RUNID="done")
        wait_final(client, done_url)
        pending_url = create(client, url, QUERY="SLEEP 0", RUNID="pending")
        running_url = create(client, url, QUERY="SLEEP 0", RUNID="running")
        queued_url = create(client, url, QUERY="SLEEP 0", RUNID="queued")
    # simulate a crash: the last two were executing / queued when the process died
    for job_url, phase in [(running_url, "EXECUTING"), (queued_url, "QUEUED")]:
        path = root / job_url.rsplit("/", 1)[1] / "job.json"
        data = json.loads(path.read_text())
        data["phase"] = phase
        path.write_text(json.dumps(data))
    # ... and one crashed while its uploads were being moved in; a stranger's dir is kept
    (root / "halfmadejob01" / "uploads").mkdir(parents=True)
    (root / "halfmadejob01" / "uploads" / "t1").write_bytes(b"x")
    (root / "not-a-job").mkdir()
    (root / "not-a-job" / "notes.txt").write_text("keep me")

    with uws_service(root) as (url2, _):
        rebase = {u: u.replace(url, url2) for u in (done_url, pending_url, running_url, queued_url)}
        done = job_info(client, rebase[done_url])
        assert done.phase == "COMPLETED" and done.runid == "done"
        response = client.get(done.results[0].href)
        assert len(parse_single_table(io.BytesIO(response.content)).array) == 4
        assert job_info(client, rebase[pending_url]).phase == "PENDING"
        for job_url in (running_url, queued_url):
            job = job_info(client, rebase[job_url])
            assert job.phase == "ERROR"
            assert job.errorsummary.message.content == "interrupted by a service restart"
            assert job.errorsummary.type_ == "transient"
        assert not (root / "halfmadejob01").exists()
        assert (root / "not-a-job" / "notes.txt").read_text() == "keep me"
        # the pending job can still run after the restart
        client.post(f"{rebase[pending_url]}/phase", data={"PHASE": "RUN"})
        assert wait_final(client, rebase[pending_url]).phase == "COMPLETED"


def test_close_marks_running_jobs(tmp_path, calls):
    store = JobStore(tmp_path / "jobs", make_runner(calls))
    job = store.create({"QUERY": "BLOCK"})
    store.run(job.job_id)
    deadline = time.monotonic() + 5
    while store.phase(job.job_id) != "EXECUTING" and time.monotonic() < deadline:
        time.sleep(0.02)
    store.close()
    assert calls.interrupted.is_set()
    saved = json.loads((job.directory / "job.json").read_text())
    assert saved["phase"] == "ERROR"
    assert saved["error_message"] == "interrupted by a service shutdown"


def test_job_list_filters(service, client):
    url, _ = service
    done = create(client, url, QUERY="ROWS 1", PHASE="RUN", RUNID="a")
    wait_final(client, done)
    time.sleep(0.01)
    middle = datetime.now(UTC)
    time.sleep(0.01)
    pending = [create(client, url, QUERY="SLEEP 0", RUNID=f"p{i}") for i in range(3)]

    def ids(**params) -> list[str]:
        response = client.get(url, params=params)
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/xml"
        )
        root = ElementTree.fromstring(response.content)
        assert root.tag == UWS + "jobs" and root.get("version") == "1.1"
        parse_job_list(io.BytesIO(response.content))  # pyvo reads it
        return [ref.get(XLINK + "href") for ref in root.findall(UWS + "jobref")]

    assert set(ids()) == {done, *pending}
    assert ids(PHASE="COMPLETED") == [done]
    assert set(ids(PHASE=["PENDING", "COMPLETED"])) == {done, *pending}
    assert ids(PHASE="ARCHIVED") == []
    assert set(ids(AFTER=middle.isoformat())) == set(pending)
    assert ids(LAST="2") == [pending[2], pending[1]]  # newest first
    assert ids(LAST="0") == []
    assert client.get(url, params={"PHASE": "DONE"}).status_code == 400
    assert client.get(url, params={"LAST": "-1"}).status_code == 400
    assert client.get(url, params={"AFTER": "yesterday"}).status_code == 400


def test_uploads_saved_listed_and_used(service, client, calls):
    url, store = service
    table = io.BytesIO()
    Table({"ra": [1.0, 2.0], "dec": [3.0, 4.0]}).write(table, format="votable")
    response = client.post(
        url,
        data={"QUERY": "ROWS 1", "UPLOAD": "mine,param:t1", "RUNID": "up"},
        files={"t1": ("t1.xml", table.getvalue(), VOT)},
    )
    assert response.status_code == 303, response.text
    job_url = response.headers["location"]
    job_id = job_url.rsplit("/", 1)[1]
    params = params_of(job_info(client, job_url))
    assert params["UPLOAD"] == ("mine,param:t1", False)
    assert params["t1"] == (f"{job_url}/uploads/t1", True)
    assert client.get(params["t1"][0]).content == table.getvalue()
    assert [p.parent.name for p in (store.root / job_id).rglob("*t1")] == ["uploads"]
    # pyvo's AsyncTAPJob.upload adds a table to the PENDING job through /parameters
    AsyncTAPJob(job_url).upload(other=Table({"x": [1, 2, 3]}))
    params = params_of(job_info(client, job_url))
    assert params["UPLOAD"] == ("mine,param:t1;other,param:other", False)
    assert params["other"][1] is True
    client.post(f"{job_url}/phase", data={"PHASE": "RUN"})
    assert wait_final(client, job_url).phase == "COMPLETED"
    assert [name for name, _ in calls.uploads[job_id]] == ["mine", "other"]
    # once run, parameters are frozen
    response = client.post(f"{job_url}/parameters", data={"QUERY": "ROWS 9"})
    assert response.status_code == 400 and "only be changed while PENDING" in response.text
    assert list((store.root / ".incoming").iterdir()) == []  # no staging left behind


def test_oversized_upload_refused_before_read(service):
    url, store = service
    base, _, path = url.partition("/tap/")
    head = (
        f"POST /tap/{path} HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
        "Content-Type: multipart/form-data; boundary=XyZ\n"
    )
    first = (
        b'--XyZ\r\nContent-Disposition: form-data; name="UPLOAD"\r\n\r\nbig,param:big\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="big"; filename="b.xml"\r\n\r\n'
    )
    status, body, sent = stream_until_answer(base, head, first, max_bytes=200 * 2**20)
    assert status == 400 and sent < 8 * UPLOAD_LIMIT  # not after the whole 200 MiB
    assert 'value="ERROR"' in body and "upload 'big' exceeds the 1 MiB limit" in body
    # a declared 2 GB body is refused from its Content-Length alone
    head = (
        f"POST /tap/{path} HTTP/1.1\r\nHost: x\r\nContent-Length: {2 * 10**9}\r\n"
        "Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n--XyZ\r\n"
    )
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode())
        status, body = read_response(s)
    assert status == 400 and "the request body (2 GB) exceeds" in body
    assert store.list() == []
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_malformed_upload_param_refused(service, client):
    url, store = service
    cases = {
        "1bad,param:t1": "not a legal ADQL identifier",
        "t1,param:missing": "no file part named 'missing'",
        "t1,http://example.org/t.vot": "does not fetch remote tables",
        "t1": "not of the form table_name,URI",
    }
    for value, message in cases.items():
        response = client.post(
            url,
            data={"QUERY": "ROWS 1", "UPLOAD": value},
            files={"t1": ("t1.xml", b"<VOTABLE/>", VOT)},
        )
        assert response.status_code == 400 and response.headers["content-type"] == VOT
        assert 'name="QUERY_STATUS" value="ERROR"' in response.text
        assert message in response.text
    assert store.list() == []
    assert list((store.root / ".incoming").iterdir()) == []


def test_unknown_job_and_bad_requests(service, client):
    url, _ = service
    for suffix in ("", "/phase", "/parameters", "/results", "/error", "/quote", "/owner"):
        response = client.get(f"{url}/nosuchjob{suffix}")
        assert response.status_code == 404 and "no job 'nosuchjob'" in response.text
    assert client.delete(f"{url}/nosuchjob").status_code == 404
    assert client.post(f"{url}/nosuchjob/phase", data={"PHASE": "RUN"}).status_code == 404
    job_url = create(client, url, QUERY="SLEEP 0")
    response = client.post(f"{job_url}/phase", data={})
    assert response.status_code == 400 and "PHASE=RUN or PHASE=ABORT" in response.text
    response = client.post(job_url, data={"ACTION": "EXPLODE"})
    assert response.status_code == 400 and "unknown ACTION" in response.text
    response = client.post(url, data={"QUERY": "x", "PHASE": "ABORT"})
    assert response.status_code == 400 and "only RUN" in response.text
    assert client.get(f"{job_url}/results/result").status_code == 404
    assert client.put(f"{job_url}/quote").status_code == 405


def test_taplint_style_sequences(service, client):
    """The request sequences STILTS taplint's UWS stage makes."""
    url, _ = service
    # create, post runId to /parameters, abort, delete with ACTION=DELETE
    job_url = create(client, url, QUERY="SLEEP 0", RUNID="TAPLINT-001")
    response = client.post(f"{job_url}/parameters", data={"runId": "TAPLINT-002"})
    assert response.status_code == 303
    job = job_info(client, job_url)
    assert params_of(job)["RUNID"] == ("TAPLINT-002", False) and job.runid == "TAPLINT-002"
    assert client.post(f"{job_url}/phase", data={"PHASE": "ABORT"}).status_code == 303
    assert client.get(f"{job_url}/phase").text == "ABORTED"
    response = client.post(job_url, data={"ACTION": "DELETE"})
    assert (response.status_code, response.headers["location"]) == (303, url)
    assert client.get(job_url).status_code == 404
    # create, HTTP DELETE gives 303, then 404
    job_url = create(client, url, QUERY="SLEEP 0")
    assert client.delete(job_url).status_code == 303
    assert client.get(job_url).status_code == 404


def _taplint_jar() -> Path | None:
    """The STILTS jar holding taplint's copy of UWS-v1.1.xsd, if installed."""
    candidates = [Path("/usr/share/java/starlink-ttools.jar")]
    stilts = shutil.which("stilts")
    if stilts:
        here = Path(stilts).resolve().parent
        candidates += [here / "stilts.jar", here.parent / "lib/ttools/stilts-app.jar"]
    return next((p for p in candidates if p.is_file()), None)


_XML_NS_XSD = b"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
 targetNamespace="http://www.w3.org/XML/1998/namespace">
 <xs:attribute name="lang" type="xs:string"/><xs:attribute name="space" type="xs:NCName"/>
 <xs:attribute name="base" type="xs:anyURI"/><xs:attribute name="id" type="xs:ID"/>
</xs:schema>"""


@pytest.fixture(scope="module")
def uws_schema():
    """UWS-v1.1.xsd (+ xlink.xsd) as STILTS taplint validates with; never fetched online."""
    from lxml import etree

    jar = _taplint_jar()
    if jar is None:
        pytest.skip("STILTS jar with taplint's UWS schema not found")
    with zipfile.ZipFile(jar) as z:
        try:
            uws = z.read("uk/ac/starlink/ttools/taplint/UWS-v1.1.xsd")
            xlink = z.read("uk/ac/starlink/ttools/taplint/xlink.xsd")
        except KeyError:
            pytest.skip(f"{jar} holds no UWS-v1.1.xsd")

    class Local(etree.Resolver):
        def resolve(self, url, pubid, context):
            if url.endswith("xlink.xsd"):
                return self.resolve_string(xlink, context)
            if url.endswith("xml.xsd"):  # only xml:lang etc.; a stub suffices
                return self.resolve_string(_XML_NS_XSD, context)
            return None

    parser = etree.XMLParser(no_network=True)
    parser.resolvers.add(Local())
    schema = etree.XMLSchema(etree.fromstring(uws, parser, base_url="file:///UWS-v1.1.xsd"))

    def validate(body: bytes) -> None:
        doc = etree.fromstring(body)
        assert schema.validate(doc), [str(e) for e in schema.error_log]

    return validate


@pytest.mark.parametrize("phase", ["PENDING", "COMPLETED", "ERROR", "ABORTED"])
def test_documents_validate_against_taplint_uws_schema(service, client, uws_schema, phase):
    url, _ = service
    table = io.BytesIO()
    Table({"x": [1]}).write(table, format="votable")
    response = client.post(
        url,
        data={"QUERY": "FAIL oops" if phase == "ERROR" else "ROWS 1", "UPLOAD": "t,param:t"},
        files={"t": ("t.xml", table.getvalue(), VOT)},
    )
    job_url = response.headers["location"]
    if phase == "ABORTED":
        client.post(f"{job_url}/phase", data={"PHASE": "ABORT"})
    elif phase != "PENDING":
        client.post(f"{job_url}/phase", data={"PHASE": "RUN"})
        assert wait_final(client, job_url).phase == phase
    for suffix in ("", "/results", "/parameters"):
        uws_schema(client.get(job_url + suffix).content)
    uws_schema(client.get(url).content)
    uws_schema(client.get(url, params={"PHASE": phase, "LAST": "1"}).content)


@pytest.mark.parametrize("phase", ["PENDING", "COMPLETED", "ERROR"])
def test_job_document_follows_uws_schema(service, client, phase):
    url, _ = service
    query = {"PENDING": "SLEEP 0", "COMPLETED": "ROWS 1", "ERROR": "FAIL <bad> & \x01 wrong"}
    job_url = create(client, url, QUERY=query[phase], LANG="ADQL")
    if phase != "PENDING":
        client.post(f"{job_url}/phase", data={"PHASE": "RUN"})
        wait_final(client, job_url)
    body = client.get(job_url).content
    assert body.startswith(b"<?xml")
    root = ElementTree.fromstring(body)
    assert root.tag == UWS + "job" and root.get("version") == "1.1"
    children = [el.tag.removeprefix(UWS) for el in root]
    order = [name for name, _ in JOB_SEQUENCE]
    assert children == sorted(children, key=order.index), children
    assert {name for name, required in JOB_SEQUENCE if required} <= set(children)
    for el in root:
        name = el.tag.removeprefix(UWS)
        if el.get(XSI_NIL) is not None:
            assert name in NILLABLE and el.get(XSI_NIL) == "true" and not (el.text or "")
        elif name in ("creationTime", "startTime", "endTime", "destruction"):
            assert el.text.endswith("Z") and datetime.fromisoformat(el.text)
    assert root.find(UWS + "phase").text == phase
    for param in root.find(UWS + "parameters"):
        assert param.tag == UWS + "parameter" and param.get("id")
    for result in root.find(UWS + "results"):
        assert result.get(XLINK + "type") == "simple" and result.get(XLINK + "href")
    summary = root.find(UWS + "errorSummary")
    if phase == "ERROR":
        assert summary.get("type") == "fatal" and summary.get("hasDetail") == "true"
        assert summary.find(UWS + "message").text == "<bad> &   wrong"
    else:
        assert summary is None
    job = parse_job(io.BytesIO(body))
    assert job.phase == phase and job.creationtime is not None


def test_mounted_under_tap_async(tmp_path, client):
    with uws_service(tmp_path / "jobs", mount=True) as (url, _):
        response = client.post(url + "/", data={"QUERY": "ROWS 2", "PHASE": "RUN"})
        assert response.status_code == 303
        job_url = response.headers["location"]
        assert job_url.startswith(url + "/") and "//" not in job_url.removeprefix("http://")
        job = wait_final(client, job_url)
        assert job.results[0].href == f"{job_url}/results/result"
        assert client.delete(job_url).headers["location"] == url + "/"
        assert client.get(url + "/").status_code == 200


def test_cancel_token():
    token = CancelToken()
    seen = []
    token.on_cancel(lambda: seen.append("a"))
    unregister = token.on_cancel(lambda: seen.append("b"))
    token.on_cancel(lambda: 1 / 0)  # a failing callback does not stop the others
    token.on_cancel(lambda: seen.append("c"))
    unregister()
    assert not token.is_set() and not token.wait(0.01)
    token.cancel("aborted")
    token.cancel("again")
    assert token.is_set() and token.reason == "aborted" and seen == ["a", "c"]
    token.on_cancel(lambda: seen.append("late"))  # registered after: called at once
    assert seen == ["a", "c", "late"]


def test_store_limits_and_validation(tmp_path):
    store = JobStore(tmp_path / "jobs", make_runner(Calls()), max_jobs=2)
    try:
        store.create({"query": "a"})
        store.create({"QUERY": "b", "PHASE": "RUN"})  # control params are not stored
        assert all("PHASE" not in j.parameters for j in store.list())
        assert all("QUERY" in j.parameters for j in store.list())
        with pytest.raises(InvalidRequestError, match="maximum of 2 jobs"):
            store.create({"QUERY": "c"})
        with pytest.raises(InvalidRequestError, match="no file part named"):
            store.create({"UPLOAD": "t,param:t"})
    finally:
        store.close()


def test_error_votable_escapes():
    """The one error-document writer, which UWS error documents use too."""
    doc = error_votable("a < b & c\x00")
    root = ElementTree.fromstring(doc)
    assert root.tag == "{http://www.ivoa.net/xml/VOTable/v1.3}VOTABLE"
    assert root.get("version") == "1.4"
    (info,) = root.iter("{http://www.ivoa.net/xml/VOTable/v1.3}INFO")
    assert info.text == "a < b & c?"  # XML 1.0 cannot carry U+0000
