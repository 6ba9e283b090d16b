"""Load table and column metadata from ``votable_schemas/`` (the single source of truth).

Everything published about a table (DDL, TAP_SCHEMA, VOSI tables, VOTable FIELDs) is
generated from these objects.
"""

from __future__ import annotations

import functools
import itertools
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import astropy.units as u

VOTABLE_DATATYPES = {
    "boolean", "unsignedByte", "short", "int", "long", "float", "double", "char", "unicodeChar",
}  # fmt: skip

_COLUMN_KEYS = {
    "name", "datatype", "description", "unit", "ucd", "arraysize", "utype", "xtype",
    "principal", "indexed", "std", "expand",
}  # fmt: skip
_TABLE_KEYS = {
    "name", "schema", "description", "utype", "primary_key", "foreign_keys", "order",
    "columns_from", "virtual", "field_column",
}  # fmt: skip


@dataclass(frozen=True)
class ColumnSchema:
    """One published column: name, VOTable datatype, unit, UCD, description and TAP flags."""

    name: str
    datatype: str
    description: str
    unit: str | None = None
    ucd: str | None = None
    arraysize: str | None = None
    utype: str | None = None
    xtype: str | None = None
    principal: bool = False
    indexed: bool = False
    std: bool = False

    @functools.cached_property
    def astropy_unit(self) -> u.UnitBase | None:
        return u.Unit(self.unit, format="vounit") if self.unit else None


@dataclass(frozen=True)
class ForeignKey:
    """``columns`` of this table reference ``target_columns`` of ``target`` (qualified)."""

    target: str
    columns: tuple[str, ...]
    target_columns: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class TableSchema:
    """A published table; ``schema`` is None for tables that are not in TAP (lightcurves)."""

    name: str
    description: str
    columns: tuple[ColumnSchema, ...]
    schema: str | None = None
    utype: str | None = None
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = field(default_factory=tuple)
    order: tuple[str, ...] = ()
    virtual: bool = False
    """Not stored in the database: its rows are made per query (rome.photometry)."""
    field_column: str = "field"
    """The column naming the ROME field a row belongs to (ingest replaces a field's rows)."""

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def stored_schema(self) -> str:
        """The (lower-case) schema a stored table is in; ValueError for a table without
        one (a lightcurve table is never stored)."""
        if not self.schema:
            raise ValueError(f"table {self.name} has no schema: it is not stored")
        return self.schema.lower()

    def column(self, name: str) -> ColumnSchema:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table {self.name!r} has no column {name!r} in votable_schemas/")

    @functools.cached_property
    def by_name(self) -> dict[str, ColumnSchema]:
        return {c.name: c for c in self.columns}

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


_REGULAR_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def is_regular_identifier(name: str) -> bool:
    """An ADQL regular identifier: a Latin letter, then letters, digits or underscores,
    and not a reserved word."""
    from ..adql.reserved import is_reserved

    return bool(_REGULAR_IDENTIFIER.fullmatch(name)) and not is_reserved(name)


