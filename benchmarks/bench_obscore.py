"""ivoa.obscore: ObsTAP cone latency beside the same cone on rome.field_index, and what
the table costs at ingest, on DuckDB and PostgreSQL + pgSphere.

    python benchmarks/bench_obscore.py [--fields 3] [--stars 100000] [--images 8]
        [--repeats 25] [--workdir /tmp/romerea-obscore] [--no-pg | --no-duckdb]
    # the issue's database: --fields 10 --stars 400000

Synthesises the fields (kept in ``--workdir``), then for each backend ingests them twice,
once as usual and once with the ObsCore rows left out (``obscore_table`` replaced by an
empty table), and reports both ingest times and their ratio. Each full database is then
served with ``romerea-vo serve`` and measured over HTTP (median of ``--repeats``): a 6'
cone (radius 0.1 deg, the ObsTAP query of issue 18) ``SELECT *`` on ivoa.obscore and the
same cone on rome.field_index, at random places inside the fields.

On both backends it also times, in process, the cone's SQL on the stored table and on a
view joining rome.field_index and rome.lightcurve_stats (the alternative design, which
adds nothing to ingest), which is what the table-at-ingest choice rests on. PostgreSQL
runs in a private cluster (tests/pg.py; Debian postgresql + postgresql-*-pgsphere).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pg: a private cluster
from baselines import warm_page_cache
from bench_backends import field_dirs, serve, stop
from bench_tap import Client, _sync, _time

from romerea_vo.products.layout import BANDPASSES
from romerea_vo.products.synthetic import NOMINAL_FIELD_CENTRES

RADIUS = 0.1  # degrees: 6'


@contextlib.contextmanager
def without_obscore():
    """Ingest as usual but with no ObsCore rows (the baseline)."""
    from romerea_vo.store import field_tables as ft

    original = ft.obscore_table

    def empty(field, tables, authority):
        no_rows = {**tables, "lightcurve_stats": tables["lightcurve_stats"][:0]}
        return original(field, no_rows, authority)

    ft.obscore_table = empty
    try:
        yield
    finally:
        ft.obscore_table = original


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def centres(n_fields: int, n: int, seed: int = 5) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ra, dec = NOMINAL_FIELD_CENTRES[int(rng.integers(1, n_fields + 1))]
        out.append((ra + rng.uniform(-0.15, 0.15), dec + rng.uniform(-0.15, 0.15)))
    return out


def http_cones(base: str, n_fields: int, repeats: int) -> dict[str, float]:
    client = Client()
    tap = f"{base}/tap"
    out = {}
    for label, table, ra, dec, select in (
        ("ivoa.obscore SELECT *", "ivoa.obscore", "s_ra", "s_dec", "*"),
        ("rome.field_index SELECT *", "rome.field_index", "ra", "dec", "*"),
        ("ivoa.obscore COUNT(*)", "ivoa.obscore", "s_ra", "s_dec", "COUNT(*) AS n"),
        ("rome.field_index COUNT(*)", "rome.field_index", "ra", "dec", "COUNT(*) AS n"),
    ):
        places = iter(centres(n_fields, repeats + 1))
        extra = "dataproduct_type = 'timeseries' AND " if table == "ivoa.obscore" else ""

        def run(table=table, ra=ra, dec=dec, select=select, places=places, extra=extra):
            cra, cdec = next(places)
            _sync(
                client,
                tap,
                f"SELECT {select} FROM {table} WHERE {extra}1 = CONTAINS(POINT('ICRS', {ra}, "
                f"{dec}), CIRCLE('ICRS', {cra!r}, {cdec!r}, {RADIUS!r}))",
                data={"MAXREC": "1000000"},
            )

        out[label] = statistics.median(_time(run, repeats))
    for label, table, ra, dec in (
        ("rows per cone, ivoa.obscore (median)", "ivoa.obscore", "s_ra", "s_dec"),
        ("rows per cone, rome.field_index (median)", "rome.field_index", "ra", "dec"),
    ):
        counts = []
        for cra, cdec in centres(n_fields, repeats + 1)[1:]:
            body = _sync(
                client,
                tap,
                f"SELECT COUNT(*) AS n FROM {table} WHERE 1 = CONTAINS(POINT('ICRS', {ra}, "
                f"{dec}), CIRCLE('ICRS', {cra!r}, {cdec!r}, {RADIUS!r}))",
                data={"RESPONSEFORMAT": "csv"},
            )
            counts.append(int(body.decode().split()[-1]))
        out[label] = statistics.median(counts)
    return out


def view_sql(name: str, schema_prefix: str = "") -> str:
    """``CREATE VIEW name`` over rome.field_index + rome.lightcurve_stats giving every
    per-row value of ivoa.obscore (the per-band seeing and exposure, medians of a field's
    images in the stored table, are constants here; what a row costs is its strings)."""
    p = schema_prefix

    def num(v: float) -> str:  # a double in both (PostgreSQL reads 1.4 as numeric)
        return f"CAST({v!r} AS DOUBLE PRECISION)"

    def by_band(values: dict[str, float]) -> str:
        cases = " ".join(f"WHEN '{b}' THEN {num(v)}" for b, v in values.items())
        return f"CASE s.filter {cases} END"

    em_min = by_band({b: v[0] for b, v in BANDPASSES.items()})
    em_max = by_band({b: v[1] for b, v in BANDPASSES.items()})
    seeing, exposure = 1.4, 300.0
    return f"""
