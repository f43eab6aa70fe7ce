"""Checks before a bubble starts: everything node-local it needs, so nothing is half-started.

Each check names what is wrong and how to fix it (the package to install,
the setting to change). `hpktainer doctor` and the Slurm prolog reuse them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what} ({self.fix})"


#: binary -> Debian package (flanneld: a release binary, see README)
BUBBLE_BINARIES = {
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "slirp4netns": "slirp4netns",
    "etcdctl": "etcd-client",
    "iptables": "iptables",
    "flanneld": "flannel: the release binary as /usr/local/bin/flanneld (scripts/setup builds it)",
}
CONTROLLER_BINARIES = {"etcd": "etcd-server"}


def missing_binaries(needed: dict[str, str]) -> list[Problem]:
    return [
        Problem(f"'{binary}' not found on PATH", f"install {package}" if ":" in package else f"install the Debian package '{package}'")
        for binary, package in needed.items()
        if shutil.which(binary) is None
    ]


def tun_problem() -> Problem | None:
    if not os.path.exists("/dev/net/tun"):
        return Problem("/dev/net/tun is missing", "the kernel needs TUN/TAP (CONFIG_TUN)")
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return Problem("/dev/net/tun is not usable by this user", "as root: chmod 0666 /dev/net/tun (Debian's usual mode)")
    return None


def userns_problem() -> Problem | None:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) == 0:
                return Problem("user namespaces are disabled", "sysctl -w user.max_user_namespaces=15000")
    except OSError:
        pass
    try:
        with open("/proc/sys/kernel/unprivileged_userns_clone") as f:
            if os.geteuid() != 0 and f.read().strip() == "0":
                return Problem("unprivileged user namespaces are disabled", "sysctl -w kernel.unprivileged_userns_clone=1")
    except OSError:
        pass
    return None


def bubble_problems(host_etcd: bool) -> list[Problem]:
    needed = dict(BUBBLE_BINARIES, **(CONTROLLER_BINARIES if host_etcd else {}))
    problems = missing_binaries(needed)
    problems += [p for p in (tun_problem(), userns_problem()) if p]
    return problems
