"""Slurm Prolog (PrologFlags=Alloc): start the job's bubble on this node, as the job's user.

Runs as root on every node of the allocation, before the job's steps.
Exit status matters: non-zero drains the node. So only node-local breakage
(missing programs, no usable TUN device, a bad environment from slurmd)
fails the prolog; a failure that may be remote (the job's etcd unreachable,
the first node's bubble not up) is recorded beside the run folder and
surfaces as a clear error from `hpktainer` inside the job. The bubble's own
start is bounded (bubble.start_timeout), so the prolog never blocks longer.
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import sys
from pathlib import Path

from hpk_slurm.bubble.preflight import bubble_problems
from hpk_slurm.config import SiteConfig, load_config
from hpk_slurm.errors import HpkError
from hpk_slurm.files import write_private
from hpk_slurm.slurm.job import JobEnv, JobNetwork, job_run_dir, node_address
from hpk_slurm.slurm.logs import setup_script_logging

log = logging.getLogger("hpk_slurm.slurm.prolog")


def failure_marker(run_dir: Path) -> Path:
    """Where a node records why its bubble is missing, for hpktainer to report."""
    return run_dir.with_name(run_dir.name + ".failed")


def prepare_user_root(cfg: SiteConfig, job: JobEnv) -> Path:
    """<run_root> (root's, 0755) / <uid> (the user's, 0700): only the user reaches their bubbles' sockets."""
    root = Path(cfg.paths.run_root)
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    user_root = root / str(job.uid)
    user_root.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(user_root)
    if st.st_uid != job.uid:
        if st.st_uid != 0 or not user_root.is_dir() or user_root.is_symlink():
            raise HpkError(f"{user_root} exists and is not {job.user}'s folder")
        os.chown(user_root, job.uid, job.gid)
    os.chmod(user_root, 0o700)
    return user_root


def bubble_argv(cfg: SiteConfig, job: JobEnv, net: JobNetwork, run_dir: Path) -> list[str]:
    o, b = cfg.overlay, cfg.bubble
    argv = [sys.executable, "-m", "hpk_slurm.cli.bubble", "start", str(net.bubble_id), "--name", net.name,
            "--run-dir", str(run_dir), "--host-ip", node_address(job.node, job.slurm_conf),
            "--etcd-prefix", net.etcd_prefix, "--network", o.network, "--subnet-len", str(o.subnet_len),
            "--vni", str(net.vni), "--vxlan-port", str(net.vxlan_port), "--etcd-port", str(net.etcd_port),
            "--runtime", b.runtime, "--timeout", str(b.start_timeout), "--json"]
    if b.image:
        argv += ["--image", b.image]
    argv.append("--controller" if job.is_first else "--node")
    if cfg.etcd.endpoints:
        argv += ["--etcd-endpoints", ",".join(cfg.etcd.endpoints)]
    elif not job.is_first:
        argv += ["--etcd-ip", node_address(job.first_node, job.slurm_conf)]
    return argv


def as_user(job: JobEnv, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """argv run as the job's user (setpriv execs, so no extra process), with a clean environment."""
    home = pwd.getpwuid(job.uid).pw_dir
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": home,
           "USER": job.user, "LOGNAME": job.user, "LANG": "C.UTF-8"}
    if "HPK_CONFIG" in os.environ:
        env["HPK_CONFIG"] = os.environ["HPK_CONFIG"]
    return ["setpriv", f"--reuid={job.uid}", f"--regid={job.gid}", "--init-groups", "--", *argv], env


def prolog(environ: dict | None = None) -> int:
    try:
        job = JobEnv.from_environ(environ)
        job.check_user()
        cfg = load_config()
    except HpkError as exc:
        log.error("prolog: %s", exc)
        return 1
    net = JobNetwork.derive(job.job_id, cfg)
    problems = bubble_problems(host_etcd=job.is_first and not cfg.etcd.endpoints)
    if problems:  # node-local: this node cannot run bubbles; draining it is right
        for problem in problems:
            log.error("job %d: node %s cannot run bubbles: %s", job.job_id, job.node, problem)
        return 1
    try:
        user_root = prepare_user_root(cfg, job)
        run_dir = job_run_dir(cfg, job.uid, job.job_id, job.node)
        failure_marker(run_dir).unlink(missing_ok=True)
        argv, env = as_user(job, bubble_argv(cfg, job, net, run_dir))
    except HpkError as exc:
        log.error("job %d: %s", job.job_id, exc)
        return 1
    result = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=cfg.bubble.start_timeout + 30)
    if result.returncode == 0:
        log.info("job %d: bubble %s ready on %s (%s)", job.job_id, net.name, job.node, user_root)
        return 0
    message = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
    log.error("job %d: bubble %s failed on %s: %s", job.job_id, net.name, job.node, message)
    write_private(failure_marker(run_dir), f"{job.node}: {message}\n", job.uid, job.gid)
    return 0  # maybe remote (etcd, the first node): the job reports it, the node stays in service


def main() -> None:
    setup_script_logging("hpk-prolog")
    sys.exit(prolog())


if __name__ == "__main__":
    main()
