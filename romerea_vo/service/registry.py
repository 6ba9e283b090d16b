"""The service's VOResource record, and the records that make it its own registry.

`resource_record` describes the service as a ``vs:CatalogService`` (VOResource 1.1,
VODataService 1.2): curation and content from the configuration's ``[metadata]``, the
capabilities and the tableset exactly as ``/tap/capabilities`` and ``/tap/tables``
serve them, and the coverage (MOC, first and last epoch, g'–i'). `authority_record` and
`registry_record` are the ``vg:Authority`` and ``vg:Registry`` records an OAI-PMH
publishing registry (`romerea_vo.service.oai`) serves beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from lxml import etree

from ..store.coverage import Coverage
from .settings import ServiceMetadata

__all__ = [
    "NS",
    "RegistryIdentity",
    "authority_record",
    "registry_record",
    "resource_record",
]

NS = {
    "ri": "http://www.ivoa.net/xml/RegistryInterface/v1.0",
    "vr": "http://www.ivoa.net/xml/VOResource/v1.0",
    "vs": "http://www.ivoa.net/xml/VODataService/v1.1",
    "tr": "http://www.ivoa.net/xml/TAPRegExt/v1.0",
    "vg": "http://www.ivoa.net/xml/VORegistry/v1.0",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}
_XSI_TYPE = f"{{{NS['xsi']}}}type"
_PLANCK_TIMES_C = 6.62607015e-34 * 299792458.0  # h·c, J·m: wavelength to photon energy
REGISTRY_MOC_ORDER = 10
"""Order of the MOC in the record (3.4′ cells): fine enough for a field 26′ across, small
enough for a registry."""
SUBJECTS = (
    "Gravitational microlensing",
    "Time domain astronomy",
    "Variable stars",
    "Galactic bulge",
    "Photometry",
)
"""Unified Astronomy Thesaurus terms."""


@dataclass(frozen=True)
class RegistryIdentity:
    """Who the service is in the registry: ``ivo://<authority>/<key>`` identifiers."""

    authority: str
    """The authority's IVOID, ``ivo://host``."""
    resource_key: str
    """The path of the service's identifier below the authority, e.g. ``rome/tap``."""

    @classmethod
    def from_did_authority(cls, did_authority: str) -> RegistryIdentity:
        """From the DID authority the fields were ingested with (``ivo://host/path``): the
        service is ``ivo://host/path/tap``."""
        parts = urlsplit(did_authority)
        key = "/".join(p for p in (parts.path.strip("/"), "tap") if p)
        return cls(f"ivo://{parts.netloc}", key)

    @property
    def service_id(self) -> str:
        return f"{self.authority}/{self.resource_key}"

    @property
    def registry_id(self) -> str:
        return f"{self.authority}/registry"


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str):
    element = etree.SubElement(parent, tag, {k.replace("_", "-"): v for k, v in attrib.items()})
    if text is not None:
        element.text = text
    return element


def _resource(xsi_type: str, title: str, identifier: str, when: datetime) -> etree._Element:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    root = etree.Element(f"{{{NS['ri']}}}Resource", nsmap=NS)
    root.set(_XSI_TYPE, xsi_type)
    root.set("created", stamp)
    root.set("updated", stamp)
    root.set("status", "active")
    _sub(root, "title", title)
    _sub(root, "identifier", identifier)
    return root


def _curation(root: etree._Element, metadata: ServiceMetadata, when: datetime) -> None:
    curation = _sub(root, "curation")
    _sub(curation, "publisher", metadata.contact_name or metadata.title)
    _sub(curation, "creator").append(_named("name", "ROME/REA team"))
    _sub(curation, "date", when.strftime("%Y-%m-%d"), role="updated")
    contact = _sub(curation, "contact")
    _sub(contact, "name", metadata.contact_name or "the operator of this service")
    if metadata.contact_email:
        _sub(contact, "email", metadata.contact_email)


def _named(tag: str, text: str) -> etree._Element:
    element = etree.Element(tag)
    element.text = text
    return element