def adql_column_name(name: str) -> str:
    """The column's name as ADQL must write it: delimited when it is a reserved word or
    not a regular identifier (TAP 1.1 section 4.3: TAP_SCHEMA.columns holds ``"size"``,
    not ``size``; an external catalogue's ``_RAJ2000`` is ``"_RAJ2000"``)."""
    if is_regular_identifier(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def schema_dir() -> Path:
    """The installed copy inside the package, else the source checkout's folder."""
    installed = resources.files("romerea_vo") / "votable_schemas"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "votable_schemas"


def _expand(raw: dict, path: Path, i: int) -> list[dict]:
    """Expand a templated column: ``expand`` is a list of {key: [values]} groups; keys in
    one group vary together, groups multiply (first group = outer loop); ``{key}`` in any
    string value is replaced."""
    groups = raw.pop("expand", None)
    if groups is None:
        return [raw]
    combos = []
    for group in groups:
        lengths = {len(v) for v in group.values()}
        if len(lengths) != 1:
            raise ValueError(f"{path}: column #{i + 1}: expand lists differ in length")
        n = lengths.pop()
        combos.append([{k: v[j] for k, v in group.items()} for j in range(n)])
    out = []
    for parts in itertools.product(*combos):
        subst = {k: v for part in parts for k, v in part.items()}
        out.append({k: v.format(**subst) if isinstance(v, str) else v for k, v in raw.items()})
    return out


@functools.cache
def load_table_schema(name: str) -> TableSchema:
    """Parse ``votable_schemas/<name>.toml``; errors name the file and column at fault."""
    path = schema_dir() / f"{name}.toml"
    with path.open("rb") as fh:
        doc = tomllib.load(fh)
    return table_schema_from_document(doc, str(path))


def table_schema_from_document(doc: dict, origin: str = "table definition") -> TableSchema:
    """A :class:`TableSchema` from a document shaped like a votable_schemas/ TOML file
    (``{"table": {...}, "columns": [...]}``), e.g. one stored in a database; errors name
    ``origin`` and the column at fault."""
    table = doc["table"]
    if set(table) - _TABLE_KEYS:
        raise ValueError(f"{origin}: unknown [table] keys {sorted(set(table) - _TABLE_KEYS)}")
    cols: list[ColumnSchema] = []
    if "columns_from" in table:  # the same columns as another table, defined once there
        cols += load_table_schema(table["columns_from"]).columns
    for i, raw in enumerate(doc.get("columns", [])):
        unknown = set(raw) - _COLUMN_KEYS
        if unknown or raw.get("datatype") not in VOTABLE_DATATYPES:
            raise ValueError(f"{origin}: column #{i + 1} ({raw.get('name')!r}) is malformed")
        cols += [ColumnSchema(**c) for c in _expand(dict(raw), Path(origin), i)]
    names = [c.name for c in cols]
    if len(set(names)) != len(names):
        raise ValueError(f"{origin}: duplicate column names")
    fks = tuple(
        ForeignKey(
            target=fk["target"],
            columns=tuple(fk["columns"]),
            target_columns=tuple(fk.get("target_columns", fk["columns"])),
            description=fk.get("description", ""),
        )
        for fk in table.get("foreign_keys", [])
    )
    for key in (*table.get("primary_key", []), *table.get("order", [])):
        if key not in names:
            raise ValueError(f"{origin}: key column {key!r} is not a column")
    return TableSchema(
        name=table["name"],
        description=table["description"].strip(),
        columns=tuple(cols),
        schema=table.get("schema"),
        utype=table.get("utype"),
        primary_key=tuple(table.get("primary_key", ())),
        foreign_keys=fks,
        order=tuple(table.get("order", ())),
        virtual=bool(table.get("virtual", False)),
        field_column=table.get("field_column", "field"),
    )


def table_schema_document(table: TableSchema) -> dict:
    """The inverse of :func:`table_schema_from_document`: a TOML-shaped dict (JSON-safe)."""
    head: dict = {"name": table.name, "description": table.description}
    for key in ("schema", "utype"):
        if getattr(table, key) is not None:
            head[key] = getattr(table, key)
    for key in ("primary_key", "order"):
        if getattr(table, key):
            head[key] = list(getattr(table, key))
    if table.foreign_keys:
        head["foreign_keys"] = [
            {
                "target": fk.target,
                "columns": list(fk.columns),
                "target_columns": list(fk.target_columns),
                "description": fk.description,
            }
            for fk in table.foreign_keys
        ]
    if table.virtual:
        head["virtual"] = True
    if table.field_column != "field":
        head["field_column"] = table.field_column
    columns = []
    for col in table.columns:
        raw: dict = {"name": col.name, "datatype": col.datatype, "description": col.description}
        for key in ("unit", "ucd", "arraysize", "utype", "xtype"):
            if getattr(col, key) is not None:
                raw[key] = getattr(col, key)
        for key in ("principal", "indexed", "std"):
            if getattr(col, key):
                raw[key] = True
        columns.append(raw)
    return {"table": head, "columns": columns}


ROME_TABLES = (
    "field_index", "stars", "datasets", "images", "stamps", "dataset_stars", "lightcurve_stats",
    "microlensing_candidates", "photometry", "obscore",
)  # fmt: skip
"""The published tables made by ``romerea-vo ingest`` (file stems in votable_schemas/), in
TAP_SCHEMA order: the ``rome`` schema and ObsCore's ``ivoa.obscore``."""

TAP_SCHEMA_TABLES = tuple(
    f"tap_schema.{n}" for n in ("schemas", "tables", "columns", "keys", "key_columns")
)
"""The TAP_SCHEMA tables (TAP 1.1 section 4), described in TAP_SCHEMA like any other."""

SCHEMA_DESCRIPTIONS = {
    "rome": "ROME/REA microlensing survey field data products (pyDANDIA): star catalogues, "
    "datasets, images, per-star lightcurve statistics and every photometric point "
    "(rome.photometry, read from the HDF5 cubes for the stars a query names). Each star's "
    "did leads to its lightcurves (the lightcurve service and DataLink).",
    "ivoa": "IVOA data models: ivoa.obscore (ObsCore 1.1) lists every ROME/REA lightcurve "
    "(one row per star and band) for ObsTAP queries across the VO.",
    "TAP_SCHEMA": "Metadata of the tables and columns this service publishes (TAP 1.1).",
}


def rome_tables() -> list[TableSchema]:
    """The schemas of the published ROME tables."""
    return [load_table_schema(n) for n in ROME_TABLES]


def tap_tables(extra: Sequence[TableSchema] = (), *, rome: bool = True) -> list[TableSchema]:
    """Every table the TAP service publishes: the ROME tables (unless ``rome`` is false:
    a database holding only external catalogues), the ``extra`` tables (external
    catalogues, in the given order), then TAP_SCHEMA."""
    return (
        (rome_tables() if rome else [])
        + list(extra)
        + [load_table_schema(n) for n in TAP_SCHEMA_TABLES]
    )
