"""Shared fixtures: the pyDANDIA TEST1 files (skipped when absent) and synthetic fields."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from romerea_vo.lightcurves import READ_AHEAD_THREAD

from .pg import pg_cluster_fixture  # noqa: F401 (the session fixture pg_cluster)

REPO = Path(__file__).resolve().parents[1]
PYDANDIA_TEST1 = (
    Path(os.environ.get("ROMEREA_VO_FIXTURES", REPO.parent / "shared" / "fixtures"))
    / "pydandia_TEST1"
)


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file in a directory: proof that reading modified nothing."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def read_ahead_threads() -> list[threading.Thread]:
    """The cube read-ahead threads alive now (none once a pass has ended)."""
    return [t for t in threading.enumerate() if t.name.startswith(READ_AHEAD_THREAD)]


@pytest.fixture(scope="session")
def pydandia_test1() -> Path:
    if not (PYDANDIA_TEST1 / "TEST1_field_crossmatch.fits").exists():
        pytest.skip(f"pyDANDIA TEST1 fixtures not found at {PYDANDIA_TEST1}")
    return PYDANDIA_TEST1


@pytest.fixture(scope="session")
def synthetic_field(tmp_path_factory) -> Path:
    """A small synthetic ROME field, made once per test session."""
    from romerea_vo.products.synthetic import synthesize_field

    out = tmp_path_factory.mktemp("synth") / "ROME-FIELD-01"
    synthesize_field(out, field="ROME-FIELD-01", n_stars=800, n_images=160, seed=7)
    return out


@pytest.fixture(scope="session")
def second_field(tmp_path_factory) -> Path:
    """A second synthetic field, elsewhere on the sky, for multi-field databases."""
    from romerea_vo.products.synthetic import synthesize_field

    out = tmp_path_factory.mktemp("synth2") / "ROME-FIELD-02"
    synthesize_field(out, field="ROME-FIELD-02", n_stars=400, n_images=80, seed=11)
    return out


@pytest.fixture(scope="session")
def tap_db(tmp_path_factory, synthetic_field, second_field) -> Path:
    """A DuckDB database with two synthetic fields (and TEST1 when the fixtures exist)."""
    from romerea_vo.store import ingest_fields

    fields = [synthetic_field, second_field]
    if (PYDANDIA_TEST1 / "TEST1_field_crossmatch.fits").exists():
        fields.append(PYDANDIA_TEST1)
    path = tmp_path_factory.mktemp("db") / "rome.duckdb"
    ingest_fields(path, fields)
    return path


@pytest.fixture(scope="session")
def authority(tap_db) -> str:
    """The publisher DID authority of ``tap_db``."""
    from romerea_vo.store import Database

    db = Database(tap_db)
    try:
        return db.authority
    finally:
        db.close()


class LiveServer:
    """A real uvicorn server on 127.0.0.1 in a background thread."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        import time

        deadline = time.time() + 120  # generous: CI machines may be busy
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture(scope="session")
def tap_work(tmp_path_factory) -> Path:
    """The service's work directory (job store and upload scratch space)."""
    return tmp_path_factory.mktemp("work")


def _test_limits():
    from romerea_vo.service.tap import TapLimits

    # private hosts allowed: the remote-upload test serves its table from loopback
    return TapLimits(
        default_maxrec=5000,
        hard_maxrec=50_000,
        upload_bytes=20 * 2**20,
        remote_upload_private_hosts=True,
        # every test client comes from 127.0.0.1: admission is tested in test_abuse_load
        client_slots=1000,
        query_queue=1000,
    )


@pytest.fixture(scope="session")
def tap_server(tap_db, tap_work):
    """The TAP service over ``tap_db``, served for real on loopback; yields its base URL."""
    from romerea_vo.service.app import ServiceConfig, create_app

    app = create_app(ServiceConfig(db_path=tap_db, work_dir=tap_work, limits=_test_limits()))
    live = LiveServer(app)
    yield live.url
    live.stop()


@pytest.fixture(scope="session")
def pg_tap_db(request, synthetic_field, second_field) -> str:
    """The fields of ``tap_db`` ingested into PostgreSQL + pgSphere; its URL."""
    from romerea_vo.store.postgres import ingest_fields_pg

    pg_cluster = request.getfixturevalue("pg_cluster")  # skips without PostgreSQL
    pg_cluster.create_database("rome_tests")
    url = f"postgresql://{pg_cluster.user}@127.0.0.1:{pg_cluster.port}/rome_tests"
    fields = [synthetic_field, second_field]
    if (PYDANDIA_TEST1 / "TEST1_field_crossmatch.fits").exists():
        fields.append(PYDANDIA_TEST1)
    ingest_fields_pg(url, fields)
    return url


@pytest.fixture(scope="session")
def pg_tap_work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pgwork")


