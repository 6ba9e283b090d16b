"""Streaming VOParquet writer: Arrow record batches → Apache Parquet with VOTable metadata.

The file follows the IVOA VOTable-Parquet convention that ``astropy`` reads as
``Table.read(f, format="parquet.votable")`` (astropy.io.misc.parquet): the file-level
key/value metadata holds ``IVOA.VOTable-Parquet.version = "1.0"`` and
``IVOA.VOTable-Parquet.content``, a VOTable document whose TABLE has the FIELDs (units,
UCDs, descriptions, TIMESYS refs), PARAMs and INFOs of the result and a
``<PARQUET type="Parquet-local-XML"/>`` element in place of DATA. Plain Parquet readers
(pyarrow, pandas, DuckDB, Spark) see an ordinary file.

Parquet keeps its key/value metadata in the footer, written last, so the VOTable header
can carry what became known while streaming (``QUERY_STATUS=OVERFLOW``, or ``ERROR`` when
the query failed after rows were sent). Rows are gathered into row groups of about
``ROW_GROUP_ROWS`` rows (many small batches, e.g. one per star, would otherwise make many
tiny row groups); each finished row group is yielded as bytes, so memory is bounded by a
row group.

Values are those of the BINARY2 VOTable of the same result: integer and array NULLs stay
NULL (Parquet has validity bitmaps, like BINARY2's null mask); a NULL float is NaN and
NULL text is "", as VOTable has them, so those columns (and booleans) are written as
``required`` Parquet columns: no definition levels to encode, 35 % of a bulk answer's
Parquet encoding time. ``char`` text is ASCII (others become ``?``), timestamps are ISO
8601 strings (xtype ``timestamp``), integers have the FIELD's width, arrays are
(fixed-size) lists.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .writer import (
    FieldSpec,
    Info,
    Param,
    TimeSys,
    _check_refs,
    _Column,
    _info_xml,
    iter_batches,
    table_head,
)

__all__ = ["PARQUET_MEDIA", "ROW_GROUP_ROWS", "VOPARQUET_VERSION", "write_parquet"]

PARQUET_MEDIA = "application/vnd.apache.parquet"
"""The media type DALI 1.2 uses for Parquet results."""

ROW_GROUP_ROWS = 131072
VOPARQUET_VERSION = "1.0"
_KEY_VERSION = b"IVOA.VOTable-Parquet.version"
_KEY_CONTENT = b"IVOA.VOTable-Parquet.content"


class _Sink:
    """A write-only file object whose written bytes are taken out after each row group."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False
        self.position = 0

    def write(self, data: Any) -> int:
        raw = bytes(data)
        self.parts.append(raw)
        self.position += len(raw)
        return len(raw)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def arrow_type(spec: FieldSpec) -> pa.DataType:
    """The Arrow (and so Parquet) type of a FIELD's values.

    Raises ValueError for a datatype the VOTable writer does not support.
    """
    col = _Column(spec)
    if col.is_string:
        return pa.string()
    scalar = pa.bool_() if col.datatype == "boolean" else col.arrow_type
    if not col.is_array:
        return scalar
    if col.count is not None and col.datatype != "boolean":
        return pa.list_(scalar, col.count)
    return pa.list_(scalar)


_TEXT = pa.dictionary(pa.int32(), pa.string())
"""How text columns reach the Parquet writer: dictionary arrays are written as they are
(no decoding of e.g. a filter name per row); readers still get plain strings, as the
Arrow schema stored in the footer says."""


def _parquet_text(col: _Column, arr: pa.Array) -> pa.Array:
    """A text column as a dictionary array, NULL as "" (astropy's reader has no masks)."""
    if not pa.types.is_dictionary(arr.type):
        return pc.dictionary_encode(col._strings(arr).cast(pa.string())).cast(_TEXT)
    values = col._strings(arr.dictionary).cast(pa.string())  # the rules, once per value
    indices = arr.indices.cast(pa.int32())
    if arr.null_count:
        values = pa.concat_arrays([values, pa.array([""], pa.string())])
        indices = pc.fill_null(indices, len(values) - 1)
    return pa.DictionaryArray.from_arrays(indices, values, safe=False)  # arr's: in range


def _shared_dictionaries(table: pa.Table) -> pa.Table:
    """A row group's text columns with one dictionary each where their batches repeat
    few values. Given a dictionary per batch (e.g. the 64 DIDs of each bulk batch),
    Parquet expands every value and hashes it again: 3.6x slower for a bulk id column,
    and a 100x larger column chunk. Columns of mostly distinct values (a TAP result's
    DIDs) are left as they are: unifying would hash every value once more, for nothing."""
    for i, column in enumerate(table.columns):
        if not pa.types.is_dictionary(column.type) or column.num_chunks < 2:
            continue
        if 4 * sum(len(c.dictionary) for c in column.chunks) < len(column):
            table = table.set_column(i, table.field(i), column.unify_dictionaries())
    return table


