"""The PostgreSQL store's sessions: results streamed by COPY, released however they end."""

from __future__ import annotations

import threading

import pyarrow as pa

from romerea_vo.store.postgres import PostgresDatabase


def _close_within(session, seconds: float) -> bool:
    done = threading.Event()

    def close():
        session.close()
        done.set()

    threading.Thread(target=close, daemon=True).start()
    return done.wait(seconds)


def test_a_result_left_unread_does_not_hold_the_connection(pg_tap_db):
    """A caller that stops reading (MAXREC reached, client gone) must still be able to close
    the session, and the pooled connection must serve the next session."""
    db = PostgresDatabase(pg_tap_db, pool_size=1)
    try:
        for _ in range(3):  # one pooled connection, reused each time
            session = db.session()
            schema, batches = session.arrow(
                "SELECT a.field_id AS a, b.field_id AS b FROM rome.field_index AS a "
                "CROSS JOIN rome.field_index AS b"
            )
            first = next(batches)
            assert first.num_rows > 0 and schema.names == ["a", "b"]
            assert _close_within(session, 20), "close() blocked on the unfinished COPY"
        with db.session() as session:
            assert session.fetchall("SELECT COUNT(*) FROM rome.field_index")[0][0] >= 1200
    finally:
        db.close()


def test_copy_results_keep_nulls_empty_strings_and_types(pg_tap_db):
    db = PostgresDatabase(pg_tap_db)
    try:
        with db.session() as session:
            table = session.arrow_table(
                "SELECT CAST(NULL AS text) AS n, '' AS e, 'a,\"b\"\nc' AS q, true AS t, "
                "CAST(NULL AS bigint) AS i, 4611686018427387905::bigint AS big, "
                "0.1::double precision AS d, CAST(1.5 AS real) AS r"
            )
    finally:
        db.close()
    row = table.to_pylist()[0]
    assert row == {
        "n": None,
        "e": "",
        "q": 'a,"b"\nc',
        "t": True,
        "i": None,
        "big": 4611686018427387905,
        "d": 0.1,
        "r": 1.5,
    }
    assert table.schema.field("big").type == pa.int64()
    assert table.schema.field("r").type == pa.float32()


def test_positional_tables_are_stored_in_declination_zones_by_ra(pg_tap_db):
    """Heap order of rome.field_index: 1' zones, RA ascending within each, so a cone's
    stars share pages (index scans read a few runs of pages, not one page per star)."""
    import numpy as np

    from romerea_vo.store.postgres import STORAGE_ZONE_DEG

    db = PostgresDatabase(pg_tap_db)
    try:
        with db.session() as session:
            rows = session.fetchall(
                "SELECT field, ra, dec FROM rome.field_index ORDER BY ctid"  # heap order
            )
    finally:
        db.close()
    by_field: dict[str, list[tuple[float, float]]] = {}
    for field, ra, dec in rows:
        by_field.setdefault(field, []).append((ra, dec))
    for field, positions in by_field.items():
        ra, dec = np.array(positions).T
        zone = np.floor((dec + 90) / STORAGE_ZONE_DEG)
        assert len(ra) > 100
        assert np.all(np.diff(zone) >= 0), field
        same_zone = np.diff(zone) == 0
        assert np.all(np.diff(ra)[same_zone] >= 0), field


def test_spatial_order_keeps_every_row_and_puts_missing_positions_last():
    from romerea_vo.store.postgres import spatially_ordered

    rows = pa.table(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "ra": [10.0, None, 359.9, 0.1, 10.0, 5.0],
            "dec": [-29.0, -29.0, -29.001, -29.001, -60.0, None],
        }
    )
    out = spatially_ordered(rows)
    # zones (1'): -60 first; -29.001 (RA 0.1, 359.9); -29.0 (RA 10, then no RA); no Dec
    assert out.column("id").to_pylist() == [5, 4, 3, 1, 2, 6]


def test_a_session_runs_one_statement_per_call(pg_tap_db):
    """Defence in depth under the translator: SQL carrying a second statement (which could
    end the read-only transaction) is refused, not run."""
    import pytest

    from romerea_vo.store.session import QueryFailed

    db = PostgresDatabase(pg_tap_db)
    try:
        with db.session() as session, pytest.raises(QueryFailed, match="multiple commands"):
            session.fetchall("SELECT 1; COMMIT; CREATE TABLE rome.evil (x int)")
        with db.session() as session:
            assert session.fetchall(
                "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'rome' AND tablename = 'evil'"
            ) == [(0,)]
    finally:
        db.close()
