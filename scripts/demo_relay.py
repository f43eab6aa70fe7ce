#!/usr/bin/env python3
"""Demo: a "container" namespace reaches a peer through the hpk-net-daemon relay.

Builds the relay lab (hpk_slurm.testbed.relay_lab), pings across it, runs
iperf3 through the relay and through the kernel's veth+bridge path for
comparison, prints the relay's own counters, and removes everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpk_slurm.errors import require_binary  # noqa: E402
from hpk_slurm.testbed.netns import Testbed, wait_for  # noqa: E402
from hpk_slurm.testbed.relay_lab import BASELINE_IP, CLIENT_IP, PEER_IP, RelayLab  # noqa: E402
from hpk_slurm.testbed.traffic import iperf  # noqa: E402

SECONDS = 3


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it creates network namespaces and TAP devices)", file=sys.stderr)
        return 2
    require_binary("iperf3", "iperf3")
    with Testbed() as bed:
        lab = RelayLab(bed).start()
        print(f"relay lab {bed.prefix}: {lab.a.name} tap0 {CLIENT_IP} <-> hpk-net-daemon x2 <-> "
              f"{lab.br.name} br0 <-> {lab.b.name} eth0 {PEER_IP}  (baseline: {lab.c.name} eth0 {BASELINE_IP})")
        ping = lab.a.run(["ping", "-c", "5", "-i", "0.2", "-q", PEER_IP])
        print("ping through the relay:", ping.stdout.strip().splitlines()[-1])
        relay = iperf(bed, lab.a, lab.b, PEER_IP, seconds=SECONDS)["bits_per_second"] / 1e9
        kernel = iperf(bed, lab.c, lab.b, PEER_IP, seconds=SECONDS)["bits_per_second"] / 1e9
        print(f"iperf3 TCP, 1 stream, {SECONDS} s:")
        print(f"  through the relay (offloads): {relay:6.2f} Gbit/s")
        print(f"  kernel veth + bridge:         {kernel:6.2f} Gbit/s  (relay = {relay / kernel:.0%})")
        stats = wait_for(lambda: (s := lab.stats("client")).get("tx_frames") and s, what="counters")
        print(f"client daemon counters: mode={stats['mode']} sent {stats['tx_frames']} frames / "
              f"{stats['tx_bytes']} bytes, received {stats['rx_frames']} frames / {stats['rx_bytes']} bytes, "
              f"drops {stats['rx_drops']}, errors {stats['errors']}")
    print("cleaned up: namespaces, TAPs, daemons and sockets removed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"demo: {' '.join(exc.cmd)} failed: {exc.stderr}", file=sys.stderr)
        sys.exit(1)
