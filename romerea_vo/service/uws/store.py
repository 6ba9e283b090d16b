"""`JobStoreBase`: what the UWS binding needs from a job store (and the logic two stores share)."""

from __future__ import annotations

import abc
import builtins
import contextlib
import logging
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ...errors import InvalidRequestError
from ..params import parse_upload_param
from .models import (
    ACTIVE_PHASES,
    COMPLETED,
    PENDING,
    STAGING,
    UPLOAD_DIR,
    ClientQuotaError,
    Job,
    JobLimitError,
    JobNotFoundError,
    JobRunner,
    job_parameters,
    now_utc,
    unlink_quietly,
)

log = logging.getLogger("romerea_vo.service.uws")


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
        base_url: str | None = None,
        execution_duration: int | None = None,
        destruction: datetime | None = None,
    ) -> Job:
        """Create a PENDING job; ``files`` (multipart parts) are moved into its directory.

        ``UPLOAD`` is checked against the files; ``RUNID`` sets the run id; the
        execution duration and destruction time are clamped as by their setters;
        ``base_url`` is the service root the creating request named (`Job.base_url`).
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
        params = job_parameters(parameters)
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
            now = now_utc()
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
                base_url=base_url,
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
                if job.phase != COMPLETED or not job.results:
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
        path = self.root / STAGING / secrets.token_hex(8)
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
            unlink_quietly(moved.values())
            raise
        return moved

    def _check_update(
        self, job: Job, params: Mapping[str, str], files: Mapping[str, Path]
    ) -> str | None:
        """Refuse new parameters unless the job is PENDING and its uploads stay well formed;
        returns the merged UPLOAD value."""
        if job.phase != PENDING:
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
    ) -> builtins.list[Path]:
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
