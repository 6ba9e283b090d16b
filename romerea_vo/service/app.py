"""The ASGI application: TAP (sync, async), VOSI, examples and a landing page."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import html
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from astropy.time import Time
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..errors import InvalidRequestError, RomeReaError
from ..store import open_database
from ..store.catalog_tables import position_columns
from ..store.database import DatabaseError
from ..store.ddl import quote_ident
from ..store.session import QueryFailed
from ..votable.formats import RESULT_FORMATS
from ..votable.schema import adql_column_name
from . import registry, vosi
from .admission import Admission, limit_malloc_arenas
from .coverage_service import CoverageService
from .datalink import LINKS_STANDARD_ID, DataLinkService
from .examples import ExampleStar, catalogue_examples, examples_xhtml, rome_examples
from .lightcurve_service import LightcurveService
from .oai import OaiPmh, OaiRecord
from .pages import StarPages, search_form_html, star_page_path
from .params import DaliParams, read_dali_params
from .registry import RegistryIdentity
from .responses import XML_MEDIA, CatchAllErrors, TrustedHosts, dali_error, error_response
from .scs import SCS_STANDARD_ID, ConeSearchService
from .settings import ServiceConfig
from .tap import QueryCancelled, TapEngine
from .urls import service_root
from .uws import CancelToken, JobStore, JobStoreBase, uws_routes

log = logging.getLogger("romerea_vo.service")


class _StreamingWithCleanup(StreamingResponse):
    """A streamed result whose database session and admission slot are released however
    the response ends.

    Starlette runs a response's background task only after a complete send; a client
    that disconnects mid-stream would leave the session (a pooled PostgreSQL connection,
    a DuckDB cursor) open, and enough of those starve the service.
    """

    def __init__(self, content, release, *, interrupt, media_type: str):
        super().__init__(content, media_type=media_type)
        self._release = release
        self._interrupt = interrupt

    async def __call__(self, scope, receive, send) -> None:
        finished = False
        try:
            await super().__call__(scope, receive, send)
            finished = True
        finally:
            with anyio.CancelScope(shield=True):
                if not finished:  # stop the query still producing rows
                    with contextlib.suppress(Exception):
                        self._interrupt()
                await self._release()


CLIENT_GONE = "the client went away; the query was stopped"


class RequestToken(CancelToken):
    """A sync request's cancellation: the client went away, or its deadline passed."""

    def __init__(self) -> None:
        super().__init__()
        self.message: str | None = None

    def cancel(self, reason: str = "cancelled", *, message: str | None = None) -> None:
        """Set the token once, with ``message`` as the error the query ends with."""
        if self.message is None and not self.is_set():
            self.message = message
        super().cancel(reason)


async def _iterate_in(limiter, chunks):
    """``chunks`` (a blocking iterator) read in threads of ``limiter``."""
    done = object()
    while True:
        chunk = await anyio.to_thread.run_sync(next, chunks, done, limiter=limiter)
        if chunk is done:
            return
        yield chunk


async def _until_disconnect(request: Request, token: RequestToken, work) -> None:
    """Run ``work()`` while watching the connection: when the client disconnects, cancel
    ``token`` (its callbacks interrupt the engine) and interrupt again until ``work``
    returns, as an interrupt that lands just before a statement starts is lost.
    Exceptions of ``work`` propagate unchanged."""
    done = anyio.Event()
    outcome: list[BaseException] = []

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                break
        token.cancel(message=CLIENT_GONE)
        while not done.is_set():
            with anyio.move_on_after(0.25):
                await done.wait()
            if not done.is_set():
                token.repeat()

    async def run() -> None:
        try:
            await work()
        except BaseException as exc:  # handed to the caller below, unwrapped
            outcome.append(exc)
        finally:
            done.set()
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        tg.start_soon(run)
    if outcome:
        raise outcome[0]


