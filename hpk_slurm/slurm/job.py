"""A Slurm job as the prolog and epilog see it, and everything derived from it for the job's bubble.

Prolog and epilog must not call Slurm commands (slurmctld may be busy): they
read their environment, and the node addresses from slurm.conf.

Derivation (per job, identical on every node of the job):
- bubble name hpk-<jobid>, run folder <run_root>/<uid>/hpk-<jobid>.<node> (the node
  in the name keeps a run root on a shared file system, and the test bed, safe);
- VXLAN UDP port = vxlan_port_base + jobid % port_range;
- job-local etcd's host TCP port = etcd_port_base + jobid % port_range;
- VNI = jobid % 16777214 + 1; etcd prefix /hpk/jobs/<jobid>/network;
- bubble ID (slirp CIDR 10.0.(ID+1).0/24) = jobid % 254: it lives inside the
  bubble's own namespaces, so it may repeat across jobs.
Limit: two jobs on one node collide only if their IDs differ by a multiple of
port_range (default 10000) while both run there; the second one's bubble then
fails to forward its port and the error names the port.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import hostlist

from hpk_slurm.config import SiteConfig
from hpk_slurm.errors import HpkError

_DIGITS = re.compile(r"^\d{1,10}$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$", re.IGNORECASE)


def _number(env: dict, key: str) -> int:
    value = env.get(key, "")
    if not _DIGITS.match(value):
        raise HpkError(f"{key}={value!r} is not a number (is this running from Slurm's prolog/epilog?)")
    return int(value)


@dataclass(frozen=True)
class JobEnv:
    job_id: int
    uid: int
    gid: int
    user: str
    nodes: tuple[str, ...]
    node: str  # this node (SLURMD_NODENAME)
    slurm_conf: str | None

    @classmethod
    def from_environ(cls, env: dict | None = None) -> "JobEnv":
        env = dict(os.environ if env is None else env)
        user = env.get("SLURM_JOB_USER", "")
        if not _USER.match(user):
            raise HpkError(f"SLURM_JOB_USER={user!r} is not a valid user name")
        # Slurm 22.05 gives the prolog SLURM_NODELIST; SLURM_JOB_NODELIST exists from 23.02.6.
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
        try:
            nodes = tuple(hostlist.expand_hostlist(nodelist))
        except hostlist.BadHostlist as exc:
            raise HpkError(f"cannot read the node list {nodelist!r}: {exc}") from None
        node = env.get("SLURMD_NODENAME") or socket.gethostname()
        if not nodes or node not in nodes:
            raise HpkError(f"this node ({node}) is not in the job's node list {nodelist!r}")
        return cls(_number(env, "SLURM_JOB_ID"), _number(env, "SLURM_JOB_UID"), _number(env, "SLURM_JOB_GID"),
                   user, nodes, node, env.get("SLURM_CONF"))

    @property
    def first_node(self) -> str:
        return self.nodes[0]

    @property
    def is_first(self) -> bool:
        return self.node == self.first_node

    def check_user(self) -> None:
        """The uid Slurm gave must be the named user's (both come from the environment)."""
        try:
            entry = pwd.getpwuid(self.uid)
        except KeyError:
            raise HpkError(f"SLURM_JOB_UID={self.uid} is not a user on this node") from None
        if entry.pw_name != self.user:
            raise HpkError(f"SLURM_JOB_UID={self.uid} is {entry.pw_name}, not SLURM_JOB_USER={self.user}")


@dataclass(frozen=True)
class JobNetwork:
    """The names, ports and keys of one job's bubble and overlay."""

    job_id: int
    name: str
    bubble_id: int
    vxlan_port: int
    etcd_port: int
    vni: int
    etcd_prefix: str

    @classmethod
    def derive(cls, job_id: int, cfg: SiteConfig) -> "JobNetwork":
        o = cfg.overlay
        slot = job_id % o.port_range
        return cls(job_id, f"hpk-{job_id}", job_id % 254, o.vxlan_port_base + slot, o.etcd_port_base + slot,
                   job_id % 16777214 + 1, f"/hpk/jobs/{job_id}/network")


def job_run_dir(cfg: SiteConfig, uid: int, job_id: int, node: str) -> Path:
    return Path(cfg.paths.run_root) / str(uid) / f"hpk-{job_id}.{node}"


# -- node addresses -------------------------------------------------------------------------


_NODE_LINE = re.compile(r"^\s*NodeName=(\S+)(.*)$", re.IGNORECASE)
_ADDR = re.compile(r"\bNodeAddr=(\S+)", re.IGNORECASE)


def node_addresses(slurm_conf: str | None) -> dict[str, str]:
    """NodeName -> NodeAddr from slurm.conf (both may be host lists: node[1-3] / 10.0.0.[1-3])."""
    if not slurm_conf or not os.path.exists(slurm_conf):
        return {}
    found: dict[str, str] = {}
    for line in Path(slurm_conf).read_text().splitlines():
        match = _NODE_LINE.match(line.split("#", 1)[0])
        if not match or match.group(1).lower() == "default":
            continue
        names = hostlist.expand_hostlist(match.group(1))
        addr = _ADDR.search(match.group(2))
        addrs = hostlist.expand_hostlist(addr.group(1)) if addr else names
        if len(addrs) == len(names):
            found.update(zip(names, addrs))
    return found


def node_address(node: str, slurm_conf: str | None) -> str:
    """A node's IPv4 address: its NodeAddr in slurm.conf, else what the resolver says."""
    addr = node_addresses(slurm_conf).get(node, node)
    try:
        return socket.gethostbyname(addr)
    except OSError:
        raise HpkError(f"cannot find the address of node {node}",
                       "give it a NodeAddr in slurm.conf, or make the name resolvable") from None
