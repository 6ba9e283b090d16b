"""The SAMP hub the bridge starts when there is none (``romerea-vo samp --hub start``).

pyvo's :class:`~pyvo.samp.SAMPHubServer` (as astropy.samp's before it) has a race in
``callAndWait``: it hands the message to the recipient on another thread *before* it
records that it waits for a reply, and drops any reply to a message it does not wait
for. A recipient that answers at once - the bridge answering a ping, TOPCAT loading a
small table - on a busy machine loses its reply, and the caller gets "Timeout expired!"
after the full timeout (seen in the test suite on a loaded machine). :class:`SampHub`
records the wait when the message id is made, before the message goes out.
"""

from __future__ import annotations

from typing import Any

from pyvo.samp import SAMPHubServer

__all__ = ["SampHub"]

_SYNC_TAG = "samp::sync::call"
"""pyvo's tag for the messages of callAndWait (the last part of its message ids)."""


class _SyncReplies(dict):
    """pyvo's table of callAndWait replies (message id -> reply, None while waiting),
    where marking a message as waited-for never erases a reply that is already there."""

    def __setitem__(self, msg_id: str, reply: Any) -> None:
        if reply is None and self.get(msg_id) is not None:
            return
        super().__setitem__(msg_id, reply)


class SampHub(SAMPHubServer):
    """pyvo's SAMP hub with the callAndWait race closed (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_msg_ids_heap = _SyncReplies()

    def _get_new_hub_msg_id(self, sender_public_id: str, sender_msg_id: str) -> str:
        msg_id = super()._get_new_hub_msg_id(sender_public_id, sender_msg_id)
        if sender_msg_id == _SYNC_TAG:
            self._sync_msg_ids_heap[msg_id] = None  # waited for before it is sent
        return msg_id
