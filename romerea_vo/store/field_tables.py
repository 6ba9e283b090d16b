"""One field's data products as Arrow tables shaped like the published ``rome`` tables.

Every table is built column by column from its votable_schemas/ definition, so a column
the file lacks (older pyDANDIA eras) becomes NULL rather than an error.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from ..ids import did_prefix
from ..lightcurves import field_statistics
from ..products import layout
from ..products.reader import Field
from ..votable.schema import TableSchema, load_table_schema
from .ddl import ARROW_TYPES

GAIA_ZERO_POINTS = {"g": 25.6874, "bp": 25.3385, "rp": 24.7479}
"""Gaia EDR3 Vega zero points (Riello et al. 2021) for fluxes in e-/s."""


def _column(values, datatype: str, null: np.ndarray | None = None) -> pa.Array:
    arr = np.ma.getdata(values)
    mask = np.ma.getmaskarray(values) if np.ma.isMaskedArray(values) else None
    if null is not None:
        mask = null if mask is None else (mask | null)
    if arr.dtype.kind in "SU":
        arr = np.char.strip(arr.astype(str))
    elif not arr.dtype.isnative:  # FITS columns are big-endian; Arrow wants native order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if datatype == "boolean":
        arr = arr.astype(bool)
    # from_pandas: NaN in a float column becomes NULL (no published column uses NaN as a value)
    return pa.array(arr, type=ARROW_TYPES[datatype], mask=mask, from_pandas=arr.dtype.kind == "f")


def _nulls(n: int, datatype: str) -> pa.Array:
    return pa.nulls(n, type=ARROW_TYPES[datatype])


def _build(schema: TableSchema, n: int, get: Callable[[str], object | None]) -> pa.Table:
    """Columns in schema order; ``get(name)`` returns values, a pa.Array, or None (NULL)."""
    arrays = []
    for col in schema.columns:
        values = get(col.name)
        if values is None:
            arrays.append(_nulls(n, col.datatype))
        elif isinstance(values, pa.Array):
            arrays.append(values.cast(ARROW_TYPES[col.datatype]))
        else:
            arrays.append(_column(values, col.datatype))
    return pa.Table.from_arrays(arrays, names=schema.column_names)


def _constant(value: str, n: int) -> pa.Array:
    return pa.array(np.full(n, value, dtype=object), type=pa.string())


def field_index_table(field: Field, authority: str) -> pa.Table:
    fi = field.field_index
    n = len(fi)
    per_filter = {f: np.zeros(n, dtype=np.int16) for f in layout.FILTERS}
    for row in field.datasets:
        flt = str(row["dataset_filter"]).strip()
        if flt in per_filter:
            idx = np.asarray(fi[field.dataset_index_column(str(row["dataset_code"]).strip())])
            per_filter[flt] += idx > 0
    ids = np.asarray(fi["field_id"])
    dids = pa.array(np.char.add(did_prefix(authority, field.name), ids.astype(str)).astype(object))
    extra = {f"n_datasets_{f}": per_filter[f] for f in layout.FILTERS}
    return _build(
        load_table_schema("field_index"),
        n,
        lambda c: (
            _constant(field.name, n)
            if c == "field"
            else dids
            if c == "did"
            else extra.get(c, fi[c] if c in fi.colnames else None)
        ),
    )


def stars_table(field: Field) -> pa.Table:
    stars = field.stars
    n = len(stars)
    gaia = stars["gaia_source_id"] if "gaia_source_id" in stars.colnames else None
    unmatched = np.ma.getmaskarray(gaia) if gaia is not None else np.ones(n, dtype=bool)
    schema = load_table_schema("stars")

    def get(name: str):
        if name == "field":
            return _constant(field.name, n)
        if name.startswith("gaia_") and name.endswith("_mag"):
            band = name[len("gaia_") : -len("_mag")]
            flux_col = f"phot_{band}_mean_flux"
            if flux_col not in stars.colnames:
                return None
            flux = np.asarray(stars[flux_col], dtype=float)
            good = (flux > 0) & ~unmatched
            mags = np.full(n, np.nan)
            mags[good] = -2.5 * np.log10(flux[good]) + GAIA_ZERO_POINTS[band]
            return _column(mags, "double", null=~good)
        if name not in stars.colnames:
            return None
        values = stars[name]
        if name in ("field_id", "ra", "dec", "gaia_source_id"):
            return values
        data = np.asarray(values, dtype=float)
        # 0.0 is pyDANDIA's "no value"; Gaia columns of unmatched rows are zeros too.
        null = (data == 0.0) | ~np.isfinite(data)
        if name.startswith(("gaia_", "phot_", "pm", "parallax")):
            null |= unmatched
        return _column(data, "double", null=null)

    return _build(schema, n, get)


def datasets_table(field: Field) -> pa.Table:
    ds = field.datasets
    n = len(ds)
    codes = [str(c).strip() for c in ds["dataset_code"]]
    images_codes = np.char.strip(np.asarray(field.images["dataset_code"]).astype(str))
    hjd = np.asarray(field.images["hjd"], dtype=float)
    n_images, first, last = [], [], []
    for code in codes:
        sel = images_codes == code
        good = hjd[sel & (hjd > 0)]
        n_images.append(int(sel.sum()))
        first.append(good.min() if len(good) else np.nan)
        last.append(good.max() if len(good) else np.nan)
    first_arr, last_arr = np.array(first), np.array(last)
    derived = {
        "field": _constant(field.name, n),
        "dataset_code": np.array(codes),
        "shortcode": np.array([layout.dataset_shortcode(c) for c in codes]),
        "site_dome": np.array([layout.site_dome(c) for c in codes]),
        "filter": ds["dataset_filter"],
        "primary_ref": np.asarray(ds["primary_ref"]) == 1,
        "n_images": np.array(n_images, dtype=np.int32),
        "hjd_first": _column(first_arr, "double", null=np.isnan(first_arr)),
        "hjd_last": _column(last_arr, "double", null=np.isnan(last_arr)),
        "red_dir": ds["dataset_red_dir"] if "dataset_red_dir" in ds.colnames else None,
    }
    return _build(
        load_table_schema("datasets"),
        n,
        lambda c: derived[c] if c in derived else (ds[c] if c in ds.colnames else None),
    )


IMAGES_RENAMED = {
    "image_index": "index",
    "date_obs": "datetime",
    "pointing_ra": "RA",
    "pointing_dec": "Dec",
}


def images_table(field: Field) -> pa.Table:
    im = field.images
    n = len(im)

    def get(name: str):
        if name == "field":
            return _constant(field.name, n)
        src = IMAGES_RENAMED.get(name, name)
        if src not in im.colnames:
            return None
        if name == "hjd":
            hjd = np.asarray(im["hjd"], dtype=float)
            return _column(hjd, "double", null=hjd <= 0)
        return im[src]

    return _build(load_table_schema("images"), n, get)


def stamps_table(field: Field) -> pa.Table:
    schema = load_table_schema("stamps")
    st = field.stamps
    if st is None:
        return _build(schema, 0, lambda c: None)
    n = len(st)
    return _build(
        schema,
        n,
        lambda c: (
            _constant(field.name, n) if c == "field" else (st[c] if c in st.colnames else None)
        ),
    )


def dataset_stars_table(field: Field) -> pa.Table:
    fi = field.field_index
    ids = np.asarray(fi["field_id"])
    parts = {"field_id": [], "dataset_code": [], "star_index": []}
    for code in field.dataset_codes:
        idx = np.asarray(fi[field.dataset_index_column(code)])
        hit = idx > 0
        parts["field_id"].append(ids[hit])
        parts["star_index"].append(idx[hit])
        parts["dataset_code"].append(np.full(int(hit.sum()), code, dtype=object))
    cols = {k: np.concatenate(v) if v else np.array([]) for k, v in parts.items()}
    n = len(cols["field_id"])
    return _build(
        load_table_schema("dataset_stars"),
        n,
        lambda c: _constant(field.name, n) if c == "field" else cols[c],
    )


def _table_rows(name: str, table, field: Field) -> pa.Table:
    n = len(table)
    return _build(
        load_table_schema(name),
        n,
        lambda c: _constant(field.name, n) if c == "field" else np.asarray(table[c]),
    )


def field_tables(field: Field, *, authority: str, progress: bool = False) -> dict[str, pa.Table]:
    """Every ``rome`` table's rows for one field, keyed by table name."""
    passed = field_statistics(field, progress=progress)
    return {
        "field_index": field_index_table(field, authority),
        "stars": stars_table(field),
        "datasets": datasets_table(field),
        "images": images_table(field),
        "stamps": stamps_table(field),
        "dataset_stars": dataset_stars_table(field),
        "lightcurve_stats": _table_rows("lightcurve_stats", passed.stats, field),
        "microlensing_candidates": _table_rows("microlensing_candidates", passed.candidates, field),
    }


def ingest_summary(field: str, tables: dict[str, pa.Table]) -> dict:
    """What an ingest reports per field: rows per table and the microlensing candidates."""
    summary: dict = {"field": field, **{k: v.num_rows for k, v in tables.items()}}
    fits = tables.get("microlensing_candidates")
    if fits is not None:
        classes = fits.column("classification").to_pylist()
        summary["candidates"] = classes.count("candidate")
    return summary
