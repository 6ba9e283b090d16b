"""Read pyDANDIA field data products of every era (ROME_FORMATS.md §2-§4).

A field directory holds ``<FIELD>_field_crossmatch.fits`` and four
``<FIELD>_quad<q>_photometry.hdf5`` cubes. :func:`open_field` opens it as one
:class:`Field`. Tables are read by column *name*; the cubes are opened lazily, and
only their headers are touched until photometry is asked for. Every file is opened
read-only.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from astropy.io import fits
from astropy.table import MaskedColumn, Table

from ..errors import (
    CompressedFieldError,
    CubeShapeError,
    FieldFormatError,
    InvalidRequestError,
)
from . import layout, lookup
from .layout import PHOTOMETRY_LAYOUTS, PhotometryLayout
from .page_cache import cached_bytes

_CROSSMATCH_SUFFIX = "_field_crossmatch.fits"

PAGE_BYTES = 4096
"""Alignment of a direct (``O_DIRECT``) read: its file offset, length and buffer."""
_DIRECT_READS = all(hasattr(os, n) for n in ("O_DIRECT", "posix_fadvise", "preadv"))


def parse_gaia_source_ids(raw: Sequence[str]) -> MaskedColumn:
    """Gaia source ids as a masked int64 column.

    ``None`` (unmatched in FIELD_INDEX), ``0.0``/``0`` (unmatched in STARS), blank
    and anything that is not a plain decimal integer become masked. The last case
    covers the pyDANDIA TEST1 file, whose ids are truncated float reprs such as
    ``4.056350970744342e+`` that no longer identify a source.
    """
    # Vectorised (a 400,000-star field: 30 ms instead of 0.5 s in a Python loop, paid by
    # every service worker on opening the field): 1 to 20 decimal digits, blanks around.
    text = np.char.strip(np.asarray(raw, dtype=str))
    digits = np.char.isdecimal(text) & (np.char.str_len(text) <= 20)
    values = np.zeros(len(text), dtype=np.int64)
    if digits.any():
        values[digits] = text[digits].astype(np.int64)
    return MaskedColumn(values, mask=values <= 0, name="gaia_source_id")


def _keyword_text(header: fits.Header, keyword: str) -> str | None:
    """A string keyword, or None when absent or blank (astropy may give an Undefined)."""
    value = header.get(keyword)
    return value.strip() or None if isinstance(value, str) else None


def _read_table(hdu: fits.BinTableHDU) -> Table:
    table = Table(hdu.data, copy=False)
    table.convert_bytestring_to_unicode()
    for name in table.colnames:
        if table[name].dtype.kind == "U":
            table[name] = np.char.strip(table[name])
    return table


@dataclass(frozen=True)
class HDUMap:
    """Which HDU of the crossmatch file holds which table (by EXTNAME, else by position)."""

    field_index: int
    datasets: int
    stars: int
    images: int
    stamps: int | None
    normalizations: tuple[int, ...]


def _map_hdus(hdul: fits.HDUList, path: Path) -> HDUMap:
    names = [h.name.upper() for h in hdul]
    found = {}
    for pos, name in enumerate(layout.HDU_ORDER, start=1):
        if name in names:
            found[name] = names.index(name)
        elif pos < len(hdul) and isinstance(hdul[pos], fits.BinTableHDU) and not names[pos]:
            # pyDANDIA's own loader reads by position; accept unnamed extensions there.
            found[name] = pos
    missing = [n for n in layout.HDU_ORDER[:4] if n not in found]
    if missing:
        raise FieldFormatError(
            f"{path.name}: missing extension(s) {', '.join(missing)}; found "
            f"{', '.join(n or '(unnamed)' for n in names[1:]) or 'no extensions'}"
        )
    norms = tuple(i for i, n in enumerate(names) if n.startswith("NORMALIZATIONS"))
    return HDUMap(
        found["FIELD_INDEX"],
        found["DATASETS"],
        found["STARS"],
        found["IMAGES"],
        found.get("STAMPS"),
        norms,
    )


def _canonical_star_columns(stars: Table) -> None:
    """Map the three proper-motion spellings onto ``pm_ra, pm_ra_error, pm_dec, pm_dec_error``."""
    if "proper_motion" in stars.colnames and "pm" not in stars.colnames:
        stars.rename_column("proper_motion", "pm")  # era A: total proper motion
    for spelling in layout.PROPER_MOTION_SPELLINGS[1:]:
        for old, new in zip(spelling, layout.CANONICAL_PM, strict=True):
            if old in stars.colnames and new not in stars.colnames:
                stars.rename_column(old, new)


class QuadrantCube:
    """One quadrant's photometry cube, shape (n_stars, n_images, n_columns), read-only.

    pyDANDIA always writes the cube contiguous and unfiltered, so a star's row is one
    run of bytes at a known file offset. Rows are read with positional reads
    (``os.preadv``) of whole rows and the images selected in numpy: ~20 us per star
    for a 2,214-image row, where the documented h5py fancy-index recipe costs ~0.5 ms
    and a memory map ~70 us (minor page faults on every fresh row); see
    benchmarks/bench_lightcurves.py. Positional reads share no file position, so
    threads may read concurrently. Chunked or compressed cubes, which pyDANDIA never
    writes, are read through h5py.
    """

    def __init__(self, path: Path, quadrant: int, n_stars: int, n_images: int):
        self.path = path
        self.quadrant = quadrant
        self._fd: int | None = None
        if not path.exists():
            compressed = path.with_name(path.name + ".bz2")
            if compressed.exists():
                raise CompressedFieldError(
                    f"{compressed} is bzip2-compressed; decompress it first "
                    f"(bunzip2 -k {compressed}) and open the field again"
                )
            raise FieldFormatError(f"quadrant {quadrant} photometry file is missing: {path}")
        try:
            self._h5 = h5py.File(path, "r")
        except OSError as exc:
            raise FieldFormatError(
                f"{path.name} cannot be opened as HDF5 (truncated or corrupt file?): {exc}"
            ) from None
        try:
            self._open_dataset(n_stars, n_images)
        except FieldFormatError:
            self.close()
            raise

    def _open_dataset(self, n_stars: int, n_images: int) -> None:
        name = self.path.name
        if layout.CUBE_DATASET not in self._h5:
            raise FieldFormatError(
                f"{name} has no root dataset {layout.CUBE_DATASET!r} "
                f"(found: {', '.join(self._h5.keys()) or 'nothing'})"
            )
        ds = self._h5[layout.CUBE_DATASET]
        shape = ds.shape
        if len(shape) != 3 or shape[2] not in PHOTOMETRY_LAYOUTS:
            raise CubeShapeError(
                f"{name}: dataset shape {shape} is not (stars, images, 7|14|15|17)"
            )
        if shape[0] != n_stars or shape[1] != n_images:
            raise CubeShapeError(
                f"{name}: cube shape {shape} disagrees with the crossmatch file, which "
                f"puts {n_stars} stars in quadrant {self.quadrant} and lists {n_images} images"
            )
        self.shape: tuple[int, int, int] = shape
        self.layout: PhotometryLayout = PHOTOMETRY_LAYOUTS[shape[2]]
        self._dataset = ds
        self._row_bytes = shape[1] * shape[2] * 8
        offset = ds.id.get_offset()
        contiguous = ds.chunks is None and ds.compression is None and not ds._filters
        if not (contiguous and ds.dtype == np.dtype("<f8") and hasattr(os, "preadv")):
            return
        if offset is None:  # storage never allocated: the cube was never written
            if n_stars:
                raise FieldFormatError(f"{name}: the photometry dataset holds no data")
            return
        needed = offset + ds.size * 8
        size = os.path.getsize(self.path)
        if size < needed:
            raise FieldFormatError(
                f"{name} is truncated: {size} bytes, but its photometry needs {needed} bytes"
            )
        self._offset = offset
        self._fd = os.open(self.path, os.O_RDONLY)

    def __repr__(self) -> str:
        return f"<QuadrantCube {self.path.name} {self.shape} era {self.layout.era}>"

    @property
    def n_stars(self) -> int:
        return self.shape[0]

    @property
    def rows_per_chunk(self) -> int:
        """Star rows per HDF5 chunk (1 for a contiguous cube): a block read should take
        whole chunks, or a compressed chunk is inflated once per block that touches it."""
        chunks = self._dataset.chunks
        return int(chunks[0]) if chunks else 1

    def _pread_rows(
        self, start: int, stop: int, out: np.ndarray | None = None, fd: int | None = None
    ) -> np.ndarray:
        fd = self._fd if fd is None else fd
        assert fd is not None  # opened by the caller
        if out is None:
            out = np.empty((stop - start, *self.shape[1:]), dtype="<f8")
        view = memoryview(out).cast("B")  # type: ignore[arg-type]  # typed from Python 3.12
        position, done = self._offset + start * self._row_bytes, 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], position + done)
            if n <= 0:
                raise FieldFormatError(f"{self.path.name} ended early: was it truncated?")
            done += n
        return out

    def read_star(self, row: int, images: np.ndarray | slice = slice(None)) -> np.ndarray:
        """One star's points, shape (n_selected_images, n_columns), as a new array."""
        if self._fd is None:
            return self._dataset[row][images]
        return self._pread_rows(row, row + 1)[0][images]

    def read_block(self, start: int, stop: int) -> np.ndarray:
        """Contiguous star rows [start, stop) with every image, as a new array (a stream
        of blocks reads through :meth:`stream` into reused buffers)."""
        if self._fd is None:
            return self._dataset[start:stop]
        return self._pread_rows(start, stop)

    def stream(self) -> CubeStream:
        """A :class:`CubeStream` over this cube's rows (close it, or use ``with``)."""
        return CubeStream(self)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._h5.close()


