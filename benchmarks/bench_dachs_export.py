"""``export-dachs`` memory and speed on a field-sized catalogue, against baselines.

    python benchmarks/bench_dachs_export.py --stars 400000

Builds a DuckDB database whose ``rome.field_index`` and ``rome.stars`` hold N synthetic
stars (random values, ~30 % NULL magnitudes and Gaia ids; the other tables empty), then
runs, each in a fresh process:

* baseline "import": Python with romerea_vo and DuckDB imported (nothing read);
* baseline "whole table": ``rome.stars`` fetched whole into Arrow (what a naive export
  holds at least once);
* the export (``export_dachs``, every table).

Prints peak RSS above the import baseline, the export's peak as a fraction of the
whole-table one, and the export's time against the whole-table fetch. Nothing asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import json, sys, time
import duckdb
import romerea_vo.store.dachs_export as dx
mode, db, out = sys.argv[1:4]
t0 = time.perf_counter()
if mode == "table":
    from romerea_vo.store.database import Database
    from romerea_vo.store.ddl import physical_name
    from romerea_vo.votable.schema import load_table_schema
    d = Database(db)
    stars = physical_name(load_table_schema("stars"))
    rows = d.cursor().sql(f"SELECT * FROM {stars}").to_arrow_table()
    n = rows.num_rows
elif mode == "export":
    n = sum(t.n_rows for t in dx.export_dachs(db, out).tables)
else:
    n = 0
dt = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"rss_mib": int(hwm.split()[1]) / 1024, "seconds": dt, "rows": n}))
"""


def _value_sql(col, n_sql: str) -> str:
    nullable = "CASE WHEN random() < 0.3 THEN NULL ELSE {} END"
    if col.name == "field":
        return "'ROME-FIELD-01'"
    if col.name == "field_id":
        return "i"
    if col.name == "ra":
        return "268.0 + random() * 0.4"
    if col.name == "dec":
        return "-29.8 + random() * 0.4"
    if col.name == "did":
        return "'ivo://romerea-vo.local/rome?ROME-FIELD-01/' || i"
    if col.name == "gaia_source_id":
        return nullable.format("4056000000000000000 + i")
    if col.datatype == "char":
        return "'x'"
    if col.datatype in ("short", "int", "long"):
        return f"CAST(i % 4 + 1 AS {'SMALLINT' if col.datatype == 'short' else 'BIGINT'})"
    if col.datatype in ("float", "double"):
        return nullable.format("14 + random() * 6")
    return "true"


def build_database(path: Path, n_stars: int) -> None:
    import duckdb

    from romerea_vo.store.ddl import CATALOG, attach_sql, create_table_sql, physical_name
    from romerea_vo.store.ingest import INTERNAL_DDL
    from romerea_vo.votable.schema import load_table_schema, rome_tables

    con = duckdb.connect()
    con.execute(attach_sql(str(path), read_only=False))
    con.execute(INTERNAL_DDL)
    con.execute(f"INSERT INTO {CATALOG}.romerea.settings VALUES ('authority', 'ivo://x/rome')")
    for table in rome_tables():
        if not table.virtual:
            con.execute(create_table_sql(table))
    for name in ("field_index", "stars"):
        table = load_table_schema(name)
        values = ", ".join(_value_sql(c, str(n_stars)) for c in table.columns)
        con.execute(
            f"INSERT INTO {physical_name(table)} SELECT {values} FROM range(1, {n_stars + 1}) t(i)"
        )
    con.close()


def run_child(mode: str, db: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(db), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stars", type=int, default=400_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dachs-") as tmp:
        db = Path(tmp) / "bench.duckdb"
        t0 = time.perf_counter()
        build_database(db, args.stars)
        print(f"database: {args.stars:,} stars, built in {time.perf_counter() - t0:.1f} s")
        base = run_child("import", db, Path(tmp) / "unused")
        whole = run_child("table", db, Path(tmp) / "unused")
        export = run_child("export", db, Path(tmp) / "out")
        size = sum(p.stat().st_size for p in (Path(tmp) / "out" / "data").iterdir())
        above = {k: v["rss_mib"] - base["rss_mib"] for k, v in (("whole", whole), ("exp", export))}
        print(f"baseline import          peak RSS {base['rss_mib']:8.0f} MiB")
        print(
            f"whole rome.stars (Arrow) peak RSS +{above['whole']:7.0f} MiB  "
            f"{whole['seconds']:.2f} s"
        )
        print(
            f"export-dachs (all tables) peak RSS +{above['exp']:6.0f} MiB  "
            f"{export['seconds']:.2f} s  ({export['rows']:,} rows, {size / 2**20:,.0f} MiB FITS)"
        )
        print(
            f"ratio export/whole-table: memory {above['exp'] / above['whole']:.2f}, "
            f"time {export['seconds'] / whole['seconds']:.1f}"
        )


if __name__ == "__main__":
    main()
