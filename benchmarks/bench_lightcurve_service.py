"""Lightcurve service benchmark: one star of a 2,214-image field, all bands, BINARY2.

    python benchmarks/bench_lightcurve_service.py                 # synthesise, ingest, serve
    python benchmarks/bench_lightcurve_service.py --url http://127.0.0.1:8000

Measures (a) the median time of one request, end to end over loopback (request sent ->
whole response read; the client does not parse the VOTable) and the server-side time the
service reports in its ``Server-Timing`` header, and (b) sustained requests/s from 8
client threads over ~10 s, each asking for random stars. Clients are stdlib
``http.client`` with keep-alive (httpx splits headers and body into two packets and meets
TCP delayed-ACK on loopback). Targets (issue 4): <= 10 ms median, >= 100 requests/s.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from served import serve, synthetic_db

TARGET_MEDIAN_MS = 10.0
TARGET_RPS = 100.0


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, base: str):
        parts = urllib.parse.urlsplit(base)
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def get(self, path: str, params: list[tuple[str, str]]) -> tuple[int, dict, bytes]:
        url = f"{self.prefix}{path}?{urllib.parse.urlencode(params)}"
        for attempt in (1, 2):
            try:
                self.conn.request("GET", url)
                resp = self.conn.getresponse()
                return resp.status, dict(resp.getheaders()), resp.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def star_dids(base: str, limit: int = 5000) -> list[str]:
    query = f"SELECT TOP {limit} did FROM rome.field_index"
    params = [("REQUEST", "doQuery"), ("LANG", "ADQL"), ("QUERY", query)]
    status, _, body = Client(base).get("/tap/sync", [*params, ("RESPONSEFORMAT", "csv")])
    if status != 200:
        raise SystemExit(f"TAP query failed: {body[:500]!r}")
    return [row["did"] for row in csv.DictReader(io.StringIO(body.decode()))]


def lightcurve(client: Client, did: str) -> tuple[float, float | None, int]:
    """(end-to-end seconds, server ms from Server-Timing, body bytes) of one request."""
    t0 = time.perf_counter()
    status, headers, body = client.get("/lightcurve", [("ID", did)])
    elapsed = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError(body[:1000].decode(errors="replace"))
    timing = {k.lower(): v for k, v in headers.items()}.get("server-timing", "")
    server = float(timing.split("dur=")[1]) if "dur=" in timing else None
    return elapsed, server, len(body)


def measure_single(base: str, dids: list[str], repeats: int) -> dict:
    client = Client(base)
    rng = random.Random(1)
    for did in dids[:20]:  # warm-up: open the cubes, fill caches
        lightcurve(client, did)
    e2e, server, sizes = [], [], []
    for _ in range(repeats):
        t, s, n = lightcurve(client, rng.choice(dids))
        e2e.append(t * 1000)
        if s is not None:
            server.append(s)
        sizes.append(n)
    return {
        "e2e_ms": statistics.median(e2e),
        "e2e_p90_ms": statistics.quantiles(e2e, n=10)[-1],
        "server_ms": statistics.median(server) if server else None,
        "bytes": statistics.median(sizes),
    }


def measure_throughput(base: str, dids: list[str], threads: int, seconds: float) -> dict:
    stop = time.perf_counter() + seconds
    counts = [0] * threads
    errors: list[str] = []

    def worker(k: int) -> None:
        client = Client(base)
        rng = random.Random(100 + k)
        while time.perf_counter() < stop:
            try:
                lightcurve(client, rng.choice(dids))
            except Exception as exc:  # report, keep going
                errors.append(str(exc)[:200])
            counts[k] += 1

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"requests": sum(counts), "rps": sum(counts) / elapsed, "errors": errors}


def serve_local(workdir: Path, n_stars: int, n_images: int) -> tuple[subprocess.Popen, str]:
    """Synthesise (once) and ingest a field in ``workdir``, serve it; (process, base URL)."""
    db = synthetic_db(
        workdir / f"bench-{n_stars}x{n_images}", [("ROME-FIELD-01", n_stars, n_images)]
    )
    return serve(db, timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="base URL of a running service (default: serve one here)")
    ap.add_argument("--stars", type=int, default=2000, help="synthetic stars (default 2000)")
    ap.add_argument("--images", type=int, default=2214, help="synthetic images (default 2214)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "romerea-bench"))
    ap.add_argument("--repeats", type=int, default=300, help="single-star requests timed")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()

    proc = None
    if args.url:
        base = args.url.rstrip("/").removesuffix("/tap")
    else:
        proc, base = serve_local(Path(args.workdir), args.stars, args.images)
    try:
        dids = star_dids(base)
        print(f"service {base}: {len(dids)} stars")
        single = measure_single(base, dids, args.repeats)
        load = measure_throughput(base, dids, args.threads, args.seconds)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    server = single["server_ms"]
    print(f"one star, all bands, BINARY2 ({single['bytes'] / 1024:.0f} KiB per response):")
    print(
        f"  median end to end {single['e2e_ms']:.2f} ms (p90 {single['e2e_p90_ms']:.2f} ms); "
        f"server {server:.2f} ms  target <= {TARGET_MEDIAN_MS:.0f} ms  "
        f"{'OK' if (server or single['e2e_ms']) <= TARGET_MEDIAN_MS else 'MISSED'}"
        if server is not None
        else f"  median end to end {single['e2e_ms']:.2f} ms"
    )
    print(
        f"{args.threads} concurrent clients, {args.seconds:.0f} s: {load['rps']:.0f} requests/s "
        f"({load['requests']} requests, {len(load['errors'])} errors)  target >= "
        f"{TARGET_RPS:.0f}  {'OK' if load['rps'] >= TARGET_RPS else 'MISSED'}"
    )
    if load["errors"]:
        print("  first error:", load["errors"][0])


if __name__ == "__main__":
    main()
