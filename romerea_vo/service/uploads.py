"""TAP_UPLOAD tables (and bulk lightcurve uploads): VOTable, FITS, Parquet or CSV files →
Arrow tables."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.parsers import expat

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from astropy.io import fits
from astropy.io.votable import parse_single_table
from astropy.table import Table

from ..errors import InvalidRequestError


def _sniff(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(512).lstrip()
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"<"):
        return "votable"
    return "csv"


def _column_to_arrow(name: str, col) -> pa.Array:
    data = np.ma.getdata(col)
    mask = np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) or hasattr(col, "mask") else None
    if data.ndim > 1:
        raise InvalidRequestError(
            f"upload column {name!r} holds arrays; only scalar columns can be uploaded"
        )
    if data.dtype.kind == "S":
        data = np.char.decode(data, "utf-8", errors="replace")
    if data.dtype.kind in "UO":
        nulls = mask if mask is not None else np.zeros(len(data), bool)
        values = [None if m else str(v) for v, m in zip(data, nulls, strict=True)]
        return pa.array(values, type=pa.string())
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    if mask is not None and not mask.any():
        mask = None
    return pa.array(data, mask=mask)


def _astropy_to_arrow(table: Table) -> pa.Table:
    return pa.table({name: _column_to_arrow(name, table[name]) for name in table.colnames})


@dataclass(frozen=True)
class UploadColumn:
    """What the uploader said about a column, carried into results that select it."""

    unit: str | None = None
    ucd: str | None = None
    xtype: str | None = None
    description: str | None = None


def _votable_metadata(vot_table) -> dict[str, UploadColumn]:
    out = {}
    for f in vot_table.fields:
        unit = f.unit.to_string("vounit") if f.unit is not None else None
        out[f.name or f.ID] = UploadColumn(unit, f.ucd, f.xtype, f.description)
    return out


@dataclass(frozen=True)
class UploadGuard:
    """Bounds on one uploaded table, checked before (VOTable: while streaming through) the
    document, so that no declaration in it makes the service allocate or work unbounded."""

    max_rows: int
    max_columns: int = 1000
    max_cell_bytes: int = 2**16
    """Longest TD text, and largest declared ``arraysize`` times item size."""
    deadline: float | None = None
    """`time.monotonic` value by which reading must be done (the execution duration)."""
    cancelled: Callable[[], bool] | None = None
    """True when the request was aborted (a job's ABORT, the service stopping)."""

    def check_time(self, name: str) -> None:
        """Raises InvalidRequestError once the deadline passed or ``cancelled()`` is true."""
        if self.cancelled is not None and self.cancelled():
            raise InvalidRequestError(f"reading upload {name!r} was aborted")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise InvalidRequestError(
                f"reading upload {name!r} took longer than the execution duration allows"
            )


_ITEM_BYTES = {
    "boolean": 1, "bit": 1, "unsignedByte": 1, "short": 2, "int": 4, "long": 8, "char": 1,
    "unicodeChar": 2, "float": 4, "double": 8, "floatComplex": 8, "doubleComplex": 16,
}  # fmt: skip
_SCAN_CHUNK = 2**20
_NROWS_ATTR = re.compile(rb"""\bnrows\s*=\s*(?:"[^"]*"|'[^']*')""")


def _declared_items(arraysize: str | None) -> int:
    """Items per cell an ``arraysize`` declares (``*`` alone: 1, the text is bounded)."""
    if not arraysize:
        return 1
    n = 1
    for part in arraysize.split("x"):
        digits = part.strip().rstrip("*").strip()
        if digits:
            if not (digits.isascii() and digits.isdigit()) or len(digits) > 12:
                raise InvalidRequestError(f"arraysize {arraysize!r} is not valid")
            n *= int(digits)
    return n


class _VOTableScan:
    """One pass of expat over a VOTable: counts FIELDs, rows and cell text of every TABLE
    against an `UploadGuard` and notes where TABLE tags carry ``nrows``."""

    def __init__(self, name: str, guard: UploadGuard):
        self.name, self.guard = name, guard
        self.fields = self.rows = self.cell = 0
        self.in_td = False
        self.nrows_at: list[int] = []
        self.parser = expat.ParserCreate()
        self.parser.buffer_text = True
        self.parser.StartElementHandler = self.start
        self.parser.EndElementHandler = self.end
        self.parser.CharacterDataHandler = self.text
        self.parser.EntityDeclHandler = self.entity

    def entity(self, *_args) -> None:
        raise InvalidRequestError(f"upload {self.name!r} declares XML entities; that is refused")

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        local = tag.rpartition(":")[2]
        if local == "TD":
            self.in_td, self.cell = True, 0
        elif local == "TR":
            self.rows += 1
            if self.rows > self.guard.max_rows:
                raise InvalidRequestError(
                    f"upload {self.name!r} has more than {self.guard.max_rows} rows (the limit)"
                )
        elif local == "TABLE":
            self.fields = self.rows = 0
            if "nrows" in attrs:
                self.nrows_at.append(self.parser.CurrentByteIndex)
        elif local in ("FIELD", "PARAM"):
            if local == "FIELD":
                self.fields += 1
                if self.fields > self.guard.max_columns:
                    raise InvalidRequestError(
                        f"upload {self.name!r} has more than {self.guard.max_columns} columns "
                        "(the limit)"
                    )
            size = _declared_items(attrs.get("arraysize")) * _ITEM_BYTES.get(
                attrs.get("datatype", ""), 8
            )
            if size > self.guard.max_cell_bytes:
                raise InvalidRequestError(
                    f"upload {self.name!r}: {local} {attrs.get('name')!r} declares "
                    f"arraysize={attrs.get('arraysize')!r} ({size} bytes per value); the "
                    f"limit is {self.guard.max_cell_bytes} bytes"
                )

    def end(self, tag: str) -> None:
        if self.in_td and tag.rpartition(":")[2] == "TD":
            self.in_td = False

    def text(self, data: str) -> None:
        if self.in_td:
            self.cell += len(data)
            if self.cell > self.guard.max_cell_bytes:
                raise InvalidRequestError(
                    f"upload {self.name!r} has a table cell longer than "
                    f"{self.guard.max_cell_bytes} characters (the limit)"
                )

    def run(self, path: Path) -> None:
        with path.open("rb") as fh:
            while chunk := fh.read(_SCAN_CHUNK):
                self.guard.check_time(self.name)
                self.parser.Parse(chunk, False)
            self.parser.Parse(b"", True)


def _scan_votable(name: str, path: Path, guard: UploadGuard) -> None:
    """Check ``path`` against ``guard`` while streaming through it, then blank the TABLEs'
    ``nrows`` attributes in place: astropy allocates the declared rows up front, so a
    400-byte document declaring 10^8 rows would take gigabytes (it grows as it reads
    without them)."""
    scan = _VOTableScan(name, guard)
    try:
        scan.run(path)
    except expat.ExpatError as exc:
        raise InvalidRequestError(f"upload {name!r} is not well-formed XML: {exc}") from None
    if not scan.nrows_at:
        return
    with path.open("r+b") as fh:
        for offset in scan.nrows_at:
            fh.seek(offset)
            head = fh.read(2**16)
            tag = head[: head.find(b">") + 1] or head
            blanked = _NROWS_ATTR.sub(lambda m: b" " * len(m.group(0)), tag)
            if blanked != tag:
                fh.seek(offset)
                fh.write(blanked)


def _check_columns(name: str, n: int, guard: UploadGuard) -> None:
    if n > guard.max_columns:
        raise InvalidRequestError(
            f"upload {name!r} has {n} columns; the limit is {guard.max_columns}"
        )


def _check_fits_size(name: str, header, path: Path) -> None:
    """Refuse an HDU declaring more data than the file holds: astropy allocates the
    declared size before reading."""
    declared = abs(int(header.get("BITPIX", 8))) // 8
    for k in range(1, int(header.get("NAXIS", 0)) + 1):
        declared *= int(header.get(f"NAXIS{k}", 0))
    declared += int(header.get("PCOUNT", 0))
    if declared > path.stat().st_size:
        raise InvalidRequestError(
            f"upload {name!r} declares {declared} bytes of FITS data but the file has "
            f"{path.stat().st_size} bytes"
        )


def _csv_columns(path: Path) -> int:
    with path.open("rb") as fh:
        header = fh.readline(2**20)
    return header.count(b",") + 1


def read_upload_table(
    name: str, path: Path, *, max_rows: int, guard: UploadGuard | None = None
) -> tuple[pa.Table, dict[str, UploadColumn]]:
    """Read an uploaded table and its column metadata within ``guard`` (default: only
    ``max_rows``); raises InvalidRequestError saying which upload and what is wrong."""
    guard = guard or UploadGuard(max_rows=max_rows)
    max_rows = guard.max_rows
    kind = _sniff(path)
    meta: dict[str, UploadColumn] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's VOTable spec warnings are not errors
            if kind == "votable":
                _scan_votable(name, path, guard)
                guard.check_time(name)
                vot_table = parse_single_table(str(path))
                meta = _votable_metadata(vot_table)
                result = _astropy_to_arrow(vot_table.to_table(use_names_over_ids=True))
            elif kind == "fits":
                with fits.open(path, memmap=False) as hdul:
                    hdu = hdul[1 if len(hdul) > 1 else 0]
                    _check_columns(name, int(hdu.header.get("TFIELDS", 0)), guard)
                    _check_fits_size(name, hdu.header, path)
                    if int(hdu.header.get("NAXIS2", 0)) > max_rows:
                        raise InvalidRequestError(
                            f"upload {name!r} declares {hdu.header['NAXIS2']} rows; "
                            f"the limit is {max_rows}"
                        )
                    table = Table.read(hdul, hdu=1 if len(hdul) > 1 else 0)
                meta = {
                    c: UploadColumn(unit=table[c].unit.to_string("vounit"))
                    for c in table.colnames
                    if table[c].unit is not None
                }
                result = _astropy_to_arrow(table)
            elif kind == "parquet":
                metadata = pq.ParquetFile(path).metadata
                _check_columns(name, metadata.num_columns, guard)
                if metadata.num_rows > max_rows:
                    raise InvalidRequestError(
                        f"upload {name!r} has {metadata.num_rows} rows; the limit is {max_rows}"
                    )
                result = pq.read_table(path)
            else:
                _check_columns(name, _csv_columns(path), guard)
                result = pacsv.read_csv(path)
    except InvalidRequestError:
        raise
    except Exception as exc:
        raise InvalidRequestError(
            f"upload {name!r} could not be read as a {kind.upper()} table: {exc}"
        ) from None
    if result.num_rows > max_rows:
        raise InvalidRequestError(
            f"upload {name!r} has {result.num_rows} rows; the limit is {max_rows}"
        )
    guard.check_time(name)
    if not result.num_columns:
        raise InvalidRequestError(f"upload {name!r} has no columns")
    return result, meta


_REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


def _public_address(host: str, port: int, uri: str, allowed_hosts: frozenset[str]) -> str:
    """Resolve ``host`` once and return the address to connect to; refuse it when any of
    its addresses is not public (loopback, private, link-local...), so that a client
    cannot make the service probe hosts only it can reach (SSRF). ``allowed_hosts``
    (``host`` or ``host:port``) are exempt."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidRequestError(f"upload URL {uri!r}: cannot resolve host {host!r}") from None
    exempt = host.lower() in allowed_hosts or f"{host.lower()}:{port}" in allowed_hosts
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not exempt and not addr.is_global:
            raise InvalidRequestError(
                f"upload URL {uri!r} points to a non-public address ({addr}); this service "
                "only fetches uploads from public hosts (send the table inline instead)"
            )
    return str(infos[0][4][0])


def _connection(parsed: urllib.parse.SplitResult, address: str | None, timeout: float):
    """An HTTP(S) connection to ``parsed``'s host that connects to ``address`` (the one
    checked) rather than resolving the name again; Host header and TLS SNI/certificate
    check still use the host name."""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    cls = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
    assert parsed.hostname  # the URL was checked for a host before
    conn = cls(parsed.hostname, port, timeout=timeout)
    if address is not None:

        def connect(_addr, t, source=None):
            return socket.create_connection((address, port), t, source)

        # http.client's own hook for making the socket (not in typeshed)
        conn._create_connection = connect  # type: ignore[attr-defined]
    return conn


def fetch_remote_upload(
    name: str,
    uri: str,
    dest: Path,
    *,
    max_bytes: int,
    allow_private: bool,
    allowed_hosts: tuple[str, ...] = (),
    timeout: float = 30,
    max_time: float = 120,
) -> Path:
    """Download an http(s) upload to ``dest``, streaming, within ``max_bytes`` and
    ``max_time`` seconds, following up to `MAX_REDIRECTS` redirects; each hop's host is
    checked (unless ``allow_private``) and connected to at the checked address. Raises
    InvalidRequestError saying what was refused."""
    deadline = time.monotonic() + max_time
    allowed = frozenset(h.lower() for h in allowed_hosts)
    url = uri
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            parsed = urllib.parse.urlsplit(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise InvalidRequestError(f"upload {name!r}: {url!r} is not an http(s) URL")
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            address = None
            if not allow_private:
                shown = url if url == uri else f"{url} (redirected from {uri})"
                address = _public_address(parsed.hostname, port, shown, allowed)
            conn = _connection(parsed, address, timeout)
            # The socket timeout bounds each read, not a server that drips bytes: at the
            # deadline the socket is shut down, which ends a blocked read.
            watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, (conn,))
            watchdog.daemon = True
            watchdog.start()
            try:
                target = parsed.path or "/"
                if parsed.query:
                    target += "?" + parsed.query
                conn.request("GET", target, headers={"User-Agent": "romerea-vo"})
                resp = conn.getresponse()
                if time.monotonic() >= deadline:  # cut by the watchdog
                    raise TimeoutError
                if resp.status in _REDIRECTS:
                    location = resp.getheader("Location")
                    if not location:
                        raise InvalidRequestError(
                            f"upload {name!r}: {url} redirects without a Location"
                        )
                    url = urllib.parse.urljoin(url, location)
                    continue
                if resp.status != 200:
                    raise InvalidRequestError(
                        f"upload {name!r}: {url} answered HTTP {resp.status} {resp.reason}"
                    )
                _download(name, url, resp, dest, max_bytes, deadline)
                if time.monotonic() >= deadline:
                    raise TimeoutError
                return dest
            finally:
                watchdog.cancel()
                conn.close()
        raise InvalidRequestError(
            f"upload {name!r}: {uri} redirects more than {MAX_REDIRECTS} times"
        )
    except InvalidRequestError:
        dest.unlink(missing_ok=True)
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:
        dest.unlink(missing_ok=True)
        if time.monotonic() >= deadline:
            raise InvalidRequestError(
                f"upload {name!r}: fetching {url} took longer than the {max_time:g} s allowed"
            ) from None
        raise InvalidRequestError(f"upload {name!r}: cannot fetch {url}: {exc}") from None


def _cut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _download(name, url, resp, dest: Path, max_bytes: int, deadline: float) -> None:
    limit = f"the {max_bytes // 2**20} MiB limit" if max_bytes >= 2**20 else f"{max_bytes} bytes"
    length = resp.getheader("Content-Length")
    if length and length.strip().isdigit() and int(length) > max_bytes:
        raise InvalidRequestError(f"upload {name!r} from {url} exceeds {limit}")
    total = 0
    with dest.open("wb") as out:
        while chunk := resp.read1(2**20) if hasattr(resp, "read1") else resp.read(2**20):
            total += len(chunk)
            if total > max_bytes:
                raise InvalidRequestError(f"upload {name!r} from {url} exceeds {limit}")
            if time.monotonic() > deadline:
                raise TimeoutError  # reported with the limit by fetch_remote_upload
            out.write(chunk)
