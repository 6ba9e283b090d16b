"""`JobStore`: the UWS jobs of one process, each in ``root/<job_id>/`` (``job.json``,
uploads, results)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ...errors import InvalidRequestError, RomeReaError
from .models import (
    ABORTED,
    ARCHIVED,
    COMPLETED,
    ERROR,
    EXECUTING,
    FATAL,
    HELD,
    JOB_FILE,
    PENDING,
    QUEUED,
    STAGING,
    STAGING_MAX_AGE,
    SUSPENDED,
    TRANSIENT,
    UPLOAD_DIR,
    CancelToken,
    Job,
    JobLimitError,
    JobNotFoundError,
    JobRunner,
    error_message,
    job_parameters,
    now_utc,
    unlink_quietly,
)
from .store import JobStoreBase

log = logging.getLogger("romerea_vo.service.uws")


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
        shutil.rmtree(self.root / STAGING, ignore_errors=True)
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
            if job.phase in (QUEUED, EXECUTING):
                self._finish(job, ERROR, "interrupted by a service restart", TRANSIENT)

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
        self, job: Job, phase: str, message: str | None = None, error_type: str = FATAL
    ) -> None:
        """Move a job to a final phase (lock held), dropping results unless COMPLETED."""
        job.phase = phase
        job.end_time = job.end_time or now_utc()
        if message is not None:
            job.error_message = message
            job.error_type = error_type
        if phase != COMPLETED:
            unlink_quietly(r.path for r in job.results)
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
        params = job_parameters(parameters)
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
                unlink_quietly(self._apply_update(job, params, upload, moved))
                moved = {}
                self._save(job)
                return job.copy()
        finally:
            unlink_quietly(moved.values())

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
                if (job.phase in phases if phases else job.phase != ARCHIVED)
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
            if job.phase in (QUEUED, EXECUTING):
                return job.copy()
            if job.phase not in (PENDING, HELD):
                raise InvalidRequestError(
                    f"job {job_id} is {job.phase} and cannot be run again; create a new job"
                )
            if self._closed.is_set():
                raise JobLimitError("the service is shutting down")
            job.phase = QUEUED
            self._save(job)
            self._notify()
            self._executor.submit(self._execute, job_id)
            return job.copy()

    def abort(self, job_id: str) -> Job:
        """PHASE=ABORT: a pending, queued or executing job becomes ABORTED."""
        with self._lock:
            job = self._job(job_id)
            if job.phase == ABORTED:
                return job.copy()
            if job.phase not in (PENDING, QUEUED, EXECUTING, HELD, SUSPENDED):
                raise InvalidRequestError(
                    f"job {job_id} is {job.phase}: only a pending, queued or executing job "
                    "can be aborted"
                )
            token = self._tokens.get(job_id)
            self._finish(job, ABORTED, "job aborted on request")
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
            if job.phase not in (PENDING, QUEUED, HELD):
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
            if job is None or job.phase != QUEUED or self._closed.is_set():
                return
            token = CancelToken()
            self._tokens[job_id] = token
            job.phase = EXECUTING
            job.start_time = now_utc()
            duration = job.execution_duration
            self._save(job)
            self._notify()
        timer = None
        if duration > 0:
            timer = threading.Timer(duration, self._expire, (job_id, token, duration))
            timer.daemon = True
            timer.start()
        error: BaseException | None = None
        returned = threading.Event()
        token.repeat_until(returned)
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
            returned.set()
            if timer is not None:
                timer.cancel()
        with self._lock:
            self._tokens.pop(job_id, None)
            if self._jobs.get(job_id) is not job:  # deleted while running
                shutil.rmtree(job.directory, ignore_errors=True)
                self._notify()
                return
            if job.phase != EXECUTING:  # aborted, timed out or shut down meanwhile
                self._finish(job, job.phase)
            elif error is not None:
                self._finish(job, ERROR, error_message(error))
            elif token.is_set():
                self._finish(job, ABORTED, f"job {token.reason}")
            else:
                for result in job.results:
                    with contextlib.suppress(OSError):
                        result.size = result.path.stat().st_size
                self._finish(job, COMPLETED)

    def _expire(self, job_id: str, token: CancelToken, duration: int) -> None:
        message = f"query exceeded the execution duration of {duration} s"
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.phase != EXECUTING or self._tokens.get(job_id) is not token:
                return
            self._finish(job, ERROR, message)
        token.cancel("exceeded its execution duration")

    # --- destruction and shutdown --------------------------------------------------

    def sweep(self) -> int:
        """Delete jobs past their destruction time (and stale staging dirs); return count."""
        now = now_utc()
        with self._lock:
            expired = [jid for jid, job in self._jobs.items() if job.destruction <= now]
        for job_id in expired:
            with contextlib.suppress(JobNotFoundError):
                self.delete(job_id)
        staging = self.root / STAGING
        if staging.is_dir():
            cutoff = time.time() - STAGING_MAX_AGE
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
                if job.phase in (QUEUED, EXECUTING):
                    self._finish(job, ERROR, "interrupted by a service shutdown", TRANSIENT)
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
