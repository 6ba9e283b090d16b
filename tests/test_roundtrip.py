"""Synthesise -> read: every value the generator wrote comes back through our reader,
and extracted lightcurves carry the injected signals of the truth table."""

from __future__ import annotations

import os
import shutil
import threading
import time

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from romerea_vo import lightcurves, statistics_pass
from romerea_vo.errors import FieldFormatError
from romerea_vo.products import open_field
from romerea_vo.products.layout import MJD_OFFSET
from romerea_vo.products.page_cache import cached_bytes

from .conftest import read_ahead_threads

FIELD = "ROME-FIELD-01"


@pytest.fixture(scope="module")
def field(synthetic_field):
    with open_field(synthetic_field) as f:
        yield f


@pytest.fixture(scope="module")
def truth(synthetic_field) -> Table:
    return Table.read(synthetic_field / f"{FIELD}_synthetic_truth.ecsv")


def test_every_table_value_comes_back(field, synthetic_field):
    with fits.open(synthetic_field / f"{FIELD}_field_crossmatch.fits") as hdul:
        raw = {h.name: h.data for h in hdul[1:]}
        ours = {
            "FIELD_INDEX": field.field_index,
            "DATASETS": field.datasets,
            "STARS": field.stars,
            "IMAGES": field.images,
            "STAMPS": field.stamps,
        }
        for hdu, table in ours.items():
            assert table.colnames == list(raw[hdu].columns.names), hdu
            for name in table.colnames:
                expected = raw[hdu][name]
                if name == "gaia_source_id":
                    ids = np.char.strip(expected.astype(str))
                    matched = np.char.isdigit(ids) & (ids != "0")
                    assert np.array_equal(~table[name].mask, matched), (hdu, name)
                    got = np.asarray(table[name])[matched]
                    assert [str(v) for v in got] == list(ids[matched]), (hdu, name)
                elif expected.dtype.kind in "SU":
                    np.testing.assert_array_equal(table[name], np.char.strip(expected.astype(str)))
                else:
                    np.testing.assert_array_equal(table[name], expected, err_msg=f"{hdu}.{name}")
        assert field.gaia_release == hdul[0].header["GAIA_DR"] == "Gaia-EDR3"


