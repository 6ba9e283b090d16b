"""The work of ``romerea-vo xmatch``: check the arguments, match, write, summarise.

Two uses:

* ``xmatch INPUT (--db PATH | FIELD_DIR ... | --service URL)``: a user's catalogue
  against ROME stars, here (:mod:`.local`) or on a romerea-vo service (:mod:`.remote`).
* ``xmatch (--db PATH | FIELD_DIR ...) --external-tap URL --external-table NAME``: ROME
  stars against a table of another TAP service (:func:`.remote.match_external`).

Rows whose coordinates cannot be used are never dropped silently: they are counted and
listed (first row numbers) on stderr, and in mode ``best`` they stay in the output,
unmatched, with ``bad_position`` true. A remote operation that lost chunks writes what
it obtained to ``OUT.partial.<ext>`` (marked INCOMPLETE in the file's metadata), never
to ``OUT``, and ends with an error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import astropy.units as u
import numpy as np

from .. import __version__
from ..errors import InvalidRequestError, RomeReaError
from .core import MAX_RADIUS_ARCSEC, MODES

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = ["DESCRIPTION", "add_arguments", "parse_radius", "run"]

DESCRIPTION = """\
Cross-match a catalogue with ROME/REA stars, or ROME/REA stars with a table of another
TAP service.

  romerea-vo xmatch INPUT (--db PATH | FIELD_DIR ... | --service URL) --radius 1arcsec
  romerea-vo xmatch (--db PATH | FIELD_DIR ...) --external-tap URL --external-table NAME

INPUT is a VOTable, FITS, CSV, ECSV or Parquet file; its RA/Dec columns are found by UCD
or usual names (--ra-col/--dec-col to choose). Output: every input column, then the
matched star's field, field_id, did, rome_ra, rome_dec and sep_arcsec (and with --stats
its lightcurve statistics per filter). Mode best (default) is a left join: one row per
input row, the ROME columns NULL where no star is within the radius, plus n_within (stars
within the radius; > 1 = ambiguous) and bad_position (coordinates unusable: never
matched). Mode all: every pair within the radius. Mode best-unique: only pairs that are
each other's nearest. A summary goes to stderr.

--epoch/--pm-cols move the input positions (e.g. Gaia, epoch 2016.0, pmra with cos(dec),
mas/yr) to the epoch of each ROME field's positions: the mean time of the primary
reference dataset's reference images (2017-2019), unless --rome-epoch says otherwise.

