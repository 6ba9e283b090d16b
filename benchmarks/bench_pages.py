"""Pages for people: star page and cone-search page times, as ratios to the documents
they are built from, measured in the same run on the same service.

    python benchmarks/bench_pages.py --url http://127.0.0.1:8000   # a running service
    python benchmarks/bench_pages.py --local 50000                  # synthesise and serve

* star page (``/star/<field>/<id>``, random stars) against DataLink links of one ID
  (the page lists them) and the PNG plot the page's ``<img>`` loads;
* search page (``/search``, 1' cone, random stars' positions) against the SCS VOTable of
  the same cone (the same engine).

End to end over HTTP with urllib (see ``bench_datalink.py``). Nothing is asserted.
"""

from __future__ import annotations

import statistics

import numpy as np
from bench_datalink import Connection, bench_main, report, stars, timed


def run(root: str, repeats: int, seed: int = 2) -> None:
    conn = Connection(root)
    dids, ra, dec = stars(conn)
    rng = np.random.default_rng(seed)
    print(f"service {root}: {len(dids):,} stars")

    def ok(path: str, params: list[tuple[str, str]], needle: bytes) -> None:
        status, body = conn.get(path, params)
        if status != 200 or needle not in body:
            raise RuntimeError(f"{path} failed: HTTP {status}: {body[:300]!r}")

    def star_path(did: str) -> str:
        field, _, ident = did.rpartition("?")[2].rpartition("/")
        return f"/star/{field}/{ident}"

    for _ in range(10):  # warm up: per-field look-ups, code paths
        did = dids[int(rng.integers(len(dids)))]
        ok(star_path(did), [], b'id="did"')
        ok("/datalink/links", [("ID", did)], b"#this")
    results = {}
    picks = [dids[int(i)] for i in rng.integers(len(dids), size=repeats)]
    it = iter(picks)
    results["star page"] = timed(lambda: ok(star_path(next(it)), [], b'id="did"'), repeats)
    it = iter(picks)
    results["links, 1 ID"] = timed(
        lambda: ok("/datalink/links", [("ID", next(it))], b"#this"), repeats
    )
    n_png = max(repeats // 5, 10)
    it = iter(picks)
    results["PNG plot (the page's img)"] = timed(
        lambda: ok("/lightcurve", [("ID", next(it)), ("RESPONSEFORMAT", "png")], b"PNG"), n_png
    )
    cone = [("RA", repr(ra)), ("DEC", repr(dec))]
    results["search page 1'"] = timed(
        lambda: ok("/search", [*cone, ("RADIUS", "1")], b'id="results"'), repeats
    )
    results["SCS VOTable 1' (VERB=2)"] = timed(
        lambda: ok("/scs", [*cone, ("SR", repr(1 / 60))], b"VOTABLE"), repeats
    )
    for name, ms in results.items():
        report(name, ms)
    med = {k: statistics.median(v) for k, v in results.items()}
    star, png = med["star page"], med["PNG plot (the page's img)"]
    search, scs = med["search page 1'"], med["SCS VOTable 1' (VERB=2)"]
    print(f"star page / links:   {star / med['links, 1 ID']:6.2f}x")
    print(f"star page / PNG:     {star / png:6.2f}x")
    print(f"search page / SCS:   {search / scs:6.2f}x")


if __name__ == "__main__":
    bench_main(run, __doc__.splitlines()[0], 200, "romerea-pagebench-")
