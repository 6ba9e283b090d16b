"""``romerea-vo export-dachs``: a GAVO DaCHS resource descriptor and FITS data files.

An existing DaCHS data centre publishes the same ROME tables with ``dachs imp q`` on the
exported directory. Everything in the RD (columns, types, units, UCDs, descriptions, keys,
indexes) is generated from ``votable_schemas/``; the rows come from an ingested DuckDB
database, streamed in batches into one FITS binary table per table.

Choices:

* ``rome.photometry`` is not exported: it is virtual (its rows are read from the HDF5
  cubes per query), and a DaCHS site points users at the lightcurves through the stars'
  DIDs (``did`` column), which our lightcurve/DataLink service resolves.
* NULLs: integers use ``TNULL`` (the type's most negative value; 255 for unsignedByte),
  which the RD's rowmaker maps back to NULL and declares as the VOTable null value; floats
  are NaN, read as NULL through ``nanIsNULL`` (so a stored NaN also arrives as NULL).
  FITS has no NULL string: NULL strings are written empty and mapped back to NULL (so an
  empty string also arrives as NULL). DaCHS's FITS grammar reads a NULL logical as False,
  so boolean columns (pipeline flags, never NULL) are declared ``required`` and an export
  of a NULL boolean is refused.
* PostgreSQL forbids the column names ``xmin``/``xmax`` (system columns), so
  ``rome.stamps`` has ``x_min``/``x_max`` in DaCHS; the FITS files keep the ROME names.
* The RD is self-contained for ``dachs imp``; registry publication (``<publish>``) is left
  to the operator.
* ``ivoa.obscore`` becomes the table ``obscore`` of the RD's schema with DaCHS's
  ``//obscore#publishObscoreLike`` mixin, so ``dachs imp`` also adds its rows (one per
  star and band) to the site's ``ivoa.obscore``. Its access_url and preview are paths
  relative to the romerea-vo service, so the mixin (made only with ``--service-url``)
  prefixes that URL; without it the table is exported but not declared to ObsCore.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from astropy.io import fits

from .. import __version__
from ..adql.reserved import is_reserved
from ..errors import RomeReaError
from ..votable.schema import SCHEMA_DESCRIPTIONS, ColumnSchema, TableSchema, rome_tables
from .database import Database
from .ddl import attach_sql, physical_name, quote_ident
from .postgres import PG_TYPES

INDEX_MIXINS = {"pgsphere": "//scs#pgs-pos-index", "q3c": "//scs#q3cindex"}
"""``--index`` choice -> DaCHS mixin indexing the table's main RA/Dec."""

DACHS_TYPES = {**PG_TYPES, "unicodeChar": "unicode"}
"""VOTable datatype -> DaCHS (PostgreSQL) column type: ours, but DaCHS's own ``unicode``."""

_FITS_NUMERIC = {  # datatype -> (TFORM letter, big-endian numpy dtype)
    "unsignedByte": ("B", "u1"),
    "short": ("I", ">i2"),
    "int": ("J", ">i4"),
    "long": ("K", ">i8"),
    "float": ("E", ">f4"),
    "double": ("D", ">f8"),
}
INT_NULLS = {"unsignedByte": 255, "short": -(2**15), "int": -(2**31), "long": -(2**63)}
"""The TNULL written for integer columns (and mapped back to NULL by the RD)."""

