"""Issue 16, items 1 and 2: abandoned queries stop, admission control, memory bounds.

Each test observes events, never durations: the service's count of executing queries
drops to zero (and PostgreSQL's pg_stat_activity empties) after a client leaves, a
request that needs the only slot is then served, a full queue answers 503 at once.
Waits have generous timeouts so that a busy machine only makes them slower.
"""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
import urllib.parse
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from romerea_vo.service.app import ServiceConfig, create_app
from romerea_vo.service.tap import QueryCancelled, TapEngine, TapLimits
from romerea_vo.service.uws import CancelToken
from romerea_vo.store import open_database
from romerea_vo.xmatch import MatchCancelled, SkyIndex, TooManyPairs, zone_height
from tests.conftest import LiveServer

#: Never finishes on any machine: four copies of the field index, ~10^12 rows.
ENDLESS = (
    "SELECT COUNT(*) FROM rome.field_index AS a, rome.field_index AS b, "
    "rome.field_index AS c, rome.field_index AS d"
)
SMALL_JOIN = (
    "SELECT COUNT(*) FROM rome.field_index AS a JOIN rome.stars AS b "
    "ON a.field = b.field AND a.field_id = b.field_id WHERE a.field_id <= 10"
)
WAIT = 120.0  # generous: only a broken service takes this long


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def idle(svc) -> bool:
    """No query holds or waits for a slot (a response is released just after it is sent)."""
    lanes = (svc.admission.heavy, svc.admission.light)
    return all(not lane.running and not lane.waiting and not lane.by_client for lane in lanes)


LIMITS = TapLimits(
    default_maxrec=5000,
    hard_maxrec=50_000,
    sync_execution_duration=3600,  # an abandoned query would run on for an hour
    query_slots=1,
    query_queue=1,
    client_slots=2,
    light_slots=2,
)


@pytest.fixture(scope="module", params=["duckdb", "postgresql"])
def service(request, tmp_path_factory):
    """A live service with one heavy-query slot; yields (url, TapService, db spec)."""
    if request.param == "duckdb":
        db = request.getfixturevalue("tap_db")
    else:
        db = request.getfixturevalue("pg_tap_db")
    work = tmp_path_factory.mktemp(f"abuse-{request.param}")
    app = create_app(ServiceConfig(db_path=db, work_dir=work, limits=LIMITS))
    live = LiveServer(app)
    yield live.url, app.state.service, db
    live.stop()


def open_query(url: str, query: str) -> socket.socket:
    """POST a sync query on a raw socket and leave it waiting for the answer."""
    parts = urllib.parse.urlsplit(url)
    body = urllib.parse.urlencode({"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query})
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(
        (
            f"POST /tap/sync HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
    )
    return sock


def sync(url: str, query: str) -> httpx.Response:
    return httpx.post(
        url + "/tap/sync",
        data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, "RESPONSEFORMAT": "csv"},
        timeout=WAIT,
    )


def pg_active(db: str) -> int:
    """Statements of other sessions PostgreSQL is running on ``db`` now."""
    import psycopg

    with psycopg.connect(db, autocommit=True) as con:
        return con.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'active' AND pid <> pg_backend_pid() AND query ILIKE '%field_index%'"
        ).fetchone()[0]


def test_abandoned_query_is_interrupted_and_frees_its_slot(service):
    url, svc, db = service
    wait_for(lambda: idle(svc), "the service is idle")
    sock = open_query(url, ENDLESS)
    wait_for(lambda: svc.admission.heavy.running == 1, "the endless query runs")
    if str(db).startswith("postgresql"):
        wait_for(lambda: pg_active(db) == 1, "PostgreSQL runs it")
    sock.close()  # the client gives up
    wait_for(lambda: svc.admission.running == 0, "the query is interrupted")
    if str(db).startswith("postgresql"):
        wait_for(lambda: pg_active(db) == 0, "PostgreSQL no longer runs it")
    # the only heavy slot is free again: a join is served
    response = sync(url, SMALL_JOIN)
    assert response.status_code == 200, response.text
    assert int(response.text.splitlines()[1]) >= 10


def test_full_queue_answers_503_and_light_requests_keep_their_capacity(service, authority):
    url, svc, _ = service
    wait_for(lambda: idle(svc), "the service is idle")
    running = open_query(url, ENDLESS)
    queued = None
    try:
        wait_for(lambda: svc.admission.heavy.running == 1, "the first query runs")
        queued = open_query(url, ENDLESS)
        wait_for(lambda: svc.admission.heavy.waiting == 1, "the second one waits")
        refused = sync(url, SMALL_JOIN)
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) > 0
        assert 'name="QUERY_STATUS" value="ERROR"' in refused.text
        assert "retry later" in refused.text
        # cheap requests are served meanwhile
        cone = sync(
            url,
            "SELECT TOP 5 field_id FROM rome.field_index "
            "WHERE 1 = CONTAINS(POINT(ra, dec), CIRCLE(0, 0, 1))",
        )
        assert cone.status_code == 200, cone.text
        assert httpx.get(url + "/tap/availability", timeout=WAIT).status_code == 200
        star = f"{authority}?ROME-FIELD-01/5"
        lightcurve = httpx.get(url + "/lightcurve", params={"ID": star}, timeout=WAIT)
        assert lightcurve.status_code == 200, lightcurve.text
    finally:
        running.close()
        if queued is not None:
            queued.close()
    wait_for(lambda: idle(svc), "both are interrupted and their slots freed")


