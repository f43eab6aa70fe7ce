"""What one hand-off between two processes costs on this machine, for bench-relay.

A ping through the relay wakes a sleeping daemon at each of its hops; the
kernel path wakes nobody. This measures the bare price of such wakeups: a
100-byte message bounced between two Python processes over a UNIX socket
pair, both pinned to one CPU or to two different CPUs, back to back and
after a 10 ms pause (the ping interval bench-relay uses), so the relay's
ping figures can be read against it.

    python -m hpk_slurm.testbed.handoff [ROUNDS]   -> one JSON line
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import time

MESSAGE = b"x" * 100


def _echo(sock: socket.socket, cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    while data := sock.recv(2048):
        sock.send(data)


def round_trip_us(cpus: tuple[int, int], rounds: int, pause: float) -> float:
    """Median round trip in µs between a process on cpus[0] and an echoing one on cpus[1]."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the echo side: never returns into the caller's code
        code = 0
        try:
            ours.close()
            _echo(theirs, cpus[1])
        except BaseException:
            code = 1
        os._exit(code)
    theirs.close()
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpus[0]})
        samples = []
        for _ in range(rounds):
            if pause:
                time.sleep(pause)
            start = time.perf_counter()
            ours.send(MESSAGE)
            ours.recv(2048)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1e6
    finally:
        os.sched_setaffinity(0, before)
        ours.close()  # the echo side sees EOF and exits
        os.waitpid(pid, 0)


def measure(rounds: int = 300) -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    placements = {"one CPU": (cpus[-1], cpus[-1])}
    if len(cpus) > 1:
        placements["two CPUs"] = (cpus[0], cpus[-1])
    return {name: {"back_to_back_us": round_trip_us(pair, rounds, 0.0),
                   "after_10ms_us": round_trip_us(pair, rounds, 0.01)}
            for name, pair in placements.items()}


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 300)))
