"""Shared fixtures: testbeds that always clean up, and a suite-wide leak check."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from hpk_slurm.testbed.netns import PREFIX, Testbed

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: network namespaces and TAP devices")
LEAK_NS = re.compile(rf"^{PREFIX}[0-9a-f]{{4}}")


def _our_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if LEAK_NS.match(line)}


def _our_daemons() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            except OSError:
                continue
            if b"hpk_slurm.cli" in cmdline or b"hpk-net-daemon" in cmdline:
                pids.add(int(entry))
    return pids


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """After the whole suite: no namespace, link or daemon of ours may remain."""
    ns_before, daemons_before = _our_namespaces(), _our_daemons()
    yield
    leaked_ns = _our_namespaces() - ns_before
    leaked_daemons = _our_daemons() - daemons_before
    assert not leaked_ns, f"network namespaces left behind: {sorted(leaked_ns)}"
    assert not leaked_daemons, f"daemon processes left behind: {sorted(leaked_daemons)}"


@pytest.fixture
def testbed():
    if not IS_ROOT:
        pytest.skip("needs root: network namespaces and TAP devices")
    bed = Testbed()
    try:
        yield bed
    finally:
        bed.close()
