"""Validation and target-independent rewriting of a parsed ADQL query.

The analyser walks sqlglot's tree once. It resolves every table and column against the
catalogue (scopes: FROM items, USING/NATURAL joins, derived tables, CTEs, correlated
subqueries, ORDER BY/GROUP BY aliases and positions), checks functions and their
arguments, infers types, and builds the output tree: physical tables with unique
aliases, fully qualified columns, ``*`` expanded, and every function, division, cast and
geometry handed to the target backend.

Anything sqlglot parsed but ADQL does not have is rejected here: the tree is checked
against a whitelist of node types and of each node's clauses.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlglot import exp

from . import frames
from .catalog import Catalog, ColumnInfo, TableInfo, name_matches
from .errors import ADQLError, position
from .functions import (
    FUNCTIONS,
    GEOMETRY_CONSTRUCTORS,
    TYPE_PRESERVING,
    UNIT_PRESERVING,
    arity_text,
)
from .model import (
    DOUBLE,
    FLOAT,
    INT,
    LONG,
    NULL,
    STRING,
    TIMESTAMP,
    UNKNOWN,
    Circle,
    Geometry,
    Point,
    Polygon,
    Stored,
    Value,
    VType,
    column_type,
    geometry_type,
    shape_of,
)
from .parser import node_offset
from .reserved import is_reserved
from .targets.base import Backend

_SET_OPS = (exp.Union, exp.Except, exp.Intersect)
_NUMBER = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\Z")
_COMPARISONS = {exp.EQ: "=", exp.NEQ: "<>", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">="}
_FLIP: dict[type[exp.Expression], type[exp.Expression]] = {
    exp.LT: exp.GT,
    exp.LTE: exp.GTE,
    exp.GT: exp.LT,
    exp.GTE: exp.LTE,
}
_SELECT_ARGS = {
    "expressions",
    "distinct",
    "from_",
    "joins",
    "where",
    "group",
    "having",
    "order",
    "limit",
    "offset",
    "with_",
}
_SETOP_ARGS = {"this", "expression", "distinct", "order", "offset", "with_"}
_TABLE_ARGS = {"this", "db", "catalog", "alias", "joins"}
_JOIN_ARGS = {"this", "kind", "side", "method", "on", "using"}


@dataclass
class ColRef:
    """A column visible in a scope."""

    name: str
    quoted: bool  # published as a delimited name
    make_sql: Callable[[], exp.Expression]
    type: VType
    source: tuple[str, str] | None
    relation: Relation | None


@dataclass
class Relation:
    """One FROM item: a table, a derived table or a CTE reference."""

    alias: str  # SQL alias, unique in the whole query
    exposed: tuple[tuple[str, bool], ...]  # the name users qualify columns with
    fallback: tuple[tuple[str, bool], ...] | None  # the table name behind an alias
    label: str
    columns: list[ColRef] = field(default_factory=list)
    open: bool = False  # grammar-only mode: its columns are not known, any name may be one


@dataclass
class Group:
    """FROM items joined with JOIN (a comma starts a new group); USING and NATURAL joins
    merge their common columns, which then appear once."""

    relations: list[Relation]
    visible: list[ColRef]


@dataclass
class Output:
    name: str  # the name ADQL sees
    sql_name: str  # unique within its query
    value: Value
    opaque: bool = False  # grammar-only mode: the unknown columns of a '*'


@dataclass
class QueryOut:
    sql: exp.Expression
    outputs: list[Output]
    top: int | None = None


@dataclass
class Cte:
    name: str
    quoted: bool
    sql_name: str
    outputs: list[Output]


class Scope:
    def __init__(self, parent: Scope | None):
        self.parent = parent
        self.groups: list[Group] = []
        self.outputs: list[Output] | None = None

    @property
    def relations(self) -> list[Relation]:
        return [r for g in self.groups for r in g.relations]

    def visible(self) -> list[ColRef]:
        return [c for g in self.groups for c in g.visible]


@dataclass
class Ctx:
    clause: str  # select, where, on, group, having, order, args
    aggregates: bool
    aliases: list[Output] | None = None  # output aliases usable as a fallback


def _ident(name: str) -> exp.Identifier:
    return exp.Identifier(this=name, quoted=True)


def _qualified(alias: str, column: str) -> Callable[[], exp.Expression]:
    return lambda: exp.Column(this=_ident(column), table=_ident(alias))


def _loose(column: str) -> Callable[[], exp.Expression]:
    return lambda: exp.Column(this=_ident(column))


def _strip(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _int_literal(node: exp.Expression) -> int | None:
    node = _strip(node)
    if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
        return int(node.this)
    return None


def _show_name(name: str, quoted: bool) -> str:
    return '"' + name.replace('"', '""') + '"' if quoted else name


class Analyzer:
    """Validates and rewrites one query.

    With ``semantic=False`` (:func:`~romerea_vo.adql.check_syntax`) the same code checks
    the grammar only: tables are not looked up in the catalogue (their columns are
    unknown, so any column name resolves, ambiguity and "not in FROM" included), types
    are not checked, coordinate system names and STC-S strings are not interpreted, and
    the placement of aggregates is not checked. Every syntactic rule still applies:
    node and clause whitelist, reserved words, functions and their arity, TOP/OFFSET,
    aliases of derived tables, join conditions, literals. Pass :class:`SyntaxOnly` as the
    backend then.
    """

    def __init__(
        self,
        text: str,
        catalog: Catalog,
        backend: Backend,
        udfs: Mapping[str, int | None],
        *,
        semantic: bool = True,
    ):
        self.text = text
        self.catalog = catalog
        self.backend = backend
        self.semantic = semantic
        self.udfs = {name.upper(): (name, arity) for name, arity in udfs.items()}
        self._aliases: set[str] = set()
        self.ctes: list[Cte] = []

    # --- helpers ----------------------------------------------------------------------

    def error(self, node: exp.Expression | None, message: str) -> ADQLError:
        line, col = position(self.text, node_offset(node) if node is not None else None)
        return ADQLError(message, line, col)

    def new_alias(self, base: str) -> str:
        base = base or "t"
        alias, k = base, 1
        while alias.lower() in self._aliases:
            alias = f"{base}_{k}"
            k += 1
        self._aliases.add(alias.lower())
        return alias

    def check_name(self, ident: exp.Expression | None) -> None:
        if isinstance(ident, exp.Identifier) and not ident.quoted and is_reserved(ident.name):
            raise self.error(
                ident,
                f"{ident.name!r} is a reserved word in ADQL; to use it as a name, "
                f'write it in double quotes: "{ident.name}"',
            )

    def check_args(self, node: exp.Expression, allowed: set[str], what: str) -> None:
        for key, value in node.args.items():
            if key in allowed or value in (None, False, [], ""):
                continue
            if key == "limit" and isinstance(node, exp.Select):
                continue
            raise self.error(node, f"{_describe(key)} is not supported in {what}")

    def number(self, x: float | int) -> Value:
        integer = isinstance(x, int)
        text = str(abs(x)) if integer else repr(abs(float(x)))
        sql = self.backend.number(text, integer)
        if x < 0:
            sql = exp.Neg(this=sql)
        return Value(sql, INT if integer else FLOAT, const=x)

    # --- queries ----------------------------------------------------------------------

    def run(self, tree: exp.Expression) -> QueryOut:
        if isinstance(tree, exp.Subquery) and isinstance(tree.this, (exp.Select, *_SET_OPS)):
            tree = tree.this  # a parenthesised whole query
        if not isinstance(tree, (exp.Select, *_SET_OPS)):
            raise self.error(tree, "an ADQL query must start with SELECT (or WITH)")
        with_sql = None
        with_ = tree.args.get("with_")
        if with_ is not None:
            with_sql = self.with_clause(with_)
        out = self.query(tree, None, top_level=True)
        if isinstance(out.sql, exp.Select):
            for item, o in zip(out.sql.expressions, out.outputs, strict=True):
                if o.value.type.kind in ("null", "timestamp"):
                    item.set("this", self.backend.output(o.value))
        if with_sql is not None:
            out.sql.set("with_", with_sql)
        return out

    def with_clause(self, node: exp.With) -> exp.With:
        if node.args.get("recursive"):
            raise self.error(node, "WITH RECURSIVE is not supported")
        ctes = self.ctes
        items = []
        for cte in node.expressions:
            self.check_args(cte, {"this", "alias"}, "WITH")
            alias = cte.args.get("alias")
            if alias is None or not alias.this or alias.args.get("columns"):
                raise self.error(cte, "each WITH query needs a name: WITH name AS (SELECT ...)")
            ident = alias.this
            self.check_name(ident)
            if any(name_matches(ident.name, ident.quoted, c.name, c.quoted) for c in ctes):
                raise self.error(ident, f"WITH query {ident.name!r} is defined twice")
            inner = self.query(cte.this, None)
            sql_name = self.new_alias(ident.name)
            ctes.append(Cte(ident.name, ident.quoted, sql_name, inner.outputs))
            items.append(exp.CTE(this=inner.sql, alias=exp.TableAlias(this=_ident(sql_name))))
        return exp.With(expressions=items)

    def query(
        self,
        node: exp.Expression,
        outer: Scope | None,
        top_level: bool = False,
    ) -> QueryOut:
        if not top_level and node.args.get("with_") is not None:
            raise self.error(node, "WITH is allowed only at the start of the whole query")
        if isinstance(node, exp.Select):
            return self.select(node, outer)
        if isinstance(node, _SET_OPS):
            return self.setop(node, outer)
        if isinstance(node, exp.Subquery) and node.args.get("alias") is None:
            inner = self.query(node.this, outer)
            return QueryOut(exp.Subquery(this=inner.sql), inner.outputs)
        raise self.error(node, "a query (SELECT ...) is needed here")

    def setop(self, node: exp.Expression, outer: Scope | None) -> QueryOut:
        kind = type(node).__name__.upper()
        if node.args.get("limit") is not None:
            raise self.error(node.args["limit"], "LIMIT is not ADQL; use SELECT TOP n")
        self.check_args(node, _SETOP_ARGS, kind)
        left = self.member(node.this, outer)
        right = self.member(node.expression, outer)
        sql = type(node)(
            this=left.sql, expression=right.sql, distinct=bool(node.args.get("distinct"))
        )
        outputs = [
            Output(o.name, o.sql_name, Value(o.value.sql, o.value.type, source=o.value.source))
            for o in left.outputs
        ]
        self.order_offset(node, sql, outputs, None)
        return QueryOut(sql, outputs)

    def member(self, node: exp.Expression, outer: Scope | None) -> QueryOut:
        if node.args.get("with_") is not None:
            raise self.error(node, "WITH is allowed only at the start of the whole query")
        out = self.query(node, outer)
        sql = out.sql
        needs_parens = isinstance(sql, _SET_OPS) or (
            isinstance(sql, exp.Select)
            and any(sql.args.get(k) for k in ("limit", "order", "offset"))
        )
        if needs_parens:
            out.sql = exp.Subquery(this=sql)
        return out

    def select(self, node: exp.Select, outer: Scope | None) -> QueryOut:
        self.check_args(node, _SELECT_ARGS, "an ADQL query")
        distinct = node.args.get("distinct")
        if distinct is not None and (distinct.args.get("on") or distinct.expressions):
            raise self.error(node, "DISTINCT ON is not ADQL")
        if not node.expressions:
            raise self.error(node, "the SELECT list is empty")
        from_ = node.args.get("from_")
        if from_ is None:
            raise self.error(
                node.expressions[0], "the query has no FROM clause (SELECT ... FROM table)"
            )
        scope = Scope(outer)
        sql = exp.Select()
        self.from_clause(from_, node.args.get("joins") or [], scope, sql)

        where = node.args.get("where")
        if where is not None:
            sql.set("where", exp.Where(this=self.cond(where.this, scope, Ctx("where", False))))

        outputs = self.select_list(node.expressions, scope)
        scope.outputs = outputs
        group = node.args.get("group")
        if group is not None:
            self.check_args(group, {"expressions"}, "GROUP BY")
            if not group.expressions:
                raise self.error(group, "GROUP BY needs at least one column")
            ctx = Ctx("group", False, outputs)
            items = [self.value(e, scope, ctx).sql for e in group.expressions]
            sql.set("group", exp.Group(expressions=items))
        having = node.args.get("having")
        if having is not None:
            cond = self.cond(having.this, scope, Ctx("having", True, outputs))
            sql.set("having", exp.Having(this=cond))

        sql.set(
            "expressions",
            [exp.Alias(this=o.value.sql, alias=_ident(o.sql_name)) for o in outputs],
        )
        if distinct is not None:
            sql.set("distinct", exp.Distinct())
        top = None
        limit = node.args.get("limit")
        if limit is not None:
            if not limit.meta.get("top"):
                raise self.error(limit, "LIMIT is not ADQL; use SELECT TOP n")
            top = self.whole_number(limit.expression, "TOP")
            sql.set("limit", exp.Limit(expression=exp.Literal.number(top)))
        self.order_offset(node, sql, outputs, scope)
        return QueryOut(sql, outputs, top)

    def whole_number(self, node: exp.Expression | None, what: str) -> int:
        value = _int_literal(node) if node is not None else None
        if value is None:
            raise self.error(node, f"{what} needs a non-negative whole number")
        return value

    def order_offset(
        self,
        node: exp.Expression,
        sql: exp.Expression,
        outputs: list[Output],
        scope: Scope | None,
    ) -> None:
        order = node.args.get("order")
        if order is not None:
            self.check_args(order, {"expressions"}, "ORDER BY")
            if not order.expressions:
                raise self.error(order, "ORDER BY needs at least one column")
            items = []
            for ordered in order.expressions:
                self.check_args(ordered, {"this", "desc", "nulls_first"}, "ORDER BY")
                target = self.order_item(ordered.this, outputs, scope)
                desc = bool(ordered.args.get("desc"))
                # NULLs sort as if larger than any value (PostgreSQL's rule), on every target.
                items.append(exp.Ordered(this=target, desc=desc, nulls_first=desc))
            sql.set("order", exp.Order(expressions=items))
        offset = node.args.get("offset")
        if offset is not None:
            self.check_args(offset, {"expression"}, "OFFSET")
            n = self.whole_number(offset.expression, "OFFSET")
            sql.set("offset", exp.Offset(expression=exp.Literal.number(n)))

    def order_item(
        self, node: exp.Expression, outputs: list[Output], scope: Scope | None
    ) -> exp.Expression:
        plain = _strip(node)
        if isinstance(plain, exp.Literal) and not plain.is_string:
            pos = _int_literal(plain)
            bound = None if any(o.opaque for o in outputs) else len(outputs)
            if pos is None or pos < 1 or (bound is not None and pos > bound):
                raise self.error(
                    plain, f"ORDER BY {plain.this}: a position must be 1 to {len(outputs)}"
                )
            return exp.Literal.number(pos)
        if isinstance(plain, exp.Column) and not plain.args.get("table"):
            ident = plain.this
            if isinstance(ident, exp.Identifier):
                hits = [o for o in outputs if name_matches(ident.name, ident.quoted, o.name, False)]
                if len(hits) == 1:
                    return exp.Column(this=_ident(hits[0].sql_name))
                if len(hits) > 1 and scope is None:
                    raise self.error(plain, f"ORDER BY {ident.name}: more than one such column")
        if scope is None:
            raise self.error(
                node, "ORDER BY after a set operation takes result column names or positions"
            )
        return self.value(node, scope, Ctx("order", True, outputs)).sql

    # --- FROM -------------------------------------------------------------------------

    def from_clause(
        self,
        from_: exp.From,
        joins: list[exp.Join],
        scope: Scope,
        sql: exp.Select,
    ) -> None:
        first_sql, first_group = self.from_item(from_.this, scope)
        scope.groups.append(first_group)
        sql.set("from_", exp.From(this=first_sql))
        out_joins = []
        for join in joins:
            out_joins.append(self.join(join, scope))
        if out_joins:
            sql.set("joins", out_joins)

    def from_item(self, node: exp.Expression, scope: Scope) -> tuple[exp.Expression, Group]:
        """One FROM item; returns its SQL and the group of relations it makes visible."""
        joins = node.args.get("joins") if isinstance(node, (exp.Table, exp.Subquery)) else None
        if joins:
            # The inside of a parenthesised join, "(a JOIN b ON ...)": sqlglot hangs the
            # joins on the first item.
            head = node.copy()
            head.set("joins", None)
            sub = Scope(scope.parent)
            head_sql, group = self.from_item(head, scope)
            sub.groups.append(group)
            head_sql.set("joins", [self.join(j, sub, in_group=True) for j in joins])
            return head_sql, Group(list(sub.relations), list(sub.groups[-1].visible))
        if isinstance(node, exp.Table):
            self.check_args(node, _TABLE_ARGS, "FROM")
            relation, table_sql = self.table(node)
            return table_sql, Group([relation], list(relation.columns))
        if isinstance(node, exp.Subquery):
            alias = node.args.get("alias")
            inner = node.this
            if alias is None and isinstance(inner, (exp.Table, exp.Subquery)):
                sql, group = self.from_item(inner, scope)
                return (exp.Subquery(this=sql) if inner.args.get("joins") else sql), group
            self.check_args(node, {"this", "alias"}, "FROM")
            if alias is None or not alias.this:
                raise self.error(node, "a subquery in FROM needs a name: (SELECT ...) AS name")
            if alias.args.get("columns"):
                raise self.error(alias, "column names after a table alias are not ADQL")
            self.check_name(alias.this)
            # Derived tables see the enclosing query's outer scopes, not their siblings.
            out = self.query(inner, scope.parent)
            sql_alias = self.new_alias(alias.this.name)
            relation = Relation(
                sql_alias, ((alias.this.name, alias.this.quoted),), None, alias.this.name
            )
            relation.columns = self.derived_columns(relation, out.outputs)
            relation.open = any(o.opaque for o in out.outputs)
            sql = exp.Subquery(this=out.sql, alias=exp.TableAlias(this=_ident(sql_alias)))
            return sql, Group([relation], list(relation.columns))
        if isinstance(node, (exp.Select, *_SET_OPS)):
            raise self.error(node, "a subquery in FROM needs a name: (SELECT ...) AS name")
        raise self.error(node, "a table name or a subquery is needed here")

    def derived_columns(self, relation: Relation, outputs: list[Output]) -> list[ColRef]:
        return [
            ColRef(
                o.name,
                False,
                _qualified(relation.alias, o.sql_name),
                o.value.type,
                o.value.source,
                relation,
            )
            for o in outputs
            if not o.opaque
        ]

    def table(self, node: exp.Table) -> tuple[Relation, exp.Expression]:
        parts_nodes = [
            p for p in (node.args.get(k) for k in ("catalog", "db", "this")) if p is not None
        ]
        for part in parts_nodes:
            if isinstance(part, exp.Dot):
                raise self.error(
                    node, "a table name has at most three parts (catalog.schema.table)"
                )
            if not isinstance(part, exp.Identifier):
                what = (
                    f"{part.name}(...) is a table function; t"
                    if isinstance(part, exp.Anonymous)
                    else "T"
                )
                raise self.error(
                    node,
                    f"{what}able functions are not allowed in FROM (use a table name "
                    "or a subquery)",
                )
            self.check_name(part)
        parts = [(p.name, p.quoted) for p in parts_nodes]
        alias_node = node.args.get("alias")
        alias_ident = None
        if alias_node is not None:
            if alias_node.args.get("columns"):
                raise self.error(alias_node, "column names after a table alias are not ADQL")
            alias_ident = alias_node.this
            self.check_name(alias_ident)
        offset = node_offset(node)
        line, col = position(self.text, offset)

        cte = None
        if len(parts) == 1:
            for c in self.ctes:
                if name_matches(parts[0][0], parts[0][1], c.name, c.quoted):
                    cte = c
        exposed: tuple[tuple[str, bool], ...]
        if cte is not None:
            exposed = (
                ((alias_ident.name, alias_ident.quoted),)
                if alias_ident
                else ((cte.name, cte.quoted),)
            )
            sql_alias = self.new_alias(exposed[0][0])
            relation = Relation(sql_alias, exposed, None, cte.name)
            relation.columns = self.derived_columns(relation, cte.outputs)
            relation.open = any(o.opaque for o in cte.outputs)
            cte_sql = exp.Table(
                this=_ident(cte.sql_name), alias=exp.TableAlias(this=_ident(sql_alias))
            )
            return relation, cte_sql

        if self.semantic:
            info = self.catalog.lookup(parts, line, col)
        else:  # grammar only: a table with unknown columns
            info = TableInfo(".".join(_show_name(n, q) for n, q in parts), "t", ())
        if alias_ident is not None:
            exposed = ((alias_ident.name, alias_ident.quoted),)
            fallback = info.parts
        else:
            exposed, fallback = info.parts, None
        sql_alias = self.new_alias(exposed[-1][0])
        relation = Relation(sql_alias, exposed, fallback, info.name)
        relation.columns = [self.table_column(relation, info, c) for c in info.columns]
        relation.open = not self.semantic
        sql = self.backend.table(info)
        sql.set("alias", exp.TableAlias(this=_ident(sql_alias)))
        return relation, sql

    def table_column(self, relation: Relation, info: TableInfo, col: ColumnInfo) -> ColRef:
        return ColRef(
            col.name,
            False,
            _qualified(relation.alias, col.name),
            column_type(col),
            (info.name, col.name),
            relation,
        )

    def join(self, node: exp.Join, scope: Scope, in_group: bool = False) -> exp.Join:
        self.check_args(node, _JOIN_ARGS, "a join")
        kind = (node.args.get("kind") or "").upper()
        side = (node.args.get("side") or "").upper()
        natural = (node.args.get("method") or "").upper() == "NATURAL"
        if (node.args.get("method") or "").upper() not in ("", "NATURAL"):
            raise self.error(node, f"{node.args['method']} joins are not ADQL")
        if kind not in ("", "INNER", "OUTER", "CROSS"):
            raise self.error(node, f"{kind} joins are not ADQL")
        if kind == "OUTER" and not side:
            raise self.error(node, "an OUTER JOIN is LEFT, RIGHT or FULL OUTER JOIN")
        on, using = node.args.get("on"), node.args.get("using")
        comma = node.meta.get("comma", False)
        right_sql, right = self.from_item(node.this, scope)

        if comma and not in_group:
            scope.groups.append(right)
            return exp.Join(this=right_sql)
        left = scope.groups[-1]
        if natural and (on is not None or using):
            raise self.error(node, "a NATURAL join takes neither ON nor USING")
        if kind == "CROSS" and (on is not None or using or natural or side):
            raise self.error(node, "a CROSS JOIN takes no condition")
        no_condition = on is None and not using and not natural
        if no_condition and side:
            raise self.error(
                node,
                f"{side} OUTER JOIN needs ON (condition) or USING (columns): an outer join "
                "without a condition is not allowed",
            )
        if kind == "CROSS" or comma or no_condition:
            # ADQL 2.1's grammar makes the join specification optional: a plain (INNER)
            # JOIN without ON/USING is a cross join.
            left.relations.extend(right.relations)
            left.visible.extend(right.visible)
            return exp.Join(this=right_sql, kind="CROSS")
        out = exp.Join(this=right_sql)
        if side:
            out.set("side", side)
        if on is not None:
            group = Group(left.relations + right.relations, left.visible + right.visible)
            join_scope = Scope(scope.parent)
            join_scope.groups.append(group)
            out.set("on", self.cond(on, join_scope, Ctx("on", False)))
            left.relations.extend(right.relations)
            left.visible.extend(right.visible)
            return out
        if natural:
            names = [
                c.name
                for c in left.visible
                if any(r.name.lower() == c.name.lower() for r in right.visible)
            ]
        else:
            names = []
            for ident in using or ():
                if not isinstance(ident, exp.Identifier):
                    raise self.error(node, "USING takes a list of column names")
                self.check_name(ident)
                names.append(ident.name)
        conditions = []
        merged, drop_left, drop_right = [], [], []
        for name in names:
            lcol = self.side_column(left.visible, name, node, "left")
            rcol = self.side_column(right.visible, name, node, "right")
            conditions.append(exp.EQ(this=lcol.make_sql(), expression=rcol.make_sql()))
            merged.append(self.merge(lcol, rcol, side))
            drop_left.append(lcol)
            drop_right.append(rcol)
        out.set("on", exp.and_(*conditions) if conditions else exp.true())
        visible = (
            merged
            + [c for c in left.visible if not any(c is d for d in drop_left)]
            + [c for c in right.visible if not any(c is d for d in drop_right)]
        )
        left.relations.extend(right.relations)
        left.visible[:] = visible
        return out

    def side_column(self, cols: list[ColRef], name: str, node: exp.Expression, side: str):
        hits = [c for c in cols if c.name.lower() == name.lower()]
        if not self.semantic and len(hits) != 1:
            return hits[0] if hits else ColRef(name, False, _loose(name), UNKNOWN, None, None)
        if len(hits) != 1:
            why = "is not a column of" if not hits else "is ambiguous in"
            raise self.error(node, f"join column {name!r} {why} the {side} side of the join")
        return hits[0]

    def merge(self, left: ColRef, right: ColRef, side: str) -> ColRef:
        if side == "FULL":

            def make() -> exp.Expression:
                return exp.Coalesce(this=left.make_sql(), expressions=[right.make_sql()])

        else:
            make = right.make_sql if side == "RIGHT" else left.make_sql
        source = left.source if left.source == right.source else None
        return ColRef(left.name, left.quoted, make, left.type, source, None)

    # --- select list ------------------------------------------------------------------

    def select_list(self, items: list[exp.Expression], scope: Scope) -> list[Output]:
        outputs: list[Output] = []
        used: set[str] = set()

        def add(name: str, value: Value, opaque: bool = False) -> None:
            sql_name, k = name, 1
            while sql_name.lower() in used:
                sql_name = f"{name}_{k}"
                k += 1
            used.add(sql_name.lower())
            outputs.append(Output(name, sql_name, value, opaque))

        def add_unknown() -> None:  # grammar-only mode: the columns of an open relation
            add("*", Value(exp.Star(), UNKNOWN), opaque=True)

        for item in items:
            if isinstance(item, exp.Star):
                self.check_args(item, set(), "SELECT *")
                for col in scope.visible():
                    add(col.name, self.col_value(col))
                if any(r.open for r in scope.relations):
                    add_unknown()
                continue
            if isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
                self.check_args(item.this, set(), "SELECT *")
                relation = self.find_relation(item, scope)[0]
                for col in relation.columns if relation is not None else ():
                    add(col.name, self.col_value(col))
                if relation is None or relation.open:
                    add_unknown()
                continue
            alias = None
            node = item
            if isinstance(item, exp.Alias):
                alias = item.args.get("alias")
                self.check_name(alias)
                node = item.this
            value = self.value(node, scope, Ctx("select", True))
            # a boolean column is a value; a comparison or other condition is not
            if value.type.kind == "bool" and not isinstance(node, exp.Column):
                raise self.error(node, "a condition cannot be a column of the result")
            add(alias.name if alias is not None else (value.name or "expr"), value)
        return outputs

    # --- names ------------------------------------------------------------------------

    def find_relation(self, node: exp.Column, scope: Scope) -> tuple[Relation | None, Scope]:
        """The relation a qualified column or ``t.*`` names; in grammar-only mode None when
        no relation of the query has that name."""
        parts_nodes = [
            p for p in (node.args.get(k) for k in ("catalog", "db", "table")) if p is not None
        ]
        for p in parts_nodes:
            self.check_name(p)
        parts = [(p.name, p.quoted) for p in parts_nodes]
        shown = ".".join(_show_name(n, q) for n, q in parts)
        s: Scope | None = scope
        while s is not None:
            hits = [r for r in s.relations if _suffix_match(parts, r.exposed)]
            if not hits:
                hits = [r for r in s.relations if r.fallback and _suffix_match(parts, r.fallback)]
            if len(hits) == 1 or (hits and not self.semantic):
                return hits[0], s
            if len(hits) > 1:
                raise self.error(
                    node,
                    f"{shown} is ambiguous here: the table appears more than once; "
                    "give each an alias",
                )
            s = s.parent
        if not self.semantic:
            return None, scope
        names = sorted(
            {r.label for r in scope.relations}
            | {".".join(n for n, _ in r.exposed) for r in scope.relations}
        )
        close = difflib.get_close_matches(shown, names, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        known = ", ".join(names)
        raise self.error(
            node, f"{shown} is not a table or alias of this query{hint}; FROM has {known}"
        )

    def resolve(self, node: exp.Column, scope: Scope, ctx: Ctx) -> Value:
        ident = node.this
        if not isinstance(ident, exp.Identifier):
            raise self.error(node, "a column name is needed here")
        if node.args.get("catalog") is not None and isinstance(node.parent, exp.Dot):
            raise self.error(node, "a column reference has at most four parts")
        self.check_name(ident)
        name, quoted = ident.name, ident.quoted
        if node.args.get("table") is not None:
            relation, _ = self.find_relation(node, scope)
            if relation is None:
                return self.loose_column(name)
            hits = [c for c in relation.columns if name_matches(name, quoted, c.name, c.quoted)]
            if len(hits) > 1:
                exact = [c for c in hits if c.name == name]
                hits = exact or hits
            if len(hits) == 1 or (hits and not self.semantic):
                return self.col_value(hits[0])
            if relation.open:
                return self.loose_column(name)
            if len(hits) > 1:
                raise self.error(ident, f"column {name!r} is ambiguous in {relation.label}")
            close = difflib.get_close_matches(name, [c.name for c in relation.columns], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.error(ident, f"unknown column {name!r} in {relation.label}{hint}")
        s: Scope | None = scope
        while s is not None:
            hits = [c for c in s.visible() if name_matches(name, quoted, c.name, c.quoted)]
            if len(hits) > 1:
                exact = [c for c in hits if c.name == name]
                hits = exact if len(exact) == 1 else hits
            if len(hits) == 1 or (hits and not self.semantic):
                return self.col_value(hits[0])
            if len(hits) > 1:
                tables = ", ".join(sorted({c.relation.label for c in hits if c.relation}))
                raise self.error(
                    ident, f"column {name!r} is ambiguous (it is in {tables}); qualify it"
                )
            if s is scope and ctx.aliases:
                aliased = [o for o in ctx.aliases if name_matches(name, quoted, o.name, False)]
                if len(aliased) == 1:
                    v = aliased[0].value
                    return Value(
                        v.sql.copy(),
                        v.type,
                        v.const,
                        v.geom,
                        False,
                        v.name,
                        v.source,
                        v.aggregate,
                    )
            s = s.parent
        if not self.semantic:
            return self.loose_column(name)
        candidates = [c.name for c in scope.visible()]
        close = difflib.get_close_matches(name, candidates, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = ", ".join(r.label for r in scope.relations)
        raise self.error(ident, f"unknown column {name!r} in {where}{hint}")

    def loose_column(self, name: str) -> Value:
        """Grammar-only mode: a column of a table whose columns are not known."""
        return Value(_loose(name)(), UNKNOWN, column=True, name=name)

    def col_value(self, col: ColRef) -> Value:
        value = Value(col.make_sql(), col.type, column=True, name=col.name, source=col.source)
        if col.type.kind == "geometry":
            value.geom = Stored(value, col.type.shape or "polygon")
        return value

    # --- conditions -------------------------------------------------------------------

    def cond(self, node: exp.Expression, scope: Scope, ctx: Ctx) -> exp.Expression:
        if isinstance(node, (exp.And, exp.Or)):
            return type(node)(
                this=self.cond(node.this, scope, ctx),
                expression=self.cond(node.expression, scope, ctx),
            )
        if isinstance(node, exp.Not):
            return exp.Not(this=self.cond(node.this, scope, ctx))
        if isinstance(node, exp.Paren):
            return exp.Paren(this=self.cond(node.this, scope, ctx))
        if type(node) in _COMPARISONS:
            return self.comparison(node, scope, ctx)
        if isinstance(node, exp.Between):
            self.check_args(node, {"this", "low", "high"}, "BETWEEN")
            return exp.Between(
                this=self.value(node.this, scope, ctx).sql,
                low=self.value(node.args["low"], scope, ctx).sql,
                high=self.value(node.args["high"], scope, ctx).sql,
            )
        if isinstance(node, exp.In):
            if node.args.get("field") is not None:
                raise self.error(node, "IN needs parentheses: IN (a, b, ...) or IN (SELECT ...)")
            self.check_args(node, {"this", "expressions", "query"}, "IN")
            this = self.value(node.this, scope, ctx).sql
            query = node.args.get("query")
            if query is not None:
                out = self.subquery(query, scope, "IN")
                return exp.In(this=this, query=exp.Subquery(this=out.sql))
            if not node.expressions:
                raise self.error(node, "IN needs a list of values (a, b, ...) or a subquery")
            values = [self.value(e, scope, ctx).sql for e in node.expressions]
            return exp.In(this=this, expressions=values)
        if isinstance(node, (exp.Like, exp.ILike)):
            self.check_args(node, {"this", "expression", "negate"}, "LIKE")
            left = self.value(node.this, scope, ctx)
            right = self.value(node.expression, scope, ctx)
            for v, n in ((left, node.this), (right, node.expression)):
                if v.type.kind == "geometry":
                    raise self.error(n, "LIKE compares strings, not geometries")
            like = type(node)(this=left.sql, expression=right.sql)
            return exp.Not(this=like) if node.args.get("negate") else like
        if isinstance(node, exp.Is):
            self.check_args(node, {"this", "expression"}, "IS")
            if not isinstance(node.expression, exp.Null):
                raise self.error(node.expression, "IS must be followed by NULL or NOT NULL")
            return exp.Is(this=self.value(node.this, scope, ctx).sql, expression=exp.Null())
        if isinstance(node, exp.Exists):
            self.check_args(node, {"this"}, "EXISTS")
            out = self.subquery(node.this, scope, "EXISTS")
            return exp.Exists(this=out.sql)
        what = {
            "where": "WHERE",
            "having": "HAVING",
            "on": "ON",
        }.get(ctx.clause, "this place")
        shown = self.text_of(node)
        hint = ""
        plain = _strip(node)
        if isinstance(plain, exp.Anonymous) and plain.name.upper() in ("CONTAINS", "INTERSECTS"):
            hint = f"; compare it: 1 = {plain.name.upper()}(...)"
        raise self.error(
            node,
            f"{what} needs a condition (a comparison, BETWEEN, LIKE, IN, IS NULL or "
            f"EXISTS), not {shown}{hint}",
        )

    def text_of(self, node: exp.Expression) -> str:
        if isinstance(node, exp.Anonymous):
            return f"{node.name}(...)"
        start = node_offset(node)
        if start is None:
            return "this expression"
        end = start
        for sub in node.walk():
            e = sub.meta.get("end") if sub.meta else None
            if e is not None:
                end = max(end, e)
        snippet = self.text[start : end + 1].strip()
        if len(snippet) > 40:
            snippet = snippet[:40] + "..."
        return repr(snippet)

    def subquery(self, node: exp.Expression, scope: Scope, what: str) -> QueryOut:
        inner = node.this if isinstance(node, exp.Subquery) else node
        if isinstance(node, exp.Subquery) and node.args.get("alias") is not None:
            raise self.error(node, f"a subquery in {what} takes no alias")
        return self.query(inner, scope)

    def comparison(self, node: exp.Expression, scope: Scope, ctx: Ctx) -> exp.Expression:
        op = type(node)
        left, right = node.this, node.expression
        if op in (exp.EQ, exp.NEQ):
            for fn, lit in ((left, right), (right, left)):
                f, n = _strip(fn), _int_literal(lit)
                if (
                    isinstance(f, exp.Anonymous)
                    and f.name.upper() in ("CONTAINS", "INTERSECTS")
                    and n in (0, 1)
                ):
                    a, b = self.predicate_args(f, scope, ctx)
                    truth = (n == 1) != (op is exp.NEQ)
                    return self.backend.geometry_predicate(f.name.upper(), a.geom, b.geom, truth)
        if op in _FLIP:
            for fn, other, o in ((left, right, op), (right, left, _FLIP[op])):
                f = _strip(fn)
                if (
                    isinstance(f, exp.Anonymous)
                    and f.name.upper() == "DISTANCE"
                    and o in (exp.LT, exp.LTE)
                ):
                    a, b = self.distance_args(f, scope, ctx)
                    radius = self.value(other, scope, ctx)
                    self.numeric_arg(radius, other, "DISTANCE")
                    sql = self.backend.distance_predicate(a.geom, b.geom, _COMPARISONS[o], radius)
                    if sql is not None:
                        return sql
                    dist = self.backend.geometry_function("DISTANCE", [a, b])
                    return o(this=dist.sql, expression=radius.sql)
        lv = self.value(left, scope, ctx)
        rv = self.value(right, scope, ctx)
        return op(this=lv.sql, expression=rv.sql)

    # --- values -----------------------------------------------------------------------

    def value(self, node: exp.Expression, scope: Scope, ctx: Ctx) -> Value:
        if isinstance(node, exp.Column):
            if isinstance(node.this, exp.Star):
                raise self.error(node, "'*' is allowed only as a SELECT item or in COUNT(*)")
            return self.resolve(node, scope, ctx)
        if isinstance(node, exp.Dot):
            raise self.error(node, "a column reference has at most four parts")
        if isinstance(node, exp.Literal):
            if node.is_string:
                return Value(exp.Literal.string(node.this), STRING, const=node.this)
            text = node.this
            if not _NUMBER.match(text):
                raise self.error(node, f"{text!r} is not a number")
            integer = text.isdigit()
            const: float | int = int(text) if integer else float(text)
            if integer and const >= 2**63:
                raise self.error(node, f"the integer {text} is too large")
            return Value(self.backend.number(text, integer), INT if integer else FLOAT, const)
        if isinstance(node, exp.Null):
            return Value(exp.Null(), NULL, is_null=True)
        if isinstance(node, exp.Paren):
            if type(_strip(node)) in _COMPARISONS or isinstance(
                _strip(node), (exp.And, exp.Or, exp.Not, exp.Between, exp.In, exp.Like)
            ):
                raise self.error(node, "a condition cannot be used as a value here")
            inner = self.value(node.this, scope, ctx)
            return Value(
                exp.Paren(this=inner.sql),
                inner.type,
                inner.const,
                inner.geom,
                False,
                inner.name,
                inner.source,
                inner.aggregate,
                inner.is_null,
            )
        if isinstance(node, exp.Neg):
            inner = self.value(node.this, scope, ctx)
            self.numeric_arg(inner, node.this, "unary minus")
            if inner.is_const:
                assert isinstance(inner.const, int | float)  # is_const: a number
                return self.number(-inner.const)
            return Value(exp.Neg(this=inner.sql), inner.type.bare(), aggregate=inner.aggregate)
        if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Div)):
            return self.arithmetic(node, scope, ctx)
        if isinstance(node, (exp.DPipe, exp.Concat)):
            parts = (
                [node.this, node.expression]
                if isinstance(node, exp.DPipe)
                else list(node.expressions)
            )
            values = [self.value(p, scope, ctx) for p in parts]
            for v, p in zip(values, parts, strict=True):
                if v.type.kind == "geometry":
                    raise self.error(p, "'||' joins strings; a geometry cannot be concatenated")
            sql = values[0].sql
            for v in values[1:]:
                sql = exp.DPipe(this=sql, expression=v.sql, safe=True)
            return Value(sql, STRING, aggregate=any(v.aggregate for v in values))
        if isinstance(node, exp.Anonymous):
            return self.call(node, scope, ctx)
        if isinstance(node, exp.Cast):
            return self.cast(node, scope, ctx)
        if isinstance(node, exp.Case):
            return self.case(node, scope, ctx)
        if isinstance(node, exp.Subquery):
            out = self.subquery(node, scope, "an expression")
            if self.semantic and len(out.outputs) != 1:
                raise self.error(node, "a subquery used as a value must return one column")
            o = out.outputs[0].value
            return Value(exp.Subquery(this=out.sql), o.type.bare(), name=out.outputs[0].name)
        if isinstance(node, (exp.Select, *_SET_OPS)):
            raise self.error(node, "a subquery must be in parentheses")
        if type(node) in _COMPARISONS or isinstance(
            node, (exp.And, exp.Or, exp.Not, exp.Between, exp.In, exp.Like, exp.ILike, exp.Is)
        ):
            raise self.error(node, "a condition cannot be used as a value here")
        if isinstance(node, exp.Boolean):
            raise self.error(node, "TRUE and FALSE are not ADQL values")
        if isinstance(node, exp.Window):
            raise self.error(node, "window functions (OVER ...) are not ADQL")
        if isinstance(node, exp.Star):
            raise self.error(node, "'*' is allowed only as a SELECT item or in COUNT(*)")
        raise self.error(node, f"{self.text_of(node)} is not supported in ADQL")

    def numeric_arg(self, v: Value, node: exp.Expression, what: str) -> None:
        if not self.semantic and v.type.kind != "geometry":
            return
        if v.type.kind in ("geometry", "bool", "timestamp") or (
            v.type.kind == "string" and v.const is not None
        ):
            kind = "a string" if v.type.kind == "string" else f"a {v.type.kind}"
            raise self.error(node, f"{what} needs a number, not {kind}")

    def arithmetic(self, node: exp.Expression, scope: Scope, ctx: Ctx) -> Value:
        a = self.value(node.this, scope, ctx)
        b = self.value(node.expression, scope, ctx)
        symbols: dict[type[exp.Expression], str] = {
            exp.Add: "+",
            exp.Sub: "-",
            exp.Mul: "*",
            exp.Div: "/",
        }
        symbol = symbols[type(node)]
        for v, n in ((a, node.this), (b, node.expression)):
            if v.type.kind == "geometry":
                raise self.error(n, f"'{symbol}' cannot be applied to a geometry")
        both_int = a.type.kind == "int" and b.type.kind == "int"
        if a.type.numeric and b.type.numeric:
            vtype = INT if both_int else FLOAT
        elif "null" in (a.type.kind, b.type.kind):
            vtype = NULL
        else:
            vtype = UNKNOWN
        unit = _unit_op(type(node), a, b)
        aggregate = a.aggregate or b.aggregate
        if isinstance(node, exp.Div):
            sql = self.backend.divide(a, b, both_int)
        else:
            sql = type(node)(this=a.sql, expression=b.sql)
        return Value(sql, vtype.with_unit(unit), aggregate=aggregate)

    def case(self, node: exp.Case, scope: Scope, ctx: Ctx) -> Value:
        self.check_args(node, {"ifs", "default"}, "CASE (only CASE WHEN ... is supported)")
        ifs = []
        kinds = set()
        for branch in node.args.get("ifs") or []:
            cond = self.cond(branch.this, scope, Ctx("case", ctx.aggregates, ctx.aliases))
            then = self.value(branch.args["true"], scope, ctx)
            kinds.add(then.type.kind)
            ifs.append(exp.If(this=cond, true=then.sql))
        default = node.args.get("default")
        out = exp.Case(ifs=ifs)
        if default is not None:
            d = self.value(default, scope, ctx)
            kinds.add(d.type.kind)
            out.set("default", d.sql)
        kinds.discard("null")
        if kinds == {"int"}:
            vtype = INT
        elif kinds and kinds <= {"int", "float"}:
            vtype = FLOAT
        elif len(kinds) == 1:
            vtype = VType(kinds.pop())
        else:
            vtype = UNKNOWN
        return Value(out, vtype, name="case")

    def cast(self, node: exp.Cast, scope: Scope, ctx: Ctx) -> Value:
        self.check_args(node, {"this", "to"}, "CAST")
        inner = self.value(node.this, scope, ctx)
        to = node.args["to"]
        dtype = to.this
        length = None
        if to.expressions:
            param = to.expressions[0]
            literal = param.this if isinstance(param, exp.DataTypeParam) else param
            length = int(literal.name)
        target = {
            exp.DType.SMALLINT: "SMALLINT",
            exp.DType.INT: "INTEGER",
            exp.DType.BIGINT: "BIGINT",
            exp.DType.FLOAT: "REAL",
            exp.DType.DOUBLE: "DOUBLE PRECISION",
            exp.DType.CHAR: "CHAR",
            exp.DType.VARCHAR: "VARCHAR",
            exp.DType.TIMESTAMP: "TIMESTAMP",
        }.get(dtype)
        if dtype == exp.DType.USERDEFINED:
            target = str(to.args.get("kind") or "").upper()
        if target not in {
            "SMALLINT",
            "INTEGER",
            "BIGINT",
            "REAL",
            "DOUBLE PRECISION",
            "CHAR",
            "VARCHAR",
            "TIMESTAMP",
            "POINT",
            "CIRCLE",
            "POLYGON",
        }:
            raise self.error(node, f"cannot CAST to {to.sql()}")
        if inner.type.kind == "geometry" and target not in ("CHAR", "VARCHAR"):
            raise self.error(node, f"a geometry cannot be cast to {target}")
        if (
            self.semantic
            and target in ("POINT", "CIRCLE", "POLYGON")
            and inner.type.kind
            not in (
                "string",
                "null",
                "unknown",
            )
        ):
            raise self.error(node, f"CAST to {target} needs a string such as '12.3 45.6'")
        sql = self.backend.cast(inner, target, length)
        vtype = {
            "SMALLINT": VType("int", datatype="short"),
            "INTEGER": VType("int", datatype="int"),
            "BIGINT": LONG,
            "REAL": VType("float", datatype="float"),
            "DOUBLE PRECISION": DOUBLE,
            "CHAR": STRING,
            "VARCHAR": STRING,
            "TIMESTAMP": TIMESTAMP,
        }.get(target)
        if vtype is None:
            shape = target.lower()
            value = Value(sql, geometry_type(shape), name=inner.name)
            value.geom = Stored(value, shape)
            return value
        if vtype.numeric:
            vtype = vtype.with_unit(inner.type.unit)
        return Value(sql, vtype, name=inner.name, aggregate=inner.aggregate)

    # --- function calls ---------------------------------------------------------------

    def call(self, node: exp.Anonymous, scope: Scope, ctx: Ctx) -> Value:
        name = node.name.upper()
        args = list(node.expressions)
        if not isinstance(node.this, str):
            raise self.error(node, "a function name cannot be a delimited identifier")
        for a in args:
            if isinstance(a, (exp.Alias, exp.PropertyEQ, exp.Kwarg, exp.Lambda)):
                raise self.error(a, f"unexpected syntax in the arguments of {node.name}")
        spec = FUNCTIONS.get(name)
        if spec is None:
            if name in self.udfs:
                return self.udf(node, name, args, scope, ctx)
            known = list(FUNCTIONS) + [n for n, _ in self.udfs.values()]
            close = difflib.get_close_matches(name, [k.upper() for k in known], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise self.error(node, f"unknown function {node.name}{hint}")
        n = len(args)
        if n < spec.min_args or (spec.max_args is not None and n > spec.max_args):
            raise self.error(node, f"{name} takes {arity_text(spec)}, not {n}")
        if name == "REGION":
            return self.region(node, args[0])
        if spec.kind == "aggregate":
            return self.aggregate(node, name, args[0], scope, ctx)
        if any(isinstance(a, (exp.Star, exp.Distinct)) for a in args):
            raise self.error(node, "'*' and DISTINCT are allowed only in aggregate functions")
        if name in GEOMETRY_CONSTRUCTORS:
            return self.constructor(node, name, args, scope, ctx)
        if spec.kind == "geometry":
            return self.geometry_call(node, name, args, scope, ctx)
        if name == "IN_UNIT":
            return self.in_unit(node, args, scope, ctx)
        values = [self.value(a, scope, ctx) for a in args]
        aggregate = any(v.aggregate for v in values)
        if name == "COALESCE":
            kinds = {v.type.kind for v in values} - {"null"}
            if "geometry" in kinds:
                raise self.error(node, "COALESCE of geometries is not supported")
            if kinds == {"int"}:
                vtype = INT
            elif kinds and kinds <= {"int", "float"}:
                vtype = FLOAT
            elif len(kinds) == 1:
                vtype = values[[v.type.kind for v in values].index(next(iter(kinds)))].type
            else:
                vtype = UNKNOWN
            sql = self.backend.function(name, values)
            return Value(sql, vtype, aggregate=aggregate, name="coalesce")
        if spec.kind == "string":
            for v, a in zip(values, args, strict=True):
                if v.type.kind == "geometry":
                    raise self.error(a, f"{name} needs a string, not a geometry")
            return Value(
                self.backend.function(name, values),
                STRING,
                aggregate=aggregate,
                name=name.lower(),
            )
        for v, a in zip(values, args, strict=True):
            self.numeric_arg(v, a, name)
        if (name in TYPE_PRESERVING and values[0].type.kind == "int") or (
            name == "MOD" and all(v.type.kind == "int" for v in values)
        ):
            vtype = INT
        else:
            vtype = FLOAT
        unit = None
        if name in UNIT_PRESERVING:
            unit = values[0].type.unit
        elif name == "SQRT" and values[0].type.unit:
            unit = ("pow", values[0].type.unit, 0.5)
        elif name == "POWER" and values[0].type.unit and values[1].is_const:
            unit = ("pow", values[0].type.unit, values[1].number)
        elif name == "DEGREES":
            unit = ("u", "deg")
        elif name == "RADIANS":
            unit = ("u", "rad")
        elif name == "MOD":
            unit = values[0].type.unit
        return Value(
            self.backend.function(name, values),
            vtype.with_unit(unit),
            aggregate=aggregate,
            name=name.lower(),
        )

    def udf(self, node: exp.Anonymous, name: str, args: list, scope: Scope, ctx: Ctx) -> Value:
        declared, arity = self.udfs[name]
        if arity is not None and arity >= 0 and len(args) != arity:
            raise self.error(node, f"{declared} takes {arity} argument(s), not {len(args)}")
        values = [self.value(a, scope, ctx) for a in args]
        sql = self.backend.function(declared, values)
        return Value(
            sql, UNKNOWN, name=declared.lower(), aggregate=any(v.aggregate for v in values)
        )

    def aggregate(
        self, node: exp.Anonymous, name: str, arg: exp.Expression, scope: Scope, ctx: Ctx
    ) -> Value:
        if not ctx.aggregates and self.semantic:
            if ctx.clause == "args":
                raise self.error(node, "aggregate functions cannot be nested")
            where = {"where": "WHERE", "on": "ON", "group": "GROUP BY"}.get(ctx.clause, "here")
            raise self.error(node, f"aggregate functions such as {name} are not allowed in {where}")
        inner_ctx = Ctx("args", False, ctx.aliases)
        if isinstance(arg, exp.Star):
            if name != "COUNT":
                raise self.error(node, f"{name}(*) is not ADQL; only COUNT(*)")
            return Value(
                self.backend.function(name, [Value(exp.Star(), UNKNOWN)]),
                LONG,
                name="count",
                aggregate=True,
            )
        distinct = isinstance(arg, exp.Distinct)
        if distinct:
            if len(arg.expressions) != 1:
                raise self.error(node, f"{name}(DISTINCT ...) takes one expression")
            arg = arg.expressions[0]
        v = self.value(arg, scope, inner_ctx)
        if v.aggregate and self.semantic:
            raise self.error(node, "aggregate functions cannot be nested")
        if v.type.kind == "geometry" and name != "COUNT":
            raise self.error(node, f"{name} of a geometry is not supported")
        passed = Value(exp.Distinct(expressions=[v.sql]) if distinct else v.sql, v.type)
        sql = self.backend.function(name, [passed])
        if name == "COUNT":
            vtype = LONG
        elif name == "AVG":
            vtype = DOUBLE.with_unit(v.type.unit)
        elif name == "SUM":
            vtype = LONG if v.type.kind == "int" else DOUBLE if v.type.numeric else UNKNOWN
            vtype = vtype.with_unit(v.type.unit)
        else:
            vtype = v.type
        return Value(sql, vtype, name=name.lower(), aggregate=True)

    def in_unit(self, node: exp.Anonymous, args: list, scope: Scope, ctx: Ctx) -> Value:
        v = self.value(args[0], scope, ctx)
        self.numeric_arg(v, args[0], "IN_UNIT")
        target = _strip(args[1])
        if not (isinstance(target, exp.Literal) and target.is_string):
            raise self.error(args[1], "IN_UNIT needs the unit as a string literal, e.g. 'deg'")
        if not self.semantic:
            return Value(self.backend.scale(v, 1.0), DOUBLE, name="in_unit")
        if v.type.unit is None:
            raise self.error(
                args[0],
                "IN_UNIT: the unit of this expression is not known, so it cannot be converted",
            )
        from .units import conversion_factor

        try:
            factor = conversion_factor(v.type.unit, target.this)
        except ValueError as exc:
            raise self.error(node, f"IN_UNIT: {exc}") from None
        return Value(
            self.backend.scale(v, factor),
            DOUBLE.with_unit(("u", target.this)),
            name="in_unit",
            aggregate=v.aggregate,
        )

    # --- geometry ---------------------------------------------------------------------

    def coordsys(self, node: exp.Expression) -> str | None:
        """The frame named by a literal first argument, or None if it is not one."""
        plain = _strip(node)
        if isinstance(plain, exp.Null):
            return frames.ICRS
        if isinstance(plain, exp.Literal) and plain.is_string:
            frame = frames.parse_frame(plain.this)
            if frame is None and not self.semantic:
                return frames.ICRS  # the name of a coordinate system is not grammar
            if frame is None:
                raise self.error(
                    plain,
                    f"unknown coordinate system {plain.this!r}; this service knows "
                    f"{frames.SUPPORTED}",
                )
            return frame
        return None

    def coordinate(self, node: exp.Expression, scope: Scope, ctx: Ctx, fn: str) -> Value:
        v = self.value(node, scope, ctx)
        if v.type.kind == "geometry":
            raise self.error(node, f"{fn}: a coordinate must be a number, not a geometry")
        if self.semantic and v.type.kind == "string":
            raise self.error(node, f"{fn}: a coordinate must be a number, not a string")
        return v

    def point_arg(self, node: exp.Expression, scope: Scope, ctx: Ctx, fn: str) -> Point:
        v = self.value(node, scope, ctx)
        # Grammar only: the form of the call (CIRCLE(point, r) or CIRCLE(ra, dec, r)) is
        # grammar, so a literal or another geometry cannot stand for the point.
        unknown = not self.semantic and v.type.kind == "unknown"
        if not unknown and (v.geom is None or shape_of(v.geom) != "point"):
            raise self.error(node, f"{fn}: a POINT is needed here")
        return self.as_point(v)

    def as_point(self, v: Value) -> Point:
        g = v.geom
        if isinstance(g, Point):
            return g
        ra = self.backend.geometry_function("COORD1", [v])
        dec = self.backend.geometry_function("COORD2", [v])
        return Point(ra, dec)

    def constructor(
        self, node: exp.Anonymous, name: str, args: list, scope: Scope, ctx: Ctx
    ) -> Value:
        frame = self.coordsys(args[0]) if args else None
        rest = args[1:] if frame is not None else args
        frame = frame or frames.ICRS
        n = len(rest)
        usage = {
            "POINT": "POINT([coordsys,] ra, dec)",
            "CIRCLE": "CIRCLE([coordsys,] ra, dec, radius) or CIRCLE([coordsys,] point, radius)",
            "BOX": "BOX([coordsys,] ra, dec, width, height) or BOX([coordsys,] point, width, "
            "height)",
            "POLYGON": "POLYGON([coordsys,] ra1, dec1, ra2, dec2, ra3, dec3, ...) or "
            "POLYGON([coordsys,] point1, point2, point3, ...)",
        }[name]

        def coord(a):
            return self.coordinate(a, scope, ctx, name)

        def dec(a):
            # a literal latitude beyond the poles matches nothing: say so, not 0 rows
            value = _literal_number(a)
            if self.semantic and value is not None and abs(value) > 90:
                raise self.error(a, f"{name}: a declination must be -90 to 90, not {value:g}")
            return coord(a)

        def is_point(a) -> bool:
            v = self.value(a, scope, ctx)
            if not self.semantic and v.type.kind == "unknown":
                return True
            return v.geom is not None and shape_of(v.geom) == "point"

        geom: Geometry
        if name == "POINT":
            if n != 2:
                raise self.error(node, f"usage: {usage}")
            geom = Point(coord(rest[0]), dec(rest[1]), frame)
        elif name == "CIRCLE":
            if n == 2:
                center = self.point_arg(rest[0], scope, ctx, name)
                radius = coord(rest[1])
            elif n == 3:
                center = Point(coord(rest[0]), dec(rest[1]), frame)
                radius = coord(rest[2])
            else:
                raise self.error(node, f"usage: {usage}")
            geom = Circle(center, radius)
        elif name == "BOX":
            if n == 3:
                center = self.point_arg(rest[0], scope, ctx, name)
                width, height = coord(rest[1]), coord(rest[2])
            elif n == 4:
                center = Point(coord(rest[0]), dec(rest[1]), frame)
                width, height = coord(rest[2]), coord(rest[3])
            else:
                raise self.error(node, f"usage: {usage}")
            geom = self.box(center, width, height)
        else:
            if rest and all(is_point(a) for a in rest):
                if n < 3:
                    raise self.error(node, "a POLYGON needs at least 3 vertices")
                vertices = [self.point_arg(a, scope, ctx, name) for a in rest]
            else:
                if n < 6 or n % 2:
                    raise self.error(
                        node,
                        f"a POLYGON needs pairs of coordinates for at least 3 vertices "
                        f"({n} coordinate{'s' if n != 1 else ''} given); usage: {usage}",
                    )
                vertices = [Point(coord(rest[i]), dec(rest[i + 1]), frame) for i in range(0, n, 2)]
            geom = Polygon(vertices)
        return self.geometry_value(geom, name.lower())

    def region(self, node: exp.Anonymous, arg: exp.Expression) -> Value:
        """REGION('Circle ICRS 10 20 0.5'): the simple STC-S shapes, as constants."""
        from .stcs import parse_stcs

        text = _strip(arg)
        if not (isinstance(text, exp.Literal) and text.is_string):
            raise self.error(arg, "REGION needs an STC-S string literal")
        if not self.semantic:  # the STC-S string is not grammar
            value = Value(exp.Null(), geometry_type("polygon"), name="region")
            value.geom = Stored(value, "polygon")
            return value
        try:
            shape, frame, x = parse_stcs(text.this)
        except ValueError as exc:
            raise self.error(arg, f"REGION: {exc}") from None

        def point(i: int) -> Point:
            return Point(self.number(x[i]), self.number(x[i + 1]), frame)

        geom: Geometry
        if shape == "POSITION":
            geom = point(0)
        elif shape == "CIRCLE":
            geom = Circle(point(0), self.number(x[2]))
        elif shape == "BOX":
            geom = self.box(point(0), self.number(x[2]), self.number(x[3]))
        else:
            geom = Polygon([point(i) for i in range(0, len(x), 2)])
        return self.geometry_value(geom, "region")

    def geometry_value(self, geom: Geometry, name: str) -> Value:
        shape = shape_of(geom)
        value = Value(self.backend.geometry(geom), geometry_type(shape), geom=geom, name=name)
        value.aggregate = _geom_aggregate(geom)
        return value

    def box(self, center: Point, width: Value, height: Value) -> Polygon:
        """ADQL 2.0 BOX: corners at (ra ± width/2, dec ± height/2), great-circle edges."""
        half_w = self.scale_value(width, 0.5)
        half_h = self.scale_value(height, 0.5)
        ra, dec = center.ra, center.dec
        corners = [
            (self.add_values(ra, half_w, -1), self.add_values(dec, half_h, -1)),
            (self.add_values(ra, half_w, 1), self.add_values(dec, half_h, -1)),
            (self.add_values(ra, half_w, 1), self.add_values(dec, half_h, 1)),
            (self.add_values(ra, half_w, -1), self.add_values(dec, half_h, 1)),
        ]
        return Polygon([Point(a, d, center.frame) for a, d in corners])

    def scale_value(self, v: Value, factor: float) -> Value:
        if v.is_const:
            return self.number(v.number * factor)
        return Value(
            exp.Mul(this=exp.Paren(this=v.sql), expression=self.number(factor).sql),
            FLOAT,
            aggregate=v.aggregate,
        )

    def add_values(self, a: Value, b: Value, sign: int) -> Value:
        if a.is_const and b.is_const:
            return self.number(a.number + sign * b.number)
        op = exp.Add if sign > 0 else exp.Sub
        return Value(
            op(this=exp.Paren(this=a.sql), expression=exp.Paren(this=b.sql)),
            FLOAT,
            aggregate=a.aggregate or b.aggregate,
        )

    def geometry_args(self, node: exp.Anonymous, args: list, scope: Scope, ctx: Ctx) -> list[Value]:
        values = []
        for a in args:
            v = self.value(a, scope, ctx)
            if v.geom is None and not self.semantic:
                v.geom = Stored(v, "point")
            if v.geom is None:
                kind = v.type.kind if v.type.kind not in ("unknown",) else "a value of unknown type"
                kind = {
                    "int": "a number",
                    "float": "a number",
                    "string": "a string",
                    "null": "NULL",
                }.get(kind, kind)
                raise self.error(a, f"{node.name.upper()} needs a geometry here, not {kind}")
            values.append(v)
        return values

    def predicate_args(self, node: exp.Anonymous, scope: Scope, ctx: Ctx):
        if len(node.expressions) != 2:
            raise self.error(node, f"{node.name.upper()} takes 2 arguments")
        a, b = self.geometry_args(node, node.expressions, scope, ctx)
        return a, b

    def distance_args(self, node: exp.Anonymous, scope: Scope, ctx: Ctx):
        args = node.expressions
        if len(args) == 4:
            coords = [self.coordinate(a, scope, ctx, "DISTANCE") for a in args]
            p = self.geometry_value(Point(coords[0], coords[1]), "point")
            q = self.geometry_value(Point(coords[2], coords[3]), "point")
            return p, q
        if len(args) != 2:
            raise self.error(
                node, "DISTANCE takes 2 points or 4 coordinates (ra1, dec1, ra2, dec2)"
            )
        a, b = self.geometry_args(node, args, scope, ctx)
        assert a.geom is not None and b.geom is not None  # geometry_args saw to it
        shapes = {shape_of(a.geom), shape_of(b.geom)}
        if self.semantic and ("point" not in shapes or shapes == {"polygon", "circle"}):
            raise self.error(
                node,
                "DISTANCE needs a POINT and a POINT (or a CIRCLE or POLYGON, as an "
                "extension: the distance to its nearest part)",
            )
        return a, b

    def geometry_call(
        self, node: exp.Anonymous, name: str, args: list, scope: Scope, ctx: Ctx
    ) -> Value:
        if name == "DISTANCE":
            values = list(self.distance_args(node, scope, ctx))
        else:
            values = self.geometry_args(node, args, scope, ctx)
            if (
                self.semantic
                and name in ("COORD1", "COORD2")
                and shape_of(values[0].geom) != "point"  # type: ignore[arg-type]  # set by geometry_args
            ):
                raise self.error(node, f"{name} needs a POINT")
        out = self.backend.geometry_function(name, values)
        out.name = out.name or name.lower()
        out.aggregate = out.aggregate or any(v.aggregate for v in values)
        return out


class SyntaxOnly(Backend):
    """The backend of grammar-only checking: every piece of target SQL is a placeholder."""

    name = "syntax-only"

    def table(self, info: TableInfo) -> exp.Expression:
        return exp.Table(this=_ident(info.name))

    def number(self, text: str, integer: bool) -> exp.Expression:
        return exp.Literal.number(text)

    def function(self, name: str, args: list[Value]) -> exp.Expression:
        return exp.Null()

    def divide(self, left: Value, right: Value, integer: bool) -> exp.Expression:
        return exp.Null()

    def cast(self, value: Value, target: str, length: int | None) -> exp.Expression:
        return exp.Null()

    def scale(self, value: Value, factor: float) -> exp.Expression:
        return exp.Null()

    def geometry(self, geom: Geometry) -> exp.Expression:
        return exp.Null()

    def geometry_function(self, name: str, args: list[Value]) -> Value:
        return Value(exp.Null(), UNKNOWN, name=name.lower())

    def geometry_predicate(
        self, name: str, a: Geometry, b: Geometry, truth: bool
    ) -> exp.Expression:
        return exp.true()

    def distance_predicate(
        self, a: Geometry, b: Geometry, op: str, radius: Value
    ) -> exp.Expression | None:
        return exp.true()

    def generate(self, tree: exp.Expression) -> str:
        return ""


def _geom_aggregate(geom: Geometry) -> bool:
    if isinstance(geom, Point):
        return geom.ra.aggregate or geom.dec.aggregate
    if isinstance(geom, Circle):
        return _geom_aggregate(geom.center) or geom.radius.aggregate
    if isinstance(geom, Polygon):
        return any(_geom_aggregate(v) for v in geom.vertices)
    return geom.value.aggregate


def _suffix_match(written: list[tuple[str, bool]], exposed: tuple[tuple[str, bool], ...]) -> bool:
    k = len(written)
    if k > len(exposed) or k == 0:
        return False
    return all(
        name_matches(w, wq, p, pq)
        for (w, wq), (p, pq) in zip(written, exposed[len(exposed) - k :], strict=True)
    )


def _unit_op(op: type, a: Value, b: Value):
    ua, ub = a.type.unit, b.type.unit
    if op in (exp.Add, exp.Sub):
        if ua == ub:
            return ua
        if ua is None and a.is_const:
            return ub
        if ub is None and b.is_const:
            return ua
        return None
    if ua is None and ub is None:
        return None
    if (ua is None and not a.is_const) or (ub is None and not b.is_const):
        return None
    left = ua if ua is not None else ("u", "")
    right = ub if ub is not None else ("u", "")
    return ("mul" if op is exp.Mul else "div", left, right)


def _describe(key: str) -> str:
    return {
        "laterals": "LATERAL",
        "qualify": "QUALIFY",
        "windows": "WINDOW",
        "sample": "TABLESAMPLE",
        "pivots": "PIVOT",
        "into": "SELECT INTO",
        "locks": "FOR UPDATE",
        "kind": "this SELECT variant",
        "hint": "an optimizer hint",
        "settings": "SETTINGS",
        "format": "FORMAT",
        "prewhere": "PREWHERE",
        "connect": "CONNECT BY",
        "match": "MATCH_RECOGNIZE",
        "distribute": "DISTRIBUTE BY",
        "sort": "SORT BY",
        "cluster": "CLUSTER BY",
        "operation_modifiers": "a SELECT modifier",
        "exclude": "EXCLUDE",
        "by_name": "BY NAME",
        "side": "this set operation variant",
        "rollup": "ROLLUP",
        "cube": "CUBE",
        "grouping_sets": "GROUPING SETS",
        "totals": "WITH TOTALS",
        "escape": "ESCAPE",
        "symmetric": "SYMMETRIC",
        "field": "IN without parentheses (write IN (a, b, ...))",
        "unnest": "UNNEST",
        "nulls_first": "NULLS FIRST/LAST",
    }.get(key, key.upper().replace("_", " "))


__all__ = ["Analyzer", "Output", "QueryOut", "SyntaxOnly"]


def _literal_number(node: exp.Expression) -> float | None:
    """The value of a numeric literal (signed, in parentheses), else None."""
    sign = 1.0
    while isinstance(node, exp.Paren | exp.Neg):
        if isinstance(node, exp.Neg):
            sign = -sign
        node = node.this
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return sign * float(node.this)
        except ValueError:
            return None
    return None
