"""hpk-net-daemon with real TAPs, a real bridge and namespaces (root).

Topology (see hpk_slurm.testbed.relay_lab): namespace A's tap0 <-> client
daemon <-> UNIX socket <-> server daemon <-> hpk-tap-1 on br0 <-> veth <-> B.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time

import pytest

from hpk_slurm.net import affinity
from hpk_slurm.net.framing import MAX_FRAME, encode
from hpk_slurm.net.hello import SIZE as HELLO_SIZE
from hpk_slurm.net.hello import Hello
from hpk_slurm.testbed.netns import wait_for
from hpk_slurm.testbed.relay_lab import CLIENT_IP, PEER_IP, RelayLab

TRANSFER_BYTES = 20 * 1024 * 1024


def transfer(lab: RelayLab, size: int = TRANSFER_BYTES, port: int = 5001) -> tuple[dict, dict]:
    """Send `size` pseudo-random bytes from A to B over TCP; both sides' size and digest."""
    receiver = lab.bed.spawn(
        [sys.executable, "-m", "hpk_slurm.testbed.tcpcheck", "serve", PEER_IP, str(port)],
        netns=lab.b, log_name="receiver",
    )
    wait_for(lambda: "listening" in receiver.log_path.read_text(), what="TCP receiver")
    sent = lab.a.run([sys.executable, "-m", "hpk_slurm.testbed.tcpcheck", "send", PEER_IP, str(port), str(size)])
    receiver.wait(60)
    received = json.loads(receiver.log_path.read_text().splitlines()[-1])
    return json.loads(sent.stdout.splitlines()[-1]), received


@pytest.fixture
def lab(testbed):
    return RelayLab(testbed).start()


def test_ping_and_checked_tcp_transfer_through_the_relay(lab):
    assert lab.a.ping(PEER_IP)
    sent, received = transfer(lab)
    assert received == sent and sent["bytes"] == TRANSFER_BYTES
    stats = wait_for(lambda: (s := lab.stats("client")).get("tx_bytes", 0) >= TRANSFER_BYTES and s, what="counters")
    assert stats["mode"] == "offload" and stats["connects"] == 1 and stats["errors"] == 0
    # The server's file is rewritten every 0.2 s too: wait for the one that counts the whole transfer.
    wait_for(lambda: lab.stats("server").get("rx_bytes", 0) >= TRANSFER_BYTES, what="server counters")


def test_offload_frames_are_larger_than_the_mtu(lab):
    """GSO frames cross the socket whole: far fewer frames than MTU-sized packets would need."""
    transfer(lab)
    stats = wait_for(lambda: (s := lab.stats("client")).get("tx_bytes", 0) >= TRANSFER_BYTES and s, what="counters")
    assert stats["tx_bytes"] / stats["tx_frames"] > 1500


@pytest.mark.parametrize("mtu", [1500, 65520])
def test_plain_frames_without_offloads(testbed, mtu):
    lab = RelayLab(testbed, mtu=mtu, offload=False).start()
    assert lab.a.ping(PEER_IP)
    sent, received = transfer(lab)
    assert received == sent
    assert lab.stats("client")["mode"] == "plain"


def test_offload_server_with_plain_client_negotiates_plain(testbed):
    """A TAP opened with virtio-net headers talking to a peer without them: headers stripped and added."""
    lab = RelayLab(testbed)
    lab.start_server()
    lab.offload = False
    lab.start_client()
    lab.a.ip("addr", "add", f"{CLIENT_IP}/24", "dev", "tap0")
    assert lab.a.ping(PEER_IP)
    sent, received = transfer(lab, 4 * 1024 * 1024)
    assert received == sent
    assert lab.stats("server")["mode"] == "plain"


@pytest.mark.parametrize("victim", ["client", "server"])
def test_kill_9_and_restart_resumes_traffic_without_reconfiguring(lab, victim):
    assert lab.a.ping(PEER_IP)
    proc = getattr(lab, victim)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not lab.a.ping(PEER_IP, count=1, wait=0.5)
    # The TAPs persist, with their address and bridge port: nothing is reconfigured.
    assert "tap0" in lab.a.links() and "hpk-tap-1" in lab.br.links()
    if victim == "client":
        lab.start_client()
    else:
        lab.start_server()
        wait_for(lambda: lab.connected("client"), what="client reconnect")
    assert f"{CLIENT_IP}/24" in lab.a.run(["ip", "-o", "addr", "show", "dev", "tap0"]).stdout
    assert lab.a.ping(PEER_IP)
    sent, received = transfer(lab, 4 * 1024 * 1024)
    assert received == sent


def _hostile(lab: RelayLab, payload: bytes, send_hello: bool = True) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(lab.socket))
        if send_hello:
            s.sendall(Hello(True, 10, 0, MAX_FRAME, 1500).pack())
            s.recv(HELLO_SIZE)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(4096):  # the server closes its end
                pass
        except ConnectionResetError:
            pass


