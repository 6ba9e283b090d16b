"""VOParquet results (RESPONSEFORMAT=parquet) from TAP sync/async, SCS and /lightcurve,
read by astropy (``parquet.votable``), pyarrow and pyvo, against the VOTable result."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import votable
from astropy.table import Table

from romerea_vo.votable.formats import resolve_format, write_result
from romerea_vo.votable.parquet import PARQUET_MEDIA
from romerea_vo.votable.writer import FieldSpec, Info, Param, TimeSys

pyvo = pytest.importorskip("pyvo")
pytest.importorskip("pandas")  # astropy's Parquet reader needs it

PARQUET_NAMES = ["parquet", "application/vnd.apache.parquet"]


def embedded_votable(body: bytes):
    """The VOTable of the IVOA.VOTable-Parquet.content key, parsed by astropy."""
    meta = pq.ParquetFile(io.BytesIO(body)).metadata.metadata
    assert meta[b"IVOA.VOTable-Parquet.version"] == b"1.0"
    return votable.parse(io.BytesIO(meta[b"IVOA.VOTable-Parquet.content"]))


def infos(vot) -> list[tuple[str, str]]:
    res = vot.resources[0]
    return [(i.name, i.value) for i in res.infos]


def read_both(body: bytes) -> tuple[Table, pa.Table]:
    return Table.read(io.BytesIO(body), format="parquet.votable"), pq.read_table(io.BytesIO(body))


def assert_same_values(parquet_table: Table, votable_table: Table) -> None:
    assert parquet_table.colnames == votable_table.colnames
    for name in votable_table.colnames:
        a, b = parquet_table[name], votable_table[name]
        if a.dtype.kind in "fiu" and b.dtype.kind in "fiu":
            expect = np.ma.filled(np.ma.asarray(b).astype(float), np.nan)
            np.testing.assert_array_equal(np.asarray(a, float), expect, err_msg=name)
        else:
            assert [str(x) for x in a] == [str(x) for x in np.ma.filled(b, "")], name
        assert a.unit == b.unit, name
        assert a.meta.get("ucd") == b.meta.get("ucd"), name
        assert a.description == b.description, name


# --- the writer ---


def test_formats_resolve():
    for name in PARQUET_NAMES:
        fmt = resolve_format(name)
        assert fmt.serializer == "parquet" and fmt.media_type == PARQUET_MEDIA


def test_writer_types_nulls_metadata_and_row_groups():
    ts = TimeSys("hjd_utc", "0", "UTC", "HELIOCENTER")
    fields = [
        FieldSpec("hjd", "double", unit="d", ucd="time.epoch", ref="hjd_utc", description="HJD"),
        FieldSpec("name", "char", "*", ucd="meta.id", description="a name"),
        FieldSpec("n", "short", ucd="meta.number"),
        FieldSpec("flag", "boolean"),
        FieldSpec("pos", "double", "2", unit="deg"),
        FieldSpec("poly", "double", "*", unit="deg"),
    ]
    n = 5000
    rng = np.random.default_rng(3)
    hjd = rng.uniform(2459000, 2460000, n)
    data = {
        "hjd": pa.array(hjd, mask=np.arange(n) % 97 == 0),
        "name": pa.array([f"star{i}" if i % 50 else None for i in range(n)]),
        "n": pa.array(np.arange(n) % 300, pa.int64()),
        "flag": pa.array(np.arange(n) % 2 == 0),
        "pos": pa.array([[float(i), -float(i)] for i in range(n)], pa.list_(pa.float64(), 2)),
        "poly": pa.array([[1.0] * (i % 4) for i in range(n)]),
    }
    chunks = list(
        write_result(
            data, fields, "parquet", resource_infos=[Info("QUERY_STATUS", "OK")],
            params=[Param("field", "char", value="F1", ucd="meta.id")], timesys=[ts],
            post_infos=lambda: [Info("QUERY_STATUS", "OVERFLOW")], table_name="t",
        )
    )  # fmt: skip
    body = b"".join(chunks)
    table, arrow = read_both(body)
    assert len(table) == n and arrow.num_rows == n
    assert arrow.schema.field("n").type == pa.int16()  # the FIELD's width
    assert arrow["name"].null_count == 0 and arrow["name"][0].as_py() == ""  # as BINARY/TD
    np.testing.assert_array_equal(np.asarray(table["hjd"])[1:97], hjd[1:97])
    assert np.isnan(table["hjd"][0])
    assert table["hjd"].unit == "d" and table["hjd"].meta["ucd"] == "time.epoch"
    assert table["name"].description == "a name" and table["pos"].shape == (n, 2)
    vot = embedded_votable(body)
    assert infos(vot) == [("QUERY_STATUS", "OK"), ("QUERY_STATUS", "OVERFLOW")]
    tab = vot.get_first_table()
    assert tab.params[0].value == "F1"
    assert tab.fields[0].ref == "hjd_utc"
    timesys = vot.resources[0].time_systems[0]
    assert (timesys.timescale, timesys.refposition) == ("UTC", "HELIOCENTER")


def test_writer_writes_columns_without_nulls_as_required_and_noise_uncompressed():
    """Float NULLs are NaN and text NULLs "" (as VOTable has them), so those columns and
    booleans are required Parquet columns (no definition levels); integers and arrays
    keep their NULLs. A float column snappy cannot shrink (noise) is stored uncompressed,
    one it can (repeated values) compressed."""
    fields = [
        FieldSpec("noise", "double"),
        FieldSpec("steps", "double"),
        FieldSpec("name", "char", "*"),
        FieldSpec("flag", "boolean"),
        FieldSpec("n", "short"),
        FieldSpec("poly", "double", "*"),
    ]
    n = 20000
    noise = np.random.default_rng(5).normal(size=n)
    data = {
        "noise": pa.array(noise, mask=np.arange(n) == 7),
        "steps": pa.array(np.repeat(np.arange(n // 100, dtype=float), 100)),
        "name": pa.array(["a", None] * (n // 2)),
        "flag": pa.array([True, None] * (n // 2)),
        "n": pa.array([1, None] * (n // 2), pa.int64()),
        "poly": pa.array([[1.0], None] * (n // 2)),
    }
    body = b"".join(write_result(data, fields, "parquet"))
    pf = pq.ParquetFile(io.BytesIO(body))
    nullable = {f.name: f.nullable for f in pf.schema_arrow}
    assert nullable == {
        "noise": False, "steps": False, "name": False, "flag": False, "n": True, "poly": True,
    }  # fmt: skip
    physical = {pf.schema.column(i).name: pf.schema.column(i).max_definition_level
                for i in range(len(pf.schema))}  # fmt: skip
    assert physical["noise"] == physical["name"] == 0 and physical["n"] == 1
    arrow = pf.read()
    got = arrow["noise"].to_numpy()
    assert np.isnan(got[7]) and np.array_equal(np.delete(got, 7), np.delete(noise, 7))
    assert arrow["name"].to_pylist()[:2] == ["a", ""] and arrow["n"].null_count == n // 2
    assert arrow["flag"].to_pylist()[:2] == [True, False] and arrow["poly"].null_count == n // 2
    codecs = {pf.metadata.row_group(0).column(i).path_in_schema:
              pf.metadata.row_group(0).column(i).compression for i in range(2)}  # fmt: skip
    assert codecs == {"noise": "UNCOMPRESSED", "steps": "SNAPPY"}
    empty = pq.ParquetFile(io.BytesIO(b"".join(write_result({"noise": pa.array([], pa.float64())},
                                                            fields[:1], "parquet"))))  # fmt: skip
    assert empty.metadata.num_rows == 0 and not empty.schema_arrow.field("noise").nullable


def test_writer_streams_row_groups():
    fields = [FieldSpec("x", "double")]
    batches = (pa.record_batch([pa.array(np.arange(1000.0))], names=["x"]) for _ in range(300))
    chunks = list(write_result(batches, fields, "parquet"))
    assert len(chunks) >= 3  # row groups are sent as they fill, the footer last
    pf = pq.ParquetFile(io.BytesIO(b"".join(chunks)))
    assert pf.metadata.num_rows == 300_000 and pf.num_row_groups >= 2


def test_writer_keeps_text_batches_with_their_own_dictionaries_dictionary_encoded():
    """Each batch of a bulk answer brings its own dictionary (its stars' DIDs). Written
    as they come, Parquet expands every value and stores the strings row by row (920 kB
    for these 20,000 rows); one dictionary per row group keeps the column a few kB."""
    fields = [FieldSpec("id", "char", "*"), FieldSpec("x", "int")]
    expected: list[str] = []

    def batches():
        for b in range(20):
            dids = pa.array([f"ivo://romerea-vo.local/rome?ROME-FIELD-01/{b * 10 + i}"
                             for i in range(10)])  # fmt: skip
            which = np.repeat(np.arange(10, dtype=np.int32), 100)
            expected.extend(dids.to_pylist()[i] for i in which)
            ids = pa.DictionaryArray.from_arrays(pa.array(which), dids)
            yield pa.record_batch([ids, pa.array(np.arange(1000, dtype=np.int32))], ["id", "x"])

    body = b"".join(write_result(batches(), fields, "parquet"))
    meta = pq.ParquetFile(io.BytesIO(body)).metadata
    assert meta.num_row_groups == 1
    assert meta.row_group(0).column(0).total_uncompressed_size < 20_000
    assert pq.read_table(io.BytesIO(body)).column("id").to_pylist() == expected


def test_writer_empty_result():
    body = b"".join(write_result(iter(()), [FieldSpec("s", "char", "*", unit="deg")], "parquet"))
    table, arrow = read_both(body)
    assert len(table) == 0 and arrow.num_rows == 0 and table["s"].unit == "deg"


# --- TAP ---


def sync(url, query, **params):
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, **params}
    return httpx.post(f"{url}/tap/sync", data=data, timeout=60)


QUERY = (
    "SELECT TOP 300 field, field_id, ra, dec, gaia_source_id, n_datasets_ip "
    "FROM rome.field_index ORDER BY field, field_id"
)


@pytest.mark.parametrize("fmt", PARQUET_NAMES)
def test_tap_sync_equals_votable(tap_server, fmt):
    r = sync(tap_server, QUERY, RESPONSEFORMAT=fmt)
    assert r.status_code == 200 and r.headers["content-type"] == PARQUET_MEDIA
    table, arrow = read_both(r.content)
    reference = Table.read(io.BytesIO(sync(tap_server, QUERY).content), format="votable")
    assert_same_values(table, reference)
    assert arrow.num_rows == 300 and arrow.column_names == reference.colnames
    assert ("QUERY_STATUS", "OK") in infos(embedded_votable(r.content))


def test_tap_overflow_empty_and_error(tap_server):
    r = sync(tap_server, QUERY, RESPONSEFORMAT="parquet", MAXREC="7")
    assert r.status_code == 200
    assert len(read_both(r.content)[0]) == 7
    assert infos(embedded_votable(r.content))[-1] == ("QUERY_STATUS", "OVERFLOW")
    r = sync(
        tap_server, "SELECT ra, dec FROM rome.field_index WHERE ra > 400", RESPONSEFORMAT="parquet"
    )
    table, _ = read_both(r.content)
    assert len(table) == 0 and table["ra"].unit == "deg"
    r = sync(tap_server, "SELECT nope FROM rome.field_index", RESPONSEFORMAT="parquet")
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/x-votable+xml")
    assert 'value="ERROR"' in r.text


def test_tap_async_and_capabilities(tap_server):
    service = pyvo.dal.TAPService(f"{tap_server}/tap")
    formats = [f for cap in service.capabilities for f in getattr(cap, "outputformats", [])]
    assert any(f.mime == PARQUET_MEDIA for f in formats)
    r = httpx.post(
        f"{tap_server}/tap/async",
        data={"LANG": "ADQL", "QUERY": QUERY, "RESPONSEFORMAT": "parquet", "PHASE": "RUN"},
        follow_redirects=True,
        timeout=60,
    )
    job = pyvo.dal.AsyncTAPJob(r.url)
    job.wait(phases=["COMPLETED", "ERROR", "ABORTED"], timeout=60)
    assert job.phase == "COMPLETED"
    result = httpx.get(job.result_uri, timeout=60)
    assert result.headers["content-type"] == PARQUET_MEDIA
    table, _ = read_both(result.content)
    assert len(table) == 300 and table["ra"].meta["ucd"] == "pos.eq.ra;meta.main"
    job.delete()


# --- SCS and lightcurves ---


def test_scs_parquet(tap_server, field_positions):
    ra, dec = float(field_positions["ra"][0]), float(field_positions["dec"][0])
    params = {"RA": ra, "DEC": dec, "SR": 0.01}
    r = httpx.get(f"{tap_server}/scs", params={**params, "RESPONSEFORMAT": "parquet"})
    assert r.status_code == 200 and r.headers["content-type"] == PARQUET_MEDIA
    table, _ = read_both(r.content)
    reference = Table.read(io.BytesIO(httpx.get(f"{tap_server}/scs", params=params).content))
    assert len(table) == len(reference) > 0
    assert_same_values(table, reference)


@pytest.fixture(scope="module")
def did(authority):
    return lambda field, field_id: f"{authority}?{field}/{field_id}"


def test_lightcurve_parquet_equals_votable(tap_server, did):
    for ids in ([did("ROME-FIELD-01", 5)], [did("ROME-FIELD-01", 5), did("ROME-FIELD-02", 3)]):
        params = [("ID", i) for i in ids]
        r = httpx.get(f"{tap_server}/lightcurve", params=[*params, ("RESPONSEFORMAT", "parquet")])
        assert r.status_code == 200 and r.headers["content-type"] == PARQUET_MEDIA
        table, _ = read_both(r.content)
        vot = httpx.get(f"{tap_server}/lightcurve", params=params).content
        reference = Table.read(io.BytesIO(vot), format="votable")
        assert len(table) == len(reference) > 0
        assert_same_values(table, reference)
        meta = embedded_votable(r.content)
        hjd = next(f for f in meta.get_first_table().fields if f.name == "hjd")
        timesys = meta.resources[0].time_systems[0]
        assert hjd.ref == timesys.ID and timesys.timescale == "UTC"


def test_lightcurve_unknown_star_is_a_votable_error(tap_server, did):
    r = httpx.get(
        f"{tap_server}/lightcurve",
        params={"ID": did("ROME-FIELD-01", 10**8), "RESPONSEFORMAT": "parquet"},
    )
    assert r.status_code == 404 and 'value="ERROR"' in r.text
