"""The catalogue tables in a database: ingest field products, TAP_SCHEMA, sandboxed queries.

Only catalogue tables are stored; the photometry stays in the HDF5 cubes, whose location
the database records per field.
"""

import os

from ..ids import DEFAULT_AUTHORITY
from .database import Database, FieldRecord
from .ingest import ingest_fields


def open_database(
    spec: str | os.PathLike,
    *,
    threads: int | None = None,
    memory_limit: str | None = None,
    work_mem: str | None = None,
):
    """The database ``--db`` names: a ``postgresql://`` URL or a DuckDB file.

    ``threads`` and ``memory_limit`` bound DuckDB, ``work_mem`` each PostgreSQL session
    (None: the engine's default). Raises DatabaseError / PostgresError."""
    from .postgres import PostgresDatabase, is_postgres_url

    if is_postgres_url(spec):
        return PostgresDatabase(str(spec), work_mem=work_mem)
    return Database(spec, threads=threads, memory_limit=memory_limit)


__all__ = ["DEFAULT_AUTHORITY", "Database", "FieldRecord", "ingest_fields", "open_database"]
