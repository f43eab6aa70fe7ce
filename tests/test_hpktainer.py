"""hpktainer: nested containers on the overlay, in bubbles on test hosts (root; embedded runtime).

hpktainer runs on the test host (as a job step would) and enters the
bubble itself. Images are "/" (the bubble's own root) or a directory with
nothing but a static busybox.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from hpk_slurm.procs import children
from hpk_slurm.testbed.bubble_lab import BubbleLab, busybox_rootfs, host_ip
from hpk_slurm.testbed.netns import Netns, wait_for

PY = sys.executable
TCPCHECK = [PY, "-m", "hpk_slurm.testbed.tcpcheck"]


@pytest.fixture
def bubble(lab):
    return lab.start(1, 1)


def bubble_netns(bubble) -> Netns:
    return Netns(f"bubble{bubble.ident}", f"/proc/{bubble.pid}/ns/net")


def leftovers(lab: BubbleLab, bubble) -> dict:
    """What containers may leave in a bubble: leases, links, sockets, relay daemons."""
    run = bubble.run_dir
    daemons = [pid for pid in _descendants(bubble.pid) if b"net_daemon" in open(f"/proc/{pid}/cmdline", "rb").read()]
    return {
        "leases": sorted(p.name for p in (run / "ipam").glob("[0-9]*")) if (run / "ipam").exists() else [],
        "links": [name for name in bubble_netns(bubble).links() if name.startswith("hpk-") and name != "hpk-bridge"],
        "sockets": sorted(p.name for p in (run / "sock").iterdir()),
        "daemons": daemons,
    }


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


NOTHING = {"leases": [], "links": [], "sockets": [], "daemons": []}


def test_network_is_up_before_the_command_starts(lab, bubble):
    result = lab.hpktainer(bubble, "exec", "/", "sh", "-c",
                           'ip -o -4 addr show tap0; ip route show default; cat /sys/class/net/tap0/mtu; echo "ip=$HPK_IP gw=$HPK_GATEWAY_IP"')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    address = lines[0].split()[3]
    assert address.split("/")[0] in bubble.facts["flannel_subnet"].rsplit(".", 1)[0] + "." + address.split(".")[-1]
    assert lines[1].startswith(f"default via {bubble.gateway} dev tap0")
    assert int(lines[2]) == bubble.facts["flannel_mtu"]
    assert lines[3] == f"ip={address.split('/')[0]} gw={bubble.gateway}"
    assert leftovers(lab, bubble) == NOTHING


def test_two_containers_in_one_bubble_ping_and_stream(lab, bubble):
    server = lab.spawn_container(bubble, "exec", "/", *TCPCHECK, "serve", "0.0.0.0", "5001")
    info = lab.wait_container(bubble, server)
    wait_for(lambda: "listening" in server.log_path.read_text(), what="server in container")
    size = 10 * 1024 * 1024
    client = lab.hpktainer(bubble, "exec", "/", "sh", "-c",
                           f"ping -c 2 -W 2 {info['ip']} >&2 && exec {PY} -m hpk_slurm.testbed.tcpcheck send {info['ip']} 5001 {size}")
    assert client.returncode == 0, client.stderr
    assert server.wait(30) == 0
    assert json.loads(server.log_path.read_text().splitlines()[-1]) == json.loads(client.stdout.splitlines()[-1])
    assert leftovers(lab, bubble) == NOTHING


def test_container_reaches_a_container_in_the_other_hosts_bubble(lab):
    b1 = lab.start(1, 1)
    b2 = lab.start(2, 2, controller_index=1)
    server = lab.spawn_container(b2, "exec", "/", *TCPCHECK, "serve", "0.0.0.0", "5002")
    info = lab.wait_container(b2, server)
    wait_for(lambda: "listening" in server.log_path.read_text(), what="server in container")
    client = lab.hpktainer(b1, "exec", "--net-mode", "veth", "/", *TCPCHECK, "send", info["ip"], "5002", "4000000")
    assert client.returncode == 0, client.stderr
    assert server.wait(30) == 0
    assert json.loads(server.log_path.read_text().splitlines()[-1]) == json.loads(client.stdout.splitlines()[-1])


def test_data_written_just_before_exit_still_arrives(lab):
    """The sender's last megabytes sit in its socket buffer when it exits: the network must stay until they left."""
    b1 = lab.start(1, 1)
    b2 = lab.start(2, 2, controller_index=1)
    server = lab.bed.spawn([*TCPCHECK, "serve", "0.0.0.0", "5004", "1.0", "65536"],
                           netns=lab.pod(b2, 9)[0], log_name="slow-reader")
    wait_for(lambda: "listening" in server.log_path.read_text(), what="slow reader")
    target = b2.facts["flannel_subnet"].rsplit(".", 1)[0] + ".9"
    sender = lab.hpktainer(b1, "exec", "--net-mode", "veth", "/", *TCPCHECK, "send", target, "5004", "3000000")
    assert sender.returncode == 0, sender.stderr
    assert server.wait(30) == 0
    assert json.loads(server.log_path.read_text().splitlines()[-1]) == json.loads(sender.stdout.splitlines()[-1])


