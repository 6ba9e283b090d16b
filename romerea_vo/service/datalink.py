"""DataLink 1.1: the ``{links}`` endpoint and the service descriptor put on TAP/SCS results.

``GET|POST /datalink/links?ID=<DID>[&ID=...]`` lists, for each star (in the order given,
duplicates dropped, all rows of one ID consecutive):

* ``#this``: the all-band lightcurve and one lightcurve per band the star has data in
  (``n_datasets_<band>`` > 0 in ``rome.field_index`` or good points in
  ``rome.lightcurve_stats``); ``content_qualifier`` is ``#timeseries`` (the IVOA
  product-type vocabulary, written relative as DataLink 1.1 asks);
* ``#preview``: a PNG plot of every band;
* ``#auxiliary``: the star's web page (``/star/<field>/<field_id>``, ``text/html``,
  local_semantics ``star-page``) and sync TAP queries for the star's rows in
  ``rome.stars`` and (when it has any) ``rome.lightcurve_stats`` and
  ``rome.microlensing_candidates``;
* a star with a point-lens fit also gets a ``#preview`` of its lightcurve with the model
  (``MODEL=pspl``).

``content_length`` of a lightcurve link is an estimate (the documents are made on
request): the good points in ``rome.lightcurve_stats`` times the bytes a point takes in
the field's default BINARY2 document, plus the document's header, both measured once per
field by the lightcurve service; NULL for the plot and the TAP queries.

A per-band DID (``<star DID>/<band>``, the ``obs_publisher_did`` of an ``ivoa.obscore``
row) gets the same rows restricted to that band: its lightcurve as ``#this``, its plot as
``#preview``, and the star's ``#auxiliary`` queries.

Unknown or malformed IDs give one ``#this`` row with an ``error_message``
(``NotFoundFault:`` / ``UsageFault:``), a star whose photometry cube is missing on disk
gives ``FatalFault:`` rows for its lightcurve and preview links (the
auxiliary links still work); a request without ID is a DALI error (HTTP 400).

The table is TABLEDATA unless RESPONSEFORMAT asks for another serialisation or format.
Star look-ups use small per-field numpy arrays loaded from the database on first use,
so a links request needs no SQL and stays well under a millisecond of work.
"""

from __future__ import annotations

import dataclasses
import html
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import numpy as np
import pyarrow as pa
from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidRequestError
from ..ids import make_did, parse_any_did
from ..products import layout
from ..store.contract import CatalogDatabase
from ..store.session import QueryFailed
from ..votable.formats import ResultFormat, resolve_format, write_result
from ..votable.schema import load_table_schema
from ..votable.writer import FieldSpec, Info
from .params import read_dali_params
from .responses import VOTABLE_MEDIA, error_response
from .urls import service_root

__all__ = [
    "DATALINK_MEDIA",
    "LINKS_STANDARD_ID",
    "LINK_FIELDS",
    "DataLinkService",
    "attach_descriptor",
    "did_field_position",
    "lightcurve_descriptor",
    "service_descriptor",
]

LINKS_STANDARD_ID = "ivo://ivoa.net/std/DataLink#links-1.1"
DATALINK_MEDIA = "application/x-votable+xml;content=datalink"
MAX_IDS = 1000
"""Most IDs one links request may carry."""

DID_FIELD_ID = "col_did"
"""XML ID of a result's DID FIELD (which the descriptor refers to) when its name is not one."""
_NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

DESCRIPTOR_ID = "datalink_links"
LIGHTCURVE_DESCRIPTOR_ID = "lightcurve_service"

BAND_NAMES = {"gp": "SDSS g'", "rp": "SDSS r'", "ip": "SDSS i'"}
BAND_LABELS = {"gp": "g'", "rp": "r'", "ip": "i'"}
"""How a band starts a link's description (TOPCAT lists links by description)."""


def _char(name: str, ucd: str, description: str) -> FieldSpec:
    return FieldSpec(name, "char", arraysize="*", ucd=ucd, description=description)


