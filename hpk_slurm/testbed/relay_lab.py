"""The relay's test topology, shared by tests, the benchmark and the demo.

    ns "a" (container)          ns "br" (bubble)                     ns "b" (peer)
    tap0 10.77.0.1  <-relay->   hpk-tap-1 ─┐
                                           br0 (hpk-bridge) ── veth ── eth0 10.77.0.2
    ns "c" (kernel baseline)               │
    eth0 10.77.0.3 ─────── veth ───────────┘

A reaches B through the two hpk-net-daemons; C reaches B over a veth pair
through the same bridge, which is the kernel baseline the relay is compared to.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hpk_slurm.cli.net_daemon import command_line
from hpk_slurm.net.daemon import DaemonConfig
from hpk_slurm.testbed.netns import Testbed, wait_for

SUBNET = "10.77.0"
CLIENT_IP, PEER_IP, BASELINE_IP = f"{SUBNET}.1", f"{SUBNET}.2", f"{SUBNET}.3"


@dataclass
class RelayLab:
    bed: Testbed
    mtu: int = 1500
    offload: bool = True
    cpu: int | None = None  # both daemons on this CPU (--cpu), as hpktainer runs a pair

    def __post_init__(self) -> None:
        bed = self.bed
        self.a, self.br, self.b, self.c = (bed.netns(s) for s in ("a", "br", "b", "c"))
        bed.bridge(self.br, "br0")
        self.br.ip("link", "set", "br0", "mtu", str(self.mtu))
        for ns, ip, port in ((self.b, PEER_IP, "pb"), (self.c, BASELINE_IP, "pc")):
            bed.veth(ns, "eth0", self.br, port, mtu=self.mtu)
            self.br.ip("link", "set", port, "master", "br0")
            ns.ip("addr", "add", f"{ip}/24", "dev", "eth0")
        self.sockdir = bed.workdir / "sock"
        self.sockdir.mkdir(mode=0o700)
        self.socket = self.sockdir / "relay.sock"
        self.server: subprocess.Popen | None = None
        self.client: subprocess.Popen | None = None

    # -- daemons -----------------------------------------------------------
    def stats_path(self, role: str) -> Path:
        return self.bed.workdir / f"{role}.json"

    def _argv(self, role: str, tap: str, extra: list[str]) -> list[str]:
        cfg = DaemonConfig(role, self.socket, tap, mtu=self.mtu, offload=self.offload,
                           stats_file=self.stats_path(role), stats_interval=0.2, cpu=self.cpu)
        return command_line(cfg) + extra

    def start_server(self) -> subprocess.Popen:
        self.server = self.bed.spawn(
            self._argv("server", "hpk-tap-1", ["--bridge", "br0"]), netns=self.br, log_name="server"
        )
        wait_for(lambda: self.socket.exists() or self.server.poll() is not None, what="server socket")
        if self.server.poll() is not None:
            raise RuntimeError(f"server exited: {self.server.log_path.read_text()}")
        return self.server

    def start_client(self) -> subprocess.Popen:
        self.client = self.bed.spawn(self._argv("client", "tap0", []), netns=self.a, log_name="client")
        wait_for(lambda: self.connected("client") or self.client.poll() is not None, what="client connect")
        if self.client.poll() is not None:
            raise RuntimeError(f"client exited: {self.client.log_path.read_text()}")
        return self.client

    def start(self) -> "RelayLab":
        """Both daemons, then the client's address (it persists across daemon restarts)."""
        self.start_server()
        self.start_client()
        if f"{CLIENT_IP}/24" not in self.a.run(["ip", "-o", "addr", "show", "dev", "tap0"]).stdout:
            self.a.ip("addr", "add", f"{CLIENT_IP}/24", "dev", "tap0")
        return self

    def stats(self, role: str) -> dict:
        try:
            return json.loads(self.stats_path(role).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def connected(self, role: str) -> bool:
        return bool(self.stats(role).get("connected"))
