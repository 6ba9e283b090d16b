"""What only the PostgreSQL job store (`PostgresJobStore`) does: several stores sharing
jobs, liveness, notifications, restarts. Every test of test_uws.py that uses its
``service`` fixture runs on this store too (the fixture is parametrised over both).
The tests skip, saying why, when PostgreSQL cannot run here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

pytest.importorskip("psycopg_pool", reason="psycopg_pool not installed (the postgres extra)")

from romerea_vo.service.uws import JobLimitError
from romerea_vo.service.uws.pg_store import WORKER_STOPPED, PostgresJobStore

from .test_uws import Calls, make_runner


@pytest.fixture(scope="module")
def jobs_db(uws_jobs_db) -> str:
    return uws_jobs_db


@pytest.fixture
def empty_jobs_db(empty_uws_jobs_db) -> str:
    return empty_uws_jobs_db


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
