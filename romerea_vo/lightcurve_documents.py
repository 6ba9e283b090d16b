"""Lightcurve documents, built from the quadrant cubes without HTTP.

`LightcurveDocuments` turns star DIDs and request parameters (`parse_request`) into the
documents of the ``/lightcurve`` service; the service's endpoint
(`romerea_vo.service.lightcurve_service`), the SAMP bridge and the CLI all build them here.

Points are read on demand from the field's quadrant HDF5 cubes (the numpy fast path of
:mod:`romerea_vo.lightcurves`), turned into Arrow arrays and written by the streaming
VOTable writer; nothing is copied into the database.

* One ID: one table of the star's points, every band (or the BANDs asked for) with a
  ``filter`` column, sorted by time; the star's identity as PARAMs.
* Several IDs (repeat ``ID``): one table, stars in the order given (duplicates dropped),
  each sorted by time, identity columns (``id``, field, field_id, ra, dec,
  gaia_source_id) first. Streamed star by star.
* Bulk (``POST`` with ``UPLOAD=stars,param:<part>``): a table of up to
  :data:`MAX_BULK_IDS` DIDs, field/field_id pairs or positions; one streamed table with
  ``id``, ``upload_row`` and ``status`` columns, stars read quadrant by quadrant in row
  order, one status row for every upload row without points.
* ``FLUX=true`` adds flux/flux_err (zero point 22 mag), ``COLUMNS=`` picks columns,
  ``TIME=t1 t2`` (MJD) cuts the points in time.
* VOTable 1.4 (BINARY2 by default; ``votable/b``, ``votable/td``), VOParquet, CSV, TSV,
  FITS or a PNG plot of every band (one ID only). HJD refers to a ``TIMESYS`` (UTC, heliocentric,
  timeorigin 0); magnitude UCDs name the band when exactly one BAND is asked for.
* ``MODEL=pspl`` (one ID): a ``model_mag`` column with the star's point-lens model from
  ``rome.microlensing_candidates`` and the fit as INFOs; the PNG draws the model curve.
  404 when the star has no fit (it did not pass the candidates' pre-selection).
* Errors are DALI error documents: 400 for missing or malformed parameters, 404 for a
  well-formed DID naming no star here (unknown field or field_id), 500 when a field's
  files cannot be read (e.g. a photometry cube missing on disk) - other fields are
  served as usual.

astropy (8.x) keeps TIMESYS elements but does not turn the FIELDs that refer to them
into ``Time`` columns (astropy issue 8724); :func:`romerea_vo.votable.reader.votable_to_table`
does.
"""

from __future__ import annotations

import io
import itertools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import FieldFormatError, InvalidRequestError, RomeReaError, StarNotFoundError
from .ids import make_did, parse_did
from .lightcurves import (
    FLUX_ZERO_POINT,
    IMAGE_METADATA_COLUMNS,
    QUALITIES,
    PointArrays,
    StarsPoints,
    flux_from_mag,
    produced_ahead,
    read_points,
    stars_points,
)
from .products import layout
from .products.layout import MJD_OFFSET, QC_FLAG_DESCRIPTION, PhotometryLayout
from .products.lookup import StarRef
from .products.reader import Field
from .store.contract import CatalogDatabase
from .store.session import QueryFailed
from .variability.pspl import band_model_mag
from .votable.formats import ResultFormat, resolve_format, write_result
from .votable.parquet import ROW_GROUP_ROWS
from .votable.schema import load_table_schema
from .votable.writer import FieldSpec, Info, Param, TimeSys
from .xmatch.core import crossmatch

__all__ = [
    "BAND_UCDS",
    "MAX_BULK_IDS",
    "MAX_IDS",
    "TIMESYS",
    "LightcurveDocuments",
    "LightcurveRequest",
    "parse_request",
    "qc_flag_description",
    "quality_rule",
]

MAX_IDS = 1000
"""Most stars one request may ask for with ID parameters."""
MAX_BULK_IDS = 100_000
"""Most rows of an uploaded table of stars (bulk ``POST /lightcurve``)."""

TIMESYS = TimeSys(ID="hjd_utc", timeorigin="0", timescale="UTC", refposition="HELIOCENTER")
"""HJD: Julian days (origin JD 0) in UTC, at the barycentre-free heliocentre (DESIGN.md)."""

BAND_UCDS = {"gp": "em.opt.B", "rp": "em.opt.R", "ip": "em.opt.I"}
"""Spectral-band UCD word of each LCO filter (SDSS g' 477 nm, r' 623 nm, i' 763 nm)."""

_BAND_UCD_COLUMNS = ("phot.mag", "stat.error;phot.mag", "phot.flux", "stat.error;phot.flux")
"""UCDs that name the band when a single BAND is asked for."""
_PNG_NAMES = {"png", "image/png"}
_INTEGER_COLUMNS = {"qc_flag": pa.int16(), "stamp_index": pa.int16()}


def qc_flag_description() -> str:
    """The qc_flag FIELD description: every QCFlag bit with its meaning."""
    return QC_FLAG_DESCRIPTION


