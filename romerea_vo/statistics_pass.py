"""The statistics pass: per star and filter, the summary statistics and variability
indices of rome.lightcurve_stats, and the point-lens fits of rome.microlensing_candidates,
in one sequential read of every quadrant cube (blocks of whole star rows, bounded
memory), in this process or in worker processes that each take pieces of the cubes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
from astropy.table import Column, Table
from tqdm import tqdm

from .errors import InvalidRequestError
from .lightcurves import mag_column_of, quadrant_blocks, quality_mask_of
from .products import layout
from .products.layout import PhotometryLayout
from .products.reader import Field, open_field
from .variability import candidates, indices
from .votable.schema import load_table_schema

__all__ = ["PARALLEL_MIN_POINTS", "FieldStatistics", "field_statistics", "lightcurve_statistics"]


@dataclass
class _BlockColumns:
    """The columns of a block of cube rows the statistics pass uses, (stars, images),
    contiguous, images in the cube's order (or as selected)."""

    hjd: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    good: np.ndarray
    attempted: np.ndarray

    @classmethod
    def of(cls, block: np.ndarray, lay: PhotometryLayout, mag_col: str) -> _BlockColumns:
        """The columns of ``block`` (stars, images, cube columns)."""
        error_col = layout.error_column(mag_col)
        needed = ["hjd", mag_col, error_col, "instrumental_mag", "instrumental_mag_err"]
        needed = list(dict.fromkeys(needed + (["qc_flag"] if lay.has_qc else [])))
        # The block is 8 MiB of rows whose points hold all 17 columns: one np.take of
        # the columns reads it once (a strided copy per column read it once per column:
        # 2.9x as long), and the transpose makes each column contiguous.
        taken = np.take(block, [lay.index(name) for name in needed], axis=-1)
        columns = dict(zip(needed, np.ascontiguousarray(np.moveaxis(taken, -1, 0)), strict=True))
        return cls(
            hjd=columns["hjd"],
            mag=columns[mag_col],
            err=columns[error_col],
            good=quality_mask_of(columns.__getitem__, lay, "good", mag_col),
            attempted=quality_mask_of(columns.__getitem__, lay, "all", mag_col),
        )

    def select(self, idx: np.ndarray, stars: np.ndarray | slice = slice(None)) -> _BlockColumns:
        """The same columns for the images ``idx`` (and the rows ``stars``) only
        (contiguous copies)."""
        return _BlockColumns(*(a[stars][:, idx] for a in vars(self).values()))


def _block_statistics(cols: _BlockColumns, times: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics and variability indices of one filter's images (``times``: their
    ascending IMAGES hjd) for every star of a block."""
    good = cols.good
    out = indices.band_indices(times, cols.mag, cols.err, good, cols.attempted)
    n = out["n_good"]
    with np.errstate(invalid="ignore"):
        out["hjd_first"] = np.where(n > 0, np.where(good, cols.hjd, np.inf).min(axis=1), np.nan)
        out["hjd_last"] = np.where(n > 0, np.where(good, cols.hjd, -np.inf).max(axis=1), np.nan)
    out["time_span"] = out["hjd_last"] - out["hjd_first"]
    return out


@dataclass
class FieldStatistics:
    """What the statistics pass produces: ``stats`` (rows of rome.lightcurve_stats) and
    ``candidates`` (rows of rome.microlensing_candidates; None unless asked for);
    ``fit_seconds`` adds up the fits' time in every worker process."""

    stats: Table
    candidates: Table | None
    n_fits: int = 0
    fit_seconds: float = 0.0
    workers: int = 1


class _FieldGeometry:
    """Per-field image arrays the pass needs: bands, datasets, visits."""

    def __init__(self, field: Field, filters: list[str]):
        images = field.images
        codes = list(field.dataset_codes)
        self.hjd = np.asarray(images["hjd"], dtype=float)
        image_codes = np.char.strip(np.asarray(images["dataset_code"]).astype(str))
        self.dataset = np.array([codes.index(c) if c in codes else -1 for c in image_codes])
        filters_of = [str(f).strip() for f in field.datasets["dataset_filter"]]
        self.band_code = {f: k for k, f in enumerate(candidates.BANDS)}
        self.dataset_band = np.array([self.band_code.get(f, -1) for f in filters_of])
        # the images of the pass, in time order, as positions on the cube's image axis
        self.all_images = field.select_images(filters)
        band = self.dataset_band[self.dataset[self.all_images]]
        instrument = np.array([c.rsplit("_", 1)[0] for c in image_codes])[self.all_images]
        visits = indices.visit_slots(self.hjd[self.all_images], band, instrument)
        # Stetson's indices on the cube's image order: the visits' images as cube
        # positions, and no band (-1) for the images the pass leaves out
        self.visits = np.where(visits >= 0, self.all_images[np.maximum(visits, 0)], -1)
        self.band = np.full(field.n_images, -1)
        self.band[self.all_images] = band
        # each filter's images (cube positions, in time order) and their times; the
        # dataset of each image of the pass
        self.images_of = {f: field.select_images([f]) for f in filters}
        self.times = {f: self.hjd[k] for f, k in self.images_of.items()}
        self.pass_dataset = self.dataset[self.all_images]


