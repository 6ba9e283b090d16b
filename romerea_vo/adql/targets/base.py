"""The interface between the target-independent analyser and one SQL engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from sqlglot import exp

from ..catalog import TableInfo
from ..model import Geometry, Value


class Backend(ABC):
    """Everything that depends on the target engine.

    The analyser hands over values whose sub-expressions are already target SQL (sqlglot
    trees); a backend returns sqlglot trees too (a backend may wrap raw SQL text in
    :class:`Raw`). Geometry arrives in structured form (:mod:`..model`), in the coordinate
    system it was written in; rotating it to ICRS is the backend's job.
    """

    name: ClassVar[str]

    @abstractmethod
    def table(self, info: TableInfo) -> exp.Expression:
        """The physical table (an ``exp.Table``) for a catalogue table."""

    @abstractmethod
    def number(self, text: str, integer: bool) -> exp.Expression:
        """A numeric literal, as written in ADQL (unsigned)."""

    @abstractmethod
    def function(self, name: str, args: list[Value]) -> exp.Expression:
        """An ADQL maths, string or aggregate function (``name`` upper case), or a declared
        user-defined function (``name`` as declared). Arity is already checked.
        Aggregates receive ``exp.Star`` for ``COUNT(*)``; ``DISTINCT`` arrives as an
        ``exp.Distinct`` wrapping the argument."""

    @abstractmethod
    def divide(self, left: Value, right: Value, integer: bool) -> exp.Expression:
        """``left / right``; ``integer``: both are integers and ADQL means integer division."""

    @abstractmethod
    def cast(self, value: Value, target: str, length: int | None) -> exp.Expression:
        """CAST to an ADQL type name (``SMALLINT`` ... ``DOUBLE PRECISION``, ``CHAR``,
        ``VARCHAR``, ``TIMESTAMP``, ``POINT``, ``CIRCLE``, ``POLYGON``)."""

    @abstractmethod
    def scale(self, value: Value, factor: float) -> exp.Expression:
        """``value * factor`` (IN_UNIT)."""

    @abstractmethod
    def geometry(self, geom: Geometry) -> exp.Expression:
        """A geometry as a result value (DuckDB: a DALI double list)."""

    @abstractmethod
    def geometry_function(self, name: str, args: list[Value]) -> Value:
        """AREA, CENTROID, COORD1, COORD2, COORDSYS, DISTANCE (2 points or 4 numbers),
        CONTAINS and INTERSECTS used as values (0/1). Geometry args carry ``.geom``."""

    @abstractmethod
    def geometry_predicate(
        self, name: str, a: Geometry, b: Geometry, truth: bool
    ) -> exp.Expression:
        """``CONTAINS(a, b) = 1`` (``truth``) or ``= 0`` as a condition: the place for
        index-friendly rewrites such as a declination band before the exact test."""

    @abstractmethod
    def distance_predicate(
        self, a: Geometry, b: Geometry, op: str, radius: Value
    ) -> exp.Expression | None:
        """``DISTANCE(a, b) op radius`` with ``op`` one of ``<``, ``<=``; None to let the
        analyser emit the plain comparison."""

    def output(self, value: Value) -> exp.Expression:
        """A column of the final result; a target may convert what has no VOTable type
        (an untyped NULL, a timestamp) here."""
        return value.sql

    @abstractmethod
    def generate(self, tree: exp.Expression) -> str:
        """The SQL text of a finished query tree."""


class Raw(exp.Expression):
    """A piece of SQL text made by a backend; generated in parentheses."""

    arg_types: ClassVar[dict[str, bool]] = {"this": True}