LINK_FIELDS: tuple[FieldSpec, ...] = (
    _char("ID", "meta.id;meta.main", "Input identifier (the publisher DID of a star)."),
    _char("access_url", "meta.ref.url", "Link to the data or service."),
    _char("service_def", "meta.ref", "Reference to a service descriptor resource."),
    _char("error_message", "meta.code.error", "Why no link could be made for this ID."),
    _char("semantics", "meta.code", "Term from the DataLink core vocabulary."),
    _char("description", "meta.note", "What the link gives."),
    _char("content_type", "meta.code.mime", "Media type of what the link returns."),
    FieldSpec(
        "content_length",
        "long",
        unit="byte",
        ucd="phys.size;meta.file",
        description=(
            "Approximate size of what the link returns: for lightcurves, the document in "
            "its default serialisation, estimated from its number of good points; NULL "
            "where not known in advance (plots, TAP queries)."
        ),
    ),
    _char(
        "content_qualifier",
        "meta.code.class",
        "Product type (http://www.ivoa.net/rdf/product-type) of what the link returns.",
    ),
    _char("local_semantics", "meta.id.assoc", "This service's name for the kind of link."),
    _char("link_auth", "meta.code", "Whether the link needs authentication (false)."),
    FieldSpec(
        "link_authorized",
        "boolean",
        ucd="meta.code",
        description="Whether the caller may use the link (true: all data are public).",
    ),
)
_SCHEMA = pa.schema(
    [
        (f.name, pa.int64() if f.datatype == "long" else pa.bool_())
        if f.datatype != "char"
        else (f.name, pa.large_string())
        for f in LINK_FIELDS
    ]
)


# --------------------------------------------------------------------------- descriptors


def lightcurve_descriptor(lightcurve_url: str, id_ref: str = DID_FIELD_ID) -> str:
    """The ``adhoc:service`` RESOURCE that invokes the lightcurve service on a row's DID:
    every band's good points in one time-series table. It comes first on a result, so
    TOPCAT's *Invoke Service* activation (Plot Table, Load Table) defaults to it."""
    url = html.escape(lightcurve_url, quote=True)
    return (
        f'<RESOURCE type="meta" utype="adhoc:service" ID="{LIGHTCURVE_DESCRIPTOR_ID}" '
        'name="lightcurve">\n'
        "<DESCRIPTION>Lightcurve of the star: its good points in every band (g', r', i') "
        "in one table, HJD with a filter column.</DESCRIPTION>\n"
        f'<PARAM name="accessURL" datatype="char" arraysize="*" ucd="meta.ref.url" '
        f'value="{url}"/>\n'
        f'<PARAM name="contentType" datatype="char" arraysize="*" value="{VOTABLE_MEDIA}"/>\n'
        '<GROUP name="inputParams">\n'
        f'<PARAM name="ID" datatype="char" arraysize="*" ucd="meta.id;meta.main" '
        f'ref="{html.escape(id_ref, quote=True)}" value=""/>\n'
        "</GROUP>\n</RESOURCE>\n"
    )


def service_descriptor(links_url: str, id_ref: str = DID_FIELD_ID) -> str:
    """The ``adhoc:service`` RESOURCE pointing clients from a table's DID column (the FIELD
    with XML ID ``id_ref``) to the DataLink links endpoint at ``links_url``."""
    url = html.escape(links_url, quote=True)
    return (
        f'<RESOURCE type="meta" utype="adhoc:service" ID="{DESCRIPTOR_ID}" name="datalink">\n'
        "<DESCRIPTION>DataLink links of each star: its lightcurve in every band and "
        "per band, a preview plot, and its catalogue rows.</DESCRIPTION>\n"
        f'<PARAM name="accessURL" datatype="char" arraysize="*" ucd="meta.ref.url" '
        f'value="{url}"/>\n'
        f'<PARAM name="standardID" datatype="char" arraysize="*" value="{LINKS_STANDARD_ID}"/>\n'
        f'<PARAM name="contentType" datatype="char" arraysize="*" value="{DATALINK_MEDIA}"/>\n'
        '<GROUP name="inputParams">\n'
        f'<PARAM name="ID" datatype="char" arraysize="*" ucd="meta.id;meta.main" '
        f'ref="{html.escape(id_ref, quote=True)}" value=""/>\n'
        "</GROUP>\n</RESOURCE>\n"
    )


