"""One node's part of a job's network report, read from the bubble's run folder (from outside it).

Collected by the epilog before the bubble is stopped, and on demand.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from hpk_slurm.bubble import manager
from hpk_slurm.container.datapath import in_netns
from hpk_slurm.container.record import RecordStore
from hpk_slurm.errors import HpkError
from hpk_slurm.overlay.flannel import learned_peers

SCHEMA_VERSION = 1


def overlay_peers(bubble: dict) -> list[dict]:
    """Every overlay peer the bubble saw during the job (its init keeps them), plus any it knows now.

    The history matters: at the job's end the other nodes' epilogs give their
    leases back, and flannel forgets them, perhaps before this node's epilog runs.
    """
    peers = {p["subnet"]: p for p in bubble.get("peers_seen", [])}
    pid = bubble.get("pids", {}).get("bubble")
    if pid and bubble.get("vni"):
        try:
            for p in in_netns(f"/proc/{pid}/ns/net", learned_peers, bubble["vni"]):
                peers.setdefault(p["subnet"], p)
        except (OSError, HpkError):
            pass
    return sorted(peers.values(), key=lambda p: p["subnet"])


def node_report(run_dir: Path, node: str, errors: list[str] | None = None) -> dict:
    bubble = manager.describe(run_dir) if (run_dir / "spec.json").is_file() else {}
    if bubble:
        bubble["peers"] = overlay_peers(bubble)
    store = RecordStore(run_dir / "containers") if (run_dir / "containers").is_dir() else None
    containers = []
    for record in store.all() if store else []:
        entry = asdict(record)
        entry["relay"] = store.stats(record.id) if record.mode == "relay" else {}
        entry["link"] = record.link_counters  # veth: kept at teardown
        containers.append(entry)
    return {
        "schema": SCHEMA_VERSION,
        "node": node,
        "collected": time.time(),
        "bubble": bubble,
        "containers": containers,
        "errors": list(errors or []) + ([bubble["error"]] if bubble.get("error") else []),
    }


def report_folder(report_dir: Path, job_id: int) -> Path:
    """<report_dir>/<jobid>: root's and not listable by others; each file readable by the job's user only."""
    report_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    folder = report_dir / str(job_id)
    folder.mkdir(mode=0o711, exist_ok=True)
    if folder.is_symlink() or os.lstat(folder).st_uid != os.geteuid():
        raise PermissionError(f"{folder} is not ours")
    return folder


def to_json(report: dict) -> str:
    return json.dumps(report, indent=1, sort_keys=True, default=str)
