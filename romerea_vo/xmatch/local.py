"""Cross-matching against ROME stars held here: an ingested database or field directories.

* :class:`DatabaseRome` / :class:`DirectoryRome`: the stars to match (all, some fields,
  or those an ADQL condition on ``rome.stars`` selects), the epoch of each field's
  positions, and the lightcurve statistics of matched stars.
* :func:`match_positions`: every (row, star) pair within the radius, field by field so
  that positions with proper motions are first moved to that field's epoch;
  :func:`select_pairs` applies the mode (``all``, ``best``, ``best-unique``) to a pair
  set, wherever it came from (here or a TAP service).
* :func:`catalogue_result`: the output table (input columns, ROME identity, separation,
  optional statistics) with metadata from ``votable_schemas/``.

Epoch of ROME positions: pyDANDIA measures every star's pixel position on the primary
reference dataset's reference image (a stack of that dataset's best-seeing frames,
``use_ref = 1`` in IMAGES) and converts it to RA/Dec with a WCS fitted to Gaia
catalogue positions (ROME_FORMATS.md §3.2: "RA/Dec (ICRS) from the detecting dataset's
catalogue"). The Gaia reference positions tie the frame to ICRS, but a star that moves
is where it was when the reference frames were taken, so the epoch of a field's
positions is the mean time of those frames (falling back to the mean of the primary
dataset's images with photometry, then of all its images), as a Julian epoch; for the
survey's fields that is 2017-2019. Positions of orphan stars (seen only in a later
dataset) come from that dataset's reference image, a few months apart at most: a
1 arcsec radius is not sensitive to that except for the fastest movers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from astropy.table import MaskedColumn, Table
from numpy.typing import ArrayLike

from ..errors import InvalidRequestError
from ..ids import DEFAULT_AUTHORITY, did_prefix
from ..products import layout
from ..votable.schema import ColumnSchema, load_table_schema
from .core import crossmatch, propagate

__all__ = [
    "DatabaseRome",
    "DirectoryRome",
    "Pairs",
    "RomeStars",
    "catalogue_result",
    "julian_epoch",
    "match_positions",
    "reference_epoch",
    "rome_identity_columns",
    "select_index",
    "select_pairs",
    "statistics_columns",
]

_KEY_SHIFT = np.int64(2**40)  # field code * 2**40 + field_id: one int64 key per star


# --------------------------------------------------------------------------- stars


@dataclass
class RomeStars:
    """ROME stars to match: field (as an index into ``names``), field_id, ICRS degrees and
    publisher DID, one element per star. ``did`` may be None: the DIDs are then made from
    ``authority`` (as ``ingest`` makes them) for the stars asked for, not for every star."""

    names: tuple[str, ...]
    code: np.ndarray  # int index into names
    field_id: np.ndarray  # int64
    ra: np.ndarray
    dec: np.ndarray
    did: np.ndarray | None = None  # object (str)
    authority: str | None = None

    def __len__(self) -> int:
        return int(self.field_id.size)

    @property
    def field(self) -> np.ndarray:
        """Field names, one per star."""
        return np.asarray(self.names, dtype=object)[self.code] if len(self) else np.array([])

    def keys(self) -> np.ndarray:
        """One int64 key per star: field code * 2**40 + field_id."""
        return self.code.astype(np.int64) * _KEY_SHIFT + self.field_id

    def dids(self, idx: np.ndarray) -> np.ndarray:
        """The DIDs of stars ``idx`` (object array of str)."""
        if self.did is not None:
            return self.did[idx]
        authority = self.authority or DEFAULT_AUTHORITY
        prefixes = np.array([did_prefix(authority, n) for n in self.names], dtype=object)
        ids = self.field_id[idx].astype(str).astype(object)
        return prefixes[self.code[idx]] + ids if ids.size else ids

    def take(self, idx: np.ndarray) -> RomeStars:
        return RomeStars(
            self.names, self.code[idx], self.field_id[idx], self.ra[idx], self.dec[idx],
            None if self.did is None else self.did[idx], self.authority,
        )  # fmt: skip

    @classmethod
    def from_columns(
        cls, field: ArrayLike, field_id: ArrayLike, ra: ArrayLike, dec: ArrayLike, did: ArrayLike
    ) -> RomeStars:
        """From per-star arrays (field names as strings)."""
        field = np.asarray(field, dtype=object)
        names, code = np.unique(field.astype(str), return_inverse=True) if field.size else ((), ())
        return cls(
            tuple(str(n) for n in names),
            np.asarray(code, dtype=np.int32),
            np.asarray(field_id, dtype=np.int64),
            np.asarray(ra, dtype=np.float64),
            np.asarray(dec, dtype=np.float64),
            np.asarray(did, dtype=object),
        )

    @classmethod
    def concat(cls, parts: list[RomeStars], authority: str) -> RomeStars:
        """One set of stars from per-field parts whose DIDs are made from ``authority``."""
        names = tuple(dict.fromkeys(n for p in parts for n in p.names))
        index = {n: i for i, n in enumerate(names)}
        parts = [p for p in parts if len(p)]
        codes = [np.asarray([index[n] for n in p.names], np.int32)[p.code] for p in parts]

        def cat(arrays, dtype):
            return np.concatenate(arrays) if arrays else np.empty(0, dtype)

        return cls(
            names,
            cat(codes, np.int32),
            cat([p.field_id for p in parts], np.int64),
            cat([p.ra for p in parts], np.float64),
            cat([p.dec for p in parts], np.float64),
            None,
            authority,
        )


def julian_epoch(jd: ArrayLike) -> np.ndarray | float:
    """Julian epoch (e.g. 2018.5) of a Julian date; HJD differs from JD by minutes at most."""
    return 2000.0 + (np.asarray(jd, dtype=np.float64) - 2451545.0) / 365.25


def reference_epoch(hjd: ArrayLike, use_ref: ArrayLike | None, primary: ArrayLike) -> float | None:
    """The Julian epoch of a field's positions from its IMAGES rows: the mean HJD of the
    primary reference dataset's reference-stack images (``use_ref`` = 1), else of its
    images with photometry, else of any image with photometry; None without any HJD."""
    hjd = np.asarray(hjd, dtype=np.float64)
    primary = np.asarray(primary, dtype=bool)
    with np.errstate(invalid="ignore"):
        has_time = hjd > 0
    ref = np.zeros(hjd.size, bool) if use_ref is None else np.asarray(use_ref) == 1
    for pick in (has_time & primary & ref, has_time & primary, has_time):
        if pick.any():
            return float(julian_epoch(hjd[pick].mean()))
    return None


def _check_fields(wanted: list[str] | None, available: list[str], where: str) -> list[str]:
    if not available:
        raise InvalidRequestError(f"{where} holds no ROME field")
    if not wanted:
        return list(available)
    unknown = [f for f in wanted if f not in available]
    if unknown:
        raise InvalidRequestError(
            f"{where} has no field {', '.join(unknown)}; its fields: {', '.join(available)}"
        )
    return list(dict.fromkeys(wanted))


def _stars_catalog(physical: str):
    """An ADQL catalogue with ``rome.stars`` only, at the given physical name."""
    from ..adql import Catalog, ColumnInfo, TableInfo

    schema = load_table_schema("stars")
    cols = tuple(
        ColumnInfo(c.name, c.datatype, xtype=c.xtype, arraysize=c.arraysize, unit=c.unit)
        for c in schema.columns
    )
    return Catalog([TableInfo(schema.qualified_name, physical, cols)])


def _where_sql(where: str, physical: str, target: str = "duckdb") -> str:
    """SQL giving (field, field_id) of the ``rome.stars`` rows an ADQL condition keeps."""
    from ..adql import ADQLError, translate

    try:
        t = translate(
            f"SELECT field, field_id FROM rome.stars WHERE {where}",
            _stars_catalog(physical),
            target=target,
        )
    except ADQLError as exc:
        raise InvalidRequestError(
            f"--where {where!r} is not a usable ADQL condition: {exc}"
        ) from None
    return f"SELECT DISTINCT k_field, k_field_id FROM ({t.sql}) AS q(k_field, k_field_id)"


def _run(cursor, sql: str, params=None, what: str = "query"):
    """An Arrow table from a DuckDB connection or a database session (either engine)."""
    from ..store.session import QueryFailed

    try:
        if hasattr(cursor, "arrow_table"):
            return cursor.arrow_table(sql, params or None)
        return cursor.sql(sql, params=params or None).to_arrow_table()
    except (duckdb.Error, QueryFailed) as exc:
        raise InvalidRequestError(f"{what} failed: {exc}") from None


class DatabaseRome:
    """ROME stars of an ingested database (``romerea-vo ingest``; a DuckDB file or a
    PostgreSQL URL), opened read-only."""

    def __init__(self, path: str | Path):
        from ..store import open_database

        self.db = open_database(path)
        self.path = self.db.path  # a PostgreSQL URL without its password
        self.description = f"database {self.path}"
        self.authority = self.db.authority

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> DatabaseRome:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _physical(self, table: str) -> str:
        return self.db.physical_name(load_table_schema(table))

    def field_names(self, wanted: list[str] | None = None) -> list[str]:
        return _check_fields(wanted, sorted(self.db.fields), str(self.path))

    def stars(self, fields: list[str] | None = None, where: str | None = None) -> RomeStars:
        """The stars of the chosen fields (all by default) that ``where`` keeps."""
        names = self.field_names(fields)
        sql = f"SELECT f.field_id, f.ra, f.dec FROM {self._physical('field_index')} AS f"
        if where:
            sql += (
                f" JOIN ({_where_sql(where, self._physical('stars'), self.db.target)}) AS k "
                "ON f.field = k.k_field AND f.field_id = k.k_field_id"
            )
        # No ORDER BY: DuckDB keeps the stored order (by Dec, as ingested), which also
        # makes the chunks sent to a TAP service compact on the sky.
        sql += " WHERE f.field = ?"
        parts = []
        cur = self.db.session()
        try:
            for name in names:  # one query per field: no per-star field strings
                t = _run(cur, sql, [name], "--where" if where else "reading the stars")
                n = t.num_rows
                parts.append(
                    RomeStars(
                        (name,),
                        np.zeros(n, np.int32),
                        t.column("field_id").to_numpy(),
                        t.column("ra").to_numpy(),
                        t.column("dec").to_numpy(),
                    )
                )
        finally:
            cur.close()
        return RomeStars.concat(parts, self.authority)

    def epochs(self, fields: list[str]) -> dict[str, float]:
        """Julian epoch of each field's positions (see the module docstring)."""
        if not fields:
            return {}
        sql = (
            f"SELECT i.field, i.hjd, i.use_ref, d.primary_ref FROM {self._physical('images')} AS i "
            f"JOIN {self._physical('datasets')} AS d ON i.field = d.field "
            f"AND i.dataset_code = d.dataset_code WHERE i.field IN ({', '.join('?' * len(fields))})"
        )
        cur = self.db.session()
        try:
            t = _run(cur, sql, list(fields), "reading the images")
        finally:
            cur.close()
        field = t.column("field").to_numpy(zero_copy_only=False)
        hjd = t.column("hjd").to_numpy(zero_copy_only=False).astype(float)
        use_ref, primary = (
            t.column(c).cast(pa.int8()).fill_null(0).to_numpy() == 1
            for c in ("use_ref", "primary_ref")
        )  # boolean or integer flags
        return _epochs_by_field(fields, field, hjd, use_ref, primary)

    def statistics(self, stars: RomeStars) -> Table:
        """rome.lightcurve_stats rows of these stars."""
        keys = pa.table({"k_field": stars.field.astype(str), "k_field_id": stars.field_id})
        cur = self.db.session()
        try:
            cur.register("xmatch_keys", keys)
            t = _run(
                cur,
                f"SELECT s.* FROM {self._physical('lightcurve_stats')} AS s JOIN xmatch_keys AS k "
                "ON s.field = k.k_field AND s.field_id = k.k_field_id",
                what="reading the lightcurve statistics",
            )
        finally:
            cur.close()
        return Table({n: t.column(n).to_numpy(zero_copy_only=False) for n in t.column_names})


