"""The public entry point: ADQL text → SQL for one target engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from .analyzer import Analyzer, QueryOut, SyntaxOnly
from .catalog import Catalog
from .errors import ADQLError
from .model import SpatialJoin, VType
from .parser import parse
from .targets import get_backend

T = TypeVar("T")


@dataclass
class OutputColumn:
    """One column of the result, in order. ``name`` is unique within the result."""

    name: str
    source: tuple[str, str] | None  # (qualified table name, column name) of a plain column
    datatype: str | None
    xtype: str | None = None
    arraysize: str | None = None
    unit: str | None = None


@dataclass
class Translation:
    sql: str
    columns: list[OutputColumn] = field(default_factory=list)
    top: int | None = None  # the TOP of the outermost SELECT, if any
    spatial_joins: list[SpatialJoin] = field(default_factory=list)
    """Positional joins the caller must provide as relations (``spatial_join_core``)."""


def translate(
    adql: str,
    catalog: Catalog,
    *,
    target: str = "duckdb",
    udfs: Mapping[str, int | None] | None = None,
    spatial_join_core: bool = False,
) -> Translation:
    """Validate an ADQL 2.1 query against ``catalog`` and translate it for ``target``.

    ``udfs`` declares user-defined functions (name → number of arguments, None for any);
    the target must provide them under the same name. With ``spatial_join_core`` (and a
    target that supports it), positional joins between tables with a ``row_key`` read
    their pairs from relations listed in ``Translation.spatial_joins``, which the caller
    computes (:mod:`.spatial_join`). Raises :class:`ADQLError`.
    """
    if not isinstance(adql, str):
        raise ADQLError("the query must be text")
    backend = get_backend(target)
    if spatial_join_core and hasattr(backend, "spatial_join_core"):
        backend.spatial_join_core = True

    def run() -> tuple[QueryOut, str]:
        out = Analyzer(adql, catalog, backend, udfs or {}).run(parse(adql))
        return out, backend.generate(out.sql)

    out, sql = _guarded(run)
    columns = [_column(o.sql_name, o.value.type, o.value.source) for o in out.outputs]
    return Translation(sql, columns, out.top, list(getattr(backend, "spatial_joins", [])))


def check_syntax(adql: str, *, udfs: Mapping[str, int | None] | None = None) -> None:
    """Check that ``adql`` is a query of the ADQL 2.1 grammar this service accepts, without
    a catalogue: the parser and every syntactic rule of :func:`translate` (reserved words,
    functions and their arity, with ``udfs`` declared as for :func:`translate`, TOP/OFFSET,
    named derived tables, join conditions, one SELECT statement...), but no table or column
    lookups and no type checks. Raises :class:`ADQLError`."""
    if not isinstance(adql, str):
        raise ADQLError("the query must be text")

    def run() -> None:
        Analyzer(adql, Catalog(()), SyntaxOnly(), udfs or {}, semantic=False).run(parse(adql))

    _guarded(run)


def _guarded(run: Callable[[], T]) -> T:
    """``run()``, with every failure turned into an ADQLError."""
    try:
        return run()
    except ADQLError:
        raise
    except RecursionError:
        raise ADQLError("the query is nested too deeply") from None
    except Exception as exc:
        # A bug, not the user's fault; keep the cause chained for the service log.
        raise ADQLError(
            f"internal error while translating the query ({type(exc).__name__}: {exc}); "
            "please report it"
        ) from exc


def _column(name: str, vtype: VType, source: tuple[str, str] | None) -> OutputColumn:
    datatype = vtype.datatype
    arraysize = vtype.arraysize
    if datatype is None:
        datatype, arraysize = {
            "int": ("long", None),
            "float": ("double", None),
            "string": ("char", "*"),
            "bool": ("boolean", None),
            "timestamp": ("char", "*"),
            "null": ("char", "*"),
        }.get(vtype.kind, (None, None))
    xtype = vtype.xtype
    if vtype.kind == "timestamp" and xtype is None:
        xtype = "timestamp"
    unit = vtype.unit[1] if vtype.unit and vtype.unit[0] == "u" and vtype.unit[1] else None
    return OutputColumn(name, source, datatype, xtype, arraysize, unit)
