"""UWS XML documents (job, job list), built with vo-models."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import overload
from urllib.parse import quote

from lxml import etree
from pydantic_xml import BaseXmlModel, element
from vo_models.uws import (
    ErrorSummary,
    Jobs,
    JobSummary,
    Parameter,
    ResultReference,
    Results,
    ShortJobDescription,
)
from vo_models.uws.models import NSMAP

from .models import ABORTED, ERROR, Job, iso_time

# --- XML documents -------------------------------------------------------------------


class _Parameters(BaseXmlModel, tag="parameters", ns="uws", nsmap=NSMAP):
    """uws:parameters with any parameter ids (vo-models' Parameters wants declared fields)."""

    parameter: list[Parameter] = element(tag="parameter", default_factory=list)


_JobDocument = JobSummary[_Parameters]
_UWS_NS = NSMAP["uws"]
_XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"


def serialize(model: BaseXmlModel) -> bytes:
    """XML bytes; empty optional runId elements (not nillable in the schema) dropped."""
    tree = model.to_xml_tree(skip_empty=False)
    for el in list(tree.iter(f"{{{_UWS_NS}}}runId")):
        parent = el.getparent()  # type: ignore[attr-defined]  # lxml, typed as ElementTree's
        if not (el.text or "").strip() and el.get(_XSI_NIL) is None and parent is not None:
            parent.remove(el)
    return etree.tostring(tree, encoding="UTF-8", xml_declaration=True)


_XML_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@overload
def _xml_text(value: str) -> str: ...


@overload
def _xml_text(value: None) -> None: ...


@overload
def _xml_text(value: str | None) -> str | None: ...


def _xml_text(value: str | None) -> str | None:
    """Text XML 1.0 can carry: control characters become spaces."""
    return None if value is None else _XML_BAD_CHARS.sub(" ", value)


def parameters_model(job: Job, job_url: str) -> _Parameters:
    params = [
        Parameter(id=_xml_text(name), value=_xml_text(value))
        for name, value in job.parameters.items()
    ]
    taken = {name.upper() for name in job.parameters}
    for part in job.files:
        if part.upper() not in taken:  # a part named like a parameter is not listed twice
            taken.add(part.upper())
            href = f"{job_url}/uploads/{quote(part, safe='')}"
            params.append(Parameter(id=_xml_text(part), value=href, by_reference=True))
    return _Parameters(parameter=params)


def results_model(job: Job, job_url: str) -> Results:
    return Results(
        results=[
            ResultReference(
                id=r.id,
                href=f"{job_url}/results/{quote(r.id, safe='')}",
                size=r.size,
                mime_type=r.media_type,
            )
            for r in job.results
        ]
    )


def job_xml(job: Job, job_url: str) -> bytes:
    """The UWS 1.1 job document (``version="1.1"``)."""
    error = None
    if job.error_message and job.phase in (ERROR, ABORTED):
        error = ErrorSummary.model_validate(
            dict(message=_xml_text(job.error_message), type=job.error_type, has_detail=True)
        )
    # model_validate: the times go in as the ISO strings UWS shows, the phase as its name;
    # pydantic parses them as the constructor would (whose signature wants the parsed types)
    doc = _JobDocument.model_validate(
        dict(
            job_id=job.job_id,
            run_id=_xml_text(job.run_id),
            owner_id=_xml_text(job.owner),
            phase=job.phase,
            quote=iso_time(job.quote) or None,
            creation_time=iso_time(job.creation_time),
            start_time=iso_time(job.start_time) or None,
            end_time=iso_time(job.end_time) or None,
            execution_duration=job.execution_duration,
            destruction=iso_time(job.destruction),
            parameters=parameters_model(job, job_url),
            results=results_model(job, job_url),
            error_summary=error,
        )
    )
    return serialize(doc)


def jobs_xml(jobs: Iterable[Job], jobs_url: str) -> bytes:
    """The UWS 1.1 job list."""
    base = jobs_url.rstrip("/")
    refs = [
        ShortJobDescription.model_validate(
            dict(
                job_id=job.job_id,
                href=f"{base}/{job.job_id}",
                phase=job.phase,
                run_id=_xml_text(job.run_id),
                owner_id=_xml_text(job.owner),
                creation_time=iso_time(job.creation_time),
            )
        )
        for job in jobs
    ]
    return serialize(Jobs(jobref=refs))
