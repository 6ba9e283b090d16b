"""``romerea-vo ingest-catalog``: external catalogues published next to the ROME tables."""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
import subprocess
import warnings

import astropy.units as u
import duckdb
import httpx
import numpy as np
import pytest
import pyvo
from astropy.coordinates import SkyCoord, search_around_sky
from astropy.io.fits.verify import VerifyWarning
from astropy.table import MaskedColumn, Table

from romerea_vo.catalogue_files import CatalogueError
from romerea_vo.cli import main
from romerea_vo.errors import InvalidRequestError, RomeReaError
from romerea_vo.store import Database, ingest_fields
from romerea_vo.store.catalog_ingest import ingest_catalog
from tests.conftest import LiveServer

STILTS = shutil.which("stilts")
FORMATS = {"votable": "survey.vot", "fits": "survey.fits", "csv": "survey.csv",
           "parquet": "survey.parquet", "ecsv": "survey.ecsv"}  # fmt: skip
WRITE_FORMAT = {"votable": "votable", "fits": "fits", "csv": "ascii.csv",
                "parquet": "parquet", "ecsv": "ascii.ecsv"}  # fmt: skip
N_NEAR, N_FAR, N_RANDOM = 300, 100, 300


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_survey(field_positions, seed: int = 5) -> Table:
    """A synthetic external survey around the synthetic field: sources within 0.8" of
    ROME stars, sources 1.2-3" from them, and sources anywhere in the field."""
    rng = np.random.default_rng(seed)
    fp = field_positions
    pick = rng.choice(len(fp), N_NEAR + N_FAR, replace=False)
    sep = np.concatenate([rng.uniform(0, 0.8, N_NEAR), rng.uniform(1.2, 3.0, N_FAR)])
    stars = SkyCoord(fp["ra"][pick] * u.deg, fp["dec"][pick] * u.deg)
    moved = stars.directional_offset_by(rng.uniform(0, 360, len(pick)) * u.deg, sep * u.arcsec)
    ra = np.concatenate([moved.ra.deg, rng.uniform(fp["ra"].min(), fp["ra"].max(), N_RANDOM)])
    dec = np.concatenate([moved.dec.deg, rng.uniform(fp["dec"].min(), fp["dec"].max(), N_RANDOM)])
    n = len(ra)
    order = rng.permutation(n)  # not sorted by dec in the file
    t = Table(
        {
            "source_id": np.arange(1, n + 1, dtype=np.int64) * 7,
            "RAJ2000": ra[order],
            "DEJ2000": dec[order],
            "gmag": rng.normal(17, 1, n).astype(np.float32),
            "B-V": rng.normal(1.2, 0.3, n),
            "size": rng.integers(0, 6, n).astype(np.int16),
            "name": [f"EXT J{i:05d}" for i in range(n)],
            "flag": rng.random(n) > 0.5,
            "nobs": MaskedColumn(rng.integers(1, 50, n).astype(np.int32), mask=rng.random(n) < 0.1),
        }
    )
    t["source_id"].meta["ucd"] = "meta.id;meta.main"
    t["source_id"].description = "Source identifier"
    t["RAJ2000"].unit = t["DEJ2000"].unit = u.deg
    t["gmag"].unit = u.mag
    t["gmag"].meta["ucd"] = "phot.mag;em.opt.V"
    t["gmag"].description = "Synthetic G magnitude"
    t["B-V"].unit = u.mag
    t["B-V"].meta["ucd"] = "phot.color;em.opt.B;em.opt.V"
    t["size"].description = "Number of components"
    t.meta["description"] = "A synthetic external survey"
    return t


@pytest.fixture(scope="module")
def survey(field_positions) -> Table:
    return make_survey(field_positions)


@pytest.fixture(scope="module")
def survey_files(tmp_path_factory, survey) -> dict:
    out = tmp_path_factory.mktemp("survey")
    files = {}
    for fmt, name in FORMATS.items():
        with warnings.catch_warnings():
            # FITS: astropy keeps the table's 'description' as a HIERARCH card, as intended
            warnings.filterwarnings("ignore", "Keyword name 'description'", VerifyWarning)
            survey.write(out / name, format=WRITE_FORMAT[fmt])
        files[fmt] = out / name
    return files