RD_NAME = "q.rd"
BATCH_BYTES = 32 * 2**20
"""Target size of one batch of rows in memory while writing a FITS file."""
EXPORT_MEMORY_LIMIT = "128MB"
"""DuckDB's memory limit while exporting (see :func:`connect_readonly`)."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RESERVED_SCHEMAS = {"dc", "ivoa", "tap_schema", "public", "uws", "information_schema"}


class DachsExportError(RomeReaError):
    """The export could not be made; the output directory is left as it was."""


@dataclass(frozen=True)
class ExportedTable:
    """One table written: its FITS file and row count."""

    name: str
    path: Path
    n_rows: int


@dataclass(frozen=True)
class DachsExport:
    """What :func:`export_dachs` wrote."""

    rd_path: Path
    tables: tuple[ExportedTable, ...]


def exported_tables() -> list[TableSchema]:
    """The ROME tables an export holds: every published one that is stored (not
    ``rome.photometry``, whose rows come from the cubes per query)."""
    return [t for t in rome_tables() if not t.virtual]


def dachs_type(col: ColumnSchema) -> str:
    """The DaCHS column type of a votable_schemas/ column (arrays as ``type[n]``)."""
    size = col.arraysize
    if col.datatype == "unicodeChar":
        return "unicode"
    if col.datatype == "char":
        if size is None or size.endswith("*"):
            return "text"
        return "char" if size == "1" else f"char({size})"
    base = DACHS_TYPES[col.datatype]
    if size is None or size == "1":
        return base
    return f"{base}[{size.rstrip('*')}]"


def _nullable(table: TableSchema, col: ColumnSchema) -> bool:
    return col.name not in table.primary_key


POSTGRES_RENAMES = {
    "xmin": "x_min", "xmax": "x_max", "cmin": "c_min", "cmax": "c_max",
    "ctid": "c_tid", "tableoid": "table_oid", "oid": "o_id",
}  # fmt: skip
"""PostgreSQL's system column names, which no table may use even quoted (rome.stamps has
``xmin``, ``xmax``): the DaCHS table names such a column like this."""


def dachs_column_name(name: str) -> str:
    """The column's name in the DaCHS table (the votable_schemas/ name unless PostgreSQL
    reserves it)."""
    return POSTGRES_RENAMES.get(name, name)


def _rd_column_name(name: str) -> str:
    """As the RD writes it: DaCHS wants ``quoted/`` before ADQL/SQL reserved words."""
    name = dachs_column_name(name)
    return f"quoted/{name}" if is_reserved(name) else name


def _rd_column_list(names) -> str:
    return ", ".join(_rd_column_name(n) for n in names)


def _main_position(table: TableSchema) -> tuple[str, str] | None:
    """(ra, dec) column names designated by UCD ``pos.eq.ra;meta.main`` etc., if any."""
    ra = [c.name for c in table.columns if c.ucd == "pos.eq.ra;meta.main"]
    dec = [c.name for c in table.columns if c.ucd == "pos.eq.dec;meta.main"]
    return (ra[0], dec[0]) if len(ra) == 1 and len(dec) == 1 else None


# --- the resource descriptor -----------------------------------------------------------


def _meta(parent: ET.Element, name: str, text: str) -> None:
    ET.SubElement(parent, "meta", name=name).text = text


OBSCORE_MIXIN = "//obscore#publishObscoreLike"
"""The DaCHS mixin that adds a table with ObsCore-named columns to DaCHS's ivoa.obscore."""

OBSCORE_ABSENT = (
    "dataproduct_subtype", "obs_title", "obs_creator_did", "target_class", "s_pixel_scale",
    "em_ucd",
)  # fmt: skip
"""ObsCore columns the mixin reads by default that ivoa.obscore here does not have."""


def _obscore_mixin(service_url: str) -> ET.Element:
    """``//obscore#publishObscoreLike`` for the exported ivoa.obscore rows: their
    access_url and preview are paths relative to the romerea-vo service, made absolute
    with its URL (DataLink and the plots stay with that service)."""
    base = service_url.rstrip("/").replace("'", "''") + "/"
    attrs = {name: "NULL" for name in OBSCORE_ABSENT}
    attrs["access_url"] = f"'{base}' || access_url"
    attrs["preview"] = f"'{base}' || preview"
    el = ET.Element("mixin", attrs)
    el.text = OBSCORE_MIXIN
    return el


def _is_obscore(table: TableSchema) -> bool:
    return table.qualified_name.lower() == "ivoa.obscore"