def _fit_rows(cols: _BlockColumns, geo: _FieldGeometry, rows: np.ndarray) -> list[dict | None]:
    """PSPL fits of the given rows of a block, on all images of the pass."""
    ds = geo.pass_dataset
    chosen = cols.select(geo.all_images, rows)
    fits = []
    for hjd, mag, err, good in zip(chosen.hjd, chosen.mag, chosen.err, chosen.good, strict=True):
        fits.append(
            candidates.candidate_row(hjd[good], mag[good], err[good], ds[good], geo.dataset_band)
        )
    return fits


@dataclass(frozen=True)
class _PassTask:
    """One piece of the pass: a quadrant's rows ``start:stop``, or (``field_ids``) only
    those stars of the quadrant."""

    quadrant: int
    start: int = 0
    stop: int = 0
    field_ids: np.ndarray | None = None


@dataclass(frozen=True)
class _PassPlan:
    """What every piece of a pass computes (the same in each worker)."""

    mag_col: str
    filters: tuple[str, ...]  # those with images
    fit_candidates: bool
    geometry_filters: tuple[str, ...]  # the images of _FieldGeometry


@dataclass
class _PassPart:
    """A piece's results: statistics columns (stars with good points), candidate rows."""

    stats: dict[str, list]
    cands: dict[str, list]
    n_stars: int = 0
    n_fits: int = 0
    fit_seconds: float = 0.0

    @classmethod
    def empty(cls) -> _PassPart:
        stat_names = [c.name for c in load_table_schema("lightcurve_stats").columns[3:]]
        cand_names = [c.name for c in load_table_schema("microlensing_candidates").columns[2:]]
        return cls(
            {name: [] for name in ["field_id", "filter", *stat_names]},
            {name: [] for name in ["field_id", *cand_names]},
        )

    def add(self, other: _PassPart) -> None:
        for mine, theirs in ((self.stats, other.stats), (self.cands, other.cands)):
            for name, values in theirs.items():
                mine[name].extend(values)
        self.n_stars += other.n_stars
        self.n_fits += other.n_fits
        self.fit_seconds += other.fit_seconds


def _run_task(field: Field, geo: _FieldGeometry, plan: _PassPlan, task: _PassTask) -> _PassPart:
    """The statistics (and fits) of one piece of a quadrant, streamed block by block."""
    part = _PassPart.empty()
    stat_names = list(part.stats)[2:]
    stetson_names = [n for n in stat_names if n.startswith("stetson_")]
    cand_names = list(part.cands)[1:]
    cube_layout = field.cube(task.quadrant).layout
    rows = None if task.field_ids is not None else (task.start, task.stop)
    for ids, block in quadrant_blocks(field, task.quadrant, task.field_ids, rows=rows):
        every = _BlockColumns.of(block, cube_layout, plan.mag_col)
        del block
        per_band = {}
        for flt in plan.filters:
            per_band[flt] = _block_statistics(every.select(geo.images_of[flt]), geo.times[flt])
        stetson = indices.stetson_indices(
            every.mag,
            every.err,
            every.good,
            geo.band,
            geo.visits,
            band_means={
                geo.band_code[f]: stats["weighted_mean_mag"]
                for f, stats in per_band.items()
                if f in geo.band_code
            },
        )
        for flt, stats in per_band.items():
            stats.update({n: stetson[n] for n in stetson_names})
            keep = stats["n_good"] > 0
            part.stats["field_id"].append(ids[keep])
            part.stats["filter"].append(np.full(int(keep.sum()), flt))
            for name in stat_names:
                part.stats[name].append(stats[name][keep])
        part.n_stars += len(ids)
        if not (plan.fit_candidates and per_band):
            continue
        chosen = np.flatnonzero(
            candidates.preselect(
                *(
                    np.stack([per_band[f][k] for f in per_band], axis=1)
                    for k in ("inv_eta", "bright_run", "n_good")
                )
            )
        )
        started = time.perf_counter()
        for row, fitted in zip(chosen, _fit_rows(every, geo, chosen), strict=True):
            if fitted is None:
                continue
            part.cands["field_id"].append(int(ids[row]))
            for name in cand_names:
                part.cands[name].append(fitted[name])
        part.fit_seconds += time.perf_counter() - started
        part.n_fits += len(chosen)
    return part


