"""The SAMP hub the bridge starts when there is none (``romerea-vo samp --hub start``).

The hub runs in a process of its own (``python -m romerea_vo.samp.hub --lockfile F``),
so that it outlives the bridge while other clients (TOPCAT, Aladin) still use it: it
stops once its last client has gone (or when no client came within ``--idle-exit``
seconds), and on SIGTERM/SIGINT, removing its lockfile.

pyvo's :class:`~pyvo.samp.SAMPHubServer` (as astropy.samp's before it) has a race in
``callAndWait``: it hands the message to the recipient on another thread *before* it
records that it waits for a reply, and drops any reply to a message it does not wait
for. A recipient that answers at once - the bridge answering a ping, TOPCAT loading a
small table - on a busy machine loses its reply, and the caller gets "Timeout expired!"
after the full timeout (seen in the test suite on a loaded machine). :class:`SampHub`
records the wait when the message id is made, before the message goes out.

pyvo's hub also sends every hub event (``samp.hub.event.register``, ``.subscriptions``,
``.metadata``, ``.unregister``) on a thread of its own, so a client registering reaches
the others as up to three concurrent calls in any order. JSAMP's client tracker (TOPCAT,
Aladin) handles an event for a client it does not know yet by holding it until the
register event comes, but between applying what it holds and adding the new client it
drops an event that arrives in that moment: TOPCAT then lists the client without its
name or subscriptions and never sends it anything (seen in CI on a loaded machine).
:class:`SampHub` delivers the hub's events to each client one at a time, in the order
it made them, as JSAMP's own hub does.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pyvo.samp import SAMPHubServer

from ..errors import RomeReaError

__all__ = ["SampHub", "default_lockfile", "start_hub_process"]

log = logging.getLogger(__name__)

_SYNC_TAG = "samp::sync::call"
"""pyvo's tag for the messages of callAndWait (the last part of its message ids)."""


class _SyncReplies(dict):
    """pyvo's table of callAndWait replies (message id -> reply, None while waiting),
    where marking a message as waited-for never erases a reply that is already there."""

    def __setitem__(self, msg_id: str, reply: Any) -> None:
        if reply is None and self.get(msg_id) is not None:
            return
        super().__setitem__(msg_id, reply)


_HUB_EVENT = "samp.hub.event."


class SampHub(SAMPHubServer):
    """pyvo's SAMP hub with the callAndWait race closed and its events delivered in order
    (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_msg_ids_heap = _SyncReplies()
        self._events_lock = threading.Lock()
        self._pending_events: dict[str, collections.deque] = {}

    def _notify(self, private_key: str, recipient_id: str, message: dict) -> dict:
        if private_key != self._hub_private_key or not str(
            message.get("samp.mtype", "")
        ).startswith(_HUB_EVENT):
            return super()._notify(private_key, recipient_id, message)
        with self._events_lock:
            pending = self._pending_events.get(recipient_id)
            if pending is not None:  # a delivery thread is at work for this client
                pending.append(message)
                return {}
            self._pending_events[recipient_id] = collections.deque([message])
        self._launch_thread(target=self._deliver_events, args=(private_key, recipient_id))
        return {}

    def _deliver_events(self, private_key: str, recipient_id: str) -> None:
        """Send the hub's pending events to one client, each once the one before has
        been answered; ``_notify_`` reports a failed delivery as a SAMPWarning."""
        while True:
            with self._events_lock:
                pending = self._pending_events[recipient_id]
                if not pending:
                    del self._pending_events[recipient_id]
                    return
                message = pending.popleft()
            try:
                self._notify_(private_key, recipient_id, message)
            except Exception:  # _notify_ reports its own; this keeps the queue moving
                log.exception("hub event to SAMP client %s failed", recipient_id)

    def _get_new_hub_msg_id(self, sender_public_id: str, sender_msg_id: str) -> str:
        msg_id = super()._get_new_hub_msg_id(sender_public_id, sender_msg_id)
        if sender_msg_id == _SYNC_TAG:
            self._sync_msg_ids_heap[msg_id] = None  # waited for before it is sent
        return msg_id


def default_lockfile() -> Path:
    """Where SAMP clients look for the hub: ``SAMP_HUB=std-lockurl:file://...`` or
    ``~/.samp``. Raises :class:`RomeReaError` for a SAMP_HUB that is not a local file."""
    hub = os.environ.get("SAMP_HUB", "").strip()
    if not hub:
        return Path.home() / ".samp"
    parts = urllib.parse.urlsplit(hub.removeprefix("std-lockurl:"))
    if not hub.startswith("std-lockurl:") or parts.scheme != "file":
        raise RomeReaError(f"SAMP_HUB={hub!r} names no local lockfile; cannot start a hub there")
    return Path(urllib.request.url2pathname(parts.path))


def start_hub_process(lockfile: Path, *, timeout: float = 60.0) -> subprocess.Popen:
    """Start a hub process writing ``lockfile``; return once the lockfile is there.
    Raises :class:`RomeReaError` if the hub does not come up within ``timeout`` s."""
    lockfile.unlink(missing_ok=True)  # a stale one (no hub answered there)
    proc = subprocess.Popen(
        [sys.executable, "-m", "romerea_vo.samp.hub", "--lockfile", str(lockfile)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # Ctrl-C in the bridge's terminal is not the hub's
    )
    deadline = time.monotonic() + timeout
    while not lockfile.exists():
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise RomeReaError(f"the SAMP hub did not start: {err.splitlines()[-1:] or '?'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RomeReaError(f"the SAMP hub did not write {lockfile} within {timeout:g} s")
        time.sleep(0.05)
    if proc.stderr is not None:
        proc.stderr.close()
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m romerea_vo.samp.hub")
    parser.add_argument("--lockfile", required=True, type=Path)
    parser.add_argument("--idle-exit", type=float, default=60.0,
                        help="stop when no client registered within this many seconds")  # fmt: skip
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    hub = SampHub(lockfile=str(args.lockfile), web_profile=False, addr="127.0.0.1")
    hub.start()
    started, had_clients = time.monotonic(), False
    try:
        while not stop.wait(0.2):
            clients = len(hub._private_keys) - 1  # the hub is a client of itself
            had_clients |= clients > 0
            if clients == 0 and (had_clients or time.monotonic() - started > args.idle_exit):
                break
    finally:
        with contextlib.suppress(Exception):
            hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
