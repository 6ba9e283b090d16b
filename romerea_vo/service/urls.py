"""The service's own URL, as links in documents name it."""

from __future__ import annotations

from starlette.requests import Request

__all__ = ["service_root"]


def service_root(request: Request, public_url: str | None) -> str:
    """The service's root URL, no trailing slash: the configured ``public_url`` when set
    (behind a proxy, and so that no Host header decides what documents link to), else
    the root of ``request`` as its client named it."""
    return (public_url or str(request.base_url)).rstrip("/")