def _table_element(
    table: TableSchema, index: str, tables: set[str], service_url: str | None = None
) -> ET.Element:
    attrs = {"id": table.name, "onDisk": "True", "adql": "True"}
    if table.primary_key:
        attrs["primary"] = _rd_column_list(table.primary_key)
    position = _main_position(table)
    if position:
        attrs["mixin"] = INDEX_MIXINS[index]
    el = ET.Element("table", attrs)
    _meta(el, "description", table.description)
    if _is_obscore(table) and service_url:
        el.append(_obscore_mixin(service_url))
    for col in table.columns:
        c = {"name": _rd_column_name(col.name), "type": dachs_type(col)}
        if col.unit:
            c["unit"] = col.unit
        if col.ucd:
            c["ucd"] = col.ucd
        if col.utype:
            c["utype"] = col.utype
        if col.xtype:
            c["xtype"] = col.xtype
        # DaCHS's TAP_SCHEMA.columns.principal is verbLevel <= 20 (its default)
        c["verbLevel"] = "1" if col.principal else "25"
        if not _nullable(table, col) or col.datatype == "boolean":
            c["required"] = "True"
        c["description"] = col.description
        if dachs_column_name(col.name) != col.name:
            c["description"] += (
                f" (Column {col.name} of the ROME tables; renamed because PostgreSQL "
                "reserves that name.)"
            )
        column = ET.SubElement(el, "column", c)
        if _nullable(table, col) and col.datatype in INT_NULLS:
            # DaCHS writes it as the VOTable null value of the column
            ET.SubElement(column, "values", nullLiteral=str(INT_NULLS[col.datatype]))
        if col.std:  # DaCHS's TAP_SCHEMA.columns.std comes from this property
            ET.SubElement(column, "property", name="std").text = "1"
    leading_key = table.primary_key[:1]
    for col in table.columns:
        if col.indexed and col.name not in (*(position or ()), *leading_key):
            ET.SubElement(el, "index", columns=_rd_column_name(col.name))
    for fk in table.foreign_keys:
        target = fk.target.split(".", 1)[-1]
        if target not in tables:
            continue
        attrs = {"inTable": target, "source": _rd_column_list(fk.columns)}
        if fk.target_columns != fk.columns:
            attrs["dest"] = _rd_column_list(fk.target_columns)
        ET.SubElement(el, "foreignKey", attrs)
    return el


def _data_element(table: TableSchema) -> ET.Element:
    el = ET.Element("data", id=f"import_{table.name}")
    ET.SubElement(el, "sources").text = f"data/{table.name}.fits"
    ET.SubElement(el, "fitsTableGrammar", nanIsNULL="True")
    make = ET.SubElement(el, "make", table=table.name)
    rowmaker = ET.SubElement(make, "rowmaker", idmaps="*")
    for col in table.columns:
        attrs = {"key": _rd_column_name(col.name)}
        if dachs_column_name(col.name) != col.name:
            attrs["source"] = col.name  # the FITS files keep the ROME column names
        if _nullable(table, col) and col.datatype in INT_NULLS:
            attrs["nullExpr"] = str(INT_NULLS[col.datatype])
        elif _nullable(table, col) and col.datatype in ("char", "unicodeChar"):
            attrs["nullExpr"] = "''"
        if len(attrs) > 1:
            ET.SubElement(rowmaker, "map", attrs)
    return el


def _cone_service(table: TableSchema, test_position: tuple[float, float] | None) -> ET.Element:
    el = ET.Element("service", id="cone", allowed="form,scs.xml")
    _meta(el, "title", "ROME/REA field index cone search")
    _meta(el, "shortName", "ROME/REA cone")
    _meta(
        el,
        "description",
        "Simple Cone Search over the ROME/REA field index: every star of every "
        "published field, with its position, Gaia EDR3 match and publisher DID.",
    )
    ra, dec = test_position if test_position else (268.0, -29.0)
    _meta(el, "testQuery.ra", f"{ra:.6f}")
    _meta(el, "testQuery.dec", f"{dec:.6f}")
    _meta(el, "testQuery.sr", "0.001")
    core = ET.SubElement(el, "scsCore", queriedTable=table.name)
    ET.SubElement(core, "FEED", source="//scs#coreDescs")
    return el


