"""The lightcurve service (/lightcurve) end to end on a real server, and `lightcurve --url`."""

from __future__ import annotations

import concurrent.futures
import io
import shutil
import subprocess

import httpx
import numpy as np
import pytest
from astropy.io import fits
from astropy.io.votable import parse, parse_single_table
from astropy.table import Table
from astropy.time import Time

from romerea_vo import cli
from romerea_vo.products import open_field
from romerea_vo.products.layout import QCFlag, quadrant_filename
from romerea_vo.store.database import Database
from romerea_vo.votable.reader import votable_to_table

from .conftest import PYDANDIA_TEST1, LiveServer

STILTS = shutil.which("stilts")
needs_stilts = pytest.mark.skipif(STILTS is None, reason="STILTS not installed")


@pytest.fixture(scope="session")
def tap_server(tap_server_both):
    """Every test here runs against the DuckDB and the PostgreSQL + pgSphere backends."""
    return tap_server_both


@pytest.fixture(scope="module")
def did(authority):
    def make(field: str, field_id: int) -> str:
        return f"{authority}?{field}/{field_id}"

    return make


def get(url: str, **params) -> httpx.Response:
    return httpx.get(f"{url}/lightcurve", params=params, timeout=60)


def error_text(r: httpx.Response) -> str:
    assert 'name="QUERY_STATUS"' in r.text and 'value="ERROR"' in r.text, r.text[:500]
    return r.text


def raw_points(field_dir, field_id: int, bands=None, quality: str = "good"):
    """The star's cube rows under the quality cut, written out independently of the
    service: (rows sorted by hjd then image, their filters, their image indices)."""
    with open_field(field_dir) as field:
        ref = field.star(field_id)
        cube = field.cube(ref.quadrant)
        lay = cube.layout
        block = cube.read_star(ref.row)
        filters = np.asarray(field.images["filter"]).astype(str)
    keep = np.ones(len(block), bool)
    if bands:
        keep &= np.isin(filters, bands)
    hjd = block[:, 0]
    mag, err = block[:, lay.index("normalized_mag")], block[:, lay.index("normalized_mag_err")]
    if quality == "good":
        keep &= (mag > 0) & (err > 0) & (hjd > 0) & (block[:, lay.index("qc_flag")] == 0)
    elif quality == "valid":
        keep &= (mag > 0) & (err > 0) & (hjd > 0)
    else:
        inst, inst_err = block[:, 1], block[:, 2]
        keep &= (hjd > 0) & ~((inst == 0) & (inst_err == 0))
    idx = np.flatnonzero(keep)
    order = np.lexsort((idx, hjd[idx]))
    idx = idx[order]
    return block[idx], filters[idx], idx


def _sorted(table) -> np.ndarray:
    return np.lexsort((np.asarray(table["image_index"]), np.asarray(table["hjd"])))


# --- values ---


@pytest.mark.parametrize("fmt", ["votable", "votable/b", "votable/td"])
def test_values_equal_raw_cube_rows(tap_server, synthetic_field, did, fmt):
    r = get(tap_server, ID=did("ROME-FIELD-01", 5), RESPONSEFORMAT=fmt)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("application/x-votable+xml")
    table = parse_single_table(io.BytesIO(r.content)).to_table()
    rows, filters, idx = raw_points(synthetic_field, 5)
    assert len(table) == len(rows) > 0
    assert np.all(np.diff(np.asarray(table["hjd"])) >= 0)  # sorted by time
    table = table[_sorted(table)]
    np.testing.assert_array_equal(np.asarray(table["image_index"]), idx)
    np.testing.assert_array_equal(np.asarray(table["hjd"]), rows[:, 0])
    np.testing.assert_array_equal(np.asarray(table["normalized_mag"]), rows[:, 7])
    np.testing.assert_array_equal(np.asarray(table["normalized_mag_err"]), rows[:, 8])
    np.testing.assert_array_equal(np.asarray(table["qc_flag"]), 0)
    assert list(np.asarray(table["filter"]).astype(str)) == list(filters)
    assert {"gp", "rp", "ip"} >= set(np.asarray(table["filter"]).astype(str))


