"""The site's configuration: one TOML file (/etc/hpk/hpk.toml, or HPK_CONFIG), validated at load.

Every key is optional; errors name the key. Example (all defaults shown):

    [paths]
    run_root = "/run/hpk/users"      # job bubbles: <run_root>/<uid>/hpk-<jobid>
    report_dir = "/var/lib/hpk/reports"
    report_keep_days = 0             # the epilog prunes job reports older than this; 0 keeps them

    [etcd]
    endpoints = []                   # the site's etcd cluster; empty = a job-local etcd on the first node

    [overlay]
    network = "10.244.0.0/16"        # each job's overlay (jobs are isolated by VNI and port, not by range)
    subnet_len = 24
    vxlan_port_base = 40000          # a job's VXLAN port = base + jobid % port_range
    etcd_port_base = 30000           # a job-local etcd's host port = base + jobid % port_range
    port_range = 10000

    [bubble]
    runtime = "auto"                 # auto | embedded | apptainer
    image = ""                       # Apptainer image of the bubble
    start_timeout = 60               # seconds; keep below Slurm's PrologEpilogTimeout
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from hpk_slurm.errors import HpkError

DEFAULT_PATH = Path("/etc/hpk/hpk.toml")


@dataclass(frozen=True)
class Paths:
    run_root: str = "/run/hpk/users"
    report_dir: str = "/var/lib/hpk/reports"
    report_keep_days: int = 0


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class OverlayConfig:
    network: str = "10.244.0.0/16"
    subnet_len: int = 24
    vxlan_port_base: int = 40000
    etcd_port_base: int = 30000
    port_range: int = 10000


@dataclass(frozen=True)
class BubbleConfig:
    runtime: str = "auto"
    image: str = ""
    start_timeout: float = 60.0


@dataclass(frozen=True)
class SiteConfig:
    paths: Paths = field(default_factory=Paths)
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    bubble: BubbleConfig = field(default_factory=BubbleConfig)
    source: str = "(defaults)"


_SECTIONS = {"paths": Paths, "etcd": EtcdConfig, "overlay": OverlayConfig, "bubble": BubbleConfig}


def _section(name: str, cls, data: dict, source: str):
    if not isinstance(data, dict):
        raise HpkError(f"{source}: [{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in known:
            raise HpkError(f"{source}: unknown key {name}.{key}", f"known keys: {', '.join(sorted(known))}")
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise HpkError(f"{source}: {name}.{key} must be a list of strings")
            value = tuple(value)
        elif isinstance(default, bool) or not isinstance(value, type(default)) and not (
                isinstance(default, float) and isinstance(value, int)):
            raise HpkError(f"{source}: {name}.{key} must be {type(default).__name__}, not {type(value).__name__}")
        values[key] = value
    return cls(**values)


def _validate(cfg: SiteConfig) -> None:
    src, o = cfg.source, cfg.overlay
    try:
        net = ipaddress.IPv4Network(o.network)
    except ValueError as exc:
        raise HpkError(f"{src}: overlay.network: {exc}") from None
    if not net.prefixlen < o.subnet_len <= 30:
        raise HpkError(f"{src}: overlay.subnet_len /{o.subnet_len} does not fit in {o.network}")
    for key in ("vxlan_port_base", "etcd_port_base"):
        base = getattr(o, key)
        if not 1024 <= base or base + o.port_range > 65536:
            raise HpkError(f"{src}: overlay.{key} = {base}: with port_range {o.port_range} it leaves 1024..65535")
    if abs(o.vxlan_port_base - o.etcd_port_base) < o.port_range:
        raise HpkError(f"{src}: overlay.vxlan_port_base and etcd_port_base ranges overlap",
                       f"keep them at least port_range ({o.port_range}) apart")
    if cfg.bubble.runtime not in ("auto", "embedded", "apptainer", "singularity"):
        raise HpkError(f"{src}: bubble.runtime = {cfg.bubble.runtime!r}: use auto, embedded or apptainer")
    if cfg.paths.report_keep_days < 0:
        raise HpkError(f"{src}: paths.report_keep_days must be 0 (keep) or a number of days")
    for key in ("run_root", "report_dir"):
        if not os.path.isabs(getattr(cfg.paths, key)):
            raise HpkError(f"{src}: paths.{key} must be an absolute path")
    for endpoint in cfg.etcd.endpoints:
        if not endpoint.startswith(("http://", "https://")):
            raise HpkError(f"{src}: etcd.endpoints: {endpoint!r} is not an http(s) URL")


def load_config(path: str | Path | None = None) -> SiteConfig:
    """HPK_CONFIG, else /etc/hpk/hpk.toml; a missing default file means all defaults."""
    explicit = path or os.environ.get("HPK_CONFIG")
    target = Path(explicit) if explicit else DEFAULT_PATH
    if not target.exists():
        if explicit:
            raise HpkError(f"configuration file {target} not found (HPK_CONFIG)")
        return SiteConfig()
    try:
        data = tomllib.loads(target.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise HpkError(f"{target}: not valid TOML: {exc}") from None
    unknown = set(data) - set(_SECTIONS)
    if unknown:
        raise HpkError(f"{target}: unknown section(s) {', '.join(sorted(unknown))}",
                       f"known sections: {', '.join(_SECTIONS)}")
    parts = {name: _section(name, cls, data.get(name, {}), str(target)) for name, cls in _SECTIONS.items()}
    cfg = SiteConfig(**parts, source=str(target))
    _validate(cfg)
    return cfg
