"""The store's contract: what the services, cross-matching and the SAMP bridge may ask of
an ingested database and of one request's session, whatever the engine.

`romerea_vo.store.database.Database` (DuckDB) and
`romerea_vo.store.postgres.PostgresDatabase` (PostgreSQL + pgSphere) implement
`CatalogDatabase`; their sessions (`DuckDBSession`, `PgSession`) implement
`CatalogSession`. Code above the store annotates these Protocols, never an engine's class;
``tests/test_layering.py`` checks that both engines provide every member.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Self

import pyarrow as pa

if TYPE_CHECKING:
    from ..products.reader import Field
    from ..votable.schema import TableSchema
    from .database import FieldRecord

__all__ = ["CatalogDatabase", "CatalogSession"]


class CatalogSession(Protocol):
    """One request's access (:mod:`romerea_vo.store.session`); errors come out as
    `QueryInterrupted` or `QueryFailed`."""

    target: str

    def register(self, name: str, rows: pa.Table) -> None: ...

    def fetchall(self, sql: str, params: list | None = None) -> list[tuple]: ...

    def arrow(
        self, sql: str, *, batch_rows: int = ..., timeout: float | None = None
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]: ...

    def arrow_table(self, sql: str, params: list | None = None) -> pa.Table: ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class CatalogDatabase(Protocol):
    """An ingested database opened for serving."""

    target: str
    """The ADQL translation target (``duckdb`` or ``pgsphere``)."""
    path: Path | str
    fields: dict[str, FieldRecord]
    authority: str
    has_rome: bool
    catalogues: list[TableSchema]
    tables: list[TableSchema]

    def session(self) -> CatalogSession: ...

    def physical_name(self, table: TableSchema) -> str: ...

    def field(self, name: str) -> Field: ...

    def metadata_is_current(self) -> bool: ...

    def close(self) -> None: ...