@pytest.fixture(scope="module")
def both_db(tmp_path_factory, tap_db, survey_files) -> str:
    """The ROME test database plus ext.survey (from the VOTable)."""
    path = tmp_path_factory.mktemp("both") / "both.duckdb"
    shutil.copy(tap_db, path)
    ingest_catalog(survey_files["votable"], path, "ext.survey", report=lambda m: None)
    return path


def serve(db_path, work_dir):
    from romerea_vo.service.app import ServiceConfig, create_app

    return LiveServer(create_app(ServiceConfig(db_path=db_path, work_dir=work_dir)))


@pytest.fixture(scope="module")
def both_server(both_db, tmp_path_factory):
    live = serve(both_db, tmp_path_factory.mktemp("work_both"))
    yield live.url
    live.stop()


def query(db_path, sql, params=None):
    db = Database(db_path)
    try:
        return db.cursor().execute(sql, params or []).fetchall()
    finally:
        db.close()


def tap(url: str) -> pyvo.dal.TAPService:
    return pyvo.dal.TAPService(url + "/tap")


def ids_of(result) -> set[int]:
    return {int(x) for x in result.to_table()["source_id"]}


# --- ingesting each format -------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_ingests_the_same_rows(fmt, tmp_path, survey, survey_files):
    path = survey_files[fmt]
    before = digest(path)
    db_path = tmp_path / "cat.duckdb"
    notes = []
    schema = ingest_catalog(path, db_path, "ext.survey", report=notes.append)
    assert digest(path) == before  # input never modified
    assert notes == []
    assert schema.qualified_name == "ext.survey"
    assert schema.column_names == survey.colnames
    by_name = schema.by_name
    assert (by_name["RAJ2000"].datatype, by_name["RAJ2000"].unit) == ("double", "deg")
    assert by_name["RAJ2000"].ucd == "pos.eq.ra;meta.main"
    assert by_name["DEJ2000"].ucd == "pos.eq.dec;meta.main"
    assert by_name["RAJ2000"].indexed and by_name["DEJ2000"].principal
    if fmt != "csv":  # CSV carries no metadata
        assert by_name["gmag"].unit == "mag" and by_name["gmag"].ucd == "phot.mag;em.opt.V"
        assert by_name["gmag"].description == "Synthetic G magnitude"
        assert by_name["source_id"].principal  # meta.id;meta.main
        assert schema.description == "A synthetic external survey"
        types = {c.name: c.datatype for c in schema.columns}
        assert types == {"source_id": "long", "RAJ2000": "double", "DEJ2000": "double",
                         "gmag": "float", "B-V": "double", "size": "short", "name": "char",
                         "flag": "boolean", "nobs": "int"}  # fmt: skip
    rows = query(
        db_path,
        'SELECT source_id, "RAJ2000", "DEJ2000", gmag, "B-V", "size", name, nobs '
        "FROM romerea_data.ext.survey",
    )
    assert len(rows) == len(survey)
    decs = [r[2] for r in rows]
    assert decs == sorted(decs)  # stored in Dec order (cone searches use a Dec band)
    rows.sort()
    ref = survey[np.argsort(survey["source_id"])]
    assert [r[0] for r in rows] == list(ref["source_id"])
    np.testing.assert_allclose([r[1] for r in rows], ref["RAJ2000"], rtol=1e-15)
    np.testing.assert_allclose([r[3] for r in rows], ref["gmag"], rtol=1e-6)
    assert [r[5] for r in rows] == list(ref["size"])
    assert [r[6] for r in rows] == list(ref["name"])
    nobs = [None if m else int(v) for v, m in zip(ref["nobs"].data, ref["nobs"].mask, strict=True)]
    assert [r[7] for r in rows] == nobs
    db = Database(db_path)
    assert not db.has_rome and db.metadata_is_current()
    assert db.tables[0].qualified_name == "ext.survey"
    db.close()