PARALLEL_MIN_POINTS = 10_000_000
"""Stars x images from which ``field_statistics(workers=None)`` uses every core: starting
a worker process takes ~1.5 s. Two cores, page cache warm, 2,214 images: 5,000 stars
4.2-4.5 s in one process, 3.6-3.8 s in two; 20,000 stars 19.0-19.5 s and 10.8 s."""
_TASKS_PER_WORKER = 8  # pieces small enough that the workers finish together


def _pass_tasks(field: Field, wanted: np.ndarray | None, workers: int) -> list[_PassTask]:
    """The pass cut into pieces: one per quadrant, or, for several workers, about
    _TASKS_PER_WORKER per worker, each of whole HDF5 chunks (rows in order within it)."""
    quadrants = [q for q in layout.QUADRANTS if field.quadrant_counts[q]]
    total = field.n_stars if wanted is None else len(wanted)
    size = max(1, -(-total // (workers * _TASKS_PER_WORKER))) if workers > 1 else total
    tasks = []
    for quadrant in quadrants:
        if wanted is not None:
            ids = field.quadrant_field_ids(quadrant)
            ids = ids[np.isin(ids, wanted)]
            tasks += [
                _PassTask(quadrant, field_ids=ids[k : k + size]) for k in range(0, len(ids), size)
            ]
            continue
        n_rows = field.quadrant_counts[quadrant]
        chunk = field.cube(quadrant).rows_per_chunk  # whole chunks: none inflated twice
        step = -(-size // chunk) * chunk if workers > 1 else n_rows
        tasks += [_PassTask(quadrant, k, min(n_rows, k + step)) for k in range(0, n_rows, step)]
    return tasks


# each worker process opens the field (and works out its geometry) once, for all pieces
_worker_state: dict = {}


def _worker_task(directory: str, name: str, plan: _PassPlan, task: _PassTask) -> _PassPart:
    key = (directory, name, plan.geometry_filters)
    if _worker_state.get("key") != key:
        if "field" in _worker_state:
            _worker_state["field"].close()
        field = open_field(directory, name)
        geo = _FieldGeometry(field, list(plan.geometry_filters))
        _worker_state.update(key=key, field=field, geo=geo)
    return _run_task(_worker_state["field"], _worker_state["geo"], plan, task)


def _ignore_interrupts() -> None:
    # Ctrl-C reaches the whole process group: the parent stops the pass, and the workers
    # finish their piece quietly instead of each printing a KeyboardInterrupt traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _one_blas_thread_per_child() -> Iterator[None]:
    """Processes started inside get one BLAS/OpenMP thread each (read when numpy loads):
    with one BLAS thread per core in each of one process per core, the threads that spin
    while they wait made the fits 2.3x slower (162 instead of 70 ms each, two workers on
    2 cores, 100,000 stars x 2,214 images) and the whole pass 1.7x."""
    saved = {name: os.environ.get(name) for name in _THREAD_COUNT_VARIABLES}
    os.environ.update(dict.fromkeys(_THREAD_COUNT_VARIABLES, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _parallel_parts(
    field: Field, plan: _PassPlan, tasks: list[_PassTask], workers: int
) -> Iterator[_PassPart]:
    # spawn, not fork: the caller may have threads (a server, a progress bar), and a
    # forked child inherits their locks
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_interrupts) as pool:
        with _one_blas_thread_per_child():  # the workers start at their first tasks
            futures = [
                pool.submit(_worker_task, str(field.directory), field.name, plan, task)
                for task in tasks
            ]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def field_statistics(
    field: Field,
    *,
    mag_column: str | None = None,
    filters: Iterable[str] | None = None,
    field_ids: Iterable[int] | None = None,
    fit_candidates: bool = True,
    progress: bool = False,
    workers: int | None = 1,
) -> FieldStatistics:
    """The statistics pass: per star and filter, the summary statistics and variability
    indices of rome.lightcurve_stats, and (``fit_candidates``) the PSPL fits of the stars
    passing the candidates' pre-selection (rome.microlensing_candidates).

    Streams every quadrant cube in blocks of whole rows (sequential reads, bounded
    memory); with ``field_ids``, reads only those stars' rows (in row order). With
    ``workers`` > 1, pieces of the cubes are computed in that many processes (the same
    results); ``None``: one per core when the field has at least PARALLEL_MIN_POINTS
    stars x images, else one. Star/filter pairs without any good point are left out.
    Raises InvalidRequestError for an unknown field_id, filter or magnitude column.
    """
    wanted = None
    if field_ids is not None:
        wanted = np.unique(np.asarray(list(field_ids), dtype=np.int64))
        bad = wanted[(wanted < 1) | (wanted > field.n_stars)]
        if bad.size:
            raise InvalidRequestError(
                f"field {field.name} has no star with field_id {int(bad[0])} "
                f"(field_id runs from 1 to {field.n_stars})"
            )
    mag_col = mag_column_of(field.photometry_layout, mag_column)
    filters = list(filters) if filters is not None else list(layout.FILTERS)
    selected = [f for f in filters if len(field.select_images([f]))]
    plan = _PassPlan(mag_col, tuple(selected), fit_candidates, tuple(selected or filters))
    total = field.n_stars if wanted is None else len(wanted)
    if workers is None:
        big = total * field.n_images >= PARALLEL_MIN_POINTS
        workers = (os.cpu_count() or 1) if big else 1
    tasks = _pass_tasks(field, wanted, max(1, workers))
    workers = max(1, workers) if len(tasks) > 1 else 1
    if workers > 1:
        parts = _parallel_parts(field, plan, tasks, workers)
    else:
        geo = _FieldGeometry(field, list(plan.geometry_filters))
        parts = (_run_task(field, geo, plan, task) for task in tasks)
    result = _PassPart.empty()
    with tqdm(total=total, unit="star", disable=not progress, desc=f"{field.name} stats") as bar:
        for part in parts:
            result.add(part)
            bar.update(part.n_stars)
    stats_table = _stats_table(field, result.stats, mag_col)
    cand_table = _candidates_table(field, result.cands, mag_col) if fit_candidates else None
    return FieldStatistics(stats_table, cand_table, result.n_fits, result.fit_seconds, workers)


_STATS_INTEGERS = {"field_id": np.int64, "n_good": np.int32, "bright_run": np.int32}


def _stats_table(field: Field, collected: dict[str, list], mag_col: str) -> Table:
    """rome.lightcurve_stats rows in (field_id, filter) order, whatever order the pieces
    came in."""
    schema = load_table_schema("lightcurve_stats")
    arrays = {
        name: np.concatenate(parts) if parts else np.array([]) for name, parts in collected.items()
    }
    order = np.lexsort((arrays["filter"], arrays["field_id"]))
    spec = schema.by_name["field"]
    cols = [Column(np.full(len(order), field.name), name="field", description=spec.description)]
    for name, values in arrays.items():
        spec = schema.by_name[name]
        dtype = _STATS_INTEGERS.get(name)
        values = values[order] if dtype is None else values[order].astype(dtype)
        cols.append(Column(values, name=name, unit=spec.astropy_unit, description=spec.description))
    return Table(cols, meta={"field": field.name, "mag_column": mag_col, "quality": "good"})


def _candidates_table(field: Field, cand_rows: dict[str, list], mag_col: str) -> Table:
    """rome.microlensing_candidates rows in field_id order."""
    cand_schema = load_table_schema("microlensing_candidates")
    cand_table = Table(meta={"field": field.name, "mag_column": mag_col, "quality": "good"})
    cand_table["field"] = np.full(len(cand_rows["field_id"]), field.name)
    order = np.argsort(np.asarray(cand_rows["field_id"], dtype=np.int64), kind="stable")
    for name, cand_values in cand_rows.items():
        spec = cand_schema.by_name[name]
        if spec.datatype == "char":
            column = np.asarray(cand_values, dtype=str)
        elif spec.datatype in ("int", "long"):
            column = np.asarray(cand_values, dtype=np.int64)
        else:  # None (no value) -> NaN -> NULL
            column = np.array([np.nan if v is None else v for v in cand_values], dtype=float)
        cand_table[name] = column[order] if len(column) else column
        cand_table[name].unit = spec.astropy_unit
        cand_table[name].description = spec.description
    return cand_table


def lightcurve_statistics(
    field: Field,
    *,
    mag_column: str | None = None,
    filters: Iterable[str] | None = None,
    field_ids: Iterable[int] | None = None,
    progress: bool = False,
) -> Table:
    """Per star and filter: number of good points, mean/median/min/max magnitude,
    scatter (std and robust MAD-based), median error, first/last HJD and time span, and
    the variability indices of :mod:`romerea_vo.variability.indices` (the rows of
    rome.lightcurve_stats; see :func:`field_statistics`)."""
    return field_statistics(
        field,
        mag_column=mag_column,
        filters=filters,
        field_ids=field_ids,
        fit_candidates=False,
        progress=progress,
    ).stats
