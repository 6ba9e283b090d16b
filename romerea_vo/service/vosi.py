"""VOSI documents: capabilities (with TAPRegExt), availability and tables.

Built with ElementTree rather than vo-models: vo-models 0.5.4 writes empty attributes
(``xsi:type=""``, ``ivo-id=""``, ``version=""``) and empty elements that the VOSI and
TAPRegExt schemas reject, which STILTS taplint reports as errors.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from ..votable.schema import SCHEMA_DESCRIPTIONS, TableSchema, adql_column_name

NS = {
    "vosi": "http://www.ivoa.net/xml/VOSICapabilities/v1.0",
    "vr": "http://www.ivoa.net/xml/VOResource/v1.0",
    "vs": "http://www.ivoa.net/xml/VODataService/v1.1",
    "tr": "http://www.ivoa.net/xml/TAPRegExt/v1.0",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "avl": "http://www.ivoa.net/xml/VOSIAvailability/v1.0",
    "vtm": "http://www.ivoa.net/xml/VOSITables/v1.0",
}
XSI_TYPE = f"{{{NS['xsi']}}}type"
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

ADQL_GEO = "ivo://ivoa.net/std/TAPRegExt#features-adqlgeo"
ADQL_STRING = "ivo://ivoa.net/std/TAPRegExt#features-adql-string"
ADQL_SETS = "ivo://ivoa.net/std/TAPRegExt#features-adql-sets"
ADQL_COMMON = "ivo://ivoa.net/std/TAPRegExt#features-adql-common-table"
ADQL_OFFSET = "ivo://ivoa.net/std/TAPRegExt#features-adql-offset"
ADQL_TYPE = "ivo://ivoa.net/std/TAPRegExt#features-adql-type"
GEOMETRY_FUNCTIONS = (
    "POINT", "CIRCLE", "BOX", "POLYGON", "CONTAINS", "INTERSECTS", "DISTANCE", "COORD1",
    "COORD2", "COORDSYS", "AREA", "CENTROID",
)  # fmt: skip


@dataclass(frozen=True)
class OutputFormatInfo:
    mime: str
    aliases: tuple[str, ...] = ()
    ivo_id: str | None = None


@dataclass(frozen=True)
class Limits:
    default_maxrec: int
    hard_maxrec: int
    default_execution_duration: int
    hard_execution_duration: int
    default_retention: int
    hard_retention: int
    upload_bytes: int


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib) -> ET.Element:
    el = ET.SubElement(parent, tag, {k: v for k, v in attrib.items() if v is not None})
    if text is not None:
        el.text = text
    return el


def _declare(root: ET.Element, *prefixes: str) -> ET.Element:
    """Declare namespace prefixes used only inside attribute values (xsi:type QNames),
    which ElementTree does not declare by itself."""
    for prefix in prefixes:
        root.set(f"xmlns:{prefix}", NS[prefix])
    return root


def _to_bytes(root: ET.Element) -> bytes:
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _capability(root: ET.Element, standard_id: str, url: str, xsi_type: str | None = None):
    cap = _sub(root, "capability", standardID=standard_id)
    if xsi_type:
        cap.set(XSI_TYPE, xsi_type)
    iface = _sub(cap, "interface", role="std")
    iface.set(XSI_TYPE, "vs:ParamHTTP")
    _sub(iface, "accessURL", url, use="full" if xsi_type is None else "base")
    return cap, iface


OBSCORE_MODEL = ("ObsCore 1.1", "ivo://ivoa.net/std/ObsCore#core-1.1")


def data_models(tables: Sequence) -> list[tuple[str, str]]:
    """The TAPRegExt data models besides TAP_SCHEMA that ``tables`` (TableSchema) implement."""
    names = {t.qualified_name.lower() for t in tables}
    return [OBSCORE_MODEL] if "ivoa.obscore" in names else []


def capabilities_xml(
    base_url: str,
    *,
    output_formats: Sequence[OutputFormatInfo],
    limits: Limits,
    udfs: Sequence[tuple[str, str]] = (),
    extra: Sequence[tuple[str, str]] = (),
    remote_uploads: bool = True,
    data_models: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The VOSI capabilities of the TAP service at ``base_url`` (TAP 1.1, TAPRegExt 1.0).

    ``extra``: further (standardID, access URL) capabilities, e.g. DataLink or SCS;
    ``data_models``: (name, ivo-id) of data models besides TAP_SCHEMA (ObsCore).
    """
    root = _declare(ET.Element(f"{{{NS['vosi']}}}capabilities"), "vr", "vs", "tr")
    tap, iface = _capability(root, "ivo://ivoa.net/std/TAP", base_url, "tr:TableAccess")
    iface.set("version", "1.1")
    _sub(tap, "dataModel", "TAP_SCHEMA 1.1", **{"ivo-id": "ivo://ivoa.net/std/TAP#TAP_SCHEMA-1.1"})
    for name, ivo_id in data_models:
        _sub(tap, "dataModel", name, **{"ivo-id": ivo_id})
    lang = _sub(tap, "language")
    _sub(lang, "name", "ADQL")
    _sub(lang, "version", "2.0", **{"ivo-id": "ivo://ivoa.net/std/ADQL#v2.0"})
    _sub(lang, "version", "2.1", **{"ivo-id": "ivo://ivoa.net/std/ADQL#v2.1"})
    _sub(lang, "description", "ADQL 2.1, translated to SQL for the embedded DuckDB engine.")
    geo = _sub(lang, "languageFeatures", type=ADQL_GEO)
    for name in GEOMETRY_FUNCTIONS:
        _sub(_sub(geo, "feature"), "form", name)
    for ftype, forms in (
        (ADQL_STRING, ("LOWER", "ILIKE", "UPPER")),
        (ADQL_SETS, ("UNION", "EXCEPT", "INTERSECT")),
        (ADQL_COMMON, ("WITH",)),
        (ADQL_OFFSET, ("OFFSET",)),
        (ADQL_TYPE, ("CAST",)),
    ):
        group = _sub(lang, "languageFeatures", type=ftype)
        for form in forms:
            _sub(_sub(group, "feature"), "form", form)
    if udfs:
        group = _sub(lang, "languageFeatures", type="ivo://ivoa.net/std/TAPRegExt#features-udf")
        for form, description in udfs:
            feat = _sub(group, "feature")
            _sub(feat, "form", form)
            _sub(feat, "description", description)
    for fmt in output_formats:
        out = _sub(tap, "outputFormat", **{"ivo-id": fmt.ivo_id})
        _sub(out, "mime", fmt.mime)
        for alias in fmt.aliases:
            _sub(out, "alias", alias)
    _sub(tap, "uploadMethod", **{"ivo-id": "ivo://ivoa.net/std/TAPRegExt#upload-inline"})
    if remote_uploads:
        _sub(tap, "uploadMethod", **{"ivo-id": "ivo://ivoa.net/std/TAPRegExt#upload-http"})
        _sub(tap, "uploadMethod", **{"ivo-id": "ivo://ivoa.net/std/TAPRegExt#upload-https"})
    for tag, default, hard in (
        ("retentionPeriod", limits.default_retention, limits.hard_retention),
        ("executionDuration", limits.default_execution_duration, limits.hard_execution_duration),
    ):
        el = _sub(tap, tag)
        _sub(el, "default", str(default))
        _sub(el, "hard", str(hard))
    out_limit = _sub(tap, "outputLimit")
    _sub(out_limit, "default", str(limits.default_maxrec), unit="row")
    _sub(out_limit, "hard", str(limits.hard_maxrec), unit="row")
    up_limit = _sub(tap, "uploadLimit")
    _sub(up_limit, "hard", str(limits.upload_bytes), unit="byte")
    for standard_id, suffix in (
        ("ivo://ivoa.net/std/VOSI#capabilities", "/capabilities"),
        ("ivo://ivoa.net/std/VOSI#availability", "/availability"),
        ("ivo://ivoa.net/std/VOSI#tables-1.1", "/tables"),
        ("ivo://ivoa.net/std/DALI#examples", "/examples"),
    ):
        _capability(root, standard_id, base_url + suffix)
    for standard_id, url in extra:
        _capability(root, standard_id, url)
    return _to_bytes(root)


