"""Several service processes on one port (``romerea-vo serve --workers N``).

uvicorn's process manager (`uvicorn.supervisors.Multiprocess`) starts N worker processes,
restarts a worker that dies, and stops them all on SIGINT/SIGTERM (SIGHUP replaces them
one by one). Each worker listens on a socket of its own bound with SO_REUSEPORT, so the
kernel spreads new connections over the workers (`_own_socket_per_worker`). Each worker
builds its application with `app_from_env`, from the `ServiceConfig` the parent put, as
a TOML settings file (`romerea_vo.service.settings`) named by the environment variable
``ROMEREA_VO_SERVICE``; any other ASGI process manager
(gunicorn with uvicorn workers, hypercorn) can run the same factory the same way.

Several workers need a job store they share (`PostgresJobStore`, ``jobs_db``) and a
shared work directory: with the default in-process `JobStore` an async job would be
known only to the worker that created it.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from starlette.applications import Starlette

from ..errors import InvalidRequestError, RomeReaError
from .app import create_app
from .settings import ServiceConfig, configure_logging, read_settings, write_settings

__all__ = [
    "CONFIG_ENV",
    "app_from_env",
    "check_config",
    "config_from_env",
    "listening_socket",
    "serve_workers",
]

CONFIG_ENV = "ROMEREA_VO_SERVICE"
LISTEN_URL_ENV = "ROMEREA_VO_LISTEN_URL"
FACTORY = "romerea_vo.service.workers:app_from_env"
GRACEFUL_SHUTDOWN = 10
"""Seconds a stopping worker gives open requests (e.g. a blocking WAIT) before closing."""


def config_from_env() -> tuple[ServiceConfig, str | None]:
    """The `ServiceConfig` in the settings file ``$ROMEREA_VO_SERVICE`` names (and the
    listening URL in ``$ROMEREA_VO_LISTEN_URL``); sets the log level the file gives."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise InvalidRequestError(
            f"${CONFIG_ENV} is not set: it names the service's configuration file"
        )
    settings = read_settings(path)
    configure_logging(settings.service.log_level)
    return ServiceConfig.from_settings(settings), os.environ.get(LISTEN_URL_ENV)


def app_from_env() -> Starlette:
    """ASGI application factory for worker processes (uvicorn ``--factory``)."""
    config, listen_url = config_from_env()
    app = create_app(config)
    service = app.state.service
    # jobs that recorded no root URL (made by an older version) still get descriptors
    service.fallback_url = listen_url
    return app


def check_config(config: ServiceConfig, workers: int) -> None:
    """Refuse configurations several workers cannot serve, saying why."""
    if workers < 1:
        raise InvalidRequestError(f"--workers {workers}: give 1 or more")
    if config.max_workers < 1:
        raise InvalidRequestError(f"--job-threads {config.max_workers}: give 1 or more")
    if workers > 1 and not config.jobs_db:
        raise InvalidRequestError(
            f"--workers {workers} needs a shared job store, --jobs-db postgresql://...: "
            "with the default one each worker process keeps its own async jobs, so a job "
            "created through one worker would be unknown to the others"
        )
    if config.jobs_db and not config.work_dir:
        raise InvalidRequestError(
            "--jobs-db needs --work-dir DIR, a directory every worker shares: the jobs' "
            "uploads and results are kept there"
        )
    if config.jobs_db:
        from .uws.pg_store import ensure_schema  # PostgresError without the postgres extra

        ensure_schema(config.jobs_db)  # fail here, with one message, not in every worker


HEALTHCHECK_TIMEOUT = 120
"""Seconds a worker may take to answer uvicorn's health check (start-up included)."""


def listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, listening TCP socket for the service (``port`` 0: any free port).

    Made with protocol IPPROTO_TCP rather than 0: asyncio sets TCP_NODELAY only on
    connections whose socket says TCP, and without it a keep-alive client waits ~40 ms
    for every response whose headers and body go out as two writes (Nagle's algorithm
    against the client's delayed ACK). ``reuse_port``: SO_REUSEPORT, for the sockets
    of several workers on one port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:  # OverflowError: a port beyond 65535
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidRequestError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.listen(2048)  # connections made before the server runs queue meanwhile
    return sock


def serve_workers(
    config: ServiceConfig,
    sock: socket.socket,
    workers: int,
    *,
    listen_url: str | None = None,
    log_level: str = "warning",
) -> int:
    """Run ``workers`` service processes on the bound ``sock`` until SIGINT/SIGTERM.

    Raises `RomeReaError` when a worker could not start (its error is on stderr).
    """
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    check_config(config, workers)
    if workers > 1 and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
        raise InvalidRequestError("several workers need a socket made with reuse_port=True")
    # the workers read the effective settings (the operator's file and the command
    # line's overrides) from a file in the same format as the operator's
    fd, settings_file = tempfile.mkstemp(prefix="romerea-vo-service-", suffix=".toml")
    os.close(fd)
    settings = config.to_settings()
    settings.service.log_level = log_level
    write_settings(settings, Path(settings_file))
    os.environ[CONFIG_ENV] = settings_file
    if listen_url:
        os.environ[LISTEN_URL_ENV] = listen_url
    uv_config = uvicorn.Config(
        FACTORY,
        factory=True,
        workers=workers,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        # uvicorn replaces a worker that does not answer its health check in time (5 s
        # by default). A worker still starting on a busy machine (importing, opening the
        # database) was killed before it had taken its socket from the parent, which then
        # held a listening socket nobody served: connections hashed to it hung for ever.
        timeout_worker_healthcheck=HEALTHCHECK_TIMEOUT,
    )
    manager = _own_socket_per_worker(Multiprocess)(uv_config, sockets=[sock])
    try:
        manager.run()
    finally:
        Path(settings_file).unlink(missing_ok=True)
    if any(p.exitcode == STARTUP_FAILURE for p in manager.processes):
        raise RomeReaError("a worker process could not start (its error is above)")
    return 0


def _own_socket_per_worker(multiprocess: type) -> type:
    """uvicorn's `Multiprocess`, each worker started with a listening socket of its own.

    With one shared socket every worker's event loop races to accept, and asyncio accepts
    up to the whole backlog per wake-up: a burst of keep-alive clients (a benchmark, a
    reverse proxy's upstream pool) all land on one worker and the others idle (measured:
    2 workers served 0.62x the throughput of 1). SO_REUSEPORT sockets on the same port
    make the kernel hash each new connection to one worker's socket instead.

    `Multiprocess` reads ``self.sockets`` each time it creates a worker (start, restart
    after a death, SIGHUP): here that hands out the socket the parent bound first (so
    connections made while the workers start are served), then a new socket on the same
    address each time. The parent keeps no copy (`_SocketForWorker`), so a worker that
    dies takes its socket with it and the kernel routes new connections to the others.
    """

    class OwnSocketPerWorker(multiprocess):
        def __init__(self, config, sockets: list[socket.socket]) -> None:
            self._first: socket.socket | None = sockets[0]
            self._address = sockets[0].getsockname()[:2]
            super().__init__(config, sockets=[])

        @property
        def sockets(self) -> list:
            sock, self._first = self._first, None
            if sock is None:
                sock = listening_socket(*self._address, reuse_port=True)
            with sock:
                return [_SocketForWorker(sock)]

        @sockets.setter
        def sockets(self, value: list[socket.socket]) -> None:
            pass  # the sockets are made per worker (above)

    return OwnSocketPerWorker


class _SocketForWorker:
    """A listening socket on its way to one worker process, which becomes its only owner.

    multiprocessing's resource sharer holds a duplicate of the descriptor until the
    worker fetches it while unpickling its arguments, so the parent closes its own at once.
    """

    def __init__(self, sock: socket.socket):
        from multiprocessing.reduction import DupFd

        self._dup = DupFd(sock.fileno())
        self._kind = (sock.family, sock.type, sock.proto)

    def __reduce__(self):
        return _socket_in_worker, (self._dup, *self._kind)


def _socket_in_worker(dup, family: int, kind: int, proto: int) -> socket.socket:
    return socket.socket(family, kind, proto, fileno=dup.detach())