With --service or --external-tap, positions are uploaded in chunks of --chunk-rows. If a
chunk fails (error, --timeout, service gone) the command exits with status 1, OUT is not
written, and what was obtained goes to OUT.partial.<ext>, marked INCOMPLETE in its
metadata (VOTable INFO, FITS keyword XMSTATUS, ECSV/Parquet metadata; CSV: the name).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``romerea-vo xmatch``."""
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="INPUT (the catalogue; not with --external-tap), then any "
                   "FIELD_DIRs to read ROME stars from")  # fmt: skip
    src = p.add_argument_group("ROME stars (one of)")
    src.add_argument("--db", help="database file (made by ingest)")
    src.add_argument("--service", help="a romerea-vo TAP service, e.g. http://host:8000/tap")
    src.add_argument(
        "--field", action="append", help="only these fields (repeat or comma-separate)"
    )
    src.add_argument("--where", help="ADQL condition on rome.stars choosing the stars "
                     "(--db/FIELD_DIR), e.g. \"cal_i_mag_lsc_doma < 17\"")  # fmt: skip
    src.add_argument("--authority", help="DID authority for FIELD_DIR sources "
                     "(default that of ingest)")  # fmt: skip
    m = p.add_argument_group("matching")
    m.add_argument(
        "--radius",
        default="1arcsec",
        help="match radius, e.g. 1arcsec, 0.5arcsec (default 1arcsec; at most 1 deg)",
    )
    m.add_argument(
        "--mode",
        default="best",
        help="best (default: nearest star per input row, unmatched rows kept, "
        "like a left join), all (every pair), best-unique (mutual nearest)",
    )
    m.add_argument("--ra-col", help="RA column of INPUT (default: by UCD or name)")
    m.add_argument("--dec-col", help="Dec column of INPUT (default: by UCD or name)")
    m.add_argument("--epoch", help="epoch of the INPUT positions (Julian year, e.g. 2016.0)")
    m.add_argument("--pm-cols", metavar="PMRA,PMDEC",
                   help="INPUT proper-motion columns (mas/yr unless their unit says; pmra "
                   "includes cos(dec)), with --epoch")  # fmt: skip
    m.add_argument("--rome-epoch", help="override the epoch of the ROME positions")
    m.add_argument(
        "--stats",
        action="store_true",
        help="add each matched star's lightcurve statistics per filter",
    )
    ext = p.add_argument_group("ROME stars against another TAP service")
    ext.add_argument("--external-tap", metavar="URL", help="TAP service URL")
    ext.add_argument("--external-table", metavar="NAME", help="table name on that service")
    ext.add_argument("--external-cols", action="append", metavar="A,B,C",
                     help="its columns to return (default all)")  # fmt: skip
    ext.add_argument("--external-ra-col", help="its RA column (default: by UCD in TAP_SCHEMA)")
    ext.add_argument("--external-dec-col", help="its Dec column (default: by UCD in TAP_SCHEMA)")
    tap = p.add_argument_group("TAP (--service, --external-tap)")
    tap.add_argument("--chunk-rows", type=int, default=50_000,
                     help="positions uploaded per query (default %(default)s)")  # fmt: skip
    tap.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds a chunk may wait for the service (default %(default)s)",
    )
    tap.add_argument(
        "--async",
        dest="use_async",
        action="store_true",
        help="run the chunks as async (UWS) jobs instead of sync queries",
    )
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="OUT",
                     help="output file (default: standard output)")  # fmt: skip
    out.add_argument("--format", help="votable, fits, csv, ecsv or parquet "
                     "(default: from OUT's extension, else votable)")  # fmt: skip
    out.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


_SHOW_ROWS = 10
"""Row numbers listed for unusable coordinates."""


def parse_radius(text: str) -> float:
    """``1arcsec``, ``0.5 arcmin``, ``2`` (arcsec) -> arcseconds, > 0 and at most 1 degree."""
    try:
        q = u.Quantity(str(text).strip())
    except (TypeError, ValueError):
        raise InvalidRequestError(f"--radius {text!r} is not an angle (try 1arcsec)") from None
    if q.unit == u.dimensionless_unscaled:
        q = q.value * u.arcsec
    if not q.unit.is_equivalent(u.deg) or not q.isscalar:
        raise InvalidRequestError(f"--radius {text!r} is not an angle (try 1arcsec)")
    arcsec = float(q.to_value(u.arcsec))
    if not np.isfinite(arcsec) or arcsec <= 0:
        raise InvalidRequestError(f"--radius must be positive; got {text!r}")
    if arcsec > MAX_RADIUS_ARCSEC:
        raise InvalidRequestError(
            f"--radius {text!r} is larger than 1 degree; a cross-match radius is normally "
            "a few arcseconds"
        )
    return arcsec


def _number(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip().removeprefix("J"))  # J2016.0 is a Julian epoch too
    except ValueError:
        raise InvalidRequestError(f"{what} must be a number, not {text!r}") from None
    if not np.isfinite(value):
        raise InvalidRequestError(f"{what} must be a finite number, not {text!r}")
    return value


def _names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _row_list(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r) + 1) for r in rows[:_SHOW_ROWS])
    more = f", ... ({rows.size - _SHOW_ROWS} more)" if rows.size > _SHOW_ROWS else ""
    return f"{'row' if rows.size == 1 else 'rows'} {shown}{more}"


def _service_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/tap") else url + "/tap"


class _Plan:
    """Checked arguments."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.external = bool(args.external_tap or args.external_table)
        paths = [Path(p) for p in args.paths]
        sources = [
            name
            for name, given in (
                ("--db", args.db),
                ("--service", args.service),
                ("FIELD_DIR", paths[0 if self.external else 1 :]),
            )
            if given
        ]
        if self.external:
            if not (args.external_tap and args.external_table):
                raise InvalidRequestError("--external-tap and --external-table go together")
            if args.service:
                raise InvalidRequestError(
                    "--external-tap matches ROME stars held here: give --db PATH or FIELD_DIR "
                    "..., not --service"
                )
            if args.stats or args.epoch is not None or args.pm_cols:
                raise InvalidRequestError(
                    "--stats, --epoch and --pm-cols apply to matching an INPUT catalogue, "
                    "not to --external-tap"
                )
            self.input = None
            self.field_dirs = paths
        else:
            if args.external_cols or args.external_ra_col or args.external_dec_col:
                raise InvalidRequestError("--external-cols/-ra-col/-dec-col need --external-tap")
            if not paths:
                raise InvalidRequestError("give the INPUT catalogue to match")
            self.input = paths[0]
            self.field_dirs = paths[1:]
            if not self.input.exists():
                raise InvalidRequestError(f"{self.input}: no such file")
        if len(sources) != 1:
            raise InvalidRequestError(
                "give exactly one ROME source: --db PATH, FIELD_DIR ..."
                + ("" if self.external else " or --service URL")
                + (f" (got {' and '.join(sources)})" if sources else "")
            )
        if args.where and args.service:
            raise InvalidRequestError("--where selects stars of --db or FIELD_DIR sources only")
        self.radius = parse_radius(args.radius)
        if args.mode not in MODES:
            raise InvalidRequestError(
                f"unknown --mode {args.mode!r}; use one of {', '.join(MODES)}"
            )
        self.fields = _names(args.field)
        self.epoch = _number(args.epoch, "--epoch")
        self.rome_epoch = _number(args.rome_epoch, "--rome-epoch")
        self.pm_cols = _names([args.pm_cols]) if args.pm_cols else None
        if (self.epoch is None) != (self.pm_cols is None):
            raise InvalidRequestError(
                "--epoch and --pm-cols go together: the input epoch and the proper-motion "
                "columns (mas/yr, pmra including cos(dec)), e.g. --epoch 2016.0 "
                "--pm-cols pmra,pmdec"
            )
        if self.pm_cols is not None and len(self.pm_cols) != 2:
            raise InvalidRequestError(f"--pm-cols needs two column names, got {args.pm_cols!r}")
        if args.chunk_rows < 1:
            raise InvalidRequestError(f"--chunk-rows must be at least 1, not {args.chunk_rows}")
        if not args.timeout > 0:
            raise InvalidRequestError(f"--timeout must be positive, not {args.timeout}")
        from .output import check_output_path, output_format, partial_path

        self.output = Path(args.output) if args.output else None
        self.format = output_format(self.output, args.format)
        self.remote = bool(args.service or self.external)
        if self.output is not None:
            inputs = [self.input] if self.input else []
            check_output_path(self.output, overwrite=args.overwrite, inputs=inputs)
            if self.remote:
                check_output_path(
                    partial_path(self.output), overwrite=args.overwrite, inputs=inputs
                )

    def open_local(self):
        from .local import DatabaseRome, DirectoryRome

        if self.args.db:
            return DatabaseRome(self.args.db)
        return DirectoryRome(self.field_dirs, authority=self.args.authority)


