"""``romerea-vo ingest-catalog``: an external catalogue (a Gaia or OGLE subset, another
survey) as a table next to the ROME tables, published by the same TAP service.

The table's metadata (names, datatypes, units, UCDs, descriptions) comes from the file and
becomes a :class:`~romerea_vo.votable.schema.TableSchema`, stored in the database
(``romerea.catalog_tables``); DDL, TAP_SCHEMA, VOSI and result FIELDs are generated from
it exactly as for the ROME tables. Choices:

* The RA/Dec columns are published as double-precision degrees (converted from other
  angle units or sexagesimal text, RA wrapped into [0, 360)) with UCDs
  ``pos.eq.ra;meta.main`` / ``pos.eq.dec;meta.main`` unless the file gives valid ones;
  rows are sorted by Dec (cone searches use a Dec band on sorted data).
* Rows without a usable position (NULL, non-numeric, out of range) are ingested with
  NULL RA/Dec and reported (how many, and which rows); a file where no row has one is
  refused.
* Column names that are not ADQL regular identifiers (``_RAJ2000``, ``B-V``) or are
  reserved words (``size``) are published delimited (``"_RAJ2000"``), as TAP_SCHEMA
  does for ROME's ``"size"``. Names that differ only in case, contain a double quote or
  control characters, or are ``rowid`` (DuckDB's row key) are refused.
* Columns that are not scalars (arrays per row, astropy mixins such as Time) are
  refused, naming them. Invalid UCDs are dropped, and units astropy cannot read are kept
  as written; both are reported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from .. import __version__
from ..catalogue_files import (
    CatalogueError,
    column_ucd,
    find_position_columns,
    position_arrays,
    read_catalogue,
)
from ..errors import InvalidRequestError
from ..votable.schema import (
    TAP_SCHEMA_TABLES,
    ColumnSchema,
    TableSchema,
    is_regular_identifier,
    load_table_schema,
    tap_tables,
)
from .catalog_tables import (
    CATALOG_TABLES_DDL,
    catalog_definition,
    catalog_tables,
    has_rome_tables,
)
from .ddl import ARROW_TYPES, CATALOG, create_table_sql, physical_name, quote_ident
from .ingest import INTERNAL_DDL, IngestError, _connect_for_writing, _replace_rows
from .tap_schema import tap_schema_tables

log = logging.getLogger(__name__)

RESERVED_SCHEMAS = frozenset(
    {"rome", "tap_schema", "tap_upload", "ivoa", "romerea", "romerea_data"}
    | {"main", "information_schema", "pg_catalog", "temp", "system"}  # DuckDB's own
)
"""Schema names external catalogues may not use: the service's, and DuckDB's."""

MAX_LISTED_ROWS = 20

_INTEGER_TYPES = {
    "u1": "unsignedByte",
    "i1": "short",
    "i2": "short",
    "u2": "int",
    "i4": "int",
    "u4": "long",
    "i8": "long",
    "u8": "long",
}
_BAD_NAME = re.compile(r'["\x00-\x1f\x7f]')


def parse_table_name(name: str) -> tuple[str, str]:
    """``SCHEMA.NAME`` → (schema, name), lower-cased; both must be ADQL regular identifiers,
    not reserved words, and the schema not one the service reserves."""
    parts = name.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise InvalidRequestError(
            f"table name {name!r} must be SCHEMA.NAME, e.g. ext.survey (two ADQL identifiers)"
        )
    for part in parts:
        if not is_regular_identifier(part):
            from ..adql.reserved import is_reserved

            why = (
                "is an ADQL reserved word"
                if is_reserved(part)
                else "is not an ADQL regular identifier (a letter, then letters, digits, _)"
            )
            raise InvalidRequestError(f"table name {name!r}: {part!r} {why}")
    schema, table = (p.lower() for p in parts)
    if schema in RESERVED_SCHEMAS:
        raise InvalidRequestError(
            f"schema {parts[0]!r} is reserved by the service "
            f"({', '.join(sorted(RESERVED_SCHEMAS))}); choose another, e.g. ext"
        )
    return schema, table


def _is_mixin(col) -> bool:
    from astropy.table import Column

    return not isinstance(col, Column)


def _text_kind(col) -> str | None:
    """``char`` or ``unicodeChar`` for a text column, None for anything else."""
    kind = col.dtype.kind
    if kind == "S":
        return "char"
    if kind == "U":
        values = np.asarray(col)
        try:
            np.char.encode(values, "ascii")
            return "char"
        except UnicodeEncodeError:
            return "unicodeChar"
    if kind == "O":
        objects = [v for v in np.ma.compressed(np.ma.asarray(col)) if v is not None]
        if all(isinstance(v, str | bytes) for v in objects):
            if all((v.isascii() if isinstance(v, str) else True) for v in objects):
                return "char"
            return "unicodeChar"
    return None


def _datatype(col) -> tuple[str, str | None] | str:
    """(VOTable datatype, arraysize) for a column, or the reason it cannot be published."""
    if _is_mixin(col):
        return f"is an astropy {type(col).__name__}, not a plain column"
    if col.ndim > 1:
        return f"holds an array of shape {col.shape[1:]} per row"
    text = _text_kind(col)
    if text is not None:
        return text, "*"
    dtype = col.dtype
    if dtype.kind == "b":
        return "boolean", None
    key = f"{dtype.kind}{dtype.itemsize}"
    if key in _INTEGER_TYPES:
        if key == "u8" and len(col) and np.ma.max(np.ma.asarray(col)) > np.iinfo(np.int64).max:
            return "holds unsigned 64-bit integers beyond the range of a long"
        return _INTEGER_TYPES[key], None
    if dtype.kind == "f":
        return ("float", None) if dtype.itemsize <= 4 else ("double", None)
    if dtype.kind == "O":
        return "holds variable-length arrays or other objects per row"
    return f"has an unsupported type ({dtype})"


def _unit(col, notes: list[str]) -> str | None:
    import astropy.units as u

    unit = getattr(col, "unit", None)
    if unit is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes of the VOUnit format
        if isinstance(unit, u.UnrecognizedUnit):
            notes.append(
                f"column {col.info.name}: unit {str(unit)!r} is not a unit astropy knows; "
                "published as written"
            )
            return str(unit) or None
        if unit == u.dimensionless_unscaled:
            return None
        text = unit.to_string()
        try:
            u.Unit(text, format="vounit")
        except ValueError:
            with contextlib.suppress(ValueError, TypeError):
                text = unit.to_string("vounit")
    return text or None


def _ucd(col, notes: list[str]) -> str | None:
    from astropy.io.votable.ucd import check_ucd

    raw = str((col.info.meta or {}).get("ucd") or "").strip()
    if not raw:
        return None
    if check_ucd(raw, check_controlled_vocabulary=True):
        return raw
    notes.append(f"column {col.info.name}: UCD {raw!r} is not a valid UCD1+; dropped")
    return None


def _check_names(names: list[str]) -> None:
    problems = []
    seen: dict[str, str] = {}
    for name in names:
        if not name.strip() or _BAD_NAME.search(name):
            problems.append(f"{name!r} (empty, or contains a double quote or control character)")
        elif name.lower() == "rowid":
            problems.append(f"{name!r} (DuckDB's row identifier; rename the column)")
        elif name.lower() in seen:
            problems.append(f"{seen[name.lower()]!r} and {name!r} (differ only in case)")
        seen.setdefault(name.lower(), name)
    if problems:
        raise CatalogueError(f"cannot publish these column names: {'; '.join(problems)}")


def catalogue_schema(
    table,
    schema: str,
    name: str,
    ra: str,
    dec: str,
    *,
    description: str | None = None,
    source: str = "",
    notes: list[str] | None = None,
) -> TableSchema:
    """The published :class:`TableSchema` of an astropy ``table`` whose positions are in
    columns ``ra``/``dec``; problems that are not fatal are appended to ``notes``."""
    notes = [] if notes is None else notes
    _check_names(list(table.colnames))
    columns, refused = [], []
    for colname in table.colnames:
        col = table[colname]
        is_pos = colname in (ra, dec)
        unit: str | None
        if is_pos:
            axis = "ra" if colname == ra else "dec"
            datatype, arraysize, unit = "double", None, "deg"
            ucd = _ucd(col, notes)
            if not ucd or not column_ucd(col).startswith(f"pos.eq.{axis}"):
                ucd = f"pos.eq.{axis};meta.main"
        else:
            found = _datatype(col)
            if isinstance(found, str):
                refused.append(f"{colname} {found}")
                continue
            datatype, arraysize = found
            unit, ucd = _unit(col, notes), _ucd(col, notes)
        text = (col.info.description or "").strip()
        if is_pos:
            text = text or ("Right ascension" if colname == ra else "Declination")
            original = _unit(col, []) if not _text_kind(col) else "text"
            if original not in (None, "deg"):
                text = f"{text} (converted to degrees from {original})"
        words = (ucd or "").lower().split(";")
        columns.append(
            ColumnSchema(
                name=colname,
                datatype=datatype,
                description=text,
                unit=unit,
                ucd=ucd,
                arraysize=arraysize,
                principal=is_pos or ("meta.id" in words and "meta.main" in words),
                indexed=is_pos,
            )
        )
    if refused:
        raise CatalogueError(
            "cannot publish these columns (only one number, boolean or string per row): "
            + "; ".join(refused)
            + "; remove them from the file first"
        )
    meta_description = str((table.meta or {}).get("description") or "").strip()
    return TableSchema(
        name=name,
        schema=schema,
        description=(
            description or meta_description or f"External catalogue from {source}."
        ).strip(),
        columns=tuple(columns),
        order=(dec,),
    )


def _arrow_column(col, spec: ColumnSchema) -> pa.Array:
    values = np.ma.getdata(col)
    mask = np.ma.getmaskarray(col)
    if spec.datatype in ("char", "unicodeChar"):
        if values.dtype.kind == "S":
            values = np.char.decode(values, "utf-8", errors="replace")
        elif values.dtype.kind == "O":
            values = np.array(
                [
                    v.decode("utf-8", "replace")
                    if isinstance(v, bytes)
                    else ("" if v is None else v)
                    for v in values
                ],
                dtype=str,
            )
            mask = mask | np.array([v is None for v in np.ma.getdata(col)], dtype=bool)
    elif not values.dtype.isnative:  # FITS columns are big-endian; Arrow wants native order
        values = values.astype(values.dtype.newbyteorder("="))
    return pa.array(
        values,
        type=ARROW_TYPES[spec.datatype],
        mask=mask if mask.any() else None,
        from_pandas=values.dtype.kind == "f",  # NaN in a float column becomes NULL
    )


def catalogue_rows(
    table, schema: TableSchema, ra: str, dec: str, ra_deg: np.ndarray, dec_deg: np.ndarray
) -> pa.Table:
    """The rows of ``table`` as Arrow, shaped like ``schema`` (positions in degrees)."""
    arrays = []
    for spec in schema.columns:
        if spec.name in (ra, dec):
            arrays.append(pa.array(ra_deg if spec.name == ra else dec_deg, from_pandas=True))
        else:
            arrays.append(_arrow_column(table[spec.name], spec))
    return pa.Table.from_arrays(arrays, names=schema.column_names)


def _row_list(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in rows[:MAX_LISTED_ROWS])
    more = len(rows) - MAX_LISTED_ROWS
    return shown + (f" and {more:,} more" if more > 0 else "")


def _check_database(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    row = con.execute(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_catalog = ?", [CATALOG]
    ).fetchone()
    known = con.execute(
        "SELECT COUNT(*) FROM information_schema.tables "
        "WHERE table_catalog = ? AND table_schema = 'romerea' AND table_name = 'fields'",
        [CATALOG],
    ).fetchone()
    assert row is not None and known is not None  # COUNT(*) always answers
    if row[0] and not known[0]:
        raise IngestError(
            f"{db_path} is a DuckDB database but not a romerea-vo one (no romerea.fields "
            "table); give a romerea-vo database or a new file"
        )


def ingest_catalog(
    source: str | Path,
    db_path: str | Path,
    table: str,
    *,
    ra_col: str | None = None,
    dec_col: str | None = None,
    description: str | None = None,
    fmt: str | None = None,
    report: Callable[[str], None] | None = None,
) -> TableSchema:
    """Publish the catalogue file ``source`` as table ``table`` (``SCHEMA.NAME``) of the
    romerea-vo database ``db_path`` (created if absent; it then holds no ROME field).

    RA/Dec columns are ``ra_col``/``dec_col`` or found by UCD or name. Re-ingesting a
    table replaces it; everything happens in one transaction, so a failure leaves the
    database as it was (and removes a database file this call created). Rows without a
    usable position are stored with NULL RA/Dec; they and other non-fatal problems
    (dropped UCDs, unknown units) are passed to ``report`` (default: logged as warnings).
    Returns the published table's schema."""
    report = report or log.warning
    schema_name, table_name = parse_table_name(table)
    source = Path(source)
    data = read_catalogue(source, fmt)
    if len(data) == 0:
        raise CatalogueError(f"{source} holds a table without rows; nothing to ingest")
    ra, dec = find_position_columns(data, ra_col, dec_col)
    ra_deg, dec_deg, bad = position_arrays(data, ra, dec)
    if bad.all():
        raise CatalogueError(
            f"none of the {len(data):,} rows of {source} has a usable position in columns "
            f"{ra} and {dec} (NULL, non-numeric or out of range); name the RA/Dec columns "
            "with --ra-col/--dec-col"
        )
    notes: list[str] = []
    tschema = catalogue_schema(
        data, schema_name, table_name, ra, dec, description=description,
        source=source.name, notes=notes,
    )  # fmt: skip
    rows = catalogue_rows(data, tschema, ra, dec, ra_deg, dec_deg)
    n_bad = int(bad.sum())
    if n_bad:
        notes.append(
            f"{n_bad:,} of {len(data):,} rows have no usable position in {ra}/{dec} (NULL, "
            f"non-numeric or out of range): rows {_row_list(np.flatnonzero(bad))} (0-based, "
            f"in file order); they are stored with NULL {ra}/{dec}, so no positional query "
            "finds them"
        )
    _write(Path(db_path), tschema, rows, source, n_bad)
    for note in notes:
        report(note)
    return tschema


