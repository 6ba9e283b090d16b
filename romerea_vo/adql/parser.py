"""ADQL 2.1 text → sqlglot syntax tree.

sqlglot's parser is deliberately lenient (it reads many SQL dialects), so the ADQL
dialect here is paired with a token pass that enforces ADQL's lexical rules and the
clause order, and the analyser (:mod:`.analyzer`) whitelists the tree's node types.
"""

from __future__ import annotations

import re
from typing import ClassVar

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.parser import Parser
from sqlglot.tokens import Token, Tokenizer, TokenType

from .errors import ADQLError, position

# Symbols ADQL has; anything else (``::``, ``[``, ``%``, ``==``, ``->``, ``@``, ...) is an error.
_SYMBOLS = {"(", ")", ",", ".", "+", "-", "*", "/", "=", "<", ">", "<=", ">=", "<>", "!=", "||"}
_REGULAR_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_NUMBER = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\Z")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\s+[A-Za-z_][A-Za-z0-9_$]*)*\Z")

# Clause order inside one query specification; a smaller rank after a larger one at the same
# parenthesis depth is a syntax error (sqlglot accepts e.g. ``FROM a OFFSET 2 JOIN b``).
_CLAUSE_RANK = {
    TokenType.SELECT: 1,
    TokenType.FROM: 2,
    TokenType.JOIN: 2,
    TokenType.WHERE: 3,
    TokenType.GROUP_BY: 4,
    TokenType.HAVING: 5,
    TokenType.ORDER_BY: 6,
    TokenType.OFFSET: 7,
}
_CLAUSE_NAMES = {
    TokenType.SELECT: "SELECT",
    TokenType.FROM: "FROM",
    TokenType.JOIN: "JOIN",
    TokenType.WHERE: "WHERE",
    TokenType.GROUP_BY: "GROUP BY",
    TokenType.HAVING: "HAVING",
    TokenType.ORDER_BY: "ORDER BY",
    TokenType.OFFSET: "OFFSET",
}
_SET_OPERATORS = {TokenType.UNION, TokenType.EXCEPT, TokenType.INTERSECT}

# The type names CAST accepts (ADQL 2.1 §4.7), as token sequences.
CAST_TYPES = {
    ("SMALLINT",),
    ("INTEGER",),
    ("BIGINT",),
    ("REAL",),
    ("DOUBLE", "PRECISION"),
    ("CHAR",),
    ("VARCHAR",),
    ("TIMESTAMP",),
    ("POINT",),
    ("CIRCLE",),
    ("POLYGON",),
}


class ADQLTokenizer(Tokenizer):
    QUOTES: ClassVar = ["'"]
    IDENTIFIERS: ClassVar = ['"']
    STRING_ESCAPES: ClassVar = ["'"]
    COMMENTS: ClassVar = ["--"]
    KEYWORDS: ClassVar = {
        **{
            k: v
            for k, v in Tokenizer.KEYWORDS.items()
            # ADQL's CAST knows REAL and DOUBLE PRECISION, not FLOAT/DOUBLE/INT; as plain
            # words these become identifiers, which the CAST check then rejects by name.
            if k not in {"FLOAT", "DOUBLE", "INT", "/*+"}
        },
        "TOP": TokenType.TOP,
    }


class ADQLParser(Parser):
    # Every function call becomes exp.Anonymous, so the analyser sees the name as written and
    # decides what it means; only CAST (and CASE, an extension) keep their own syntax.
    FUNCTIONS: ClassVar = {}
    FUNCTION_PARSERS: ClassVar = {"CAST": Parser.FUNCTION_PARSERS["CAST"]}
    NO_PAREN_FUNCTION_PARSERS: ClassVar = {"CASE": Parser.NO_PAREN_FUNCTION_PARSERS["CASE"]}
    NO_PAREN_FUNCTIONS: ClassVar = {}

    def _parse_join(self, skip_join_token=False, parse_bracket=False, alias_tokens=None):
        # A comma join and a JOIN without a condition look alike in sqlglot's tree, but
        # only the second needs ON or USING.
        comma = self._curr is not None and self._curr.token_type == TokenType.COMMA
        join = super()._parse_join(skip_join_token, parse_bracket, alias_tokens)
        if join is not None and comma:
            join.meta["comma"] = True
        return join


class ADQLDialect(Dialect):
    Tokenizer = ADQLTokenizer
    Parser = ADQLParser


_DIALECT = ADQLDialect()


def _error_at(text: str, offset: int | None, message: str) -> ADQLError:
    line, col = position(text, offset)
    return ADQLError(message, line, col)


