#!/usr/bin/env python3
"""The demo: a multi-node Slurm job whose containers talk across nodes.

On this one machine: three test hosts (network namespaces on a private
switch), Slurm (slurmctld, a slurmd per host) with the project's prolog and
epilog, and an unprivileged user who submits a 3-node batch job. The prolog
starts a rootless bubble per node (the first hosts the job's etcd); in the
job, `srun hpktainer exec --wait-peers` starts one container per task on the
job's overlay; the ranks find each other by name (<jobid>-<rank>), ping each
other, and rank 1 and 2 stream to rank 0 with a checksum. The epilog writes
each node's network report and tears the bubbles down. Everything is
removed at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpk_slurm.testbed.job_lab import JobLab  # noqa: E402
from hpk_slurm.testbed.netns import Testbed, wait_for  # noqa: E402

NODES = 3
BYTES = 20_000_000

JOB = r'''
echo "batch script on $(hostname), job $SLURM_JOB_ID, nodes $SLURM_JOB_NODELIST"
srun -N{nodes} --ntasks-per-node=1 $PY -m hpk_slurm.cli.hpktainer exec --wait-peers / sh -c '
  echo "rank $HPK_RANK on $(hostname): container $HPK_CONTAINER_ID ip $HPK_IP (bubble $HPK_BUBBLE) peers $HPK_PEERS"
  for r in $(seq 0 $((SLURM_STEP_NUM_TASKS - 1))); do
    [ $r = $HPK_RANK ] && continue
    rtt=$(ping -c 3 -q -W 2 $SLURM_JOB_ID-$r | tail -1 | cut -d/ -f5)
    echo "rank $HPK_RANK -> $SLURM_JOB_ID-$r: ping avg $rtt ms"
  done
  if [ "$HPK_RANK" = 0 ]; then
    for peer in $(seq 1 $((SLURM_STEP_NUM_TASKS - 1))); do
      $PY -m hpk_slurm.testbed.tcpcheck serve 0.0.0.0 $((5000 + peer)) | tail -1 | sed "s/^/rank 0 received from rank $peer: /" &
    done
    wait
  else
    start=$(date +%s.%N)
    for try in $(seq 20); do
      out=$($PY -m hpk_slurm.testbed.tcpcheck send $SLURM_JOB_ID-0 $((5000 + HPK_RANK)) {bytes} 2>/dev/null) && break
      sleep 0.3
    done
    echo "rank $HPK_RANK sent to rank 0: $out"
  fi'
'''


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it builds test hosts, Slurm daemons and a test user)", file=sys.stderr)
        return 2
    with Testbed() as bed:
        lab = JobLab(bed, hosts=NODES)
        try:
            print(f"Slurm cluster {lab.cluster.cluster_name}: nodes {', '.join(lab.cluster.nodes)}; "
                  f"job user {lab.user.name} (uid {lab.user.uid})")
            started = time.monotonic()
            job = lab.cluster.sbatch(lab.job_script(JOB.format(nodes=NODES, bytes=BYTES), nodes=NODES),
                                     user=lab.user, nodes=None)
            state = lab.cluster.wait_job(job, timeout=180)
            print(f"job {job}: {state} in {time.monotonic() - started:.1f} s; its output:")
            for line in lab.cluster.output(job).splitlines():
                print("  | " + line)
            reports = [lab.report_dir / str(job) / f"{node}.json" for node in lab.cluster.nodes]
            wait_for(lambda: all(r.exists() for r in reports), timeout=60, what="the epilog's reports")
            print("network report (written by the epilog on each node):")
            for path in reports:
                report = json.loads(path.read_text())
                b = report["bubble"]
                for c in report["containers"]:
                    relay = c.get("relay", {})
                    print(f"  {report['node']}: bubble {b['name']} subnet {b['flannel_subnet']} VNI {b['vni']} "
                          f"port {b['vxlan_port']}; container {c['id']} {c['address']} rank {c['rank']} "
                          f"exit {c['exit_code']}, sent {relay.get('tx_bytes', 0)} B, received {relay.get('rx_bytes', 0)} B")
            wait_for(lambda: not any(d.exists() for d in lab.run_dirs(job)), timeout=30, what="teardown")
        finally:
            lab.close()
    print("cleaned up: bubbles, Slurm daemons, test hosts and the test user removed")
    return 0 if state == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
