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
            assert session.fetchall("SELECT COUNT(*) FROM rome.field_index")[0][0] > 2000
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
