"""The published resilience test (issue 16): attacks against a live service while a probe
client measures what an ordinary user sees.

    python benchmarks/bench_abuse.py [--stars 20000] [--images 60] [--abandoned 40]
        [--downloads 150] [--joins 8] [--nrows 10000000] [--columns 5000] [--jobs 300] [--slow 300]
        [--phase 20] [--settle 60] [--workdir DIR]

Synthesises (once, cached in ``--workdir``) a field, ingests it into DuckDB, starts
``romerea-vo serve`` on loopback and first measures the probe at rest: a 1' cone query
and a lightcurve, alternately, one at a time. Then it replays each attack class, bounded
in count and time, while the probe keeps going:

* abandoned cross joins: clients that send a four-way cross join of the field index and
  hang up after 2 s;
* abandoned downloads: clients (32 at a time) that start a 200,000-row cross product
  and hang up after 2 MB;
* concurrent huge spatial joins: 1 degree self cross-matches at once;
* an nrows bomb: a tiny VOTable upload declaring ``nrows`` rows;
* a wide-column upload: one row of ``--columns`` columns;
* a job-creation flood: async jobs created (not run) as fast as possible, deleted after;
* slow-header connections: sockets that send half a request line and wait.

It prints a table: attack, what the attacker got (HTTP statuses), the probe's p50/p99
during the attack against at rest, its errors, the server's RSS peak above the baseline
and its RSS at the end of the phase, and the 500 responses anyone saw. After the last
attack it waits ``--settle`` s and reports RSS against the baseline. Targets (issue 16):
probe p99 <= 5x at rest, zero probe errors, RSS peak <= 2 GB above baseline and back
within 20 % a minute later, no 500s. Not part of the test suite: it loads the machine.
"""

from __future__ import annotations

import argparse
import collections
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import httpx
from served import serve, synthetic_db

ENDLESS = (
    "SELECT COUNT(*) FROM rome.field_index AS a, rome.field_index AS b, "
    "rome.field_index AS c, rome.field_index AS d"
)
HUGE_JOIN = (
    "SELECT COUNT(*) FROM rome.field_index AS a JOIN rome.field_index AS b "
    "ON 1 = CONTAINS(POINT(a.ra, a.dec), CIRCLE(b.ra, b.dec, 1.0))"
)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Samples the server's VmRSS every 0.1 s; ``reset`` starts a new phase's peak."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return

    def reset(self) -> None:
        self.peak = rss_kib(self.pid)

    def stop(self) -> None:
        self._stop.set()


