"""UWS jobs shared by several service processes through PostgreSQL.

`PostgresJobStore` keeps every job's state in the schema ``romerea_uws`` (created on
first use when the role may) and the job directories (uploads, results) under a
directory that all workers share. Any worker answers for any job; the choices:

* **Queue.** PHASE=RUN marks the job QUEUED (``queued_at``) and sends a NOTIFY; every
  worker's dispatcher claims queued jobs in ``queued_at`` order with ``UPDATE ... WHERE
  job_id = (SELECT ... FOR UPDATE SKIP LOCKED)`` while it has a free thread, so a job
  runs in exactly one worker. Notifications only make this prompt: the dispatcher also
  polls every ``poll_interval`` seconds, so nothing depends on a notification arriving.
* **Liveness.** Each worker holds a session-level advisory lock (key from a sequence,
  recorded in ``romerea_uws.workers``) on a connection of its own, and stamps
  ``heartbeat`` on the jobs it executes every ``heartbeat_interval`` seconds. Every
  worker, every ``heartbeat_interval``, marks ERROR ("the worker executing this job
  stopped") any EXECUTING job whose worker's lock is free (its process died: the
  server drops the lock as soon as the connection closes) or whose heartbeat is older
  than ``stale_after`` (a hung or cut-off worker). A worker that comes back finds its
  job no longer EXECUTING under its id and discards what it produced.
* **Control.** ABORT, DELETE and destruction change the row and NOTIFY
  ``"<job_id> <PHASE>"``; the executing worker cancels the job's `CancelToken` on the
  notification, or at its next heartbeat, which also reports the jobs that are no
  longer its own. Blocking WAIT wakes on the notification too, re-reading the row at
  least every ``poll_interval`` seconds.
* **Restart.** QUEUED jobs stay queued when every worker stops and run when one
  starts. On a clean shutdown a worker interrupts its executing jobs and queues them
  again (they start afresh elsewhere or after the restart); a job that does not stop
  within the shutdown timeout becomes ERROR. A killed worker's jobs become ERROR as
  above, never QUEUED again: a query that kills its worker must not kill the next.
* Times are the database's (``now()``) for heartbeats and queueing, so workers on
  several hosts need no synchronised clocks; the UWS times are written as by `JobStore`.

Connections: a small psycopg_pool pool per process for requests and the dispatcher, and
one dedicated autocommit connection for the lock, LISTEN and the heartbeat. Sessions
set ``default_transaction_read_only = off`` because the recommended service role has it
on (services/postgres/setup.sql): the job schema is the one place it may write.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from ...errors import InvalidRequestError, RomeReaError
from ...store.postgres import POSTGRES_EXTRA, PostgresError

try:  # psycopg, psycopg_pool: the optional extra, pip install 'romerea-vo[postgres]'
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.rows import dict_row
    from psycopg.types.json import Jsonb
    from psycopg_pool import ConnectionPool
except ImportError as exc:
    raise PostgresError(
        f"a PostgreSQL job store (--jobs-db) needs psycopg and psycopg_pool ({exc}): "
        f"{POSTGRES_EXTRA}"
    ) from None
from .models import (
    ABORTED,
    COMPLETED,
    ERROR,
    EXECUTING,
    FATAL,
    HELD,
    PENDING,
    QUEUED,
    STAGING,
    STAGING_MAX_AGE,
    SUSPENDED,
    TRANSIENT,
    CancelToken,
    Job,
    JobLimitError,
    JobNotFoundError,
    JobRunner,
    Result,
    error_message,
    job_parameters,
    now_utc,
    unlink_quietly,
)
from .store import JobStoreBase

__all__ = [
    "SCHEMA",
    "WORKER_STOPPED",
    "JobDatabaseError",
    "PostgresJobStore",
    "ensure_schema",
    "redact",
]

log = logging.getLogger("romerea_vo.service.uws_pg")

SCHEMA = "romerea_uws"
CHANNEL = "romerea_uws"
SCHEMA_VERSION = "1"
LOCK_CLASS = 0x524F4D45  # "ROME": the first key of every two-key advisory lock we take
WORKER_STOPPED = "the worker executing this job stopped"
SHUTDOWN = "interrupted by a service shutdown"
_ORPHAN_AGE = 3600.0  # a job directory without a row, older than this, is removed

_DDL = [
    """CREATE TABLE romerea_uws.meta (key text PRIMARY KEY, value text NOT NULL)""",
    """CREATE TABLE romerea_uws.jobs (
        job_id text PRIMARY KEY,
        phase text NOT NULL,
        run_id text,
        owner text,
        client text,
        base_url text,
        creation_time timestamptz NOT NULL,
        start_time timestamptz,
        end_time timestamptz,
        execution_duration integer NOT NULL,
        destruction timestamptz NOT NULL,
        quote timestamptz,
        parameters jsonb NOT NULL DEFAULT '{}',
        files jsonb NOT NULL DEFAULT '{}',
        results jsonb NOT NULL DEFAULT '[]',
        error_message text,
        error_type text NOT NULL DEFAULT 'fatal',
        queued_at timestamptz,
        worker_id text,
        worker_pid integer,
        worker_host text,
        heartbeat timestamptz
    )""",
    "COMMENT ON TABLE romerea_uws.jobs IS "
    "'UWS jobs of romerea-vo; files live in the service''s shared work directory'",
    "CREATE INDEX jobs_queue ON romerea_uws.jobs (queued_at) WHERE phase = 'QUEUED'",
    "CREATE INDEX jobs_executing ON romerea_uws.jobs (worker_id) WHERE phase = 'EXECUTING'",
    "CREATE INDEX jobs_destruction ON romerea_uws.jobs (destruction)",
    "CREATE INDEX jobs_creation ON romerea_uws.jobs (creation_time)",
    "CREATE INDEX jobs_client ON romerea_uws.jobs (client, creation_time)",
    """CREATE TABLE romerea_uws.workers (
        worker_id text PRIMARY KEY,
        lock_key integer NOT NULL,
        pid integer NOT NULL,
        host text NOT NULL,
        started timestamptz NOT NULL DEFAULT now(),
        heartbeat timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE SEQUENCE romerea_uws.worker_keys AS integer MINVALUE 1 CYCLE",
    f"INSERT INTO romerea_uws.meta VALUES ('schema_version', '{SCHEMA_VERSION}')",
]