def quality_rule(quality: str, lay: PhotometryLayout) -> str:
    """Human-readable statement of a quality cut for a cube layout."""
    mag = lay.science_mag
    valid = f"a valid measurement ({mag} > 0, {mag}_err > 0, hjd > 0)"
    if quality == "good":
        if lay.has_qc:
            return f"good points only: qc_flag = 0 and {valid}"
        return f"good points only: {valid} (era {lay.era} cubes have no qc_flag)"
    if quality == "valid":
        return f"every point with {valid}, whatever its qc_flag"
    return (
        "every point the pipeline attempted, flagged points and failed fits (-9999.99) "
        "included; non-detections (0.0 fill) and images without photometry left out"
    )


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class LightcurveRequest:
    """Validated parameters of one request."""

    ids: tuple[str, ...]
    bands: tuple[str, ...] | None
    datasets: tuple[str, ...] | None
    quality: str
    fmt: ResultFormat | None  # None: PNG
    flux: bool = False
    columns: tuple[str, ...] | None = None  # COLUMNS: the names asked for, in order
    time: tuple[float, float] | None = None  # TIME interval, MJD
    model: bool = False  # MODEL=pspl


def _split(values: Sequence[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


_TRUE = {"true", "1", "yes", "t"}
_FALSE = {"false", "0", "no", "f", ""}


def _parse_flux(values: dict[str, list[str]]) -> bool:
    raw = (values.get("FLUX") or ["false"])[0].strip().lower()
    if raw not in _TRUE | _FALSE:
        raise InvalidRequestError(f"FLUX={raw!r} is not a boolean; use FLUX=true or FLUX=false")
    return raw in _TRUE


def _parse_time(values: dict[str, list[str]]) -> tuple[float, float] | None:
    """The DALI interval of ``TIME=t1 t2`` (MJD; -Inf/+Inf for open ends)."""
    if "TIME" not in values:
        return None
    raw = values["TIME"][0]
    parts = raw.split()
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise InvalidRequestError(
            f"TIME={raw!r} is not a DALI interval: give two MJD values 't1 t2' "
            "(e.g. TIME=57800 58100; -Inf or +Inf for an open end)"
        ) from None
    if np.isnan(low) or np.isnan(high) or low > high:
        raise InvalidRequestError(f"TIME={raw!r}: the interval needs t1 <= t2")
    return low, high


def parse_request(values: dict[str, list[str]], *, ids_required: bool = True) -> LightcurveRequest:
    """Check the DALI parameters (upper-cased names) of a lightcurve request.

    Raises InvalidRequestError naming the parameter at fault. ``ids_required`` is false for
    bulk requests, whose IDs come in an uploaded table.
    """
    ids = list(dict.fromkeys(v.strip() for v in values.get("ID", ()) if v.strip()))
    if not ids and ids_required:
        raise InvalidRequestError(
            "missing parameter ID: give the publisher DID of a star, e.g. "
            "ID=ivo://<authority>/rome?ROME-FIELD-01/1 (repeat ID for several stars, or "
            "POST a table of IDs or positions as UPLOAD=stars,param:table)"
        )
    if len(ids) > MAX_IDS:
        raise InvalidRequestError(
            f"{len(ids)} IDs given; at most {MAX_IDS} per request as ID parameters (POST a "
            f"table of up to {MAX_BULK_IDS} IDs as UPLOAD=stars,param:table for more)"
        )
    bands: tuple[str, ...] | None = None
    if "BAND" in values:
        asked = [b.lower() for b in _split(values["BAND"])]
        bad = [b for b in asked if b not in layout.FILTERS]
        if bad or not asked:
            raise InvalidRequestError(
                f"BAND={','.join(bad) or '(empty)'} is not a ROME band; use gp, rp or ip "
                "(repeat BAND or separate with commas)"
            )
        bands = tuple(dict.fromkeys(asked))
    datasets = None
    if "DATASET" in values:
        datasets = tuple(dict.fromkeys(_split(values["DATASET"])))
        if not datasets:
            raise InvalidRequestError("DATASET is empty; give dataset codes or leave it out")
    quality = (values.get("QUALITY") or ["good"])[0].strip().lower() or "good"
    if quality not in QUALITIES:
        raise InvalidRequestError(
            f"QUALITY={quality!r} is not supported; use one of {', '.join(QUALITIES)}"
        )
    model = False
    if "MODEL" in values:
        name = (values["MODEL"] or [""])[0].strip().lower()
        if name != "pspl":
            raise InvalidRequestError(f"MODEL={name!r} is not supported; use MODEL=pspl")
        if len(ids) != 1:
            raise InvalidRequestError("MODEL=pspl gives one star's model: give a single ID")
        model = True
    formats = values.get("RESPONSEFORMAT") or values.get("FORMAT")
    raw_format = formats[0] if formats else None
    if raw_format is not None and raw_format.strip().lower() in _PNG_NAMES:
        fmt = None
        if len(ids) > 1:
            raise InvalidRequestError("RESPONSEFORMAT=png plots one star: give a single ID")
    else:
        try:
            fmt = resolve_format(raw_format)
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{exc}, image/png") from None
    columns = None
    if "COLUMNS" in values:
        columns = tuple(dict.fromkeys(_split(values["COLUMNS"])))
        if not columns:
            raise InvalidRequestError("COLUMNS is empty; give column names or leave it out")
    flux = _parse_flux(values) or bool(columns and {"flux", "flux_err"} & set(columns))
    return LightcurveRequest(
        tuple(ids), bands, datasets, quality, fmt, flux, columns, _parse_time(values), model
    )


# --------------------------------------------------------------------------- per field


class _FieldColumns:
    """Per-field Arrow arrays of the IMAGES metadata attached to every point."""

    def __init__(self, field: Field):
        images = field.images
        self.filter = pa.array(np.asarray(images["filter"]).astype(str), pa.large_string())
        self.image = pa.array(np.asarray(images["filename"]).astype(str), pa.large_string())
        # per image an index into the few distinct names: points then carry dictionary
        # arrays with 3 filters (a few datasets), not one entry per image
        dataset_code = pa.array(np.asarray(images["dataset_code"]).astype(str), pa.large_string())
        self.encoded = {
            "filter": pc.dictionary_encode(self.filter),
            "dataset_code": pc.dictionary_encode(dataset_code),
        }
        self.metadata = {
            name: np.ascontiguousarray(images[name], dtype=float)
            for name in IMAGE_METADATA_COLUMNS
            if name in images.colnames
        }
        self.dataset_codes = frozenset(field.dataset_codes)


@dataclass
class _Star:
    did: str
    field: Field
    ref: StarRef
    columns: _FieldColumns


class _Schema:
    """FIELDs (and column order) of a table of points for one cube layout.

    ``flux`` adds flux/flux_err after the cube columns; ``columns`` (COLUMNS=) keeps only
    those, in the order asked for (with ``id`` first in tables of several stars).
    """

    def __init__(
        self,
        lay: PhotometryLayout,
        metadata: Sequence[str],
        band: str | None,
        multi: bool,
        flux: bool = False,
        columns: tuple[str, ...] | None = None,
        bulk: bool = False,
    ):
        points = load_table_schema("lightcurve_points").by_name
        index = load_table_schema("field_index").by_name
        identity: tuple[str, ...] = (
            ("id", "field", "field_id", "ra", "dec", "gaia_source_id") if multi else ()
        )
        forced: tuple[str, ...] = ("id",) if multi else ()
        if bulk:
            identity = ("id", "upload_row", "status") + identity[1:]
            forced = ("id", "upload_row", "status")
        cube_columns = lay.columns[1:]
        # Time, band, the science magnitude, its error and the quality flag first: TOPCAT's
        # time plot then takes the magnitude as Y and can colour by filter at once.
        wanted = ("hjd", "filter", lay.science_mag, f"{lay.science_mag}_err", "qc_flag")
        first = tuple(n for n in wanted if n in ("hjd", "filter") or n in cube_columns)
        rest = ("dataset_code", "image", "image_index", *cube_columns)
        names = first + tuple(n for n in rest if n not in first)
        names += ("flux", "flux_err") if flux else ()
        names += tuple(metadata)
        available = identity + names
        if columns is not None:
            bad = [c for c in columns if c not in available]
            if bad:
                raise InvalidRequestError(
                    f"COLUMNS: no column {', '.join(map(repr, bad))} in these lightcurves; "
                    f"available: {', '.join(available)}"
                )
            available = tuple(c for c in forced if c not in columns) + columns
        self.names = available
        self.flux_from = (lay.science_mag, layout.error_column(lay.science_mag))
        flux_from = self.flux_from if {"flux", "flux_err"} & set(available) else ()
        self.cube_columns = tuple(
            dict.fromkeys(n for n in (*available, *flux_from) if n in cube_columns or n == "hjd")
        )
        """The cube columns the table's columns are made of."""
        fields = []
        for name in available:
            if name in ("upload_row", "status"):
                fields.append(FieldSpec.from_column(points[name]))
                continue
            if name in identity:
                spec = FieldSpec.from_column(index["did" if name == "id" else name])
                fields.append(replace(spec, name=name))
                continue
            spec = FieldSpec.from_column(points[name])
            if name == "hjd":
                spec = replace(spec, ref=TIMESYS.ID)
            elif name == "qc_flag":
                spec = replace(spec, description=qc_flag_description())
            elif band and spec.ucd in _BAND_UCD_COLUMNS:
                spec = replace(spec, ucd=f"{spec.ucd};{BAND_UCDS[band]}")
            fields.append(spec)
        self.fields = fields


# --------------------------------------------------------------------------- service


class LightcurveDocuments:
    """Lightcurve documents of an ingested database's stars (no HTTP: the service's
    ``/lightcurve`` endpoint, the SAMP bridge and the CLI build them here)."""

    def __init__(self, db: CatalogDatabase):
        self.db = db
        self.authority = db.authority
        self._lock = threading.Lock()
        self._columns: dict[str, _FieldColumns] = {}
        self._schemas: dict[tuple, _Schema] = {}
        self._sizes: dict[str, tuple[int, float]] = {}

    # ----- look-ups (worker threads)

    def _field(self, name: str) -> tuple[Field, _FieldColumns]:
        try:
            field = self.db.field(name)
        except FieldFormatError as exc:
            raise _Unavailable(f"field {name} cannot be read on the server: {exc}") from None
        cols = self._columns.get(name)
        if cols is None:
            with self._lock:
                cols = self._columns.get(name)
                if cols is None:
                    cols = self._columns[name] = _FieldColumns(field)
        return field, cols

    def _open_cube(self, field: Field, quadrant: int):
        """The quadrant's cube (Field.cube is thread-safe); a missing file becomes a clear
        service error that names the file but not the server's paths."""
        try:
            return field.cube(quadrant)
        except FieldFormatError as exc:
            name = layout.quadrant_filename(field.name, quadrant)
            if not (field.directory / name).exists():
                msg = (
                    f"the photometry cube {name} of field {field.name} (quadrant "
                    f"{quadrant}) is missing on the server; its stars' lightcurves "
                    "cannot be served until it is restored"
                )
            else:
                msg = str(exc).replace(str(field.directory) + "/", "")
                msg = f"the photometry of field {field.name} cannot be read: {msg}"
            raise _Unavailable(msg) from None

    def resolve(self, did: str) -> _Star:
        """The star a DID names (400 malformed, 404 unknown, 500 unreadable)."""
        field_name, field_id = parse_did(did, self.authority)
        if field_name not in self.db.fields:
            known = ", ".join(self.db.fields) or "none"
            raise _NotFound(f"unknown field {field_name!r} in ID {did!r}; fields here: {known}")
        field, cols = self._field(field_name)
        try:
            ref = field.star(field_id)
        except StarNotFoundError as exc:
            raise _NotFound(f"no such star (ID {did!r}): {exc}") from None
        self._open_cube(field, ref.quadrant)
        return _Star(make_did(self.authority, field_name, field_id), field, ref, cols)

    def _schema(
        self,
        lay: PhotometryLayout,
        cols: _FieldColumns,
        req: LightcurveRequest,
        multi: bool,
        bulk: bool = False,
    ) -> _Schema:
        """The (cached) schema of a request's table; InvalidRequestError for bad COLUMNS."""
        band = req.bands[0] if req.bands and len(req.bands) == 1 else None
        key = (lay, tuple(cols.metadata), band, multi, req.flux, req.columns, bulk)
        schema = self._schemas.get(key)
        if schema is None:
            metadata = list(cols.metadata)
            schema = _Schema(lay, metadata, band, multi, req.flux, req.columns, bulk)
            self._schemas[key] = schema
        return schema

    def _datasets_for(self, star: _Star, datasets: tuple[str, ...] | None):
        if datasets is None:
            return None
        return [d for d in datasets if d in star.columns.dataset_codes]

    def _check_datasets(self, stars: Sequence[_Star], datasets: tuple[str, ...] | None) -> None:
        if datasets is None:
            return
        known = set().union(*(s.columns.dataset_codes for s in stars))
        bad = [d for d in datasets if d not in known]
        if bad:
            raise InvalidRequestError(
                f"unknown DATASET {', '.join(bad)}; datasets of the requested field(s): "
                f"{', '.join(sorted(known))}"
            )

    def points(self, star: _Star, req: LightcurveRequest) -> PointArrays:
        """The star's selected points (numpy fast path)."""
        datasets = self._datasets_for(star, req.datasets)
        if datasets is not None and not datasets:  # none of the DATASETs is in this field
            lay = self._open_cube(star.field, star.ref.quadrant).layout
            return PointArrays(star.ref, np.empty(0, np.int64), np.empty((0, lay.width)), lay)
        pts = read_points(
            star.field, star.ref, filters=req.bands, datasets=datasets, quality=req.quality
        )
        return _in_time(pts, req.time)

    def batch(
        self, star: _Star, pts: PointArrays, schema: _Schema, upload_row: int = -1
    ) -> pa.RecordBatch:
        """Arrow columns of one star's points, in ``schema`` order (``upload_row``: the
        row of a bulk upload it answers)."""
        columns = {n: np.ascontiguousarray(pts.column(n)) for n in schema.cube_columns}
        which = np.zeros(len(pts), np.int64)
        return self.block_batch([star], which, pts.image_index, columns, schema, [upload_row])

    def block_batch(
        self,
        stars: Sequence[_Star],
        which: np.ndarray,
        image_index: np.ndarray,
        cube_columns: dict[str, np.ndarray],
        schema: _Schema,
        upload_rows: Sequence[int],
    ) -> pa.RecordBatch:
        """Arrow columns of the points of several stars of one field, in ``schema`` order;
        ``which[i]`` is the position in ``stars`` of point i's star, ``cube_columns``
        the point values of ``schema.cube_columns``."""
        n = len(image_index)
        idx = pa.array(image_index.astype(np.int64, copy=False))
        cols = stars[0].columns
        flux: tuple[np.ndarray, np.ndarray] | None = None
        refs = [s.ref for s in stars]

        def per_star(values: list, dtype) -> np.ndarray:
            return np.asarray(values, dtype=dtype)[which]

        # the dictionary arrays' indices are in range by construction: not checked again
        # (a pass over 12 M indices per column of a 10,000-star bulk answer)
        def dictionary(indices: pa.Array | np.ndarray, values: pa.Array) -> pa.Array:
            return pa.DictionaryArray.from_arrays(indices, values, safe=False)

        def repeated(text: str) -> pa.Array:  # a dictionary of one value: nothing to hash
            return dictionary(pa.array(np.zeros(n, np.int32)), pa.array([text], pa.large_string()))

        def column(name: str) -> pa.Array:
            nonlocal flux
            if name in cube_columns:
                values = cube_columns[name]
                kind = _INTEGER_COLUMNS.get(name)
                return pa.array(values if kind is None else values.astype(np.int16))
            if name in ("flux", "flux_err"):
                if flux is None:
                    flux = flux_from_mag(*(cube_columns[c] for c in schema.flux_from))
                return pa.array(flux[0] if name == "flux" else flux[1])
            if name in cols.metadata:
                return pa.array(cols.metadata[name][image_index])
            if name in cols.encoded:  # dictionary arrays: no strings copied
                encoded = cols.encoded[name]
                return dictionary(encoded.indices.take(idx), encoded.dictionary)
            if name == "image":
                return dictionary(idx, cols.image)
            if name == "image_index":
                return pa.array(image_index.astype(np.int32))
            if name == "id":
                dids = pa.array([s.did for s in stars], pa.large_string())
                return dictionary(pa.array(which), dids)
            if name in ("field", "status"):
                return repeated(refs[0].field if name == "field" else "ok")
            if name == "upload_row":
                return pa.array(per_star(list(upload_rows), np.int64))
            if name == "gaia_source_id":
                gaia = [r.gaia_source_id for r in refs]
                mask = per_star([g is None for g in gaia], bool)
                values = per_star([0 if g is None else g for g in gaia], np.int64)
                return pa.array(values, mask=mask if mask.any() else None)
            dtype = float if name in ("ra", "dec") else np.int64
            return pa.array(per_star([getattr(r, name) for r in refs], dtype))

        arrays = [column(name) for name in schema.names]
        return pa.RecordBatch.from_arrays(arrays, names=list(schema.names))

    # ----- documents

    def _infos(self, req: LightcurveRequest, lay: PhotometryLayout, n_ids: int) -> list[Info]:
        infos = [
            Info("QUERY_STATUS", "OK"),
            Info("quality", req.quality, quality_rule(req.quality, lay)),
            Info("mag_column", lay.science_mag, "the science magnitude column of these cubes"),
            Info("bands", ",".join(req.bands or layout.FILTERS)),
        ]
        if req.datasets:
            infos.append(Info("datasets", ",".join(req.datasets)))
        if n_ids > 1:
            infos.append(Info("stars", str(n_ids)))
        if req.time is not None:
            infos.append(
                Info(
                    "time", f"{req.time[0]!r} {req.time[1]!r}", "TIME interval (MJD) applied to hjd"
                )
            )
        if req.flux:
            infos.append(
                Info(
                    "flux_zero_point",
                    repr(FLUX_ZERO_POINT),
                    f"flux = 10**(-0.4 ({lay.science_mag} - {FLUX_ZERO_POINT!r}))",
                )
            )
        return infos

    def _params(self, star: _Star) -> list[Param]:
        index = load_table_schema("field_index").by_name
        ref = star.ref
        values = {
            "field": ref.field,
            "field_id": ref.field_id,
            "did": star.did,
            "ra": ref.ra,
            "dec": ref.dec,
            "gaia_source_id": ref.gaia_source_id,
            "quadrant": ref.quadrant,
            "quadrant_id": ref.quadrant_id,
        }
        params = []
        for name, value in values.items():
            spec = FieldSpec.from_column(index[name])
            params.append(Param(**{**spec.__dict__, "value": value}))
        return params

    def fit(self, star: _Star) -> dict:
        """The star's row of rome.microlensing_candidates (404 without one)."""
        table = load_table_schema("microlensing_candidates")
        names = ["t0", "te", "u0", "classification", "score"]
        names += [f"{k}_mag_{b}" for k in ("peak", "baseline") for b in layout.FILTERS]
        try:
            with self.db.session() as session:
                rows = session.fetchall(
                    f"SELECT {', '.join(names)} FROM {self.db.physical_name(table)} "
                    "WHERE field = ? AND field_id = ?",
                    [star.ref.field, int(star.ref.field_id)],
                )
        except QueryFailed:
            rows = []
        if not rows:
            raise _NotFound(
                f"{star.ref.field} star {star.ref.field_id} has no point-lens fit (it did not "
                "pass the pre-selection of rome.microlensing_candidates); ask without MODEL"
            )
        return dict(zip(names, rows[0], strict=True))

    @staticmethod
    def model_mags(fit: dict, hjd: np.ndarray, bands: np.ndarray) -> np.ndarray:
        """Model magnitudes at times ``hjd`` in the points' ``bands`` (NaN where the band
        has no model magnitudes)."""
        out = np.full(len(hjd), np.nan)
        for band in layout.FILTERS:
            peak, base = fit[f"peak_mag_{band}"], fit[f"baseline_mag_{band}"]
            sel = bands == band
            if peak is not None and base is not None and sel.any():
                out[sel] = band_model_mag(hjd[sel], fit["t0"], fit["te"], fit["u0"], peak, base)
        return out

    def single(self, req: LightcurveRequest) -> tuple[bytes, str, str]:
        """One star's whole response: (body, media type, file name). Worker thread."""
        star = self.resolve(req.ids[0])
        self._check_datasets([star], req.datasets)
        fit = self.fit(star) if req.model else None
        pts = self.points(star, req)
        base = f"{star.ref.field}_{star.ref.field_id}"
        if req.fmt is None:
            return self._png(star, pts, req, fit), "image/png", base + ".png"
        batch, fields, infos = self._table(star, pts, req, fit)
        body = self._document(star, req, batch, fields, infos)
        return body, req.fmt.media_type, f"{base}.{req.fmt.extension}"

    def _table(
        self, star: _Star, pts: PointArrays, req: LightcurveRequest, fit: dict | None = None
    ) -> tuple[pa.RecordBatch, list[FieldSpec], list[Info]]:
        """One star's points as a batch, its FIELDs and INFOs; with ``fit`` (a row of
        rome.microlensing_candidates) a ``model_mag`` column from the point-lens model."""
        schema = self._schema(pts.layout, star.columns, req, False)
        batch = self.batch(star, pts, schema)
        fields, infos = list(schema.fields), self._infos(req, pts.layout, 1)
        if fit is not None:
            bands = star.columns.filter.take(pa.array(pts.image_index)).to_numpy(
                zero_copy_only=False
            )
            model = self.model_mags(fit, pts.hjd, np.asarray(bands).astype(str))
            batch = pa.RecordBatch.from_arrays(
                [*batch.columns, pa.array(model, from_pandas=True)],
                names=[*batch.schema.names, "model_mag"],
            )
            spec = load_table_schema("lightcurve_points").by_name["model_mag"]
            fields = [*fields, FieldSpec.from_column(spec)]
            infos = infos + [
                Info("model", "pspl", "point-lens model from rome.microlensing_candidates"),
                *(Info(k, str(fit[k])) for k in ("t0", "te", "u0", "classification", "score")),
            ]
        return batch, fields, infos

    def _document(self, star, req, batch: pa.RecordBatch, fields, infos) -> bytes:
        assert req.fmt is not None
        return b"".join(
            write_result(
                batch,
                fields,
                req.fmt,
                resource_infos=infos,
                table_name=f"{star.ref.field} {star.ref.field_id} lightcurve",
                table_description=_description(star, req),
                params=self._params(star),
                timesys=[TIMESYS],
            )
        )

    def estimated_size(self, did: str, n_points: int) -> int | None:
        """About how many bytes the default (BINARY2) lightcurve document of ``did`` with
        ``n_points`` points has: a per-field model (bytes without points, bytes per
        point) measured once by writing that star's document with and without its
        points. None when it cannot be measured (no points, unreadable field)."""
        try:
            star = self.resolve(did)
            model = self._sizes.get(star.ref.field)
            if model is None:
                req = parse_request({"ID": [did]})
                pts = self.points(star, req)
                batch, fields, infos = self._table(star, pts, req)
                if batch.num_rows == 0:
                    return None
                full = len(self._document(star, req, batch, fields, infos))
                empty = len(self._document(star, req, batch.slice(0, 0), fields, infos))
                model = self._sizes[star.ref.field] = (empty, (full - empty) / batch.num_rows)
        except RomeReaError:
            return None
        return round(model[0] + model[1] * n_points)

    def many(self, req: LightcurveRequest) -> tuple[Iterator[bytes], str, str]:
        """Several stars: resolve them all (errors before any byte is sent), then stream."""
        stars = [self.resolve(did) for did in req.ids]
        self._check_datasets(stars, req.datasets)
        first = self._open_cube(stars[0].field, stars[0].ref.quadrant).layout
        layouts = {self._open_cube(s.field, s.ref.quadrant).layout for s in stars}
        metas = {tuple(s.columns.metadata) for s in stars}
        if len(layouts) > 1 or len(metas) > 1:
            raise InvalidRequestError(
                "these stars' fields have different photometry layouts (format eras "
                f"{', '.join(sorted(lay.era for lay in layouts))}); ask for them separately"
            )
        schema = self._schema(first, stars[0].columns, req, True)

        def batches() -> Iterator[pa.RecordBatch]:
            for star in stars:
                yield self.batch(star, self.points(star, req), schema)

        assert req.fmt is not None  # parse_request allows a plot of one star only
        chunks = write_result(
            batches(),
            schema.fields,
            req.fmt,
            resource_infos=self._infos(req, first, len(stars)),
            table_name=f"ROME lightcurves ({len(stars)} stars)",
            table_description=f"Lightcurves of {len(stars)} ROME/REA stars, each sorted by "
            "time; the id column holds each star's publisher DID.",
            timesys=[TIMESYS],
        )
        return chunks, req.fmt.media_type, f"lightcurves.{req.fmt.extension}"

    # ----- bulk: an uploaded table of stars

    def bulk_rows(self, table: pa.Table, radius_arcsec: float) -> list[_UploadRow]:
        """Each upload row's star or why it has none (malformed, unknown, duplicate, no
        match, unavailable). Raises InvalidRequestError when the table names no stars."""
        keys, dids = self._upload_dids(table, radius_arcsec)
        found = self._resolve_many(dids)
        rows: list[_UploadRow] = []
        first: dict[str, int] = {}
        for i, (key, did) in enumerate(zip(keys, dids, strict=True)):
            if not isinstance(did, str):  # no DID: ``did`` is the status
                rows.append(_UploadRow(i, key, None, did[0]))
                continue
            try:
                star = found[i] or self.resolve(did)  # resolve says why it has no star
            except InvalidRequestError as exc:
                rows.append(_UploadRow(i, key, None, f"malformed: {exc}"))
                continue
            except _NotFound as exc:
                rows.append(_UploadRow(i, key, None, f"unknown: {exc}"))
                continue
            except _Unavailable as exc:
                rows.append(_UploadRow(i, key, None, f"unavailable: {exc}"))
                continue
            if star.did in first:
                rows.append(_UploadRow(i, key, None, f"duplicate of upload row {first[star.did]}"))
                continue
            first[star.did] = i
            rows.append(_UploadRow(i, key, star, "ok"))
        return rows

    def _resolve_many(self, dids: Sequence[str | tuple[str]]) -> list[_Star | None]:
        """The star of each DID that names one, as :meth:`resolve` gives it, looked up a
        field at a time (10,000 DIDs: 0.04 s instead of 0.15); None for the others."""
        ids: dict[str, tuple[list[int], list[int]]] = {}  # field: (positions, field_ids)
        for i, did in enumerate(dids):
            if isinstance(did, str):
                try:
                    name, field_id = parse_did(did, self.authority)
                except InvalidRequestError:
                    continue
                if name in self.db.fields:
                    positions, field_ids = ids.setdefault(name, ([], []))
                    positions.append(i)
                    field_ids.append(field_id)
        stars: list[_Star | None] = [None] * len(dids)
        for name, (positions, field_ids) in ids.items():
            try:
                field, cols = self._field(name)
            except _Unavailable:
                continue
            refs = field.star_refs(np.array(field_ids, np.int64))
            try:
                for quadrant in {r.quadrant for r in refs if r is not None}:
                    self._open_cube(field, quadrant)
            except _Unavailable:
                continue
            for i, ref in zip(positions, refs, strict=True):
                if ref is not None:
                    stars[i] = _Star(make_did(self.authority, name, ref.field_id), field, ref, cols)
        return stars

    def _upload_dids(
        self, table: pa.Table, radius_arcsec: float
    ) -> tuple[list[str], list[str | tuple[str]]]:
        """(text of each row's key, its DID or a (status,) tuple) from an ID column, a
        field + field_id pair or ra/dec positions."""
        names = {n.lower(): n for n in table.column_names}
        n = table.num_rows
        if "id" in names or "did" in names:
            values = table.column(names.get("id") or names["did"]).to_pylist()
            keys = ["" if v is None else str(v).strip() for v in values]
            given: list[str | tuple[str]] = [k if k else ("malformed: empty ID",) for k in keys]
            return keys, given
        if "field" in names and "field_id" in names:
            fields = table.column(names["field"]).to_pylist()
            ids = table.column(names["field_id"]).to_pylist()
            made: list[str | tuple[str]] = []
            keys = [f"{f}/{i}" for f, i in zip(fields, ids, strict=True)]
            for f, i in zip(fields, ids, strict=True):
                try:
                    made.append(make_did(self.authority, str(f).strip(), int(i)))
                except (TypeError, ValueError):
                    made.append(("malformed: field_id is not an integer",))
            return keys, made
        if "ra" in names and "dec" in names:
            ra = _float_column(table, names["ra"])
            dec = _float_column(table, names["dec"])
            keys = [f"{a!r} {d!r}" for a, d in zip(ra.tolist(), dec.tolist(), strict=True)]
            best_sep = np.full(n, np.inf)
            nearest: list[str | tuple[str]] = [(f"no star within {radius_arcsec!r} arcsec",)] * n
            bad = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90))
            for name in self.db.fields:
                field, _ = self._field(name)
                a = field.index_arrays
                m = crossmatch(
                    np.where(bad, 0.0, ra), np.where(bad, 0.0, dec),
                    np.asarray(a["ra"], float), np.asarray(a["dec"], float),
                    radius_arcsec, mode="best",
                )  # fmt: skip
                for left, right, sep in zip(m.left, m.right, m.sep_arcsec, strict=True):
                    if not bad[left] and sep < best_sep[left]:
                        best_sep[left] = sep
                        nearest[left] = make_did(self.authority, name, int(a["field_id"][right]))
            for i in np.flatnonzero(bad):
                nearest[i] = ("malformed: ra/dec is not a position",)
            return keys, nearest
        raise InvalidRequestError(
            "the uploaded table needs an id (or did) column of star DIDs, field and "
            f"field_id columns, or ra and dec columns (degrees); it has: "
            f"{', '.join(table.column_names)}"
        )

    def bulk(
        self, req: LightcurveRequest, table: pa.Table, radius_arcsec: float
    ) -> tuple[Iterator[bytes], str, str]:
        """Lightcurves of an uploaded table of stars as one streamed table.

        Stars are read field by field, each quadrant in row order (sequential I/O), so
        the table is in that order, not the upload's; ``upload_row`` says which row each
        point answers and ``status`` why a row has no points. Raises InvalidRequestError
        for an unusable table (no key columns, too many rows, mixed layouts).
        """
        if table.num_rows > MAX_BULK_IDS:
            raise InvalidRequestError(
                f"the uploaded table has {table.num_rows} rows; one request takes at most "
                f"{MAX_BULK_IDS} stars: split the list, or export whole fields with "
                "romerea-vo export-lightcurves"
            )
        if req.fmt is None:
            raise InvalidRequestError("RESPONSEFORMAT=png plots one star: give a single ID")
        rows = self.bulk_rows(table, radius_arcsec)
        good = [r for r in rows if r.star is not None]
        self._check_datasets([r.found for r in good], req.datasets)
        if good:
            star = good[0].found
            first = self._open_cube(star.field, star.ref.quadrant).layout
            cols = star.columns
        else:
            field, cols = self._field(next(iter(self.db.fields)))
            first = field.photometry_layout
        quadrants = {(r.found.field, r.found.ref.quadrant): r.found.columns for r in good}
        layouts = {self._open_cube(field, q).layout for field, q in quadrants}
        if len(layouts) > 1 or len({tuple(c.metadata) for c in quadrants.values()}) > 1:
            raise InvalidRequestError(
                "these stars' fields have different photometry layouts (format eras "
                f"{', '.join(sorted(lay.era for lay in layouts))}); ask for them separately"
            )
        schema = self._schema(first, cols, req, True, bulk=True)
        good.sort(key=lambda r: (r.found.ref.field, r.found.ref.quadrant, r.found.ref.row))
        failed = [r for r in rows if r.star is None]
        summary = {"ok": len(good), "failed": len(failed)}

        def batches() -> Iterator[pa.RecordBatch]:
            empty: list[_UploadRow] = []
            for part in _quadrant_runs(good):
                star = part[0].found
                datasets = self._datasets_for(star, req.datasets)
                if datasets is not None and not datasets:  # no DATASET is in this field
                    empty += part
                    continue
                has_points = np.zeros(len(part), bool)
                pending: list[StarsPoints] = []
                for pts in stars_points(
                    star.field,
                    star.ref.quadrant,
                    np.array([r.found.ref.row for r in part], np.int64),
                    schema.cube_columns,
                    filters=req.bands,
                    datasets=datasets,
                    quality=req.quality,
                    mjd_range=req.time,
                ):
                    has_points[pts.which] = True
                    pending.append(pts)
                    if sum(len(p) for p in pending) >= ROW_GROUP_ROWS:
                        yield self._stars_batch(part, pending, schema)
                        pending = []
                if pending:
                    yield self._stars_batch(part, pending, schema)
                empty += [r for r, found in zip(part, has_points, strict=True) if not found]
            summary["no_points"] = len(empty)
            status = [*failed, *(replace(r, status="no points") for r in empty)]
            if status:
                yield _status_batch(status, schema)

        def post_infos() -> list[Info]:
            return [
                Info("stars_ok", str(summary["ok"] - summary.get("no_points", 0))),
                Info("stars_without_points", str(summary.get("no_points", 0))),
                Info("rows_failed", str(summary["failed"]), "upload rows naming no star"),
            ]

        chunks = write_result(
            produced_ahead(batches()),
            schema.fields,
            req.fmt,
            resource_infos=self._infos(req, first, len(rows)),
            table_name="lightcurves",
            table_description=f"Lightcurves of the {len(rows)} stars of an uploaded table; "
            "upload_row and status say which upload row each row answers and how.",
            timesys=[TIMESYS],
            post_infos=post_infos,
        )
        return chunks, req.fmt.media_type, f"lightcurves.{req.fmt.extension}"

    def _stars_batch(
        self, part: Sequence[_UploadRow], runs: Sequence[StarsPoints], schema: _Schema
    ) -> pa.RecordBatch:
        """One batch of the points of consecutive runs of upload rows' stars (a batch
        of Parquet's row-group size: fewer, larger batches are cheaper to encode)."""
        pts = runs[0] if len(runs) == 1 else StarsPoints.concatenate(runs)
        rows = part[pts.first : pts.first + pts.count]
        return self.block_batch(
            [r.found for r in rows], pts.which - pts.first, pts.image_index, pts.columns,
            schema, [r.row for r in rows],
        )  # fmt: skip

    def _png(
        self, star: _Star, pts: PointArrays, req: LightcurveRequest, fit: dict | None = None
    ) -> bytes:
        from astropy.table import Table

        from .plotting import plot_lightcurve

        mag = pts.layout.science_mag
        table = Table(
            {
                "hjd": pts.hjd,
                "filter": star.columns.filter.take(pa.array(pts.image_index)).to_numpy(
                    zero_copy_only=False
                ),
                mag: pts.column(mag),
                f"{mag}_err": pts.column(f"{mag}_err"),
            },
            meta={
                "field": star.ref.field,
                "field_id": star.ref.field_id,
                "quality": req.quality,
                "mag_column": mag,
            },
        )
        model = None
        if fit is not None and len(pts):
            span = (min(pts.hjd.min(), fit["t0"] - 2 * fit["te"]), max(pts.hjd.max(), fit["t0"]))
            grid = np.linspace(span[0], max(span[1], fit["t0"] + 2 * fit["te"]), 4000)
            model = {
                b: (grid, self.model_mags(fit, grid, np.full(grid.size, b))) for b in layout.FILTERS
            }
        out = io.BytesIO()
        plot_lightcurve(table, out, model=model)
        return out.getvalue()


