"""``/coverage``: where, when and in which bands the service has data.

* ``/coverage``: a JSON summary (area, first and last epoch, wavelength range, per field)
  with the URLs of the documents below;
* ``/coverage/moc.fits``, ``moc.json``, ``moc.txt``: the service's footprint, a MOC 2.0
  (FITS, the JSON and ASCII serialisations);
* ``/coverage/stmoc.fits``: the space–time MOC (each field's footprint × its exposures);
* ``/coverage/moc.png``: a plot of the fields' footprints (the landing page shows it);
* ``/coverage/<field>/moc.fits`` (or ``.json``, ``.txt``): one field's footprint.

The coverage is computed once, on first use, from the catalogue tables
(`romerea_vo.store.coverage`).
"""

from __future__ import annotations

import io
import json
import threading
from urllib.parse import quote

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mocpy import MOC
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import RomeReaError
from ..store.contract import CatalogDatabase
from ..store.coverage import Coverage, compute_coverage, moc_fits
from .responses import error_response
from .urls import service_root

__all__ = ["MOC_MEDIA", "CoverageService"]

MOC_MEDIA = "application/fits"
"""FITS MOC documents (MOC 2.0 names no media type of its own)."""
_TEXT_FORMATS = {"json": "application/json", "txt": "text/plain"}
_PLOT_PIXELS = 500


class _NoSuchDocument(RomeReaError):
    http_status = 404


class CoverageService:
    """The coverage documents of ``db``."""

    def __init__(self, db: CatalogDatabase, public_url: str | None = None):
        self.db = db
        self.public_url = public_url
        self._coverage: Coverage | None = None
        self._plot: bytes | None = None
        self._lock = threading.Lock()

    def coverage(self) -> Coverage:
        """The coverage, computed on first use (blocking: call from a thread)."""
        with self._lock:
            if self._coverage is None:
                self._coverage = compute_coverage(self.db)
            return self._coverage

    def plot(self) -> bytes:
        """The fields' footprints as a PNG (blocking)."""
        coverage = self.coverage()
        with self._lock:
            if self._plot is None:
                self._plot = footprint_png(coverage)
            return self._plot

    def links(self, root: str) -> dict[str, str]:
        """The URLs of the service's coverage documents."""
        base = f"{root}/coverage"
        return {
            "summary": base,
            "moc_fits": f"{base}/moc.fits",
            "moc_json": f"{base}/moc.json",
            "moc_ascii": f"{base}/moc.txt",
            "stmoc_fits": f"{base}/stmoc.fits",
            "plot": f"{base}/moc.png",
        }

    async def summary(self, request: Request) -> Response:
        """``GET /coverage``: the JSON summary and the documents' URLs."""
        try:
            coverage = await run_in_threadpool(self.coverage)
        except Exception as exc:
            return error_response(exc)
        root = service_root(request, self.public_url)
        body = {**coverage.summary(), "documents": self.links(root)}
        for entry in body["fields"]:
            base = f"{root}/coverage/{quote(entry['field'], safe='')}"
            entry["moc_fits"] = f"{base}/moc.fits"
            entry["moc_json"] = f"{base}/moc.json"
        return JSONResponse(body)

    async def document(self, request: Request) -> Response:
        """``GET /coverage/<name>`` and ``/coverage/<field>/<name>``."""
        try:
            return await run_in_threadpool(
                self._document, request.path_params.get("field"), request.path_params["name"]
            )
        except Exception as exc:
            return error_response(exc)

    def _document(self, field: str | None, name: str) -> Response:
        coverage = self.coverage()
        if field is not None:
            found = coverage.field(field)
            if found is None:
                known = ", ".join(f.field for f in coverage.fields) or "none"
                raise _NoSuchDocument(f"no field {field[:100]!r} here (fields: {known})")
            return _moc_response(found.moc, name)
        if name == "moc.png":
            return Response(self.plot(), media_type="image/png")
        if name == "stmoc.fits":
            if coverage.stmoc is None:
                raise _NoSuchDocument("no epochs here: there is no space-time coverage")
            return Response(moc_fits(coverage.stmoc), media_type=MOC_MEDIA)
        return _moc_response(coverage.moc, name)


