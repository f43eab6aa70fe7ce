"""flanneld: its network config, its command line and its subnet.env, all in one place.

flanneld (etcd backend) reads `<prefix>/config`, leases a subnet under
`<prefix>/subnets/`, creates the VXLAN device `flannel.<VNI>` and writes
subnet.env, which everything else in the bubble reads.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from hpk_slurm.errors import HpkError


@dataclass(frozen=True)
class NetworkConfig:
    """The overlay of one job: what goes into `<prefix>/config`."""

    network: str = "10.244.0.0/16"
    subnet_len: int = 24
    vni: int = 1
    port: int = 8472

    def __post_init__(self) -> None:
        try:
            net = ipaddress.IPv4Network(self.network)
        except ValueError as exc:
            raise HpkError(f"invalid overlay network {self.network!r}: {exc}") from None
        if not net.prefixlen < self.subnet_len <= 30:
            raise HpkError(f"subnet length /{self.subnet_len} does not fit in {self.network}")
        if not 1 <= self.vni < 1 << 24:
            raise HpkError(f"VNI {self.vni} out of range", "use 1..16777215")
        if not 1024 <= self.port <= 65535:
            raise HpkError(f"VXLAN port {self.port} out of range", "use 1024..65535 (unprivileged)")

    def to_json(self) -> str:
        return json.dumps({
            "Network": self.network,
            "SubnetLen": self.subnet_len,
            "Backend": {"Type": "vxlan", "VNI": self.vni, "Port": self.port},
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "NetworkConfig":
        data = json.loads(text)
        backend = data.get("Backend", {})
        return cls(data["Network"], int(data.get("SubnetLen", 24)), int(backend.get("VNI", 1)),
                   int(backend.get("Port", 8472)))


@dataclass(frozen=True)
class SubnetEnv:
    """flanneld's subnet.env: this bubble's share of the overlay."""

    network: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Interface  # e.g. 10.244.3.1/24: the gateway address and the subnet
    mtu: int
    ipmasq: bool

    @classmethod
    def parse(cls, text: str) -> "SubnetEnv":
        values = dict(
            line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
        )
        try:
            return cls(
                ipaddress.IPv4Network(values["FLANNEL_NETWORK"]),
                ipaddress.IPv4Interface(values["FLANNEL_SUBNET"]),
                int(values["FLANNEL_MTU"]),
                values.get("FLANNEL_IPMASQ", "false") == "true",
            )
        except (KeyError, ValueError) as exc:
            raise HpkError(f"malformed subnet.env: {exc}") from None

    @classmethod
    def read(cls, path: Path) -> "SubnetEnv":
        return cls.parse(Path(path).read_text())

    @property
    def gateway(self) -> str:
        return str(self.subnet.ip)

    @property
    def lease_key(self) -> str:
        """The key of our lease under `<prefix>/subnets/`."""
        net = self.subnet.network
        return f"{net.network_address}-{net.prefixlen}"


def flanneld_argv(endpoints: tuple[str, ...], prefix: str, public_ip: str, subnet_file: Path,
                  iface: str = "tap0") -> list[str]:
    return [
        "flanneld",
        f"--etcd-endpoints={','.join(endpoints)}",
        f"--etcd-prefix={prefix}",
        f"--iface={iface}",
        f"--public-ip={public_ip}",
        "--ip-masq",
        f"--subnet-file={subnet_file}",
    ]


def learned_peers(vni: int) -> list[dict]:
    """In the bubble's network namespace: the other bubbles flannel learned (route, VTEP MAC, host)."""
    from pyroute2 import IPRoute  # netlink only where this runs, not in every CLI start

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=f"flannel.{vni}")
        if not found:
            return []
        index = found[0]
        macs = {n.get_attr("NDA_DST"): n.get_attr("NDA_LLADDR") for n in ipr.get_neighbours(ifindex=index, family=2)}
        hosts = {n.get_attr("NDA_LLADDR"): n.get_attr("NDA_DST") for n in ipr.fdb("dump", ifindex=index)}
        peers = []
        for route in ipr.get_routes(family=2, oif=index):
            gateway = route.get_attr("RTA_GATEWAY")
            if gateway:  # a peer's subnet, via its VTEP address
                mac = macs.get(gateway)
                peers.append({"subnet": f"{route.get_attr('RTA_DST')}/{route['dst_len']}", "vtep_mac": mac,
                              "host": hosts.get(mac)})
    return sorted(peers, key=lambda p: p["subnet"])
