"""Pages for people: a page per star and a cone-search form, plain server-side HTML.

* ``GET /star/<field>/<field_id>``: the star's identifiers, its catalogue rows
  (``rome.field_index``, ``rome.stars``, ``rome.lightcurve_stats`` per band,
  ``rome.microlensing_candidates`` when fitted), the all-band lightcurve plot (the
  lightcurve service's PNG) and every link: its DataLink links, each band's lightcurve
  as VOTable, CSV, VOParquet and FITS, and TAP queries. Readable without JavaScript;
  the URL is what one sends a colleague.
* ``GET /star?ID=<DID>``: redirects (303) to the star's page; DataLink lists that page
  as an ``#auxiliary`` link (``text/html``, local_semantics ``star-page``).
* ``GET /search?RA=&DEC=&RADIUS=``: the landing page's cone-search form (RA, Dec in
  decimal degrees or sexagesimal, RA then in hours; radius in arcmin), answered by the
  Simple Cone Search engine (same
  selection, same MAXREC limits) as an HTML table whose rows link to the star pages.

Bad input gives an HTML page saying what is wrong (400; 404 for a star that is not
here), never a traceback. Everything reflected from the request is escaped.
"""

from __future__ import annotations

import html
import math
from urllib.parse import quote, urlencode

import pyarrow as pa
from astropy import units as u
from astropy.coordinates import Angle
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..errors import InvalidRequestError
from ..ids import parse_did, parse_field_id
from ..store.contract import CatalogDatabase
from ..store.session import QueryFailed
from ..votable.schema import ColumnSchema, TableSchema, load_table_schema
from .datalink import BAND_LABELS, DataLinkService
from .params import parse_number
from .responses import log_bug
from .scs import ConeSearchService
from .tap import TapLimits, parse_maxrec
from .urls import service_root

__all__ = ["PAGE_MAXREC", "StarPages", "search_form_html", "star_page_path"]


PAGE_MAXREC = 1000
"""Most rows one search page shows (MAXREC may ask for fewer); more go to SCS or TAP."""

DOWNLOAD_FORMATS = (
    ("VOTable", "votable"),
    ("CSV", "csv"),
    ("VOParquet", "parquet"),
    ("FITS", "fits"),
)

STYLE = """body{font-family:sans-serif;max-width:64em;margin:2em auto;padding:0 1em}
td,th{padding:.2em .6em;text-align:left;vertical-align:top}
table.rows tr:nth-child(even){background:#f6f6f6}code,pre{background:#f4f4f4}
img.plot{max-width:100%;border:1px solid #ddd}td.star{white-space:nowrap}.error{color:#a00}
form label{margin-right:1em}input{width:9em}"""


def star_page_path(field: str, field_id: int) -> str:
    """The path of a star's page under the service root."""
    return f"/star/{quote(field, safe='')}/{int(field_id)}"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    """A complete HTML page (``title`` is escaped, ``body`` is not)."""
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style></head><body>
{body}
</body></html>"""
    return HTMLResponse(text, status_code=status)


def search_form_html(root: str, ra: str = "", dec: str = "", radius: str = "1") -> str:
    """The cone-search form (GET to ``/search``); the values shown are escaped."""
    return f"""<form method="get" action="{_e(root)}/search" id="cone-form">