def _show(token: Token) -> str:
    if token.token_type == TokenType.STRING:
        return "'" + token.text + "'"
    if token.token_type == TokenType.IDENTIFIER:
        return '"' + token.text + '"'
    return token.text


def tokenize(text: str) -> list[Token]:
    """sqlglot tokens, checked against ADQL's lexical rules."""
    try:
        tokens = _DIALECT.tokenize(text)
    except TokenError:
        offset, quote = _unclosed_quote(text)
        why = (
            "a double-quoted name is not closed"
            if quote == '"'
            else "a string literal is not closed"
            if quote == "'"
            else "cannot read the query text"
        )
        raise _error_at(text, offset, why) from None
    if not tokens:
        raise ADQLError("the query is empty")
    _check_tokens(text, tokens)
    return tokens


def _unclosed_quote(text: str) -> tuple[int | None, str | None]:
    """Where an unterminated '...' or "..." starts (comments and closed quotes skipped)."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif c in "'\"":
            j = i + 1
            while True:
                j = text.find(c, j)
                if j < 0:
                    return i, c
                if text.startswith(c * 2, j):
                    j += 2
                    continue
                break
            i = j + 1
        else:
            i += 1
    return None, None


def _check_tokens(text: str, tokens: list[Token]) -> None:
    if tokens[0].token_type not in (TokenType.SELECT, TokenType.WITH, TokenType.L_PAREN):
        raise _error_at(text, tokens[0].start, "an ADQL query must start with SELECT (or WITH)")
    depth = 0
    ranks: dict[int, tuple[int, str]] = {}
    n = len(tokens)
    for i, tok in enumerate(tokens):
        tt = tok.token_type
        nxt = tokens[i + 1] if i + 1 < n else None
        raw = text[tok.start : tok.end + 1]
        if tt in (TokenType.STRING, TokenType.IDENTIFIER):
            if tt == TokenType.STRING and not raw.startswith("'"):
                raise _error_at(text, tok.start, f"{raw[:20]!r}: ADQL strings use plain quotes")
        elif tt == TokenType.NUMBER:
            if not _NUMBER.match(raw):
                raise _error_at(text, tok.start, f"{raw!r} is not an ADQL number")
        elif _WORD.match(raw):
            if tt == TokenType.VAR and not _REGULAR_IDENTIFIER.match(raw):
                if raw.startswith("_"):
                    why = (
                        f"names starting with '_' must be written in double quotes: "
                        f'"{raw}" (regular names start with a letter)'
                    )
                else:
                    why = f"{raw!r} is not a valid name; delimit it with double quotes"
                raise _error_at(text, tok.start, why)
        elif raw == ";":
            if any(t.token_type != TokenType.SEMICOLON for t in tokens[i + 1 :]):
                raise _error_at(text, tok.start, "only one statement (a single query) is allowed")
            continue
        elif raw not in _SYMBOLS:
            raise _error_at(text, tok.start, f"unexpected {raw!r}: not part of ADQL")

        if tt in (TokenType.GROUP_BY, TokenType.ORDER_BY) and (
            nxt is None or nxt.token_type in (TokenType.R_PAREN, TokenType.SEMICOLON)
        ):
            raise _error_at(text, tok.start, f"{raw.upper().split()[0]} BY needs at least one item")
        if tt == TokenType.COMMA and (
            nxt is None or nxt.token_type in (TokenType.R_PAREN, TokenType.FROM)
        ):
            raise _error_at(text, tok.start, "a list ends with a stray ','")
        if tt == TokenType.VAR and raw.upper() == "CAST" and nxt and nxt.text == "(":
            _check_cast_type(text, tokens, i)
        if tt == TokenType.L_PAREN:
            depth += 1
            ranks.pop(depth, None)
        elif tt == TokenType.R_PAREN:
            ranks.pop(depth, None)
            depth = max(0, depth - 1)
        elif tt in _SET_OPERATORS:
            ranks.pop(depth, None)
        elif tt in _CLAUSE_RANK:
            key = tt
            rank = _CLAUSE_RANK[key]
            if key == TokenType.SELECT:
                ranks[depth] = (rank, "SELECT")
                continue
            previous = ranks.get(depth)
            if previous and rank < previous[0]:
                raise _error_at(
                    text,
                    tok.start,
                    f"{_CLAUSE_NAMES[key]} cannot come after {previous[1]}",
                )
            ranks[depth] = (rank, _CLAUSE_NAMES[key])


def _check_cast_type(text: str, tokens: list[Token], i: int) -> None:
    """CAST(x AS type): the type must be one ADQL knows."""
    depth = 0
    j = i + 1
    as_index = None
    while j < len(tokens):
        tt = tokens[j].token_type
        if tt == TokenType.L_PAREN:
            depth += 1
        elif tt == TokenType.R_PAREN:
            depth -= 1
            if depth == 0:
                break
        elif tt == TokenType.ALIAS and depth == 1:
            as_index = j
        j += 1
    if as_index is None:
        return  # the parser reports the syntax error
    words = []
    k = as_index + 1
    while k < j and tokens[k].token_type != TokenType.L_PAREN:
        words.extend(tokens[k].text.upper().split())
        k += 1
    if k < j:  # a length: CHAR(n) / VARCHAR(n)
        inner = tokens[k + 1 : j]
        length_ok = (
            len(inner) == 2
            and inner[0].token_type == TokenType.NUMBER
            and inner[0].text.isdigit()
            and inner[1].token_type == TokenType.R_PAREN
        )
        if tuple(words) not in {("CHAR",), ("VARCHAR",)} or not length_ok:
            raise _error_at(
                text, tokens[as_index + 1].start, "only CHAR(n) and VARCHAR(n) take a length"
            )
        return
    if tuple(words) not in CAST_TYPES:
        allowed = ", ".join(" ".join(t) for t in sorted(CAST_TYPES))
        shown = " ".join(words) or "nothing"
        raise _error_at(
            text,
            tokens[as_index + 1].start if as_index + 1 < len(tokens) else None,
            f"cannot CAST to {shown}; ADQL types are {allowed}",
        )


def parse(text: str) -> exp.Expression:
    """Parse one ADQL query; ADQLError (with line and column) for syntax errors."""
    tokens = tokenize(text)
    try:
        trees = _DIALECT.parser().parse(tokens, text)
    except ParseError as exc:
        raise _parse_error(text, tokens, exc) from None
    except (TokenError, RecursionError, ValueError, IndexError) as exc:
        raise ADQLError(f"cannot parse the query: {type(exc).__name__}") from None
    # sqlglot types parse() results as its Expr base; queries are Expressions
    statements = [t for t in trees if isinstance(t, exp.Expression)]
    if len(statements) != 1:
        raise ADQLError("only one statement (a single query) is allowed")
    return statements[0]


_FRIENDLY = [
    (re.compile(r"Expected table name"), "a table name is expected here"),
    (re.compile(r"'this' missing for .*\.Where'"), "WHERE needs a condition"),
    (re.compile(r"'this' missing for .*\.Having'"), "HAVING needs a condition"),
    (re.compile(r"missing for .*\.Between'"), "BETWEEN needs: value BETWEEN low AND high"),
    (re.compile(r"missing for .*\.(And|Or)'"), "a condition is missing after AND/OR"),
    (re.compile(r"missing for .*\.Limit'"), "TOP needs a non-negative whole number"),
    (re.compile(r"Expecting \)"), "a ')' is missing"),
    (re.compile(r"Expecting \("), "a '(' is missing"),
    (re.compile(r"Invalid expression / Unexpected token"), "unexpected token"),
    (re.compile(r"'expression' missing"), "an expression is missing"),
]


def _parse_error(text: str, tokens: list[Token], exc: ParseError) -> ADQLError:
    err = exc.errors[0] if exc.errors else {}
    line, col = err.get("line"), err.get("col")
    highlight = (err.get("highlight") or "").strip()
    description = err.get("description") or ""
    for pattern, friendly in _FRIENDLY:
        if pattern.search(description):
            description = friendly
            break
    else:
        # Never show sqlglot's internals (token and class reprs) to a user.
        description = re.sub(r"<[^>]*>", "...", description) or "syntax error"
    # sqlglot reports the column where the offending token ends; report where it starts.
    start = None
    if line is not None and col is not None:
        for tok in tokens:
            if tok.line == line and tok.col == col:
                start = tok.start
                break
    at_end = "SENTINEL" in (err.get("description") or "") or not highlight
    last = start is not None and start == tokens[-1].start
    if at_end or (last and description != "unexpected token"):
        line, col = position(text, len(text.rstrip()))
        return ADQLError(f"the query ends too early: {description}", line, col)
    if start is not None:
        line, col = position(text, start)
    near = f" near {highlight!r}" if highlight else ""
    return ADQLError(f"syntax error{near}: {description}", line, col)


def node_offset(node: exp.Expression) -> int | None:
    """Character offset of a node in the query text (of its first located descendant)."""
    for sub in node.walk():
        start = sub.meta.get("start") if sub.meta else None
        if start is not None:
            return start
    return None
