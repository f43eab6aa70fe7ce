"""What a bubble is: its identity, addresses and overlay, derived and validated in one place.

Every input (an ID from the command line or the environment, a path) is
checked here before anything is created.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpk_slurm.errors import HpkError
from hpk_slurm.net.slirp import SlirpNetwork
from hpk_slurm.overlay.flannel import NetworkConfig

MAX_ID = 253  # slirp CIDR 10.0.(ID+1).0/24
ETCD_CLIENT_PORT = 2379  # inside the bubble; the host side is `etcd_port`
LOCAL_ETCD = (f"http://127.0.0.1:{ETCD_CLIENT_PORT}",)  # a controller's own etcd, seen from inside
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")


def parse_id(value: str | int) -> int:
    text = str(value).strip()
    if not re.fullmatch(r"\d{1,3}", text) or int(text) > MAX_ID:
        raise HpkError(f"invalid bubble ID {value!r}", f"use an integer from 0 to {MAX_ID}")
    return int(text)


def default_run_root() -> Path:
    """/run/hpk for root; the user's runtime folder otherwise (never a shared, writable path)."""
    if os.geteuid() == 0:
        return Path("/run/hpk")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir() and Path(xdg).stat().st_uid == os.geteuid():
        return Path(xdg) / "hpk"
    return Path(f"/tmp/hpk-{os.geteuid()}")


@dataclass(frozen=True)
class BubbleSpec:
    id: int
    host_ip: str
    controller: bool  # writes the network config (the seed's HPK_ROLE=controller)
    etcd_endpoints: tuple[str, ...]  # as seen from inside the bubble
    etcd_prefix: str = "/hpk/network"
    network: NetworkConfig = field(default_factory=NetworkConfig)
    etcd_port: int = ETCD_CLIENT_PORT  # host port forwarded to this bubble's etcd, when it hosts it
    name: str = ""
    run_dir: Path = Path()
    runtime: str = "embedded"
    image: str | None = None
    start_timeout: float = 60.0
    host_etcd: bool | None = None  # run the job's etcd here; default: a controller without a site etcd

    def __post_init__(self) -> None:
        parse_id(self.id)
        try:
            ipaddress.IPv4Address(self.host_ip)
        except ValueError:
            raise HpkError(f"invalid host IP {self.host_ip!r}", "give the node's IPv4 address (--host-ip or HOST_IP)") from None
        if not self.name:
            object.__setattr__(self, "name", f"bubble{self.id}")
        if not _NAME.match(self.name):
            raise HpkError(f"invalid bubble name {self.name!r}")
        if not _PREFIX.match(self.etcd_prefix):
            raise HpkError(f"invalid etcd prefix {self.etcd_prefix!r}", "use an absolute key path like /hpk/job42/network")
        if not 1024 <= self.etcd_port <= 65535:
            raise HpkError(f"etcd port {self.etcd_port} out of range", "use 1024..65535 (unprivileged)")
        if not self.etcd_endpoints:
            raise HpkError("no etcd endpoints", "host etcd in this bubble (--controller) or give --etcd-endpoints / ETCD_IP")
        if self.host_etcd is None:
            object.__setattr__(self, "host_etcd", self.controller and self.etcd_endpoints == LOCAL_ETCD)
        if not self.run_dir.parts:
            object.__setattr__(self, "run_dir", default_run_root() / self.name)

    @property
    def slirp(self) -> SlirpNetwork:
        return SlirpNetwork(ipaddress.IPv4Network(f"10.0.{self.id + 1}.0/24"))

    @property
    def config_key(self) -> str:
        return f"{self.etcd_prefix}/config"

    # -- files in the run folder ------------------------------------------------
    @property
    def spec_file(self) -> Path:
        return self.run_dir / "spec.json"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def subnet_file(self) -> Path:
        return self.run_dir / "subnet.env"

    @property
    def slirp_socket(self) -> Path:
        return self.run_dir / "slirp.sock"

    @property
    def socket_dir(self) -> Path:
        """Where nested containers' relay sockets live (0700)."""
        return self.run_dir / "sock"

    def log_file(self, what: str) -> Path:
        return self.run_dir / f"{what}.log"

    # -- persistence ----------------------------------------------------------------
    def to_json(self) -> str:
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        data["etcd_endpoints"] = list(self.etcd_endpoints)
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "BubbleSpec":
        data = json.loads(text)
        data["network"] = NetworkConfig(**data["network"])
        data["run_dir"] = Path(data["run_dir"])
        data["etcd_endpoints"] = tuple(data["etcd_endpoints"])
        return cls(**data)

    @classmethod
    def load(cls, run_dir: Path) -> "BubbleSpec":
        return cls.from_json((Path(run_dir) / "spec.json").read_text())
