"""Ranks of a job step finding each other: each container's overlay IP registered in the job's etcd.

Key: <etcd prefix>/ranks/<step>/<rank> = {"ip", "node", "container"}. The
keys go with the job's prefix when the job ends. `hpktainer hosts` prints
the step's hostfile; `--wait-peers` holds a container's command until
every rank of its step is registered, then gives it HPK_PEERS and an
/etc/hosts with one `<jobid>-<rank>` name per rank (MPI-style launches).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from hpk_slurm.errors import HpkError
from hpk_slurm.overlay.etcd import Etcd


@dataclass(frozen=True)
class StepRank:
    job_id: str
    step: str
    rank: int
    tasks: int

    @classmethod
    def from_environ(cls) -> "StepRank | None":
        env = os.environ
        keys = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS")
        if not all(env.get(k, "").isdigit() for k in keys):
            return None
        return cls(env["SLURM_JOB_ID"], env["SLURM_STEP_ID"], int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]))

    def hostname(self, rank: int | None = None) -> str:
        return f"{self.job_id}-{self.rank if rank is None else rank}"


@dataclass(frozen=True)
class Peers:
    etcd: Etcd
    prefix: str  # the job's etcd prefix

    def _step_prefix(self, step: str) -> str:
        return f"{self.prefix}/ranks/{step}/"

    def register(self, me: StepRank, ip: str, node: str, container_id: str) -> None:
        self.etcd.put(self._step_prefix(me.step) + str(me.rank),
                      json.dumps({"ip": ip, "node": node, "container": container_id}))

    def unregister(self, me: StepRank) -> None:
        self.etcd.delete(self._step_prefix(me.step) + str(me.rank))

    def ranks(self, step: str) -> dict[int, dict]:
        found = {}
        for key, value in self.etcd.items(self._step_prefix(step)):
            rank = key.rsplit("/", 1)[1]
            if rank.isdigit():
                found[int(rank)] = json.loads(value)
        return dict(sorted(found.items()))

    def wait_all(self, me: StepRank, timeout: float) -> dict[int, dict]:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            ranks = self.ranks(me.step)
            if len(ranks) >= me.tasks:
                return ranks
            if time.monotonic() > deadline:
                missing = sorted(set(range(me.tasks)) - set(ranks))
                raise HpkError(f"step {me.step}: ranks {missing} did not start within {timeout:.0f} s",
                               "did every task of the step run hpktainer with --wait-peers?")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def hosts_file(me: StepRank, ranks: dict[int, dict]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost"]
    lines += [f"{entry['ip']}\t{me.hostname(rank)}" for rank, entry in ranks.items()]
    return "\n".join(lines) + "\n"
