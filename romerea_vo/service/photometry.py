"""``rome.photometry``: the points of a bounded set of stars, made from the cubes per query.

The table is published in TAP_SCHEMA but never stored: a field has ~10^9 points. A query
may use it when the WHERE clause of the SELECT that reads it names the stars with
top-level conditions (``field = 'F' AND field_id IN (1, 2)``); those stars' points (all
quality levels) are read from the HDF5 cubes into an Arrow table registered for that one
query. Anything else gets an error explaining the restriction.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
from sqlglot import exp

from ..adql.parser import parse
from ..errors import InvalidRequestError, StarNotFoundError
from ..ids import parse_field_id
from ..lightcurves import lightcurves
from ..store.contract import CatalogDatabase
from ..store.ddl import ARROW_TYPES
from ..votable.schema import TableSchema

MAX_STARS = 1000
MAX_SAMPLE_ROWS = 100_000
RESTRICTION = (
    "a query on rome.photometry must name its stars with top-level WHERE conditions on "
    "that table, e.g. WHERE field = 'ROME-FIELD-01' AND field_id IN (1, 2) (a field's "
    f"field_id runs from 1 to its number of stars; at most {MAX_STARS} stars), or be a "
    f"plain SELECT TOP n (n <= {MAX_SAMPLE_ROWS}) sample without WHERE, GROUP BY, "
    "ORDER BY or joins"
)
SAMPLE = "*sample*"
"""Key of :func:`requested_stars`' result for a ``SELECT TOP n`` sample: value [n]."""


def _is_photometry(table: exp.Table) -> bool:
    return table.name.lower() == "photometry" and table.db.lower() in ("", "rome")


def photometry_query(adql: str) -> exp.Expression | None:
    """The parsed query if it reads rome.photometry, else None (a parse error is left to
    the translator, which reports it with its position)."""
    if "photometry" not in adql.lower():
        return None
    try:
        tree = parse(adql)
    except Exception:
        return None
    return tree if any(_is_photometry(t) for t in tree.find_all(exp.Table)) else None


def _column_of(node: exp.Expr, names: set[str], column: str) -> bool:
    return (
        isinstance(node, exp.Column)
        and node.name.lower() == column
        and (not node.table or node.table.lower() in names)
    )


def _literals(node: exp.Expr, kind: type) -> list | None:
    values = node.expressions if isinstance(node, exp.Tuple) else [node]
    out = []
    for v in values:
        if isinstance(v, exp.Neg) and isinstance(v.this, exp.Literal):
            return None
        if not isinstance(v, exp.Literal):
            return None
        if kind is str and v.is_string:
            out.append(v.this)
        elif kind is int and not v.is_string and parse_field_id(v.this) is not None:
            out.append(int(v.this))
        else:
            return None
    return out


def _conjuncts(where: exp.Expr | None) -> Iterable[exp.Expr]:
    if where is None:
        return []
    node = where.this if isinstance(where, exp.Where) else where
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return [*_conjuncts(node.left), *_conjuncts(node.right)]
    return [node]


def _restriction(select: exp.Select, names: set[str]) -> tuple[list[str], list[int]] | None:
    fields: list[str] | None = None
    ids: list[int] | None = None
    for cond in _conjuncts(select.args.get("where")):
        if isinstance(cond, exp.EQ):
            for col, lit in ((cond.left, cond.right), (cond.right, cond.left)):
                if _column_of(col, names, "field") and (vals := _literals(lit, str)):
                    fields = vals if fields is None else [f for f in fields if f in vals]
                if _column_of(col, names, "field_id") and (vals := _literals(lit, int)):
                    ids = vals if ids is None else [i for i in ids if i in vals]
        elif isinstance(cond, exp.In) and not cond.args.get("query"):
            lits = exp.Tuple(expressions=cond.expressions)
            if _column_of(cond.this, names, "field") and (vals := _literals(lits, str)):
                fields = vals if fields is None else [f for f in fields if f in vals]
            if _column_of(cond.this, names, "field_id") and (vals := _literals(lits, int)):
                ids = vals if ids is None else [i for i in ids if i in vals]
    if fields is None or ids is None:
        return None
    return fields, ids


