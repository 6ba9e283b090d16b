"""The operator's configuration file: ``romerea-vo serve --config service.toml``.

The file's keys, types and defaults (`romerea_vo.service.settings`), the sample in
``services/service.toml``, one-line errors before start-up, and a real service started
from a file that enforces its limits over HTTP (MAXREC, upload size, execution duration)
while command-line options override the file.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
from astropy.io.votable import parse_single_table

from romerea_vo.service.settings import (
    ConfigError,
    ServerSettings,
    ServiceConfig,
    Settings,
    read_settings,
    settings_from_dict,
    settings_toml,
)
from romerea_vo.service.tap import TapLimits

SAMPLE = Path(__file__).resolve().parents[1] / "services" / "service.toml"
SLOW = (
    "SELECT COUNT(*) AS n FROM rome.field_index AS a1, rome.field_index AS a2, "
    "rome.field_index AS a3 WHERE SIN(a1.ra * a2.dec * a3.ra) > 2"
)


def test_sample_file_lists_every_key_with_its_default():
    assert read_settings(SAMPLE) == Settings()
    text = SAMPLE.read_text()
    defaults = Settings()
    for section in ("service", "metadata", "limits"):
        assert f"[{section}]" in text
        for f in dataclasses.fields(getattr(defaults, section)):
            assert f"\n{f.name} = " in text, f"services/service.toml lacks [{section}] {f.name}"


def test_settings_round_trip_through_toml(tmp_path):
    settings = Settings()
    settings.service.db = "/data/rome.duckdb"
    settings.service.public_url = 'https://vo.example.org/"rome"'
    settings.metadata.description = "line one\nline two, ünïcode"
    settings.limits = dataclasses.replace(
        settings.limits, hard_maxrec=1234567, remote_uploads=False
    )
    path = tmp_path / "s.toml"
    path.write_text(settings_toml(settings))
    assert read_settings(path) == settings
    config = ServiceConfig.from_settings(read_settings(path))
    assert config.db_path == Path("/data/rome.duckdb")
    assert config.limits.hard_maxrec == 1234567
    assert config.to_settings().limits == settings.limits


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\nmaxrec = 5\n", "unknown key 'maxrec' in [limits] (did you mean"),
        ("[limit]\nhard_maxrec = 5\n", "unknown table [limit] (did you mean 'limits'?)"),
        ("[limits]\nhard_maxrec = '5'\n", "[limits] hard_maxrec must be an integer, not '5'"),
        ("[limits]\nremote_uploads = 1\n", "[limits] remote_uploads must be true/false"),
        ("[limits]\nupload_bytes = -1\n", "[limits] upload_bytes must not be negative"),
        ("[limits]\ndefault_maxrec = 10\nhard_maxrec = 5\n", "default_maxrec must not exceed"),
        ("[service]\nport = 80000\n", "[service] port must be 0-65535, not 80000"),
        ("[service]\nlog_level = 'loud'\n", "[service] log_level must be one of"),
        ("[service]\nworkers = 0\n", "[service] workers must be 1 or more"),
        ("limits = 3\n", "limits must be a table"),
        ("[limits\n", "not valid TOML"),
    ],
)
def test_bad_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_settings(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def _serve(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "romerea_vo.cli", "serve", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def _wait_url(proc: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("TAP service:")]
        if lines:
            return lines[-1].split()[2].removesuffix("/tap")
        time.sleep(0.1)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    raise AssertionError("service did not start:\n" + log.read_text()[-3000:])


@pytest.mark.parametrize(
    ("text", "extra", "message"),
    [
        ("[limits]\nhard_maxrec = 'lots'\n", [], "[limits] hard_maxrec must be an integer"),
        ("[service]\nbogus = 1\n", [], "unknown key 'bogus' in [service]"),
        ("", ["--log-level", "loud"], "command line: [service] log_level must be one of"),
        ("", ["--port", "80000"], "command line: [service] port must be 0-65535"),
    ],
)
def test_serve_refuses_a_bad_configuration_before_it_starts(tap_db, tmp_path, text, extra, message):
    path = tmp_path / "service.toml"
    path.write_text(text)
    r = subprocess.run(
        [sys.executable, "-m", "romerea_vo.cli", "serve", "--config", str(path),
         "--db", str(tap_db), "--port", "0", *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode != 0
    assert r.stderr.startswith("romerea-vo: error: ")
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "TAP service:" not in r.stdout


@pytest.fixture(scope="module")
def configured_service(tap_db, tmp_path_factory):
    """A service whose limits come from a file; --port on the command line overrides
    the file's port (1, which it could not bind)."""
    root = tmp_path_factory.mktemp("configured")
    config = root / "service.toml"
    config.write_text(
        f"""[service]
db = "{tap_db}"
port = 1
work_dir = "{root / "work"}"
log_level = "info"

[metadata]
title = "Configured ROME service"
contact_name = "Rome Operator"
contact_email = "ops@example.org"

[limits]
default_maxrec = 5
hard_maxrec = 12
sync_execution_duration = 1
upload_bytes = 4000
"""
    )
    log = root / "service.log"
    proc = _serve(["--config", str(config), "--port", "0"], log)
    try:
        yield _wait_url(proc, log), log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


