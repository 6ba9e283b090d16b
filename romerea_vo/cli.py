"""The ``romerea-vo`` command."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import astropy.units as u
import numpy as np

from . import __version__
from .errors import InvalidRequestError, RomeReaError

if TYPE_CHECKING:  # the service is imported when a command serves, not at start-up
    from .samp.bridge import Bridge
    from .samp.sources import ServiceSource
    from .service.app import TapService
    from .service.settings import ServiceConfig

OUTPUT_FORMATS = {
    ".vot": "votable",
    ".xml": "votable",
    ".votable": "votable",
    ".csv": "ascii.csv",
    ".ecsv": "ascii.ecsv",
    ".fits": "fits",
    ".fit": "fits",
    ".png": "png",
}
DEMO_FIELD = "ROME-FIELD-01"
DEMO_SIZE: dict[str, Any] = {"n_stars": 2000, "n_images": 400, "seed": 1}


def _radius(text: str) -> u.Quantity:
    """``1arcsec``, ``0.5 arcmin``, ``2`` (arcsec) -> Quantity."""
    try:
        q = u.Quantity(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"not an angle: {text!r} (try 1arcsec)") from None
    if q.unit == u.dimensionless_unscaled:
        q = q.value * u.arcsec
    if not q.unit.is_equivalent(u.deg):
        raise argparse.ArgumentTypeError(f"not an angle: {text!r} (try 1arcsec)")
    return q


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _default_cache() -> Path:
    if os.environ.get("ROMEREA_VO_CACHE"):
        return Path(os.environ["ROMEREA_VO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "romerea-vo"


# --- commands ------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> int:
    from .products.synthetic import SignalRates, synthesize_field

    out = synthesize_field(
        args.outdir,
        field=args.field,
        n_stars=args.stars,
        n_images=args.images,
        seed=args.seed,
        progress=not args.quiet,
        rates=SignalRates(args.event_rate, args.periodic_rate, args.irregular_rate),
    )
    print(f"wrote synthetic field {args.field} to {out}")
    return 0


def field_summary(directory: str | Path) -> str:
    """The text ``romerea-vo info`` prints."""
    from .products import open_field
    from .products.layout import QUADRANTS

    with open_field(directory) as field:
        lay = field.photometry_layout  # opens (headers of) all four cubes and checks them
        images = field.images
        hjd = np.asarray(images["hjd"])
        lines = [
            f"field            {field.name}",
            f"directory        {field.directory}",
            f"format era       {field.era} ({lay.width}-column cubes, "
            f"{len(field.datasets.colnames)}-column DATASETS, "
            f"{len(images.colnames)}-column IMAGES)",
            f"stars            {field.n_stars}",
        ]
        for q in QUADRANTS:
            cube = field.cube(q)
            size = cube.path.stat().st_size / 2**20
            lines.append(
                f"  quadrant {q}     {field.quadrant_counts[q]:>8} stars  "
                f"{cube.path.name} {cube.shape} {size:,.1f} MiB"
            )
        gaia = field.field_index["gaia_source_id"]
        lines.append(
            f"Gaia matches     {int((~gaia.mask).sum())} of {field.n_stars}"
            + (f" ({field.gaia_release})" if field.gaia_release else "")
        )
        lines.append(f"images           {field.n_images}")
        filt = np.asarray(images["filter"])
        for band in sorted(set(filt)):
            lines.append(f"  {band:<14} {int((filt == band).sum()):>8}")
        good = hjd[hjd > 0]
        if len(good):
            from astropy.time import Time

            first, last = Time([good.min(), good.max()], format="jd").iso
            lines.append(
                f"time span        HJD {good.min():.5f} - {good.max():.5f} "
                f"({first[:10]} - {last[:10]}, {good.max() - good.min():.1f} d)"
            )
        lines.append(f"  no photometry  {int((hjd <= 0).sum())} images (HJD 0)")
        lines.append(f"datasets         {len(field.datasets)}")
        codes = np.asarray(images["dataset_code"])
        for row in field.datasets:
            code = row["dataset_code"]
            detected = int(
                (np.asarray(field.field_index[field.dataset_index_column(code)]) > 0).sum()
            )
            mark = "  (primary reference)" if row["primary_ref"] == 1 else ""
            lines.append(
                f"  {code:<44} {row['dataset_filter']:<3} {int((codes == code).sum()):>5} images "
                f"{detected:>8} stars{mark}"
            )
        lines.append(f"cube columns     {', '.join(lay.columns)}")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    print(field_summary(args.field_dir))
    if args.db:
        print(candidate_summary(Path(args.db), args.field_dir))
    return 0


def candidate_summary(db_path: Path, field_dir: str | Path) -> str:
    """The field's microlensing-candidate counts in a romerea-vo database (one line)."""
    from .products import open_field
    from .store.database import Database
    from .votable.schema import load_table_schema

    with open_field(field_dir) as field:
        name = field.name
    db = Database(db_path)
    try:
        with db.session() as session:
            rows = session.fetchall(
                "SELECT classification, COUNT(*) FROM "
                f"{db.physical_name(load_table_schema('microlensing_candidates'))} "
                "WHERE field = ? GROUP BY classification",
                [name],
            )
    finally:
        db.close()
    counts = dict(rows)
    fitted = sum(counts.values())
    return (
        f"microlensing     {counts.get('candidate', 0)} candidates among {fitted} fitted stars "
        f"(rome.microlensing_candidates in {db_path})"
    )


