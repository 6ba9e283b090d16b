"""TAP_UPLOAD tables (and bulk lightcurve uploads): VOTable, FITS, Parquet or CSV files →
Arrow tables."""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from astropy.io import fits
from astropy.io.votable import parse_single_table
from astropy.table import Table

from ..errors import InvalidRequestError


def _sniff(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(512).lstrip()
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"PAR1"):
        return "parquet"
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


@dataclass(frozen=True)
class UploadColumn:
    """What the uploader said about a column, carried into results that select it."""

    unit: str | None = None
    ucd: str | None = None
    xtype: str | None = None
    description: str | None = None


def _votable_metadata(vot_table) -> dict[str, UploadColumn]:
    out = {}
    for f in vot_table.fields:
        unit = f.unit.to_string("vounit") if f.unit is not None else None
        out[f.name or f.ID] = UploadColumn(unit, f.ucd, f.xtype, f.description)
    return out


def read_upload_table(
    name: str, path: Path, *, max_rows: int
) -> tuple[pa.Table, dict[str, UploadColumn]]:
    """Read an uploaded table and its column metadata; errors say which upload and what
    is wrong with it."""
    kind = _sniff(path)
    meta: dict[str, UploadColumn] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's VOTable spec warnings are not errors
            if kind == "votable":
                vot_table = parse_single_table(str(path))
                meta = _votable_metadata(vot_table)
                result = _astropy_to_arrow(vot_table.to_table(use_names_over_ids=True))
            elif kind == "fits":
                with fits.open(path, memmap=False) as hdul:
                    table = Table.read(hdul, hdu=1 if len(hdul) > 1 else 0)
                meta = {
                    c: UploadColumn(unit=table[c].unit.to_string("vounit"))
                    for c in table.colnames
                    if table[c].unit is not None
                }
                result = _astropy_to_arrow(table)
            elif kind == "parquet":
                result = pq.read_table(path)
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
    return result, meta


def _check_public_host(host: str, uri: str) -> None:
    """Refuse URLs whose host resolves to this machine or a private network, so that a
    client cannot make the service probe hosts only it can reach (SSRF)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        raise InvalidRequestError(f"upload URL {uri!r}: cannot resolve host {host!r}") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global:
            raise InvalidRequestError(
                f"upload URL {uri!r} points to a non-public address ({addr}); this service "
                "only fetches uploads from public hosts (send the table inline instead)"
            )


def fetch_remote_upload(
    name: str, uri: str, dest: Path, *, max_bytes: int, allow_private: bool, timeout: float = 30
) -> Path:
    """Download an http(s) upload to ``dest``, streaming, within the size limit."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidRequestError(f"upload {name!r}: {uri!r} is not an http(s) URL")
    if not allow_private:
        _check_public_host(parsed.hostname, uri)
    total = 0
    try:
        with urllib.request.urlopen(uri, timeout=timeout) as resp, dest.open("wb") as out:
            while chunk := resp.read(2**20):
                total += len(chunk)
                if total > max_bytes:
                    raise InvalidRequestError(
                        f"upload {name!r} from {uri} exceeds the {max_bytes // 2**20} MiB limit"
                    )
                out.write(chunk)
    except InvalidRequestError:
        dest.unlink(missing_ok=True)
        raise
    except (OSError, ValueError) as exc:
        dest.unlink(missing_ok=True)
        raise InvalidRequestError(f"upload {name!r}: cannot fetch {uri}: {exc}") from None
    return dest