def _sync(url: str, **params) -> httpx.Response:
    data = {"REQUEST": "doQuery", "LANG": "ADQL", **params}
    return httpx.post(f"{url}/tap/sync", data=data, timeout=120)


def _overflowed(table) -> bool:
    return any(
        info.name == "QUERY_STATUS" and info.value == "OVERFLOW"
        for info in table._votable.resources[0].infos
    )


def test_configured_maxrec(configured_service, tmp_path):
    url, _ = configured_service
    query = "SELECT field, field_id FROM rome.field_index"
    for maxrec, expected in ((None, 5), ("100", 12), ("3", 3)):
        params = {"QUERY": query} | ({"MAXREC": maxrec} if maxrec else {})
        r = _sync(url, **params)
        assert r.status_code == 200, r.text
        path = tmp_path / "r.vot"
        path.write_bytes(r.content)
        table = parse_single_table(str(path))
        assert len(table.array) == expected
        assert _overflowed(table)
    caps = ElementTree.fromstring(httpx.get(f"{url}/tap/capabilities", timeout=120).content)
    limits = {
        (el.tag.split("}")[-1], child.tag.split("}")[-1]): child.text
        for el in caps.iter()
        if el.tag.split("}")[-1] in ("outputLimit", "executionDuration")
        for child in el
    }
    assert limits[("outputLimit", "default")] == "5"
    assert limits[("outputLimit", "hard")] == "12"


def test_configured_upload_size(configured_service):
    url, _ = configured_service
    rows = "".join(f"<TR><TD>{i}</TD></TR>" for i in range(1000))
    body = (
        '<?xml version="1.0"?><VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">'
        '<RESOURCE><TABLE><FIELD name="n" datatype="int"/><DATA><TABLEDATA>'
        f"{rows}</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>"
    )
    r = httpx.post(
        f"{url}/tap/sync",
        data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": "SELECT COUNT(*) FROM TAP_UPLOAD.t",
              "UPLOAD": "t,param:t"},
        files={"t": ("t.vot", body.encode(), "application/x-votable+xml")},
        timeout=120,
    )  # fmt: skip
    assert r.status_code in (400, 413), r.text
    assert "exceeds the 4.0 kB limit on uploaded tables" in r.text, r.text


def test_configured_execution_duration(configured_service):
    url, _ = configured_service
    r = _sync(url, QUERY=SLOW)
    assert r.status_code == 400, r.text
    assert "exceeded the execution duration of 1 s" in r.text


def test_configured_metadata_on_landing_page(configured_service):
    url, _ = configured_service
    page = httpx.get(url + "/", timeout=120).text
    assert "<h1>Configured ROME service</h1>" in page
    assert 'href="mailto:ops@example.org">Rome Operator</a>' in page


def test_settings_already_read_check_again_with_overrides():
    """``serve`` checks the file's values merged with its flags again: array settings come
    back as tuples then (this once refused every [limits] flag)."""
    limits = dataclasses.asdict(TapLimits(remote_upload_allowed_hosts=("a:1",)))
    limits["query_slots"] = 3
    service = {**dataclasses.asdict(ServerSettings(allowed_hosts=("vo.example.org",)))}
    checked = settings_from_dict({"limits": limits, "service": service}, source="command line")
    assert checked.limits.query_slots == 3
    assert checked.limits.remote_upload_allowed_hosts == ("a:1",)
    assert checked.service.allowed_hosts == ("vo.example.org",)
