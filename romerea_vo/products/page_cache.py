"""How much of a file range the kernel's page cache holds: Linux's ``cachestat`` (6.5+).

A stream that reads a cube once chooses by it between copying what the cache holds and
reading the rest from the disk directly (:class:`.reader.CubeStream`). Python has no
binding for the system call (nor for ``mincore``), hence ctypes; where the call does not
exist (another OS, an older kernel) :func:`cached_bytes` answers None.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

__all__ = ["cached_bytes"]

_CACHESTAT = 451  # the same number on every architecture (the unified syscall table)


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    ]


_syscall = None
if sys.platform == "linux":
    try:
        _syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        _syscall = None
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_supported = _syscall is not None


def cached_bytes(fd: int, offset: int, length: int) -> int | None:
    """Bytes of [offset, offset + length) of the open file ``fd`` in the page cache
    (counted in whole pages), or None where the kernel cannot tell. Never raises."""
    global _supported
    if not _supported or _syscall is None:
        return None
    stat = _CacheStat()
    if _syscall(_CACHESTAT, fd, ctypes.byref(_Range(offset, length)), ctypes.byref(stat), 0):
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # before Linux 6.5; seccomp
            _supported = False
        return None
    return int(stat.nr_cache) * _PAGE
