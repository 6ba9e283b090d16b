"""Tables other SAMP clients talk about: fetched safely, cached, their rows made stars.

* :class:`UrlPolicy`: which URLs the bridge fetches - http(s) on loopback, URLs of its
  own service, file URLs under configured directories; anything else is refused with
  :class:`RefusedURL` saying why (redirects are checked too, proxies never used for
  loopback).
* :class:`TableCache`: each URL fetched once (LRU), size-limited while streaming,
  VOTable / FITS / CSV / ECSV recognised from the bytes.
* :func:`resolve_rows`: the ROME star of each requested row, from a DID column,
  field/field_id columns, or RA/Dec columns matched to the field index.
"""

from __future__ import annotations

import io
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..catalogue_files import (
    CatalogueError,
    column_ucd,
    describe_columns,
    find_position_columns,
    position_arrays,
)
from ..client import is_loopback_host
from ..errors import RomeReaError
from .sources import StarId, StarSource

__all__ = [
    "RefusedURL",
    "Resolution",
    "TableCache",
    "TableFetchError",
    "TableFormatError",
    "TableTooLarge",
    "UnresolvableTable",
    "UrlPolicy",
    "resolve_rows",
]


class RefusedURL(RomeReaError):
    """A URL the bridge will not fetch; the message says what it does fetch."""


class TableFetchError(RomeReaError):
    """A table URL cannot be read (HTTP error, connection refused, missing file)."""


class TableTooLarge(TableFetchError):
    """A table is larger than the cache's size limit."""


class TableFormatError(TableFetchError):
    """The bytes at a URL are not a table (an HTML page, an error document, ...)."""


class UnresolvableTable(RomeReaError):
    """A table has no columns that identify ROME stars, or rows are out of range."""


_UNSAFE = re.compile(r"[\s\\\x00-\x1f\x7f]")