def _has_nulls(col: _Column) -> bool:
    """Whether the FIELD's Parquet column keeps NULLs (integers, arrays) or has none."""
    if col.is_string:
        return False
    if col.is_array:
        return True
    return col.datatype != "boolean" and not pa.types.is_floating(col.arrow_type)


def _parquet_array(col: _Column, arr: pa.Array) -> pa.Array:
    """One batch column as the FIELD's Arrow type, with the VOTable writer's value rules."""
    if col.is_string:
        return _parquet_text(col, arr)
    if not col.is_array:
        if col.datatype == "boolean":  # astropy's reader cannot stack NULL booleans
            return pc.fill_null(arr.cast(pa.bool_()), False)
        return col._numbers(arr, fill=pa.types.is_floating(col.arrow_type))  # NULL: NaN
    values, lengths = col._elements(arr)
    if col.datatype == "boolean":
        values = values.cast(pa.bool_())
    elif col.count is not None:  # a NULL fixed-size array becomes NULL elements, as in VOTable
        rows = col._fixed_rows(arr, col._numbers(values).to_numpy(zero_copy_only=False), lengths)
        return pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), col.count)
    else:
        values = col._numbers(values, fill=False)
    mask = arr.is_null() if arr.null_count else None
    offsets = pa.array(_offsets(lengths), pa.int32())
    lists = pa.ListArray.from_arrays(offsets, values, mask=mask)
    return lists


_SAMPLE_BYTES = 1 << 20


