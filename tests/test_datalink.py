"""DataLink 1.1 links, service descriptors on TAP/SCS results, and Simple Cone Search 1.1."""

from __future__ import annotations

import io
import shutil
import subprocess
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io.votable import parse, parse_single_table
from astropy.table import Table

pyvo = pytest.importorskip("pyvo")
STILTS = shutil.which("stilts")
needs_stilts = pytest.mark.skipif(
    STILTS is None, reason="STILTS not installed (apt install stilts): no datalinklint/votlint"
)
FIELD = "ROME-FIELD-01"
LINK_COLUMNS = [
    ("ID", "char", "meta.id;meta.main"),
    ("access_url", "char", "meta.ref.url"),
    ("service_def", "char", "meta.ref"),
    ("error_message", "char", "meta.code.error"),
    ("semantics", "char", "meta.code"),
    ("description", "char", "meta.note"),
    ("content_type", "char", "meta.code.mime"),
    ("content_length", "long", "phys.size;meta.file"),
    ("content_qualifier", "char", "meta.code.class"),
    ("local_semantics", "char", "meta.id.assoc"),
    ("link_auth", "char", "meta.code"),
    ("link_authorized", "boolean", "meta.code"),
]


@pytest.fixture(scope="session")
def tap_server(tap_server_both):
    """Every test here runs against the DuckDB and the PostgreSQL + pgSphere backends."""
    return tap_server_both


def sync(url, query, **params):
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, **params}
    return httpx.post(f"{url}/tap/sync", data=data, timeout=60)


@pytest.fixture(scope="module")
def authority(tap_server) -> str:
    r = sync(
        tap_server, f"SELECT did FROM rome.field_index WHERE field = '{FIELD}' AND field_id = 1"
    )
    did = str(parse_single_table(io.BytesIO(r.content)).to_table()["did"][0])
    return did.rpartition("?")[0]


@pytest.fixture(scope="module")
def bands_by_star(tap_server) -> dict[int, dict[str, int]]:
    """field_id -> {band: n_good or -1} for bands where the star has data (first 60 stars)."""
    r = sync(
        tap_server,
        "SELECT f.field_id, f.n_datasets_gp, f.n_datasets_rp, f.n_datasets_ip, s.filter, "
        "s.n_good FROM rome.field_index AS f LEFT OUTER JOIN rome.lightcurve_stats AS s "
        "ON s.field = f.field AND s.field_id = f.field_id "
        f"WHERE f.field = '{FIELD}' AND f.field_id <= 60",
    )
    table = parse_single_table(io.BytesIO(r.content)).to_table()
    out: dict[int, dict[str, int]] = {}
    for row in table:
        star = out.setdefault(int(row["field_id"]), {})
        for band in ("gp", "rp", "ip"):
            if row[f"n_datasets_{band}"] and row[f"n_datasets_{band}"] > 0:
                star.setdefault(band, -1)
        if not np.ma.is_masked(row["filter"]) and (row["n_good"] > 0 or row["filter"] in star):
            star[str(row["filter"])] = int(row["n_good"])
    return out


def blank(value) -> bool:
    """NULL (masked) or empty: TABLEDATA writes NULL strings as empty cells."""
    return np.ma.is_masked(value) or not str(value)


def links(url, *ids, method="GET", **params) -> httpx.Response:
    items = [("ID", i) for i in ids] + list(params.items())
    if method == "POST":
        data = {"ID": list(ids), **params}
        return httpx.post(f"{url}/datalink/links", data=data, timeout=60)
    return httpx.get(f"{url}/datalink/links", params=items, timeout=60)


def links_table(response: httpx.Response) -> Table:
    assert response.status_code == 200, response.text[:500]
    return parse_single_table(io.BytesIO(response.content)).to_table()


def lightcurve_served(tap_server) -> bool:
    """Whether the lightcurve endpoint (built alongside) answers in this checkout."""
    return httpx.get(f"{tap_server}/lightcurve", timeout=30).status_code != 404


# --- links ---


def test_links_single_star(tap_server, authority, bands_by_star):
    did = f"{authority}?{FIELD}/3"
    r = links(tap_server, did)
    assert r.headers["content-type"] == "application/x-votable+xml;content=datalink"
    assert "<TABLEDATA>" in r.text and "BINARY" not in r.text
    vot = parse(io.BytesIO(r.content))
    infos = {i.name: i.value for i in vot.resources[0].infos}
    assert infos["standardID"] == "ivo://ivoa.net/std/DataLink#links-1.1"
    assert infos["QUERY_STATUS"] == "OK"
    fields = vot.get_first_table().fields
    assert [(f.name, f.datatype, f.ucd) for f in fields] == LINK_COLUMNS
    assert str(fields[7].unit) == "byte"
    table = vot.get_first_table().to_table()
    assert set(table["ID"]) == {did}
    assert all(blank(v) for v in table["error_message"])
    this = table[table["semantics"] == "#this"]
    bands = bands_by_star[3]
    assert sorted(this["local_semantics"]) == sorted(
        ["lightcurve-all", *[f"lightcurve-{b}" for b in bands]]
    )
    assert set(this["content_type"]) == {"application/x-votable+xml"}
    assert set(this["content_qualifier"]) == {"#timeseries"}
    for row in this:
        query = parse_qs(urlsplit(str(row["access_url"])).query)
        assert query["ID"] == [did]
        band = str(row["local_semantics"]).removeprefix("lightcurve-")
        assert query.get("BAND") == (None if band == "all" else [band])
        if band != "all" and bands[band] >= 0:
            assert f"{bands[band]} good points" in str(row["description"])
        # the band first: TOPCAT's DataLink window lists the links by description
        prefix = "All bands" if band == "all" else f"{band[0]}'"
        assert str(row["description"]).startswith(f"{prefix} lightcurve of "), row
    (preview,) = table[table["semantics"] == "#preview"]
    assert preview["content_type"] == "image/png"
    assert parse_qs(urlsplit(str(preview["access_url"])).query)["RESPONSEFORMAT"] == ["png"]
    aux = table[table["semantics"] == "#auxiliary"]
    assert sorted(aux["local_semantics"]) == ["lightcurve-stats-rows", "star-page", "stars-row"]
    # plot and TAP queries: size unknown; lightcurves: estimated, close to the real size
    assert all(np.ma.is_masked(v) for v in table[table["semantics"] != "#this"]["content_length"])
    for row in this:
        band = str(row["local_semantics"]).removeprefix("lightcurve-")
        if np.ma.is_masked(row["content_length"]):  # only where the points are not known
            assert bands.get(band, -1) < 0 or (band == "all" and -1 in bands.values())
            continue
        size = len(httpx.get(str(row["access_url"]), timeout=60).content)
        assert abs(int(row["content_length"]) - size) <= 0.02 * size + 400, (row, size)
    assert set(table["link_auth"]) == {"false"} and all(table["link_authorized"])


def test_auxiliary_links_are_working_tap_queries(tap_server, authority):
    table = links_table(links(tap_server, f"{authority}?{FIELD}/7"))
    aux = table[table["semantics"] == "#auxiliary"]
    for row in aux[aux["local_semantics"] != "star-page"]:  # the page: tests/test_pages.py
        r = httpx.get(str(row["access_url"]), timeout=60)
        assert r.status_code == 200, r.text[:400]
        result = parse_single_table(io.BytesIO(r.content)).to_table()
        assert len(result) >= 1
        assert set(result["field_id"]) == {7} and set(result["field"]) == {FIELD}


