"""DALI examples (``/tap/examples``): real ROME queries, as XHTML with RDFa."""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    id: str
    name: str
    description: str
    query: str


def rome_examples(field: str, ra: float, dec: float) -> list[Example]:
    """Examples using a field of this database and a position inside it."""
    return [
        Example(
            "cone",
            "Stars within 1 arcmin of a position",
            "A cone search on the field index; each row carries the star's publisher DID, "
            "which DataLink and the lightcurve service accept.",
            "SELECT field, field_id, ra, dec, gaia_source_id, did\n"
            "FROM rome.field_index\n"
            f"WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra:.5f}, {dec:.5f}, "
            "1.0/60))",
        ),
        Example(
            "cmd",
            "A colour-magnitude selection with Gaia photometry",
            "Joins the field index to the stars table and selects red giants by their "
            "calibrated g'-i' colour and i' magnitude from the lsc_doma datasets.",
            "SELECT f.field, f.field_id, f.ra, f.dec, s.cal_i_mag_lsc_doma,\n"
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
            "errors, with enough good points.",
            "SELECT TOP 100 field, field_id, n_good, median_mag, mad_std_mag, median_err,\n"
            "       mad_std_mag / median_err AS excess\n"
            "FROM rome.lightcurve_stats\n"
            "WHERE filter = 'ip' AND n_good >= 20 AND mad_std_mag > 3 * median_err\n"
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
            "enough good points.",
            "SELECT TOP 100 field, field_id, n_good, median_mag, iqr_mag, inv_eta,\n"
            "       stetson_j, excess_abbe\n"
            "FROM rome.lightcurve_stats\n"
            "WHERE filter = 'ip' AND n_good >= 50 AND inv_eta > 1 AND iqr_mag > 0.02\n"
            "ORDER BY inv_eta DESC",
        ),
        Example(
            "upload_xmatch",
            "Cross-match an uploaded list within 1 arcsec",
            "Upload a table named targets with ra and dec columns (TOPCAT's TAP window or "
            "pyvo's uploads=) and find the ROME stars within 1 arcsec of each row.",
            "SELECT u.*, f.field, f.field_id, f.did,\n"
            "       DISTANCE(POINT('ICRS', u.ra, u.dec), POINT('ICRS', f.ra, f.dec)) * 3600 "
            "AS sep_arcsec\n"
            "FROM TAP_UPLOAD.targets AS u JOIN rome.field_index AS f\n"
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
