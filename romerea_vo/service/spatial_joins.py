"""Positional joins of a TAP query computed with the cross-match core.

The ADQL translator leaves cross-match conditions (``CONTAINS(POINT, CIRCLE)``,
``DISTANCE(...) < r`` between the position columns of two tables) to the caller: the
SQL joins both tables through a relation of matched row keys (see
:mod:`romerea_vo.adql.spatial_join`). :class:`SpatialJoinRunner` computes those pairs
with :class:`romerea_vo.xmatch.SkyIndex` and registers them on the query's cursor.

Positions and indexes of the stored tables are kept between queries (the database is
opened read-only, so they cannot go stale); uploads are read per query.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from ..adql.model import SpatialJoin, SpatialJoinSide
from ..store.contract import CatalogSession
from ..xmatch import MatchCancelled, SkyIndex, zone_height

#: A query's positional joins may not produce more pairs than this.
MAX_PAIRS = 20_000_000
#: Memory for cached positions and indexes of stored tables.
CACHE_BYTES = 512 * 2**20


class _Positions:
    def __init__(self, keys: np.ndarray, ra: np.ndarray, dec: np.ndarray):
        self.keys, self.ra, self.dec = keys, ra, dec
        self.nbytes = keys.nbytes + ra.nbytes + dec.nbytes


class SpatialJoinRunner:
    """Computes the pair relations a translated query reads."""

    def __init__(self, *, max_pairs: int = MAX_PAIRS, cache_bytes: int = CACHE_BYTES):
        self.max_pairs = max_pairs
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.last_pair_counts: list[int] = []  # of the last query, for tests and logs

    def register(
        self,
        session: CatalogSession,
        joins: Iterable[SpatialJoin],
        per_query: set[str],
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        """Register every join's pairs on ``session``; ``per_query`` names the physical
        tables that exist only for this query (uploads), which are not cached.

        Raises TooManyPairs (more than ``max_pairs``, refused before the pairs are
        made when an estimate predicts it) and MatchCancelled once ``cancelled()`` is true.
        """
        counts = []
        for join in joins:
            if cancelled is not None and cancelled():
                raise MatchCancelled("the positional match was cancelled")
            left = self._positions(session, join.left, join.left.physical not in per_query)
            right = self._positions(session, join.right, join.right.physical not in per_query)
            radius_arcsec = join.radius_deg * 3600.0
            height = zone_height(radius_arcsec)
            # Index the larger side (cached when stored); the smaller one probes it.
            swap = left.keys.size > right.keys.size
            probe, indexed, indexed_side = (
                (right, left, join.left) if swap else (left, right, join.right)
            )
            index = self._index(
                indexed, indexed_side, height, indexed_side.physical not in per_query
            )
            found = index.match(
                probe.ra,
                probe.dec,
                radius_arcsec,
                strict=join.strict,
                max_pairs=self.max_pairs,
                cancelled=cancelled,
            )
            probe_keys, indexed_keys = probe.keys[found.left], indexed.keys[found.right]
            l_keys, r_keys = (indexed_keys, probe_keys) if swap else (probe_keys, indexed_keys)
            session.register(join.pairs, pa.table({"l": l_keys, "r": r_keys}))
            counts.append(len(found))
        self.last_pair_counts = counts

    def _cached(self, key: tuple):
        with self._lock:
            value = self._cache.get(key)
            if value is not None:
                self._cache.move_to_end(key)
            return value

    def _remember(self, key: tuple, value, nbytes: int) -> None:
        with self._lock:
            self._cache[key] = value
            total = sum(v.nbytes for v in self._cache.values())
            while total > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                total -= old.nbytes

    def _positions(self, session: CatalogSession, side: SpatialJoinSide, cache: bool) -> _Positions:
        key = ("positions", side.physical, side.row_key, side.ra, side.dec)
        if cache and (found := self._cached(key)) is not None:
            return found
        table = session.arrow_table(
            f'SELECT "{side.row_key}", {side.ra}, {side.dec} FROM {side.physical}'
        )
        keys = table.column(0).to_numpy()
        # NULL positions become NaN and never match, as in SQL; RA is taken modulo 360
        # because the SQL test is periodic in RA and the core expects [0, 360).
        ra = np.mod(table.column(1).cast(pa.float64()).to_numpy(zero_copy_only=False), 360.0)
        dec = table.column(2).cast(pa.float64()).to_numpy(zero_copy_only=False)
        positions = _Positions(np.asarray(keys, dtype=np.int64), ra, dec)
        if cache:
            self._remember(key, positions, positions.nbytes)
        return positions

    def _index(
        self, positions: _Positions, side: SpatialJoinSide, height: float, cache: bool
    ) -> SkyIndex:
        key = ("index", side.physical, side.row_key, side.ra, side.dec, height)
        if cache and (found := self._cached(key)) is not None:
            return found
        index = SkyIndex(positions.ra, positions.dec, height)
        if cache:
            self._remember(key, index, index.nbytes)
        return index
