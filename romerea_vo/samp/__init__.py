"""SAMP bridge: stars selected in TOPCAT or Aladin come back as lightcurves.

* :mod:`romerea_vo.samp.sources`: where stars and lightcurves come from - local field
  products or a database (:class:`~romerea_vo.samp.sources.LocalSource`), or a running
  romerea-vo service (:class:`~romerea_vo.samp.sources.ServiceSource`).
* :mod:`romerea_vo.samp.tables`: fetching the tables other clients talk about (only
  from URLs a :class:`~romerea_vo.samp.tables.UrlPolicy` allows, cached by URL) and
  resolving their rows to ROME stars.
* :mod:`romerea_vo.samp.bridge`: the SAMP client itself (pyvo.samp).
"""

from .bridge import Bridge

__all__ = ["Bridge"]
