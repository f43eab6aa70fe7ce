"""Publishing a container's port on the node's address: slirp4netns forward, then DNAT in the bubble."""

from __future__ import annotations

import re

from hpk_slurm.container.record import Published
from hpk_slurm.errors import HpkError
from hpk_slurm.net import iptables
from hpk_slurm.net.slirp import HostForward, SlirpApi, SlirpError

_SPEC = re.compile(r"^(\d{1,5}):(\d{1,5})(?:/(tcp|udp))?$")


def parse_publish(text: str) -> Published:
    match = _SPEC.match(text)
    if not match:
        raise HpkError(f"--publish {text!r}: expected HOSTPORT:CONTAINERPORT[/tcp|udp], e.g. 8080:80")
    host_port, container_port = int(match.group(1)), int(match.group(2))
    if not 1024 <= host_port <= 65535 or not 1 <= container_port <= 65535:
        raise HpkError(f"--publish {text!r}: host port must be 1024-65535 (unprivileged), container port 1-65535")
    return Published(match.group(3) or "tcp", host_port, container_port)


def dnat_rule(pub: Published, address: str) -> list[str]:
    return ["-i", "tap0", "-p", pub.proto, "--dport", str(pub.host_port),
            "-j", "DNAT", "--to-destination", f"{address}:{pub.container_port}"]


def publish(api: SlirpApi, guest: str, pub: Published, address: str) -> None:
    """Host port -> bubble (slirp4netns) -> container (DNAT). Fills in pub.slirp_id."""
    try:
        pub.slirp_id = api.add_hostfwd(HostForward(pub.proto, pub.host_port, guest, pub.host_port))
    except SlirpError as exc:
        raise HpkError(f"cannot publish port {pub.host_port}/{pub.proto}: it is taken on this node",
                       "choose another host port") from exc
    iptables.ensure_rule("nat", "PREROUTING", dnat_rule(pub, address))


def unpublish(api: SlirpApi, pub: Published, address: str) -> None:
    iptables.delete_rule("nat", "PREROUTING", dnat_rule(pub, address))
    if pub.slirp_id is not None:
        try:
            api.remove_hostfwd(pub.slirp_id)
        except (SlirpError, OSError):
            pass  # slirp4netns is gone with its bubble
