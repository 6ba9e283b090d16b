"""Write pyDANDIA field data products in the era-E (pyDANDIA ``main``) layout.

The crossmatch FITS file is written the way ``CrossMatchTable.save`` writes it
(ROME_FORMATS §3): a primary HDU carrying only ``NAME``, ``PRIREFID`` and ``GAIA_DR``,
then binary tables FIELD_INDEX, DATASETS, STARS, IMAGES and (except in era A) STAMPS,
with int64 ``K``, float64 ``D`` and ``nA`` string columns, no TUNIT/TNULL and no extra
keywords. Quadrant cubes are single contiguous ``<f8`` root datasets named
``dataset_photometry`` (§4.1) with no chunking, compression, filters or attributes.

The writer is deliberately permissive about *which* columns a table has (tests build
7/14/15-column cubes, 39-column STARS and 4-column DATASETS of older eras with it); it
only checks the fixed columns every reader relies on. Columns are written in the
order of the given table: callers that want the exact era-E layout build their
tables in the order of :mod:`romerea_vo.products.layout` (as the synthetic generator
does).
"""

from __future__ import annotations

import contextlib
import os
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np
from astropy.io import fits
from astropy.table import Table

from romerea_vo.errors import FieldFormatError, InvalidRequestError
from romerea_vo.products import layout

__all__ = [
    "QuadrantCubeWriter",
    "assign_quadrants",
    "write_crossmatch",
    "write_field",
]

DATASETS_REQUIRED = ("dataset_code", "dataset_filter", "primary_ref")
"""DATASETS columns every reader needs, whatever the era."""

# Fixed string widths (§3.2-§3.6); every other string column is written at the width
# of its longest value (as astropy does for a str column), at least 1.
_FIXED_WIDTHS: dict[str, dict[str, int]] = {
    "FIELD_INDEX": {"gaia_source_id": 19},
    "DATASETS": {"dataset_filter": 8},
    "STARS": {"gaia_source_id": 19},
    "IMAGES": dict(layout.IMAGES_STRING_WIDTHS),
    "STAMPS": dict(layout.STAMPS_STRING_WIDTHS),
}


# --- quadrants ---------------------------------------------------------------------


