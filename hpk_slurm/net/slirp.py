"""slirp4netns: the bubble's way out, and the one place that knows its command line and API.

slirp4netns runs outside the bubble (in the host's network namespace, as the
bubble's user) and serves the bubble's tap0. Its API socket takes one JSON
request per connection; host forwards added there are how other nodes reach
the bubble's VXLAN port and etcd.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from pathlib import Path

import tenacity

from hpk_slurm.errors import HpkError

SLIRP_MTU = 65520


@dataclass(frozen=True)
class SlirpNetwork:
    """The addresses slirp4netns uses inside a bubble for a given --cidr."""

    cidr: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:  # also the host's loopback, seen from the bubble
        return str(self.cidr.network_address + 2)

    @property
    def guest(self) -> str:  # the bubble's tap0 address
        return str(self.cidr.network_address + 100)


def slirp_argv(pid: int, cidr: str, api_socket: Path, ready_fd: int, mtu: int = SLIRP_MTU) -> list[str]:
    return [
        "slirp4netns", "--configure", f"--mtu={mtu}", f"--cidr={cidr}", "--disable-dns",
        f"--api-socket={api_socket}", f"--ready-fd={ready_fd}", str(pid), "tap0",
    ]


@dataclass(frozen=True)
class HostForward:
    proto: str  # "tcp" or "udp"
    host_port: int
    guest_addr: str
    guest_port: int
    host_addr: str = "0.0.0.0"


class SlirpError(HpkError):
    pass


class SlirpApi:
    """Client of one slirp4netns API socket."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @tenacity.retry(
        retry=tenacity.retry_if_exception_type((FileNotFoundError, ConnectionRefusedError)),
        wait=tenacity.wait_exponential(multiplier=0.02, max=0.5),
        stop=tenacity.stop_after_delay(10),
        reraise=True,
    )
    def call(self, execute: str, arguments: dict | None = None) -> dict:
        request = {"execute": execute}
        if arguments is not None:
            request["arguments"] = arguments
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.path))
            sock.sendall(json.dumps(request).encode())
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        reply = json.loads(data or b"{}")
        if "error" in reply:
            raise SlirpError(f"slirp4netns {execute} failed: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return", {})

    def add_hostfwd(self, fwd: HostForward) -> int:
        try:
            result = self.call("add_hostfwd", {
                "proto": fwd.proto, "host_addr": fwd.host_addr, "host_port": fwd.host_port,
                "guest_addr": fwd.guest_addr, "guest_port": fwd.guest_port,
            })
        except SlirpError as exc:
            raise SlirpError(
                f"cannot forward host {fwd.proto.upper()} port {fwd.host_port} to the bubble ({exc})",
                "the port is taken on this host (another job?) or privileged (<1024); choose another",
            ) from None
        return int(result["id"])

    def remove_hostfwd(self, fwd_id: int) -> None:
        self.call("remove_hostfwd", {"id": fwd_id})
