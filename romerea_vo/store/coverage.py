"""What a database covers on the sky, in time and in wavelength.

A field's footprint is a MOC 2.0 (mocpy): the convex hull of its stars, plus the cell of
every star (so that no star lies outside, whatever the hull's cell boundaries do); the
service's is their union. Time coverage is the first to the last epoch of the field's
images (MJD, from the images' HJD), spectral coverage the g'–i' range of its ObsCore
rows. The space–time MOC pairs each field's footprint with its exposures: it answers
"was this position observed at that time?".
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import Latitude, Longitude
from astropy.time import Time
from mocpy import MOC, STMOC
from scipy.spatial import ConvexHull, QhullError

from ..votable.schema import load_table_schema
from .contract import CatalogDatabase

__all__ = ["SPACE_ORDER", "Coverage", "FieldCoverage", "compute_coverage", "footprint"]

SPACE_ORDER = 12
"""HEALPix order of the footprints: cells of 0.86′, about a tenth of a field's side."""
TIME_ORDER = 35
"""Time order of the space–time MOC: 2^(61-35) µs = 67 s, shorter than an exposure."""
HJD_TO_MJD = 2400000.5


@dataclass(frozen=True)
class FieldCoverage:
    """One field's footprint, its first and last epoch (MJD) and its number of epochs."""

    field: str
    moc: MOC
    n_stars: int
    t_min: float | None
    t_max: float | None
    n_epochs: int


@dataclass(frozen=True)
class Coverage:
    """The whole database's coverage; empty (no fields) for a database of external
    catalogues only."""

    fields: tuple[FieldCoverage, ...]
    moc: MOC
    t_min: float | None
    """MJD of the first epoch of any field."""
    t_max: float | None
    em_min: float | None
    """Shortest wavelength (m) of the bands observed."""
    em_max: float | None
    stmoc: STMOC | None

    def field(self, name: str) -> FieldCoverage | None:
        """The coverage of field ``name``, or None."""
        return next((f for f in self.fields if f.field == name), None)

    def summary(self) -> dict:
        """The coverage as JSON-able data (no MOC cells: those are the MOC documents)."""

        def area(moc: MOC) -> float:
            return float(moc.sky_fraction * 4 * np.pi * (180 / np.pi) ** 2)

        return {
            "moc_order": SPACE_ORDER,
            "area_deg2": area(self.moc),
            "t_min_mjd": self.t_min,
            "t_max_mjd": self.t_max,
            "em_min_m": self.em_min,
            "em_max_m": self.em_max,
            "fields": [
                {
                    "field": f.field,
                    "n_stars": f.n_stars,
                    "area_deg2": area(f.moc),
                    "t_min_mjd": f.t_min,
                    "t_max_mjd": f.t_max,
                    "n_epochs": f.n_epochs,
                }
                for f in self.fields
            ],
        }


def moc_fits(moc: MOC | STMOC) -> bytes:
    """A MOC as a FITS MOC 2.0 document."""
    buffer = io.BytesIO()
    moc.serialize(format="fits").writeto(buffer)
    return buffer.getvalue()


def footprint(ra: np.ndarray, dec: np.ndarray, order: int = SPACE_ORDER) -> MOC:
    """The MOC of a field whose stars are at ``ra``, ``dec`` (degrees): their convex hull
    (in the tangent plane at their centre; a field is far smaller than a hemisphere) and
    the cell of each star."""
    lon, lat = Longitude(ra * u.deg), Latitude(dec * u.deg)
    cells = MOC.from_lonlat(lon, lat, max_norder=order)
    if len(ra) < 3:
        return cells
    x, y = _tangent_plane(np.radians(ra), np.radians(dec))
    try:
        hull = ConvexHull(np.column_stack([x, y]))
    except QhullError:  # all on a line: the cells are the footprint
        return cells
    corners = hull.vertices  # counter-clockwise in the tangent plane
    polygon = MOC.from_polygon(lon[corners], lat[corners], max_depth=order)
    return polygon.union(cells)


def _tangent_plane(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xyz = np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    centre = xyz.mean(axis=0)
    centre /= np.linalg.norm(centre)
    east = np.cross([0.0, 0.0, 1.0], centre)
    if np.linalg.norm(east) < 1e-12:  # centred on a pole
        east = np.array([1.0, 0.0, 0.0])
    east /= np.linalg.norm(east)
    north = np.cross(centre, east)
    depth = xyz @ centre
    return (xyz @ east) / depth, (xyz @ north) / depth


def compute_coverage(db: CatalogDatabase) -> Coverage:
    """The coverage of every ROME field in ``db`` (read from rome.field_index,
    rome.images and ivoa.obscore)."""
    empty = MOC.new_empty(SPACE_ORDER)
    if not db.has_rome:
        return Coverage((), empty, None, None, None, None, None)
    index = db.physical_name(load_table_schema("field_index"))
    images = db.physical_name(load_table_schema("images"))
    obscore = db.physical_name(load_table_schema("obscore"))
    session = db.session()
    try:
        positions = session.arrow_table(f"SELECT field, ra, dec FROM {index}")
        epochs = session.arrow_table(
            f"SELECT field, hjd, exposure FROM {images} WHERE hjd IS NOT NULL AND hjd > 0"
        )
        ((em_min, em_max),) = session.fetchall(f"SELECT MIN(em_min), MAX(em_max) FROM {obscore}")
    finally:
        session.close()
    field_names = positions.column("field").to_numpy(zero_copy_only=False)
    ra = positions.column("ra").to_numpy(zero_copy_only=False).astype(float)
    dec = positions.column("dec").to_numpy(zero_copy_only=False).astype(float)
    epoch_fields = epochs.column("field").to_numpy(zero_copy_only=False)
    hjd = epochs.column("hjd").to_numpy(zero_copy_only=False).astype(float)
    exposure = epochs.column("exposure").to_numpy(zero_copy_only=False)
    exposure = np.nan_to_num(np.asarray(exposure, dtype=float), nan=0.0)
    fields: list[FieldCoverage] = []
    starts: list[float] = []
    ends: list[float] = []
    spaces: list[MOC] = []
    for name in sorted(set(field_names.tolist())):
        mine = field_names == name
        moc = footprint(ra[mine], dec[mine])
        when = epoch_fields == name
        half = np.maximum(exposure[when], 1.0) / 2 / 86400.0  # HJD is of mid-exposure
        first = hjd[when] - HJD_TO_MJD - half
        last = hjd[when] - HJD_TO_MJD + half
        fields.append(
            FieldCoverage(
                field=name,
                moc=moc,
                n_stars=int(mine.sum()),
                t_min=float(first.min()) if first.size else None,
                t_max=float(last.max()) if last.size else None,
                n_epochs=int(first.size),
            )
        )
        starts.extend(first.tolist())
        ends.extend(last.tolist())
        spaces.extend([moc] * first.size)
    union = empty
    for f in fields:
        union = union.union(f.moc)
    stmoc = None
    if starts:
        stmoc = STMOC.from_spatial_coverages(
            Time(starts, format="mjd", scale="utc"),
            Time(ends, format="mjd", scale="utc"),
            spaces,
            time_depth=TIME_ORDER,
        )
    times = [f.t_min for f in fields if f.t_min is not None]
    ends_ = [f.t_max for f in fields if f.t_max is not None]
    return Coverage(
        fields=tuple(fields),
        moc=union,
        t_min=min(times) if times else None,
        t_max=max(ends_) if ends_ else None,
        em_min=float(em_min) if em_min is not None else None,
        em_max=float(em_max) if em_max is not None else None,
        stmoc=stmoc,
    )
