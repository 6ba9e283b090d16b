"""What every endpoint answers with: media types, DALI error documents, and the one
mapping from exceptions to HTTP responses.

Each exception class carries its HTTP status and DALI fault (``http_status``,
``dali_fault`` on `romerea_vo.errors.RomeReaError` and its subclasses), so an endpoint
catches once and hands the exception to `error_response` instead of keeping a ladder of
``except`` clauses of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from starlette.responses import Response

from ..errors import RomeReaError
from ..votable.formats import VOTABLE_MEDIA
from ..votable.writer import Info, error_votable

__all__ = [
    "VOTABLE_MEDIA",
    "XML_MEDIA",
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
    log.exception("request failed")
    message = f"internal error: {type(exc).__name__}: {exc}"
    if fault_prefix:
        message = f"{RomeReaError.dali_fault}: {message}"
    return dali_error(message, 500, infos=infos)
