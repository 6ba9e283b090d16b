"""``romerea-vo export-lightcurves``: every selected star's points as Parquet files.

Layout: ``DIR/field=<FIELD>/quadrant=<q>/lightcurves.parquet`` (Hive partitioning, which
DuckDB's ``read_parquet(..., hive_partitioning=true)``, ``pyarrow.dataset`` and
``pandas.read_parquet(DIR)`` turn back into ``field`` and ``quadrant`` columns). One file
per photometry cube: the export reads each cube once, sequentially, in blocks of whole
rows (bounded memory), and a cube is the unit of resumption; ``EXPORT_THREADS`` cubes are
exported at a time. Partitioning by HEALPix (as
HATS does) was not chosen: a ROME field is a 40-arcmin square, all twenty lie in the
bulge, and users ask for fields, not for sky tiles; field/quadrant keeps one reader per
cube and one file per cube.

Each file is VOParquet (:mod:`romerea_vo.votable.parquet`): units, UCDs and descriptions
from ``votable_schemas/lightcurve_points.toml`` and INFOs naming the field, quadrant,
quality cut and flux scale. Rows: stars in cube-row order, each star's points in image
(time) order. Files are written as ``.*.partial`` and renamed when complete; a rerun with
the same options skips the finished ones, so an interrupted export resumes where it
stopped and ends with the same files. ``_export.json`` records the options.

This is a command module (cli layer): it uses the star selection of
:mod:`romerea_vo.xmatch.local` (``--where`` over rome.stars).
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from . import __version__
from .errors import InvalidRequestError
from .lightcurves import (
    FLUX_ZERO_POINT,
    QUALITIES,
    flux_from_mag,
    produced_ahead,
    stars_points,
)
from .products import layout
from .products.reader import Field
from .votable.formats import write_result
from .votable.schema import load_table_schema
from .votable.writer import CHUNK_ROWS, FieldSpec, Info, TimeSys
from .xmatch.local import DatabaseRome, DirectoryRome

__all__ = ["ExportSummary", "export_lightcurves", "quadrant_path"]

MANIFEST = "_export.json"  # "_" and "." files are skipped by Parquet dataset readers
FILE_NAME = "lightcurves.parquet"
TIMESYS = TimeSys(ID="hjd_utc", timeorigin="0", timescale="UTC", refposition="HELIOCENTER")
_INTEGER_COLUMNS = {"qc_flag": np.int16, "stamp_index": np.int16}
EXPORT_THREADS = 2
"""Quadrants exported at the same time."""
_WRITES_IN_FLIGHT = 2


@dataclass
class ExportSummary:
    """What an export wrote: files written now, files already complete, points, stars."""

    written: int = 0
    skipped: int = 0
    points: int = 0
    stars: int = 0


class _Stopped(Exception):
    """A quadrant's export was stopped because another one failed (or on Ctrl-C)."""


def quadrant_path(outdir: Path, field: str, quadrant: int) -> Path:
    """The Parquet file of one field's quadrant in an export directory."""
    return Path(outdir) / f"field={field}" / f"quadrant={quadrant}" / FILE_NAME


def _fields(lay: layout.PhotometryLayout) -> list[FieldSpec]:
    points = load_table_schema("lightcurve_points").by_name
    names: tuple[str, ...] = ("field_id", "hjd", "filter", "dataset_code", "image_index")
    names += lay.columns[1:] + ("flux", "flux_err")
    specs = [FieldSpec.from_column(points[n]) for n in names]
    return [replace(s, ref=TIMESYS.ID) if s.name == "hjd" else s for s in specs]


def _batches(
    field: Field, quadrant: int, quality: str, field_ids: np.ndarray | None, counter: Callable
) -> Iterator[pa.RecordBatch]:
    if not field.quadrant_counts[quadrant]:
        return
    lay = field.photometry_layout
    images = field.images
    filters = pa.array(np.asarray(images["filter"]).astype(str)).dictionary_encode()
    datasets = pa.array(np.asarray(images["dataset_code"]).astype(str)).dictionary_encode()
    mag, err = lay.science_mag, layout.error_column(lay.science_mag)
    quadrant_ids = field.quadrant_field_ids(quadrant)
    rows = np.arange(len(quadrant_ids))
    if field_ids is not None:
        rows = rows[np.isin(quadrant_ids, field_ids)]
    for pts in stars_points(field, quadrant, rows, lay.columns[1:], quality=quality):
        ids = quadrant_ids[rows[pts.which]]
        counter(ids)
        image, columns = pts.image_index, pts.columns
        idx = pa.array(image)
        arrays = [pa.array(ids), pa.array(columns["hjd"]), filters.take(idx), datasets.take(idx)]
        arrays.append(pa.array(image.astype(np.int32)))
        for name in lay.columns[1:]:
            kind = _INTEGER_COLUMNS.get(name)
            arrays.append(pa.array(columns[name] if kind is None else columns[name].astype(kind)))
        flux, flux_err = flux_from_mag(columns[mag], columns[err])
        arrays += [pa.array(flux), pa.array(flux_err)]
        names = [f"c{i}" for i in range(len(arrays))]  # the writer goes by position
        for start in range(0, len(ids), CHUNK_ROWS):
            yield pa.RecordBatch.from_arrays([a.slice(start, CHUNK_ROWS) for a in arrays], names)


