"""Where the SAMP bridge finds stars and their lightcurves.

A :class:`StarSource` turns ids (``field``/``field_id`` pairs, publisher DIDs) and sky
positions into :class:`StarId` s, and stars into the lightcurve VOTables that
``GET /lightcurve`` serves (one star: a single-star table; several: one table with an
``id`` column).

* :class:`LocalSource`: an ingested database (``--db PATH``) or field directories
  (``FIELD_DIR ...``, opened directly); documents are built in-process by the lightcurve
  service's own code, so they are byte for byte what the service would send.
* :class:`ServiceSource`: a running romerea-vo service (``--service URL``): TAP sync
  queries on ``rome.field_index`` (positions in one ``TAP_UPLOAD`` join per batch) and
  ``/lightcurve`` for the documents, through `romerea_vo.client` (timeouts, retries, no
  proxy for loopback services, the service's own error text).
"""

from __future__ import annotations

import io
import re
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..client import ServiceClient, ServiceError
from ..errors import InvalidRequestError, RomeReaError, StarNotFoundError
from ..ids import make_did, parse_did
from ..lightcurve_documents import LightcurveDocuments, parse_request
from ..products import open_field
from ..products.reader import Field
from ..votable.formats import VOTABLE_MEDIA

__all__ = [
    "MAX_URL_LENGTH",
    "LocalSource",
    "ServiceSource",
    "SourceError",
    "StarId",
    "StarSource",
    "open_source",
]

MAX_URL_LENGTH = 8000
"""Longest lightcurve URL handed out; longer requests (many stars) have no URL and must be
served another way (the bridge's own HTTP server). uvicorn refuses request lines > ~16 KB."""

_FIELD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_IDS_PER_QUERY = 1000
_POSITIONS_PER_QUERY = 2000


class SourceError(RomeReaError):
    """A star source cannot answer (service unreachable, error document, bad reply)."""


@dataclass(frozen=True)
class StarId:
    """A ROME star: its field and field_id, publisher DID and position (ICRS, degrees)."""

    field: str
    field_id: int
    did: str
    ra: float
    dec: float


def _lightcurve_url(
    base: str | None, stars: Sequence[StarId], quality: str, fmt: str = "votable"
) -> str | None:
    if base is None or not stars:
        return None
    params = [("ID", s.did) for s in dict.fromkeys(stars)]
    if quality != "good":
        params.append(("QUALITY", quality))
    if fmt != "votable":
        params.append(("RESPONSEFORMAT", fmt))
    url = f"{base}/lightcurve?{urllib.parse.urlencode(params)}"
    return url if len(url) <= MAX_URL_LENGTH else None