def test_sexagesimal_positions_are_published_in_degrees(tmp_path, survey):
    c = SkyCoord(survey["RAJ2000"], survey["DEJ2000"], unit=u.deg)
    t = Table(
        {
            "id": survey["source_id"],
            "RA": c.ra.to_string(unit=u.hourangle, sep=":", precision=5),
            "Dec": c.dec.to_string(unit=u.deg, sep=":", precision=4, alwayssign=True),
        }
    )
    t.write(tmp_path / "sexa.csv")
    schema = ingest_catalog(tmp_path / "sexa.csv", tmp_path / "s.duckdb", "ext.sexa")
    assert schema.by_name["RA"].datatype == "double"
    assert schema.by_name["RA"].description == "Right ascension (converted to degrees from text)"
    rows = dict(query(tmp_path / "s.duckdb", 'SELECT id, "RA" FROM romerea_data.ext.sexa'))
    got = np.array([rows[i] for i in survey["source_id"]])
    assert np.abs(got - c.ra.deg).max() * 3600 < 1e-3


# --- the service ---------------------------------------------------------------------


def test_tap_schema_and_vosi_describe_the_catalogue(both_server):
    service = tap(both_server)
    cols = service.search(
        "SELECT column_name, datatype, unit, ucd, principal, indexed, description "
        "FROM TAP_SCHEMA.columns WHERE table_name = 'ext.survey' ORDER BY column_index"
    ).to_table()
    assert list(cols["column_name"]) == ["source_id", "RAJ2000", "DEJ2000", "gmag", '"B-V"',
                                         '"size"', "name", "flag", "nobs"]  # fmt: skip
    row = {name: i for i, name in enumerate(cols["column_name"])}
    assert cols["unit"][row["gmag"]] == "mag" and cols["ucd"][row["gmag"]] == "phot.mag;em.opt.V"
    assert cols["ucd"][row["RAJ2000"]] == "pos.eq.ra;meta.main"
    assert (cols["principal"][row["DEJ2000"]], cols["indexed"][row["DEJ2000"]]) == (1, 1)
    assert cols["description"][row['"size"']] == "Number of components"
    tables = service.search("SELECT table_name, description FROM TAP_SCHEMA.tables").to_table()
    described = dict(zip(tables["table_name"], tables["description"], strict=True))
    assert described["ext.survey"] == "A synthetic external survey"
    assert "rome.stars" in described
    vosi = service.tables["ext.survey"]
    by_name = {c.name: c for c in vosi.columns}
    assert by_name["gmag"].unit == "mag" and by_name["gmag"].ucd == "phot.mag;em.opt.V"
    assert by_name['"B-V"'].ucd == "phot.color;em.opt.B;em.opt.V"
    assert "indexed" in by_name["RAJ2000"].flags


def test_cone_search_equals_astropy(both_server, survey):
    c = SkyCoord(survey["RAJ2000"], survey["DEJ2000"], unit=u.deg)
    centre = SkyCoord(np.median(survey["RAJ2000"]) * u.deg, np.median(survey["DEJ2000"]) * u.deg)
    for radius in (0.02, 0.06):
        got = tap(both_server).search(
            "SELECT source_id FROM ext.survey WHERE 1 = CONTAINS(POINT('ICRS', RAJ2000, DEJ2000), "
            f"CIRCLE('ICRS', {float(centre.ra.deg)!r}, {float(centre.dec.deg)!r}, {radius}))"
        )
        want = set(survey["source_id"][c.separation(centre).deg < radius].tolist())
        assert want and ids_of(got) == want