CREATE OR REPLACE VIEW {name} AS
SELECT 'timeseries' AS dataproduct_type, 3 AS calib_level, 'ROME/REA' AS obs_collection,
  f.field || '/' || CAST(f.field_id AS VARCHAR) || '/' || s.filter AS obs_id,
  f.did || '/' || s.filter AS obs_publisher_did,
  'datalink/links?ID=' || f.did || '/' || s.filter AS access_url,
  'application/x-votable+xml;content=datalink' AS access_format,
  CAST(CEIL((9000 + 110 * s.n_good) / 1024.0) AS BIGINT) AS access_estsize,
  f.field AS target_name, f.ra AS s_ra, f.dec AS s_dec, {num(2 * seeing / 3600)} AS s_fov,
  'CIRCLE ICRS ' || CAST(f.ra AS VARCHAR) || ' ' || CAST(f.dec AS VARCHAR) || ' '
    || CAST({num(seeing / 3600)} AS VARCHAR) AS s_region,
  {num(seeing)} AS s_resolution,
  s.hjd_first - 2400000.5 AS t_min, s.hjd_last - 2400000.5 AS t_max,
  {num(exposure)} * s.n_good AS t_exptime, {num(exposure)} AS t_resolution, s.n_good AS t_xel,
  {em_min} AS em_min, {em_max} AS em_max, 1 AS em_xel,
  ({em_min} + {em_max}) / 2 / ({em_max} - {em_min}) AS em_res_power,
  'phot.mag' AS o_ucd, 'LCO 1 m network' AS facility_name, 'Sinistro' AS instrument_name,
  'lightcurve?ID=' || f.did || '&BAND=' || s.filter || '&RESPONSEFORMAT=png' AS preview
FROM {p}rome.field_index AS f
JOIN {p}rome.lightcurve_stats AS s ON s.field = f.field AND s.field_id = f.field_id
"""


def cone_sql(table: str, ra: str, dec: str, cra: float, cdec: float) -> str:
    """The shape of the DuckDB target's cone: a declination band, then haversine."""
    r = RADIUS
    return (
        f"SELECT * FROM {table} WHERE {dec} BETWEEN {cdec - r!r} AND {cdec + r!r} AND "
        f"2 * asin(sqrt(pow(sin(radians({dec} - {cdec!r}) / 2), 2) + cos(radians({cdec!r})) "
        f"* cos(radians({dec})) * pow(sin(radians({ra} - {cra!r}) / 2), 2))) "
        f"<= radians({r!r})"
    )


def duckdb_view_vs_table(path: Path, n_fields: int, repeats: int) -> dict[str, float]:
    import duckdb

    from romerea_vo.store.ddl import attach_sql

    con = duckdb.connect()
    con.execute(attach_sql(str(path), read_only=False))
    con.execute(view_sql("romerea_data.ivoa.obscore_view", "romerea_data."))
    out = {}
    try:
        for label, table, ra, dec in (
            ("table ivoa.obscore", "romerea_data.ivoa.obscore", "s_ra", "s_dec"),
            ("view over field_index + lightcurve_stats", "romerea_data.ivoa.obscore_view",
             "s_ra", "s_dec"),
            ("rome.field_index", "romerea_data.rome.field_index", "ra", "dec"),
        ):  # fmt: skip
            places = iter(centres(n_fields, repeats + 1, seed=9))

            def run(table=table, ra=ra, dec=dec, places=places):
                con.sql(cone_sql(table, ra, dec, *next(places))).to_arrow_table()

            out[label] = statistics.median(_time(run, repeats))
    finally:
        con.execute("DROP VIEW romerea_data.ivoa.obscore_view")
        con.close()
    return out


def pg_cone_sql(table: str, ra: str, dec: str, cra: float, cdec: float) -> str:
    """The pgSphere target's cone, on the expression the GiST indexes cover."""
    return (
        f"SELECT * FROM {table} WHERE spoint(radians({ra}), radians({dec})) @ "
        f"scircle(spoint(radians({cra!r}), radians({cdec!r})), radians({RADIUS!r}))"
    )


