"""The bridge's own loopback HTTP server: serves only the documents it generated.

Paths are unguessable (:func:`secrets.token_urlsafe`), documents expire (default
10 minutes) and the total size held is bounded (oldest dropped first). Nothing else
is served: every other path is a 404.
"""

from __future__ import annotations

import secrets
import struct
import threading
import time
import zlib
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

from ..votable.formats import VOTABLE_MEDIA

__all__ = ["DocumentServer", "icon_png"]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        doc = self.server.owner.lookup(self.path.split("?", 1)[0])
        if doc is None:
            self.send_error(404, "no such document (or it has expired)")
            return
        data, media = doc
        self.send_response(200)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # requests are logged by the bridge, not on stderr


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: DocumentServer


class DocumentServer:
    """``publish(data, name) -> URL`` on 127.0.0.1 at a random port, in a daemon thread."""

    def __init__(self, *, ttl: float = 600.0, max_bytes: int = 512 * 2**20):
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._docs: OrderedDict[str, tuple[bytes, str, float | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="romerea-samp-http",
            daemon=True,
        )
        self._thread.start()

    def publish(
        self, data: bytes, name: str, *, media: str = VOTABLE_MEDIA, permanent: bool = False
    ) -> str:
        """Serve ``data`` under a fresh unguessable path ending in ``name``; return its URL."""
        path = f"/{secrets.token_urlsafe(18)}/{quote(name)}"
        expires = None if permanent else time.monotonic() + self.ttl
        with self._lock:
            self._docs[path] = (data, media, expires)
            self._expire_locked()
        return self.base_url + path

    def lookup(self, path: str) -> tuple[bytes, str] | None:
        """The document at ``path`` and its media type, if it exists and has not expired."""
        with self._lock:
            self._expire_locked()
            doc = self._docs.get(path)
        return None if doc is None else (doc[0], doc[1])

    def __len__(self) -> int:
        with self._lock:
            return len(self._docs)

    def _expire_locked(self) -> None:
        now = time.monotonic()
        for path in [p for p, (_, _, exp) in self._docs.items() if exp is not None and exp < now]:
            del self._docs[path]
        total = sum(len(d) for d, _, _ in self._docs.values())
        for path in list(self._docs):
            if total <= self.max_bytes:
                break
            if self._docs[path][2] is not None:
                total -= len(self._docs.pop(path)[0])

    def close(self) -> None:
        """Stop serving and forget every document."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            self._docs.clear()


def icon_png(size: int = 32) -> bytes:
    """A small PNG icon (a dark disc with a brighter lensing ring) for ``samp.icon.url``."""
    rows = []
    c = (size - 1) / 2
    for y in range(size):
        row = bytearray([0])  # filter byte: none
        for x in range(size):
            r = ((x - c) ** 2 + (y - c) ** 2) ** 0.5 / c
            if r < 0.35:
                px = (250, 220, 120, 255)
            elif 0.6 < r < 0.85:
                px = (90, 160, 255, 255)
            elif r <= 1.0:
                px = (20, 30, 60, 255)
            else:
                px = (0, 0, 0, 0)
            row.extend(px)
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )
