"""`romerea-vo xmatch`: a catalogue against ROME (database, field directories, a running
service) and ROME against another TAP service, checked against astropy's matchers on the
same positions; failures mid-way (a service that stops, one that stops answering)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord, search_around_sky
from astropy.io import fits
from astropy.io.votable import parse
from astropy.table import MaskedColumn, Table
from astropy.time import Time

from romerea_vo.catalogue_files import read_catalogue
from romerea_vo.cli import build_parser, main
from romerea_vo.errors import RomeReaError
from romerea_vo.xmatch.command import run

from .conftest import LiveServer

FIELDS = ("ROME-FIELD-01", "ROME-FIELD-02")
FORMATS = {"votable": "vot", "fits": "fits", "csv": "csv", "ecsv": "ecsv", "parquet": "parquet"}


def cli(*argv: str) -> tuple[int, str]:
    """``romerea-vo`` run in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def infos(path: Path) -> dict[str, str]:
    vot = parse(str(path))
    return {i.name: i.value for r in vot.resources for i in r.infos}


@pytest.fixture(scope="module")
def rome(tap_db) -> Table:
    """Every star of tap_db: field, field_id, ra, dec."""
    from romerea_vo.store import Database
    from romerea_vo.store.ddl import physical_name
    from romerea_vo.votable.schema import load_table_schema

    db = Database(tap_db)
    try:
        t = (
            db.cursor()
            .sql(
                "SELECT field, field_id, ra, dec FROM "
                f"{physical_name(load_table_schema('field_index'))} ORDER BY field, field_id"
            )
            .to_arrow_table()
        )
    finally:
        db.close()
    return Table({n: t.column(n).to_numpy(zero_copy_only=False) for n in t.column_names})


def star_keys(table: Table, field="field", field_id="field_id") -> list:
    """(field, field_id) per row, None where NULL."""
    f, i = table[field], table[field_id]
    masked = np.ma.getmaskarray(i)
    return [None if m else (str(a), int(b)) for a, b, m in zip(f, i, masked, strict=True)]


@pytest.fixture(scope="module")
def catalogue(rome) -> Table:
    """A user's list: jittered copies of ROME stars (some twice, so that best-unique
    differs from best), random positions, and rows without usable coordinates."""
    rng = np.random.default_rng(42)
    mine = np.flatnonzero(np.isin(rome["field"], FIELDS))
    pick = rng.choice(mine, 260, replace=False)
    twice = pick[:30]
    src = np.r_[pick, twice]
    jitter = rng.uniform(0, 1.3, src.size) * u.arcsec
    moved = SkyCoord(rome["ra"][src], rome["dec"][src], unit="deg").directional_offset_by(
        rng.uniform(0, 360, src.size) * u.deg, jitter
    )
    sel = rome[mine]
    ra = np.r_[moved.ra.deg, rng.uniform(sel["ra"].min(), sel["ra"].max(), 80)]
    dec = np.r_[moved.dec.deg, rng.uniform(sel["dec"].min(), sel["dec"].max(), 80)]
    n = ra.size
    ra_mask = np.zeros(n, bool)
    ra_mask[[7, 100]] = True  # NULL RA
    dec[200] = 95.0  # impossible Dec
    t = Table()
    t["name"] = [f"src{i:04d}" for i in range(n)]
    t["RAJ2000"] = MaskedColumn(ra, mask=ra_mask, unit="deg", description="Right ascension")
    t["DEJ2000"] = MaskedColumn(dec, unit="deg", description="Declination")
    t["gmag"] = MaskedColumn(rng.uniform(14, 20, n), unit="mag", description="G magnitude")
    t["RAJ2000"].meta["ucd"] = "pos.eq.ra;meta.main"
    t["DEJ2000"].meta["ucd"] = "pos.eq.dec;meta.main"
    t["gmag"].meta["ucd"] = "phot.mag;em.opt.V"
    return t


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, catalogue) -> dict[str, Path]:
    """The catalogue in every input format."""
    d = tmp_path_factory.mktemp("xm_inputs")
    paths = {}
    for fmt, ext in FORMATS.items():
        path = d / f"list.{ext}"
        kw = {"ecsv": "ascii.ecsv", "votable": "votable"}.get(fmt)
        catalogue.write(path, overwrite=True, **({"format": kw} if kw else {}))
        paths[fmt] = path
    return paths


def usable(catalogue: Table) -> np.ndarray:
    ra = np.ma.filled(np.ma.asarray(catalogue["RAJ2000"], dtype=float), np.nan)
    dec = np.asarray(catalogue["DEJ2000"], dtype=float)
    return np.isfinite(ra) & (np.abs(dec) <= 90)


