"""Load: many concurrent clients against several service workers, every request checked.

    python benchmarks/bench_load.py --db postgresql://USER@127.0.0.1/rome4m \\
        [--jobs-db URL] [--workers 4] [--clients 50] [--seconds 60]

Starts ``romerea-vo serve --workers N --jobs-db ...`` on the database (for instance the
one ``bench_backends.py`` filled) and runs ``--clients`` client threads for ``--seconds``,
each looping over a mix of requests: 1' cones, aggregates, 1,000-row upload
cross-matches, async jobs (submit, wait, fetch the result, delete) and lightcurve
fetches. A request fails if the HTTP status is not 200 or the VOTable says
QUERY_STATUS=ERROR; the issue's target is zero failures. Prints per-kind counts,
failures and p50/p99 latency.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backends import serve, stop
from bench_tap import Client, _votable

from romerea_vo.products.synthetic import NOMINAL_FIELD_CENTRES
from romerea_vo.store.ingest import DEFAULT_AUTHORITY


def _ok(status: int, body: bytes) -> bool:
    return status == 200 and b'value="ERROR"' not in body[:4000]


class Load:
    def __init__(self, base: str, n_fields: int, seed: int):
        self.base = base
        self.tap = f"{base}/tap"
        self.rng = random.Random(seed)
        self.client = Client()
        self.centres = [NOMINAL_FIELD_CENTRES[k] for k in range(1, n_fields + 1)]
        self.n_fields = n_fields

    def position(self, spread: float = 0.2) -> tuple[float, float]:
        ra, dec = self.rng.choice(self.centres)
        return ra + self.rng.uniform(-spread, spread), dec + self.rng.uniform(-spread, spread)

    def sync(self, query: str, files=None, extra=None) -> bool:
        data = {"LANG": "ADQL", "QUERY": query, **(extra or {})}
        status, _, body = self.client.post(f"{self.tap}/sync", data, files)
        return _ok(status, body)

    def cone(self) -> bool:
        ra, dec = self.position()
        return self.sync(
            "SELECT * FROM rome.field_index WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), "
            f"CIRCLE('ICRS', {ra}, {dec}, 0.0166667))"
        )

    def aggregate(self) -> bool:
        k = self.rng.randint(1, self.n_fields)
        ra, dec = self.position()
        return self.sync(
            "SELECT quadrant, COUNT(*), AVG(n_datasets_ip) FROM rome.field_index WHERE "
            f"field = 'ROME-FIELD-{k:02d}' AND 1 = CONTAINS(POINT('ICRS', ra, dec), "
            f"CIRCLE('ICRS', {ra}, {dec}, 0.05)) GROUP BY quadrant"
        )

    def upload(self) -> bool:
        ra0, dec0 = self.position(0.15)
        rng = np.random.default_rng(self.rng.randrange(1 << 30))
        ra = ra0 + rng.uniform(-0.05, 0.05, 1000)
        dec = dec0 + rng.uniform(-0.05, 0.05, 1000)
        return self.sync(
            "SELECT u.id, s.field, s.field_id FROM TAP_UPLOAD.mine AS u JOIN rome.field_index "
            "AS s ON 1 = CONTAINS(POINT('ICRS', s.ra, s.dec), CIRCLE('ICRS', u.ra, u.dec, "
            "1.0/3600))",
            files={"mine": ("mine.xml", _votable(ra, dec))},
            extra={"UPLOAD": "mine,param:mine"},
        )

    def async_job(self) -> bool:
        ra, dec = self.position()
        query = (
            "SELECT field, field_id, ra, dec FROM rome.field_index WHERE 1 = CONTAINS("
            f"POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra}, {dec}, 0.03))"
        )
        status, headers, _ = self.client.post(
            f"{self.tap}/async", {"LANG": "ADQL", "QUERY": query, "PHASE": "RUN"}
        )
        if status != 303:
            return False
        location = {k.lower(): v for k, v in headers.items()}["location"]
        job = urllib.parse.urljoin(f"{self.tap}/async", location)
        deadline = time.time() + 120
        phase = ""
        while time.time() < deadline:
            phase = self.client.get(f"{job}/phase", {"WAIT": "10"}).decode().strip()
            if phase in ("COMPLETED", "ERROR", "ABORTED"):
                break
        ok = phase == "COMPLETED"
        if ok:
            body = self.client.get(f"{job}/results/result")
            ok = _ok(200, body)
        self.client.delete(job)
        return ok

    def lightcurve(self) -> bool:
        k = self.rng.randint(1, self.n_fields)
        did = f"{DEFAULT_AUTHORITY}?ROME-FIELD-{k:02d}/{self.rng.randint(1, 1000)}"
        body = self.client.get(f"{self.base}/lightcurve", {"ID": did})
        return _ok(200, body)


KINDS = (("cone", 0.35), ("aggregate", 0.2), ("upload", 0.1), ("async", 0.1), ("lightcurve", 0.25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--jobs-db", help="default: --db")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--fields", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    proc, base = serve(args.db, args.workers, args.jobs_db or args.db, work)
    times: dict[str, list[float]] = {k: [] for k, _ in KINDS}
    failures: dict[str, list[str]] = {k: [] for k, _ in KINDS}
    lock = threading.Lock()
    stop_at = time.time() + args.seconds

    def client(i: int) -> None:
        load = Load(base, args.fields, seed=i)
        names = [k for k, _ in KINDS]
        weights = [w for _, w in KINDS]
        while time.time() < stop_at:
            kind = load.rng.choices(names, weights)[0]
            t0 = time.perf_counter()
            try:
                ok = getattr(load, kind.replace("async", "async_job"))()
                why = "" if ok else "bad status or QUERY_STATUS=ERROR"
            except Exception as exc:  # a failed request, counted
                ok, why = False, f"{type(exc).__name__}: {exc}"
            dt = time.perf_counter() - t0
            with lock:
                times[kind].append(dt)
                if not ok:
                    failures[kind].append(why)

    try:
        # Warm-up: each worker opens a field's products on its first lightcurve there
        # (~0.5 s for 400,000 stars); new connections land on random workers, so ask
        # enough times that every worker has opened every field w.h.p.
        warm = Load(base, args.fields, seed=-1)
        for _ in range(6 * args.workers * args.fields):
            warm.lightcurve()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop(proc)
    total = sum(len(v) for v in times.values())
    failed = sum(len(v) for v in failures.values())
    print(f"{args.clients} clients, {args.workers} workers, {args.seconds} s: {total} requests "
          f"({total / args.seconds:.1f}/s), {failed} failed")  # fmt: skip
    print(f"{'kind':<11} {'requests':>8} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for kind, values in times.items():
        if not values:
            continue
        p50 = statistics.median(values) * 1e3
        p99 = float(np.percentile(values, 99)) * 1e3
        print(f"{kind:<11} {len(values):>8} {len(failures[kind]):>6} {p50:>8.1f} {p99:>8.1f}")
    every = [v for values in times.values() for v in values]
    if every:
        p50, p99 = statistics.median(every) * 1e3, float(np.percentile(every, 99)) * 1e3
        print(f"{'all':<11} {total:>8} {failed:>6} {p50:>8.1f} {p99:>8.1f}")
    for kind, whys in failures.items():
        for why in sorted(set(whys))[:3]:
            print(f"  {kind} failure: {why}")


if __name__ == "__main__":
    main()