class Probe:
    """One ordinary user: a 1' cone, then a lightcurve, over and over, one at a time."""

    def __init__(self, base: str, ra: float, dec: float, did: str):
        self.base = base
        self.client = httpx.Client(timeout=120)
        self.cone = {
            "LANG": "ADQL",
            "QUERY": "SELECT * FROM rome.field_index WHERE 1 = CONTAINS(POINT(ra, dec), "
            f"CIRCLE({ra!r}, {dec!r}, {1 / 60!r}))",
        }
        self.did = did
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: list[str] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _one(self, kind: str, call: Callable[[], httpx.Response]) -> None:
        t0 = time.perf_counter()
        try:
            r = call()
            self.statuses[r.status_code] += 1
            if r.status_code != 200 or b'value="ERROR"' in r.content[:4000]:
                self.errors.append(f"{kind}: HTTP {r.status_code}")
        except httpx.HTTPError as exc:
            self.errors.append(f"{kind}: {type(exc).__name__}")
        self.times[kind].append(time.perf_counter() - t0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._one("cone", lambda: self.client.post(self.base + "/tap/sync", data=self.cone))
            self._one(
                "lightcurve",
                lambda: self.client.get(self.base + "/lightcurve", params={"ID": self.did}),
            )

    def start(self) -> None:
        self.times.clear()
        self.errors.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def raw_post(base: str, path: str, body: bytes, content_type: str) -> socket.socket:
    parts = urllib.parse.urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def read_status(sock: socket.socket) -> int | None:
    sock.settimeout(600)
    try:
        head = sock.recv(64)
    except OSError:
        return None
    m = re.match(rb"HTTP/1\.1 (\d{3})", head)
    return int(m.group(1)) if m else None


# --- attacks: each returns a Counter of what the attacker got --------------------------


def abandoned_cross_joins(base: str, n: int, after: float = 2.0) -> collections.Counter:
    body = urllib.parse.urlencode({"LANG": "ADQL", "QUERY": ENDLESS}).encode()
    got: collections.Counter = collections.Counter()
    socks = []
    for _ in range(n):
        socks.append(raw_post(base, "/tap/sync", body, "application/x-www-form-urlencoded"))
    time.sleep(after)
    for s in socks:
        s.setblocking(False)
        try:
            head = s.recv(64)
            m = re.match(rb"HTTP/1\.1 (\d{3})", head)
            got[f"HTTP {int(m.group(1))}" if m else "no answer"] += 1
        except OSError:  # BlockingIOError too: no answer yet
            got["hung up after 2 s"] += 1
        s.close()
    return got


def abandoned_downloads(base: str, n: int, read_bytes: int = 2 * 2**20) -> collections.Counter:
    """``n`` clients (32 at a time) that start a 200,000-row cross product and hang up
    after ``read_bytes``."""
    query = "SELECT TOP 200000 * FROM rome.stars, rome.field_index"
    got: collections.Counter = collections.Counter()
    lock = threading.Lock()
    todo = list(range(n))

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            outcome = "no answer"
            try:
                with httpx.stream(
                    "POST", base + "/tap/sync", data={"LANG": "ADQL", "QUERY": query}, timeout=600
                ) as r:
                    outcome = f"HTTP {r.status_code}"
                    seen = 0
                    for chunk in r.iter_raw():
                        seen += len(chunk)
                        if seen >= read_bytes:
                            outcome += ", hung up after 2 MB"
                            break
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            with lock:
                got[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(min(n, 32))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def _parallel(n: int, call: Callable[[], object]) -> collections.Counter:
    got: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def run() -> None:
        try:
            result = call()
        except httpx.HTTPError as exc:
            result = type(exc).__name__
        with lock:
            got[result] += 1

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def huge_spatial_joins(base: str, n: int) -> collections.Counter:
    def call():
        r = httpx.post(base + "/tap/sync", data={"LANG": "ADQL", "QUERY": HUGE_JOIN}, timeout=600)
        return f"HTTP {r.status_code}"

    return _parallel(n, call)


def _upload(base: str, votable: bytes) -> str:
    r = httpx.post(
        base + "/tap/sync",
        data={"LANG": "ADQL", "QUERY": "SELECT COUNT(*) FROM TAP_UPLOAD.t", "UPLOAD": "t,param:t"},
        files={"t": ("t.xml", votable, "application/x-votable+xml")},
        timeout=600,
    )
    return f"HTTP {r.status_code}"


def nrows_bomb(base: str, nrows: int) -> collections.Counter:
    doc = (
        '<?xml version="1.0"?><VOTABLE version="1.4"><RESOURCE><TABLE nrows="'
        f'{nrows}"><FIELD name="a" datatype="char" arraysize="*"/><FIELD name="b" '
        'datatype="char" arraysize="*"/><FIELD name="c" datatype="char" arraysize="*"/>'
        "<DATA><TABLEDATA><TR><TD>x</TD><TD>y</TD><TD>z</TD></TR></TABLEDATA></DATA>"
        "</TABLE></RESOURCE></VOTABLE>"
    ).encode()
    return collections.Counter([_upload(base, doc)])


def wide_upload(base: str, columns: int) -> collections.Counter:
    fields = "".join(f'<FIELD name="c{i}" datatype="int"/>' for i in range(columns))
    cells = "".join(f"<TD>{i}</TD>" for i in range(columns))
    doc = (
        '<?xml version="1.0"?><VOTABLE version="1.4"><RESOURCE><TABLE>'
        f"{fields}<DATA><TABLEDATA><TR>{cells}</TR></TABLEDATA></DATA></TABLE></RESOURCE>"
        "</VOTABLE>"
    ).encode()
    return collections.Counter([_upload(base, doc)])


def job_flood(base: str, n: int) -> collections.Counter:
    got: collections.Counter = collections.Counter()
    made = []
    with httpx.Client(timeout=120) as client:
        for _ in range(n):
            r = client.post(
                base + "/tap/async",
                data={"LANG": "ADQL", "QUERY": "SELECT TOP 1 * FROM rome.stars"},
            )
            got[f"HTTP {r.status_code}"] += 1
            if r.status_code == 303:
                made.append(r.headers["location"])
        for url in made:
            client.delete(url if url.startswith("http") else base + url)
    return got


def slow_headers(base: str, n: int, hold: float) -> collections.Counter:
    parts = urllib.parse.urlsplit(base)
    socks = []
    got: collections.Counter = collections.Counter()
    for _ in range(n):
        try:
            s = socket.create_connection((parts.hostname, parts.port), timeout=10)
            s.sendall(b"GET /tap/availability HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        except OSError:
            got["refused"] += 1
    time.sleep(hold)
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(64)
            got["closed by server" if not data else "answered"] += 1
        except BlockingIOError:
            got["held open"] += 1
        except OSError:
            got["reset by server"] += 1
        s.close()
    return got


# --- the run ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stars", type=int, default=20_000)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--abandoned", type=int, default=40)
    ap.add_argument("--downloads", type=int, default=150)
    ap.add_argument("--joins", type=int, default=8)
    ap.add_argument("--nrows", type=int, default=10_000_000)
    ap.add_argument("--columns", type=int, default=5_000)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--slow", type=int, default=300)
    ap.add_argument("--phase", type=float, default=20.0, help="seconds per phase (at least)")
    ap.add_argument("--settle", type=float, default=60.0)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "romerea-abuse")
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    db = synthetic_db(
        args.workdir / f"abuse-{args.stars}x{args.images}",
        [("ROME-FIELD-01", args.stars, args.images)],
    )
    work = Path(tempfile.mkdtemp(prefix="abuse-work-", dir=args.workdir))
    proc, base = serve(db, "--work-dir", str(work), timeout=120)
    try:
        r = httpx.post(
            base + "/tap/sync",
            data={
                "LANG": "ADQL",
                "RESPONSEFORMAT": "csv",
                "QUERY": "SELECT TOP 1 ra, dec, did FROM rome.field_index ORDER BY field_id",
            },
            timeout=120,
        )
        ra, dec, did = r.text.splitlines()[1].split(",")
        probe = Probe(base, float(ra), float(dec), did)
        rss = RssSampler(proc.pid)

        def phase(attack: Callable[[], collections.Counter]) -> dict:
            rss.reset()
            probe.start()
            t0 = time.monotonic()
            got = attack()
            rest = args.phase - (time.monotonic() - t0)
            if rest > 0:
                time.sleep(rest)
            probe.stop()
            return {
                "got": got,
                "cone": list(probe.times["cone"]),
                "lightcurve": list(probe.times["lightcurve"]),
                "errors": list(probe.errors),
                "peak": rss.peak,
                "end": rss_kib(proc.pid),
            }

        # warm up (first queries load the index and the cubes), then at rest
        phase(lambda: collections.Counter())
        baseline = rss_kib(proc.pid)
        rest = phase(lambda: collections.Counter())
        attacks: list[tuple[str, Callable[[], collections.Counter]]] = [
            (f"{args.abandoned} abandoned cross joins", lambda: abandoned_cross_joins(
                base, args.abandoned)),
            (f"{args.downloads} abandoned 200,000-row downloads", lambda: abandoned_downloads(
                base, args.downloads)),
            (f"{args.joins} concurrent 1 deg self-joins", lambda: huge_spatial_joins(
                base, args.joins)),
            (f"nrows bomb ({args.nrows:.0e} declared)", lambda: nrows_bomb(base, args.nrows)),
            (f"{args.columns}-column upload", lambda: wide_upload(base, args.columns)),
            (f"{args.jobs} async job creations", lambda: job_flood(base, args.jobs)),
            (f"{args.slow} slow-header connections", lambda: slow_headers(
                base, args.slow, args.phase)),
        ]  # fmt: skip
        results = [(name, phase(attack)) for name, attack in attacks]
        time.sleep(args.settle)
        after = rss_kib(proc.pid)
        tracebacks = sum("Traceback" in line for line in proc.log)  # type: ignore[attr-defined]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    def lat(values: list[float]) -> str:
        return f"{pct(values, 50) * 1000:.0f}/{pct(values, 99) * 1000:.0f}"

    rest_cone, rest_lc = pct(rest["cone"], 99), pct(rest["lightcurve"], 99)
    print(f"\nfield: {args.stars:,} stars x {args.images} images; baseline RSS "
          f"{baseline / 1024:.0f} MiB; probe at rest (p50/p99 ms): cone {lat(rest['cone'])}, "
          f"lightcurve {lat(rest['lightcurve'])}\n")  # fmt: skip
    print("| attack | attacker got | cone p50/p99 ms | x rest p99 | lightcurve p50/p99 ms "
          "| x rest p99 | probe errors | RSS peak over base | RSS end of phase |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    errors = 0
    got_500 = probe.statuses[500] + sum(r["got"].get("HTTP 500", 0) for _, r in results)
    peak_over = 0
    for name, r in results:
        got = ", ".join(f"{k}: {v}" for k, v in sorted(r["got"].items(), key=str))
        xc = pct(r["cone"], 99) / rest_cone
        xl = pct(r["lightcurve"], 99) / rest_lc
        worst = max(worst, xc, xl)
        errors += len(r["errors"])
        peak_over = max(peak_over, r["peak"] - baseline)
        print(
            f"| {name} | {got} | {lat(r['cone'])} | {xc:.1f} | {lat(r['lightcurve'])} | "
            f"{xl:.1f} | {len(r['errors'])} | {(r['peak'] - baseline) / 1024:+.0f} MiB | "
            f"{r['end'] / 1024:.0f} MiB |"
        )
    print(
        f"\nworst probe p99 / at rest: {worst:.1f} (target <= 5); probe errors: {errors} "
        f"(target 0); RSS peak {peak_over / 1024:+.0f} MiB over baseline (target <= 2048); "
        f"RSS {args.settle:g} s after the last attack: {after / 1024:.0f} MiB = "
        f"{after / baseline:.2f} x baseline (target <= 1.2); HTTP 500 answers: {got_500}, "
        f"tracebacks in the server log: {tracebacks}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