def test_links_several_and_bad_ids(tap_server, authority, bands_by_star):
    ids = [
        f"{authority}?{FIELD}/1",
        "not a DID",
        f"{authority}?{FIELD}/2",
        f"{authority}?{FIELD}/99999999",
        f"{authority}?NO-SUCH-FIELD/1",
        f"ivo://elsewhere.org/x?{FIELD}/1",
        f"{authority}?{FIELD}/1",  # a duplicate: listed once
    ]
    table = links_table(links(tap_server, *ids))
    order = list(dict.fromkeys(table["ID"]))
    assert order == ids[:6]
    # all rows of one ID are consecutive
    runs = [k for i, k in enumerate(table["ID"]) if i == 0 or table["ID"][i - 1] != k]
    assert runs == order
    errors = {str(r["ID"]): str(r["error_message"]) for r in table if not blank(r["error_message"])}
    assert errors["not a DID"].startswith("UsageFault: ")
    assert errors[f"{authority}?{FIELD}/99999999"].startswith("NotFoundFault: ")
    assert errors[f"{authority}?NO-SUCH-FIELD/1"].startswith("NotFoundFault: ")
    assert errors[f"ivo://elsewhere.org/x?{FIELD}/1"].startswith("UsageFault: ")
    for row in table:
        if str(row["ID"]) in errors:
            assert row["semantics"] == "#this" and blank(row["access_url"])
    good = table[table["ID"] == ids[2]]
    assert len(good[good["semantics"] == "#this"]) == 1 + len(bands_by_star[2])


