"""TAP_SCHEMA rows (TAP 1.1 section 4) generated from votable_schemas/."""

from __future__ import annotations

import pyarrow as pa

from ..votable.schema import (
    SCHEMA_DESCRIPTIONS,
    TableSchema,
    adql_column_name,
    load_table_schema,
    tap_tables,
)
from .ddl import ARROW_TYPES


def _table(name: str, rows: list[dict]) -> pa.Table:
    schema = load_table_schema(name)
    return pa.Table.from_arrays(
        [
            pa.array([r.get(c.name) for r in rows], type=ARROW_TYPES[c.datatype])
            for c in schema.columns
        ],
        names=schema.column_names,
    )


CURRENT_CHECK = {
    "tap_schema.schemas": ("schema_name", "description"),
    "tap_schema.tables": ("table_name", "description"),
    "tap_schema.columns": ("table_name", "column_name", "datatype", "unit", "ucd", "description"),
}
"""The TAP_SCHEMA columns a database's metadata must match to be served as current: a
database whose stored descriptions (e.g. of a table or schema) differ was ingested by
another version, and clients reading TAP_SCHEMA would see stale text."""


def metadata_matches(tables: list[TableSchema], stored: dict[str, list[tuple]]) -> bool:
    """Whether ``stored`` (rows of the :data:`CURRENT_CHECK` columns per TAP_SCHEMA table,
    in any order) is what this version generates for ``tables``."""
    generated = tap_schema_tables(tables)
    for name, cols in CURRENT_CHECK.items():
        want = zip(*(generated[name].column(c).to_pylist() for c in cols), strict=True)
        if sorted(map(repr, want)) != sorted(map(repr, stored.get(name, []))):
            return False
    return True


def tap_schema_tables(tables: list[TableSchema] | None = None) -> dict[str, pa.Table]:
    """Rows of every TAP_SCHEMA table, keyed by ``tap_schema.<name>``."""
    tables = tap_tables() if tables is None else tables
    schema_names = list(dict.fromkeys(t.schema for t in tables))
    schemas = [
        {"schema_name": s, "description": SCHEMA_DESCRIPTIONS.get(s or ""), "schema_index": i}
        for i, s in enumerate(schema_names)
    ]
    rows_tables, rows_columns, rows_keys, rows_key_columns = [], [], [], []
    for ti, t in enumerate(tables):
        rows_tables.append(
            {
                "schema_name": t.schema,
                "table_name": t.qualified_name,
                "table_type": "table",
                "utype": t.utype,
                "description": t.description,
                "table_index": ti,
            }
        )
        for ci, c in enumerate(t.columns):
            size = int(c.arraysize) if c.arraysize and c.arraysize.isdigit() else None
            rows_columns.append(
                {
                    "table_name": t.qualified_name,
                    "column_name": adql_column_name(c.name),
                    "datatype": c.datatype,
                    "arraysize": c.arraysize,
                    "xtype": c.xtype,
                    "size": size,
                    "description": c.description,
                    "utype": c.utype,
                    "unit": c.unit,
                    "ucd": c.ucd,
                    "indexed": int(c.indexed),
                    "principal": int(c.principal),
                    "std": int(c.std),
                    "column_index": ci,
                }
            )
        for ki, fk in enumerate(t.foreign_keys):
            key_id = f"{t.qualified_name}.fk{ki}"
            rows_keys.append(
                {
                    "key_id": key_id,
                    "from_table": t.qualified_name,
                    "target_table": fk.target,
                    "description": fk.description or None,
                }
            )
            for a, b in zip(fk.columns, fk.target_columns, strict=True):
                rows_key_columns.append({"key_id": key_id, "from_column": a, "target_column": b})
    return {
        "tap_schema.schemas": _table("tap_schema.schemas", schemas),
        "tap_schema.tables": _table("tap_schema.tables", rows_tables),
        "tap_schema.columns": _table("tap_schema.columns", rows_columns),
        "tap_schema.keys": _table("tap_schema.keys", rows_keys),
        "tap_schema.key_columns": _table("tap_schema.key_columns", rows_key_columns),
    }
