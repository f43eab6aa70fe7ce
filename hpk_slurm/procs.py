"""Processes we started, recorded so that stop ends exactly those (by PID, never by name).

A PID alone can be reused after its process died; the start time from
/proc/PID/stat (field 22, clock ticks since boot) pins the record to one
process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class ProcRef:
    pid: int
    started: int  # /proc start time in clock ticks

    @classmethod
    def of(cls, pid: int) -> "ProcRef":
        started = start_time(pid)
        if started is None:
            raise ProcessLookupError(f"process {pid} is gone")
        return cls(pid, started)

    def alive(self) -> bool:
        if start_time(self.pid) != self.started:
            return False
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def signal(self, sig: int) -> bool:
        """Send `sig` if it is still our process; False if it was already gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def terminate(self, timeout: float = 10.0, resend_every: float | None = None) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns once the process is gone.

        `resend_every`: repeat SIGTERM meanwhile, for a namespace's PID 1, which
        drops signals that arrive before it has installed its handler.
        """
        if not self.signal(signal.SIGTERM):
            return
        start = last_sent = time.monotonic()
        deadline = start + timeout
        while self.alive():
            now = time.monotonic()
            if now > deadline:
                self.signal(signal.SIGKILL)
                deadline = now + 5
            elif resend_every and now - last_sent > resend_every:
                self.signal(signal.SIGTERM)
                last_sent = now
            time.sleep(0.02)
            _reap(self.pid)


def _reap(pid: int) -> None:
    """Collect our own child if it was one (otherwise it lingers as a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_first_child(proc, timeout: float) -> int | None:
    """The first child of `proc` (unshare --fork's: the process in the new namespaces).

    None if `proc` exited first, or nothing appeared within `timeout`.
    """
    deadline = time.monotonic() + timeout
    while not (kids := children(proc.pid)):
        if proc.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.002)
    return kids[0]


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent dies (even by SIGKILL).

    Used in children before exec (preexec_fn), so a container or an entered
    command does not outlive the hpktainer that owns it.
    """
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
