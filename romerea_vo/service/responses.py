"""What every endpoint answers with: media types, DALI error documents, and the one
mapping from exceptions to HTTP responses.

Each exception class carries its HTTP status and DALI fault (``http_status``,
``dali_fault`` on `romerea_vo.errors.RomeReaError` and its subclasses), so an endpoint
catches once and hands the exception to `error_response` instead of keeping a ladder of
``except`` clauses of its own. `CatchAllErrors` answers for any exception an endpoint
let through.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence

from starlette.responses import Response

from ..errors import RomeReaError
from ..votable.formats import VOTABLE_MEDIA
from ..votable.writer import Info, error_votable

__all__ = [
    "VOTABLE_MEDIA",
    "XML_MEDIA",
    "CatchAllErrors",
    "dali_error",
    "error_response",
    "error_status",
]

XML_MEDIA = "text/xml"
"""VOSI and UWS documents."""

log = logging.getLogger("romerea_vo.service")


def dali_error(
    message: str,
    status: int = 400,
    *,
    infos: Sequence[Info] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A DALI error document (VOTable, ``QUERY_STATUS=ERROR``) with HTTP ``status``."""
    body = error_votable(message, infos=infos)
    return Response(body, status_code=status, media_type=VOTABLE_MEDIA, headers=headers)


def error_status(exc: BaseException) -> int:
    """The HTTP status an exception stands for (500 for anything not ours)."""
    return exc.http_status if isinstance(exc, RomeReaError) else 500


def error_response(
    exc: Exception, *, fault_prefix: bool = False, infos: Sequence[Info] = ()
) -> Response:
    """The DALI error response for ``exc``: our exceptions with their message and status;
    anything else is a bug, logged with its traceback and answered as a 500 that names
    the exception but carries no traceback. ``fault_prefix``: begin the message with the
    DALI fault (``UsageFault: ...``), as DataLink asks."""
    if isinstance(exc, RomeReaError):
        message = str(exc)
        if fault_prefix and not message.startswith(exc.dali_fault):
            message = f"{exc.dali_fault}: {message}"
        retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return dali_error(message, exc.http_status, infos=infos, headers=retry)
    log_bug(exc)
    message = f"internal error: {type(exc).__name__}: {exc}"
    if fault_prefix:
        message = f"{RomeReaError.dali_fault}: {message}"
    return dali_error(message, 500, infos=infos)


def log_bug(exc: BaseException) -> None:
    """One log line for an exception that is a bug: what and where it was raised (the
    whole traceback at DEBUG level)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    log.error("request failed: %s: %s%s", type(exc).__name__, exc, where)
    log.debug("request failed", exc_info=exc)


class CatchAllErrors:
    """ASGI middleware: an exception that no endpoint turned into a response becomes a
    DALI error document (500 for a bug, with no traceback in the body) and one log line,
    instead of Starlette's plain-text 500 and a traceback. A response already under way
    cannot be changed: the exception is logged and the connection ends incomplete, so
    that the client sees a failure rather than a truncated document."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception as exc:
            if started:
                log_bug(exc)
                return
            await error_response(exc)(scope, receive, send)


class TrustedHosts:
    """ASGI middleware: requests whose Host header (port aside) is none of
    ``allowed_hosts`` (``*.example.org`` patterns allowed, as Starlette's
    TrustedHostMiddleware takes them) get a DALI error document with status 400, which
    does not repeat the refused name; Starlette's middleware answers in plain text."""

    def __init__(self, app, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.exact = {h.lower() for h in allowed_hosts if not h.startswith("*")}
        self.suffixes = tuple(h[1:].lower() for h in allowed_hosts if h.startswith("*"))

    def allows(self, host_header: str | None) -> bool:
        """Whether a request with this Host header is answered."""
        if not host_header:
            return False
        host = host_header.strip().lower()
        # [IPv6]:port or name:port
        host = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if self.allows(host):
            await self.app(scope, receive, send)
            return
        message = (
            "this service answers only to its configured host names (allowed_hosts); the "
            "Host header of this request is not one of them"
        )
        await dali_error(message, 400)(scope, receive, send)
