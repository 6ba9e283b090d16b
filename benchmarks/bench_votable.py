"""VOTable (and CSV) writing speed against astropy's VOTable writer.

A 10-column table like a TAP result (double, long, int, short, float, char, boolean, with
about 5 % NULLs in five columns) is written by ``romerea_vo.votable`` as BINARY2, BINARY,
TABLEDATA and CSV, and by ``astropy.io.votable`` (``from_table(...).to_xml(...,
tabledata_format=...)``) on fewer rows, in the same run. Output goes to a byte counter
(nothing is kept), as in a streaming HTTP response.

Targets (issue: fast VOTable writer): BINARY2 >= 1,000,000 rows/s and >= 50x astropy.
Nothing is asserted: rows/s and ratios are printed.

    python benchmarks/bench_votable.py [--rows 1000000] [--astropy-rows 50000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import time
import warnings

import numpy as np
import pyarrow as pa
from astropy.io.votable import from_table
from astropy.table import MaskedColumn, Table

from romerea_vo.votable.formats import write_result
from romerea_vo.votable.writer import FieldSpec, write_votable

_INT_NULLS = {"short": -(2**15), "int": -(2**31), "long": -(2**63)}


def make_table(rows: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)

    def nulls() -> np.ndarray:
        return rng.random(rows) < 0.05

    names = np.array([f"ROME-FIELD-{i:02d}" for i in range(1, 21)])
    return pa.table(
        {
            "ra": rng.uniform(265, 275, rows),
            "dec": pa.array(rng.uniform(-32, -26, rows), mask=nulls()),
            "source_id": rng.integers(2**60, 2**62, rows),  # Gaia-like ids beyond 2**53
            "field_id": pa.array(rng.integers(1, 400_000, rows).astype(np.int32), mask=nulls()),
            "n_images": rng.integers(0, 2214, rows).astype(np.int16),
            "mag": pa.array(rng.normal(17, 2, rows).astype(np.float32), mask=nulls()),
            "mag_err": rng.uniform(0.001, 0.5, rows),
            "field": names[rng.integers(0, 20, rows)],
            "variable": pa.array(rng.random(rows) < 0.1, mask=nulls()),
            "epoch": rng.integers(0, 10**9, rows),
        }
    )


def fields_of(table: pa.Table) -> list[FieldSpec]:
    return [FieldSpec.from_arrow(f.name, f.type) for f in table.schema]


def count_bytes(chunks) -> int:
    return sum(len(c) for c in chunks)


def best_of(fn, repeats: int) -> tuple[float, int]:
    best, size = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        size = fn()
        best = min(best, time.perf_counter() - t0)
    return best, size


def astropy_table(table: pa.Table) -> Table:
    out = Table()
    for name in table.column_names:
        arr = table[name].combine_chunks()
        if arr.null_count:
            mask = arr.is_null().to_numpy(zero_copy_only=False)
            fill = 0 if pa.types.is_integer(arr.type) else False
            values = arr.fill_null(fill).to_numpy(zero_copy_only=False)
            out[name] = MaskedColumn(values, mask=mask)
        else:
            out[name] = arr.to_numpy(zero_copy_only=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--astropy-rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    table = make_table(args.rows)
    fields = fields_of(table)
    batches = table.to_batches(max_chunksize=65536)  # what DuckDB hands the TAP service
    print(f"{args.rows:,} rows x {table.num_columns} columns, best of {args.repeats}")

    ours: dict[str, float] = {}
    for label, run in (
        ("binary2", lambda: count_bytes(write_votable(batches, fields))),
        ("binary", lambda: count_bytes(write_votable(batches, fields, serialization="binary"))),
        (
            "tabledata",
            lambda: count_bytes(write_votable(batches, fields, serialization="tabledata")),
        ),
        ("csv", lambda: count_bytes(write_result(batches, fields, "csv"))),
    ):
        seconds, size = best_of(run, args.repeats)
        ours[label] = args.rows / seconds
        print(
            f"  romerea_vo {label:<10} {ours[label]:>13,.0f} rows/s  {seconds:7.3f} s  "
            f"{size / 1e6:8.1f} MB"
        )

    small = astropy_table(make_table(args.astropy_rows))
    theirs: dict[str, float] = {}
    for label in ("binary2", "binary", "tabledata"):

        def run(label: str = label) -> int:
            out = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                votable = from_table(small)
                for field in votable.get_first_table().fields:  # BINARY needs these
                    if field.datatype in _INT_NULLS:
                        field.values.null = _INT_NULLS[field.datatype]
                votable.to_xml(out, tabledata_format=label)
            return out.tell()

        seconds, _ = best_of(run, max(1, args.repeats - 1))
        theirs[label] = args.astropy_rows / seconds
        print(
            f"  astropy    {label:<10} {theirs[label]:>13,.0f} rows/s  {seconds:7.3f} s  "
            f"({args.astropy_rows:,} rows)"
        )

    print("ratio romerea_vo / astropy:")
    for label in theirs:
        print(f"  {label:<10} {ours[label] / theirs[label]:8.1f}x")
    ok = ours["binary2"] >= 1e6 and ours["binary2"] / theirs["binary2"] >= 50
    print(f"target BINARY2 >= 1,000,000 rows/s and >= 50x astropy: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
