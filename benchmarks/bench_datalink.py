"""DataLink {links} response time against the issue 4 target (<= 5 ms median).

    python benchmarks/bench_datalink.py --url http://127.0.0.1:8000   # a running service
    python benchmarks/bench_datalink.py --local 200000               # synthesise and serve

End to end over HTTP with the stdlib client (urllib, a new connection per request):
request sent → whole response received. httpx is not used: it sends headers and body
separately and meets TCP delayed ACK on loopback, which would swamp what is measured. Random stars
are asked for, so nothing is served from a client-side cache; the first request of a
field (which loads its per-field look-up arrays) is reported apart, as "cold".
Also printed: SCS cone (1', VERB=2) for comparison. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

TARGET_MS = 5.0


class Connection:
    """Requests with urllib, one connection each, as simple clients make them.

    Not a keep-alive connection: after the first few segments Linux delays ACKs, and with
    the server's headers and body in two writes every keep-alive exchange then waits
    ~40 ms for the delayed ACK, which would swamp what is measured."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")

    def get(self, path: str, params: list[tuple[str, str]]) -> tuple[int, bytes]:
        url = f"{self.root}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=120) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def stars(conn: Connection) -> tuple[list[str], float, float]:
    """Every star's DID of the service's fields (from TAP), and a cone centre."""
    from astropy.io.votable import parse_single_table

    status, body = conn.get(
        "/tap/sync",
        [("LANG", "ADQL"), ("QUERY", "SELECT did, ra, dec FROM rome.field_index"),
         ("MAXREC", "10000000")],
    )  # fmt: skip
    if status != 200:
        raise RuntimeError(f"TAP query failed: HTTP {status}: {body[:300]!r}")
    table = parse_single_table(io.BytesIO(body)).to_table()
    ra, dec = (float(np.nanmedian(np.ma.filled(table[c], np.nan))) for c in ("ra", "dec"))
    return [str(d) for d in table["did"]], ra, dec


def report(name: str, ms: list[float], target: float | None = None) -> None:
    med = statistics.median(ms)
    p90 = sorted(ms)[int(0.9 * (len(ms) - 1))]
    verdict = "" if target is None else ("  OK" if med <= target else "  MISSED")
    goal = "" if target is None else f"   target <= {target:g} ms"
    print(f"{name:<32} median {med:7.2f} ms   p90 {p90:7.2f} ms   n={len(ms)}{goal}{verdict}")


def run(root: str, repeats: int, seed: int = 1) -> None:
    conn = Connection(root)
    dids, ra, dec = stars(conn)
    rng = np.random.default_rng(seed)
    print(f"service {root}: {len(dids):,} stars")

    def links(ids: list[str]) -> None:
        status, body = conn.get("/datalink/links", [("ID", i) for i in ids])
        if status != 200 or b"#this" not in body:
            raise RuntimeError(f"links failed: HTTP {status}: {body[:300]!r}")

    t0 = time.perf_counter()
    links([dids[0]])
    print(f"{'cold (first request of a field)':<32} {1000 * (time.perf_counter() - t0):7.2f} ms")
    for _ in range(20):  # warm up the connection and the server's code paths
        links([dids[int(rng.integers(len(dids)))]])
    one = iter(rng.integers(len(dids), size=repeats))
    report("links, 1 ID", timed(lambda: links([dids[int(next(one))]]), repeats), TARGET_MS)
    ten = iter(rng.integers(len(dids), size=(repeats, 10)))
    report("links, 10 IDs", timed(lambda: links([dids[int(i)] for i in next(ten)]), repeats))
    bad = ["ivo://nowhere/x?F/1"]
    report("links, 1 unknown ID", timed(lambda: conn.get("/datalink/links", [("ID", bad[0])]),
                                        repeats))  # fmt: skip
    cone = [("RA", repr(ra)), ("DEC", repr(dec)), ("SR", repr(1 / 60))]
    report("SCS cone 1' (VERB=2)", timed(lambda: conn.get("/scs", cone), max(repeats // 5, 10)))


def local_service(n_stars: int, images: int, workdir: Path) -> tuple[subprocess.Popen, str]:
    field = workdir / "ROME-FIELD-01"
    db = workdir / "bench.duckdb"
    if not db.exists():
        from romerea_vo.products.synthetic import synthesize_field
        from romerea_vo.store import ingest_fields

        t0 = time.perf_counter()
        synthesize_field(field, n_stars=n_stars, n_images=images, seed=1)
        t1 = time.perf_counter()
        ingest_fields(db, [field])
        print(f"synthesised in {t1 - t0:.1f} s, ingested in {time.perf_counter() - t1:.1f} s")
    proc = subprocess.Popen(
        [sys.executable, "-m", "romerea_vo.cli", "serve", "--db", str(db), "--port", "0",
         "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    for line in proc.stdout:
        if line.startswith("TAP service:"):
            root = line.split()[2].removesuffix("/tap")
            break
    else:
        raise RuntimeError("service did not start")
    deadline = time.time() + 60  # the URL is printed before the socket listens
    while True:
        try:
            Connection(root).get("/tap/availability", [])
            return proc, root
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def bench_main(run_func, description: str, repeats: int, prefix: str) -> None:
    """The command line every endpoint benchmark shares: ``--url`` of a running service,
    or ``--local N_STARS`` to synthesise, serve and measure a field of its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", help="service root URL (the one /tap and /datalink hang off)")
    parser.add_argument("--local", type=int, metavar="N_STARS", help="synthesise and serve")
    parser.add_argument("--images", type=int, default=24, help="images of the local field")
    parser.add_argument("--workdir", type=Path, help="keep the local field/database here")
    parser.add_argument("--repeats", type=int, default=repeats)
    args = parser.parse_args()
    if not args.url and not args.local:
        parser.error("give --url or --local")
    if args.url:
        run_func(args.url.rstrip("/"), args.repeats)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    proc, url = local_service(args.local, args.images, workdir)
    try:
        run_func(url, args.repeats)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    bench_main(run, __doc__.splitlines()[0], 500, "romerea-dlbench-")