def resource_descriptor(
    *,
    schema: str = "rome",
    index: str = "pgsphere",
    cone_service: bool = False,
    service_url: str | None = None,
    test_position: tuple[float, float] | None = None,
) -> str:
    """The DaCHS RD (XML text) for the exported ROME tables in ``schema``."""
    _check_schema_name(schema)
    if index not in INDEX_MIXINS:
        raise DachsExportError(
            f"unknown index kind {index!r}; choose one of {', '.join(INDEX_MIXINS)}"
        )
    tables = exported_tables()
    names = {t.name for t in tables}
    root = ET.Element("resource", schema=schema, resdir=".")
    root.append(
        ET.Comment(
            f" generated by romerea-vo {__version__} export-dachs from votable_schemas/; "
            "import with `dachs imp q` "
        )
    )
    _meta(root, "title", "ROME/REA microlensing survey catalogues")
    _meta(root, "description", SCHEMA_DESCRIPTIONS["rome"])
    _meta(root, "creationDate", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    _meta(root, "creator.name", "ROME/REA collaboration")
    for subject in ("Gravitational microlensing", "Variable stars", "Galactic bulge"):
        _meta(root, "subject", subject)
    _meta(root, "type", "Catalog")
    where = f" at {service_url}" if service_url else ""
    _meta(
        root,
        "_longdoc",
        "Each star's lightcurves (g', r', i' from the HDF5 photometry cubes) are not "
        "tables here: the ``did`` column of field_index holds the star's publisher DID, "
        f"which the romerea-vo DataLink and lightcurve service{where} accepts as ID.",
    )
    for table in tables:
        root.append(_table_element(table, index, names, service_url))
    for table in tables:
        root.append(_data_element(table))
    if cone_service:
        root.append(_cone_service(_cone_table(tables), test_position))
    ET.indent(root, space="\t")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _cone_table(tables: list[TableSchema]) -> TableSchema:
    return next(t for t in tables if t.name == "field_index")


def _check_schema_name(schema: str) -> None:
    if not _IDENTIFIER.match(schema) or is_reserved(schema):
        raise DachsExportError(
            f"schema name {schema!r} is not a plain SQL identifier (letters, digits, _)"
        )
    if schema.lower() in _RESERVED_SCHEMAS:
        raise DachsExportError(f"schema name {schema!r} is used by DaCHS itself")


# --- the FITS data files ---------------------------------------------------------------


@dataclass(frozen=True)
class _FitsColumn:
    col: ColumnSchema
    tform: str
    dtype: str
    null: int | None


def _table_profile(cur, table: TableSchema) -> tuple[int, list[_FitsColumn]]:
    """Row count and FITS layout (string widths from the data; integer TNULL values
    checked against the data)."""
    aggregates = ["count(*)"]
    for col in table.columns:
        q = quote_ident(col.name)
        if col.datatype in ("char", "unicodeChar"):
            aggregates.append(f"max(strlen({q}))")
        elif col.datatype in INT_NULLS:
            aggregates.append(f"count(*) FILTER ({q} = {INT_NULLS[col.datatype]})")
        elif col.datatype == "boolean":
            aggregates.append(f"count(*) FILTER ({q} IS NULL)")
        else:
            aggregates.append("NULL")
    row = cur.execute(f"SELECT {', '.join(aggregates)} FROM {physical_name(table)}").fetchall()[0]
    n_rows, stats = row[0], row[1:]
    layout = []
    for col, stat in zip(table.columns, stats, strict=True):
        if col.arraysize and col.datatype not in ("char", "unicodeChar"):
            raise DachsExportError(
                f"{table.qualified_name}.{col.name}: array columns are not exported yet"
            )
        if col.datatype in ("char", "unicodeChar"):
            width = max(int(stat or 0), 1)
            layout.append(_FitsColumn(col, f"{width}A", f"S{width}", None))
        elif col.datatype == "boolean":
            if stat:
                raise DachsExportError(
                    f"{table.qualified_name}.{col.name} has {stat} NULL values; DaCHS's "
                    "FITS grammar would read them as False, so they are not exported"
                )
            layout.append(_FitsColumn(col, "L", "u1", None))
        else:
            letter, dtype = _FITS_NUMERIC[col.datatype]
            null = INT_NULLS.get(col.datatype)
            if null is not None and stat:
                raise DachsExportError(
                    f"{table.qualified_name}.{col.name} holds the value {null}, which the "
                    "export needs as the FITS null value of that column"
                )
            layout.append(_FitsColumn(col, letter, dtype, null))
    return n_rows, layout


_TRUE, _FALSE = ord("T"), ord("F")


def _column_values(array: pa.ChunkedArray | pa.Array, fc: _FitsColumn) -> np.ndarray:
    """One column of a batch as FITS-ready numpy values (NULLs as TNULL/NaN/'')."""
    dt_ = fc.col.datatype
    if dt_ in ("char", "unicodeChar"):
        raw = pc.fill_null(array, "").cast(pa.binary()).to_numpy(zero_copy_only=False)
        return raw.astype(fc.dtype)
    if dt_ == "boolean":  # FITS logicals are the bytes T and F (NULLs refused before)
        return np.where(array.to_numpy(zero_copy_only=False), _TRUE, _FALSE)
    if fc.null is not None:
        return pc.fill_null(array, fc.null).to_numpy(zero_copy_only=False)
    return pc.fill_null(array, np.nan).to_numpy(zero_copy_only=False)


def fits_unit(col: ColumnSchema) -> str | None:
    """TUNIT: the unit in the FITS standard's syntax, None when FITS cannot express it
    (``'electron'/s``: the RD still carries every unit as votable_schemas/ spells it)."""
    if col.astropy_unit is None:
        return None
    try:
        return col.astropy_unit.to_string("fits")
    except ValueError:
        return None


def connect_readonly(db_path: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """A read-only connection for exporting, after :class:`Database` has checked the file.

    DuckDB's buffer pool would otherwise keep most of a table's blocks cached while it is
    scanned; a small memory limit (DuckDB evicts, nothing spills for a plain scan) keeps
    the export's peak memory well below one copy of the table."""
    Database(db_path).close()  # precise errors for a missing or foreign file
    con = duckdb.connect(config={"memory_limit": EXPORT_MEMORY_LIMIT, "threads": 1})
    con.execute(attach_sql(str(db_path), read_only=True))
    return con


def write_fits_table(
    con: duckdb.DuckDBPyConnection,
    table: TableSchema,
    path: Path,
    *,
    batch_rows: int | None = None,
) -> int:
    """Stream ``table``'s rows (in stored order) into a FITS binary table; returns the
    row count. At most one batch of rows is in memory at a time."""
    cur = con.cursor()
    try:
        n_rows, layout = _table_profile(cur, table)
        coldefs = fits.ColDefs(
            [
                fits.Column(name=fc.col.name, format=fc.tform, unit=fits_unit(fc.col), null=fc.null)
                for fc in layout
            ]
        )
        header = fits.BinTableHDU.from_columns(coldefs, nrows=0).header
        header["NAXIS2"] = n_rows
        header["EXTNAME"] = table.name
        record = np.dtype([(fc.col.name, fc.dtype) for fc in layout])
        if record.itemsize != header["NAXIS1"]:  # would write a corrupt file
            raise AssertionError(f"row size {record.itemsize} != NAXIS1 {header['NAXIS1']}")
        if batch_rows is None:
            batch_rows = max(1024, BATCH_BYTES // record.itemsize)
        names = ", ".join(quote_ident(c.name) for c in table.columns)
        # No ORDER BY: sorting would hold the whole table in memory. Ingest stores the rows
        # in the table's order and DuckDB preserves insertion order; DaCHS then clusters
        # the tables on their position index anyway.
        sql = f"SELECT {names} FROM {physical_name(table)}"
        primary = fits.PrimaryHDU()
        primary.header["ORIGIN"] = f"romerea-vo {__version__}"
        primary.header["COMMENT"] = f"{table.qualified_name} for DaCHS (export-dachs)"
        primary.writeto(path)
        stream = fits.StreamingHDU(str(path), header)  # appends the table HDU
        try:
            written = 0
            for batch in cur.sql(sql).to_arrow_reader(batch_rows):
                if not batch.num_rows:
                    continue
                rows = np.empty(batch.num_rows, dtype=record)
                for i, fc in enumerate(layout):
                    rows[fc.col.name] = _column_values(batch.column(i), fc)
                written += len(rows)
                if written > n_rows:
                    break
                stream.write(rows.view(np.uint8))
        finally:
            stream.close()
        if written != n_rows:
            raise DachsExportError(
                f"{table.qualified_name} changed while being exported "
                f"({n_rows} rows counted, {written} read); try again"
            )
        return n_rows
    finally:
        cur.close()


def _first_position(
    con: duckdb.DuckDBPyConnection, table: TableSchema
) -> tuple[float, float] | None:
    position = _main_position(table)
    if position is None:
        return None
    cur = con.cursor()
    try:
        rows = cur.execute(
            f"SELECT {quote_ident(position[0])}, {quote_ident(position[1])} "
            f"FROM {physical_name(table)} WHERE {quote_ident(position[0])} IS NOT NULL LIMIT 1"
        ).fetchall()
    finally:
        cur.close()
    return (float(rows[0][0]), float(rows[0][1])) if rows else None


# --- the whole export ------------------------------------------------------------------


def _check_outdir(outdir: Path, overwrite: bool) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise DachsExportError(f"{outdir} exists and is not a directory")
    if outdir.is_dir() and any(outdir.iterdir()) and not overwrite:
        raise DachsExportError(
            f"{outdir} exists and is not empty; give --overwrite to replace the exported "
            "files in it (other files are left alone)"
        )


def export_dachs(
    db_path: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    schema: str = "rome",
    index: str = "pgsphere",
    cone_service: bool = False,
    service_url: str | None = None,
    overwrite: bool = False,
    batch_rows: int | None = None,
    report: Callable[[ExportedTable], None] | None = None,
) -> DachsExport:
    """Write ``OUTDIR/q.rd`` and ``OUTDIR/data/<table>.fits`` from the database.

    Files are written into a staging directory inside ``outdir`` and moved into place
    only when all are complete, so a failure leaves ``outdir``'s existing files as they
    were. ``report`` is called after each table.
    """
    outdir = Path(outdir)
    # validate the cheap arguments before reading anything
    _check_schema_name(schema)
    if index not in INDEX_MIXINS:
        raise DachsExportError(
            f"unknown index kind {index!r}; choose one of {', '.join(INDEX_MIXINS)}"
        )
    if str(db_path).startswith(("postgresql:", "postgres:")):
        raise DachsExportError(
            "export-dachs reads a DuckDB database file; a PostgreSQL database can be "
            "published by DaCHS directly"
        )
    _check_outdir(outdir, overwrite)
    con = connect_readonly(db_path)
    try:
        tables = exported_tables()
        outdir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-dachs-", dir=outdir))
        try:
            (staging / "data").mkdir()
            written = []
            for table in tables:
                path = staging / "data" / f"{table.name}.fits"
                n = write_fits_table(con, table, path, batch_rows=batch_rows)
                done = ExportedTable(table.name, outdir / "data" / path.name, n)
                written.append(done)
                if report:
                    report(done)
            cone_table = _cone_table(tables)
            rd = resource_descriptor(
                schema=schema,
                index=index,
                cone_service=cone_service,
                service_url=service_url,
                test_position=_first_position(con, cone_table) if cone_service else None,
            )
            (staging / RD_NAME).write_text(rd, encoding="utf-8")
            (outdir / "data").mkdir(exist_ok=True)
            for item in written:
                os.replace(staging / "data" / item.path.name, item.path)
            os.replace(staging / RD_NAME, outdir / RD_NAME)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        con.close()
    return DachsExport(outdir / RD_NAME, tuple(written))
