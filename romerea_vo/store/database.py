"""A read-only, sandboxed connection to an ingested database, for the services."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ..errors import RomeReaError
from ..ids import DEFAULT_AUTHORITY
from ..products import open_field
from ..products.reader import Field
from ..votable.schema import TableSchema, tap_tables
from .catalog_tables import catalog_tables, has_rome_tables
from .ddl import CATALOG, attach_sql, physical_name
from .session import DuckDBSession

SANDBOX_SETTINGS = (
    # User SQL must never reach the file system or the network. Applied after the
    # database file is attached; lock_configuration last, so nothing can undo them.
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET python_enable_replacements = false",
    "SET lock_configuration = true",
)


@dataclass(frozen=True)
class FieldRecord:
    """A field as the database knows it: where its cubes live, and its size."""

    name: str
    directory: Path
    n_stars: int
    n_images: int
    era: str


def field_records(rows: list[tuple]) -> dict[str, FieldRecord]:
    """The fields table's rows (field, directory, n_stars, n_images, era) by name."""
    return {r[0]: FieldRecord(r[0], Path(r[1]), r[2], r[3], r[4]) for r in rows}


class OpenFields:
    """Fields' products for reading lightcurves, each opened on first use and kept open;
    shared by a database's request threads."""

    def __init__(self, records: dict[str, FieldRecord], error: type[RomeReaError]):
        self._records = records
        self._error = error
        self._open: dict[str, Field] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Field:
        with self._lock:
            if name not in self._open:
                if name not in self._records:
                    raise self._error(
                        f"unknown field {name!r}; this database has "
                        f"{', '.join(self._records) or 'no fields'}"
                    )
                self._open[name] = open_field(self._records[name].directory, name)
            return self._open[name]

    def close(self) -> None:
        with self._lock:
            for f in self._open.values():
                f.close()
            self._open.clear()


class DatabaseError(RomeReaError):
    pass


class Database:
    """An ingested database opened read-only; :meth:`cursor` gives per-request cursors."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        memory_limit: str | None = None,
    ):
        """Raises DatabaseError (no such file, not a romerea-vo database, a bad limit)."""
        self.path = Path(path)
        if not self.path.is_file():
            raise DatabaseError(
                f"{self.path}: no such database; create it with `romerea-vo ingest FIELD_DIR "
                f"--db {self.path}`"
            )
        config: dict[str, str | bool | int | float | list[str]] = {}
        if threads:
            config["threads"] = threads
        if memory_limit:
            # beyond it DuckDB spills what it can and fails the query otherwise, rather
            # than the process growing until the machine swaps
            config["memory_limit"] = memory_limit
        try:
            self._con = duckdb.connect(config=config)
        except duckdb.Error as exc:
            raise DatabaseError(f"cannot open DuckDB with {config}: {exc}") from None
        try:
            self._con.execute(attach_sql(str(self.path), read_only=True))
        except duckdb.Error as exc:
            self._con.close()
            raise DatabaseError(f"{self.path}: cannot open the database: {exc}") from None
        for statement in SANDBOX_SETTINGS:
            self._con.execute(statement)
        try:
            rows = self._con.execute(
                f"SELECT field, directory, n_stars, n_images, era FROM {CATALOG}.romerea.fields "
                "ORDER BY field"
            ).fetchall()
            setting = self._con.execute(
                f"SELECT value FROM {CATALOG}.romerea.settings WHERE key = 'authority'"
            ).fetchone()
        except duckdb.CatalogException:
            self._con.close()
            raise DatabaseError(
                f"{self.path} is not a romerea-vo database (no romerea.fields table)"
            ) from None
        self.fields = field_records(rows)
        # a database holding only external catalogues has no authority set yet
        self.authority: str = setting[0] if setting else DEFAULT_AUTHORITY
        self.has_rome = has_rome_tables(self._con)
        """Whether the ROME tables are here (a database may hold only external catalogues)."""
        self.catalogues: list[TableSchema] = catalog_tables(self._con)
        """External catalogues added by ``romerea-vo ingest-catalog``."""
        self.tables: list[TableSchema] = tap_tables(self.catalogues, rome=self.has_rome)
        """Every table published over TAP: ROME, external catalogues, TAP_SCHEMA."""
        self._open_fields = OpenFields(self.fields, DatabaseError)

    target = "duckdb"
    """The ADQL translation target for this database."""

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor (its own transaction and temporary objects) on the shared database."""
        return self._con.cursor()

    def session(self) -> DuckDBSession:
        """One request's access, the same calls as a PostgreSQL session
        (:mod:`romerea_vo.store.session`)."""
        return DuckDBSession(self._con.cursor())

    def physical_name(self, table: TableSchema) -> str:
        """The table's quoted name in this database's SQL."""
        return physical_name(table)

    def field(self, name: str) -> Field:
        """The field's products (opened once, kept open), for reading lightcurves."""
        return self._open_fields.get(name)

    def metadata_is_current(self) -> bool:
        """Whether the database's TAP_SCHEMA is what this version generates from
        votable_schemas/ and the stored external catalogue definitions (a database
        ingested by another version may differ)."""
        from .tap_schema import CURRENT_CHECK, metadata_matches

        cur = self.cursor()
        try:
            stored = {
                name: cur.execute(f"SELECT {', '.join(cols)} FROM {CATALOG}.{name}").fetchall()
                for name, cols in CURRENT_CHECK.items()
            }
        except duckdb.Error:
            return False
        finally:
            cur.close()
        return metadata_matches(self.tables, stored)

    def close(self) -> None:
        self._open_fields.close()
        self._con.close()