def _compressions(table: pa.Table | None) -> str | dict[str, str]:
    """Snappy, except for fixed-width columns it does not shrink by a tenth in the first
    row group (e.g. magnitudes as doubles, 8 bytes of noise each), written uncompressed:
    snappy spends 0.06 s on the two such columns of a 10,000-star bulk answer and saves
    nothing. Judged on a sample of up to 1 MiB of the column's values."""
    if table is None:
        return "snappy"
    choice = {}
    for field, column in zip(table.schema, table.columns, strict=True):
        choice[field.name] = "snappy"
        if not pa.types.is_floating(field.type):
            continue
        width = field.type.byte_width
        first = column.slice(0, _SAMPLE_BYTES // width).combine_chunks()  # no NULLs: NaN
        sample = first.buffers()[1][first.offset * width :][: len(first) * width]
        if len(sample) and len(pa.compress(sample, "snappy")) > 0.9 * len(sample):
            choice[field.name] = "none"
    return choice


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def votable_header(
    fields: Sequence[FieldSpec],
    *,
    resource_infos: Sequence[Info] = (),
    post_infos: Sequence[Info] = (),
    table_name: str | None = None,
    table_description: str | None = None,
    params: Sequence[Param] = (),
    timesys: Sequence[TimeSys] = (),
) -> str:
    """The VOTable of the ``IVOA.VOTable-Parquet.content`` key: metadata, no DATA."""
    columns = [_Column(f) for f in fields]
    # Parquet has real NULLs: no integer sentinels are declared (as in BINARY2)
    parts = table_head(
        fields, columns, "binary2", resource_infos, table_name, table_description, params,
        timesys,
    )  # fmt: skip
    parts.append('<PARQUET type="Parquet-local-XML"/>\n</TABLE>\n')
    parts += [_info_xml(i) for i in post_infos]
    parts.append("</RESOURCE>\n</VOTABLE>\n")
    return "".join(parts)


def write_parquet(
    batches: Iterable[pa.RecordBatch] | pa.RecordBatch | pa.Table | Mapping[str, Any],
    fields: Sequence[FieldSpec],
    *,
    resource_infos: Sequence[Info] = (),
    table_name: str | None = None,
    table_description: str | None = None,
    params: Sequence[Param] = (),
    post_infos: Callable[[], Sequence[Info]] | None = None,
    timesys: Sequence[TimeSys] = (),
    extra_resources: Sequence[str] = (),
    row_group_rows: int = ROW_GROUP_ROWS,
) -> Iterator[bytes]:
    """Stream a VOParquet file: a chunk per row group, then the footer.

    ``batches`` columns match ``fields`` by position; ``post_infos`` is called once all
    batches are consumed and its INFOs follow the TABLE in the embedded VOTable.
    ``extra_resources`` (e.g. DataLink service descriptors) are left out: they describe
    VOTable FIELD IDs a Parquet reader has no use for. Raises ValueError for FIELDs the
    writer does not support or a batch whose column count differs from ``fields``.
    """
    if not fields:
        raise ValueError("a VOParquet table needs at least one column")
    _check_refs([*fields, *params], timesys, ())
    columns = [_Column(f) for f in fields]
    schema = pa.schema(
        [
            pa.field(f.name, arrow_type(f), _has_nulls(c))
            for f, c in zip(fields, columns, strict=True)
        ],
        metadata={_KEY_VERSION: VOPARQUET_VERSION.encode()},
    )
    del extra_resources  # VOTable-only (see docstring)
    return _stream(
        batches, fields, columns, schema, resource_infos, table_name, table_description,
        params, post_infos, timesys, row_group_rows,
    )  # fmt: skip


def _stream(
    batches, fields, columns, schema, resource_infos, table_name, table_description,
    params, post_infos, timesys, row_group_rows,
) -> Iterator[bytes]:  # fmt: skip
    sink = _Sink()
    # The Arrow schema (ARROW:schema) is written by us at the end, with the string widths
    # Dictionary pages only for text: on float columns they cost 3x the write time and
    # are dropped anyway (too many distinct values); snappy compresses repeated text well.
    text = [f.name for f, c in zip(fields, columns, strict=True) if c.is_string]
    written = pa.schema(
        [
            pa.field(f.name, _TEXT, nullable=False) if c.is_string else f
            for f, c in zip(schema, columns, strict=True)
        ]
    )
    # No statistics for text: a row group's min/max of DIDs, filters or dataset codes lets
    # a reader skip little, and they cost ~40 % of a text column's write (a bulk
    # response's id, filter and status: 0.2 of 1.1 s)
    numeric = [f.name for f, c in zip(fields, columns, strict=True) if not c.is_string]
    writer: pq.ParquetWriter | None = None  # made with the first row group (compression)
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    # astropy's Parquet reader sizes its numpy string columns from these keys (else it
    # scans every value in Python and warns)
    widths = {i: 1 for i, c in enumerate(columns) if c.is_string}

    def open_writer(first: pa.Table | None) -> pq.ParquetWriter:
        return pq.ParquetWriter(
            sink, written, compression=_compressions(first), store_schema=False,
            use_dictionary=text or False, write_statistics=numeric or False,
        )  # fmt: skip

    def flush() -> bytes:
        nonlocal pending_rows, writer
        table = _shared_dictionaries(pa.Table.from_batches(pending, written))
        if writer is None:
            writer = open_writer(table)
        writer.write_table(table, row_group_size=row_group_rows)
        pending.clear()
        pending_rows = 0
        return sink.take()

    for batch in iter_batches(batches, row_group_rows):  # no need for smaller slices here
        if batch.num_columns != len(columns):
            raise ValueError(
                f"a batch has {batch.num_columns} columns but {len(columns)} FIELDs were given"
            )
        if not batch.num_rows:
            continue
        arrays = [_parquet_array(c, a) for c, a in zip(columns, batch.columns, strict=True)]
        for i, arr in enumerate(arrays):
            if i in widths:
                longest = pc.max(pc.utf8_length(arr.dictionary)).as_py() or 0
                widths[i] = max(widths[i], longest)
        pending.append(pa.RecordBatch.from_arrays(arrays, schema=written))
        pending_rows += batch.num_rows
        if pending_rows >= row_group_rows:
            chunk = flush()
            if chunk:
                yield chunk
    if pending:
        chunk = flush()
        if chunk:
            yield chunk
    # astropy builds its table from these FIELDs and stacks the data under it: strings must
    # be fixed-width there (arraysize = the longest value) to stack with numpy str columns
    sized = [
        replace(f, arraysize=str(widths[i])) if i in widths and columns[i].count is None else f
        for i, f in enumerate(fields)
    ]
    content = votable_header(
        sized,
        resource_infos=resource_infos,
        post_infos=post_infos() if post_infos is not None else (),
        table_name=table_name,
        table_description=table_description,
        params=params,
        timesys=timesys,
    )
    lengths = {f"table::len::{fields[i].name}": str(w) for i, w in widths.items()}
    arrow_schema = schema.with_metadata({**schema.metadata, **lengths})
    if writer is None:
        writer = open_writer(None)
    writer.add_key_value_metadata(
        {
            _KEY_VERSION: VOPARQUET_VERSION.encode(),
            _KEY_CONTENT: content.encode("utf-8"),
            b"ARROW:schema": base64.b64encode(arrow_schema.serialize().to_pybytes()),
        }
    )
    writer.close()
    yield sink.take()
