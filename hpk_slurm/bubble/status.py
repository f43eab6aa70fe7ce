"""What a bubble's init tells the outside world: status.json in the run folder.

Kept apart from the init itself so that tools outside the bubble read it
without importing what the init needs (netlink and so on).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpk_slurm.bubble.spec import BubbleSpec


@dataclass
class Status:
    """What the init tells the outside world (status.json in the run folder)."""

    phase: str = "starting"  # starting | ready | failed | stopping | stopped
    error: str = ""
    flannel_subnet: str = ""
    flannel_network: str = ""
    flannel_mtu: int = 0
    children: dict[str, int] = field(default_factory=dict)  # name -> PID inside the bubble
    lease_released: bool = False
    peers_seen: list[dict] = field(default_factory=list)  # every other bubble flannel learned, kept
    updated: float = 0.0

    def write(self, path: Path) -> None:
        self.updated = time.time()
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> "Status | None":
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None


def status_path(spec: BubbleSpec) -> Path:
    return spec.run_dir / "status.json"


def tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