def _export_table(table, path: Path) -> None:
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidRequestError(
            f"cannot tell the output format of {path.name}; use one of "
            f"{', '.join(sorted(OUTPUT_FORMATS))}"
        )
    if fmt == "png":
        from .plotting import plot_lightcurve

        plot_lightcurve(table, path)
        return
    out = table.copy(copy_data=False)
    meta = {k: v for k, v in out.meta.items() if v is not None}
    if fmt == "fits":  # FITS keywords are at most 8 characters
        keys = {"field_id": "FIELD_ID", "quadrant_id": "QUAD_ID", "gaia_source_id": "GAIA_ID",
                "mag_column": "MAGCOL", "photometry_era": "PHOTERA"}  # fmt: skip
        meta = {keys.get(k, k.upper()[:8]): v for k, v in meta.items()}
    out.meta = meta
    out.write(path, format=fmt, overwrite=True)


def cmd_lightcurve(args: argparse.Namespace) -> int:
    if args.url:
        return _remote_lightcurve(args)
    if not args.field_dir:
        raise InvalidRequestError("give FIELD_DIR, or --url SERVICE for a lightcurve service")
    from . import lightcurves
    from .products import open_field

    with open_field(args.field_dir) as field:
        if args.field_id is not None:
            star = field.star(args.field_id)
        else:
            star = field.nearest_star(args.ra, args.dec, args.radius)
        table = lightcurves.lightcurve(
            field,
            star,
            filters=_split(args.filter),
            datasets=_split(args.dataset),
            quality=args.qc,
            mag_column=args.mag_column,
        )
    where = (
        f" ({star.separation_arcsec:.3f} arcsec from the position)"
        if star.separation_arcsec
        else ""
    )
    summary = (
        f"{field.name} field_id {star.field_id}{where}: quadrant {star.quadrant}, quadrant_id "
        f"{star.quadrant_id} (HDF5 row {star.row}); {len(table)} {args.qc} points"
    )
    if args.output:
        _export_table(table, Path(args.output))
        print(f"{summary} -> {args.output}")
    else:
        print(summary)
        table.pprint(max_lines=40, max_width=200)
    return 0


# --- remote lightcurves (--url) -------------------------------------------------------

_REMOTE_FORMATS = {"votable": "votable", "ascii.csv": "csv", "fits": "fits", "png": "png"}
"""Output formats (OUTPUT_FORMATS values) the service writes itself: RESPONSEFORMAT."""


def _http_get(url: str, params: list[tuple[str, str]]) -> bytes:
    """GET ``url?params``; a DALI error document or an HTTP failure raises RomeReaError."""
    from .client import ServiceClient

    client = ServiceClient(url, name="the romerea-vo service")
    try:
        return client.get("", params)
    finally:
        client.close()


def _tap_rows(base: str, query: str) -> list[dict[str, str]]:
    """Rows of a TAP sync query on the service at ``base`` (CSV, as text)."""
    import csv
    import io

    body = _http_get(
        f"{base}/tap/sync",
        [("REQUEST", "doQuery"), ("LANG", "ADQL"), ("QUERY", query), ("RESPONSEFORMAT", "csv")],
    )
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"))))


def _adql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _remote_star(args: argparse.Namespace, base: str) -> tuple[str, str]:
    """(DID, description) of the star asked for, resolved with TAP on the service."""
    where_field = f" AND field = {_adql_string(args.field)}" if args.field else ""
    if args.field_id is not None:
        rows = _tap_rows(
            base,
            f"SELECT field, field_id, did FROM rome.field_index WHERE field_id = "
            f"{int(args.field_id)}{where_field}",
        )
        if not rows:
            where = f" in field {args.field}" if args.field else ""
            raise RomeReaError(f"{base}: no star with field_id {args.field_id}{where}")
        if len(rows) > 1:
            fields = ", ".join(r["field"] for r in rows)
            raise InvalidRequestError(
                f"field_id {args.field_id} exists in several fields ({fields}); add --field"
            )
        row = rows[0]
        return row["did"], f"{row['field']} field_id {row['field_id']}"
    radius = float(args.radius.to_value(u.deg))
    point = f"POINT('ICRS', {float(args.ra)!r}, {float(args.dec)!r})"
    rows = _tap_rows(
        base,
        f"SELECT TOP 1 field, field_id, did, DISTANCE(POINT('ICRS', ra, dec), {point}) AS dist "
        f"FROM rome.field_index WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), "
        f"CIRCLE('ICRS', {float(args.ra)!r}, {float(args.dec)!r}, {radius!r})){where_field} "
        "ORDER BY dist",
    )
    if not rows:
        raise RomeReaError(f"{base}: no star within {args.radius} of RA {args.ra}, Dec {args.dec}")
    row = rows[0]
    sep = float(row["dist"]) * 3600
    return row["did"], f"{row['field']} field_id {row['field_id']} ({sep:.3f} arcsec away)"


