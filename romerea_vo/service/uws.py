"""UWS 1.1 asynchronous jobs for TAP /async: a persistent job store and its Starlette routes.

`JobStore` keeps each job in ``root/<job_id>/`` (``job.json``, uploaded files, results),
runs jobs on a thread pool through a `JobRunner`, enforces the execution duration
with a timer that fires the job's `CancelToken`, and deletes jobs whose destruction
time has passed. `uws_routes` publishes a store as the UWS REST binding; the XML
documents are built with vo-models. `JobStoreBase` is what the binding needs from a
store: `JobStore` serves one process, `romerea_vo.service.uws_pg.PostgresJobStore`
many (the jobs' state in PostgreSQL, their files in a shared directory).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lxml import etree
from pydantic_xml import BaseXmlModel, element
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from vo_models.uws import (
    ErrorSummary,
    Jobs,
    JobSummary,
    Parameter,
    ResultReference,
    Results,
    ShortJobDescription,
)
from vo_models.uws.models import NSMAP

from ..errors import InvalidRequestError, RomeReaError
from .params import DaliParams, parse_upload_param, read_dali_params
from .responses import XML_MEDIA, dali_error, error_response, error_status

__all__ = [
    "ACTIVE_PHASES",
    "PHASES",
    "CancelToken",
    "Job",
    "JobLimitError",
    "JobNotFoundError",
    "JobRunner",
    "JobStore",
    "JobStoreBase",
    "Result",
    "uws_routes",
]

log = logging.getLogger("romerea_vo.service.uws")

PHASES = (
    "PENDING",
    "QUEUED",
    "EXECUTING",
    "COMPLETED",
    "ERROR",
    "ABORTED",
    "UNKNOWN",
    "HELD",
    "SUSPENDED",
    "ARCHIVED",
)
ACTIVE_PHASES = frozenset({"PENDING", "QUEUED", "EXECUTING"})
"""Phases in which a blocking WAIT waits (UWS 1.1 §2.2.1.1)."""
FINAL_PHASES = frozenset({"COMPLETED", "ERROR", "ABORTED", "ARCHIVED"})

CONTROL_PARAMS = frozenset({"PHASE", "ACTION", "EXECUTIONDURATION", "DESTRUCTION", "WAIT"})
"""UWS control parameters: acted on, never stored as job parameters."""

UPLOAD_DIR = "uploads"
JOB_FILE = "job.json"
_STAGING = ".incoming"
_STAGING_MAX_AGE = 86400.0
_RESULT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
UWS_MEDIA = XML_MEDIA


class JobNotFoundError(RomeReaError, LookupError):
    """No job with that identifier (never created, deleted or destroyed)."""

    http_status = 404
    dali_fault = "NotFoundFault"


class JobLimitError(InvalidRequestError):
    """The store holds its maximum number of jobs (or of result bytes); the client should
    retry later (HTTP 503 with Retry-After)."""

    http_status = 503
    dali_fault = "TransientFault"
    retry_after = 60


class ClientQuotaError(JobLimitError):
    """This client holds its maximum number of jobs (HTTP 429 with Retry-After)."""

    http_status = 429


def _now() -> datetime:
    return datetime.now(UTC)


def iso_time(value: datetime | None) -> str:
    """UTC ISO 8601 with milliseconds and a trailing Z (UWS 1.1 / DALI form)."""
    if value is None:
        return ""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Parse a DALI/ISO 8601 timestamp; a time without zone is UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequestError(
            f"{text!r} is not an ISO 8601 timestamp (e.g. 2025-01-31T12:00:00Z)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- jobs --------------------------------------------------------------------------------


@dataclass
class Result:
    """One result of a job: a file in the job directory."""

    id: str
    path: Path
    media_type: str
    size: int


@dataclass
class Job:
    """The state of one UWS job. ``parameters`` has upper-case names."""

    job_id: str
    directory: Path
    creation_time: datetime
    destruction: datetime
    phase: str = "PENDING"
    run_id: str | None = None
    owner: str | None = None
    client: str | None = None
    """The address that created the job (per-client quotas; not shown in UWS documents)."""
    start_time: datetime | None = None
    end_time: datetime | None = None
    execution_duration: int = 0
    quote: datetime | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    error_message: str | None = None
    error_type: str = "fatal"

    def add_result(self, result_id: str, path: Path | str, media_type: str) -> Result:
        """Register a file the runner wrote in the job directory as a result.

        The TAP result must have id ``"result"``. A result with the same id is replaced.
        """
        if not _RESULT_ID.match(result_id):
            raise ValueError(f"bad result id {result_id!r}")
        path = Path(path)
        if not path.is_absolute():
            path = self.directory / path
        resolved = path.resolve()
        if not resolved.is_relative_to(self.directory.resolve()):
            raise ValueError(f"result {path} is outside the job directory {self.directory}")
        result = Result(result_id, resolved, media_type, resolved.stat().st_size)
        self.results = [r for r in self.results if r.id != result_id] + [result]
        return result

    def upload_tables(self) -> list[tuple[str, Path]]:
        """The job's TAP_UPLOAD tables as ``(table name, file)`` pairs."""
        values = [self.parameters["UPLOAD"]] if self.parameters.get("UPLOAD") else []
        pairs = parse_upload_param(values, self.files)
        return [(name, self.files[uri[len("param:") :]]) for name, uri in pairs]

    def copy(self) -> Job:
        """A snapshot that later changes to this job do not affect."""
        return dataclasses.replace(
            self,
            parameters=dict(self.parameters),
            files=dict(self.files),
            results=list(self.results),
        )

    def to_json(self) -> dict[str, Any]:
        """The job as JSON-able data (paths relative to the job directory)."""

        def rel(path: Path) -> str:
            return str(path.relative_to(self.directory))

        return {
            "job_id": self.job_id,
            "phase": self.phase,
            "run_id": self.run_id,
            "owner": self.owner,
            "client": self.client,
            "creation_time": self.creation_time.isoformat(),
            "start_time": self.start_time.isoformat() if self.start_time else None,
            "end_time": self.end_time.isoformat() if self.end_time else None,
            "execution_duration": self.execution_duration,
            "destruction": self.destruction.isoformat(),
            "quote": self.quote.isoformat() if self.quote else None,
            "parameters": self.parameters,
            "files": {name: rel(path) for name, path in self.files.items()},
            "results": [
                {"id": r.id, "path": rel(r.path), "media_type": r.media_type, "size": r.size}
                for r in self.results
            ],
            "error_message": self.error_message,
            "error_type": self.error_type,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], directory: Path) -> Job:
        """Rebuild a job from `to_json` data stored in ``directory``."""

        def when(key: str) -> datetime | None:
            return datetime.fromisoformat(data[key]) if data.get(key) else None

        return cls(
            job_id=data["job_id"],
            directory=directory,
            creation_time=datetime.fromisoformat(data["creation_time"]),
            destruction=datetime.fromisoformat(data["destruction"]),
            phase=data["phase"],
            run_id=data.get("run_id"),
            owner=data.get("owner"),
            client=data.get("client"),
            start_time=when("start_time"),
            end_time=when("end_time"),
            execution_duration=int(data.get("execution_duration", 0)),
            quote=when("quote"),
            parameters=dict(data.get("parameters", {})),
            files={k: directory / v for k, v in data.get("files", {}).items()},
            results=[
                Result(r["id"], directory / r["path"], r["media_type"], int(r["size"]))
                for r in data.get("results", [])
            ],
            error_message=data.get("error_message"),
            error_type=data.get("error_type", "fatal"),
        )


