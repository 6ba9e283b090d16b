"""Cross-matching through TAP (pyvo): with a romerea-vo service, and with other services.

* :func:`match_service`: a user's positions against ``rome.field_index`` of a running
  romerea-vo service. Positions go up as ``TAP_UPLOAD`` tables (row number, RA, Dec) in
  chunks; an ADQL ``CONTAINS(POINT, CIRCLE)`` join returns every ROME star within the
  radius; separations are computed here from the returned positions and the mode
  (best, best-unique) is applied here, over all chunks, exactly as in a local match.
* :func:`match_external`: ROME stars (held here) against a table of any TAP service, the
  way STILTS ``tapskymatch`` does: our positions go up in chunks, the join runs remotely,
  the remote columns come back and are merged with the ROME identity.

Failures are never hidden. Each chunk either succeeds or is recorded with the reason
(HTTP or DALI error, no answer within ``timeout`` seconds, service unreachable) in a
:class:`ChunkReport`; after an unreachable service, or two failed chunks in a row, the
remaining chunks are not attempted. A chunk whose result the service truncated
(``QUERY_STATUS=OVERFLOW``) is split in halves and retried, so MAXREC never silently
drops pairs. The timeout applies to every HTTP exchange of a chunk (pyvo's session):
a chunk fails when the service stays silent for that long.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from astropy.coordinates import angular_separation
from astropy.table import Column, MaskedColumn, Table, vstack

from ..client import ServiceClient, failure_reason
from ..errors import InvalidRequestError, RomeReaError
from ..votable.writer import FieldSpec, write_votable
from .local import (
    Pairs,
    RomeStars,
    free_name,
    reference_epoch,
    rome_identity_columns,
    select_index,
    xmatch_column,
)

__all__ = [
    "ChunkReport",
    "RemoteError",
    "TapClient",
    "external_columns",
    "match_external",
    "match_service",
    "service_epochs",
    "service_statistics",
]

MAXREC = 20_000_000
"""Asked of every query; the service clamps it to its own limit and says OVERFLOW when
it cuts a result, which makes us split the chunk."""
MAX_CONSECUTIVE_FAILURES = 2

OnChunk = Callable[[int, int], None]
"""Called after each chunk (1-based number, number of chunks), succeeded or not."""


class RemoteError(RomeReaError):
    """A TAP request failed; ``unreachable`` when the service could not be contacted."""

    def __init__(self, message: str, *, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


class _Overflow(Exception):
    pass


class TapClient:
    """pyvo's TAPService with a per-request timeout, sync (default) or async queries."""

    def __init__(self, url: str, *, timeout: float = 300.0, use_async: bool = False):
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.use_async = use_async
        self._client = ServiceClient(self.url, timeout=self.timeout, name="the TAP service")
        self.session = self._client.session
        self.service = self._client.tap()

    def close(self) -> None:
        self.session.close()

    def query(self, adql: str, uploads: dict[str, bytes] | None = None) -> Table:
        """Run ``adql``; the result as an astropy Table (VOTable metadata kept). Raises
        :class:`RemoteError`, or ``_Overflow`` when the service truncated the result."""
        import pyvo

        files = {name: io.BytesIO(data) for name, data in (uploads or {}).items()}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # overflow and VOTable warnings: handled here
                if self.use_async:
                    result = self.service.run_async(
                        adql, uploads=files or None, maxrec=MAXREC, timeout=self.timeout
                    )
                else:
                    result = self.service.run_sync(adql, uploads=files or None, maxrec=MAXREC)
                if (result.query_status or "OK").upper() == "OVERFLOW":
                    raise _Overflow
                return result.to_table()
        except _Overflow:
            raise
        except (pyvo.dal.DALServiceError, pyvo.dal.DALQueryError, pyvo.dal.DALFormatError) as exc:
            reason, unreachable = failure_reason(exc)
            raise RemoteError(reason, unreachable=unreachable) from None
        except Exception as exc:  # a malformed answer (e.g. not a VOTable at all)
            reason, unreachable = failure_reason(exc)
            raise RemoteError(reason, unreachable=unreachable) from None