class CubeStream:
    """One pass over a cube's rows in blocks: rows the page cache holds are copied from
    it, the others are read from the disk straight into the stream's buffer (O_DIRECT).

    On this VM a cold buffered read costs the kernel 0.35-1.7 CPU seconds a GB (filling
    the page cache, then copying out of it: 53 % of all CPU time of the statistics pass in
    a perf profile), a direct read ~0.05: the pass over a 30 GB field without fits took
    23-30 s and 2 system CPU seconds instead of 44-45 s and 35-38. And a once-read field
    no longer evicts everything else from the cache. A block is copied when at least half
    of it is cached (``cachestat``). Where the kernel has no ``cachestat`` (before Linux
    6.5) or the file system no direct I/O, or for a cube read through h5py, the reads are
    the cube's buffered ones. The stream's two descriptors live as long as the stream, so
    that an idle cube keeps one. Threads may read blocks of one stream concurrently.
    """

    def __init__(self, cube: QuadrantCube):
        self.cube = cube
        self._direct_fd: int | None = None
        self._cached_fd: int | None = None
        self._direct_ok = False
        if not (_DIRECT_READS and cube._fd is not None):
            return
        if cached_bytes(cube._fd, 0, PAGE_BYTES) is None:
            return
        try:
            self._direct_fd = os.open(cube.path, os.O_RDONLY | os.O_DIRECT)
        except OSError:  # a file system without direct I/O
            return
        try:  # copies what the cache holds without read-ahead pulling the next blocks in
            self._cached_fd = os.open(cube.path, os.O_RDONLY)
            os.posix_fadvise(self._cached_fd, 0, 0, os.POSIX_FADV_RANDOM)
        except OSError:  # out of descriptors, say: the cube's own buffered reads will do
            self.close()
            return
        self._direct_ok = True

    def __enter__(self) -> CubeStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def reads_directly(self) -> bool:
        """Whether blocks the page cache lacks are read with O_DIRECT."""
        return self._direct_ok

    def buffer(self, rows: int) -> np.ndarray:
        """A page-aligned byte buffer that :meth:`read` can read ``rows`` rows into
        (with room for the pages around them)."""
        size = rows * self.cube._row_bytes + 2 * PAGE_BYTES
        raw = np.empty(size + PAGE_BYTES, dtype=np.uint8)
        skip = -raw.ctypes.data % PAGE_BYTES
        return raw[skip : skip + size]

    def read(self, start: int, stop: int, buffer: np.ndarray) -> np.ndarray:
        """Rows [start, stop) with every image, read into ``buffer`` (from
        :meth:`buffer`) and returned as a view of it. Raises FieldFormatError for a
        truncated cube."""
        cube = self.cube
        count = (stop - start) * cube._row_bytes
        shape = (stop - start, *cube.shape[1:])
        if cube._fd is None:
            rows = buffer[:count].view("<f8").reshape(shape)
            cube._dataset.read_direct(rows, np.s_[start:stop])
            return rows
        position = cube._offset + start * cube._row_bytes
        lead = position % PAGE_BYTES
        rows = buffer[lead : lead + count].view("<f8").reshape(shape)
        cached = None
        if self._direct_ok and self._cached_fd is not None:
            cached = cached_bytes(self._cached_fd, position - lead, lead + count)
        if cached is None:  # no direct reads: buffered, with the kernel's read-ahead
            return cube._pread_rows(start, stop, rows)
        if 2 * cached < count and self._read_direct(position - lead, lead + count, buffer):
            return rows
        return cube._pread_rows(start, stop, rows, self._cached_fd)

    def _read_direct(self, position: int, count: int, buffer: np.ndarray) -> bool:
        """Bytes [position, position + count) of the file into ``buffer`` by direct reads
        of whole pages; False if the file system refuses direct I/O (buffered reads are
        then used from now on)."""
        fd = self._direct_fd
        if fd is None or not self._direct_ok:
            return False
        view = memoryview(buffer)[: -(-count // PAGE_BYTES) * PAGE_BYTES]  # type: ignore[arg-type]
        done = 0
        while done < count:
            try:
                n = os.preadv(fd, [view[done:]], position + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct_ok = False  # the fd stays open until close(): threads share it
                return False
            if n <= 0 or (n % PAGE_BYTES and done + n < count):
                raise FieldFormatError(f"{self.cube.path.name} ended early: was it truncated?")
            done += n
        return True

    def close(self) -> None:
        for fd in (self._direct_fd, self._cached_fd):
            if fd is not None:
                os.close(fd)
        self._direct_fd = self._cached_fd = None
        self._direct_ok = False


class Field:
    """One ROME field's data products, opened read-only. Use :func:`open_field`."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.name = name
        self.crossmatch_path = directory / layout.crossmatch_filename(name)
        try:
            self._hdul = fits.open(self.crossmatch_path, mode="readonly", memmap=True)
            self._hdul.verify("silentfix")
            self.hdus = _map_hdus(self._hdul, self.crossmatch_path)
            self.field_index = self._load_field_index()
            self.datasets = _read_table(self._hdul[self.hdus.datasets])
            self.images = _read_table(self._hdul[self.hdus.images])
        except (OSError, TypeError, ValueError, KeyError) as exc:
            raise FieldFormatError(
                f"{self.crossmatch_path.name} cannot be read as a field crossmatch file: {exc}"
            ) from None
        self._check_tables()
        header = self._hdul[0].header
        self.primary_ref_id = _keyword_text(header, "PRIREFID")
        self.gaia_release = _keyword_text(header, "GAIA_DR")
        self._cubes: dict[int, QuadrantCube] = {}
        self._cube_lock = threading.Lock()
        self._image_selections: dict[tuple, np.ndarray] = {}
        self._quadrant_ids: dict[int, np.ndarray] = {}

    # --- tables -------------------------------------------------------------------

    def _load_field_index(self) -> Table:
        table = _read_table(self._hdul[self.hdus.field_index])
        missing = [c for c in layout.FIELD_INDEX_FIXED if c not in table.colnames]
        if missing:
            raise FieldFormatError(
                f"{self.crossmatch_path.name}: FIELD_INDEX lacks column(s) {', '.join(missing)}"
            )
        table["gaia_source_id"] = parse_gaia_source_ids(table["gaia_source_id"])
        return table

    def _check_tables(self) -> None:
        fi = self.field_index
        n = len(fi)
        if n and not np.array_equal(np.asarray(fi["field_id"]), np.arange(1, n + 1)):
            raise FieldFormatError(
                f"{self.crossmatch_path.name}: FIELD_INDEX field_id is not 1..{n} in row order"
            )
        for col in ("dataset_code", "dataset_filter", "primary_ref"):
            if col not in self.datasets.colnames:
                raise FieldFormatError(f"{self.crossmatch_path.name}: DATASETS lacks {col!r}")
        for col in ("filename", "dataset_code", "filter", "hjd"):
            if col not in self.images.colnames:
                raise FieldFormatError(f"{self.crossmatch_path.name}: IMAGES lacks {col!r}")
        unknown = set(np.unique(self.images["dataset_code"])) - set(self.datasets["dataset_code"])
        if unknown:
            raise FieldFormatError(
                f"{self.crossmatch_path.name}: IMAGES names datasets missing from DATASETS: "
                f"{', '.join(sorted(unknown))}"
            )

    @functools.cached_property
    def stars(self) -> Table:
        """STARS (read on first use; proper-motion columns under the ``pm_ra`` spelling)."""
        stars = _read_table(self._hdul[self.hdus.stars])
        _canonical_star_columns(stars)
        if len(stars) != len(self.field_index):
            raise FieldFormatError(
                f"{self.crossmatch_path.name}: STARS has {len(stars)} rows, FIELD_INDEX "
                f"{len(self.field_index)}"
            )
        if "gaia_source_id" in stars.colnames:
            stars["gaia_source_id"] = parse_gaia_source_ids(stars["gaia_source_id"])
        return stars

    @functools.cached_property
    def stamps(self) -> Table | None:
        """STAMPS, or None for era-A files that have no such HDU."""
        return None if self.hdus.stamps is None else _read_table(self._hdul[self.hdus.stamps])

    @functools.cached_property
    def normalizations(self) -> dict[str, Table]:
        """Optional ``NORMALIZATIONS_<REF>`` HDUs (2023 main-branch files), by EXTNAME."""
        return {self._hdul[i].name: _read_table(self._hdul[i]) for i in self.hdus.normalizations}

    @property
    def n_stars(self) -> int:
        return len(self.field_index)

    @property
    def n_images(self) -> int:
        return len(self.images)

    @functools.cached_property
    def dataset_codes(self) -> tuple[str, ...]:
        return tuple(self.datasets["dataset_code"])

    @functools.cached_property
    def primary_dataset(self) -> str | None:
        """The primary reference dataset: DATASETS ``primary_ref == 1`` (PRIREFID is often
        blank in finished files)."""
        primary = self.datasets["dataset_code"][np.asarray(self.datasets["primary_ref"]) == 1]
        if len(primary):
            return str(primary[0])
        return self.primary_ref_id

    def dataset_index_column(self, dataset_code: str) -> str:
        """FIELD_INDEX column holding each star's 1-based id in that dataset (0 = undetected)."""
        name = dataset_code + layout.DATASET_INDEX_SUFFIX
        if name not in self.field_index.colnames:
            raise InvalidRequestError(
                f"field {self.name} has no dataset {dataset_code!r}; datasets are "
                f"{', '.join(self.dataset_codes)}"
            )
        return name

    @functools.cached_property
    def quadrant_counts(self) -> dict[int, int]:
        """Stars per quadrant, from FIELD_INDEX (the highest quadrant_id in each)."""
        quad = np.asarray(self.field_index["quadrant"])
        qid = np.asarray(self.field_index["quadrant_id"])
        return {q: int(qid[quad == q].max(initial=0)) for q in layout.QUADRANTS}

    def quadrant_field_ids(self, quadrant: int) -> np.ndarray:
        """field_id of each row of the quadrant's cube (row = quadrant_id - 1)."""
        cached = self._quadrant_ids.get(quadrant)
        if cached is None:
            fi = self.field_index
            members = np.flatnonzero(np.asarray(fi["quadrant"]) == quadrant)
            qid = np.asarray(fi["quadrant_id"])[members]
            cached = np.zeros(self.quadrant_counts[quadrant], dtype=np.int64)
            cached[qid - 1] = np.asarray(fi["field_id"])[members]
            self._quadrant_ids[quadrant] = cached
        return cached

    # --- cubes ----------------------------------------------------------------------

    def cube(self, quadrant: int) -> QuadrantCube:
        """The quadrant's photometry cube, opened (headers only) on first use."""
        if quadrant not in layout.QUADRANTS:
            raise InvalidRequestError(f"quadrant must be 1-4, not {quadrant}")
        cube = self._cubes.get(quadrant)
        if cube is None:
            with self._cube_lock:  # services open cubes from several threads
                cube = self._cubes.get(quadrant)
                if cube is None:
                    path = self.directory / layout.quadrant_filename(self.name, quadrant)
                    counts = self.quadrant_counts[quadrant]
                    cube = QuadrantCube(path, quadrant, counts, self.n_images)
                    self._cubes[quadrant] = cube
        return cube

    @functools.cached_property
    def photometry_layout(self) -> PhotometryLayout:
        """The cube column layout (same for all quadrants; checked)."""
        layouts = {self.cube(q).layout for q in layout.QUADRANTS}
        if len(layouts) != 1:
            widths = {q: self.cube(q).shape[2] for q in layout.QUADRANTS}
            raise CubeShapeError(f"field {self.name}: quadrant cubes differ in width: {widths}")
        return layouts.pop()

    @property
    def era(self) -> str:
        """Format era per ROME_FORMATS.md §2, from the cube width and the table widths."""
        cube_era = self.photometry_layout.era
        if cube_era == "D/E":
            norm = "norm_a0" in self.datasets.colnames or any(
                c.startswith("norm_") for c in self._hdul[self.hdus.stars].columns.names
            )
            return "E" if norm else "D"
        return cube_era

    # --- image selections -------------------------------------------------------------

    def select_images(
        self, filters: Iterable[str] | None = None, datasets: Iterable[str] | None = None
    ) -> np.ndarray:
        """Image-axis indices of the chosen filters/datasets, in time order (IMAGES hjd)."""
        key = (
            None if filters is None else tuple(sorted(set(filters))),
            None if datasets is None else tuple(sorted(set(datasets))),
        )
        cached = self._image_selections.get(key)
        if cached is None:
            cached = self._image_selections[key] = self._select_images(*key)
        return cached

    def _select_images(self, filters: tuple | None, datasets: tuple | None) -> np.ndarray:
        keep = np.ones(self.n_images, dtype=bool)
        if filters is not None:
            bad = set(filters) - set(layout.FILTERS)
            if bad:
                raise InvalidRequestError(
                    f"unknown filter(s) {', '.join(sorted(bad))}; filters are gp, rp, ip"
                )
            keep &= np.isin(np.asarray(self.images["filter"]), filters)
        if datasets is not None:
            bad = set(datasets) - set(self.dataset_codes)
            if bad:
                raise InvalidRequestError(
                    f"field {self.name} has no dataset(s) {', '.join(sorted(bad))}; datasets are "
                    f"{', '.join(self.dataset_codes)}"
                )
            keep &= np.isin(np.asarray(self.images["dataset_code"]), datasets)
        idx = np.flatnonzero(keep)
        order = np.argsort(np.asarray(self.images["hjd"])[idx], kind="stable")
        result = idx[order]
        result.flags.writeable = False
        return result

    # --- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        for cube in self._cubes.values():
            cube.close()
        self._cubes.clear()
        self._hdul.close()

    def __enter__(self) -> Field:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Field {self.name}: {self.n_stars} stars, {self.n_images} images, {self.directory}>"
        )

    # --- star look-ups (lookup.py), bound so that ``field.star(78284)`` reads well -----

    @functools.cached_property
    def index_arrays(self) -> dict[str, np.ndarray]:
        """FIELD_INDEX identity columns as plain numpy arrays (fast per-star access)."""
        fi = self.field_index
        arrays = {c: np.asarray(fi[c]) for c in layout.FIELD_INDEX_FIXED}
        arrays["gaia_mask"] = np.asarray(fi["gaia_source_id"].mask)
        return arrays

    @functools.cached_property
    def sky_index(self) -> lookup.SkyIndex:
        fi = self.field_index
        return lookup.SkyIndex(
            np.asarray(fi["ra"], dtype=float), np.asarray(fi["dec"], dtype=float)
        )

    @functools.cached_property
    def gaia_rows(self) -> dict[int, int]:
        """FIELD_INDEX row of each matched Gaia source id."""
        col = self.field_index["gaia_source_id"]
        rows = np.flatnonzero(~col.mask)
        return {int(v): int(r) for v, r in zip(np.asarray(col)[rows], rows, strict=True)}

    star = lookup.star
    stars_by_id = lookup.stars_by_id
    star_refs = lookup.star_refs
    nearest_star = lookup.nearest_star
    cone = lookup.cone
    star_by_gaia = lookup.star_by_gaia
    star_by_dataset_index = lookup.star_by_dataset_index


def find_field_name(directory: Path) -> str:
    """The field name from the one ``<FIELD>_field_crossmatch.fits`` in ``directory``."""
    names = sorted(
        p.name[: -len(_CROSSMATCH_SUFFIX)] for p in directory.glob("*" + _CROSSMATCH_SUFFIX)
    )
    if len(names) == 1:
        return names[0]
    if len(names) > 1:
        raise FieldFormatError(
            f"{directory} holds several fields ({', '.join(names)}); give the field name too"
        )
    compressed = sorted(directory.glob("*" + _CROSSMATCH_SUFFIX + ".bz2"))
    if compressed:
        raise CompressedFieldError(
            f"{compressed[0]} is bzip2-compressed; decompress the field's files first "
            f"(bunzip2 -k {directory}/*.bz2) and open the field again"
        )
    raise FieldFormatError(
        f"{directory} holds no *{_CROSSMATCH_SUFFIX} file: not a field directory"
    )


def open_field(path: str | os.PathLike, name: str | None = None) -> Field:
    """Open a field directory (or its crossmatch file) read-only.

    Only the crossmatch FITS file's FIELD_INDEX, DATASETS and IMAGES are read now;
    STARS and STAMPS on first use; the quadrant cubes when photometry is read.
    """
    path = Path(path)
    if path.is_file() or path.name.endswith(_CROSSMATCH_SUFFIX + ".bz2"):
        if path.name.endswith(".bz2"):
            raise CompressedFieldError(
                f"{path} is bzip2-compressed; decompress it first (bunzip2 -k {path})"
            )
        if not path.name.endswith(_CROSSMATCH_SUFFIX):
            raise FieldFormatError(f"{path} is not a <FIELD>{_CROSSMATCH_SUFFIX} file")
        name = name or path.name[: -len(_CROSSMATCH_SUFFIX)]
        path = path.parent
    if not path.is_dir():
        raise FieldFormatError(f"field directory {path} does not exist")
    name = name or find_field_name(path)
    if not (path / layout.crossmatch_filename(name)).exists():
        compressed = path / (layout.crossmatch_filename(name) + ".bz2")
        if compressed.exists():
            raise CompressedFieldError(
                f"{compressed} is bzip2-compressed; decompress it first (bunzip2 -k {compressed})"
            )
        raise FieldFormatError(f"{path} has no {layout.crossmatch_filename(name)}")
    return Field(path, name)
