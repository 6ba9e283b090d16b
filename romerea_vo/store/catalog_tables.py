"""Which tables a database publishes: the ROME tables (when it holds them) and the external
catalogues added by ``romerea-vo ingest-catalog``, whose definitions live in the database.

An external catalogue's :class:`~romerea_vo.votable.schema.TableSchema` is stored as JSON
shaped like a votable_schemas/ TOML file in ``romerea.catalog_tables``, so that DDL,
TAP_SCHEMA, VOSI and result FIELDs are generated from one metadata model for every table.
"""

from __future__ import annotations

import json

import duckdb

from ..votable.schema import (
    TableSchema,
    load_table_schema,
    table_schema_document,
    table_schema_from_document,
    tap_tables,
)
from .ddl import CATALOG

CATALOG_TABLES_DDL = f"""
CREATE TABLE IF NOT EXISTS {CATALOG}.romerea.catalog_tables (
  table_name VARCHAR PRIMARY KEY, definition VARCHAR, source VARCHAR, n_rows BIGINT,
  n_without_position BIGINT, ingested_at TIMESTAMP, software VARCHAR
)
"""


def _exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    row = con.execute(
        "SELECT COUNT(*) FROM information_schema.tables "
        "WHERE table_catalog = ? AND table_schema = ? AND table_name = ?",
        [CATALOG, schema, table],
    ).fetchone()
    return bool(row and row[0])


def has_rome_tables(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the database holds the ROME tables (made by ``romerea-vo ingest``)."""
    return _exists(con, "rome", load_table_schema("field_index").name)


def catalog_tables(con: duckdb.DuckDBPyConnection) -> list[TableSchema]:
    """The external catalogues stored in the database, by qualified name."""
    if not _exists(con, "romerea", "catalog_tables"):
        return []
    rows = con.execute(
        f"SELECT table_name, definition FROM {CATALOG}.romerea.catalog_tables ORDER BY table_name"
    ).fetchall()
    return [
        table_schema_from_document(json.loads(doc), f"romerea.catalog_tables[{name}]")
        for name, doc in rows
    ]


def catalog_definition(table: TableSchema) -> str:
    """The JSON stored for ``table`` in ``romerea.catalog_tables``."""
    return json.dumps(table_schema_document(table), sort_keys=True)


def position_columns(table: TableSchema) -> tuple[str, str]:
    """The (RA, Dec) column names of an external catalogue (its rows are sorted by Dec)."""
    dec = table.order[0]
    ra = next(
        c.name
        for c in table.columns
        if c.indexed and c.name != dec and (c.ucd or "").lower().startswith("pos.eq.ra")
    )
    return ra, dec


def database_tables(con: duckdb.DuckDBPyConnection) -> list[TableSchema]:
    """Every table the database publishes over TAP, in TAP_SCHEMA order."""
    return tap_tables(catalog_tables(con), rome=has_rome_tables(con))


__all__ = [
    "CATALOG_TABLES_DDL",
    "catalog_definition",
    "catalog_tables",
    "database_tables",
    "has_rome_tables",
    "position_columns",
]
