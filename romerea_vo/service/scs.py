"""Simple Cone Search 1.1 over ``rome.field_index``: ``GET|POST /scs?RA=&DEC=&SR=``.

* RA, DEC (ICRS) and SR in decimal degrees; SR=0 or MAXREC=0 returns the table metadata
  only (DALI metadata query). MAXREC (default and cap: the TAP limits) truncates the
  result, nearest stars first, with ``QUERY_STATUS=OVERFLOW``.
* VERB=1: ``did``, ``ra``, ``dec``; VERB=2 (default): also field, field_id, Gaia id, the
  per-band dataset counts and the distance from the centre; VERB=3: every column.
* SCS wants exactly one FIELD with UCD ``meta.id;meta.main`` (an array of characters,
  unique in the table). The field index has two identifier columns marked so
  (``field``/``field_id`` together name a star); here the publisher DID ``did`` carries
  ``meta.id;meta.main`` and ``field_id`` is demoted to ``meta.id``.
* Selection: a declination band (the table is sorted by field and dec) plus the exact
  great-circle (haversine) distance.
* Output: TABLEDATA VOTable by default (the oldest SCS clients read nothing else),
  other serialisations and formats by RESPONSEFORMAT. Results carry the DataLink
  service descriptor on the ``did`` column.
* Errors: a DALI error document (HTTP 400, ``QUERY_STATUS=ERROR``) that also holds the
  SCS 1.03 ``<INFO name="Error">`` for older clients.
"""

from __future__ import annotations

import dataclasses

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidRequestError
from ..store.contract import CatalogDatabase
from ..store.session import QueryFailed
from ..votable.formats import resolve_format, write_result
from ..votable.schema import load_table_schema
from ..votable.writer import FieldSpec, Info
from .datalink import attach_descriptor
from .params import parse_number, read_dali_params
from .responses import dali_error
from .tap import TapLimits, parse_maxrec
from .urls import service_root

__all__ = ["SCS_STANDARD_ID", "VERB_COLUMNS", "ConeSearchService"]

SCS_STANDARD_ID = "ivo://ivoa.net/std/ConeSearch"

VERB_COLUMNS: dict[int, tuple[str, ...] | None] = {
    1: ("did", "ra", "dec"),
    2: ("did", "field", "field_id", "ra", "dec", "gaia_source_id",
        "n_datasets_gp", "n_datasets_rp", "n_datasets_ip"),
    3: None,  # every column of rome.field_index
}  # fmt: skip
"""Columns of each verbosity (VERB 2 and 3 add ``distance``)."""

DISTANCE = FieldSpec(
    "distance",
    "double",
    unit="deg",
    ucd="pos.angDistance",
    description="Great-circle distance from the cone centre.",
)


def _scs_error(message: str, status: int = 400) -> Response:
    # SCS 1.03 has clients look for INFO name="Error" as well as the DALI QUERY_STATUS
    return dali_error(message, status, infos=[Info("Error", message)])