def assign_quadrants(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assign stars to quadrants with the pyDANDIA midpoint rule (ROME_FORMATS §5).

    ``ra``/``dec`` are the FIELD_INDEX positions (degrees) in field-index order. The
    boundaries are the midpoints of the RA and Dec ranges of all stars, computed as
    pyDANDIA does (``min + (max - min) / 2``). Quadrant 1 = low RA/low Dec, 2 = high
    RA/low Dec, 3 = high RA/high Dec, 4 = low RA/high Dec; intervals are closed on
    both sides and no RA wrap is handled.

    Returns ``(quadrant, quadrant_id)``, both int64: the quadrant 1..4 and the 1-based
    running number of the star within its quadrant in field-index order.

    Edge case reproduced exactly: pyDANDIA applies the four tests in turn and, for
    every test a star passes, advances that quadrant's counter and (re)assigns the
    star. A star lying exactly on a midpoint therefore ends up in the *last* quadrant
    whose test it passes, while the counters of the earlier matching quadrants have
    advanced too, leaving a gap in their ``quadrant_id`` numbering. (Exact float
    equality is practically never hit except by degenerate fields, e.g. one star.)
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    if ra.shape != dec.shape or ra.ndim != 1:
        raise InvalidRequestError("ra and dec must be 1-D arrays of the same length")
    n = ra.size
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        raise InvalidRequestError("ra and dec must be finite to assign quadrants")
    ra_min, ra_max = ra.min(), ra.max()
    dec_min, dec_max = dec.min(), dec.max()
    ra_mid = ra_min + (ra_max - ra_min) / 2.0
    dec_mid = dec_min + (dec_max - dec_min) / 2.0
    ra_lo = (ra >= ra_min) & (ra <= ra_mid)
    ra_hi = (ra >= ra_mid) & (ra <= ra_max)
    dec_lo = (dec >= dec_min) & (dec <= dec_mid)
    dec_hi = (dec >= dec_mid) & (dec <= dec_max)
    tests = np.stack([ra_lo & dec_lo, ra_hi & dec_lo, ra_hi & dec_hi, ra_lo & dec_hi], axis=1)
    counters = np.cumsum(tests, axis=0, dtype=np.int64)  # counter value after each star
    # Last matching test wins; every star passes at least one test (closed intervals).
    last = 3 - np.argmax(tests[:, ::-1], axis=1)
    quadrant = (last + 1).astype(np.int64)
    quadrant_id = counters[np.arange(n), last].astype(np.int64)
    return quadrant, quadrant_id


# --- crossmatch FITS -----------------------------------------------------------------


def _require_table(name: str, table: object, required: tuple[str, ...] = ()) -> Table:
    if not isinstance(table, Table):
        raise InvalidRequestError(f"{name} must be an astropy Table, not {type(table).__name__}")
    missing = [c for c in required if c not in table.colnames]
    if missing:
        raise InvalidRequestError(f"{name} table lacks required column(s) {', '.join(missing)}")
    return table


def _validate_tables(field_index, datasets, stars, images, stamps) -> None:
    _require_table("FIELD_INDEX", field_index, layout.FIELD_INDEX_FIXED)
    _require_table("DATASETS", datasets, DATASETS_REQUIRED)
    _require_table("STARS", stars)
    _require_table("IMAGES", images)
    if stamps is not None:
        _require_table("STAMPS", stamps)


def _string_array(name: str, values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "S":
        return values
    if values.dtype.kind == "O":
        if not all(isinstance(v, (str, bytes)) for v in values.ravel()):
            raise InvalidRequestError(f"column {name!r} mixes strings with other objects")
        values = np.array([v.decode("ascii") if isinstance(v, bytes) else v for v in values])
        if values.size == 0:
            values = values.astype("U1")
    try:
        return np.char.encode(values, "ascii")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"column {name!r} holds non-ASCII text") from None


def _fits_column(hdu: str, name: str, column) -> fits.Column:
    mask = getattr(column, "mask", None)
    if mask is not None and np.any(mask):
        raise InvalidRequestError(
            f"{hdu} column {name!r} has masked values; pyDANDIA files have no TNULL, "
            "fill them with the format's sentinel (0, 0.0, 'None', ...) first"
        )
    data = np.asarray(column)
    if data.ndim != 1:
        raise InvalidRequestError(f"{hdu} column {name!r} must be 1-D, has shape {data.shape}")
    kind = data.dtype.kind
    if kind in "iub":
        if kind == "u" and data.size and data.max() > np.iinfo(np.int64).max:
            raise InvalidRequestError(f"{hdu} column {name!r} overflows int64")
        return fits.Column(name=name, format="K", array=data.astype(np.int64))
    if kind == "f":
        return fits.Column(name=name, format="D", array=data.astype(np.float64))
    if kind in "USO":
        encoded = _string_array(name, data)
        longest = int(np.char.str_len(encoded).max()) if encoded.size else 0
        width = _FIXED_WIDTHS.get(hdu, {}).get(name)
        if width is None:
            width = max(1, longest)
        elif longest > width:
            raise InvalidRequestError(
                f"{hdu} column {name!r} has a value of {longest} characters; "
                f"the format stores it as {width}A"
            )
        return fits.Column(name=name, format=f"{width}A", array=encoded.astype(f"S{width}"))
    raise InvalidRequestError(f"{hdu} column {name!r} has unsupported dtype {data.dtype}")


def _bintable(hdu: str, table: Table) -> fits.BinTableHDU:
    columns = [_fits_column(hdu, name, table[name]) for name in table.colnames]
    result = fits.BinTableHDU.from_columns(columns, name=hdu, nrows=len(table))
    return result


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; remove it or pass overwrite=True to replace it"
        )