def expected(catalogue: Table, rome: Table, radius: float, mode: str, fields=FIELDS):
    """{(input row, (field, field_id)): separation} by astropy, for ``mode``."""
    ok = np.flatnonzero(usable(catalogue))
    c1 = SkyCoord(np.asarray(catalogue["RAJ2000"])[ok], catalogue["DEJ2000"][ok], unit="deg")
    keep = np.flatnonzero(np.isin(rome["field"], fields))
    c2 = SkyCoord(rome["ra"][keep], rome["dec"][keep], unit="deg")
    keys = [(str(rome["field"][k]), int(rome["field_id"][k])) for k in keep]
    r = radius * u.arcsec
    if mode == "all":
        i1, i2, sep, _ = search_around_sky(c1, c2, r)
        return {(ok[a], keys[b]): s for a, b, s in zip(i1, i2, sep.arcsec, strict=True)}
    idx, sep, _ = c1.match_to_catalog_sky(c2)
    out = {(ok[a], keys[b]): s.arcsec for a, (b, s) in enumerate(zip(idx, sep, strict=True))}
    out = {k: s for k, s in out.items() if s <= radius}
    if mode == "best-unique":
        back, _, _ = c2.match_to_catalog_sky(c1)
        pos = {k: j for j, k in enumerate(keys)}
        out = {(a, k): s for (a, k), s in out.items() if ok[back[pos[k]]] == a}
    return out


def result_pairs(table: Table, catalogue: Table) -> dict:
    row_of = {str(n): i for i, n in enumerate(catalogue["name"])}
    stars = star_keys(table)
    sep = np.asarray(table["sep_arcsec"])
    return {
        (row_of[str(n)], k): s
        for n, k, s in zip(table["name"], stars, sep, strict=True)
        if k is not None
    }