class ConeSearchService:
    """The ``/scs`` endpoint over an ingested database's field index."""

    def __init__(
        self, db: CatalogDatabase, limits: TapLimits | None = None, public_url: str | None = None
    ):
        """``public_url``: the service's root URL for links (else each request's)."""
        self.db = db
        self.public_url = public_url
        self.limits = limits or TapLimits()
        schema = load_table_schema("field_index")
        self.columns = schema.by_name
        self.all_columns = tuple(c.name for c in schema.columns)

    def _spec(self, name: str) -> FieldSpec:
        spec = FieldSpec.from_column(self.columns[name])
        if name == "did":
            return dataclasses.replace(spec, ucd="meta.id;meta.main")
        if spec.ucd == "meta.id;meta.main":  # field_id: one main id only in SCS
            return dataclasses.replace(spec, ucd="meta.id")
        return spec

    def _maxrec(self, params) -> int:
        return parse_maxrec(params, self.limits)

    def search(self, ra: float, dec: float, sr: float, verb: int, maxrec: int):
        """(Arrow table of the stars within ``sr`` of (ra, dec), nearest first, at most
        ``maxrec`` rows; FIELDs; whether more rows matched)."""
        names = VERB_COLUMNS[verb] or ("did", *[c for c in self.all_columns if c != "did"])
        fields = [self._spec(n) for n in names]
        if verb > 1:
            fields.append(DISTANCE)
        cols = ", ".join(f'"{n}"' for n in names)
        dist = (
            "degrees(2 * asin(least(1.0, sqrt(pow(sin(radians(dec - ?) / 2), 2) + "
            "cos(radians(dec)) * cos(radians(?)) * pow(sin(radians(ra - ?) / 2), 2)))))"
        )
        if self.db.target == "pgsphere":  # the GiST index on the position
            where, where_params = (
                ("spoint(radians(ra), radians(dec)) @ scircle(spoint(radians(?), radians(?)), "
                 "radians(?))", [ra, dec, sr])
                if sr < 90 else ("TRUE", [])
            )  # fmt: skip
        else:  # a declination band on the dec-sorted table
            where, where_params = "dec BETWEEN ? - ? AND ? + ?", [dec, sr, dec, sr]
        field_index = self.db.physical_name(load_table_schema("field_index"))
        sql = (
            f"SELECT {cols}, distance FROM (SELECT *, {dist} AS distance "
            f"FROM {field_index} WHERE {where}) AS cone "
            "WHERE distance <= ? ORDER BY distance, field, field_id LIMIT ?"
        )
        limit = maxrec + 1 if sr > 0 and maxrec > 0 else 0
        params = [dec, dec, ra, *where_params, sr, limit]
        try:
            with self.db.session() as session:
                table = session.arrow_table(sql, params)
        except QueryFailed as exc:
            raise InvalidRequestError(f"cone search failed: {exc}") from None
        overflow = table.num_rows > maxrec
        table = table.slice(0, min(maxrec, table.num_rows))
        if verb == 1:
            table = table.drop_columns(["distance"])
        return table, fields, overflow

    async def endpoint(self, request: Request) -> Response:
        """``GET|POST /scs``."""
        try:
            params = await read_dali_params(request, None, max_upload_bytes=0)
            ra = parse_number(params.get("RA"), "RA", 0.0, 360.0)
            dec = parse_number(params.get("DEC"), "DEC", -90.0, 90.0)
            sr = parse_number(params.get("SR"), "SR", 0.0, 180.0)
            raw_verb = (params.get("VERB") or "2").strip()
            if raw_verb not in ("1", "2", "3"):
                raise InvalidRequestError(f"VERB={raw_verb!r} is not supported; use 1, 2 or 3")
            maxrec = self._maxrec(params)
            raw_format = params.get("RESPONSEFORMAT") or params.get("FORMAT")
            fmt = resolve_format(raw_format)
            if raw_format is None or fmt.name == "votable":
                fmt = resolve_format("votable/td")
            table, fields, overflow = await run_in_threadpool(
                self.search, ra, dec, sr, int(raw_verb), maxrec
            )
        except InvalidRequestError as exc:
            return _scs_error(str(exc))
        base = service_root(request, self.public_url)
        sources = [("rome.field_index", f.name) for f in fields]
        fields, descriptors = attach_descriptor(fields, sources, base)
        infos = [
            Info("QUERY_STATUS", "OK"),
            Info("standardID", SCS_STANDARD_ID),
            Info("request", f"RA={ra!r} DEC={dec!r} SR={sr!r}"),
        ]
        post = [Info("QUERY_STATUS", "OVERFLOW")] if overflow else []
        body = b"".join(
            write_result(
                table,
                fields,
                fmt,
                resource_infos=infos,
                table_name="cone",
                table_description="Stars of the ROME/REA field index within the cone.",
                post_infos=lambda: post,
                extra_resources=descriptors,
            )
        )
        media = fmt.media_type
        return Response(body, media_type=media)
