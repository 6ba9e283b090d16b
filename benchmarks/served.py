"""What the benchmarks that talk to a live service share: a synthetic field ingested once
into a cached DuckDB file, and ``romerea-vo serve`` started on a free loopback port."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = ["serve", "stop", "synthetic_db"]


def synthetic_db(
    directory: Path, fields: Sequence[tuple[str, int, int]], *, seed: int | None = None
) -> Path:
    """``directory/rome.duckdb`` holding the synthetic ``(name, stars, images)`` fields,
    each synthesised into ``directory/<name>`` (both kept: made once)."""
    from romerea_vo.products.synthetic import synthesize_field
    from romerea_vo.store import ingest_fields

    db = directory / "rome.duckdb"
    dirs = []
    for name, n_stars, n_images in fields:
        field_dir = directory / name
        if not (field_dir / f"{name}_field_crossmatch.fits").exists():
            print(f"synthesising {name}: {n_stars} stars x {n_images} images ...", flush=True)
            extra = {} if seed is None else {"seed": seed}
            synthesize_field(field_dir, field=name, n_stars=n_stars, n_images=n_images, **extra)
        dirs.append(field_dir)
    if not db.exists():
        list(ingest_fields(db, dirs))
    return db


def serve(db: Path | str, *args: str, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """``romerea-vo serve --db DB --port 0 ARGS`` once it answers; (process, base URL).
    The server's output is kept in ``process.log`` (a full pipe would stall it)."""
    cmd = [sys.executable, "-m", "romerea_vo.cli", "serve", "--db", str(db), "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"TAP service: (http://\S+)/tap", line)
        if m:
            output: list[str] = []
            threading.Thread(target=output.extend, args=(proc.stdout,), daemon=True).start()
            proc.log = output  # type: ignore[attr-defined]
            base = m.group(1)
            while time.time() < deadline:  # the socket is bound before uvicorn listens
                try:
                    with urllib.request.urlopen(f"{base}/tap/availability", timeout=10):
                        return proc, base
                except OSError:
                    time.sleep(0.1)
            break
    proc.kill()
    raise SystemExit(f"the service did not start: {' '.join(cmd)}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a service started by `serve` (SIGTERM, then SIGKILL after 30 s)."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
