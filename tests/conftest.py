"""Shared fixtures: testbeds that always clean up, and a suite-wide leak check."""

from __future__ import annotations

import os
import subprocess

import pytest

from hpk_slurm.testbed.bubble_lab import BubbleLab
from hpk_slurm.testbed.netns import Testbed

IS_ROOT = os.geteuid() == 0


def _our_namespaces() -> set[str]:
    names = {bed.prefix for bed in Testbed.made}
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()[0][:6] in names}


def _our_processes() -> set[str]:
    """Processes that mention one of this run's testbed folders (daemons, bubbles, servers)."""
    folders = [str(bed.workdir).encode() for bed in Testbed.made]
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
                with open(f"/proc/{entry}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue  # exited, waiting for PID 1 of the machine to reap it
            except OSError:
                continue
            if any(folder in cmdline for folder in folders):
                found.add(f"{entry}: {cmdline.replace(chr(0).encode(), b' ').decode(errors='replace')[:200]}")
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """After the whole suite: no namespace or process of this run's test beds may remain."""
    yield
    leaked_ns, leaked = _our_namespaces(), _our_processes()
    assert not leaked_ns, f"network namespaces left behind: {sorted(leaked_ns)}"
    assert not leaked, f"processes left behind: {sorted(leaked)}"


@pytest.fixture
def testbed():
    if not IS_ROOT:
        pytest.skip("needs root: network namespaces and TAP devices")
    bed = Testbed()
    try:
        yield bed
    finally:
        bed.close()


@pytest.fixture
def lab(testbed):
    """Test hosts for bubbles (test files with another lab define their own `lab`)."""
    lab = BubbleLab(testbed)
    try:
        yield lab
    finally:
        lab.close()
