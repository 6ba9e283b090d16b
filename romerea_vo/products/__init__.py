"""pyDANDIA field data products: read (every era), write (era E), synthesise."""

from .layout import (
    PHOTOMETRY_LAYOUTS,
    PhotometryLayout,
    QCFlag,
    good_measurement,
    valid_measurement,
)
from .lookup import StarRef
from .reader import Field, QuadrantCube, open_field

__all__ = [
    "PHOTOMETRY_LAYOUTS",
    "Field",
    "PhotometryLayout",
    "QCFlag",
    "QuadrantCube",
    "StarRef",
    "good_measurement",
    "open_field",
    "valid_measurement",
]
