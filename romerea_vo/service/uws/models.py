"""UWS job model: phases, `Job`, `Result`, `CancelToken`, the job errors and time helpers."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vo_models.uws.types import ErrorType, ExecutionPhase

from ...errors import InvalidRequestError, RomeReaError
from ..params import parse_upload_param
from ..responses import XML_MEDIA

log = logging.getLogger("romerea_vo.service.uws")


PENDING, QUEUED, EXECUTING = (ExecutionPhase.PENDING.value, ExecutionPhase.QUEUED.value,
                               ExecutionPhase.EXECUTING.value)  # fmt: skip
COMPLETED, ERROR, ABORTED = (ExecutionPhase.COMPLETED.value, ExecutionPhase.ERROR.value,
                             ExecutionPhase.ABORTED.value)  # fmt: skip
ARCHIVED, HELD, SUSPENDED, UNKNOWN = (ExecutionPhase.ARCHIVED.value, ExecutionPhase.HELD.value,
                                      ExecutionPhase.SUSPENDED.value,
                                      ExecutionPhase.UNKNOWN.value)  # fmt: skip
"""UWS 1.1 phases, from vo-models' `ExecutionPhase` (plain strings: they go into job.json,
PostgreSQL and XML as they are)."""
PHASES = tuple(phase.value for phase in ExecutionPhase)
TRANSIENT, FATAL = ErrorType.TRANSIENT.value, ErrorType.FATAL.value
"""UWS error types, from vo-models' `ErrorType`."""
ACTIVE_PHASES = frozenset({PENDING, QUEUED, EXECUTING})
"""Phases in which a blocking WAIT waits (UWS 1.1 §2.2.1.1)."""
FINAL_PHASES = frozenset({COMPLETED, ERROR, ABORTED, ARCHIVED})

CONTROL_PARAMS = frozenset({"PHASE", "ACTION", "EXECUTIONDURATION", "DESTRUCTION", "WAIT"})
"""UWS control parameters: acted on, never stored as job parameters."""

UPLOAD_DIR = "uploads"
JOB_FILE = "job.json"
STAGING = ".incoming"
STAGING_MAX_AGE = 86400.0
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


def now_utc() -> datetime:
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
    phase: str = PENDING
    run_id: str | None = None
    owner: str | None = None
    client: str | None = None
    """The address that created the job (per-client quotas; not shown in UWS documents)."""
    base_url: str | None = None
    """The service's root URL as the request that created the job named it: what its
    results link to (not shown in UWS documents)."""
    start_time: datetime | None = None
    end_time: datetime | None = None
    execution_duration: int = 0
    quote: datetime | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    error_message: str | None = None
    error_type: str = FATAL

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
            "base_url": self.base_url,
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
            base_url=data.get("base_url"),
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
            error_type=data.get("error_type", FATAL),
        )


class CancelToken:
    """Tells a running job to stop: ABORT, execution duration exceeded, deletion, shutdown.

    A runner polls `is_set` (or sleeps with `wait`) and registers callbacks with
    `on_cancel`, e.g. a DuckDB connection's ``interrupt``, to stop blocking work.

    An interrupt that reaches a query engine just before a statement starts is lost, and
    the statement then runs to its end (for a runaway join: for ever). So whoever waits
    for the work repeats the callbacks while it has not returned: `repeat` (the
    PostgreSQL job store's heartbeat, a sync request's disconnect watch) or
    `repeat_until` (the in-process job store).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        self._every: list[Callable[[], object]] = []
        self.reason: str | None = None

    def is_set(self) -> bool:
        """True once the job has been cancelled."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until cancelled or ``timeout`` seconds pass; True if cancelled."""
        return self._event.wait(timeout)

    def on_cancel(
        self, callback: Callable[[], object], *, repeated: bool = True
    ) -> Callable[[], None]:
        """Call ``callback`` on cancellation (at once if already cancelled), and again on
        each `repeat` unless ``repeated`` is false.

        Returns a function that unregisters it.
        """
        with self._lock:
            if repeated:
                self._every.append(callback)
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._remove(callback)
        self._call(callback)
        return lambda: self._remove(callback)

    def _remove(self, callback: Callable[[], object]) -> None:
        with self._lock:
            for callbacks in (self._callbacks, self._every):
                with contextlib.suppress(ValueError):
                    callbacks.remove(callback)

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

    def repeat(self) -> None:
        """Run the callbacks again if cancelled (errors ignored: the work may be over)."""
        if not self.is_set():
            return
        with self._lock:
            callbacks = list(self._every)
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()

    def repeat_until(self, done: threading.Event, every: float = 0.25) -> None:
        """Once cancelled, `repeat` every ``every`` seconds (in a thread of its own) until
        ``done`` is set: for a runner nobody else watches."""

        def loop() -> None:
            while not done.wait(every):
                self.repeat()

        def start() -> None:
            if not done.is_set():
                threading.Thread(target=loop, name="job-interrupt", daemon=True).start()

        self.on_cancel(start, repeated=False)


JobRunner = Callable[[Job, CancelToken], None]
"""Executes a job in a worker thread.

It reads ``job.parameters`` / ``job.files`` (or ``job.upload_tables()``), writes its
result file(s) into ``job.directory`` and registers them with ``job.add_result``
(the TAP result as id ``"result"``). Returning means COMPLETED; raising means ERROR
with the exception's message. It should honour the `CancelToken`.
"""


def job_parameters(parameters: Mapping[str, str]) -> dict[str, str]:
    """A job's parameters: names upper-cased, UWS control parameters left out."""
    return {k.upper(): v for k, v in parameters.items() if k.upper() not in CONTROL_PARAMS}


def unlink_quietly(paths: Iterable[Path]) -> None:
    for path in list(paths):
        with contextlib.suppress(OSError):
            path.unlink()


def error_message(exc: BaseException) -> str:
    if isinstance(exc, RomeReaError):
        return str(exc) or type(exc).__name__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
