"""Bubbles on test hosts with real slirp4netns, etcd, flanneld and iptables (root).

Each test host is a network namespace on a private switch; `hpk-bubble`
runs inside it as a user (or the Slurm prolog) would on a node.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from hpk_slurm.testbed.bubble_lab import BubbleLab, host_ip
from hpk_slurm.testbed.netns import wait_for


def checked_transfer(lab: BubbleLab, src, dst, dst_ip: str, size: int = 8 * 1024 * 1024) -> None:
    receiver = lab.bed.spawn([sys.executable, "-m", "hpk_slurm.testbed.tcpcheck", "serve", dst_ip, "5001"],
                             netns=dst, log_name="receiver")
    wait_for(lambda: "listening" in receiver.log_path.read_text(), what="receiver")
    sent = src.run([sys.executable, "-m", "hpk_slurm.testbed.tcpcheck", "send", dst_ip, "5001", str(size)])
    receiver.wait(60)
    assert json.loads(receiver.log_path.read_text().splitlines()[-1]) == json.loads(sent.stdout.splitlines()[-1])


def gone(pid: int) -> bool:
    """Exited (a zombie counts: its parent, PID 1 of the machine here, reaps when it gets to it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def etcd_keys(lab: BubbleLab, controller_host: int, prefix: str, port: int = 2379) -> list[str]:
    """Keys in the job's etcd, read on the controller's host through slirp's forward.

    On that host it is 127.0.0.1: slirp keeps the source address of forwarded
    connections, and the host's own IP is local inside the bubble (the /32 on
    tap0), so a connection from the host to its own IP gets no answer.
    """
    out = lab.hosts[controller_host - 1].run(
        ["etcdctl", "--endpoints", f"http://127.0.0.1:{port}", "get", prefix, "--prefix", "--keys-only"],
        env=dict(os.environ, ETCDCTL_API="3"))
    return [k for k in out.stdout.splitlines() if k]


def test_two_bubbles_share_an_overlay(lab):
    b1 = lab.start(1, 1)
    b2 = lab.start(2, 2, controller_index=1)
    assert b1.facts["state"] == b2.facts["state"] == "ready"
    assert b1.facts["flannel_subnet"] != b2.facts["flannel_subnet"]
    for facts in (b1.facts, b2.facts):
        assert {"id", "host_ip", "slirp_cidr", "flannel_subnet", "flannel_mtu", "vxlan_port", "vni",
                "etcd_endpoints", "pids"} <= facts.keys()
        assert {"bubble", "slirp4netns", "flanneld"} <= facts["pids"].keys()
    assert b1.facts["slirp_cidr"] == "10.0.2.0/24" and b2.facts["slirp_cidr"] == "10.0.3.0/24"
    assert "etcd" in b1.facts["pids"] and "etcd" not in b2.facts["pids"]
    pod1, ip1 = lab.pod(b1, 2)
    pod2, ip2 = lab.pod(b2, 2)
    assert pod1.ping(ip2) and pod2.ping(ip1)
    checked_transfer(lab, pod1, pod2, ip2)


def test_rootless_bubble_joins_the_overlay(lab):
    user = lab.user()
    b1 = lab.start(1, 1)
    b2 = lab.start(2, 2, user=user, controller_index=1)
    owner = os.stat(f"/proc/{b2.pid}").st_uid
    assert owner == user.uid, "the bubble must run as the user, not root"
    assert os.stat(f"/proc/{b2.facts['pids']['slirp4netns']}").st_uid == user.uid
    assert os.stat(f"/proc/{b2.facts['pids']['flanneld']}").st_uid == user.uid
    pod1, ip1 = lab.pod(b1, 2)
    pod2, ip2 = lab.pod(b2, 2)
    assert pod2.ping(ip1)
    checked_transfer(lab, pod2, pod1, ip1)
    assert lab.exec(b2, ["id", "-u"]).stdout.strip() == "0"  # root inside, the user outside


def test_pod_reaches_a_server_on_its_hosts_loopback(lab):
    b1 = lab.start(1, 1)
    server = lab.bed.spawn([sys.executable, "-m", "hpk_slurm.testbed.tcpcheck", "serve", "127.0.0.1", "18080"],
                           netns=lab.hosts[0], log_name="loopback-server")
    wait_for(lambda: "listening" in server.log_path.read_text(), what="loopback server")
    pod, _ = lab.pod(b1, 5)
    sent = pod.run([sys.executable, "-m", "hpk_slurm.testbed.tcpcheck", "send", b1.slirp_gateway, "18080", "100000"])
    server.wait(30)
    assert json.loads(server.log_path.read_text().splitlines()[-1]) == json.loads(sent.stdout.splitlines()[-1])


def test_two_overlays_on_the_same_hosts_are_isolated(lab):
    a1 = lab.start(1, 1)
    a2 = lab.start(2, 2, controller_index=1)
    # Its own address range too: flannel picks subnets at random, and a shared range could hand both
    # overlays the same /24, which would make a reply from the wrong overlay look like a leak.
    other = ["--etcd-prefix", "/hpk/other/network", "--vni", "7", "--vxlan-port", "8473", "--etcd-port", "2479",
             "--network", "10.245.0.0/16", "--name", "other"]
    b1 = lab.start(1, 3, *other)
    b2 = lab.start(2, 4, *other[:-2], "--name", "other2", "--etcd-port", "2479", controller_index=1)
    pa1, ipa1 = lab.pod(a1, 2)
    pa2, ipa2 = lab.pod(a2, 2)
    pb1, ipb1 = lab.pod(b1, 2)
    pb2, ipb2 = lab.pod(b2, 2)
    assert pa1.ping(ipa2) and pb1.ping(ipb2)
    for src, dst in ((pa1, ipb2), (pa2, ipb1), (pb1, ipa2), (pb2, ipa1)):
        assert not src.ping(dst, count=2, wait=0.5), f"{src.name} reached {dst} across overlays"
    # Neither overlay's flanneld learned the other's leases.
    for bubble, foreign in ((a1, "10.245."), (a2, "10.245."), (b1, "10.244."), (b2, "10.244.")):
        assert foreign not in lab.exec(bubble, ["ip", "route"]).stdout


def test_stop_leaves_nothing_behind(lab):
    links_before = [sorted(h.links()) for h in lab.hosts]
    b1 = lab.start(1, 1)
    b2 = lab.start(2, 2, controller_index=1)
    pids = list(b1.facts["pids"].values()) + list(b2.facts["pids"].values())
    lease2 = "/hpk/network/subnets/" + b2.facts["flannel_subnet"].split("/")[0].rsplit(".", 1)[0] + ".0-24"
    assert lease2 in etcd_keys(lab, 1, "/hpk/")
    assert lab.stop(b2).returncode == 0
    assert lease2 not in etcd_keys(lab, 1, "/hpk/"), "the node's flannel lease must be given back"
    assert lab.stop(b1).returncode == 0
    assert all(gone(pid) for pid in pids)
    assert [sorted(h.links()) for h in lab.hosts] == links_before
    assert not b1.run_dir.exists() and not b2.run_dir.exists()
    # Stopping again, or a bubble that never ran, is fine.
    again = lab.stop(b1)
    assert again.returncode == 0 and "was not running" in again.stdout
    lab.bubbles.clear()


def test_dead_bubble_is_cleaned_up_by_stop(lab):
    b1 = lab.start(1, 1)
    b2 = lab.start(2, 2, controller_index=1)
    os.kill(b2.pid, 9)
    wait_for(lambda: lab.status(b2)["state"] != "ready", what="bubble death noticed")
    assert lab.stop(b2).returncode == 0
    assert not b2.run_dir.exists()
    assert gone(b2.facts["pids"]["slirp4netns"])
    lease2 = b2.facts["flannel_subnet"].split("/")[0].rsplit(".", 1)[0] + ".0-24"
    assert not any(k.endswith(lease2) for k in etcd_keys(lab, 1, "/hpk/"))
    assert b1.facts["state"] == "ready"


@pytest.mark.parametrize("bad_id", ["abc", "-1", "254", "1.5"])
def test_invalid_id_is_refused(lab, bad_id):
    result = lab.hpk_bubble(lab.hosts[0], ["start", "--controller", "--", bad_id])
    assert result.returncode == 2
    assert "invalid bubble ID" in result.stderr and "0 to 253" in result.stderr


def test_unreachable_etcd_is_a_bounded_clear_error(lab):
    with pytest.raises(RuntimeError, match="etcd at http://172.31.250.11:2379 unreachable"):
        lab.start(2, 2, "--timeout", "8", controller_index=1)
    bubble = lab.bubbles[-1]
    assert not bubble.run_dir.exists(), "a failed start must undo everything"


def test_port_already_forwarded_is_a_clear_error(lab):
    lab.start(1, 1)
    with pytest.raises(RuntimeError, match="cannot forward host UDP port 8472"):
        lab.start(1, 5, "--etcd-prefix", "/hpk/x/network", "--etcd-port", "2579")
    assert not lab.bubbles[-1].run_dir.exists()


def test_missing_flanneld_names_what_to_install(lab):
    env = dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin")  # flanneld lives in /usr/local/bin
    result = lab.hpk_bubble(lab.hosts[0], ["start", "1", "--controller", "--run-dir",
                                           str(lab.run_dir(1)), "--host-ip", host_ip(1)], env=env)
    assert result.returncode == 1
    assert "'flanneld' not found" in result.stderr and "install" in result.stderr
    assert not lab.run_dir(1).exists()


@pytest.mark.apptainer
@pytest.mark.skipif(not (shutil.which("apptainer") and os.environ.get("HPK_BUBBLE_IMAGE")),
                    reason="needs apptainer on PATH and HPK_BUBBLE_IMAGE (images/hpk-bubble); not installable here")
def test_apptainer_bubbles_share_an_overlay(lab):
    image = os.environ["HPK_BUBBLE_IMAGE"]
    b1 = lab.start(1, 1, "--runtime", "apptainer", "--image", image)
    b2 = lab.start(2, 2, "--runtime", "apptainer", "--image", image, controller_index=1)
    assert b1.facts["runtime"] == b2.facts["runtime"] == "apptainer"
    pod1, ip1 = lab.pod(b1, 2)
    pod2, ip2 = lab.pod(b2, 2)
    assert pod1.ping(ip2)
