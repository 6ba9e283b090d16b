"""Issue 18 item 3: the VOResource record (`romerea-vo registry-record`) validated against
the IVOA schemas, and the OAI-PMH interface that makes the service its own registry."""

from __future__ import annotations

import glob
import re
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import astropy.units as u
import httpx
import pytest
from astropy.coordinates import Latitude, Longitude
from lxml import etree
from mocpy import MOC

OAI = "{http://www.openarchives.org/OAI/2.0/}"
RI = "http://www.ivoa.net/xml/RegistryInterface/v1.0"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
PUBLIC = "https://vo.example.org/rome"

# The IVOA schemas STILTS ships (taplint validates capabilities and tables with them), and
# where the schemas that import them expect to find them.
SCHEMAS = {
    "VOResource-v1.1.xsd": ("http://www.ivoa.net/xml/VOResource/v1.0",),
    "VODataService-v1.2.xsd": (),
    "TAPRegExt-v1.0-Erratum1.xsd": (),
    "stc-v1.30.xsd": ("http://www.ivoa.net/xml/STC/stc-v1.30.xsd",),
    "xlink.xsd": ("http://www.ivoa.net/xml/Xlink/xlink.xsd", "http://www.w3.org/1999/xlink.xsd"),
    "xmlnamespace.xsd": ("http://www.w3.org/2001/xml.xsd",),
}
# RegistryInterface 1.0 declares the root element of a record as this; it is the one piece
# STILTS does not ship.
RI_WRAPPER = f"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
  xmlns:vr="http://www.ivoa.net/xml/VOResource/v1.0" targetNamespace="{RI}">
  <xs:import namespace="http://www.ivoa.net/xml/VOResource/v1.0"
             schemaLocation="VOResource-v1.1.xsd"/>
  <xs:import namespace="http://www.ivoa.net/xml/VODataService/v1.1"
             schemaLocation="VODataService-v1.2.xsd"/>
  <xs:import namespace="http://www.ivoa.net/xml/TAPRegExt/v1.0"
             schemaLocation="TAPRegExt-v1.0-Erratum1.xsd"/>
  <xs:element name="Resource" type="vr:Resource"/>
