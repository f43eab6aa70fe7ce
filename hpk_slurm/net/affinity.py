"""Where a relay pair runs: both daemons of one pair on the same CPU.

A frame crossing the relay wakes the other daemon. When that daemon sleeps on
another, idle CPU, the wakeup needs an inter-processor interrupt, which in a
VM is an exit to the hypervisor: 30-60 µs each on the 2-core test VM, against
a few µs for a wakeup on the CPU already running. With the pair on one CPU
the hand-off between the two daemons is always the cheap kind, and the two
share a cache. scripts/bench-relay measures both placements in one run.
Pairs are spread over the CPUs we may use (Slurm's cpuset included), so many
containers do not pile onto one CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from hpk_slurm.errors import HpkError


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its cgroup cpuset and affinity mask)."""
    return sorted(os.sched_getaffinity(0))


def pair_cpu(key: int, allowed: Sequence[int] | None = None) -> int:
    """The CPU for the pair identified by `key` (e.g. the container's address as an int)."""
    cpus = sorted(allowed) if allowed is not None else allowed_cpus()
    if not cpus:
        raise HpkError("no CPU to choose from")
    return cpus[key % len(cpus)]


def pin(cpu: int) -> None:
    """Run this process (all its threads from now on) on `cpu` only."""
    allowed = allowed_cpus()
    if cpu not in allowed:
        raise HpkError(
            f"cannot run on CPU {cpu}: this process may only use CPUs {format_cpus(allowed)}",
            "pick one of those, or leave --cpu out",
        )
    os.sched_setaffinity(0, {cpu})


def format_cpus(cpus: Sequence[int]) -> str:
    """0-3,8 style, as in /proc/self/status and Slurm's cpusets."""
    ranges: list[list[int]] = []  # [first, last]
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges)
