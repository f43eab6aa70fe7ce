"""Joining a container's network namespace to hpk-bridge, and taking it apart again.

relay (default, the seed's): tap0 in the container and hpk-tap-N on
hpk-bridge, joined by two hpk-net-daemons over a UNIX socket in the bubble's
socket folder. The container-side daemon runs from the bubble's file system
inside the container's network namespace (its TAP fd stays bound there), so
the image needs nothing of ours.
veth: a kernel veth pair, hpk-veth-N on the bridge and eth0 in the container.

Either way the container's interface gets its address, the default route via
hpk-bridge and the flannel MTU before the user's command starts.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import threading
import time
from pathlib import Path

from pyroute2 import IPRoute

from hpk_slurm.bubble.status import tail
from hpk_slurm.cli import net_daemon
from hpk_slurm.errors import HpkError
from hpk_slurm.net.bridge import BRIDGE
from hpk_slurm.net.daemon import DaemonConfig
from hpk_slurm.net.netns import enter_netns
from hpk_slurm.procs import ProcRef

CONNECT_TIMEOUT = 10.0


def link_name(mode: str, address: str, network: ipaddress.IPv4Network) -> str:
    """hpk-tap-N / hpk-veth-N with N the address's offset in the subnet: unique in the bubble."""
    offset = int(ipaddress.IPv4Address(address)) - int(network.network_address)
    return f"hpk-{'tap' if mode == 'relay' else 'veth'}-{offset}"


def in_netns(netns_path: str, fn, *args):
    """Run fn(*args) in a thread that entered the namespace (only that thread moves)."""
    result: dict = {}

    def target():
        try:
            enter_netns(netns_path)
            result["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller below
            result["error"] = exc

    thread = threading.Thread(target=target, name="in-netns")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def configure_interface(ifname: str, address: str, prefixlen: int, gateway: str, mtu: int) -> None:
    """Inside the container's namespace: lo up, the address, MTU, default route via hpk-bridge."""
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=index, mtu=mtu, state="up")
        ipr.addr("replace", index=index, address=address, prefixlen=prefixlen)
        ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index)


#: TCP states in which a socket still has something to deliver (data or its FIN):
#: ESTABLISHED, FIN_WAIT1, CLOSE_WAIT, LAST_ACK, CLOSING.
_SENDING_STATES = {"01", "04", "08", "09", "0B"}


def unsent_tcp() -> int:
    """Sockets in this thread's network namespace with data or a FIN not yet acknowledged."""
    busy = 0
    for table in ("/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    tx_queue = int(fields[4].split(":")[0], 16)
                    if fields[3] in _SENDING_STATES and (tx_queue or fields[3] != "01"):
                        busy += 1
        except FileNotFoundError:
            continue
    return busy


def drain(netns_path: str, timeout: float = 2.0) -> None:
    """Give a finished container's last bytes time to leave before its network is taken away.

    A program that writes and exits leaves its data in the kernel's socket
    buffers; the kernel keeps sending it, but only while the namespace still
    has its link. Bounded: a peer that never acknowledges costs `timeout`.
    """

    def wait() -> None:
        deadline = time.monotonic() + timeout
        while unsent_tcp() and time.monotonic() < deadline:
            time.sleep(0.01)

    in_netns(netns_path, wait)


def delete_link(name: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("del", index=found[0])


def link_counters(name: str) -> dict:
    """A bubble-side link's counters in the container's view (what it sent is what the link received)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return {}
        stats = ipr.get_links(found[0])[0].get_attr("IFLA_STATS64") or {}
    return {"tx_bytes": stats.get("rx_bytes", 0), "rx_bytes": stats.get("tx_bytes", 0),
            "tx_frames": stats.get("rx_packets", 0), "rx_frames": stats.get("tx_packets", 0),
            "rx_drops": stats.get("rx_dropped", 0) + stats.get("tx_dropped", 0)}


def daemon_argv(role: str, socket_path: Path, tap: str, mtu: int, stats_file: Path, cpu: int,
                bridge: str | None = None, netns: str | None = None) -> list[str]:
    """Both daemons of a pair get the same `cpu` (net/affinity.py says why)."""
    return net_daemon.command_line(DaemonConfig(
        role, socket_path, tap, mtu=mtu, bridge=bridge, netns=netns, stats_file=stats_file,
        connect_timeout=CONNECT_TIMEOUT, cpu=cpu))


def start_daemon(argv: list[str], log: Path) -> ProcRef:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return ProcRef.of(proc.pid)


def wait_connected(stats_file: Path, daemons: dict[str, ProcRef], logs: dict[str, Path]) -> None:
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        try:
            if json.loads(stats_file.read_text()).get("connected"):
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        for role, ref in daemons.items():
            if not ref.alive():
                raise HpkError(f"hpk-net-daemon ({role}) exited: {tail(logs[role], 4)}")
        if time.monotonic() > deadline:
            raise HpkError(f"the container's relay did not connect within {CONNECT_TIMEOUT:.0f} s")
        time.sleep(0.01)


def create_veth(bubble_link: str, container_netns: str, mtu: int) -> None:
    fd = os.open(container_netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=bubble_link, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
            index = ipr.link_lookup(ifname=bubble_link)[0]
            ipr.link("set", index=index, mtu=mtu, master=ipr.link_lookup(ifname=BRIDGE)[0], state="up")
    finally:
        os.close(fd)