@pytest.mark.parametrize("quality", ["good", "valid", "all"])
def test_quality_cut_and_bands(tap_server, synthetic_field, did, quality):
    r = get(tap_server, ID=did("ROME-FIELD-01", 40), QUALITY=quality, BAND="ip,rp")
    table = parse_single_table(io.BytesIO(r.content)).to_table()
    _, filters, idx = raw_points(synthetic_field, 40, bands=["ip", "rp"], quality=quality)
    np.testing.assert_array_equal(np.asarray(table[_sorted(table)]["image_index"]), idx)
    assert set(filters) <= {"ip", "rp"}
    info = {i.name: i for i in parse(io.BytesIO(r.content)).resources[0].infos}
    assert info["quality"].value == quality and info["quality"].content
    assert info["bands"].value == "ip,rp"


def test_hjd_is_time_via_timesys(tap_server, synthetic_field, did):
    r = get(tap_server, ID=did("ROME-FIELD-01", 5))
    vot = parse(io.BytesIO(r.content))
    field = vot.get_first_table().get_field_by_id_or_name("hjd")
    timesys = vot.get_timesys_by_id(field.ref)  # the FIELD refers to the TIMESYS
    assert (timesys.timeorigin, timesys.timescale, timesys.refposition) == (
        0.0,
        "UTC",
        "HELIOCENTER",
    )
    assert field.ucd == "time.epoch" and str(field.unit) == "d"
    # astropy 8 keeps TIMESYS but does not apply it (astropy#8724): votable_to_table does
    table = votable_to_table(r.content)
    assert isinstance(table["hjd"], Time) and table["hjd"].scale == "utc"
    assert table["hjd"].info.meta["refposition"] == "HELIOCENTER"
    rows, _, _ = raw_points(synthetic_field, 5)
    assert np.array_equal(np.sort(table["hjd"].jd), np.sort(rows[:, 0]))  # exact, not approx
    assert table.meta["field_id"] == 5 and table.meta["field"] == "ROME-FIELD-01"


def test_metadata_params_infos_ucds(tap_server, synthetic_field, did):
    r = get(tap_server, ID=did("ROME-FIELD-01", 5))
    vot = parse(io.BytesIO(r.content))
    resource = vot.resources[0]
    assert resource.infos[0].name == "QUERY_STATUS" and resource.infos[0].value == "OK"
    table = vot.get_first_table()
    params = {p.name: p for p in table.params}
    with open_field(synthetic_field) as field:
        ref = field.star(5)
    assert params["field"].value == "ROME-FIELD-01" and params["field_id"].value == 5
    assert params["did"].value == did("ROME-FIELD-01", 5)
    assert params["ra"].value == pytest.approx(ref.ra, abs=0) and str(params["ra"].unit) == "deg"
    assert params["dec"].value == ref.dec
    assert params["gaia_source_id"].value == ref.gaia_source_id
    fields = {f.name: f for f in table.fields}
    assert (
        fields["normalized_mag"].ucd == "phot.mag" and str(fields["normalized_mag"].unit) == "mag"
    )
    assert fields["normalized_mag_err"].ucd == "stat.error;phot.mag"
    for bit in QCFlag:
        assert f"{int(bit)} = {bit.name}" in fields["qc_flag"].description
    assert all(f.description for f in table.fields)
    one = parse(io.BytesIO(get(tap_server, ID=did("ROME-FIELD-01", 5), BAND="ip").content))
    ucds = {f.name: f.ucd for f in one.get_first_table().fields}
    assert ucds["normalized_mag"] == "phot.mag;em.opt.I"
    assert ucds["normalized_mag_err"] == "stat.error;phot.mag;em.opt.I"
    gp = parse(io.BytesIO(get(tap_server, ID=did("ROME-FIELD-01", 5), band="gp").content))
    assert {f.name: f.ucd for f in gp.get_first_table().fields}["calibrated_mag"].endswith(
        "em.opt.B"
    )


def test_columns_and_name_suit_a_time_plot(tap_server, did):
    """TOPCAT's time plot takes the first time column as X and the next numeric one as
    Y; its table list shows the TABLE name: the magnitude comes right after time and
    band, and the name says which star."""
    table = parse(io.BytesIO(get(tap_server, ID=did("ROME-FIELD-01", 5)).content))
    table = table.get_first_table()
    names = [f.name for f in table.fields]
    assert names[:5] == ["hjd", "filter", "normalized_mag", "normalized_mag_err", "qc_flag"]
    assert len(names) == len(set(names)) and {"dataset_code", "image_index"} <= set(names)
    assert table.name == "ROME-FIELD-01 5 lightcurve"
    several = parse(io.BytesIO(get(tap_server, ID=[did("ROME-FIELD-01", 5),
                                                   did("ROME-FIELD-01", 6)]).content))  # fmt: skip
    several = several.get_first_table()
    assert several.name == "ROME lightcurves (2 stars)"
    assert [f.name for f in several.fields][6:9] == ["hjd", "filter", "normalized_mag"]


