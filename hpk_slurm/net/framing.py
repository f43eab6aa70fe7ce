"""The relay's wire format: each frame preceded by its length, 4 bytes big endian.

This is the original hpk-net-daemon's framing and QEMU's `-netdev stream`
framing. The decoder works in place on one preallocated buffer so that the
relay's hot path neither copies nor allocates per frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

LENGTH = struct.Struct(">I")
PREFIX_SIZE = LENGTH.size

#: Ethernet header + 802.1Q tag + the largest IP packet (64 KiB GSO) + a
#: virtio-net header: the largest frame either end ever legitimately sends.
MAX_FRAME = 14 + 4 + 65535 + 12


class FrameError(Exception):
    """The byte stream broke the framing; the connection cannot be trusted."""


def encode(frame: bytes) -> bytes:
    """One frame as it goes on the wire (tests and tools; the relay packs in place)."""
    if not frame:
        raise FrameError("refusing to encode an empty frame")
    return LENGTH.pack(len(frame)) + frame


class FrameDecoder:
    """Splits a byte stream into frames, whatever the read boundaries are.

    Usage: `n = sock.recv_into(dec.space())`, `dec.commit(n)`, then
    `for frame in dec.frames(): ...`. Frames are memoryviews into the
    internal buffer, valid until the next call to `space()`.
    """

    def __init__(self, max_frame: int = MAX_FRAME, buffer_size: int = 1 << 20):
        if buffer_size < max_frame + PREFIX_SIZE:
            raise ValueError("buffer must hold at least one maximal frame")
        self.max_frame = max_frame
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._start = 0  # first byte not yet handed out as a frame
        self._end = 0  # end of valid data

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back (non-zero at EOF = truncated)."""
        return self._end - self._start

    def space(self) -> memoryview:
        """Free room to receive into: at least one maximal frame's worth.

        A partial frame is moved to the front only when the tail is too short,
        so most receives copy nothing in user space.
        """
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._end < self.max_frame + PREFIX_SIZE:
            pending = self._end - self._start
            if pending:
                tail = self._view[self._start : self._end]
                # Overlapping ranges need a copy first (only with small buffers).
                self._buf[:pending] = tail if pending <= self._start else bytes(tail)
            self._start, self._end = 0, pending
        return self._view[self._end :]

    def commit(self, nbytes: int) -> None:
        self._end += nbytes

    def feed(self, data: bytes) -> list[bytes]:
        """Convenience for tests and slow paths: add bytes, return complete frames."""
        out: list[bytes] = []
        view = memoryview(data)
        while view:
            room = self.space()
            n = min(len(room), len(view))
            room[:n] = view[:n]
            self.commit(n)
            view = view[n:]
            out.extend(bytes(f) for f in self.frames())
        return out

    def frames(self) -> Iterator[memoryview]:
        buf, view, max_frame = self._buf, self._view, self.max_frame
        start, end = self._start, self._end
        unpack_from = LENGTH.unpack_from
        while end - start >= PREFIX_SIZE:
            (length,) = unpack_from(buf, start)
            if length == 0 or length > max_frame:
                self._start = self._end = 0  # the rest of the stream is garbage
                raise FrameError(
                    f"bad frame length {length} (allowed 1..{max_frame})"
                )
            stop = start + PREFIX_SIZE + length
            if stop > end:
                break
            self._start = stop
            yield view[start + PREFIX_SIZE : stop]
            start = stop
        self._start = start