_ADD_CLIENT = """DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'romerea_uws'
                   AND table_name = 'jobs' AND column_name = 'client') THEN
        ALTER TABLE romerea_uws.jobs ADD COLUMN client text;
        CREATE INDEX jobs_client ON romerea_uws.jobs (client, creation_time);
    END IF;
END $$"""

_ADD_BASE_URL = """DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'romerea_uws'
                   AND table_name = 'jobs' AND column_name = 'base_url') THEN
        ALTER TABLE romerea_uws.jobs ADD COLUMN base_url text;
    END IF;
END $$"""


_Row = TypeVar("_Row")


def _one(cur: psycopg.Cursor[_Row]) -> _Row:
    """The row of a statement that always returns one (a count, RETURNING, nextval)."""
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("the job database returned no row where one is certain")
    return row


class JobDatabaseError(JobLimitError):
    """The job database cannot be reached or used; clients should retry (HTTP 503)."""


def redact(conninfo: str) -> str:
    """A connection string fit for messages: the password left out."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparsable connection string>"
    params.pop("password", None)
    user, host = params.get("user"), params.get("host", "")
    where = f"{host}:{params['port']}" if params.get("port") else host
    return f"postgresql://{f'{user}@' if user else ''}{where}/{params.get('dbname', '')}"


def _session_settings(conn: psycopg.Connection) -> None:
    """What every job-store session sets (see the module docstring)."""
    autocommit = conn.autocommit
    conn.autocommit = True
    conn.execute("SET default_transaction_read_only = off")
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET statement_timeout = '30s'")
    conn.autocommit = autocommit


def _connect(conninfo: str, *, autocommit: bool, name: str) -> psycopg.Connection:
    try:
        conn = psycopg.connect(
            conninfo, autocommit=autocommit, application_name=name, connect_timeout=10
        )
    except psycopg.Error as exc:
        raise JobDatabaseError(
            f"cannot connect to the job database {redact(conninfo)}: {exc}".strip()
        ) from None
    _session_settings(conn)
    return conn


def ensure_schema(conninfo: str) -> None:
    """Create schema ``romerea_uws`` and its tables if missing; check their version.

    Several processes may call this at once (an advisory lock orders them). Creating the
    schema needs CREATE on the database; an operator who does not grant that creates the
    schema, owned by the service role, as in services/postgres/setup.sql.
    """
    with _connect(conninfo, autocommit=False, name="romerea-vo uws setup") as conn:
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_CLASS,))
            (meta,) = _one(conn.execute("SELECT to_regclass('romerea_uws.meta')"))
            if meta is None:
                (have,) = _one(
                    conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (SCHEMA,))
                )
                if not have:
                    conn.execute(f"CREATE SCHEMA {SCHEMA}")
                for statement in _DDL:
                    conn.execute(statement)
                conn.commit()
                return
            row = conn.execute(
                "SELECT value FROM romerea_uws.meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is not None and row[0] == SCHEMA_VERSION:
                conn.execute(_ADD_CLIENT)  # schemas made before per-client quotas
                conn.execute(_ADD_BASE_URL)  # ... and before jobs recorded their root URL
            conn.commit()
        except psycopg.errors.InsufficientPrivilege as exc:
            raise JobDatabaseError(
                f"the role of {redact(conninfo)} may not set up schema {SCHEMA} ({exc}); "
                "create it as in services/postgres/setup.sql"
            ) from None
        except psycopg.Error as exc:
            raise JobDatabaseError(f"cannot set up the job schema {SCHEMA}: {exc}") from None
    if row is None or row[0] != SCHEMA_VERSION:
        found = row[0] if row else "none"
        raise JobDatabaseError(
            f"schema {SCHEMA} in {redact(conninfo)} has version {found}, this romerea-vo "
            f"needs {SCHEMA_VERSION}: drop the schema (its jobs are lost) or use another database"
        )


def _rel(job: Job, path: Path) -> str:
    return str(path.relative_to(job.directory))


def _results_json(job: Job) -> Jsonb:
    return Jsonb(
        [
            {"id": r.id, "path": _rel(job, r.path), "media_type": r.media_type, "size": r.size}
            for r in job.results
        ]
    )


class PostgresJobStore(JobStoreBase):
    """UWS jobs in PostgreSQL (``conninfo``), their files under the shared ``root``.

    Arguments as `JobStore`, plus: ``max_workers`` jobs run at once in this process;
    ``heartbeat_interval`` seconds between heartbeats (and checks for dead workers);
    a heartbeat older than ``stale_after`` seconds means the worker is gone;
    ``poll_interval`` bounds how long a missed notification can delay anything;
    ``pool_size`` connections at most for requests. Several stores (processes, hosts)
    may share one database and one ``root``.
    """

    blocking_io = True

    def __init__(
        self,
        conninfo: str,
        root: Path,
        runner: JobRunner,
        *,
        max_workers: int = 2,
        default_execution_duration: int = 600,
        max_execution_duration: int = 3600,
        default_destruction: timedelta = timedelta(days=7),
        max_destruction: timedelta = timedelta(days=30),
        max_jobs: int = 1000,
        max_wait: float = 60.0,
        sweep_interval: float = 60.0,
        max_jobs_per_client: int = 100,
        max_result_bytes: int = 0,
        heartbeat_interval: float = 1.0,
        stale_after: float = 15.0,
        poll_interval: float = 2.0,
        pool_size: int = 4,
    ) -> None:
        self.conninfo = conninfo
        self._set_limits(
            root,
            runner,
            default_execution_duration=default_execution_duration,
            max_execution_duration=max_execution_duration,
            default_destruction=default_destruction,
            max_destruction=max_destruction,
            max_jobs=max_jobs,
            max_wait=max_wait,
            sweep_interval=sweep_interval,
            max_jobs_per_client=max_jobs_per_client,
            max_result_bytes=max_result_bytes,
        )
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.poll_interval = poll_interval
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.worker_id = f"{self.host}:{self.pid}:{secrets.token_hex(3)}"

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._tokens: dict[str, CancelToken] = {}
        self._waiters: dict[str, set[Callable[[], object]]] = {}
        self._closed = threading.Event()
        self._dispatch = threading.Event()
        self._slots = threading.Semaphore(max_workers)
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="uws-pg-job")

        ensure_schema(conninfo)
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max(2, pool_size),
            kwargs={"application_name": f"romerea-vo uws {self.worker_id}"},
            configure=_session_settings,
            check=ConnectionPool.check_connection,
            name="romerea-uws",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=15)
        except Exception as exc:
            self._pool.close()
            raise JobDatabaseError(
                f"cannot open connections to {redact(conninfo)}: {exc}"
            ) from None
        try:
            self._session = self._register()
            self._reap()
        except BaseException:
            if getattr(self, "_session", None) is not None:
                self._session.close()
            self._pool.close()
            raise
        self._last_sweep = 0.0
        self._housekeeper = threading.Thread(
            target=self._housekeeping_loop, name="uws-pg-housekeeping", daemon=True
        )
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="uws-pg-dispatch", daemon=True
        )
        self._housekeeper.start()
        self._dispatcher.start()
        self._dispatch.set()  # jobs queued before this worker started

    # --- database plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """A transaction on a pooled connection; database failures become `JobDatabaseError`."""
        try:
            with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                yield cur
        except psycopg.Error as exc:  # includes psycopg_pool.PoolTimeout
            log.warning("job database error: %s", exc)
            raise JobDatabaseError(f"the job database failed: {exc}".strip()) from None

    @staticmethod
    def _notify(cur: psycopg.Cursor[Any], job_id: str, phase: str) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{job_id} {phase}"))

    def _job(self, row: Mapping[str, Any]) -> Job:
        directory = self.root / row["job_id"]
        return Job(
            job_id=row["job_id"],
            directory=directory,
            creation_time=row["creation_time"],
            destruction=row["destruction"],
            phase=row["phase"],
            run_id=row["run_id"],
            owner=row["owner"],
            client=row.get("client"),
            base_url=row.get("base_url"),
            start_time=row["start_time"],
            end_time=row["end_time"],
            execution_duration=row["execution_duration"],
            quote=row["quote"],
            parameters=dict(row["parameters"]),
            files={name: directory / rel for name, rel in row["files"].items()},
            results=[
                Result(r["id"], directory / r["path"], r["media_type"], int(r["size"]))
                for r in row["results"]
            ],
            error_message=row["error_message"],
            error_type=row["error_type"],
        )

    @staticmethod
    def _not_found(job_id: str) -> JobNotFoundError:
        return JobNotFoundError(f"no job {job_id!r} (never created, deleted or destroyed)")

    def _row(
        self, cur: psycopg.Cursor[dict[str, Any]], job_id: str, *, lock: bool = False
    ) -> dict[str, Any]:
        cur.execute(
            "SELECT * FROM romerea_uws.jobs WHERE job_id = %s" + (" FOR UPDATE" if lock else ""),
            (job_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise self._not_found(job_id)
        return row

    # --- operations ------------------------------------------------------------------

    def _add(self, job: Job) -> Job:
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO romerea_uws.jobs (job_id, phase, run_id, owner, client, base_url,"
                " creation_time, execution_duration, destruction, parameters, files)"
                " VALUES (%s, 'PENDING', %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    job.job_id,
                    job.run_id,
                    job.owner,
                    job.client,
                    job.base_url,
                    job.creation_time,
                    job.execution_duration,
                    job.destruction,
                    Jsonb(job.parameters),
                    Jsonb({name: _rel(job, path) for name, path in job.files.items()}),
                ),
            )
        return job

    def _job_count(self) -> int:
        """All workers' jobs count against the limit."""
        with self._tx() as cur:
            cur.execute("SELECT count(*) AS n FROM romerea_uws.jobs")
            return _one(cur)["n"]

    def _client_jobs(self, client: str) -> list[Job]:
        with self._tx() as cur:
            cur.execute(
                "SELECT * FROM romerea_uws.jobs WHERE client = %s ORDER BY creation_time",
                (client,),
            )
            return [self._job(row) for row in cur.fetchall()]

    def _result_bytes(self) -> int:
        with self._tx() as cur:
            cur.execute(
                "SELECT coalesce(sum((r->>'size')::bigint), 0) AS n"
                " FROM romerea_uws.jobs, jsonb_array_elements(results) AS r"
            )
            return int(_one(cur)["n"])

    def update_parameters(
        self, job_id: str, parameters: Mapping[str, str], files: Mapping[str, Path] | None = None
    ) -> Job:
        """Set parameters (and add uploads) of a PENDING job; UPLOAD tables are merged."""
        params = job_parameters(parameters)
        files = dict(files or {})

        def check(job: Job) -> str | None:
            return self._check_update(job, params, files)

        check(self.get(job_id))
        moved = self._move_files(self.root / job_id, files) if files else {}
        replaced: list[Path] = []
        try:
            with self._tx() as cur:
                job = self._job(self._row(cur, job_id, lock=True))
                upload = check(job)  # again: another request may have run it meanwhile
                replaced = self._apply_update(job, params, upload, moved)
                cur.execute(
                    "UPDATE romerea_uws.jobs SET parameters = %s, files = %s, run_id = %s"
                    " WHERE job_id = %s",
                    (
                        Jsonb(job.parameters),
                        Jsonb({name: _rel(job, path) for name, path in job.files.items()}),
                        job.run_id,
                        job_id,
                    ),
                )
            moved = {}
        finally:
            unlink_quietly(moved.values())
        unlink_quietly(replaced)
        return job

    def get(self, job_id: str) -> Job:
        """A snapshot of a job; raises `JobNotFoundError`."""
        with self._tx() as cur:
            return self._job(self._row(cur, job_id))

    def phase(self, job_id: str) -> str:
        """The current phase of a job."""
        with self._tx() as cur:
            cur.execute("SELECT phase FROM romerea_uws.jobs WHERE job_id = %s", (job_id,))
            row = cur.fetchone()
        if row is None:
            raise self._not_found(job_id)
        return row["phase"]

    def list(
        self,
        phase: Iterable[str] | None = None,
        after: datetime | None = None,
        last: int | None = None,
    ) -> list[Job]:
        """Job snapshots by creation time (newest first when ``last`` is given).

        ARCHIVED jobs are left out unless ``phase`` asks for them.
        """
        where: list[str] = []
        args: list[Any] = []
        phases = sorted(set(phase)) if phase else None
        if phases:
            where.append("phase = ANY(%s)")
            args.append(phases)
        else:
            where.append("phase <> 'ARCHIVED'")
        if after is not None:
            where.append("creation_time > %s")
            args.append(after)
        query = f"SELECT * FROM romerea_uws.jobs WHERE {' AND '.join(where)}"
        if last is not None:
            query += " ORDER BY creation_time DESC, job_id LIMIT %s"
            args.append(last)
        else:
            query += " ORDER BY creation_time, job_id"
        with self._tx() as cur:
            cur.execute(query, args)
            return [self._job(row) for row in cur.fetchall()]

    def run(self, job_id: str) -> Job:
        """PHASE=RUN: queue a PENDING (or HELD) job for whichever worker is free first."""
        if self._closed.is_set():
            raise JobLimitError("the service is shutting down")
        with self._tx() as cur:
            row = self._row(cur, job_id, lock=True)
            if row["phase"] in (QUEUED, EXECUTING):
                return self._job(row)
            if row["phase"] not in (PENDING, HELD):
                raise InvalidRequestError(
                    f"job {job_id} is {row['phase']} and cannot be run again; create a new job"
                )
            cur.execute(
                "UPDATE romerea_uws.jobs SET phase = 'QUEUED', queued_at = clock_timestamp()"
                " WHERE job_id = %s RETURNING *",
                (job_id,),
            )
            job = self._job(_one(cur))
            self._notify(cur, job_id, QUEUED)
        self._dispatch.set()
        return job

    def abort(self, job_id: str) -> Job:
        """PHASE=ABORT: a pending, queued or executing job becomes ABORTED, wherever it runs."""
        with self._tx() as cur:
            row = self._row(cur, job_id, lock=True)
            if row["phase"] == ABORTED:
                return self._job(row)
            if row["phase"] not in (PENDING, QUEUED, EXECUTING, HELD, SUSPENDED):
                raise InvalidRequestError(
                    f"job {job_id} is {row['phase']}: only a pending, queued or executing job "
                    "can be aborted"
                )
            cur.execute(
                "UPDATE romerea_uws.jobs SET phase = 'ABORTED',"
                " end_time = coalesce(end_time, now()), error_message = %s,"
                " error_type = 'fatal', results = '[]' WHERE job_id = %s RETURNING *",
                ("job aborted on request", job_id),
            )
            job = self._job(_one(cur))
            self._notify(cur, job_id, ABORTED)
        unlink_quietly(r.path for r in self._job(row).results)
        self._cancel_local(job_id, "aborted")
        return job

    def delete(self, job_id: str) -> None:
        """Delete a job and its directory, stopping it first (in whichever worker) if it runs."""
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM romerea_uws.jobs WHERE job_id = %s RETURNING job_id", (job_id,)
            )
            if cur.fetchone() is None:
                raise self._not_found(job_id)
            self._notify(cur, job_id, "DELETED")
        self._cancel_local(job_id, "deleted")
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def set_execution_duration(self, job_id: str, seconds: int) -> Job:
        """Set the execution duration (clamped) of a PENDING or QUEUED job."""
        seconds = self._clamp_duration(seconds)
        with self._tx() as cur:
            row = self._row(cur, job_id, lock=True)
            if row["phase"] not in (PENDING, QUEUED, HELD):
                raise InvalidRequestError(
                    f"job {job_id} is {row['phase']}: the execution duration can only be "
                    "changed before the job runs"
                )
            cur.execute(
                "UPDATE romerea_uws.jobs SET execution_duration = %s WHERE job_id = %s RETURNING *",
                (seconds, job_id),
            )
            return self._job(_one(cur))

    def set_destruction(self, job_id: str, when: datetime) -> Job:
        """Set the destruction time, no later than creation + ``max_destruction``."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        with self._tx() as cur:
            cur.execute(
                "UPDATE romerea_uws.jobs SET destruction = least(%s, creation_time + %s)"
                " WHERE job_id = %s RETURNING *",
                (when, self.max_destruction, job_id),
            )
            row = cur.fetchone()
        if row is None:
            raise self._not_found(job_id)
        return self._job(row)

    # --- blocking WAIT ---------------------------------------------------------------

    def _watch(self, job_id: str, wake: Callable[[], object]) -> None:
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(wake)

    def _unwatch(self, job_id: str, wake: Callable[[], object]) -> None:
        with self._lock:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._waiters[job_id]

    def _wake(self, job_id: str | None = None) -> None:
        with self._lock:
            if job_id is None:
                wakes = [w for ws in self._waiters.values() for w in ws]
            else:
                wakes = list(self._waiters.get(job_id, ()))
        for wake in wakes:
            with contextlib.suppress(RuntimeError):  # an event loop closed meanwhile
                wake()

    def wait(self, job_id: str, timeout: float, phase: str | None = None) -> Job:
        """Block while the job stays in ``phase`` (default: its current active phase).

        Returns at once if the job is not in ``phase`` or not active; waits at most
        ``timeout`` seconds (negative: the maximum), capped at ``max_wait``. A change
        made by any worker ends the wait.
        """
        event = threading.Event()
        self._watch(job_id, event.set)  # before reading: no change can slip in between
        try:
            job = self.get(job_id)
            waiting, deadline = self._wait_limit(job, timeout, phase)
            while waiting and not self._closed.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                event.wait(min(remaining, self.poll_interval))
                event.clear()
                job = self.get(job_id)
                if job.phase != waiting:
                    break
            return job
        finally:
            self._unwatch(job_id, event.set)

    async def wait_async(self, job_id: str, timeout: float, phase: str | None = None) -> Job:
        """`wait` for the event loop: no thread is held while waiting."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(event.set)

        self._watch(job_id, wake)
        try:
            job = await run_in_threadpool(self.get, job_id)
            waiting, deadline = self._wait_limit(job, timeout, phase)
            while waiting and not self._closed.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, self.poll_interval))
                event.clear()
                job = await run_in_threadpool(self.get, job_id)
                if job.phase != waiting:
                    break
            return job
        finally:
            self._unwatch(job_id, wake)

    # --- execution -------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._closed.is_set():
            self._dispatch.wait(self.poll_interval)
            self._dispatch.clear()
            while not self._closed.is_set() and self._slots.acquire(blocking=False):
                try:
                    row = self._claim()
                except Exception as exc:
                    log.warning("could not claim a queued job: %s", exc)
                    row = None
                if row is None:
                    self._slots.release()
                    break
                self._executor.submit(self._execute, self._job(row))

    def _claim(self) -> dict[str, Any] | None:
        """Take the oldest QUEUED job that no other worker is taking (SKIP LOCKED)."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE romerea_uws.jobs SET phase = 'EXECUTING', start_time = now(),"
                " worker_id = %s, worker_pid = %s, worker_host = %s, heartbeat = now()"
                " WHERE job_id = (SELECT job_id FROM romerea_uws.jobs WHERE phase = 'QUEUED'"
                " ORDER BY queued_at, job_id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING *",
                (self.worker_id, self.pid, self.host),
            )
            row = cur.fetchone()
            if row is not None:
                self._notify(cur, row["job_id"], EXECUTING)
        return row

    def _finish_own(
        self,
        job: Job,
        phase: str,
        message: str | None = None,
        error_type: str = FATAL,
    ) -> bool:
        """Move a job this worker executes to ``phase``; False if it is no longer ours."""
        with self._tx() as cur:
            if phase == QUEUED:
                cur.execute(
                    "UPDATE romerea_uws.jobs SET phase = 'QUEUED', start_time = NULL,"
                    " worker_id = NULL, worker_pid = NULL, worker_host = NULL, heartbeat = NULL"
                    " WHERE job_id = %s AND phase = 'EXECUTING' AND worker_id = %s"
                    " RETURNING job_id",
                    (job.job_id, self.worker_id),
                )
            else:
                cur.execute(
                    "UPDATE romerea_uws.jobs SET phase = %s, end_time = now(),"
                    " error_message = coalesce(%s, error_message), error_type = %s, results = %s"
                    " WHERE job_id = %s AND phase = 'EXECUTING' AND worker_id = %s"
                    " RETURNING job_id",
                    (
                        phase,
                        message,
                        error_type if message is not None else FATAL,
                        _results_json(job) if phase == COMPLETED else Jsonb([]),
                        job.job_id,
                        self.worker_id,
                    ),
                )
            ours = cur.fetchone() is not None
            if ours:
                self._notify(cur, job.job_id, phase)
        return ours

    def _execute(self, job: Job) -> None:
        job_id = job.job_id
        token = CancelToken()
        with self._lock:
            self._tokens[job_id] = token
        timer = None
        error: BaseException | None = None
        try:
            if self._closed.is_set():
                token.cancel(SHUTDOWN)
            else:
                if job.execution_duration > 0:
                    timer = threading.Timer(
                        job.execution_duration, self._expire, (job, token, job.execution_duration)
                    )
                    timer.daemon = True
                    timer.start()
                try:
                    self.runner(job, token)
                except Exception as exc:
                    error = exc
                    if not token.is_set():
                        if isinstance(exc, RomeReaError):
                            log.info("job %s failed: %s", job_id, exc)
                        else:
                            log.exception("job %s failed", job_id)
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._tokens.pop(job_id, None)
            if token.is_set() and token.reason == SHUTDOWN:
                final, message = QUEUED, None  # a new run writes the results again
            elif error is not None and not token.is_set():
                final, message = ERROR, error_message(error)
            elif token.is_set():
                final, message = ABORTED, f"job {token.reason}"
            else:
                final, message = COMPLETED, None
                for result in job.results:
                    with contextlib.suppress(OSError):
                        result.size = result.path.stat().st_size
            try:
                ours = self._finish_own(job, final, message)
            except JobDatabaseError:
                ours = False  # our heartbeat stops too: a live worker marks the job ERROR
            if not (ours and final == COMPLETED):
                unlink_quietly(r.path for r in job.results)
            if not ours and not self._exists(job_id):
                shutil.rmtree(job.directory, ignore_errors=True)  # deleted while running
        finally:
            with self._lock:
                self._tokens.pop(job_id, None)
                self._changed.notify_all()
            self._slots.release()
            self._dispatch.set()

    def _exists(self, job_id: str) -> bool:
        try:
            self.phase(job_id)
        except JobNotFoundError:
            return False
        except JobDatabaseError:
            return True  # keep the files when unsure
        return True

    def _expire(self, job: Job, token: CancelToken, duration: int) -> None:
        message = f"query exceeded the execution duration of {duration} s"
        try:
            ours = self._finish_own(job, ERROR, message)
        except JobDatabaseError:
            ours = True  # stop the query all the same
        if ours:
            token.cancel("exceeded its execution duration")

    def _cancel_local(self, job_id: str, reason: str) -> None:
        with self._lock:
            token = self._tokens.get(job_id)
        if token is not None:
            token.cancel(reason)

    # --- liveness --------------------------------------------------------------------

    def _register(self) -> psycopg.Connection:
        """This worker's own connection: advisory lock, row in ``workers``, LISTEN."""
        conn = _connect(self.conninfo, autocommit=True, name=f"romerea-vo worker {self.worker_id}")
        try:
            (key,) = _one(conn.execute("SELECT nextval('romerea_uws.worker_keys')::integer"))
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, key))
            conn.execute(
                "INSERT INTO romerea_uws.workers (worker_id, lock_key, pid, host)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (worker_id) DO UPDATE"
                " SET lock_key = excluded.lock_key, heartbeat = now()",
                (self.worker_id, key, self.pid, self.host),
            )
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        except psycopg.Error as exc:
            conn.close()
            raise JobDatabaseError(f"cannot register this worker: {exc}") from None
        return conn

    def _housekeeping_loop(self) -> None:
        conn: psycopg.Connection | None = self._session
        while not self._closed.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self._session = self._register()
                    self._dispatch.set()
                    self._wake()
                for note in conn.notifies(timeout=self.heartbeat_interval):
                    self._on_notification(note.payload)
                    if self._closed.is_set():
                        break
                if self._closed.is_set():
                    break
                self._heartbeat(conn)
                self._reap()
                if time.monotonic() - self._last_sweep >= self.sweep_interval:
                    self._last_sweep = time.monotonic()
                    self.sweep()
            except (psycopg.Error, JobDatabaseError) as exc:
                log.warning("job database connection lost (%s); reconnecting", exc)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                self._closed.wait(self.poll_interval)
            except Exception:
                log.exception("job store housekeeping failed")
                self._closed.wait(self.poll_interval)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.execute(
                    "DELETE FROM romerea_uws.workers WHERE worker_id = %s", (self.worker_id,)
                )
            conn.close()  # releases the advisory lock

    def _on_notification(self, payload: str) -> None:
        job_id, _, phase = payload.partition(" ")
        self._wake(job_id)
        if phase == QUEUED:
            self._dispatch.set()
        elif phase != EXECUTING:
            self._cancel_local(job_id, {ABORTED: "aborted", "DELETED": "deleted"}.get(
                phase, f"stopped: the job became {phase}"
            ))  # fmt: skip

    def _heartbeat(self, conn: psycopg.Connection) -> None:
        """Stamp this worker and its jobs; stop local runs the database no longer gives us."""
        with self._lock:
            running = set(self._tokens)  # claimed (and committed) before the UPDATE below
        with conn.transaction():
            conn.execute(
                "UPDATE romerea_uws.workers SET heartbeat = now() WHERE worker_id = %s",
                (self.worker_id,),
            )
            mine = {
                job_id
                for (job_id,) in conn.execute(
                    "UPDATE romerea_uws.jobs SET heartbeat = now()"
                    " WHERE phase = 'EXECUTING' AND worker_id = %s RETURNING job_id",
                    (self.worker_id,),
                )
            }
        for job_id in running - mine:  # a missed notification, or our lock was lost
            try:
                phase = self.phase(job_id)
            except JobNotFoundError:
                phase = "DELETED"
            if phase != EXECUTING:
                self._on_notification(f"{job_id} {phase}")
        with self._lock:
            stopping = [token for token in self._tokens.values() if token.is_set()]
        for token in stopping:  # cancelled, but the runner has not returned yet
            token.repeat()

    def _reap(self) -> builtins.list[str]:
        """Mark ERROR the EXECUTING jobs of workers that died or stopped heart-beating.

        Run by every worker (idempotent: a job is reaped once, by whoever locks it first).
        A worker's lock is free when its process is gone; trying to take it (for the
        length of this transaction) tells which.
        """
        with self._tx() as cur:
            cur.execute(
                "WITH dead AS ("
                " SELECT j.job_id FROM romerea_uws.jobs j"
                " LEFT JOIN romerea_uws.workers w ON w.worker_id = j.worker_id"
                " WHERE j.phase = 'EXECUTING' AND j.worker_id IS DISTINCT FROM %(me)s"
                " AND (w.worker_id IS NULL"
                "  OR j.heartbeat IS NULL OR j.heartbeat < now() - %(stale)s"
                "  OR pg_try_advisory_xact_lock(%(cls)s, w.lock_key))"
                " FOR UPDATE OF j SKIP LOCKED)"
                " UPDATE romerea_uws.jobs j SET phase = 'ERROR', end_time = now(),"
                " error_message = %(msg)s, error_type = 'transient', results = '[]'"
                " FROM dead WHERE j.job_id = dead.job_id AND j.phase = 'EXECUTING'"
                " RETURNING j.job_id, j.worker_id",
                {
                    "me": self.worker_id,
                    "stale": timedelta(seconds=self.stale_after),
                    "cls": LOCK_CLASS,
                    "msg": WORKER_STOPPED,
                },
            )
            reaped = cur.fetchall()
            for row in reaped:
                log.warning("job %s: worker %s stopped; job marked ERROR", *row.values())
                self._notify(cur, row["job_id"], ERROR)
            cur.execute(
                "DELETE FROM romerea_uws.workers WHERE worker_id <> %s"
                " AND pg_try_advisory_xact_lock(%s, lock_key)",
                (self.worker_id, LOCK_CLASS),
            )
        return [row["job_id"] for row in reaped]

    # --- destruction and shutdown ----------------------------------------------------

    def sweep(self) -> int:
        """Delete jobs past their destruction time; safe to run in several workers at once.

        Also removes stale staging directories and, after an hour, job directories
        that have no row (a creation interrupted between the two).
        """
        with self._tx() as cur:
            cur.execute("DELETE FROM romerea_uws.jobs WHERE destruction <= now() RETURNING job_id")
            expired = [row["job_id"] for row in cur.fetchall()]
            for job_id in expired:
                self._notify(cur, job_id, "DELETED")
        for job_id in expired:
            self._cancel_local(job_id, "deleted")
            shutil.rmtree(self.root / job_id, ignore_errors=True)
        cutoff = time.time() - STAGING_MAX_AGE
        staging = self.root / STAGING
        if staging.is_dir():
            for path in staging.iterdir():
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        shutil.rmtree(path, ignore_errors=True)
        old = []
        for path in self.root.iterdir():
            with contextlib.suppress(OSError):
                if (
                    path.is_dir()
                    and not path.name.startswith(".")
                    and path.stat().st_mtime < time.time() - _ORPHAN_AGE
                ):
                    old.append(path.name)
        if old:
            with self._tx() as cur:
                cur.execute("SELECT job_id FROM romerea_uws.jobs WHERE job_id = ANY(%s)", (old,))
                known = {row["job_id"] for row in cur.fetchall()}
            for name in set(old) - known:
                log.info("removing %s: a job directory without a job", self.root / name)
                shutil.rmtree(self.root / name, ignore_errors=True)
        return len(expired)

    def close(self, timeout: float = 5.0) -> None:
        """Stop this worker: its executing jobs are interrupted and queued again.

        Waits up to ``timeout`` seconds for the runners; jobs still running then become
        ERROR. QUEUED jobs stay queued for the other (or the next) workers.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        self._dispatch.set()
        self._wake()
        with self._lock:
            tokens = list(self._tokens.values())
        for token in tokens:
            token.cancel(SHUTDOWN)
        self._executor.shutdown(wait=False)
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                remaining = deadline - time.monotonic()
                if self._tokens and remaining > 0:
                    self._changed.wait(min(remaining, 0.5))
                running = list(self._tokens.values())
                left = list(self._tokens)
            if not running or deadline - time.monotonic() <= 0:
                break
            for token in running:
                token.repeat()
        for job_id in left:
            with contextlib.suppress(JobDatabaseError):
                job = Job(job_id, self.root / job_id, now_utc(), now_utc())
                self._finish_own(job, ERROR, SHUTDOWN, TRANSIENT)
        with contextlib.suppress(JobDatabaseError), self._tx() as cur:
            self._notify(cur, self.worker_id, "STOP")  # ends the housekeeper's LISTEN wait
        self._dispatcher.join(timeout=self.poll_interval + 1)
        self._housekeeper.join(timeout=self.heartbeat_interval + 5)
        self._pool.close()