def test_band_without_data_is_empty_table(tap_server, did):
    # star 1 of the synthetic field is not detected in any gp dataset
    r = get(tap_server, ID=did("ROME-FIELD-01", 1), BAND="gp")
    assert r.status_code == 200
    table = parse_single_table(io.BytesIO(r.content)).to_table()
    assert len(table) == 0
    full = parse_single_table(io.BytesIO(get(tap_server, ID=did("ROME-FIELD-01", 1)).content))
    assert table.colnames == full.to_table().colnames and "normalized_mag" in table.colnames


def test_dataset_selection(tap_server, synthetic_field, did):
    with open_field(synthetic_field) as field:
        code = next(c for c in field.dataset_codes if c.endswith("_ip"))
        images = np.flatnonzero(np.asarray(field.images["dataset_code"]) == code)
    r = get(tap_server, ID=did("ROME-FIELD-01", 40), DATASET=code)
    table = parse_single_table(io.BytesIO(r.content)).to_table()
    assert len(table) and set(np.asarray(table["image_index"])) <= set(images)
    assert set(np.asarray(table["dataset_code"]).astype(str)) == {code}


def test_several_ids_one_table(tap_server, synthetic_field, second_field, did):
    ids = [did("ROME-FIELD-01", 40), did("ROME-FIELD-02", 7), did("ROME-FIELD-01", 5)]
    r = httpx.get(f"{tap_server}/lightcurve", params=[("ID", i) for i in ids], timeout=60)
    assert r.status_code == 200, r.text[:500]
    table = parse_single_table(io.BytesIO(r.content)).to_table()
    assert table.colnames[:6] == ["id", "field", "field_id", "ra", "dec", "gaia_source_id"]
    stars = [(synthetic_field, 40), (second_field, 7), (synthetic_field, 5)]
    got = list(dict.fromkeys(np.asarray(table["id"]).astype(str)))
    expected = [i for i, s in zip(ids, stars, strict=True) if len(raw_points(*s)[0])]
    assert got == expected  # in the order given
    for i, (directory, fid) in zip(ids, stars, strict=True):
        part = table[np.asarray(table["id"]).astype(str) == i]
        rows, _, idx = raw_points(directory, fid)
        assert len(part) == len(rows)
        assert np.all(np.diff(np.asarray(part["hjd"])) >= 0)
        np.testing.assert_array_equal(np.asarray(part[_sorted(part)]["image_index"]), idx)
        assert set(np.asarray(part["field_id"])) <= {fid}


def test_other_formats(tap_server, synthetic_field, did):
    rows, _, _ = raw_points(synthetic_field, 5)
    csv = get(tap_server, ID=did("ROME-FIELD-01", 5), RESPONSEFORMAT="csv")
    assert csv.headers["content-type"].startswith("text/csv")
    table = Table.read(csv.text, format="ascii.csv")
    assert len(table) == len(rows) and table.colnames[0] == "hjd"
    f = get(tap_server, ID=did("ROME-FIELD-01", 5), RESPONSEFORMAT="fits")
    with fits.open(io.BytesIO(f.content)) as hdul:
        assert hdul[1].header["NAXIS2"] == len(rows)
        assert hdul[1].header["TUNIT1"] == "d"
    png = get(tap_server, ID=did("ROME-FIELD-01", 5), RESPONSEFORMAT="png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    empty = get(tap_server, ID=did("ROME-FIELD-01", 1), BAND="gp", RESPONSEFORMAT="image/png")
    assert empty.status_code == 200 and empty.content[:4] == b"\x89PNG"


def test_case_insensitive_params_and_post(tap_server, did):
    a = httpx.get(
        f"{tap_server}/lightcurve?id={did('ROME-FIELD-01', 5)}&band=IP&quality=GOOD", timeout=120
    )
    b = httpx.post(
        f"{tap_server}/lightcurve", data={"ID": did("ROME-FIELD-01", 5), "BAND": "ip"}, timeout=120
    )
    assert a.status_code == b.status_code == 200
    assert len(parse_single_table(io.BytesIO(a.content)).to_table()) == len(
        parse_single_table(io.BytesIO(b.content)).to_table()
    )


@pytest.mark.skipif(
    not (PYDANDIA_TEST1 / "TEST1_field_crossmatch.fits").exists(), reason="no TEST1 fixtures"
)
def test_pydandia_field(tap_server, did):
    with open_field(PYDANDIA_TEST1) as field:
        fid = int(field.field_index["field_id"][0])
    r = get(tap_server, ID=did("TEST1", fid), QUALITY="all")
    assert r.status_code == 200, r.text[:500]
    table = votable_to_table(r.content)
    rows, _, idx = raw_points(PYDANDIA_TEST1, fid, quality="all")
    assert len(table) == len(rows)
    np.testing.assert_array_equal(np.asarray(table[_sorted(table)]["image_index"]), idx)


def test_concurrent_requests_agree(tap_server, did):
    ids = [did("ROME-FIELD-01", i) for i in range(30, 60)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda i: get(tap_server, ID=i).content, ids * 2))
    assert bodies[: len(ids)] == bodies[len(ids) :]


