"""PostgreSQL + pgSphere store: the same tables as the DuckDB file, for many workers.

``romerea-vo ingest FIELD_DIR --db postgresql://...`` creates the schemas and tables
from votable_schemas/ (PostgreSQL types), bulk-loads the rows with COPY, indexes
positions with pgSphere (GiST on ``spoint(radians(ra), radians(dec))``, the expression
the pgSphere ADQL target writes, so cones and joins use the index) and runs ANALYZE.
:class:`PostgresDatabase` is what the services open: its :meth:`~PostgresDatabase.session`
gives a :class:`PgSession` per request, one transaction that is rolled back at the
end, so that upload tables (temporary) vanish with it.

Security: the service connects as a role that can only read (see
``services/postgres/setup.sql``); besides, every query runs in a READ ONLY transaction
with a statement timeout, and user SQL only ever comes out of the ADQL translator,
which emits no function outside ADQL's.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import threading
from collections.abc import Generator, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ..errors import RomeReaError
from ..ids import DEFAULT_AUTHORITY
from ..products import open_field
from ..products.reader import Field
from ..votable.schema import TableSchema, load_table_schema, tap_tables
from .database import OpenFields, field_records
from .ddl import quote_ident
from .field_tables import field_tables, ingest_summary
from .ingest import fields_row
from .session import QueryFailed, QueryInterrupted
from .tap_schema import CURRENT_CHECK, metadata_matches, tap_schema_tables

PG_TYPES = {
    "boolean": "boolean",
    "unsignedByte": "smallint",
    "short": "smallint",
    "int": "integer",
    "long": "bigint",
    "float": "real",
    "double": "double precision",
    "char": "text",
    "unicodeChar": "text",
}

INTERNAL_DDL = """
CREATE EXTENSION IF NOT EXISTS pg_sphere;
CREATE SCHEMA IF NOT EXISTS romerea;
CREATE SCHEMA IF NOT EXISTS rome;
CREATE SCHEMA IF NOT EXISTS ivoa;
CREATE SCHEMA IF NOT EXISTS tap_schema;
CREATE TABLE IF NOT EXISTS romerea.settings (key text PRIMARY KEY, value text);
CREATE TABLE IF NOT EXISTS romerea.fields (
  field text PRIMARY KEY, directory text, n_stars bigint, n_images integer,
  era text, ingested_at timestamp, software text
);
"""


class PostgresError(RomeReaError):
    """The PostgreSQL database cannot be used (connection, missing tables, ...)."""


def is_postgres_url(text: str | os.PathLike | None) -> bool:
    """Whether ``--db`` names a PostgreSQL database rather than a DuckDB file."""
    return isinstance(text, str) and text.startswith(("postgresql://", "postgres://"))


POSTGRES_EXTRA = "pip install 'romerea-vo[postgres]'"
"""How to install psycopg and psycopg_pool, the optional ``postgres`` extra."""


def _psycopg():
    try:
        import psycopg
    except ImportError:  # an optional dependency
        raise PostgresError(f"PostgreSQL support needs psycopg: {POSTGRES_EXTRA}") from None
    return psycopg


def connect(url: str, *, autocommit: bool = False):
    """A psycopg connection, with errors turned into :class:`PostgresError`."""
    psycopg = _psycopg()
    try:
        return psycopg.connect(url, autocommit=autocommit, application_name="romerea-vo")
    except psycopg.Error as exc:
        raise PostgresError(f"cannot connect to {redact(url)}: {exc}".strip()) from None


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


# --- DDL ------------------------------------------------------------------------------


SYSTEM_COLUMNS = frozenset({"xmin", "xmax", "cmin", "cmax", "ctid", "tableoid", "oid"})
"""Names PostgreSQL reserves for every table's system columns (rome.stamps has xmin...)."""


def physical_name(table: TableSchema) -> str:
    """The name queries use: the table, or a view over it (see :func:`storage_name`)."""
    return f"{quote_ident(table.stored_schema)}.{quote_ident(table.name)}"


def _needs_view(table: TableSchema) -> bool:
    return any(c.name in SYSTEM_COLUMNS for c in table.columns)


def storage_name(table: TableSchema) -> str:
    """Where the rows are stored. A table with a column named like a system column
    stores it as ``name_`` in ``romerea.<schema>_<table>`` and is published as a view
    that gives the column its name back, so the ADQL side sees the same tables."""
    if _needs_view(table):
        return f"romerea.{quote_ident(table.stored_schema + '_' + table.name)}"
    return physical_name(table)