def assert_same_pairs(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, s in want.items():
        assert abs(got[key] - s) < 1e-3, key  # 1 mas


# --------------------------------------------------------------------------- local


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_input_format_against_the_database(fmt, inputs, catalogue, rome, tap_db, tmp_path):
    path = inputs[fmt]
    before = sha256(path)
    out = tmp_path / "out.vot"
    code, err = cli("xmatch", path, "--db", tap_db, "--field", ",".join(FIELDS), "-o", out)
    assert code == 0, err
    assert sha256(path) == before  # input files are never modified
    t = read_catalogue(out)
    # best = a left join: every input row, in order, its columns first and unchanged
    assert len(t) == len(catalogue)
    assert t.colnames[:4] == ["name", "RAJ2000", "DEJ2000", "gmag"]
    assert list(t["name"]) == list(catalogue["name"])
    assert np.allclose(t["gmag"], catalogue["gmag"])
    if fmt != "csv":  # CSV carries no metadata
        assert t["gmag"].unit == u.mag
        assert t["gmag"].description == "G magnitude"
    if fmt in ("votable", "ecsv", "parquet"):  # astropy writes no TUCDn into FITS
        assert t["gmag"].meta["ucd"] == "phot.mag;em.opt.V"
    assert_same_pairs(result_pairs(t, catalogue), expected(catalogue, rome, 1.0, "best"))
    # rows without usable coordinates stay, unmatched and flagged
    bad = ~usable(catalogue)
    assert list(np.flatnonzero(np.asarray(t["bad_position"]))) == list(np.flatnonzero(bad))
    assert np.ma.getmaskarray(t["field_id"])[bad].all()
    assert "3 with unusable coordinates (rows 8, 101, 201; 1-based" in err
    # n_within counts every star within the radius; ambiguous = more than one
    n_all = {}
    for a, _ in expected(catalogue, rome, 1.0, "all"):
        n_all[a] = n_all.get(a, 0) + 1
    want_n = [n_all.get(i, 0) for i in range(len(catalogue))]
    assert list(np.ma.filled(t["n_within"], 0)) == want_n
    matched = len({a for a, _ in expected(catalogue, rome, 1.0, "best")})
    ambiguous = sum(1 for v in n_all.values() if v > 1)
    assert (
        f"{len(catalogue)} input rows: {matched} matched, "
        f"{len(catalogue) - matched - 3} unmatched, {ambiguous} ambiguous"
    ) in err
    # ROME columns are described from votable_schemas/
    assert t["rome_ra"].unit == u.deg and t["sep_arcsec"].unit == u.arcsec
    assert t["rome_ra"].meta["ucd"] == "pos.eq.ra"  # the input's RA stays the main one
    assert "field index" in t["field_id"].description


@pytest.mark.parametrize("mode", ["all", "best-unique"])
def test_modes_against_astropy(mode, inputs, catalogue, rome, tap_db, tmp_path):
    out = tmp_path / "out.fits"
    code, err = cli(
        "xmatch", inputs["votable"], "--db", tap_db, "--field", FIELDS[0], "--field", FIELDS[1],
        "--mode", mode, "--radius", "0.9arcsec", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    t = read_catalogue(out)
    want = expected(catalogue, rome, 0.9, mode)
    assert_same_pairs(result_pairs(t, catalogue), want)
    assert len(t) == len(want)
    header = fits.getheader(out, 1)
    assert header["XMSTATUS"] == "COMPLETE" and header["XMMODE"] == mode
    if mode == "best-unique":  # the doubled sources compete for one star: fewer pairs
        assert len(want) < len(expected(catalogue, rome, 0.9, "best"))


def test_field_directories_give_what_the_database_gives(
    inputs, tap_db, synthetic_field, second_field, tmp_path
):
    """FIELD_DIR reads the crossmatch files (and, for --stats, only the matched stars'
    rows of the cubes); the database holds the same stars and statistics."""
    a, b = tmp_path / "dirs.ecsv", tmp_path / "db.ecsv"
    for out, source in (
        (a, [synthetic_field, second_field]),
        (b, ["--db", tap_db, "--field", ",".join(FIELDS)]),
    ):
        code, err = cli("xmatch", inputs["parquet"], *source, "--stats", "-o", out)
        assert code == 0, err
    ta, tb = Table.read(a), Table.read(b)
    assert ta.colnames == tb.colnames
    assert "median_mag_ip" in ta.colnames and "n_good_gp" in ta.colnames
    for name in ta.colnames:
        x, y = ta[name], tb[name]
        assert np.array_equal(np.ma.getmaskarray(x), np.ma.getmaskarray(y)), name
        if x.dtype.kind == "f":
            # NaN: an index undefined for that star (e.g. no window for the excess Abbe)
            assert np.allclose(
                np.ma.filled(x, 0), np.ma.filled(y, 0), rtol=1e-12, equal_nan=True
            ), name
        else:
            assert list(np.ma.filled(x, 0)) == list(np.ma.filled(y, 0)), name
    assert (np.ma.filled(ta["n_good_ip"], 0) > 0).sum() > 100


@pytest.mark.parametrize("mode", ["best", "all"])
def test_postgresql_database_gives_what_duckdb_gives(inputs, tap_db, pg_tap_db, tmp_path, mode):
    """``--db postgresql://...`` (pgSphere backend): byte-identical output, statistics too."""
    a, b = tmp_path / "duck.ecsv", tmp_path / "pg.ecsv"
    for out, db in ((a, tap_db), (b, pg_tap_db)):
        code, err = cli("xmatch", inputs["parquet"], "--db", db, "--mode", mode, "--stats",
                        "-o", out)  # fmt: skip
        assert code == 0, err
    ta, tb = Table.read(a), Table.read(b)
    assert len(ta) > 100 and ta.colnames == tb.colnames
    for name in ta.colnames:
        assert np.array_equal(np.ma.getmaskarray(ta[name]), np.ma.getmaskarray(tb[name])), name
        assert list(np.ma.filled(ta[name], 0)) == list(np.ma.filled(tb[name], 0)), name


def test_statistics_are_the_stars_own(inputs, tap_db, synthetic_field, tmp_path):
    from romerea_vo import lightcurves
    from romerea_vo.products import open_field

    out = tmp_path / "s.vot"
    code, err = cli("xmatch", inputs["ecsv"], "--db", tap_db, "--stats", "-o", out)
    assert code == 0, err
    t = read_catalogue(out)
    row = next(r for r in t if r["field"] == FIELDS[0] and r["n_good_ip"] > 0)
    with open_field(synthetic_field) as field:
        pts = lightcurves.read_points(field, int(row["field_id"]), filters="ip")
        mags = pts.column(lightcurves.mag_column_of(pts.layout, None))
    assert row["n_good_ip"] == len(mags)
    assert row["median_mag_ip"] == pytest.approx(np.median(mags), rel=1e-12)
    assert t["median_mag_ip"].unit == u.mag
    assert "Filter ip" in t["median_mag_ip"].description


@pytest.mark.skipif(shutil.which("stilts") is None, reason="STILTS not installed: no votlint")
def test_votable_output_is_votlint_clean(inputs, tap_db, tmp_path):
    out = tmp_path / "lint.vot"
    code, err = cli("xmatch", inputs["ecsv"], "--db", tap_db, "--stats", "-o", out)
    assert code == 0, err
    lint = subprocess.run(
        ["stilts", "votlint", str(out)], capture_output=True, text=True, timeout=120
    )
    assert lint.returncode == 0, lint.stderr
    assert [x for x in lint.stdout.splitlines() if x.startswith(("ERROR", "WARNING"))] == []


def test_statistics_of_chosen_stars(synthetic_field):
    from romerea_vo import statistics_pass
    from romerea_vo.errors import InvalidRequestError
    from romerea_vo.products import open_field

    with open_field(synthetic_field) as field:
        every = statistics_pass.lightcurve_statistics(field)
        some = statistics_pass.lightcurve_statistics(field, field_ids=[800, 3, 3, 411])
        with pytest.raises(InvalidRequestError, match="no star with field_id 801"):
            statistics_pass.lightcurve_statistics(field, field_ids=[1, 801])
    want = every[np.isin(every["field_id"], [3, 411, 800])]
    assert len(some) == len(want) > 0
    for name in some.colnames:
        a, b = np.asarray(some[name]), np.asarray(want[name])
        if a.dtype.kind == "f":  # vectorised sums over blocks of other sizes: last bits
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, equal_nan=True, err_msg=name)
        else:
            assert np.array_equal(a, b), name


def test_where_selects_rome_stars(inputs, catalogue, rome, tap_db, synthetic_field, tmp_path):
    from romerea_vo.products import open_field

    with open_field(synthetic_field) as field:
        stars = field.stars
        mag = np.asarray(stars["cal_i_mag_lsc_doma"], dtype=float)
        cut = float(np.median(mag[mag > 0]))
        chosen = set(np.asarray(stars["field_id"])[(mag > 0) & (mag < cut)].tolist())
    where = f"cal_i_mag_lsc_doma < {cut!r}"
    results = []
    for source in (["--db", tap_db, "--field", FIELDS[0]], [synthetic_field]):
        out = tmp_path / f"w{len(results)}.vot"
        code, err = cli("xmatch", inputs["votable"], *source, "--where", where, "-o", out)
        assert code == 0, err
        results.append(read_catalogue(out))
    keys = [k for k in star_keys(results[0]) if k is not None]
    assert keys and all(f == FIELDS[0] and i in chosen for f, i in keys)
    assert star_keys(results[0]) == star_keys(results[1])
    sub = rome[(rome["field"] == FIELDS[0]) & np.isin(rome["field_id"], sorted(chosen))]
    want = expected(catalogue, sub, 1.0, "best", fields=(FIELDS[0],))
    assert_same_pairs(result_pairs(results[0], catalogue), want)


def test_proper_motions_move_positions_to_the_rome_epoch(
    rome, tap_db, synthetic_field, tap_server, tmp_path
):
    """Gaia-like positions at 2016.0 of fast-moving stars match only once moved to the
    epoch of the field's reference images."""
    from romerea_vo.products import open_field

    with open_field(synthetic_field) as field:
        images = field.images
        primary = np.asarray(images["dataset_code"]) == field.primary_dataset
        ref = primary & (np.asarray(images["use_ref"]) == 1) & (np.asarray(images["hjd"]) > 0)
        rome_epoch = Time(np.asarray(images["hjd"])[ref].mean(), format="jd").jyear
    assert 2017 < rome_epoch < 2021
    rng = np.random.default_rng(5)
    mine = np.flatnonzero(rome["field"] == FIELDS[0])[:150]
    pmra = rng.uniform(-1500, 1500, mine.size)
    pmdec = rng.uniform(-1500, 1500, mine.size)
    pmra[:10] = pmdec[:10] = 0.0  # no proper motion: stored as NULL below
    dt = 2016.0 - rome_epoch
    gaia = SkyCoord(rome["ra"][mine], rome["dec"][mine], unit="deg").directional_offset_by(
        np.arctan2(pmra, pmdec) * u.rad, np.hypot(pmra, pmdec) * abs(dt) * u.mas
    )
    if dt < 0:  # directional_offset_by moves forward; going back = the opposite direction
        gaia = SkyCoord(rome["ra"][mine], rome["dec"][mine], unit="deg").directional_offset_by(
            (np.arctan2(pmra, pmdec) + np.pi) * u.rad, np.hypot(pmra, pmdec) * abs(dt) * u.mas
        )
    t = Table()
    t["source_id"] = np.arange(mine.size)
    t["ra"], t["dec"] = gaia.ra.deg, gaia.dec.deg
    t["pmra"] = MaskedColumn(pmra, mask=np.arange(mine.size) < 10, unit="mas / yr")
    t["pmdec"] = MaskedColumn(pmdec * u.mas.to(u.deg), mask=np.arange(mine.size) < 10,
                              unit="deg / yr")  # another unit, converted  # fmt: skip
    path = tmp_path / "gaia.vot"
    t.write(path, format="votable")
    common = ["--field", FIELDS[0], "--radius", "0.5arcsec", "--mode", "all"]
    out0 = tmp_path / "still.vot"
    assert cli("xmatch", path, "--db", tap_db, *common, "-o", out0)[0] == 0
    still = read_catalogue(out0)
    assert len(still) < 20  # only the ten without motion (and chance neighbours)
    outs = []
    for source in (["--db", tap_db], ["--service", f"{tap_server}/tap", "--chunk-rows", "40"]):
        out = tmp_path / f"moved{len(outs)}.vot"
        code, err = cli("xmatch", path, *source, *common, "--epoch", "2016.0",
                        "--pm-cols", "pmra,pmdec", "-o", out)  # fmt: skip
        assert code == 0, err
        assert f"to {FIELDS[0]} {rome_epoch:.3f}" in err
        assert "10 rows without proper motion kept as given" in err
        moved = read_catalogue(out)
        own = [(FIELDS[0], int(rome["field_id"][m])) for m in mine]
        got = dict(zip(np.asarray(moved["source_id"]).tolist(), star_keys(moved), strict=True))
        assert all(got.get(i) == own[i] for i in range(mine.size))
        assert np.max(moved["sep_arcsec"]) < 1e-3
        assert infos(out)["xmatch_rome_epochs"] == f"{FIELDS[0]}={rome_epoch:.3f}"
        outs.append(moved)
    assert star_keys(outs[0]) == star_keys(outs[1])


# --------------------------------------------------------------------------- service


@pytest.mark.parametrize("mode", ["best", "all", "best-unique"])
def test_service_gives_the_local_result(mode, inputs, tap_db, tap_server, tmp_path):
    """Positions uploaded in several chunks to a running service; pairs selected here.
    Mode all runs the chunks as async (UWS) jobs."""
    remote = ["--service", f"{tap_server}/tap", "--chunk-rows", "64"]
    remote += ["--async"] if mode == "all" else []
    outs = []
    for source in (["--db", tap_db], remote):
        out = tmp_path / f"{len(outs)}.vot"
        code, err = cli("xmatch", inputs["csv"], *source, "--mode", mode, "--stats", "-o", out)
        assert code == 0, err
        outs.append(read_catalogue(out))
    a, b = outs
    assert a.colnames == b.colnames and len(a) == len(b) > 0
    for name in a.colnames:
        x, y = a[name], b[name]
        assert np.array_equal(np.ma.getmaskarray(x), np.ma.getmaskarray(y)), name
        if x.dtype.kind == "f":
            assert np.allclose(np.ma.filled(x, 0), np.ma.filled(y, 0), rtol=0, atol=1e-9), name
        else:
            assert list(np.ma.filled(x, 0)) == list(np.ma.filled(y, 0)), name


# --------------------------------------------------------------------------- bad input


def test_bad_input(inputs, tap_db, tap_server, tmp_path):
    src = inputs["votable"]
    db = ["--db", str(tap_db)]
    nocoords = tmp_path / "nocoords.csv"
    Table({"alpha_x": [1.0], "b": [2.0]}).write(nocoords)
    exists = tmp_path / "exists.vot"
    exists.write_text("keep me")
    cases = [
        ((nocoords, *db), "no RA and no Dec column found", "alpha_x, b"),
        ((src, *db, "--radius", "0"), "--radius must be positive"),
        ((src, *db, "--radius=-1arcsec"), "--radius must be positive"),
        ((src, *db, "--radius", "2deg"), "larger than 1 degree"),
        ((src, *db, "--radius", "far"), "is not an angle"),
        ((src, *db, "--radius", "3kg"), "is not an angle"),
        ((src, *db, "--mode", "nearest"), "unknown --mode 'nearest'", "best-unique"),
        ((tmp_path / "missing.vot", *db), "missing.vot: no such file"),
        ((src, *db, "-o", exists), "exists; give --overwrite"),
        ((src, *db, "--service", tap_server), "exactly one ROME source", "--db and --service"),
        ((src,), "exactly one ROME source"),
        ((src, *db, "--epoch", "2016"), "--epoch and --pm-cols go together"),
        ((src, *db, "--pm-cols", "a,b"), "--epoch and --pm-cols go together"),
        ((src, *db, "--epoch", "2016", "--pm-cols", "pmra"), "needs two column names"),
        ((src, *db, "--epoch", "2016", "--pm-cols", "pmra,pmdec"), "no proper-motion column"),
        ((src, *db, "--field", "ROME-FIELD-99"), "no field ROME-FIELD-99", "ROME-FIELD-01"),
        ((src, *db, "--where", "nosuchcolumn > 1"), "--where", "nosuchcolumn"),
        ((src, *db, "-o", src, "--overwrite"), "is the input file"),
        ((src, *db, "-o", tmp_path / "out.txt"), "cannot tell the output format"),
        ((src, *db, "--format", "xls"), "unknown output format 'xls'"),
        ((src, "--db", tmp_path / "none.duckdb"), "no such database"),
    ]
    for argv, *fragments in cases:
        code, err = cli("xmatch", *argv)
        assert code == 1, (argv, err)
        assert err.startswith("romerea-vo: error: "), err
        assert "Traceback" not in err
        for fragment in fragments:
            assert fragment in err, (argv, err)
    assert exists.read_text() == "keep me"
    code, err = cli("xmatch", src, *db, "-o", exists, "--overwrite")
    assert code == 0, err
    assert len(read_catalogue(exists)) > 0


def test_column_name_clashes_and_unreachable_service(tap_db, tmp_path):
    path = tmp_path / "clash.ecsv"
    Table({"field": ["a"], "ra": [268.0], "dec": [-29.5], "sep_arcsec": [1.0]}).write(path)
    out = tmp_path / "clash.vot"
    code, err = cli("xmatch", path, "--db", tap_db, "-o", out)
    assert code == 0, err
    assert read_catalogue(out).colnames[:8] == [
        "field", "ra", "dec", "sep_arcsec", "rome_field", "field_id", "did", "rome_ra",
    ]  # fmt: skip
    assert "xm_sep_arcsec" in read_catalogue(out).colnames
    # nothing obtained: an error, and no partial file either
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    code, err = cli("xmatch", path, "--service", f"http://127.0.0.1:{port}/tap", "-o", out,
                    "--overwrite")  # fmt: skip
    assert code == 1
    assert "chunk 1 of 1 failed (chunk 1: cannot connect" in err and "nothing written" in err
    assert not (tmp_path / "clash.partial.vot").exists()


def test_the_installed_command_reports_errors_and_writes_stdout(inputs, tap_db):
    def run_cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "romerea_vo.cli", "xmatch", *map(str, args)],
            capture_output=True, timeout=120,
        )  # fmt: skip

    bad = run_cli(inputs["csv"], "--db", tap_db, "--radius", "1.5deg")
    assert bad.returncode == 1
    assert bad.stderr.decode().startswith("romerea-vo: error: --radius '1.5deg' is larger")
    good = run_cli(inputs["csv"], "--db", tap_db, "--format", "csv", "--mode", "all")
    assert good.returncode == 0, good.stderr
    lines = good.stdout.decode().splitlines()
    assert lines[0].startswith("name,RAJ2000,DEJ2000,gmag,field,field_id,did,rome_ra")
    assert b"romerea-vo xmatch: " in good.stderr


