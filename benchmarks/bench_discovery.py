"""Finding events and variables: recovery, contamination, accuracy and cost of the
statistics pass (variability indices + point-lens candidates) on a synthetic field.

Synthesises a field (default 100,000 stars x 2,214 images, 300 events, 300 periodic and
300 irregular variables, with the generator's outliers and underestimated errors), then
times, ``--repeats`` rounds, a plain sequential read of its cubes (the baseline), the same
read with O_DIRECT (what the disk delivers without the page cache: the pass reads that
way) and the statistics pass with indices and fits, each from a cold page cache where the
script may drop it (as root); this VM's buffered reads vary 2x from round to round. Then
it compares rome.microlensing_candidates and rome.lightcurve_stats with the truth table.
The thresholds were tuned on other seeds (3 and 21, the tests' field) than the default
one reported here (2026).

    python benchmarks/bench_discovery.py [--stars 100000] [--images 2214] [--seed 2026]
        [--per-kind 300] [--dir /work/bench_data] [--keep] [--field DIR] [--repeats 3]

``--field DIR`` measures a field synthesised before (by an earlier ``--keep`` run, with
the same options: the generator is deterministic), to compare code changes on one field
without synthesising 30 GB each time; it is never deleted.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table, join
from baselines import drop_page_cache, read_files
from scipy.stats import rankdata

from romerea_vo.lightcurves import read_points
from romerea_vo.products import open_field
from romerea_vo.products.synthetic import (
    IRREGULAR_KINDS,
    PERIODIC_KINDS,
    SignalRates,
    synthesize_field,
    truth_filename,
)
from romerea_vo.statistics_pass import field_statistics
from romerea_vo.variability.pspl import magnification

FIELD = "ROME-FIELD-01"
INDICES = (
    "std_mag", "mad_std_mag", "amplitude_mag", "iqr_mag", "inv_eta", "chi2_reduced",
    "skewness", "excess_abbe", "bright_run", "flagged_fraction", "stetson_j", "stetson_k",
    "stetson_l",
)  # fmt: skip
TE_BINS = (1, 3, 10, 30, 100, 300)
AMP_BINS = (0.0, 0.2, 0.5, 1.0, 2.0, np.inf)


def plain_read(directory: Path, direct: bool = False) -> tuple[float, float, float]:
    """Wall and CPU seconds to read every cube file once, sequentially, and the GB read;
    ``direct``: with O_DIRECT, bypassing the page cache."""
    started, cpu = time.perf_counter(), time.process_time()
    size = read_files(sorted(directory.glob("*.hdf5")), direct=direct)
    return time.perf_counter() - started, time.process_time() - cpu, size / 1e9


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished worker processes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def auc(values: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of 'higher = positive' (Mann-Whitney U; NaN ranks lowest)."""
    v = np.where(np.isfinite(values), values, -np.inf)
    ranks = rankdata(v)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def event_truth(field, truth: Table) -> Table:
    """Per injected event: peak amplitude and good points within t0 +- tE."""
    events = truth[truth["kind"] == "microlensing"]
    amp, n_in = [], []
    for row in events:
        a = magnification(np.array(max(float(row["u0"]), 1e-6)))
        amp.append(2.5 * np.log10(row["fs"] * a + 1 - row["fs"]))
        t = read_points(field, int(row["field_id"])).hjd
        n_in.append(int(np.sum(np.abs(t - row["t0"]) <= row["tE"])))
    events["true_amplitude"] = amp
    events["true_n_in"] = n_in
    return events


def rate(hit: np.ndarray) -> str:
    return f"{hit.sum():4d}/{hit.size:<4d} {100 * hit.mean():5.1f} %" if hit.size else "   -"


