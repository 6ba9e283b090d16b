"""Shared fixtures: the pyDANDIA TEST1 files (skipped when absent) and synthetic fields."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

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

        deadline = time.time() + 20
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


@pytest.fixture(scope="session")
def tap_server(tap_db, tap_work):
    """The TAP service over ``tap_db``, served for real on loopback; yields its base URL."""
    from romerea_vo.service.app import ServiceConfig, create_app
    from romerea_vo.service.tap import TapLimits

    # private hosts allowed: the remote-upload test serves its table from loopback
    limits = TapLimits(
        default_maxrec=5000,
        hard_maxrec=50_000,
        upload_bytes=20 * 2**20,
        remote_upload_private_hosts=True,
    )
    app = create_app(ServiceConfig(db_path=tap_db, work_dir=tap_work, limits=limits))
    live = LiveServer(app)
    yield live.url
    live.stop()


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
