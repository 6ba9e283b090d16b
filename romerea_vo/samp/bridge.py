"""The SAMP bridge: rows selected in TOPCAT (or Aladin) come back as lightcurve tables.

:class:`Bridge` is a pyvo.samp client named ``romerea-vo``. It subscribes to

* ``table.select.rowList`` (call or notify): the stars of the selected rows, one combined
  lightcurve table with an ``id`` column (or one table per star), capped at
  ``max_stars`` (a ``samp.warning`` says so);
* ``table.highlight.row``: that row's star, one lightcurve table (debounced: of rapid
  highlights only the latest is served);
* ``table.load.votable``: tables others broadcast are fetched (if the URL policy allows)
  and remembered by URL and ``table-id``, so that later messages naming only the
  table-id work;
* ``coord.pointAt.sky``: the nearest star within ``radius_arcsec``, one table;
* ``samp.app.ping``;
* ``romerea.lightcurves.send`` (ours), params:

  - ``ids``: list of publisher DIDs (``ivo://<authority>/rome?ROME-FIELD-01/78284``), or
  - ``positions``: list of ``[ra, dec]`` pairs in degrees (each matched within the
    bridge's radius);
  - ``quality`` (optional): ``good`` (default), ``valid`` or ``all``;
  - ``target`` (optional): a client id, a ``samp.name`` (e.g. ``topcat``) or ``all``;
    default: the sender if it accepts ``table.load.votable``, else a broadcast;
  - ``per-star`` (optional): ``"1"`` for one table per star.

  The reply's ``samp.result`` has ``matched``, ``requested``, ``message``, ``table-id``
  and ``url``.

Tables go out with ``table.load.parquet`` (VOParquet) to clients subscribed to it, else
with ``table.load.votable`` (``url``, ``table-id`` ``romerea-lc-<hex>``, ``name`` such as
``ROME-FIELD-01 78284 lightcurve`` or ``ROME lightcurves (3 stars)``), from the
service's ``/lightcurve`` URL when the source is a service, else from the bridge's own
loopback HTTP server (:mod:`romerea_vo.samp.http`). Calls are answered with ``reply()``
from a worker thread once the target has answered the load: the hub's callback thread
only queues work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import logging
import math
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import RomeReaError
from ..votable.parquet import PARQUET_MEDIA
from .http import DocumentServer, icon_png
from .hub import default_lockfile, start_hub_process
from .sources import StarId, StarSource
from .tables import RefusedURL, TableCache, UrlPolicy, resolve_rows

__all__ = ["LC_MTYPE", "PARQUET_LOAD", "Bridge", "SentTable"]

log = logging.getLogger("romerea_vo.samp")

LC_MTYPE = "romerea.lightcurves.send"
SELECT = "table.select.rowList"
HIGHLIGHT = "table.highlight.row"
LOAD = "table.load.votable"
PARQUET_LOAD = "table.load.parquet"
"""Clients subscribed to this get VOParquet lightcurves (TOPCAT 4.8's Debian build has
no Parquet reader and subscribes only to votable/fits/cdf/pds/stil: it gets VOTable)."""
POINT_AT = "coord.pointAt.sky"
PING = "samp.app.ping"
SUBSCRIBED = (SELECT, HIGHLIGHT, LOAD, POINT_AT, PING, LC_MTYPE)
HUB_MODES = ("auto", "connect", "start")
SEND_TABLE_HINT = "send the table to romerea-vo (TOPCAT: Interop > Send Table to > romerea-vo)"


class _Failure(RomeReaError):
    """A request the bridge cannot serve; becomes a ``samp.error`` (or warning) reply."""

    def __init__(self, message: str, *, status: str = "samp.error"):
        super().__init__(message)
        self.status = status


@dataclass
class SentTable:
    """One ``table.load.votable`` the bridge sent."""

    table_id: str
    url: str
    name: str
    stars: list[StarId]
    recipients: list[str]
    status: str = "samp.ok"
    sent_at: float = field(default_factory=time.time)


@dataclass
class _Pending:
    gen: int
    mtype: str
    sender: str
    msg_id: str | None
    params: dict


def _response(status: str, result: dict | None = None, error: str | None = None) -> dict:
    out: dict[str, Any] = {"samp.status": status, "samp.result": result or {}}
    if error:
        out["samp.error"] = {"samp.errortxt": error}
    return out


def _arcsec(value: float) -> str:
    return f"{value:g}\N{DOUBLE PRIME}"


class Bridge:
    """A SAMP client turning selections, highlights and sky positions into lightcurves.

    ``hub``: ``connect`` (the running hub, found through ``hub_params``, ``lockfile``,
    ``SAMP_HUB`` or ``~/.samp``), ``start`` (our own pyvo hub on 127.0.0.1, writing
    ``lockfile`` or the standard one) or ``auto`` (connect, else start). Use as a
    context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        source: StarSource,
        *,
        hub: str = "auto",
        hub_params: dict | None = None,
        lockfile: str | Path | None = None,
        radius_arcsec: float = 1.0,
        max_stars: int = 500,
        allow_dirs: Sequence[str | Path] = (),
        trusted_prefixes: Sequence[str] = (),
        quality: str = "good",
        per_star: bool = False,
        debounce: float = 0.15,
        ping_interval: float = 1.0,
        max_backoff: float = 5.0,
        send_timeout: float = 120.0,
        document_ttl: float = 600.0,
        workers: int = 4,
        highlight_back: bool = False,
        name: str = "romerea-vo",
    ):
        if hub not in HUB_MODES:
            raise ValueError(f"hub must be one of {HUB_MODES}, not {hub!r}")
        if max_stars < 1:
            raise ValueError("max_stars must be at least 1")
        self.source = source
        self.hub_mode = hub
        self.radius_arcsec = float(radius_arcsec)
        self.max_stars = int(max_stars)
        self.quality = quality
        self.per_star = per_star
        self.debounce = debounce
        self.ping_interval = ping_interval
        self.max_backoff = max_backoff
        self.send_timeout = send_timeout
        self.highlight_back = highlight_back
        self.name = name
        self._hub_params = hub_params
        self._lockfile = Path(lockfile) if lockfile else None
        self._document_ttl = document_ttl
        prefixes = [p for p in (source.service_url, *trusted_prefixes) if p]
        self.policy = UrlPolicy(trusted_prefixes=tuple(prefixes), allowed_dirs=tuple(allow_dirs))
        self.cache = TableCache(self.policy)
        self.sent: list[SentTable] = []
        """Every table sent (or, status "already loaded", highlighted again), oldest first."""
        self._loaded: dict[tuple, SentTable] = {}  # (recipients, quality, dids) -> last sent
        self.on_sent: Callable[[SentTable], None] | None = None

        self._tables: dict[str, str] = {}  # table-id -> url, learned or ours
        self._lock = threading.RLock()
        self._conn: tuple[Any, Any] | None = None  # (SAMPHubProxy, SAMPClient)
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="romerea-samp")
        self._pending: _Pending | None = None
        self._gen = 0
        self._last_single: tuple[str, str, float] | None = None  # did, target, time
        self._hub_process: subprocess.Popen | None = None  # the hub we started, if any
        self._docs: DocumentServer | None = None
        self._watchdog: threading.Thread | None = None
        self._metadata: dict[str, str] = {}
        self.reconnects = 0

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> Bridge:
        """Connect (starting a hub if asked), register, and start the watchdog."""
        if self._watchdog is not None:
            return self
        self._docs = DocumentServer(ttl=self._document_ttl)
        self._metadata = self._make_metadata()
        try:
            if self.hub_mode == "start":
                self._start_hub()
            try:
                self._connect()
            except Exception as exc:
                if self.hub_mode != "auto":
                    raise RomeReaError(f"cannot connect to a SAMP hub: {exc}") from exc
                log.info("no SAMP hub running (%s); starting one on 127.0.0.1", exc)
                self._start_hub()
                self._connect()
        except BaseException:
            self.close()
            raise
        self._watchdog = threading.Thread(
            target=self._watch, name="romerea-samp-watchdog", daemon=True
        )
        self._watchdog.start()
        return self

    def close(self) -> None:
        """Unregister from the hub, stop serving, stop our hub if we started one."""
        self._closing.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=10)
        with self._lock:
            self._pending = None
            self._gen += 1
        self._pool.shutdown(wait=True, cancel_futures=True)
        others = self._other_clients() if self._hub_process is not None else 0
        self._disconnect(unregister=True)
        if self._docs is not None:
            self._docs.close()
        if self._hub_process is not None:
            # The hub stops by itself once its last client has gone: left running while
            # TOPCAT or others still use it, gone with us when nobody else does.
            if others:
                log.info("leaving the SAMP hub running: %d other client(s) use it", others)
            else:
                try:
                    self._hub_process.wait(10)
                except subprocess.TimeoutExpired:
                    self._hub_process.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._hub_process.wait(10)
            self._hub_process = None

    def __enter__(self) -> Bridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client_id(self) -> str | None:
        """Our public SAMP id on the current hub (None while disconnected)."""
        conn = self._conn
        return conn[1].get_public_id() if conn else None

    @property
    def learned_tables(self) -> dict[str, str]:
        """table-id -> URL of every table the bridge knows (learned or its own)."""
        with self._lock:
            return dict(self._tables)

    @property
    def hub_params(self) -> dict | None:
        """The lockfile contents of the hub we are connected to."""
        conn = self._conn
        return dict(conn[0].lockfile) if conn else None

    def wait_connected(self, timeout: float) -> bool:
        """Block until registered with a hub (e.g. after a hub restart)."""
        return self._connected.wait(timeout)

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        """Block until ``stop`` is set or :meth:`close` is called."""
        stop = stop or threading.Event()
        while not stop.wait(0.5) and not self._closing.is_set():
            pass

    # --- hub connection ---------------------------------------------------------------

    def _make_metadata(self) -> dict[str, str]:
        assert self._docs is not None
        icon = self._docs.publish(icon_png(), "icon.png", media="image/png", permanent=True)
        about = about_page(self.name, self.source.service_url, self.max_stars).encode()
        doc = self._docs.publish(about, "about.html", media="text/html", permanent=True)
        return {
            "samp.name": self.name,
            "samp.description.text": (
                "ROME/REA microlensing survey: select or highlight stars (or point at the "
                "sky) and their lightcurves come back as tables"
            ),
            "samp.icon.url": icon,
            "samp.documentation.url": doc,
            "author.name": "romerea-vo",
            "romerea-vo.version": __version__,
        }

    def _start_hub(self) -> None:
        lockfile = self._lockfile or default_lockfile()
        self._hub_process = start_hub_process(lockfile)
        self._lockfile = lockfile
        log.info("started a SAMP hub (lockfile %s)", lockfile)

    def _other_clients(self) -> int:
        """How many clients besides us and the hub are registered (0 if unknown)."""
        conn = self._conn
        try:
            hub_id = conn[1]._hub_id if conn else None  # from the registration's samp.hub-id
            return sum(1 for cid in self.clients() if cid != hub_id)
        except Exception:
            return 0

    def _current_hub_params(self) -> dict | None:
        from pyvo.samp.lockfile_helpers import read_lockfile

        if self._lockfile is not None:
            if not self._lockfile.exists():
                raise RomeReaError(f"no SAMP lockfile at {self._lockfile}")
            return read_lockfile(str(self._lockfile))
        return self._hub_params  # None: pyvo looks at SAMP_HUB, then ~/.samp

    def _connect(self) -> None:
        from pyvo.samp import SAMPClient, conf
        from pyvo.samp.hub_proxy import SAMPHubProxy

        proxy = SAMPHubProxy()
        proxy.connect(hub_params=self._current_hub_params())
        # use_internet off: pyvo would otherwise probe google.com (1 s) to pick a host name
        with conf.set_temp("use_internet", False):
            client = SAMPClient(proxy, metadata=dict(self._metadata), addr="127.0.0.1")
        # Bind everything before register(), which then declares all subscriptions in one
        # call: separate declarations reach TOPCAT out of order and it was seen keeping a
        # stale, partial subscription list (vo_clients gotcha 5).
        for mtype in SUBSCRIBED:
            client.bind_receive_call(mtype, self._on_message, declare=False)
            client.bind_receive_notification(mtype, self._on_message, declare=False)
        client.start()
        try:
            client.register()
        except Exception:
            client.stop()
            proxy.disconnect()
            raise
        with self._lock:
            self._conn = (proxy, client)
        self._connected.set()
        log.info(
            "registered with the SAMP hub at %s as %s",
            proxy.lockfile.get("samp.hub.xmlrpc.url"),
            client.get_public_id(),
        )

    def _disconnect(self, *, unregister: bool) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        self._connected.clear()
        if conn is None:
            return
        proxy, client = conn
        if unregister:
            with contextlib.suppress(Exception):
                client.unregister()
                log.info("unregistered from the SAMP hub")
        with contextlib.suppress(Exception):
            client.stop()
        with contextlib.suppress(Exception):
            proxy.disconnect()

    def _watch(self) -> None:
        """Ping the hub; when it has gone, reconnect with back-off until it is back."""
        while not self._closing.wait(self.ping_interval):
            conn = self._conn
            if conn is not None:
                try:
                    conn[0].ping()
                    continue
                except Exception as exc:
                    log.warning("lost the SAMP hub (%s); reconnecting", exc)
                    self._disconnect(unregister=True)
            delay = 0.25
            while not self._closing.is_set():
                try:
                    self._connect()
                    self.reconnects += 1
                    break
                except Exception as exc:
                    log.debug("reconnect failed: %s", exc)
                    if self._closing.wait(delay):
                        return
                    delay = min(delay * 2, self.max_backoff)

    # --- hub calls ----------------------------------------------------------------------

    def _client(self) -> tuple[Any, str]:
        conn = self._conn
        if conn is None:
            raise _Failure("not connected to a SAMP hub")
        return conn[0], conn[1].get_private_key()

    def _reply(self, msg_id: str, response: dict) -> None:
        try:
            proxy, key = self._client()
            proxy.reply(key, msg_id, response)
        except Exception as exc:
            log.warning("could not reply to %s: %s", msg_id, exc)

    def clients(self) -> dict[str, dict]:
        """Registered clients (other than us) and their metadata."""
        proxy, key = self._client()
        me = self.client_id
        out = {}
        for cid in proxy.get_registered_clients(key):
            if cid != me:
                with contextlib.suppress(Exception):
                    out[cid] = proxy.get_metadata(key, cid)
        return out

    def _subscribed(self, mtype: str) -> set[str]:
        proxy, key = self._client()
        return set(proxy.get_subscribed_clients(key, mtype)) - {self.client_id}

    def call(self, recipient: str, mtype: str, params: dict, timeout: float = 60) -> dict:
        """``callAndWait`` through the hub; returns the response map."""
        proxy, key = self._client()
        message = {"samp.mtype": mtype, "samp.params": params}
        return proxy.call_and_wait(key, recipient, message, str(math.ceil(timeout)))

    def _notify(self, recipient: str, mtype: str, params: dict) -> None:
        proxy, key = self._client()
        proxy.notify(key, recipient, {"samp.mtype": mtype, "samp.params": params})

    def highlight_when_ready(
        self, recipient: str, table_id: str, url: str, row: int, timeout: float = 1.0
    ) -> bool:
        """Highlight ``row`` of a table just sent to ``recipient``, retrying until it is known.

        TOPCAT replies samp.ok to table.load.votable before it registers the table-id (on
        the Swing thread, 0.08-0.4 s later); until then a highlight fails with "No table
        with table-id=..." (vo_clients gotcha 4), hence the retries.
        """
        deadline = time.monotonic() + timeout
        params = {"table-id": table_id, "url": url, "row": str(row)}
        while True:
            try:
                if self.call(recipient, HIGHLIGHT, params, 10)["samp.status"] == "samp.ok":
                    return True
            except Exception as exc:
                log.debug("highlight in %s not yet possible: %s", table_id, exc)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    # --- inbound ------------------------------------------------------------------------

    def _on_message(
        self,
        private_key: str,
        sender_id: str,
        msg_id: str | None,
        mtype: str,
        params: dict,
        extra: dict,
    ) -> None:
        """Runs on pyvo's receiving thread: only queue work here, never do I/O."""
        if mtype == PING:
            if msg_id is not None:
                self._pool.submit(self._reply, msg_id, _response("samp.ok", {"name": self.name}))
            return
        if mtype in (HIGHLIGHT, POINT_AT):
            self._debounced(mtype, sender_id, msg_id, params)
            return
        handler = {SELECT: self._select, LOAD: self._learn, LC_MTYPE: self._send_request}[mtype]
        try:
            self._pool.submit(self._run, handler, mtype, sender_id, msg_id, params)
        except RuntimeError:  # pool shut down: closing
            if msg_id is not None:
                self._reply(msg_id, _response("samp.error", error="romerea-vo is shutting down"))

    def _debounced(self, mtype: str, sender: str, msg_id: str | None, params: dict) -> None:
        """Latest wins: a highlight or pointAt is served once no other came for ``debounce``."""
        with self._lock:
            old = self._pending
            self._gen += 1
            self._pending = _Pending(self._gen, mtype, sender, msg_id, params)
            gen = self._gen
        if old is not None and old.msg_id is not None:
            self._pool.submit(
                self._reply,
                old.msg_id,
                _response("samp.warning", {"message": "superseded"}, "superseded by a later one"),
            )
        timer = threading.Timer(self.debounce, self._fire, args=(gen,))
        timer.daemon = True
        timer.start()

    def _fire(self, gen: int) -> None:
        with self._lock:
            pending = self._pending
            if pending is None or pending.gen != gen:
                return
            self._pending = None
        handler = self._highlight if pending.mtype == HIGHLIGHT else self._point_at
        with contextlib.suppress(RuntimeError):
            self._pool.submit(
                self._run, handler, pending.mtype, pending.sender, pending.msg_id, pending.params
            )

    def _run(
        self,
        handler: Callable[[str, dict], dict],
        mtype: str,
        sender: str,
        msg_id: str | None,
        params: dict,
    ) -> None:
        t0 = time.perf_counter()
        try:
            response = _response("samp.ok", handler(sender, dict(params)))
        except _Failure as exc:
            result = exc.result if isinstance(exc, _WarningResult) else {"message": str(exc)}
            response = _response(exc.status, result, str(exc))
        except RefusedURL as exc:
            response = _response("samp.error", error=str(exc))
        except RomeReaError as exc:
            response = _response("samp.error", error=str(exc))
        except Exception as exc:
            log.exception("%s from %s failed", mtype, sender)
            response = _response("samp.error", error=f"internal error: {exc!r}")
        status = response["samp.status"]
        text = response.get("samp.error", {}).get("samp.errortxt") or response["samp.result"].get(
            "message", ""
        )
        level = logging.INFO if status == "samp.ok" else logging.WARNING
        log.log(level, "%s from %s: %s %s (%.2f s)", mtype, sender, status, text,
                time.perf_counter() - t0)  # fmt: skip
        if msg_id is not None:
            self._reply(msg_id, response)

    # --- handlers (worker threads) ------------------------------------------------------

    def _table_url(self, params: dict) -> str:
        """The URL to read the message's table from: the copy learned under its table-id
        whatever URL the message carries (TOPCAT's messages about a table it loaded from
        a local file carry that file's URL, not the copy it sent us), else its URL."""
        url, table_id = params.get("url"), params.get("table-id")
        if table_id:
            with self._lock:
                known = self._tables.get(table_id)
            if known:
                return known
        if url:
            if table_id:
                with self._lock:
                    self._tables.setdefault(table_id, url)
            return url
        if table_id:
            raise _Failure(
                f"unknown table: table-id {table_id!r} was never loaded with a URL romerea-vo "
                f"saw; {SEND_TABLE_HINT}"
            )
        raise _Failure('the message names no table: give "url" or "table-id"')

    def _table(self, params: dict):
        """The message's table (fetched once, cached); a refused URL says what to do."""
        url = self._table_url(params)
        try:
            return self.cache.get(url)
        except RefusedURL as exc:
            raise RefusedURL(f"{exc}; or {SEND_TABLE_HINT}") from None

    def _resolve(self, params: dict, rows: list[int]) -> tuple[list[StarId | None], int, str]:
        """Stars of ``rows`` (None where unmatched), the table's row count, the method."""
        table = self._table(params)
        valid = [r for r in rows if 0 <= r < len(table)]
        stars: list[StarId | None] = [None] * len(rows)
        method = "none"
        if valid:
            res = resolve_rows(table, valid, self.source, radius_arcsec=self.radius_arcsec)
            method = res.method
            found = iter(res.stars)
            stars = [next(found) if 0 <= r < len(table) else None for r in rows]
        return stars, len(table), method

    def _select(self, sender: str, params: dict) -> dict:
        try:
            rows = [int(r) for r in params.get("row-list", [])]
        except (TypeError, ValueError):
            raise _Failure("row-list must hold row indices (0-based integers)") from None
        stars, _, method = self._resolve(params, rows)
        matched = sum(s is not None for s in stars)
        message = f"{matched} of {len(rows)} rows matched ({method})"
        return self._deliver(sender, stars, message, len(rows), params)

    def _highlight(self, sender: str, params: dict) -> dict:
        try:
            row = int(params["row"])
        except (KeyError, TypeError, ValueError):
            raise _Failure('table.highlight.row needs "row" (a 0-based integer)') from None
        stars, _, method = self._resolve(params, [row])
        star = stars[0]
        if star is None:
            raise _Failure(
                f"row {row} matched no ROME star ({method}, radius {_arcsec(self.radius_arcsec)})",
                status="samp.warning",
            )
        result = self._deliver(sender, [star], f"1 of 1 rows matched ({method})", 1, params)
        self._point_aladin(star, exclude=sender)
        return result

    def _point_at(self, sender: str, params: dict) -> dict:
        try:
            ra, dec = float(params["ra"]), float(params["dec"])
        except (KeyError, TypeError, ValueError):
            raise _Failure('coord.pointAt.sky needs "ra" and "dec" in degrees') from None
        star = self.source.nearest(ra, dec, self.radius_arcsec)
        if star is None:
            raise _Failure(
                f"no ROME star within {_arcsec(self.radius_arcsec)} of "
                f"(ra {ra:.6f}, dec {dec:+.6f})",
                status="samp.warning",
            )
        return self._deliver(sender, [star], "nearest star found", 1, params)

    def _learn(self, sender: str, params: dict) -> dict:
        url = params.get("url")
        if not url:
            raise _Failure('table.load.votable needs "url"')
        table_id = params.get("table-id")
        table = self.cache.get(url)  # RefusedURL -> samp.error with the reason
        if table_id:
            with self._lock:
                self._tables[table_id] = url
        return {"rows": str(len(table)), "message": f"learned {table_id or url}"}

    def _send_request(self, sender: str, params: dict) -> dict:
        ids, positions = params.get("ids"), params.get("positions")
        if ids:
            if isinstance(ids, str):
                ids = [ids]
            stars = self.source.stars_by_dids(list(ids))
            requested = len(ids)
        elif positions:
            try:
                pairs = [(float(p[0]), float(p[1])) for p in positions]
            except (TypeError, ValueError, IndexError):
                raise _Failure("positions must be a list of [ra, dec] pairs") from None
            stars = self.source.match_positions(
                np.array([p[0] for p in pairs], float),
                np.array([p[1] for p in pairs], float),
                self.radius_arcsec,
            )
            requested = len(pairs)
        else:
            raise _Failure(f'{LC_MTYPE} needs "ids" (DIDs) or "positions" ([ra, dec] pairs)')
        matched = sum(s is not None for s in stars)
        return self._deliver(
            sender,
            stars,
            f"{matched} of {requested} requested stars found",
            requested,
            params,
            target=params.get("target"),
            per_star=str(params.get("per-star", "")).lower() in ("1", "true", "yes"),
        )

    # --- outbound -----------------------------------------------------------------------

    def _deliver(
        self,
        sender: str,
        found: Iterable[StarId | None],
        message: str,
        requested: int,
        params: dict,
        *,
        target: str | None = None,
        per_star: bool | None = None,
    ) -> dict:
        """Send the found stars' lightcurves; the reply's samp.result (warning if capped)."""
        stars: list[StarId] = []
        seen: set[str] = set()
        for s in found:
            if s is not None and s.did not in seen:
                seen.add(s.did)
                stars.append(s)
        matched = len(stars)
        if not stars:
            raise _Failure(f"{message}; nothing to send", status="samp.warning")
        warning = None
        if len(stars) > self.max_stars:
            warning = (
                f"{len(stars)} stars selected, more than the limit of {self.max_stars}: "
                f"sending the first {self.max_stars}"
            )
            stars = stars[: self.max_stars]
        quality = str(params.get("quality") or self.quality)
        recipients = self._recipients(target, sender)
        single = len(stars) == 1
        if single and target is None:
            star = stars[0]
            last = self._last_single
            # TOPCAT answers a highlight it receives by *calling* coord.pointAt.sky on
            # everyone (its default "Send Sky Coordinates" action), so one click can reach
            # us twice; serve the same star to the same client once.
            if (
                last
                and last[0] == star.did
                and last[1] == ",".join(recipients)
                and time.monotonic() - last[2] < 2.0
            ):
                text = f"{message}; {star.did} was just sent"
                return {"message": text, "matched": "1", "requested": str(requested)}
        groups = (
            [[s] for s in stars] if (per_star or (per_star is None and self.per_star)) else [stars]
        )
        sent = [self.send_lightcurves(g, recipients, quality=quality) for g in groups]
        if single:
            self._last_single = (stars[0].did, ",".join(recipients), time.monotonic())
        if all(t.status == "already loaded" for t in sent):
            message = f"{message}; already loaded as {sent[0].name}: highlighted there"
        result = {
            "message": message if warning is None else f"{message}; {warning}",
            "matched": str(matched),
            "requested": str(requested),
            "sent": str(len(stars)),
            "table-id": sent[0].table_id,
            "url": sent[0].url,
        }
        if warning:
            raise _WarningResult(result)
        return result

    def _recipients(self, target: str | None, sender: str | None) -> list[str]:
        """Client ids to send tables to; [] means broadcast."""
        loaders = self._subscribed(LOAD) | self._subscribed(PARQUET_LOAD)
        if target is None:
            return [sender] if sender in loaders else []
        if target.lower() in ("all", "broadcast", "*"):
            return []
        if target in loaders:
            return [target]
        named = [
            cid
            for cid, meta in self.clients().items()
            if str(meta.get("samp.name", "")).lower() == target.lower() and cid in loaders
        ]
        if not named:
            raise _Failure(f"no client named {target!r} accepts table.load.votable")
        return named

    def send_lightcurves(
        self, stars: Sequence[StarId], recipients: Sequence[str] = (), *, quality: str = "good"
    ) -> SentTable:
        """Serve ``stars``' lightcurves as one table and make ``recipients`` load it.

        Each recipient is called and its answer awaited; no recipients means every client
        subscribed to ``table.load.votable``.
        """
        if not stars:
            raise _Failure("no stars to send")
        key = (tuple(recipients), quality, tuple(s.did for s in stars))
        earlier = self._loaded.get(key) if len(recipients) == 1 else None
        if earlier is not None and self._still_loaded(recipients[0], earlier):
            # The client still holds these lightcurves (it knew the table-id): highlighted
            # there rather than loaded twice under the same name.
            log.info("%s is already loaded in %s: highlighted", earlier.name, recipients[0])
            again = dataclasses.replace(earlier, status="already loaded", sent_at=time.time())
            with self._lock:
                self.sent.append(again)
            return again
        table_id = f"romerea-lc-{secrets.token_hex(6)}"
        if len(stars) == 1:
            name = f"{stars[0].field} {stars[0].field_id} lightcurve"
        else:
            name = f"ROME lightcurves ({len(stars)} stars)"
        parquet = self._subscribed(PARQUET_LOAD)
        broadcast = not recipients
        loaders = self._subscribed(LOAD) | parquet
        targets = sorted(loaders) if broadcast else list(recipients)
        if not targets:
            raise _Failure("no client accepts table.load.votable")
        urls: dict[str, str] = {}

        def url_for(fmt: str) -> str:
            if fmt not in urls:
                url = self.source.lightcurve_url(stars, quality=quality, fmt=fmt)
                if url is None:
                    assert self._docs is not None
                    data = self.source.lightcurve_votable(stars, quality=quality, fmt=fmt)
                    if fmt == "parquet":
                        url = self._docs.publish(data, f"{table_id}.parquet", media=PARQUET_MEDIA)
                    else:
                        url = self._docs.publish(data, f"{table_id}.vot")
                urls[fmt] = url
            return urls[fmt]

        loads = {
            rid: (PARQUET_LOAD, url_for("parquet"))
            if rid in parquet
            else (LOAD, url_for("votable"))
            for rid in targets
        }
        url = urls.get("votable") or urls["parquet"]
        with self._lock:
            self._tables[table_id] = url

        def load(rid: str) -> str | None:
            mtype, rid_url = loads[rid]
            return self._load_call(rid, {"url": rid_url, "table-id": table_id, "name": name}, mtype)

        # Calls, not notifications, even for a broadcast: the reply then means "loaded" (the
        # receivers' samp.ok), and the reply to our own sender waits for it.
        with ThreadPoolExecutor(max_workers=min(8, len(targets))) as fan:
            replies = list(fan.map(load, targets))
        failed = [f"{rid}: {err}" for rid, err in zip(targets, replies, strict=True) if err]
        status = "samp.ok"
        if failed and (not broadcast or len(failed) == len(targets)):
            raise _Failure(f"{name} was not loaded: {'; '.join(failed)}")
        if failed:
            status = "samp.warning"
            log.warning("some clients did not load %s: %s", name, "; ".join(failed))
        recipients = [rid for rid, err in zip(targets, replies, strict=True) if not err]
        sent = SentTable(table_id, url, name, list(stars), list(recipients), status)
        with self._lock:
            self.sent.append(sent)
            if len(recipients) == 1:
                self._loaded[key] = sent
        log.info("sent %s (%s) to %s", name, table_id, ", ".join(recipients) or "all")
        if self.highlight_back and recipients:
            for rid in recipients:
                self.highlight_when_ready(rid, table_id, loads[rid][1], 0)
        if self.on_sent is not None:
            self.on_sent(sent)
        return sent

    def _still_loaded(self, recipient: str, table: SentTable) -> bool:
        """Highlight the first row of a table sent earlier; whether the client has it."""
        params = {"table-id": table.table_id, "url": table.url, "row": "0"}
        try:
            return self.call(recipient, HIGHLIGHT, params, 30).get("samp.status") == "samp.ok"
        except Exception:  # not subscribed, or the table was deleted there
            return False

    def _load_call(self, recipient: str, params: dict, mtype: str = LOAD) -> str | None:
        """Call table.load.votable (or .parquet) on one client; None if it loaded, else
        the reason."""
        try:
            reply = self.call(recipient, mtype, params, self.send_timeout)
        except Exception as exc:
            return str(exc)
        if reply.get("samp.status") == "samp.ok":
            return None
        return reply.get("samp.error", {}).get("samp.errortxt", reply.get("samp.status", "?"))

    def _point_aladin(self, star: StarId, *, exclude: str) -> None:
        """Centre Aladin (when registered) on a highlighted star."""
        try:
            for cid, meta in self.clients().items():
                if cid != exclude and str(meta.get("samp.name", "")).lower() == "aladin":
                    # notify: Aladin's samp.ok only means "accepted" anyway (vo_clients §2)
                    self._notify(cid, POINT_AT, {"ra": repr(star.ra), "dec": repr(star.dec)})
        except Exception as exc:
            log.warning("could not point Aladin at %s: %s", star.did, exc)


