"""One node's part of a job's network report, read from the bubble's run folder (from outside it).

Collected by the epilog before the bubble is stopped, and on demand.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from pyroute2 import IPRoute

from hpk_slurm.bubble import manager
from hpk_slurm.container.datapath import in_netns
from hpk_slurm.container.record import RecordStore
from hpk_slurm.errors import HpkError

SCHEMA_VERSION = 1


def _flannel_peers(vni: int) -> list[dict]:
    """In the bubble's network namespace: the other bubbles flannel learned (route, VTEP MAC, host)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=f"flannel.{vni}")
        if not found:
            return []
        index = found[0]
        macs = {n.get_attr("NDA_DST"): n.get_attr("NDA_LLADDR") for n in ipr.get_neighbours(ifindex=index, family=2)}
        hosts = {n.get_attr("NDA_LLADDR"): n.get_attr("NDA_DST") for n in ipr.fdb("dump", ifindex=index)}
        peers = []
        for route in ipr.get_routes(family=2, oif=index):
            gateway = route.get_attr("RTA_GATEWAY")
            if gateway:  # a peer's subnet, via its VTEP address
                mac = macs.get(gateway)
                peers.append({"subnet": f"{route.get_attr('RTA_DST')}/{route['dst_len']}", "vtep_mac": mac,
                              "host": hosts.get(mac)})
    return sorted(peers, key=lambda p: p["subnet"])


def overlay_peers(bubble: dict) -> list[dict]:
    """The overlay peers a running bubble has seen; [] when it is not running."""
    pid = bubble.get("pids", {}).get("bubble")
    if not pid or not bubble.get("vni"):
        return []
    try:
        return in_netns(f"/proc/{pid}/ns/net", _flannel_peers, bubble["vni"])
    except (OSError, HpkError):
        return []


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
