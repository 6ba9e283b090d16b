"""The UWS REST binding of a job store: `uws_routes`."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ...errors import InvalidRequestError, RomeReaError
from ..params import DaliParams, read_dali_params
from ..responses import dali_error, error_response, error_status
from .documents import job_xml, jobs_xml, parameters_model, results_model, serialize
from .models import ABORTED, CONTROL_PARAMS, ERROR, PHASES, UWS_MEDIA, iso_time, parse_time
from .store import JobStoreBase

# --- HTTP binding --------------------------------------------------------------------

ParamReader = Callable[[Request, Path], Awaitable[DaliParams]]

_SMALL_FORM_BYTES = 1024 * 1024


def _text(body: str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="text/plain; charset=utf-8")


def _client_error(exc: RomeReaError) -> Response:
    """UWS job resources answer errors as plain text, with the error's own status."""
    response = _text(f"{exc}\n", error_status(exc))
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _flatten(params: DaliParams) -> dict[str, str]:
    """Job parameters from request parameters: first value each, UPLOAD values joined."""
    out = {}
    for name, values in params.values.items():
        if name in CONTROL_PARAMS or not values:
            continue
        out[name] = ";".join(v for v in values if v.strip()) if name == "UPLOAD" else values[0]
    return out


class _Endpoints:
    """The request handlers of `uws_routes`."""

    def __init__(self, store: JobStoreBase, read_params: ParamReader, prefix: str) -> None:
        self.store = store
        self.read_params = read_params
        self.prefix = prefix

    async def read(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a store read: in the thread pool when it does I/O, else directly."""
        if self.store.blocking_io:
            return await run_in_threadpool(func, *args, **kwargs)
        return func(*args, **kwargs)

    # URLs: absolute, from the request (scheme and Host as the client sent them).
    def jobs_url(self, request: Request) -> str:
        url = request.url
        root = request.scope.get("root_path", "")
        base = f"{url.scheme}://{url.netloc}{root}{self.prefix}"
        return base if self.prefix else base + "/"

    def job_url(self, request: Request, job_id: str) -> str:
        return f"{self.jobs_url(request).rstrip('/')}/{job_id}"

    def see_job(self, request: Request, job_id: str) -> Response:
        return RedirectResponse(self.job_url(request, job_id), status_code=303)

    async def small_form(self, request: Request) -> DaliParams:
        return await read_dali_params(
            request, None, max_upload_bytes=0, max_total_bytes=_SMALL_FORM_BYTES
        )

    async def request_params(self, request: Request) -> tuple[DaliParams, Path]:
        staging = await run_in_threadpool(self.store.new_upload_dir)
        try:
            return await self.read_params(request, staging), staging
        except BaseException:
            self.store.discard_upload_dir(staging)
            raise

    # --- the job list --------------------------------------------------------------

    async def jobs(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.create(request)
        try:
            query = await self.small_form(request)
            phases = [p.upper() for p in query.getall("PHASE")]
            for p in phases:
                if p not in PHASES:
                    raise InvalidRequestError(f"unknown PHASE {p!r}; phases: {', '.join(PHASES)}")
            after = query.get("AFTER")
            last = query.get("LAST")
            last_n = _int(last, "LAST") if last is not None else None
            if last_n is not None and last_n < 0:
                raise InvalidRequestError("LAST must not be negative")
            jobs = await self.read(
                self.store.list,
                phase=phases or None,
                after=parse_time(after) if after else None,
                last=last_n,
            )
        except RomeReaError as exc:
            return _client_error(exc)
        return Response(jobs_xml(jobs, self.jobs_url(request)), media_type=UWS_MEDIA)

    async def create(self, request: Request) -> Response:
        staging: Path | None = None
        try:
            params, staging = await self.request_params(request)
            phase = (params.get("PHASE") or "").upper()
            if phase not in ("", "RUN"):
                raise InvalidRequestError(f"PHASE={phase} at job creation: only RUN is allowed")
            duration = params.get("EXECUTIONDURATION")
            destruction = params.get("DESTRUCTION")
            seconds = _int(duration, "EXECUTIONDURATION") if duration else None
            when = parse_time(destruction) if destruction else None
            job = await run_in_threadpool(
                functools.partial(
                    self.store.create,
                    _flatten(params),
                    params.files,
                    client=request.client.host if request.client else None,
                    base_url=str(request.base_url).rstrip("/"),
                    execution_duration=seconds,
                    destruction=when,
                )
            )
            if phase == "RUN":
                await run_in_threadpool(self.store.run, job.job_id)
        except RomeReaError as exc:
            return error_response(exc)
        finally:
            if staging is not None:
                self.store.discard_upload_dir(staging)
        return self.see_job(request, job.job_id)

    # --- one job -------------------------------------------------------------------

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            if request.method == "DELETE":
                await run_in_threadpool(self.store.delete, job_id)
                return RedirectResponse(self.jobs_url(request), status_code=303)
            if request.method == "POST":
                return await self.post_job(request, job_id)
            query = await self.small_form(request)
            wait = query.get("WAIT")
            if wait is not None:
                phase = query.get("PHASE")
                if phase is not None and phase.upper() not in PHASES:
                    raise InvalidRequestError(f"unknown PHASE {phase!r}")
                await self.store.wait_async(
                    job_id, _int(wait, "WAIT"), phase.upper() if phase else None
                )
            job = await self.read(self.store.get, job_id)
        except RomeReaError as exc:
            return _client_error(exc)
        return Response(job_xml(job, self.job_url(request, job_id)), media_type=UWS_MEDIA)

    async def post_job(self, request: Request, job_id: str) -> Response:
        await self.read(self.store.get, job_id)  # 404 before reading any body
        params, staging = await self.request_params(request)
        try:
            action = params.get("ACTION")
            if action is not None:
                if action.upper() != "DELETE":
                    raise InvalidRequestError(f"unknown ACTION {action!r}; only DELETE is known")
                await run_in_threadpool(self.store.delete, job_id)
                return RedirectResponse(self.jobs_url(request), status_code=303)
            if params.get("PHASE") is not None:
                await self.change_phase(job_id, params.get("PHASE") or "")
            rest = _flatten(params)
            if rest or params.files:
                await run_in_threadpool(self.store.update_parameters, job_id, rest, params.files)
            return self.see_job(request, job_id)
        finally:
            self.store.discard_upload_dir(staging)

    async def change_phase(self, job_id: str, phase: str) -> None:
        phase = phase.upper()
        if phase == "RUN":
            await run_in_threadpool(self.store.run, job_id)
        elif phase == "ABORT":
            await run_in_threadpool(self.store.abort, job_id)
        else:
            raise InvalidRequestError(f"PHASE={phase!r}: this service accepts RUN or ABORT")

    async def phase(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            if request.method == "POST":
                await self.read(self.store.get, job_id)
                form = await self.small_form(request)
                phase = form.get("PHASE")
                if phase is None:
                    raise InvalidRequestError("POST to /phase needs PHASE=RUN or PHASE=ABORT")
                await self.change_phase(job_id, phase)
                return self.see_job(request, job_id)
            return _text(await self.read(self.store.phase, job_id))
        except RomeReaError as exc:
            return _client_error(exc)

    async def execution_duration(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            if request.method == "POST":
                await self.read(self.store.get, job_id)
                value = (await self.small_form(request)).get("EXECUTIONDURATION")
                if value is None:
                    raise InvalidRequestError("POST needs EXECUTIONDURATION=<seconds>")
                seconds = _int(value, "EXECUTIONDURATION")
                await run_in_threadpool(self.store.set_execution_duration, job_id, seconds)
                return self.see_job(request, job_id)
            return _text(str((await self.read(self.store.get, job_id)).execution_duration))
        except RomeReaError as exc:
            return _client_error(exc)

    async def destruction(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            if request.method == "POST":
                await self.read(self.store.get, job_id)
                value = (await self.small_form(request)).get("DESTRUCTION")
                if value is None:
                    raise InvalidRequestError("POST needs DESTRUCTION=<ISO 8601 time>")
                await run_in_threadpool(self.store.set_destruction, job_id, parse_time(value))
                return self.see_job(request, job_id)
            return _text(iso_time((await self.read(self.store.get, job_id)).destruction))
        except RomeReaError as exc:
            return _client_error(exc)

    async def quote(self, request: Request) -> Response:
        try:
            return _text(
                iso_time((await self.read(self.store.get, request.path_params["job_id"])).quote)
            )
        except RomeReaError as exc:
            return _client_error(exc)

    async def owner(self, request: Request) -> Response:
        try:
            return _text(
                (await self.read(self.store.get, request.path_params["job_id"])).owner or ""
            )
        except RomeReaError as exc:
            return _client_error(exc)

    async def error(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            job = await self.read(self.store.get, job_id)
        except RomeReaError as exc:
            return _client_error(exc)
        if not job.error_message or job.phase not in (ERROR, ABORTED):
            return _text(f"job {job_id} is {job.phase} and has no error\n", 404)
        return dali_error(job.error_message, 200)

    async def results(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            job = await self.read(self.store.get, job_id)
        except RomeReaError as exc:
            return _client_error(exc)
        body = serialize(results_model(job, self.job_url(request, job_id)))
        return Response(body, media_type=UWS_MEDIA)

    async def result(self, request: Request) -> Response:
        job_id, result_id = request.path_params["job_id"], request.path_params["result_id"]
        try:
            job = await self.read(self.store.get, job_id)
        except RomeReaError as exc:
            return _client_error(exc)
        for r in job.results:
            if r.id == result_id and r.path.is_file():
                return FileResponse(r.path, media_type=r.media_type)
        return _text(f"job {job_id} ({job.phase}) has no result {result_id!r}\n", 404)

    async def parameters(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            if request.method == "POST":
                await self.read(self.store.get, job_id)
                params, staging = await self.request_params(request)
                try:
                    await run_in_threadpool(
                        self.store.update_parameters, job_id, _flatten(params), params.files
                    )
                finally:
                    self.store.discard_upload_dir(staging)
                return self.see_job(request, job_id)
            job = await self.read(self.store.get, job_id)
        except RomeReaError as exc:
            return _client_error(exc)
        body = serialize(parameters_model(job, self.job_url(request, job_id)))
        return Response(body, media_type=UWS_MEDIA)

    async def upload(self, request: Request) -> Response:
        job_id, part = request.path_params["job_id"], request.path_params["part"]
        try:
            job = await self.read(self.store.get, job_id)
        except RomeReaError as exc:
            return _client_error(exc)
        path = job.files.get(part)
        if path is None or not path.is_file():
            return _text(f"job {job_id} has no upload {part!r}\n", 404)
        return FileResponse(path, media_type="application/octet-stream")


def _int(value: str, name: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise InvalidRequestError(f"{name}={value!r} is not an integer") from None


def _default_reader(max_upload_bytes: int) -> ParamReader:
    async def read(request: Request, directory: Path) -> DaliParams:
        return await read_dali_params(request, directory, max_upload_bytes=max_upload_bytes)

    return read


def uws_routes(
    store: JobStoreBase,
    *,
    read_params: ParamReader | None = None,
    prefix: str = "",
) -> list[BaseRoute]:
    """The UWS 1.1 REST binding of ``store`` as Starlette routes.

    Either mount them (``Mount("/tap/async", routes=uws_routes(store, ...))``, where the
    job list is ``/tap/async/``) or add them with ``prefix="/tap/async"``, which also
    serves the list at ``/tap/async`` itself (what TAP clients POST to) without a
    slash redirect. ``read_params(request, directory)`` reads DALI parameters saving
    uploads into ``directory`` (default: `read_dali_params` with a 100 MiB limit).
    """
    prefix = prefix.rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise ValueError("prefix must start with '/'")
    h = _Endpoints(store, read_params or _default_reader(100 * 2**20), prefix)
    job = prefix + "/{job_id}"
    routes: list[BaseRoute] = [Route(prefix + "/", h.jobs, methods=["GET", "POST"])]
    if prefix:
        routes.append(Route(prefix, h.jobs, methods=["GET", "POST"]))
    routes += [
        Route(job, h.job, methods=["GET", "POST", "DELETE"]),
        Route(job + "/phase", h.phase, methods=["GET", "POST"]),
        Route(job + "/executionduration", h.execution_duration, methods=["GET", "POST"]),
        Route(job + "/destruction", h.destruction, methods=["GET", "POST"]),
        Route(job + "/quote", h.quote, methods=["GET"]),
        Route(job + "/owner", h.owner, methods=["GET"]),
        Route(job + "/error", h.error, methods=["GET"]),
        Route(job + "/results", h.results, methods=["GET"]),
        Route(job + "/results/{result_id}", h.result, methods=["GET"]),
        Route(job + "/parameters", h.parameters, methods=["GET", "POST"]),
        Route(job + "/uploads/{part}", h.upload, methods=["GET"]),
    ]
    return routes