def test_join_with_rome_stars_equals_search_around_sky(both_server, survey):
    service = tap(both_server)
    stars = service.search("SELECT field, field_id, ra, dec FROM rome.stars").to_table()
    got = service.search(
        "SELECT s.field, s.field_id, e.source_id FROM rome.stars AS s JOIN ext.survey AS e "
        "ON 1 = CONTAINS(POINT('ICRS', e.RAJ2000, e.DEJ2000), CIRCLE('ICRS', s.ra, s.dec, "
        "1.0/3600))"
    ).to_table()
    i, j, _, _ = search_around_sky(
        SkyCoord(stars["ra"], stars["dec"], unit=u.deg),
        SkyCoord(survey["RAJ2000"], survey["DEJ2000"], unit=u.deg),
        1 * u.arcsec,
    )
    want = {
        (str(stars["field"][a]), int(stars["field_id"][a]), int(survey["source_id"][b]))
        for a, b in zip(i, j, strict=True)
    }
    pairs = {(str(f), int(k), int(s)) for f, k, s in got.iterrows()}
    assert len(want) >= N_NEAR and pairs == want


def test_result_fields_and_delimited_names(both_server, survey):
    result = tap(both_server).search(
        'SELECT source_id, gmag, "B-V", "size", flag, nobs FROM ext.survey WHERE "size" >= 4'
    )
    gmag = result.votable.get_field_by_id_or_name("gmag")
    assert (str(gmag.unit), gmag.ucd) == ("mag", "phot.mag;em.opt.V")
    assert result.votable.get_field_by_id_or_name("B-V").ucd == "phot.color;em.opt.B;em.opt.V"
    assert ids_of(result) == set(survey["source_id"][survey["size"] >= 4].tolist())
    table = result.to_table()
    assert table["flag"].dtype == bool
    with pytest.raises(pyvo.dal.DALQueryError, match="reserved word"):
        tap(both_server).search("SELECT size FROM ext.survey")


