"""Reading VOTables back, with what astropy does not apply itself (TIMESYS)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from astropy.table import Table


def votable_to_table(source: str | Path | bytes | io.IOBase) -> Table:
    """Read a (lightcurve) VOTable into an astropy Table, with FIELDs that refer to a
    TIMESYS as ``Time`` columns and PARAMs in ``meta``.

    astropy 8 parses TIMESYS but leaves the columns plain floats (astropy issue 8724).
    Numeric times become ``Time(timeorigin, value, format="jd", scale=timescale)`` (exact
    for JD-origin values; unit must be days), ISO strings ``Time(value, scale=...)``; the
    TIMESYS attributes go to the column's ``info.meta``.
    """
    from astropy.io.votable import parse
    from astropy.time import Time

    if isinstance(source, bytes):
        source = io.BytesIO(source)
    vot = parse(source, verify="ignore")
    element = vot.get_first_table()
    table = element.to_table(use_names_over_ids=True)
    systems = {ts.ID: ts for ts in vot.iter_timesys()}
    for param in element.params:
        table.meta[param.name] = param.value
    for i, fld in enumerate(element.fields):
        ts = systems.get(fld.ref) if fld.ref else None
        if ts is None:
            continue
        name = table.colnames[i]
        col = table[name]
        scale = {"UNKNOWN": "local"}.get(ts.timescale, ts.timescale.lower())
        values = np.ma.getdata(col)
        if ts.timeorigin is None:
            times = Time(np.asarray(values).astype(str), scale=scale)
        else:
            if fld.unit is not None and str(fld.unit) != "d":
                values = (np.asarray(values, float) * fld.unit).to_value("d")
            origin = float(ts.timeorigin)
            times = Time(np.full(len(values), origin), np.asarray(values, float),
                         format="jd", scale=scale)  # fmt: skip
        times.info.description = col.info.description
        times.info.meta = {
            "timesys": ts.ID,
            "timeorigin": ts.timeorigin,
            "timescale": ts.timescale,
            "refposition": ts.refposition,
            "ucd": fld.ucd,
        }
        table.replace_column(name, times)
    return table
