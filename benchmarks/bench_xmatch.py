"""Positional cross-match: romerea_vo.xmatch against astropy on the same catalogues.

    python benchmarks/bench_xmatch.py [--n1 10000] [--n2 400000] [--radius 1] [--repeats 5]
    python benchmarks/bench_xmatch.py --n1 1000000      # issue 6: 1M external x 400k ROME

Catalogue 2 is a ROME-field-sized cloud around (268, -29.5); catalogue 1 is up to half
jittered copies of its stars (at most one per star), the rest random positions.
Baselines, measured in the same run: astropy ``search_around_sky`` (mode ``all``) and
``match_to_catalog_sky`` (mode ``best``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord, search_around_sky

from romerea_vo.xmatch import crossmatch


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n1", type=int, default=10_000)
    parser.add_argument("--n2", type=int, default=400_000)
    parser.add_argument("--radius", type=float, default=1.0, help="arcsec")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    dec2 = -29.5 + rng.uniform(-0.35, 0.35, args.n2)
    ra2 = 268.0 + rng.uniform(-0.35, 0.35, args.n2) / np.cos(np.radians(29.5))
    half = min(args.n1 // 2, args.n2)
    pick = rng.choice(args.n2, half, replace=False)
    moved = SkyCoord(ra2[pick] * u.deg, dec2[pick] * u.deg).directional_offset_by(
        rng.uniform(0, 360, half) * u.deg, rng.uniform(0, 1.2 * args.radius, half) * u.arcsec
    )
    ra1 = np.r_[moved.ra.deg, rng.choice(ra2, args.n1 - half)]
    dec1 = np.r_[moved.dec.deg, rng.choice(dec2, args.n1 - half) + 0.01]
    r = args.radius * u.arcsec

    # Fresh SkyCoords per call: astropy caches its k-d tree on a SkyCoord, while ours
    # sorts its zones every call; both pay their index build, as a one-off match does.
    def coords():
        return SkyCoord(ra1 * u.deg, dec1 * u.deg), SkyCoord(ra2 * u.deg, dec2 * u.deg)

    ours_all = _median_time(lambda: crossmatch(ra1, dec1, ra2, dec2, args.radius), args.repeats)
    astropy_all = _median_time(lambda: search_around_sky(*coords(), r), args.repeats)
    ours_best = _median_time(
        lambda: crossmatch(ra1, dec1, ra2, dec2, args.radius, mode="best"), args.repeats
    )

    def astropy_nearest():
        c1, c2 = coords()
        return c1.match_to_catalog_sky(c2)

    astropy_best = _median_time(astropy_nearest, args.repeats)
    print(f"{args.n1:,} x {args.n2:,} within {args.radius} arcsec, medians of {args.repeats}")
    print(f"{'mode':<6} {'romerea_vo ms':>14} {'astropy ms':>11} {'ratio':>7}  baseline")
    for mode, ours, ref, name in (
        ("all", ours_all, astropy_all, "search_around_sky"),
        ("best", ours_best, astropy_best, "match_to_catalog_sky"),
    ):
        print(f"{mode:<6} {ours * 1e3:>14.1f} {ref * 1e3:>11.1f} {ref / ours:>6.1f}x  {name}")


if __name__ == "__main__":
    main()