def _pm_values(table, name: str) -> np.ndarray:
    col = table[name]
    unit = getattr(col, "unit", None)
    values = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan).astype(float)
    if unit is None or str(unit) in ("", "None"):
        return values
    try:
        return (values * unit).to_value(u.mas / u.yr)
    except (u.UnitsError, TypeError, ValueError):
        raise InvalidRequestError(
            f"proper-motion column {name} has unit {unit}, not an angle per time"
        ) from None


def _provenance(plan: _Plan, rome_desc: str, epochs: dict[str, float] | None) -> dict:
    args = plan.args
    prov = {
        "xmatch_status": "COMPLETE",
        "xmatch_mode": args.mode,
        "xmatch_radius_arcsec": f"{plan.radius:g}",
        "xmatch_rome": rome_desc + (f" (fields {', '.join(plan.fields)})" if plan.fields else ""),
        "xmatch_where": args.where,
        "xmatch_software": f"romerea-vo {__version__}",
    }
    if plan.epoch is not None:
        prov["xmatch_input_epoch"] = f"{plan.epoch:g}"
        prov["xmatch_rome_epochs"] = ", ".join(f"{k}={v:.3f}" for k, v in (epochs or {}).items())
    return prov


def _finish(
    plan: _Plan, table, prov: dict, description: str, summary: str, reports: list, err
) -> int:
    """Write the result (or the partial result) and say what happened."""
    from .output import partial_path, write_table

    broken = [r for r in reports if not r.complete]
    target = plan.output
    if not broken:
        write_table(table, target, plan.format, provenance=prov, description=description)
        where = f" -> {target}" if target else ""
        print(f"romerea-vo xmatch: {summary}{where} ({len(table)} rows)", file=err, flush=True)
        return 0
    problem = "; ".join(r.describe() for r in broken)
    prov = {**prov, "xmatch_status": "INCOMPLETE", "xmatch_incomplete": problem}
    description = f"INCOMPLETE: {problem}. {description}"
    if reports[0].succeeded == 0:
        raise RomeReaError(f"{problem}; nothing was obtained, nothing written")
    print(f"romerea-vo xmatch: INCOMPLETE: {summary}", file=err, flush=True)
    if target is None:
        raise RomeReaError(f"{problem}; the result is incomplete and was not written")
    partial = partial_path(target)
    write_table(table, partial, plan.format, provenance=prov, description=description)
    raise RomeReaError(
        f"{problem}; the result is incomplete: {partial} holds the {len(table)} rows obtained "
        f"(marked INCOMPLETE), {target} was not written"
    )


