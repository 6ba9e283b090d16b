"""External catalogues as inputs: read a file, find its RA/Dec columns, get degrees.

Shared by the cross-match command, catalogue ingestion and the SAMP bridge, so that
every part of romerea-vo reads a user's catalogue the same way:

* :func:`read_catalogue`: VOTable, FITS (first table HDU), CSV, ECSV or Parquet, by
  ``fmt``, by file extension or by sniffing the first bytes.
* :func:`find_position_columns`: RA/Dec by name given, else by UCD (``meta.main``
  first, UCD1 too), else by common names, case-insensitively.
* :func:`position_arrays`: RA/Dec in degrees (units honoured, sexagesimal text read),
  with a flag for every row that has no usable position.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import re
import warnings
import zlib
from pathlib import Path

import numpy as np

from .errors import InvalidRequestError

__all__ = [
    "FORMATS",
    "CatalogueError",
    "column_ucd",
    "describe_columns",
    "find_position_columns",
    "position_arrays",
    "read_catalogue",
]


class CatalogueError(InvalidRequestError):
    """A catalogue file or its columns cannot be used; the message says why."""


#: Canonical format names and the spellings accepted for ``fmt``.
FORMATS: dict[str, tuple[str, ...]] = {
    "votable": ("votable", "vot", "xml", "vo"),
    "fits": ("fits", "fit", "fits.gz"),
    "csv": ("csv", "ascii.csv"),
    "ecsv": ("ecsv", "ascii.ecsv"),
    "parquet": ("parquet", "pq"),
}
_EXTENSIONS = {
    ".xml": "votable",
    ".vot": "votable",
    ".votable": "votable",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".csv": "csv",
    ".ecsv": "ecsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def _format_name(fmt: str) -> str:
    key = fmt.strip().lower()
    for name, spellings in FORMATS.items():
        if key in spellings:
            return name
    raise CatalogueError(f"unknown catalogue format {fmt!r}; use one of {', '.join(FORMATS)}")


def _by_extension(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _EXTENSIONS.get(suffixes[-1]) if suffixes else None


def _sniff(path: Path) -> str | None:
    with path.open("rb") as f:
        head = f.read(8192)
    if head[:2] == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError, zlib.error), gzip.open(path, "rb") as g:
            head = g.read(8192)
    if head[:4] == b"PAR1":
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    low = text[:4096].lower()
    if low.startswith(b"simple  ="):
        return "fits"
    if low.startswith(b"<"):
        return None if (b"<html" in low or b"<!doctype html" in low) else "votable"
    if low.startswith(b"# %ecsv"):
        return "ecsv"
    try:
        low.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "csv" if b"," in low else None


def read_catalogue(path: str | Path, fmt: str | None = None):
    """Read a catalogue file into an astropy Table (never modifying the file).

    ``fmt`` is one of ``votable``, ``fits``, ``csv``, ``ecsv``, ``parquet`` (or a usual
    alias); without it the format comes from the extension (``.xml/.vot/.votable``,
    ``.fits/.fit/.fits.gz``, ``.csv``, ``.ecsv``, ``.parquet/.pq``), else from the
    file's first bytes. Column units, UCDs (``meta['ucd']``) and descriptions are kept:
    FITS ``TUCDn``/``TCOMMn`` keywords (as STILTS writes them) are read too.

    Raises :class:`CatalogueError` for a missing file, an unknown format, or an empty or
    unreadable file, naming the file and the reason."""
    p = Path(path)
    if not p.exists():
        raise CatalogueError(f"{p}: no such file")
    if p.is_dir():
        raise CatalogueError(f"{p} is a directory, not a catalogue file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise CatalogueError(f"{p} cannot be read: {exc.strerror or exc}") from None
    if size == 0:
        raise CatalogueError(f"{p} is empty, not a catalogue")
    name: str | None
    if fmt is not None:
        name = _format_name(fmt)
    else:
        name = _by_extension(p)
        if name is None:
            try:
                name = _sniff(p)
            except OSError as exc:
                raise CatalogueError(f"{p} cannot be read: {exc.strerror or exc}") from None
        if name is None:
            raise CatalogueError(
                f"cannot tell the format of {p}: not VOTable, FITS, CSV, ECSV or Parquet "
                "by its extension or content; give the format explicitly"
            )
    reader = {
        "votable": _read_votable,
        "fits": _read_fits,
        "csv": _read_ascii,
        "ecsv": _read_ascii,
        "parquet": _read_parquet,
    }[name]
    try:
        table = reader(p, name)
    except CatalogueError:
        raise
    except PermissionError as exc:
        raise CatalogueError(f"{p} cannot be read: {exc.strerror or exc}") from None
    except Exception as exc:
        what = {"votable": "VOTable", "fits": "FITS", "csv": "CSV", "ecsv": "ECSV"}.get(
            name, name.capitalize()
        )
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CatalogueError(f"{p} is not a readable {what} file: {reason}") from None
    if not table.colnames:
        raise CatalogueError(f"{p} holds a table without columns")
    return table


def _read_votable(p: Path, _name: str):
    from astropy.io.votable import parse

    with warnings.catch_warnings():
        # verify="ignore" silences the VOTable spec warnings; unknown units still warn
        warnings.simplefilter("ignore")
        vot = parse(str(p), verify="ignore")
    for resource in vot.resources:
        for info in resource.infos:
            if info.name == "QUERY_STATUS" and info.value == "ERROR":
                text = (info.content or "").strip() or "no message"
                raise CatalogueError(f"{p} is a VOTable error document: {text}")
    try:
        element = vot.get_first_table()
    except (IndexError, ValueError):
        raise CatalogueError(f"{p} is a VOTable without any TABLE") from None
    table = element.to_table(use_names_over_ids=True)
    for field, name in zip(element.fields, table.colnames, strict=True):
        col = table[name]
        if field.ucd and not col.meta.get("ucd"):
            col.meta["ucd"] = field.ucd
        if field.description and not col.description:
            col.description = field.description
    return table


def _read_fits(p: Path, _name: str):
    from astropy.io import fits
    from astropy.table import Table

    with fits.open(p, memmap=False) as hdul:
        index = next(
            (i for i, hdu in enumerate(hdul) if isinstance(hdu, fits.BinTableHDU | fits.TableHDU)),
            None,
        )
        if index is None:
            raise CatalogueError(f"{p} is FITS without a table HDU (only images)")
        header = hdul[index].header.copy()
        table = Table.read(hdul, hdu=index, unit_parse_strict="silent")
    for i, name in enumerate(table.colnames, start=1):
        col = table[name]
        ucd = header.get(f"TUCD{i}")
        if ucd and not col.meta.get("ucd"):
            col.meta["ucd"] = str(ucd).strip()
        comment = header.get(f"TCOMM{i}")
        if comment and not col.description:
            col.description = str(comment).strip()
    return table


def _read_ascii(p: Path, name: str):
    from astropy.table import Table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. unknown units in an ECSV header
        return Table.read(p, format=f"ascii.{name}")


def _read_parquet(p: Path, _name: str):
    # pyarrow directly: astropy's Parquet reader needs pandas, which we do not depend on
    import pyarrow.parquet as pq
    from astropy.table import MaskedColumn, Table

    arrow = pq.read_table(p)
    table = Table()
    for name in arrow.column_names:
        data, mask = _arrow_values(arrow.column(name))
        table[name] = data if mask is None else MaskedColumn(data, mask=mask)
    _apply_parquet_metadata(table, arrow.schema.metadata or {})
    if "__serialized_columns__" in table.meta:
        # astropy writes a masked column as two (``x``, ``x.mask``); rebuild it as astropy's
        # own reader does
        from astropy.table import serialize

        table = serialize._construct_mixins_from_columns(table)
    return table


def _arrow_values(arr) -> tuple[np.ndarray, np.ndarray | None]:
    import pyarrow as pa
    import pyarrow.compute as pc

    typ = arr.type
    mask = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return np.array(["" if v is None else v for v in arr.to_pylist()], dtype=str), mask
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ):
        if mask is not None:
            arr = pc.fill_null(arr, False if pa.types.is_boolean(typ) else 0)
        return np.asarray(arr.to_numpy()), mask
    values = np.empty(len(arr), dtype=object)
    values[:] = arr.to_pylist()  # lists, structs, timestamps: kept as Python objects
    return values, mask


def _apply_parquet_metadata(table, metadata: dict) -> None:
    """Units, UCDs and descriptions from astropy's YAML header or an embedded VOTable
    (the IVOA VOTable-in-Parquet convention, as STILTS writes it)."""
    import astropy.units as u
    from astropy.table.meta import get_header_from_yaml

    columns: dict[str, dict] = {}
    yaml = metadata.get(b"table_meta_yaml")
    if yaml:
        with contextlib.suppress(Exception):
            header = get_header_from_yaml(yaml.decode("utf-8").splitlines())
            table.meta.update(header.get("meta") or {})
            for info in header.get("datatype", []):
                columns[info["name"]] = {
                    "unit": info.get("unit"),
                    "description": info.get("description"),
                    "ucd": (info.get("meta") or {}).get("ucd"),
                }
    xml = metadata.get(b"IVOA.VOTable-Parquet.content")
    if xml:
        from astropy.io.votable import parse

        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            element = parse(io.BytesIO(xml), verify="ignore").get_first_table()
            for field in element.fields:
                columns.setdefault(
                    field.name,
                    {
                        "unit": str(field.unit) if field.unit else None,
                        "description": field.description,
                        "ucd": field.ucd,
                    },
                )
    for name, info in columns.items():
        if name not in table.colnames:
            continue
        col = table[name]
        if info.get("unit"):
            col.unit = u.Unit(info["unit"], parse_strict="silent")
        if info.get("description"):
            col.description = info["description"]
        if info.get("ucd"):
            col.meta["ucd"] = info["ucd"]


# --------------------------------------------------------------------------- columns

_RA_NAMES = (
    "ra", "ra_icrs", "raj2000", "ra_j2000", "_raj2000", "ra2000", "radeg", "ra_deg", "ra_d",
    "raicrs", "alpha", "alpha_j2000", "alpha_icrs", "right_ascension",
)  # fmt: skip
_DEC_NAMES = (
    "dec", "de", "dec_icrs", "de_icrs", "dej2000", "decj2000", "dec_j2000", "_dej2000",
    "dec2000", "decdeg", "dec_deg", "dec_d", "deicrs", "delta", "delta_j2000", "delta_icrs",
    "declination",
)  # fmt: skip
_UCD = {"ra": ("pos.eq.ra", "pos_eq_ra"), "dec": ("pos.eq.dec", "pos_eq_dec")}


def column_ucd(col) -> str:
    """A column's UCD (from ``meta['ucd']``), stripped and lower-cased; '' if none."""
    meta = getattr(col.info, "meta", None) or getattr(col, "meta", None) or {}
    return str(meta.get("ucd") or "").strip().lower()


