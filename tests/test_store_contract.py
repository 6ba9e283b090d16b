"""Both engines keep the store's contract (`romerea_vo.store.contract`): every member of
`CatalogDatabase` and `CatalogSession`, with the same parameters, on DuckDB and on
PostgreSQL; and the code above the store annotates the Protocols, not an engine."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from romerea_vo.store.contract import CatalogDatabase, CatalogSession
from romerea_vo.store.database import Database
from romerea_vo.store.postgres import PgSession, PostgresDatabase
from romerea_vo.store.session import DuckDBSession

PACKAGE = Path(__file__).resolve().parents[1] / "romerea_vo"


def _members(protocol: type) -> dict[str, object]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return {n: getattr(protocol, n, None) for n in sorted(names)}


def _accepts(engine_func, contract_func) -> bool:
    """Whether ``engine_func`` takes every call ``contract_func`` allows: the same
    parameters, same kinds, and anything more only as optional keywords."""
    engine = inspect.signature(engine_func).parameters
    contract = inspect.signature(contract_func).parameters
    same = all(n in engine and engine[n].kind == p.kind for n, p in contract.items())
    extra = [p for n, p in engine.items() if n not in contract]
    optional = all(
        p.kind == p.KEYWORD_ONLY and p.default is not inspect.Parameter.empty for p in extra
    )
    return same and optional


@pytest.mark.parametrize(
    ("protocol", "engines"),
    [
        (CatalogDatabase, (Database, PostgresDatabase)),
        (CatalogSession, (DuckDBSession, PgSession)),
    ],
)
def test_engines_keep_the_contract(protocol, engines):
    for name, member in _members(protocol).items():
        for engine in engines:
            if callable(member):
                assert callable(getattr(engine, name, None)), f"{engine.__name__}.{name}"
                assert _accepts(getattr(engine, name), member), (
                    f"{engine.__name__}.{name} does not take the contract's parameters"
                )
            else:  # a data attribute: set on the class or in __init__
                source = inspect.getsource(engine)
                assert hasattr(engine, name) or re.search(rf"self\.{name}\b.*=", source), (
                    f"{engine.__name__} has no {name}"
                )


def test_code_above_the_store_annotates_the_contract():
    above = [p for p in PACKAGE.rglob("*.py") if p.parent.name not in ("store", "products")]
    engine_annotations = re.compile(r":\s*(Database|PostgresDatabase|DuckDBSession|PgSession)\b")
    offenders = [
        f"{p.relative_to(PACKAGE.parent)}:{i}"
        for p in above
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if engine_annotations.search(line)
    ]
    assert offenders == []
