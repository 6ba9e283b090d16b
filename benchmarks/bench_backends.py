"""DuckDB and PostgreSQL + pgSphere side by side, and what several workers buy.

    python benchmarks/bench_backends.py --pg-url postgresql://USER@127.0.0.1:5432/rome4m \\
        [--fields 10] [--stars 400000] [--images 8] [--workdir /tmp/romerea-bench4m]

Synthesises ``--fields`` ROME fields of ``--stars`` stars at their nominal centres (cubes
with few images: the catalogue is what is measured), ingests them into one DuckDB file
and into the PostgreSQL database (both kept in ``--workdir`` / the database for the next
run), then serves each with ``romerea-vo serve`` and measures over HTTP:

* latency (median of 15): a 1' cone on rome.stars, a 10,000-row upload cross-match within
  1" (issue 7 targets: <= 20 ms and <= 1 s on the 4M-star database);
* throughput of a mixed load (cones, aggregates, TOP queries, lightcurve fetches) with
  wrk (Debian package ``wrk``), 1 worker and ``--workers`` workers (PostgreSQL: the issue
  asks >= 1.7x on this 2-core machine for 2 workers), p50/p99 latency.

The PostgreSQL database must have pgSphere available (``CREATE EXTENSION pg_sphere``
succeeds for the user); several workers need a job store there too (``--jobs-db``).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import served
from bench_tap import Client, _sync, _time, _votable
from served import stop

from romerea_vo.products.synthetic import NOMINAL_FIELD_CENTRES


def field_dirs(workdir: Path, n_fields: int, n_stars: int, images: int) -> list[Path]:
    from romerea_vo.products.synthetic import synthesize_field

    out = []
    for k in range(1, n_fields + 1):
        name = f"ROME-FIELD-{k:02d}"
        d = workdir / "fields" / name
        if not (d / f"{name}_field_crossmatch.fits").exists():
            shutil.rmtree(d, ignore_errors=True)
            t0 = time.perf_counter()
            synthesize_field(d, field=name, n_stars=n_stars, n_images=images, seed=k)
            print(f"  synthesised {name} in {time.perf_counter() - t0:.1f} s", flush=True)
        out.append(d)
    return out


def ingest_duckdb(workdir: Path, dirs: list[Path]) -> Path:
    from romerea_vo.store import ingest_fields

    path = workdir / "rome.duckdb"
    if not path.exists():
        t0 = time.perf_counter()
        ingest_fields(path, dirs)
        print(f"  DuckDB ingest: {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def ingest_postgres(url: str, dirs: list[Path]) -> None:
    from romerea_vo.store.postgres import connect, ingest_fields_pg

    con = connect(url, autocommit=True)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT to_regclass('romerea.fields') IS NOT NULL")
            have = set()
            if cur.fetchone()[0]:
                cur.execute("SELECT field FROM romerea.fields")
                have = {r[0] for r in cur.fetchall()}
    finally:
        con.close()
    missing = [d for d in dirs if d.name not in have]
    if missing:
        t0 = time.perf_counter()
        ingest_fields_pg(url, missing)
        print(f"  PostgreSQL ingest ({len(missing)} fields): {time.perf_counter() - t0:.1f} s")


def serve(db: str, workers: int, jobs_db: str | None, work: Path) -> tuple[subprocess.Popen, str]:
    args = ["--work-dir", str(work)]
    if workers > 1:
        args += ["--workers", str(workers)]
        if jobs_db:
            args += ["--jobs-db", jobs_db]
    return served.serve(db, *args)


def latency(base: str, n_fields: int, repeats: int) -> dict[str, float]:
    client = Client()
    tap = f"{base}/tap"
    rng = np.random.default_rng(3)
    centres = [NOMINAL_FIELD_CENTRES[k] for k in range(1, n_fields + 1)]

    def cone(table: str):
        def run():
            ra, dec = centres[rng.integers(len(centres))]
            ra += rng.uniform(-0.2, 0.2)
            dec += rng.uniform(-0.2, 0.2)
            circle = f"CIRCLE('ICRS', {ra!r}, {dec!r}, {1 / 60!r})"
            _sync(
                client,
                tap,
                f"SELECT * FROM {table} WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), {circle})",
            )

        return run

    stars = _sync(client, tap, "SELECT TOP 10000 ra, dec FROM rome.field_index "
                  "WHERE field = 'ROME-FIELD-01'", data={"RESPONSEFORMAT": "csv"})  # fmt: skip
    rows = [r.split(",") for r in stars.decode().splitlines()[1:]]
    ra = np.array([float(r[0]) for r in rows]) + 0.3 / 3600
    dec = np.array([float(r[1]) for r in rows])
    upload = _votable(ra, dec)

    def xmatch():
        client.post(
            f"{tap}/sync",
            {
                "LANG": "ADQL",
                "QUERY": "SELECT u.id, s.field, s.field_id FROM TAP_UPLOAD.mine AS u JOIN "
                "rome.field_index AS s ON 1 = CONTAINS(POINT('ICRS', s.ra, s.dec), "
                "CIRCLE('ICRS', u.ra, u.dec, 1.0/3600))",
                "UPLOAD": "mine,param:mine",
            },
            files={"mine": ("mine.xml", upload)},
        )

    return {
        "cone 1' rome.field_index": statistics.median(_time(cone("rome.field_index"), repeats)),
        "cone 1' SELECT * rome.stars": statistics.median(_time(cone("rome.stars"), repeats)),
        '10k upload xmatch 1"': statistics.median(_time(xmatch, repeats)),
    }


def wrk_script(path: Path, n_fields: int, authority: str) -> None:
    """A wrk Lua script choosing among pre-built GET requests: 40 % 1' cones, 20 %
    aggregates in 1.5' cones, 20 % TOP 100 brightest in 1.5' cones, 20 % lightcurves."""
    rng = random.Random(5)
    paths = []

    def tap(q: str) -> str:
        return "/tap/sync?" + urllib.parse.urlencode({"LANG": "ADQL", "QUERY": q})

    for _ in range(2000):
        k = rng.randint(1, n_fields)
        ra0, dec0 = NOMINAL_FIELD_CENTRES[k]
        ra, dec = ra0 + rng.uniform(-0.2, 0.2), dec0 + rng.uniform(-0.2, 0.2)
        kind = rng.random()
        if kind < 0.4:
            q = (
                f"SELECT field, field_id, ra, dec, cal_i_mag_lsc_doma FROM rome.stars WHERE "
                f"1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra}, {dec}, 0.0166667))"
            )
            paths.append(tap(q))
        elif kind < 0.6:
            q = (
                f"SELECT quadrant, COUNT(*), AVG(n_datasets_ip) FROM rome.field_index WHERE "
                f"field = 'ROME-FIELD-{k:02d}' AND 1 = CONTAINS(POINT('ICRS', ra, dec), "
                f"CIRCLE('ICRS', {ra}, {dec}, 0.025)) GROUP BY quadrant"
            )
            paths.append(tap(q))
        elif kind < 0.8:
            q = (
                f"SELECT TOP 100 field_id, ra, dec, gaia_g_mag FROM rome.stars WHERE "
                f"1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra}, {dec}, 0.025)) "
                f"AND gaia_g_mag < {rng.uniform(14, 18):.2f} "
                "ORDER BY gaia_g_mag"
            )
            paths.append(tap(q))
        else:
            did = f"{authority}?ROME-FIELD-{k:02d}/{rng.randint(1, 1000)}"
            paths.append("/lightcurve?" + urllib.parse.urlencode({"ID": did}))  # fmt: skip
    lua = "paths = {\n" + ",\n".join(f'  "{p}"' for p in paths) + "\n}\n"
    lua += 'request = function()\n  return wrk.format("GET", paths[math.random(#paths)])\nend\n'
    lua += (
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, '
        "summary.duration, summary.errors.status + summary.errors.connect + "
        "summary.errors.read + summary.errors.write + summary.errors.timeout, "
        "latency:percentile(50), latency:percentile(99)))\nend\n"
    )
    path.write_text(lua)


def _cpu_seconds(match) -> float:
    """CPU time (user + system) of the running processes whose (pid, ppid, cmdline) match."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        procs[int(d.name)] = (int(stat[1]), (int(stat[11]) + int(stat[12])) / tick, cmd)
    return sum(cpu for pid, (ppid, cpu, cmd) in procs.items() if match(pid, ppid, cmd, procs))


