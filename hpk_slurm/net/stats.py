"""Relay counters, readable while the daemon runs (for `hpktainer ps` and the job report)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class RelayStats:
    """Cumulative over the daemon's life; each direction is written by one thread only."""

    role: str
    tap: str
    socket: str
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    connected: bool = False
    mode: str = ""  # "offload" or "plain" for the current connection
    peer_pid: int | None = None
    connects: int = 0
    # tap -> socket (what the local side sent)
    tx_frames: int = 0
    tx_bytes: int = 0
    # socket -> tap (what the peer sent)
    rx_frames: int = 0
    rx_bytes: int = 0
    rx_drops: int = 0  # frames the TAP refused (malformed, or no room in the kernel)
    errors: int = 0  # connections ended by a protocol error (bad hello, bad length, truncation)
    last_error: str = ""

    def snapshot(self) -> dict:
        data = asdict(self)
        data["updated"] = time.time()
        return data


def write_stats(stats: RelayStats, path: Path) -> None:
    """Replace the file atomically so readers never see half a JSON document."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stats.snapshot(), sort_keys=True) + "\n")
    os.replace(tmp, path)


class StatsWriter(threading.Thread):
    """Rewrites the stats file every `interval` seconds until stopped."""

    def __init__(self, stats: RelayStats, path: Path, interval: float = 1.0):
        super().__init__(name="stats-writer", daemon=True)
        self.stats, self.path, self.interval = stats, path, interval
        self._stop_event = threading.Event()
        self._lock = threading.Lock()  # flush() is also called from the relay's thread

    def run(self) -> None:
        self.flush()
        while not self._stop_event.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            try:
                write_stats(self.stats, self.path)
            except OSError:
                pass  # the folder went away during teardown; nothing to report to

    def stop(self) -> None:
        self._stop_event.set()
        self.flush()
