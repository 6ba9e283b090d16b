"""The one exception the ADQL translator raises."""

from __future__ import annotations

from ..errors import InvalidRequestError


class ADQLError(InvalidRequestError):
    """A query that is not valid ADQL, or that this service cannot run.

    ``str()`` gives ``"line L, column C: message"`` when the place is known.
    """

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        self.message = message
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is not None and self.column is not None:
            return f"line {self.line}, column {self.column}: {self.message}"
        if self.line is not None:
            return f"line {self.line}: {self.message}"
        return self.message


def position(text: str, offset: int | None) -> tuple[int | None, int | None]:
    """1-based (line, column) of a character offset in ``text``."""
    if offset is None or offset < 0:
        return None, None
    offset = min(offset, len(text))
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column