def _content(
    root: etree._Element, description: str, reference_url: str, subjects, types=()
) -> None:
    content = _sub(root, "content")
    for subject in subjects:
        _sub(content, "subject", subject)
    _sub(content, "description", description)
    _sub(content, "referenceURL", reference_url)
    for kind in types:
        _sub(content, "type", kind)
    _sub(content, "contentLevel", "Research")


def resource_record(
    *,
    metadata: ServiceMetadata,
    identity: RegistryIdentity,
    root_url: str,
    capabilities: bytes,
    tableset: bytes,
    coverage: Coverage | None,
    updated: datetime,
    doi: str | None = None,
) -> etree._Element:
    """The service's ``vs:CatalogService`` record (``ri:Resource``).

    ``capabilities`` and ``tableset`` are the service's VOSI documents; their
    ``capability`` and ``schema`` elements are copied into the record unchanged."""
    root = _resource("vs:CatalogService", metadata.title, identity.service_id, updated)
    shortname = etree.Element("shortName")
    shortname.text = "ROME/REA"
    root.insert(1, shortname)
    if doi:
        _sub(root, "altIdentifier", doi if doi.startswith("doi:") else f"doi:{doi}")
    _curation(root, metadata, updated)
    _content(root, metadata.description, f"{root_url}/", SUBJECTS, ("Catalog", "Survey"))
    for capability in etree.fromstring(capabilities):
        root.append(capability)
    _sub(root, "facility", "LCO 1-m telescope network")
    _sub(root, "instrument", "Sinistro")
    if coverage is not None and coverage.fields:
        covered = _sub(root, "coverage")
        moc = coverage.moc.degrade_to_order(REGISTRY_MOC_ORDER)
        _sub(covered, "spatial", " ".join(moc.to_string(format="ascii").split()))
        if coverage.t_min is not None and coverage.t_max is not None:
            _sub(covered, "temporal", f"{coverage.t_min:.5f} {coverage.t_max:.5f}")
        if coverage.em_min is not None and coverage.em_max is not None:
            low, high = _PLANCK_TIMES_C / coverage.em_max, _PLANCK_TIMES_C / coverage.em_min
            _sub(covered, "spectral", f"{low:.6g} {high:.6g}")
        _sub(covered, "waveband", "Optical")
    tables = _sub(root, "tableset")
    for schema in etree.fromstring(tableset):
        tables.append(schema)
    return root


def authority_record(
    *, metadata: ServiceMetadata, identity: RegistryIdentity, root_url: str, updated: datetime
) -> etree._Element:
    """The ``vg:Authority`` record of the service's authority, managed by this registry."""
    root = _resource("vg:Authority", f"The {metadata.title} authority", identity.authority,
                     updated)  # fmt: skip
    _curation(root, metadata, updated)
    _content(
        root,
        f"The naming authority of {metadata.title}: identifiers of its resources.",
        f"{root_url}/",
        ("Virtual observatory",),
    )
    _sub(root, "managingOrg", metadata.contact_name or metadata.title)
    return root


def registry_record(
    *, metadata: ServiceMetadata, identity: RegistryIdentity, root_url: str, updated: datetime
) -> etree._Element:
    """The ``vg:Registry`` record of the service's own OAI-PMH publishing registry."""
    root = _resource("vg:Registry", f"{metadata.title} publishing registry",
                     identity.registry_id, updated)  # fmt: skip
    _curation(root, metadata, updated)
    _content(
        root,
        f"The OAI-PMH publishing registry of {metadata.title}: its own records.",
        f"{root_url}/",
        ("Virtual observatory",),
    )
    capability = _sub(root, "capability", standardID="ivo://ivoa.net/std/Registry")
    capability.set(_XSI_TYPE, "vg:Harvest")
    interface = _sub(capability, "interface", role="std", version="1.0")
    interface.set(_XSI_TYPE, "vg:OAIHTTP")
    _sub(interface, "accessURL", f"{root_url}/oai", use="base")
    _sub(capability, "maxRecords", "100")
    _sub(root, "full", "false")
    _sub(root, "managedAuthority", identity.authority.removeprefix("ivo://"))
    return root