def _remote_lightcurve(args: argparse.Namespace) -> int:
    """``romerea-vo lightcurve --url``: the same lightcurve from a running service."""
    import io

    from .votable.reader import votable_to_table

    if args.mag_column:
        raise InvalidRequestError("--mag-column is not supported with --url")
    base = args.url.rstrip("/")
    if base.endswith("/tap"):
        base = base[: -len("/tap")]
    did, who = _remote_star(args, base)
    params = [("ID", did), ("QUALITY", args.qc)]
    params += [("BAND", b) for b in _split(args.filter) or ()]
    params += [("DATASET", d) for d in _split(args.dataset) or ()]
    out = Path(args.output) if args.output else None
    fmt = OUTPUT_FORMATS.get(out.suffix.lower()) if out else "votable"
    if fmt is None:
        assert out is not None  # no output file: "votable"
        raise InvalidRequestError(
            f"cannot tell the output format of {out.name}; use one of "
            f"{', '.join(sorted(OUTPUT_FORMATS))}"
        )
    direct = _REMOTE_FORMATS.get(fmt) if out else None
    body = _http_get(f"{base}/lightcurve", [*params, ("RESPONSEFORMAT", direct or "votable")])
    if direct == "png":
        assert out is not None  # direct: only for an output file
        out.write_bytes(body)
        print(f"{who}: {did} -> {out}")
        return 0
    if direct is not None:
        assert out is not None
        out.write_bytes(body)
        if direct == "votable":
            n = len(votable_to_table(io.BytesIO(body)))
        elif direct == "csv":
            n = max(0, body.count(b"\n") - 1)
        else:
            from astropy.io import fits

            with fits.open(io.BytesIO(body)) as hdul:
                n = hdul[1].header["NAXIS2"]
        print(f"{who}: {n} {args.qc} points -> {out}")
        return 0
    table = votable_to_table(io.BytesIO(body))
    summary = f"{who}: {len(table)} {args.qc} points"
    if out:
        table.write(out, format=fmt, overwrite=True)
        print(f"{summary} -> {out}")
    else:
        print(f"{summary} ({did})")
        table.pprint(max_lines=40, max_width=200)
    return 0


