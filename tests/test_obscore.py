"""ivoa.obscore (ObsCore 1.1): metadata, ObsTAP queries with pyvo, DataLink of its rows,
taplint's ObsCore stage, limits, and re-ingest, on DuckDB and PostgreSQL + pgSphere."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from astropy.io.votable import parse, parse_single_table

pyvo = pytest.importorskip("pyvo")
STILTS = shutil.which("stilts")
needs_stilts = pytest.mark.skipif(STILTS is None, reason="STILTS not installed (no taplint)")
FIELD = "ROME-FIELD-01"
MJD = 2400000.5


@pytest.fixture(scope="session")
def tap_server(tap_server_both):
    """Every test here runs against the DuckDB and the PostgreSQL + pgSphere backends."""
    return tap_server_both


def sync(url, query, **params):
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, **params}
    return httpx.post(f"{url}/tap/sync", data=data, timeout=120)


def table_of(response: httpx.Response):
    assert response.status_code == 200, response.text[:500]
    return parse_single_table(io.BytesIO(response.content)).to_table()


def test_tap_schema_and_capabilities_declare_obscore(tap_server):
    cols = table_of(
        sync(
            tap_server,
            "SELECT column_name, ucd, utype, unit FROM TAP_SCHEMA.columns "
            "WHERE table_name = 'ivoa.obscore'",
        )
    )
    by_name = {str(r["column_name"]): r for r in cols}
    for name in ("dataproduct_type", "calib_level", "obs_publisher_did", "access_url",
                 "s_ra", "s_dec", "s_region", "t_min", "t_max", "t_xel", "em_min",
                 "em_max", "o_ucd", "facility_name", "instrument_name"):  # fmt: skip
        assert name in by_name, name
    assert by_name["dataproduct_type"]["utype"] == "obscore:ObsDataset.dataProductType"
    assert by_name["access_url"]["ucd"] == "meta.ref.url"
    assert by_name["t_xel"]["utype"] == "obscore:Char.TimeAxis.numBins"
    caps = httpx.get(f"{tap_server}/tap/capabilities", timeout=30).text
    assert 'ivo-id="ivo://ivoa.net/std/ObsCore#core-1.1"' in caps


@pytest.fixture(scope="module")
def star(tap_server):
    """A star of the field with good points in at least two bands."""
    rows = table_of(
        sync(
            tap_server,
            "SELECT TOP 1 f.field_id, f.ra, f.dec, f.did FROM rome.field_index AS f "
            "JOIN rome.lightcurve_stats AS s ON s.field = f.field AND s.field_id = f.field_id "
            f"WHERE f.field = '{FIELD}' GROUP BY f.field_id, f.ra, f.dec, f.did "
            "HAVING COUNT(*) >= 2 ORDER BY f.field_id",
        )
    )
    r = rows[0]
    return {"field_id": int(r["field_id"]), "ra": float(r["ra"]), "dec": float(r["dec"]),
            "did": str(r["did"])}  # fmt: skip


def test_obstap_cone_rows_resolve_through_datalink(tap_server, star):
    tap = pyvo.dal.TAPService(f"{tap_server}/tap")
    result = tap.search(
        "SELECT * FROM ivoa.obscore WHERE dataproduct_type='timeseries' AND "
        "1=CONTAINS(POINT('ICRS', s_ra, s_dec), "
        f"CIRCLE('ICRS', {star['ra']!r}, {star['dec']!r}, 0.1))"
    )
    assert len(result) > 0
    ours = [r for r in result if str(r["obs_publisher_did"]).startswith(star["did"] + "/")]
    stats = table_of(
        sync(
            tap_server,
            "SELECT filter, n_good, hjd_first, hjd_last FROM rome.lightcurve_stats "
            f"WHERE field = '{FIELD}' AND field_id = {star['field_id']}",
        )
    )
    assert sorted(str(r["obs_publisher_did"]).rpartition("/")[2] for r in ours) == sorted(
        str(b) for b in stats["filter"]
    )
    for row in result:
        assert str(row["access_url"]).startswith(f"{tap_server}/datalink/links?ID=")
        assert str(row["preview"]).startswith(f"{tap_server}/lightcurve?ID=")
        assert row["access_format"] == "application/x-votable+xml;content=datalink"
        assert row["obs_collection"] == "ROME/REA" and int(row["calib_level"]) == 3
    checked = 0
    for row, links in zip(result, result.iter_datalinks(), strict=True):
        if not str(row["obs_publisher_did"]).startswith(star["did"] + "/"):
            continue
        band = str(row["obs_publisher_did"]).rpartition("/")[2]
        this = [dl for dl in links if dl.semantics == "#this"]
        assert len(this) == 1, [dl.access_url for dl in links]
        url = this[0].access_url
        query = parse_qs(urlsplit(url).query)
        assert query["ID"] == [star["did"]] and query["BAND"] == [band]
        previews = [dl for dl in links if dl.semantics == "#preview"]
        assert previews and previews[0].access_url == row["preview"]
        lc = table_of(httpx.get(url, timeout=120))
        assert set(lc["filter"]) == {band}
        assert int(row["t_xel"]) == len(lc)
        hjd = np.asarray(lc["hjd"], dtype=float)
        assert float(row["t_min"]) == pytest.approx(hjd.min() - MJD, abs=1e-7)
        assert float(row["t_max"]) == pytest.approx(hjd.max() - MJD, abs=1e-7)
        lo, hi = {"gp": (4.02e-7, 5.52e-7), "rp": (5.52e-7, 6.91e-7), "ip": (6.91e-7, 8.19e-7)}[
            band
        ]
        assert (float(row["em_min"]), float(row["em_max"])) == (lo, hi)
        checked += 1
    assert checked == len(stats)


def test_band_dids_in_datalink(tap_server, star):
    bad = httpx.get(f"{tap_server}/datalink/links", params={"ID": star["did"] + "/zp"}, timeout=30)
    vot = parse_single_table(io.BytesIO(bad.content)).to_table()
    assert str(vot["error_message"][0]).startswith("UsageFault")
    stats = table_of(
        sync(
            tap_server,
            "SELECT filter FROM rome.lightcurve_stats "
            f"WHERE field = '{FIELD}' AND field_id = {star['field_id']}",
        )
    )
    band = str(stats["filter"][0])
    ok = httpx.get(f"{tap_server}/datalink/links", params={"ID": f"{star['did']}/{band}"})
    links = parse_single_table(io.BytesIO(ok.content)).to_table()
    assert all(np.ma.is_masked(m) or not m for m in links["error_message"])
    assert set(links["ID"]) == {f"{star['did']}/{band}"}


@needs_stilts
def test_band_did_links_pass_datalinklint(tap_server, star):
    stats = table_of(
        sync(
            tap_server,
            "SELECT filter FROM rome.lightcurve_stats "
            f"WHERE field = '{FIELD}' AND field_id = {star['field_id']}",
        )
    )
    ids = [f"{star['did']}/{b}" for b in stats["filter"]] + [star["did"] + "/zp"]
    url = str(httpx.URL(f"{tap_server}/datalink/links", params=[("ID", i) for i in ids]))
    out = subprocess.run(
        [STILTS, "datalinklint", f"votable={url}"], capture_output=True, text=True, timeout=180
    )
    assert "Errors: 0;" in out.stdout and "Warnings: 0;" in out.stdout, out.stdout[-3000:]
    assert "Failures: 0" in out.stdout, out.stdout[-3000:]


def test_unconstrained_query_stops_at_maxrec(tap_server):
    r = sync(tap_server, "SELECT * FROM ivoa.obscore", MAXREC="25")
    vot = parse(io.BytesIO(r.content))
    assert len(vot.get_first_table().array) == 25
    infos = [(i.name, i.value) for res in vot.resources for i in res.infos]
    assert ("QUERY_STATUS", "OVERFLOW") in infos


def test_rows_match_lightcurve_stats(tap_server):
    def count(table: str) -> int:
        return int(table_of(sync(tap_server, f"SELECT COUNT(*) AS n FROM {table}"))["n"][0])

    assert count("ivoa.obscore") == count("rome.lightcurve_stats") > 0


@needs_stilts
def test_taplint_with_obscore_stage(tap_server, tmp_path):
    out = subprocess.run(
        [STILTS, "taplint", f"tapurl={tap_server}/tap", "format=json", "maxrepeat=20"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    (tmp_path / "taplint.json").write_text(out.stdout)
    report = json.loads(out.stdout)
    codes = {section["code"] for section in report["sections"]}
    assert "OBS" in codes, codes
    obs = next(s for s in report["sections"] if s["code"] == "OBS")
    assert obs["reports"], "the ObsCore stage ran no checks"
    errors = [
        f"{section['code']}-{r['code']}: {r.get('text', '')} ({r.get('more', '')} more)"
        for section in report["sections"]
        for r in section["reports"]
        if r.get("level") in ("ERROR", "FAILURE", "E", "F")
        and f"{section['code']}-{r['code']}" != "LOC-NOTP"  # ObsLocTAP does not apply
    ]
    assert errors == [], "\n".join(errors[:40])


# --- ingest ----------------------------------------------------------------------------


def _synth(path, n_stars, seed):
    from romerea_vo.products.synthetic import synthesize_field

    synthesize_field(path, field=FIELD, n_stars=n_stars, n_images=40, seed=seed)
    return path


def _obscore_ids(session, db) -> set[str]:
    from romerea_vo.votable.schema import load_table_schema

    name = db.physical_name(load_table_schema("obscore"))
    return {r[0] for r in session.fetchall(f"SELECT obs_id FROM {name}")}


def _stats_ids(session, db) -> set[str]:
    from romerea_vo.votable.schema import load_table_schema

    name = db.physical_name(load_table_schema("lightcurve_stats"))
    rows = session.fetchall(f"SELECT field, field_id, filter FROM {name}")
    return {f"{f}/{i}/{b}" for f, i, b in rows}


@pytest.mark.parametrize("backend", ["duckdb", "postgresql"])
def test_reingest_replaces_a_fields_rows(tmp_path, request, second_field, backend):
    from romerea_vo.store import open_database

    big = _synth(tmp_path / "big" / FIELD, 120, 3)
    small = _synth(tmp_path / "small" / FIELD, 40, 4)
    if backend == "duckdb":
        from romerea_vo.store import ingest_fields as ingest

        target = tmp_path / "rome.duckdb"
    else:
        from romerea_vo.store.postgres import ingest_fields_pg as ingest

        cluster = request.getfixturevalue("pg_cluster")
        cluster.create_database("obscore_reingest")
        target = f"postgresql://{cluster.user}@127.0.0.1:{cluster.port}/obscore_reingest"
    ingest(target, [big, second_field])
    db = open_database(target)
    try:
        with db.session() as s:
            before = _obscore_ids(s, db)
            assert before == _stats_ids(s, db)
            assert {i.split("/")[0] for i in before} == {FIELD, "ROME-FIELD-02"}
    finally:
        db.close()
    ingest(target, [small])
    db = open_database(target)
    try:
        with db.session() as s:
            after = _obscore_ids(s, db)
            assert after == _stats_ids(s, db)
    finally:
        db.close()
    gone = {i for i in before if i.startswith(FIELD + "/") and int(i.split("/")[1]) > 40}
    assert gone and not gone & after
    assert {i for i in before if i.startswith("ROME-FIELD-02/")} <= after
