"""Flux lightcurves (FLUX=true, COLUMNS=, TIME=) from /lightcurve, and a MulensModel fit of
the injected microlensing events of a synthetic field through the service."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from astropy.table import Table

from romerea_vo.lightcurves import FLUX_ZERO_POINT, flux_from_mag
from romerea_vo.products.synthetic import SignalRates, synthesize_field, truth_filename
from romerea_vo.service.app import ServiceConfig, create_app
from romerea_vo.store import Database, ingest_fields

from .conftest import LiveServer

FIELD = "ROME-FIELD-03"


def get(url: str, **params) -> httpx.Response:
    return httpx.get(f"{url}/lightcurve", params=params, timeout=60)


def table_of(r: httpx.Response) -> Table:
    assert r.status_code == 200, r.text[:400]
    return Table.read(io.BytesIO(r.content), format="votable")


def test_flux_from_mag_scale():
    flux, err = flux_from_mag(np.array([22.0, 17.0, 0.0, -9999.99]), np.array([0.1, 0.01, 0, 1]))
    assert flux[0] == pytest.approx(1.0) and flux[1] == pytest.approx(100.0)
    assert err[1] == pytest.approx(0.4 * np.log(10) * 100 * 0.01)
    assert np.isnan(flux[2:]).all() and np.isnan(err[2:]).all()


@pytest.fixture(scope="module")
def did(authority):
    return lambda field, field_id: f"{authority}?{field}/{field_id}"


def test_flux_agrees_with_magnitude_through_zero_point(tap_server, did):
    t = table_of(get(tap_server, ID=did("ROME-FIELD-01", 5), FLUX="true"))
    assert {"flux", "flux_err", "normalized_mag"} <= set(t.colnames)
    mag = -2.5 * np.log10(np.asarray(t["flux"])) + FLUX_ZERO_POINT
    np.testing.assert_allclose(mag, t["normalized_mag"], rtol=0, atol=1e-9)
    rel = np.asarray(t["flux_err"]) / np.asarray(t["flux"])
    np.testing.assert_allclose(rel, 0.4 * np.log(10) * t["normalized_mag_err"], rtol=1e-12)
    assert t["flux"].meta["ucd"] == "phot.flux"
    plain = table_of(get(tap_server, ID=did("ROME-FIELD-01", 5)))
    assert "flux" not in plain.colnames and len(plain) == len(t)


def test_columns_and_band_ucd(tap_server, did):
    r = get(tap_server, ID=did("ROME-FIELD-01", 5), COLUMNS="hjd,flux,flux_err", BAND="ip")
    t = table_of(r)
    assert t.colnames == ["hjd", "flux", "flux_err"]
    assert t["flux"].meta["ucd"] == "phot.flux;em.opt.I"
    ids = [("ID", did("ROME-FIELD-01", 5)), ("ID", did("ROME-FIELD-02", 3)), ("COLUMNS", "hjd")]
    t = table_of(httpx.get(f"{tap_server}/lightcurve", params=ids, timeout=60))
    assert t.colnames == ["id", "hjd"]  # several stars: the id always comes first
    r = get(tap_server, ID=did("ROME-FIELD-01", 5), COLUMNS="hjd,nope")
    assert r.status_code == 400 and "nope" in r.text and "available" in r.text


def test_time_interval(tap_server, did):
    full = table_of(get(tap_server, ID=did("ROME-FIELD-01", 5)))
    mjd = np.asarray(full["hjd"]) - 2400000.5
    lo, hi = (float(q) for q in np.quantile(mjd, [0.25, 0.6]))
    part = table_of(get(tap_server, ID=did("ROME-FIELD-01", 5), TIME=f"{lo!r} {hi!r}"))
    assert len(part) == int(((mjd >= lo) & (mjd <= hi)).sum()) > 0
    open_end = table_of(get(tap_server, ID=did("ROME-FIELD-01", 5), TIME=f"{lo!r} +Inf"))
    assert len(open_end) == int((mjd >= lo).sum())
    for bad in ("58000", "a b", "58100 58000"):
        r = get(tap_server, ID=did("ROME-FIELD-01", 5), TIME=bad)
        assert r.status_code == 400 and "TIME" in r.text
    r = get(tap_server, ID=did("ROME-FIELD-01", 5), FLUX="maybe")
    assert r.status_code == 400 and "FLUX" in r.text


# --- MulensModel recovers the injected events ---


@pytest.fixture(scope="module")
def event_server(tmp_path_factory):
    """A service over a synthetic field with many images (events well sampled)."""
    root = tmp_path_factory.mktemp("events")
    # events on 30 % of the stars: about ten clearly magnified, well-sampled ones to fit
    field_dir = synthesize_field(
        root / FIELD, field=FIELD, n_stars=600, n_images=600, seed=5,
        rates=SignalRates(microlensing=0.3, periodic=0.0, irregular=0.0),
    )  # fmt: skip
    db_path = root / "rome.duckdb"
    list(ingest_fields(db_path, [field_dir]))
    db = Database(db_path)
    authority = db.authority
    db.close()
    live = LiveServer(create_app(ServiceConfig(db_path=db_path, work_dir=root / "work")))
    yield live.url, authority, Table.read(field_dir / truth_filename(FIELD))
    live.stop()


def _fit_event(mm, least_squares, table: Table, start: tuple[float, float, float]):
    """t_0, u_0, t_E and their 1-sigma errors of a point-lens fit in flux, one source and
    blend flux per dataset (MulensModel solves those linearly)."""
    datasets = [
        mm.MulensData([np.asarray(t["hjd"]), np.asarray(t["flux"]), np.asarray(t["flux_err"])],
                      phot_fmt="flux")
        for t in table.group_by("dataset_code").groups
    ]  # fmt: skip
    event = mm.Event(datasets=datasets, model=mm.Model(dict(zip(NAMES, start, strict=True))))

    def residuals(p):
        for name, value in zip(NAMES, p, strict=True):
            setattr(event.model.parameters, name, value)
        event.fit_fluxes()
        return np.concatenate(
            [
                (f.get_model_fluxes() - d.flux) / d.err_flux
                for f, d in zip(event.fits, datasets, strict=True)
            ]
        )

    # A robust loss, as modellers use on survey photometry: the synthetic fields carry
    # outliers far outside their error bars (bad subtractions, cosmic rays).
    fit = least_squares(
        residuals, start, x_scale=[1.0, 0.1, 5.0], bounds=([-np.inf, 1e-4, 0.1], [np.inf, 3, 1e3]),
        loss="soft_l1", f_scale=3.0,
    )  # fmt: skip
    n_free = 3 + 2 * len(datasets)
    scale = max(1.0, 2 * fit.cost / max(1, fit.fun.size - n_free))  # reduced chi2 if > 1
    cov = np.linalg.inv(fit.jac.T @ fit.jac) * scale
    return fit.x, np.sqrt(np.diag(cov))


NAMES = ("t_0", "u_0", "t_E")


def test_mulensmodel_recovers_injected_events(event_server):
    mm = pytest.importorskip("MulensModel")
    least_squares = pytest.importorskip("scipy.optimize").least_squares
    url, authority, truth = event_server
    events = truth[truth["kind"] == "microlensing"]
    # clearly magnified events (the generator also injects barely detectable ones)
    clear = events[(events["u0"] < 0.6) & (events["fs"] > 0.3)]
    fitted, within = 0, 0
    for row in clear:
        r = get(
            url,
            ID=f"{authority}?{FIELD}/{int(row['field_id'])}",
            BAND="ip",
            COLUMNS="hjd,flux,flux_err,dataset_code",
            RESPONSEFORMAT="parquet",
        )
        table = Table.read(io.BytesIO(r.content), format="parquet.votable")
        if int((np.abs(table["hjd"] - row["t0"]) < row["tE"]).sum()) < 10:
            continue  # the event fell between the observing seasons: nothing to fit
        true = np.array([row["t0"], row["u0"], row["tE"]])
        start = true * np.array([1.0, 1.3, 0.8]) + np.array([2.0, 0.0, 0.0])
        values, errors = _fit_event(mm, least_squares, table, tuple(start))
        fitted += 1
        within += int(np.all(np.abs(values - true) < 3 * errors))
    print(
        f"MulensModel: {within} of {fitted} sampled events within 3 sigma ({len(events)} injected)"
    )
    # every event with data in it is fitted, and recovered within 3 sigma
    assert fitted >= 3
    assert within == fitted, f"{within} of {fitted} events recovered within 3 sigma"
