"""TAP result formats (RESPONSEFORMAT values) and their serialisers.

VOTable (BINARY2 by default, BINARY, TABLEDATA), VOParquet (:mod:`.parquet`), CSV and TSV
stream batch by batch; FITS needs the row count in its header before the data, so it
collects the whole result first.

CSV follows RFC 4180 (CRLF line ends, a header line, fields quoted when they hold ``"``,
``,``, CR/LF or leading/trailing blanks, and empty strings quoted as ``""`` so that they
differ from NULL, which is an empty field); booleans are ``true``/``false``, floats
shortest round-trip with ``NaN``/``+Inf``/``-Inf``, arrays space-separated. TSV
(text/tab-separated-values) has no quoting: tabs and line breaks inside strings become
spaces; NULL is an empty field. FITS: NULL integers use TNULLn, NULL floats NaN, NULL
strings and booleans become empty and false; units, UCDs, utypes and descriptions go to
TUNITn, TUCDn, TUTYPn and TCOMMn (the keywords STILTS and TOPCAT read).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidRequestError
from .parquet import PARQUET_MEDIA, write_parquet
from .writer import (
    _NUMERIC,
    FieldSpec,
    _Column,
    _large_binary_parts,
    _pad_rows,
    iter_batches,
    write_votable,
)

__all__ = ["RESULT_FORMATS", "ResultFormat", "resolve_format", "write_result"]

VOTABLE_MEDIA = "application/x-votable+xml"
_TAPREGEXT = "ivo://ivoa.net/std/TAPRegExt#"


@dataclass(frozen=True)
class ResultFormat:
    """One output format: its short RESPONSEFORMAT name, media type and accepted aliases."""

    name: str
    media_type: str
    serializer: str  # "votable", "parquet", "csv", "tsv" or "fits"
    extension: str
    aliases: tuple[str, ...] = ()
    serialization: str | None = None  # VOTable serialisation for serializer="votable"
    ivo_id: str | None = None


RESULT_FORMATS: dict[str, ResultFormat] = {
    f.name: f
    for f in (
        ResultFormat(
            "votable", VOTABLE_MEDIA, "votable", "vot",
            aliases=("votable", "application/votable+xml", "text/xml"),
            serialization="binary2",
        ),
        ResultFormat(
            "votable/b2", VOTABLE_MEDIA + ";serialization=BINARY2", "votable", "vot",
            aliases=("votable/b2", "votableb2"),
            serialization="binary2", ivo_id=_TAPREGEXT + "output-votable-binary2",
        ),
        ResultFormat(
            "votable/b", VOTABLE_MEDIA + ";serialization=BINARY", "votable", "vot",
            aliases=("votable/b", "votableb"),
            serialization="binary", ivo_id=_TAPREGEXT + "output-votable-binary",
        ),
        ResultFormat(
            "votable/td", VOTABLE_MEDIA + ";serialization=TABLEDATA", "votable", "vot",
            aliases=("votable/td", "votabletd"),
            serialization="tabledata", ivo_id=_TAPREGEXT + "output-votable-td",
        ),
        ResultFormat(
            "parquet", PARQUET_MEDIA, "parquet", "parquet",
            aliases=("parquet", "application/x-parquet", "application/parquet"),
        ),
        ResultFormat("csv", "text/csv;header=present", "csv", "csv", aliases=("csv", "text/csv")),
        ResultFormat("tsv", "text/tab-separated-values", "tsv", "tsv", aliases=("tsv",)),
        ResultFormat(
            "fits", "application/fits", "fits", "fits",
            aliases=("fits", "application/x-fits-bintable"),
        ),
    )
}  # fmt: skip
"""Formats by short name; each lists its media type and the other values clients send."""

_VOTABLE_TYPES = {VOTABLE_MEDIA, "application/votable+xml", "text/xml"}


def _lookup() -> dict[str, ResultFormat]:
    table = {}
    for fmt in RESULT_FORMATS.values():
        for key in (fmt.name, fmt.media_type, *fmt.aliases):
            table[_normalise(key)] = fmt
    return table


def _normalise(value: str) -> str:
    """Lower-case media type and parameters, blanks removed: ``a/b;k=v``."""
    parts = [p.strip().lower() for p in value.split(";")]
    return ";".join(p.replace(" ", "") for p in parts if p)


_BY_VALUE = _lookup()


def resolve_format(value: str | None) -> ResultFormat:
    """The format for a RESPONSEFORMAT (or FORMAT) value; None or empty means VOTable."""
    if value is None or not value.strip():
        return RESULT_FORMATS["votable"]
    key = _normalise(value)
    if key in _BY_VALUE:
        return _BY_VALUE[key]
    media, *params = key.split(";")
    opts = dict(p.partition("=")[::2] for p in params)
    if media in _VOTABLE_TYPES:  # other parameters (e.g. charset) do not change the format
        serialization = opts.get("serialization", "binary2")
        for fmt in RESULT_FORMATS.values():
            if fmt.serializer == "votable" and fmt.serialization == serialization:
                return fmt
    elif media == "text/csv" and opts.get("header", "present") == "present":
        return RESULT_FORMATS["csv"]
    elif media == "text/tab-separated-values":
        return RESULT_FORMATS["tsv"]
    accepted = sorted({v for f in RESULT_FORMATS.values() for v in (f.media_type, *f.aliases)})
    raise InvalidRequestError(
        f"RESPONSEFORMAT={value!r} is not supported; use one of: {', '.join(accepted)}"
    )


def write_result(
    batches: Iterable[pa.RecordBatch] | pa.Table,
    fields: Sequence[FieldSpec],
    fmt: ResultFormat | str,
    **votable_kwargs: Any,
) -> Iterator[bytes]:
    """Serialise ``batches`` in ``fmt`` as a stream of byte chunks.

    ``votable_kwargs`` go to :func:`write_votable` or (the same metadata, embedded as
    VOParquet) :func:`~romerea_vo.votable.parquet.write_parquet`; other formats use only
    ``table_name`` (FITS EXTNAME) and ignore the rest (they have nowhere to put INFOs).
    """
    if isinstance(fmt, str):
        fmt = resolve_format(fmt)
    if fmt.serializer == "votable":
        assert fmt.serialization is not None  # every VOTable format names its serialisation
        return write_votable(batches, fields, serialization=fmt.serialization, **votable_kwargs)
    if fmt.serializer == "parquet":
        return write_parquet(batches, fields, **votable_kwargs)
    if fmt.serializer == "csv":
        return _write_text(batches, fields, _csv_cell, ",")
    if fmt.serializer == "tsv":
        return _write_text(batches, fields, _tsv_cell, "\t")
    if fmt.serializer == "fits":
        return _write_fits(batches, fields, votable_kwargs.get("table_name"))
    raise ValueError(f"unknown serializer {fmt.serializer!r}")


# --------------------------------------------------------------------------- CSV / TSV

_CSV_SUSPECT = np.zeros(256, bool)
_CSV_SUSPECT[[ord('"'), ord(","), ord("\r"), ord("\n"), ord(" "), ord("\t")]] = True
_TSV_SUSPECT = np.zeros(256, bool)
_TSV_SUSPECT[[ord("\t"), ord("\r"), ord("\n")]] = True
_EMPTY = pa.scalar("", pa.large_string())


def _suspect(text: pa.Array, table: np.ndarray) -> bool:
    offsets, data = _large_binary_parts(text)
    chunk = data[offsets[0] : offsets[-1]]
    return bool(chunk.size) and bool(table[chunk].any())


def _csv_cell(text: pa.Array, is_string: bool) -> pa.Array:
    """RFC 4180 quoting; NULL becomes an empty field, an empty string ``""``."""
    if not is_string:
        return pc.fill_null(text, _EMPTY)
    needs = pc.equal(text, _EMPTY)
    if _suspect(text, _CSV_SUSPECT):
        special = pc.match_substring_regex(text, r'[",\r\n]|^\s|\s$')
        needs = pc.or_(needs, special)
    if pc.any(needs).as_py():
        quote = pa.scalar('"', pa.large_string())
        doubled = pc.replace_substring(text, '"', '""')
        quoted = pc.binary_join_element_wise(quote, doubled, quote, _EMPTY)
        text = pc.if_else(needs, quoted, text)
    return pc.fill_null(text, _EMPTY)


def _tsv_cell(text: pa.Array, is_string: bool) -> pa.Array:
    if is_string and _suspect(text, _TSV_SUSPECT):
        text = pc.replace_substring_regex(text, r"[\t\r\n]", " ")
    return pc.fill_null(text, _EMPTY)


def _write_text(
    batches: Iterable[pa.RecordBatch] | pa.Table,
    fields: Sequence[FieldSpec],
    cell: Callable[[pa.Array, bool], pa.Array],
    sep: str,
) -> Iterator[bytes]:
    columns = [_Column(f) for f in fields]
    end = "\r\n" if sep == "," else "\n"
    names = pa.array([f.name for f in fields], pa.large_string())
    yield (sep.join(cell(names, True).to_pylist()) + end).encode("utf-8")
    sep_s = pa.scalar(sep, pa.large_string())
    for batch in iter_batches(batches):
        if batch.num_columns != len(columns):
            raise ValueError(
                f"a batch has {batch.num_columns} columns but {len(columns)} fields were given"
            )
        if not batch.num_rows:
            continue
        args: list[Any] = []
        for i, (col, arr) in enumerate(zip(columns, batch.columns, strict=True)):
            if i:
                args.append(sep_s)
            args.append(cell(col.plain_text(arr), col.is_string))
        args += [pa.scalar(end, pa.large_string()), _EMPTY]
        rows = pc.binary_join_element_wise(*args)
        offsets, data = _large_binary_parts(rows)
        yield data[offsets[0] : offsets[-1]].tobytes()


# --------------------------------------------------------------------------- FITS

_FITS_CODES = {"u1": "B", "i2": "I", "i4": "J", "i8": "K", "f4": "E", "f8": "D"}


def _fits_column(col: _Column, arr: pa.Array) -> Any:
    from astropy.io import fits

    spec = col.spec
    kw: dict[str, Any] = {"name": spec.name, "unit": spec.unit}
    if col.is_string:
        text = col._strings(arr)
        payload = text.cast(pa.large_binary())  # unicodeChar stays UTF-8: FITS has no UCS-2
        offsets, _ = _large_binary_parts(payload)
        width = max(1, int(np.diff(offsets).max(initial=0)))
        values = _pad_rows(payload, width).view(f"S{width}").ravel()
        return fits.Column(format=f"{width}A", array=values, **kw)
    code = "L" if col.datatype == "boolean" else _FITS_CODES[_NUMERIC[col.datatype][1][1:]]
    if col.sentinel is not None and (arr.null_count or col.is_array):
        kw["null"] = col.sentinel
    if col.datatype == "boolean":
        if not col.is_array:
            values = pc.fill_null(arr.cast(pa.bool_()), False).to_numpy(zero_copy_only=False)
            return fits.Column(format="L", array=values, **kw)
        elements, lengths = col._elements(arr)
        flat = pc.fill_null(elements.cast(pa.bool_()), False).to_numpy(zero_copy_only=False)
    elif not col.is_array:
        values = col._numbers(arr).to_numpy(zero_copy_only=False)
        return fits.Column(format=code, array=values, **kw)
    else:
        elements, lengths = col._elements(arr)
        flat = col._numbers(elements).to_numpy(zero_copy_only=False)
    if col.count is not None:
        if col.datatype == "boolean":
            valid = ~arr.is_null().to_numpy(zero_copy_only=False)
            values = np.zeros((len(arr), col.count), bool)
            values[valid] = flat.reshape(-1, col.count)
        else:
            values = col._fixed_rows(arr, flat, lengths)
        return fits.Column(format=f"{col.count}{code}", array=values, **kw)
    rows = np.split(flat, np.cumsum(lengths)[:-1]) if len(arr) else []
    return fits.Column(format=f"P{code}()", array=rows, **kw)


def _empty_array(col: _Column) -> pa.Array:
    if col.is_string:
        return pa.array([], pa.large_string())
    scalar = pa.bool_() if col.datatype == "boolean" else col.arrow_type
    return pa.array([], pa.large_list(scalar) if col.is_array else scalar)


def _same_type(chunks: list[pa.Array], col: _Column) -> list[pa.Array]:
    """A column's batches in one Arrow type, so that they concatenate: batches may differ
    (dictionary or plain text, NULL-typed columns of rows without values, e.g. a bulk
    answer's status rows)."""
    if len({c.type for c in chunks}) < 2:
        return chunks
    plain = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in chunks]
    if col.is_string:
        return [c.cast(pa.large_string()) for c in plain]
    typed = [c.type for c in plain if c.type != pa.null()]
    target = typed[0] if typed else _empty_array(col).type
    return [c.cast(target) for c in plain]


