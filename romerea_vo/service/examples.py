"""DALI examples (``/tap/examples``): real ROME queries, as XHTML with RDFa."""

from __future__ import annotations

import html
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class Example:
    id: str
    name: str
    description: str
    query: str


@dataclass(frozen=True)
class ExampleStar:
    """A star of the served database that the examples, the landing page and
    ``romerea-vo demo`` name, chosen at start-up (see ``TapService``)."""

    field: str
    field_id: int
    ra: float
    dec: float
    did: str

    def links(self, base_url: str) -> dict[str, str]:
        """The star's lightcurve (VOTable), plot (PNG) and DataLink URLs under the
        service root ``base_url``."""
        ident = quote(self.did, safe="")
        return {
            "lightcurve": f"{base_url}/lightcurve?ID={ident}",
            "plot": f"{base_url}/lightcurve?ID={ident}&RESPONSEFORMAT=png",
            "datalink": f"{base_url}/datalink/links?ID={ident}",
        }


UPLOAD_NAME = "t1"
"""The upload the cross-match example reads: TOPCAT's TAP window uploads the table with
ID N in its table list as ``TAP_UPLOAD.tN`` (TOPCAT 4.8 help, TAP Query panel), so
``t1`` is the first table loaded."""


def rome_examples(star: ExampleStar) -> list[Example]:
    """Examples that return rows on the served data: around ``star`` and in its field.
    Every example listing stars returns their ``did``, which DataLink, the lightcurve
    service and the SAMP bridge accept."""
    field, ra, dec = star.field, star.ra, star.dec
    return [
        Example(
            "cone",
            "Stars within 1 arcmin of a position",
            f"A cone search on the field index around star {star.field_id} of {field}; each "
            "row carries the star's publisher DID, which DataLink and the lightcurve service "
            "accept.",
            "SELECT field, field_id, ra, dec, gaia_source_id, did\n"
            "FROM rome.field_index\n"
            f"WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra:.6f}, {dec:.6f}, "
            "1.0/60))",
        ),
        Example(
            "cmd",
            "A colour-magnitude selection with Gaia photometry",
            "Joins the field index to the stars table and selects red giants by their "
            "calibrated g'-i' colour and i' magnitude from the lsc_doma datasets.",
            "SELECT f.field, f.field_id, f.did, f.ra, f.dec, s.cal_i_mag_lsc_doma,\n"
            "       s.cal_g_mag_lsc_doma - s.cal_i_mag_lsc_doma AS g_i, s.gaia_g_mag\n"
            "FROM rome.field_index AS f JOIN rome.stars AS s\n"
            "  ON f.field = s.field AND f.field_id = s.field_id\n"
            f"WHERE f.field = '{field}' AND s.cal_i_mag_lsc_doma < 17\n"
            "  AND s.cal_g_mag_lsc_doma - s.cal_i_mag_lsc_doma > 2.5",
        ),
        Example(
            "variables",
            "Candidate variable stars from the lightcurve statistics",
            "Stars whose i' lightcurve scatter is large compared with their photometric "
            "errors, with enough good points; the DID links each to its lightcurve.",
            "SELECT TOP 100 s.field, s.field_id, f.did, s.n_good, s.median_mag, "
            "s.mad_std_mag,\n"
            "       s.median_err, s.mad_std_mag / s.median_err AS excess\n"
            "FROM rome.lightcurve_stats AS s JOIN rome.field_index AS f\n"
            "  ON f.field = s.field AND f.field_id = s.field_id\n"
            "WHERE s.filter = 'ip' AND s.n_good >= 20 AND s.mad_std_mag > 3 * s.median_err\n"
            "ORDER BY excess DESC",
        ),
        Example(
            "microlensing_candidates",
            "Microlensing candidates brighter than i' = 18",
            "Point-lens fits classified as candidates (score >= 100, no flag) whose model "
            "peaks brighter than i' = 18, with the star's position and DID for DataLink.",
            "SELECT c.field, c.field_id, f.ra, f.dec, c.t0, c.te, c.u0, c.peak_mag_ip,\n"
            "       c.peak_amplitude, c.score, f.did\n"
            "FROM rome.microlensing_candidates AS c JOIN rome.field_index AS f\n"
            "  ON c.field = f.field AND c.field_id = f.field_id\n"
            "WHERE c.classification = 'candidate' AND c.peak_mag_ip < 18\n"
            "ORDER BY c.score DESC",
        ),
        Example(
            "variables_eta_iqr",
            "Variable stars by the von Neumann ratio and the interquartile range",
            "1/eta (time-correlated variability; 0.5 for white noise) together with the "
            "interquartile range (Sokolovsky et al. 2017 recommend the pair), in i' with "
            "enough good points, with each star's DID for its lightcurve.",
            "SELECT TOP 100 s.field, s.field_id, s.n_good, s.median_mag, s.iqr_mag,\n"
            "       s.inv_eta, s.stetson_j, s.excess_abbe, f.did\n"
            "FROM rome.lightcurve_stats AS s JOIN rome.field_index AS f\n"
            "  ON s.field = f.field AND s.field_id = f.field_id\n"
            "WHERE s.filter = 'ip' AND s.n_good >= 50 AND s.inv_eta > 1 AND s.iqr_mag > 0.02\n"
            "ORDER BY s.inv_eta DESC",
        ),
        Example(
            "upload_xmatch",
            "Cross-match an uploaded list within 1 arcsec",
            f"Finds the ROME stars within 1 arcsec of each row of an uploaded table with ra "
            f"and dec columns (degrees). As written it reads TAP_UPLOAD.{UPLOAD_NAME}, the name "
            "TOPCAT's TAP window gives table 1 of its table list (table N is TAP_UPLOAD.tN: "
            "change the number to the table's). pyvo: tap.search(query, "
            f'uploads={{"{UPLOAD_NAME}": table}}).',
            "SELECT u.*, f.field, f.field_id, f.did,\n"
            "       DISTANCE(POINT('ICRS', u.ra, u.dec), POINT('ICRS', f.ra, f.dec)) * 3600 "
            "AS sep_arcsec\n"
            f"FROM TAP_UPLOAD.{UPLOAD_NAME} AS u JOIN rome.field_index AS f\n"
            "  ON 1 = CONTAINS(POINT('ICRS', f.ra, f.dec), CIRCLE('ICRS', u.ra, u.dec, "
            "1.0/3600))",
        ),
        Example(
            "per_quadrant",
            "Stars and Gaia matches per field and quadrant",
            "An aggregate over the field index.",
            "SELECT field, quadrant, COUNT(*) AS n_stars, COUNT(gaia_source_id) AS n_gaia\n"
            "FROM rome.field_index\nGROUP BY field, quadrant\nORDER BY field, quadrant",
        ),
    ]