def _in_time(pts: PointArrays, time: tuple[float, float] | None) -> PointArrays:
    """The points whose hjd lies in the TIME interval (MJD, ends included)."""
    if time is None:
        return pts
    mjd = pts.hjd - MJD_OFFSET
    keep = (mjd >= time[0]) & (mjd <= time[1])
    return PointArrays(pts.star, pts.image_index[keep], pts.data[keep], pts.layout)


def _quadrant_runs(rows: Sequence[_UploadRow]) -> Iterator[list[_UploadRow]]:
    """Upload rows (sorted by field, quadrant, cube row) in runs of one quadrant."""
    for _, run in itertools.groupby(rows, lambda r: (r.found.ref.field, r.found.ref.quadrant)):
        yield list(run)


@dataclass(frozen=True)
class _UploadRow:
    """One row of a bulk upload: what it named, its star if any, and its status."""

    row: int
    key: str
    star: _Star | None
    status: str

    @property
    def found(self) -> _Star:
        """The row's star (for rows that have one)."""
        if self.star is None:
            raise ValueError(f"upload row {self.row} names no star ({self.status})")
        return self.star


def _float_column(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64 (NULL and unparsable text become NaN)."""
    col = table.column(name)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        col = pc.cast(pc.utf8_trim_whitespace(col.cast(pa.string())), pa.float64(), safe=False)
    return pc.fill_null(col.cast(pa.float64()), np.nan).to_numpy()


def _status_batch(rows: Sequence[_UploadRow], schema: _Schema) -> pa.RecordBatch:
    """One row per upload row without points: its key, row, status; NULL elsewhere."""
    n = len(rows)
    values = {
        "id": pa.array([r.key for r in rows], pa.large_string()),
        "upload_row": pa.array([r.row for r in rows], pa.int64()),
        "status": pa.array([r.status for r in rows], pa.large_string()),
    }
    arrays = [values.get(name, pa.nulls(n)) for name in schema.names]
    return pa.RecordBatch.from_arrays(arrays, names=list(schema.names))


class _NotFound(RomeReaError):
    """A well-formed ID that names no star of this service (HTTP 404)."""

    http_status = 404
    dali_fault = "NotFoundFault"


class _Unavailable(RomeReaError):
    """A field's files cannot be read on the server (HTTP 500)."""


def _description(star: _Star, req: LightcurveRequest) -> str:
    ref = star.ref
    bands = ", ".join(req.bands or layout.FILTERS)
    return (
        f"Lightcurve of ROME/REA star {ref.field} {ref.field_id} ({star.did}), bands {bands}, "
        f"{req.quality} points, sorted by HJD; read from the quadrant {ref.quadrant} "
        "photometry cube."
    )