def _ucd_words(col) -> list[str]:
    return [w.strip() for w in column_ucd(col).split(";") if w.strip()]


def describe_columns(table) -> str:
    """``name (ucd), name, ...`` for error messages."""
    parts = []
    for name in table.colnames:
        ucd = column_ucd(table[name])
        parts.append(f"{name} ({ucd})" if ucd else name)
    return ", ".join(parts) or "none"


def _find(table, axis: str) -> str | None:
    cols = [table[n] for n in table.colnames]
    word, ucd1 = _UCD[axis]
    for col in cols:
        words = _ucd_words(col)
        if column_ucd(col) == ucd1 + "_main" or (words[:1] == [word] and "meta.main" in words):
            return col.info.name
    for col in cols:
        if _ucd_words(col)[:1] == [word] or column_ucd(col) == ucd1:
            return col.info.name
    names = {n.lower(): n for n in table.colnames}
    for candidate in _RA_NAMES if axis == "ra" else _DEC_NAMES:
        if candidate in names:
            return names[candidate]
    return None


def _given(table, name: str, what: str) -> str:
    if name in table.colnames:
        return name
    folded = [n for n in table.colnames if n.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise CatalogueError(
        f"no column {name!r} for {what} in the catalogue; its columns: {describe_columns(table)}"
    )


def find_position_columns(
    table, ra_col: str | None = None, dec_col: str | None = None
) -> tuple[str, str]:
    """The names of the RA and Dec columns of ``table``.

    Given names are checked (matched case-insensitively when unambiguous); a missing one
    is found by UCD (``pos.eq.ra;meta.main`` before ``pos.eq.ra``, UCD1
    ``POS_EQ_RA_MAIN`` before ``POS_EQ_RA``), then by common names (``ra``, ``ra_icrs``,
    ``RAJ2000``, ``ra_deg``, ``alpha_j2000``, ...). Raises :class:`CatalogueError` naming
    the columns it saw when either cannot be found."""
    ra = _given(table, ra_col, "RA") if ra_col else _find(table, "ra")
    dec = _given(table, dec_col, "Dec") if dec_col else _find(table, "dec")
    missing = [w for w, n in (("RA", ra), ("Dec", dec)) if n is None]
    if missing:
        raise CatalogueError(
            f"no {' and no '.join(missing)} column found (by UCD pos.eq.ra/pos.eq.dec or a "
            f"usual name such as ra/dec, RAJ2000/DEJ2000); its columns: "
            f"{describe_columns(table)}; name them explicitly"
        )
    if ra == dec:
        raise CatalogueError(f"column {ra} cannot be both RA and Dec")
    assert ra is not None and dec is not None  # missing ones were refused above
    return ra, dec


# --------------------------------------------------------------------------- positions

_SEXAGESIMAL = re.compile(r"\d\s*[:hdms°'\"′″ ]\s*\d|\d[hd]", re.IGNORECASE)


def _text_values(values) -> list[str | None]:
    out: list[str | None] = []
    mask = np.ma.getmaskarray(values)
    for v, m in zip(np.asarray(values, dtype=object), mask, strict=True):
        if m or v is None:
            out.append(None)
            continue
        s = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        out.append(s.strip() or None)
    return out


def _angle_unit(col, axis: str):
    """The angle unit ``col`` declares (``None`` if none, ``False`` if not an angle)."""
    import astropy.units as u

    unit = getattr(col, "unit", None)
    label = str(unit).strip().strip("\"'").lower() if unit is not None else ""
    if label in ("", "none", "dimensionless"):
        return None
    if label in ("h:m:s", "hms"):
        return u.hourangle
    if label in ("d:m:s", "dms"):
        return u.deg
    assert unit is not None  # an empty label returned above
    try:
        if unit.is_equivalent(u.deg):
            return unit
        if axis == "ra" and unit.is_equivalent(u.hour):
            return u.hourangle * unit.to(u.hour)
    except (AttributeError, TypeError, ValueError):
        pass
    return False


def _column_degrees(col, axis: str) -> np.ndarray:
    import astropy.units as u
    from astropy.coordinates import Angle

    name = col.info.name
    if np.ndim(col) != 1:
        raise CatalogueError(f"column {name} holds arrays, not one coordinate per row")
    unit = _angle_unit(col, axis)
    if unit is False:
        raise CatalogueError(
            f"column {name} has unit {col.unit}, not an angle; cannot use it as "
            f"{'RA' if axis == 'ra' else 'Dec'}"
        )
    if np.asarray(col).dtype.kind not in "USO":
        try:
            filled: np.ndarray = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)
        except (TypeError, ValueError):
            raise CatalogueError(f"column {name} holds no coordinates") from None
        data = np.asarray(filled, dtype=float)
        return data if unit is None or unit == u.deg else (data * unit).to_value(u.deg)
    texts = _text_values(col)
    out = np.full(len(texts), np.nan)
    if any(t is not None and _SEXAGESIMAL.search(t) for t in texts):
        # sexagesimal text: RA in hours unless the column says otherwise (VizieR style)
        unit = unit or (u.hourangle if axis == "ra" else u.deg)
        for i, t in enumerate(texts):
            if t is not None:
                with contextlib.suppress(ValueError, u.UnitsError, TypeError):
                    out[i] = Angle(t, unit=unit).deg
        return out
    # decimal numbers that came through as text (e.g. a CSV column with 'n/a' in it)
    factor = 1.0 if unit is None else float(u.Quantity(1.0, unit).to_value(u.deg))
    for i, t in enumerate(texts):
        if t is not None:
            with contextlib.suppress(ValueError):
                out[i] = float(t) * factor
    return out


def position_arrays(
    table, ra_name: str, dec_name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ra_deg, dec_deg, bad)`` float64/bool arrays, one element per row of ``table``.

    Units are honoured (deg, rad, arcsec, mas, hourangle; hours for RA), text is read
    as decimal or sexagesimal (RA text without a unit in hours, Dec in degrees). RA in
    [-360, 360] is wrapped into [0, 360); masked, NULL, non-numeric or unparsable values,
    RA outside that range and Dec outside [-90, 90] give NaN in both arrays and
    ``bad[i] = True``: callers report those rows. Raises :class:`CatalogueError` for a
    column whose unit is not an angle."""
    ra = _column_degrees(table[ra_name], "ra")
    dec = _column_degrees(table[dec_name], "dec")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(ra) | ~np.isfinite(dec) | (np.abs(ra) > 360) | (np.abs(dec) > 90)
        ra = np.where(bad, np.nan, np.mod(ra, 360.0))
    dec = np.where(bad, np.nan, dec)
    return ra.astype(np.float64), dec.astype(np.float64), np.asarray(bad, dtype=bool)