def _epochs_by_field(fields, field, hjd, use_ref, primary) -> dict[str, float]:
    out = {}
    for name in fields:
        rows = field == name
        epoch = reference_epoch(hjd[rows], use_ref[rows], primary[rows])
        if epoch is None:
            raise InvalidRequestError(
                f"field {name}: no image has a time, so the epoch of its positions is "
                "unknown; give --rome-epoch"
            )
        out[name] = epoch
    return out


class DirectoryRome:
    """ROME stars read straight from field directories (crossmatch FITS files)."""

    def __init__(self, directories: list[str | Path], authority: str | None = None):
        from ..products import open_field

        self.authority = authority or DEFAULT_AUTHORITY
        self.fields: dict[str, Any] = {}
        try:
            for d in directories:
                field = open_field(d)
                if field.name in self.fields:
                    field.close()
                    raise InvalidRequestError(f"field {field.name} is given twice ({d})")
                self.fields[field.name] = field
        except BaseException:
            self.close()
            raise
        self.description = "field directories " + ", ".join(str(d) for d in directories)

    def close(self) -> None:
        for field in self.fields.values():
            field.close()

    def __enter__(self) -> DirectoryRome:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def field_names(self, wanted: list[str] | None = None) -> list[str]:
        return _check_fields(wanted, list(self.fields), "the field directories")

    def _where_keys(self, names: list[str], where: str) -> set[tuple[str, int]]:
        from ..store.ddl import CATALOG, create_table_sql, physical_name
        from ..store.field_tables import stars_table

        schema = load_table_schema("stars")
        con = duckdb.connect()
        try:
            con.execute(f"ATTACH ':memory:' AS {CATALOG}")
            con.execute(f"CREATE SCHEMA {CATALOG}.rome")
            con.execute(create_table_sql(schema))
            for name in names:
                con.register("field_stars", stars_table(self.fields[name]))
                con.execute(f"INSERT INTO {physical_name(schema)} SELECT * FROM field_stars")
                con.unregister("field_stars")
            t = _run(con, _where_sql(where, physical_name(schema)), what="--where")
        finally:
            con.close()
        return set(zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True))

    def stars(self, fields: list[str] | None = None, where: str | None = None) -> RomeStars:
        """The stars of the chosen fields (all by default) that ``where`` keeps."""
        names = self.field_names(fields)
        keep = self._where_keys(names, where) if where else None
        parts = []
        for name in names:
            arrays = self.fields[name].index_arrays
            fid = np.asarray(arrays["field_id"], dtype=np.int64)
            rows = np.arange(fid.size)
            if keep is not None:
                wanted = np.array(sorted(i for f, i in keep if f == name), dtype=np.int64)
                rows = np.flatnonzero(np.isin(fid, wanted))
            parts.append(
                RomeStars(
                    (name,),
                    np.zeros(rows.size, np.int32),
                    fid[rows],
                    np.asarray(arrays["ra"], dtype=np.float64)[rows],
                    np.asarray(arrays["dec"], dtype=np.float64)[rows],
                )
            )
        return RomeStars.concat(parts, self.authority)

    def epochs(self, fields: list[str]) -> dict[str, float]:
        """Julian epoch of each field's positions (see the module docstring)."""
        out = {}
        for name in fields:
            field = self.fields[name]
            images = field.images
            primary = np.asarray(images["dataset_code"]) == field.primary_dataset
            use_ref = np.asarray(images["use_ref"]) if "use_ref" in images.colnames else None
            out.update(
                _epochs_by_field(
                    [name], np.full(len(images), name), np.asarray(images["hjd"], float),
                    use_ref if use_ref is not None else np.zeros(len(images)), primary,
                )
            )  # fmt: skip
        return out

    def statistics(self, stars: RomeStars) -> Table:
        """Lightcurve statistics of these stars, computed from the cubes (only their rows
        are read)."""
        from astropy.table import vstack

        from ..statistics_pass import lightcurve_statistics

        parts = []
        for code, name in enumerate(stars.names):
            ids = stars.field_id[stars.code == code]
            if ids.size:
                parts.append(lightcurve_statistics(self.fields[name], field_ids=ids))
        if not parts:
            return Table(names=["field", "field_id", "filter"], dtype=[str, np.int64, str])
        return vstack(parts, metadata_conflicts="silent")


# --------------------------------------------------------------------------- matching


@dataclass
class Pairs:
    """Pairs of (row, star) indices and their separation in arcsec."""

    left: np.ndarray
    right: np.ndarray
    sep: np.ndarray

    def __len__(self) -> int:
        return int(self.left.size)

    def take(self, idx: np.ndarray) -> Pairs:
        return Pairs(self.left[idx], self.right[idx], self.sep[idx])

    def sorted(self) -> Pairs:
        """By left index, then separation, then right index."""
        return self.take(np.lexsort((self.right, self.sep, self.left)))

    @classmethod
    def concat(cls, parts: list[Pairs]) -> Pairs:
        if not parts:
            return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
        return cls(
            np.concatenate([p.left for p in parts]).astype(np.int64, copy=False),
            np.concatenate([p.right for p in parts]).astype(np.int64, copy=False),
            np.concatenate([p.sep for p in parts]).astype(np.float64, copy=False),
        )


def match_positions(
    ra: np.ndarray,
    dec: np.ndarray,
    rome: RomeStars,
    radius_arcsec: float,
    *,
    motion: tuple[np.ndarray, np.ndarray, float] | None = None,
    epochs: dict[str, float] | None = None,
) -> Pairs:
    """Every (row, star) pair within ``radius_arcsec``, sorted.

    ``motion`` = (pmra with cos(dec), pmdec in mas/yr, epoch of ``ra``/``dec``): each
    field's stars are matched with the positions moved to that field's epoch
    (``epochs``). Rows with NaN positions never match."""
    if motion is None:
        m = crossmatch(ra, dec, rome.ra, rome.dec, radius_arcsec, mode="all")
        return Pairs(m.left, m.right, m.sep_arcsec)
    pmra, pmdec, epoch = motion
    assert epochs is not None  # the caller gives the fields' epochs with a motion
    parts = []
    for code, name in enumerate(rome.names):
        idx = np.flatnonzero(rome.code == code)
        if not idx.size:
            continue
        pra, pdec = propagate(ra, dec, pmra, pmdec, epoch, epochs[name])
        m = crossmatch(pra, pdec, rome.ra[idx], rome.dec[idx], radius_arcsec, mode="all")
        parts.append(Pairs(m.left, idx[m.right], m.sep_arcsec))
    return Pairs.concat(parts).sorted()


def _nearest(group: np.ndarray, sep: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Index of the smallest ``sep`` in each ``group`` (ties: the smallest ``other``)."""
    if group.size == 0:
        return np.empty(0, np.int64)
    order = np.lexsort((other, sep, group))
    g = group[order]
    first = np.ones(g.size, bool)
    first[1:] = g[1:] != g[:-1]
    return order[first]


def select_index(pairs: Pairs, mode: str) -> np.ndarray:
    """Indices of the pairs ``mode`` keeps, ordered by row, separation, star.

    ``all``: every pair; ``best``: the nearest star of each row; ``best-unique``: pairs
    that are each other's nearest (ties: the lower index)."""
    if mode == "all":
        keep = np.arange(len(pairs))
    elif mode == "best":
        keep = _nearest(pairs.left, pairs.sep, pairs.right)
    elif mode == "best-unique":
        keep = np.intersect1d(
            _nearest(pairs.left, pairs.sep, pairs.right),
            _nearest(pairs.right, pairs.sep, pairs.left),
        )
    else:
        raise InvalidRequestError(f"unknown mode {mode!r}; use best, all or best-unique")
    sub = pairs.take(keep)
    return keep[np.lexsort((sub.right, sub.sep, sub.left))]


def select_pairs(pairs: Pairs, mode: str) -> Pairs:
    """The pairs ``mode`` keeps (see :func:`select_index`), sorted by row."""
    return pairs.take(select_index(pairs, mode))


# --------------------------------------------------------------------------- output


def free_name(name: str, taken: set[str], prefix: str = "rome_") -> str:
    """``name``, else ``prefix + name``, else ``name_2``, ``name_3``... (case-insensitive),
    recorded in ``taken``."""
    lowered = {t.lower() for t in taken}
    candidates = [name, prefix + name] if prefix and not name.startswith(prefix) else [name]
    for candidate in candidates:
        if candidate.lower() not in lowered:
            taken.add(candidate)
            return candidate
    i = 2
    while f"{candidates[-1]}_{i}".lower() in lowered:
        i += 1
    taken.add(f"{candidates[-1]}_{i}")
    return f"{candidates[-1]}_{i}"


def _ucd(spec: ColumnSchema, keep_main: bool) -> str | None:
    if spec.ucd is None or keep_main:
        return spec.ucd
    return ";".join(w for w in spec.ucd.split(";") if w != "meta.main") or None


def _masked(values, mask, name: str, spec: ColumnSchema, keep_main: bool) -> MaskedColumn:
    col = MaskedColumn(
        values, mask=mask, name=name, unit=spec.astropy_unit, description=spec.description
    )
    col.meta["ucd"] = _ucd(spec, keep_main)
    return col


def rome_identity_columns(
    rome: RomeStars, star: np.ndarray, taken: set[str], *, keep_main: bool = False
) -> list[MaskedColumn]:
    """``field, field_id, did, rome_ra, rome_dec`` of star index ``star`` per output row
    (-1: no star, NULL). Names already ``taken`` get a ``rome_`` prefix; UCDs lose
    ``meta.main`` unless ``keep_main`` (the input's own columns are the main ones)."""
    schema = load_table_schema("field_index")
    none = star < 0
    safe = np.where(none, 0, star)
    has = len(rome) > 0

    def values(arr, fill):
        return np.where(none, fill, arr[safe]) if has else np.full(star.size, fill)

    names = np.asarray(rome.names, dtype=object)
    out = [
        _masked(values(names[rome.code] if has else names, "").astype(str), none,
                free_name("field", taken), schema.by_name["field"], keep_main),
        _masked(values(rome.field_id, 0), none, free_name("field_id", taken),
                schema.by_name["field_id"], keep_main),
        _masked(np.where(none, "", rome.dids(safe) if has else "").astype(str), none,
                free_name("did", taken), schema.by_name["did"], keep_main),
        _masked(values(rome.ra, np.nan), none, free_name("rome_ra", taken),
                schema.by_name["ra"], keep_main),
        _masked(values(rome.dec, np.nan), none, free_name("rome_dec", taken),
                schema.by_name["dec"], keep_main),
    ]  # fmt: skip
    return out


def xmatch_column(name: str, values: ArrayLike, mask: ArrayLike, taken: set[str]) -> MaskedColumn:
    """A column the match computes (``sep_arcsec``, ``n_within``, ``bad_position``),
    described by votable_schemas/xmatch.toml."""
    spec = load_table_schema("xmatch").by_name[name]
    return _masked(values, mask, free_name(name, taken, prefix="xm_"), spec, keep_main=True)


def statistics_columns(
    stats: Table, rome: RomeStars, star: np.ndarray, taken: set[str]
) -> list[MaskedColumn]:
    """Lightcurve statistics per filter (``median_mag_ip``, ...) of star ``star`` per
    output row; NULL without a star, and for a filter in which the star has no good
    point (``n_good_<filter>`` is 0 then)."""
    schema = load_table_schema("lightcurve_stats")
    stat_specs = schema.columns[3:]
    index = {n: i for i, n in enumerate(rome.names)}
    s_field = np.asarray(stats["field"]).astype(str) if len(stats) else np.array([], str)
    s_code = np.array([index.get(f, -1) for f in s_field], dtype=np.int64)
    s_key = s_code * _KEY_SHIFT + np.asarray(stats["field_id"], dtype=np.int64)
    s_filter = np.asarray(stats["filter"]).astype(str) if len(stats) else np.array([], str)
    none = star < 0
    safe = np.where(none, 0, star)
    row_key = rome.keys()[safe] if len(rome) else np.zeros(star.size, np.int64)
    cols = []
    for flt in layout.FILTERS:
        sel = np.flatnonzero((s_filter == flt) & (s_code >= 0))
        order = sel[np.argsort(s_key[sel], kind="stable")]
        keys = s_key[order]
        pos = np.searchsorted(keys, row_key)
        found = ~none & (pos < keys.size)
        found[found] = keys[pos[found]] == row_key[found]
        src = order[np.where(found, pos, 0)] if order.size else np.zeros(star.size, np.int64)
        for spec in stat_specs:
            name = free_name(f"{spec.name}_{flt}", taken)
            column = stats[spec.name]
            data = np.asarray(column)[src] if len(stats) else np.zeros(star.size)
            mask = ~found
            if len(stats):  # NULL (or NaN) statistics: an index undefined for that star
                mask = mask | np.ma.getmaskarray(column)[src]
                if data.dtype.kind == "f":
                    mask |= np.isnan(data)
            if spec.name == "n_good":
                data = np.where(found, data, 0).astype(np.int32)
                mask = none
            desc = f"{spec.description} Filter {flt} (rome.lightcurve_stats)."
            spec_f = ColumnSchema(
                name=name, datatype=spec.datatype, description=desc, unit=spec.unit,
                ucd=spec.ucd,
            )  # fmt: skip
            cols.append(_masked(data, mask, name, spec_f, keep_main=True))
    return cols


def catalogue_result(
    table: Table,
    rome: RomeStars,
    chosen: Pairs,
    mode: str,
    *,
    n_within: np.ndarray,
    bad: np.ndarray,
    stats: Table | None = None,
) -> Table:
    """The output of matching ``table`` (the user's catalogue) with ROME stars.

    ``best``: every row of ``table`` in order, the ROME columns NULL where no star is
    within the radius (a left join), plus ``n_within`` and ``bad_position``; ``all`` and
    ``best-unique``: one row per chosen pair, ordered by input row then separation."""
    n = len(table)
    if mode == "best":
        out = table.copy(copy_data=False)
        star = np.full(n, -1, np.int64)
        star[chosen.left] = chosen.right
        sep = np.full(n, np.nan)
        sep[chosen.left] = chosen.sep
    else:
        out = table[chosen.left]
        star = chosen.right
        sep = chosen.sep
    taken = set(out.colnames)
    cols = rome_identity_columns(rome, star, taken)
    cols.append(xmatch_column("sep_arcsec", sep, star < 0, taken))
    if mode == "best":
        cols.append(xmatch_column("n_within", n_within.astype(np.int32), bad, taken))
        cols.append(xmatch_column("bad_position", bad, np.zeros(n, bool), taken))
    if stats is not None:
        cols += statistics_columns(stats, rome, star, taken)
    out.add_columns(cols)
    out.meta = {}
    return out
