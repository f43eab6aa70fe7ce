"""hpktainer doctor: what is wrong on a node, and how to fix it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HPKTAINER = [sys.executable, "-m", "hpk_slurm.cli.hpktainer", "doctor"]


def doctor(tmp_path, path=None, config=None, job=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPK_"))}
    if path:
        env["PATH"] = path
    cfg = tmp_path / "hpk.toml"
    cfg.write_text(config or "")
    env["HPK_CONFIG"] = str(cfg)
    if job:
        env["SLURM_JOB_ID"], env["SLURMD_NODENAME"] = str(job), "nodeX"
    result = subprocess.run([*HPKTAINER, "--json"], capture_output=True, text=True, env=env, timeout=60)
    return result.returncode, {c["name"]: c for c in json.loads(result.stdout)}


def test_a_ready_node_passes(tmp_path):
    code, checks = doctor(tmp_path)
    assert code == 0 and all(c["ok"] for c in checks.values())


def test_missing_flanneld_fails_with_the_fix(tmp_path):
    code, checks = doctor(tmp_path, path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert code == 1
    assert not checks["program flanneld"]["ok"] and "/usr/local/bin/flanneld" in checks["program flanneld"]["fix"]


def test_unreachable_site_etcd_fails(tmp_path):
    code, checks = doctor(tmp_path, config='[etcd]\nendpoints = ["http://127.0.0.1:9"]\n')
    assert code == 1 and not checks["etcd"]["ok"] and "unreachable" in checks["etcd"]["detail"]


def test_a_job_without_its_bubble_checks_its_ports(tmp_path):
    code, checks = doctor(tmp_path, job=123)
    assert code == 1 and not checks["bubble of job 123"]["ok"]
    assert checks["udp port 40123"]["ok"] and checks["tcp port 30123"]["ok"]
