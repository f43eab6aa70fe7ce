"""Test hosts as network namespaces: create them, wire them, run things in them, and remove it all.

Used by the test suite, the benchmarks and the demo. Every name carries the
testbed's unique prefix, so concurrent runs never collide and a leftover is
easy to attribute. `close()` removes everything that was created (processes
by PID, namespaces with their links, the scratch folder), also after a
failure; a Testbed is a context manager for that reason.

Safety: namespaces get no route to the machine's real interfaces; traffic
stays between namespaces the testbed made.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

from hpk_slurm.errors import require_binary

NETNS_DIR = Path("/run/netns")
#: Every testbed name starts with this plus 4 hex digits (leak checks look for it).
PREFIX = "ht"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Netns:
    """A network namespace: one made by `ip netns add`, or any process's (`path=/proc/PID/ns/net`)."""

    name: str
    path: str = ""

    def __post_init__(self) -> None:
        if not self.path:
            self.path = str(NETNS_DIR / self.name)

    def ip(self, *args: str) -> None:
        self.run(["ip", *args])

    def exec_argv(self, argv: list[str]) -> list[str]:
        """argv run inside this namespace (nsenter keeps the real /sys, unlike `ip netns exec`)."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, argv: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.exec_argv(argv), check=check, timeout=timeout, capture_output=True, text=True, **kw
        )

    def links(self) -> list[str]:
        out = self.run(["ip", "-o", "link", "show"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def ping(self, address: str, count: int = 3, interval: float = 0.2, wait: float = 1.0) -> bool:
        result = self.run(
            ["ping", "-c", str(count), "-i", str(interval), "-W", str(wait), "-q", address], check=False
        )
        return result.returncode == 0


@dataclass
class Testbed:
    """Everything a test or benchmark creates, with one prefix, removed by close()."""

    prefix: str = field(default_factory=lambda: PREFIX + secrets.token_hex(2))
    namespaces: list[Netns] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    workdir: Path = field(init=False)

    #: Every testbed of this process, for leak checks that must not blame someone else's processes.
    made: ClassVar[list["Testbed"]] = []

    def __post_init__(self) -> None:
        for binary, package in (("ip", "iproute2"), ("nsenter", "util-linux")):
            require_binary(binary, package)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        Testbed.made.append(self)
        os.chmod(self.workdir, 0o700)

    def __enter__(self) -> "Testbed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def name(self, suffix: str) -> str:
        """A prefixed name that still fits an interface name (15 characters)."""
        full = f"{self.prefix}{suffix}"
        if len(full) > 15:
            raise ValueError(f"name {full!r} is longer than an interface name may be")
        return full

    # -- building blocks --------------------------------------------------
    def netns(self, suffix: str) -> Netns:
        ns = Netns(self.name(suffix))
        _ip("netns", "add", ns.name)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def bridge(self, ns: Netns, name: str, address: str | None = None) -> str:
        ns.ip("link", "add", name, "type", "bridge")
        if address:
            ns.ip("addr", "add", address, "dev", name)
        ns.ip("link", "set", name, "up")
        return name

    def veth(self, ns_a: Netns, name_a: str, ns_b: Netns, name_b: str, mtu: int | None = None) -> None:
        """A veth pair with one end in each namespace (both ends go with their namespace)."""
        tmp_a, tmp_b = self.name("va"), self.name("vb")
        _ip("link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        _ip("link", "set", tmp_a, "netns", ns_a.name)
        _ip("link", "set", tmp_b, "netns", ns_b.name)
        ns_a.ip("link", "set", tmp_a, "name", name_a)
        ns_b.ip("link", "set", tmp_b, "name", name_b)
        for ns, name in ((ns_a, name_a), (ns_b, name_b)):
            if mtu:
                ns.ip("link", "set", name, "mtu", str(mtu))
            ns.ip("link", "set", name, "up")

    def host_on_bridge(self, suffix: str, switch: Netns, bridge: str, address: str, mtu: int | None = None) -> Netns:
        """A host namespace with `eth0` at `address`, plugged into `bridge` in `switch`."""
        host = self.netns(suffix)
        self.veth(host, "eth0", switch, self.name(f"p{suffix}"), mtu=mtu)
        switch.ip("link", "set", self.name(f"p{suffix}"), "master", bridge)
        host.ip("addr", "add", address, "dev", "eth0")
        return host

    def hosts(self, count: int, subnet: str = "172.31.250") -> tuple[Netns, list[Netns]]:
        """`count` hosts on a private switch (its own namespace, so no path to the real network)."""
        switch = self.netns("sw")
        self.bridge(switch, "br0")
        hosts = [self.host_on_bridge(f"n{i}", switch, "br0", f"{subnet}.{10 + i}/24") for i in range(1, count + 1)]
        return switch, hosts

    # -- processes -----------------------------------------------------------
    def spawn(self, argv: list[str], netns: Netns | None = None, log_name: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a long-lived process, tracked by PID for close()."""
        log_path = self.workdir / f"{log_name or Path(argv[0]).name}-{len(self.processes)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                netns.exec_argv(argv) if netns else argv,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )
        proc.log_path = log_path  # type: ignore[attr-defined]
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Signal one tracked process and wait for it (SIGKILL if it will not go)."""
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def close(self) -> None:
        errors: list[str] = []
        for proc in reversed(self.processes):
            try:
                self.stop(proc)
            except Exception as exc:  # keep going: the rest must still be removed
                errors.append(f"pid {proc.pid}: {exc}")
        self.processes.clear()
        for ns in reversed(self.namespaces):
            try:
                _ip("netns", "del", ns.name)
            except subprocess.CalledProcessError as exc:
                errors.append(f"netns {ns.name}: {exc.stderr.strip()}")
        self.namespaces.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise RuntimeError("testbed cleanup incomplete: " + "; ".join(errors))


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy; the value, or TimeoutError naming what we waited for."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