# --- errors ---


@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({}, 400, "missing parameter ID"),
        ({"ID": "78284"}, 400, "malformed ID"),
        ({"ID": "ivo://elsewhere.org/rome?ROME-FIELD-01/1"}, 400, "not a DID of this service"),
        ({"ID": "{auth}?ROME-FIELD-01/abc"}, 400, "malformed ID"),
        ({"ID": "{auth}?NO-SUCH-FIELD/1"}, 404, "unknown field 'NO-SUCH-FIELD'"),
        ({"ID": "{auth}?ROME-FIELD-01/999999"}, 404, "no star with field_id 999999"),
        ({"ID": "{auth}?ROME-FIELD-01/1", "BAND": "zp"}, 400, "not a ROME band"),
        ({"ID": "{auth}?ROME-FIELD-01/1", "QUALITY": "best"}, 400, "QUALITY='best'"),
        ({"ID": "{auth}?ROME-FIELD-01/1", "RESPONSEFORMAT": "json"}, 400, "RESPONSEFORMAT"),
        ({"ID": "{auth}?ROME-FIELD-01/1", "DATASET": "nope"}, 400, "unknown DATASET nope"),
    ],
)
def test_errors(tap_server, authority, params, status, needle):
    params = {k: v.format(auth=authority) for k, v in params.items()}
    r = get(tap_server, **params)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/x-votable+xml")
    assert needle in error_text(r).replace("&apos;", "'")


def test_png_of_several_stars_is_refused(tap_server, did):
    params = [("ID", did("ROME-FIELD-01", 1)), ("ID", did("ROME-FIELD-01", 2))]
    r = httpx.get(
        f"{tap_server}/lightcurve", params=[*params, ("RESPONSEFORMAT", "png")], timeout=120
    )
    assert r.status_code == 400 and "single ID" in error_text(r)


def test_unknown_id_among_several(tap_server, did):
    params = [("ID", did("ROME-FIELD-01", 1)), ("ID", did("ROME-FIELD-01", 99999))]
    r = httpx.get(f"{tap_server}/lightcurve", params=params, timeout=120)
    assert r.status_code == 404 and "99999" in error_text(r)


@needs_stilts
@pytest.mark.parametrize(
    "params",
    [
        {"RESPONSEFORMAT": "votable"},
        {"RESPONSEFORMAT": "votable/b"},
        {"RESPONSEFORMAT": "votable/td"},
        {"RESPONSEFORMAT": "votable/td", "BAND": "gp", "star": 1},  # empty table
        {"RESPONSEFORMAT": "votable/b2", "BAND": "ip"},
        {"RESPONSEFORMAT": "votable/td", "several": True},
        {"RESPONSEFORMAT": "votable", "several": True},
        {"QUALITY": "nonsense"},  # the error document
    ],
)
def test_votlint_clean(tap_server, did, tmp_path, params):
    params = dict(params)
    star = params.pop("star", 5)
    query = [("ID", did("ROME-FIELD-01", star))]
    if params.pop("several", False):
        query += [("ID", did("ROME-FIELD-01", 40)), ("ID", did("ROME-FIELD-02", 7))]
    query += list(params.items())
    r = httpx.get(f"{tap_server}/lightcurve", params=query, timeout=60)
    path = tmp_path / "lc.vot"
    path.write_bytes(r.content)
    out = subprocess.run([STILTS, "votlint", str(path)], capture_output=True, text=True)
    problems = [line for line in out.stdout.splitlines() if line.startswith(("ERROR", "WARNING"))]
    assert problems == [] and out.returncode == 0, out.stdout + out.stderr


