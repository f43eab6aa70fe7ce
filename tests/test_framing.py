"""The wire format: length-prefixed frames, decoded whatever the read boundaries."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpk_slurm.net.framing import MAX_FRAME, FrameDecoder, FrameError, encode

SMALL_MAX = 300  # small limits keep the property tests fast and reach the edges often
frames_st = st.lists(st.binary(min_size=1, max_size=SMALL_MAX), max_size=20)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points + [len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


def reference_parse(data: bytes, max_frame: int) -> tuple[list[bytes], bool]:
    """Obviously-correct parser: (complete frames, whether a bad length was hit)."""
    out, i = [], 0
    while len(data) - i >= 4:
        (length,) = struct.unpack_from(">I", data, i)
        if length == 0 or length > max_frame:
            return out, True
        if i + 4 + length > len(data):
            break
        out.append(data[i + 4 : i + 4 + length])
        i += 4 + length
    return out, False


def test_encode_is_big_endian_length_then_frame():
    assert encode(b"\x01\x02\x03") == b"\x00\x00\x00\x03\x01\x02\x03"


def test_encode_refuses_empty_frame():
    with pytest.raises(FrameError):
        encode(b"")


def test_zero_length_is_an_error():
    with pytest.raises(FrameError, match="bad frame length 0"):
        FrameDecoder().feed(b"\x00\x00\x00\x00rest")


def test_length_above_maximum_is_an_error():
    with pytest.raises(FrameError, match=f"bad frame length {MAX_FRAME + 1}"):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME + 1))


def test_maximal_frame_passes():
    frame = bytes(range(256)) * (MAX_FRAME // 256) + b"x" * (MAX_FRAME % 256)
    assert FrameDecoder().feed(encode(frame)) == [frame]


def test_truncated_frame_is_held_back_not_delivered():
    decoder = FrameDecoder()
    assert decoder.feed(encode(b"complete") + encode(b"truncated")[:-3]) == [b"complete"]
    assert decoder.pending == 4 + len(b"truncated") - 3


def test_buffer_must_hold_a_maximal_frame():
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=100, buffer_size=103)


@settings(max_examples=300, deadline=None)
@given(frames=frames_st, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_any_split_of_a_valid_stream_gives_the_same_frames(frames, cuts):
    stream = b"".join(encode(f) for f in frames)
    decoder = FrameDecoder(max_frame=SMALL_MAX, buffer_size=SMALL_MAX + 4)
    got = []
    for piece in split(stream, cuts):
        got.extend(decoder.feed(piece))
    assert got == frames
    assert decoder.pending == 0


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=2000),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
    buffer_extra=st.integers(min_value=0, max_value=700),
)
def test_arbitrary_bytes_match_the_reference_parser(data, cuts, buffer_extra):
    """Garbage never yields a frame the reference would not, and errors exactly where it does."""
    expected, bad = reference_parse(data, SMALL_MAX)
    decoder = FrameDecoder(max_frame=SMALL_MAX, buffer_size=SMALL_MAX + 4 + buffer_extra)
    got, raised = [], False
    try:
        for piece in split(data, cuts):
            got.extend(decoder.feed(piece))
    except FrameError:
        raised = True
    assert raised == bad
    if bad:
        assert got == expected[: len(got)]  # what came out before the error was real
    else:
        assert got == expected