@pytest.fixture(scope="session")
def pg_tap_server(pg_tap_db, pg_tap_work):
    """The TAP service over ``pg_tap_db``, served for real on loopback."""
    from romerea_vo.service.app import ServiceConfig, create_app

    work = pg_tap_work
    app = create_app(ServiceConfig(db_path=pg_tap_db, work_dir=work, limits=_test_limits()))
    live = LiveServer(app)
    yield live.url
    live.stop()


@pytest.fixture(scope="session", params=["duckdb", "postgresql"])
def tap_backend(request) -> str:
    """Each backend in turn, for test modules that serve both (see ``tap_server_both``)."""
    return request.param


@pytest.fixture(scope="session")
def tap_server_both(request, tap_backend):
    """``tap_server`` on each backend in turn: a test module that overrides its
    ``tap_server`` with this one runs against DuckDB and PostgreSQL + pgSphere."""
    return request.getfixturevalue("tap_server" if tap_backend == "duckdb" else "pg_tap_server")


@pytest.fixture(scope="session")
def tap_work_both(request, tap_backend) -> Path:
    """The work directory of ``tap_server_both``'s current server."""
    return request.getfixturevalue("tap_work" if tap_backend == "duckdb" else "pg_tap_work")


@pytest.fixture(scope="session")
def field_positions(synthetic_field):
    """field_id, ra, dec of the synthetic field's stars, read from its FITS file."""
    from astropy.table import Table

    from romerea_vo.products import open_field

    with open_field(synthetic_field) as field:
        fi = field.field_index
        return Table(
            {
                "field_id": np.asarray(fi["field_id"]),
                "ra": np.asarray(fi["ra"]),
                "dec": np.asarray(fi["dec"]),
            }
        )


TOPCAT_REMOTE_SOURCE = REPO.parent / "shared" / "vo_clients" / "java" / "TopcatRemote.java"
TOPCAT_ACTIVATION_SOURCE = REPO / "tests" / "java" / "TopcatActivation.java"


class TopcatSession(NamedTuple):
    client: object  # pyvo SAMPIntegratedClient, connected to the session's hub
    topcat_id: str
    control_port: int | None  # TopcatRemote's loopback control port, when available
    activation_port: int | None  # tests/java/TopcatActivation.java's, when javac is there


def topcat_command(port: int, command: str) -> dict:
    """Send one TopcatRemote command; its one-line JSON answer."""
    import json
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data.decode())


def read_display_line(fd: int, proc, timeout: float) -> str | None:
    """The display number Xvfb writes to its ``-displayfd``: everything up to the newline
    (None if Xvfb exits, closes the pipe or says nothing within ``timeout`` seconds)."""
    import select
    import time

    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            return None
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 64)
            if not chunk:
                return None
            data += chunk
    text = data.decode().strip()
    return text if text.isdigit() else None


