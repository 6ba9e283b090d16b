"""DALI request parameters: GET, urlencoded and multipart POST, uploads streamed to disk.

DALI parameter names are case-insensitive (stored upper-cased here) and values are
case-sensitive. File parts of a ``multipart/form-data`` body are written to disk as
they arrive, never held whole in memory, and refused as soon as a size limit is
passed; the TAP ``UPLOAD`` parameter is parsed and checked by `parse_upload_param`.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, overload
from urllib.parse import parse_qsl

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from romerea_vo.adql.reserved import is_reserved
from romerea_vo.errors import InvalidRequestError

__all__ = [
    "DEFAULT_MAX_FIELD_BYTES",
    "DaliParams",
    "format_bytes",
    "is_adql_identifier",
    "parse_number",
    "parse_upload_param",
    "read_dali_params",
]

DEFAULT_MAX_FIELD_BYTES = 1024 * 1024
"""Limit on one ordinary (non-file) form field, e.g. a QUERY."""

_FORM_SLACK_BYTES = 1024 * 1024
"""Room left for ordinary fields and multipart framing when no total limit is given."""

_MAX_PARTS = 1100
"""Fields of one request: the 1,000 IDs /lightcurve and DataLink take, and the others."""

_FORM_FIELDS_FACTOR = 8
"""An urlencoded body (fields only, held in memory) may be this many field limits."""

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


def format_bytes(n: int) -> str:
    """A byte count as people read it: exact GiB/GB/MiB/MB/KiB where possible."""
    units = (("GiB", 2**30), ("GB", 10**9), ("MiB", 2**20), ("MB", 10**6), ("KiB", 2**10))
    for unit, size in units:
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    if n >= 10**9:
        return f"{n / 10**9:.1f} GB"
    if n >= 10**6:
        return f"{n / 10**6:.1f} MB"
    if n >= 10**3:
        return f"{n / 10**3:.1f} kB"
    return f"{n} bytes"


@dataclass
class DaliParams:
    """The parameters of one DALI request.

    ``values`` maps upper-cased parameter names to their values in request order
    (query string first, then the body); ``files`` maps multipart file-part names
    (case kept, as ``param:NAME`` references them) to the files they were saved to.
    """

    values: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @overload
    def get(self, name: str) -> str | None: ...

    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of a parameter (name case-insensitive), or ``default``.

        DALI leaves repeated single-valued parameters to the service; the first
        value wins, so a value in the URL overrides one in a POST body.
        """
        values = self.values.get(name.upper())
        return values[0] if values else default

    def getall(self, name: str) -> list[str]:
        """Every value of a parameter (name case-insensitive), possibly none."""
        return list(self.values.get(name.upper(), ()))

    def add(self, name: str, value: str) -> None:
        """Append one value."""
        self.values.setdefault(name.upper(), []).append(value)

    def cleanup(self) -> None:
        """Remove the saved upload files."""
        for path in self.files.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequestError(f"invalid Content-Length header {raw!r}") from None
    if value < 0:
        raise InvalidRequestError(f"invalid Content-Length header {raw!r}")
    return value


async def read_dali_params(
    request: Request,
    upload_dir: Path | None,
    *,
    max_upload_bytes: int,
    max_total_bytes: int | None = None,
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES,
) -> DaliParams:
    """Read the DALI parameters of a request; file parts go to ``upload_dir``.

    GET and POST requests are accepted: the query string, then a
    ``application/x-www-form-urlencoded`` or ``multipart/form-data`` body.
    ``max_upload_bytes`` limits each uploaded file, ``max_total_bytes`` the whole
    body (default: ``max_upload_bytes`` plus 1 MiB for ordinary fields and
    framing) and ``max_field_bytes`` each ordinary field. A declared
    Content-Length over the total limit is refused before anything is read; a
    body passing a limit is refused as soon as it does, and any files written
    for the request are removed. With ``upload_dir`` None, file parts are refused.
    Errors raise `InvalidRequestError`.
    """
    if max_total_bytes is None:
        max_total_bytes = max_upload_bytes + _FORM_SLACK_BYTES
    params = DaliParams()
    for name, value in request.query_params.multi_items():
        params.add(name, value)
    if request.method not in ("POST", "PUT"):
        return params

    ctype, options = parse_options_header(request.headers.get("content-type"))
    if ctype == b"multipart/form-data":
        limit = max_total_bytes
    else:  # a urlencoded body is read into memory: fields only
        limit = min(max_total_bytes, _FORM_FIELDS_FACTOR * max_field_bytes)
    length = _content_length(request)
    if length is not None and length > limit:
        raise InvalidRequestError(_too_large(length, limit, max_upload_bytes))
    if ctype == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise InvalidRequestError("multipart/form-data request without a boundary")
        reader = _MultipartReader(
            params,
            None if upload_dir is None else Path(upload_dir),
            max_upload_bytes=max_upload_bytes,
            max_total_bytes=max_total_bytes,
            max_field_bytes=max_field_bytes,
            charset=options.get(b"charset", b"utf-8").decode("latin-1"),
        )
        await reader.read(request, boundary)
    elif ctype in (b"application/x-www-form-urlencoded", b""):
        body = await _read_small_body(request, limit, max_upload_bytes)
        if body.strip() and ctype == b"":
            raise InvalidRequestError(
                "a POST body needs a Content-Type: application/x-www-form-urlencoded "
                "or multipart/form-data"
            )
        try:
            pairs = parse_qsl(
                body.decode("utf-8"),
                keep_blank_values=True,
                max_num_fields=_MAX_PARTS,
                errors="strict",
            )
        except UnicodeDecodeError:
            raise InvalidRequestError("the form body is not valid UTF-8") from None
        except ValueError as exc:
            raise InvalidRequestError(f"malformed form body: {exc}") from None
        for name, value in pairs:
            if len(value.encode()) > max_field_bytes:  # as for multipart fields
                raise InvalidRequestError(
                    f"parameter {name[:40]!r} exceeds the {format_bytes(max_field_bytes)} limit"
                )
            params.add(name, value)
    else:
        raise InvalidRequestError(
            f"unsupported Content-Type {ctype.decode('latin-1')!r}: use "
            "application/x-www-form-urlencoded or multipart/form-data"
        )
    return params


