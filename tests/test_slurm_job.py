"""A real Slurm job on two test hosts: the prolog starts a bubble per node, srun hpktainer runs
one container per task on the job's overlay, the epilog writes the report and cleans up (root).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import stat

import pytest

from hpk_slurm.testbed.job_lab import PY, JobLab
from hpk_slurm.testbed.netns import wait_for

pytestmark = pytest.mark.skipif(shutil.which("slurmctld") is None,
                                reason="needs the Debian packages slurmctld, slurmd, slurm-client and munge")


@pytest.fixture
def job_lab(testbed):
    lab = JobLab(testbed)
    try:
        yield lab
    finally:
        lab.close()


def test_two_node_job_containers_talk_across_nodes(job_lab):
    lab = job_lab
    body = r'''
srun -N2 --ntasks-per-node=1 $PY -m hpk_slurm.cli.hpktainer exec --wait-peers / sh -c '
  other=$((1 - HPK_RANK))
  echo "rank=$HPK_RANK ip=$HPK_IP peers=$HPK_PEERS node=$(hostname)"
  ping -c 2 -W 2 $SLURM_JOB_ID-$other >/dev/null && echo "rank $HPK_RANK reached $SLURM_JOB_ID-$other"
  if [ "$HPK_RANK" = 0 ]; then
    exec $PY -m hpk_slurm.testbed.tcpcheck serve 0.0.0.0 5001
  else
    for try in 1 2 3 4 5 6 7 8 9 10; do
      $PY -m hpk_slurm.testbed.tcpcheck send $SLURM_JOB_ID-0 5001 3000000 2>/dev/null && exit 0
      sleep 0.5
    done
    exit 1
  fi'
'''
    job = lab.cluster.sbatch(lab.job_script(body), user=lab.user, nodes=None)
    state = lab.cluster.wait_job(job, timeout=120)
    output = lab.cluster.output(job)
    assert state == "COMPLETED", output
    assert f"rank 0 reached {job}-1" in output and f"rank 1 reached {job}-0" in output, output
    transfers = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert len(transfers) == 2 and transfers[0] == transfers[1] and transfers[0]["bytes"] == 3000000, output
    nodes = lab.cluster.nodes
    reports = [lab.report_dir / str(job) / f"{node}.json" for node in nodes]
    wait_for(lambda: all(r.exists() for r in reports), timeout=60, what="both nodes' reports")
    for path in reports:
        st = os.stat(path)
        assert st.st_uid == lab.user.uid and stat.S_IMODE(st.st_mode) == 0o400
        report = json.loads(path.read_text())
        assert report["bubble"]["name"] == f"hpk-{job}" and report["bubble"]["flannel_subnet"]
        assert [c["exit_code"] for c in report["containers"]] == [0]
    assert stat.S_IMODE(os.stat(lab.report_dir / str(job)).st_mode) == 0o711
    bubbles = [json.loads(path.read_text())["bubble"] for path in reports]
    for me, other in ((bubbles[0], bubbles[1]), (bubbles[1], bubbles[0])):  # each saw the other on the overlay
        other_subnet = str(ipaddress.IPv4Interface(other["flannel_subnet"]).network)
        assert {"subnet": other_subnet, "host": other["host_ip"]}.items() <= me["peers"][0].items(), me["peers"]
    wait_for(lambda: not any(d.exists() for d in lab.run_dirs(job)), timeout=30, what="the epilog's cleanup")
    sent = json.loads(reports[1].read_text())["containers"][0]["relay"]
    assert sent["tx_bytes"] >= 3000000


def test_prolog_failure_that_may_be_remote_is_reported_inside_the_job(job_lab):
    """The first node's etcd port is taken: its bubble fails; the job sees why, the nodes stay in service."""
    lab = job_lab
    from hpk_slurm.config import load_config
    from hpk_slurm.slurm.job import JobNetwork

    next_job = int(lab.cluster.run(["scontrol", "show", "config"]).stdout.split("NEXT_JOB_ID", 1)[1].split("=")[1].split()[0])
    port = JobNetwork.derive(next_job, load_config(lab.config)).etcd_port
    blocker = lab.bed.spawn([PY, "-m", "hpk_slurm.testbed.tcpcheck", "serve", "0.0.0.0", str(port)],
                            netns=lab.bubbles.hosts[0], log_name="port-blocker")
    wait_for(lambda: "listening" in blocker.log_path.read_text(), what="port blocker")
    job = lab.cluster.sbatch(lab.job_script("srun -N1 -n1 -w $(hostname) $PY -m hpk_slurm.cli.hpktainer exec / true"),
                             user=lab.user, nodes=None)
    assert job == next_job
    state = lab.cluster.wait_job(job, timeout=120)
    output = lab.cluster.output(job)
    assert state == "FAILED", output
    assert f"job {job} has no bubble on this node" in output and f"port {port}" in output, output
    assert set(lab.cluster.node_states().values()) == {"idle"}, "a remote failure must not drain nodes"