def _split(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise RefusedURL(f"refusing to fetch {url!r}: malformed URL ({exc})") from None
    return parts


# --------------------------------------------------------------------------- policy


class UrlPolicy:
    """Which table URLs may be fetched (a SAMP message must not make us a proxy)."""

    def __init__(
        self, trusted_prefixes: Sequence[str] = (), allowed_dirs: Sequence[str | Path] = ()
    ):
        self.trusted_prefixes = tuple(p.strip().rstrip("/") for p in trusted_prefixes if p)
        self.allowed_dirs = tuple(Path(d).expanduser().resolve() for d in allowed_dirs)
        self._trusted = [_split(p) for p in self.trusted_prefixes]

    def describe(self) -> str:
        """What is fetched, for error messages."""
        what = ["loopback"]
        if self.trusted_prefixes:
            what.append(f"this bridge's service ({', '.join(self.trusted_prefixes)})")
        if self.allowed_dirs:
            what.append(f"file URLs under {', '.join(map(str, self.allowed_dirs))}")
        text = what[0] if len(what) == 1 else f"{', '.join(what[:-1])} and {what[-1]}"
        if not self.allowed_dirs:
            text += (
                " URLs (no file URLs: start the bridge with --allow-dir DIR to read local "
                "tables under DIR)"
            )
        return f"only {text} are fetched"

    def _refuse(self, url: str, why: str) -> RefusedURL:
        return RefusedURL(f"refusing to fetch {url}: {why}; {self.describe()}")

    def _is_trusted(self, parts: urllib.parse.SplitResult) -> bool:
        for t in self._trusted:
            if (
                parts.scheme.lower() == t.scheme.lower()
                and (parts.hostname or "") == (t.hostname or "")
                and (parts.port or _default_port(parts.scheme))
                == (t.port or _default_port(t.scheme))
            ):
                prefix = t.path.rstrip("/")
                if not prefix or parts.path == prefix or parts.path.startswith(prefix + "/"):
                    return True
        return False

    def local_path(self, url: str) -> Path:
        """The resolved file a ``file:`` URL names, if under an allowed directory."""
        parts = _split(url)
        if parts.scheme.lower() != "file":
            raise self._refuse(url, "not a file URL")
        if parts.netloc not in ("", "localhost"):
            raise self._refuse(url, f"file URL on another host ({parts.netloc})")
        raw = urllib.request.url2pathname(urllib.parse.unquote(parts.path))
        if "\x00" in raw or not raw.startswith("/"):
            raise self._refuse(url, "not an absolute file path")
        path = Path(raw).resolve()  # follows symlinks and '..'
        if not any(path.is_relative_to(d) for d in self.allowed_dirs):
            raise self._refuse(url, f"{path} is not under an allowed directory (--allow-dir)")
        return path

    def check(self, url: str) -> None:
        """Return if ``url`` may be fetched, else raise :class:`RefusedURL`."""
        if not isinstance(url, str) or not url:
            raise RefusedURL(f"refusing to fetch {url!r}: not a URL")
        if _UNSAFE.search(url):
            raise self._refuse(repr(url), "it contains spaces, backslashes or control characters")
        parts = _split(url)
        scheme = parts.scheme.lower()
        if scheme == "file":
            self.local_path(url)
            return
        if scheme not in ("http", "https"):
            raise self._refuse(url, f"the {scheme or 'missing'} scheme is not fetched")
        if "@" in parts.netloc:
            raise self._refuse(url, "URLs with user information are not fetched")
        if is_loopback_host(parts.hostname) or self._is_trusted(parts):
            return
        raise self._refuse(url, f"{parts.hostname or 'no host'} is not loopback or our service")


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "https": 443}.get(scheme.lower())


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: UrlPolicy):
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.policy.check(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# --------------------------------------------------------------------------- reading


def _parse_votable(data: bytes, url: str):
    from astropy.io.votable import parse

    try:
        vot = parse(io.BytesIO(data), verify="ignore")
    except Exception as exc:
        raise TableFormatError(f"{url} is not a readable VOTable: {exc}") from None
    for resource in vot.resources:
        for info in resource.infos:
            if info.name == "QUERY_STATUS" and info.value == "ERROR":
                text = (info.content or "").strip() or "no message"
                raise TableFormatError(f"{url} is a VOTable error document: {text}")
    try:
        element = vot.get_first_table()
    except (IndexError, ValueError):
        raise TableFormatError(f"{url} is a VOTable without any TABLE") from None
    return element.to_table(use_names_over_ids=True)


def _gunzip(data: bytes, limit: int, url: str) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise TableFormatError(f"{url}: corrupt gzip data ({exc})") from None
    if len(out) > limit:
        raise TableTooLarge(f"{url} decompresses to more than {_mib(limit)}; the limit")
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


def parse_table(data: bytes, url: str = "table", *, limit: int = 200 * 2**20):
    """An astropy Table from VOTable, FITS, ECSV or CSV bytes (sniffed, not trusted from
    a file name or Content-Type)."""
    from astropy.table import Table

    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, limit, url)
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not head:
        raise TableFormatError(f"{url} is empty, not a table")
    if head.startswith(b"simple  ="):
        try:
            return Table.read(io.BytesIO(data), format="fits")
        except Exception as exc:
            raise TableFormatError(f"{url} is FITS without a readable table: {exc}") from None
    if head.startswith(b"<"):
        if b"<html" in head or b"<!doctype html" in head:
            raise TableFormatError(f"{url} is an HTML page, not a table")
        return _parse_votable(data, url)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TableFormatError(f"{url} is neither VOTable, FITS nor CSV text") from None
    fmt = "ascii.ecsv" if head.startswith(b"# %ecsv") else "ascii.csv"
    try:
        return Table.read(text, format=fmt)
    except Exception as exc:
        raise TableFormatError(f"{url} is not a VOTable, FITS, ECSV or CSV table: {exc}") from None


