"""Starting, stopping and inspecting bubbles from the host side.

start: preflight checks, run folder, the runtime launches the bubble's init,
slirp4netns attaches to it, host forwards (VXLAN, and etcd when hosted) go in
through slirp's API, then we wait for the init to report "ready". Any failure
undoes everything. stop: the init first (it gives back the flannel lease),
then slirp4netns, by recorded PID; then the run folder. Both are idempotent.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from hpk_slurm.bubble.status import Status, status_path, tail
from hpk_slurm.bubble.preflight import bubble_problems
from hpk_slurm.bubble.spec import ETCD_CLIENT_PORT, BubbleSpec, default_run_root
from hpk_slurm.errors import HpkError
from hpk_slurm.net.slirp import HostForward, SlirpApi, slirp_argv
from hpk_slurm.overlay.etcd import Etcd, EtcdUnreachable
from hpk_slurm.overlay.flannel import SubnetEnv
from hpk_slurm.procs import ProcRef, children
from hpk_slurm.runtime import select_runtime
from hpk_slurm.runtime.base import Launched

log = logging.getLogger(__name__)

SLIRP_READY_TIMEOUT = 10.0
STOP_TIMEOUT = 20.0
READY_GRACE = 10.0
#: What a run folder may hold; stop removes exactly these, never an arbitrary tree.
RUN_FILES = ("spec.json", "state.json", "status.json", "subnet.env", "slirp.sock", ".lock",
             "init.log", "slirp4netns.log", "etcd.log", "flanneld.log", ".status.json.tmp")
RUN_DIRS = ("sock", "etcd-data", "containers", "ipam")


@dataclass
class BubbleState:
    """The host side's record of a started bubble (state.json)."""

    runtime: str
    name: str
    bubble: ProcRef
    launcher: ProcRef | None
    slirp: ProcRef | None = None
    started: float = 0.0

    def save(self, path: Path) -> None:
        tmp = path.with_name(".state.json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "BubbleState | None":
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        ref = lambda d: ProcRef(**d) if d else None  # noqa: E731
        return cls(data["runtime"], data["name"], ref(data["bubble"]), ref(data["launcher"]), ref(data["slirp"]),
                   data["started"])


@contextmanager
def locked(run_dir: Path):
    """One start/stop at a time per bubble."""
    with open(run_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def prepare_run_dir(run_dir: Path) -> None:
    run_dir.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    run_dir.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(run_dir)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise HpkError(f"run folder {run_dir} must be ours and private (0700)", f"remove it or chmod 0700 {run_dir}")


def is_running(spec: BubbleSpec) -> bool:
    state = BubbleState.load(spec.state_file)
    return bool(state and state.bubble.alive())


# -- start --------------------------------------------------------------------------


def start(spec: BubbleSpec) -> dict:
    problems = bubble_problems(spec.host_etcd)
    if problems:
        raise HpkError("cannot start the bubble: " + "; ".join(map(str, problems)))
    runtime = select_runtime(spec.runtime)
    prepare_run_dir(spec.run_dir)
    if is_running(spec):
        raise HpkError(f"bubble {spec.name} is already running", f"hpk-bubble stop {spec.id} first")
    try:
        with locked(spec.run_dir):
            _stop_locked(spec.run_dir)  # leftovers of a bubble that died
            spec.spec_file.write_text(spec.to_json())
            spec.socket_dir.mkdir(mode=0o700, exist_ok=True)
            launched = runtime.launch(spec.name, [sys.executable, "-m", "hpk_slurm.bubble.init", str(spec.run_dir)],
                                      spec.run_dir, spec.image, spec.log_file("init"))
            state = BubbleState(runtime.name, spec.name, launched.bubble, launched.launcher, started=time.time())
            state.save(spec.state_file)
            state.slirp = start_slirp(spec, launched.bubble.pid)
            state.save(spec.state_file)
            add_forwards(spec)
            wait_ready(spec, state)
    except BaseException:
        stop(spec.run_dir)  # a failed start undoes everything, run folder included
        raise
    return describe(spec.run_dir)


def start_slirp(spec: BubbleSpec, bubble_pid: int) -> ProcRef:
    read_fd, write_fd = os.pipe()
    try:
        with open(spec.log_file("slirp4netns"), "ab") as out:
            proc = subprocess.Popen(
                slirp_argv(bubble_pid, str(spec.slirp.cidr), spec.slirp_socket, write_fd),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                pass_fds=(write_fd,), start_new_session=True,
            )
        os.close(write_fd)
        write_fd = -1
        ref = ProcRef.of(proc.pid)
        ready = _read_with_timeout(read_fd, SLIRP_READY_TIMEOUT)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    if ready != b"1":
        raise HpkError(f"slirp4netns did not come up: {tail(spec.log_file('slirp4netns'))}",
                       "a non-root user needs /dev/net/tun mode 0666")
    return ref


def _read_with_timeout(fd: int, timeout: float) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 1) if ready else b""


def add_forwards(spec: BubbleSpec) -> None:
    api = SlirpApi(spec.slirp_socket)
    guest = spec.slirp.guest
    api.add_hostfwd(HostForward("udp", spec.network.port, guest, spec.network.port))
    if spec.host_etcd:
        api.add_hostfwd(HostForward("tcp", spec.etcd_port, guest, ETCD_CLIENT_PORT))


def wait_ready(spec: BubbleSpec, state: BubbleState) -> Status:
    # The init bounds each of its own waits within start_timeout and reports why it
    # failed; the grace here only covers an init that hangs where it should not.
    deadline = time.monotonic() + spec.start_timeout + READY_GRACE
    while True:
        status = Status.read(status_path(spec))
        if status and status.phase == "ready":
            return status
        if status and status.phase == "failed":
            raise HpkError(f"bubble {spec.name} failed to start: {status.error}")
        if not state.bubble.alive():
            raise HpkError(f"bubble {spec.name} died while starting: {tail(spec.log_file('init'))}")
        if time.monotonic() > deadline:
            raise HpkError(f"bubble {spec.name} not ready after {spec.start_timeout:.0f} s: {tail(spec.log_file('init'))}")
        time.sleep(0.02)


# -- stop ---------------------------------------------------------------------------


def stop(run_dir: Path) -> bool:
    """Stop the bubble whose state is in `run_dir`; False if there was nothing to stop."""
    if not run_dir.is_dir():
        return False
    with locked(run_dir):
        found = _stop_locked(run_dir)
    (run_dir / ".lock").unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError as exc:
        log.warning("left %s in place: %s", run_dir, exc.strerror)
    return found


def _stop_locked(run_dir: Path) -> bool:
    state = BubbleState.load(run_dir / "state.json")
    if state:
        runtime = select_runtime(state.runtime)
        runtime.stop(state.name, Launched(state.bubble, state.launcher), STOP_TIMEOUT)
        if state.slirp:
            state.slirp.terminate(5)
    _release_leftover_lease(run_dir)
    for name in RUN_FILES:
        if name != ".lock":
            (run_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)
    return state is not None


def _release_leftover_lease(run_dir: Path) -> None:
    """If the bubble died without giving back its lease, give it back from here (best effort)."""
    status = Status.read(run_dir / "status.json")
    if not status or status.lease_released or not status.flannel_subnet or status.phase == "stopped":
        return  # nothing held, given back, or the init tried already (the job's etcd is gone)
    try:
        spec = BubbleSpec.load(run_dir)
    except (FileNotFoundError, HpkError, KeyError, json.JSONDecodeError):
        return
    if spec.host_etcd:
        return  # its etcd died with it
    subnet = SubnetEnv.parse(f"FLANNEL_NETWORK={status.flannel_network}\nFLANNEL_SUBNET={status.flannel_subnet}\n"
                             f"FLANNEL_MTU={status.flannel_mtu}\n")
    try:
        Etcd(spec.etcd_endpoints).revoke_lease_of(f"{spec.etcd_prefix}/subnets/{subnet.lease_key}")
        log.info("released the flannel lease %s of the dead bubble %s", subnet.lease_key, spec.name)
    except EtcdUnreachable as exc:
        log.warning("could not release the flannel lease of %s: %s", spec.name, exc)


# -- inspect ------------------------------------------------------------------------


def describe(run_dir: Path) -> dict:
    """Every fact of a bubble, for `status --json` and the job report."""
    spec = BubbleSpec.load(run_dir)
    state = BubbleState.load(spec.state_file)
    status = Status.read(status_path(spec)) or Status(phase="unknown")
    running = bool(state and state.bubble.alive())
    pids: dict[str, int] = {}
    if state and running:
        pids["bubble"] = state.bubble.pid
        if state.slirp and state.slirp.alive():
            pids["slirp4netns"] = state.slirp.pid
        for name, pid in _host_pids_of_children(state.bubble.pid).items():
            pids[name] = pid
    return {
        "id": spec.id,
        "name": spec.name,
        "state": status.phase if running else ("stopped" if status.phase != "failed" else "failed"),
        "error": status.error,
        "runtime": state.runtime if state else spec.runtime,
        "host_ip": spec.host_ip,
        "slirp_cidr": str(spec.slirp.cidr),
        "role": "controller" if spec.controller else "node",
        "hosts_etcd": spec.host_etcd,
        "flannel_network": status.flannel_network,
        "flannel_subnet": status.flannel_subnet,
        "flannel_mtu": status.flannel_mtu,
        "vxlan_port": spec.network.port,
        "vni": spec.network.vni,
        "etcd_endpoints": list(spec.etcd_endpoints),
        "etcd_prefix": spec.etcd_prefix,
        "run_dir": str(spec.run_dir),
        "socket_dir": str(spec.socket_dir),
        "started": state.started if state else None,
        "pids": pids,
        "peers_seen": status.peers_seen,
    }


def _host_pids_of_children(bubble_pid: int) -> dict[str, int]:
    found = {}
    for pid in children(bubble_pid):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        found[name] = pid
    return found


def list_bubbles(run_root: Path | None = None) -> list[dict]:
    root = run_root or default_run_root()
    if not root.is_dir():
        return []
    return [describe(d) for d in sorted(root.iterdir()) if (d / "spec.json").is_file()]


def enter_argv(run_dir: Path, argv: list[str]) -> list[str]:
    spec = BubbleSpec.load(run_dir)
    state = BubbleState.load(spec.state_file)
    if not state or not state.bubble.alive():
        raise HpkError(f"bubble {spec.name} is not running", f"hpk-bubble start {spec.id}")
    return select_runtime(state.runtime).enter_argv(state.bubble.pid, argv)