def _write(db_path: Path, tschema: TableSchema, rows: pa.Table, source: Path, n_bad: int) -> None:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    existed = db_path.exists()
    ok = False
    try:
        try:
            con = _connect_for_writing(db_path)
        except duckdb.Error as exc:  # not a DuckDB file, ...
            raise IngestError(f"cannot open {db_path} as a database: {exc}") from None
        try:
            _check_database(con, db_path)
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(INTERNAL_DDL)
                con.execute(CATALOG_TABLES_DDL)
                for name in TAP_SCHEMA_TABLES:
                    con.execute(create_table_sql(load_table_schema(name)))
                con.execute(
                    f"CREATE SCHEMA IF NOT EXISTS {CATALOG}.{quote_ident(tschema.stored_schema)}"
                )
                target = physical_name(tschema)
                con.execute(f"DROP TABLE IF EXISTS {target}")
                con.execute(create_table_sql(tschema))
                con.register("romerea_catalog_rows", rows)
                try:
                    order = quote_ident(tschema.order[0])
                    con.execute(
                        f"INSERT INTO {target} SELECT * FROM romerea_catalog_rows "
                        f"ORDER BY {order} NULLS LAST"
                    )
                finally:
                    con.unregister("romerea_catalog_rows")
                con.execute(
                    f"INSERT OR REPLACE INTO {CATALOG}.romerea.catalog_tables "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        tschema.qualified_name,
                        catalog_definition(tschema),
                        str(source.resolve()),
                        rows.num_rows,
                        n_bad,
                        dt.datetime.now(dt.UTC).replace(tzinfo=None),
                        f"romerea-vo {__version__}",
                    ],
                )
                published = tap_tables(catalog_tables(con), rome=has_rome_tables(con))
                for name, tap_rows in tap_schema_tables(published).items():
                    _replace_rows(con, name, tap_rows, None)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute(f"CHECKPOINT {CATALOG}")
            ok = True
        finally:
            con.close()
    finally:
        if not ok and not existed:  # don't leave a half-made database behind
            for leftover in (db_path, db_path.with_name(db_path.name + ".wal")):
                leftover.unlink(missing_ok=True)


__all__ = ["RESERVED_SCHEMAS", "catalogue_schema", "ingest_catalog", "parse_table_name"]
