"""The UWS tests of test_uws.py, run again with the jobs in PostgreSQL (`PostgresJobStore`).

The same REST binding, runner and assertions: a store is a store. The session's
PostgreSQL cluster holds one database for this module, emptied before each test; the
tests skip, saying why, when PostgreSQL cannot run here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.applications import Starlette

pytest.importorskip("psycopg_pool", reason="psycopg_pool not installed (the postgres extra)")

from romerea_vo.service.params import read_dali_params
from romerea_vo.service.uws import JobLimitError, uws_routes
from romerea_vo.service.uws_pg import WORKER_STOPPED, PostgresJobStore

from .test_params import running_server
from .test_uws import (  # noqa: F401 (collected here again, with this module's `service`)
    UPLOAD_LIMIT,
    Calls,
    client,
    make_runner,
    test_abort_long_job_interrupts_it,
    test_create_run_wait_results_delete,
    test_documents_validate_against_taplint_uws_schema,
    test_execution_duration_and_destruction_settings,
    test_execution_duration_exceeded,
    test_job_document_follows_uws_schema,
    test_job_list_filters,
    test_malformed_upload_param_refused,
    test_oversized_upload_refused_before_read,
    test_phase_run_at_creation_and_blocking_wait,
    test_pyvo_async_job_lifecycle,
    test_runner_error_becomes_job_error,
    test_taplint_style_sequences,
    test_unknown_job_and_bad_requests,
    test_uploads_saved_listed_and_used,
    test_wait_returns_when_other_client_acts,
    uws_schema,
)


@pytest.fixture(scope="module")
def jobs_db(pg_cluster) -> str:
    return pg_cluster.create_database("romerea_uws_tests")


@pytest.fixture
def empty_jobs_db(jobs_db) -> str:
    import psycopg

    with psycopg.connect(jobs_db, autocommit=True) as con:
        if con.execute("SELECT to_regclass('romerea_uws.jobs')").fetchone()[0]:
            con.execute("TRUNCATE romerea_uws.jobs, romerea_uws.workers")
    return jobs_db


@contextlib.contextmanager
def pg_uws_service(
    jobs_db: str, root: Path, calls: Calls, **kwargs
) -> Iterator[tuple[str, PostgresJobStore]]:
    store = PostgresJobStore(jobs_db, root, make_runner(calls), **kwargs)

    async def read_params(request, directory):
        return await read_dali_params(request, directory, max_upload_bytes=UPLOAD_LIMIT)

    app = Starlette(routes=uws_routes(store, read_params=read_params, prefix="/tap/async"))
    try:
        with running_server(app) as url:
            yield f"{url}/tap/async", store
    finally:
        store.close()


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def service(empty_jobs_db, tmp_path, calls) -> Iterator[tuple[str, PostgresJobStore]]:
    with pg_uws_service(
        empty_jobs_db, tmp_path / "jobs", calls, max_execution_duration=60, max_wait=10
    ) as served:
        yield served


def test_two_stores_share_jobs_and_sweep_once(empty_jobs_db, tmp_path):
    calls = Calls()
    root = tmp_path / "shared"
    one = PostgresJobStore(empty_jobs_db, root, make_runner(calls), sweep_interval=3600)
    two = PostgresJobStore(empty_jobs_db, root, make_runner(calls), sweep_interval=3600)
    try:
        keep = one.create({"QUERY": "x"})
        gone = two.create({"QUERY": "y"})
        assert {j.job_id for j in one.list()} == {keep.job_id, gone.job_id}
        two.set_destruction(gone.job_id, datetime.now(UTC) - timedelta(minutes=1))
        assert one.sweep() + two.sweep() == 1  # deleted by one of them, once
        assert [j.job_id for j in two.list()] == [keep.job_id]
        assert not gone.directory.exists() and keep.directory.exists()
        two.run(keep.job_id)
        done = one.wait(keep.job_id, 10)
        while done.phase in ("QUEUED", "EXECUTING"):
            done = one.wait(keep.job_id, 10)
        assert done.phase == "COMPLETED" and done.results[0].path.is_file()
    finally:
        one.close()
        two.close()


def test_job_limit_counts_every_workers_jobs(empty_jobs_db, tmp_path):
    calls = Calls()
    one = PostgresJobStore(empty_jobs_db, tmp_path / "j", make_runner(calls), max_jobs=2)
    two = PostgresJobStore(empty_jobs_db, tmp_path / "j", make_runner(calls), max_jobs=2)
    try:
        one.create({"QUERY": "a"})
        two.create({"QUERY": "b"})
        with pytest.raises(JobLimitError, match="maximum of 2 jobs"):
            one.create({"QUERY": "c"})
    finally:
        one.close()
        two.close()


def _executing(store: PostgresJobStore, job_id: str) -> None:
    deadline = time.monotonic() + 20
    while store.phase(job_id) != "EXECUTING":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.05)


def test_hung_worker_job_becomes_error(empty_jobs_db, tmp_path):
    # `hung` never beats (as if stuck) but keeps its session and lock; `alive` reaps its job
    calls = Calls()
    root = tmp_path / "jobs"
    hung = PostgresJobStore(empty_jobs_db, root, make_runner(calls), heartbeat_interval=3600)
    alive = None
    try:
        job = hung.create({"QUERY": "BLOCK"})
        hung.run(job.job_id)
        _executing(hung, job.job_id)
        alive = PostgresJobStore(empty_jobs_db, root, make_runner(Calls()), stale_after=1.0)
        done = alive.wait(job.job_id, 20, "EXECUTING")
        assert done.phase == "ERROR" and done.error_message == WORKER_STOPPED
        assert calls.interrupted.wait(10)  # the hung worker was told to stop its query
    finally:
        hung.close()
        if alive is not None:
            alive.close()


def test_missed_notification_is_caught_by_the_heartbeat(empty_jobs_db, tmp_path):
    import psycopg

    calls = Calls()
    store = PostgresJobStore(empty_jobs_db, tmp_path / "jobs", make_runner(calls))
    try:
        job = store.create({"QUERY": "BLOCK"})
        store.run(job.job_id)
        _executing(store, job.job_id)
        with psycopg.connect(empty_jobs_db, autocommit=True) as con:  # no NOTIFY
            con.execute(
                "UPDATE romerea_uws.jobs SET phase = 'ABORTED' WHERE job_id = %s", (job.job_id,)
            )
        assert calls.interrupted.wait(10)
        assert store.get(job.job_id).phase == "ABORTED"
    finally:
        store.close()
