"""Running one nested container inside a bubble, from address to teardown.

The order is what makes "network up before the command" true: lease an
address, create the container's namespaces (its first process waits), wire
the datapath and configure the interface, publish ports, and only then let
the command start. Whatever happens after the lease, teardown gives back
everything: daemons, link, socket, forwards, lease. If hpktainer itself is
killed, its container dies with it and the next hpktainer call (or the
bubble's stop) sweeps what is left.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from hpk_slurm.bubble.spec import BubbleSpec
from hpk_slurm.container import datapath
from hpk_slurm.container.args import ContainerArgs
from hpk_slurm.container.engines import Engine, Started, select_engine
from hpk_slurm.container.ipam import Ipam, Lease
from hpk_slurm.container.peers import Peers, StepRank, hosts_file
from hpk_slurm.container.publish import parse_publish, publish, unpublish
from hpk_slurm.container.record import ContainerRecord, RecordStore
from hpk_slurm.errors import HpkError
from hpk_slurm.net import affinity
from hpk_slurm.net.bridge import BRIDGE
from hpk_slurm.net.slirp import SlirpApi
from hpk_slurm.overlay.etcd import Etcd
from hpk_slurm.overlay.flannel import SubnetEnv
from hpk_slurm.procs import ProcRef
from hpk_slurm.signals import exit_code, forward_to

log = logging.getLogger(__name__)


@dataclass
class BubbleContext:
    """The bubble we are in, and the places in its run folder that nested containers use."""

    spec: BubbleSpec
    subnet: SubnetEnv

    @classmethod
    def load(cls, run_dir: Path) -> "BubbleContext":
        spec = BubbleSpec.load(run_dir)
        if not spec.subnet_file.exists():
            raise HpkError(f"bubble {spec.name} has no overlay subnet yet", "is it still starting, or did it fail?")
        return cls(spec, SubnetEnv.read(spec.subnet_file))

    @property
    def ipam(self) -> Ipam:
        return Ipam(self.spec.run_dir / "ipam", self.subnet.subnet)

    @property
    def records(self) -> RecordStore:
        return RecordStore(self.spec.run_dir / "containers")

    @property
    def slirp(self) -> SlirpApi:
        return SlirpApi(self.spec.slirp_socket)


# -- teardown (also for orphans) ------------------------------------------------------------


def teardown(ctx: BubbleContext, record: ContainerRecord) -> None:
    """Give back everything the container had; safe to repeat, whatever was set up."""
    # The container side first: a client that outlived its server would reconnect into the
    # server's closing listener and count a spurious connection reset.
    for role in ("client", "server"):
        if role in record.daemons:
            record.daemons[role].terminate(timeout=5)
    if record.bubble_link:
        if record.mode == "veth" and not record.link_counters:
            record.link_counters = datapath.link_counters(record.bubble_link)  # gone with the link otherwise
        datapath.delete_link(record.bubble_link)
    if record.socket:
        Path(record.socket).unlink(missing_ok=True)
    for pub in record.published:
        unpublish(ctx.slirp, pub, record.address)
    ctx.ipam.release(Lease(record.address, record.id, record.owner))


def sweep_orphans(ctx: BubbleContext) -> list[str]:
    """Clear containers whose hpktainer died (SIGKILL): the next call finds and ends them."""
    swept = []
    for record in ctx.records.all():
        if record.orphaned:
            if record.holder:
                record.holder.terminate(timeout=5)
            teardown(ctx, record)
            record.ended, record.exit_code = time.time(), None
            ctx.records.save(record)
            swept.append(record.id)
            log.info("cleared orphaned container %s (%s)", record.id, record.address)
    return swept


# -- one container --------------------------------------------------------------------------


def container_env(ctx: BubbleContext, record: ContainerRecord) -> dict[str, str]:
    env = {
        "HPK_IP": record.address,
        "HPK_GATEWAY_IP": record.gateway,
        "HPK_SOCKET_PATH": record.socket,
        "HPK_CONTAINER_ID": record.id,
        "HPK_BUBBLE": ctx.spec.name,
        "HPK_NETWORK": str(ctx.subnet.network),
        "HPK_MTU": str(ctx.subnet.mtu),
    }
    for ours, slurm in (("HPK_JOB_ID", "SLURM_JOB_ID"), ("HPK_STEP_ID", "SLURM_STEP_ID"), ("HPK_RANK", "SLURM_PROCID")):
        if slurm in os.environ:
            env[ours] = os.environ[slurm]
    return env


class ContainerRun:
    def __init__(self, ctx: BubbleContext, args: ContainerArgs, engine: Engine | None = None):
        self.ctx, self.args = ctx, args
        self.engine = engine or select_engine()
        self.published = [parse_publish(p) for p in args.publish]  # bad input fails before anything exists
        self.started: Started | None = None
        self.record: ContainerRecord | None = None
        self.netns_fd: int | None = None
        self.rank = StepRank.from_environ()
        self.registered = False

    @property
    def netns_path(self) -> str:
        """The container's network namespace, through our own open reference to it."""
        return f"/proc/{os.getpid()}/fd/{self.netns_fd}"

    @property
    def name(self) -> str:
        return f"hpk-{self.record.id}"

    def run(self) -> int:
        ctx = self.ctx
        sweep_orphans(ctx)
        container_id = secrets.token_hex(4)
        owner = ProcRef.of(os.getpid())
        lease = ctx.ipam.allocate(container_id, owner)
        self.record = record = ContainerRecord(
            id=container_id, address=lease.address, gateway=ctx.subnet.gateway, mode=self.args.net_mode,
            image=self.args.image, command=self.args.command, owner=owner,
            step=os.environ.get("SLURM_STEP_ID", ""), rank=os.environ.get("SLURM_PROCID", ""),
            name=self.args.instance_name or "",
        )
        ctx.records.save(record)
        code = 1
        forward_to(lambda: self.engine.signal_target(self.started) if self.started else None)
        try:
            hosts = ctx.records.folder / f"{record.id}.hosts" if self.args.wait_peers else None
            if hosts:
                if not self.rank:
                    raise HpkError("--wait-peers needs a Slurm job step (run it with srun)")
                hosts.write_text("")
            self.started = self.engine.prepare(self.args, self.name, container_env(ctx, record), hosts)
            record.holder = self.started.holder
            ctx.records.save(record)
            # Hold the namespace open: it must outlive the command until its data has left.
            self.netns_fd = os.open(f"/proc/{self.started.holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self.wire(self.netns_path)
            for pub in self.published:
                record.published.append(pub)
                ctx.records.save(record)
                publish(ctx.slirp, ctx.spec.slirp.guest, pub, record.address)
            late_env = self.meet_peers(hosts)
            self.engine.go(self.started, self.args, self.name, {**container_env(ctx, record), **late_env}, hosts)
            self.on_running(record)
            code = self.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)  # teardown must finish
            if self.netns_fd is not None:
                datapath.drain(self.netns_path)
            if self.started:
                self.engine.cleanup(self.started, self.name)
            if self.registered:
                try:
                    self.peers().unregister(self.rank)
                except HpkError as exc:  # the job's etcd may be gone already; its prefix goes with the job
                    log.warning("could not unregister rank %s: %s", self.rank.rank, exc)
            teardown(ctx, record)
            if self.netns_fd is not None:
                os.close(self.netns_fd)
            record.ended, record.exit_code = time.time(), code
            ctx.records.save(record)
        return code

    def peers(self) -> Peers:
        return Peers(Etcd(self.ctx.spec.etcd_endpoints), self.ctx.spec.etcd_prefix)

    def meet_peers(self, hosts: Path | None) -> dict[str, str]:
        """Register this rank's address; with --wait-peers, wait for the whole step and name them."""
        if not self.rank:
            return {}
        peers = self.peers()
        peers.register(self.rank, self.record.address, os.uname().nodename, self.record.id)
        self.registered = True
        if not hosts:
            return {}
        ranks = peers.wait_all(self.rank, self.ctx.spec.start_timeout)
        with open(hosts, "r+") as f:  # in place: an Apptainer bind of this file sees the new content
            f.write(hosts_file(self.rank, ranks))
        return {"HPK_PEERS": ",".join(entry["ip"] for entry in ranks.values()),
                "HPK_HOSTNAME": self.rank.hostname()}

    def wire(self, netns: str) -> None:
        ctx, record = self.ctx, self.record
        network = ctx.subnet.subnet.network
        mtu = ctx.subnet.mtu
        record.bubble_link = datapath.link_name(record.mode, record.address, network)
        if record.mode == "veth":
            ctx.records.save(record)
            datapath.create_veth(record.bubble_link, netns, mtu)
            ifname = "eth0"
        else:
            ctx.spec.socket_dir.mkdir(mode=0o700, exist_ok=True)
            record.socket = str(ctx.spec.socket_dir / f"{record.id}.sock")
            folder = ctx.records.folder
            logs = {role: folder / f"{record.id}.{role}.log" for role in ("server", "client")}
            stats = {role: ctx.records.stats_path(record.id, role) for role in ("server", "client")}
            cpu = affinity.pair_cpu(int(ipaddress.IPv4Address(record.address)))
            record.daemons["server"] = datapath.start_daemon(
                datapath.daemon_argv("server", Path(record.socket), record.bubble_link, mtu, stats["server"], cpu,
                                     bridge=BRIDGE), logs["server"])
            ctx.records.save(record)
            record.daemons["client"] = datapath.start_daemon(
                datapath.daemon_argv("client", Path(record.socket), "tap0", mtu, stats["client"], cpu,
                                     netns=netns), logs["client"])
            ctx.records.save(record)
            datapath.wait_connected(stats["client"], record.daemons, logs)
            ifname = "tap0"
        datapath.in_netns(netns, datapath.configure_interface, ifname, record.address,
                          network.prefixlen, record.gateway, mtu)

    def on_running(self, record: ContainerRecord) -> None:
        """Called once the command runs with its network up (instances report back here)."""

    def wait(self) -> int:
        process = self.started.process
        if process is None:  # an Apptainer instance: it lives until stopped
            while self.started.holder.alive():
                time.sleep(0.5)
            return 0
        try:  # waitpid is retried after each forwarded signal (PEP 475)
            process.returncode = exit_code(os.waitpid(process.pid, 0)[1])
        except ChildProcessError:  # already collected
            pass
        return process.returncode if process.returncode is not None else 1


