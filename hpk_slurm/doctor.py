"""`hpktainer doctor`: is this node ready to run bubbles and containers, and if not, what to do.

The prolog runs the node-local part (bubble_problems) before every job;
doctor adds what needs the site configuration or the current job: etcd
reachability, the job's ports, and the job's bubble itself.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass

from hpk_slurm.bubble.preflight import BUBBLE_BINARIES, CONTROLLER_BINARIES, missing_binaries, tun_problem, userns_problem
from hpk_slurm.config import SiteConfig
from hpk_slurm.overlay.etcd import Etcd, EtcdUnreachable


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"{mark} {self.name}: {self.detail}" + (f" -> {self.fix}" if self.fix else "")

    def to_dict(self) -> dict:
        return asdict(self)


def port_free(proto: str, port: int) -> bool:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def node_checks() -> list[Check]:
    checks = []
    for binary, package in {**BUBBLE_BINARIES, **CONTROLLER_BINARIES}.items():
        problem = missing_binaries({binary: package})
        checks.append(Check(f"program {binary}", not problem, problem[0].what if problem else "found",
                            problem[0].fix if problem else ""))
    for name, problem in (("TUN device", tun_problem()), ("user namespaces", userns_problem())):
        checks.append(Check(name, problem is None, problem.what if problem else "usable", problem.fix if problem else ""))
    return checks


def etcd_checks(cfg: SiteConfig) -> list[Check]:
    if not cfg.etcd.endpoints:
        return [Check("etcd", True, "job-local etcd (none configured for the site)")]
    try:
        Etcd(cfg.etcd.endpoints).wait_ready(timeout=5)
        return [Check("etcd", True, f"{','.join(cfg.etcd.endpoints)} answers")]
    except EtcdUnreachable as exc:
        return [Check("etcd", False, str(exc), "check etcd.endpoints in the site configuration and the network")]


def job_checks(cfg: SiteConfig, job_id: int, bubble_running: bool) -> list[Check]:
    from hpk_slurm.slurm.job import JobNetwork

    net = JobNetwork.derive(job_id, cfg)
    checks = [Check(f"bubble of job {job_id}", bubble_running,
                    "running" if bubble_running else "not running on this node",
                    "" if bubble_running else "see the slurmd log for the hpk prolog's messages")]
    if not bubble_running:
        for proto, port in (("udp", net.vxlan_port), ("tcp", net.etcd_port)):
            free = port_free(proto, port)
            checks.append(Check(f"{proto} port {port}", free, "free" if free else "taken by another program",
                                "" if free else "another job (IDs a multiple of port_range apart?) or a service"))
    return checks


def run_checks(cfg: SiteConfig, job_id: int | None = None, bubble_running: bool = False) -> list[Check]:
    checks = node_checks() + etcd_checks(cfg)
    if job_id is not None:
        checks += job_checks(cfg, job_id, bubble_running)
    return checks


def current_job() -> int | None:
    value = os.environ.get("SLURM_JOB_ID", "")
    return int(value) if value.isdigit() else None