def stored_column(name: str) -> str:
    return name + "_" if name in SYSTEM_COLUMNS else name


def create_table_sql(table: TableSchema) -> list[str]:
    # No PRIMARY KEY constraint (an index instead, see index_sql): the DuckDB store does
    # not enforce keys either, and real pipeline output breaks some (pyDANDIA TEST1's
    # IMAGES index restarts per dataset), which must not make one backend refuse a field.
    cols = [f"{quote_ident(stored_column(c.name))} {PG_TYPES[c.datatype]}" for c in table.columns]
    out = [f"CREATE TABLE IF NOT EXISTS {storage_name(table)} (\n  " + ",\n  ".join(cols) + "\n)"]
    if _needs_view(table):
        select = ", ".join(
            f"{quote_ident(stored_column(c.name))} AS {quote_ident(c.name)}" for c in table.columns
        )
        out.append(
            f"CREATE OR REPLACE VIEW {physical_name(table)} AS SELECT {select} "
            f"FROM {storage_name(table)}"
        )
    return out


POSITION_COLUMNS = (("ra", "dec"), ("s_ra", "s_dec"))
"""Column pairs that get a pgSphere index: the ROME tables' and ObsCore's."""


def position_columns(table: TableSchema) -> tuple[str, str] | None:
    """The (RA, Dec) columns of a positional table, else None."""
    if table.schema is None or table.schema == "tap_schema":
        return None
    names = set(table.column_names)
    return next((pair for pair in POSITION_COLUMNS if set(pair) <= names), None)


def has_position(table: TableSchema) -> bool:
    return position_columns(table) is not None


def position_expression(ra: str = "ra", dec: str = "dec") -> str:
    """What the GiST index covers; the pgSphere ADQL target writes exactly this for the
    position columns so that PostgreSQL can use the index."""
    return f"spoint(radians({quote_ident(ra)}), radians({quote_ident(dec)}))"


POSITION_EXPRESSION = position_expression()


def index_sql(table: TableSchema) -> list[str]:
    """Indexes of a table: pgSphere on its position, b-trees on its indexed columns."""
    out = []
    base = f"{table.stored_schema}_{table.name}"
    pos = position_columns(table)
    if pos is not None:
        out.append(
            f"CREATE INDEX IF NOT EXISTS {quote_ident(base + '_pos')} ON {storage_name(table)} "
            f"USING gist ({position_expression(*pos)})"
        )
    leading = table.primary_key[0] if table.primary_key else None
    if table.primary_key:
        key = ", ".join(quote_ident(stored_column(c)) for c in table.primary_key)
        out.append(
            f"CREATE INDEX IF NOT EXISTS {quote_ident(base + '_key')} "
            f"ON {storage_name(table)} ({key})"
        )
    for col in table.columns:
        if col.indexed and col.name != leading and col.name not in (pos or ()):
            out.append(
                f"CREATE INDEX IF NOT EXISTS {quote_ident(base + '_' + col.name)} "
                f"ON {storage_name(table)} ({quote_ident(stored_column(col.name))})"
            )
    return out


# --- loading ---------------------------------------------------------------------------


def copy_arrow(cur, target: str, rows: pa.Table, columns: Iterable[str] | None = None) -> None:
    """COPY an Arrow table into ``target`` as CSV written by Arrow's C++ writer.

    NULL is the unquoted empty field and an empty string is ``""``, which is how
    PostgreSQL's CSV format tells them apart; doubles are written in their shortest
    round-trip form, so values arrive unchanged.
    """
    names = list(columns) if columns is not None else rows.column_names
    cols = ", ".join(quote_ident(n) for n in names)
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    with cur.copy(f"COPY {target} ({cols}) FROM STDIN (FORMAT csv)") as copy:
        for batch in rows.to_batches(max_chunksize=65536):
            buf = io.BytesIO()
            pacsv.write_csv(pa.Table.from_batches([batch]), buf, write_options=options)
            copy.write(buf.getvalue())