@pytest.fixture(scope="session")
def topcat(tmp_path_factory):
    """Xvfb + pyvo SAMP hub + TOPCAT, once per session (TOPCAT tests skip without them);
    yields a connected pyvo SAMP client and TOPCAT's client id."""
    import os
    import signal
    import subprocess

    from pyvo.samp import SAMPIntegratedClient
    from pyvo.samp.lockfile_helpers import read_lockfile

    from romerea_vo.samp.hub import SampHub
    from tests.test_topcat_samp import TOPCAT_JAR, _wait

    root = tmp_path_factory.mktemp("samp")
    home = root / "home"
    home.mkdir()
    lockfile = home / ".samp"
    procs: list[subprocess.Popen] = []
    logs = {"xvfb": root / "xvfb.log", "topcat": root / "topcat.log"}
    xvfb_args = ["-screen", "0", "1280x900x24", "-nolisten", "tcp", "-noreset"]

    def log_tails() -> dict[str, str]:
        return {k: v.read_text(errors="replace")[-1500:] for k, v in logs.items() if v.exists()}

    def stop_group(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def start_display() -> tuple[subprocess.Popen, str]:
        """Xvfb on a free display. Xvfb reports the number with ``-displayfd`` in two
        writes, the digits and then a newline: a reader that closes the pipe after the
        first read can kill it ("Cannot write display number to fd N", seen on a busy
        machine), so the whole line is read. Should that still fail, a free display
        number is picked here and Xvfb's socket waited for."""
        read_fd, write_fd = os.pipe()
        proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), *xvfb_args],
            pass_fds=(write_fd,), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=logs["xvfb"].open("ab"),
        )  # fmt: skip
        procs.append(proc)
        os.close(write_fd)
        try:
            display = read_display_line(read_fd, proc, 60)
        finally:
            os.close(read_fd)
        if display is None:
            stop_group(proc)
            display = next(
                str(n) for n in range(200, 1000)
                if not Path(f"/tmp/.X11-unix/X{n}").exists()
                and not Path(f"/tmp/.X{n}-lock").exists()
            )  # fmt: skip
            proc = subprocess.Popen(
                ["Xvfb", f":{display}", *xvfb_args], start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=logs["xvfb"].open("ab"),
            )  # fmt: skip
            procs.append(proc)
        _wait(lambda: Path(f"/tmp/.X11-unix/X{display}").exists() or proc.poll() is not None,
              60, f"Xvfb on :{display}")  # fmt: skip
        if proc.poll() is not None:
            raise RuntimeError(f"Xvfb exited ({proc.returncode}); log: {log_tails()}")
        return proc, display

    # TopcatRemote (../shared/vo_clients) wraps the unmodified TOPCAT with a loopback
    # control port that makes TOPCAT itself send selections and highlights; our own
    # tests/java/TopcatActivation.java adds one for the Activation Actions window (and
    # starts TopcatRemote when it is there). Without javac, plain TOPCAT runs and the
    # tests that need either port are skipped.
    classes = None
    if shutil.which("javac"):
        sources = [str(TOPCAT_ACTIVATION_SOURCE)]
        if TOPCAT_REMOTE_SOURCE.exists():
            sources.append(str(TOPCAT_REMOTE_SOURCE))
        made = subprocess.run(
            ["javac", "-nowarn", "-cp", str(TOPCAT_JAR), "-d", str(root / "classes"), *sources],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        classes = root / "classes" if made.returncode == 0 else None
    has_remote = classes is not None and (classes / "TopcatRemote.class").exists()
    port_files = {"remote": root / "topcat.port", "activation": root / "activation.port"}

    def start_topcat(display: str) -> subprocess.Popen:
        env = {**os.environ, "DISPLAY": f":{display}", "HOME": str(home),
               "SAMP_HUB": f"std-lockurl:file://{lockfile}"}  # fmt: skip
        if classes is not None:
            for path in port_files.values():
                path.unlink(missing_ok=True)
            cmd = ["java", "-Xmx512m", f"-Duser.home={home}",
                   f"-Dtopcat.remote.portfile={port_files['remote']}",
                   f"-Dtopcat.activation.portfile={port_files['activation']}",
                   "-cp", f"{classes}:{TOPCAT_JAR}",
                   "TopcatActivation", "-samp", "-nohub"]  # fmt: skip
        else:
            cmd = ["java", "-Xmx512m", f"-Duser.home={home}", "-cp", str(TOPCAT_JAR),
                   "uk.ac.starlink.topcat.Driver", "-samp", "-nohub"]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=env, start_new_session=True,
            stdout=logs["topcat"].open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(proc)
        return proc

    hub = SampHub(lockfile=str(lockfile), web_profile=False, addr="127.0.0.1")
    hub.start()
    client = SAMPIntegratedClient(name="romerea-vo test", addr="127.0.0.1")
    try:
        client.connect(hub_params=read_lockfile(str(lockfile)))

        def topcat_id():
            for cid in client.get_registered_clients():
                meta = client.get_metadata(cid)
                if meta.get("samp.name", "").lower() == "topcat":
                    subs = client.get_subscriptions(cid)
                    if "table.load.votable" in subs and "table.get.stil" in subs:
                        return cid
            return None

        # Seen on a loaded machine: an Xvfb gone before TOPCAT connected, and TOPCAT
        # giving up on the hub at start-up. A second attempt starts both afresh.
        xvfb, found = None, None
        for attempt in (1, 2):
            if xvfb is None or xvfb.poll() is not None:
                xvfb, display = start_display()
            proc = start_topcat(display)
            try:
                found = _wait(topcat_id, 90, f"TOPCAT to register (attempt {attempt})")
                break
            except TimeoutError as exc:
                os.killpg(proc.pid, signal.SIGKILL)
                if attempt == 2:
                    raise TimeoutError(f"{exc}; logs: {log_tails()}") from None
        ports: dict[str, int | None] = {"remote": None, "activation": None}
        for name, path in port_files.items():
            if classes is not None and (name != "remote" or has_remote):
                _wait(path.exists, 60, f"TOPCAT's {name} control port")
                ports[name] = int(path.read_text().strip())
        yield TopcatSession(client, found, ports["remote"], ports["activation"])
    finally:
        if client.is_connected:
            client.disconnect()
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        hub.stop()


@pytest.fixture(scope="session")
def uws_jobs_db(pg_cluster) -> str:
    """A database of the session's PostgreSQL cluster for the PostgreSQL job store."""
    return pg_cluster.create_database("romerea_uws_tests")


@pytest.fixture
def empty_uws_jobs_db(uws_jobs_db) -> str:
    """`uws_jobs_db` with no jobs and no workers left by an earlier test."""
    import psycopg

    with psycopg.connect(uws_jobs_db, autocommit=True) as con:
        if con.execute("SELECT to_regclass('romerea_uws.jobs')").fetchone()[0]:
            con.execute("TRUNCATE romerea_uws.jobs, romerea_uws.workers")
    return uws_jobs_db
