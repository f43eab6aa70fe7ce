"""Pure parts of the bubble: validation, file formats, and the exact commands we run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpk_slurm.bubble.spec import BubbleSpec, parse_id
from hpk_slurm.errors import HpkError
from hpk_slurm.net.slirp import SlirpNetwork, slirp_argv
from hpk_slurm.overlay.etcd import etcd_server_argv
from hpk_slurm.overlay.flannel import NetworkConfig, SubnetEnv, flanneld_argv
from hpk_slurm.procs import ProcRef
from hpk_slurm.runtime.apptainer import (
    instance_list_argv,
    instance_pid,
    instance_start_argv,
    instance_stop_argv,
)
from hpk_slurm.runtime.embedded import unshare_argv

SPEC = dict(id=3, host_ip="172.31.250.11", controller=True, etcd_endpoints=("http://127.0.0.1:2379",),
            run_dir=Path("/run/hpk/bubble3"))


@pytest.mark.parametrize("value", ["0", "1", "253", 7])
def test_valid_ids(value):
    assert parse_id(value) == int(value)


@pytest.mark.parametrize("value", ["", "x", "-1", "254", "1e2", "01x", "9999", "1 2", "../1"])
def test_invalid_ids_name_the_range(value):
    with pytest.raises(HpkError, match="0 to 253"):
        parse_id(value)


def test_spec_derives_names_and_slirp_network():
    spec = BubbleSpec(**SPEC)
    assert spec.name == "bubble3"
    assert str(spec.slirp.cidr) == "10.0.4.0/24"
    assert spec.slirp.guest == "10.0.4.100" and spec.slirp.gateway == "10.0.4.2"
    assert spec.config_key == "/hpk/network/config"
    assert BubbleSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("change, message", [
    ({"host_ip": "not-an-ip"}, "invalid host IP"),
    ({"name": "../etc"}, "invalid bubble name"),
    ({"etcd_prefix": "hpk/no-slash"}, "invalid etcd prefix"),
    ({"etcd_prefix": "/hpk/a b"}, "invalid etcd prefix"),
    ({"etcd_port": 80}, "etcd port 80 out of range"),
    ({"etcd_endpoints": ()}, "no etcd endpoints"),
])
def test_spec_refuses_bad_input(change, message):
    with pytest.raises(HpkError, match=message):
        BubbleSpec(**{**SPEC, **change})


@pytest.mark.parametrize("kwargs, message", [
    ({"network": "10.244.0.0/33"}, "invalid overlay network"),
    ({"subnet_len": 16}, "does not fit"),
    ({"vni": 0}, "VNI 0 out of range"),
    ({"port": 80}, "VXLAN port 80 out of range"),
])
def test_network_config_refuses_bad_input(kwargs, message):
    with pytest.raises(HpkError, match=message):
        NetworkConfig(**kwargs)


def test_network_config_is_flannels_json():
    cfg = NetworkConfig("10.245.0.0/16", 24, 7, 8473)
    assert json.loads(cfg.to_json()) == {
        "Network": "10.245.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 7, "Port": 8473}}
    assert NetworkConfig.from_json(cfg.to_json()) == cfg


def test_subnet_env_parse():
    env = SubnetEnv.parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.67.1/24\n"
                          "FLANNEL_MTU=65470\nFLANNEL_IPMASQ=true\n")
    assert env.gateway == "10.244.67.1" and env.mtu == 65470 and env.ipmasq
    assert env.lease_key == "10.244.67.0-24"


def test_malformed_subnet_env_is_a_clear_error():
    with pytest.raises(HpkError, match="malformed subnet.env"):
        SubnetEnv.parse("FLANNEL_NETWORK=10.244.0.0/16\n")


def test_flanneld_command_line():
    assert flanneld_argv(("http://a:1", "http://b:2"), "/hpk/j/network", "172.31.250.11", Path("/r/subnet.env")) == [
        "flanneld", "--etcd-endpoints=http://a:1,http://b:2", "--etcd-prefix=/hpk/j/network", "--iface=tap0",
        "--public-ip=172.31.250.11", "--ip-masq", "--subnet-file=/r/subnet.env"]


def test_etcd_listens_on_every_bubble_address():
    argv = etcd_server_argv(Path("/d"), "172.31.250.11", 2379, 2380, "bubble1")
    assert argv[argv.index("--listen-client-urls") + 1] == "http://0.0.0.0:2379"
    assert argv[argv.index("--advertise-client-urls") + 1] == "http://172.31.250.11:2379"


def test_slirp_command_line():
    assert slirp_argv(42, "10.0.2.0/24", Path("/r/slirp.sock"), 3) == [
        "slirp4netns", "--configure", "--mtu=65520", "--cidr=10.0.2.0/24", "--disable-dns",
        "--api-socket=/r/slirp.sock", "--ready-fd=3", "42", "tap0"]
    assert SlirpNetwork(__import__("ipaddress").IPv4Network("10.0.9.0/24")).guest == "10.0.9.100"


def test_embedded_runtime_command_line():
    assert unshare_argv(["python3", "-m", "x"]) == [
        "unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--mount-proc",
        "--kill-child", "--", "python3", "-m", "x"]


def test_apptainer_instance_start_is_rootless_with_no_network_and_no_host_mounts():
    """Apptainer is not installable here: the exact command is what we can check."""
    argv = instance_start_argv("apptainer", "/img/hpk-bubble.sif", "hpk-42", Path("/run/hpk/hpk-42"), ["/run/hpk/hpk-42"])
    assert argv == [
        "apptainer", "instance", "start", "--fakeroot", "--network", "none",
        "--no-mount", "home,cwd,tmp,hostfs", "--writable-tmpfs", "--bind", "/etc/resolv.conf",
        "--bind", "/run/hpk/hpk-42:/run/hpk/hpk-42", "--env", "HPK_RUN_DIR=/run/hpk/hpk-42",
        "/img/hpk-bubble.sif", "hpk-42", "/run/hpk/hpk-42"]
    assert instance_list_argv("apptainer", "hpk-42") == ["apptainer", "instance", "list", "--json", "hpk-42"]
    assert instance_stop_argv("singularity", "hpk-42", 20) == ["singularity", "instance", "stop", "--timeout", "20", "hpk-42"]


def test_apptainer_instance_pid_from_list_json():
    listing = json.dumps({"instances": [{"instance": "other", "pid": 11}, {"instance": "hpk-42", "pid": 4242}]})
    assert instance_pid(listing, "hpk-42") == 4242
    assert instance_pid(listing, "missing") is None


def test_procref_notices_a_reused_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ref = ProcRef.of(proc.pid)
    assert ref.alive()
    impostor = ProcRef(proc.pid, ref.started + 1)  # same PID, another process
    assert not impostor.alive() and not impostor.signal(15)
    assert proc.poll() is None
    ref.terminate(timeout=5)
    assert not ref.alive()
    proc.wait(5)


def test_procref_of_a_missing_process():
    with pytest.raises(ProcessLookupError):
        ProcRef.of(2**22 + 1)
    assert not ProcRef(os.getpid(), 0).alive()
