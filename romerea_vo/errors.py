"""Exceptions with messages a person can act on; the CLI prints them without a traceback."""

from __future__ import annotations


class RomeReaError(Exception):
    """Base class of every error romerea-vo reports to a user.

    ``http_status`` and ``dali_fault``: what a service answers when the error ends a
    request (`romerea_vo.service.responses.error_response`); subclasses override them.
    """

    http_status: int = 500
    dali_fault: str = "FatalFault"
    retry_after: int | None = None
    """Seconds after which the request may succeed (HTTP Retry-After), if it may."""


class FieldFormatError(RomeReaError):
    """A field directory or file is missing, compressed, truncated or inconsistent."""


class CompressedFieldError(FieldFormatError):
    """Only bzip2-archived copies of a field file are present."""


class CubeShapeError(FieldFormatError):
    """A quadrant cube's shape disagrees with the crossmatch file."""


class StarNotFoundError(RomeReaError, LookupError):
    """No star matches an identifier or position."""

    http_status = 404
    dali_fault = "NotFoundFault"


class InvalidRequestError(RomeReaError, ValueError):
    """An argument (filter, dataset, quality, radius, ...) is not acceptable."""

    http_status = 400
    dali_fault = "UsageFault"
