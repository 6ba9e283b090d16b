"""``romerea-vo export-dachs``: the DaCHS resource descriptor and the FITS data files.

The RD is checked against votable_schemas/ and the FITS files against the database row by
row. When GAVO DaCHS, PostgreSQL and pgSphere are installed (Debian ``gavodachs2-server``),
a private PostgreSQL cluster and DaCHS root are made in a temporary directory, DaCHS
validates the RD (``dachs val``) and imports the files (``dachs imp``), and what lands in
PostgreSQL and DaCHS's TAP_SCHEMA is compared with the DuckDB database.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import duckdb
import numpy as np
import pytest
from astropy.table import Table

from romerea_vo.cli import main
from romerea_vo.store.dachs_export import (
    INT_NULLS,
    connect_readonly,
    dachs_column_name,
    export_dachs,
    exported_tables,
    resource_descriptor,
    write_fits_table,
)
from romerea_vo.store.ddl import CATALOG, attach_sql
from romerea_vo.votable.schema import load_table_schema

EXPECTED_TYPES = {  # VOTable datatype -> PostgreSQL type, as DaCHS spells it
    "boolean": "boolean",
    "short": "smallint",
    "int": "integer",
    "long": "bigint",
    "float": "real",
    "double": "double precision",
    "char": "text",
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _connect(db_path: Path, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(attach_sql(str(db_path), read_only=read_only))
    con.execute(f"USE {CATALOG}")
    return con


def _sort_keys(table) -> list[str]:
    """Order, key, then the string columns: TEST1's IMAGES repeats (field, image_index)."""
    strings = tuple(c.name for c in table.columns if c.datatype == "char")
    return list(dict.fromkeys(table.order + table.primary_key + strings))


def _db_rows(db_path: Path, table) -> dict[str, list]:
    """The table's columns from DuckDB, sorted by the table's order and key."""
    con = _connect(db_path)
    try:
        cols = ", ".join(f'"{c}"' for c in table.column_names)
        order = ", ".join(f'"{c}"' for c in _sort_keys(table))
        result = con.execute(f"SELECT {cols} FROM {table.qualified_name} ORDER BY {order}")
        rows = result.fetchall()
    finally:
        con.close()
    return {name: [r[i] for r in rows] for i, name in enumerate(table.column_names)}