def test_one_client_cannot_take_every_slot(tap_db, tmp_path):
    limits = TapLimits(sync_execution_duration=3600, query_slots=4, query_queue=4, client_slots=1)
    app = create_app(ServiceConfig(db_path=tap_db, work_dir=tmp_path, limits=limits))
    live = LiveServer(app)
    svc = app.state.service
    sock = open_query(live.url, ENDLESS)
    try:
        wait_for(lambda: svc.admission.heavy.running == 1, "the first query runs")
        refused = sync(live.url, SMALL_JOIN)
        assert refused.status_code == 503
        assert "per client" in refused.text
    finally:
        sock.close()
        wait_for(lambda: svc.admission.running == 0, "the query is interrupted")
        live.stop()


def test_memory_settings_reach_the_engines(service):
    _, svc, db = service
    with svc.db.session() as session:
        if str(db).startswith("postgresql"):
            assert session.fetchall("SHOW work_mem")[0][0] == LIMITS.pg_work_mem
        else:
            (value,) = session.fetchall("SELECT current_setting('memory_limit')")[0]
            assert value.replace(" ", "").lower().startswith(("953.6mib", "1.0gb", "1gb"))


# --- the spatial-join core -------------------------------------------------------------


def dense_field(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return 268.0 + rng.uniform(0, 0.2, n), -29.0 + rng.uniform(0, 0.2, n)


def test_match_refuses_a_huge_join_before_allocating_it():
    ra, dec = dense_field(200_000)
    radius = 360.0  # 0.1 deg: ~10^10 pairs
    index = SkyIndex(ra, dec, zone_height(radius))
    tracemalloc.start()
    try:
        with pytest.raises(TooManyPairs, match="estimated before matching"):
            index.match(ra, dec, radius, max_pairs=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The first block of candidate pairs alone would take > 64 MB.
    assert peak < 32 * 2**20


def test_match_keeps_joins_near_the_limit():
    ra, dec = dense_field(20_000)
    index = SkyIndex(ra, dec, zone_height(2.0))
    found = index.match(ra, dec, 2.0)
    # the estimate does not refuse a join that fits
    assert len(index.match(ra, dec, 2.0, max_pairs=len(found))) == len(found)


def test_match_stops_when_cancelled():
    ra, dec = dense_field(20_000)
    index = SkyIndex(ra, dec, zone_height(36.0))
    with pytest.raises(MatchCancelled):
        index.match(ra, dec, 36.0, cancelled=lambda: True)


def test_prepare_of_a_spatial_join_stops_on_cancel(tap_db, tmp_path):
    db = open_database(tap_db)
    try:
        engine = TapEngine(db, TapLimits())
        token = CancelToken()
        token.cancel("client went away")
        from romerea_vo.service.params import DaliParams

        params = DaliParams(
            values={
                "LANG": ["ADQL"],
                "QUERY": [
                    "SELECT COUNT(*) FROM rome.field_index AS a JOIN rome.field_index AS b "
                    "ON 1 = CONTAINS(POINT(a.ra, a.dec), CIRCLE(b.ra, b.dec, 0.01))"
                ],
            },
            files={},
        )
        with db.session() as session, pytest.raises(QueryCancelled):
            engine.prepare(params, session, tmp_path, cancelled=token.is_set)
    finally:
        db.close()


RUNAWAY = {  # ~10^15 rows: no machine finishes these
    "duckdb": "SELECT COUNT(*) FROM range(100000000) AS a, range(10000000) AS b",
    "postgresql": "SELECT COUNT(*) FROM generate_series(1, 100000000) AS a, "
    "generate_series(1, 10000000) AS b",
}


@pytest.mark.parametrize("backend", ["duckdb", "postgresql"])
def test_an_interrupt_before_the_statement_starts_is_repeated(request, backend):
    """An async job cancelled (execution duration, DELETE) just before its statement
    started left a runaway join running for ever: the engines forget an interrupt that
    comes before a statement. The job's interrupt is repeated until the runner returns."""
    from romerea_vo.store.session import QueryInterrupted

    target = request.getfixturevalue("tap_db" if backend == "duckdb" else "pg_tap_db")
    db = open_database(target)
    session = db.session()
    token, returned = CancelToken(), threading.Event()
    token.on_cancel(session.interrupt)
    token.repeat_until(returned)  # what the in-process job store does for every job
    token.cancel("exceeded its execution duration")  # before the statement starts
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            session.fetchall(RUNAWAY[backend])
        except BaseException as exc:
            outcome.append(exc)
        finally:
            returned.set()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(WAIT)
    stuck = runner.is_alive()
    returned.set()
    if stuck:  # stop it by hand so that the suite goes on, then fail
        session.interrupt()
        runner.join(WAIT)
    session.close()
    db.close()
    assert not stuck, "the statement ran on after its job was cancelled"
    assert outcome and isinstance(outcome[0], QueryInterrupted), outcome


def test_the_job_store_repeats_a_cancelled_jobs_interrupts(tmp_path):
    """The in-process job store repeats a cancelled job's callbacks until its runner
    returns (the PostgreSQL store does so on its heartbeat): a runner whose engine
    ignores the first interrupts still stops."""
    from romerea_vo.service.uws import JobStore

    heard = threading.Event()
    calls: list[float] = []

    def runner(job, token):
        def interrupt() -> None:
            calls.append(time.monotonic())
            if len(calls) >= 3:  # an engine that only hears the third interrupt
                heard.set()

        token.on_cancel(interrupt)
        heard.wait(WAIT)

    store = JobStore(tmp_path / "jobs", runner)
    try:
        job = store.create({"LANG": "ADQL", "QUERY": "SELECT 1"})
        store.run(job.job_id)
        wait_for(lambda: store.get(job.job_id).phase == "EXECUTING", "the job to start")
        store.abort(job.job_id)
        assert heard.wait(WAIT), "the interrupt was not repeated"
        assert len(calls) >= 3
    finally:
        store.close()