def _replace_rows(cur, table: TableSchema, rows: pa.Table, field: str | None) -> None:
    target = storage_name(table)
    if field is None:
        cur.execute(f"DELETE FROM {target}")
    else:
        cur.execute(f"DELETE FROM {target} WHERE {quote_ident(table.field_column)} = %s", [field])
    pos = position_columns(table)
    if pos is not None:
        rows = spatially_ordered(rows, *pos)
    elif table.order:
        rows = rows.sort_by([(c, "ascending") for c in table.order])
    copy_arrow(cur, target, rows, [stored_column(n) for n in rows.column_names])


STORAGE_ZONE_DEG = 1 / 60
"""Height of the declination zones rows are stored in (see `spatially_ordered`)."""


def spatially_ordered(rows: pa.Table, ra_column: str = "ra", dec_column: str = "dec") -> pa.Table:
    """Rows in storage order for a positional table: by 1' declination zone, then RA.

    A cone then reads a few contiguous runs of heap pages instead of one page per star
    (ordered by declination alone, the 1,800 stars of a 1' cone in a 400,000-star field
    lay on ~800 pages of ``rome.field_index``; zoned, on ~130). It is the order CLUSTER
    on the GiST index would give, without rewriting every field's rows on each ingest.
    """
    dec = rows.column(dec_column).to_numpy(zero_copy_only=False)
    ra = rows.column(ra_column).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        zone = np.floor((dec + 90.0) / STORAGE_ZONE_DEG)
    # lexsort puts NaN (NULL) last: no RA at the end of its zone, no Dec after every zone
    return rows.take(np.lexsort((ra, zone)))


def _authority(cur, requested: str | None) -> str:
    cur.execute("SELECT value FROM romerea.settings WHERE key = 'authority'")
    row = cur.fetchone()
    if row and requested and requested != row[0]:
        raise PostgresError(
            f"the database's DIDs use the authority {row[0]!r}; re-ingesting with "
            f"{requested!r} would mix them (use a new database)"
        )
    authority = row[0] if row else (requested or DEFAULT_AUTHORITY)
    if not authority.startswith("ivo://"):
        raise PostgresError(f"authority {authority!r} must be an ivo:// URI")
    cur.execute(
        "INSERT INTO romerea.settings VALUES ('authority', %s) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        [authority],
    )
    return authority


def _check_existing_tables(cur, url: str) -> None:
    for table in tap_tables():
        if table.virtual:
            continue
        schema, name = table.stored_schema, table.name
        if _needs_view(table):
            schema, name = "romerea", f"{table.stored_schema}_{table.name}"
        cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = %s ORDER BY ordinal_position",
            [schema, name],
        )
        have = [r[0] for r in cur.fetchall()]
        want = [stored_column(n) for n in table.column_names]
        if have and have != want:
            raise PostgresError(
                f"{redact(url)}: table {table.qualified_name} has other columns than this "
                "version of romerea-vo publishes; ingest into a new database"
            )


def ingest_fields_pg(
    url: str,
    field_dirs: Iterable[str | os.PathLike],
    *,
    authority: str | None = None,
    progress: bool = False,
    workers: int | None = 1,
) -> list[dict]:
    """Load (or replace) fields in a PostgreSQL database, in one transaction; on any error
    nothing is changed. Returns one summary dict per field; ``workers`` as for
    :func:`romerea_vo.store.ingest_fields`."""
    psycopg = _psycopg()
    con = connect(url)
    summaries = []
    try:
        with con.cursor() as cur:
            try:
                cur.execute(INTERNAL_DDL)
                _check_existing_tables(cur, url)
                stored = [t for t in tap_tables() if not t.virtual]
                for table in stored:
                    for statement in create_table_sql(table):
                        cur.execute(statement)
                did_authority = _authority(cur, authority)
                for directory in field_dirs:
                    with open_field(directory) as field:
                        tables = field_tables(
                            field, authority=did_authority, progress=progress, workers=workers
                        )
                        for name, rows in tables.items():
                            _replace_rows(cur, load_table_schema(name), rows, field.name)
                        cur.execute(
                            "INSERT INTO romerea.fields VALUES (%s, %s, %s, %s, %s, %s, %s) "
                            "ON CONFLICT (field) DO UPDATE SET directory = EXCLUDED.directory, "
                            "n_stars = EXCLUDED.n_stars, n_images = EXCLUDED.n_images, "
                            "era = EXCLUDED.era, ingested_at = EXCLUDED.ingested_at, "
                            "software = EXCLUDED.software",
                            fields_row(field),
                        )
                        summaries.append(ingest_summary(field.name, tables))
                for name, rows in tap_schema_tables().items():
                    _replace_rows(cur, load_table_schema(name), rows, None)
                for table in stored:
                    for statement in index_sql(table):
                        cur.execute(statement)
                con.commit()
            except BaseException:
                con.rollback()
                raise
        con.autocommit = True
        with con.cursor() as cur:
            for table in stored:
                cur.execute(f"ANALYZE {storage_name(table)}")
    except psycopg.Error as exc:
        raise PostgresError(f"ingest into {redact(url)} failed: {exc}".strip()) from None
    finally:
        con.close()
    return summaries


