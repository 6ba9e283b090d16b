"""TAP_UPLOAD tables: VOTable, FITS or CSV files → Arrow tables for DuckDB."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from astropy.io import fits
from astropy.io.votable import parse_single_table
from astropy.table import Table

from ..errors import InvalidRequestError


def _sniff(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(512).lstrip()
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"<"):
        return "votable"
    return "csv"


def _column_to_arrow(name: str, col) -> pa.Array:
    data = np.ma.getdata(col)
    mask = np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) or hasattr(col, "mask") else None
    if data.ndim > 1:
        raise InvalidRequestError(
            f"upload column {name!r} holds arrays; only scalar columns can be uploaded"
        )
    if data.dtype.kind == "S":
        data = np.char.decode(data, "utf-8", errors="replace")
    if data.dtype.kind in "UO":
        nulls = mask if mask is not None else np.zeros(len(data), bool)
        values = [None if m else str(v) for v, m in zip(data, nulls, strict=True)]
        return pa.array(values, type=pa.string())
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    if mask is not None and not mask.any():
        mask = None
    return pa.array(data, mask=mask)


def _astropy_to_arrow(table: Table) -> pa.Table:
    return pa.table({name: _column_to_arrow(name, table[name]) for name in table.colnames})


def read_upload_table(name: str, path: Path, *, max_rows: int) -> pa.Table:
    """Read an uploaded table; errors say which upload and what is wrong with it."""
    kind = _sniff(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's VOTable spec warnings are not errors
            if kind == "votable":
                table = parse_single_table(str(path)).to_table(use_names_over_ids=True)
                result = _astropy_to_arrow(table)
            elif kind == "fits":
                with fits.open(path, memmap=False) as hdul:
                    table = Table.read(hdul, hdu=1 if len(hdul) > 1 else 0)
                result = _astropy_to_arrow(table)
            else:
                result = pacsv.read_csv(path)
    except InvalidRequestError:
        raise
    except Exception as exc:
        raise InvalidRequestError(
            f"upload {name!r} could not be read as a {kind.upper()} table: {exc}"
        ) from None
    if result.num_rows > max_rows:
        raise InvalidRequestError(
            f"upload {name!r} has {result.num_rows} rows; the limit is {max_rows}"
        )
    if not result.num_columns:
        raise InvalidRequestError(f"upload {name!r} has no columns")
    return result
