"""The hello: both ends agree on headers and offloads, garbage is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpk_slurm.net import hello
from hpk_slurm.net.hello import Hello, HelloError, negotiate

OFFLOAD = Hello(vnet_hdr=True, vnet_hdr_len=10, offloads=0x6F, max_frame=65565, mtu=1500)
PLAIN = Hello(vnet_hdr=False, vnet_hdr_len=10, offloads=0, max_frame=65565, mtu=1500)


def test_round_trip():
    assert Hello.unpack(OFFLOAD.pack()) == OFFLOAD
    assert len(OFFLOAD.pack()) == hello.SIZE == 20


def test_offloads_are_the_intersection():
    older_kernel = Hello(True, 10, 0x0F, 65565, 1500)  # no UDP segmentation offload
    mode = negotiate(OFFLOAD, older_kernel)
    assert mode.vnet_hdr and mode.offloads == 0x0F and mode.name == "offload"


def test_one_plain_side_makes_the_link_plain():
    for a, b in ((OFFLOAD, PLAIN), (PLAIN, OFFLOAD)):
        mode = negotiate(a, b)
        assert not mode.vnet_hdr and mode.offloads == 0 and mode.name == "plain"


def test_header_size_mismatch_falls_back_to_plain():
    assert not negotiate(OFFLOAD, Hello(True, 12, 0x6F, 65565, 1500)).vnet_hdr


@pytest.mark.parametrize(
    "data, message",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n", "short hello"),
        (b"XXXX" + OFFLOAD.pack()[4:], "bad hello magic"),
        (OFFLOAD.pack()[:4] + b"\x09" + OFFLOAD.pack()[5:], "unsupported hello version"),
        (OFFLOAD.pack()[:5] + b"\x80" + OFFLOAD.pack()[6:], "unknown hello flags"),
        (Hello(True, 10, 0, 10, 1500).pack(), "implausible max frame"),
    ],
)
def test_garbage_is_refused_with_a_reason(data, message):
    with pytest.raises(HelloError, match=message):
        Hello.unpack(data)


@given(st.binary(min_size=hello.SIZE, max_size=hello.SIZE))
def test_random_bytes_never_crash_the_parser(data):
    try:
        parsed = Hello.unpack(data)
    except HelloError:
        return
    assert parsed.max_frame >= 1514