@pytest.fixture(scope="module")
def exported(tap_db, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dachs") / "rome-export"
    before = _sha(tap_db)
    export_dachs(tap_db, out, cone_service=True, service_url="http://127.0.0.1:8000")
    assert _sha(tap_db) == before  # the database is only read
    return out


@pytest.fixture(scope="module")
def rd(exported) -> ET.Element:
    return ET.parse(exported / "q.rd").getroot()


def _table_el(rd: ET.Element, name: str) -> ET.Element:
    found = rd.findall(f"table[@id='{name}']")
    assert len(found) == 1, name
    return found[0]


# --- the resource descriptor ------------------------------------------------------------


def test_rd_has_the_stored_rome_tables(rd):
    assert rd.tag == "resource" and rd.get("schema") == "rome" and rd.get("resdir") == "."
    names = [t.get("id") for t in rd.findall("table")]
    assert names == [
        "field_index", "stars", "datasets", "images", "stamps", "dataset_stars",
        "lightcurve_stats", "microlensing_candidates", "obscore",
    ]  # fmt: skip
    # rome.photometry is virtual (read from the cubes per query): not a DaCHS table
    assert "photometry" not in names and not any("tap_schema" in n.lower() for n in names)
    for t in rd.findall("table"):
        assert t.get("onDisk") == "True" and t.get("adql") == "True"
    data = {d.get("id"): d for d in rd.findall("data")}
    assert set(data) == {f"import_{n}" for n in names}
    for name in names:
        d = data[f"import_{name}"]
        assert d.find("sources").text == f"data/{name}.fits"
        assert d.find("fitsTableGrammar").get("nanIsNULL") == "True"
        assert d.find("make").get("table") == name
        assert d.find("make/rowmaker").get("idmaps") == "*"


def test_rd_columns_equal_votable_schemas(rd):
    for table in exported_tables():
        el = _table_el(rd, table.name)
        cols = el.findall("column")
        assert [c.get("name") for c in cols] == [dachs_column_name(n) for n in table.column_names]
        assert el.find("meta[@name='description']").text == table.description
        for c, col in zip(cols, table.columns, strict=True):
            assert c.get("type") == EXPECTED_TYPES[col.datatype], col.name
            assert c.get("unit") == col.unit, col.name
            assert c.get("ucd") == col.ucd, col.name
            assert c.get("description").startswith(col.description), col.name
            assert c.get("verbLevel") == ("1" if col.principal else "25"), col.name
            assert (c.find("property[@name='std']") is not None) == col.std, col.name
            in_key = col.name in table.primary_key
            assert (c.get("required") == "True") == (in_key or col.datatype == "boolean")
            values = c.find("values")
            if col.datatype in INT_NULLS and not in_key:
                assert values.get("nullLiteral") == str(INT_NULLS[col.datatype])
            else:
                assert values is None, col.name


def test_rd_keys_indexes_and_position_mixins(rd):
    for table in exported_tables():
        el = _table_el(rd, table.name)
        primary = el.get("primary")
        assert (primary.split(", ") if primary else []) == list(table.primary_key)
        fks = [(f.get("inTable"), f.get("source"), f.get("dest")) for f in el.findall("foreignKey")]
        assert fks == [
            (fk.target.removeprefix("rome."), ", ".join(fk.columns), None)
            for fk in table.foreign_keys
        ]
        indexed = {i.get("columns") for i in el.findall("index")}
        for col in table.columns:
            if col.indexed and col.name not in ("ra", "dec", *table.primary_key[:1]):
                assert col.name in indexed, (table.name, col.name)
        has_radec = {"ra", "dec"} <= set(table.column_names)
        assert (el.get("mixin") == "//scs#pgs-pos-index") == has_radec, table.name
    assert _table_el(rd, "field_index").get("mixin") == "//scs#pgs-pos-index"
    assert _table_el(rd, "stars").get("mixin") == "//scs#pgs-pos-index"


def test_rd_renames_postgresql_system_columns(rd):
    """PostgreSQL refuses a column called xmin or xmax, even quoted; rome.stamps has both."""
    stamps = _table_el(rd, "stamps")
    names = [c.get("name") for c in stamps.findall("column")]
    assert "xmin" not in names and "xmax" not in names
    assert {"x_min", "x_max", "ymin", "ymax"} <= set(names)
    maps = {m.get("key"): m.get("source") for m in rd.findall("data/make/rowmaker/map")}
    assert maps["x_min"] == "xmin" and maps["x_max"] == "xmax"


def test_rd_null_maps_and_did(rd):
    rowmaker = rd.find("data[@id='import_field_index']/make/rowmaker")
    maps = {m.get("key"): m.get("nullExpr") for m in rowmaker.findall("map")}
    assert maps["gaia_source_id"] == str(-(2**63))
    assert maps["quadrant"] == str(-(2**15))
    assert maps["did"] == "''"
    assert "field" not in maps and "field_id" not in maps  # primary key: never NULL
    did = _table_el(rd, "field_index").find("column[@name='did']")
    assert did.get("ucd") == "meta.ref.ivoid"
    longdoc = rd.find("meta[@name='_longdoc']").text
    assert "did" in longdoc and "http://127.0.0.1:8000" in longdoc


def test_rd_cone_service(rd, tap_db):
    service = rd.find("service[@id='cone']")
    assert service.find("scsCore").get("queriedTable") == "field_index"
    assert service.find("scsCore/FEED").get("source") == "//scs#coreDescs"
    ra = float(service.find("meta[@name='testQuery.ra']").text)
    dec = float(service.find("meta[@name='testQuery.dec']").text)
    con = _connect(tap_db)
    try:  # the test query is centred on a star of the database
        (n,) = con.execute(
            "SELECT count(*) FROM rome.field_index "
            "WHERE abs(ra - ?) < 1e-5 AND abs(dec - ?) < 1e-5",
            [ra, dec],
        ).fetchall()[0]
    finally:
        con.close()
    assert n >= 1


def test_rd_publishes_obscore_rows_to_dachs_obscore(rd):
    obscore = _table_el(rd, "obscore")
    mixins = [m for m in obscore.findall("mixin") if m.text == "//obscore#publishObscoreLike"]
    assert len(mixins) == 1
    mixin = mixins[0]
    # the stored paths are relative to the romerea-vo service: DaCHS gets absolute URLs
    assert mixin.get("access_url") == "'http://127.0.0.1:8000/' || access_url"
    assert mixin.get("preview") == "'http://127.0.0.1:8000/' || preview"
    columns = {c.get("name") for c in obscore.findall("column")}
    for name in ("obs_publisher_did", "s_ra", "s_dec", "t_min", "t_max", "t_xel", "em_min"):
        assert name in columns
    # ObsCore columns the mixin would read but the table lacks are given as NULL
    for name in ("obs_title", "target_class", "em_ucd", "s_pixel_scale"):
        assert name not in columns and mixin.get(name) == "NULL"
    # without the service's URL the access URLs could not be made absolute: not declared
    bare = ET.fromstring(resource_descriptor())
    assert bare.find("table[@id='obscore']/mixin") is None


def test_rd_options_q3c_and_schema():
    root = ET.fromstring(resource_descriptor(schema="romedr1", index="q3c"))
    assert root.get("schema") == "romedr1"
    assert root.find("table[@id='field_index']").get("mixin") == "//scs#q3cindex"
    assert root.find("table[@id='datasets']").get("mixin") is None
    assert root.find("service") is None


# --- the FITS data files ----------------------------------------------------------------


def test_fits_files_hold_exactly_the_database_rows(exported, tap_db):
    checked_big_ids = False
    for table in exported_tables():
        fits_table = Table.read(exported / "data" / f"{table.name}.fits", mask_invalid=False)
        fits_table.sort(_sort_keys(table))  # the export keeps the stored row order
        db = _db_rows(tap_db, table)
        assert fits_table.colnames == table.column_names
        assert len(fits_table) == len(db[table.column_names[0]]), table.name
        for col in table.columns:
            got, want = fits_table[col.name], db[col.name]
            if col.datatype in INT_NULLS:
                null = np.array([v is None for v in want])
                mask = np.asarray(getattr(got, "mask", np.zeros(len(got), bool)))
                assert np.array_equal(mask, null), (table.name, col.name)
                values = np.ma.getdata(got)
                assert values[~null].tolist() == [v for v in want if v is not None]
                if col.name == "gaia_source_id" and (~null).any():
                    assert values.dtype.kind == "i" and values.dtype.itemsize == 8
                    assert values[~null].max() > 2**53
                    checked_big_ids = True
            elif col.datatype in ("float", "double"):
                values = np.asarray(got, dtype=float)
                null = np.array([v is None for v in want])
                assert np.array_equal(np.isnan(values), null), (table.name, col.name)
                assert values[~null].tolist() == [v for v in want if v is not None]
            elif col.datatype == "boolean":
                assert np.asarray(got).tolist() == want, (table.name, col.name)
            else:
                assert [str(v) for v in got] == [v if v is not None else "" for v in want]
            fits_ok = col.unit and "'" not in col.unit  # FITS has no 'electron'
            assert got.unit == (col.astropy_unit if fits_ok else None), (table.name, col.name)
    assert checked_big_ids


def test_fits_file_nulls_present(exported, tap_db):
    """The comparison above is not vacuous: the database has NULL Gaia ids and magnitudes."""
    stars = Table.read(exported / "data" / "stars.fits")
    assert 0 < int(stars["gaia_source_id"].mask.sum()) < len(stars)
    assert np.isnan(np.asarray(stars["cal_g_mag_lsc_doma"], dtype=float)).any()


def test_fits_batches_give_identical_files(tap_db, tmp_path):
    """Streaming in small batches (row counts not dividing the table) changes nothing."""
    table = load_table_schema("stars")
    con = connect_readonly(tap_db)
    try:
        n = write_fits_table(con, table, tmp_path / "one.fits", batch_rows=1_000_000)
        m = write_fits_table(con, table, tmp_path / "many.fits", batch_rows=97)
    finally:
        con.close()
    assert n == m > 97
    assert _sha(tmp_path / "one.fits") == _sha(tmp_path / "many.fits")


# --- the command and bad input ----------------------------------------------------------


def test_cli_export_and_overwrite(tap_db, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export-dachs", "--db", str(tap_db), str(out), "--quiet"]) == 0
    assert "q.rd" in capsys.readouterr().out
    rd_before = (out / "q.rd").read_text()
    (out / "README.operator").write_text("mine")
    # a non-empty OUTDIR is refused, and left as it was
    assert main(["export-dachs", "--db", str(tap_db), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("romerea-vo: error: ") and "--overwrite" in err
    assert (out / "q.rd").read_text() == rd_before
    assert main(["export-dachs", "--db", str(tap_db), str(out), "--overwrite", "--quiet",
                 "--schema", "romecat", "--index", "q3c"]) == 0  # fmt: skip
    root = ET.parse(out / "q.rd").getroot()
    assert root.get("schema") == "romecat"
    assert root.find("table[@id='stars']").get("mixin") == "//scs#q3cindex"
    assert (out / "README.operator").read_text() == "mine"  # other files are left alone
    assert sorted(p.name for p in out.iterdir()) == ["README.operator", "data", "q.rd"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--db", "{tmp}/missing.duckdb", "{tmp}/out"], "no such database"),
        (["--db", "{db}", "{tmp}/out", "--index", "healpix"], "unknown index kind 'healpix'"),
        (["--db", "{db}", "{tmp}/out", "--schema", "rome; drop"], "not a plain SQL identifier"),
        (["--db", "{db}", "{tmp}/out", "--schema", "tap_schema"], "used by DaCHS itself"),
        (["--db", "{db}", "{tmp}/afile"], "is not a directory"),
        (["--db", "postgresql://rome@127.0.0.1/rome", "{tmp}/out"], "reads a DuckDB database"),
    ],
)
def test_cli_bad_input(tap_db, tmp_path, capsys, args, message):
    (tmp_path / "afile").write_text("x")
    argv = [a.format(tmp=tmp_path, db=tap_db) for a in args]
    assert main(["export-dachs", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("romerea-vo: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


def _damaged_copy(tap_db: Path, tmp_path: Path, sql: str) -> Path:
    path = tmp_path / "damaged.duckdb"
    shutil.copy(tap_db, path)
    con = _connect(path, read_only=False)
    try:
        con.execute(sql)
    finally:
        con.close()
    return path


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "UPDATE rome.field_index SET gaia_source_id = -9223372036854775808 WHERE field_id = 1",
            "holds the value -9223372036854775808",
        ),
        ("UPDATE rome.images SET use_ref = NULL WHERE image_index = 1", "NULL values"),
    ],
)
def test_unexportable_data_is_refused_and_outdir_untouched(tap_db, tmp_path, sql, message):
    from romerea_vo.store.dachs_export import DachsExportError

    db = _damaged_copy(tap_db, tmp_path, sql)
    out = tmp_path / "out"
    out.mkdir()
    (out / "q.rd").write_text("previous")
    with pytest.raises(DachsExportError, match=message):
        export_dachs(db, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["q.rd"]  # no staging or partial files
    assert (out / "q.rd").read_text() == "previous"


# --- DaCHS itself -----------------------------------------------------------------------


def _find_pg_bin() -> Path | None:
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        version = Path(initdb).parts[-3]
        if Path(f"/usr/share/postgresql/{version}/extension/pg_sphere.control").exists():
            return Path(initdb).parent
    return None


SYSTEM_PYTHON = "/usr/bin/python3"  # DaCHS (python3-gavo) and psycopg2 live there

_DUMP = """
import json, math, sys
import psycopg2
con = psycopg2.connect(sys.argv[1])
out = {}
for name, cols, order in json.loads(sys.argv[2]):
    cur = con.cursor()
    cur.execute("SELECT %s FROM %s ORDER BY %s" % (cols, name, order))
    out[name] = [list(r) for r in cur.fetchall()]
cur = con.cursor()
cur.execute("SELECT table_name, column_name, unit, ucd, description, principal, indexed, "
            "datatype FROM tap_schema.columns WHERE table_name LIKE 'rome.%'")
out["tap_schema"] = [list(r) for r in cur.fetchall()]
json.dump(out, sys.stdout)
"""


class _DachsSite:
    """A private PostgreSQL cluster (Unix socket only) and DaCHS root in a temporary dir."""

    def __init__(self):
        self.pg_bin = _find_pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="romerea-dachs-"))
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.root, "postgres")
        self.pgdata, self.sock = self.root / "pgdata", self.root
        with socket.socket() as s:  # only names the socket file: TCP stays off
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run_pg("initdb", "-D", str(self.pgdata), "-A", "trust", "-E", "UTF8")
        self._run_pg(
            "pg_ctl", "-D", str(self.pgdata), "-w", "-l", str(self.root / "pg.log"), "-o",
            f"-p {self.port} -k {self.sock} -c listen_addresses=''", "start",
        )  # fmt: skip
        self.gavo = self.root / "gavo"
        self.rc = self.root / "gavo.rc"
        self.rc.write_text(f"[general]\nrootDir: {self.gavo}\n")
        user = "postgres" if self.as_postgres else os.environ.get("USER", "postgres")
        self.dsn = f"host={self.sock} port={self.port} dbname=postgres user={user}"
        self._run_pg("createdb", "-h", str(self.sock), "-p", str(self.port), "gavo")
        self.dachs("init", "-d", self.dsn.replace("dbname=postgres", "dbname=gavo"))

    def _run_pg(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_postgres, str(self.pg_bin / tool), *args],
            check=True, capture_output=True, timeout=120, cwd="/",
        )  # fmt: skip

    def dachs(self, *args: str) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "GAVOSETTINGS": str(self.rc),
            "GAVOCUSTOM": str(self.root / "no-gavorc"),
        }
        return subprocess.run(
            ["dachs", *args], env=env, capture_output=True, text=True, timeout=300,
            cwd=self.gavo if self.gavo.exists() else "/",
        )  # fmt: skip

    def dump(self, queries: list) -> dict:
        dsn = self.dsn.replace("dbname=postgres", "dbname=gavo")
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c", _DUMP, dsn, json.dumps(queries)],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        return json.loads(proc.stdout)

    def close(self) -> None:
        try:
            self._run_pg("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def dachs_site():
    if shutil.which("dachs") is None or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("GAVO DaCHS is not installed (apt-get install gavodachs2-server)")
    if _find_pg_bin() is None:
        pytest.skip("PostgreSQL with pgSphere is not installed")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL")
    site = _DachsSite()
    yield site
    site.close()


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory, synthetic_field, second_field) -> Path:
    """The synthetic fields only: TEST1's IMAGES has per-dataset image indexes, which break
    the (field, image_index) primary key that PostgreSQL enforces."""
    from romerea_vo.store import ingest_fields

    path = tmp_path_factory.mktemp("dachsdb") / "synthetic.duckdb"
    ingest_fields(path, [synthetic_field, second_field])
    return path


