"""Finding injected microlensing events and variables by ADQL alone, on a served field,
checked against the generator's truth table."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from romerea_vo.lightcurves import read_points
from romerea_vo.products import open_field
from romerea_vo.products.synthetic import SignalRates, synthesize_field
from romerea_vo.variability.pspl import magnification

FIELD = "ROME-FIELD-07"
pyvo = pytest.importorskip("pyvo")


@pytest.fixture(scope="module")
def event_field(tmp_path_factory):
    out = tmp_path_factory.mktemp("events") / FIELD
    rates = SignalRates(microlensing=0.04, periodic=0.02, irregular=0.01)
    synthesize_field(out, field=FIELD, n_stars=1500, n_images=900, seed=21, rates=rates)
    return out


@pytest.fixture(scope="module")
def served(event_field, tmp_path_factory):
    from romerea_vo.service.app import ServiceConfig, create_app
    from romerea_vo.store import ingest_fields
    from tests.conftest import LiveServer

    db = tmp_path_factory.mktemp("eventsdb") / "rome.duckdb"
    ingest_fields(db, [event_field])
    app = create_app(ServiceConfig(db_path=db, work_dir=tmp_path_factory.mktemp("eventswork")))
    live = LiveServer(app)
    yield pyvo.dal.TAPService(f"{live.url}/tap")
    live.stop()


@pytest.fixture(scope="module")
def truth(event_field) -> Table:
    return Table.read(event_field / f"{FIELD}_synthetic_truth.ecsv")


def detectable(event_field, truth) -> set[int]:
    """Events with a peak of >= 0.2 mag and >= 8 good points within t0 +- tE."""
    found = set()
    with open_field(event_field) as field:
        for row in truth[truth["kind"] == "microlensing"]:
            a = magnification(np.array(max(row["u0"], 1e-6)))
            peak = 2.5 * np.log10(row["fs"] * a + 1 - row["fs"])
            t = read_points(field, int(row["field_id"])).hjd
            if peak >= 0.2 and np.sum(np.abs(t - row["t0"]) <= row["tE"]) >= 8:
                found.add(int(row["field_id"]))
    return found


def test_adql_finds_the_injected_events(served, event_field, truth):
    result = served.run_sync(
        "SELECT c.field_id, c.t0, c.te, c.u0, c.peak_mag_ip, f.ra, f.dec "
        "FROM rome.microlensing_candidates AS c JOIN rome.field_index AS f "
        "ON c.field = f.field AND c.field_id = f.field_id "
        f"WHERE c.classification = 'candidate' AND c.field = '{FIELD}' ORDER BY c.score DESC"
    ).to_table()
    kinds = dict(zip(truth["field_id"].tolist(), truth["kind"].tolist(), strict=True))
    found = {int(i) for i in result["field_id"]}
    events = detectable(event_field, truth)
    assert len(events) >= 10
    false = [i for i in found if kinds[i] != "microlensing"]
    assert len(false) <= 1, [(i, kinds[i]) for i in false]
    assert len(found & events) >= 0.8 * len(events), (sorted(events - found), len(events))
    by_id = {int(r["field_id"]): r for r in truth}
    for row in result:
        event = by_id[int(row["field_id"])]
        peak_seen = truth.meta["first_hjd"] < event["t0"] < truth.meta["last_hjd"]
        if event["kind"] == "microlensing" and event["u0"] < 0.5 and peak_seen:
            assert abs(row["t0"] - event["t0"]) < 0.5 * event["tE"]


def test_adql_finds_variables_by_inv_eta_and_iqr(served, truth):
    result = served.run_sync(
        "SELECT field_id, inv_eta, iqr_mag FROM rome.lightcurve_stats "
        f"WHERE field = '{FIELD}' AND filter = 'ip' AND n_good >= 50 "
        "AND inv_eta > 1 AND iqr_mag > 0.02"
    ).to_table()
    kinds = dict(zip(truth["field_id"].tolist(), truth["kind"].tolist(), strict=True))
    picked = [kinds[int(i)] for i in result["field_id"]]
    assert len(picked) >= 10
    assert np.mean([k != "constant" for k in picked]) >= 0.9
    irregular = {int(i) for i in truth["field_id"][truth["kind"] == "irregular"]}
    assert len(irregular & {int(i) for i in result["field_id"]}) >= 0.5 * len(irregular)


def test_the_tap_examples_for_candidates_and_variables_run(served, truth):
    from romerea_vo.service.examples import ExampleStar, rome_examples

    star = ExampleStar(FIELD, 1, 0.0, 0.0, "")
    examples = {e.id: e.query for e in rome_examples(star)}
    kinds = dict(zip(truth["field_id"].tolist(), truth["kind"].tolist(), strict=True))
    bright = served.run_sync(examples["microlensing_candidates"]).to_table()
    assert len(bright) > 0 and np.all(bright["peak_mag_ip"] < 18)
    assert all(kinds[int(i)] == "microlensing" for i in bright["field_id"])
    assert str(bright["did"][0]).endswith(f"?{FIELD}/{int(bright['field_id'][0])}")
    variables = served.run_sync(examples["variables_eta_iqr"]).to_table()
    assert len(variables) >= 10
    assert np.mean([kinds[int(i)] != "constant" for i in variables["field_id"]]) >= 0.9


def test_landing_page_counts_the_candidates(served):
    import httpx

    n = served.run_sync(
        "SELECT COUNT(*) AS n FROM rome.microlensing_candidates WHERE classification = 'candidate'"
    ).to_table()["n"][0]
    page = httpx.get(served.baseurl.rsplit("/tap", 1)[0] + "/").text
    assert "microlensing candidates" in page and n > 0
    assert f"<td>{FIELD}</td><td>1,500</td><td>900</td><td>E</td><td>{n:,}</td>" in page


def _top_candidate(served) -> tuple[str, dict]:
    row = served.run_sync(
        "SELECT TOP 1 f.did, c.t0, c.te, c.u0, c.baseline_mag_ip, c.peak_mag_ip "
        "FROM rome.microlensing_candidates AS c JOIN rome.field_index AS f "
        "ON c.field = f.field AND c.field_id = f.field_id "
        "WHERE c.classification = 'candidate' ORDER BY c.score DESC"
    ).to_table()[0]
    return str(row["did"]), {k: float(row[k]) for k in row.colnames if k != "did"}


def test_lightcurve_model_pspl(served):
    import io

    import httpx
    from astropy.io.votable import parse_single_table

    root = served.baseurl.rsplit("/tap", 1)[0]
    did, fit = _top_candidate(served)
    r = httpx.get(f"{root}/lightcurve", params={"ID": did, "MODEL": "pspl", "BAND": "ip"})
    assert r.status_code == 200, r.text
    votable = parse_single_table(io.BytesIO(r.content))
    table = votable.to_table()
    model = np.asarray(table["model_mag"], dtype=float)
    mag, err = (np.asarray(table[c], dtype=float) for c in ("normalized_mag", "normalized_mag_err"))
    assert np.all(np.isfinite(model))
    # the model follows the points (outliers and underestimated errors allowed for)
    assert np.median(np.abs(mag - model) / err) < 1.5
    near = np.abs(np.asarray(table["hjd"]) - fit["t0"]) < 0.2 * fit["te"]
    if near.any():
        assert np.all(model[near] < fit["baseline_mag_ip"])
    assert np.min(model) >= fit["peak_mag_ip"] - 1e-9
    png = httpx.get(
        f"{root}/lightcurve", params={"ID": did, "MODEL": "pspl", "RESPONSEFORMAT": "png"}
    )
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    plain = httpx.get(f"{root}/lightcurve", params={"ID": did, "RESPONSEFORMAT": "png"})
    assert plain.content != png.content


def test_lightcurve_model_errors(served, truth):
    import httpx

    root = served.baseurl.rsplit("/tap", 1)[0]
    did, _ = _top_candidate(served)
    bad = httpx.get(f"{root}/lightcurve", params={"ID": did, "MODEL": "binary"})
    assert bad.status_code == 400 and "MODEL=pspl" in bad.text
    fitted = {int(i) for i in served.run_sync(
        "SELECT field_id FROM rome.microlensing_candidates"
    ).to_table()["field_id"]}  # fmt: skip
    unfitted = next(i for i in truth["field_id"].tolist() if i not in fitted)
    other = did.rsplit("/", 1)[0] + f"/{unfitted}"
    r = httpx.get(f"{root}/lightcurve", params={"ID": other, "MODEL": "pspl"})
    assert r.status_code == 404 and "no point-lens fit" in r.text
    two = httpx.get(f"{root}/lightcurve", params={"ID": [did, other], "MODEL": "pspl"})
    assert two.status_code == 400


def test_datalink_links_a_candidate_to_its_fit_and_model(served):
    import io

    import httpx
    from astropy.io.votable import parse_single_table

    root = served.baseurl.rsplit("/tap", 1)[0]
    did, _ = _top_candidate(served)
    r = httpx.get(f"{root}/datalink/links", params={"ID": did})
    links = parse_single_table(io.BytesIO(r.content)).to_table()
    local = {str(s): str(u) for s, u in zip(links["local_semantics"], links["access_url"],
                                            strict=True)}  # fmt: skip
    assert "MODEL=pspl" in local["lightcurve-plot-pspl"]
    aux = local["microlensing-candidate-row"]
    assert "microlensing_candidates" in aux
    semantics = dict(zip(links["local_semantics"].tolist(), links["semantics"].tolist(),
                         strict=True))  # fmt: skip
    assert semantics["lightcurve-plot-pspl"] == "#preview"
    assert semantics["microlensing-candidate-row"] == "#auxiliary"
    rows = parse_single_table(io.BytesIO(httpx.get(aux).content)).to_table()
    assert len(rows) == 1 and rows["classification"][0] == "candidate"
    assert httpx.get(local["lightcurve-plot-pspl"]).content.startswith(b"\x89PNG")
