#!/usr/bin/env python3
"""Demo: two test hosts, a rootless bubble on each, one Flannel overlay between them.

Host 1's bubble hosts the job's etcd (controller); host 2's bubble joins it
(node) and runs as an unprivileged user. A "pod" (nested network namespace
on hpk-bridge) in each bubble pings the other across the VXLAN overlay, and
iperf3 measures pod-to-pod throughput. Everything is removed at the end.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpk_slurm.testbed.bubble_lab import BubbleLab  # noqa: E402
from hpk_slurm.testbed.netns import Testbed  # noqa: E402
from hpk_slurm.testbed.traffic import iperf  # noqa: E402


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it creates test hosts as network namespaces)", file=sys.stderr)
        return 2
    with Testbed() as bed:
        lab = BubbleLab(bed)
        try:
            user = lab.user()
            b1 = lab.start(1, 1)
            b2 = lab.start(2, 2, user=user, controller_index=1)
            for b, who in ((b1, "root, controller: hosts etcd"), (b2, f"user {user.name}, node")):
                f = b.facts
                print(f"host {b.host.name} ({f['host_ip']}): bubble {f['name']} [{who}] subnet {f['flannel_subnet']} "
                      f"MTU {f['flannel_mtu']} VXLAN port {f['vxlan_port']} VNI {f['vni']} pids {f['pids']}")
            pod1, ip1 = lab.pod(b1, 2)
            pod2, ip2 = lab.pod(b2, 2)
            ping = pod1.run(["ping", "-c", "5", "-i", "0.2", "-q", ip2])
            print(f"pod {ip1} (bubble 1) -> pod {ip2} (bubble 2):", ping.stdout.strip().splitlines()[-1])
            rate = iperf(bed, pod1, pod2, ip2, seconds=3)["bits_per_second"] / 1e9
            print(f"iperf3 TCP pod -> pod across the overlay (VXLAN through slirp4netns): {rate:.2f} Gbit/s")
        finally:
            lab.close()
    print("cleaned up: bubbles stopped (leases given back), test hosts and user removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
