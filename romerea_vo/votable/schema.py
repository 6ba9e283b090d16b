"""Load table and column metadata from ``votable_schemas/`` (the single source of truth)."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import astropy.units as u

VOTABLE_DATATYPES = {
    "boolean", "unsignedByte", "short", "int", "long", "float", "double", "char", "unicodeChar",
}  # fmt: skip


@dataclass(frozen=True)
class ColumnSchema:
    """One published column: name, VOTable datatype, unit, UCD and description."""

    name: str
    datatype: str
    description: str
    unit: str | None = None
    ucd: str | None = None
    arraysize: str | None = None

    @functools.cached_property
    def astropy_unit(self) -> u.UnitBase | None:
        return u.Unit(self.unit, format="vounit") if self.unit else None


@dataclass(frozen=True)
class TableSchema:
    name: str
    description: str
    columns: tuple[ColumnSchema, ...]

    def column(self, name: str) -> ColumnSchema:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table {self.name!r} has no column {name!r} in votable_schemas/")

    @functools.cached_property
    def by_name(self) -> dict[str, ColumnSchema]:
        return {c.name: c for c in self.columns}


def schema_dir() -> Path:
    """The installed copy inside the package, else the source checkout's folder."""
    installed = resources.files("romerea_vo") / "votable_schemas"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "votable_schemas"


@functools.cache
def load_table_schema(name: str) -> TableSchema:
    """Parse ``votable_schemas/<name>.toml``; errors name the file and column at fault."""
    path = schema_dir() / f"{name}.toml"
    with path.open("rb") as fh:
        doc = tomllib.load(fh)
    cols = []
    for i, raw in enumerate(doc.get("columns", [])):
        unknown = set(raw) - {"name", "datatype", "description", "unit", "ucd", "arraysize"}
        if unknown or raw.get("datatype") not in VOTABLE_DATATYPES:
            raise ValueError(f"{path}: column #{i + 1} ({raw.get('name')!r}) is malformed")
        cols.append(ColumnSchema(**raw))
    return TableSchema(doc["table"]["name"], doc["table"]["description"].strip(), tuple(cols))
