"""Placement of a relay pair on one CPU (hpk_slurm.net.affinity), with real affinity calls."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hpk_slurm.errors import HpkError
from hpk_slurm.net import affinity
from hpk_slurm.testbed import handoff


def test_pairs_spread_over_every_allowed_cpu_and_each_pair_is_stable():
    allowed = [2, 3, 5, 8]
    chosen = [affinity.pair_cpu(key, allowed) for key in range(100, 108)]
    assert sorted(set(chosen)) == allowed  # consecutive containers use every CPU
    assert chosen[:4] == chosen[4:]  # the same key always gets the same CPU


def test_pair_cpu_defaults_to_the_cpus_this_process_may_use():
    assert affinity.pair_cpu(12345) in os.sched_getaffinity(0)


def test_cpu_lists_read_like_cpusets():
    assert affinity.format_cpus([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"
    assert affinity.format_cpus([5]) == "5"


def test_pin_moves_the_process_to_that_cpu_only():
    cpu = affinity.allowed_cpus()[-1]
    code = f"from hpk_slurm.net import affinity; import os; affinity.pin({cpu}); print(sorted(os.sched_getaffinity(0)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"[{cpu}]"


def test_a_cpu_outside_the_allowed_set_is_a_clear_error_and_changes_nothing():
    before = os.sched_getaffinity(0)
    outside = max(before) + 1000
    with pytest.raises(HpkError, match=rf"cannot run on CPU {outside}: this process may only use CPUs "
                                       + affinity.format_cpus(sorted(before))):
        affinity.pin(outside)
    assert os.sched_getaffinity(0) == before


def test_handoff_measure_covers_each_placement_and_restores_our_affinity():
    """bench-relay's wakeup table: real round trips, the echo child reaped, our CPUs given back."""
    before = os.sched_getaffinity(0)
    costs = handoff.measure(rounds=20)
    expected = {"one CPU", "two CPUs"} if len(before) > 1 else {"one CPU"}
    assert set(costs) == expected
    assert all(0 < cost[key] < 1e6 for cost in costs.values() for key in ("back_to_back_us", "after_10ms_us"))
    assert os.sched_getaffinity(0) == before