class TableCache:
    """Tables by URL: fetched once (allowed URLs only), kept LRU; thread-safe."""

    def __init__(
        self,
        policy: UrlPolicy,
        *,
        max_tables: int = 32,
        max_bytes: int = 200 * 2**20,
        timeout: float = 30,
    ):
        self.policy = policy
        self.max_tables = max_tables
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._tables: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}
        self.fetches = 0
        """How many times a URL was actually read (for tests and logs)."""

    def __contains__(self, url: str) -> bool:
        with self._lock:
            return url in self._tables

    def _lookup(self, url: str):
        with self._lock:
            table = self._tables.get(url)
            if table is not None:
                self._tables.move_to_end(url)
            return table

    def remember(self, url: str, table) -> None:
        """Keep an already-read table under its URL (e.g. one broadcast with
        ``table.load.votable``), as if fetched."""
        with self._lock:
            self._tables[url] = table
            self._tables.move_to_end(url)
            while len(self._tables) > self.max_tables:
                self._tables.popitem(last=False)

    def forget(self, url: str) -> None:
        with self._lock:
            self._tables.pop(url, None)

    def get(self, url: str):
        """The table at ``url`` (an astropy Table), from the cache or fetched now.

        Raises :class:`RefusedURL`, :class:`TableFetchError`, :class:`TableTooLarge` or
        :class:`TableFormatError`, each with a message naming the URL and the reason."""
        table = self._lookup(url)
        if table is not None:
            return table
        self.policy.check(url)
        with self._lock:
            gate = self._fetching.setdefault(url, threading.Lock())
        with gate:  # one fetch per URL at a time; others wait and use its result
            table = self._lookup(url)
            if table is not None:
                return table
            try:
                data = self._read(url)
                table = parse_table(data, url, limit=self.max_bytes)
            finally:
                with self._lock:
                    self._fetching.pop(url, None)
            self.remember(url, table)
            return table

    def _read(self, url: str) -> bytes:
        self.fetches += 1
        if _split(url).scheme.lower() == "file":
            return self._read_file(url)
        return self._read_http(url)

    def _too_large(self, url: str) -> TableTooLarge:
        return TableTooLarge(f"{url} is larger than {_mib(self.max_bytes)}, the table size limit")

    def _read_file(self, url: str) -> bytes:
        path = self.policy.local_path(url)
        try:
            with path.open("rb") as f:
                if path.stat().st_size > self.max_bytes:
                    raise self._too_large(url)
                data = f.read(self.max_bytes + 1)
        except IsADirectoryError:
            raise TableFetchError(f"{url} is a directory, not a table file") from None
        except FileNotFoundError:
            raise TableFetchError(f"{url}: no such file") from None
        except OSError as exc:
            raise TableFetchError(f"{url} cannot be read: {exc.strerror or exc}") from None
        if len(data) > self.max_bytes:
            raise self._too_large(url)
        return data

    def _read_http(self, url: str) -> bytes:
        handlers: list = [_CheckedRedirects(self.policy)]
        if is_loopback_host(_split(url).hostname):
            handlers.append(urllib.request.ProxyHandler({}))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(url, timeout=self.timeout) as resp:
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > self.max_bytes:
                    raise self._too_large(url)
                out = io.BytesIO()
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    if out.tell() > self.max_bytes:
                        raise self._too_large(url)
                return out.getvalue()
        except urllib.error.HTTPError as exc:
            reason = exc.reason or ""
            raise TableFetchError(f"{url} answered HTTP {exc.code} {reason}".rstrip()) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, RefusedURL):
                raise exc.reason from None
            raise TableFetchError(f"cannot fetch {url}: {exc.reason}") from None
        except (OSError, ValueError) as exc:
            raise TableFetchError(f"cannot fetch {url}: {exc}") from None


# --------------------------------------------------------------------------- rows -> stars


@dataclass
class Resolution:
    """The stars of the requested rows (None where a row matched none) and how."""

    stars: list[StarId | None]
    matched: int
    unmatched: int
    method: str

    def summary(self) -> str:
        """E.g. ``3 of 3 rows matched ROME stars (did column)``."""
        n = self.matched + self.unmatched
        rows = "row" if n == 1 else "rows"
        return f"{self.matched} of {n} {rows} matched ROME stars ({self.method})"

    @property
    def found(self) -> list[StarId]:
        """The matched stars, in row order, duplicates dropped."""
        return list(dict.fromkeys(s for s in self.stars if s is not None))


def _ucd_words(col) -> list[str]:
    return [w.strip() for w in column_ucd(col).split(";") if w.strip()]


def _is_text(col) -> bool:
    return np.asarray(col).dtype.kind in "USO"


def _text(values) -> list[str | None]:
    out: list[str | None] = []
    for v in values:
        if v is None or v is np.ma.masked:
            out.append(None)
        else:
            s = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            out.append(s.strip() or None)
    return out


