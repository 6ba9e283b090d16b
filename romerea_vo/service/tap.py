"""Running one TAP query: parameters → uploads → ADQL translation → DuckDB → result bytes.

Shared by the sync endpoint and the async (UWS) job runner.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from .. import __version__
from ..adql import ADQLError, Catalog, ColumnInfo, TableInfo, Translation, translate
from ..adql.parser import parse as parse_adql
from ..errors import InvalidRequestError, RomeReaError
from ..store.contract import CatalogDatabase
from ..store.ddl import ARROW_TYPES
from ..store.session import DuckDBSession, QueryFailed, QueryInterrupted
from ..votable.formats import ResultFormat, resolve_format, write_result
from ..votable.schema import TableSchema
from ..votable.writer import FieldSpec, Info
from ..xmatch import MatchCancelled
from .datalink import attach_descriptor
from .params import DaliParams, parse_upload_param
from .photometry import photometry_query, photometry_rows, requested_stars
from .spatial_joins import SpatialJoinRunner
from .uploads import UploadColumn, UploadGuard, fetch_remote_upload, read_upload_table

LANGS = {"ADQL", "ADQL-2.0", "ADQL-2.1"}

Session = DuckDBSession  # or a romerea_vo.store.postgres.PgSession: the same calls
BATCH_ROWS = 65536
#: Bytes of one result batch, about: wide results (SELECT * over joins) come in fewer rows
#: per batch, so that a streamed result holds tens of MB, not hundreds.
BATCH_BYTES = 8 * 2**20


def batch_rows(n_columns: int) -> int:
    """Rows per result batch for ``n_columns`` columns (8 bytes a cell, about)."""
    return max(1024, min(BATCH_ROWS, BATCH_BYTES // (8 * max(1, n_columns))))


class Cancellation(Protocol):
    """What tells a query to stop: a `threading.Event`, a UWS job's `CancelToken`."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class TapLimits:
    """Configurable limits, advertised in the capabilities."""

    default_maxrec: int = 200_000
    hard_maxrec: int = 20_000_000
    sync_execution_duration: int = 300
    default_execution_duration: int = 600
    hard_execution_duration: int = 3600
    default_retention: int = 7 * 86400
    hard_retention: int = 30 * 86400
    upload_bytes: int = 100 * 2**20
    upload_rows: int = 5_000_000
    upload_columns: int = 1000
    upload_cell_bytes: int = 2**16
    """Longest value in an uploaded table (TD text; declared arraysize x item size)."""
    remote_uploads: bool = True
    """Fetch UPLOAD=name,http(s)://... tables (TAP 1.1 requires upload-http)."""
    remote_upload_private_hosts: bool = False
    """Also fetch from loopback/private addresses (off: a client must not make the
    service probe hosts only it can reach)."""
    remote_upload_allowed_hosts: tuple[str, ...] = ()
    """Hosts (``name`` or ``name:port``) fetched from although they are not public, e.g. an
    intranet data server; every redirect hop is checked against the same rule."""
    remote_upload_seconds: int = 120
    """Time allowed for fetching one remote upload."""
    jobs_per_client: int = 100
    """Async jobs one client address may hold (0: no limit); beyond: 429, Retry-After."""
    job_result_bytes: int = 2 * 2**30
    """Largest result of one async job (0: no limit); a larger one ends the job in ERROR."""
    results_quota_bytes: int = 20 * 2**30
    """All async results held (0: no limit); beyond it a client's new job first evicts
    its own oldest COMPLETED jobs, else is refused (503, Retry-After)."""
    query_slots: int = 2
    """Heavy sync queries (joins, uploads, photometry) executing at once per process."""
    query_queue: int = 16
    """Heavy sync queries waiting for a slot; beyond them a 503 with Retry-After."""
    light_slots: int = 4
    """Light sync queries (one table, no upload) executing at once: their own capacity."""
    light_queue: int = 32
    client_slots: int = 4
    """Heavy sync queries one client address may have running or queued."""
    retry_after: int = 10
    """Seconds a refused client is told to wait (``Retry-After``)."""
    duckdb_memory_limit: str = "1GB"
    """DuckDB's ``memory_limit`` for the service's database ("": DuckDB's 80 % of RAM)."""
    duckdb_threads: int = 0
    """DuckDB's ``threads`` (0: one per core)."""
    pg_work_mem: str = "64MB"
    """PostgreSQL ``work_mem`` of each service session ("": the server's)."""


