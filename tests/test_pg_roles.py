"""The deployment recipe's roles with the catalogue in PostgreSQL: the owner ingests, the
read-only service role serves (uploads become temporary tables, nothing else is writable)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from romerea_vo.service.params import DaliParams
from romerea_vo.service.tap import TapEngine
from romerea_vo.store.postgres import PostgresDatabase, ingest_fields_pg

SETUP = Path(__file__).resolve().parents[1] / "services" / "postgres" / "setup.sql"


@pytest.fixture(scope="module")
def roles_db(pg_cluster, synthetic_field) -> tuple[str, str]:
    """(owner URL, service URL) of a database set up by setup.sql, the field ingested."""
    db, owner, service = "romerea_roles", "rv_roles_owner", "rv_roles_service"
    done = subprocess.run(
        ["psql", pg_cluster.conninfo(), "-q", "-v", "ON_ERROR_STOP=1",
         "-v", f"dbname={db}", "-v", f"owner_role={owner}", "-v", f"service_role={service}",
         "-f", str(SETUP)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    base = f"127.0.0.1:{pg_cluster.port}/{db}"
    owner_url, service_url = f"postgresql://{owner}@{base}", f"postgresql://{service}@{base}"
    ingest_fields_pg(owner_url, [synthetic_field])
    return owner_url, service_url


def _query(engine: TapEngine, query: str, tmp_path, upload: Table | None = None):
    params = DaliParams()
    params.add("LANG", "ADQL")
    params.add("QUERY", query)
    if upload is not None:
        path = tmp_path / "mine.xml"
        upload.write(path, format="votable", overwrite=True)
        params.files["mine"] = path
        params.add("UPLOAD", "mine,param:mine")
    session = engine.db.session()
    try:
        prepared = engine.prepare(params, session, tmp_path)
        _, batches = session.arrow(prepared.sql)
        return [r for b in batches for r in zip(*(c.to_pylist() for c in b.columns), strict=True)]
    finally:
        session.close()


def test_service_role_serves_queries_and_uploads(roles_db, field_positions, tmp_path):
    _, service_url = roles_db
    db = PostgresDatabase(service_url)
    try:
        engine = TapEngine(db)
        assert _query(engine, "SELECT COUNT(*) FROM rome.stars", tmp_path) == [(800,)]
        pick = field_positions[:25]
        mine = Table({"id": np.arange(25), "ra": pick["ra"], "dec": pick["dec"]})
        rows = _query(
            engine,
            "SELECT u.id, s.field_id FROM TAP_UPLOAD.mine AS u JOIN rome.field_index AS s "
            "ON 1 = CONTAINS(POINT('ICRS', s.ra, s.dec), CIRCLE('ICRS', u.ra, u.dec, 0.1/3600))",
            tmp_path,
            mine,
        )
        assert sorted(rows) == [(i, int(pick["field_id"][i])) for i in range(25)]
    finally:
        db.close()


def test_service_role_cannot_write_the_catalogue(roles_db):
    import psycopg

    _, service_url = roles_db
    with psycopg.connect(service_url, autocommit=True) as con:
        con.execute("SET default_transaction_read_only = off")  # the privileges still refuse
        for statement in (
            "DELETE FROM rome.stars",
            "DROP TABLE rome.stars",
            "CREATE INDEX ON rome.stars (gaia_g_mag)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute(statement)