@pytest.mark.parametrize("quadrant", [1, 2, 3, 4])
def test_every_cube_value_comes_back(field, synthetic_field, quadrant):
    with h5py.File(synthetic_field / f"{FIELD}_quad{quadrant}_photometry.hdf5", "r") as h:
        raw = h["dataset_photometry"][()]
    cube = field.cube(quadrant)
    np.testing.assert_array_equal(cube.read_block(0, cube.n_stars), raw)
    # and through the star look-up: FIELD_INDEX (quadrant, quadrant_id) -> row
    ids = field.quadrant_field_ids(quadrant)
    for row in (0, len(ids) // 2, len(ids) - 1):
        star = field.star(int(ids[row]))
        assert (star.quadrant, star.row) == (quadrant, row)
        pts = lightcurves.read_points(field, star, quality="all")
        attempted = ~((raw[row][:, 1] == 0) & (raw[row][:, 2] == 0)) & (raw[row][:, 0] > 0)
        assert len(pts) == attempted.sum()
        np.testing.assert_array_equal(pts.data, raw[row][pts.image_index])


@pytest.mark.parametrize("quadrant", [1, 3])
def test_streamed_blocks_are_the_cube_rows(field, synthetic_field, quadrant):
    """quadrant_blocks reads every block into one buffer: each block as yielded is the
    cube's rows, and so is a copy taken before the next block overwrites the buffer."""
    with h5py.File(synthetic_field / f"{FIELD}_quad{quadrant}_photometry.hdf5", "r") as h:
        raw = h["dataset_photometry"][()]
    row_bytes = raw.shape[1] * raw.shape[2] * 8
    copies, start = [], 0
    for ids, block in lightcurves.quadrant_blocks(field, quadrant, block_bytes=7 * row_bytes):
        assert len(block) <= 7
        np.testing.assert_array_equal(block, raw[start : start + len(block)])
        np.testing.assert_array_equal(ids, field.quadrant_field_ids(quadrant)[start:][: len(ids)])
        copies.append(block.copy())
        start += len(block)
    assert start == len(raw) and len(copies) > 2
    np.testing.assert_array_equal(np.concatenate(copies), raw)


def _cached(path, start: int, length: int) -> int | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return cached_bytes(fd, start, length)
    finally:
        os.close(fd)


@pytest.mark.parametrize("cached_rows", [0, 40])
def test_blocks_the_page_cache_lacks_are_read_from_the_disk_directly(
    synthetic_field, tmp_path, cached_rows
):
    """A stream copies the blocks the page cache holds and reads the others straight from
    the disk (O_DIRECT): every block is the cube's rows either way, and reading them put
    (almost) nothing into the cache."""
    copy = shutil.copytree(synthetic_field, tmp_path / FIELD)
    path = copy / f"{FIELD}_quad1_photometry.hdf5"
    with h5py.File(path, "r") as h:
        raw = h["dataset_photometry"][()]
        offset = h["dataset_photometry"].id.get_offset()
    row_bytes = raw.shape[1] * raw.shape[2] * 8
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages would stay
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if cached_rows:  # the first rows into the cache, and only those (no read-ahead marks)
            os.posix_fadvise(fd, offset, cached_rows * row_bytes, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)
    with open_field(copy) as cold:
        with cold.cube(1).stream() as stream:
            direct = stream.reads_directly
        if not direct:
            pytest.skip("no direct reads here (no cachestat before Linux 6.5, or no O_DIRECT)")
        before = _cached(path, 0, size)
        deadline = time.monotonic() + 30  # WILLNEED's reads are asynchronous
        while before is not None and before < cached_rows * row_bytes:
            assert time.monotonic() < deadline, "the first rows never reached the cache"
            time.sleep(0.01)
            before = _cached(path, 0, size)
        assert before is not None and before < (cached_rows + 2) * row_bytes + 65536
        descriptors = len(os.listdir("/proc/self/fd"))
        got = []
        for _ids, block in lightcurves.quadrant_blocks(cold, 1, block_bytes=7 * row_bytes):
            got.append(block.copy())
        np.testing.assert_array_equal(np.concatenate(got), raw)
        assert len(os.listdir("/proc/self/fd")) == descriptors  # the stream's are closed
        after = _cached(path, 0, size)
    assert after is not None and after - before <= 7 * row_bytes + 65536, (before, after, size)


def test_a_chunked_compressed_cube_streams_whole_chunks(synthetic_field, tmp_path):
    """Cubes that are not one contiguous array are read through h5py, in blocks of whole
    chunks; the statistics are those of the contiguous original."""
    copy = shutil.copytree(synthetic_field, tmp_path / FIELD)
    path = copy / f"{FIELD}_quad2_photometry.hdf5"
    with h5py.File(path, "r") as h:
        raw = h["dataset_photometry"][()]
    path.unlink()
    with h5py.File(path, "w") as h:
        h.create_dataset("dataset_photometry", data=raw, chunks=(5, *raw.shape[1:]),
                         compression="gzip")  # fmt: skip
    row_bytes = raw.shape[1] * raw.shape[2] * 8
    with open_field(copy) as chunked:
        assert chunked.cube(2).rows_per_chunk == 5
        sizes, got = [], []
        for _ids, block in lightcurves.quadrant_blocks(chunked, 2, block_bytes=7 * row_bytes):
            sizes.append(len(block))
            got.append(block.copy())
        assert sizes[:-1] == [5] * (len(sizes) - 1)  # 7 rows' budget: one whole chunk
        np.testing.assert_array_equal(np.concatenate(got), raw)
        stats = statistics_pass.field_statistics(chunked, fit_candidates=False)
    with open_field(synthetic_field) as original:
        expected = statistics_pass.field_statistics(original, fit_candidates=False)
    for name in expected.stats.colnames:
        np.testing.assert_array_equal(stats.stats[name], expected.stats[name], err_msg=name)


def test_the_pass_in_worker_processes_gives_the_same_tables(field):
    """Pieces of the cubes computed in two processes, merged in whatever order they
    finish: the same rows, in the same order, as the pass in this process (values equal
    to the last bit or two: numpy's sums may vectorise differently over blocks of
    other shapes, and the excess Abbe value's running sums run over a block's stars, so
    its difference of two terms of ~0.5 differs by ~1e-13 with other blocks)."""
    some = [3, 411, 799, 800, 17]
    for ids in (None, some):
        alone = statistics_pass.field_statistics(field, field_ids=ids)
        shared = statistics_pass.field_statistics(field, field_ids=ids, workers=2)
        assert (alone.workers, shared.workers) == (1, 2)
        assert shared.n_fits == alone.n_fits and len(shared.candidates) == len(alone.candidates)
        for mine, theirs in ((shared.stats, alone.stats), (shared.candidates, alone.candidates)):
            assert mine.colnames == theirs.colnames
            for name in theirs.colnames:
                if theirs[name].dtype.kind == "f":
                    np.testing.assert_allclose(
                        mine[name], theirs[name], rtol=1e-12, atol=1e-12, err_msg=name
                    )
                else:
                    np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    assert set(alone.stats["field_id"]) <= set(some)
    assert not read_ahead_threads()


@pytest.mark.parametrize("quality", ["good", "all"])
def test_streamed_points_are_each_stars_points(field, quality):
    """stars_points over a whole quadrant (the export's reader) gives every star's points
    as read_points does: same images, in time order, same values (the images are not in
    time order in the cube, so the reordering is exercised)."""
    images = field.select_images(None, None)
    assert not np.all(images == np.arange(len(images)))
    ids = field.quadrant_field_ids(2)
    lay = field.cube(2).layout
    parts = list(
        lightcurves.stars_points(
            field, 2, np.arange(len(ids)), lay.columns[1:], quality=quality, block_bytes=300_000
        )
    )
    got_ids = ids[np.concatenate([p.which for p in parts])]
    got_image = np.concatenate([p.image_index for p in parts])
    got_rows = np.stack([np.concatenate([p.columns[c] for p in parts]) for c in lay.columns], 1)
    expected = lightcurves.read_points_many(field, [int(i) for i in ids], quality=quality)
    np.testing.assert_array_equal(got_ids, np.repeat(ids, [len(p) for p in expected]))
    np.testing.assert_array_equal(got_image, np.concatenate([p.image_index for p in expected]))
    np.testing.assert_array_equal(got_rows, np.concatenate([p.data for p in expected]))


def _rows_to_read(n_rows: int) -> np.ndarray:
    """Cube rows a bulk request might name: a dense run with holes (read as spans, the
    holes skipped), scattered rows (read one by one) and a run of every row."""
    dense = [r for r in range(60) if r % 3]
    return np.array(dense + list(range(60, 150, 10)) + list(range(150, n_rows)))


def _assert_stars_points(field, quadrant, rows, selection, block_rows=8):
    ids = field.quadrant_field_ids(quadrant)
    lay = field.cube(quadrant).layout
    mjd_range = selection.pop("mjd_range", None)
    seen = np.zeros(len(rows), int)
    for pts in lightcurves.stars_points(
        field, quadrant, rows, lay.columns[1:], mjd_range=mjd_range,
        block_bytes=block_rows * field.n_images * lay.width * 8, **selection,
    ):  # fmt: skip
        assert set(pts.columns) == set(lay.columns)
        for p in range(pts.first, pts.first + pts.count):
            seen[p] += 1
            expected = lightcurves.read_points(field, int(ids[rows[p]]), **selection)
            keep = np.ones(len(expected), bool)
            if mjd_range is not None:
                mjd = expected.hjd - MJD_OFFSET
                keep = (mjd >= mjd_range[0]) & (mjd <= mjd_range[1])
            mine = pts.which == p
            np.testing.assert_array_equal(pts.image_index[mine], expected.image_index[keep])
            for name in lay.columns:
                np.testing.assert_array_equal(
                    pts.columns[name][mine], expected.column(name)[keep], err_msg=name
                )
    assert np.all(seen == 1)  # every star in exactly one block


@pytest.mark.parametrize(
    "selection",
    [
        {},
        {"filters": "ip"},
        {"quality": "all"},
        {"quality": "valid", "datasets": "ROME-FIELD-01_lsc-doma-1m0-05-fa15_rp"},
        {"filters": ["gp", "rp"], "mjd_range": (57900.0, 58300.0)},
    ],
)
def test_stars_points_are_each_stars_points(field, selection):
    """The bulk reader gives each named star the points read_points gives it (selection,
    time order, values), whether its rows are read as spans, with holes, or one by one."""
    _assert_stars_points(field, 2, _rows_to_read(field.quadrant_counts[2]), dict(selection))


def test_stars_points_put_points_in_time_order(synthetic_field, tmp_path):
    """Where a star's cube hjd are out of the IMAGES order, its points come sorted by
    hjd, as read_points sorts them."""
    copy = shutil.copytree(synthetic_field, tmp_path / FIELD)
    rows = (4, 61, 150)  # in a span with holes, a scattered row, a whole span
    with open_field(copy) as f:
        ids = f.quadrant_field_ids(2)
        swapped = [lightcurves.read_points(f, int(ids[row])).image_index[5:7] for row in rows]
    with h5py.File(copy / f"{FIELD}_quad2_photometry.hdf5", "r+") as h:
        cube = h["dataset_photometry"]
        for row, (a, b) in zip(rows, swapped, strict=True):  # two good points of the star
            hjd = cube[row, :, 0]
            hjd[a], hjd[b] = hjd[b], hjd[a]
            cube[row, :, 0] = hjd
    with open_field(copy) as f:
        resorted = lightcurves.read_points(f, int(ids[rows[0]])).image_index
        assert list(resorted[5:7]) == list(swapped[0][::-1])
        _assert_stars_points(f, 2, _rows_to_read(f.quadrant_counts[2]), {})


def test_a_pass_stopped_early_leaves_no_reading_thread(field):
    blocks = lightcurves.quadrant_blocks(field, 1, block_bytes=1)  # one star per block
    next(blocks)
    next(blocks)  # the third block is being read ahead now
    blocks.close()
    assert not read_ahead_threads()
    rows = np.arange(field.quadrant_counts[1])
    points = lightcurves.stars_points(field, 1, rows, ["hjd"], block_bytes=1)
    next(points)  # blocks are being prepared ahead now
    points.close()
    assert not read_ahead_threads()


def test_produced_ahead_makes_each_next_item_in_a_worker_thread():
    """The same items; each made in the worker thread (the caller meanwhile works on the
    one before); an error reaches the caller; stopping early closes the producer, once
    the item in flight is made, and leaves no thread behind."""
    made_in: list[str] = []
    closed = threading.Event()

    def items(n: int, fail_at: int | None = None):
        try:
            for i in range(n):
                made_in.append(threading.current_thread().name)
                if i == fail_at:
                    raise FieldFormatError(f"cube truncated at item {i}")
                yield i
        finally:
            closed.set()

    def producers() -> list[threading.Thread]:
        return [t for t in threading.enumerate()
                if t.name.startswith(lightcurves.PRODUCE_AHEAD_THREAD)]  # fmt: skip

    assert list(lightcurves.produced_ahead(items(5))) == [0, 1, 2, 3, 4]
    assert made_in and all(n.startswith(lightcurves.PRODUCE_AHEAD_THREAD) for n in made_in)
    assert closed.is_set() and not producers()

    closed.clear()
    with pytest.raises(FieldFormatError, match="truncated at item 2"):
        list(lightcurves.produced_ahead(items(5, fail_at=2)))
    assert closed.is_set() and not producers()

    closed.clear()
    made_in.clear()
    ahead = lightcurves.produced_ahead(items(1000), depth=3)
    assert next(ahead) == 0
    deadline = time.monotonic() + 60
    while len(made_in) < 4 and time.monotonic() < deadline:  # 0 taken, 1-3 made ahead
        time.sleep(0.01)
    time.sleep(0.2)  # (a producer that ran further ahead would have by now)
    assert len(made_in) == 4
    assert next(ahead) == 1
    ahead.close()
    assert closed.is_set() and not producers() and len(made_in) <= 5


def test_quality_cuts(field, synthetic_field):
    # a star with at least one failed fit (-9999.99, qc bit 1) among its points
    with h5py.File(synthetic_field / f"{FIELD}_quad1_photometry.hdf5", "r") as h:
        raw = h["dataset_photometry"][()]
    row = int(np.flatnonzero((raw[:, :, 3] == -9999.99).any(axis=1))[0])
    star = field.star(int(field.quadrant_field_ids(1)[row]))
    all_pts = lightcurves.read_points(field, star, quality="all")
    valid = lightcurves.read_points(field, star, quality="valid")
    good = lightcurves.read_points(field, star, quality="good")
    assert len(all_pts) > len(valid) >= len(good) > 0
    assert np.all(good.column("qc_flag") == 0)
    assert np.all(valid.column("normalized_mag") > 0) and np.all(
        valid.column("normalized_mag_err") > 0
    )
    failed = all_pts.column("calibrated_mag") == -9999.99
    assert failed.sum() == (raw[row, :, 3] == -9999.99).sum() > 0  # "all" keeps failed fits
    assert np.all(all_pts.column("qc_flag")[failed].astype(int) & 1)
    assert np.all(np.diff(good.hjd) >= 0)


def _paczynski_dm(t, t0, te, u0, fs):
    u = np.sqrt(u0**2 + ((t - t0) / te) ** 2)
    magnification = (u**2 + 2) / (u * np.sqrt(u**2 + 4))
    return -2.5 * np.log10(fs * magnification + 1 - fs)


def _model_dm(row, t, meta):
    """The truth table's signal models, restated from its metadata."""
    kind = row["kind"]
    if kind == "microlensing":
        return _paczynski_dm(t, row["t0"], row["tE"], row["u0"], row["fs"])
    x = (t - meta["phase_reference_hjd"]) / row["period"] + row["phase"] / (2 * np.pi)
    if kind == "periodic":
        return row["amplitude"] * np.sin(2 * np.pi * x)
    x = np.mod(x, 1.0)
    if kind == "eclipsing":
        w = row["width"]
        return row["amplitude"] * (
            np.exp(-0.5 * (np.minimum(x, 1 - x) / w) ** 2)
            + 0.4 * np.exp(-0.5 * ((x - 0.5) / w) ** 2)
        )
    if kind == "sawtooth":
        w = row["width"]
        return row["amplitude"] * np.where(x < w, 1 - 2 * x / w, -1 + 2 * (x - w) / (1 - w))
    assert kind == "trend"
    span = meta["last_hjd"] - meta["first_hjd"]
    return row["amplitude"] * (2 * (t - meta["first_hjd"]) / span - 1)


def test_lightcurves_carry_the_injected_signals(field, truth):
    kinds = set(truth["kind"])
    assert {"constant", "microlensing", "periodic", "eclipsing", "sawtooth"} <= kinds
    explained = visible = 0
    # irregular variables: their modes are not in the table, only their rms
    for row in truth[~np.isin(truth["kind"], ["constant", "irregular"])]:
        lc = lightcurves.lightcurve(field, int(row["field_id"]), filters="ip")
        t, mag, err = (np.asarray(lc[c]) for c in ("hjd", "normalized_mag", "normalized_mag_err"))
        assert len(t) > 10
        model = row["base_mag_i"] + _model_dm(row, t, truth.meta)
        # capped: the generator adds unflagged outliers and underestimates some errors
        chi2_model = np.mean(np.minimum(((mag - model) / err) ** 2, 25))
        chi2_flat = np.mean(np.minimum(((mag - np.median(mag)) / err) ** 2, 25))
        assert chi2_model < 5, (row["field_id"], row["kind"], chi2_model)
        # a signal that peaks in a season gap can look flat: count the visible ones
        if np.count_nonzero(np.abs(model - np.median(model)) > 3 * err) >= 5:
            visible += 1
            explained += chi2_flat > 1.5 * chi2_model
    assert visible >= 5 and explained >= 0.8 * visible


def test_batch_table_has_ids_and_stars_in_order(field):
    ids = [7, 2, 7]
    table = lightcurves.lightcurves(field, ids, filters=["rp", "ip"])
    assert table.colnames[:2] == ["field", "field_id"]
    single = {i: lightcurves.lightcurve(field, i, filters=["rp", "ip"]) for i in (7, 2)}
    n7, n2 = len(single[7]), len(single[2])
    assert n7 > 0 and n2 > 0
    np.testing.assert_array_equal(table["field_id"], [7] * n7 + [2] * n2 + [7] * n7)
    np.testing.assert_array_equal(
        table["normalized_mag"][n7 : n7 + n2], single[2]["normalized_mag"]
    )
    np.testing.assert_array_equal(table["hjd"][n7 + n2 :], single[7]["hjd"])
    assert set(table["filter"]) <= {"rp", "ip"}