def _write_fits(
    batches: Iterable[pa.RecordBatch] | pa.Table,
    fields: Sequence[FieldSpec],
    table_name: str | None,
) -> Iterator[bytes]:
    from astropy.io import fits

    columns = [_Column(f) for f in fields]
    parts = [b for b in iter_batches(batches) if b.num_rows]
    arrays = []
    for i, col in enumerate(columns):
        if any(b.num_columns != len(columns) for b in parts):
            raise ValueError(f"batches do not have {len(columns)} columns")
        chunks = _same_type([b.column(i) for b in parts], col)
        arrays.append(pa.concat_arrays(chunks) if chunks else _empty_array(col))
    hdu = fits.BinTableHDU.from_columns(
        [_fits_column(c, a) for c, a in zip(columns, arrays, strict=True)], name=table_name
    )
    for i, spec in enumerate(fields, start=1):
        for key, value in (("TUCD", spec.ucd), ("TUTYP", spec.utype), ("TCOMM", spec.description)):
            if value:
                hdu.header[f"{key}{i}"] = _fits_text(value)
    out = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(out)
    yield out.getvalue()


def _fits_text(value: str) -> str:
    """FITS header strings are printable ASCII."""
    text = " ".join(value.split())
    return text.encode("ascii", "replace").decode("ascii")