class StarSource(ABC):
    """Stars and lightcurves for the bridge; subclasses are thread-safe for reading."""

    service_url: str | None = None
    """Base URL (``http://host:port``) of a romerea-vo service whose ``/lightcurve``
    serves these stars' lightcurves, if any."""

    @abstractmethod
    def stars_by_ids(self, pairs: Sequence[tuple[str, int]]) -> list[StarId | None]:
        """The star of each ``(field, field_id)``, None for unknown ones, in order."""

    def stars_by_dids(self, dids: Sequence[str]) -> list[StarId | None]:
        """The star of each publisher DID, None for unknown or malformed ones."""
        authority = self.authority
        pairs: list[tuple[str, int] | None] = []
        for did in dids:
            try:
                pairs.append(parse_did(str(did), authority) if authority else None)
            except InvalidRequestError:
                pairs.append(None)
        found = iter(self.stars_by_ids([p for p in pairs if p is not None]))
        return [None if p is None else next(found) for p in pairs]

    @property
    @abstractmethod
    def authority(self) -> str | None:
        """The DID authority of this source's stars (``ivo://.../rome``), if known."""

    def check(self) -> None:
        """Raise :class:`SourceError` if the source cannot serve stars (checked at start,
        so that a wrong ``--service`` is said at once, not at the first click)."""
        if not self.authority:
            raise SourceError("no ROME stars to serve")

    @abstractmethod
    def match_positions(
        self, ra: np.ndarray, dec: np.ndarray, radius_arcsec: float
    ) -> list[StarId | None]:
        """Nearest star within ``radius_arcsec`` of each (ra, dec) in degrees, or None
        (also for NaN or impossible positions)."""

    def nearest(self, ra: float, dec: float, radius_arcsec: float) -> StarId | None:
        """The nearest star within ``radius_arcsec`` of one position, or None."""
        return self.match_positions(np.array([ra], float), np.array([dec], float), radius_arcsec)[0]

    @abstractmethod
    def lightcurve_votable(
        self, stars: Sequence[StarId], *, quality: str = "good", fmt: str = "votable"
    ) -> bytes:
        """The document ``GET /lightcurve`` returns for these stars (duplicates dropped):
        VOTable, or VOParquet with ``fmt="parquet"``."""

    def lightcurve_url(
        self, stars: Sequence[StarId], *, quality: str = "good", fmt: str = "votable"
    ) -> str | None:
        """A URL on :attr:`service_url` returning :meth:`lightcurve_votable`'s document;
        None without a service or when the URL would be too long (MAX_URL_LENGTH)."""
        return _lightcurve_url(self.service_url, stars, quality, fmt)

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release files and connections."""

    def __enter__(self) -> StarSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_radius(radius_arcsec: float) -> float:
    r = float(radius_arcsec)
    if not np.isfinite(r) or r <= 0 or r > 3600:
        raise InvalidRequestError(f"match radius must be 0 < r <= 3600 arcsec, not {radius_arcsec}")
    return r


def _valid_positions(ra, dec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ra = np.atleast_1d(np.asarray(ra, dtype=float))
    dec = np.atleast_1d(np.asarray(dec, dtype=float))
    if ra.shape != dec.shape:
        raise InvalidRequestError(f"{len(ra)} RA values but {len(dec)} Dec values")
    ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
    return ra % 360.0, dec, ok


# --------------------------------------------------------------------------- local


class _FieldDirs:
    """Field directories opened directly: the part of the Database interface the
    lightcurve service uses (``fields``, ``authority``, ``field(name)``, ``close``)."""

    def __init__(self, directories: Sequence[Path], authority: str):
        self.authority = authority
        self._fields: dict[str, Field] = {}
        try:
            for d in directories:
                field = open_field(d)
                if field.name in self._fields:
                    field.close()
                    raise InvalidRequestError(
                        f"field {field.name} given twice ({self._fields[field.name].directory} "
                        f"and {d})"
                    )
                self._fields[field.name] = field
        except BaseException:
            self.close()
            raise
        self.fields: Mapping[str, Field] = dict(sorted(self._fields.items()))

    def field(self, name: str) -> Field:
        try:
            return self._fields[name]
        except KeyError:
            raise StarNotFoundError(
                f"unknown field {name!r}; fields here: {', '.join(self._fields) or 'none'}"
            ) from None

    def close(self) -> None:
        for f in self._fields.values():
            f.close()
        self._fields.clear()


class LocalSource(StarSource):
    """Stars from an ingested database or from field directories, read in-process."""

    def __init__(self, catalog, *, service_url: str | None = None):
        """``catalog``: a :class:`~romerea_vo.store.database.Database` or anything with
        its ``fields``/``authority``/``field(name)``/``close()``; prefer the
        :meth:`from_db` and :meth:`from_field_dirs` constructors."""
        self.catalog = catalog
        self.service_url = service_url.rstrip("/") if service_url else None
        self._lightcurves = LightcurveDocuments(catalog)
        self._bounds: dict[str, tuple[float, float, float, float] | None] = {}

    @classmethod
    def from_db(cls, path: str | Path, *, service_url: str | None = None) -> LocalSource:
        """An ingested database (``romerea-vo ingest ... --db PATH``, a DuckDB file or a
        PostgreSQL URL), read-only."""
        from ..store import open_database

        return cls(open_database(path), service_url=service_url)

    @classmethod
    def from_field_dirs(
        cls,
        directories: Sequence[str | Path],
        *,
        authority: str | None = None,
        service_url: str | None = None,
    ) -> LocalSource:
        """Field directories opened directly; DIDs use ``authority`` (default: the
        ingest default, ``ivo://romerea-vo.local/rome``)."""
        from ..store.ingest import DEFAULT_AUTHORITY

        if not directories:
            raise InvalidRequestError("give at least one field directory")
        dirs = _FieldDirs([Path(d) for d in directories], authority or DEFAULT_AUTHORITY)
        return cls(dirs, service_url=service_url)

    @property
    def authority(self) -> str:
        return self.catalog.authority

    @property
    def field_names(self) -> list[str]:
        return list(self.catalog.fields)

    def _star_id(self, field: Field, row: int) -> StarId:
        a = field.index_arrays
        fid = int(a["field_id"][row])
        return StarId(
            field.name,
            fid,
            make_did(self.authority, field.name, fid),
            float(a["ra"][row]),
            float(a["dec"][row]),
        )

    def stars_by_ids(self, pairs: Sequence[tuple[str, int]]) -> list[StarId | None]:
        out: list[StarId | None] = []
        for name, fid in pairs:
            name = str(name).strip()
            if name not in self.catalog.fields:
                out.append(None)
                continue
            field = self.catalog.field(name)
            try:
                ref = field.star(int(fid))
            except (StarNotFoundError, InvalidRequestError, TypeError, ValueError):
                out.append(None)
                continue
            out.append(self._star_id(field, ref.field_id - 1))
        return out

    def _field_bounds(self, name: str) -> tuple[float, float, float, float] | None:
        """(ra_min, ra_max, dec_min, dec_max) of a field, None if it wraps RA 0/360."""
        if name not in self._bounds:
            a = self.catalog.field(name).index_arrays
            ra, dec = np.asarray(a["ra"], float), np.asarray(a["dec"], float)
            if not len(ra):
                self._bounds[name] = (np.inf, -np.inf, np.inf, -np.inf)
            elif ra.max() - ra.min() > 180:
                self._bounds[name] = None
            else:
                self._bounds[name] = (ra.min(), ra.max(), dec.min(), dec.max())
        return self._bounds[name]

    def _near(self, name: str, ra: np.ndarray, dec: np.ndarray, r_deg: float) -> np.ndarray:
        """Which positions may have a star of field ``name`` within ``r_deg``."""
        bounds = self._field_bounds(name)
        if bounds is None:
            return np.ones(len(ra), bool)
        ra_lo, ra_hi, dec_lo, dec_hi = bounds
        margin = r_deg / np.maximum(np.cos(np.radians(np.abs(dec) + r_deg).clip(max=89.9)), 1e-6)
        return (
            (dec >= dec_lo - r_deg)
            & (dec <= dec_hi + r_deg)
            & (ra >= ra_lo - margin)
            & (ra <= ra_hi + margin)
        )

    def match_positions(
        self, ra: np.ndarray, dec: np.ndarray, radius_arcsec: float
    ) -> list[StarId | None]:
        r_deg = _check_radius(radius_arcsec) / 3600.0
        ra, dec, ok = _valid_positions(ra, dec)
        best: list[StarId | None] = [None] * len(ra)
        best_sep = np.full(len(ra), np.inf)
        for name in self.catalog.fields:
            near = np.flatnonzero(ok & self._near(name, ra, dec, r_deg))
            if not len(near):
                continue
            field = self.catalog.field(name)
            index = field.sky_index
            for i in near:
                rows, seps = index.cone(ra[i], dec[i], r_deg)
                if len(rows) and seps[0] < best_sep[i]:
                    best_sep[i] = seps[0]
                    best[i] = self._star_id(field, int(rows[0]))
        return best

    def lightcurve_votable(
        self, stars: Sequence[StarId], *, quality: str = "good", fmt: str = "votable"
    ) -> bytes:
        dids = [s.did for s in stars]
        if not dids:
            raise InvalidRequestError("no stars to send lightcurves of")
        req = parse_request({"ID": dids, "QUALITY": [quality], "RESPONSEFORMAT": [fmt]})
        if len(req.ids) == 1:
            body, _, _ = self._lightcurves.single(req)
            return body
        chunks, _, _ = self._lightcurves.many(req)
        return b"".join(chunks)

    def close(self) -> None:
        self.catalog.close()


# --------------------------------------------------------------------------- service


def _votable_status(body: bytes) -> tuple[str | None, str]:
    """(QUERY_STATUS value, its text) from a VOTable's RESOURCE-level INFOs."""
    from astropy.io.votable import parse

    vot = parse(io.BytesIO(body), verify="ignore")
    status, text = None, ""
    for resource in vot.resources:
        for info in resource.infos:
            if info.name == "QUERY_STATUS":
                status, text = info.value, (info.content or "")
    for info in vot.infos:
        if info.name == "QUERY_STATUS" and status is None:
            status, text = info.value, (info.content or "")
    return status, text.strip()


class ServiceSource(StarSource):
    """Stars and lightcurves from a running romerea-vo service (TAP + /lightcurve)."""

    def __init__(self, url: str, *, timeout: float = 60):
        base = url.strip().rstrip("/")
        for suffix in ("/tap", "/lightcurve"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        scheme = urllib.parse.urlsplit(base).scheme
        if scheme not in ("http", "https"):
            raise InvalidRequestError(f"service URL {url!r} is not an http(s) URL")
        self.service_url = base
        self.timeout = timeout
        self._client = ServiceClient(base, timeout=timeout, name="the romerea-vo service")
        self._authority: str | None = None

    def close(self) -> None:
        self._client.close()

    # ----- HTTP

    def _post(self, path: str, data, files=None) -> bytes:
        try:
            return self._client.post(path, data, files)
        except ServiceError as exc:
            raise SourceError(str(exc)) from None

    def _tap(self, adql: str, *, maxrec: int, uploads: Mapping[str, bytes] | None = None):
        """Run a TAP sync query; (astropy Table, overflowed)."""
        from astropy.io.votable import parse

        fields = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": adql, "MAXREC": str(maxrec)}
        files = None
        if uploads:
            fields["UPLOAD"] = ";".join(f"{name},param:{name}" for name in uploads)
            files = {n: (f"{n}.vot", data, VOTABLE_MEDIA) for n, data in uploads.items()}
        data = self._post("/tap/sync", fields, files)
        try:
            status, text = _votable_status(data)
            if status == "ERROR":
                raise SourceError(f"TAP query failed on {self.service_url}: {text}")
            table = parse(io.BytesIO(data), verify="ignore").get_first_table()
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(
                f"{self.service_url}/tap/sync did not return a VOTable: {exc}"
            ) from None
        return table.to_table(use_names_over_ids=True), status == "OVERFLOW"

    # ----- look-ups

    @property
    def authority(self) -> str | None:
        if self._authority is None:
            table, _ = self._tap("SELECT TOP 1 did FROM rome.field_index", maxrec=1)
            if len(table):
                self._authority = str(table["did"][0]).rpartition("?")[0]
        return self._authority

    def check(self) -> None:
        if not self.authority:  # unreachable: SourceError from the query
            raise SourceError(f"the service at {self.service_url} serves no ROME stars")

    @staticmethod
    def _rows_to_ids(table) -> Iterator[StarId]:
        for row in table:
            yield StarId(
                str(row["field"]),
                int(row["field_id"]),
                str(row["did"]),
                float(row["ra"]),
                float(row["dec"]),
            )

    def stars_by_ids(self, pairs: Sequence[tuple[str, int]]) -> list[StarId | None]:
        wanted: dict[str, set[int]] = {}
        for name, fid in pairs:
            try:
                name, fid = str(name).strip(), int(fid)
            except (TypeError, ValueError):
                continue
            if _FIELD_NAME.match(name) and fid >= 1:
                wanted.setdefault(name, set()).add(fid)
        found: dict[tuple[str, int], StarId] = {}
        for name, ids in wanted.items():
            ordered = sorted(ids)
            for start in range(0, len(ordered), _IDS_PER_QUERY):
                chunk = ordered[start : start + _IDS_PER_QUERY]
                adql = (
                    "SELECT field, field_id, did, ra, dec FROM rome.field_index "
                    f"WHERE field = '{name}' AND field_id IN ({', '.join(map(str, chunk))})"
                )
                table, _ = self._tap(adql, maxrec=len(chunk) + 1)
                for star in self._rows_to_ids(table):
                    found[(star.field, star.field_id)] = star
        out: list[StarId | None] = []
        for name, fid in pairs:
            try:
                out.append(found.get((str(name).strip(), int(fid))))
            except (TypeError, ValueError):
                out.append(None)
        return out

    def _match_chunk(self, idx: np.ndarray, ra, dec, r_deg: float, best: list) -> None:
        from astropy.table import Table

        upload = io.BytesIO()
        Table({"idx": idx.astype(np.int64), "ra": ra[idx], "dec": dec[idx]}).write(
            upload, format="votable"
        )
        adql = (
            "SELECT u.idx, f.field, f.field_id, f.did, f.ra, f.dec, "
            "DISTANCE(POINT('ICRS', u.ra, u.dec), POINT('ICRS', f.ra, f.dec)) AS sep "
            "FROM TAP_UPLOAD.pos AS u JOIN rome.field_index AS f "
            "ON 1 = CONTAINS(POINT('ICRS', f.ra, f.dec), "
            f"CIRCLE('ICRS', u.ra, u.dec, {r_deg!r}))"
        )
        maxrec = max(1000, 20 * len(idx))
        table, overflow = self._tap(adql, maxrec=maxrec, uploads={"pos": upload.getvalue()})
        if overflow:
            if len(idx) == 1:
                raise SourceError(
                    f"more than {maxrec} stars within {r_deg * 3600:g} arcsec of one position"
                )
            half = len(idx) // 2
            self._match_chunk(idx[:half], ra, dec, r_deg, best)
            self._match_chunk(idx[half:], ra, dec, r_deg, best)
            return
        seps = np.asarray(table["sep"], float)
        rows = np.asarray(table["idx"], np.int64)
        stars = list(self._rows_to_ids(table))
        best_sep: dict[int, float] = {}
        for i, sep, star in zip(rows, seps, stars, strict=True):
            i = int(i)
            if sep <= r_deg and sep < best_sep.get(i, np.inf):
                best_sep[i] = sep
                best[i] = star

    def match_positions(
        self, ra: np.ndarray, dec: np.ndarray, radius_arcsec: float
    ) -> list[StarId | None]:
        r_deg = _check_radius(radius_arcsec) / 3600.0
        ra, dec, ok = _valid_positions(ra, dec)
        best: list[StarId | None] = [None] * len(ra)
        todo = np.flatnonzero(ok)
        for start in range(0, len(todo), _POSITIONS_PER_QUERY):
            self._match_chunk(todo[start : start + _POSITIONS_PER_QUERY], ra, dec, r_deg, best)
        return best

    def lightcurve_votable(
        self, stars: Sequence[StarId], *, quality: str = "good", fmt: str = "votable"
    ) -> bytes:
        if not stars:
            raise InvalidRequestError("no stars to send lightcurves of")
        params = [("ID", s.did) for s in dict.fromkeys(stars)] + [("QUALITY", quality)]
        params.append(("RESPONSEFORMAT", fmt))
        return self._post("/lightcurve", params)


def open_source(
    *,
    service: str | None = None,
    field_dirs: Sequence[str | Path] = (),
    db: str | Path | None = None,
    service_url: str | None = None,
) -> StarSource:
    """The source the CLI options name: ``--service URL``, ``--db PATH`` or FIELD_DIRs.

    ``service_url`` (local sources only) names a romerea-vo service serving the same
    data, whose ``/lightcurve`` URLs :meth:`StarSource.lightcurve_url` then hands out."""
    if service:
        if db is not None or field_dirs:
            raise InvalidRequestError("give --service URL, or --db PATH / field directories")
        return ServiceSource(service)
    if db is not None:
        if field_dirs:
            raise InvalidRequestError(
                "give --db PATH or field directories, not both (ingest the directories into "
                "the database with `romerea-vo ingest` first)"
            )
        return LocalSource.from_db(db, service_url=service_url)
    if field_dirs:
        return LocalSource.from_field_dirs(field_dirs, service_url=service_url)
    raise InvalidRequestError("give --service URL, --db PATH or field directories")