def test_pair_on_one_cpu_relays_intact_and_every_thread_stays_there(testbed):
    """--cpu as hpktainer uses it: both daemons, stats threads included, on one CPU."""
    cpu = affinity.allowed_cpus()[-1]
    lab = RelayLab(testbed, cpu=cpu).start()
    assert lab.a.ping(PEER_IP)
    sent, received = transfer(lab, size=4 * 1024 * 1024)
    assert received == sent
    for daemon in (lab.server, lab.client):
        threads = [int(tid) for tid in os.listdir(f"/proc/{daemon.pid}/task")]
        assert len(threads) >= 2  # the relay and the stats writer
        assert {tid: os.sched_getaffinity(tid) for tid in threads} == {tid: {cpu} for tid in threads}


def test_cpu_the_daemon_may_not_use_is_refused_before_anything_is_created(testbed):
    lab = RelayLab(testbed, cpu=max(os.sched_getaffinity(0)) + 1000)
    server = testbed.spawn(lab._argv("server", "hpk-tap-1", []), netns=lab.br)
    assert server.wait(10) == 1
    assert f"cannot run on CPU {lab.cpu}: this process may only use CPUs" in server.log_path.read_text()
    assert not lab.socket.exists() and "hpk-tap-1" not in lab.br.links()


def test_hostile_client_cannot_crash_the_server(testbed):
    lab = RelayLab(testbed)
    lab.start_server()
    cases = [
        (struct.pack(">I", 0) + b"zero", True, "bad frame length 0"),
        (struct.pack(">I", MAX_FRAME + 1), True, f"bad frame length {MAX_FRAME + 1}"),
        (encode(b"\x00" * 100)[:50], True, "truncated frame"),
        (b"GET / HTTP/1.1\r\n\r\n" * 2, False, "bad hello"),
    ]
    for payload, send_hello, expected in cases:
        _hostile(lab, payload, send_hello)
        wait_for(lambda: expected in lab.server.log_path.read_text(), what=f"log line {expected!r}")
        assert lab.server.poll() is None, "server died"
    stats = wait_for(lambda: (s := lab.stats("server")).get("errors") == len(cases) and s, what="error count")
    assert stats["rx_frames"] == 0  # nothing partial or bogus reached the TAP
    lab.start_client()
    lab.a.ip("addr", "add", f"{CLIENT_IP}/24", "dev", "tap0")
    assert lab.a.ping(PEER_IP)


def test_sigterm_removes_socket_and_taps(lab):
    assert lab.a.ping(PEER_IP, count=1)
    assert lab.bed.stop(lab.client) == 0
    assert lab.bed.stop(lab.server) == 0
    assert not lab.socket.exists()
    assert "tap0" not in lab.a.links()
    assert "hpk-tap-1" not in lab.br.links()
    final = lab.stats("client")
    assert final["connected"] is False and final["tx_frames"] > 0


def test_second_server_on_a_live_socket_is_refused(lab):
    second = lab.bed.spawn(lab._argv("server", "hpk-tap-2", []), netns=lab.br, log_name="second")
    assert second.wait(10) == 1
    assert "another hpk-net-daemon is serving" in second.log_path.read_text()
    assert lab.a.ping(PEER_IP, count=1)


def test_stale_socket_is_replaced(testbed):
    lab = RelayLab(testbed)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(lab.socket))
    stale.close()  # a socket file nobody listens on, as a crashed server leaves it
    lab.start()
    assert lab.a.ping(PEER_IP, count=1)
    assert "removed stale socket" in lab.server.log_path.read_text()


def test_client_without_server_gives_up_with_a_clear_error(testbed):
    lab = RelayLab(testbed)
    client = testbed.spawn(lab._argv("client", "tap0", ["--connect-timeout", "1"]), netns=lab.a)
    assert client.wait(20) == 1
    log = client.log_path.read_text()
    assert "no hpk-net-daemon server at" in log and "start the server side first" in log
    assert "tap0" not in lab.a.links()


def test_insecure_socket_folder_is_refused(testbed):
    lab = RelayLab(testbed)
    lab.sockdir.chmod(0o777)
    server = testbed.spawn(lab._argv("server", "hpk-tap-1", []), netns=lab.br)
    assert server.wait(10) == 1
    assert "other users could reach the socket" in server.log_path.read_text()
    assert not lab.socket.exists()
    assert "hpk-tap-1" not in lab.br.links()


def test_counters_are_rewritten_while_running(lab):
    before = lab.stats("client")["updated"]
    assert lab.a.ping(PEER_IP, count=2)
    time.sleep(0.5)
    after = lab.stats("client")
    assert after["updated"] > before and after["tx_frames"] >= 2 and after["rx_frames"] >= 2
