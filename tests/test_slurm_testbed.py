"""The Slurm test bed: slurmctld + one slurmd per test host, jobs as an unprivileged user (root).

Each host is a network namespace on a private switch with its own UTS
namespace, so `hostname` in a job step names the node it ran on.
"""

from __future__ import annotations

import os
import shutil

import pytest

from hpk_slurm.testbed import bubble_lab
from hpk_slurm.testbed.slurm import SlurmCluster

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("slurmctld") is None or shutil.which("munged") is None,
                       reason="needs the Debian packages slurmctld, slurmd, slurm-client and munge"),
]


@pytest.fixture
def cluster(testbed):
    cluster = SlurmCluster(testbed).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def user():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a user")
    user = bubble_lab.TestUser.create()  # (imported via the module: pytest would try to collect it)
    try:
        yield user
    finally:
        user.close()


def test_two_node_batch_job_as_a_user_runs_a_step_on_both_nodes(cluster, user):
    assert cluster.node_states() == {node: "idle" for node in cluster.nodes}
    job = cluster.sbatch("#!/bin/bash\n#SBATCH -N2\nsrun -N2 hostname\n", user=user, nodes=None)
    assert cluster.wait_job(job, timeout=20) == "COMPLETED", cluster.output(job)
    info = cluster.job(job)
    assert info["NumNodes"] == "2" and info["ExitCode"] == "0:0"
    assert sorted(cluster.output(job).split()) == sorted(cluster.nodes)


def test_job_runs_as_the_submitting_user(cluster, user):
    job = cluster.sbatch("#!/bin/bash\necho batch $(id -u) $(id -g)\nsrun -N2 id -u\n", user=user)
    assert cluster.wait_job(job, timeout=20) == "COMPLETED", cluster.output(job)
    lines = cluster.output(job).split("\n")
    assert lines[0] == f"batch {user.uid} {user.gid}"
    assert [line for line in lines[1:] if line] == [str(user.uid)] * 2
    assert cluster.job(job)["UserId"] == f"{user.name}({user.uid})"