def test_links_post_and_response_formats(tap_server, authority):
    did = f"{authority}?{FIELD}/4"
    get = links_table(links(tap_server, did))
    post = links_table(links(tap_server, did, method="POST"))
    assert list(get["access_url"]) == list(post["access_url"])
    b2 = links(tap_server, did, RESPONSEFORMAT="votable/b2")
    assert "<BINARY2>" in b2.text and "content=datalink" in b2.headers["content-type"]
    assert list(links_table(b2)["access_url"]) == list(get["access_url"])
    explicit = links(tap_server, did, RESPONSEFORMAT="application/x-votable+xml;content=datalink")
    assert "<TABLEDATA>" in explicit.text
    csv = links(tap_server, did, RESPONSEFORMAT="csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert len(Table.read(csv.text, format="ascii.csv")) == len(get)


@pytest.mark.parametrize("params", [{}, {"ID": ""}, {"ID": " "}])
def test_links_without_id_is_a_dali_error(tap_server, params):
    r = httpx.get(f"{tap_server}/datalink/links", params=params, timeout=30)
    assert r.status_code == 400
    assert 'name="QUERY_STATUS" value="ERROR"' in r.text and "UsageFault: missing" in r.text


def test_missing_cube_gives_fault_rows(tap_db, tmp_path):
    from romerea_vo.service.datalink import DataLinkService
    from romerea_vo.store.database import Database

    db = Database(tap_db)
    try:
        service = DataLinkService(db)
        did = f"{db.authority}?{FIELD}/1"
        ok = service.links([did], "http://x")
        assert not any(ok["error_message"].to_pylist())
        service._field(FIELD).directory = tmp_path  # a directory without the cubes
        table = service.links([did], "http://x").to_pylist()
    finally:
        db.close()
    faults = [r for r in table if r["error_message"]]
    assert {r["semantics"] for r in faults} == {"#this", "#preview"}
    assert all(r["error_message"].startswith("FatalFault: ") for r in faults)
    assert all(r["access_url"] is None for r in faults)
    aux = [r for r in table if r["semantics"] == "#auxiliary"]
    assert aux and all(r["access_url"] and not r["error_message"] for r in aux)


@needs_stilts
@pytest.mark.parametrize("case", ["single", "several", "bad"])
def test_datalinklint_zero_errors(tap_server, authority, case, tmp_path):
    ids = {
        "single": [f"{authority}?{FIELD}/10"],
        "several": [f"{authority}?{FIELD}/{i}" for i in (11, 12, 13)],
        "bad": ["junk", f"{authority}?{FIELD}/99999999", f"{authority}?NOPE/3"],
    }[case]
    url = str(httpx.URL(f"{tap_server}/datalink/links", params=[("ID", i) for i in ids]))
    out = subprocess.run(
        [STILTS, "datalinklint", f"votable={url}"], capture_output=True, text=True, timeout=180
    )
    assert "Errors: 0;" in out.stdout and "Warnings: 0;" in out.stdout, out.stdout[-3000:]
    assert "Failures: 0" in out.stdout, out.stdout[-3000:]


# --- service descriptors on TAP results ---


def descriptor_of(content: bytes):
    vot = parse(io.BytesIO(content))
    services = [r for r in vot.resources if r.type == "meta" and r.utype == "adhoc:service"]
    return vot, services


def test_tap_results_with_did_carry_a_descriptor(tap_server):
    r = sync(
        tap_server,
        f"SELECT TOP 5 field_id, did AS star FROM rome.field_index WHERE field = '{FIELD}'",
    )
    vot, services = descriptor_of(r.content)
    # the lightcurve service first (TOPCAT's Invoke Service defaults to the first), then
    # DataLink; both take the row's DID as ID
    assert [s.ID for s in services] == ["lightcurve_service", "datalink_links"]
    lightcurve, links = ({p.name: p.value for p in s.params} for s in services)
    assert lightcurve["accessURL"] == f"{tap_server}/lightcurve"
    assert "standardID" not in lightcurve
    assert links["accessURL"] == f"{tap_server}/datalink/links"
    assert links["standardID"] == "ivo://ivoa.net/std/DataLink#links-1.1"
    star = vot.get_first_table().get_field_by_id_or_name("star")
    for service in services:
        (group,) = service.groups
        assert group.name == "inputParams"
        (id_param,) = group.entries
        assert id_param.name == "ID" and id_param.ref == star.ID
    # no DID column, or a format that cannot hold it: no descriptor
    assert (
        descriptor_of(sync(tap_server, "SELECT TOP 2 field_id FROM rome.field_index").content)[1]
        == []
    )
    csv = sync(tap_server, "SELECT TOP 2 did FROM rome.field_index", RESPONSEFORMAT="csv")
    assert csv.status_code == 200 and "adhoc" not in csv.text


@needs_stilts
@pytest.mark.parametrize("fmt", ["votable", "votable/td"])
def test_tap_result_with_descriptor_votlint_clean(tap_server, fmt, tmp_path):
    r = sync(tap_server, "SELECT TOP 20 * FROM rome.field_index", RESPONSEFORMAT=fmt)
    assert "adhoc:service" in r.text
    path = tmp_path / "out.vot"
    path.write_bytes(r.content)
    out = subprocess.run(
        [STILTS, "votlint", str(path)], capture_output=True, text=True, timeout=120
    )
    assert [line for line in out.stdout.splitlines() if line.startswith(("ERROR", "WARNING"))] == []


def test_async_results_carry_a_descriptor(tap_server):
    tap = pyvo.dal.TAPService(f"{tap_server}/tap")
    job = tap.submit_job(f"SELECT TOP 3 did, ra FROM rome.field_index WHERE field = '{FIELD}'")
    job.run()
    job.wait(phases=["COMPLETED", "ERROR", "ABORTED"], timeout=60)
    assert job.phase == "COMPLETED"
    r = httpx.get(job.result_uri, timeout=60)
    _, services = descriptor_of(r.content)
    urls = [{p.name: p.value for p in s.params}["accessURL"] for s in services]
    assert len(urls) == 2
    assert urls[0].endswith("/lightcurve") and urls[1].endswith("/datalink/links")
    job.delete()


def test_first_descriptor_invoked_on_a_row_gives_every_band(tap_server, bands_by_star):
    """What TOPCAT's Invoke Service does with its default (first) descriptor, done by
    pyvo's service-descriptor support: the row's lightcurve, every band's good points."""
    from pyvo.dal.adhoc import DatalinkQuery

    result = pyvo.dal.TAPService(f"{tap_server}/tap").search(
        f"SELECT field_id, did FROM rome.field_index WHERE field = '{FIELD}' "
        "AND field_id IN (20, 21) ORDER BY field_id"
    )
    first = next(r for r in result.votable.resources if r.utype == "adhoc:service")
    for row in result:
        lc = DatalinkQuery.from_resource([row], first).execute_votable().get_first_table()
        lc = lc.to_table()
        good = {band: n for band, n in bands_by_star[int(row["field_id"])].items() if n > 0}
        assert good, "the test stars have good points"
        assert dict(zip(*np.unique(np.asarray(lc["filter"]), return_counts=True),
                        strict=True)) == good  # fmt: skip


def test_pyvo_iter_datalinks_gives_every_band(tap_server, bands_by_star):
    tap = pyvo.dal.TAPService(f"{tap_server}/tap")
    result = tap.search(
        f"SELECT did, field_id FROM rome.field_index WHERE field = '{FIELD}' "
        "AND field_id IN (20, 21, 22) ORDER BY field_id"
    )
    fetch = lightcurve_served(tap_server)
    seen = {}
    for row, datalinks in zip(result, result.iter_datalinks(), strict=True):
        field_id = int(row["field_id"])
        band_links = [
            dl for dl in datalinks if dl.semantics == "#this" and "BAND=" in (dl.access_url or "")
        ]
        seen[field_id] = sorted(
            parse_qs(urlsplit(dl.access_url).query)["BAND"][0] for dl in band_links
        )
        if not fetch:
            continue
        for dl in band_links:
            r = httpx.get(dl.access_url, timeout=120)
            assert r.status_code == 200, r.text[:400]
            lc = parse_single_table(io.BytesIO(r.content)).to_table()
            band = parse_qs(urlsplit(dl.access_url).query)["BAND"][0]
            assert set(lc["filter"]) <= {band}
            if bands_by_star[field_id].get(band, -1) > 0:
                assert len(lc) >= bands_by_star[field_id][band]
    assert seen == {k: sorted(bands_by_star[k]) for k in (20, 21, 22)}


def test_capabilities_list_datalink_and_scs(tap_server):
    caps = pyvo.dal.TAPService(f"{tap_server}/tap").capabilities
    urls = {str(c.standardid): c.interfaces[0].accessurls[0].content for c in caps if c.interfaces}
    assert urls["ivo://ivoa.net/std/DataLink#links-1.1"] == f"{tap_server}/datalink/links"
    assert urls["ivo://ivoa.net/std/ConeSearch"] == f"{tap_server}/scs"


# --- Simple Cone Search ---


def test_scs_matches_astropy(tap_server, field_positions):
    centre = SkyCoord(
        np.median(field_positions["ra"]), np.median(field_positions["dec"]), unit="deg"
    )
    radius = 3.0 / 60
    scs = pyvo.dal.SCSService(f"{tap_server}/scs")
    result = scs.search(pos=centre, radius=radius * u.deg)
    table = result.to_table()
    sep = SkyCoord(field_positions["ra"], field_positions["dec"], unit="deg").separation(centre).deg
    inside = sep <= radius
    assert inside.sum() > 10
    mine = table[table["field"] == FIELD]
    # stars within 1e-9 deg of the edge may go either way with a different formula
    edge = np.abs(sep - radius) < 1e-9
    assert set(mine["field_id"]) - set(field_positions["field_id"][edge]) == set(
        field_positions["field_id"][inside & ~edge]
    )
    assert list(table["distance"]) == sorted(table["distance"])
    np.testing.assert_allclose(
        mine["distance"],
        SkyCoord(mine["ra"], mine["dec"], unit="deg").separation(centre).deg,
        atol=1e-9,
    )
    # SCS required columns, found by UCD as pyvo finds them
    ucds = {f.ucd: f.name for f in result.fielddescs}
    assert [f.name for f in result.fielddescs if f.ucd == "meta.id;meta.main"] == ["did"]
    assert ucds["pos.eq.ra;meta.main"] == "ra" and ucds["pos.eq.dec;meta.main"] == "dec"
    assert len(set(table["did"])) == len(table)


def test_scs_verb_maxrec_and_metadata(tap_server, field_positions):
    ra, dec = float(np.median(field_positions["ra"])), float(np.median(field_positions["dec"]))
    base = {"RA": ra, "DEC": dec, "SR": 0.1}

    def get(**params):
        r = httpx.get(f"{tap_server}/scs", params={**base, **params}, timeout=60)
        assert r.status_code == 200, r.text[:400]
        return r

    t1 = parse_single_table(io.BytesIO(get(VERB=1).content))
    assert [f.name for f in t1.fields] == ["did", "ra", "dec"]
    t3 = parse_single_table(io.BytesIO(get(VERB=3).content))
    names = [f.name for f in t3.fields]
    assert {"quadrant", "quadrant_id", "gaia_source_id", "distance"} <= set(names)
    r = get(MAXREC=5)
    vot = parse(io.BytesIO(r.content))
    assert len(vot.get_first_table().array) == 5
    assert any(i.name == "QUERY_STATUS" and i.value == "OVERFLOW" for i in vot.resources[0].infos)
    assert "<TABLEDATA>" in r.text  # default serialisation for old SCS clients
    for meta in (get(SR=0), get(MAXREC=0)):
        table = parse_single_table(io.BytesIO(meta.content))
        assert len(table.array) == 0 and "did" in [f.name for f in table.fields]
    assert "<BINARY2>" in get(RESPONSEFORMAT="votable/b2").text
    _, services = descriptor_of(get(VERB=1).content)
    assert [s.ID for s in services] == ["lightcurve_service", "datalink_links"]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"DEC": -29, "SR": 0.1}, "RA"),
        ({"RA": 268, "DEC": 91, "SR": 0.1}, "DEC=91"),
        ({"RA": 268, "DEC": -29, "SR": "wide"}, "SR"),
        ({"RA": 268, "DEC": -29, "SR": -1}, "SR"),
        ({"RA": 268, "DEC": -29, "SR": 0.1, "VERB": 7}, "VERB"),
        ({"RA": 268, "DEC": -29, "SR": 0.1, "MAXREC": "x"}, "MAXREC"),
        ({"RA": 268, "DEC": -29, "SR": 0.1, "RESPONSEFORMAT": "pdf"}, "pdf"),
    ],
)
def test_scs_errors(tap_server, params, needle):
    r = httpx.get(f"{tap_server}/scs", params=params, timeout=30)
    assert r.status_code == 400
    vot = parse(io.BytesIO(r.content))
    infos = {i.name: i for i in vot.resources[0].infos}
    assert infos["QUERY_STATUS"].value == "ERROR" and needle in infos["QUERY_STATUS"].content
    assert needle in infos["Error"].value


@needs_stilts
def test_scs_votlint_clean(tap_server, field_positions, tmp_path):
    ra, dec = float(np.median(field_positions["ra"])), float(np.median(field_positions["dec"]))
    for i, params in enumerate(
        [{"SR": 0.05}, {"SR": 0.05, "VERB": 3}, {"SR": 0.05, "MAXREC": 2}, {"SR": 0}, {"SR": -1}]
    ):
        r = httpx.get(f"{tap_server}/scs", params={"RA": ra, "DEC": dec, **params}, timeout=60)
        path = tmp_path / f"scs{i}.vot"
        path.write_bytes(r.content)
        out = subprocess.run(
            [STILTS, "votlint", str(path)], capture_output=True, text=True, timeout=120
        )
        lines = out.stdout.splitlines()
        problems = [line for line in lines if line.startswith(("ERROR", "WARNING"))]
        assert problems == [], (params, problems)
