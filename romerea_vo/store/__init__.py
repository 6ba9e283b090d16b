"""The catalogue tables in a database: ingest field products, TAP_SCHEMA, sandboxed queries.

Only catalogue tables are stored; the photometry stays in the HDF5 cubes, whose location
the database records per field.
"""

from .database import Database, FieldRecord
from .ingest import DEFAULT_AUTHORITY, ingest_fields

__all__ = ["DEFAULT_AUTHORITY", "Database", "FieldRecord", "ingest_fields"]