class CancelToken:
    """Tells a running job to stop: ABORT, execution duration exceeded, deletion, shutdown.

    A runner polls `is_set` (or sleeps with `wait`) and registers callbacks with
    `on_cancel`, e.g. a DuckDB connection's ``interrupt``, to stop blocking work.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        self.reason: str | None = None

    def is_set(self) -> bool:
        """True once the job has been cancelled."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until cancelled or ``timeout`` seconds pass; True if cancelled."""
        return self._event.wait(timeout)

    def on_cancel(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call ``callback`` on cancellation (at once if already cancelled).

        Returns a function that unregisters it.
        """
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._remove(callback)
        self._call(callback)
        return lambda: None

    def _remove(self, callback: Callable[[], object]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    @staticmethod
    def _call(callback: Callable[[], object]) -> None:
        try:
            callback()
        except Exception:
            log.exception("cancel callback %r failed", callback)

    def cancel(self, reason: str = "cancelled") -> None:
        """Set the token and run the callbacks once."""
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._call(callback)


JobRunner = Callable[[Job, CancelToken], None]
"""Executes a job in a worker thread.

It reads ``job.parameters`` / ``job.files`` (or ``job.upload_tables()``), writes its
result file(s) into ``job.directory`` and registers them with ``job.add_result``
(the TAP result as id ``"result"``). Returning means COMPLETED; raising means ERROR
with the exception's message. It should honour the `CancelToken`.
"""


def _job_parameters(parameters: Mapping[str, str]) -> dict[str, str]:
    """A job's parameters: names upper-cased, UWS control parameters left out."""
    return {k.upper(): v for k, v in parameters.items() if k.upper() not in CONTROL_PARAMS}


class JobStoreBase(abc.ABC):
    """What the UWS binding needs from a job store; `JobStore` and `PostgresJobStore` are two.

    A store keeps job directories (uploads, results) under ``root`` and clamps times to
    ``max_execution_duration`` (seconds, 0 = none). ``blocking_io`` tells the HTTP
    binding that reads (`get`, `phase`, `list`) do I/O and must not run on the event loop.
    """

    root: Path
    max_execution_duration: int
    max_wait: float
    blocking_io: bool = False
    _closed: threading.Event

    def create(
        self,
        parameters: Mapping[str, str],
        files: Mapping[str, Path] | None = None,
        *,
        owner: str | None = None,
        client: str | None = None,
        execution_duration: int | None = None,
        destruction: datetime | None = None,
    ) -> Job:
        """Create a PENDING job; ``files`` (multipart parts) are moved into its directory.

        ``UPLOAD`` is checked against the files; ``RUNID`` sets the run id; the
        execution duration and destruction time are clamped as by their setters.
        Raises JobLimitError when the store is full (jobs, or result bytes even after
        evicting ``client``'s oldest COMPLETED jobs), ClientQuotaError when ``client``
        holds ``max_jobs_per_client`` jobs.
        """
        files = dict(files or {})
        duration = (
            self.default_execution_duration
            if execution_duration is None
            else self._clamp_duration(execution_duration)
        )
        params = _job_parameters(parameters)
        if params.get("UPLOAD"):
            parse_upload_param([params["UPLOAD"]], files)
        if self._closed.is_set():
            raise JobLimitError("the service is shutting down")
        if self._job_count() >= self.max_jobs:
            self.sweep()
            if self._job_count() >= self.max_jobs:
                raise JobLimitError(
                    f"the service holds its maximum of {self.max_jobs} jobs; "
                    "delete finished jobs or try again later"
                )
        self._check_quotas(client)
        job_id = secrets.token_urlsafe(12)
        while job_id.startswith("-"):
            job_id = secrets.token_urlsafe(12)
        directory = self.root / job_id
        directory.mkdir()  # fails on the (astronomically unlikely) clash
        try:
            moved = self._move_files(directory, files)
            now = _now()
            if destruction is not None and destruction.tzinfo is None:
                destruction = destruction.replace(tzinfo=UTC)
            job = Job(
                job_id=job_id,
                directory=directory,
                creation_time=now,
                destruction=min(
                    destruction or now + self.default_destruction, now + self.max_destruction
                ),
                execution_duration=duration,
                run_id=params.get("RUNID"),
                owner=owner,
                client=client,
                parameters=params,
                files=moved,
            )
            return self._add(job)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def _check_quotas(self, client: str | None) -> None:
        """Refuse a new job of ``client`` beyond its job quota; beyond the result-bytes
        quota, delete ``client``'s oldest COMPLETED jobs first, then refuse."""
        if client is not None and self.max_jobs_per_client:
            held = self._client_jobs(client)
            if len(held) >= self.max_jobs_per_client:
                raise ClientQuotaError(
                    f"client {client} holds {len(held)} async jobs, the limit per client; "
                    "delete finished jobs (DELETE on the job URL) or try again later"
                )
        if not self.max_result_bytes:
            return
        used = self._result_bytes()
        if used >= self.max_result_bytes and client is not None:
            for job in self._client_jobs(client):
                if used < self.max_result_bytes:
                    break
                if job.phase != "COMPLETED" or not job.results:
                    continue
                with contextlib.suppress(JobNotFoundError):
                    self.delete(job.job_id)
                    used -= sum(r.size for r in job.results)
                    log.info(
                        "deleted job %s of %s: the results of async jobs exceed their quota",
                        job.job_id,
                        client,
                    )
        if used >= self.max_result_bytes:
            raise JobLimitError(
                "the results of async jobs fill the service's quota of "
                f"{self.max_result_bytes} bytes; delete finished jobs or try again later"
            )

    @abc.abstractmethod
    def _client_jobs(self, client: str) -> list[Job]:
        """The jobs ``client`` created (all workers' for a shared store), oldest first."""

    @abc.abstractmethod
    def _result_bytes(self) -> int:
        """Total size of the results of all jobs held."""

    @abc.abstractmethod
    def _job_count(self) -> int:
        """How many jobs the store holds (all workers' for a shared store)."""

    @abc.abstractmethod
    def _add(self, job: Job) -> Job:
        """Keep a new job; returns the snapshot `create` hands out."""

    @abc.abstractmethod
    def update_parameters(
        self, job_id: str, parameters: Mapping[str, str], files: Mapping[str, Path] | None = None
    ) -> Job:
        """Set parameters (and add uploads) of a PENDING job; UPLOAD tables are merged."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job:
        """A snapshot of a job; raises `JobNotFoundError`."""

    @abc.abstractmethod
    def phase(self, job_id: str) -> str:
        """The current phase of a job."""

    @abc.abstractmethod
    def list(
        self,
        phase: Iterable[str] | None = None,
        after: datetime | None = None,
        last: int | None = None,
    ) -> list[Job]:
        """Job snapshots by creation time (newest first when ``last`` is given)."""

    @abc.abstractmethod
    def run(self, job_id: str) -> Job:
        """PHASE=RUN: queue a PENDING (or HELD) job; a no-op for a queued or running one."""

    @abc.abstractmethod
    def abort(self, job_id: str) -> Job:
        """PHASE=ABORT: a pending, queued or executing job becomes ABORTED."""

    @abc.abstractmethod
    def delete(self, job_id: str) -> None:
        """Delete a job and its directory, stopping it first if it runs."""

    @abc.abstractmethod
    def set_execution_duration(self, job_id: str, seconds: int) -> Job:
        """Set the execution duration (clamped) of a PENDING or QUEUED job."""

    @abc.abstractmethod
    def set_destruction(self, job_id: str, when: datetime) -> Job:
        """Set the destruction time, no later than creation + the maximum."""

    @abc.abstractmethod
    def wait(self, job_id: str, timeout: float, phase: str | None = None) -> Job:
        """Block while the job stays in ``phase`` (default: its current active phase)."""

    @abc.abstractmethod
    async def wait_async(self, job_id: str, timeout: float, phase: str | None = None) -> Job:
        """`wait` for the event loop: no thread is held while waiting."""

    @abc.abstractmethod
    def sweep(self) -> int:
        """Delete jobs past their destruction time; return how many."""

    @abc.abstractmethod
    def close(self, timeout: float = 5.0) -> None:
        """Stop executing jobs and background threads."""

    def __enter__(self) -> JobStoreBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- shared helpers ------------------------------------------------------------

    def _set_limits(
        self,
        root: Path,
        runner: JobRunner,
        *,
        default_execution_duration: int,
        max_execution_duration: int,
        default_destruction: timedelta,
        max_destruction: timedelta,
        max_jobs: int,
        max_wait: float,
        sweep_interval: float,
        max_jobs_per_client: int = 100,
        max_result_bytes: int = 0,
    ) -> None:
        """The settings every store has (the constructors' keyword arguments);
        ``max_jobs_per_client`` and ``max_result_bytes``: 0 = no limit."""
        self.max_jobs_per_client = max_jobs_per_client
        self.max_result_bytes = max_result_bytes
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.runner = runner
        self.max_execution_duration = max_execution_duration
        self.default_execution_duration = self._clamp_duration(default_execution_duration)
        self.max_destruction = max_destruction
        self.default_destruction = min(default_destruction, max_destruction)
        self.max_jobs = max_jobs
        self.max_wait = max_wait
        self.sweep_interval = sweep_interval

    def _wait_limit(self, job: Job, timeout: float, phase: str | None) -> tuple[str, float]:
        """The phase to wait on and the deadline, or ("", 0) when not to wait."""
        if (phase is not None and phase != job.phase) or job.phase not in ACTIVE_PHASES:
            return "", 0.0
        limit = self.max_wait if timeout < 0 else min(timeout, self.max_wait)
        return job.phase, time.monotonic() + limit

    def _clamp_duration(self, seconds: int) -> int:
        if seconds < 0:
            raise InvalidRequestError(f"execution duration {seconds} is negative")
        if self.max_execution_duration > 0 and (
            seconds == 0 or seconds > self.max_execution_duration
        ):
            return self.max_execution_duration
        return seconds

    def new_upload_dir(self) -> Path:
        """A fresh staging directory for the files of a request not yet a job."""
        path = self.root / _STAGING / secrets.token_hex(8)
        path.mkdir(parents=True)
        return path

    @staticmethod
    def discard_upload_dir(path: Path) -> None:
        """Remove a staging directory and whatever `create` did not take from it."""
        shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _move_files(directory: Path, files: Mapping[str, Path]) -> dict[str, Path]:
        """Move uploaded files into ``directory/uploads`` (without the lock: may copy)."""
        target = directory / UPLOAD_DIR
        target.mkdir(exist_ok=True)
        moved: dict[str, Path] = {}
        try:
            for name, src in files.items():
                safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64].lstrip(".") or "part"
                dest = target / f"{secrets.token_hex(4)}_{safe}"
                shutil.move(src, dest)
                moved[name] = dest
        except BaseException:
            _unlink(moved.values())
            raise
        return moved

    def _check_update(
        self, job: Job, params: Mapping[str, str], files: Mapping[str, Path]
    ) -> str | None:
        """Refuse new parameters unless the job is PENDING and its uploads stay well formed;
        returns the merged UPLOAD value."""
        if job.phase != "PENDING":
            raise InvalidRequestError(
                f"job {job.job_id} is {job.phase}: parameters can only be changed while PENDING"
            )
        upload = self._merge_upload(job.parameters.get("UPLOAD"), params.get("UPLOAD"))
        if upload:
            parse_upload_param([upload], set(job.files) | set(files))
        return upload

    @staticmethod
    def _apply_update(
        job: Job, params: dict[str, str], upload: str | None, moved: Mapping[str, Path]
    ) -> list[Path]:
        """Put checked parameters and moved upload files on ``job``; returns the files the
        new ones replace (for the caller to delete once the change is stored)."""
        if upload:
            params["UPLOAD"] = upload
        replaced = [job.files[name] for name in moved if name in job.files]
        job.files.update(moved)
        job.parameters.update(params)
        if "RUNID" in params:
            job.run_id = params["RUNID"]
        return replaced

    @staticmethod
    def _merge_upload(old: str | None, new: str | None) -> str | None:
        """UPLOAD values merged by table name, the new ones winning."""
        if not new:
            return old
        merged: dict[str, str] = {}
        for value in (old, new):
            for item in (value or "").split(";"):
                name, sep, uri = item.strip().partition(",")
                if sep:
                    merged[name.strip().lower()] = f"{name.strip()},{uri.strip()}"
        return ";".join(merged.values())


class JobStore(JobStoreBase):
    """UWS jobs persisted under ``root``, executed by ``runner`` on a thread pool.

    Times are clamped to the maxima: an execution duration of 0 (unlimited) or more
    than ``max_execution_duration`` becomes the maximum (unless that is 0 too); a
    destruction time after ``creation + max_destruction`` becomes that time. Jobs
    found QUEUED or EXECUTING on start-up (a crash or restart) become ERROR. A
    sweeper thread deletes jobs past their destruction time every
    ``sweep_interval`` seconds. One store per ``root``: two processes must not share it.
    """

    def __init__(
        self,
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
    ) -> None:
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
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._tokens: dict[str, CancelToken] = {}
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._closed = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="uws-job")
        with self._lock:
            self._load()
        self.sweep()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="uws-sweeper", daemon=True)
        self._sweeper.start()

    # --- persistence ---------------------------------------------------------------

    def _load(self) -> None:
        shutil.rmtree(self.root / _STAGING, ignore_errors=True)
        for directory in sorted(self.root.iterdir()):
            if not directory.is_dir() or directory.name.startswith("."):
                continue
            path = directory / JOB_FILE
            try:
                job = Job.from_json(json.loads(path.read_text("utf-8")), directory)
            except FileNotFoundError:
                if {p.name for p in directory.iterdir()} <= {UPLOAD_DIR, f".{JOB_FILE}.tmp"}:
                    log.info("removing %s: a job whose creation was interrupted", directory)
                    shutil.rmtree(directory, ignore_errors=True)
                else:
                    log.warning("ignoring %s: no %s", directory, JOB_FILE)
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring %s: unreadable %s (%s)", directory, JOB_FILE, exc)
                continue
            if job.job_id != directory.name:
                log.warning("ignoring %s: it holds job %s", directory, job.job_id)
                continue
            self._jobs[job.job_id] = job
            if job.phase in ("QUEUED", "EXECUTING"):
                self._finish(job, "ERROR", "interrupted by a service restart", "transient")

    def _save(self, job: Job) -> None:
        """Write job.json atomically (call with the lock held)."""
        if self._jobs.get(job.job_id) is not job:
            return  # deleted meanwhile
        tmp = job.directory / f".{JOB_FILE}.tmp"
        try:
            tmp.write_text(json.dumps(job.to_json(), indent=1), "utf-8")
            os.replace(tmp, job.directory / JOB_FILE)
        except OSError:
            log.exception("could not save job %s", job.job_id)

    def _notify(self) -> None:
        """Wake blocking and async waiters (call with the lock held)."""
        self._changed.notify_all()
        for loop, event in list(self._async_waiters):
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(event.set)

    def _finish(
        self, job: Job, phase: str, message: str | None = None, error_type: str = "fatal"
    ) -> None:
        """Move a job to a final phase (lock held), dropping results unless COMPLETED."""
        job.phase = phase
        job.end_time = job.end_time or _now()
        if message is not None:
            job.error_message = message
            job.error_type = error_type
        if phase != "COMPLETED":
            _unlink(r.path for r in job.results)
            job.results = []
        self._save(job)
        self._notify()

    # --- helpers -------------------------------------------------------------------

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r} (never created, deleted or destroyed)")
        return job

    # --- operations ----------------------------------------------------------------

    def _job_count(self) -> int:
        return len(self._jobs)

    def _client_jobs(self, client: str) -> list[Job]:
        with self._lock:
            jobs = [j.copy() for j in self._jobs.values() if j.client == client]
        return sorted(jobs, key=lambda j: j.creation_time)

    def _result_bytes(self) -> int:
        with self._lock:
            return sum(r.size for j in self._jobs.values() for r in j.results)

    def _add(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.job_id] = job
            self._save(job)
            return job.copy()

    def update_parameters(
        self, job_id: str, parameters: Mapping[str, str], files: Mapping[str, Path] | None = None
    ) -> Job:
        """Set parameters (and add uploads) of a PENDING job; UPLOAD tables are merged."""
        params = _job_parameters(parameters)
        files = dict(files or {})

        def check(job: Job) -> str | None:
            return self._check_update(job, params, files)

        with self._lock:
            check(self._job(job_id))
            directory = self._jobs[job_id].directory
        moved = self._move_files(directory, files) if files else {}
        try:
            with self._lock:
                job = self._job(job_id)
                upload = check(job)  # again: another request may have run it meanwhile
                _unlink(self._apply_update(job, params, upload, moved))
                moved = {}
                self._save(job)
                return job.copy()
        finally:
            _unlink(moved.values())

    def get(self, job_id: str) -> Job:
        """A snapshot of a job; raises `JobNotFoundError`."""
        with self._lock:
            return self._job(job_id).copy()

    def phase(self, job_id: str) -> str:
        """The current phase of a job."""
        with self._lock:
            return self._job(job_id).phase

    def list(
        self,
        phase: Iterable[str] | None = None,
        after: datetime | None = None,
        last: int | None = None,
    ) -> list[Job]:
        """Job snapshots by creation time (newest first when ``last`` is given).

        ARCHIVED jobs are left out unless ``phase`` asks for them.
        """
        phases = set(phase) if phase else None
        with self._lock:
            jobs = [
                job.copy()
                for job in self._jobs.values()
                if (job.phase in phases if phases else job.phase != "ARCHIVED")
                and (after is None or job.creation_time > after)
            ]
        jobs.sort(key=lambda j: j.creation_time)
        if last is not None:
            jobs = jobs[::-1][:last]
        return jobs

    def run(self, job_id: str) -> Job:
        """PHASE=RUN: queue a PENDING (or HELD) job; a no-op for a queued or running one."""
        with self._lock:
            job = self._job(job_id)
            if job.phase in ("QUEUED", "EXECUTING"):
                return job.copy()
            if job.phase not in ("PENDING", "HELD"):
                raise InvalidRequestError(
                    f"job {job_id} is {job.phase} and cannot be run again; create a new job"
                )
            if self._closed.is_set():
                raise JobLimitError("the service is shutting down")
            job.phase = "QUEUED"
            self._save(job)
            self._notify()
            self._executor.submit(self._execute, job_id)
            return job.copy()

    def abort(self, job_id: str) -> Job:
        """PHASE=ABORT: a pending, queued or executing job becomes ABORTED."""
        with self._lock:
            job = self._job(job_id)
            if job.phase == "ABORTED":
                return job.copy()
            if job.phase not in ("PENDING", "QUEUED", "EXECUTING", "HELD", "SUSPENDED"):
                raise InvalidRequestError(
                    f"job {job_id} is {job.phase}: only a pending, queued or executing job "
                    "can be aborted"
                )
            token = self._tokens.get(job_id)
            self._finish(job, "ABORTED", "job aborted on request")
            snapshot = job.copy()
        if token is not None:
            token.cancel("aborted")
        return snapshot

    def delete(self, job_id: str) -> None:
        """Delete a job and its directory, stopping it first if it runs."""
        with self._lock:
            job = self._job(job_id)
            del self._jobs[job_id]
            token = self._tokens.get(job_id)
            self._notify()
        if token is not None:
            token.cancel("deleted")
        shutil.rmtree(job.directory, ignore_errors=True)

    def set_execution_duration(self, job_id: str, seconds: int) -> Job:
        """Set the execution duration (clamped) of a PENDING or QUEUED job."""
        with self._lock:
            job = self._job(job_id)
            if job.phase not in ("PENDING", "QUEUED", "HELD"):
                raise InvalidRequestError(
                    f"job {job_id} is {job.phase}: the execution duration can only be "
                    "changed before the job runs"
                )
            job.execution_duration = self._clamp_duration(seconds)
            self._save(job)
            return job.copy()

    def set_destruction(self, job_id: str, when: datetime) -> Job:
        """Set the destruction time, no later than creation + ``max_destruction``."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        with self._lock:
            job = self._job(job_id)
            job.destruction = min(when, job.creation_time + self.max_destruction)
            self._save(job)
            return job.copy()

    def wait(self, job_id: str, timeout: float, phase: str | None = None) -> Job:
        """Block while the job stays in ``phase`` (default: its current active phase).

        Returns at once if the job is not in ``phase`` or not active; waits at most
        ``timeout`` seconds (negative: the maximum), capped at ``max_wait``.
        """
        with self._changed:
            waiting, deadline = self._wait_limit(self._job(job_id), timeout, phase)
            while waiting and not self._closed.is_set():
                job = self._jobs.get(job_id)
                remaining = deadline - time.monotonic()
                if job is None or job.phase != waiting or remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._job(job_id).copy()

    async def wait_async(self, job_id: str, timeout: float, phase: str | None = None) -> Job:
        """`wait` for the event loop: no thread is held while waiting."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waiter = (loop, event)
        with self._lock:
            waiting, deadline = self._wait_limit(self._job(job_id), timeout, phase)
            self._async_waiters.add(waiter)
        try:
            while waiting and not self._closed.is_set():
                with self._lock:
                    job = self._jobs.get(job_id)
                    if job is None or job.phase != waiting:
                        break
                    event.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            with self._lock:
                self._async_waiters.discard(waiter)
        return self.get(job_id)

    # --- execution -----------------------------------------------------------------

    def _execute(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.phase != "QUEUED" or self._closed.is_set():
                return
            token = CancelToken()
            self._tokens[job_id] = token
            job.phase = "EXECUTING"
            job.start_time = _now()
            duration = job.execution_duration
            self._save(job)
            self._notify()
        timer = None
        if duration > 0:
            timer = threading.Timer(duration, self._expire, (job_id, token, duration))
            timer.daemon = True
            timer.start()
        error: BaseException | None = None
        try:
            self.runner(job, token)
        except Exception as exc:
            error = exc
            if not token.is_set():
                if isinstance(exc, RomeReaError):
                    log.info("job %s failed: %s", job_id, exc)
                else:
                    log.exception("job %s failed", job_id)
        finally:
            if timer is not None:
                timer.cancel()
        with self._lock:
            self._tokens.pop(job_id, None)
            if self._jobs.get(job_id) is not job:  # deleted while running
                shutil.rmtree(job.directory, ignore_errors=True)
                self._notify()
                return
            if job.phase != "EXECUTING":  # aborted, timed out or shut down meanwhile
                self._finish(job, job.phase)
            elif error is not None:
                self._finish(job, "ERROR", _message(error))
            elif token.is_set():
                self._finish(job, "ABORTED", f"job {token.reason}")
            else:
                for result in job.results:
                    with contextlib.suppress(OSError):
                        result.size = result.path.stat().st_size
                self._finish(job, "COMPLETED")

    def _expire(self, job_id: str, token: CancelToken, duration: int) -> None:
        message = f"query exceeded the execution duration of {duration} s"
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.phase != "EXECUTING" or self._tokens.get(job_id) is not token:
                return
            self._finish(job, "ERROR", message)
        token.cancel("exceeded its execution duration")

    # --- destruction and shutdown --------------------------------------------------

    def sweep(self) -> int:
        """Delete jobs past their destruction time (and stale staging dirs); return count."""
        now = _now()
        with self._lock:
            expired = [jid for jid, job in self._jobs.items() if job.destruction <= now]
        for job_id in expired:
            with contextlib.suppress(JobNotFoundError):
                self.delete(job_id)
        staging = self.root / _STAGING
        if staging.is_dir():
            cutoff = time.time() - _STAGING_MAX_AGE
            for path in staging.iterdir():
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        shutil.rmtree(path, ignore_errors=True)
        return len(expired)

    def _sweep_loop(self) -> None:
        while not self._closed.wait(self.sweep_interval):
            try:
                self.sweep()
            except Exception:
                log.exception("destruction sweep failed")

    def close(self, timeout: float = 5.0) -> None:
        """Stop: queued and executing jobs become ERROR, runners are cancelled.

        Waits up to ``timeout`` seconds for the runners to return.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            tokens = list(self._tokens.values())
            for job in self._jobs.values():
                if job.phase in ("QUEUED", "EXECUTING"):
                    self._finish(job, "ERROR", "interrupted by a service shutdown", "transient")
        for token in tokens:
            token.cancel("interrupted by a service shutdown")
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._tokens and (remaining := deadline - time.monotonic()) > 0:
                self._changed.wait(remaining)
        self._sweeper.join(timeout=1.0)

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unlink(paths: Iterable[Path]) -> None:
    for path in list(paths):
        with contextlib.suppress(OSError):
            path.unlink()


def _message(exc: BaseException) -> str:
    if isinstance(exc, RomeReaError):
        return str(exc) or type(exc).__name__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- XML documents -------------------------------------------------------------------


class _Parameters(BaseXmlModel, tag="parameters", ns="uws", nsmap=NSMAP):
    """uws:parameters with any parameter ids (vo-models' Parameters wants declared fields)."""

    parameter: list[Parameter] = element(tag="parameter", default_factory=list)


_JobDocument = JobSummary[_Parameters]
_UWS_NS = NSMAP["uws"]
_XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"


def _serialize(model: BaseXmlModel) -> bytes:
    """XML bytes; empty optional runId elements (not nillable in the schema) dropped."""
    tree = model.to_xml_tree(skip_empty=False)
    for el in list(tree.iter(f"{{{_UWS_NS}}}runId")):
        if not (el.text or "").strip() and el.get(_XSI_NIL) is None:
            el.getparent().remove(el)
    return etree.tostring(tree, encoding="UTF-8", xml_declaration=True)


_XML_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(value: str | None) -> str | None:
    """Text XML 1.0 can carry: control characters become spaces."""
    return None if value is None else _XML_BAD_CHARS.sub(" ", value)


def _parameters_model(job: Job, job_url: str) -> _Parameters:
    params = [
        Parameter(id=_xml_text(name), value=_xml_text(value))
        for name, value in job.parameters.items()
    ]
    taken = {name.upper() for name in job.parameters}
    for part in job.files:
        if part.upper() not in taken:  # a part named like a parameter is not listed twice
            taken.add(part.upper())
            href = f"{job_url}/uploads/{quote(part, safe='')}"
            params.append(Parameter(id=_xml_text(part), value=href, by_reference=True))
    return _Parameters(parameter=params)


def _results_model(job: Job, job_url: str) -> Results:
    return Results(
        results=[
            ResultReference(
                id=r.id,
                href=f"{job_url}/results/{quote(r.id, safe='')}",
                size=r.size,
                mime_type=r.media_type,
            )
            for r in job.results
        ]
    )


def job_xml(job: Job, job_url: str) -> bytes:
    """The UWS 1.1 job document (``version="1.1"``)."""
    error = None
    if job.error_message and job.phase in ("ERROR", "ABORTED"):
        error = ErrorSummary(
            message=_xml_text(job.error_message), type=job.error_type, has_detail=True
        )
    doc = _JobDocument(
        job_id=job.job_id,
        run_id=_xml_text(job.run_id),
        owner_id=_xml_text(job.owner),
        phase=job.phase,
        quote=iso_time(job.quote) or None,
        creation_time=iso_time(job.creation_time),
        start_time=iso_time(job.start_time) or None,
        end_time=iso_time(job.end_time) or None,
        execution_duration=job.execution_duration,
        destruction=iso_time(job.destruction),
        parameters=_parameters_model(job, job_url),
        results=_results_model(job, job_url),
        error_summary=error,
    )
    return _serialize(doc)


def jobs_xml(jobs: Iterable[Job], jobs_url: str) -> bytes:
    """The UWS 1.1 job list."""
    base = jobs_url.rstrip("/")
    refs = [
        ShortJobDescription(
            job_id=job.job_id,
            href=f"{base}/{job.job_id}",
            phase=job.phase,
            run_id=_xml_text(job.run_id),
            owner_id=_xml_text(job.owner),
            creation_time=iso_time(job.creation_time),
        )
        for job in jobs
    ]
    return _serialize(Jobs(jobref=refs))


# --- HTTP binding --------------------------------------------------------------------

ParamReader = Callable[[Request, Path], Awaitable[DaliParams]]

_SMALL_FORM_BYTES = 1024 * 1024


def _text(body: str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="text/plain; charset=utf-8")


def _client_error(exc: RomeReaError) -> Response:
    """UWS job resources answer errors as plain text, with the error's own status."""
    response = _text(f"{exc}\n", error_status(exc))
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _flatten(params: DaliParams) -> dict[str, str]:
    """Job parameters from request parameters: first value each, UPLOAD values joined."""
    out = {}
    for name, values in params.values.items():
        if name in CONTROL_PARAMS or not values:
            continue
        out[name] = ";".join(v for v in values if v.strip()) if name == "UPLOAD" else values[0]
    return out


class _Endpoints:
    """The request handlers of `uws_routes`."""

    def __init__(self, store: JobStoreBase, read_params: ParamReader, prefix: str) -> None:
        self.store = store
        self.read_params = read_params
        self.prefix = prefix

    async def read(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a store read: in the thread pool when it does I/O, else directly."""
        if self.store.blocking_io:
            return await run_in_threadpool(func, *args, **kwargs)
        return func(*args, **kwargs)

    # URLs: absolute, from the request (scheme and Host as the client sent them).
    def jobs_url(self, request: Request) -> str:
        url = request.url
        root = request.scope.get("root_path", "")
        base = f"{url.scheme}://{url.netloc}{root}{self.prefix}"
        return base if self.prefix else base + "/"

    def job_url(self, request: Request, job_id: str) -> str:
        return f"{self.jobs_url(request).rstrip('/')}/{job_id}"

    def see_job(self, request: Request, job_id: str) -> Response:
        return RedirectResponse(self.job_url(request, job_id), status_code=303)

    async def small_form(self, request: Request) -> DaliParams:
        return await read_dali_params(
            request, None, max_upload_bytes=0, max_total_bytes=_SMALL_FORM_BYTES
        )

    async def request_params(self, request: Request) -> tuple[DaliParams, Path]:
        staging = await run_in_threadpool(self.store.new_upload_dir)
        try:
            return await self.read_params(request, staging), staging
        except BaseException:
            self.store.discard_upload_dir(staging)
            raise

    # --- the job list --------------------------------------------------------------

    async def jobs(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.create(request)
        try:
            query = await self.small_form(request)
            phases = [p.upper() for p in query.getall("PHASE")]
            for p in phases:
                if p not in PHASES:
                    raise InvalidRequestError(f"unknown PHASE {p!r}; phases: {', '.join(PHASES)}")
            after = query.get("AFTER")
            last = query.get("LAST")
            last_n = _int(last, "LAST") if last is not None else None
            if last_n is not None and last_n < 0:
                raise InvalidRequestError("LAST must not be negative")
            jobs = await self.read(
                self.store.list,
                phase=phases or None,
                after=parse_time(after) if after else None,
                last=last_n,
            )
        except RomeReaError as exc:
            return _client_error(exc)
        return Response(jobs_xml(jobs, self.jobs_url(request)), media_type=UWS_MEDIA)

    async def create(self, request: Request) -> Response:
        staging: Path | None = None
        try:
            params, staging = await self.request_params(request)
            phase = (params.get("PHASE") or "").upper()
            if phase not in ("", "RUN"):
                raise InvalidRequestError(f"PHASE={phase} at job creation: only RUN is allowed")
            duration = params.get("EXECUTIONDURATION")
            destruction = params.get("DESTRUCTION")
            seconds = _int(duration, "EXECUTIONDURATION") if duration else None
            when = parse_time(destruction) if destruction else None
            job = await run_in_threadpool(
                functools.partial(
                    self.store.create,
                    _flatten(params),
                    params.files,
                    client=request.client.host if request.client else None,
                    execution_duration=seconds,
                    destruction=when,
                )
            )
            if phase == "RUN":
                await run_in_threadpool(self.store.run, job.job_id)
        except RomeReaError as exc:
            return error_response(exc)
        finally:
            if staging is not None:
                self.store.discard_upload_dir(staging)
        return self.see_job(request, job.job_id)

    # --- one job -------------------------------------------------------------------

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            if request.method == "DELETE":
                await run_in_threadpool(self.store.delete, job_id)
                return RedirectResponse(self.jobs_url(request), status_code=303)
            if request.method == "POST":
                return await self.post_job(request, job_id)
            query = await self.small_form(request)
            wait = query.get("WAIT")
            if wait is not None:
                phase = query.get("PHASE")
                if phase is not None and phase.upper() not in PHASES:
                    raise InvalidRequestError(f"unknown PHASE {phase!r}")
                await self.store.wait_async(
                    job_id, _int(wait, "WAIT"), phase.upper() if phase else None
                )
            job = await self.read(self.store.get, job_id)
        except RomeReaError as exc:
            return _client_error(exc)
        return Response(job_xml(job, self.job_url(request, job_id)), media_type=UWS_MEDIA)

    async def post_job(self, request: Request, job_id: str) -> Response:
        await self.read(self.store.get, job_id)  # 404 before reading any body
        params, staging = await self.request_params(request)
        try:
            action = params.get("ACTION")
            if action is not None:
                if action.upper() != "DELETE":
                    raise InvalidRequestError(f"unknown ACTION {action!r}; only DELETE is known")
                await run_in_threadpool(self.store.delete, job_id)
                return RedirectResponse(self.jobs_url(request), status_code=303)
            if params.get("PHASE") is not None:
                await self.change_phase(job_id, params.get("PHASE") or "")
            rest = _flatten(params)
            if rest or params.files:
                await run_in_threadpool(self.store.update_parameters, job_id, rest, params.files)
            return self.see_job(request, job_id)
        finally:
            self.store.discard_upload_dir(staging)

    async def change_phase(self, job_id: str, phase: str) -> None:
        phase = phase.upper()
        if phase == "RUN":
            await run_in_threadpool(self.store.run, job_id)
        elif phase == "ABORT":
            await run_in_threadpool(self.store.abort, job_id)
        else:
            raise InvalidRequestError(f"PHASE={phase!r}: this service accepts RUN or ABORT")

    async def phase(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            if request.method == "POST":
                await self.read(self.store.get, job_id)
                form = await self.small_form(request)
                phase = form.get("PHASE")
                if phase is None:
                    raise InvalidRequestError("POST to /phase needs PHASE=RUN or PHASE=ABORT")
                await self.change_phase(job_id, phase)
                return self.see_job(request, job_id)
            return _text(await self.read(self.store.phase, job_id))
        except RomeReaError as exc:
            return _client_error(exc)

    async def execution_duration(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            if request.method == "POST":
                await self.read(self.store.get, job_id)
                value = (await self.small_form(request)).get("EXECUTIONDURATION")
                if value is None:
                    raise InvalidRequestError("POST needs EXECUTIONDURATION=<seconds>")
                seconds = _int(value, "EXECUTIONDURATION")
                await run_in_threadpool(self.store.set_execution_duration, job_id, seconds)
                return self.see_job(request, job_id)
            return _text(str((await self.read(self.store.get, job_id)).execution_duration))
        except RomeReaError as exc:
            return _client_error(exc)

    async def destruction(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            if request.method == "POST":
                await self.read(self.store.get, job_id)
                value = (await self.small_form(request)).get("DESTRUCTION")
                if value is None:
                    raise InvalidRequestError("POST needs DESTRUCTION=<ISO 8601 time>")
                await run_in_threadpool(self.store.set_destruction, job_id, parse_time(value))
                return self.see_job(request, job_id)
            return _text(iso_time((await self.read(self.store.get, job_id)).destruction))
        except RomeReaError as exc:
            return _client_error(exc)

    async def quote(self, request: Request) -> Response:
        try:
            return _text(
                iso_time((await self.read(self.store.get, request.path_params["job_id"])).quote)
            )
        except RomeReaError as exc:
            return _client_error(exc)

    async def owner(self, request: Request) -> Response:
        try:
            return _text(
                (await self.read(self.store.get, request.path_params["job_id"])).owner or ""
            )
        except RomeReaError as exc:
            return _client_error(exc)

    async def error(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            job = await self.read(self.store.get, job_id)
        except RomeReaError as exc:
            return _client_error(exc)
        if not job.error_message or job.phase not in ("ERROR", "ABORTED"):
            return _text(f"job {job_id} is {job.phase} and has no error\n", 404)
        return dali_error(job.error_message, 200)

    async def results(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            job = await self.read(self.store.get, job_id)
        except RomeReaError as exc:
            return _client_error(exc)
        body = _serialize(_results_model(job, self.job_url(request, job_id)))
        return Response(body, media_type=UWS_MEDIA)

    async def result(self, request: Request) -> Response:
        job_id, result_id = request.path_params["job_id"], request.path_params["result_id"]
        try:
            job = await self.read(self.store.get, job_id)
        except RomeReaError as exc:
            return _client_error(exc)
        for r in job.results:
            if r.id == result_id and r.path.is_file():
                return FileResponse(r.path, media_type=r.media_type)
        return _text(f"job {job_id} ({job.phase}) has no result {result_id!r}\n", 404)

    async def parameters(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            if request.method == "POST":
                await self.read(self.store.get, job_id)
                params, staging = await self.request_params(request)
                try:
                    await run_in_threadpool(
                        self.store.update_parameters, job_id, _flatten(params), params.files
                    )
                finally:
                    self.store.discard_upload_dir(staging)
                return self.see_job(request, job_id)
            job = await self.read(self.store.get, job_id)
        except RomeReaError as exc:
            return _client_error(exc)
        body = _serialize(_parameters_model(job, self.job_url(request, job_id)))
        return Response(body, media_type=UWS_MEDIA)

    async def upload(self, request: Request) -> Response:
        job_id, part = request.path_params["job_id"], request.path_params["part"]
        try:
            job = await self.read(self.store.get, job_id)
        except RomeReaError as exc:
            return _client_error(exc)
        path = job.files.get(part)
        if path is None or not path.is_file():
            return _text(f"job {job_id} has no upload {part!r}\n", 404)
        return FileResponse(path, media_type="application/octet-stream")


def _int(value: str, name: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise InvalidRequestError(f"{name}={value!r} is not an integer") from None


def _default_reader(max_upload_bytes: int) -> ParamReader:
    async def read(request: Request, directory: Path) -> DaliParams:
        return await read_dali_params(request, directory, max_upload_bytes=max_upload_bytes)

    return read


def uws_routes(
    store: JobStoreBase,
    *,
    read_params: ParamReader | None = None,
    prefix: str = "",
) -> list[BaseRoute]:
    """The UWS 1.1 REST binding of ``store`` as Starlette routes.

    Either mount them (``Mount("/tap/async", routes=uws_routes(store, ...))``, where the
    job list is ``/tap/async/``) or add them with ``prefix="/tap/async"``, which also
    serves the list at ``/tap/async`` itself (what TAP clients POST to) without a
    slash redirect. ``read_params(request, directory)`` reads DALI parameters saving
    uploads into ``directory`` (default: `read_dali_params` with a 100 MiB limit).
    """
    prefix = prefix.rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise ValueError("prefix must start with '/'")
    h = _Endpoints(store, read_params or _default_reader(100 * 2**20), prefix)
    job = prefix + "/{job_id}"
    routes: list[BaseRoute] = [Route(prefix + "/", h.jobs, methods=["GET", "POST"])]
    if prefix:
        routes.append(Route(prefix, h.jobs, methods=["GET", "POST"]))
    routes += [
        Route(job, h.job, methods=["GET", "POST", "DELETE"]),
        Route(job + "/phase", h.phase, methods=["GET", "POST"]),
        Route(job + "/executionduration", h.execution_duration, methods=["GET", "POST"]),
        Route(job + "/destruction", h.destruction, methods=["GET", "POST"]),
        Route(job + "/quote", h.quote, methods=["GET"]),
        Route(job + "/owner", h.owner, methods=["GET"]),
        Route(job + "/error", h.error, methods=["GET"]),
        Route(job + "/results", h.results, methods=["GET"]),
        Route(job + "/results/{result_id}", h.result, methods=["GET"]),
        Route(job + "/parameters", h.parameters, methods=["GET", "POST"]),
        Route(job + "/uploads/{part}", h.upload, methods=["GET"]),
    ]
    return routes
