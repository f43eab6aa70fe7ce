"""Bubbles on test hosts, for tests, benchmarks and the demo.

Test hosts are namespaces on a private switch (Testbed.hosts); `hpk-bubble`
runs inside a host's namespace exactly as a user (or the Slurm prolog) would
run it on a node, optionally as an unprivileged user. A "pod" is a nested
network namespace inside a bubble with a veth on hpk-bridge and an address
from the bubble's flannel subnet: a stand-in for a nested container.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hpk_slurm.procs import children
from hpk_slurm.testbed.netns import Netns, Testbed, wait_for

HOST_SUBNET = "172.31.250"


def host_ip(index: int) -> str:
    return f"{HOST_SUBNET}.{10 + index}"


@dataclass
class TestUser:
    """An unprivileged user for rootless tests; removed with its home on close()."""

    name: str
    uid: int
    gid: int

    @classmethod
    def create(cls) -> "TestUser":
        name = f"hpkt{secrets.token_hex(3)}"
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True, capture_output=True)
        pw = pwd.getpwnam(name)
        return cls(name, pw.pw_uid, pw.pw_gid)

    def argv(self, argv: list[str]) -> list[str]:
        """argv run as this user (setpriv execs: PIDs stay the real ones)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *argv]

    def close(self) -> None:
        subprocess.run(["userdel", "--remove", self.name], capture_output=True)


@dataclass
class Bubble:
    host: Netns
    host_index: int
    ident: int
    run_dir: Path
    user: TestUser | None
    facts: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.facts["pids"]["bubble"]

    @property
    def gateway(self) -> str:
        return self.facts["flannel_subnet"].split("/")[0]

    @property
    def slirp_gateway(self) -> str:
        return str(ipaddress.IPv4Network(self.facts["slirp_cidr"]).network_address + 2)


def hpk_bubble_argv() -> list[str]:
    return [sys.executable, "-m", "hpk_slurm.cli.bubble"]


