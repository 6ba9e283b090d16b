"""Synthetic field generation: time and peak memory, and the per-star statistics pass.

Memory must stay bounded as the star count grows (cubes are written in blocks of
rows), so that a 400,000-star x 2,214-image field can be generated on a 24 GB
machine. Each size runs in a fresh subprocess so peak RSS is its own; the ratio of
peak RSS between the largest and smallest run is printed (1.0 = flat). The baseline
for the statistics pass is a plain sequential read of the same cube files.

    python benchmarks/bench_synthetic.py [--images 2214] [--stars 2500 10000 40000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from pathlib import Path
from romerea_vo.products.synthetic import synthesize_field
from romerea_vo.products import open_field
from romerea_vo.statistics_pass import lightcurve_statistics
out, n_stars, n_images = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
synthesize_field(out, n_stars=n_stars, n_images=n_images, seed=1)
t_synth = time.perf_counter() - t0
rss_synth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sys.path.insert(0, BENCHMARKS)
from baselines import read_files
t0 = time.perf_counter()
read_files(sorted(out.glob("*.hdf5")))
t_read = time.perf_counter() - t0
with open_field(out) as field:
    t0 = time.perf_counter()
    stats = lightcurve_statistics(field)
    t_stats = time.perf_counter() - t0
print(json.dumps({"synth_s": t_synth, "rss_mib": rss_synth / 1024, "read_s": t_read,
                  "stats_s": t_stats, "rows": len(stats),
                  "gb": sum(p.stat().st_size for p in out.glob("*.hdf5")) / 1e9}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2214)
    parser.add_argument("--stars", type=int, nargs="+", default=[2500, 10000, 40000])
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="romerea-bench-", dir=args.dir))
    print(f"{'stars':>8} {'cubes GB':>9} {'synth s':>8} {'peak RSS MiB':>13} "
          f"{'stats s':>8} {'plain read s':>13} {'stats/read':>11}")  # fmt: skip
    rss = []
    try:
        for n in args.stars:
            target = scratch / f"f{n}"
            t0 = time.perf_counter()
            child = CHILD.replace("BENCHMARKS", repr(str(Path(__file__).parent)))
            run = subprocess.run(
                [sys.executable, "-c", child, str(target), str(n), str(args.images)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            r = json.loads(run.stdout.strip().splitlines()[-1])
            rss.append(r["rss_mib"])
            print(f"{n:>8} {r['gb']:>9.2f} {r['synth_s']:>8.1f} {r['rss_mib']:>13.0f} "
                  f"{r['stats_s']:>8.1f} {r['read_s']:>13.1f} "
                  f"{r['stats_s'] / r['read_s']:>10.1f}x")  # fmt: skip
            shutil.rmtree(target)
            del t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\npeak RSS, largest / smallest run: {rss[-1] / rss[0]:.2f} "
          f"for {args.stars[-1] / args.stars[0]:.0f}x the stars")  # fmt: skip


if __name__ == "__main__":
    main()
