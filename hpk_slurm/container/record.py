"""What the bubble knows about each nested container: one JSON record per container.

Records are written by the hpktainer process that owns the container and
read by `hpktainer ps`, the orphan sweep and the job report. A record whose
owner died without ending it is an orphan: its daemons, link, socket, port
forwards and address lease are cleared by the next hpktainer call or by
the bubble's stop.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpk_slurm.procs import ProcRef


@dataclass
class Published:
    proto: str
    host_port: int
    container_port: int
    slirp_id: int | None = None


@dataclass
class ContainerRecord:
    id: str
    address: str
    gateway: str
    mode: str  # relay | veth
    image: str
    command: list[str]
    owner: ProcRef  # the hpktainer process inside the bubble
    started: float = field(default_factory=time.time)
    holder: ProcRef | None = None  # the container's first process (its namespaces)
    daemons: dict[str, ProcRef] = field(default_factory=dict)  # relay: server, client
    bubble_link: str = ""  # hpk-tap-N (relay) or hpk-veth-N (veth), on hpk-bridge
    socket: str = ""
    published: list[Published] = field(default_factory=list)
    step: str = ""
    rank: str = ""
    name: str = ""  # instances only
    link_counters: dict = field(default_factory=dict)  # veth: the link's final counters, container's view
    ended: float | None = None
    exit_code: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ContainerRecord":
        data = json.loads(text)
        ref = lambda d: ProcRef(**d) if d else None  # noqa: E731
        data["owner"] = ref(data["owner"])
        data["holder"] = ref(data["holder"])
        data["daemons"] = {k: ref(v) for k, v in data["daemons"].items()}
        data["published"] = [Published(**p) for p in data["published"]]
        return cls(**data)

    @property
    def running(self) -> bool:
        return self.ended is None and self.owner.alive()

    @property
    def orphaned(self) -> bool:
        return self.ended is None and not self.owner.alive()


class RecordStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, container_id: str) -> Path:
        return self.folder / f"{container_id}.json"

    def stats_path(self, container_id: str, role: str) -> Path:
        return self.folder / f"{container_id}.{role}.stats.json"

    def save(self, record: ContainerRecord) -> None:
        tmp = self.folder / f".{record.id}.tmp"
        tmp.write_text(record.to_json())
        os.replace(tmp, self.path(record.id))

    def all(self) -> list[ContainerRecord]:
        records = []
        for path in sorted(self.folder.glob("*.json")):
            if path.name.count(".") == 1:
                try:
                    records.append(ContainerRecord.from_json(path.read_text()))
                except (OSError, ValueError, KeyError, TypeError):
                    continue
        return sorted(records, key=lambda r: r.started)

    def stats(self, container_id: str) -> dict:
        """The container side's relay counters (what the container sent and received)."""
        try:
            return json.loads(self.stats_path(container_id, "client").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