def availability_xml(up_since: dt.datetime, note: str) -> bytes:
    root = ET.Element(f"{{{NS['avl']}}}availability")
    _sub(root, f"{{{NS['avl']}}}available", "true")
    _sub(root, f"{{{NS['avl']}}}upSince", up_since.strftime("%Y-%m-%dT%H:%M:%SZ"))
    _sub(root, f"{{{NS['avl']}}}note", note)
    return _to_bytes(root)


def _table_element(parent: ET.Element, table: TableSchema, detail: bool, nrows: int | None):
    el = _sub(parent, "table", type="output" if table.schema == "TAP_SCHEMA" else None)
    _sub(el, "name", table.qualified_name)
    _sub(el, "description", table.description)
    if table.utype:
        _sub(el, "utype", table.utype)
    if nrows is not None:
        _sub(el, "nrows", str(nrows))
    if not detail:
        return el
    for col in table.columns:
        c = _sub(el, "column", std="true" if col.std else None)
        _sub(c, "name", adql_column_name(col.name))
        _sub(c, "description", col.description)
        if col.unit:
            _sub(c, "unit", col.unit)
        if col.ucd:
            _sub(c, "ucd", col.ucd)
        if col.utype:
            _sub(c, "utype", col.utype)
        # VODataService 1.1 (what validators hold) has no xtype element: extendedType
        dtype = _sub(c, "dataType", col.datatype, arraysize=col.arraysize, extendedType=col.xtype)
        dtype.set(XSI_TYPE, "vs:VOTableType")
        for flag, on in (("indexed", col.indexed), ("principal", col.principal)):
            if on:
                _sub(c, "flag", flag)
    for fk in table.foreign_keys:
        f = _sub(el, "foreignKey")
        _sub(f, "targetTable", fk.target)
        for a, b in zip(fk.columns, fk.target_columns, strict=True):
            fc = _sub(f, "fkColumn")
            _sub(fc, "fromColumn", a)
            _sub(fc, "targetColumn", b)
        if fk.description:
            _sub(f, "description", fk.description)
    return el


def tables_xml(
    tables: Sequence[TableSchema], *, detail: bool = True, nrows: dict[str, int] | None = None
) -> bytes:
    """VOSI 1.1 tableset; ``detail=False`` lists tables without columns."""
    root = _declare(ET.Element(f"{{{NS['vtm']}}}tableset"), "vs")
    by_schema: dict[str, list[TableSchema]] = {}
    for t in tables:
        by_schema.setdefault(t.schema or "", []).append(t)
    for schema_name, members in by_schema.items():
        s = _sub(root, "schema")
        _sub(s, "name", schema_name)
        if schema_name in SCHEMA_DESCRIPTIONS:
            _sub(s, "description", SCHEMA_DESCRIPTIONS[schema_name])
        for t in members:
            _table_element(s, t, detail, (nrows or {}).get(t.qualified_name))
    return _to_bytes(root)


def table_xml(table: TableSchema, nrows: int | None = None) -> bytes:
    """VOSI 1.1 single-table document (``/tables/<name>``)."""
    el = _table_element(ET.Element("holder"), table, True, nrows)
    el.tag = f"{{{NS['vtm']}}}table"
    return _to_bytes(_declare(el, "vs"))
