"""The lightcurve service: ``GET|POST /lightcurve`` and ``/lightcurve/async``.

The HTTP side of `romerea_vo.lightcurve_documents`: reads the request's parameters and
uploads, hands them to the document builder, and streams what it builds (or a DALI
error document, through `romerea_vo.service.responses`).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import InvalidRequestError, RomeReaError
from ..lightcurve_documents import LightcurveDocuments, parse_request
from ..store.contract import CatalogDatabase
from ..xmatch.core import MAX_RADIUS_ARCSEC
from .params import DaliParams, parse_upload_param, read_dali_params
from .responses import error_response
from .uploads import read_upload_table
from .uws import CancelToken, Job

__all__ = ["LightcurveService"]


class LightcurveService(LightcurveDocuments):
    """The ``/lightcurve`` endpoint over an ingested database's fields."""

    def __init__(
        self,
        db: CatalogDatabase,
        upload_dir: Path | None = None,
        max_upload_bytes: int = 100 * 2**20,
    ):
        """``upload_dir``: where bulk uploads are spooled (None: bulk requests refused)."""
        super().__init__(db)
        self.upload_dir = upload_dir
        self.max_upload_bytes = max_upload_bytes

    def run_job(self, job: Job, token: CancelToken) -> None:
        """UWS runner of ``/lightcurve/async``: a bulk request into the job's result file.

        Raises InvalidRequestError (the job's ERROR message) for bad parameters or
        uploads, RomeReaError when aborted.
        """
        params = DaliParams(
            values={k: [v] for k, v in job.parameters.items()}, files=dict(job.files)
        )
        if not params.getall("UPLOAD"):
            raise InvalidRequestError(
                "an async lightcurve job needs an uploaded table of stars "
                "(UPLOAD=stars,param:<part>)"
            )
        req = parse_request(params.values, ids_required=False)
        table, radius = _read_bulk_upload(params)
        chunks, media, name = self.bulk(req, table, radius)
        path = job.directory / name
        with path.open("wb") as out:
            for chunk in chunks:
                if token.is_set():
                    raise RomeReaError("the job was aborted")
                out.write(chunk)
        job.add_result("result", path, media)

    async def endpoint(self, request: Request) -> Response:
        """``GET|POST /lightcurve``."""
        t0 = time.perf_counter()
        scratch = None
        try:
            if self.upload_dir is not None and request.method == "POST":
                scratch = Path(tempfile.mkdtemp(dir=self.upload_dir))
            params = await read_dali_params(
                request, scratch, max_upload_bytes=self.max_upload_bytes if scratch else 0
            )
            if params.getall("UPLOAD"):
                req = parse_request(params.values, ids_required=False)
                table, radius = _read_bulk_upload(params)
                if req.ids:
                    raise InvalidRequestError(
                        "give the stars either as ID parameters or as an uploaded table, not both"
                    )
                chunks, media, name = await run_in_threadpool(self.bulk, req, table, radius)
                headers = {"Content-Disposition": f'inline; filename="{name}"'}
                return StreamingResponse(
                    iterate_in_threadpool(chunks), media_type=media, headers=headers
                )
            req = parse_request(params.values)
            if len(req.ids) == 1:
                body, media, name = await run_in_threadpool(self.single, req)
            else:
                chunks, media, name = await run_in_threadpool(self.many, req)
                headers = {"Content-Disposition": f'inline; filename="{name}"'}
                return StreamingResponse(
                    iterate_in_threadpool(chunks), media_type=media, headers=headers
                )
        except Exception as exc:  # a bug too: reported as a DALI error, the service goes on
            return error_response(exc)
        finally:  # an uploaded table is in memory by now
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        elapsed = (time.perf_counter() - t0) * 1000
        headers = {
            "Content-Disposition": f'inline; filename="{name}"',
            "Server-Timing": f"app;dur={elapsed:.2f}",
        }
        return Response(body, media_type=media, headers=headers)


def _read_bulk_upload(params: DaliParams) -> tuple[pa.Table, float]:
    """The uploaded table of stars (``UPLOAD=name,param:part``) and the RADIUS (arcsec)
    for positions. Raises InvalidRequestError for anything but one readable table."""
    pairs = parse_upload_param(params.getall("UPLOAD"), params.files)
    if len(pairs) != 1:
        raise InvalidRequestError("upload one table of stars (UPLOAD=stars,param:<part>)")
    name, uri = pairs[0]
    table, _ = read_upload_table(name, params.files[uri[len("param:") :]], max_rows=2**62)
    raw = params.get("RADIUS", "1")
    try:
        radius = float(raw)
    except ValueError:
        radius = math.nan
    if not 0 < radius <= MAX_RADIUS_ARCSEC:
        raise InvalidRequestError(
            f"RADIUS={raw!r}: give the match radius for positions in arcsec "
            f"(0 < RADIUS <= {MAX_RADIUS_ARCSEC:g}; default 1)"
        )
    return table, radius
