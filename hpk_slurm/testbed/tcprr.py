"""TCP request/response round trips: 1-byte ping-pong over one connection, timed per round trip.

Run inside test namespaces: `python -m hpk_slurm.testbed.tcprr serve 10.77.0.2 5301`
(prints "listening", echoes every byte back until the peer closes) and
`... run 10.77.0.2 5301 2000`, which prints JSON: count, mean_us, p50_us,
p99_us, min_us, max_us. TCP_NODELAY is on at both ends, so each round trip is
one small segment each way; a short warm-up is not counted.
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import time

from hpk_slurm.testbed.tcpcheck import accept_one

WARMUP = 50


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def serve(host: str, port: int, timeout: float = 60) -> dict:
    """Echo one connection byte for byte until it closes; the number of bytes echoed."""
    with accept_one(host, port, timeout) as conn:
        _nodelay(conn)
        echoed = 0
        while data := conn.recv(64):
            conn.sendall(data)
            echoed += len(data)
    return {"echoed": echoed}


def _round_trip(conn: socket.socket) -> int:
    """One 1-byte request and its 1-byte answer, in nanoseconds."""
    start = time.perf_counter_ns()
    conn.sendall(b"x")
    if not conn.recv(1):
        raise ConnectionError("server closed the connection")
    return time.perf_counter_ns() - start


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(host: str, port: int, count: int, timeout: float = 60) -> dict:
    """`count` timed round trips (after a warm-up); statistics in microseconds."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        _nodelay(conn)
        for _ in range(WARMUP):
            _round_trip(conn)
        samples = sorted(_round_trip(conn) / 1000 for _ in range(count))
    return {
        "count": count,
        "mean_us": round(statistics.fmean(samples), 2),
        "p50_us": round(_percentile(samples, 0.50), 2),
        "p99_us": round(_percentile(samples, 0.99), 2),
        "min_us": round(samples[0], 2),
        "max_us": round(samples[-1], 2),
    }


def main(argv: list[str]) -> int:
    usage = "usage: python -m hpk_slurm.testbed.tcprr serve HOST PORT | run HOST PORT COUNT"
    if len(argv) < 3 or argv[0] not in ("serve", "run") or (argv[0] == "run") != (len(argv) == 4):
        print(usage, file=sys.stderr)
        return 2
    verb, host, port = argv[0], argv[1], int(argv[2])
    result = serve(host, port) if verb == "serve" else run(host, port, int(argv[3]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