def leftovers_of(lab: JobLab) -> list[str]:
    """Run folders, and processes that mention the run root (bubbles, slirp4netns, daemons)."""
    root = str(lab.run_root).encode()
    found = [str(p) for p in (lab.run_root / str(lab.user.uid)).glob("*")] if lab.run_root.exists() else []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if root in f.read():
                        found.append(f"process {entry}")
            except OSError:
                pass
    return found


CONCURRENT = r'''
srun -N2 --ntasks-per-node=1 $PY -m hpk_slurm.cli.hpktainer exec --wait-peers / sh -c '
  echo $HPK_IP > {shared}/$SLURM_JOB_ID.$HPK_RANK
  for i in $(seq 150); do [ $(ls {shared} | grep -vc "^$SLURM_JOB_ID\.") -ge 2 ] && break; sleep 0.2; done
  for f in $(ls {shared} | grep -v "^$SLURM_JOB_ID\."); do
    ip=$(cat {shared}/$f)
    case ",$HPK_PEERS," in
      *",$ip,"*) echo "rank $HPK_RANK: $ip is also an address of this job, not a test";;
      *) if ping -c 1 -W 1 $ip >/dev/null 2>&1; then echo "LEAK to $ip"; else echo "isolated from $ip"; fi;;
    esac
  done
  if [ "$HPK_RANK" = 0 ]; then
    exec $PY -m hpk_slurm.testbed.tcpcheck serve 0.0.0.0 5001
  else
    for try in $(seq 20); do $PY -m hpk_slurm.testbed.tcpcheck send $SLURM_JOB_ID-0 5001 2000000 2>/dev/null && exit 0; sleep 0.3; done
    exit 1
  fi'
'''


def test_two_jobs_at_once_each_work_and_are_isolated(job_lab):
    lab = job_lab
    shared = lab.bed.workdir / "shared"
    shared.mkdir()
    os.chown(shared, lab.user.uid, lab.user.gid)
    script = lab.job_script(CONCURRENT.replace("{shared}", str(shared)))
    jobs = [lab.cluster.sbatch(script, user=lab.user, nodes=None) for _ in range(2)]
    for job in jobs:
        state = lab.cluster.wait_job(job, timeout=150)
        output = lab.cluster.output(job)
        assert state == "COMPLETED", output
        assert "LEAK" not in output, output
        assert output.count("isolated from") >= 2, output  # each rank tried the other job's containers
        transfers = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        assert len(transfers) == 2 and transfers[0] == transfers[1], output
    info = [lab.cluster.job(job) for job in jobs]
    assert all(i.get("NodeList") == info[0].get("NodeList") for i in info), "both jobs on the same nodes"
    wait_for(lambda: not leftovers_of(lab), timeout=60, what="both jobs' teardown")


def test_job_whose_etcd_is_unreachable_fails_clearly_without_draining(testbed):
    lab = JobLab(testbed, extra_config='[etcd]\nendpoints = ["http://127.0.0.1:9"]\n')
    try:
        job = lab.cluster.sbatch(lab.job_script("srun -N1 -n1 -w $(hostname) $PY -m hpk_slurm.cli.hpktainer exec / true"),
                                 user=lab.user, nodes=None)
        assert lab.cluster.wait_job(job, timeout=150) == "FAILED"
        output = lab.cluster.output(job)
        assert f"job {job} has no bubble on this node" in output and "etcd at http://127.0.0.1:9 unreachable" in output, output
        assert set(lab.cluster.node_states().values()) == {"idle"}, "an unreachable etcd must not drain nodes"
        wait_for(lambda: not leftovers_of(lab), timeout=60, what="teardown")
    finally:
        lab.close()


def test_hosts_lists_a_running_steps_ranks_and_srun_shorthand_works(job_lab):
    lab = job_lab
    body = r'''
srun -N2 --ntasks-per-node=1 $PY -m hpk_slurm.cli.hpktainer exec --wait-peers / sh -c 'echo up $HPK_RANK; sleep 6' &
for i in $(seq 50); do
  lines=$($PY -m hpk_slurm.cli.hpktainer hosts --step 0 2>/dev/null | wc -l)
  [ "$lines" = 2 ] && break
  sleep 0.3
done
$PY -m hpk_slurm.cli.hpktainer hosts --step 0 | sed "s/^/hosts: /"
wait
$PY -m hpk_slurm.cli.hpktainer srun -N2 --ntasks-per-node=1 -- / sh -c 'echo "shorthand rank=$HPK_RANK ip=$HPK_IP"'
'''
    job = lab.cluster.sbatch(lab.job_script(body), user=lab.user, nodes=None)
    assert lab.cluster.wait_job(job, timeout=120) == "COMPLETED", lab.cluster.output(job)
    output = lab.cluster.output(job)
    hosts = [line.split()[1:] for line in output.splitlines() if line.startswith("hosts: ")]
    assert sorted(name for _, name in hosts) == [f"{job}-0", f"{job}-1"], output
    assert all(ip.startswith("10.244.") for ip, _ in hosts), output
    assert sorted(line.split()[1] for line in output.splitlines() if line.startswith("shorthand")) == \
        ["rank=0", "rank=1"], output