# --- a cube missing on disk ---


def test_missing_cube_is_a_clear_error_other_fields_served(tmp_path, synthetic_field, second_field):
    from romerea_vo.service.app import ServiceConfig, create_app
    from romerea_vo.store import ingest_fields

    copy = tmp_path / "ROME-FIELD-01"
    shutil.copytree(synthetic_field, copy)
    db_path = tmp_path / "rome.duckdb"
    list(ingest_fields(db_path, [copy, second_field]))
    with open_field(copy) as field:
        quad = np.asarray(field.field_index["quadrant"])
        fids = np.asarray(field.field_index["field_id"])
        lost, kept = int(fids[quad == 2][0]), int(fids[quad == 3][0])
    (copy / quadrant_filename("ROME-FIELD-01", 2)).unlink()
    live = LiveServer(create_app(ServiceConfig(db_path=db_path, work_dir=tmp_path / "work")))
    try:
        db = Database(db_path)
        auth = db.authority
        db.close()
        r = get(live.url, ID=f"{auth}?ROME-FIELD-01/{lost}")
        assert r.status_code == 500
        text = error_text(r)
        assert "ROME-FIELD-01_quad2_photometry.hdf5" in text and "is missing" in text
        assert str(tmp_path) not in text  # no server paths
        assert get(live.url, ID=f"{auth}?ROME-FIELD-01/{kept}").status_code == 200
        assert get(live.url, ID=f"{auth}?ROME-FIELD-02/3").status_code == 200
        both = [("ID", f"{auth}?ROME-FIELD-02/3"), ("ID", f"{auth}?ROME-FIELD-01/{lost}")]
        assert httpx.get(f"{live.url}/lightcurve", params=both, timeout=120).status_code == 500
        assert get(live.url, ID=f"{auth}?ROME-FIELD-01/{lost}").status_code == 500  # still
    finally:
        live.stop()


# --- romerea-vo lightcurve --url ---


def test_cli_url_field_id(tap_server, synthetic_field, tmp_path, capsys):
    rows, _, _ = raw_points(synthetic_field, 5)
    out = tmp_path / "lc.vot"
    args = ["lightcurve", "--url", tap_server, "--field", "ROME-FIELD-01", "--field-id", "5"]
    assert cli.main([*args, "-o", str(out)]) == 0
    assert f"{len(rows)} good points" in capsys.readouterr().out
    assert len(votable_to_table(out)) == len(rows)
    for suffix in (".csv", ".fits", ".ecsv", ".png"):
        path = tmp_path / f"lc{suffix}"
        assert cli.main([*args, "-o", str(path)]) == 0, capsys.readouterr().err
        if suffix == ".png":
            assert path.read_bytes()[:4] == b"\x89PNG"
        else:
            assert len(Table.read(path)) == len(rows)
    ecsv = Table.read(tmp_path / "lc.ecsv")
    assert isinstance(ecsv["hjd"], Time)  # the time column survives the conversion
    assert cli.main([*args, "--filter", "ip"]) == 0  # printed
    printed = capsys.readouterr().out
    assert "ROME-FIELD-01 field_id 5" in printed and "hjd" in printed


def test_cli_url_position(tap_server, synthetic_field, capsys):
    with open_field(synthetic_field) as field:
        ref = field.star(40)
    args = ["lightcurve", "--url", f"{tap_server}/tap", "--ra", str(ref.ra), "--dec", str(ref.dec)]
    assert cli.main(args) == 0
    assert "ROME-FIELD-01 field_id 40" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--field", "ROME-FIELD-01", "--field-id", "999999"], "no star with field_id 999999"),
        (["--field", "ROME-FIELD-01", "--field-id", "5", "--dataset", "nope"], "unknown DATASET"),
        (["--ra", "10.0", "--dec", "10.0"], "no star within"),
    ],
)
def test_cli_url_errors(tap_server, capsys, extra, needle):
    assert cli.main(["lightcurve", "--url", tap_server, *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("romerea-vo: error: ") and needle in err


def test_cli_url_unreachable(capsys):
    args = ["lightcurve", "--url", "http://127.0.0.1:9", "--field", "X", "--field-id", "1"]
    assert cli.main(args) == 1
    assert "cannot reach" in capsys.readouterr().err