def _temporary_name(path: Path) -> Path:
    """A hidden name in the same directory, so the final rename is atomic."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def write_crossmatch(
    path: str | os.PathLike,
    *,
    field_index: Table,
    datasets: Table,
    stars: Table,
    images: Table,
    stamps: Table | None,
    primary_ref_id: str | None = "",
    gaia_dr: str | None = "Gaia-EDR3",
    overwrite: bool = False,
) -> None:
    """Write ``<FIELD>_field_crossmatch.fits`` as ``CrossMatchTable.save`` does (§3.1).

    HDU order PRIMARY, FIELD_INDEX, DATASETS, STARS, IMAGES, STAMPS (no STAMPS HDU when
    ``stamps`` is None, as in era A). Primary keywords ``NAME='Field crossmatch table'``,
    ``PRIREFID`` and ``GAIA_DR``; None writes the keyword with an undefined (blank)
    value, which is what finished pyDANDIA files carry for PRIREFID. Integer columns
    become ``K``, floats ``D``, strings ``nA`` (IMAGES filename/dataset_code 80A,
    filter 10A, datetime 25A, RA/Dec 15A; STAMPS dataset_code/filename 80A;
    gaia_source_id 19A; DATASETS dataset_filter 8A; any other string column at the
    width of its longest value). Columns are written in table order; no TUNIT/TNULL.
    The file is written under a temporary name and renamed into place; an existing
    file is refused (FileExistsError) unless ``overwrite`` is true.
    """
    path = Path(path)
    _validate_tables(field_index, datasets, stars, images, stamps)
    _refuse_existing(path, overwrite)

    header = fits.Header()
    header["NAME"] = layout.PRIMARY_NAME
    header["PRIREFID"] = primary_ref_id
    header["GAIA_DR"] = gaia_dr
    hdus = [
        fits.PrimaryHDU(header=header),
        _bintable("FIELD_INDEX", field_index),
        _bintable("DATASETS", datasets),
        _bintable("STARS", stars),
        _bintable("IMAGES", images),
    ]
    if stamps is not None:
        hdus.append(_bintable("STAMPS", stamps))

    tmp = _temporary_name(path)
    try:
        fits.HDUList(hdus).writeto(tmp)
        _refuse_existing(path, overwrite)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --- quadrant cubes ------------------------------------------------------------------


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class QuadrantCubeWriter:
    """Write ``<dir>/<FIELD>_quad<q>_photometry.hdf5`` in blocks of star rows (§4.1).

    The file holds exactly one root dataset ``dataset_photometry``: float64 ``<f8``,
    shape ``(n_stars, n_images, n_columns)``, contiguous (no chunks, compression,
    filters or attributes), i.e. byte-compatible with pyDANDIA's
    ``hd5_utils.write_phot_hd5``. Any width is accepted (17 for eras D/E; 7/14/15 for
    older eras). Rows are written with :meth:`write_rows`; :meth:`close` checks that
    every row was written and only then renames the temporary file (a hidden name in
    the same directory) to the final name, so an interrupted run never leaves a
    half-written cube under the final name. Use it as a context manager: leaving the
    ``with`` block with an exception discards the temporary file.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        field: str,
        quadrant: int,
        n_stars: int,
        n_images: int,
        n_columns: int = layout.ERA_E_PHOTOMETRY.width,
        *,
        overwrite: bool = False,
    ) -> None:
        _check_field_name(field)
        if int(quadrant) not in layout.QUADRANTS:
            raise InvalidRequestError(f"quadrant must be one of 1-4, not {quadrant!r}")
        for label, value, minimum in (
            ("n_stars", n_stars, 0),
            ("n_images", n_images, 0),
            ("n_columns", n_columns, 1),
        ):
            if int(value) != value or value < minimum:
                raise InvalidRequestError(f"{label} must be an integer >= {minimum}, not {value!r}")
        self.path = Path(directory) / layout.quadrant_filename(field, int(quadrant))
        self.shape = (int(n_stars), int(n_images), int(n_columns))
        _refuse_existing(self.path, overwrite)
        self._overwrite = overwrite
        self._tmp = _temporary_name(self.path)
        self._written = np.zeros(self.shape[0], dtype=bool)
        self._file: h5py.File | None = h5py.File(self._tmp, "w")
        # Remove the temporary file if this object is dropped without close()/abort().
        self._finalizer = weakref.finalize(self, _remove_quietly, str(self._tmp))
        try:
            self._dataset = self._file.create_dataset(layout.CUBE_DATASET, self.shape, dtype="<f8")
        except Exception:
            self.abort()
            raise

    def __enter__(self) -> QuadrantCubeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    @property
    def closed(self) -> bool:
        return self._file is None

    @property
    def rows_written(self) -> int:
        return int(self._written.sum())

    def write_rows(self, start_row: int, block: np.ndarray) -> None:
        """Write ``block`` (shape ``(k, n_images, n_columns)``) into rows start_row..+k."""
        if self._file is None:
            raise InvalidRequestError(f"cube writer for {self.path.name} is already closed")
        block = np.asarray(block, dtype="<f8")
        if block.ndim != 3 or block.shape[1:] != self.shape[1:]:
            raise InvalidRequestError(
                f"block shape {block.shape} does not fit cube shape {self.shape} "
                "(expected (k, n_images, n_columns))"
            )
        start = int(start_row)
        stop = start + block.shape[0]
        if start < 0 or stop > self.shape[0]:
            raise InvalidRequestError(
                f"rows {start}..{stop - 1} are outside the cube's {self.shape[0]} rows"
            )
        if stop > start:
            self._dataset[start:stop] = block
            self._written[start:stop] = True

    def close(self) -> None:
        """Finish the file and rename it into place; raise if any row is unwritten."""
        if self._file is None:
            return
        missing = np.flatnonzero(~self._written)
        if missing.size:
            self.abort()
            raise FieldFormatError(
                f"{self.path.name}: {missing.size} of {self.shape[0]} star rows were never "
                f"written (first missing row {missing[0]}); the incomplete cube was discarded"
            )
        self._file.close()
        self._file = None
        try:
            _refuse_existing(self.path, self._overwrite)
            os.replace(self._tmp, self.path)
        finally:
            _remove_quietly(str(self._tmp))
            self._finalizer.detach()

    def abort(self) -> None:
        """Discard the temporary file without touching the final name."""
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
        _remove_quietly(str(self._tmp))
        self._finalizer.detach()


