"""Facts about the host's own network, as seen from the host's network namespace."""

from __future__ import annotations

from pyroute2 import IPRoute

from hpk_slurm.errors import HpkError


def detect_host_ip() -> str:
    """The source address of the default route, else the first global IPv4 address."""
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=2):
            src = route.get_attr("RTA_PREFSRC")
            if src:
                return src
            oif = route.get_attr("RTA_OIF")
            for addr in ipr.get_addr(index=oif, family=2):
                return addr.get_attr("IFA_ADDRESS")
        for addr in ipr.get_addr(family=2):
            if addr["scope"] == 0 and not addr.get_attr("IFA_ADDRESS").startswith("127."):
                return addr.get_attr("IFA_ADDRESS")
    raise HpkError("cannot tell this host's IPv4 address", "give it with --host-ip or HOST_IP")