def parse_maxrec(params: DaliParams | Mapping[str, str], limits: TapLimits) -> int:
    """DALI MAXREC: the default when absent, clamped to the hard limit, errors otherwise."""
    raw = params.get("MAXREC")
    if raw is None or raw.strip() == "":
        return limits.default_maxrec
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidRequestError(f"MAXREC must be a non-negative integer, not {raw!r}") from None
    if value < 0:
        raise InvalidRequestError(f"MAXREC must be a non-negative integer, not {value}")
    return min(value, limits.hard_maxrec)


class QueryCancelled(RomeReaError):
    """The query was interrupted (execution duration exceeded, or aborted)."""

    http_status = 400
    dali_fault = "UsageFault"


def _table_info(table: TableSchema, db) -> TableInfo:
    # A virtual table's physical name exists nowhere: only a query-time registration
    # (see _with_photometry) makes it readable. DuckDB's rowid lets positional joins run
    # through the xmatch core; PostgreSQL uses its pgSphere indexes instead.
    duckdb_rows = db.target == "duckdb" and not table.virtual
    return TableInfo(
        name=table.qualified_name,
        physical=db.physical_name(table) if not table.virtual else '"unrestricted_virtual_table"',
        columns=tuple(
            ColumnInfo(c.name, c.datatype, xtype=c.xtype, arraysize=c.arraysize, unit=c.unit)
            for c in table.columns
        ),
        row_key="rowid" if duckdb_rows else None,
    )


@dataclass
class PreparedQuery:
    adql: str
    sql: str
    translation: Translation
    maxrec: int
    fmt: ResultFormat
    uploads: dict[str, dict[str, UploadColumn]] = field(default_factory=dict)