def ensure_demo_field(cache: Path, quiet: bool = False) -> Path:
    """The demo field in the cache, synthesised (atomically) if absent or made by
    another version of the generator."""
    from astropy.table import Table

    from .products.synthetic import GENERATOR_VERSION, synthesize_field, truth_filename

    target = cache / "demo" / DEMO_FIELD
    truth = target / truth_filename(DEMO_FIELD)
    if (target / f"{DEMO_FIELD}_field_crossmatch.fits").exists() and truth.exists():
        made_by = Table.read(truth, format="ascii.ecsv").meta.get("generator_version")
        if made_by == GENERATOR_VERSION:
            return target
    partial = target.with_name(f".{DEMO_FIELD}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"synthesising demo field {DEMO_FIELD} into {target} ...", flush=True)
    synthesize_field(partial, field=DEMO_FIELD, progress=not quiet, **DEMO_SIZE)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def cmd_demo(args: argparse.Namespace) -> int:
    from astropy.table import Table

    cache = Path(args.cache_dir) if args.cache_dir else _default_cache()
    directory = ensure_demo_field(cache, quiet=args.quiet)
    print(field_summary(directory))
    truth_path = directory / f"{DEMO_FIELD}_synthetic_truth.ecsv"
    if truth_path.exists():
        truth = Table.read(truth_path)
        events = truth[truth["kind"] == "microlensing"]
        n_signals = int(np.count_nonzero(truth["kind"] != "constant"))
        if len(events):
            fid = int(events["field_id"][0])
            print(
                f"\n{n_signals} injected signals ({len(events)} microlensing events); "
                f"plot one:\n  romerea-vo lightcurve {directory} --field-id {fid} -o event.png"
            )
    if args.no_serve:
        return 0
    from .service.settings import ServiceConfig

    db_path = cache / "demo" / "demo.duckdb"
    _ensure_ingested(db_path, [directory], quiet=args.quiet, owned=True)
    return _serve(
        ServiceConfig(db_path=db_path),
        args.host,
        args.port,
        next_steps=True,
        samp=args.samp,
        quiet=args.quiet,
    )


class _InProcessBridge:
    """The SAMP bridge ``demo --samp`` runs beside the service, on the service's URL.

    It starts in a thread begun before the server accepts connections: its first
    requests to the service wait in the listening socket's backlog until uvicorn
    serves them, so no readiness poll is needed. Hub mode ``auto``: the running hub,
    else one of its own. Closed after the service has stopped."""

    def __init__(self, url: str, quiet: bool):
        import threading

        logging.basicConfig(
            level=logging.WARNING if quiet else logging.INFO,
            format="%(asctime)s %(levelname)s %(message)s",
        )
        self.url = url
        self.bridge: Bridge | None = None
        self.source: ServiceSource | None = None
        self._thread = threading.Thread(target=self._start, name="romerea-demo-samp", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _start(self) -> None:
        from .samp.bridge import Bridge
        from .samp.sources import ServiceSource

        try:
            self.source = source = ServiceSource(self.url)
            self.bridge = bridge = Bridge(source, hub="auto").start()
        except Exception as exc:  # any failure: say so in one line, keep serving
            print(f"romerea-vo: error: the SAMP bridge did not start: {exc}", file=sys.stderr)
            return
        print(
            f"SAMP bridge registered as {bridge.client_id} "
            f"(hub {(bridge.hub_params or {}).get('samp.hub.xmlrpc.url')})",
            flush=True,
        )

    def close(self) -> None:
        """Unregister the bridge (stopping the hub only if it started one)."""
        self._thread.join(timeout=120)
        if self.bridge is not None:
            self.bridge.close()
            print("SAMP bridge stopped", flush=True)
        if self.source is not None:
            self.source.close()


def _next_steps(service: TapService, url: str, samp: bool) -> str:
    """What ``demo`` prints after the TAP URL: the SAMP bridge and a star to try."""
    lines = []
    if samp:
        lines.append("SAMP bridge: starting here (joins the running SAMP hub, else starts one)")
    else:
        lines += [
            "Next, the SAMP bridge (stars selected in TOPCAT -> their lightcurves in TOPCAT):",
            f"  romerea-vo samp --service {url}",
        ]
    star = service.example_star
    if star is not None:
        links = star.links(url)
        lines += [
            f"Example star: {star.field} {star.field_id}, DID {star.did}",
            f"  lightcurve: {links['lightcurve']}",
            f"  plot:       {links['plot']}",
        ]
    return "\n".join(lines)


def _ensure_ingested(
    db_path: Path, directories: list[Path], quiet: bool = False, owned: bool = False
) -> None:
    """Ingest ``directories`` into ``db_path`` unless it already holds them, up to date.

    ``owned``: the database is our cache (demo, serve FIELD_DIR), so one made by another
    version of romerea-vo is rebuilt rather than reported."""
    from .store import ingest_fields
    from .store.database import Database, DatabaseError

    if db_path.exists():
        try:
            db = Database(db_path)
            known = {f.directory for f in db.fields.values()}
            current = db.metadata_is_current()
            db.close()
        except DatabaseError:
            known, current = set(), False
        if not current and owned:
            db_path.unlink()
            db_path.with_name(db_path.name + ".wal").unlink(missing_ok=True)
            known = set()
        newest = max(
            (p.stat().st_mtime for d in directories for p in Path(d).iterdir() if p.is_file()),
            default=0,
        )
        wanted = {Path(d).resolve() for d in directories}
        if current and wanted <= known and newest < db_path.stat().st_mtime:
            return
    if not quiet:
        print(f"ingesting {len(directories)} field(s) into {db_path} ...", flush=True)
    # workers=None: as many processes as cores for a large field, as `ingest` does
    for summary in ingest_fields(db_path, directories, progress=not quiet, workers=None):
        if not quiet:
            print("  " + ", ".join(f"{k}: {v}" for k, v in summary.items()), flush=True)


def _serve(
    config: ServiceConfig,
    host: str,
    port: int,
    *,
    workers: int = 1,
    log_level: str = "warning",
    next_steps: bool = False,
    samp: bool = False,
    quiet: bool = False,
) -> int:
    """Serve ``config`` until Ctrl-C; ``next_steps`` (demo) prints the SAMP command and
    an example star, ``samp`` runs the SAMP bridge in this process too."""
    from .service.app import create_app
    from .service.settings import configure_logging
    from .service.workers import check_config, listening_socket

    configure_logging(log_level)
    check_config(config, workers)
    # the port first: a start that fails there leaves no work directory behind
    sock = listening_socket(host, port, reuse_port=workers > 1)
    try:
        # several workers each build the app in their own process (serve_workers)
        app = create_app(config) if workers == 1 else None
    except BaseException:
        sock.close()
        raise
    try:
        return _run_server(
            app, config, sock, host, workers=workers, log_level=log_level,
            next_steps=next_steps, samp=samp, quiet=quiet,
        )  # fmt: skip
    finally:
        if app is not None:  # a no-op after a normal stop, which closed it already
            app.state.service.close()


def _run_server(
    app, config: ServiceConfig, sock, host: str, *, workers: int, log_level: str,
    next_steps: bool, samp: bool, quiet: bool,
) -> int:  # fmt: skip
    import uvicorn

    from .service.workers import GRACEFUL_SHUTDOWN, serve_workers

    class _StoppingServer(uvicorn.Server):
        """Tells the service it is stopping as soon as a signal comes, so that requests
        still reading an upload give up instead of holding the shutdown up."""

        service: TapService

        def handle_exit(self, sig, frame) -> None:
            self.service.stopping.set()
            super().handle_exit(sig, frame)

    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}"
    print(
        f"\nTAP service: {url}/tap   (landing page {url}/)\n"
        f"  TOPCAT: VO > Table Access Protocol (TAP) Query, TAP URL {url}/tap\n"
        f'  pyvo:   pyvo.dal.TAPService("{url}/tap").search('
        f'"SELECT TOP 10 * FROM rome.field_index")',
        flush=True,
    )
    if next_steps and app is not None:
        print(_next_steps(app.state.service, url, samp), flush=True)
    print("Ctrl-C stops the service.", flush=True)
    if app is None:
        serve_workers(config, sock, workers, listen_url=url, log_level=log_level)
        print("service stopped", flush=True)
        return 0
    bridge = _InProcessBridge(url, quiet) if samp else None
    if bridge is not None:
        bridge.start()
    server = _StoppingServer(
        uvicorn.Config(
            app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN
        )
    )
    server.service = app.state.service
    try:
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after shutdown
            server.run(sockets=[sock])
    finally:
        if bridge is not None:
            bridge.close()
    print("service stopped", flush=True)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from .store import ingest_fields
    from .store.postgres import ingest_fields_pg, is_postgres_url, redact

    if is_postgres_url(args.db):
        summaries = ingest_fields_pg(
            args.db,
            args.field_dirs,
            authority=args.authority,
            progress=not args.quiet,
            workers=args.workers,
        )
        shown = redact(args.db)
    else:
        summaries = ingest_fields(
            args.db,
            args.field_dirs,
            authority=args.authority,
            progress=not args.quiet,
            workers=args.workers,
        )
        shown = str(Path(args.db).resolve())
    for summary in summaries:
        print(", ".join(f"{k}: {v}" for k, v in summary.items()))
    print(f"database: {shown}")
    return 0


def cmd_ingest_catalog(args: argparse.Namespace) -> int:
    from .store.catalog_ingest import ingest_catalog
    from .store.catalog_tables import position_columns
    from .store.database import Database
    from .store.ddl import physical_name

    def warn(message: str) -> None:
        print(f"romerea-vo: warning: {message}", file=sys.stderr)

    table = ingest_catalog(
        args.file,
        args.db,
        args.table,
        ra_col=args.ra_col,
        dec_col=args.dec_col,
        description=args.description,
        fmt=args.format,
        report=warn,
    )
    ra, dec = position_columns(table)
    db = Database(args.db)
    try:
        row = db.cursor().execute(f"SELECT COUNT(*) FROM {physical_name(table)}").fetchone()
        assert row is not None  # COUNT(*) always answers
        (n_rows,) = row
    finally:
        db.close()
    print(
        f"{table.qualified_name}: {n_rows:,} rows, {len(table.columns)} columns from "
        f"{args.file} (positions: {ra}, {dec})"
    )
    print(f"database: {Path(args.db).resolve()}")
    return 0


_SERVE_FLAGS = ("db", "host", "port", "workers", "job_threads", "work_dir", "jobs_db",
                "public_url", "log_level")  # fmt: skip
"""``serve`` flags that override the [service] keys of the same name in ``--config``."""
_LIMIT_FLAGS = {
    "jobs_per_client": "jobs_per_client",
    "results_quota_bytes": "results_quota",
    "job_result_bytes": "job_result_limit",
    "upload_columns": "upload_columns",
    "query_slots": "query_slots",
    "query_queue": "query_queue",
    "client_slots": "client_slots",
    "duckdb_memory_limit": "memory_limit",
}
"""[limits] keys and the ``serve`` flags that override them."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    import hashlib

    from .service.settings import ServiceConfig, Settings, read_settings, settings_from_dict
    from .store.postgres import is_postgres_url

    settings = read_settings(args.config) if args.config else Settings()
    overrides = {k: getattr(args, k) for k in _SERVE_FLAGS if getattr(args, k) is not None}
    if overrides:  # the same checks as for the file's values
        merged = {**dataclasses.asdict(settings.service), **overrides}
        checked = settings_from_dict({"service": merged}, source="command line")
        settings.service = checked.service
    limits = {k: getattr(args, f) for k, f in _LIMIT_FLAGS.items() if getattr(args, f) is not None}
    if limits:
        checked = settings_from_dict(
            {"limits": {**dataclasses.asdict(settings.limits), **limits}}, source="command line"
        )
        settings.limits = checked.limits
    server = settings.service
    dirs = [Path(d) for d in args.field_dirs]
    if server.db and is_postgres_url(server.db):
        if dirs:
            raise InvalidRequestError(
                "with a PostgreSQL database, ingest the fields first (romerea-vo ingest "
                "FIELD_DIR --db URL), then serve --db URL alone"
            )
    elif server.db:
        if dirs:
            _ensure_ingested(Path(server.db), dirs, quiet=args.quiet)
    elif dirs:
        key = hashlib.sha256("\n".join(sorted(str(d.resolve()) for d in dirs)).encode())
        db_path = _default_cache() / "serve" / f"{key.hexdigest()[:16]}.duckdb"
        _ensure_ingested(db_path, dirs, quiet=args.quiet, owned=True)
        server.db = str(db_path)
    else:
        raise InvalidRequestError("give --db PATH, field directories, --config FILE, or both")
    return _serve(
        ServiceConfig.from_settings(settings),
        server.host,
        server.port,
        workers=server.workers,
        log_level=server.log_level.lower(),
    )


def cmd_export_dachs(args: argparse.Namespace) -> int:
    from .store.dachs_export import export_dachs

    def report(table) -> None:
        if not args.quiet:
            print(f"{table.name}: {table.n_rows} rows -> {table.path}", flush=True)

    result = export_dachs(
        args.db,
        args.outdir,
        schema=args.schema,
        index=args.index,
        cone_service=args.cone_service,
        service_url=args.service_url,
        overwrite=args.overwrite,
        report=report,
    )
    print(f"resource descriptor: {result.rd_path} (in DaCHS: dachs imp <dir>/q)")
    return 0


def cmd_registry_record(args: argparse.Namespace) -> int:
    import dataclasses as dc

    from lxml import etree

    from .service.app import TapService
    from .service.settings import ServiceConfig, Settings, read_settings

    settings = read_settings(args.config) if args.config else Settings()
    if args.db:
        settings.service.db = args.db
    if args.public_url:
        settings.service.public_url = args.public_url
    if args.authority:
        settings.metadata = dc.replace(settings.metadata, authority=args.authority)
    config = ServiceConfig.from_settings(settings)
    if not config.public_url:
        raise InvalidRequestError(
            "a registry record names the URLs clients reach the service at: give "
            "--public-url URL (or [service] public_url in --config)"
        )
    service = TapService(config)
    try:
        record = service.registry_records(config.public_url, doi=args.doi)[0]
    finally:
        service.close()
    document = etree.tostring(record.resource, xml_declaration=True, encoding="UTF-8",
                              pretty_print=True)  # fmt: skip
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} exists (give --overwrite to replace it)")
    output.write_bytes(document)
    print(f"{record.identifier}: VOResource record written to {output}")
    return 0


def cmd_export_lightcurves(args: argparse.Namespace) -> int:
    from .export_lightcurves import export_lightcurves

    if bool(args.db) == bool(args.field_dirs):
        raise InvalidRequestError("give either --db PATH or field directories, not both")
    summary = export_lightcurves(
        args.db or args.field_dirs,
        args.output,
        where=args.where,
        quality=args.quality,
        fields=_split(args.field),
        progress=not args.quiet,
    )
    print(
        f"{summary.written} files written, {summary.skipped} already complete; "
        f"{summary.points} points of {summary.stars} stars -> {args.output}"
    )
    return 0


def cmd_samp(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .samp.bridge import Bridge
    from .samp.sources import open_source

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    source = open_source(service=args.service, field_dirs=args.field_dirs, db=args.db)
    try:
        source.check()
        with Bridge(
            source,
            hub=args.hub,
            radius_arcsec=args.radius.to_value(u.arcsec),
            max_stars=args.max_stars,
            allow_dirs=args.allow_dir or (),
            per_star=args.per_star,
        ) as bridge:
            print(
                f"romerea-vo SAMP bridge registered as {bridge.client_id} "
                f"(hub {(bridge.hub_params or {}).get('samp.hub.xmlrpc.url')}); Ctrl-C to stop",
                flush=True,
            )
            bridge.serve_forever(stop)
    finally:
        source.close()
    print("SAMP bridge stopped", flush=True)
    return 0


def cmd_xmatch(args: argparse.Namespace) -> int:
    from .xmatch.command import run

    return run(args)


# --- parser --------------------------------------------------------------------------


def _byte_size(text: str) -> int:
    """``20GiB``, ``500 MB``, ``1048576``: a byte count for argparse."""
    try:
        value = int(text) if text.strip().isdigit() else u.Quantity(text).to_value(u.byte)
    except (ValueError, TypeError, u.UnitsError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (e.g. 20GiB, 500MB or a number of bytes)"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size cannot be negative")
    return int(value)


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative whole number")
    return int(text)


def _limit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("limits (0 = none)")
    g.add_argument("--jobs-per-client", type=_count, metavar="N",
                   help="async jobs one client address may hold (default 100)")  # fmt: skip
    g.add_argument("--results-quota", type=_byte_size, metavar="SIZE",
                   help="disk space for all async results (default 20GiB); beyond it a "
                   "client's oldest COMPLETED jobs are deleted, else new jobs refused")  # fmt: skip
    g.add_argument("--job-result-limit", type=_byte_size, metavar="SIZE",
                   help="largest result of one async job (default 2GiB)")  # fmt: skip
    g.add_argument("--upload-columns", type=_count, metavar="N",
                   help="columns an uploaded table may have (default 1000)")  # fmt: skip


def _listen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s)")
    p.add_argument("--port", type=_port, default=8000, help="port (default %(default)s; 0 = any)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="romerea-vo",
        description="The ROME/REA survey's field data products in the Virtual Observatory.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthesise a small field (cached), ingest it and serve it")
    p.add_argument("--cache-dir", help="where the demo field lives (default ~/.cache/romerea-vo)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-serve", action="store_true", help="only synthesise and summarise")
    p.add_argument("--samp", action="store_true", help="run the SAMP bridge in this process too "
                   "(joins the running SAMP hub, else starts one)")  # fmt: skip
    _listen_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write a synthetic ROME field (era-E layout)")
    p.add_argument("outdir", help="directory to write the field's files into")
    p.add_argument("--field", default=DEMO_FIELD, help="field name (default %(default)s)")
    p.add_argument("--stars", type=int, default=2000, help="number of stars (default %(default)s)")
    p.add_argument("--images", type=int, default=400, help="number of images (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument(
        "--event-rate",
        type=float,
        default=0.01,
        help="fraction of stars with a microlensing event (default %(default)s)",
    )
    p.add_argument(
        "--periodic-rate",
        type=float,
        default=0.01,
        help="fraction of periodic variables (default %(default)s)",
    )
    p.add_argument(
        "--irregular-rate",
        type=float,
        default=0.005,
        help="fraction of irregular variables and trends (default %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("ingest", help="load field(s) into a DuckDB or PostgreSQL database")
    p.add_argument("field_dirs", nargs="+", metavar="FIELD_DIR")
    p.add_argument(
        "--db",
        required=True,
        help="DuckDB file (created if absent) or postgresql://user@host/dbname (with pgSphere)",
    )
    p.add_argument("--authority", help="publisher DID authority, e.g. ivo://example.org/rome")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="processes for the statistics pass (default: one per core for a "
                   "large field, one for a small one)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "ingest-catalog",
        help="add an external catalogue (VOTable, FITS, CSV, ECSV, Parquet) as a TAP table",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--db", required=True, help="romerea-vo database (created if absent)")
    p.add_argument("--table", required=True, help="published name, SCHEMA.NAME (e.g. ext.survey)")
    p.add_argument("--ra-col", help="RA column (default: found by UCD or name)")
    p.add_argument("--dec-col", help="Dec column (default: found by UCD or name)")
    p.add_argument("--description", help="table description (default: from the file)")
    p.add_argument("--format", help="votable, fits, csv, ecsv or parquet (default: by extension)")
    p.set_defaults(func=cmd_ingest_catalog)

    p = sub.add_parser("serve", help="serve a database and/or field directories over TAP")
    p.add_argument("field_dirs", nargs="*", metavar="FIELD_DIR")
    p.add_argument("--config", metavar="FILE", help="the service's configuration (TOML: "
                   "limits, public URL, metadata; every key in services/service.toml); "
                   "the options below override it")  # fmt: skip
    p.add_argument("--db", help="database file (made by ingest)")
    p.add_argument("--work-dir", help="where async jobs and uploads live (default: temporary)")
    p.add_argument("--workers", type=int,
                   help="service processes (default 1; more need --jobs-db)")  # fmt: skip
    p.add_argument("--jobs-db", metavar="URL", help="keep async jobs in PostgreSQL "
                   "(postgresql://user@host/db), shared by all workers; needs "
                   "--work-dir")  # fmt: skip
    p.add_argument("--job-threads", type=int, metavar="N",
                   help="async jobs each worker runs at once (default 2)")  # fmt: skip
    p.add_argument("--public-url", metavar="URL", help="the URL clients reach the service at "
                   "(behind a reverse proxy), used in async results' links")  # fmt: skip
    p.add_argument("--log-level", metavar="LEVEL", help="server log: critical, error, warning "
                   "(default), info or debug")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 = any)")
    p.add_argument("--query-slots", type=_positive_int, metavar="N",
                   help="heavy sync queries (joins, uploads) run at once (default 2)")  # fmt: skip
    p.add_argument("--query-queue", type=_positive_int, metavar="N",
                   help="heavy sync queries queued before a 503 (default 16)")  # fmt: skip
    p.add_argument("--client-slots", type=_positive_int, metavar="N",
                   help="heavy sync queries per client address (default 4)")  # fmt: skip
    p.add_argument("--memory-limit", metavar="SIZE",
                   help="DuckDB memory_limit, e.g. 2GB (default 1GB)")  # fmt: skip
    _limit_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("info", help="summarise a field directory")
    p.add_argument("field_dir")
    p.add_argument("--db", help="also count the field's microlensing candidates in this database")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("lightcurve", help="extract one star's lightcurve")
    p.add_argument("field_dir", nargs="?", metavar="FIELD_DIR",
                   help="field directory (not needed with --url)")  # fmt: skip
    p.add_argument("--url", help="read from a romerea-vo service instead, e.g. "
                   "http://host:8000 (the TAP URL works too)")  # fmt: skip
    p.add_argument("--field", help="field name for --field-id/--ra with --url")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--field-id", type=int, help="the star's field_id")
    who.add_argument("--ra", type=float, help="RA in degrees (with --dec): nearest star")
    p.add_argument("--dec", type=float, help="Dec in degrees (with --ra)")
    p.add_argument("--radius", type=_radius, default=_radius("1arcsec"),
                   help="match radius for --ra/--dec (default 1arcsec)")  # fmt: skip
    p.add_argument("--filter", action="append", help="gp, rp, ip (repeat or comma-separate)")
    p.add_argument("--dataset", action="append", help="dataset code(s) to keep")
    p.add_argument("--qc", choices=("good", "valid", "all"), default="good",
                   help="quality cut (default good: qc_flag 0, valid measurement)")  # fmt: skip
    p.add_argument("--mag-column", help="magnitude column (default normalized_mag if present)")
    p.add_argument("-o", "--output", help="OUT.vot|.csv|.fits|.ecsv|.png (default: print)")
    p.set_defaults(func=cmd_lightcurve)

    p = sub.add_parser("samp", help="SAMP bridge: stars selected in TOPCAT/Aladin -> lightcurves")
    p.add_argument("field_dirs", nargs="*", metavar="FIELD_DIR")
    p.add_argument("--service", help="a romerea-vo service, e.g. http://127.0.0.1:8000")
    p.add_argument("--db", help="database file (made by ingest)")
    p.add_argument("--hub", choices=("auto", "connect", "start"), default="auto",
                   help="connect to the running hub, start one, or auto (default)")  # fmt: skip
    p.add_argument("--radius", type=_radius, default=_radius("1arcsec"),
                   help="position match radius (default 1arcsec)")  # fmt: skip
    p.add_argument("--max-stars", type=int, default=500,
                   help="most stars sent for one selection (default %(default)s)")  # fmt: skip
    p.add_argument("--allow-dir", action="append", metavar="DIR",
                   help="directory whose file: URLs may be read (repeatable)")  # fmt: skip
    p.add_argument("--per-star", action="store_true", help="one table per star for selections")
    p.add_argument("--quiet", action="store_true", help="log warnings only")
    p.set_defaults(func=cmd_samp)

    p = sub.add_parser(
        "registry-record",
        help="write the service's VOResource record (vs:CatalogService) for a registry",
    )
    p.add_argument("--db", help="database file or postgresql:// URL (or [service] db)")
    p.add_argument("--config", metavar="FILE", help="the service's configuration (metadata, "
                   "public URL, limits named in the record)")  # fmt: skip
    p.add_argument("--public-url", metavar="URL", help="the URL clients reach the service at")
    p.add_argument("--authority", metavar="IVOID", help="IVOA authority of the record's "
                   "identifier, ivo://host[/path] (default: the DIDs')")  # fmt: skip
    p.add_argument("--doi", help="a DOI of the data, recorded as an altIdentifier")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="record.xml")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    p.set_defaults(func=cmd_registry_record)

    p = sub.add_parser("export-dachs", help="write a DaCHS resource descriptor and data files")
    p.add_argument("outdir", metavar="OUTDIR", help="directory for q.rd and data/*.fits")
    p.add_argument("--db", required=True, help="database file (made by ingest)")
    p.add_argument("--schema", default="rome", help="DaCHS schema name (default %(default)s)")
    p.add_argument("--index", default="pgsphere", help="position index: pgsphere (default) "
                   "or q3c")  # fmt: skip
    p.add_argument("--cone-service", action="store_true",
                   help="add a Simple Cone Search service over field_index")  # fmt: skip
    p.add_argument("--service-url", help="this romerea-vo service's URL, named in the RD as "
                   "where the stars' DIDs resolve to lightcurves")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="replace the exported files in a non-empty OUTDIR")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no per-table output")
    p.set_defaults(func=cmd_export_dachs)

    p = sub.add_parser(
        "export-lightcurves",
        help="write stars' lightcurves as Parquet, partitioned by field and quadrant",
    )
    p.add_argument("field_dirs", nargs="*", metavar="FIELD_DIR", help="field directories")
    p.add_argument("--db", help="database (file or PostgreSQL URL) made by ingest")
    p.add_argument("-o", "--output", required=True, help="output directory (resumable)")
    p.add_argument("--where", help="ADQL condition on rome.stars choosing the stars")
    p.add_argument("--quality", default="good", choices=["good", "valid", "all"],
                   help="which points (default %(default)s)")  # fmt: skip
    p.add_argument("--field", action="append", help="only these fields (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export_lightcurves)

    from .xmatch.command import DESCRIPTION, add_arguments

    p = sub.add_parser("xmatch", help="cross-match a catalogue with ROME stars, or ROME "
                       "stars with another TAP service", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(p)
    p.set_defaults(func=cmd_xmatch)
    return parser


def _options_with_a_value(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of ``parser`` and its sub-commands that take one value."""
    found: set[str] = set()
    for action in parser._actions:  # argparse has no public way to walk its actions
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options_with_a_value(sub)
        elif action.option_strings and action.nargs is None:
            found.update(s for s in action.option_strings if s.startswith("--"))
    return found


def _attach_negative_values(argv: Sequence[str], options: set[str]) -> list[str]:
    """``--radius -1arcsec`` as ``--radius=-1arcsec``: argparse takes a value that begins
    with ``-`` and is not a plain number for an option, and would answer "expected one
    argument" instead of what is wrong with the value."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        following = items[i + 1] if i + 1 < len(items) else ""
        if item in options and re.match(r"-[0-9.]", following):
            out.append(f"{item}={following}")
            i += 2
            continue
        out.append(item)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(_attach_negative_values(argv, _options_with_a_value(parser)))
    if getattr(args, "ra", None) is not None and args.dec is None:
        parser.error("--ra needs --dec")
    try:
        return args.func(args)
    except RomeReaError as exc:
        print(f"romerea-vo: error: {exc}", file=sys.stderr)
        return 1
    except FileExistsError as exc:
        print(f"romerea-vo: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an output that cannot be written, a file that cannot be read
        where = f": {exc.filename}" if exc.filename else ""
        print(f"romerea-vo: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("romerea-vo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