def about_page(name: str, service_url: str | None, max_stars: int) -> str:
    """The bridge's SAMP documentation page: what it listens for, what it sends back,
    and the TOPCAT switches that make TOPCAT send rows to it."""
    service = (
        f'<a href="{html.escape(service_url)}/">{html.escape(service_url)}</a>'
        if service_url
        else "its own files"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(name)}: ROME/REA SAMP bridge</title>
<style>body{{font-family:sans-serif;max-width:46em;margin:2em auto;line-height:1.4}}
code{{background:#f2f2f2;padding:0 .2em}}</style></head><body>
<h1>{html.escape(name)}: ROME/REA lightcurves over SAMP</h1>
<p>This SAMP client turns ROME/REA stars selected in TOPCAT or Aladin into lightcurve
tables (every band, good points, HJD with a <code>filter</code> column), sent back to
the client that asked. Stars come from {service}.</p>
<h2>What it listens for</h2>
<ul>
<li><code>table.highlight.row</code>: the star of that row, one table
(<i>FIELD id</i> lightcurve).</li>
<li><code>table.select.rowList</code>: the stars of the selected rows, one table with an
<code>id</code> column (at most {max_stars} stars).</li>
<li><code>coord.pointAt.sky</code>: the nearest star within the match radius.</li>
<li><code>table.load.votable</code>: a table sent to the bridge is remembered, so that
later rows of it can be resolved.</li>
<li><code>romerea.lightcurves.send</code> (<code>ids</code>: publisher DIDs, or
<code>positions</code>: [ra, dec] pairs).</li>
</ul>
<p>Rows are resolved by a <code>did</code> (or <code>field</code> +
<code>field_id</code>) column; any other table by its RA/Dec columns, matched to the
ROME field index.</p>
<h2>In TOPCAT</h2>
<ol>
<li>Load a table: a TAP query on the ROME service, or your own list with RA/Dec.</li>
<li>If it is not from the ROME service, send it to the bridge once:
<i>Interop &rarr; Send Table to &rarr; {html.escape(name)}</i>.</li>
<li>To get a star's lightcurve by clicking its row: open the table's <i>Activation
Actions</i> window and tick <i>Send Row Index</i> (or <i>Send Sky
Coordinates</i>); then click a row.</li>
<li>To get many stars at once: define a subset (e.g. with the plot's lasso) and use
<i>Transmit Subset</i> in the Row Subsets window (or the subset's
<i>Send to {html.escape(name)}</i>).</li>
</ol>
<p>What the bridge could not do (an unknown table, no star matched, the {max_stars}-star
cap) is said in its reply, which TOPCAT shows in the activation log and in
<i>Interop &rarr; SAMP Control &rarr; Sent Messages</i>, and in the bridge's terminal.</p>
</body></html>
"""


class _WarningResult(_Failure):
    """A served request whose reply status is samp.warning (e.g. a capped selection)."""

    def __init__(self, result: dict):
        super().__init__(result["message"], status="samp.warning")
        self.result = result
