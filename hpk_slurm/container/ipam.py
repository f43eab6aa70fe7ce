"""Addresses for nested containers from the bubble's flannel subnet, one lease file per address.

A lease names its owner (the hpktainer process, by PID and start time). An
allocation takes the lock, reclaims leases whose owner is dead (hpktainer was
killed), then takes the lowest free address. The gateway (hpk-bridge) is
never handed out; a full subnet is an error, not a wait.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from hpk_slurm.errors import HpkError
from hpk_slurm.procs import ProcRef


class SubnetFull(HpkError):
    pass


@dataclass(frozen=True)
class Lease:
    address: str
    container_id: str
    owner: ProcRef

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Lease":
        data = json.loads(text)
        return cls(data["address"], data["container_id"], ProcRef(**data["owner"]))


class Ipam:
    def __init__(self, folder: Path, subnet: ipaddress.IPv4Interface):
        self.folder = Path(folder)
        self.subnet = subnet  # gateway address with the prefix, as in FLANNEL_SUBNET
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    @contextmanager
    def _locked(self):
        with open(self.folder / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _path(self, address: str) -> Path:
        return self.folder / address

    def leases(self) -> list[Lease]:
        found = []
        for path in self.folder.iterdir():
            if path.name[0].isdigit():
                try:
                    found.append(Lease.from_json(path.read_text()))
                except (OSError, ValueError, KeyError):
                    continue
        return found

    def stale(self) -> list[Lease]:
        """Leases whose owner is gone: their containers' resources need clearing too."""
        return [lease for lease in self.leases() if not lease.owner.alive()]

    def allocate(self, container_id: str, owner: ProcRef) -> Lease:
        with self._locked():
            for lease in self.stale():
                self._path(lease.address).unlink(missing_ok=True)
            taken = {lease.address for lease in self.leases()}
            for host in self.subnet.network.hosts():
                address = str(host)
                if host == self.subnet.ip or address in taken:
                    continue
                lease = Lease(address, container_id, owner)
                tmp = self.folder / f".{address}.tmp"
                tmp.write_text(lease.to_json())
                os.replace(tmp, self._path(address))
                return lease
        raise SubnetFull(
            f"no free address in {self.subnet.network}: {len(taken)} containers hold one in this bubble",
            "stop some containers, or use a larger --subnet-len for the job's overlay",
        )

    def release(self, lease: Lease) -> None:
        with self._locked():
            path = self._path(lease.address)
            try:
                if Lease.from_json(path.read_text()).container_id == lease.container_id:
                    path.unlink()
            except FileNotFoundError:
                pass