def _too_large(size: int | None, limit: int, max_upload_bytes: int) -> str:
    what = "the request body" if size is None else f"the request body ({format_bytes(size)})"
    return (
        f"{what} exceeds the {format_bytes(limit)} limit on request size "
        f"(uploaded tables may be up to {format_bytes(max_upload_bytes)} each, "
        "sent as multipart/form-data)"
    )


async def _read_small_body(request: Request, limit: int, max_upload_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InvalidRequestError(_too_large(None, limit, max_upload_bytes))
            chunks.append(chunk)
    except ClientDisconnect:
        raise InvalidRequestError("the client disconnected before the body was read") from None
    return b"".join(chunks)


def _safe_filename(index: int, name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64].lstrip(".") or "part"
    return f"upload{index:03d}_{cleaned}"


class _MultipartReader:
    """Streams a multipart body: fields into memory (bounded), files onto disk."""

    def __init__(
        self,
        params: DaliParams,
        upload_dir: Path | None,
        *,
        max_upload_bytes: int,
        max_total_bytes: int,
        max_field_bytes: int,
        charset: str,
    ) -> None:
        self.params = params
        self.upload_dir = upload_dir
        self.max_upload_bytes = max_upload_bytes
        self.max_total_bytes = max_total_bytes
        self.max_field_bytes = max_field_bytes
        self.charset = charset
        self.created: list[Path] = []
        self._open: list[BinaryIO] = []
        self._writes: list[tuple[BinaryIO, bytes | None]] = []
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._field: bytearray | None = None
        self._file: BinaryIO | None = None
        self._file_size = 0
        self._parts = 0
        self._ended = False

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode(self.charset)
        except (UnicodeDecodeError, LookupError):
            return raw.decode("latin-1")

    # python-multipart callbacks: synchronous, so file data is queued in _writes
    # and written by a worker thread after each chunk.
    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > _MAX_PARTS:
            raise InvalidRequestError(f"more than {_MAX_PARTS} parts in the multipart body")
        self._headers = {}
        self._field = None
        self._file = None
        self._file_size = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        if b"name" not in options:
            raise InvalidRequestError("a multipart part has no name in its Content-Disposition")
        self._name = self._decode(options[b"name"])
        part_type, _ = parse_options_header(self._headers.get(b"content-type"))
        if b"filename" not in options and part_type in (b"", b"text/plain"):
            self._field = bytearray()
            return
        if self.upload_dir is None:
            raise InvalidRequestError(f"file part {self._name!r}: no uploads are accepted here")
        if not self._name:
            raise InvalidRequestError("an uploaded file part has an empty name")
        if self._name in self.params.files:
            raise InvalidRequestError(f"two uploads named {self._name!r}")
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        path = self.upload_dir / _safe_filename(len(self.created), self._name)
        self._file = path.open("xb")
        self._open.append(self._file)
        self.created.append(path)
        self.params.files[self._name] = path

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._field is not None:
            if len(self._field) + n > self.max_field_bytes:
                raise InvalidRequestError(
                    f"parameter {self._name!r} exceeds the "
                    f"{format_bytes(self.max_field_bytes)} limit"
                )
            self._field += data[start:end]
        elif self._file is not None:
            self._file_size += n
            if self._file_size > self.max_upload_bytes:
                raise InvalidRequestError(
                    f"upload {self._name!r} exceeds the "
                    f"{format_bytes(self.max_upload_bytes)} limit on uploaded tables"
                )
            self._writes.append((self._file, bytes(data[start:end])))

    def on_part_end(self) -> None:
        if self._field is not None:
            self.params.add(self._name, self._decode(bytes(self._field)))
            self._field = None
        elif self._file is not None:
            self._writes.append((self._file, None))  # None: close the file
            self._file = None

    def on_end(self) -> None:
        self._ended = True

    @staticmethod
    def _flush(writes: list[tuple[BinaryIO, bytes | None]]) -> None:
        for fh, chunk in writes:
            if chunk is None:
                fh.close()
            else:
                fh.write(chunk)

    async def read(self, request: Request, boundary: bytes) -> None:
        """Parse the body; on any error remove the files written and re-raise."""
        callbacks = {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }
        try:
            try:
                parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
            except FormParserError as exc:
                raise InvalidRequestError(f"malformed multipart body: {exc}") from None
            total = 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > self.max_total_bytes:
                    raise InvalidRequestError(
                        _too_large(None, self.max_total_bytes, self.max_upload_bytes)
                    )
                try:
                    parser.write(chunk)
                except FormParserError as exc:
                    raise InvalidRequestError(f"malformed multipart body: {exc}") from None
                if self._writes:
                    writes, self._writes = self._writes, []
                    await anyio.to_thread.run_sync(self._flush, writes)
            parser.finalize()
            if not self._ended:
                raise InvalidRequestError("the multipart body is truncated (no final boundary)")
        except ClientDisconnect:
            self._abandon()
            raise InvalidRequestError(
                "the client disconnected before the upload was complete"
            ) from None
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        for fh in self._open:
            with contextlib.suppress(OSError):
                fh.close()
        for path in self.created:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for name in [n for n, p in self.params.files.items() if p in self.created]:
            del self.params.files[name]


def is_adql_identifier(name: str) -> bool:
    """True if ``name`` is a regular ADQL identifier that is not a reserved word."""
    return bool(_IDENTIFIER.match(name)) and not is_reserved(name)


def parse_upload_param(
    values: list[str],
    parts: Collection[str] | None = None,
    *,
    allow_remote: bool = False,
) -> list[tuple[str, str]]:
    """Parse TAP ``UPLOAD`` values into ``(table name, URI)`` pairs.

    Each value holds ``name,URI`` pairs separated by ``;``, and the parameter may be
    given several times. Table names must be regular ADQL identifiers, distinct
    ignoring case; ``param:PART`` must name one of ``parts`` (the multipart file
    parts received; not checked when ``parts`` is None); ``http(s)`` URIs are
    refused unless ``allow_remote``, since fetching client-chosen URLs from the
    server is off by default; other schemes are refused. Raises `InvalidRequestError`.
    """
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for value in values:
        for item in value.split(";"):
            item = item.strip()
            if not item:
                continue
            name, sep, uri = item.partition(",")
            name, uri = name.strip(), uri.strip()
            if not sep or not name or not uri:
                raise InvalidRequestError(
                    f"UPLOAD item {item!r} is not of the form table_name,URI "
                    "(e.g. mytable,param:part1)"
                )
            if not is_adql_identifier(name):
                raise InvalidRequestError(
                    f"UPLOAD table name {name!r} is not a legal ADQL identifier "
                    "(a letter, then letters, digits or '_'; not a reserved word)"
                )
            if name.lower() in seen:
                raise InvalidRequestError(f"UPLOAD table name {name!r} is given twice")
            seen.add(name.lower())
            scheme = uri.partition(":")[0].lower()
            if scheme == "param":
                part = uri[len("param:") :]
                if not part:
                    raise InvalidRequestError(f"UPLOAD {name!r}: {uri!r} names no part")
                if parts is not None and part not in parts:
                    known = ", ".join(sorted(parts)) or "none"
                    raise InvalidRequestError(
                        f"UPLOAD {name!r} refers to {uri!r}, but no file part named "
                        f"{part!r} was received (parts received: {known})"
                    )
            elif scheme in ("http", "https"):
                if not allow_remote:
                    raise InvalidRequestError(
                        f"UPLOAD {name!r} refers to the remote URL {uri!r}: this service "
                        "does not fetch remote tables; send the table inline as a "
                        "multipart file part and use param:<part name>"
                    )
            else:
                raise InvalidRequestError(
                    f"UPLOAD {name!r}: unsupported URI {uri!r}; use param:<part name>"
                )
            pairs.append((name, uri))
    return pairs


def parse_number(
    raw: str | None, name: str, low: float, high: float, unit: str = "decimal degrees"
) -> float:
    """Parameter ``name`` as a finite number within [low, high]; InvalidRequestError says
    what is missing or wrong."""
    if raw is None or not raw.strip():
        raise InvalidRequestError(f"{name} is missing: give it in {unit}")
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequestError(f"{name}={raw!r} is not a number ({unit})") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequestError(f"{name}={raw} is out of range: {low:g} to {high:g} {unit}")
    return value