class TapService:
    """Holds the database, the query engine and the job store for one running service."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        limits = config.limits
        self.db = open_database(
            config.db_path,
            threads=limits.duckdb_threads or None,
            memory_limit=limits.duckdb_memory_limit or None,
            work_mem=limits.pg_work_mem or None,
        )
        if not self.db.metadata_is_current():
            self.db.close()
            raise DatabaseError(
                f"{self.db.path} was ingested by another version of romerea-vo (its "
                "TAP_SCHEMA differs from votable_schemas/); ingest the fields again into a "
                "new database file"
            )
        self.engine = TapEngine(self.db, config.limits)
        self.stopping = threading.Event()
        """Set when the server begins to stop: uploads still being read give up."""
        self.admission = Admission(
            heavy_slots=limits.query_slots,
            heavy_queue=limits.query_queue,
            light_slots=limits.light_slots,
            light_queue=limits.light_queue,
            per_client=limits.client_slots,
            retry_after=limits.retry_after,
        )
        """Sync queries' slots and queues (lightcurves, DataLink, VOSI stay outside)."""
        self.started = dt.datetime.now(dt.UTC)
        self._closed = False
        self._own_work_dir = config.work_dir is None
        self.work_dir = Path(config.work_dir or tempfile.mkdtemp(prefix="romerea-vo-"))
        self.upload_dir = self.work_dir / "uploads"
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.nrows = self._table_rows()
        self.example_star: ExampleStar | None = self._find_example_star()
        """The star the examples, the landing page and ``romerea-vo demo`` name (None
        without ROME stars)."""
        self.lightcurves = LightcurveService(self.db, self.upload_dir, limits.upload_bytes)
        self.datalink = DataLinkService(
            self.db, estimate_size=self.lightcurves.estimated_size, public_url=config.public_url
        )
        self.scs = ConeSearchService(self.db, limits, public_url=config.public_url)
        self.coverage = CoverageService(self.db, public_url=config.public_url)
        self.oai = OaiPmh(
            # the records change only with the root URL a request names: built once per
            # root (a few, bounded: a Host header cannot make the cache grow)
            functools.lru_cache(maxsize=8)(self.registry_records),
            repository_name=f"{config.title} publishing registry",
            admin_email=config.metadata.contact_email or "operator@invalid",
            root_url=self.root,
        )
        self.pages = StarPages(
            self.db, self.scs, self.datalink, limits, title=config.title,
            public_url=config.public_url,
        )  # fmt: skip
        self.public_url: str | None = config.public_url
        """Root URL of the service when configured. Without it each response links to the
        root its request named, and an async job to the root of the request that created
        it (`Job.base_url`), never to another request's: a Host header cannot redirect
        other clients' links."""
        self.fallback_url: str | None = None
        """Root URL for jobs that recorded none (a worker's listening address)."""
        self.store_args: dict[str, Any] = dict(
            max_workers=config.max_workers,
            default_execution_duration=limits.default_execution_duration,
            max_execution_duration=limits.hard_execution_duration,
            default_destruction=dt.timedelta(seconds=limits.default_retention),
            max_destruction=dt.timedelta(seconds=limits.hard_retention),
            max_jobs_per_client=limits.jobs_per_client,
            max_result_bytes=limits.results_quota_bytes,
        )
        """How this service's job stores are set up (from the limits)."""
        store_args = self.store_args
        self.jobs: JobStoreBase
        if config.jobs_db:  # last: a shared store may start queued jobs at once
            if self._own_work_dir:
                self.db.close()
                raise InvalidRequestError(
                    "a PostgreSQL job store needs a work directory shared by all workers"
                )
            try:
                # PostgresError (how to install the postgres extra) without psycopg
                from .uws.pg_store import PostgresJobStore

                self.jobs = PostgresJobStore(
                    config.jobs_db, self.work_dir / "jobs", self.run_job, **store_args
                )
            except BaseException:
                self.db.close()
                raise
        else:
            self.jobs = JobStore(self.work_dir / "jobs", self.run_job, **store_args)

    def _table_rows(self) -> dict[str, int]:
        out = {}
        with self.db.session() as session:
            for table in self.engine.tables:
                if table.virtual:
                    continue
                sql = f"SELECT COUNT(*) FROM {self.db.physical_name(table)}"
                out[table.qualified_name] = session.fetchall(sql)[0][0]
        return out

    def close(self) -> None:
        """Stop the job store, close the database, remove a temporary work directory;
        again: nothing."""
        if self._closed:
            return
        self._closed = True
        self.jobs.close()
        self.db.close()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # --- params -----------------------------------------------------------------------

    def root(self, request: Request) -> str:
        """The service's root URL for links in the response to ``request``."""
        return service_root(request, self.public_url)

    async def read_params(self, request: Request, directory: Path) -> DaliParams:
        return await read_dali_params(
            request, directory, max_upload_bytes=self.config.limits.upload_bytes
        )

    # --- sync -------------------------------------------------------------------------

    async def sync(self, request: Request) -> Response:
        """``/tap/sync``: admitted to its lane (503 beyond the queue), interrupted when the
        client goes away or the execution duration, counted from here, runs out."""
        scratch = Path(tempfile.mkdtemp(dir=self.upload_dir))
        session = result = timer = None
        token = RequestToken()
        slot = contextlib.AsyncExitStack()
        lane_threads = None

        def cleanup() -> None:
            if timer is not None:
                timer.cancel()
            if result is not None:
                result.close()
            if session is not None:
                session.close()
            shutil.rmtree(scratch, ignore_errors=True)

        async def release() -> None:
            await run_in_threadpool(cleanup)
            await slot.aclose()

        async def work() -> None:
            nonlocal session, result
            nonlocal lane_threads
            lane = self.admission.lane(self.engine.is_heavy(params))
            lane_threads = lane.threads
            client = request.client.host if request.client else "unknown"
            await slot.enter_async_context(
                lane.admit(client, self.admission.retry_after, cancelled=token.is_set)
            )
            if token.is_set():
                raise QueryCancelled(token.message or "query was aborted")
            session = await anyio.to_thread.run_sync(self.db.session, limiter=lane.threads)
            token.on_cancel(session.interrupt)
            prepared = await anyio.to_thread.run_sync(
                functools.partial(
                    self.engine.prepare,
                    params,
                    session,
                    scratch,
                    deadline=deadline,
                    cancelled=lambda: token.is_set() or self.stopping.is_set(),
                ),
                limiter=lane.threads,
            )
            # the engine's timer (and PostgreSQL's statement_timeout) is a backstop one
            # second later: the request's deadline timer, started on arrival, says why
            remaining = max(deadline - time.monotonic(), 0.0) + 1.0
            result = await anyio.to_thread.run_sync(
                functools.partial(
                    self.engine.execute,
                    prepared,
                    session,
                    timeout=remaining,
                    cancel=token,
                    base_url=self.root(request),
                ),
                limiter=lane.threads,
            )

        try:
            params = await self.read_params(request, scratch)
            duration = self.config.limits.sync_execution_duration
            deadline = time.monotonic() + duration
            timer = threading.Timer(
                duration,
                token.cancel,
                kwargs={
                    "message": f"query exceeded the execution duration of {duration:g} s "
                    "and was stopped"
                },
            )
            timer.daemon = True
            timer.start()
            await _until_disconnect(request, token, work)
        except Exception as exc:  # a bug too: reported as a DALI error, the service goes on
            await release()
            if token.message and isinstance(exc, RomeReaError):  # says why it was stopped
                return dali_error(token.message, QueryCancelled.http_status)
            return error_response(exc)  # Overloaded: 503 with Retry-After
        if token.is_set() or result is None:  # the client went away while we prepared
            await release()
            return dali_error(token.message or "query was aborted", QueryCancelled.http_status)
        return _StreamingWithCleanup(
            _iterate_in(lane_threads, result.chunks),
            release,
            interrupt=lambda: token.cancel(message=CLIENT_GONE),
            media_type=result.media_type,
        )

    # --- async ------------------------------------------------------------------------

    def run_job(self, job, token) -> None:
        """UWS job runner: executes the job's query into a result file in its directory."""
        params = DaliParams(
            values={k: [v] for k, v in job.parameters.items()},
            files=dict(job.files),
        )
        session = self.db.session()
        token.on_cancel(session.interrupt)  # the job store repeats it until we return
        try:
            prepared = self.engine.prepare(
                params,
                session,
                job.directory,
                cancelled=lambda: token.is_set() or self.stopping.is_set(),
            )
            # cancel=token: an ABORT that came while the query was being prepared (before
            # the interrupt could reach the engine) still stops it.
            result = self.engine.execute(
                prepared,
                session,
                timeout=None,
                cancel=token,
                base_url=self.public_url or job.base_url or self.fallback_url,
            )
            ext = prepared.fmt.extension
            path = job.directory / f"result.{ext}"
            cap = self.config.limits.job_result_bytes
            written = 0
            with path.open("wb") as fh:
                for chunk in result.chunks:
                    written += len(chunk)
                    if cap and written > cap:
                        result.close()
                        fh.close()
                        path.unlink(missing_ok=True)
                        raise InvalidRequestError(
                            f"the result exceeds {cap} bytes, the limit for one async job; "
                            "lower MAXREC or select fewer columns"
                        )
                    fh.write(chunk)
            if result.error:
                raise QueryCancelled(result.error)
            job.add_result("result", path, result.media_type)
        finally:
            session.close()  # no timer to stop first: async jobs run with timeout=None

    # --- VOSI -------------------------------------------------------------------------

    async def capabilities(self, request: Request) -> Response:
        body = self.capabilities_document(self.root(request))
        return Response(body, media_type=XML_MEDIA)

    def capabilities_document(self, root: str) -> bytes:
        """The VOSI capabilities of the service at ``root`` (also in its registry record)."""
        limits = self.config.limits
        return vosi.capabilities_xml(
            root + "/tap",
            output_formats=[
                vosi.OutputFormatInfo(f.media_type, f.aliases, f.ivo_id)
                for f in RESULT_FORMATS.values()
            ],
            limits=vosi.Limits(
                limits.default_maxrec,
                limits.hard_maxrec,
                limits.default_execution_duration,
                limits.hard_execution_duration,
                limits.default_retention,
                limits.hard_retention,
                limits.upload_bytes,
            ),
            remote_uploads=limits.remote_uploads,
            data_models=vosi.data_models(self.engine.tables),
            extra=[
                (LINKS_STANDARD_ID, root + "/datalink/links"),
                (SCS_STANDARD_ID, root + "/scs"),
            ]
            if self.db.has_rome
            else [],  # DataLink and cone search serve ROME stars only
        )

    def registry_records(self, root: str, *, doi: str | None = None) -> list[OaiRecord]:
        """The service's ``vs:CatalogService`` record and its authority's and registry's
        records, for ``/oai`` and ``romerea-vo registry-record`` (blocking)."""
        meta = self.config.metadata
        identity = (
            RegistryIdentity.from_did_authority(meta.authority)
            if meta.authority
            else RegistryIdentity.from_did_authority(self.db.authority)
        )
        coverage = self.coverage.coverage() if self.db.has_rome else None
        service = registry.resource_record(
            metadata=meta,
            identity=identity,
            root_url=root,
            capabilities=self.capabilities_document(root),
            tableset=vosi.tables_xml(self.engine.tables, nrows=self.nrows),
            coverage=coverage,
            updated=self.started,
            doi=doi,
        )
        common: dict[str, Any] = dict(
            metadata=meta, identity=identity, root_url=root, updated=self.started
        )
        return [
            OaiRecord(identity.service_id, self.started, service),
            OaiRecord(identity.authority, self.started, registry.authority_record(**common)),
            OaiRecord(identity.registry_id, self.started, registry.registry_record(**common)),
        ]

    async def availability(self, request: Request) -> Response:
        note = f"romerea-vo {__version__} serving {len(self.db.fields)} field(s)"
        return Response(vosi.availability_xml(self.started, note), media_type=XML_MEDIA)

    async def tables(self, request: Request) -> Response:
        detail = request.query_params.get("detail", "max").lower() != "min"
        body = vosi.tables_xml(self.engine.tables, detail=detail, nrows=self.nrows)
        return Response(body, media_type=XML_MEDIA)

    async def table(self, request: Request) -> Response:
        name = request.path_params["name"]
        table = self.engine.schemas.get(name.lower())
        if table is None:
            return Response(f"no table named {name!r}\n", status_code=404, media_type="text/plain")
        return Response(
            vosi.table_xml(table, self.nrows.get(table.qualified_name)), media_type=XML_MEDIA
        )

    async def examples(self, request: Request) -> Response:
        examples = []
        if self.example_star is not None:
            examples += rome_examples(self.example_star)
        for table in self.db.catalogues:
            ra_col, dec_col = position_columns(table)
            ra, dec = self._catalogue_position(table, ra_col, dec_col)
            examples += catalogue_examples(
                table.qualified_name,
                adql_column_name(ra_col),
                adql_column_name(dec_col),
                ra,
                dec,
                rome=self.db.has_rome,
            )
        body = examples_xhtml(examples, f"{self.config.title}: examples")
        return Response(body, media_type="application/xhtml+xml")

    def _catalogue_position(self, table, ra_col: str, dec_col: str) -> tuple[float, float]:
        # The mean, not the median: PostgreSQL has no median() (an example needs no more).
        with self.db.session() as session:
            rows = session.fetchall(
                f"SELECT avg({quote_ident(ra_col)}), avg({quote_ident(dec_col)}) "
                f"FROM {self.db.physical_name(table)}"
            )
        row = rows[0] if rows else None
        return (row[0], row[1]) if row and row[0] is not None else (0.0, 0.0)

    def _find_example_star(self) -> ExampleStar | None:
        """A star that exists here, for the examples and the landing page: in the first
        field, the one whose i' lightcurve varies most against its errors (as the
        variable-star example ranks them), else the field's first star."""
        if not self.db.has_rome:
            return None
        field_index = self.db.physical_name(self.engine.schemas["rome.field_index"])
        stats = self.db.physical_name(self.engine.schemas["rome.lightcurve_stats"])
        columns = "f.field, f.field_id, f.ra, f.dec, f.did"
        with self.db.session() as session:
            for name in self.db.fields:  # in field order; a field may have no stars
                field = "'" + name.replace("'", "''") + "'"
                rows = session.fetchall(
                    f"SELECT {columns} FROM {field_index} AS f JOIN {stats} AS s "
                    "ON f.field = s.field AND f.field_id = s.field_id "
                    f"WHERE s.field = {field} AND s.filter = 'ip' AND s.n_good >= 20 "
                    "AND s.median_err > 0 "
                    "ORDER BY s.mad_std_mag / s.median_err DESC, f.field_id LIMIT 1"
                ) or session.fetchall(
                    f"SELECT {columns} FROM {field_index} AS f WHERE f.field = {field} "
                    "ORDER BY f.field_id LIMIT 1"
                )
                if rows:
                    field_name, field_id, ra, dec, did = rows[0]
                    return ExampleStar(field_name, int(field_id), float(ra), float(dec), did)
        return None

    def _table_rows_html(self) -> str:
        rows = []
        for t in self.engine.tables:
            if t.virtual:  # rome.photometry: no stored rows, made from the cubes per query
                count = "read from the HDF5 cubes on demand"
            else:
                count = f"{self.nrows.get(t.qualified_name, 0):,}"
            rows.append(
                f"<tr><td><code>{html.escape(t.qualified_name)}</code></td><td>{count}</td>"
                f"<td>{html.escape(t.description)}</td></tr>"
            )
        return "".join(rows)

    def _rome_html(self, root: str) -> str:
        """What the service offers beside TAP, with the example star's links."""
        star = self.example_star
        if star is None:
            return ""
        links = {k: html.escape(v) for k, v in star.links(root).items()}
        scs = html.escape(f"{root}/scs?RA={star.ra:.6f}&DEC={star.dec:.6f}&SR=0.005")
        return f"""<h2>Lightcurves, DataLink, cone search, SAMP</h2>
<dl>
<dt>Lightcurves</dt><dd><code>{html.escape(root)}/lightcurve?ID=&lt;did&gt;</code>
[<code>&amp;BAND=gp|rp|ip</code>] [<code>&amp;QUALITY=good|valid|all</code>]
[<code>&amp;RESPONSEFORMAT=votable|csv|fits|png</code>]: a star's points, every band in one
time-series VOTable, read from the photometry cubes on request. Every TAP result with a
<code>did</code> column offers it as a service: in TOPCAT's <i>Activation Actions</i> tick
<i>Invoke Service</i>, set <i>Plot Table</i>, and click a row.</dd>
<dt>DataLink</dt><dd><code>{html.escape(root)}/datalink/links?ID=&lt;did&gt;</code>: each
star's lightcurve per band and all bands, a PNG preview, and TAP queries for its catalogue
rows.</dd>
<dt>Simple Cone Search</dt><dd><code>{html.escape(root)}/scs?RA=&amp;DEC=&amp;SR=</code>
(degrees) over the field index.</dd>
<dt>SAMP bridge</dt><dd><code>romerea-vo samp --service {html.escape(root)}</code>: select or
click stars in TOPCAT (or Aladin) and their lightcurves arrive in TOPCAT as tables.</dd>
</dl>
<h2>An example star</h2>
<p>{html.escape(star.field)} star {star.field_id} at RA {star.ra:.6f}&deg;,
Dec {star.dec:.6f}&deg;, DID <code>{html.escape(star.did)}</code>:
<a href="{links["lightcurve"]}">lightcurve (VOTable)</a>,
<a href="{links["plot"]}">plot (PNG)</a>,
<a href="{links["datalink"]}">DataLink links</a>,
<a href="{html.escape(root + star_page_path(star.field, star.field_id))}">its page</a>,
<a href="{scs}">cone search around it</a>.</p>
"""

    def _rows_or_none(self, sql: str) -> list[tuple]:
        """Rows of a small query of ours; none when it fails (e.g. an older database)."""
        try:
            with self.db.session() as session:
                return session.fetchall(sql)
        except QueryFailed:
            return []

    def _example_position(self) -> tuple[str, float, float]:
        field_index = self.db.physical_name(self.engine.schemas["rome.field_index"])
        rows = self._rows_or_none(
            f"SELECT field, avg(ra), avg(dec) FROM {field_index} "
            "GROUP BY field ORDER BY field LIMIT 1"
        )
        return rows[0] if rows else ("ROME-FIELD-01", 268.0, -29.0)

    def _candidate_counts(self) -> dict[str, int]:
        """Microlensing candidates (classification 'candidate') per field."""
        schema = self.engine.schemas.get("rome.microlensing_candidates")
        if schema is None:
            return {}
        rows = self._rows_or_none(
            f"SELECT field, COUNT(*) FROM {self.db.physical_name(schema)} "
            "WHERE classification = 'candidate' GROUP BY field"
        )
        return {r[0]: int(r[1]) for r in rows}

    def _contact_html(self) -> str:
        meta = self.config.metadata
        if not (meta.contact_name or meta.contact_email):
            return ""
        name = html.escape(meta.contact_name or meta.contact_email)
        if meta.contact_email:
            name = f'<a href="mailto:{html.escape(meta.contact_email)}">{name}</a>'
        return f"\n<p>Contact: {name}</p>"

    def _search_html(self, root: str) -> str:
        """The landing page's cone-search form and star-page pointer (ROME stars only)."""
        if not self.db.has_rome:
            return ""
        return f"""<h2>Find stars</h2>
<p>Stars of the field index within a radius of a position, as a web page whose rows
link to each star's page (identifiers, catalogue rows, lightcurve plot, links).
A star's page from its DID: <code>{html.escape(root)}/star?ID=&lt;did&gt;</code>.</p>
{search_form_html(root)}
"""

    def _coverage_html(self, root: str) -> str:
        """The landing page's coverage: the footprints' plot and the numbers (blocking:
        the coverage is computed on first use)."""
        if not self.db.has_rome:
            return ""
        summary = self.coverage.coverage().summary()
        links = {k: html.escape(v) for k, v in self.coverage.links(root).items()}

        def mjd(value: float | None) -> str:
            if value is None:
                return "?"
            return f"MJD {value:.2f} ({Time(value, format='mjd').to_value('iso', 'date')})"

        span = f"{mjd(summary['t_min_mjd'])} to {mjd(summary['t_max_mjd'])}"
        bands = ""
        if summary["em_min_m"] is not None:
            bands = (
                f"; {summary['em_min_m'] * 1e9:.0f}–{summary['em_max_m'] * 1e9:.0f} nm "
                "(SDSS g′, r′, i′)"
            )
        return f"""<h2>Coverage</h2>
<p>{summary["area_deg2"]:.2f} deg² in {len(summary["fields"])} field(s); {span}{bands}.
MOC 2.0: <a href="{links["moc_fits"]}">FITS</a>, <a href="{links["moc_json"]}">JSON</a>,
<a href="{links["moc_ascii"]}">ASCII</a>; fields × exposures as a space–time MOC:
<a href="{links["stmoc_fits"]}">FITS</a>; everything as <a href="{links["summary"]}">JSON</a>.
</p>
<p><img src="{links["plot"]}" alt="The fields' footprints on the sky" width="440"></p>
"""

    async def landing(self, request: Request) -> Response:
        root = self.root(request)
        tap = root + "/tap"
        counts = self._candidate_counts()
        coverage = await run_in_threadpool(self._coverage_html, root)
        fields = "".join(
            f"<tr><td>{html.escape(f.name)}</td><td>{f.n_stars:,}</td><td>{f.n_images:,}</td>"
            f"<td>{html.escape(f.era)}</td><td>{counts.get(f.name, 0):,}</td></tr>"
            for f in self.db.fields.values()
        )
        first_table = self.engine.tables[0].qualified_name
        meta = self.config.metadata
        body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.config.title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.2em .6em;
