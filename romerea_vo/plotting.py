"""Lightcurve plots (PNG): one panel per band, magnitudes inverted, shared time axis."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from astropy.table import Table
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BAND_COLOURS = {"gp": "#2a9d3a", "rp": "#d62728", "ip": "#7b2d26"}
BAND_LABELS = {"gp": "g′", "rp": "r′", "ip": "i′"}
HJD_OFFSET = 2450000.0


def plot_lightcurve(
    table: Table,
    out: str | Path | io.BytesIO,
    *,
    title: str | None = None,
    mag_column: str | None = None,
    model: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> None:
    """Write a PNG of a lightcurve Table (as returned by ``lightcurves.lightcurve``);
    ``model`` maps a band to (hjd, magnitude) arrays of a model curve drawn over it.

    Uses matplotlib's object API with the Agg canvas (no pyplot global state), so it
    is safe to call from service worker threads.
    """
    mag_column = mag_column or table.meta.get("mag_column", "normalized_mag")
    err_column = f"{mag_column}_err"
    bands = [b for b in BAND_COLOURS if b in set(table["filter"])] if len(table) else []
    fig = Figure(figsize=(9, 2.2 + 1.9 * max(1, len(bands))), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(bands)), 1, sharex=True, squeeze=False)[:, 0]
    if not bands:
        axes[0].text(0.5, 0.5, "no points pass the quality cut", ha="center", va="center",
                     transform=axes[0].transAxes)  # fmt: skip
    for ax, band in zip(axes, bands, strict=False):
        rows = np.asarray(table["filter"]) == band
        t = np.asarray(table["hjd"])[rows] - HJD_OFFSET
        mag = np.asarray(table[mag_column])[rows]
        err = np.asarray(table[err_column])[rows]
        ax.errorbar(t, mag, yerr=err, fmt=".", ms=3, lw=0.6, color=BAND_COLOURS[band],
                    label=f"{BAND_LABELS[band]} ({rows.sum()} points)")  # fmt: skip
        if model and band in model:
            mt, mm = model[band]
            ax.plot(mt - HJD_OFFSET, mm, "-", color="black", lw=0.9, label="point-lens model")
        ax.invert_yaxis()
        ax.set_ylabel(f"{BAND_LABELS[band]} [mag]")
        ax.legend(loc="upper right", fontsize="small", frameon=False)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(useOffset=False)
    axes[-1].set_xlabel(f"HJD − {HJD_OFFSET:.0f} [d]")
    if title is None:
        meta = table.meta
        star = f"{meta.get('field', '')} {meta.get('field_id', '')}"
        title = f"{star}  ({mag_column}, {meta.get('quality', '')} points)"
    axes[0].set_title(title.strip())
    fig.tight_layout()
    fig.savefig(out, format="png")