# --------------------------------------------------------------------------- external TAP


@pytest.fixture(scope="module")
def survey(rome) -> Table:
    """An 'external survey': ~25 % of the ROME stars re-observed (< 0.5 arcsec off), a few
    of them with a second source nearby, and unrelated sources."""
    rng = np.random.default_rng(9)
    n = len(rome)
    seen = rng.choice(n, n // 4, replace=False)
    near = SkyCoord(rome["ra"][seen], rome["dec"][seen], unit="deg").directional_offset_by(
        rng.uniform(0, 360, seen.size) * u.deg, rng.uniform(0, 0.5, seen.size) * u.arcsec
    )
    extra = seen[:40]
    second = SkyCoord(rome["ra"][extra], rome["dec"][extra], unit="deg").directional_offset_by(
        rng.uniform(0, 360, extra.size) * u.deg, rng.uniform(0.3, 0.9, extra.size) * u.arcsec
    )
    k = 300
    ra = np.r_[near.ra.deg, second.ra.deg, rng.uniform(rome["ra"].min(), rome["ra"].max(), k)]
    dec = np.r_[near.dec.deg, second.dec.deg, rng.choice(rome["dec"], k) + 0.0003]
    t = Table()
    t["src_id"] = np.arange(ra.size, dtype=np.int64) + 1000
    t["ra_ext"] = MaskedColumn(ra, unit="deg", description="RA of the survey")
    t["dec_ext"] = MaskedColumn(dec, unit="deg", description="Dec of the survey")
    t["vmag"] = MaskedColumn(rng.uniform(12, 21, ra.size), unit="mag", description="V mag")
    t["ra_ext"].meta["ucd"] = "pos.eq.ra;meta.main"
    t["dec_ext"].meta["ucd"] = "pos.eq.dec;meta.main"
    t["vmag"].meta["ucd"] = "phot.mag;em.opt.V"
    return t


@pytest.fixture(scope="module")
def survey_db(tmp_path_factory, survey) -> Path:
    d = tmp_path_factory.mktemp("survey")
    src = d / "survey.vot"
    survey.write(src, format="votable")
    db = d / "survey.duckdb"
    code, err = cli("ingest-catalog", src, "--db", db, "--table", "ext.survey")
    assert code == 0, err
    return db


def first_chunk(tap_db: Path, rome: Table, rows: int) -> Table:
    """The ``rome`` rows of the stars the first chunk of ``rows`` sends (the order in which
    the command reads the stars)."""
    from romerea_vo.xmatch.local import DatabaseRome

    with DatabaseRome(tap_db) as src:
        stars = src.stars()
    sent = set(zip(stars.field[:rows].tolist(), stars.field_id[:rows].tolist(), strict=True))
    keys = zip(rome["field"].tolist(), rome["field_id"].tolist(), strict=True)
    return rome[np.array([k in sent for k in keys])]


def survey_server(db: Path, work: Path, wrap=None) -> LiveServer:
    from romerea_vo.service.app import ServiceConfig, create_app

    app = create_app(ServiceConfig(db_path=db, work_dir=work))
    return LiveServer(wrap(app) if wrap else app)


@pytest.fixture(scope="module")
def survey_tap(survey_db, tmp_path_factory):
    live = survey_server(survey_db, tmp_path_factory.mktemp("survey_work"))
    yield f"{live.url}/tap"
    live.stop()


def expected_external(rome: Table, survey: Table, radius: float, mode: str) -> dict:
    """{((field, field_id), src_id): separation} by astropy."""
    c1 = SkyCoord(rome["ra"], rome["dec"], unit="deg")
    c2 = SkyCoord(survey["ra_ext"], survey["dec_ext"], unit="deg")
    keys = [(str(f), int(i)) for f, i in zip(rome["field"], rome["field_id"], strict=True)]
    ids = [int(i) for i in survey["src_id"]]
    if mode == "all":
        i1, i2, sep, _ = search_around_sky(c1, c2, radius * u.arcsec)
        return {(keys[a], ids[b]): s for a, b, s in zip(i1, i2, sep.arcsec, strict=True)}
    idx, sep, _ = c1.match_to_catalog_sky(c2)
    out = {(keys[a], ids[b]): s.arcsec for a, (b, s) in enumerate(zip(idx, sep, strict=True))
           if s.arcsec <= radius}  # fmt: skip
    if mode == "best-unique":
        back, _, _ = c2.match_to_catalog_sky(c1)
        pos = {i: j for j, i in enumerate(ids)}
        out = {(k, i): s for (k, i), s in out.items() if keys[back[pos[i]]] == k}
    return out


def external_pairs(table: Table) -> dict:
    return {
        (k, int(i)): float(s)
        for k, i, s in zip(star_keys(table), table["src_id"], table["sep_arcsec"], strict=True)
    }


@pytest.mark.parametrize("mode", ["best", "all", "best-unique"])
def test_external_tap_against_astropy(mode, rome, survey, tap_db, survey_tap, tmp_path):
    out = tmp_path / "ext.vot"
    code, err = cli(
        "xmatch", "--db", tap_db, "--external-tap", survey_tap, "--external-table", "ext.survey",
        "--radius", "1arcsec", "--mode", mode, "--chunk-rows", "500", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert f"{len(rome)} ROME stars sent" in err
    t = read_catalogue(out)
    want = expected_external(rome, survey, 1.0, mode)
    got = external_pairs(t)
    assert len(t) == len(want)
    assert_same_pairs(got, want)
    if mode == "all":
        assert len(want) > len(expected_external(rome, survey, 1.0, "best"))
    # ROME identity, then the remote columns with their metadata, then the separation
    assert t.colnames[:5] == ["field", "field_id", "did", "rome_ra", "rome_dec"]
    assert t.colnames[-1] == "sep_arcsec"
    assert t["vmag"].unit == u.mag and t["vmag"].description == "V mag"
    assert t["rome_ra"].meta["ucd"] == "pos.eq.ra;meta.main"
    assert t["ra_ext"].meta["ucd"] == "pos.eq.ra"
    by_id = {int(i): float(v) for i, v in zip(survey["src_id"], survey["vmag"], strict=True)}
    assert all(by_id[int(i)] == pytest.approx(float(v)) for i, v in zip(t["src_id"], t["vmag"],
                                                                         strict=True))  # fmt: skip
    assert infos(out)["xmatch_status"] == "COMPLETE"


def test_external_columns_and_selection(rome, survey, tap_db, survey_tap, tmp_path):
    out = tmp_path / "sel.ecsv"
    code, err = cli(
        "xmatch", "--db", tap_db, "--field", FIELDS[1], "--external-tap", survey_tap,
        "--external-table", "EXT.SURVEY", "--external-cols", "src_id,vmag",
        "--external-ra-col", "ra_ext", "--external-dec-col", "dec_ext", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    t = Table.read(out)
    assert t.colnames == ["field", "field_id", "did", "rome_ra", "rome_dec", "src_id", "vmag",
                          "sep_arcsec"]  # fmt: skip
    sub = rome[rome["field"] == FIELDS[1]]
    assert_same_pairs(external_pairs(t), expected_external(sub, survey, 1.0, "best"))
    assert t.meta["xmatch_external"].endswith("table EXT.SURVEY")
    for argv, fragment in (
        (["--external-table", "ext.nothing"], "has no table 'ext.nothing'"),
        (["--external-table", "ext.survey", "--external-cols", "nope"], "has no column 'nope'"),
        (["--external-table", "ext.survey", "--external-ra-col", "vmagx"], "no column 'vmagx'"),
    ):
        code, err = cli("xmatch", "--db", tap_db, "--external-tap", survey_tap, *argv)
        assert code == 1 and fragment in err, err


# Chunks in the partial-result tests: at least 5 with or without the TEST1 fixture field.
CHUNK = 200


def test_external_service_stopping_mid_way(rome, survey, survey_db, tap_db, tmp_path):
    """The remote service stops for real after the first chunk: the chunks after it
    fail, the command fails, and only a partial file, marked so, is written."""
    live = survey_server(survey_db, tmp_path / "work")
    out = tmp_path / "ext.vot"
    args = build_parser().parse_args(
        ["xmatch", "--db", str(tap_db), "--external-tap", f"{live.url}/tap",
         "--external-table", "ext.survey", "--chunk-rows", str(CHUNK), "-o", str(out)]
    )  # fmt: skip
    seen = []

    def after_chunk(k: int, n: int) -> None:
        seen.append(k)
        if k == 1:
            live.stop()

    try:
        with pytest.raises(RomeReaError) as failure:
            run(args, on_chunk=after_chunk, err=io.StringIO())
    finally:
        live.stop()
    n = -(-len(rome) // CHUNK)
    message = str(failure.value)
    assert f"TAP chunk 2 of {n} failed" in message and "connection refused" in message
    assert f"chunk(s) 3-{n} of {n} not attempted" in message
    assert seen == [1, 2]
    assert not out.exists()
    partial = tmp_path / "ext.partial.vot"
    assert str(partial) in message
    status = infos(partial)
    assert status["xmatch_status"] == "INCOMPLETE"
    assert "chunk 2" in status["xmatch_incomplete"]
    t = read_catalogue(partial)
    first = first_chunk(tap_db, rome, CHUNK)
    assert len(first) == CHUNK
    assert_same_pairs(external_pairs(t), expected_external(first, survey, 1.0, "best"))


class Stall:
    """ASGI wrapper: after ``after`` upload queries the real service stops answering
    (until ``release`` is set) - a service that hangs."""

    def __init__(self, app, after: int = 1):
        self.app = app
        self.after = after
        self.uploads = 0
        self.release = threading.Event()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].endswith("/sync"):
            ctype = dict(scope["headers"]).get(b"content-type", b"")
            if ctype.startswith(b"multipart/"):
                self.uploads += 1
                if self.uploads > self.after:
                    while not self.release.is_set():
                        await asyncio.sleep(0.05)
        await self.app(scope, receive, send)


def test_external_service_timing_out(rome, survey, survey_db, tap_db, tmp_path):
    stall = None

    def wrap(app):
        nonlocal stall
        stall = Stall(app)
        return stall

    live = survey_server(survey_db, tmp_path / "work", wrap)
    out = tmp_path / "ext.fits"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "romerea_vo.cli", "xmatch", "--db", str(tap_db),
             "--external-tap", f"{live.url}/tap", "--external-table", "ext.survey",
             "--chunk-rows", str(CHUNK), "--timeout", "1", "-o", str(out)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        stall.release.set()
        live.stop()
    n = -(-len(rome) // CHUNK)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith("romerea-vo: error: TAP chunks 2, 3 of")
    assert "no answer within the timeout" in proc.stderr
    assert f"(ext.survey, {CHUNK} answered)" in proc.stderr
    assert f"chunk(s) 4-{n} of {n} not attempted" in proc.stderr
    assert not out.exists()
    partial = tmp_path / "ext.partial.fits"
    header = fits.getheader(partial, 1)
    assert header["XMSTATUS"] == "INCOMPLETE"
    assert "chunk 2" in header["XMINCOMP"]
    t = read_catalogue(partial)
    first = first_chunk(tap_db, rome, CHUNK)
    assert_same_pairs(external_pairs(t), expected_external(first, survey, 1.0, "best"))