# warnings about the content of votable_schemas/ (astropy's older UCD list, VOUnit's
# 'electron'), not about the RD's structure
_SCHEMA_CONTENT_WARNINGS = ("not accepted by astropy", "is not interoperable")


def _val_problems(proc: subprocess.CompletedProcess) -> list[str]:
    lines = (proc.stdout + proc.stderr).splitlines()
    return [
        line
        for line in lines
        if line.strip() and line.strip() != "OK"
        and not any(w in line for w in _SCHEMA_CONTENT_WARNINGS)
    ]  # fmt: skip


def test_dachs_validates_and_imports_the_export(dachs_site, synthetic_db):
    resdir = dachs_site.gavo / "inputs" / "rome"
    export_dachs(synthetic_db, resdir, cone_service=True)
    val = dachs_site.dachs("val", "-v", "rome/q")
    assert val.returncode == 0 and "OK" in val.stdout, val.stdout + val.stderr
    assert _val_problems(val) == []
    imp = dachs_site.dachs("imp", "rome/q")
    assert imp.returncode == 0, imp.stdout + imp.stderr

    tables = exported_tables()
    queries = []
    for t in tables:
        cols = ", ".join(f'"{dachs_column_name(c)}"' for c in t.column_names)
        order = ", ".join(f'"{dachs_column_name(c)}"' for c in _sort_keys(t))
        queries.append((f"rome.{t.name}", cols, order))
    got = dachs_site.dump(queries)
    for t in tables:
        want = _db_rows(synthetic_db, t)
        rows = got[f"rome.{t.name}"]
        assert len(rows) == len(want[t.column_names[0]]), t.name
        for i, name in enumerate(t.column_names):
            assert [r[i] for r in rows] == want[name], (t.name, name)
    stars = load_table_schema("stars")
    gaia = [r[stars.column_names.index("gaia_source_id")] for r in got["rome.stars"]]
    assert None in gaia and max(g for g in gaia if g is not None) > 2**53

    # DaCHS's TAP_SCHEMA now describes the tables as votable_schemas/ does
    published = {(r[0], r[1]): r[2:] for r in dachs_site.dump([])["tap_schema"]}
    for t in tables:
        for col in t.columns:
            unit, ucd, description, principal, indexed, datatype = published[
                (f"rome.{t.name}", dachs_column_name(col.name))
            ]
            assert (unit or None, ucd) == (col.unit, col.ucd), (t.name, col.name)
            assert description.startswith(col.description)
            assert bool(principal) == col.principal, (t.name, col.name)
            assert datatype == col.datatype, (t.name, col.name)
            if col.indexed:
                assert indexed, (t.name, col.name)


def test_dachs_q3c_index(dachs_site, synthetic_db, tmp_path):
    resdir = dachs_site.gavo / "inputs" / "romeq3c"
    export_dachs(synthetic_db, resdir, schema="romeq3c", index="q3c")
    val = dachs_site.dachs("val", "romeq3c/q")
    assert val.returncode == 0 and _val_problems(val) == [], val.stdout + val.stderr
    imp = dachs_site.dachs("imp", "romeq3c/q", "import_field_index")
    assert imp.returncode == 0, imp.stdout + imp.stderr
    assert "q3c" in imp.stdout + imp.stderr