@dataclass
class BubbleLab:
    bed: Testbed
    hosts_count: int = 2
    bubbles: list[Bubble] = field(default_factory=list)
    users: list[TestUser] = field(default_factory=list)
    _tun_mode: int | None = None
    _pods: int = 0

    def __post_init__(self) -> None:
        self.switch, self.hosts = self.bed.hosts(self.hosts_count, HOST_SUBNET)

    # -- bubbles ------------------------------------------------------------------
    def hpk_bubble(self, host: Netns, args: list[str], user: TestUser | None = None,
                   env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
        argv = hpk_bubble_argv() + args
        return host.run(user.argv(argv) if user else argv, check=False, timeout=timeout,
                        env=env, cwd="/")

    def start(self, host_index: int, ident: int, *options: str, user: TestUser | None = None,
              controller_index: int | None = None) -> Bubble:
        """`hpk-bubble start` on host `host_index` (1-based); a node if controller_index is given."""
        host = self.hosts[host_index - 1]
        run_dir = self.run_dir(ident, user)
        args = ["start", str(ident), "--host-ip", host_ip(host_index), "--run-dir", str(run_dir), "--json",
                "--runtime", "embedded"]
        if controller_index is None:
            args.append("--controller")
        else:
            args += ["--node", "--etcd-ip", host_ip(controller_index)]
        bubble = Bubble(host, host_index, ident, run_dir, user)
        self.bubbles.append(bubble)  # stopped at close() even if start half-failed
        result = self.hpk_bubble(host, args + list(options), user)
        if result.returncode != 0:
            raise RuntimeError(f"hpk-bubble start failed ({result.returncode}): {result.stderr.strip()}")
        bubble.facts = json.loads(result.stdout)
        return bubble

    def run_dir(self, ident: int, user: TestUser | None = None) -> Path:
        base = self.bed.workdir / (user.name if user else "root")
        if not base.exists():
            base.mkdir(mode=0o700)
            if user:
                os.chown(base, user.uid, user.gid)
        return base / f"bubble{ident}"

    def stop(self, bubble: Bubble) -> subprocess.CompletedProcess:
        return self.hpk_bubble(bubble.host, ["stop", str(bubble.ident), "--run-dir", str(bubble.run_dir)], bubble.user)

    def status(self, bubble: Bubble) -> dict:
        out = self.hpk_bubble(bubble.host, ["status", str(bubble.ident), "--run-dir", str(bubble.run_dir), "--json"],
                              bubble.user).stdout
        return json.loads(out)

    def exec(self, bubble: Bubble, argv: list[str]) -> subprocess.CompletedProcess:
        return self.hpk_bubble(bubble.host, ["exec", str(bubble.ident), "--run-dir", str(bubble.run_dir), "--", *argv],
                               bubble.user)

    # -- nested containers ------------------------------------------------------------
    def hpktainer_argv(self, bubble: Bubble, *args: str) -> list[str]:
        argv = [sys.executable, "-m", "hpk_slurm.cli.hpktainer", "--bubble", str(bubble.run_dir), *args]
        return bubble.user.argv(argv) if bubble.user else argv

    def hpktainer(self, bubble: Bubble, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`hpktainer ...` on the bubble's host, as its user, as a job step would run it."""
        return bubble.host.run(self.hpktainer_argv(bubble, *args), check=False, timeout=timeout, cwd="/")

    def spawn_container(self, bubble: Bubble, *args: str) -> subprocess.Popen:
        """A long-running `hpktainer ...` (a server, a sleeper), stopped at testbed close."""
        return self.bed.spawn(bubble.host.exec_argv(self.hpktainer_argv(bubble, *args)), log_name="hpktainer")

    def containers(self, bubble: Bubble, include_ended: bool = False) -> list[dict]:
        result = self.hpktainer(bubble, "ps", "--json", *(["--all"] if include_ended else []))
        if result.returncode != 0:
            raise RuntimeError(f"hpktainer ps failed: {result.stderr.strip()}")
        return json.loads(result.stdout)

    def wait_container(self, bubble: Bubble, proc: subprocess.Popen) -> dict:
        """The running container that `proc` started (the only new one), once it runs."""
        known = {c["id"] for c in self.containers(bubble, include_ended=True) if c["state"] != "running"}

        def found():
            if proc.poll() is not None:
                raise RuntimeError(f"hpktainer exited {proc.returncode}: {proc.log_path.read_text()[-2000:]}")
            running = [c for c in self.containers(bubble) if c["id"] not in known]
            return running[0] if running else None

        return wait_for(found, timeout=30, what="container start")

    # -- rootless ---------------------------------------------------------------------
    def user(self) -> TestUser:
        """A fresh unprivileged user; /dev/net/tun opened to users (restored at close)."""
        if self._tun_mode is None:
            self._tun_mode = os.stat("/dev/net/tun").st_mode & 0o777
            os.chmod("/dev/net/tun", 0o666)
        user = TestUser.create()
        self.users.append(user)
        os.chmod(self.bed.workdir, 0o711)  # let the user reach its own run folder below
        return user

    # -- pods ------------------------------------------------------------------------
    def pod(self, bubble: Bubble, host_part: int) -> tuple[Netns, str]:
        """A nested netns in `bubble` on hpk-bridge with address .host_part of its subnet."""
        self._pods += 1
        holder = self.bed.spawn(
            ["nsenter", "-t", str(bubble.pid), "-U", "-n", "-m", "-p", "--", "unshare", "--net", "--", "sleep", "infinity"],
            log_name="pod",
        )
        pid = wait_for(lambda: (kids := children(holder.pid)) and kids[0], what="pod process")
        wait_for(lambda: os.readlink(f"/proc/{pid}/ns/net") != os.readlink(f"/proc/{bubble.pid}/ns/net")
                 and os.readlink(f"/proc/{pid}/exe").endswith("sleep"), what="pod namespace")
        pod = Netns(f"pod{self._pods}", f"/proc/{pid}/ns/net")
        inside = Netns(f"bubble{bubble.ident}", f"/proc/{bubble.pid}/ns/net")
        subnet = ipaddress.IPv4Interface(bubble.facts["flannel_subnet"])
        address = f"{subnet.network.network_address + host_part}/{subnet.network.prefixlen}"
        mtu = str(bubble.facts["flannel_mtu"])
        veth = f"hpv{self._pods}"
        inside.ip("link", "add", veth, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", str(pid))
        inside.ip("link", "set", veth, "master", "hpk-bridge", "up")
        pod.ip("link", "set", "lo", "up")
        pod.ip("link", "set", "eth0", "up")
        pod.ip("addr", "add", address, "dev", "eth0")
        pod.ip("route", "add", "default", "via", bubble.gateway)
        return pod, address.split("/")[0]

    # -- cleanup ---------------------------------------------------------------------
    def close(self) -> None:
        errors = []
        for bubble in reversed(self.bubbles):
            result = self.stop(bubble)
            if result.returncode != 0:
                errors.append(f"stop {bubble.ident}: {result.stderr.strip()}")
        for user in self.users:
            user.close()
        if self._tun_mode is not None:
            os.chmod("/dev/net/tun", self._tun_mode)
        if errors:
            raise RuntimeError("; ".join(errors))


def busybox_rootfs(folder: Path) -> Path:
    """A root file system with nothing but a static busybox: no Python, nothing of ours."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise RuntimeError("install the Debian package busybox-static")
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "busybox").write_bytes(busybox.read_bytes())
    (folder / "bin" / "busybox").chmod(0o755)
    for applet in ("sh", "ip", "ping", "nc", "cat", "echo", "sleep", "wget", "ls", "true"):
        (folder / "bin" / applet).symlink_to("busybox")
    for name in ("etc", "tmp", "proc", "dev", "sys"):
        (folder / name).mkdir()
    return folder
