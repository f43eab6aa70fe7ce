"""Passing INT/TERM/HUP on to a child, the way a wrapper should.

A terminal's Ctrl-C already reaches every process of the foreground
process group, the container's command included; forwarding it again
would deliver it twice. So SIGINT/SIGQUIT are passed on only when they
did not come from our terminal; TERM and HUP always are.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _from_terminal(signum: int) -> bool:
    if signum not in (signal.SIGINT, signal.SIGQUIT):
        return False
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def forward_to(target: Callable[[], int | None]) -> None:
    """Install handlers that send each forwarded signal to the PID `target()` returns."""

    def handler(signum, _frame):
        pid = target()
        if pid and not _from_terminal(signum):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in FORWARDED:
        signal.signal(sig, handler)


def run_passing_signals(argv: list[str], env: dict[str, str]) -> int:
    """Run argv (typically nsenter, which passes no signals on) and relay signals to what it started.

    The command dies with us (even by SIGKILL); its exit code is ours.
    """
    from hpk_slurm.procs import children, die_with_parent

    proc = subprocess.Popen(argv, env=env, preexec_fn=die_with_parent)
    forward_to(lambda: (children(proc.pid) or [proc.pid])[0])
    return exit_code(os.waitpid(proc.pid, 0)[1])  # retried after each forwarded signal (PEP 475)


def exit_code(status: int) -> int:
    """A wait status as a shell would report it: the exit code, or 128+N after signal N."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 1
