"""A job's network report: its nodes' files (collect.node_report, written by the epilog) merged into one.

Input: one file per node, <report_dir>/<jobid>/<node>.json (node schema 1, see
collect.py). Output: a `JobReport`, whose `to_dict()` is the versioned JSON
document described by schema.json beside this module (draft 2020-12):

    {
      "schema": "hpk-slurm/job-network-report", "version": 1,
      "job_id": 42, "generated": <epoch s>,
      "source": {"report_dir": "...", "files": ["..."], "missing_nodes": [...], "live": false},
      "overlay": {"network", "vni", "vxlan_port", "etcd_endpoints", "etcd_prefix"},
      "problems": [{"severity": "error"|"warning", "kind", "node", "container", "message", "time"}],
      "nodes": [NodeRow ...],          # one per node file, in node order
      "containers": [ContainerRow ...],  # every container of every node, by step, rank, node
      "totals": Totals
    }

Problems come first and errors before warnings: node errors, bubbles that
failed or were gone when the report was collected, containers with a non-zero
or missing exit code, dropped frames, relay protocol errors, nodes that
disagree on the overlay, and nodes of the job that sent no report.

Counters are in the container's view: tx = what it sent, rx = what it
received. Relay containers: the hpk-net-daemon's bytes and frames (with
offloads one frame carries up to 64 KiB), drops = frames its TAP refused.
veth containers: the link's bytes and packets, read at teardown. A container
without counters has them null and left out of the totals.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpk_slurm.errors import HpkError
from hpk_slurm.report.collect import SCHEMA_VERSION as NODE_SCHEMA_VERSION

REPORT_SCHEMA = "hpk-slurm/job-network-report"
REPORT_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("schema.json")
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
MAX_NODE_FILE = 64 * 1024 * 1024  # a node file is a few kB per container


class ReportError(HpkError):
    """The report cannot be read: no such job, no permission, a malformed file."""


# -- the merged report ------------------------------------------------------------------------


@dataclass
class Problem:
    severity: str  # error | warning
    kind: str  # node_error | bubble_failed | bubble_gone | node_missing | overlay_mismatch | exit_code | no_exit_code | drops | relay_errors
    message: str
    node: str | None = None
    container: str | None = None
    time: float | None = None


@dataclass
class NodeRow:
    node: str
    bubble: str | None  # hpk-<jobid>; None when the node has no bubble (the prolog could not start it)
    bubble_id: int | None
    role: str | None  # controller (hosts the job's etcd) | node
    state: str | None  # ready | failed | stopped | ... when collected
    runtime: str | None
    host_ip: str | None
    slirp_cidr: str | None
    flannel_subnet: str | None  # the node's subnet, e.g. 10.244.84.0/24
    bridge_ip: str | None  # hpk-bridge, the containers' gateway
    mtu: int | None
    vni: int | None
    vxlan_port: int | None  # UDP
    etcd_endpoints: list[str]
    started: float | None  # the bubble's start
    collected: float | None  # when the node's report was taken: the epilog does it just before it stops the bubble
    containers: int
    tx_bytes: int
    rx_bytes: int
    tx_frames: int
    rx_frames: int
    drops: int
    errors: list[str]
    file: str
    peers: list[dict]  # the other bubbles this one's flanneld knew: subnet, VTEP MAC, host


@dataclass
class ContainerRow:
    node: str
    id: str
    name: str
    step: str
    rank: str
    ip: str
    gateway: str
    mode: str  # relay | veth
    image: str
    command: list[str]
    started: float | None
    ended: float | None
    exit_code: int | None
    counters: str  # relay (hpk-net-daemon) | link (veth, kept at teardown) | none
    tx_bytes: int | None
    rx_bytes: int | None
    tx_frames: int | None
    rx_frames: int | None
    drops: int | None
    relay_errors: int | None
    last_error: str
    published: list[str]


@dataclass
class Totals:
    nodes: int = 0
    nodes_failed: int = 0
    containers: int = 0
    containers_failed: int = 0  # non-zero exit code
    containers_counted: int = 0  # with counters (relay or link)
    tx_bytes: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    rx_frames: int = 0
    drops: int = 0
    relay_errors: int = 0
    errors: int = 0  # problems of severity error
    warnings: int = 0


@dataclass
class JobReport:
    job_id: int
    generated: float
    source: dict
    overlay: dict
    problems: list[Problem] = field(default_factory=list)
    nodes: list[NodeRow] = field(default_factory=list)
    containers: list[ContainerRow] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)

    def to_dict(self) -> dict:
        return {"schema": REPORT_SCHEMA, "version": REPORT_VERSION, "job_id": self.job_id,
                "generated": self.generated, "source": self.source, "overlay": self.overlay,
                "problems": [asdict(p) for p in self.problems], "nodes": [asdict(n) for n in self.nodes],
                "containers": [asdict(c) for c in self.containers], "totals": asdict(self.totals)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def load_schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


# -- reading the node files ---------------------------------------------------------------------


def job_folder(report_dir: Path, job_id: int) -> Path:
    return Path(report_dir) / str(job_id)


def read_node_file(path: Path) -> dict:
    """One node's file, checked; every failure names the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError:
        raise ReportError(f"cannot read {path}: permission denied",
                          "a job's report is readable by the job's user and root only") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ReportError(f"{path} is a symbolic link, not a report") from None
        raise ReportError(f"cannot read {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ReportError(f"{path} is not a regular file")
            raw = f.read(MAX_NODE_FILE + 1)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_NODE_FILE:
        raise ReportError(f"{path}: malformed report: larger than {MAX_NODE_FILE} bytes")
    try:
        data = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: malformed report: not JSON ({exc})") from None
    problem = check_node_report(data)
    if problem:
        raise ReportError(f"{path}: malformed report: {problem}")
    return data


def check_node_report(data) -> str | None:
    """What is wrong with a node report (collect.node_report's shape), or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("schema") != NODE_SCHEMA_VERSION:
        return f"node report schema {data.get('schema')!r}, this hpktainer reads {NODE_SCHEMA_VERSION}"
    expect = {"node": str, "bubble": dict, "containers": list, "errors": list}
    for key, kind in expect.items():
        if not isinstance(data.get(key), kind):
            return f"'{key}' is missing or not a {kind.__name__}"
    if not NODE_NAME.match(data["node"]):
        return f"node name {data['node']!r} is not valid"
    if not isinstance(data.get("collected", 0), (int, float)):
        return "'collected' is not a time"
    for index, entry in enumerate(data["containers"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            return f"containers[{index}] has no id"
        for key in ("relay",):
            if not isinstance(entry.get(key, {}), dict):
                return f"containers[{index}].{key} is not an object"
        for key in ("started", "ended", "exit_code"):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return f"containers[{index}].{key} is not a number"
    return None


def load_job(report_dir: Path, job_id: int, nodes: list[str] | None = None, now: float | None = None) -> JobReport:
    """Read and merge the job's node files. `nodes`: the job's nodes, needed when the folder cannot be
    listed (it is 0711: users open their files by name); nodes without a file are reported as problems."""
    report_dir = Path(report_dir)
    folder = job_folder(report_dir, job_id)
    try:
        os.stat(folder)
    except FileNotFoundError:
        where = report_dir if report_dir.is_dir() else f"{report_dir} (which does not exist)"
        raise ReportError(f"no report for job {job_id} in {where}",
                          "the epilog writes it when the job ends; check the job ID, or give --report-dir") from None
    except PermissionError:
        raise ReportError(f"cannot read the reports of job {job_id} in {report_dir}: permission denied") from None
    for name in nodes or []:
        if not NODE_NAME.match(name):
            raise ReportError(f"{name!r} is not a node name")
    try:
        listed = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
    except PermissionError:
        listed = None
    except NotADirectoryError:
        raise ReportError(f"{folder} is not a folder") from None
    if listed is None and not nodes:
        raise ReportError(f"cannot list {folder} (permission denied), and the job's nodes are unknown",
                          "give them with --nodes, or run it where Slurm still knows the job (scontrol)")
    wanted = list(dict.fromkeys([*(nodes or []), *(listed or [])]))
    found, missing = [], []
    for name in wanted:
        path = folder / f"{name}.json"
        if listed is not None and name not in listed:
            missing.append(name)
            continue
        try:
            data = read_node_file(path)
            if data["node"] != name:
                raise ReportError(f"{path}: malformed report: it says it is node {data['node']!r}")
            found.append((str(path), data))
        except ReportError as exc:
            if listed is None and not os.path.lexists(path):
                missing.append(name)
                continue
            raise exc
    if not found:
        raise ReportError(f"no node reports for job {job_id} in {folder}"
                          + (f" (looked for {', '.join(n + '.json' for n in missing)})" if missing else ""),
                          "the epilog writes them when the job ends")
    return merge(job_id, found, missing=missing, report_dir=str(report_dir), now=now)


# -- merging ----------------------------------------------------------------------------------


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _opt_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _network(subnet: str | None) -> tuple[str | None, str | None]:
    """flannel's FLANNEL_SUBNET (gateway/prefix) as (network, gateway)."""
    if not subnet:
        return None, None
    try:
        iface = ipaddress.IPv4Interface(subnet)
    except ValueError:
        return subnet, None
    return str(iface.network), str(iface.ip)


def _error_text(entry) -> tuple[str, float | None]:
    if isinstance(entry, dict):
        return _str(entry.get("message") or entry.get("error") or entry), _num(entry.get("time"))
    return _str(entry), None


def _sort_key(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def _container_row(node: str, entry: dict) -> ContainerRow:
    relay = entry.get("relay") or {}
    link = entry.get("link") or {}
    source = "relay" if entry.get("mode") == "relay" and relay else "link" if entry.get("mode") == "veth" and link else "none"
    values = relay if source == "relay" else link
    counted = source != "none"
    count = (lambda key: _int(values.get(key))) if counted else (lambda key: None)  # noqa: E731
    published = []
    for p in entry.get("published") or []:
        if isinstance(p, dict):
            published.append(f"{p.get('host_port')}:{p.get('container_port')}/{p.get('proto')}")
    command = entry.get("command")
    return ContainerRow(
        node=node, id=_str(entry.get("id")), name=_str(entry.get("name")), step=_str(entry.get("step")),
        rank=_str(entry.get("rank")), ip=_str(entry.get("address")).split("/")[0], gateway=_str(entry.get("gateway")),
        mode=_str(entry.get("mode")), image=_str(entry.get("image")),
        command=[_str(c) for c in command] if isinstance(command, list) else [_str(command)] if command else [],
        started=_num(entry.get("started")), ended=_num(entry.get("ended")), exit_code=_opt_int(entry.get("exit_code")),
        counters=source, tx_bytes=count("tx_bytes"), rx_bytes=count("rx_bytes"),
        tx_frames=count("tx_frames"), rx_frames=count("rx_frames"), drops=count("rx_drops"),
        relay_errors=_int(relay.get("errors")) if source == "relay" else None,
        last_error=_str(relay.get("last_error")) if source == "relay" else "",
        published=published,
    )


def _node_row(data: dict, file: str, containers: list[ContainerRow]) -> NodeRow:
    bubble = data["bubble"]
    subnet, bridge = _network(bubble.get("flannel_subnet") or None)
    endpoints = bubble.get("etcd_endpoints")
    return NodeRow(
        node=data["node"], bubble=bubble.get("name") or None, bubble_id=_opt_int(bubble.get("id")),
        role=bubble.get("role") or None, state=bubble.get("state") or None, runtime=bubble.get("runtime") or None,
        host_ip=bubble.get("host_ip") or None, slirp_cidr=bubble.get("slirp_cidr") or None,
        flannel_subnet=subnet, bridge_ip=bridge, mtu=_opt_int(bubble.get("flannel_mtu")),
        vni=_opt_int(bubble.get("vni")), vxlan_port=_opt_int(bubble.get("vxlan_port")),
        etcd_endpoints=[_str(e) for e in endpoints] if isinstance(endpoints, list) else [],
        started=_num(bubble.get("started")), collected=_num(data.get("collected")),
        containers=len(containers),
        tx_bytes=sum(c.tx_bytes or 0 for c in containers), rx_bytes=sum(c.rx_bytes or 0 for c in containers),
        tx_frames=sum(c.tx_frames or 0 for c in containers), rx_frames=sum(c.rx_frames or 0 for c in containers),
        drops=sum(c.drops or 0 for c in containers),
        errors=[_error_text(e)[0] for e in data["errors"]], file=file,
        peers=[{"subnet": _str(p.get("subnet")), "host": p.get("host") and _str(p.get("host")),
                "vtep_mac": p.get("vtep_mac") and _str(p.get("vtep_mac"))}
               for p in bubble.get("peers", []) if isinstance(p, dict)],
    )


def _exit_text(code: int) -> str:
    return f"exit code {code}" + (f" (signal {code - 128})" if 128 < code < 160 else "")


def merge(job_id: int, node_files: list[tuple[str, dict]], missing: list[str] | tuple = (),
          report_dir: str = "", now: float | None = None, live: bool = False) -> JobReport:
    """Merge checked node reports [(file, data)] (see check_node_report) into the job's report."""
    problems: list[Problem] = []
    nodes: list[NodeRow] = []
    containers: list[ContainerRow] = []
    for file, data in sorted(node_files, key=lambda item: _sort_key(item[1]["node"])):
        node, bubble = data["node"], data["bubble"]
        rows = [_container_row(node, entry) for entry in data["containers"]]
        row = _node_row(data, file, rows)
        nodes.append(row)
        containers.extend(rows)
        bubble_error = _str(bubble.get("error"))
        if not bubble:
            first = _error_text(data["errors"][0])[0] if data["errors"] else "no bubble was found on this node"
            problems.append(Problem("error", "bubble_failed", f"no bubble: {first}", node))
        elif bubble.get("state") == "failed":
            problems.append(Problem("error", "bubble_failed",
                                    f"bubble {row.bubble} failed: {bubble_error or 'no reason recorded'}", node))
        elif bubble.get("state") not in ("ready", "starting", None, ""):
            problems.append(Problem("error", "bubble_gone",
                                    f"bubble {row.bubble} was {bubble.get('state')} when the report was collected "
                                    "(it ended before the job did)", node, time=row.collected))
        skip = {bubble_error} if bubble_error else set()
        if not bubble and data["errors"]:
            skip.add(_error_text(data["errors"][0])[0])
        for entry in data["errors"]:
            text, when = _error_text(entry)
            if text and text not in skip:
                problems.append(Problem("error", "node_error", text, node, time=when))
    for name in missing:
        problems.append(Problem("warning", "node_missing",
                                "no report from this node (its epilog did not run, or could not write it)", name))
    containers.sort(key=lambda c: (_sort_key(c.step), _sort_key(c.rank), _sort_key(c.node), c.started or 0))
    for c in containers:
        label = f"step {c.step or '-'} rank {c.rank or '-'}"
        if c.exit_code is not None and c.exit_code != 0:
            problems.append(Problem("error", "exit_code", f"{_exit_text(c.exit_code)} ({label}, {c.ip})",
                                    c.node, c.id, c.ended))
        elif c.exit_code is None and not live:
            problems.append(Problem("warning", "no_exit_code",
                                    f"no exit code recorded: still running or killed when the report was collected "
                                    f"({label}, {c.ip})", c.node, c.id))
        if c.drops:
            problems.append(Problem("warning", "drops", f"{c.drops} frame(s) dropped on the way in ({label}, {c.ip})",
                                    c.node, c.id, c.ended))
        if c.relay_errors:
            problems.append(Problem("warning", "relay_errors",
                                    f"{c.relay_errors} relay connection error(s)"
                                    + (f", last: {c.last_error}" if c.last_error else "") + f" ({label})",
                                    c.node, c.id, c.ended))
    overlay = _overlay(nodes, [d for _, d in node_files], problems)
    problems.sort(key=lambda p: (p.severity != "error", _sort_key(p.node or ""), p.time if p.time else float("inf")))
    totals = Totals(
        nodes=len(nodes), nodes_failed=len({p.node for p in problems if p.kind in ("bubble_failed", "bubble_gone")}),
        containers=len(containers),
        containers_failed=sum(1 for c in containers if c.exit_code not in (None, 0)),
        containers_counted=sum(1 for c in containers if c.counters != "none"),
        tx_bytes=sum(n.tx_bytes for n in nodes), rx_bytes=sum(n.rx_bytes for n in nodes),
        tx_frames=sum(n.tx_frames for n in nodes), rx_frames=sum(n.rx_frames for n in nodes),
        drops=sum(n.drops for n in nodes), relay_errors=sum(c.relay_errors or 0 for c in containers),
        errors=sum(1 for p in problems if p.severity == "error"),
        warnings=sum(1 for p in problems if p.severity == "warning"),
    )
    source = {"report_dir": report_dir, "files": [n.file for n in nodes], "missing_nodes": list(missing), "live": live}
    return JobReport(job_id=job_id, generated=time.time() if now is None else now, source=source, overlay=overlay,
                     problems=problems, nodes=nodes, containers=containers, totals=totals)


def _overlay(nodes: list[NodeRow], data: list[dict], problems: list[Problem]) -> dict:
    """The job's overlay as its nodes agree on it; a disagreement (or a subnet twice) is a problem."""
    bubbles = [d["bubble"] for d in data if d["bubble"]]
    overlay = {"network": None, "vni": None, "vxlan_port": None, "etcd_endpoints": [], "etcd_prefix": None}
    for key, source in (("network", "flannel_network"), ("vni", "vni"), ("vxlan_port", "vxlan_port"),
                        ("etcd_prefix", "etcd_prefix")):
        values = sorted({str(b.get(source)) for b in bubbles if b.get(source) not in (None, "")})
        if values:
            first = next(b.get(source) for b in bubbles if b.get(source) not in (None, ""))
            overlay[key] = _opt_int(first) if key in ("vni", "vxlan_port") else _str(first)
        if len(values) > 1:
            problems.append(Problem("error", "overlay_mismatch",
                                    f"the nodes disagree on the overlay's {source}: {', '.join(values)}"))
    endpoints = [e for n in nodes for e in n.etcd_endpoints]
    overlay["etcd_endpoints"] = list(dict.fromkeys(endpoints))
    seen: dict[str, str] = {}
    for n in nodes:
        if n.flannel_subnet and n.flannel_subnet in seen:
            problems.append(Problem("error", "overlay_mismatch",
                                    f"nodes {seen[n.flannel_subnet]} and {n.node} have the same subnet {n.flannel_subnet}",
                                    n.node))
        elif n.flannel_subnet:
            seen[n.flannel_subnet] = n.node
    return overlay
