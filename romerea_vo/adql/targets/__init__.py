"""Target SQL engines. See :class:`.base.Backend` for the interface."""

from __future__ import annotations

from collections.abc import Callable

from .base import Backend, Raw

_BACKENDS: dict[str, Callable[[], Backend]] = {}


def register(name: str, factory: Callable[[], Backend]) -> None:
    """Make a backend available as ``translate(..., target=name)``."""
    _BACKENDS[name] = factory


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS and name == "duckdb":
        from .duckdb import DuckDBBackend

        register("duckdb", DuckDBBackend)
    if name not in _BACKENDS and name == "pgsphere":
        from .pgsphere import PgSphereBackend

        register("pgsphere", PgSphereBackend)
    try:
        return _BACKENDS[name]()
    except KeyError:
        known = ", ".join(sorted({*_BACKENDS, "duckdb", "pgsphere"}))
        raise ValueError(f"unknown ADQL target {name!r}; known targets: {known}") from None


__all__ = ["Backend", "Raw", "get_backend", "register"]
