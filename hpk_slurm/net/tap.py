"""TAP devices with virtio-net headers, opened so that a restarted daemon finds them again.

The TAP is made persistent while a daemon holds it: if the daemon is killed,
the device (with its addresses, routes and bridge port) stays, and the next
daemon re-attaches by name. A clean stop clears persistence, which removes
the device.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
from dataclasses import dataclass

from pyroute2 import IPRoute

from hpk_slurm.errors import HpkError

TUN_DEVICE = "/dev/net/tun"

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0

IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

#: What we ask for, most first; kernels without UDP segmentation offload
#: (before 6.2) refuse the USO bits, and then we settle for TCP only.
OFFLOAD_CHOICES = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM,
)

#: sizeof(struct virtio_net_hdr): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
VNET_HDR_LEN = 10

_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def check_ifname(name: str) -> str:
    if not _IFNAME.match(name):
        raise HpkError(
            f"invalid interface name {name!r}",
            "use 1-15 letters, digits, '-', '_' or '.'",
        )
    return name


@dataclass
class Tap:
    name: str
    fd: int
    vnet_hdr: bool
    supported_offloads: int  # TUN_F_* bits this kernel accepts on this TAP

    @classmethod
    def attach(cls, name: str, vnet_hdr: bool = True) -> "Tap":
        """Create the TAP `name` in the current network namespace, or re-attach to it."""
        check_ifname(name)
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise HpkError(
                f"{TUN_DEVICE} does not exist",
                "this kernel needs TUN/TAP support (CONFIG_TUN); in a container, bind /dev/net/tun",
            ) from None
        except PermissionError:
            raise HpkError(
                f"no permission to open {TUN_DEVICE}",
                "as root: chmod 0666 /dev/net/tun (the usual mode on Debian)",
            ) from None
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
        except OSError as exc:
            os.close(fd)
            if exc.errno == errno.EPERM:
                raise HpkError(
                    f"not allowed to create or attach TAP {name}",
                    "run with CAP_NET_ADMIN in this network namespace (e.g. inside the bubble)",
                ) from None
            if exc.errno in (errno.EINVAL, errno.EBUSY):
                raise HpkError(
                    f"cannot attach TAP {name}: {os.strerror(exc.errno)}",
                    "a non-TAP interface, or a TAP held by another process, has that name",
                ) from None
            raise
        os.set_blocking(fd, False)
        tap = cls(name, fd, vnet_hdr, 0)
        if vnet_hdr:
            tap.supported_offloads = tap._probe_offloads()
        return tap

    def _probe_offloads(self) -> int:
        for mask in OFFLOAD_CHOICES:
            try:
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, mask)
                return mask
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        return 0

    def set_offloads(self, mask: int) -> None:
        """Which GSO/checksum work the kernel may hand us in frames we read."""
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, mask & self.supported_offloads)

    def configure(self, mtu: int | None = None, master: str | None = None) -> None:
        """Set MTU and bridge port, and bring the link up (addresses are not ours to touch)."""
        with IPRoute() as ipr:
            index = _lookup(ipr, self.name)
            changes: dict = {"state": "up"}
            if mtu:
                changes["mtu"] = mtu
            if master:
                changes["master"] = _lookup(ipr, master)
            ipr.link("set", index=index, **changes)

    def close(self, remove: bool = True) -> None:
        """Release the TAP; with `remove` (a clean stop) the device disappears too."""
        if self.fd < 0:
            return
        if remove:
            try:
                fcntl.ioctl(self.fd, TUNSETPERSIST, 0)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = -1


def _lookup(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise HpkError(f"interface {name} not found in this network namespace")
    return found[0]