def catalogue_examples(
    table: str, ra_col: str, dec_col: str, ra: float, dec: float, *, rome: bool
) -> list[Example]:
    """Examples for an external catalogue ``table`` (qualified name) whose positions are
    in ``ra_col``/``dec_col`` (as ADQL writes them), around ``ra``/``dec``; with
    ``rome``, a cross-match against the ROME field index too."""
    slug = table.replace(".", "-").replace('"', "")
    point = f"POINT('ICRS', c.{ra_col}, c.{dec_col})"
    out = [
        Example(
            f"cone-{slug}",
            f"Sources of {table} within 1 arcmin of a position",
            f"A cone search on the external catalogue {table}.",
            f"SELECT c.*\nFROM {table} AS c\n"
            f"WHERE 1 = CONTAINS({point}, CIRCLE('ICRS', {ra:.5f}, {dec:.5f}, 1.0/60))",
        )
    ]
    if rome:
        out.append(
            Example(
                f"xmatch-{slug}",
                f"ROME stars matching {table} within 1 arcsec",
                f"A positional join of the ROME field index with {table}, with separations.",
                "SELECT TOP 1000 f.field, f.field_id, f.did, c.*,\n"
                f"       DISTANCE(POINT('ICRS', f.ra, f.dec), {point}) * 3600 AS sep_arcsec\n"
                f"FROM rome.field_index AS f JOIN {table} AS c\n"
                f"  ON 1 = CONTAINS({point}, CIRCLE('ICRS', f.ra, f.dec, 1.0/3600))",
            )
        )
    return out


def examples_xhtml(examples: list[Example], title: str) -> bytes:
    """The DALI examples document."""
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML+RDFa 1.1//EN" '
        '"http://www.w3.org/MarkUp/DTD/xhtml-rdfa-2.dtd">',
        '<html xmlns="http://www.w3.org/1999/xhtml" version="XHTML+RDFa 1.1">',
        f"<head><title>{html.escape(title)}</title></head>",
        '<body vocab="http://www.ivoa.net/rdf/examples#">',
        f"<h1>{html.escape(title)}</h1>",
    ]
    for ex in examples:
        parts += [
            f'<div typeof="example" id="{ex.id}" resource="#{ex.id}">',
            f'<h2 property="name">{html.escape(ex.name)}</h2>',
            f"<p>{html.escape(ex.description)}</p>",
            f'<pre property="query">{html.escape(ex.query)}</pre>',
            "</div>",
        ]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts).encode()