def did_field_position(
    fields: Sequence[FieldSpec], sources: Sequence[tuple[str, str] | None]
) -> int | None:
    """Index of the first result FIELD holding publisher DIDs: one taken from
    ``rome.field_index.did`` (``sources`` gives each FIELD's table and column, or None),
    or any FIELD named ``did`` with UCD ``meta.ref.ivoid``."""
    for i, f in enumerate(fields):
        source = sources[i] if i < len(sources) else None
        if source is not None and (source[0].lower(), source[1].lower()) == (
            "rome.field_index",
            "did",
        ):
            return i
        if f.name.lower() == "did" and (f.ucd or "").lower() == "meta.ref.ivoid":
            return i
    return None


def attach_descriptor(
    fields: Sequence[FieldSpec],
    sources: Sequence[tuple[str, str] | None],
    base_url: str | None,
) -> tuple[list[FieldSpec], list[str]]:
    """``fields`` with an XML ID on the DID FIELD, and the service descriptor RESOURCEs to
    append to the VOTable (the lightcurve service, then DataLink); unchanged and none
    without a DID FIELD or ``base_url``."""
    fields = list(fields)
    pos = did_field_position(fields, sources) if base_url else None
    if pos is None or any(f.ID for f in fields):
        return fields, []
    # The ID is the FIELD's name where that is a legal XML ID: astropy names columns
    # by ID, so any other value would rename the column for astropy users.
    name = fields[pos].name
    reserved = (DESCRIPTOR_ID, LIGHTCURVE_DESCRIPTOR_ID)
    ident = name if _NCNAME.match(name) and name not in reserved else DID_FIELD_ID
    fields[pos] = dataclasses.replace(fields[pos], ID=ident)
    assert base_url is not None  # pos is None without it
    base = base_url.rstrip("/")
    return fields, [
        lightcurve_descriptor(f"{base}/lightcurve", ident),
        service_descriptor(f"{base}/datalink/links", ident),
    ]


# --------------------------------------------------------------------------- look-ups


_NO_STATS = np.iinfo(np.uint16).max


@dataclass
class _FieldStars:
    """What the links of a field's stars need, indexed by field_id: 7 bytes a star
    (about 3 MB for a 400,000-star field), loaded once per field."""

    quadrant: np.ndarray  # int8, 0 where no star has this field_id
    has_data: np.ndarray  # (n, 3) bool, bands in layout.FILTERS order
    n_good: np.ndarray  # (n, 3) uint16, _NO_STATS where lightcurve_stats has no row
    directory: Path
    fit_class: dict[int, str] = dataclasses.field(default_factory=dict)  # fitted stars

    def known(self, field_id: int) -> bool:
        return field_id < self.quadrant.size and self.quadrant[field_id] > 0


def _numpy(table) -> dict[str, np.ma.MaskedArray]:
    """Columns as masked arrays (NULL masked), as DuckDB's fetchnumpy gives them."""
    out = {}
    for name in table.column_names:
        col = table.column(name)
        values = col.to_numpy(zero_copy_only=False)
        mask = col.is_null().to_numpy(zero_copy_only=False)
        out[name] = np.ma.masked_array(values, mask=mask)
    return out


class _Fault(Exception):
    """A per-ID DataLink error: ``message`` starts with the fault name."""


