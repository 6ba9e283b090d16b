"""Admission control: how many queries run at once, per service and per client address.

Heavy queries (joins, uploads, photometry) and light ones (one table) have separate
slots, queues and worker threads, so that a burst of heavy queries cannot starve cone
searches; lightcurves, DataLink and VOSI never pass through here and keep anyio's
default thread pool. Beyond the queue a request is refused at once with a 503 and a
``Retry-After``, which TAP clients understand, instead of waiting until it times out.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio

from ..errors import RomeReaError

log = logging.getLogger("romerea_vo.service")


class Overloaded(RomeReaError):
    """The service (or this client's share of it) is full; retry after ``retry_after`` s."""

    http_status = 503
    dali_fault = "TransientFault"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Lane:
    """One class of work: its running slots, its queue and its own thread limiter."""

    name: str
    slots: int
    queue: int
    per_client: int

    def __post_init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.by_client: Counter[str] = Counter()
        # made on first use: anyio's primitives need the running event loop
        self._threads: anyio.CapacityLimiter | None = None
        self._changed: anyio.Event | None = None

    @property
    def threads(self) -> anyio.CapacityLimiter:
        """The worker threads of this lane (not anyio's default pool of 40)."""
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(max(1, self.slots))
        return self._threads

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    @contextlib.asynccontextmanager
    async def admit(
        self, client: str, retry_after: int, *, cancelled: Callable[[], bool] | None = None
    ) -> AsyncIterator[None]:
        """Hold a slot for the block; queue while all are busy.

        Raises :class:`Overloaded` when the queue is full or ``client`` already has its
        share running or queued. A waiter whose ``cancelled()`` turns True (the client
        went away, its deadline passed) leaves the queue and enters the block at once
        without a slot, to fail there.
        """
        if self.by_client[client] >= self.per_client:
            raise Overloaded(
                f"too many {self.name} queries from {client} at once (at most "
                f"{self.per_client} running or queued per client); retry later",
                retry_after,
            )
        if self.running >= self.slots and self.waiting >= self.queue:
            raise Overloaded(
                f"the service is busy ({self.running} {self.name} queries running, "
                f"{self.waiting} queued); retry later",
                retry_after,
            )
        self.by_client[client] += 1
        try:
            if self.running >= self.slots:
                self.waiting += 1
                try:
                    while self.running >= self.slots:
                        if cancelled is not None and cancelled():
                            yield  # no slot taken: the caller sees the cancellation
                            return
                        if self._changed is None:
                            self._changed = anyio.Event()
                        # woken by a freed slot; the timeout only re-checks ``cancelled``
                        with anyio.move_on_after(0.25):
                            await self._changed.wait()
                finally:
                    self.waiting -= 1
            self.running += 1
            try:
                yield
            finally:
                self.running -= 1
                self._notify()
                if self.running == 0:
                    release_memory()
        finally:
            self.by_client[client] -= 1
            if not self.by_client[client]:
                del self.by_client[client]


class Admission:
    """The lanes of one service process (see the module docstring)."""

    def __init__(
        self,
        *,
        heavy_slots: int,
        heavy_queue: int,
        light_slots: int,
        light_queue: int,
        per_client: int,
        retry_after: int = 10,
    ):
        self.retry_after = retry_after
        self.heavy = Lane("heavy", heavy_slots, heavy_queue, per_client)
        # light queries are bounded by their lane only: a cone search is no threat
        self.light = Lane("light", light_slots, light_queue, light_slots + light_queue)

    def lane(self, heavy: bool) -> Lane:
        return self.heavy if heavy else self.light

    @property
    def running(self) -> int:
        """Queries executing now, in both lanes (for tests and the resilience benchmark)."""
        return self.heavy.running + self.light.running


_libc = None


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``): a burst of big
    queries otherwise leaves the process's RSS at its peak. A no-op elsewhere."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
            if _libc is not False and not hasattr(_libc, "malloc_trim"):
                _libc = False
        except OSError:
            _libc = False
    if isinstance(_libc, ctypes.CDLL):
        with contextlib.suppress(Exception):
            _libc.malloc_trim(0)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (``M_ARENA_MAX``): each worker thread otherwise gets an
    arena of its own whose freed memory is rarely returned. A no-op elsewhere."""
    name = ctypes.util.find_library("c")
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-8, arenas)  # M_ARENA_MAX