def test_container_reaches_a_server_on_its_hosts_loopback(lab, bubble):
    server = lab.bed.spawn([*TCPCHECK, "serve", "127.0.0.1", "18090"], netns=lab.hosts[0], log_name="loopback")
    wait_for(lambda: "listening" in server.log_path.read_text(), what="loopback server")
    client = lab.hpktainer(bubble, "exec", "/", *TCPCHECK, "send", bubble.slirp_gateway, "18090", "300000")
    assert client.returncode == 0, client.stderr
    server.wait(30)
    assert json.loads(server.log_path.read_text().splitlines()[-1]) == json.loads(client.stdout.splitlines()[-1])


def test_image_without_python_gets_network(lab, bubble):
    rootfs = busybox_rootfs(lab.bed.workdir / "busybox-root")
    assert not list(rootfs.rglob("python*"))
    result = lab.hpktainer(bubble, "exec", str(rootfs), "/bin/sh", "-c",
                           f"ip -o -4 addr show tap0 && ping -c 2 -W 2 {bubble.gateway} && echo ok-$HPK_IP")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"ok-{result.stdout.split()[3].split('/')[0]}")


def test_exit_code_is_the_containers(lab, bubble):
    assert lab.hpktainer(bubble, "exec", "/", "sh", "-c", "exit 7").returncode == 7
    assert lab.hpktainer(bubble, "exec", "/", "no-such-program-xyz").returncode == 127


