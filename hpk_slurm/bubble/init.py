"""The bubble's first process: inside its namespaces, it builds the bubble's network and keeps it.

It runs as PID 1 of the bubble's PID namespace (embedded runtime) or as the
instance's start script (Apptainer). Steps: wait for slirp4netns's tap0,
host IP and forwarding, etcd when this bubble hosts it, the overlay config,
flanneld until subnet.env exists, hpk-bridge and NAT. Then it reports
"ready" in status.json and waits. On SIGTERM it gives back the flannel lease
(and the job's whole prefix when it hosted etcd) and stops its children;
anything left dies with the PID namespace.

Run: python -m hpk_slurm.bubble.init RUN_DIR
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pyroute2 import IPRoute

from hpk_slurm.bubble.spec import ETCD_CLIENT_PORT, BubbleSpec
from hpk_slurm.bubble.status import Status, status_path, tail
from hpk_slurm.errors import HpkError, require_binary
from hpk_slurm.log import setup_logging
from hpk_slurm.net import bridge
from hpk_slurm.overlay.etcd import Etcd, EtcdUnreachable, etcd_server_argv
from hpk_slurm.overlay.flannel import NetworkConfig, SubnetEnv, flanneld_argv, learned_peers
from hpk_slurm.procs import children

log = logging.getLogger("hpk_slurm.bubble.init")

TAP_TIMEOUT = 15.0
SUBNET_TIMEOUT = 30.0
RELEASE_TIMEOUT = 2.0
WATCH_INTERVAL = 0.5


class Stop(BaseException):
    pass


class BubbleInit:
    def __init__(self, spec: BubbleSpec):
        self.spec = spec
        self.status = Status()
        self.procs: dict[str, subprocess.Popen] = {}
        self.subnet: SubnetEnv | None = None
        self.wrote_config = False  # only then is the job's prefix ours to delete

    # -- children ---------------------------------------------------------------
    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.spec.log_file(name), "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.spec.run_dir)
        self.procs[name] = proc
        self.status.children[name] = proc.pid
        log.info("started %s (pid %d in the bubble)", name, proc.pid)
        return proc

    def check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise HpkError(f"{name} exited with status {proc.returncode}: {tail(self.spec.log_file(name))}")

    # -- steps ------------------------------------------------------------------
    def wait_for_tap(self) -> None:
        """slirp4netns, started from outside, creates and configures tap0."""
        deadline = time.monotonic() + TAP_TIMEOUT
        with IPRoute() as ipr:
            while True:
                found = ipr.link_lookup(ifname="tap0")
                if found and ipr.get_addr(index=found[0], family=2):
                    break
                if time.monotonic() > deadline:
                    raise HpkError(f"tap0 did not appear within {TAP_TIMEOUT:.0f} s", "slirp4netns failed; see slirp4netns.log")
                time.sleep(0.02)
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            # flannel's VXLAN device uses the host's address as its local address.
            tap = found[0]
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=tap, family=2)}
            if self.spec.host_ip not in have:
                ipr.addr("add", index=tap, address=self.spec.host_ip, prefixlen=32)
        bridge.set_ip_forward()

    def start_etcd(self) -> None:
        require_binary("etcd", "etcd-server")
        data = self.spec.run_dir / "etcd-data"
        data.mkdir(mode=0o700, exist_ok=True)
        self.spawn("etcd", etcd_server_argv(data, self.spec.host_ip, ETCD_CLIENT_PORT, ETCD_CLIENT_PORT + 1,
                                            self.spec.name))

    def etcd(self) -> Etcd:
        return Etcd(self.spec.etcd_endpoints)

    def wait_for_etcd(self) -> None:
        def etcd_alive() -> None:
            if "etcd" in self.procs:
                self.check_alive("etcd")

        # Bounded below start_timeout, so that this clearer message is what the user sees.
        self.etcd().wait_ready(0.6 * self.spec.start_timeout, etcd_alive)

    def write_network_config(self) -> None:
        """The controller writes the job's config; an existing different one is an error, not overwritten."""
        etcd, key, wanted = self.etcd(), self.spec.config_key, self.spec.network
        existing = etcd.get(key)
        if existing is None:
            etcd.put(key, wanted.to_json())
            self.wrote_config = True
            log.info("wrote overlay config %s = %s", key, wanted.to_json())
        elif NetworkConfig.from_json(existing) != wanted:
            raise HpkError(f"etcd key {key} already holds a different overlay config: {existing}",
                           "use another --etcd-prefix, or remove the old config")

    def start_flanneld(self) -> None:
        require_binary("flanneld", "flannel (see README: install the release binary as /usr/local/bin/flanneld)")
        self.spec.subnet_file.unlink(missing_ok=True)
        self.spawn("flanneld", flanneld_argv(self.spec.etcd_endpoints, self.spec.etcd_prefix, self.spec.host_ip,
                                             self.spec.subnet_file))
        deadline = time.monotonic() + SUBNET_TIMEOUT
        while not self.spec.subnet_file.exists():
            self.check_alive("flanneld")
            if time.monotonic() > deadline:
                raise HpkError(f"flanneld wrote no subnet.env within {SUBNET_TIMEOUT:.0f} s: "
                               f"{tail(self.spec.log_file('flanneld'))}")
            time.sleep(0.05)
        time.sleep(0.05)  # flanneld writes the file in one go, but give the rename a moment
        self.subnet = SubnetEnv.read(self.spec.subnet_file)

    def build_bridge(self) -> None:
        sub = self.subnet
        bridge.ensure_bridge(sub.subnet, sub.mtu)
        bridge.ensure_nat(sub.subnet.network, sub.network)

    def boot(self) -> None:
        self.wait_for_tap()
        if self.spec.host_etcd:
            self.start_etcd()
        self.wait_for_etcd()
        if self.spec.controller:
            self.write_network_config()
        self.start_flanneld()
        self.build_bridge()
        s = self.status
        s.phase = "ready"
        s.flannel_subnet, s.flannel_network, s.flannel_mtu = str(self.subnet.subnet), str(self.subnet.network), self.subnet.mtu

    # -- teardown ---------------------------------------------------------------
    def release(self) -> None:
        """Give back what we hold in etcd while it is still reachable.

        Quickly: at the end of a job every node stops at once, and the job's etcd
        may already be gone with the first node's bubble.
        """
        etcd = Etcd(self.spec.etcd_endpoints, call_timeout=RELEASE_TIMEOUT)
        try:
            if self.subnet:
                etcd.revoke_lease_of(f"{self.spec.etcd_prefix}/subnets/{self.subnet.lease_key}")
            if self.wrote_config:
                etcd.delete(self.spec.etcd_prefix + "/", prefix=True)
            self.status.lease_released = True
        except EtcdUnreachable as exc:
            log.warning("could not release the flannel lease: %s", exc)

    def stop_child(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def teardown(self) -> None:
        self.stop_child("flanneld")  # first, so it does not renew the lease we give back
        self.release()
        self.stop_child("etcd")

    def note_peers(self) -> None:
        """Remember every overlay peer flannel learned: the job's report lists them, even gone ones."""
        known = {p["subnet"] for p in self.status.peers_seen}
        new = [p for p in learned_peers(self.spec.network.vni) if p["subnet"] not in known]
        if new:
            self.status.peers_seen = sorted(self.status.peers_seen + new, key=lambda p: p["subnet"])
            self.status.write(status_path(self.spec))

    def watch(self) -> None:
        """While ready: note overlay peers, reap orphans (we are PID 1), log a child that died."""
        reported: set[str] = set()
        ours = {proc.pid for proc in self.procs.values()}
        while True:
            time.sleep(WATCH_INTERVAL)
            self.note_peers()
            for pid in children(os.getpid()):
                if pid not in ours:
                    try:
                        os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        pass
            for name, proc in self.procs.items():
                if name not in reported and proc.poll() is not None:
                    reported.add(name)
                    log.error("%s exited with status %s: %s", name, proc.returncode, tail(self.spec.log_file(name)))


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0])
    setup_logging("hpk-bubble-init")
    spec = BubbleSpec.load(run_dir)
    init = BubbleInit(spec)

    def on_signal(signum, _frame):
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        init.boot()
        init.status.write(status_path(spec))
        log.info("ready: subnet %s", init.status.flannel_subnet)
        init.watch()
    except Stop as why:
        log.info("stopping on %s", why)
    except (HpkError, OSError) as exc:
        log.error("%s", exc)
        init.status.phase, init.status.error = "failed", str(exc)
        init.status.write(status_path(spec))
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if init.status.phase != "failed":
            init.status.phase = "stopping"
            init.status.write(status_path(spec))
        init.teardown()
        if init.status.phase != "failed":
            init.status.phase = "stopped"
        init.status.write(status_path(spec))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
