"""A TCP transfer whose bytes are checked end to end: `serve` and `send` print size and SHA-256.

Run inside test namespaces: `python -m hpk_slurm.testbed.tcpcheck serve 10.77.0.2 5001`
and `... send 10.77.0.2 5001 10000000`. The data is pseudo-random (seeded), so
a relay that reorders, duplicates or corrupts any byte changes the digest.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sys
import time


def accept_one(host: str, port: int, timeout: float = 60, rcvbuf: int | None = None) -> socket.socket:
    """Listen, say "listening" on stdout (tests wait for it), and take one connection."""
    with socket.create_server((host, port)) as server:
        if rcvbuf:  # set before accept, so the connection's window starts small
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        server.settimeout(timeout)
        print("listening", flush=True)
        conn, _ = server.accept()
    conn.settimeout(timeout)
    return conn


def serve(host: str, port: int, timeout: float = 60, delay: float = 0, rcvbuf: int | None = None) -> dict:
    """Receive until EOF; `delay` and a small `rcvbuf` keep the sender's data queued at its end."""
    with accept_one(host, port, timeout, rcvbuf) as conn:
        time.sleep(delay)
        digest, total = hashlib.sha256(), 0
        while chunk := conn.recv(1 << 20):
            digest.update(chunk)
            total += len(chunk)
    return {"bytes": total, "sha256": digest.hexdigest()}


def send(host: str, port: int, size: int, seed: int = 1, timeout: float = 60) -> dict:
    rng = random.Random(seed)
    digest, left = hashlib.sha256(), size
    with socket.create_connection((host, port), timeout=timeout) as conn:
        while left:
            chunk = rng.randbytes(min(left, 1 << 18))
            conn.sendall(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


if __name__ == "__main__":
    verb, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if verb == "serve":  # serve HOST PORT [DELAY RCVBUF]
        extra = sys.argv[4:6]
        result = serve(host, port, delay=float(extra[0]) if extra else 0, rcvbuf=int(extra[1]) if len(extra) > 1 else None)
    else:
        result = send(host, port, int(sys.argv[4]))
    print(json.dumps(result), flush=True)