def _in_tree(root: int):
    def match(pid, ppid, cmd, procs) -> bool:
        while pid and pid != root:
            pid = procs.get(pid, (0, 0, ""))[0]
        return pid == root

    return match


def _postgres(pid, ppid, cmd, procs) -> bool:
    return cmd.startswith("postgres:")


def throughput(
    base: str, script: Path, seconds: int, connections: int, server_pid: int
) -> dict[str, float]:
    """wrk's figures for the mixed load, after the same load has warmed every worker up
    for as long (each worker opens a field's products, ~0.5 s for 400,000 stars, on its
    first lightcurve request there: ten fields are ~5 s of one core per worker, which is
    start-up, not the steady state measured), and the cores used meanwhile by the
    service, by PostgreSQL and by wrk."""
    _wrk(base, script, seconds, connections)
    service0, pg0 = _cpu_seconds(_in_tree(server_pid)), _cpu_seconds(_postgres)
    wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests, micros, errors, p50, p99 = _wrk(base, script, seconds, connections)
    wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = micros / 1e6
    return {
        "req/s": requests / wall,
        "errors": errors,
        "p50 ms": p50 / 1e3,
        "p99 ms": p99 / 1e3,
        "service cores": (_cpu_seconds(_in_tree(server_pid)) - service0) / wall,
        "postgres cores": (_cpu_seconds(_postgres) - pg0) / wall,
        "wrk cores": (wrk1.ru_utime + wrk1.ru_stime - wrk0.ru_utime - wrk0.ru_stime) / wall,
    }


