"""Slurm-side pure parts: the job's environment, what is derived from it, the site configuration."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from hpk_slurm.config import SiteConfig, load_config
from hpk_slurm.errors import HpkError
from hpk_slurm.files import write_private
from hpk_slurm.slurm.job import JobEnv, JobNetwork, job_run_dir, node_addresses
from hpk_slurm.slurm.prolog import bubble_argv

ROOT = pwd.getpwuid(0).pw_name
ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_UID": "0", "SLURM_JOB_GID": "0", "SLURM_JOB_USER": ROOT,
       "SLURM_NODELIST": "node[1-3]", "SLURMD_NODENAME": "node2", "SLURM_CONF": "/nonexistent"}


def test_job_env_from_a_22_05_prolog_environment():
    job = JobEnv.from_environ(ENV)
    assert job.job_id == 4242 and job.nodes == ("node1", "node2", "node3")
    assert job.node == "node2" and job.first_node == "node1" and not job.is_first
    job.check_user()


def test_job_env_prefers_slurm_job_nodelist_where_it_exists():
    job = JobEnv.from_environ({**ENV, "SLURM_JOB_NODELIST": "node[2-3]"})
    assert job.nodes == ("node2", "node3") and job.is_first


@pytest.mark.parametrize("key, value, message", [
    ("SLURM_JOB_ID", "12; rm -rf /", "SLURM_JOB_ID"),
    ("SLURM_JOB_ID", "", "SLURM_JOB_ID"),
    ("SLURM_JOB_UID", "-1", "SLURM_JOB_UID"),
    ("SLURM_JOB_USER", "../../etc", "SLURM_JOB_USER"),
    ("SLURM_NODELIST", "node[1-", "node list"),
    ("SLURMD_NODENAME", "elsewhere", "not in the job's node list"),
])
def test_bad_environment_is_refused(key, value, message):
    with pytest.raises(HpkError, match=message):
        JobEnv.from_environ({**ENV, key: value})


def test_uid_must_match_the_user():
    job = JobEnv.from_environ({**ENV, "SLURM_JOB_UID": "65534"})
    with pytest.raises(HpkError, match="not SLURM_JOB_USER"):
        job.check_user()


def test_derivation_is_the_same_on_every_node_and_differs_between_jobs():
    cfg = SiteConfig()
    a, b = JobNetwork.derive(4242, cfg), JobNetwork.derive(4243, cfg)
    assert a == JobNetwork.derive(4242, cfg)
    assert a.name == "hpk-4242" and a.etcd_prefix == "/hpk/jobs/4242/network"
    assert a.vxlan_port == 40000 + 4242 and a.etcd_port == 30000 + 4242
    assert len({a.vxlan_port, b.vxlan_port, a.etcd_port, b.etcd_port}) == 4 and a.vni != b.vni
    assert 0 <= a.bubble_id <= 253
    assert job_run_dir(cfg, 1001, 4242, "node7") == Path("/run/hpk/users/1001/hpk-4242.node7")


def test_node_addresses_from_slurm_conf(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nNodeName=DEFAULT CPUs=2\n"
                    "NodeName=fzh[1-3] NodeAddr=172.31.250.[11-13] CPUs=2  # comment\n"
                    "NodeName=solo CPUs=1\n")
    assert node_addresses(str(conf)) == {"fzh1": "172.31.250.11", "fzh2": "172.31.250.12",
                                         "fzh3": "172.31.250.13", "solo": "solo"}


def test_prolog_gives_the_first_node_the_controller_role(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("NodeName=node[1-3] NodeAddr=10.9.0.[1-3]\n")
    cfg = SiteConfig()
    first = JobEnv.from_environ({**ENV, "SLURMD_NODENAME": "node1", "SLURM_CONF": str(conf)})
    other = JobEnv.from_environ({**ENV, "SLURM_CONF": str(conf)})
    net = JobNetwork.derive(4242, cfg)
    argv1 = bubble_argv(cfg, first, net, Path("/r"))
    argv2 = bubble_argv(cfg, other, net, Path("/r"))
    assert "--controller" in argv1 and "--etcd-ip" not in argv1
    assert "--node" in argv2 and argv2[argv2.index("--etcd-ip") + 1] == "10.9.0.1"
    assert argv2[argv2.index("--host-ip") + 1] == "10.9.0.2"
    assert argv2[argv2.index("--vxlan-port") + 1] == str(net.vxlan_port)


def test_config_defaults_without_a_file(monkeypatch, tmp_path):
    monkeypatch.delenv("HPK_CONFIG", raising=False)
    monkeypatch.setattr("hpk_slurm.config.DEFAULT_PATH", tmp_path / "absent.toml")
    assert load_config() == SiteConfig()


def test_config_loads_and_validates(tmp_path):
    good = tmp_path / "hpk.toml"
    good.write_text('[etcd]\nendpoints = ["http://10.1.1.1:2379"]\n[overlay]\nnetwork = "10.50.0.0/16"\n'
                    '[bubble]\nstart_timeout = 30\n')
    cfg = load_config(good)
    assert cfg.etcd.endpoints == ("http://10.1.1.1:2379",) and cfg.bubble.start_timeout == 30.0


@pytest.mark.parametrize("text, message", [
    ("[overlay]\nnetwork = 'x'\n", "overlay.network"),
    ("[overlay]\nsubnet_len = 8\n", "overlay.subnet_len"),
    ("[overlay]\nvxlan_port_base = 60000\n", "overlay.vxlan_port_base"),
    ("[overlay]\nvxlan_port_base = 30005\n", "overlap"),
    ("[overlay]\nport_range = 'many'\n", "overlay.port_range must be int"),
    ("[bubble]\nruntime = 'docker'\n", "bubble.runtime"),
    ("[bubble]\ncolour = 'red'\n", "unknown key bubble.colour"),
    ("[network]\n", "unknown section"),
    ("[etcd]\nendpoints = ['10.1.1.1:2379']\n", "not an http"),
    ("[paths]\nrun_root = 'relative'\n", "paths.run_root must be an absolute"),
    ("[paths]\nreport_keep_days = -1\n", "paths.report_keep_days"),
    ("not toml = = =", "not valid TOML"),
])
def test_config_errors_name_the_key(tmp_path, text, message):
    bad = tmp_path / "hpk.toml"
    bad.write_text(text)
    with pytest.raises(HpkError, match=message):
        load_config(bad)


def test_explicit_missing_config_is_an_error(monkeypatch):
    monkeypatch.setenv("HPK_CONFIG", "/nonexistent/hpk.toml")
    with pytest.raises(HpkError, match="not found"):
        load_config()


def test_write_private_does_not_follow_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    planted = tmp_path / "report.json"
    planted.symlink_to(victim)
    write_private(planted, "report", os.getuid(), os.getgid(), mode=0o400)
    assert victim.read_text() == "precious"
    assert planted.read_text() == "report" and not planted.is_symlink()
    assert oct(planted.stat().st_mode & 0o777) == "0o400"
