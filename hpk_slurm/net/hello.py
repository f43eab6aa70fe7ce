"""The hello both relay ends send first, so they agree on how frames travel.

With virtio-net headers on both TAPs, a GSO frame read from one TAP can be
written whole into the other; the header tells the receiving kernel how to
segment and checksum it. That only works if both kernels accept the same
offloads, hence the intersection. A peer that cannot (or will not) use
headers gets plain Ethernet frames.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"HPKN"
VERSION = 1
FLAG_VNET_HDR = 0x01

_HELLO = struct.Struct(">4sBBHIII")  # magic, version, flags, vnet_hdr_len, offloads, max_frame, mtu
SIZE = _HELLO.size


class HelloError(Exception):
    """The peer's first bytes are not a hello we understand."""


@dataclass(frozen=True)
class Hello:
    vnet_hdr: bool
    vnet_hdr_len: int
    offloads: int  # TUN_F_* bits this side's TAP accepts
    max_frame: int
    mtu: int

    def pack(self) -> bytes:
        flags = FLAG_VNET_HDR if self.vnet_hdr else 0
        return _HELLO.pack(
            MAGIC, VERSION, flags, self.vnet_hdr_len, self.offloads, self.max_frame, self.mtu
        )

    @classmethod
    def unpack(cls, data: bytes) -> "Hello":
        if len(data) != SIZE:
            raise HelloError(f"short hello: {len(data)} of {SIZE} bytes")
        magic, version, flags, hdr_len, offloads, max_frame, mtu = _HELLO.unpack(data)
        if magic != MAGIC:
            raise HelloError(f"bad hello magic {magic!r} (peer is not an hpk-net-daemon?)")
        if version != VERSION:
            raise HelloError(f"unsupported hello version {version} (we speak {VERSION})")
        if flags & ~FLAG_VNET_HDR:
            raise HelloError(f"unknown hello flags 0x{flags:02x}")
        if max_frame < 1514 or max_frame > 1 << 20:
            raise HelloError(f"implausible max frame {max_frame}")
        return cls(bool(flags & FLAG_VNET_HDR), hdr_len, offloads, max_frame, mtu)


@dataclass(frozen=True)
class LinkMode:
    """What both ends agreed on for one connection."""

    vnet_hdr: bool  # frames on the wire carry a virtio-net header
    offloads: int  # TUN_F_* bits to enable on our TAP (0 without headers)
    peer_max_frame: int

    @property
    def name(self) -> str:
        return "offload" if self.vnet_hdr else "plain"


def negotiate(ours: Hello, theirs: Hello) -> LinkMode:
    both = ours.vnet_hdr and theirs.vnet_hdr and ours.vnet_hdr_len == theirs.vnet_hdr_len
    return LinkMode(
        vnet_hdr=both,
        offloads=(ours.offloads & theirs.offloads) if both else 0,
        peer_max_frame=theirs.max_frame,
    )