</xs:schema>"""


@pytest.fixture(scope="module")
def record_schema(tmp_path_factory) -> etree.XMLSchema:
    jars = sorted(glob.glob("/usr/share/java/starlink-ttools*.jar"))
    if not jars:
        pytest.skip("STILTS (starlink-ttools.jar) is not installed: apt-get install stilts")
    directory = tmp_path_factory.mktemp("xsd")
    with zipfile.ZipFile(jars[0]) as jar:
        for name in SCHEMAS:
            text = jar.read(f"uk/ac/starlink/ttools/taplint/{name}").decode()
            for local in SCHEMAS:  # every import to the local copy
                for url in SCHEMAS[local]:
                    text = text.replace(f'schemaLocation="{url}"', f'schemaLocation="{local}"')
            text = re.sub(
                r'schemaLocation="http://www\.ivoa\.net/xml/VOResource/[^"]*"',
                'schemaLocation="VOResource-v1.1.xsd"',
                text,
            )
            (directory / name).write_text(text)
    (directory / "RegistryInterface.xsd").write_text(RI_WRAPPER)
    return etree.XMLSchema(etree.parse(str(directory / "RegistryInterface.xsd")))


def registry_record(tmp_path: Path, db, *extra: str) -> subprocess.CompletedProcess:
    out = tmp_path / "record.xml"
    return subprocess.run(
        [sys.executable, "-m", "romerea_vo.cli", "registry-record", "--db", str(db),
         "--public-url", PUBLIC, "-o", str(out), *extra],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def record(tap_db, tmp_path_factory) -> etree._Element:
    directory = tmp_path_factory.mktemp("record")
    result = registry_record(directory, tap_db, "--doi", "10.5281/zenodo.123")
    assert result.returncode == 0, result.stderr
    return etree.parse(str(directory / "record.xml")).getroot()


def test_the_record_validates_against_the_ivoa_schemas(record, record_schema):
    if not record_schema.validate(record):
        raise AssertionError("\n".join(str(e) for e in record_schema.error_log))
    assert record.get(XSI_TYPE) == "vs:CatalogService"
    assert record.findtext("identifier") == "ivo://romerea-vo.local/rome/tap"
    assert record.findtext("altIdentifier") == "doi:10.5281/zenodo.123"


def test_the_record_names_every_capability(record):
    standards = {c.get("standardID"): c for c in record.iterfind("capability")}
    assert {"ivo://ivoa.net/std/TAP", "ivo://ivoa.net/std/ConeSearch"} <= set(standards)
    assert any(s.startswith("ivo://ivoa.net/std/DataLink") for s in standards)
    for capability in standards.values():
        for url in capability.iterfind("interface/accessURL"):
            assert url.text.startswith(PUBLIC), url.text


def test_the_tableset_is_what_the_service_serves(record, tap_server):
    served = etree.fromstring(httpx.get(f"{tap_server}/tap/tables", timeout=120).content)

    def tables(root) -> list[str]:
        return [etree.tostring(t, method="c14n") for t in root.iter("table")]

    mine = tables(record.find("tableset"))
    assert mine and [_strip_ns(t) for t in mine] == [_strip_ns(t) for t in tables(served)]


def _strip_ns(text: bytes) -> bytes:
    return re.sub(rb' xmlns(:\w+)?="[^"]*"', b"", text)


def test_the_coverage_holds_every_star(record, field_positions):
    coverage = record.find("coverage")
    moc = MOC.from_string(coverage.findtext("spatial"), format="ascii")
    inside = moc.contains_lonlat(
        Longitude(field_positions["ra"] * u.deg), Latitude(field_positions["dec"] * u.deg)
    )
    assert inside.all()
    t_min, t_max = map(float, coverage.findtext("temporal").split())
    assert 50000 < t_min < t_max < 70000  # MJD
    e_min, e_max = map(float, coverage.findtext("spectral").split())
    assert 2e-19 < e_min < e_max < 6e-19  # joules: i' to g'
    assert coverage.findtext("waveband") == "Optical"


def test_the_command_needs_a_public_url(tap_db, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "romerea_vo.cli", "registry-record", "--db", str(tap_db),
         "-o", str(tmp_path / "r.xml")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 1 and out.stderr.startswith("romerea-vo: error: ")
    assert "--public-url" in out.stderr and "Traceback" not in out.stderr


# --- OAI-PMH ------------------------------------------------------------------------------


def oai(url: str, **params) -> etree._Element:
    r = httpx.get(f"{url}/oai", params=params, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml")
    return etree.fromstring(r.content)


def error_code(root) -> str | None:
    error = root.find(f"{OAI}error")
    return None if error is None else error.get("code")


def test_oai_identify_and_formats(tap_server_both, record_schema):
    identify = oai(tap_server_both, verb="Identify").find(f"{OAI}Identify")
    assert identify.findtext(f"{OAI}protocolVersion") == "2.0"
    assert identify.findtext(f"{OAI}baseURL") == f"{tap_server_both}/oai"
    registry = identify.find(f"{OAI}description/{{{RI}}}Resource")
    assert registry.get(XSI_TYPE) == "vg:Registry"
    formats = oai(tap_server_both, verb="ListMetadataFormats")
    prefixes = {p.text for p in formats.iter(f"{OAI}metadataPrefix")}
    assert prefixes == {"ivo_vor", "oai_dc"}
    sets = oai(tap_server_both, verb="ListSets")
    assert [s.text for s in sets.iter(f"{OAI}setSpec")] == ["ivo_managed"]


def test_oai_records(tap_server_both, record_schema):
    listed = oai(tap_server_both, verb="ListIdentifiers", metadataPrefix="ivo_vor")
    identifiers = [i.text for i in listed.iter(f"{OAI}identifier")]
    assert identifiers == [
        "ivo://romerea-vo.local/rome/tap", "ivo://romerea-vo.local",
        "ivo://romerea-vo.local/registry",
    ]  # fmt: skip
    records = oai(tap_server_both, verb="ListRecords", metadataPrefix="ivo_vor")
    resources = list(records.iter(f"{{{RI}}}Resource"))
    assert [r.get(XSI_TYPE) for r in resources] == ["vs:CatalogService", "vg:Authority",
                                                     "vg:Registry"]  # fmt: skip
    service = etree.fromstring(etree.tostring(resources[0]))
    assert record_schema.validate(service), record_schema.error_log
    one = oai(tap_server_both, verb="GetRecord", metadataPrefix="oai_dc",
              identifier="IVO://romerea-vo.local/rome/tap")  # fmt: skip
    dc = "{http://purl.org/dc/elements/1.1/}"
    assert one.findtext(f".//{dc}title") == "ROME/REA field data products"
    assert "Gravitational microlensing" in [s.text for s in one.iter(f"{dc}subject")]


def test_oai_errors(tap_server_both):
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    cases = [
        ({"verb": "Explode"}, "badVerb"),
        ({}, "badVerb"),
        ({"verb": "ListRecords"}, "badArgument"),
        ({"verb": "Identify", "extra": "1"}, "badArgument"),
        ({"verb": "ListRecords", "metadataPrefix": "marc"}, "cannotDisseminateFormat"),
        ({"verb": "GetRecord", "metadataPrefix": "ivo_vor", "identifier": "ivo://x/y"},
         "idDoesNotExist"),
        ({"verb": "ListRecords", "metadataPrefix": "ivo_vor", "from": tomorrow},
         "noRecordsMatch"),
        ({"verb": "ListRecords", "metadataPrefix": "ivo_vor", "from": "yesterday"},
         "badArgument"),
        ({"verb": "ListSets", "resumptionToken": "x"}, "badResumptionToken"),
    ]  # fmt: skip
    for params, code in cases:
        assert error_code(oai(tap_server_both, **params)) == code, params
    r = httpx.post(f"{tap_server_both}/oai", data={"verb": "Identify"}, timeout=120)
    assert error_code(etree.fromstring(r.content)) is None