<label>RA <input name="RA" value="{_e(ra)}" required></label>
<label>Dec <input name="DEC" value="{_e(dec)}" required></label>
<label>radius [arcmin] <input name="RADIUS" value="{_e(radius)}" required></label>
<button type="submit">Search</button>
<br><small>RA and Dec (ICRS) in decimal degrees or sexagesimal (RA in hours:
17:51:20.5 or 17h51m20.5s; Dec: -29:52:20 or -29d52m20s).</small>
</form>"""


def _format(value: object, datatype: str | None = None, unit: str | None = None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if unit == "mag":  # millimag is below any ROME error
            return f"{value:.4f}"
        return f"{value:.7g}" if datatype == "float" else f"{value:.10g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _cell(value: object, col: ColumnSchema | None) -> str:
    return _format(value, col.datatype, col.unit) if col else _format(value)


def _angle(raw: str, name: str, low: float, high: float, *, hours: bool) -> float:
    """Decimal degrees, or sexagesimal (RA in hours: ``17:51:20.5`` or ``17h51m20.5s``;
    Dec in degrees: ``-29:52:20`` or ``-29d52m20s``)."""
    text = (raw or "").strip()
    if not text or _is_float(text):
        return parse_number(text, name, low, high, "decimal degrees")
    try:
        value = float(Angle(text, unit=u.hourangle if hours else u.deg).deg)
    except (ValueError, u.UnitsError) as exc:  # astropy says what is wrong (range, syntax)
        example = "17:51:20.5 or 17h51m20.5s" if hours else "-29:52:20 or -29d52m20s"
        raise InvalidRequestError(
            f"{name} = {raw!r} is not a valid angle ({exc}): give decimal degrees or "
            f"sexagesimal ({example})"
        ) from None
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequestError(
            f"{name} = {raw} ({value:g} degrees) is out of range: {low:g} to {high:g} degrees"
        )
    return value


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class StarPages:
    """The star pages and the cone-search result page of one service."""

    def __init__(
        self,
        db: CatalogDatabase,
        scs: ConeSearchService,
        datalink: DataLinkService,
        limits: TapLimits,
        *,
        title: str,
        public_url: str | None = None,
    ):
        self.db = db
        self.scs = scs
        self.datalink = datalink
        self.limits = limits
        self.title = title
        self.public_url = public_url
        self.schemas = {
            name: load_table_schema(name)
            for name in ("field_index", "stars", "lightcurve_stats", "microlensing_candidates")
        }

    def root(self, request: Request) -> str:
        return service_root(request, self.public_url)

    # ----- data

    def _rows(self, name: str, field: str, field_id: int, order: str = "") -> pa.Table | None:
        """The star's rows of a table; None when the table is not in this database."""
        sql = (
            f"SELECT * FROM {self.db.physical_name(self.schemas[name])} "
            f"WHERE field = ? AND field_id = ?{order}"
        )
        try:
            with self.db.session() as session:
                return session.arrow_table(sql, [field, field_id])
        except QueryFailed:  # e.g. a database made before the table existed
            if name == "field_index":
                raise
            return None

    def star_data(self, field: str, field_id: int) -> dict[str, pa.Table | None] | None:
        """The star's catalogue rows by table name; None when the star is not here."""
        if field not in self.db.fields:
            return None
        index = self._rows("field_index", field, field_id)
        if index is None or index.num_rows == 0:
            return None
        return {
            "field_index": index,
            "stars": self._rows("stars", field, field_id),
            "lightcurve_stats": self._rows("lightcurve_stats", field, field_id, " ORDER BY filter"),
            "microlensing_candidates": self._rows("microlensing_candidates", field, field_id),
        }

    # ----- rendering

    def _vertical(self, schema: TableSchema, table: pa.Table) -> str:
        """One row as a name / value / unit / description table."""
        meta = schema.by_name
        row = table.slice(0, 1).to_pylist()[0]
        out = []
        for name, value in row.items():
            col = meta.get(name)
            out.append(
                f"<tr><th><code>{_e(name)}</code></th>"
                f"<td>{_e(_cell(value, col))}</td>"
                f"<td>{_e(col.unit or '') if col else ''}</td>"
                f"<td>{_e(col.description) if col else ''}</td></tr>"
            )
        return f'<table class="rows">{"".join(out)}</table>'

    def _horizontal(self, schema: TableSchema, table: pa.Table, skip=("field", "field_id")) -> str:
        """Rows as a table with a header of column names (units and descriptions as
        tooltips)."""
        meta = schema.by_name
        names = [n for n in table.column_names if n not in skip]
        head = []
        for name in names:
            col = meta.get(name)
            tip = f"{col.description} [{col.unit}]" if col and col.unit else (
                col.description if col else ""
            )  # fmt: skip
            unit = f" [{_e(col.unit)}]" if col and col.unit else ""
            head.append(f'<th title="{_e(tip)}"><code>{_e(name)}</code>{unit}</th>')
        body = []
        for row in table.to_pylist():
            cells = "".join(f"<td>{_e(_cell(row[n], meta.get(n)))}</td>" for n in names)
            body.append(f"<tr>{cells}</tr>")
        return (
            f'<div style="overflow-x:auto"><table class="rows"><tr>{"".join(head)}</tr>'
            f"{''.join(body)}</table></div>"
        )

    def _tap_link(self, root: str, query: str) -> str:
        url = f"{root}/tap/sync?" + urlencode(
            {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query}, quote_via=quote
        )
        return f'<a href="{_e(url)}"><code>{_e(query)}</code></a>'

    def render_star(self, root: str, data: dict[str, pa.Table | None]) -> str:
        rows = data["field_index"]
        assert rows is not None  # star_data found the star in the field index
        index = rows.to_pylist()[0]
        field, field_id, did = index["field"], int(index["field_id"]), index["did"]
        star = f"{field} star {field_id}"
        ident = quote(did, safe="")
        lc = f"{root}/lightcurve?ID={ident}"
        links = self.datalink.links([did], root).to_pylist()
        parts = [
            f'<p><a href="{_e(root)}/">{_e(self.title)}</a></p>',
            f"<h1>{_e(star)}</h1>",
            "<h2>Identifiers</h2><table>",
            f"<tr><th>field</th><td>{_e(field)}</td></tr>",
            f"<tr><th>field_id</th><td>{field_id}</td></tr>",
            f'<tr><th>DID</th><td><code id="did">{_e(did)}</code></td></tr>',
            f"<tr><th>Gaia source_id</th><td>{_e(_format(index.get('gaia_source_id')))}</td></tr>",
            f"<tr><th>position (ICRS)</th><td>RA {_e(_format(index.get('ra')))}&deg;, "
            f"Dec {_e(_format(index.get('dec')))}&deg;</td></tr>",
            f'<tr><th>this page</th><td><a href="{_e(root + star_page_path(field, field_id))}">'
            f"{_e(root + star_page_path(field, field_id))}</a></td></tr></table>",
            "<h2>Lightcurve</h2>",
            f'<p><img class="plot" id="plot" src="{_e(lc)}&amp;RESPONSEFORMAT=png" '
            f'alt="Lightcurve of {_e(star)} in every band (good points)"></p>',
        ]
        fit = data.get("microlensing_candidates")
        if fit is not None and fit.num_rows:
            parts.append(
                f'<p><img class="plot" id="plot-pspl" src="{_e(lc)}&amp;MODEL=pspl&amp;'
                f'RESPONSEFORMAT=png" alt="Lightcurve of {_e(star)} with its point-lens '
                'model"></p>'
            )
        # downloads: each band the star has (DataLink knows which) in each format
        bands = [
            str(r["local_semantics"]).removeprefix("lightcurve-")
            for r in links
            if r["semantics"] == "#this" and r["access_url"]
        ]
        if bands:
            rows = []
            for band in bands:
                label = "all bands" if band == "all" else f"{BAND_LABELS.get(band, band)} ({band})"
                band_q = "" if band == "all" else f"&BAND={quote(band)}"
                cells = "".join(
                    f'<td><a href="{_e(f"{lc}{band_q}&RESPONSEFORMAT={fmt}")}">{name}</a></td>'
                    for name, fmt in DOWNLOAD_FORMATS
                )
                rows.append(f"<tr><th>{_e(label)}</th>{cells}</tr>")
            parts.append(
                "<h3>Download the lightcurve (good points)</h3>"
                f'<table id="downloads">{"".join(rows)}</table>'
            )
        parts.append("<h2>Links (DataLink)</h2>")
        parts.append(
            f'<p><a href="{_e(root)}/datalink/links?ID={_e(ident)}">DataLink links document'
            "</a> (VOTable)</p>"
        )
        rows = []
        for r in links:
            if r["local_semantics"] == "star-page":
                continue  # this page
            target = (
                f'<a href="{_e(r["access_url"])}">{_e(r["content_type"] or "link")}</a>'
                if r["access_url"]
                else f'<span class="error">{_e(r["error_message"] or "")}</span>'
            )
            rows.append(
                f"<tr><td><code>{_e(r['semantics'])}</code></td>"
                f"<td>{_e(r['description'] or '')}</td><td>{target}</td></tr>"
            )
        parts.append(
            '<table class="rows" id="links"><tr><th>semantics</th><th>what</th><th>link</th></tr>'
            f"{''.join(rows)}</table>"
        )
        where = f"field = '{field}' AND field_id = {field_id}"
        ra, dec = index.get("ra"), index.get("dec")
        queries = [f"SELECT * FROM rome.field_index WHERE {where}"]
        if ra is not None and dec is not None:
            queries.append(
                "SELECT field, field_id, ra, dec, gaia_source_id, did FROM rome.field_index "
                f"WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra:.7f}, "
                f"{dec:.7f}, 10.0/3600))"
            )
        parts.append("<h3>TAP queries</h3><ul>")
        parts += [f"<li>{self._tap_link(root, q)}</li>" for q in queries]
        parts.append(
            f"</ul><p>TAP service: <code>{_e(root)}/tap</code> (TOPCAT, pyvo, STILTS).</p>"
        )
        parts.append("<h2>Catalogue</h2>")
        parts.append("<h3>rome.field_index</h3>")
        parts.append(self._vertical(self.schemas["field_index"], data["field_index"]))
        stats = data.get("lightcurve_stats")
        if stats is not None and stats.num_rows:
            parts.append(
                "<h3>Lightcurve statistics and variability indices (rome.lightcurve_stats)</h3>"
            )
            parts.append(self._horizontal(self.schemas["lightcurve_stats"], stats))
        if fit is not None and fit.num_rows:
            parts.append("<h3>Point-lens fit (rome.microlensing_candidates)</h3>")
            parts.append(self._vertical(self.schemas["microlensing_candidates"], fit))
        stars = data.get("stars")
        if stars is not None and stars.num_rows:
            parts.append("<h3>rome.stars</h3>")
            parts.append(self._vertical(self.schemas["stars"], stars))
        return "\n".join(parts)

    # ----- HTTP

    def _error(self, root: str, message: str, status: int) -> HTMLResponse:
        heading = "Not found" if status == 404 else "Bad request"
        body = (
            f'<p><a href="{_e(root)}/">{_e(self.title)}</a></p><h1>{heading}</h1>'
            f'<p class="error" id="error">{_e(message)}</p>'
            f"<h2>Find stars around a position</h2>{search_form_html(root)}"
        )
        return page(f"{heading}: {self.title}", body, status)

    async def star(self, request: Request) -> Response:
        """``GET /star/<field>/<field_id>``: the star's page; 404 page when not here."""
        root = self.root(request)
        field = request.path_params["field"]
        raw_id = request.path_params["field_id"]
        field_id = parse_field_id(raw_id)
        if field_id is None:
            shown = raw_id if len(raw_id) <= 40 else f"{raw_id[:40]}..."
            return self._error(root, f"{shown!r} is not a star number (field_id >= 1)", 404)
        try:
            data = await run_in_threadpool(self.star_data, field, field_id)
            if data is None:
                known = ", ".join(self.db.fields) or "none"
                what = (
                    f"field {field} has no star {field_id}"
                    if field in self.db.fields
                    else f"there is no field {field!r} here (fields: {known})"
                )
                return self._error(root, what, 404)
            body = await run_in_threadpool(self.render_star, root, data)
        except Exception as exc:  # a bug or an unreadable database: say so, keep serving
            log_bug(exc)
            return self._error(root, f"internal error: {type(exc).__name__}: {exc}", 500)
        return page(f"{field} star {field_id}: {self.title}", body)

    async def resolve(self, request: Request) -> Response:
        """``GET /star?ID=<DID>``: 303 to the star's page; an HTML error page otherwise."""
        root = self.root(request)
        did = request.query_params.get("ID", "")
        if not did.strip():
            return self._error(
                root, f"give a star's DID: /star?ID={self.db.authority}?<field>/<field_id>", 400
            )
        try:
            field, field_id = parse_did(did, self.db.authority)
        except InvalidRequestError as exc:
            return self._error(root, str(exc), 400)
        return RedirectResponse(root + star_page_path(field, field_id), status_code=303)

    async def search(self, request: Request) -> Response:
        """``GET /search?RA=&DEC=&RADIUS=[&MAXREC=]``: the stars in the cone as HTML."""
        root = self.root(request)
        q = request.query_params
        ra_raw, dec_raw, radius_raw = q.get("RA", ""), q.get("DEC", ""), q.get("RADIUS", "1")
        form = search_form_html(root, ra_raw, dec_raw, radius_raw)
        try:
            ra = _angle(ra_raw, "RA", 0.0, 360.0, hours=True)
            dec = _angle(dec_raw, "DEC", -90.0, 90.0, hours=False)
            radius = parse_number(radius_raw, "RADIUS", 0.0, 600.0, "arcmin")
            maxrec = min(parse_maxrec(q, self.limits), PAGE_MAXREC)
            table, _, overflow = await run_in_threadpool(
                self.scs.search, ra, dec, radius / 60.0, 2, maxrec
            )
        except InvalidRequestError as exc:
            body = (
                f'<p><a href="{_e(root)}/">{_e(self.title)}</a></p><h1>Cone search</h1>'
                f'<p class="error" id="error">{_e(exc)}</p>{form}'
            )
            return page(f"Cone search: {self.title}", body, 400)
        except Exception as exc:
            log_bug(exc)
            return self._error(root, f"internal error: {type(exc).__name__}: {exc}", 500)
        rows = []
        for r in table.to_pylist():
            href = root + star_page_path(r["field"], r["field_id"])
            rows.append(
                f'<tr><td class="star"><a class="star" href="{_e(href)}">{_e(r["field"])} '
                f"{int(r['field_id'])}</a></td>"
                f"<td>{_e(_format(r['ra']))}</td><td>{_e(_format(r['dec']))}</td>"
                f"<td>{r['distance'] * 3600:.2f}</td>"
                f"<td>{_e(_format(r['gaia_source_id']))}</td>"
                + "".join(
                    f"<td>{_e(_format(r[f'n_datasets_{b}']))}</td>" for b in ("gp", "rp", "ip")
                )
                + "</tr>"
            )
        scs = f"{root}/scs?" + urlencode({"RA": ra, "DEC": dec, "SR": radius / 60.0})
        if overflow:
            note = (
                f'<p id="overflow">Showing the nearest {table.num_rows} stars only; more '
                f'match. All of them: <a href="{_e(scs)}&amp;MAXREC={self.limits.hard_maxrec}">'
                "cone search (VOTable)</a> or TAP.</p>"
            )
        else:
            note = (
                f'<p id="count">{table.num_rows} star(s) within {_e(_format(radius))}&prime; '
                f"of RA {_e(_format(ra))}&deg;, Dec {_e(_format(dec))}&deg;, nearest first "
                f'(<a href="{_e(scs)}">as VOTable</a>).</p>'
            )
        body = f"""<p><a href="{_e(root)}/">{_e(self.title)}</a></p><h1>Cone search</h1>
{form}
{note}
<table class="rows" id="results"><tr><th>star</th><th>RA [deg]</th><th>Dec [deg]</th>
<th>distance [arcsec]</th><th>Gaia source_id</th><th>g&prime; datasets</th>
<th>r&prime; datasets</th><th>i&prime; datasets</th></tr>
{"".join(rows)}</table>"""
        return page(f"Cone search: {self.title}", body)
