"""One request's access to the database, the same for DuckDB and PostgreSQL.

The services never hold an engine's connection or cursor directly; they ask the
database for a session (``db.session()``) and use these calls:

* ``register(name, arrow_table)``: a table only this session sees (uploads, the rows of
  rome.photometry, cross-match pairs);
* ``fetchall(sql, params)``: the rows of a small query of ours, ``?`` placeholders;
* ``arrow(sql, batch_rows=, timeout=)``: a (translated) query's result as Arrow batches;
* ``arrow_table(sql)``: a whole small result as one Arrow table;
* ``interrupt()``: cancel the running statement, from another thread;
* ``close()``.

Errors come out as :class:`QueryInterrupted` (cancelled) or :class:`QueryFailed` (the
engine refused or failed the statement), whatever the engine.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import duckdb
import pyarrow as pa

from ..errors import RomeReaError


class QueryInterrupted(RomeReaError):
    """The statement was cancelled (interrupt, or a timeout)."""


# DuckDB's advice on its own settings and SQL ("Use TRY(...)", "Use \"SET ... TO x\"")
# means nothing to an ADQL user, who can change neither.
_ENGINE_ADVICE = re.compile(r"\s*Use (?:TRY\(|\"SET )[^\n]*?(?:\.(?=\s|$)|$)")


class QueryFailed(RomeReaError):
    """The engine refused or failed the statement; the message is the engine's, without
    its advice on engine settings."""

    def __init__(self, message: str) -> None:
        message = _ENGINE_ADVICE.sub("", message)
        if "expression depth" in message:
            message += (
                " (the query is nested too deeply for the engine: a very long expression "
                "or a POLYGON of hundreds of vertices; simplify or split it)"
            )
        super().__init__(message)


class DuckDBSession:
    """A cursor on the shared read-only DuckDB connection (its own temporary objects)."""

    target = "duckdb"

    def __init__(self, cursor: duckdb.DuckDBPyConnection):
        self._cur = cursor
        self._closing = threading.Lock()
        self._closed = False

    def register(self, name: str, rows: pa.Table) -> None:
        self._cur.register(name, rows)

    def fetchall(self, sql: str, params: list | None = None) -> list[tuple]:
        try:
            return self._cur.execute(sql, params or []).fetchall()
        except duckdb.InterruptException:
            raise QueryInterrupted("the query was interrupted") from None
        except duckdb.Error as exc:
            raise QueryFailed(str(exc)) from None

    def arrow(
        self, sql: str, *, batch_rows: int = 65536, timeout: float | None = None
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """``timeout`` is enforced by the caller (``interrupt``): DuckDB has no per-statement
        timeout."""
        try:
            reader = self._cur.sql(sql).to_arrow_reader(batch_rows)
        except duckdb.InterruptException:
            raise QueryInterrupted("the query was interrupted") from None
        except duckdb.Error as exc:
            raise QueryFailed(str(exc)) from None

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                yield from reader
            except duckdb.InterruptException:
                raise QueryInterrupted("the query was interrupted") from None
            except duckdb.Error as exc:
                raise QueryFailed(str(exc)) from None

        return reader.schema, batches()

    def arrow_table(self, sql: str, params: list | None = None) -> pa.Table:
        try:
            return self._cur.sql(sql, params=params or None).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryFailed(str(exc)) from None

    def interrupt(self) -> None:
        """Cancel the running statement, from another thread; a no-op once closed (a late
        execution-duration timer or client disconnect must not touch a closed cursor)."""
        with self._closing:
            if not self._closed:
                self._cur.interrupt()

    def close(self) -> None:
        with self._closing:
            self._closed = True
            self._cur.close()

    def __enter__(self) -> DuckDBSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
