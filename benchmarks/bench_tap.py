"""TAP service benchmark: the five DaCHS reference measurements, against any TAP URL.

    python benchmarks/bench_tap.py --url http://127.0.0.1:8000/tap
    python benchmarks/bench_tap.py --local 400000      # synthesise, ingest and serve a field here

Each measurement is end to end over HTTP (request sent → whole response received; the
client does not parse the VOTable, so client-side parsing speed does not count). Medians
are printed next to the DaCHS 2.7 figures quoted in issue 3 (400,000-star synthetic
field, PostgreSQL + q3c, measured on this class of machine) and the 5x targets.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np

DACHS = {  # name: (DaCHS median or range in s, target in s)
    "cone 1'": ((0.050, 0.090), 0.015),
    "TOP 100000 * (BINARY2)": ((0.83, 0.83), 0.15),
    '10k upload xmatch 1"': ((1.1, 1.4), 0.25),
    "GROUP BY quadrant": ((0.15, 0.15), 0.030),
    "async submit->result": ((2.0, 2.0), 0.3),
}


class Client:
    """A minimal HTTP client (urllib/http.client). http.client sends a small request's
    headers and body in one packet; clients that send them separately (httpx does)
    meet TCP delayed-ACK and add ~40 ms per POST on loopback, which would swamp what
    we measure."""

    def post(self, url: str, data: dict, files: dict | None = None) -> tuple[int, dict, bytes]:
        if files:
            boundary = uuid.uuid4().hex
            parts = []
            for k, v in data.items():
                parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"'
                             f"\r\n\r\n{v}\r\n".encode())  # fmt: skip
            for k, (fname, content) in files.items():
                parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; '
                             f'filename="{fname}"\r\nContent-Type: application/x-votable+xml'
                             "\r\n\r\n".encode() + content + b"\r\n")  # fmt: skip
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            ctype = f"multipart/form-data; boundary={boundary}"
        else:
            body = urllib.parse.urlencode(data).encode()
            ctype = "application/x-www-form-urlencoded"
        req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=120) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def get(self, url: str, params: dict | None = None) -> bytes:
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=120) as resp:
            return resp.read()

    def delete(self, url: str) -> None:
        req = urllib.request.Request(url, method="DELETE")
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.build_opener(_NoRedirect).open(req, timeout=60).read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _sync(client: Client, url: str, query: str, **extra) -> bytes:
    data = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, **extra.pop("data", {})}
    status, _, content = client.post(f"{url}/sync", data, extra.get("files"))
    if status != 200 or b'value="ERROR"' in content[:4000]:
        raise RuntimeError(content[:2000].decode(errors="replace"))
    return content


def _votable(ra: np.ndarray, dec: np.ndarray) -> bytes:
    from astropy.io.votable import from_table
    from astropy.table import Table

    buf = io.BytesIO()
    vot = from_table(Table({"id": np.arange(len(ra)), "ra": ra, "dec": dec}))
    vot.to_xml(buf, tabledata_format="binary2")
    return buf.getvalue()


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run(url: str, repeats: int, table: str = "rome.field_index") -> None:
    url = url.rstrip("/")
    rng = np.random.default_rng(1)
    client = Client()
    if True:
        stats = (
            _sync(
                client,
                url,
                f"SELECT MIN(ra), MAX(ra), MIN(dec), MAX(dec), COUNT(*) FROM {table}",
                data={"RESPONSEFORMAT": "csv"},
            )
            .decode()
            .splitlines()[1]
            .split(",")
        )
        ra0, ra1, dec0, dec1, n = (float(v) for v in stats)
        print(
            f"{url}: {table} has {int(n):,} rows, RA {ra0:.3f}..{ra1:.3f}, "
            f"Dec {dec0:.3f}..{dec1:.3f}\n"
        )
        sample = (
            _sync(
                client,
                url,
                f"SELECT TOP 10000 ra, dec FROM {table}",
                data={"RESPONSEFORMAT": "csv"},
            )
            .decode()
            .splitlines()[1:]
        )
        pos = np.array([[float(x) for x in line.split(",")] for line in sample])
        jitter = rng.normal(0, 0.3 / 3600, pos.shape)
        upload = _votable(pos[:, 0] + jitter[:, 0], pos[:, 1] + jitter[:, 1])

        def cone():
            ra = rng.uniform(ra0 + 0.05, ra1 - 0.05)
            dec = rng.uniform(dec0 + 0.05, dec1 - 0.05)
            _sync(
                client,
                url,
                f"SELECT * FROM {table} WHERE 1=CONTAINS(POINT('ICRS', ra, dec), "
                f"CIRCLE('ICRS', {ra}, {dec}, 1.0/60))",
            )

        def top():
            _sync(
                client,
                url,
                f"SELECT TOP 100000 * FROM {table}",
                data={"RESPONSEFORMAT": "votable", "MAXREC": "100000"},
            )

        def xmatch():
            _sync(
                client,
                url,
                "SELECT u.id, f.field_id, DISTANCE(POINT('ICRS', u.ra, u.dec), "
                "POINT('ICRS', f.ra, f.dec)) AS d FROM TAP_UPLOAD.t AS u JOIN "
                f"{table} AS f ON 1=CONTAINS(POINT('ICRS', f.ra, f.dec), "
                "CIRCLE('ICRS', u.ra, u.dec, 1.0/3600))",
                data={"UPLOAD": "t,param:t"},
                files={"t": ("t.xml", upload)},
            )

        def group():
            _sync(client, url, f"SELECT quadrant, COUNT(*) FROM {table} GROUP BY quadrant")

        def async_job():
            query = f"SELECT TOP 10 * FROM {table}"
            data = {"REQUEST": "doQuery", "LANG": "ADQL", "PHASE": "RUN", "QUERY": query}
            _, headers, _ = client.post(f"{url}/async", data)
            job = headers.get("location") or headers.get("Location")
            while True:
                phase = client.get(f"{job}/phase").decode().strip()
                if phase in ("COMPLETED", "ERROR", "ABORTED"):
                    break
                client.get(job, params={"WAIT": "10", "PHASE": phase})
            if phase != "COMPLETED":
                raise RuntimeError(f"async job ended {phase}")
            client.get(f"{job}/results/result")
            client.delete(job)

        cases = {
            "cone 1'": cone,
            "TOP 100000 * (BINARY2)": top,
            '10k upload xmatch 1"': xmatch,
            "GROUP BY quadrant": group,
            "async submit->result": async_job,
        }
        print(
            f"{'measurement':<26} {'median s':>9} {'p90 s':>8} {'DaCHS s':>12} "
            f"{'x DaCHS':>8} {'target s':>9}"
        )
        for name, fn in cases.items():
            times = _time(fn, repeats)
            med = statistics.median(times)
            p90 = float(np.percentile(times, 90))
            (lo, hi), target = DACHS[name]
            dachs = f"{lo:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
            ok = "ok" if med <= target else "MISSED"
            print(
                f"{name:<26} {med:>9.4f} {p90:>8.4f} {dachs:>12} {lo / med:>7.1f}x "
                f"{target:>8.3f} {ok}"
            )


def local_database(n_stars: int, images: int, workdir: Path) -> Path:
    """A synthetic N-star field ingested into ``workdir/bench.duckdb`` (kept if present)."""
    field = workdir / "ROME-FIELD-01"
    db = workdir / "bench.duckdb"
    if not db.exists():
        from romerea_vo.products.synthetic import synthesize_field
        from romerea_vo.store import ingest_fields

        t0 = time.perf_counter()
        synthesize_field(field, n_stars=n_stars, n_images=images, seed=1, progress=True)
        t1 = time.perf_counter()
        ingest_fields(db, [field], progress=True)
        print(f"synthesised in {t1 - t0:.1f} s, ingested in {time.perf_counter() - t1:.1f} s")
    return db


def local_service(n_stars: int, images: int, workdir: Path) -> tuple[subprocess.Popen, str]:
    db = local_database(n_stars, images, workdir)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "romerea_vo.cli",
            "serve",
            "--db",
            str(db),
            "--port",
            "0",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("TAP service:"):
            return proc, line.split()[2]
    raise RuntimeError("service did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="TAP service base URL")
    parser.add_argument(
        "--local",
        type=int,
        metavar="N_STARS",
        help="synthesise an N-star field, ingest and serve it here",
    )
    parser.add_argument("--images", type=int, default=24, help="images of the local field")
    parser.add_argument("--workdir", type=Path, help="keep the local field/database here")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--table", default="rome.field_index")
    args = parser.parse_args()
    if not args.url and not args.local:
        parser.error("give --url or --local")
    if args.url:
        run(args.url, args.repeats, args.table)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="romerea-tapbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    proc, url = local_service(args.local, args.images, workdir)
    try:
        run(url, args.repeats, args.table)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
