"""``/oai``: an OAI-PMH 2.0 interface, so that the service is its own publishing registry.

It serves the service's ``vs:CatalogService`` record, its authority's ``vg:Authority``
and its own ``vg:Registry`` record (`romerea_vo.service.registry`), in the ``ivo_vor``
and ``oai_dc`` formats, all in the ``ivo_managed`` set, with no deleted records and no
resumption tokens (three records fit in one answer). Errors are OAI-PMH ``<error>``
elements with HTTP 200, as the protocol wants; a registry harvests it like a DaCHS one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from lxml import etree
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .registry import NS as VO_NS

__all__ = ["OaiPmh", "OaiRecord"]

OAI = "http://www.openarchives.org/OAI/2.0/"
OAI_DC = "http://www.openarchives.org/OAI/2.0/oai_dc/"
DC = "http://purl.org/dc/elements/1.1/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
FORMATS = {
    "ivo_vor": ("http://www.ivoa.net/xml/RegistryInterface/v1.0",
                "http://www.ivoa.net/xml/RegistryInterface/v1.0"),
    "oai_dc": ("http://www.openarchives.org/OAI/2.0/oai_dc.xsd", OAI_DC),
}  # fmt: skip
"""metadataPrefix: (schema, namespace)."""
SET = "ivo_managed"
_MAX_BODY = 65536
_ARGUMENTS = {
    "Identify": (set(), set()),
    "ListMetadataFormats": (set(), {"identifier"}),
    "ListSets": (set(), {"resumptionToken"}),
    "ListIdentifiers": ({"metadataPrefix"}, {"from", "until", "set", "resumptionToken"}),
    "ListRecords": ({"metadataPrefix"}, {"from", "until", "set", "resumptionToken"}),
    "GetRecord": ({"identifier", "metadataPrefix"}, set()),
}
"""verb: (required, optional) arguments."""


@dataclass(frozen=True)
class OaiRecord:
    """One record: its IVOID, last change and ``ri:Resource`` element."""

    identifier: str
    datestamp: datetime
    resource: etree._Element


class _OaiError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_stamp(text: str, name: str, end: bool) -> datetime:
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            return day.replace(hour=23, minute=59, second=59) if end else day
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise _OaiError("badArgument", f"{name}={text!r} is not YYYY-MM-DD[Thh:mm:ssZ]") from None


class OaiPmh:
    """The OAI-PMH endpoint over ``records(root_url)`` (blocking: run in a thread)."""

    def __init__(
        self,
        records: Callable[[str], list[OaiRecord]],
        *,
        repository_name: str,
        admin_email: str,
        root_url: Callable[[Request], str],
    ):
        self.records = records
        self.repository_name = repository_name
        self.admin_email = admin_email
        self.root_url = root_url

    async def endpoint(self, request: Request) -> Response:
        """``GET|POST /oai?verb=...``."""
        root = self.root_url(request)
        raw: dict[str, list[str]] = {}
        problem = None
        items = list(request.query_params.multi_items())
        if request.method == "POST":
            length = request.headers.get("content-length", "")
            if not (length.isascii() and length.isdigit()) or int(length) > _MAX_BODY:
                problem = f"a POST body needs a Content-Length of at most {_MAX_BODY} bytes"
            else:
                try:  # OAI-PMH arguments are case-sensitive: not read as DALI parameters
                    form = await request.form(max_files=0, max_fields=50)
                    items += [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
                except Exception as exc:
                    problem = f"unreadable request body: {exc}"
        for name, value in items:
            raw.setdefault(name, []).append(value)
        body = await run_in_threadpool(self._answer, root, raw, problem)
        return Response(body, media_type="text/xml; charset=utf-8")

    def _answer(self, root: str, raw: dict[str, list[str]], problem: str | None) -> bytes:
        # OAI-PMH elements take a prefix, not the default namespace: the VOResource
        # records inside have unqualified children, which a default namespace would claim
        envelope = etree.Element(f"{{{OAI}}}OAI-PMH", nsmap={"oai": OAI, "xsi": XSI})
        envelope.set(
            f"{{{XSI}}}schemaLocation", f"{OAI} http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd"
        )
        etree.SubElement(envelope, f"{{{OAI}}}responseDate").text = _stamp(datetime.now(UTC))
        request = etree.SubElement(envelope, f"{{{OAI}}}request")
        request.text = f"{root}/oai"
        try:
            if problem is not None:
                raise _OaiError("badArgument", problem)
            args = self._arguments(raw)
            verb = args.pop("verb")
            for name, value in [("verb", verb), *args.items()]:
                request.set(name, value)
            records = self.records(root)
            getattr(self, f"_{verb}")(envelope, root, args, records)
        except _OaiError as exc:
            error = etree.SubElement(envelope, f"{{{OAI}}}error", code=exc.code)
            error.text = str(exc)
        return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")

    @staticmethod
    def _arguments(raw: dict[str, list[str]]) -> dict[str, str]:
        verbs = raw.get("verb", [])
        if len(verbs) != 1 or verbs[0] not in _ARGUMENTS:
            shown = verbs[0][:40] if verbs else "none"
            raise _OaiError("badVerb", f"verb {shown!r}: give one of {', '.join(_ARGUMENTS)}")
        verb = verbs[0]
        required, optional = _ARGUMENTS[verb]
        args: dict[str, str] = {"verb": verb}
        for name, values in raw.items():
            if name == "verb":
                continue
            if name not in required | optional:
                raise _OaiError("badArgument", f"{verb} takes no argument {name[:40]!r}")
            if len(values) != 1:
                raise _OaiError("badArgument", f"argument {name!r} given {len(values)} times")
            args[name] = values[0]
        missing = required - set(args)
        if missing:
            raise _OaiError("badArgument", f"{verb} needs {', '.join(sorted(missing))}")
        if "resumptionToken" in args:
            raise _OaiError("badResumptionToken", "this repository issues no resumption tokens")
        return args

    # --- verbs (each method is named after the OAI-PMH verb it answers) --------------

    def _Identify(self, envelope, root, args, records) -> None:
        identify = etree.SubElement(envelope, f"{{{OAI}}}Identify")
        for tag, text in [
            ("repositoryName", self.repository_name),
            ("baseURL", f"{root}/oai"),
            ("protocolVersion", "2.0"),
            ("adminEmail", self.admin_email),
            ("earliestDatestamp", _stamp(min(r.datestamp for r in records))),
            ("deletedRecord", "no"),
            ("granularity", "YYYY-MM-DDThh:mm:ssZ"),
        ]:
            etree.SubElement(identify, f"{{{OAI}}}{tag}").text = text
        registry = next(r for r in records if r.resource.get(f"{{{XSI}}}type") == "vg:Registry")
        etree.SubElement(identify, f"{{{OAI}}}description").append(_copy(registry.resource))

    def _ListMetadataFormats(self, envelope, root, args, records) -> None:
        if "identifier" in args:
            self._find(records, args["identifier"])
        formats = etree.SubElement(envelope, f"{{{OAI}}}ListMetadataFormats")
        for prefix, (schema, namespace) in FORMATS.items():
            entry = etree.SubElement(formats, f"{{{OAI}}}metadataFormat")
            etree.SubElement(entry, f"{{{OAI}}}metadataPrefix").text = prefix
            etree.SubElement(entry, f"{{{OAI}}}schema").text = schema
            etree.SubElement(entry, f"{{{OAI}}}metadataNamespace").text = namespace

    def _ListSets(self, envelope, root, args, records) -> None:
        sets = etree.SubElement(envelope, f"{{{OAI}}}ListSets")
        entry = etree.SubElement(sets, f"{{{OAI}}}set")
        etree.SubElement(entry, f"{{{OAI}}}setSpec").text = SET
        etree.SubElement(entry, f"{{{OAI}}}setName").text = "Resources managed by this registry"

    def _ListIdentifiers(self, envelope, root, args, records) -> None:
        listing = etree.SubElement(envelope, f"{{{OAI}}}ListIdentifiers")
        for record in self._select(records, args):
            listing.append(self._header(record))

    def _ListRecords(self, envelope, root, args, records) -> None:
        listing = etree.SubElement(envelope, f"{{{OAI}}}ListRecords")
        for record in self._select(records, args):
            listing.append(self._record(record, args["metadataPrefix"]))

    def _GetRecord(self, envelope, root, args, records) -> None:
        self._format(args["metadataPrefix"])
        record = self._find(records, args["identifier"])
        get = etree.SubElement(envelope, f"{{{OAI}}}GetRecord")
        get.append(self._record(record, args["metadataPrefix"]))

    # --- helpers --------------------------------------------------------------------

    @staticmethod
    def _format(prefix: str) -> None:
        if prefix not in FORMATS:
            raise _OaiError(
                "cannotDisseminateFormat",
                f"metadataPrefix {prefix[:40]!r}: give {' or '.join(FORMATS)}",
            )

    @staticmethod
    def _find(records: list[OaiRecord], identifier: str) -> OaiRecord:
        for record in records:
            if record.identifier.lower() == identifier.lower():  # IVOIDs: case-insensitive
                return record
        raise _OaiError("idDoesNotExist", f"no record {identifier[:200]!r} here")

    def _select(self, records: list[OaiRecord], args: dict[str, str]) -> list[OaiRecord]:
        self._format(args["metadataPrefix"])
        if args.get("set", SET) != SET:
            raise _OaiError("noRecordsMatch", f"no set {args['set'][:40]!r}: only {SET}")
        start = _parse_stamp(args["from"], "from", False) if "from" in args else None
        end = _parse_stamp(args["until"], "until", True) if "until" in args else None
        chosen = [
            r
            for r in records
            if (start is None or r.datestamp >= start) and (end is None or r.datestamp <= end)
        ]
        if not chosen:
            raise _OaiError("noRecordsMatch", "no record changed in that time")
        return chosen

    @staticmethod
    def _header(record: OaiRecord) -> etree._Element:
        header = etree.Element(f"{{{OAI}}}header")
        etree.SubElement(header, f"{{{OAI}}}identifier").text = record.identifier
        etree.SubElement(header, f"{{{OAI}}}datestamp").text = _stamp(record.datestamp)
        etree.SubElement(header, f"{{{OAI}}}setSpec").text = SET
        return header

    def _record(self, record: OaiRecord, prefix: str) -> etree._Element:
        element = etree.Element(f"{{{OAI}}}record")
        element.append(self._header(record))
        metadata = etree.SubElement(element, f"{{{OAI}}}metadata")
        if prefix == "ivo_vor":
            metadata.append(_copy(record.resource))
        else:
            metadata.append(_dublin_core(record))
        return element


def _copy(resource: etree._Element) -> etree._Element:
    """A copy of a record, keeping the prefixes its xsi:type values name."""
    return etree.fromstring(etree.tostring(resource))


def _dublin_core(record: OaiRecord) -> etree._Element:
    resource = record.resource
    dc = etree.Element(f"{{{OAI_DC}}}dc", nsmap={"oai_dc": OAI_DC, "dc": DC, "xsi": XSI})
    dc.set(f"{{{XSI}}}schemaLocation", f"{OAI_DC} http://www.openarchives.org/OAI/2.0/oai_dc.xsd")

    def add(tag: str, text: str | None) -> None:
        if text:
            etree.SubElement(dc, f"{{{DC}}}{tag}").text = text

    add("title", resource.findtext("title"))
    add("identifier", record.identifier)
    for subject in resource.iterfind("content/subject"):
        add("subject", subject.text)
    add("description", resource.findtext("content/description"))
    add("publisher", resource.findtext("curation/publisher"))
    add("date", _stamp(record.datestamp)[:10])
    add("type", (resource.get(f"{{{VO_NS['xsi']}}}type") or "").partition(":")[2])
    return dc