def run(
    args: argparse.Namespace,
    *,
    on_chunk: Callable[[int, int], None] | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``romerea-vo xmatch``; ``on_chunk(k, n)`` is called after each remote chunk.

    Raises :class:`RomeReaError` (the CLI prints it and exits 1) for bad input and for
    incomplete remote results (after writing the partial file)."""
    err = err or sys.stderr
    plan = _Plan(args)
    if plan.external:
        return _run_external(plan, on_chunk, err)
    return _run_catalogue(plan, on_chunk, err)


def _run_catalogue(plan: _Plan, on_chunk, err) -> int:
    from ..catalogue_files import find_position_columns, position_arrays, read_catalogue
    from .local import catalogue_result, match_positions, select_pairs

    args = plan.args
    assert plan.input is not None  # a catalogue plan has an input file
    table = read_catalogue(plan.input)
    ra_name, dec_name = find_position_columns(table, args.ra_col, args.dec_col)
    ra, dec, bad = position_arrays(table, ra_name, dec_name)
    motion = None
    if plan.pm_cols is not None:
        assert plan.epoch is not None  # the plan refuses proper motions without an epoch
        pm_names = [_pm_column(table, c) for c in plan.pm_cols]
        pmra, pmdec = (_pm_values(table, c) for c in pm_names)
        motion = (pmra, pmdec, plan.epoch)
    reports = []
    done = np.ones(len(table), bool)
    if args.service:
        from . import remote

        client = remote.TapClient(_service_url(args.service), timeout=args.timeout,
                                  use_async=args.use_async)  # fmt: skip
        try:
            fields, epochs = _service_fields_epochs(plan, client, motion is not None)
            sm = remote.match_service(
                client, ra, dec, plan.radius, fields=fields, motion=motion, epochs=epochs,
                chunk_rows=args.chunk_rows, on_chunk=on_chunk,
            )  # fmt: skip
            reports.append(sm.report)
            pairs, rome = sm.pairs, sm.rome
            done = sm.done_rows | bad
            chosen = select_pairs(pairs, args.mode)
            stats = None
            if args.stats:
                matched = rome.take(np.unique(chosen.right))
                stats, report = remote.service_statistics(client, matched, args.chunk_rows)
                reports.append(report)
        finally:
            client.close()
        rome_desc = f"romerea-vo service {_service_url(args.service)}"
    else:
        with plan.open_local() as src:
            fields = src.field_names(plan.fields)
            rome = src.stars(fields, args.where)
            epochs = None
            if motion is not None:
                epochs = (
                    {f: plan.rome_epoch for f in fields}
                    if plan.rome_epoch is not None
                    else src.epochs(fields)
                )
            pairs = match_positions(ra, dec, rome, plan.radius, motion=motion, epochs=epochs)
            chosen = select_pairs(pairs, args.mode)
            stats = src.statistics(rome.take(np.unique(chosen.right))) if args.stats else None
            rome_desc = f"{src.description} ({len(rome)} stars)"
    n_within = np.bincount(pairs.left, minlength=len(table))
    out = catalogue_result(table, rome, chosen, args.mode, n_within=n_within, bad=bad, stats=stats)
    if args.mode == "best" and not done.all():
        out = out[done]
    # counts over the rows whose result is known
    n_rows = int(done.sum())
    matched_rows = np.zeros(len(table), bool)
    matched_rows[chosen.left] = True
    n_matched = int((matched_rows & done).sum())
    n_bad = int(bad.sum())
    n_ambiguous = int(((n_within > 1) & done).sum())
    summary = (
        f"{n_rows} input rows: {n_matched} matched, {n_rows - n_matched - n_bad} unmatched, "
        f"{n_ambiguous} ambiguous (more than one ROME star within {plan.radius:g} arcsec), "
        f"{n_bad} with unusable coordinates"
    )
    if n_bad:
        summary += f" ({_row_list(np.flatnonzero(bad))}; 1-based"
        summary += ", kept unmatched with bad_position = true)" if args.mode == "best" else ")"
    if args.mode == "all":
        summary += f"; {len(chosen)} pairs"
    if motion is not None:
        no_pm = int((~(np.isfinite(motion[0]) & np.isfinite(motion[1])) & ~bad).sum())
        moved = ", ".join(f"{k} {v:.3f}" for k, v in epochs.items())
        summary += f"; positions moved from epoch {plan.epoch:g} to {moved}"
        if no_pm:
            summary += f" ({no_pm} rows without proper motion kept as given)"
    prov = _provenance(plan, rome_desc, epochs)
    prov["xmatch_input"] = f"{plan.input} (RA {ra_name}, Dec {dec_name})"
    description = (
        f"{plan.input.name} cross-matched with ROME/REA stars ({rome_desc}) within "
        f"{plan.radius:g} arcsec, mode {args.mode}"
    )
    return _finish(plan, out, prov, description, summary, reports, err)


def _pm_column(table: Table, name: str) -> str:
    """A proper-motion column by name (case-insensitive when unambiguous)."""
    from ..catalogue_files import describe_columns

    if name in table.colnames:
        return name
    folded = [n for n in table.colnames if n.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise InvalidRequestError(
        f"no proper-motion column {name!r} in the catalogue; its columns: {describe_columns(table)}"
    )


def _service_fields_epochs(plan: _Plan, client, need_epochs: bool):
    from . import remote

    fields = plan.fields
    available: list[str] = []
    if fields or need_epochs:
        try:
            available = remote.service_fields(client)
        except remote.RemoteError as exc:
            raise RomeReaError(f"{client.url}: {exc}") from None
    if fields:
        unknown = [f for f in fields if f not in available]
        if unknown:
            raise InvalidRequestError(
                f"{client.url} has no field {', '.join(unknown)}; its fields: "
                f"{', '.join(available)}"
            )
    epochs = None
    if need_epochs:
        targets = fields or available
        if plan.rome_epoch is not None:
            epochs = {f: plan.rome_epoch for f in targets}
        else:
            try:
                epochs = remote.service_epochs(client, targets)
            except remote.RemoteError as exc:
                raise RomeReaError(f"{client.url}: {exc}") from None
    return fields, epochs


def _run_external(plan: _Plan, on_chunk, err) -> int:
    from . import remote

    args = plan.args
    with plan.open_local() as src:
        fields = src.field_names(plan.fields)
        rome = src.stars(fields, args.where)
        rome_desc = f"{src.description} ({len(rome)} stars)"
    client = remote.TapClient(args.external_tap, timeout=args.timeout, use_async=args.use_async)
    try:
        try:
            em = remote.match_external(
                client, rome, args.external_table, plan.radius, mode=args.mode,
                columns=_names(args.external_cols), ra_col=args.external_ra_col,
                dec_col=args.external_dec_col, chunk_rows=args.chunk_rows, on_chunk=on_chunk,
            )  # fmt: skip
        except remote.RemoteError as exc:  # before the chunks: the table's metadata
            raise RomeReaError(f"{args.external_tap}: {exc}") from None
    finally:
        client.close()
    answered = "" if em.n_answered == len(rome) else f", {em.n_answered} answered"
    summary = (
        f"{len(rome)} ROME stars sent to {args.external_tap} ({args.external_table}{answered}): "
        f"{em.n_rome_matched} matched, {em.n_ambiguous} ambiguous (more than one source "
        f"within {plan.radius:g} arcsec), {em.n_pairs} pairs within the radius"
    )
    prov = _provenance(plan, rome_desc, None)
    prov["xmatch_external"] = f"{args.external_tap} table {args.external_table}"
    description = (
        f"ROME/REA stars ({rome_desc}) cross-matched with {args.external_table} of "
        f"{args.external_tap} within {plan.radius:g} arcsec, mode {args.mode}"
    )
    return _finish(plan, em.table, prov, description, summary, [em.report], err)