def _moc_response(moc: MOC, name: str) -> Response:
    stem, _, ext = name.partition(".")
    if stem != "moc" or ext not in ("fits", *_TEXT_FORMATS):
        raise _NoSuchDocument(
            f"no coverage document {name[:100]!r}: moc.fits, moc.json or moc.txt "
            "(and, for the service, stmoc.fits and moc.png)"
        )
    if ext == "fits":
        return Response(moc_fits(moc), media_type=MOC_MEDIA)
    if ext == "json":
        return Response(json.dumps(moc.serialize(format="json")), media_type="application/json")
    return Response(moc.to_string(format="ascii"), media_type="text/plain")


def footprint_png(coverage: Coverage) -> bytes:
    """The fields' footprints on an RA/Dec grid, one colour per field.

    Drawn by sampling the MOCs on a grid of points (`MOC.contains_lonlat`): mocpy's own
    plotting needs its optional plotting bundle, and a grid of a few hundred points a
    side shows cells of 0.86′ on a survey a few degrees across well enough.
    """
    fig = Figure(figsize=(5.5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not coverage.fields:
        ax.text(0.5, 0.5, "no ROME fields", ha="center", va="center", transform=ax.transAxes)
    else:
        import astropy.units as u
        from astropy.coordinates import Latitude, Longitude

        boxes = [_extent(f.moc) for f in coverage.fields]
        ra_lo = min(b[0] for b in boxes)
        ra_hi = max(b[1] for b in boxes)
        dec_lo = max(min(b[2] for b in boxes), -90.0)
        dec_hi = min(max(b[3] for b in boxes), 90.0)
        pad = 0.05 * max(ra_hi - ra_lo, dec_hi - dec_lo, 0.1)
        ra = np.linspace(ra_lo - pad, ra_hi + pad, _PLOT_PIXELS)
        dec = np.linspace(dec_lo - pad, dec_hi + pad, _PLOT_PIXELS)
        grid_ra, grid_dec = np.meshgrid(ra, dec)
        lon = Longitude(grid_ra.ravel() * u.deg)
        lat = Latitude(np.clip(grid_dec.ravel(), -90, 90) * u.deg)
        image = np.full(grid_ra.size, np.nan)
        for i, f in enumerate(coverage.fields):
            image[f.moc.contains_lonlat(lon, lat)] = i
        extent = (ra[0], ra[-1], dec[0], dec[-1])
        ax.imshow(image.reshape(grid_ra.shape), origin="lower", extent=extent,
                  cmap="tab20", vmin=0, vmax=19, interpolation="nearest",
                  aspect=1 / max(np.cos(np.radians(np.mean(dec))), 0.05))  # fmt: skip
        for f, box in zip(coverage.fields, boxes, strict=True):
            ax.text((box[0] + box[1]) / 2, box[3], f.field, ha="center", va="bottom", fontsize=7)
        ax.set_xlim(ra[-1], ra[0])  # east to the left, as on the sky
        ax.set_xlabel("RA (deg)")
        ax.set_ylabel("Dec (deg)")
        ax.grid(color="0.85", linewidth=0.5)
    ax.set_title("Footprints (MOC)", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _extent(moc: MOC) -> tuple[float, float, float, float]:
    """RA and Dec limits of a small MOC (a ROME field: no wrap at RA 0)."""
    barycentre = moc.barycenter()
    radius = moc.largest_distance_from_coo_to_vertices(barycentre).to_value("deg")
    ra, dec = barycentre.ra.deg, barycentre.dec.deg
    half = radius / max(np.cos(np.radians(dec)), 0.05)
    return ra - half, ra + half, dec - radius, dec + radius