@pytest.mark.skipif(STILTS is None, reason="stilts is not installed (apt-get install stilts)")
def test_taplint_zero_errors_with_rome_and_catalogue(both_server):
    out = subprocess.run(
        [STILTS, "taplint", f"tapurl={both_server}/tap", "format=json", "maxrepeat=20"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads(out.stdout)
    assert report["sections"], out.stdout[:2000]
    errors = [
        f"{section['code']}-{r['code']}: {r.get('text', '')}"
        for section in report["sections"]
        for r in section["reports"]
        if r.get("level") in ("ERROR", "FAILURE", "E", "F")
        # ObsLocTAP (ivoa.obsplan) does not apply to a survey catalogue service
        and f"{section['code']}-{r['code']}" != "LOC-NOTP"
    ]
    assert errors == [], "\n".join(errors[:40])


def test_database_with_only_the_catalogue_serves(tmp_path, survey, survey_files, capsys):
    db_path = tmp_path / "only.duckdb"
    code = main(["ingest-catalog", str(survey_files["parquet"]), "--db", str(db_path),
                 "--table", "ext.survey", "--description", "Only this"])  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.startswith(
        f"ext.survey: {len(survey):,} rows, 9 columns from {survey_files['parquet']} "
        "(positions: RAJ2000, DEJ2000)"
    )
    live = serve(db_path, tmp_path / "work")
    try:
        service = tap(live.url)
        names = service.search("SELECT table_name FROM TAP_SCHEMA.tables").to_table()
        assert sorted(names["table_name"])[0] == "TAP_SCHEMA.columns"
        assert [n for n in names["table_name"] if not n.startswith("TAP_SCHEMA")] == ["ext.survey"]
        assert service.search("SELECT COUNT(*) AS n FROM ext.survey").to_table()["n"][0] == len(
            survey
        )
        with pytest.raises(pyvo.dal.DALQueryError, match=r"rome\.stars"):
            service.search("SELECT TOP 1 * FROM rome.stars")
        with pytest.raises(pyvo.dal.DALQueryError, match=r"rome\.photometry"):
            service.search("SELECT TOP 1 * FROM rome.photometry")
        assert httpx.get(live.url + "/scs?RA=0&DEC=0&SR=1", timeout=120).status_code == 404
        caps = httpx.get(live.url + "/tap/capabilities", timeout=120).text
        assert "ConeSearch" not in caps and "DataLink" not in caps
        # the examples document offers a cone on the catalogue, and it runs
        page = httpx.get(live.url + "/tap/examples", timeout=120).text
        queries = [
            html.unescape(q) for q in re.findall(r'property="query">(.*?)</pre>', page, re.S)
        ]
        assert len(queries) == 1 and "ext.survey" in queries[0]
        assert len(service.search(queries[0]).to_table()) > 0
        assert "Only this" in httpx.get(live.url + "/", timeout=120).text
    finally:
        live.stop()


# --- replacing, keeping, atomicity ------------------------------------------------------


def test_reingest_replaces_and_keeps_other_tables(tmp_path, survey):
    db_path = tmp_path / "r.duckdb"
    survey.write(tmp_path / "full.vot", format="votable")
    small = survey[:50]
    small.remove_column("B-V")
    small.write(tmp_path / "small.vot", format="votable")
    ingest_catalog(tmp_path / "full.vot", db_path, "ext.survey")
    ingest_catalog(tmp_path / "full.vot", db_path, "ext.other")
    ingest_catalog(tmp_path / "small.vot", db_path, "ext.survey")
    assert query(db_path, "SELECT COUNT(*) FROM romerea_data.ext.survey") == [(50,)]
    assert query(db_path, "SELECT COUNT(*) FROM romerea_data.ext.other") == [(len(survey),)]
    cols = query(
        db_path,
        "SELECT column_name FROM romerea_data.tap_schema.columns WHERE table_name = 'ext.survey' "
        "ORDER BY column_index",
    )
    assert [c[0] for c in cols] == [c if c != "size" else '"size"' for c in small.colnames]
    assert query(
        db_path, "SELECT table_name FROM romerea_data.romerea.catalog_tables ORDER BY 1"
    ) == [
        ("ext.other",),
        ("ext.survey",),
    ]
    db = Database(db_path)
    assert db.metadata_is_current()
    db.close()


def test_rome_ingest_keeps_the_catalogue_and_staleness_is_detected(
    tmp_path, survey_files, second_field
):
    db_path = tmp_path / "k.duckdb"
    ingest_catalog(survey_files["fits"], db_path, "ext.survey")
    ingest_fields(db_path, [second_field])
    db = Database(db_path)
    assert db.has_rome and list(db.fields) == ["ROME-FIELD-02"]
    names = [t.qualified_name for t in db.tables]
    assert names.index("rome.stars") < names.index("ext.survey") < names.index("TAP_SCHEMA.tables")
    assert db.metadata_is_current()
    db.close()
    assert query(db_path, "SELECT COUNT(*) FROM romerea_data.ext.survey")[0][0] > 0
    assert query(
        db_path,
        "SELECT COUNT(*) FROM romerea_data.tap_schema.columns WHERE table_name = 'ext.survey'",
    ) == [(9,)]
    for table, column in (("ext.survey", "gmag"), ("rome.stars", "ra")):
        stale = tmp_path / f"stale_{column}.duckdb"
        shutil.copy(db_path, stale)
        con = duckdb.connect(str(stale))
        con.execute(
            "UPDATE tap_schema.columns SET description = 'old' "
            "WHERE table_name = ? AND column_name = ?",
            [table, column],
        )
        con.close()
        db = Database(stale)
        assert not db.metadata_is_current(), table
        db.close()


def test_failed_ingest_leaves_the_database_as_it_was(tmp_path, survey, monkeypatch):
    import romerea_vo.store.catalog_ingest as catalog_ingest

    db_path = tmp_path / "a.duckdb"
    survey.write(tmp_path / "full.vot", format="votable")
    survey[:10].write(tmp_path / "small.vot", format="votable")
    ingest_catalog(tmp_path / "full.vot", db_path, "ext.survey")
    before = query(db_path, "SELECT * FROM romerea_data.tap_schema.columns ORDER BY ALL")

    def broken(*args, **kwargs):  # fails after the old table was dropped and the new filled
        raise RuntimeError("disk full")

    monkeypatch.setattr(catalog_ingest, "tap_schema_tables", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_catalog(tmp_path / "small.vot", db_path, "ext.survey")
    with pytest.raises(RuntimeError):
        ingest_catalog(tmp_path / "small.vot", db_path, "ext.new")
    assert query(db_path, "SELECT COUNT(*) FROM romerea_data.ext.survey") == [(len(survey),)]
    assert query(db_path, "SELECT * FROM romerea_data.tap_schema.columns ORDER BY ALL") == before
    db = Database(db_path)
    assert [t.qualified_name for t in db.catalogues] == ["ext.survey"]
    db.close()
    with pytest.raises(RuntimeError):
        ingest_catalog(tmp_path / "small.vot", tmp_path / "new.duckdb", "ext.survey")
    assert not (tmp_path / "new.duckdb").exists()
    assert not (tmp_path / "new.duckdb.wal").exists()


# --- bad input ------------------------------------------------------------------------


def test_rows_without_position_are_ingested_and_reported(tmp_path):
    text = "id,ra,dec\n1,267.8,-30.0\n2,n/a,-30.1\n3,267.9,\n4,267.7,95\n5,10,-29.9\n"
    path = tmp_path / "holes.csv"
    path.write_text(text)
    notes = []
    ingest_catalog(path, tmp_path / "h.duckdb", "ext.holes", report=notes.append)
    assert notes == [
        "3 of 5 rows have no usable position in ra/dec (NULL, non-numeric or out of range): "
        "rows 1, 2, 3 (0-based, in file order); they are stored with NULL ra/dec, so no "
        "positional query finds them"
    ]
    rows = query(tmp_path / "h.duckdb", "SELECT id, ra, dec FROM romerea_data.ext.holes")
    assert rows[:2] == [(1, 267.8, -30.0), (5, 10.0, -29.9)]
    assert sorted(r[0] for r in rows[2:]) == [2, 3, 4] and all(r[1] is None for r in rows[2:])
    assert query(
        tmp_path / "h.duckdb",
        "SELECT n_rows, n_without_position FROM romerea_data.romerea.catalog_tables",
    ) == [(5, 3)]
    path.write_text("id,ra,dec\n1,x,y\n2,,\n")
    with pytest.raises(CatalogueError, match=r"none of the 2 rows .* has a usable position"):
        ingest_catalog(path, tmp_path / "none.duckdb", "ext.none")
    assert not (tmp_path / "none.duckdb").exists()


def test_bad_catalogues_are_refused(tmp_path):
    cases = {
        "nocoords": (
            Table({"name": ["a"], "mag": [1.0]}),
            r"no RA and no Dec column found .*its columns: name, mag",
        ),
        "array": (
            Table({"ra": [1.0, 2.0], "dec": [3.0, 4.0], "spec": np.ones((2, 3))}),
            r"cannot publish these columns .*: spec holds an array of shape \(3,\) per row",
        ),
        "case": (
            Table({"ra": [1.0], "dec": [2.0], "Mag": [1.0], "mag": [2.0]}),
            "cannot publish these column names: 'Mag' and 'mag' \\(differ only in case\\)",
        ),
        "rowid": (
            Table({"ra": [1.0], "dec": [2.0], "ROWID": [1]}),
            "'ROWID' \\(DuckDB's row identifier",
        ),
        "empty": (Table({"ra": [1.0], "dec": [2.0]})[:0], "holds a table without rows"),
        "unit": (
            Table({"ra": [1.0] * u.mag, "dec": [2.0]}),
            "column ra has unit mag, not an angle",
        ),
    }
    for what, (table, message) in cases.items():
        path = tmp_path / f"{what}.vot"
        table.write(path, format="votable")
        before = digest(path)
        with pytest.raises(CatalogueError, match=message):
            ingest_catalog(path, tmp_path / f"{what}.duckdb", "ext.bad")
        assert not (tmp_path / f"{what}.duckdb").exists(), what
        assert digest(path) == before
    good = tmp_path / "good.vot"
    Table({"ra": [1.0], "dec": [2.0]}).write(good, format="votable")
    with pytest.raises(CatalogueError, match="no column 'RAdeg' for RA"):
        ingest_catalog(good, tmp_path / "x.duckdb", "ext.x", ra_col="RAdeg")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("survey", "must be SCHEMA.NAME"),
        ("a.b.c", "must be SCHEMA.NAME"),
        ("ext.", "must be SCHEMA.NAME"),
        ("rome.gaia", "schema 'rome' is reserved by the service"),
        ("TAP_SCHEMA.gaia", "schema 'TAP_SCHEMA' is reserved"),
        ("tap_upload.gaia", "reserved"),
        ("ivoa.obscore", "reserved"),
        ("romerea.gaia", "reserved"),
        ("ext.select", "'select' is an ADQL reserved word"),
        ("ext.2mass", "'2mass' is not an ADQL regular identifier"),
        ('ext."odd name"', "not an ADQL regular identifier"),
    ],
)
def test_table_names(tmp_path, survey_files, name, message):
    with pytest.raises(InvalidRequestError, match=message):
        ingest_catalog(survey_files["csv"], tmp_path / "n.duckdb", name)
    assert not (tmp_path / "n.duckdb").exists()


def test_other_databases_are_refused(tmp_path, survey_files):
    plain = tmp_path / "plain.duckdb"
    con = duckdb.connect(str(plain))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    before = digest(plain)
    with pytest.raises(RomeReaError, match="is a DuckDB database but not a romerea-vo one"):
        ingest_catalog(survey_files["csv"], plain, "ext.survey")
    assert digest(plain) == before
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    with pytest.raises(RomeReaError, match=r"cannot open .*notes\.txt"):
        ingest_catalog(survey_files["csv"], text, "ext.survey")
    assert text.read_text() == "not a database\n" * 100


def test_cli_errors(tmp_path, survey_files, capsys):
    db = str(tmp_path / "c.duckdb")
    assert main(["ingest-catalog", str(survey_files["csv"]), "--db", db, "--table", "rome.x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("romerea-vo: error: schema 'rome' is reserved by the service")
    assert main(["ingest-catalog", str(tmp_path / "no.csv"), "--db", db, "--table", "e.x"]) == 1
    assert capsys.readouterr().err == f"romerea-vo: error: {tmp_path / 'no.csv'}: no such file\n"
    holes = tmp_path / "holes.csv"
    holes.write_text("ra,dec\n1,2\n,3\n")
    assert main(["ingest-catalog", str(holes), "--db", db, "--table", "e.holes"]) == 0
    assert capsys.readouterr().err.startswith(
        "romerea-vo: warning: 1 of 2 rows have no usable position in ra/dec"
    )


def test_maxrec_bounds_a_plain_photometry_select(both_server):
    # what taplint sends to whichever table it picks (rome.photometry in this database)
    url = f"{both_server}/tap/sync"
    for maxrec, rows in (("0", 0), ("7", 7)):
        r = httpx.post(url, data={"LANG": "ADQL", "QUERY": "SELECT field FROM rome.photometry",
                                  "MAXREC": maxrec, "RESPONSEFORMAT": "csv"},
                       timeout=120)  # fmt: skip
        assert r.status_code == 200, r.text[:300]
        assert r.text.splitlines()[1:] == ["ROME-FIELD-01"] * rows
    for query in ("SELECT COUNT(*) FROM rome.photometry", "SELECT DISTINCT filter FROM "
                  "rome.photometry", "SELECT field FROM rome.photometry"):  # fmt: skip
        maxrec = "1000000" if query.endswith("photometry") else "5"
        r = httpx.post(url, data={"LANG": "ADQL", "QUERY": query, "MAXREC": maxrec}, timeout=120)
        assert r.status_code == 400 and "must name its stars" in r.text, query