def _sample_size(
    select: exp.Select | None, table: exp.Table, maxrec: int | None = None
) -> int | None:
    """n for ``SELECT TOP n ... FROM rome.photometry`` with nothing else that needs every
    row (what TOPCAT and taplint send to look at a table), else None. Without TOP, a
    ``maxrec`` within the sample limit plays its part: only that many rows are returned
    anyway (taplint sends ``SELECT col FROM table`` with MAXREC=0)."""
    if select is None or table.parent is not select.args.get("from_"):
        return None
    if any(select.args.get(k) for k in ("where", "group", "order", "joins", "having")):
        return None
    limit = select.args.get("limit")
    if limit is None:
        # MAXREC bounds the rows of a top-level SELECT of columns (not of an aggregate,
        # a function or DISTINCT, which would need every row)
        items = [e.this if isinstance(e, exp.Alias) else e for e in select.expressions]
        plain = all(isinstance(e, exp.Column | exp.Star) for e in items)
        if maxrec is None or not plain or select.parent or select.args.get("distinct"):
            return None
        return maxrec if maxrec <= MAX_SAMPLE_ROWS else None
    value = limit.expression if isinstance(limit, exp.Limit) else None
    if not isinstance(value, exp.Literal) or value.is_string or not value.this.isdigit():
        return None
    n = int(value.this)
    return n if n <= MAX_SAMPLE_ROWS else None


def requested_stars(
    adql: str | exp.Expression, *, maxrec: int | None = None
) -> dict[str, list[int]]:
    """The stars each reference to rome.photometry is restricted to, merged by field.
    ``adql``: the query text or its tree from :func:`photometry_query`; ``maxrec``: the
    query's MAXREC, which bounds a plain top-level SELECT without TOP.

    Raises InvalidRequestError when any reference is not bounded."""
    tree = parse(adql) if isinstance(adql, str) else adql
    wanted: dict[str, set[int]] = {}
    for table in tree.find_all(exp.Table):
        if not _is_photometry(table):
            continue
        select = table.find_ancestor(exp.Select)
        names = {table.alias_or_name.lower(), "photometry"}
        found = _restriction(select, names) if select is not None else None
        if found is None:
            n = _sample_size(select, table, maxrec)
            if n is None:
                raise InvalidRequestError(f"rome.photometry is not restricted: {RESTRICTION}")
            wanted.setdefault(SAMPLE, set()).add(n)
            continue
        fields, ids = found
        for f in fields:
            wanted.setdefault(f, set()).update(ids)
    total = sum(len(v) for k, v in wanted.items() if k != SAMPLE)
    if total > MAX_STARS:
        raise InvalidRequestError(
            f"rome.photometry is restricted to {total} stars; the limit is {MAX_STARS}"
        )
    return {f: sorted(v) for f, v in wanted.items()}


def _sample(db: CatalogDatabase, n_rows: int) -> list:
    """The first stars of the first field(s), enough for ``n_rows`` points."""
    parts, have = [], 0
    for name in db.fields:
        field = db.field(name)
        start = 1
        while have < n_rows and start <= min(field.n_stars, MAX_STARS):
            ids = list(range(start, min(field.n_stars, start + 49) + 1))
            table = lightcurves(field, ids, quality="all")
            parts.append(table)
            have += len(table)
            start += 50
        if have >= n_rows:
            break
    return parts


def photometry_rows(
    db: CatalogDatabase, stars: dict[str, list[int]], schema: TableSchema
) -> pa.Table:
    """The points of ``stars`` (every quality level) as an Arrow table shaped by ``schema``.

    Unknown fields or field_ids simply contribute no rows, as a WHERE clause would."""
    parts = []
    if SAMPLE in stars:
        parts += _sample(db, max(stars[SAMPLE]))
    for field_name, ids in stars.items():
        if field_name not in db.fields:
            continue
        field = db.field(field_name)
        valid = [i for i in ids if 1 <= i <= field.n_stars]
        if not valid:
            continue
        try:
            table = lightcurves(field, valid, quality="all")
        except StarNotFoundError:
            continue
        parts.append(table)
    arrays = []
    for col in schema.columns:
        dtype = ARROW_TYPES[col.datatype]
        chunks = []
        for t in parts:  # a column an older cube layout lacks is NULL for its stars
            if col.name in t.colnames:
                data = np.asarray(t[col.name])
                if data.dtype.kind in "SU":
                    data = data.astype(str).astype(object)
                chunks.append(pa.array(data, type=dtype))
            else:
                chunks.append(pa.nulls(len(t), type=dtype))
        arrays.append(pa.concat_arrays(chunks) if chunks else pa.array([], type=dtype))
    return pa.Table.from_arrays(arrays, names=schema.column_names)
