"""DuckDB DDL and Arrow types generated from votable_schemas/."""

from __future__ import annotations

import pyarrow as pa

from ..votable.schema import ColumnSchema, TableSchema

DUCKDB_TYPES = {
    "boolean": "BOOLEAN",
    "unsignedByte": "UTINYINT",
    "short": "SMALLINT",
    "int": "INTEGER",
    "long": "BIGINT",
    "float": "REAL",
    "double": "DOUBLE",
    "char": "VARCHAR",
    "unicodeChar": "VARCHAR",
}

ARROW_TYPES = {
    "boolean": pa.bool_(),
    "unsignedByte": pa.uint8(),
    "short": pa.int16(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "char": pa.string(),
    "unicodeChar": pa.string(),
}


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier (column names such as ``filter`` are SQL keywords)."""
    return '"' + name.replace('"', '""') + '"'


CATALOG = "romerea_data"
"""The alias the database file is attached under. Fixed, because DuckDB names a file's
catalog after its stem, and a file called ``rome.duckdb`` would clash with schema ``rome``."""


def attach_sql(path: str, read_only: bool) -> str:
    literal = "'" + str(path).replace("'", "''") + "'"
    return f"ATTACH {literal} AS {CATALOG}" + (" (READ_ONLY)" if read_only else "")


def physical_name(table: TableSchema) -> str:
    """The table's fully qualified, quoted name in the database."""
    return f"{CATALOG}.{quote_ident(table.stored_schema)}.{quote_ident(table.name)}"


def column_type(col: ColumnSchema) -> str:
    return DUCKDB_TYPES[col.datatype]


def create_table_sql(table: TableSchema) -> str:
    cols = ",\n  ".join(f"{quote_ident(c.name)} {column_type(c)}" for c in table.columns)
    return f"CREATE TABLE IF NOT EXISTS {physical_name(table)} (\n  {cols}\n)"


def arrow_schema(table: TableSchema) -> pa.Schema:
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.datatype]) for c in table.columns])
