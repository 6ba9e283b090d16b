"""Publisher DIDs of stars, ``<authority>?<field>/<field_id>``, and of one star's
lightcurve in one band (an ObsCore row), ``<authority>?<field>/<field_id>/<band>``.

The one place the DID format is spelt out; everything that mints or reads DIDs (the
ingest, DataLink, the lightcurve service, the SAMP bridge, cross-matching) uses these.
"""

from __future__ import annotations

import re

from .errors import InvalidRequestError

__all__ = [
    "BANDS",
    "DEFAULT_AUTHORITY",
    "MAX_FIELD_ID",
    "did_prefix",
    "make_did",
    "parse_any_did",
    "parse_did",
    "parse_field_id",
]

DEFAULT_AUTHORITY = "ivo://romerea-vo.local/rome"
"""The IVOA authority of DIDs minted by an ingest that names none."""

_FIELD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
BANDS = ("gp", "rp", "ip")
MAX_FIELD_ID = 2**63 - 1
"""The largest field_id a DID can name (the column is a 64-bit integer)."""
# ASCII digits, no leading zero: str.isdigit() also takes "²" and "١٠٠", which int()
# then refuses or reads as 100, and a DID has one spelling.
_FIELD_ID = re.compile(r"[1-9][0-9]{0,18}")


def parse_field_id(text: str) -> int | None:
    """The field_id ``text`` spells canonically (ASCII digits, no sign or leading zero,
    1 to `MAX_FIELD_ID`), else None."""
    if not _FIELD_ID.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_FIELD_ID else None


def did_prefix(authority: str, field: str | None = None) -> str:
    """What every DID of ``authority`` (and of ``field``, if given) begins with; a DID is
    the prefix of its field followed by the star's field_id."""
    return f"{authority}?" if field is None else f"{authority}?{field}/"


def make_did(authority: str, field: str, field_id: int) -> str:
    """The DID of a star (the value of ``rome.field_index.did``)."""
    return f"{did_prefix(authority, field)}{int(field_id)}"


def _shown(text: str, limit: int = 200) -> str:
    """``text`` quoted for an error message, cut at ``limit`` characters."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def parse_did(did: str, authority: str) -> tuple[str, int]:
    """``(field, field_id)`` of a DID minted by this service; InvalidRequestError says why
    a string is not one (wrong authority, no ``?``, bad field name or id)."""
    text = did.strip()
    prefix = did_prefix(authority)
    if not text.startswith(prefix):
        if "?" in text and text.startswith("ivo://"):
            raise InvalidRequestError(
                f"{_shown(did)} is not a DID of this service "
                f"(expected {authority}?<field>/<field_id>)"
            )
        raise InvalidRequestError(
            f"malformed ID {_shown(did)}: expected a publisher DID {authority}?<field>/<field_id>"
        )
    field, sep, ident = text[len(prefix) :].rpartition("/")
    field_id = parse_field_id(ident) if sep and _FIELD.match(field) else None
    if field_id is None:
        raise InvalidRequestError(
            f"malformed ID {_shown(did)}: expected {authority}?<field>/<field_id> with a "
            "field_id of ASCII digits (1 to 2^63-1, no leading zero)"
        )
    return field, field_id


def parse_any_did(did: str, authority: str) -> tuple[str, int, str | None]:
    """``(field, field_id, band)`` of a star's DID (band None) or of one of its per-band
    lightcurve DIDs (``.../<field_id>/<band>``, as in ``ivoa.obscore``); InvalidRequestError
    as :func:`parse_did` says, or for an unknown band."""
    text = did.strip()
    head, sep, last = text.rpartition("/")
    if sep and last and not last.isdigit() and head.startswith(authority + "?"):
        if last not in BANDS:
            raise InvalidRequestError(
                f"malformed ID {_shown(did)}: {_shown(last)} is not a ROME band (gp, rp or ip)"
            )
        field, field_id = parse_did(head, authority)
        return field, field_id, last
    field, field_id = parse_did(text, authority)
    return field, field_id, None