# --- serving ----------------------------------------------------------------------------


_COPY_CHUNK_BYTES = 8 * 2**20
"""CSV bytes parsed at once when streaming a result (whole rows)."""

# PostgreSQL type OIDs → Arrow types of result columns (anything else: text).
_ARROW_OF_OID = {
    16: pa.bool_(),
    21: pa.int16(),
    23: pa.int32(),
    20: pa.int64(),
    700: pa.float32(),
    701: pa.float64(),
    1700: pa.float64(),
    25: pa.string(),
    1043: pa.string(),
    1042: pa.string(),
    1021: pa.list_(pa.float32()),
    1022: pa.list_(pa.float64()),
    1005: pa.list_(pa.int16()),
    1007: pa.list_(pa.int32()),
    1016: pa.list_(pa.int64()),
}


class PgSession:
    """One request's connection, inside one transaction that is rolled back at the end."""

    target = "pgsphere"

    def __init__(self, db: PostgresDatabase):
        self._db = db
        self._con = db._acquire()
        self._cur = self._con.cursor()
        self._temp = 0
        self._read_only = False
        self._in_transaction = False
        self._streams: list[Generator[pa.RecordBatch, None, None]] = []
        self._closing = threading.Lock()
        self._closed = False

    # The same calls as the DuckDB session (romerea_vo.store.database.DuckDBSession).

    def register(self, name: str, rows: pa.Table) -> None:
        """Make ``rows`` readable as table ``name`` (a temporary table, analysed)."""
        if self._read_only:
            raise RuntimeError("tables must be registered before the first query")
        if not self._in_transaction:
            # The service role's transactions are read-only by default
            # (services/postgres/setup.sql); temporary tables need a writable one. The
            # role's privileges, not this default, are what protect the catalogue.
            self._cur.execute("BEGIN READ WRITE")
            self._in_transaction = True
        cols = []
        for f in rows.schema:
            pg = _pg_type_of_arrow(f.type)
            cols.append(f"{quote_ident(f.name)} {pg}")
        self._cur.execute(
            f"CREATE TEMP TABLE {quote_ident(name)} ({', '.join(cols)}) ON COMMIT DROP"
        )
        copy_arrow(self._cur, quote_ident(name), rows)
        self._cur.execute(f"ANALYZE {quote_ident(name)}")

    def _execute_reading(self, sql: str, params: list | None, timeout: float | None) -> None:
        """Run ``sql`` in the session's read-only transaction under ``timeout``.

        The connections are in autocommit mode and the session writes its own BEGIN:
        BEGIN, the timeout and the query then go to the server pipelined, one round trip
        instead of four (each costs both processes CPU). Each statement travels on its
        own through the extended protocol, which refuses several commands in one string.
        """
        setup = []
        if not self._in_transaction:
            setup.append("BEGIN READ ONLY")
            self._in_transaction = True
        elif not self._read_only:
            setup.append("SET TRANSACTION READ ONLY")
        self._read_only = True
        setup.append(f"SET LOCAL statement_timeout = {int(timeout * 1000) if timeout else 0}")
        with self._con.pipeline():
            for statement in setup:
                self._cur.execute(statement)
            self._cur.execute(sql, params)

    def fetchall(self, sql: str, params: list | None = None) -> list[tuple]:
        """Rows of a small query of ours (``?`` placeholders)."""
        psycopg = _psycopg()
        try:
            self._execute_reading(sql.replace("?", "%s"), params, None)
            return self._cur.fetchall()
        except psycopg.errors.QueryCanceled as exc:
            raise QueryInterrupted(str(exc).strip()) from None
        except psycopg.Error as exc:
            raise QueryFailed(str(exc).strip()) from None

    def arrow_table(self, sql: str, params: list | None = None) -> pa.Table:
        schema, batches = self.arrow(sql.replace("?", "%s") if params else sql, params=params)
        return pa.Table.from_batches(list(batches), schema=schema)

    def arrow(
        self,
        sql: str,
        *,
        batch_rows: int = 65536,
        timeout: float | None = None,
        params: list | None = None,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The result of ``sql`` as Arrow batches (the schema first, then the batches)."""
        psycopg = _psycopg()
        try:
            self._execute_reading(f"SELECT * FROM ({sql}) AS romerea_q LIMIT 0", params, timeout)
        except psycopg.errors.QueryCanceled as exc:
            raise QueryInterrupted(str(exc).strip()) from None
        except psycopg.Error as exc:
            raise QueryFailed(str(exc).strip()) from None
        names = [d.name for d in self._cur.description]
        types = [_ARROW_OF_OID.get(d.type_code, pa.string()) for d in self._cur.description]
        schema = pa.schema([pa.field(n, t) for n, t in zip(names, types, strict=True)])
        if params is None and not any(pa.types.is_list(t) for t in types):
            return schema, self._copy_batches(sql, schema)
        server_cursor = self._con.cursor(name=f"romerea_{self._next_name()}")
        try:
            server_cursor.execute(sql, params or [])
            first = server_cursor.fetchmany(batch_rows)
        except psycopg.errors.QueryCanceled as exc:
            raise QueryInterrupted(str(exc).strip()) from None
        except psycopg.Error as exc:
            raise QueryFailed(str(exc).strip()) from None

        def batches() -> Iterator[pa.RecordBatch]:
            rows = first
            try:
                while rows:
                    yield _batch(schema, rows)
                    if len(rows) < batch_rows:
                        return
                    rows = server_cursor.fetchmany(batch_rows)
            except psycopg.errors.QueryCanceled as exc:
                raise QueryInterrupted(str(exc).strip()) from None
            except psycopg.Error as exc:
                raise QueryFailed(str(exc).strip()) from None
            finally:
                with contextlib.suppress(psycopg.Error):
                    server_cursor.close()

        return schema, batches()

    def _copy_batches(self, sql: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """The rows as CSV from COPY, parsed by Arrow's C++ reader in chunks of whole rows
        (each COPY message is one row): several times faster than building Arrow arrays
        from Python row tuples. The first chunk is read before returning, so that errors
        surface here."""
        psycopg = _psycopg()
        names = [f"c{i}" for i in range(len(schema))]
        convert = pacsv.ConvertOptions(
            column_types=dict(zip(names, schema.types, strict=True)),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,  # "" is an empty string, unquoted empty NULL
            true_values=["t"],
            false_values=["f"],
        )

        def parse(buf: bytearray) -> list[pa.RecordBatch]:
            # One block for the whole chunk, no larger: a big block is allocated each time.
            read = pacsv.ReadOptions(column_names=names, block_size=len(buf) + 1)
            table = pacsv.read_csv(pa.py_buffer(bytes(buf)), read, convert_options=convert)
            return [
                pa.RecordBatch.from_arrays(b.columns, schema=schema) for b in table.to_batches()
            ]

        copy_block = self._cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)")
        copy = copy_block.__enter__()
        rows = iter(copy)

        def chunk() -> list[pa.RecordBatch] | None:
            buf = bytearray()
            try:
                for data in rows:
                    buf += data
                    if len(buf) >= _COPY_CHUNK_BYTES:
                        break
            except psycopg.errors.QueryCanceled as exc:
                raise QueryInterrupted(str(exc).strip()) from None
            except psycopg.Error as exc:
                raise QueryFailed(str(exc).strip()) from None
            return parse(buf) if buf else None

        try:
            first = chunk()
        except BaseException:
            with contextlib.suppress(Exception):
                copy_block.__exit__(None, None, None)
            raise

        def batches() -> Generator[pa.RecordBatch, None, None]:
            done = False
            try:
                got = first
                while got is not None:
                    yield from got
                    got = chunk()
                done = True
            finally:
                if not done:  # stopped early (MAXREC): cancel the rest of the COPY
                    with contextlib.suppress(Exception):
                        self._con.cancel()
                with contextlib.suppress(Exception):
                    copy_block.__exit__(None, None, None)

        # The COPY holds the connection's lock until this generator ends: close() ends it
        # (a caller may stop reading early, or never finish: a client that went away).
        stream = batches()
        self._streams.append(stream)
        return stream

    def _next_name(self) -> int:
        self._temp += 1
        return self._temp

    def interrupt(self) -> None:
        """Cancel the running statement (from another thread); a no-op once closed: the
        connection then belongs to the pool, and a late cancel would stop another
        request's statement."""
        with self._closing:
            if not self._closed:
                self._con.cancel()

    def close(self) -> None:
        with self._closing:
            if self._closed:
                return
            self._closed = True
        for stream in self._streams:
            with contextlib.suppress(Exception):
                stream.close()
        self._streams.clear()
        try:
            self._con.rollback()  # a no-op when no transaction began
        except Exception:
            self._con.close()  # broken: not returned to the pool
        finally:
            self._db._release(self._con)

    def __enter__(self) -> PgSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _batch(schema: pa.Schema, rows: list[tuple]) -> pa.RecordBatch:
    columns: list[tuple] = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = [pa.array(list(c), type=f.type) for c, f in zip(columns, schema, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _pg_type_of_arrow(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return "smallint"
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return "integer"
    if pa.types.is_integer(t):
        return "bigint"
    if pa.types.is_float32(t):
        return "real"
    if pa.types.is_floating(t):
        return "double precision"
    return "text"


class PostgresDatabase:
    """An ingested PostgreSQL database, for the services (same interface as
    :class:`romerea_vo.store.database.Database`)."""

    target = "pgsphere"

    def __init__(self, url: str, *, pool_size: int = 8, work_mem: str | None = None):
        """``work_mem``: each session's sort/hash memory (e.g. ``"64MB"``). Raises
        PostgresError when the database is not a romerea-vo one."""
        self.url = url
        self.work_mem = work_mem
        self.path = redact(url)
        psycopg = _psycopg()
        con = connect(url, autocommit=True)
        try:
            with con.cursor() as cur:
                cur.execute("SELECT field, directory, n_stars, n_images, era FROM romerea.fields")
                rows = cur.fetchall()
                cur.execute("SELECT value FROM romerea.settings WHERE key = 'authority'")
                setting = cur.fetchone()
        except psycopg.errors.UndefinedTable:
            raise PostgresError(
                f"{self.path} is not a romerea-vo database (no romerea.fields table); "
                f"create it with `romerea-vo ingest FIELD_DIR --db {self.path}`"
            ) from None
        finally:
            con.close()
        self.fields = field_records(rows)
        self.authority: str = setting[0] if setting else DEFAULT_AUTHORITY
        self.has_rome = True
        self.catalogues: list[TableSchema] = []
        self.tables: list[TableSchema] = tap_tables()
        self._pool: queue.LifoQueue = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._open_fields = OpenFields(self.fields, PostgresError)

    def physical_name(self, table: TableSchema) -> str:
        return physical_name(table)

    def session(self) -> PgSession:
        return PgSession(self)

    def _acquire(self):
        self._slots.acquire()
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            try:
                con = connect(self.url, autocommit=True)
                # JIT compilation of geometry expressions costs more than running them.
                con.execute("SET jit = off")
                # The catalogue is read from memory or SSD: at the default random_page_cost
                # (4, spinning disks) the planner ANDs a 1' cone's bitmap with the b-tree
                # of a whole field (400,000 rows) to save heap fetches, 10x slower.
                con.execute("SET random_page_cost = 1.1")
                if self.work_mem:  # per sort/hash node: bounds a runaway join's memory
                    con.execute("SELECT set_config('work_mem', %s, false)", [self.work_mem])
                return con  # in autocommit mode: each session begins its transaction
            except BaseException:
                self._slots.release()
                raise

    def _release(self, con) -> None:
        if con.closed or con.broken:
            con.close()
        else:
            self._pool.put(con)
        self._slots.release()

    def field(self, name: str) -> Field:
        return self._open_fields.get(name)

    def metadata_is_current(self) -> bool:
        session = self.session()
        try:
            stored = {
                name: session.fetchall(f"SELECT {', '.join(cols)} FROM {name}")
                for name, cols in CURRENT_CHECK.items()
            }
        except Exception:
            return False
        finally:
            session.close()
        return metadata_matches(self.tables, stored)

    def close(self) -> None:
        self._open_fields.close()
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                break