def _row_indices(table, rows: Sequence[int]) -> np.ndarray:
    n = len(table)
    out = []
    for r in rows:
        try:
            i = int(r)
            if isinstance(r, float) and r != i:
                raise ValueError
        except (TypeError, ValueError):
            raise UnresolvableTable(f"row {r!r} is not a row number") from None
        if not 0 <= i < n:
            raise UnresolvableTable(f"row {i} is out of range: the table has {n} rows (0..{n - 1})")
        out.append(i)
    return np.asarray(out, dtype=np.int64)


def _methods(table, radius_arcsec: float) -> list[tuple[str, Callable]]:
    """Applicable ways of identifying rows, best first: (description, function)."""
    names = {n.lower(): n for n in table.colnames}
    methods: list[tuple[str, Callable]] = []
    did = next(
        (
            n
            for n in table.colnames
            if "meta.ref.ivoid" in _ucd_words(table[n]) and _is_text(table[n])
        ),
        None,
    )
    if did is None and "did" in names and _is_text(table[names["did"]]):
        did = names["did"]
    if did is not None:

        def by_did(source: StarSource, idx: np.ndarray) -> list[StarId | None]:
            dids = _text(table[did][idx])
            found = source.stars_by_dids([d or "" for d in dids])
            return [None if d is None else s for d, s in zip(dids, found, strict=True)]

        label = "did column" if did.lower() == "did" else f"{did} column (DIDs)"
        methods.append((label, by_did))
    if "field" in names and "field_id" in names:
        fcol, icol = table[names["field"]], table[names["field_id"]]

        def by_ids(source: StarSource, idx: np.ndarray) -> list[StarId | None]:
            fields = _text(fcol[idx])
            ids = icol[idx]
            pairs, keep = [], []
            for j, (f, i) in enumerate(zip(fields, ids, strict=True)):
                if f is None or i is np.ma.masked:
                    continue
                try:
                    pairs.append((f, int(i)))
                except (TypeError, ValueError):
                    continue
                keep.append(j)
            out: list[StarId | None] = [None] * len(idx)
            for j, star in zip(keep, source.stars_by_ids(pairs), strict=True):
                out[j] = star
            return out

        methods.append((f"{names['field']}/{names['field_id']} columns", by_ids))
    ra: str | None
    dec: str | None
    try:
        ra, dec = find_position_columns(table)
    except CatalogueError:
        ra = dec = None
    if ra is not None and dec is not None:

        def by_position(source: StarSource, idx: np.ndarray) -> list[StarId | None]:
            try:
                ra_deg, dec_deg, _bad = position_arrays(table[idx], ra, dec)
            except CatalogueError as exc:
                raise UnresolvableTable(str(exc)) from None
            return source.match_positions(ra_deg, dec_deg, radius_arcsec)

        methods.append(
            (f"positions ({ra}, {dec}) within {float(radius_arcsec)} arcsec", by_position)
        )
    return methods


def resolve_rows(
    table, rows: Sequence[int], source: StarSource, *, radius_arcsec: float = 1.0
) -> Resolution:
    """The ROME star of each of ``rows`` (0-based, as SAMP sends them; numeric strings
    accepted) of an astropy ``table``.

    Identified by, in this order: a DID column (UCD ``meta.ref.ivoid`` or named ``did``),
    ``field`` + ``field_id`` columns, or RA/Dec columns (UCD ``pos.eq.ra;meta.main`` ...,
    then common names; units honoured, sexagesimal text read) matched to the nearest star
    within ``radius_arcsec``. When a method matches none of the rows the next one is
    tried. Raises :class:`UnresolvableTable` naming the columns it saw when none
    applies, or for rows out of range."""
    idx = _row_indices(table, rows)
    methods = _methods(table, radius_arcsec)
    if not methods:
        raise UnresolvableTable(
            "cannot identify ROME stars in this table: it has no did column, no field and "
            "field_id columns and no RA/Dec columns (by UCD pos.eq.ra/pos.eq.dec or name); "
            f"its columns: {describe_columns(table)}"
        )
    label, stars = methods[0][0], []
    for name, method in methods if len(idx) else ():
        label, stars = name, method(source, idx)
        if any(s is not None for s in stars):
            break
    matched = sum(s is not None for s in stars)
    return Resolution(stars, matched, len(stars) - matched, label)