# --- whole fields ----------------------------------------------------------------------


def _check_field_name(field: str) -> None:
    if not isinstance(field, str) or not field or field.strip() != field:
        raise InvalidRequestError(f"field name must be a non-empty string, not {field!r}")
    if any(sep in field for sep in ("/", "\\", os.sep)) or field in (".", ".."):
        raise InvalidRequestError(f"field name {field!r} must not contain a path separator")


def write_field(
    outdir: str | os.PathLike,
    field_name: str,
    *,
    field_index: Table,
    datasets: Table,
    stars: Table,
    images: Table,
    stamps: Table | None,
    cubes: Mapping[int, np.ndarray],
    primary_ref_id: str | None = "",
    gaia_dr: str | None = "Gaia-EDR3",
    overwrite: bool = False,
) -> Path:
    """Write a small in-memory field: the crossmatch file and the given quadrant cubes.

    ``cubes`` maps quadrant number (1-4) to a 3-D array of any width; only the
    quadrants given are written (tests of missing files leave some out). Shapes are
    not checked against the tables, so inconsistent fields can be built on purpose.
    Returns ``outdir`` as a Path (created if needed).
    """
    _check_field_name(field_name)
    _validate_tables(field_index, datasets, stars, images, stamps)
    outdir = Path(outdir)
    arrays: dict[int, np.ndarray] = {}
    for quadrant, cube in cubes.items():
        if quadrant not in layout.QUADRANTS:
            raise InvalidRequestError(f"cube key must be a quadrant 1-4, not {quadrant!r}")
        array = np.asarray(cube, dtype="<f8")
        if array.ndim != 3:
            raise InvalidRequestError(f"cube of quadrant {quadrant} must be 3-D, not {array.shape}")
        arrays[quadrant] = array
    if not overwrite:  # refuse before writing anything, not half-way through
        for path in [outdir / layout.crossmatch_filename(field_name)] + [
            outdir / layout.quadrant_filename(field_name, q) for q in arrays
        ]:
            _refuse_existing(path, overwrite)
    outdir.mkdir(parents=True, exist_ok=True)
    write_crossmatch(
        outdir / layout.crossmatch_filename(field_name),
        field_index=field_index,
        datasets=datasets,
        stars=stars,
        images=images,
        stamps=stamps,
        primary_ref_id=primary_ref_id,
        gaia_dr=gaia_dr,
        overwrite=overwrite,
    )
    for quadrant, array in sorted(arrays.items()):
        with QuadrantCubeWriter(
            outdir, field_name, quadrant, *array.shape, overwrite=overwrite
        ) as writer:
            writer.write_rows(0, array)
    return outdir
