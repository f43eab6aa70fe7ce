"""hpk-bridge: the nested containers' gateway inside a bubble, and the NAT out of tap0."""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute

from hpk_slurm.net import iptables

BRIDGE = "hpk-bridge"


def ensure_bridge(gateway: ipaddress.IPv4Interface, mtu: int, name: str = BRIDGE) -> None:
    """The bridge holding the subnet's first address; idempotent."""
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=name):
            ipr.link("add", ifname=name, kind="bridge")
        index = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, mtu=mtu, state="up")
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)}
        if str(gateway.ip) not in have:
            ipr.addr("add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)


def set_ip_forward() -> None:
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1\n")


def masquerade_rule(subnet: ipaddress.IPv4Network, overlay: ipaddress.IPv4Network, out_iface: str) -> list[str]:
    """Traffic from our containers to anything outside the overlay leaves NATed through tap0."""
    return ["-s", str(subnet), "!", "-d", str(overlay), "-o", out_iface, "-j", "MASQUERADE"]


def ensure_nat(subnet: ipaddress.IPv4Network, overlay: ipaddress.IPv4Network, out_iface: str = "tap0") -> None:
    iptables.ensure_rule("nat", "POSTROUTING", masquerade_rule(subnet, overlay, out_iface))