def _wrk(base: str, script: Path, seconds: int, connections: int) -> list[int]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s",
         str(script), base],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [int(x) for x in out.split("RESULT")[1].split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", required=True, help="postgresql:// database to fill")
    parser.add_argument("--jobs-db", help="job store for several workers (default: --pg-url)")
    parser.add_argument("--fields", type=int, default=10)
    parser.add_argument("--stars", type=int, default=400_000)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rome4m")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is needed for the throughput part (apt-get install wrk)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{args.fields} fields x {args.stars:,} stars in {args.workdir}", flush=True)
    dirs = field_dirs(args.workdir, args.fields, args.stars, args.images)
    duck = ingest_duckdb(args.workdir, dirs)
    ingest_postgres(args.pg_url, dirs)
    from romerea_vo.store.ingest import DEFAULT_AUTHORITY

    script = args.workdir / "mixed.lua"
    wrk_script(script, args.fields, DEFAULT_AUTHORITY)
    jobs_db = args.jobs_db or args.pg_url
    rows = []
    for backend, db in (("DuckDB", str(duck)), ("PostgreSQL", args.pg_url)):
        for workers in (1, args.workers):
            if backend == "DuckDB" and workers > 1:
                continue  # one process: DuckDB's own threads use the cores
            work = Path(tempfile.mkdtemp(prefix="bench-work-"))
            proc, base = serve(db, workers, jobs_db, work)
            try:
                lat = latency(base, args.fields, args.repeats) if workers == 1 else {}
                thr = throughput(base, script, args.seconds, args.connections, proc.pid)
            finally:
                stop(proc)
                shutil.rmtree(work, ignore_errors=True)
            rows.append((backend, workers, lat, thr))
            print(f"  {backend}, {workers} worker(s): {lat} {thr}", flush=True)
    print()
    head = ("backend", "workers", "cone ms", "cone* ms", "10k xm ms", "req/s", "p50 ms", "p99 ms")
    print("  ".join(f"{h:>10}" for h in head) + "      errors")
    nan = float("nan")
    for backend, workers, lat, thr in rows:
        cells = [
            lat.get("cone 1' rome.field_index", nan) * 1e3,
            lat.get("cone 1' SELECT * rome.stars", nan) * 1e3,
            lat.get('10k upload xmatch 1"', nan) * 1e3,
            thr["req/s"],
            thr["p50 ms"],
            thr["p99 ms"],
        ]
        print(f"{backend:>10}  {workers:>10}  " + "  ".join(f"{c:>10.1f}" for c in cells)
              + f"  {thr['errors']:>10}")  # fmt: skip
    print(
        "cone: SELECT * FROM rome.field_index in 1'; cone*: SELECT * FROM rome.stars (133 "
        "columns) in 1'"
    )
    print("\nCPU cores in use during the throughput runs (service processes, PostgreSQL, wrk):")
    for backend, workers, _, thr in rows:
        print(f"  {backend}, {workers} worker(s): service {thr['service cores']:.2f}, "
              f"PostgreSQL {thr['postgres cores']:.2f}, wrk {thr['wrk cores']:.2f}")  # fmt: skip
    pg = {w: thr["req/s"] for b, w, _, thr in rows if b == "PostgreSQL"}
    if 1 in pg and args.workers in pg:
        ratio = pg[args.workers] / pg[1]
        print(f"\nPostgreSQL {args.workers} workers / 1 worker throughput: {ratio:.2f}x "
              "(target >= 1.7x for 2 workers on 2 cores)")  # fmt: skip
    print(f"CPU cores here: {os.cpu_count()}")


if __name__ == "__main__":
    main()