def _write_quadrant(
    path: Path, field: Field, quadrant: int, quality: str, field_ids, counter
) -> None:
    lay = field.photometry_layout
    infos = [
        Info("QUERY_STATUS", "OK"),
        Info("field", field.name),
        Info("quadrant", str(quadrant)),
        Info("quality", quality),
        Info("mag_column", lay.science_mag, "the science magnitude column of these cubes"),
        Info("flux_zero_point", repr(FLUX_ZERO_POINT), "flux = 10**(-0.4 (mag - 22))"),
        Info("SERVICE", f"romerea-vo {__version__}"),
    ]
    partial = path.with_name(f".{path.name}.partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    chunks = write_result(
        produced_ahead(_batches(field, quadrant, quality, field_ids, counter)),
        _fields(lay),
        "parquet",
        resource_infos=infos,
        table_name="lightcurves",
        table_description=f"Lightcurve points of the selected stars of {field.name} "
        f"quadrant {quadrant}, stars in cube-row order, points in time order.",
        timesys=[TIMESYS],
    )
    # The disk writes one row group while the next is cut and encoded (the write releases
    # the GIL; export took the sum of both before). At most _WRITES_IN_FLIGHT row groups
    # (~20 MB each) wait; leaving the pool waits for them, so no write outlives the file.
    with (
        partial.open("wb") as out,
        ThreadPoolExecutor(1, thread_name_prefix="export-write") as pool,
    ):
        pending: deque[Future] = deque()
        for chunk in chunks:
            pending.append(pool.submit(out.write, chunk))
            if len(pending) > _WRITES_IN_FLIGHT:
                pending.popleft().result()  # a write error (disk full) is raised here
        for write in pending:
            write.result()
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def _check_manifest(outdir: Path, options: dict) -> None:
    manifest = outdir / MANIFEST
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = None
        if old != options:
            raise InvalidRequestError(
                f"{outdir} holds an export made with other options ({manifest}); resume it "
                "with the same options or export into a new directory"
            )
    else:
        outdir.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(options, indent=2) + "\n")


def export_lightcurves(
    source: str | Path | list[str | Path],
    outdir: str | Path,
    *,
    where: str | None = None,
    quality: str = "good",
    fields: list[str] | None = None,
    progress: bool = False,
) -> ExportSummary:
    """Export the lightcurves of the stars ``where`` selects (all by default).

    ``source`` is a database (file or PostgreSQL URL) or a list of field directories.
    Raises InvalidRequestError for bad options, a bad ``where`` or a directory holding
    an export made with other options.
    """
    if quality not in QUALITIES:
        raise InvalidRequestError(f"--quality must be one of {', '.join(QUALITIES)}")
    outdir = Path(outdir)
    rome: DirectoryRome | DatabaseRome
    label: list[str] | str
    if isinstance(source, list):
        rome = directories = DirectoryRome(source)
        open_field_named = directories.fields.__getitem__
        label = [str(Path(s).resolve()) for s in source]
    else:
        rome = database = DatabaseRome(source)
        open_field_named = database.db.field
        label = str(database.path)
    with rome:
        names = rome.field_names(fields)
        options = {"source": label, "fields": names, "where": where, "quality": quality}
        stars = rome.stars(names, where) if where else None  # a bad --where fails here
        _check_manifest(outdir, options)
        summary = ExportSummary()
        plan = []
        for name in names:
            field = open_field_named(name)
            wanted = None
            if stars is not None:
                wanted = np.empty(0, np.int64)
                if name in stars.names:
                    wanted = np.sort(stars.field_id[stars.code == stars.names.index(name)])
            for quadrant in layout.QUADRANTS:
                ids = field.quadrant_field_ids(quadrant)
                n = len(ids) if wanted is None else int(np.isin(ids, wanted).sum())
                plan.append((field, quadrant, wanted, n))
        total = sum(n for *_, n in plan)
        bar = tqdm(total=total, unit="star", disable=not progress, desc="export-lightcurves")
        lock, stop = threading.Lock(), threading.Event()

        def export_quadrant(field: Field, quadrant: int, wanted, n: int) -> None:
            path = quadrant_path(outdir, field.name, quadrant)
            if path.exists():
                with lock:
                    summary.skipped += 1
                    bar.update(n)
                return
            counted = 0

            def counter(ids: np.ndarray) -> None:
                nonlocal counted
                if stop.is_set():  # another quadrant failed, or Ctrl-C
                    raise _Stopped
                stars = len(np.unique(ids))  # a block holds whole stars
                counted += stars
                with lock:
                    summary.points += len(ids)
                    bar.update(stars)

            _write_quadrant(path, field, quadrant, quality, wanted, counter)
            with lock:
                summary.written += 1
                summary.stars += n
                bar.update(n - counted)  # stars without points

        # Two quadrants at a time: one quadrant's pipeline (read, cut, encode, write)
        # keeps 1.3 of the 2 cores busy; the files and the resumption stay per quadrant.
        try:
            with ThreadPoolExecutor(EXPORT_THREADS, thread_name_prefix="export") as pool:
                futures = [pool.submit(export_quadrant, *item) for item in plan]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    stop.set()  # the quadrants in progress stop at their next block
                    for future in futures:
                        future.cancel()
                    raise
        finally:
            bar.close()
    return summary