def report(field, truth: Table, stats: Table, cands: Table) -> None:
    kinds = np.asarray(truth["kind"])
    cand_ids = set(cands["field_id"][cands["classification"] == "candidate"].tolist())
    events = event_truth(field, truth)
    events["recovered"] = np.isin(events["field_id"], list(cand_ids))
    detectable = (events["true_amplitude"] >= 0.2) & (events["true_n_in"] >= 8)
    print(f"\n== events: {len(events)} injected, {detectable.sum()} detectable "
          "(peak >= 0.2 mag and >= 8 good points within t0 +- tE)")  # fmt: skip
    hit = events["recovered"]
    print(f"recovered, detectable events: {rate(hit[detectable])}  (target >= 90 %)")
    print(f"recovered, all events:        {rate(events['recovered'])}")
    print("\nby tE (d)        detectable            all")
    te = np.asarray(events["tE"])
    for lo, hi in itertools.pairwise(TE_BINS):
        sel = (te >= lo) & (te < hi)
        print(f"  {lo:>4}-{hi:<4}  {rate(events['recovered'][sel & detectable]):>20}"
              f"  {rate(events['recovered'][sel]):>20}")  # fmt: skip
    print("by peak amplitude (mag), events with >= 8 points within t0 +- tE")
    amp = np.asarray(events["true_amplitude"])
    covered = events["true_n_in"] >= 8
    for lo, hi in itertools.pairwise(AMP_BINS):
        sel = (amp >= lo) & (amp < hi) & covered
        print(f"  {lo:>4}-{hi:<4}  {rate(events['recovered'][sel]):>20}")

    constant = kinds == "constant"
    heavy = constant & (np.asarray(truth["outlier_rate"]) >= 0.01)
    ids = np.asarray(truth["field_id"])
    is_cand = np.isin(ids, list(cand_ids))
    n_false = int((is_cand & constant).sum())
    print(f"\n== false candidates among {constant.sum()} constant stars: {n_false} "
          f"= {1e5 * n_false / constant.sum():.1f} per 100,000 (target <= 10); among "
          f"{heavy.sum()} outlier-heavy ones (outlier rate >= 1 %): "
          f"{(is_cand & heavy).sum()}")  # fmt: skip
    for label, group in (("periodic", PERIODIC_KINDS), ("irregular", IRREGULAR_KINDS)):
        sel = np.isin(kinds, group)
        print(f"{label} variables classed as candidates: {rate(is_cand[sel])} (target <= 2 %)")
        for k in group:
            print(f"    {k:<10} {rate(is_cand[kinds == k])}")

    matched = join(events[events["recovered"]], cands, keys="field_id", table_names=("true", "fit"))
    good = matched["u0_true"] < 0.5
    d_te = np.abs(matched["te"] - matched["tE"]) / matched["tE"]
    d_t0 = np.abs(matched["t0_fit"] - matched["t0_true"]) / matched["tE"]
    print(f"\n== accuracy, {good.sum()} recovered events with u0 < 0.5: median |dtE|/tE "
          f"{np.median(d_te[good]):.3f} (target <= 0.10), median |dt0|/tE "
          f"{np.median(d_t0[good]):.3f} (target <= 0.1)")  # fmt: skip

    ip = stats[(stats["filter"] == "ip") & (stats["n_good"] >= 20)]
    base = dict(zip(ids.tolist(), np.asarray(truth["base_mag_i"]).tolist(), strict=True))
    bright = np.array([base[i] < 19.0 for i in ip["field_id"].tolist()])
    ip = ip[bright]
    positive = np.isin(ip["field_id"], ids[~constant])
    print(f"\n== ROC AUC, injected variable ({positive.sum()}) vs constant "
          f"({(~positive).sum()}) stars with i' < 19, i' indices (higher = variable)")  # fmt: skip
    for name in INDICES:
        value = np.asarray(ip[name], dtype=float)
        print(f"  {name:<17} {auc(value, positive):.3f}")
    print(f"  {'-skewness':<17} {auc(-np.asarray(ip['skewness'], float), positive):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stars", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=2214)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--per-kind", type=int, default=300,
                        help="events, periodic and irregular variables each")  # fmt: skip
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory")
    parser.add_argument("--keep", action="store_true", help="keep the field afterwards")
    parser.add_argument("--field", type=Path, default=None,
                        help="an already synthesised field directory to measure")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of read, direct read and pass (reads vary)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for the pass (default: as ingest chooses)")  # fmt: skip
    args = parser.parse_args()
    scratch = (
        None if args.field else Path(tempfile.mkdtemp(prefix="romerea-discovery-", dir=args.dir))
    )
    target = args.field or scratch / FIELD
    try:
        if scratch is not None:
            share = args.per_kind / args.stars
            started = time.perf_counter()
            synthesize_field(
                target, field=FIELD, n_stars=args.stars, n_images=args.images, seed=args.seed,
                rates=SignalRates(share, share, share), progress=True,
            )  # fmt: skip
            print(f"synthesised {args.stars} stars x {args.images} images (seed {args.seed}) "
                  f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
        else:
            print(f"measuring the field synthesised before in {target}")
        ratios, direct_ratios = [], []
        for round_ in range(1, args.repeats + 1):
            # each round: the plain read, the direct read, the pass, each from a cold cache
            cold = drop_page_cache()
            read_s, read_cpu, gb = plain_read(target)
            cold = drop_page_cache() and cold
            direct_s, direct_cpu, _gb = plain_read(target, direct=True)
            cold = drop_page_cache() and cold
            if round_ == 1:
                print("reads and pass all from a cold page cache" if cold else
                      "could not drop the page cache (not root): partly warm")  # fmt: skip
            with open_field(target) as field:
                started, cpu = time.perf_counter(), cpu_seconds()
                result = field_statistics(field, progress=True, workers=args.workers)
                pass_s, pass_cpu = time.perf_counter() - started, cpu_seconds() - cpu
            ratios.append(pass_s / read_s)
            direct_ratios.append(pass_s / direct_s)
            # on a shared machine the wall clock includes waiting for the CPU: CPU seconds
            print(f"\nround {round_}: CPU seconds: read {read_cpu:.1f}, direct read "
                  f"{direct_cpu:.1f}, pass {pass_cpu:.1f}; load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
            print(f"== cost: plain sequential read of {gb:.1f} GB: {read_s:.1f} s; statistics "
                  f"pass with indices and fits: {pass_s:.1f} s = {pass_s / read_s:.2f}x the read "
                  f"(target <= 1.5x), in {result.workers} process(es); {result.n_fits} fits, "
                  f"{result.fit_seconds:.1f} s in all, "
                  f"{1000 * result.fit_seconds / max(result.n_fits, 1):.0f} ms each; "
                  f"direct read (O_DIRECT) {direct_s:.1f} s: the pass "
                  f"{pass_s / direct_s:.2f}x it")  # fmt: skip
        print(f"\n== cost over {args.repeats} round(s): pass / plain read "
              f"{' '.join(f'{r:.2f}' for r in ratios)}, median {np.median(ratios):.2f}x "
              f"(target <= 1.5x); pass / direct read "
              f"{' '.join(f'{r:.2f}' for r in direct_ratios)}, median "
              f"{np.median(direct_ratios):.2f}x")  # fmt: skip
        with open_field(target) as field:
            truth = Table.read(target / truth_filename(FIELD), format="ascii.ecsv")
            cands = result.candidates
            print(f"rows: {len(result.stats)} statistics, {len(cands)} fits, "
                  f"{int(np.sum(cands['classification'] == 'candidate'))} candidates")  # fmt: skip
            report(field, truth, result.stats, cands)
    finally:
        if scratch is not None and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