def test_sigterm_reaches_the_container_and_everything_is_released(lab, bubble):
    marker = lab.bed.workdir / "got-term"
    proc = lab.spawn_container(bubble, "exec", "/", "sh", "-c",
                               f"trap 'echo term > {marker}; exit 42' TERM; while :; do sleep 0.1; done")
    lab.wait_container(bubble, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 42
    assert marker.read_text().strip() == "term"
    assert leftovers(lab, bubble) == NOTHING


def test_published_port_answers_on_the_hosts_address(lab):
    b1 = lab.start(1, 1)
    server = lab.spawn_container(b1, "exec", "--publish", "18081:5003", "/", *TCPCHECK, "serve", "0.0.0.0", "5003")
    lab.wait_container(b1, server)
    wait_for(lambda: "listening" in server.log_path.read_text(), what="published server")
    taken = lab.hpktainer(b1, "exec", "--publish", "18081:80", "/", "true")
    assert taken.returncode == 1 and "cannot publish port 18081/tcp" in taken.stderr
    sent = lab.hosts[1].run([*TCPCHECK, "send", host_ip(1), "18081", "500000"])  # from the other test host
    assert server.wait(30) == 0
    assert json.loads(server.log_path.read_text().splitlines()[-1]) == json.loads(sent.stdout.splitlines()[-1])
    rules = lab.exec(b1, ["iptables", "-t", "nat", "-S", "PREROUTING"]).stdout
    assert "18081" not in rules, "the DNAT rule must go with the container"
    again = lab.hpktainer(b1, "exec", "--publish", "18081:80", "/", "true")
    assert again.returncode == 0, again.stderr


def test_fifty_containers_in_sequence_leave_nothing_behind(lab, bubble):
    for i in range(50):
        mode = "veth" if i % 2 else "relay"
        result = lab.hpktainer(bubble, "exec", "--net-mode", mode, "/", "true")
        assert result.returncode == 0, f"container {i}: {result.stderr}"
    assert leftovers(lab, bubble) == NOTHING
    assert len(lab.containers(bubble, include_ended=True)) == 50
    relay_stats = [json.loads(p.read_text()) for p in (bubble.run_dir / "containers").glob("*.stats.json")]
    assert len(relay_stats) == 50  # 25 relay containers, a client and a server each
    assert [s["last_error"] for s in relay_stats if s["errors"]] == [], "a clean stop must not count relay errors"


def test_killed_hpktainer_is_cleared_by_the_next_call(lab, bubble):
    proc = lab.spawn_container(bubble, "exec", "/", "sleep", "600")
    info = lab.wait_container(bubble, proc)
    assert leftovers(lab, bubble)["leases"] == [info["ip"]]
    inner = [pid for pid in _descendants(proc.pid) if b"hpk_slurm.cli.hpktainer" in open(f"/proc/{pid}/cmdline", "rb").read()]
    os.kill(inner[0], signal.SIGKILL)
    proc.wait(30)
    wait_for(lambda: not os.path.exists(f"/proc/{inner[0]}"), what="inner hpktainer gone")
    lab.containers(bubble)  # any call sweeps
    assert leftovers(lab, bubble) == NOTHING
    assert [c["state"] for c in lab.containers(bubble, include_ended=True)] == ["exited"]


def test_network_options_are_refused(lab, bubble):
    result = lab.hpktainer(bubble, "exec", "--network", "bridge", "/", "true")
    assert result.returncode == 2
    assert "--network is not available with hpktainer" in result.stderr


def test_full_subnet_is_a_clear_error(lab):
    small = lab.start(1, 1, "--subnet-len", "30", "--network", "10.250.0.0/24")
    holder = lab.spawn_container(small, "exec", "/", "sleep", "600")
    lab.wait_container(small, holder)
    result = lab.hpktainer(small, "exec", "/", "true", timeout=60)
    assert result.returncode == 1 and "no free address in 10.250.0." in result.stderr


def test_rootless_bubble_runs_containers_as_the_user(lab):
    user = lab.user()
    b1 = lab.start(1, 1, user=user)
    result = lab.hpktainer(b1, "exec", "/", "sh", "-c", f"ping -c 1 -W 2 {b1.gateway} >/dev/null && id -u")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"  # root inside; the user outside:
    proc = lab.spawn_container(b1, "exec", "/", "sleep", "600")
    info = lab.wait_container(b1, proc)
    assert os.stat(f"/proc/{_host_pid(info['pid'], b1)}").st_uid == user.uid


def _host_pid(bubble_pid: int, bubble) -> int:
    """The host PID of the process the bubble knows as `bubble_pid` (containers hang off hpktainer, not init)."""
    bubble_ns = os.readlink(f"/proc/{bubble.pid}/ns/pid")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                nspid = [line for line in f if line.startswith("NSpid:")][0].split()[1:]
            if len(nspid) >= 2 and int(nspid[1]) == bubble_pid:
                with open(f"/proc/{entry}/stat") as f:
                    parent = f.read().rsplit(")", 1)[1].split()[1]
                if os.readlink(f"/proc/{parent}/ns/pid") == bubble_ns:  # its launcher lives in the bubble
                    return int(entry)
        except OSError:
            continue
    raise AssertionError(f"no process {bubble_pid} in the bubble")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_int_and_hup_reach_the_container(lab, bubble, sig, code):
    proc = lab.spawn_container(bubble, "exec", "/", "sleep", "600")
    lab.wait_container(bubble, proc)
    proc.send_signal(sig)
    assert proc.wait(30) == code
    assert leftovers(lab, bubble) == NOTHING


def test_shell_gets_the_terminal(lab, bubble):
    import pty
    import select
    import time

    argv = bubble.host.exec_argv(lab.hpktainer_argv(bubble, "shell", "/"))
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    output = b""
    os.write(fd, b"tty; echo ip=$HPK_IP; exit 5\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    done, status = 0, 0
    for _ in range(100):  # the output ends just before the process does
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    if not done:  # never hang the suite: an interactive shell ignores TERM, not HUP
        os.kill(pid, signal.SIGHUP)
        _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert done and os.waitstatus_to_exitcode(status) == 5, output
    assert b"/dev/pts/" in output and b"ip=10." in output, output


def test_instance_runs_in_the_background_on_the_overlay(lab, bubble):
    started = lab.hpktainer(bubble, "instance", "start", "/", "web", "sh", "-c",
                            f"{PY} -m hpk_slurm.testbed.tcpcheck serve 0.0.0.0 5005; sleep 600")
    assert started.returncode == 0, started.stderr
    address = started.stdout.split("IP ")[1].strip()
    pair = leftovers(lab, bubble)["daemons"]  # the instance's relay: both daemons on one CPU
    assert len(pair) == 2 and len({frozenset(os.sched_getaffinity(pid)) for pid in pair}) == 1
    assert len(os.sched_getaffinity(pair[0])) == 1
    listed = lab.hpktainer(bubble, "instance", "list", "--json")
    assert [(r["name"], r["ip"]) for r in json.loads(listed.stdout)] == [("web", address)]
    inside = lab.hpktainer(bubble, "exec", "instance://web", "sh", "-c", "echo $HPK_IP; exit 4")
    assert inside.returncode == 4 and inside.stdout.strip() == address
    client = lab.hpktainer(bubble, "exec", "/", *TCPCHECK, "send", address, "5005", "100000")
    assert client.returncode == 0, client.stderr
    again = lab.hpktainer(bubble, "instance", "start", "/", "web", "true")
    assert again.returncode == 1 and "instance web is already running" in again.stderr
    stopped = lab.hpktainer(bubble, "instance", "stop", "web")
    assert stopped.returncode == 0, stopped.stderr
    assert leftovers(lab, bubble) == NOTHING
    assert lab.hpktainer(bubble, "instance", "stop", "web").returncode == 1


def test_veth_containers_keep_their_traffic_counters(lab, bubble):
    result = lab.hpktainer(bubble, "exec", "--net-mode", "veth", "/", "ping", "-c", "3", "-i", "0.2", bubble.gateway)
    assert result.returncode == 0, result.stderr
    [row] = lab.containers(bubble, include_ended=True)
    assert row["mode"] == "veth" and row["state"] == "exited"
    assert row["tx_frames"] >= 3 and row["rx_frames"] >= 3 and row["tx_bytes"] >= 3 * 84