text-align:left;vertical-align:top}}code,pre{{background:#f4f4f4}}dd{{margin-bottom:.6em}}
</style></head><body>
<h1>{html.escape(self.config.title)}</h1>
<p>{html.escape(meta.description)}</p>{self._contact_html()}
<p>romerea-vo {__version__}: the ROME/REA survey's field data products in the Virtual
Observatory.</p>
<h2>TAP (ADQL)</h2>
<p>An IVOA TAP 1.1 service. TAP URL: <code>{html.escape(tap)}</code></p>
<ul><li><a href="{tap}/capabilities">capabilities</a></li>
<li><a href="{tap}/tables">tables</a></li><li><a href="{tap}/examples">examples</a>
(queries that return rows here; in TOPCAT's TAP window: <i>Examples &rarr;
Service-Provided</i>)</li>
<li><a href="{tap}/availability">availability</a></li>
<li><a href="{tap}/async">async jobs</a></li></ul>
<p>TOPCAT: <i>VO &rarr; Table Access Protocol (TAP) Query</i>, enter the TAP URL above.</p>
<pre>import pyvo
tap = pyvo.dal.TAPService("{html.escape(tap)}")
tap.search("SELECT TOP 10 * FROM {html.escape(first_table)}").to_table()</pre>
{self._rome_html(root)}{self._search_html(root)}{coverage}<h2>Fields</h2>
<table><tr><th>field</th><th>stars</th><th>images</th><th>format era</th>
<th>microlensing candidates</th></tr>
{fields}</table>
<h2>Tables</h2><table><tr><th>table</th><th>rows</th><th>description</th></tr>
{self._table_rows_html()}</table>
</body></html>"""
        return HTMLResponse(body)

    async def tap_root(self, request: Request) -> Response:
        return RedirectResponse(str(request.base_url), status_code=303)


def create_app(config: ServiceConfig) -> Starlette:
    """The Starlette application for ``config`` (the database must exist)."""
    limit_malloc_arenas()
    service = TapService(config)
    routes = [
        Route("/", service.landing),
        Route("/tap", service.tap_root),
        Route("/tap/sync", service.sync, methods=["GET", "POST"]),
        Route("/tap/capabilities", service.capabilities),
        Route("/tap/availability", service.availability),
        Route("/tap/tables", service.tables),
        Route("/tap/tables/{name}", service.table),
        Route("/tap/examples", service.examples),
        *uws_routes(service.jobs, read_params=service.read_params, prefix="/tap/async"),
        Route("/coverage", service.coverage.summary),
        Route("/oai", service.oai.endpoint, methods=["GET", "POST"]),
        Route("/coverage/{name}", service.coverage.document),
        Route("/coverage/{field}/{name}", service.coverage.document),
    ]
    lightcurve_jobs: JobStore | None = None
    if service.db.has_rome:  # a database of external catalogues only has no ROME stars
        lightcurves = service.lightcurves
        if not config.jobs_db:  # bulk jobs live in this process: one worker only
            lightcurve_jobs = JobStore(
                service.work_dir / "lightcurve_jobs",
                lightcurves.run_job,
                **{**service.store_args, "max_workers": 1},
            )
            routes += uws_routes(
                lightcurve_jobs, read_params=service.read_params, prefix="/lightcurve/async"
            )
        routes += [
            Route("/lightcurve", lightcurves.endpoint, methods=["GET", "POST"]),
            Route("/datalink/links", service.datalink.endpoint, methods=["GET", "POST"]),
            Route("/scs", service.scs.endpoint, methods=["GET", "POST"]),
            Route("/star", service.pages.resolve),
            Route("/star/{field}/{field_id}", service.pages.star),
            Route("/search", service.pages.search),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.stopping.set()
        if lightcurve_jobs is not None:
            lightcurve_jobs.close()
        service.close()

    middleware = [Middleware(CatchAllErrors)]
    if config.allowed_hosts:
        middleware.append(Middleware(TrustedHosts, allowed_hosts=config.allowed_hosts))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.service = service
    return app