def _adql_string(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _upload(columns: dict[str, np.ndarray]) -> bytes:
    """A BINARY2 VOTable of the given columns (the fast writer; astropy's is ~100x slower)."""
    data = pa.table(columns)
    fields = [FieldSpec.from_arrow(n, data.schema.field(n).type) for n in data.column_names]
    return b"".join(write_votable(data, fields, serialization="binary2", table_name="upload"))


# --------------------------------------------------------------------------- chunks


@dataclass
class ChunkReport:
    """Which chunks of a chunked remote operation failed, and why."""

    what: str
    n_chunks: int
    failed: dict[int, str] = field(default_factory=dict)  # 1-based chunk -> reason
    skipped: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed and not self.skipped

    @property
    def succeeded(self) -> int:
        return self.n_chunks - len(self.failed) - len(self.skipped)

    def describe(self) -> str:
        """``chunks 2, 3 of 6 failed (...); chunks 4-6 not attempted`` (empty if complete)."""
        parts = []
        if self.failed:
            nums = ", ".join(str(k) for k in self.failed)
            reasons = "; ".join(f"chunk {k}: {r}" for k, r in self.failed.items())
            noun = "chunk" if len(self.failed) == 1 else "chunks"
            parts.append(f"{self.what} {noun} {nums} of {self.n_chunks} failed ({reasons})")
        if self.skipped:
            first, last = self.skipped[0], self.skipped[-1]
            span = f"{first}" if first == last else f"{first}-{last}"
            parts.append(f"{self.what} chunk(s) {span} of {self.n_chunks} not attempted")
        return "; ".join(parts)


def run_chunks(
    what: str, n_chunks: int, work: Callable[[int], object], on_chunk: OnChunk | None = None
) -> tuple[list, ChunkReport]:
    """``work(k)`` for k = 0..n-1; failures (RemoteError) are recorded, not raised."""
    results: list = [None] * n_chunks
    report = ChunkReport(what, n_chunks)
    consecutive = 0
    for k in range(n_chunks):
        try:
            results[k] = work(k)
            consecutive = 0
        except RemoteError as exc:
            report.failed[k + 1] = str(exc)
            consecutive += 1
            if exc.unreachable or consecutive >= MAX_CONSECUTIVE_FAILURES:
                report.skipped = list(range(k + 2, n_chunks + 1))
                if on_chunk:
                    on_chunk(k + 1, n_chunks)
                break
        if on_chunk:
            on_chunk(k + 1, n_chunks)
    return results, report


def _query_split(
    client: TapClient,
    make_query: Callable[[np.ndarray], tuple[str, dict[str, bytes]]],
    rows: np.ndarray,
) -> list[Table]:
    """Run the query for ``rows``; on OVERFLOW, for each half in turn."""
    adql, uploads = make_query(rows)
    try:
        return [client.query(adql, uploads)]
    except _Overflow:
        if rows.size <= 1:
            raise RemoteError(
                "the service truncated the result (MAXREC) even for a single row; "
                "use a smaller radius"
            ) from None
    half = rows.size // 2
    return _query_split(client, make_query, rows[:half]) + _query_split(
        client, make_query, rows[half:]
    )


# --------------------------------------------------------------------------- romerea-vo


def _field_clause(fields: list[str] | None, column: str) -> str:
    if not fields:
        return ""
    return f"{column} IN ({', '.join(_adql_string(f) for f in fields)})"


def service_fields(client: TapClient) -> list[str]:
    """The fields a romerea-vo service holds."""
    t = client.query("SELECT DISTINCT field FROM rome.datasets")
    return sorted(str(v) for v in t.columns[0])


def service_epochs(client: TapClient, fields: list[str]) -> dict[str, float]:
    """Julian epoch of each field's positions, from the service's rome.images (the same
    rule as for local sources: see :mod:`.local`)."""
    where = _field_clause(fields, "i.field")
    t = client.query(
        "SELECT i.field, i.hjd, i.use_ref, d.primary_ref FROM rome.images AS i "
        "JOIN rome.datasets AS d ON i.field = d.field AND i.dataset_code = d.dataset_code"
        + (f" WHERE {where}" if where else "")
    )
    field_col = np.asarray(t.columns[0]).astype(str)
    hjd: np.ndarray = np.ma.filled(np.ma.asarray(t.columns[1], dtype=float), np.nan)
    use_ref = np.ma.filled(np.ma.asarray(t.columns[2]), 0)
    primary = np.ma.filled(np.ma.asarray(t.columns[3]), 0) == 1
    out = {}
    for name in fields:
        rows = field_col == name
        epoch = reference_epoch(hjd[rows], use_ref[rows], primary[rows])
        if epoch is None:
            raise InvalidRequestError(
                f"field {name}: the service lists no image time, so the epoch of its "
                "positions is unknown; give --rome-epoch"
            )
        out[name] = epoch
    return out


@dataclass
class ServiceMatch:
    """What :func:`match_service` found: every pair within the radius (``pairs``, indices
    into the input rows and into ``rome``) and the chunk report."""

    pairs: Pairs
    rome: RomeStars
    report: ChunkReport
    done_rows: np.ndarray  # bool per input row: its chunk completed


def match_service(
    client: TapClient,
    ra: np.ndarray,
    dec: np.ndarray,
    radius_arcsec: float,
    *,
    fields: list[str] | None = None,
    motion: tuple[np.ndarray, np.ndarray, float] | None = None,
    epochs: dict[str, float] | None = None,
    chunk_rows: int = 50_000,
    on_chunk: OnChunk | None = None,
) -> ServiceMatch:
    """Every (input row, ROME star) pair within the radius, from a romerea-vo service.

    Rows with NaN positions are not sent. With ``motion`` (pmra, pmdec in mas/yr, epoch),
    positions are moved to each field's epoch and each field is queried separately."""
    from .core import propagate

    good = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    n_chunks = max(1, -(-good.size // chunk_rows))
    r_deg = radius_arcsec / 3600.0
    targets: list[str | None] = [None]
    if motion is not None:
        assert epochs is not None  # given with a motion
        targets = list(epochs)

    def positions(target, rows):
        if target is None:
            return ra[rows], dec[rows]
        pmra, pmdec, epoch = motion
        return propagate(ra[rows], dec[rows], pmra[rows], pmdec[rows], epoch, epochs[target])

    def work(k: int):
        chunk = good[k * chunk_rows : (k + 1) * chunk_rows]
        found = []
        for target in targets:
            where = (
                f"f.field = {_adql_string(target)}"
                if target is not None
                else _field_clause(fields, "f.field")
            )

            def make_query(rows, target=target, where=where):
                pra, pdec = positions(target, rows)
                upload = _upload({"row_id": rows.astype(np.int64), "ra": pra, "dec": pdec})
                adql = (
                    "SELECT u.row_id, f.field, f.field_id, f.ra, f.dec, f.did "
                    "FROM TAP_UPLOAD.xm AS u JOIN rome.field_index AS f ON 1 = CONTAINS("
                    f"POINT('ICRS', f.ra, f.dec), CIRCLE('ICRS', u.ra, u.dec, {r_deg!r}))"
                    + (f" WHERE {where}" if where else "")
                )
                return adql, {"xm": upload}

            for t in _query_split(client, make_query, chunk):
                if len(t):
                    found.append((target, t))
        return found

    results, report = run_chunks("TAP", n_chunks, work, on_chunk)
    done = np.zeros(ra.size, bool)
    rows_l, fields_l, ids_l, ras_l, decs_l, dids_l, seps_l = [], [], [], [], [], [], []
    for k, found in enumerate(results):
        if found is None:
            continue
        done[good[k * chunk_rows : (k + 1) * chunk_rows]] = True
        for target, t in found:
            rows = np.asarray(t.columns[0], dtype=np.int64)
            sra, sdec = (np.asarray(t.columns[i], dtype=np.float64) for i in (3, 4))
            pra, pdec = positions(target, rows)
            sep = (
                np.degrees(angular_separation(*(np.radians(a) for a in (pra, pdec, sra, sdec))))
                * 3600.0
            )
            keep = sep <= radius_arcsec  # the service's CONTAINS already decided; rounding
            rows_l.append(rows[keep])
            fields_l.append(np.asarray(t.columns[1]).astype(str)[keep])
            ids_l.append(np.asarray(t.columns[2], dtype=np.int64)[keep])
            ras_l.append(sra[keep])
            decs_l.append(sdec[keep])
            dids_l.append(np.asarray(t.columns[5]).astype(str)[keep])
            seps_l.append(sep[keep])
    if not rows_l:
        empty = RomeStars.from_columns([], [], [], [], [])
        return ServiceMatch(Pairs.concat([]), empty, report, done)
    field_all = np.concatenate(fields_l)
    id_all = np.concatenate(ids_l)
    # one RomeStars entry per distinct (field, field_id)
    pair_keys = np.char.add(np.char.add(field_all, "/"), id_all.astype(str))
    _, first, inverse = np.unique(pair_keys, return_index=True, return_inverse=True)
    rome = RomeStars.from_columns(
        field_all[first], id_all[first], np.concatenate(ras_l)[first],
        np.concatenate(decs_l)[first], np.concatenate(dids_l)[first],
    )  # fmt: skip
    pairs = Pairs(np.concatenate(rows_l), inverse.astype(np.int64), np.concatenate(seps_l))
    return ServiceMatch(pairs.sorted(), rome, report, done)


def service_statistics(
    client: TapClient, rome: RomeStars, chunk_rows: int, on_chunk: OnChunk | None = None
) -> tuple[Table, ChunkReport]:
    """rome.lightcurve_stats rows of these stars, in chunks of uploaded (field, field_id)."""
    n_chunks = max(1, -(-len(rome) // chunk_rows))
    names = rome.field

    def work(k: int):
        sl = slice(k * chunk_rows, (k + 1) * chunk_rows)
        upload = _upload({"field": names[sl].astype(str), "field_id": rome.field_id[sl]})
        return client.query(
            "SELECT s.* FROM TAP_UPLOAD.stars AS k JOIN rome.lightcurve_stats AS s "
            "ON s.field = k.field AND s.field_id = k.field_id",
            {"stars": upload},
        )

    results, report = run_chunks("statistics", n_chunks, work, on_chunk)
    parts = [t for t in results if t is not None and len(t)]
    if not parts:
        return Table(names=["field", "field_id", "filter"], dtype=[str, np.int64, str]), report
    return vstack(parts, metadata_conflicts="silent"), report


# --------------------------------------------------------------------------- external


def _tap_schema_columns(client: TapClient, table: str) -> tuple[str, Table]:
    """(table name as TAP_SCHEMA spells it, its TAP_SCHEMA.columns rows)."""
    query = (
        "SELECT column_name, datatype, unit, ucd, description FROM TAP_SCHEMA.columns "
        "WHERE table_name = {}"
    )
    cols = client.query(query.format(_adql_string(table)))
    if len(cols):
        return table, cols
    tables = client.query("SELECT table_name FROM TAP_SCHEMA.tables")
    names = [str(n) for n in tables.columns[0]]
    same = [n for n in names if n.lower() == table.lower()]
    if len(same) == 1:
        return same[0], client.query(query.format(_adql_string(same[0])))
    shown = ", ".join(sorted(n for n in names if not n.lower().startswith("tap_schema."))[:30])
    raise InvalidRequestError(
        f"{client.url} has no table {table!r} in its TAP_SCHEMA; its tables: {shown or 'none'}"
    )


def _bare(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') and name.endswith('"') else name


@dataclass
class ExternalTable:
    """A remote table as its TAP_SCHEMA describes it."""

    name: str
    columns: list[str]  # as ADQL must write them (TAP_SCHEMA spelling)
    meta: dict[str, dict]  # bare column name -> unit, ucd, description
    ra: str
    dec: str


def external_columns(
    client: TapClient, table: str, ra_col: str | None = None, dec_col: str | None = None
) -> ExternalTable:
    """The remote table's columns and position columns (given, else found by UCD or usual
    names, as for an input catalogue)."""
    from ..catalogue_files import CatalogueError, find_position_columns

    name, rows = _tap_schema_columns(client, table)
    spelled = [str(v) for v in rows.columns[0]]
    dummy = Table()
    meta = {}
    for i, col in enumerate(spelled):
        bare = _bare(col)
        info = {
            k: (None if np.ma.is_masked(rows.columns[j][i]) else str(rows.columns[j][i]) or None)
            for j, k in ((2, "unit"), (3, "ucd"), (4, "description"))
        }
        meta[bare] = info
        dummy[bare] = Column([], dtype=float)
        if info["ucd"]:
            dummy[bare].meta["ucd"] = info["ucd"]
    try:
        ra, dec = find_position_columns(dummy, ra_col, dec_col)
    except CatalogueError as exc:
        raise InvalidRequestError(f"remote table {name}: {exc}") from None
    by_bare = {_bare(c): c for c in spelled}
    return ExternalTable(name, spelled, meta, by_bare[ra], by_bare[dec])


def _pick_columns(ext: ExternalTable, wanted: list[str] | None) -> list[str]:
    if not wanted:
        return list(ext.columns)
    by_lower: dict[str, list[str]] = {}
    for c in ext.columns:
        by_lower.setdefault(_bare(c).lower(), []).append(c)
    out = []
    for w in wanted:
        exact = [c for c in ext.columns if _bare(c) == _bare(w)]
        found = exact or by_lower.get(_bare(w).lower(), [])
        if len(found) != 1:
            raise InvalidRequestError(
                f"remote table {ext.name} has no column {w!r}; its columns: "
                f"{', '.join(_bare(c) for c in ext.columns)}"
            )
        out.append(found[0])
    return out


@dataclass
class ExternalMatch:
    """The merged result of :func:`match_external` and its chunk report."""

    table: Table
    report: ChunkReport
    n_pairs: int  # pairs within the radius before the mode was applied
    n_rome_matched: int
    n_ambiguous: int  # ROME stars with more than one remote source within the radius
    n_answered: int  # ROME stars whose chunk completed


def match_external(
    client: TapClient,
    rome: RomeStars,
    table: str,
    radius_arcsec: float,
    *,
    mode: str = "best",
    columns: list[str] | None = None,
    ra_col: str | None = None,
    dec_col: str | None = None,
    chunk_rows: int = 50_000,
    on_chunk: OnChunk | None = None,
) -> ExternalMatch:
    """ROME stars matched with a remote TAP table (see the module docstring).

    ``best``: the nearest remote source of each ROME star that has one; ``best-unique``:
    pairs that are each other's nearest (remote sources identified by their position);
    ``all``: every pair. Output: ROME identity, the remote columns (``ext_`` prefix on a
    name clash), ``sep_arcsec``; one row per pair, by ROME star then separation."""
    ext = external_columns(client, table, ra_col, dec_col)
    wanted = _pick_columns(ext, columns)
    n_chunks = max(1, -(-len(rome) // chunk_rows)) if len(rome) else 0
    r_deg = radius_arcsec / 3600.0
    select = ", ".join(f"t.{c}" for c in wanted)

    def make_query(rows):
        upload = _upload(
            {"rome_row": rows.astype(np.int64), "ra": rome.ra[rows], "dec": rome.dec[rows]}
        )
        adql = (
            f"SELECT u.rome_row, t.{ext.ra} AS romerea_xm_ra, t.{ext.dec} AS romerea_xm_dec, "
            f"{select} FROM TAP_UPLOAD.rome AS u JOIN {ext.name} AS t ON 1 = CONTAINS("
            f"POINT('ICRS', t.{ext.ra}, t.{ext.dec}), CIRCLE('ICRS', u.ra, u.dec, {r_deg!r}))"
        )
        return adql, {"rome": upload}

    def work(k: int):
        rows = np.arange(k * chunk_rows, min(len(rome), (k + 1) * chunk_rows))
        return _query_split(client, make_query, rows)

    results, report = run_chunks("TAP", n_chunks, work, on_chunk)
    parts = [t for found in results if found for t in found if len(t)]
    taken: set[str] = set()
    got = vstack(parts, metadata_conflicts="silent", join_type="exact") if parts else None
    if got is None or not len(got):
        rome_idx = np.empty(0, np.int64)
        sep = np.empty(0)
        order = np.empty(0, np.int64)
        n_pairs = n_ambiguous = n_matched = 0
    else:
        rome_idx = np.asarray(got.columns[0], dtype=np.int64)
        xra = np.asarray(got.columns[1], dtype=np.float64)
        xdec = np.asarray(got.columns[2], dtype=np.float64)
        sep = (
            np.degrees(
                angular_separation(
                    *(np.radians(a) for a in (rome.ra[rome_idx], rome.dec[rome_idx], xra, xdec))
                )
            )
            * 3600.0
        )
        _, remote_id = np.unique(np.column_stack([xra, xdec]), axis=0, return_inverse=True)
        inside = np.flatnonzero(sep <= radius_arcsec)
        pairs = Pairs(rome_idx[inside], remote_id.ravel()[inside].astype(np.int64), sep[inside])
        order = inside[select_index(pairs, mode)]
        counts = np.bincount(pairs.left, minlength=len(rome))
        n_pairs, n_ambiguous, n_matched = (
            len(pairs),
            int((counts > 1).sum()),
            int((counts > 0).sum()),
        )
    star = rome_idx[order]
    cols = rome_identity_columns(rome, star, taken, keep_main=True)
    out = Table(cols)
    if got is not None:
        for i, col_name in enumerate(got.colnames[3:], start=3):
            src = got.columns[i]
            bare = _bare(wanted[i - 3]) if i - 3 < len(wanted) else col_name
            name = free_name(bare, taken, prefix="ext_")
            values = src[order]
            col = (
                MaskedColumn(values, name=name)
                if hasattr(values, "mask")
                else Column(values, name=name)
            )
            info = ext.meta.get(bare, {})
            col.unit = src.unit if src.unit is not None else info.get("unit")
            col.description = src.description or info.get("description")
            ucd = src.meta.get("ucd") or info.get("ucd")
            # ROME's own RA/Dec are the main positions of this table
            col.meta["ucd"] = (
                ";".join(w for w in ucd.split(";") if w != "meta.main") if ucd else None
            )
            out[name] = col
    out.add_column(xmatch_column("sep_arcsec", sep[order], np.zeros(order.size, bool), taken))
    answered = sum(
        min(len(rome), (k + 1) * chunk_rows) - k * chunk_rows
        for k, found in enumerate(results)
        if found is not None
    )
    return ExternalMatch(out, report, n_pairs, n_matched, n_ambiguous, answered)