def _load_field(db: CatalogDatabase, name: str) -> _FieldStars:
    field_index = db.physical_name(load_table_schema("field_index"))
    stats_table = db.physical_name(load_table_schema("lightcurve_stats"))
    with db.session() as session:
        idx = _numpy(
            session.arrow_table(
                "SELECT field_id, quadrant, n_datasets_gp, n_datasets_rp, n_datasets_ip "
                f"FROM {field_index} WHERE field = ?",
                [name],
            )
        )
        stats = _numpy(
            session.arrow_table(
                f"SELECT field_id, filter, n_good FROM {stats_table} WHERE field = ?", [name]
            )
        )
    ids = np.asarray(idx["field_id"], dtype=np.int64)
    size = int(ids.max()) + 1 if ids.size else 1
    quadrant = np.zeros(size, np.int8)
    quadrant[ids] = np.asarray(idx["quadrant"], dtype=np.int8)
    has_data = np.zeros((size, 3), bool)
    for j, band in enumerate(layout.FILTERS):
        has_data[ids, j] = np.ma.filled(np.ma.asarray(idx[f"n_datasets_{band}"]), 0) > 0
    n_good = np.full((size, 3), _NO_STATS, np.uint16)
    sid = np.asarray(stats["field_id"], dtype=np.int64)
    sfilter = np.asarray(stats["filter"]).astype(str)
    sgood = np.ma.filled(np.ma.asarray(stats["n_good"]), 0).astype(np.int64)
    for j, band in enumerate(layout.FILTERS):
        sel = (sfilter == band) & (sid < size)
        n_good[sid[sel], j] = np.clip(sgood[sel], 0, _NO_STATS - 1)
        has_data[sid[sel], j] |= sgood[sel] > 0
    fits = load_table_schema("microlensing_candidates")
    try:
        with db.session() as session:
            fitted = session.fetchall(
                f"SELECT field_id, classification FROM {db.physical_name(fits)} WHERE field = ?",
                [name],
            )
    except QueryFailed:  # a database made before the table existed
        fitted = []
    return _FieldStars(
        quadrant, has_data, n_good, db.fields[name].directory, {int(i): c for i, c in fitted}
    )


# --------------------------------------------------------------------------- service


