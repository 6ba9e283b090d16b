"""Talking to a romerea-vo service, or any other TAP service, over HTTP.

One place for what every client part of romerea-vo needs (the CLI's ``lightcurve --url``,
the SAMP bridge's service source, ``xmatch --service`` and ``--external-tap``): a
requests session with a timeout on every request (pyvo sets none), connection retries,
no proxy for loopback services, the text of a DALI error document, and one wording for
failures. TAP queries go through pyvo on the same session (`ServiceClient.tap`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter, Retry

from .errors import RomeReaError

if TYPE_CHECKING:
    import pyvo

__all__ = [
    "DEFAULT_TIMEOUT",
    "ServiceClient",
    "ServiceError",
    "dali_error_message",
    "failure_reason",
    "is_loopback_host",
    "session",
]

DEFAULT_TIMEOUT = 120.0
"""Seconds to wait for a connection, and then for each read, unless told otherwise."""

CONNECT_RETRIES = 2
"""Retries of a connection that could not be made (the request never left: safe for any
method); a request that reached the service is never repeated."""


class _DropRetryWarnings(logging.Filter):
    """urllib3 logs a WARNING for every connection retry; a client that cannot connect
    reports that once, in its own words (`failure_reason`), so the retries stay quiet."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Retrying")


logging.getLogger("urllib3.connectionpool").addFilter(_DropRetryWarnings())


class ServiceError(RomeReaError):
    """A request to a service failed; ``unreachable`` when no connection could be made."""

    def __init__(self, message: str, *, unreachable: bool = False, status: int | None = None):
        super().__init__(message)
        self.unreachable = unreachable
        self.status = status


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def session(timeout: float = DEFAULT_TIMEOUT, *, url: str | None = None) -> requests.Session:
    """A requests session with ``timeout`` on every request and connection retries; no
    proxies (nor other environment settings) when ``url`` is on a loopback host."""

    class TimeoutSession(requests.Session):
        def request(self, method, url, **kwargs):
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = timeout
            return super().request(method, url, **kwargs)

    s = TimeoutSession()
    retry = Retry(total=None, connect=CONNECT_RETRIES, read=0, redirect=5, status=0,
                  other=0, backoff_factor=0.2, raise_on_status=False)  # fmt: skip
    for prefix in ("http://", "https://"):
        s.mount(prefix, HTTPAdapter(max_retries=retry))
    if url is not None and is_loopback_host(urlsplit(url).hostname):
        s.trust_env = False  # an http_proxy setting must not route loopback requests
    return s


def dali_error_message(body: bytes) -> str | None:
    """The text of a DALI error document (``QUERY_STATUS=ERROR``), or the ``detail`` of a
    JSON error, if ``body`` is one."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        try:
            detail = json.loads(body)["detail"]
        except (ValueError, KeyError, TypeError):
            return None
        return str(detail) if detail else None
    for el in root.iter():
        is_info = el.tag.rsplit("}", 1)[-1] == "INFO" and el.get("name") == "QUERY_STATUS"
        if is_info and el.get("value") == "ERROR":
            return (el.text or "").strip() or "the service reported an error"
    return None


def failure_reason(exc: BaseException) -> tuple[str, bool]:
    """A one-line reason for a requests/pyvo failure, and whether it means unreachable."""
    cause = getattr(exc, "cause", None) or exc.__cause__ or exc
    if isinstance(cause, requests.exceptions.ConnectTimeout):
        return "no connection within the timeout", True
    if isinstance(cause, requests.exceptions.Timeout):
        return "no answer within the timeout", False
    if isinstance(cause, requests.exceptions.ConnectionError):
        text = str(cause)
        if "Connection refused" in text or "Failed to establish" in text:
            return "cannot connect (connection refused)", True
        if "Name or service not known" in text or "NameResolutionError" in text:
            return "cannot connect (unknown host name)", True
        return f"connection failed ({text.splitlines()[0][:200]})", False
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500], False


class ServiceClient:
    """Requests to the service at ``url`` (a romerea-vo root URL, or a TAP URL).

    ``name`` words the service in messages ("cannot reach <name> at <url>: ...").
    Every failure raises `ServiceError`: unreachable, an HTTP error (with the service's
    DALI error text when it sent one), or no answer within ``timeout`` seconds.
    """

    def __init__(
        self, url: str, *, timeout: float = DEFAULT_TIMEOUT, name: str = "the service"
    ) -> None:
        self.url = url.strip().rstrip("/")
        self.timeout = float(timeout)
        self.name = name
        self.session = session(self.timeout, url=self.url)

    def close(self) -> None:
        self.session.close()

    def get(self, path: str = "", params: Sequence[tuple[str, str]] | None = None) -> bytes:
        """The body of ``GET url+path?params``; raises `ServiceError`."""
        return self._send("GET", path, params=list(params or ()))

    def post(
        self,
        path: str = "",
        data: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
    ) -> bytes:
        """The body of ``POST url+path`` (form fields ``data``, multipart when ``files``);
        raises `ServiceError`."""
        return self._send("POST", path, data=data, files=files)

    def _send(self, method: str, path: str, **kwargs: Any) -> bytes:
        url = self.url + path
        try:
            resp = self.session.request(method, url, **kwargs)
        except requests.RequestException as exc:
            reason, unreachable = failure_reason(exc)
            what = f"cannot reach {self.name} at {url}" if unreachable else url
            raise ServiceError(f"{what}: {reason}", unreachable=unreachable) from None
        if resp.status_code >= 400:
            detail = dali_error_message(resp.content)
            if detail is None:
                detail = resp.reason or "error"
            raise ServiceError(
                f"{detail} (HTTP {resp.status_code} from {url})", status=resp.status_code
            )
        return resp.content

    def tap(self, path: str = "") -> pyvo.dal.TAPService:
        """pyvo's TAPService at ``url+path``, on this client's session."""
        import pyvo  # the SAMP bridge and the CLI load it only when they query a service

        return pyvo.dal.TAPService(self.url + path, session=self.session)