class TapEngine:
    """Everything a TAP request needs from the database, with the configured limits."""

    def __init__(self, db: CatalogDatabase, limits: TapLimits | None = None):
        self.db = db
        self.limits = limits or TapLimits()
        self.tables = db.tables  # ROME (if present), external catalogues, TAP_SCHEMA
        self.schemas = {t.qualified_name.lower(): t for t in self.tables}
        self.catalog = Catalog([_table_info(t, db) for t in self.tables])
        self.spatial_joins = SpatialJoinRunner()

    # --- parameters -----------------------------------------------------------------

    def check_query_params(self, params: DaliParams) -> tuple[str, int, ResultFormat]:
        """Validate REQUEST/LANG/QUERY/MAXREC/RESPONSEFORMAT; returns (query, maxrec, format)."""
        request = params.get("REQUEST")
        if request is not None and request.strip().lower() != "doquery":
            raise InvalidRequestError(
                f"REQUEST={request!r} is not supported; use REQUEST=doQuery (or leave it out)"
            )
        lang = params.get("LANG")
        if lang is None:
            raise InvalidRequestError("LANG is missing: use LANG=ADQL")
        if lang.strip().upper() not in LANGS:
            raise InvalidRequestError(
                f"LANG={lang!r} is not supported; this service accepts {', '.join(sorted(LANGS))}"
            )
        query = params.get("QUERY")
        if query is None or not query.strip():
            raise InvalidRequestError("QUERY is missing or empty")
        fmt_value = params.get("RESPONSEFORMAT") or params.get("FORMAT")
        return query, parse_maxrec(params, self.limits), resolve_format(fmt_value)

    def is_heavy(self, params: DaliParams) -> bool:
        """Whether the query may cost more than a scan of one table: it reads several
        tables (joins, subqueries), uploads or rome.photometry. Unparseable queries are
        light: they fail at once."""
        if params.getall("UPLOAD"):
            return True
        try:
            tree = parse_adql(params.get("QUERY") or "")
        except Exception:  # any refusal comes, precisely worded, from prepare
            return False
        tables = [t.name.lower() for t in tree.find_all(exp.Table)]
        return len(tables) != 1 or tables[0] == "photometry"

    # --- uploads ----------------------------------------------------------------------

    def upload_guard(
        self, deadline: float | None = None, cancelled: Callable[[], bool] | None = None
    ) -> UploadGuard:
        """The configured bounds on one uploaded table."""
        return UploadGuard(
            max_rows=self.limits.upload_rows,
            max_columns=self.limits.upload_columns,
            max_cell_bytes=self.limits.upload_cell_bytes,
            deadline=deadline,
            cancelled=cancelled,
        )

    def register_uploads(
        self,
        params: DaliParams,
        session: Session,
        scratch: Path | None,
        *,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> tuple[Catalog, dict[str, dict[str, UploadColumn]]]:
        """Read the UPLOAD tables and register them on ``session`` as TAP_UPLOAD.<name>;
        reading stops with InvalidRequestError at ``deadline`` (`time.monotonic`) or when
        ``cancelled()`` turns true."""
        guard = self.upload_guard(deadline, cancelled)
        pairs = parse_upload_param(
            params.getall("UPLOAD"), params.files, allow_remote=self.limits.remote_uploads
        )
        if not pairs:
            return self.catalog, {}
        extra, metadata = [], {}
        for name, ref in pairs:
            if ref.startswith("param:"):
                path = params.files[ref[len("param:") :]]
            else:
                if scratch is None:
                    raise InvalidRequestError("remote uploads need a scratch directory")
                path = fetch_remote_upload(
                    name,
                    ref,
                    scratch / f"remote-{secrets.token_hex(6)}",
                    max_bytes=self.limits.upload_bytes,
                    allow_private=self.limits.remote_upload_private_hosts,
                    allowed_hosts=tuple(self.limits.remote_upload_allowed_hosts),
                    max_time=self.limits.remote_upload_seconds,
                )
            table, meta = read_upload_table(name, path, max_rows=guard.max_rows, guard=guard)
            physical = f"tap_upload_{secrets.token_hex(6)}"
            # No xtype here: the values are plain strings/numbers in DuckDB; the
            # uploader's xtype/unit/UCD are put back on result FIELDs instead.
            columns = tuple(ColumnInfo(f.name, _votable_datatype(f.type)) for f in table.schema)
            # A row number ADQL cannot see, for positional joins run by the xmatch core.
            row_key = None
            if session.target == "duckdb":
                row_key = _unused_name("romerea_row", table.schema.names)
                table = table.append_column(row_key, pa.array(range(table.num_rows), pa.int64()))
            session.register(physical, table)
            qualified = f"TAP_UPLOAD.{name}"
            extra.append(TableInfo(qualified, physical, columns, row_key=row_key))
            metadata[qualified.lower()] = meta
        return self.catalog.with_tables(extra), metadata

    def _with_photometry(
        self,
        catalog: Catalog,
        query: exp.Expression,
        session: Session,
        maxrec: int | None = None,
    ) -> Catalog:
        """Materialise rome.photometry for the stars the query names (or refuse)."""
        schema = self.schemas.get("rome.photometry")
        if schema is None:  # a database of external catalogues only: unknown table
            return catalog
        rows = photometry_rows(self.db, requested_stars(query, maxrec=maxrec), schema)
        physical = f"rome_photometry_{secrets.token_hex(6)}"
        session.register(physical, rows)
        info = dataclasses.replace(_table_info(schema, self.db), physical=physical)
        return Catalog([info if t.name == schema.qualified_name else t for t in catalog.tables])

    # --- translation and execution ----------------------------------------------------

    def prepare(
        self,
        params: DaliParams,
        session: Session,
        scratch: Path | None = None,
        *,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> PreparedQuery:
        """Read the uploads, translate the query and compute its positional joins.

        Reading uploads stops with InvalidRequestError at ``deadline`` (`time.monotonic`);
        when ``cancelled()`` turns true (checked while reading uploads, between steps and
        inside the positional joins) QueryCancelled is raised."""
        query, maxrec, fmt = self.check_query_params(params)
        catalog, uploads = self.register_uploads(
            params, session, scratch, deadline=deadline, cancelled=cancelled
        )
        photometry_tree = photometry_query(query)
        if photometry_tree is not None:
            catalog = self._with_photometry(catalog, photometry_tree, session, maxrec)
        translation = translate(query, catalog, target=session.target, spatial_join_core=True)
        if translation.spatial_joins:
            per_query = {t.physical for t in catalog.tables if t.name.lower() in uploads}
            if cancelled is not None and cancelled():
                raise QueryCancelled("query was aborted")
            try:
                self.spatial_joins.register(
                    session, translation.spatial_joins, per_query, cancelled=cancelled
                )
            except MatchCancelled:
                raise QueryCancelled("query was aborted") from None
        return PreparedQuery(query, translation.sql, translation, maxrec, fmt, uploads)

    def _fields(self, prepared: PreparedQuery, schema: pa.Schema) -> list[FieldSpec]:
        outs = list(prepared.translation.columns)
        fields = []
        for i, af in enumerate(schema):
            out = outs[i] if len(outs) == len(schema) else None
            name = out.name if out is not None else af.name
            spec = None
            if out is not None and out.source is not None:
                table = self.schemas.get(out.source[0].lower())
                upload = prepared.uploads.get(out.source[0].lower(), {}).get(out.source[1])
                if table is not None and out.source[1] in table.by_name:
                    spec = FieldSpec.from_column(table.by_name[out.source[1]], name=name)
                elif upload is not None:
                    base = FieldSpec.from_arrow(name, af.type)
                    spec = dataclasses.replace(
                        base,
                        unit=upload.unit,
                        ucd=upload.ucd,
                        xtype=upload.xtype or base.xtype,
                        description=upload.description,
                    )
            if spec is None:
                spec = FieldSpec.from_arrow(name, af.type)
                if out is not None and out.xtype:
                    geometry = out.xtype in ("point", "circle", "polygon")
                    spec = dataclasses.replace(
                        spec,
                        arraysize=out.arraysize or spec.arraysize,
                        xtype=out.xtype,
                        unit=out.unit or ("deg" if geometry else None),
                    )
                elif out is not None and out.unit:
                    spec = dataclasses.replace(spec, unit=out.unit)
            fields.append(spec)
        return _unique_names(fields)

    def execute(
        self,
        prepared: PreparedQuery,
        session: Session,
        *,
        timeout: float | None,
        cancel: Cancellation | None = None,
        base_url: str | None = None,
    ) -> QueryResult:
        """Run the query. Errors before the first row raise; later ones (the execution
        duration running out while streaming) end the table with a QUERY_STATUS=ERROR INFO
        and are recorded in ``QueryResult.error``. With ``base_url`` (the service root), a
        VOTable result holding publisher DIDs gets a DataLink service descriptor."""
        if cancel is not None and cancel.is_set():
            raise QueryCancelled(_cancel_message(None, None, cancel))
        expired = threading.Event()
        timer = None
        if timeout:

            def _expire():
                expired.set()
                session.interrupt()

            timer = threading.Timer(timeout, _expire)
            timer.daemon = True
            timer.start()
        try:
            rows = batch_rows(len(prepared.translation.columns))
            schema, reader = session.arrow(prepared.sql, batch_rows=rows)
            # The first batch runs the query far enough for most runtime errors to show
            # here, where they can still become a proper DALI error response.
            first = next(reader, None)
        except QueryInterrupted:
            if timer:
                timer.cancel()
            raise QueryCancelled(_cancel_message(expired, timeout, cancel)) from None
        except QueryFailed as exc:
            if timer:
                timer.cancel()
            raise InvalidRequestError(f"query failed: {_first_line(exc)}") from None
        result = QueryResult(media_type=prepared.fmt.media_type, chunks=iter(()), timer=timer)
        fields = self._fields(prepared, schema)
        descriptors: list[str] = []
        if base_url and prepared.fmt.serializer == "votable":
            outs = list(prepared.translation.columns)
            sources = [o.source for o in outs] if len(outs) == len(fields) else []
            fields, descriptors = attach_descriptor(fields, sources, base_url)

        relative = _relative_url_columns(prepared, len(fields)) if base_url else []

        def batches() -> Iterator[pa.RecordBatch]:
            remaining = prepared.maxrec
            try:
                for batch in itertools.chain([first] if first is not None else [], reader):
                    if cancel is not None and cancel.is_set():
                        raise QueryCancelled(_cancel_message(expired, timeout, cancel))
                    if relative and base_url:
                        batch = _absolute_urls(batch, relative, base_url.rstrip("/") + "/")
                    if batch.num_rows > remaining:
                        if remaining:
                            result.rows += remaining
                            yield batch.slice(0, remaining)
                        result.overflow = True
                        return
                    remaining -= batch.num_rows
                    result.rows += batch.num_rows
                    yield batch
                    if remaining == 0:
                        result.overflow = _has_more(reader)
                        return
            except (QueryFailed, QueryInterrupted, pa.ArrowException, QueryCancelled) as exc:
                if isinstance(exc, QueryCancelled):
                    result.error = str(exc)
                elif expired.is_set() or isinstance(exc, QueryInterrupted):
                    result.error = _cancel_message(expired, timeout, cancel)
                else:
                    result.error = f"query failed: {exc}"
            finally:
                if timer:
                    timer.cancel()

        def post_infos() -> list[Info]:
            if result.error:
                return [Info("QUERY_STATUS", "ERROR", result.error)]
            if result.overflow:
                return [Info("QUERY_STATUS", "OVERFLOW")]
            return []

        infos = [
            Info("QUERY_STATUS", "OK"),
            Info("QUERY", prepared.adql),
            Info("REQUEST_DATE", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
            Info("SERVICE", f"romerea-vo {__version__}"),
        ]
        result.chunks = write_result(
            batches(),
            fields,
            prepared.fmt,
            resource_infos=infos,
            post_infos=post_infos,
            extra_resources=descriptors,
        )
        return result


SERVICE_RELATIVE_URLS = {("ivoa.obscore", "access_url"), ("ivoa.obscore", "preview")}
"""Columns stored as paths relative to the service root (the database does not know the
service's public URL): results carry them absolute, prefixed with the request's base URL
(or the configured public URL), so they work behind a proxy and after a move."""


def _relative_url_columns(prepared: PreparedQuery, n_fields: int) -> list[int]:
    outs = list(prepared.translation.columns)
    if len(outs) != n_fields:
        return []
    return [
        i
        for i, out in enumerate(outs)
        if out.source is not None
        and (out.source[0].lower(), out.source[1].lower()) in SERVICE_RELATIVE_URLS
    ]


def _absolute_urls(batch: pa.RecordBatch, columns: list[int], prefix: str) -> pa.RecordBatch:
    arrays = list(batch.columns)
    for i in columns:
        col = arrays[i]
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            arrays[i] = pc.binary_join_element_wise(pa.scalar(prefix, col.type), col, "")
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


@dataclass
class QueryResult:
    """A running query's output stream and what became known while streaming it."""

    media_type: str
    chunks: Iterator[bytes]
    rows: int = 0
    overflow: bool = False
    error: str | None = None
    timer: threading.Timer | None = None
    """The execution-duration timer; cancelled when the stream ends or by ``close``."""

    def close(self) -> None:
        """Stop the execution-duration timer: call it before the session is closed, as the
        stream may never be read to its end (a client that went away)."""
        if self.timer is not None:
            self.timer.cancel()


def _cancel_message(
    expired: threading.Event | None, timeout: float | None, cancel: object = None
) -> str:
    if expired is not None and expired.is_set() and timeout:
        return f"query exceeded the execution duration of {timeout:g} s and was stopped"
    # a sync request's token says why (client gone, execution duration); UWS's do not
    message = getattr(cancel, "message", None)
    return message or "query was aborted"


def _has_more(reader: Iterator[pa.RecordBatch]) -> bool:
    return any(batch.num_rows for batch in reader)


def _unique_names(fields: list[FieldSpec]) -> list[FieldSpec]:
    seen: dict[str, int] = {}
    out = []
    for f in fields:
        key = f.name.lower()
        if key in seen:
            seen[key] += 1
            f = FieldSpec(**{**f.__dict__, "name": f"{f.name}_{seen[key]}"})
        else:
            seen[key] = 0
        out.append(f)
    return out


def _unused_name(base: str, taken: list[str]) -> str:
    lowered = {n.lower() for n in taken}
    name, k = base, 1
    while name.lower() in lowered:
        name, k = f"{base}_{k}", k + 1
    return name


def _votable_datatype(t: pa.DataType) -> str:
    for name, arrow in ARROW_TYPES.items():
        if t == arrow and name != "unicodeChar":
            return name
    if pa.types.is_integer(t):
        return "long"
    if pa.types.is_floating(t):
        return "double"
    return "char"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = [
    "ADQLError",
    "PreparedQuery",
    "QueryCancelled",
    "QueryResult",
    "TapEngine",
    "TapLimits",
]
