"""Publisher DIDs of stars, ``<authority>?<field>/<field_id>``, and of one star's
lightcurve in one band (an ObsCore row), ``<authority>?<field>/<field_id>/<band>``.

The one place the DID format is spelt out; everything that mints or reads DIDs (the
ingest, DataLink, the lightcurve service, the SAMP bridge, cross-matching) uses these.
"""

from __future__ import annotations

import re

from .errors import InvalidRequestError

__all__ = ["BANDS", "DEFAULT_AUTHORITY", "did_prefix", "make_did", "parse_any_did", "parse_did"]

DEFAULT_AUTHORITY = "ivo://romerea-vo.local/rome"
"""The IVOA authority of DIDs minted by an ingest that names none."""

_FIELD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
BANDS = ("gp", "rp", "ip")


def did_prefix(authority: str, field: str | None = None) -> str:
    """What every DID of ``authority`` (and of ``field``, if given) begins with; a DID is
    the prefix of its field followed by the star's field_id."""
    return f"{authority}?" if field is None else f"{authority}?{field}/"


def make_did(authority: str, field: str, field_id: int) -> str:
    """The DID of a star (the value of ``rome.field_index.did``)."""
    return f"{did_prefix(authority, field)}{int(field_id)}"


def parse_did(did: str, authority: str) -> tuple[str, int]:
    """``(field, field_id)`` of a DID minted by this service; InvalidRequestError says why
    a string is not one (wrong authority, no ``?``, bad field name or id)."""
    text = did.strip()
    prefix = did_prefix(authority)
    if not text.startswith(prefix):
        if "?" in text and text.startswith("ivo://"):
            raise InvalidRequestError(
                f"{did!r} is not a DID of this service (expected {authority}?<field>/<field_id>)"
            )
        raise InvalidRequestError(
            f"malformed ID {did!r}: expected a publisher DID {authority}?<field>/<field_id>"
        )
    field, sep, ident = text[len(prefix) :].rpartition("/")
    if not sep or not _FIELD.match(field) or not ident.isdigit() or int(ident) < 1:
        raise InvalidRequestError(
            f"malformed ID {did!r}: expected {authority}?<field>/<field_id> with a "
            "positive integer field_id"
        )
    return field, int(ident)


def parse_any_did(did: str, authority: str) -> tuple[str, int, str | None]:
    """``(field, field_id, band)`` of a star's DID (band None) or of one of its per-band
    lightcurve DIDs (``.../<field_id>/<band>``, as in ``ivoa.obscore``); InvalidRequestError
    as :func:`parse_did` says, or for an unknown band."""
    text = did.strip()
    head, sep, last = text.rpartition("/")
    if sep and last and not last.isdigit() and head.startswith(authority + "?"):
        if last not in BANDS:
            raise InvalidRequestError(
                f"malformed ID {did!r}: {last!r} is not a ROME band (gp, rp or ip)"
            )
        field, field_id = parse_did(head, authority)
        return field, field_id, last
    field, field_id = parse_did(text, authority)
    return field, field_id, None
