"""TOPCAT (Debian package, under Xvfb) loads a lightcurve from our service over SAMP.

A real SAMP hub (pyvo's) on loopback, TOPCAT started with ``-samp -nohub``, and a pyvo
SAMP client in the test sending ``table.load.votable`` with the lightcurve URL; TOPCAT's
own ``table.get.stil`` then hands back what it loaded, whose rows we count.
"""

from __future__ import annotations

import io
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from astropy.io.votable import parse_single_table

TOPCAT_JAR = Path("/usr/share/java/starlink-topcat.jar")
needs_topcat = pytest.mark.skipif(
    not (TOPCAT_JAR.exists() and shutil.which("Xvfb") and shutil.which("java")),
    reason="TOPCAT and Xvfb not installed (apt-get install topcat xvfb)",
)


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def count_rows(url: str) -> int:
    with urllib.request.urlopen(url, timeout=60) as resp:
        data = resp.read()
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"romerea-count-{os.getpid()}.vot"
    path.write_bytes(data)
    try:
        return len(parse_single_table(str(path)).array)
    finally:
        path.unlink()


def load_in_topcat(topcat, url: str, name: str, mtype: str = "table.load.votable", **params):
    """Make TOPCAT load ``url`` as a table labelled ``name`` (as a SAMP sender would);
    ``table_id=`` becomes the ``table-id`` parameter."""
    extra = {k.replace("_", "-"): v for k, v in params.items()}
    message = {"samp.mtype": mtype, "samp.params": {"url": url, "name": name, **extra}}
    reply = topcat.client.call_and_wait(topcat.topcat_id, message, "120")
    assert reply["samp.status"] == "samp.ok", reply


@needs_topcat
def test_topcat_loads_a_lightcurve_over_samp(topcat, tap_server):
    client, topcat_id = topcat.client, topcat.topcat_id
    url = f"{tap_server}/lightcurve?ID=ivo://romerea-vo.local/rome?ROME-FIELD-01/3"
    expected = count_rows(url)
    assert expected > 10
    load_in_topcat(topcat, url, "ROME-FIELD-01 3 lc", table_id="rome-lc-3")

    def loaded():
        # TOPCAT answers samp.ok before the table is in its list (see vo_clients gotchas)
        r = client.call_and_wait(
            topcat_id,
            {"samp.mtype": "table.get.stil",
             "samp.params": {"format": "votable", "index": "0"}},
            "60",
        )  # fmt: skip
        return r.get("samp.result", {}).get("url") if r["samp.status"] == "samp.ok" else None

    held = _wait(loaded, 120, "TOPCAT to hold the table")
    assert count_rows(held) == expected


@needs_topcat
def test_topcat_invoke_service_loads_the_rows_lightcurve(topcat, tap_server):
    """The one-click lightcurve as a TOPCAT user gets it: a TAP result with DIDs loaded,
    Activation Actions → Invoke Service → Load Table with the service TOPCAT offers
    first, a row clicked; TOPCAT loads that star's lightcurve, every band's good points."""
    import json
    from urllib.parse import urlencode

    from .conftest import topcat_command

    if topcat.activation_port is None:
        pytest.skip("no javac: TOPCAT's activation control port could not be built")
    port = topcat.activation_port
    field_id = 7
    adql = (
        "SELECT field_id, ra, dec, did FROM rome.field_index "
        f"WHERE field = 'ROME-FIELD-01' AND field_id BETWEEN {field_id - 2} AND {field_id + 2} "
        "ORDER BY field_id"
    )
    url = f"{tap_server}/tap/sync?" + urlencode({"LANG": "ADQL", "QUERY": adql})
    before = {t["id"] for t in topcat_command(port, "tables")["tables"]}
    load_in_topcat(topcat, url, "stars with DIDs")

    def new_tables() -> list[dict]:
        return [t for t in topcat_command(port, "tables")["tables"] if t["id"] not in before]

    (stars,) = _wait(new_tables, 60, "TOPCAT to list the TAP result")
    state = topcat_command(port, f"invoke-service {stars['id']} Load Table")
    assert state["ok"], state
    (service,) = [
        s for s in state["state"] if s["_ActivationType"].endswith(".ServiceActivationType")
    ]
    assert service["service"] == "lightcurve", json.dumps(service)  # our descriptor, first
    assert service["action"] == "Load Table" and service["_isActive"] == "true"
    seen = {t["id"] for t in topcat_command(port, "tables")["tables"]}
    assert topcat_command(port, f"activate {stars['id']} 2")["ok"]  # the row of field_id 7

    def loaded() -> list[dict]:
        return [t for t in topcat_command(port, "tables")["tables"] if t["id"] not in seen]

    (lightcurve,) = _wait(loaded, 120, "TOPCAT to load the invoked lightcurve")
    did = f"ivo://romerea-vo.local/rome?ROME-FIELD-01/{field_id}"
    expected = parse_single_table(
        io.BytesIO(urllib.request.urlopen(
            f"{tap_server}/lightcurve?" + urlencode({"ID": did}), timeout=60).read())
    ).to_table()  # fmt: skip
    assert len(expected) > 10 and set(expected["filter"]) >= {"ip"}
    assert lightcurve["rows"] == len(expected)
    assert lightcurve["columns"][:2] == ["hjd", "filter"]
