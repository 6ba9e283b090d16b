"""Bulk lightcurves: POST /lightcurve with an uploaded table of IDs, field_ids or positions."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from romerea_vo.products import open_field


def post(url: str, table: bytes, name: str = "stars.csv", **params) -> httpx.Response:
    data = {"UPLOAD": "stars,param:stars", **params}
    files = {"stars": (name, table, "application/octet-stream")}
    return httpx.post(f"{url}/lightcurve", data=data, files=files, timeout=120)


def csv_bytes(table: Table) -> bytes:
    out = io.StringIO()
    table.write(out, format="ascii.csv")
    return out.getvalue().encode()


def votable_of(r: httpx.Response) -> Table:
    assert r.status_code == 200, r.text[:500]
    return Table.read(io.BytesIO(r.content), format="votable")


@pytest.fixture(scope="module")
def dids(authority, synthetic_field, second_field):
    """DIDs of every star of the second field and the first 100 of the first."""
    out = [f"{authority}?ROME-FIELD-01/{i}" for i in range(1, 101)]
    with open_field(second_field) as field:
        out += [f"{authority}?ROME-FIELD-02/{int(i)}" for i in field.field_index["field_id"]]
    return out


def test_bulk_equals_single_requests(tap_server, dids):
    r = post(tap_server, csv_bytes(Table({"id": dids})), RESPONSEFORMAT="parquet")
    assert r.status_code == 200, r.text[:500]
    bulk = pq.read_table(io.BytesIO(r.content)).to_pandas()
    assert set(bulk["status"]) <= {"ok", "no points"}
    by_id = dict(tuple(bulk.groupby("id")))
    assert len(by_id) == len(dids)
    for i, did in enumerate(dids):
        single = votable_of(httpx.get(f"{tap_server}/lightcurve", params={"ID": did}))
        rows = by_id[did]
        assert set(rows["upload_row"]) == {i}
        if not len(single):
            assert list(rows["status"]) == ["no points"]
            continue
        for name in ("hjd", "normalized_mag", "normalized_mag_err", "image_index"):
            np.testing.assert_array_equal(rows[name].to_numpy(), np.asarray(single[name]))
        assert list(rows["filter"]) == [str(v) for v in single["filter"]]
    meta = embedded_infos(r.content)
    assert meta["stars"] == str(len(dids)) and meta["rows_failed"] == "0"


def embedded_infos(body: bytes) -> dict[str, str]:
    from astropy.io import votable

    content = pq.ParquetFile(io.BytesIO(body)).metadata.metadata[b"IVOA.VOTable-Parquet.content"]
    vot = votable.parse(io.BytesIO(content))
    return {i.name: i.value for i in vot.resources[0].infos}


def test_unknown_malformed_and_duplicate_ids_get_a_status(tap_server, authority):
    ids = [
        f"{authority}?ROME-FIELD-01/3",
        f"{authority}?ROME-FIELD-01/99999999",
        "not a DID",
        f"{authority}?ROME-FIELD-77/1",
        f"{authority}?ROME-FIELD-01/3",
        f"{authority}?ROME-FIELD-02/4",
    ]
    t = votable_of(post(tap_server, csv_bytes(Table({"id": ids}))))
    status = {int(r): str(s) for r, s in zip(t["upload_row"], t["status"], strict=True)}
    assert status[0] == "ok" and status[5] == "ok"
    assert status[1].startswith("unknown") and status[3].startswith("unknown")
    assert status[2].startswith("malformed")
    assert status[4] == "duplicate of upload row 0"
    failed = t[t["status"] != "ok"]
    assert sorted(int(r) for r in failed["upload_row"]) == [1, 2, 3, 4]
    assert [str(v) for v in failed["id"]] == [ids[i] for i in (1, 2, 3, 4)]


@pytest.mark.parametrize(
    ("fmt", "reader"),
    [("fits", "fits"), ("csv", "ascii.csv"), ("votable/td", "votable"), ("parquet", "parquet")],
)
def test_every_format_holds_points_and_status_rows(tap_server, authority, fmt, reader):
    """Point rows and status rows (NULL point columns) in one table, in every format:
    the FITS writer once failed to join their differently typed columns."""
    ids = [f"{authority}?ROME-FIELD-01/{i}" for i in (7, 2)] + ["not a DID"]
    r = post(tap_server, csv_bytes(Table({"id": ids})), RESPONSEFORMAT=fmt)
    assert r.status_code == 200, r.text[:500]
    t = Table.read(io.BytesIO(r.content), format=reader)
    assert sorted(set(int(v) for v in t["upload_row"])) == [0, 1, 2]
    failed = t[[str(s).startswith("malformed") for s in t["status"]]]
    assert len(failed) == 1 and str(failed["id"][0]) == "not a DID"
    assert set(str(s) for s in t["status"]) - {str(failed["status"][0])} == {"ok"}
    assert np.all(np.isfinite(np.asarray(t["hjd"][t["upload_row"] != 2], float)))


def test_field_ids_and_positions(tap_server, field_positions, authority):
    fp = field_positions[:30]
    by_id = Table({"field": ["ROME-FIELD-01"] * 30, "field_id": fp["field_id"]})
    a = votable_of(post(tap_server, csv_bytes(by_id), COLUMNS="hjd,normalized_mag"))
    positions = pa.table({"ra": np.asarray(fp["ra"], float), "dec": np.asarray(fp["dec"], float)})
    sink = io.BytesIO()
    pq.write_table(positions, sink)
    b = votable_of(post(tap_server, sink.getvalue(), "stars.parquet", COLUMNS="hjd,normalized_mag"))
    assert a.colnames == b.colnames == ["id", "upload_row", "status", "hjd", "normalized_mag"]
    assert list(a["id"]) == list(b["id"]) and len(a) > 0
    np.testing.assert_array_equal(a["hjd"], b["hjd"])
    far = pa.table({"ra": [float(fp["ra"][0]) + 1.0], "dec": [float(fp["dec"][0])]})
    sink = io.BytesIO()
    pq.write_table(far, sink)
    t = votable_of(post(tap_server, sink.getvalue(), "far.parquet"))
    assert list(t["status"]) == ["no star within 1.0 arcsec"]


def test_limits_and_bad_uploads(tap_server, authority):
    many = Table({"id": [f"{authority}?ROME-FIELD-01/{i % 800 + 1}" for i in range(100_001)]})
    r = post(tap_server, csv_bytes(many))
    assert r.status_code == 400 and "at most 100000 stars" in r.text
    r = post(tap_server, csv_bytes(Table({"x": [1, 2]})))
    assert r.status_code == 400 and "id (or did) column" in r.text
    r = post(tap_server, csv_bytes(Table({"id": ["a"]})), ID=f"{authority}?ROME-FIELD-01/1")
    assert r.status_code == 400 and "not both" in r.text
    r = post(tap_server, csv_bytes(Table({"ra": [1.0], "dec": [2.0]})), RADIUS="-1")
    assert r.status_code == 400 and "RADIUS" in r.text


def test_async_job_equals_sync(tap_server, authority):
    pyvo = pytest.importorskip("pyvo")
    ids = Table({"id": [f"{authority}?ROME-FIELD-01/{i}" for i in (4, 2, 9)] + ["bad"]})
    params = {"RESPONSEFORMAT": "parquet", "COLUMNS": "hjd,normalized_mag"}
    sync = post(tap_server, csv_bytes(ids), **params)
    assert sync.status_code == 200
    r = httpx.post(
        f"{tap_server}/lightcurve/async",
        data={"UPLOAD": "stars,param:stars", "PHASE": "RUN", **params},
        files={"stars": ("stars.csv", csv_bytes(ids), "text/csv")},
        follow_redirects=True,
        timeout=60,
    )
    job = pyvo.dal.AsyncTAPJob(r.url)
    job.wait(phases=["COMPLETED", "ERROR", "ABORTED"], timeout=120)
    assert job.phase == "COMPLETED"
    result = httpx.get(job.result_uri, timeout=60)
    assert result.headers["content-type"] == "application/vnd.apache.parquet"
    async_table = pq.read_table(io.BytesIO(result.content))
    # the failed row's NaN points: pandas compares NaN with NaN as equal, Arrow does not
    assert async_table.to_pandas().equals(pq.read_table(io.BytesIO(sync.content)).to_pandas())
    job.delete()
    r = httpx.post(f"{tap_server}/lightcurve/async", data={"PHASE": "RUN"}, follow_redirects=True)
    job = pyvo.dal.AsyncTAPJob(r.url)
    job.wait(phases=["COMPLETED", "ERROR", "ABORTED"], timeout=120)
    assert job.phase == "ERROR" and "uploaded table" in httpx.get(f"{r.url}/error").text
    job.delete()
