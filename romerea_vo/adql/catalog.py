"""What the translator knows about the published tables: names, columns, types."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ADQLError


@dataclass(frozen=True)
class ColumnInfo:
    """A published column. ``datatype`` is a VOTable datatype (``double``, ``char``, ...);
    geometry columns have ``xtype`` point/circle/polygon and hold DALI double arrays.
    ``unit`` (VOUnit) lets ``IN_UNIT`` convert values."""

    name: str
    datatype: str
    xtype: str | None = None
    arraysize: str | None = None
    unit: str | None = None


@dataclass(frozen=True)
class TableInfo:
    """A published table: ``name`` as ADQL users write it (``rome.stars``,
    ``TAP_UPLOAD.mylist``; delimited parts keep their double quotes), ``physical`` as the
    engine's SQL needs it (already quoted), and its columns. ``row_key``: the name of
    a column that identifies each row (``rowid`` of a stored table, a numbering column of
    an upload), which lets a target run positional joins of the table outside SQL."""

    name: str
    physical: str
    columns: tuple[ColumnInfo, ...]
    row_key: str | None = None

    @property
    def parts(self) -> tuple[tuple[str, bool], ...]:
        """The name's parts as (text, delimited) pairs."""
        return split_name(self.name)


def split_name(name: str) -> tuple[tuple[str, bool], ...]:
    """Split ``a."b.c".d`` into ``(("a", False), ("b.c", True), ("d", False))``."""
    parts: list[tuple[str, bool]] = []
    i, n = 0, len(name)
    while i <= n:
        if i < n and name[i] == '"':
            j, text = i + 1, []
            while j < n:
                if name[j] == '"':
                    if j + 1 < n and name[j + 1] == '"':
                        text.append('"')
                        j += 2
                        continue
                    break
                text.append(name[j])
                j += 1
            parts.append(("".join(text), True))
            i = j + 2  # past the closing quote and the dot
        else:
            j = name.find(".", i)
            j = n if j < 0 else j
            parts.append((name[i:j], False))
            i = j + 1
    return tuple(parts)


def name_matches(written: str, written_quoted: bool, published: str, published_quoted: bool):
    """Delimited names compare exactly, regular ones without regard to case."""
    if written_quoted or published_quoted:
        return written == published if written_quoted else written.lower() == published.lower()
    return written.lower() == published.lower()


class Catalog:
    """Tables by qualified name (case-insensitive for regular identifiers); a table may also
    be named by a trailing part of its name (``stars`` for ``rome.stars``) when that is
    unambiguous."""

    def __init__(self, tables: Iterable[TableInfo]):
        self._tables: tuple[TableInfo, ...] = tuple(tables)

    @property
    def tables(self) -> tuple[TableInfo, ...]:
        return self._tables

    def with_tables(self, extra: Iterable[TableInfo]) -> Catalog:
        """A catalogue with ``extra`` added (e.g. the TAP_UPLOAD tables of one request)."""
        return Catalog(self._tables + tuple(extra))

    def find(self, written: list[tuple[str, bool]]) -> list[TableInfo]:
        """Tables whose name ends with the written parts."""
        k = len(written)
        found = []
        for table in self._tables:
            parts = table.parts
            if len(parts) < k:
                continue
            if all(
                name_matches(w, wq, p, pq)
                for (w, wq), (p, pq) in zip(written, parts[len(parts) - k :], strict=True)
            ):
                found.append(table)
        if len(found) > 1:
            # An exact full-length match wins over a suffix match (`stars` vs `x.stars`).
            full = [t for t in found if len(t.parts) == k]
            if len(full) == 1:
                return full
        return found

    def lookup(
        self, written: list[tuple[str, bool]], line: int | None = None, col: int | None = None
    ) -> TableInfo:
        """The one table the written name refers to, or an ADQLError saying why not."""
        shown = ".".join(_show(p, q) for p, q in written)
        found = self.find(written)
        if len(found) == 1:
            return found[0]
        if found:
            listed = ", ".join(sorted(t.name for t in found))
            raise ADQLError(f"table name {shown} is ambiguous ({listed}); qualify it", line, col)
        names = [t.name for t in self._tables]
        close = difflib.get_close_matches(shown, names, n=3, cutoff=0.6)
        if not close:
            bare = {t.parts[-1][0].lower(): t.name for t in self._tables}
            close = [bare[m] for m in difflib.get_close_matches(written[-1][0].lower(), bare, 3)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ADQLError(f"unknown table {shown}{hint}", line, col)


def _show(name: str, quoted: bool) -> str:
    return '"' + name.replace('"', '""') + '"' if quoted else name
