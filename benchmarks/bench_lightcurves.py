"""Lightcurve extraction speed against the survey documentation's h5py recipe.

Baselines, measured in the same run on the same page-cached synthetic field:

* ``recipe``: the romerea_toolkit README's ``phot_data[row, idx, :]``, an h5py fancy
  index over one band's images;
* ``h5py row``: reading the star's whole contiguous row with h5py and selecting the
  band in numpy (the DESIGN.md recommendation);
* ``astropy Table``: building a Table of the same columns from ready arrays.

Targets (issue 2): one star, one band as arrays <= 0.2 ms median and >= 5x faster
than the recipe; into an astropy Table with units <= 1 ms; 1,000 random stars in one
batch <= 0.2 s as arrays. Nothing is asserted: figures and ratios are printed.

    python benchmarks/bench_lightcurves.py [--stars 8000] [--images 2214] [--dir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import h5py
import numpy as np
from astropy.table import Table
from baselines import warm_page_cache

from romerea_vo import lightcurves
from romerea_vo.products import open_field
from romerea_vo.products.synthetic import synthesize_field


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stars", type=int, default=8000)
    parser.add_argument("--images", type=int, default=2214)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/romerea-vo-bench"))
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    directory = args.dir / f"field-{args.stars}x{args.images}"
    if not (directory / "ROME-FIELD-01_field_crossmatch.fits").exists():
        t0 = time.perf_counter()
        synthesize_field(directory, n_stars=args.stars, n_images=args.images, progress=True)
        print(f"synthesised {args.stars} stars x {args.images} images in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    warm_page_cache(directory)
    field = open_field(directory)
    rng = np.random.default_rng(args.seed)
    band = "ip"
    idx_time = field.select_images([band])
    idx = np.sort(idx_time)  # h5py fancy indexing needs increasing indices
    print(f"field: {field.n_stars} stars, {field.n_images} images, {len(idx)} {band} images; "
          f"row = {field.n_images * 17 * 8 / 1e3:.0f} kB")  # fmt: skip

    stars = [field.star(int(f)) for f in rng.integers(1, field.n_stars + 1, args.samples)]
    h5 = {q: h5py.File(field.cube(q).path, "r")["dataset_photometry"] for q in range(1, 5)}
    it = itertools.cycle(stars)

    def recipe():
        s = next(it)
        return h5[s.quadrant][s.row, idx, :]

    def h5_row():
        s = next(it)
        return h5[s.quadrant][s.row][idx]

    def ours_arrays():
        return lightcurves.read_points(field, next(it), filters=band)

    def ours_table():
        return lightcurves.lightcurve(field, next(it), filters=band)

    # correctness: the same points whichever way they are read (good cut applied to both)
    s = stars[0]
    raw = h5[s.quadrant][s.row, idx, :]
    mine = lightcurves.read_points(field, s, filters=band)
    good = (raw[:, 16] == 0) & (raw[:, 7] > 0) & (raw[:, 8] > 0) & (raw[:, 0] > 0)
    assert np.array_equal(np.sort(raw[good, 0]), mine.hjd), "extraction disagrees with h5py"

    pts = lightcurves.read_points(field, stars[1], filters=band)
    cols = {f"c{j}": pts.data[:, j] for j in range(17)}

    def astropy_table_only():
        return Table(cols, copy=False)

    results = {}
    for name, fn in [
        ("recipe  h5py phot_data[row, idx, :]", recipe),
        ("h5py whole row, numpy select", h5_row),
        ("romerea-vo read_points (arrays)", ours_arrays),
        ("romerea-vo lightcurve (Table, units)", ours_table),
        ("astropy Table(17 columns) alone", astropy_table_only),
    ]:
        fn()  # warm-up
        results[name] = median_ms(timed(fn, args.samples))

    n_batch = min(1000, field.n_stars)
    batch_ids = [int(f) + 1 for f in rng.choice(field.n_stars, size=n_batch, replace=False)]
    batch = timed(lambda: lightcurves.read_points_many(field, batch_ids, filters=band), 5)
    batch_refs = field.stars_by_id(batch_ids)
    t_recipe_batch = timed(lambda: [h5[s.quadrant][s.row, idx, :] for s in batch_refs], 1)

    base = results["recipe  h5py phot_data[row, idx, :]"]
    print(f"\n{'one star, one band':<42}{'median ms':>10}{'vs recipe':>11}")
    for name, ms in results.items():
        print(f"{name:<42}{ms:>10.3f}{base / ms:>10.1f}x")
    print(f"\n{len(batch_ids)} random stars, one band, one batch (arrays):")
    print(f"{'romerea-vo read_points_many':<42}{median_ms(batch):>10.1f} ms")
    print(f"{'recipe, star by star':<42}{median_ms(t_recipe_batch):>10.1f} ms"
          f"  ({median_ms(t_recipe_batch) / median_ms(batch):.1f}x slower)")  # fmt: skip
    print("\ntargets: arrays <= 0.2 ms and >= 5x the recipe; Table <= 1 ms; batch <= 200 ms")


if __name__ == "__main__":
    main()