def pg_view_vs_table(url: str, n_fields: int, repeats: int) -> dict[str, float]:
    """The cone's SQL run the way the service reads PostgreSQL (COPY ... TO STDOUT as CSV),
    on the stored table, on a view over rome.field_index + rome.lightcurve_stats (the
    alternative that adds nothing to ingest; PostgreSQL inlines it, so the cone uses
    the field index's GiST index) and on rome.field_index."""
    from romerea_vo.store.postgres import connect

    con = connect(url, autocommit=True)
    out = {}
    try:
        with con.cursor() as cur:
            cur.execute(view_sql("ivoa.obscore_view"))
            for label, table, ra, dec in (
                ("table ivoa.obscore", "ivoa.obscore", "s_ra", "s_dec"),
                ("view over field_index + lightcurve_stats", "ivoa.obscore_view", "s_ra",
                 "s_dec"),
                ("rome.field_index", "rome.field_index", "ra", "dec"),
            ):  # fmt: skip
                places = iter(centres(n_fields, repeats + 1, seed=9))

                def run(table=table, ra=ra, dec=dec, places=places):
                    sql = pg_cone_sql(table, ra, dec, *next(places))
                    with cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)") as copy:
                        for _ in copy:
                            pass

                out[label] = statistics.median(_time(run, repeats))
            cur.execute("DROP VIEW ivoa.obscore_view")
    finally:
        con.close()
    return out


def report(title: str, values: dict[str, float], unit: str = "ms") -> None:
    print(f"\n{title}")
    for k, v in values.items():
        if k.startswith("rows per cone"):
            print(f"  {k:58s} {v:12.0f}")
        else:
            print(f"  {k:58s} {v * 1000:10.1f} {unit}")


def ingest_pair(ingest, targets: dict[str, object], dirs: list[Path], repeats: int, reset):
    """Ingest times with and without the ObsCore rows, alternating, ``repeats`` each (a
    busy shared machine: the minimum is reported with the median), each reading the
    fields from the page cache (the first of a pair used to read them from the disk)."""
    times: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(repeats):
        for kind in ("without", "with"):
            reset(targets[kind])
            warm_page_cache(*dirs)
            if kind == "without":
                with without_obscore():
                    times[kind].append(timed(lambda k=kind: ingest(targets[k], dirs)))
            else:
                times[kind].append(timed(lambda k=kind: ingest(targets[k], dirs)))
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    return (
        f"{best['with']:.1f} s with ivoa.obscore, {best['without']:.1f} s without (min of "
        f"{repeats}) -> ratio {best['with'] / best['without']:.3f}; medians "
        f"{med['with']:.1f} / {med['without']:.1f} s -> {med['with'] / med['without']:.3f}"
    )


def bench_duckdb(workdir: Path, dirs: list[Path], args) -> None:
    from romerea_vo.store import ingest_fields

    paths = {"with": workdir / "with.duckdb", "without": workdir / "without.duckdb"}

    def reset(path: Path) -> None:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".wal").unlink(missing_ok=True)

    print("\nDuckDB ingest:", ingest_pair(ingest_fields, paths, dirs, args.ingest_repeats, reset))
    report("DuckDB, in process, 6' cone SQL, p50", duckdb_view_vs_table(
        paths["with"], len(dirs), args.repeats))  # fmt: skip
    proc, base = serve(str(paths["with"]), 1, None, workdir / "work-duckdb")
    try:
        report("DuckDB over HTTP (TAP sync, BINARY2 VOTable), 6' cone, p50",
               http_cones(base, len(dirs), args.repeats))  # fmt: skip
    finally:
        stop(proc)


def bench_postgres(workdir: Path, dirs: list[Path], args) -> None:
    from romerea_vo.store.postgres import ingest_fields_pg
    from tests.pg import PgUnavailable, pg_cluster_running

    try:
        ctx = pg_cluster_running()
        cluster = ctx.__enter__()
    except PgUnavailable as exc:
        print(f"\nPostgreSQL skipped: {exc}")
        return
    try:
        urls = {
            kind: f"postgresql://{cluster.user}@127.0.0.1:{cluster.port}/{kind}_obscore"
            for kind in ("with", "without")
        }

        def reset(url: str) -> None:
            cluster.create_database(url.rpartition("/")[2])

        print("\nPostgreSQL ingest:",
              ingest_pair(ingest_fields_pg, urls, dirs, args.ingest_repeats, reset))  # fmt: skip
        report("PostgreSQL, in process, 6' cone SQL (COPY to CSV), p50",
               pg_view_vs_table(urls["with"], len(dirs), args.repeats))  # fmt: skip
        proc, base = serve(urls["with"], 1, None, workdir / "work-pg")
        try:
            report("PostgreSQL + pgSphere over HTTP (TAP sync, BINARY2 VOTable), 6' cone, p50",
                   http_cones(base, len(dirs), args.repeats))  # fmt: skip
        finally:
            stop(proc)
    finally:
        ctx.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=3)
    parser.add_argument("--stars", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "romerea-obscore"
    )
    parser.add_argument("--ingest-repeats", type=int, default=2)
    parser.add_argument("--no-pg", action="store_true", help="DuckDB only")
    parser.add_argument("--no-duckdb", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{args.fields} fields x {args.stars} stars, {args.images} images each")
    dirs = field_dirs(args.workdir, args.fields, args.stars, args.images)
    if not args.no_duckdb:
        bench_duckdb(args.workdir, dirs, args)
    if not args.no_pg:
        bench_postgres(args.workdir, dirs, args)


if __name__ == "__main__":
    main()
