"""Entering a network namespace by path or `ip netns` name (os.setns needs Python 3.12)."""

from __future__ import annotations

import ctypes
import os

from hpk_slurm.errors import HpkError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"


def netns_path(netns: str) -> str:
    """`/proc/PID/ns/net` or any path as is; a bare name is one made by `ip netns add`."""
    if "/" in netns:
        return netns
    if netns in ("", ".", ".."):
        raise HpkError(f"invalid network namespace name {netns!r}")
    return os.path.join(NETNS_RUN_DIR, netns)


def enter_netns(netns: str) -> None:
    """Move this thread (and threads it starts later) into the network namespace."""
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise HpkError(f"cannot open network namespace {path}: {exc.strerror}") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise HpkError(
                f"cannot enter network namespace {path}: {os.strerror(err)}",
                "entering needs CAP_SYS_ADMIN over the namespace's owner (run inside the bubble)",
            )
    finally:
        os.close(fd)
