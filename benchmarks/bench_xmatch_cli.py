"""End to end ``romerea-vo xmatch``: a 100,000-row file against a 400,000-star database.

    python benchmarks/bench_xmatch_cli.py [--stars 400000] [--rows 100000] [--workdir DIR]

The database is a synthetic field ingested as ``benchmarks/bench_tap.py --local`` makes
it (kept in ``--workdir`` between runs). The input file holds jittered copies of half its
rows' worth of ROME stars and random positions for the rest. The command runs in this
process through ``romerea_vo.cli.main`` (what the command does, without interpreter
start-up): read the file, find its columns, load the stars from the database, match,
build the output table, write it. Baseline, measured in the same run: astropy reading
the same file, the same star positions loaded from the database, and
``match_to_catalog_sky`` (its k-d tree built per call), without writing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from bench_tap import local_database

from romerea_vo.cli import main as romerea_vo


def _stars(db: Path) -> tuple[np.ndarray, np.ndarray]:
    from romerea_vo.store import Database

    database = Database(db)
    try:
        t = database.cursor().sql("SELECT ra, dec FROM romerea_data.rome.field_index").fetchnumpy()
    finally:
        database.close()
    return np.asarray(t["ra"]), np.asarray(t["dec"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stars", type=int, default=400_000)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--radius", type=float, default=1.0, help="arcsec")
    parser.add_argument("--input-format", default="fits", choices=["fits", "votable", "parquet"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="keep the field/database here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="romerea-xmbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = local_database(args.stars, args.images, workdir)

    ra2, dec2 = _stars(db)
    rng = np.random.default_rng(1)
    half = args.rows // 2
    pick = rng.choice(ra2.size, half, replace=False)
    moved = SkyCoord(ra2[pick] * u.deg, dec2[pick] * u.deg).directional_offset_by(
        rng.uniform(0, 360, half) * u.deg, rng.uniform(0, 1.2 * args.radius, half) * u.arcsec
    )
    n_rand = args.rows - half
    table = Table()
    table["id"] = np.arange(args.rows)
    table["ra"] = np.r_[moved.ra.deg, rng.uniform(ra2.min(), ra2.max(), n_rand)] * u.deg
    table["dec"] = np.r_[moved.dec.deg, rng.uniform(dec2.min(), dec2.max(), n_rand)] * u.deg
    table["mag"] = rng.uniform(14, 21, args.rows) * u.mag
    ext = {"fits": "fits", "votable": "vot", "parquet": "parquet"}[args.input_format]
    source = workdir / f"input_{args.rows}.{ext}"
    table.write(source, format=args.input_format, overwrite=True)
    out = workdir / "out.vot"

    def cli(output: Path, *extra: str) -> None:
        with contextlib.redirect_stderr(io.StringIO()):
            code = romerea_vo(
                ["xmatch", str(source), "--db", str(db), "--radius", f"{args.radius}arcsec",
                 "-o", str(output), "--overwrite", *extra]
            )  # fmt: skip
        if code != 0:
            raise RuntimeError("romerea-vo xmatch failed")

    def baseline() -> None:
        t = Table.read(source, format=args.input_format)
        ra, dec = _stars(db)
        c1 = SkyCoord(np.asarray(t["ra"]) * u.deg, np.asarray(t["dec"]) * u.deg)
        c2 = SkyCoord(ra * u.deg, dec * u.deg)
        idx, sep, _ = c1.match_to_catalog_sky(c2)
        return idx[sep <= args.radius * u.arcsec]

    def stages() -> dict[str, float]:
        """The command's steps, timed one by one (the same functions it calls)."""
        from romerea_vo import catalogue_files as inputs
        from romerea_vo.xmatch import local, output

        marks = [("start", time.perf_counter())]
        t = inputs.read_catalogue(source)
        ra, dec, bad = inputs.position_arrays(t, *inputs.find_position_columns(t))
        marks.append(("read the file", time.perf_counter()))
        with local.DatabaseRome(db) as src:
            rome = src.stars()
        marks.append(("load the stars", time.perf_counter()))
        pairs = local.match_positions(ra, dec, rome, args.radius)
        chosen = local.select_pairs(pairs, "best")
        marks.append(("match (all pairs, then best)", time.perf_counter()))
        n_within = np.bincount(pairs.left, minlength=len(t))
        table = local.catalogue_result(t, rome, chosen, "best", n_within=n_within, bad=bad)
        marks.append(("build the output table", time.perf_counter()))
        output.write_table(table, out, "votable", provenance={}, description="")
        marks.append(("write the VOTable", time.perf_counter()))
        return {name: t1 - t0 for (_, t0), (name, t1) in itertools.pairwise(marks)}

    cases = {
        "baseline: astropy read + match": baseline,
        "xmatch best -> VOTable": lambda: cli(out),
        "xmatch best -> FITS": lambda: cli(workdir / "out.fits"),
        "xmatch all -> VOTable": lambda: cli(out, "--mode", "all"),
    }
    # Interleaved (one run of each per round), so that load from other processes on a
    # shared machine falls on all of them alike.
    times = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up (page cache, imports)
    for _ in range(args.repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    ref = med["baseline: astropy read + match"]
    print(
        f"{args.rows:,}-row {args.input_format} file x {ra2.size:,}-star database within "
        f"{args.radius} arcsec, medians of {args.repeats} interleaved rounds"
    )
    print(f"{'path':<34} {'s':>7} {'baseline / path':>16}")
    for name, t in med.items():
        print(f"{name:<34} {t:>7.3f} {ref / t:>15.2f}x")
    runs = [stages() for _ in range(args.repeats + 1)][1:]
    print("\nsteps of xmatch best -> VOTable (medians):")
    for name in runs[0]:
        print(f"  {name:<32} {statistics.median(r[name] for r in runs):>7.3f}")


if __name__ == "__main__":
    main()
