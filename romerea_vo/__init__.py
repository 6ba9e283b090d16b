"""romerea-vo: the ROME/REA microlensing survey's field data products in the Virtual Observatory."""

__version__ = "0.1.0"
