"""Writing cross-match results: VOTable, FITS, CSV, ECSV or Parquet, with provenance.

Results are astropy Tables whose columns carry unit, UCD (``meta['ucd']``) and
description. VOTable, FITS and CSV go through the project's vectorised writers
(:mod:`romerea_vo.votable`), Parquet through pyarrow with the table metadata embedded as
a VOTable (the IVOA VOTable-in-Parquet convention, which STILTS/TOPCAT read), ECSV
through astropy. Provenance (radius, mode, sources) and, for a partial result, the
statement that it is incomplete and why, go where each format keeps metadata: VOTable
INFOs, FITS header keywords, ECSV table meta, Parquet key-value metadata. CSV has no
place for them: an incomplete CSV result is recognisable only by its ``.partial.csv``
name.

A complete result is written to a temporary file next to the target and renamed onto
it, so the target path only ever holds a finished file.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
from astropy.table import Table
from astropy.time import Time

from ..errors import InvalidRequestError
from ..votable.formats import write_result
from ..votable.writer import FieldSpec, Info, write_votable

__all__ = [
    "FITS_KEYWORDS",
    "FORMATS",
    "check_output_path",
    "encode_table",
    "output_format",
    "partial_path",
    "table_fields",
    "write_table",
]

FORMATS = ("votable", "fits", "csv", "ecsv", "parquet")
_EXTENSIONS = {
    ".vot": "votable",
    ".xml": "votable",
    ".votable": "votable",
    ".fits": "fits",
    ".fit": "fits",
    ".csv": "csv",
    ".ecsv": "ecsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}

FITS_KEYWORDS = {
    "xmatch_status": "XMSTATUS",
    "xmatch_incomplete": "XMINCOMP",
    "xmatch_mode": "XMMODE",
    "xmatch_radius_arcsec": "XMRADIUS",
    "xmatch_input": "XMINPUT",
    "xmatch_rome": "XMROME",
    "xmatch_external": "XMEXTERN",
    "xmatch_where": "XMWHERE",
    "xmatch_input_epoch": "XMEPOCH",
    "xmatch_rome_epochs": "XMREPOCH",
    "xmatch_software": "XMSOFTW",
}
"""Provenance keys and the (8-character) FITS keywords they are written under."""


def output_format(path: str | Path | None, fmt: str | None) -> str:
    """The output format: ``fmt`` if given, else from the file extension, else VOTable."""
    if fmt is not None:
        name = fmt.strip().lower()
        if name not in FORMATS:
            raise InvalidRequestError(
                f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}"
            )
        return name
    if path is None:
        return "votable"
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise InvalidRequestError(
            f"cannot tell the output format of {Path(path).name}; give --format "
            f"({', '.join(FORMATS)}) or use one of the extensions {', '.join(_EXTENSIONS)}"
        )
    return _EXTENSIONS[suffix]


def partial_path(path: str | Path) -> Path:
    """Where an incomplete result goes: ``OUT.partial.<ext>`` next to ``OUT.<ext>``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.partial{p.suffix}")


def check_output_path(path: Path, *, overwrite: bool, inputs: list[Path]) -> None:
    """Refuse an output that exists (unless ``overwrite``), that is an input file, or whose
    directory does not exist."""
    if not path.parent.is_dir():
        raise InvalidRequestError(f"cannot write {path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise InvalidRequestError(f"cannot write {path}: it is a directory")
    resolved = path.resolve()
    for given in inputs:
        if given.exists() and given.resolve() == resolved:
            raise InvalidRequestError(
                f"the output {path} is the input file; input files are never modified"
            )
    if path.exists() and not overwrite:
        raise InvalidRequestError(f"{path} exists; give --overwrite to replace it")


# --------------------------------------------------------------------------- columns


def _unit_text(unit) -> str | None:
    if unit is None:
        return None
    try:
        return unit.to_string("vounit")
    except (ValueError, TypeError, AttributeError):
        return str(unit)


def _text_array(values, mask) -> pa.Array:
    try:  # numpy str or object arrays of str: converted by Arrow in one go
        return pa.array(values, mask=mask, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    nulls = mask if mask is not None else np.zeros(len(values), bool)
    return pa.array(
        [None if (m or v is None) else str(v) for v, m in zip(values, nulls, strict=True)],
        pa.string(),
    )


def _to_arrow(col) -> pa.Array:
    """One astropy column (or mixin) as an Arrow array; masked values become nulls."""
    if isinstance(col, Time):  # e.g. from an ECSV input: ISO strings
        mask = np.ravel(col.mask) if col.masked else None
        return _text_array(np.ravel(col.isot).astype(object), mask)
    data = np.ma.getdata(col)
    data = np.asarray(getattr(data, "value", data))  # Quantity columns of a QTable
    mask = np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) or hasattr(col, "mask") else None
    if mask is not None and mask.ndim > 1:
        mask = np.asarray(mask.all(axis=tuple(range(1, mask.ndim))))
    if mask is not None and not mask.any():
        mask = None
    if data.dtype.kind == "S":
        data = np.char.decode(data, "utf-8", errors="replace")
    if data.dtype.kind not in "biuf" or data.ndim > 2:
        flat = data if data.ndim == 1 else np.array([str(v) for v in data], dtype=object)
        return _text_array(flat, mask)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    if data.ndim == 2:  # fixed-size arrays, e.g. a VOTable double[3]
        flat = pa.array(np.ascontiguousarray(data).ravel())
        arr = pa.FixedSizeListArray.from_arrays(flat, data.shape[1])
        if mask is not None:
            arr = pa.array(
                [None if m else v for v, m in zip(arr.to_pylist(), mask, strict=True)], arr.type
            )
        return arr
    return pa.array(data, mask=mask)


def table_fields(table: Table) -> tuple[pa.Table, list[FieldSpec]]:
    """The table as Arrow data and VOTable FIELDs (unit, UCD, description kept)."""
    arrays, fields = [], []
    for name in table.colnames:
        col = table[name]
        arr = _to_arrow(col)
        spec = FieldSpec.from_arrow(name, arr.type, sample=arr.slice(0, 1000))
        info = col.info
        meta = getattr(info, "meta", None) or {}
        ucd = meta.get("ucd")
        spec = FieldSpec(
            name=spec.name,
            datatype=spec.datatype,
            arraysize=spec.arraysize,
            xtype=spec.xtype,
            unit=_unit_text(getattr(info, "unit", None)),
            ucd=str(ucd).strip() if ucd else None,
            description=(info.description or None),
        )
        arrays.append(arr)
        fields.append(spec)
    return pa.table(arrays, names=[f.name for f in fields]), fields


# --------------------------------------------------------------------------- writing


def _infos(provenance: dict[str, str]) -> list[Info]:
    return [Info(k, str(v)) for k, v in provenance.items() if v is not None]


def _votable_bytes(data: pa.Table, fields, provenance, description) -> bytes:
    return b"".join(
        write_votable(
            data,
            fields,
            serialization="binary2",
            resource_infos=_infos(provenance),
            table_name="xmatch",
            table_description=description,
        )
    )


def _fits_bytes(data: pa.Table, fields, provenance) -> bytes:
    from astropy.io import fits

    raw = b"".join(write_result(data, fields, "fits", table_name="XMATCH"))
    # Only the table header changes: splice it in front of the data bytes as written.
    with fits.open(io.BytesIO(raw)) as hdul:
        header = hdul[1].header.copy()
        where = hdul.fileinfo(1)
    for key, value in provenance.items():
        if value is None:
            continue
        keyword = FITS_KEYWORDS.get(key)
        if keyword is None:
            raise ValueError(f"no FITS keyword for provenance key {key!r}")
        header[keyword] = " ".join(str(value).split()).encode("ascii", "replace").decode("ascii")
    head = header.tostring(padding=True).encode("ascii")
    return raw[: where["hdrLoc"]] + head + raw[where["datLoc"] :]


def _parquet_bytes(data: pa.Table, fields, provenance, description) -> bytes:
    import pyarrow.parquet as pq

    header = _votable_bytes(data.slice(0, 0), fields, provenance, description)
    meta = {
        b"IVOA.VOTable-Parquet.version": b"1.0",
        b"IVOA.VOTable-Parquet.content": header,
    }
    meta.update({k.encode(): str(v).encode() for k, v in provenance.items() if v is not None})
    out = io.BytesIO()
    pq.write_table(data.replace_schema_metadata(meta), out)
    return out.getvalue()


def _ecsv_bytes(table: Table, provenance, description) -> bytes:
    out = table.copy(copy_data=False)
    out.meta = {
        "description": description,
        **{k: v for k, v in provenance.items() if v is not None},
    }
    buf = io.StringIO()
    out.write(buf, format="ascii.ecsv")
    return buf.getvalue().encode("utf-8")


def encode_table(table: Table, fmt: str, *, provenance: dict[str, str], description: str) -> bytes:
    """The whole file's bytes in ``fmt``."""
    if fmt == "ecsv":
        return _ecsv_bytes(table, provenance, description)
    data, fields = table_fields(table)
    if fmt == "votable":
        return _votable_bytes(data, fields, provenance, description)
    if fmt == "fits":
        return _fits_bytes(data, fields, provenance)
    if fmt == "parquet":
        return _parquet_bytes(data, fields, provenance, description)
    if fmt == "csv":
        return b"".join(write_result(data, fields, "csv"))
    raise ValueError(f"unknown format {fmt!r}")


def write_table(
    table: Table,
    path: Path | None,
    fmt: str,
    *,
    provenance: dict[str, str],
    description: str,
) -> None:
    """Write ``table`` to ``path`` (atomically: a temporary file renamed onto it) or, when
    ``path`` is None, to standard output."""
    payload = encode_table(table, fmt, provenance=provenance, description=description)
    if path is None:
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