class DataLinkService:
    """The ``/datalink/links`` endpoint over an ingested database."""

    def __init__(
        self,
        db: CatalogDatabase,
        *,
        max_ids: int = MAX_IDS,
        estimate_size: Callable[[str, int], int | None] | None = None,
        public_url: str | None = None,
    ):
        """``estimate_size(did, n_points)``: the approximate size of a star's lightcurve
        document (the lightcurve service's model), for ``content_length``; ``public_url``:
        the service's root URL for links (else each request's)."""
        self.db = db
        self.public_url = public_url
        self.max_ids = max_ids
        self.estimate_size = estimate_size
        self._fields: dict[str, _FieldStars] = {}
        self._lock = threading.Lock()

    def _field(self, name: str) -> _FieldStars:
        stars = self._fields.get(name)
        if stars is None:
            with self._lock:
                stars = self._fields.get(name)
                if stars is None:
                    stars = self._fields[name] = _load_field(self.db, name)
        return stars

    def _resolve(self, did: str) -> tuple[str, int, str | None, _FieldStars]:
        try:
            field, field_id, band = parse_any_did(did, self.db.authority)
        except InvalidRequestError as exc:
            raise _Fault(f"UsageFault: {exc}") from None
        if field not in self.db.fields:
            known = ", ".join(self.db.fields) or "none"
            raise _Fault(f"NotFoundFault: unknown field {field!r} in {did!r}; fields: {known}")
        stars = self._field(field)
        if not stars.known(field_id):
            raise _Fault(f"NotFoundFault: field {field} has no star {field_id} ({did!r})")
        if band is not None and not stars.has_data[field_id, layout.FILTERS.index(band)]:
            raise _Fault(
                f"NotFoundFault: star {field_id} of {field} has no {band} lightcurve ({did!r})"
            )
        return field, field_id, band, stars

    def links(self, ids: Sequence[str], base_url: str) -> pa.Table:
        """The links table of ``ids`` (input values kept as given) for a service at
        ``base_url`` (no trailing slash)."""
        cols: dict[str, list] = {f.name: [] for f in LINK_FIELDS}

        def row(ident: str, semantics: str, **values) -> None:
            values.setdefault("link_auth", "false")
            values.setdefault("link_authorized", True)
            for name, column in cols.items():
                column.append(values.get(name))
            cols["ID"][-1] = ident
            cols["semantics"][-1] = semantics

        for ident in ids:
            try:
                field, field_id, only, stars = self._resolve(ident)
            except _Fault as exc:
                row(ident, "#this", error_message=str(exc), link_auth=None, link_authorized=None)
                continue
            star = f"{field} star {field_id}"
            star_did = make_did(self.db.authority, field, field_id)
            lc = f"{base_url}/lightcurve?ID={quote(star_did, safe='')}"
            cube = layout.quadrant_filename(field, int(stars.quadrant[field_id]))
            missing = None
            if not (stars.directory / cube).is_file():
                missing = (
                    f"FatalFault: the photometry cube {cube} of {field} is missing on the "
                    "server; lightcurves of its stars cannot be made until it is restored"
                )
            good = [None if n == _NO_STATS else int(n) for n in stars.n_good[field_id]]
            counts = ", ".join(f"{b} {n}" for b, n in zip(layout.FILTERS, good, strict=True) if n)

            def size(n_points: int | None, did: str = star_did) -> int | None:
                if n_points is None or self.estimate_size is None:
                    return None
                return self.estimate_size(did, n_points)

            # semantics, access_url, description, content type, qualifier, local semantics,
            # content length
            links: list[tuple[str, str, str, str, str | None, str, int | None]] = []
            if only is None:
                links.append(
                    (
                        "#this",
                        lc,
                        f"All bands lightcurve of {star} (good points: {counts or 'none'})",
                        VOTABLE_MEDIA,
                        "#timeseries",
                        "lightcurve-all",
                        size(None if None in good else sum(n or 0 for n in good)),
                    )
                )
            for j, band in enumerate(layout.FILTERS):
                if stars.has_data[field_id, j] and only in (None, band):
                    n = "no statistics" if good[j] is None else f"{good[j]} good points"
                    links.append(
                        (
                            "#this",
                            f"{lc}&BAND={band}",
                            f"{BAND_LABELS[band]} lightcurve of {star} "
                            f"({BAND_NAMES[band]}, {band}; {n})",
                            VOTABLE_MEDIA,
                            "#timeseries",
                            f"lightcurve-{band}",
                            size(good[j]),
                        )
                    )
            links.append(
                (
                    "#preview",
                    f"{lc}&RESPONSEFORMAT=png"
                    if only is None
                    else f"{lc}&BAND={only}&RESPONSEFORMAT=png",
                    f"Plot of the lightcurve of {star} in every band"
                    if only is None
                    else f"Plot of the {BAND_LABELS[only]} lightcurve of {star}",
                    "image/png",
                    None,
                    "lightcurve-plot",
                    None,
                )
            )
            fit_class = stars.fit_class.get(field_id)
            if fit_class is not None:
                links.append(
                    (
                        "#preview",
                        f"{lc}&MODEL=pspl&RESPONSEFORMAT=png",
                        f"Plot of the lightcurve of {star} with its point-lens model "
                        f"(classification: {fit_class})",
                        "image/png",
                        None,
                        "lightcurve-plot-pspl",
                        None,
                    )
                )
            for semantics, url, description, ctype, qualifier, local, length in links:
                if missing:
                    row(ident, semantics, error_message=missing, description=description,
                        content_type=ctype, content_qualifier=qualifier,
                        local_semantics=local)  # fmt: skip
                else:
                    row(ident, semantics, access_url=url, description=description,
                        content_type=ctype, content_qualifier=qualifier,
                        local_semantics=local, content_length=length)  # fmt: skip
            # "#documentation" (datalink/core since 2019) would fit better, but the
            # validators in use (STILTS 3.4.7 datalinklint) still reject it as unknown.
            row(ident, "#auxiliary", content_type="text/html",
                access_url=f"{base_url}/star/{quote(field, safe='')}/{field_id}",
                description=f"Web page of {star}: identifiers, catalogue rows, lightcurve "
                "plot and links", local_semantics="star-page")  # fmt: skip
            where = f"field = '{field}' AND field_id = {field_id}"
            aux = [("rome.stars", "stars-row", "Catalogue row (positions, photometry, Gaia)")]
            if any(n is not None for n in good):
                aux.append(
                    ("rome.lightcurve_stats", "lightcurve-stats-rows", "Lightcurve statistics")
                )
            if fit_class is not None:
                aux.append(
                    (
                        "rome.microlensing_candidates",
                        "microlensing-candidate-row",
                        f"Point-lens fit ({fit_class})",
                    )
                )
            for table, local, what in aux:
                query = f"SELECT * FROM {table} WHERE {where}"
                url = f"{base_url}/tap/sync?" + urlencode(
                    {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query}, quote_via=quote
                )
                row(ident, "#auxiliary", access_url=url, content_type=VOTABLE_MEDIA,
                    description=f"{what} of {star} in {table} (TAP query)",
                    local_semantics=local)  # fmt: skip
        return pa.table(cols, schema=_SCHEMA)

    # ----- HTTP

    async def endpoint(self, request: Request) -> Response:
        """``GET|POST /datalink/links``."""

        try:
            params = await read_dali_params(request, None, max_upload_bytes=0)
            ids = list(dict.fromkeys(v for v in params.getall("ID") if v.strip()))
            if not ids:
                raise InvalidRequestError(
                    "UsageFault: missing parameter ID: give the publisher DID of a star "
                    f"({self.db.authority}?<field>/<field_id>); repeat ID for several stars"
                )
            if len(ids) > self.max_ids:
                raise InvalidRequestError(
                    f"UsageFault: {len(ids)} IDs given; at most {self.max_ids} per request"
                )
            fmt, media = links_format(params.get("RESPONSEFORMAT"))
        except InvalidRequestError as exc:
            return error_response(exc, fault_prefix=True)
        base = service_root(request, self.public_url)
        if all(self._cached(i) for i in ids):
            table = self.links(ids, base)
        else:
            from starlette.concurrency import run_in_threadpool

            table = await run_in_threadpool(self.links, ids, base)
        infos = [Info("QUERY_STATUS", "OK"), Info("standardID", LINKS_STANDARD_ID)]
        body = b"".join(
            write_result(table, LINK_FIELDS, fmt, resource_infos=infos, table_name="links")
        )
        return Response(body, media_type=media)

    def _cached(self, did: str) -> bool:
        """Whether resolving ``did`` needs no database query (its field is loaded)."""
        try:
            field = parse_any_did(did, self.db.authority)[0]
        except InvalidRequestError:
            return True
        return field in self._fields or field not in self.db.fields


def links_format(value: str | None) -> tuple[ResultFormat, str]:
    """(format, media type) for a links RESPONSEFORMAT: TABLEDATA VOTable by default or
    for a plain VOTable type; an explicit serialisation or another format when asked."""
    if value is None or not value.strip():
        return resolve_format("votable/td"), DATALINK_MEDIA
    parts = [p.strip() for p in value.split(";") if p.strip()]
    rest = [p for p in parts[1:] if p.replace(" ", "").lower() != "content=datalink"]
    fmt = resolve_format(";".join(parts[:1] + rest))
    if fmt.serializer != "votable":
        return fmt, fmt.media_type
    explicit = any(p.lower().startswith("serialization") for p in rest) or fmt.name != "votable"
    if not explicit:
        fmt = resolve_format("votable/td")
    return fmt, DATALINK_MEDIA