def container_rows(ctx: BubbleContext) -> list[dict]:
    """`hpktainer ps`: every container of the bubble, running first, with traffic counters."""
    rows = []
    for record in ctx.records.all():
        if record.mode == "relay":
            stats = ctx.records.stats(record.id)
            traffic = {"tx_bytes": stats.get("tx_bytes", 0), "rx_bytes": stats.get("rx_bytes", 0),
                       "tx_frames": stats.get("tx_frames", 0), "rx_frames": stats.get("rx_frames", 0),
                       "drops": stats.get("rx_drops", 0)}
        else:
            link = datapath.link_counters(record.bubble_link) if record.running else record.link_counters
            traffic = {key: link.get(key, 0) for key in ("tx_bytes", "rx_bytes", "tx_frames", "rx_frames")}
            traffic["drops"] = link.get("rx_drops", 0)
        rows.append({
            "id": record.id, "ip": record.address, "pid": record.holder.pid if record.holder else None,
            "mode": record.mode, "image": record.image, "command": record.command,
            "state": "running" if record.running else ("orphaned" if record.orphaned else "exited"),
            "started": record.started, "ended": record.ended, "exit_code": record.exit_code,
            "published": [f"{p.host_port}:{p.container_port}/{p.proto}" for p in record.published],
            **traffic,
        })
    return sorted(rows, key=lambda r: (r["state"] != "running", r["started"]))
