"""hpk-net-daemon: one end of the TAP-over-UNIX-socket link between a container and its bubble.

The server (bubble side) owns the socket and a TAP on hpk-bridge; the client
(container side) owns a TAP in the container's network namespace and
connects. Either may die and come back: the TAPs persist, so the pair is
re-established without touching addresses or routes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tenacity

from hpk_slurm.errors import HpkError
from hpk_slurm.net import affinity
from hpk_slurm.net import hello as hello_mod
from hpk_slurm.net.framing import MAX_FRAME, FrameError
from hpk_slurm.net.hello import Hello, HelloError, LinkMode
from hpk_slurm.net.netns import enter_netns
from hpk_slurm.net.relay import Relay, size_socket_buffers
from hpk_slurm.net.stats import RelayStats, StatsWriter
from hpk_slurm.net.tap import VNET_HDR_LEN, Tap

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 5.0


class StopRequested(BaseException):
    """SIGTERM/SIGINT: leave whatever we are blocked in and clean up."""


@dataclass
class DaemonConfig:
    role: str  # "server" or "client"
    socket_path: Path
    tap_name: str
    mtu: int | None = None
    bridge: str | None = None  # server: enslave the TAP to this bridge
    offload: bool = True  # offer virtio-net headers and offloads to the peer
    netns: str | None = None  # create the TAP in this network namespace (path or name)
    stats_file: Path | None = None
    stats_interval: float = 1.0
    connect_timeout: float = 30.0  # client: give up after this long without a server
    cpu: int | None = None  # run on this CPU only (see net/affinity.py); None: wherever the scheduler likes
    stats: RelayStats = field(init=False)
    on_change: Callable[[], None] = lambda: None  # connection state changed: publish the counters now

    def __post_init__(self) -> None:
        if self.role not in ("server", "client"):
            raise HpkError(f"unknown mode {self.role!r}", "use --mode server or --mode client")
        if self.mtu is not None and not 68 <= self.mtu <= 65521:
            raise HpkError(f"MTU {self.mtu} out of range", "use 68..65521")
        self.stats = RelayStats(self.role, self.tap_name, str(self.socket_path))


# -- the socket folder ---------------------------------------------------------


def prepare_socket_dir(socket_path: Path) -> None:
    """The folder must be ours and private: whoever can reach the socket reaches the network."""
    folder = socket_path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise HpkError(f"socket folder {folder} is not a directory (a symlink?)")
    if st.st_uid != os.geteuid():
        raise HpkError(
            f"socket folder {folder} belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})",
            "use a folder of your own",
        )
    if st.st_mode & 0o077:
        raise HpkError(
            f"socket folder {folder} has mode {stat.S_IMODE(st.st_mode):04o}; other users could reach the socket",
            f"chmod 0700 {folder}, or use a private folder",
        )


def remove_stale_socket(socket_path: Path) -> None:
    """Remove a socket left by a dead server; refuse to steal a live one."""
    try:
        st = os.lstat(socket_path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise HpkError(f"{socket_path} exists and is not a socket", "remove it or choose another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(socket_path))
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(socket_path)
        log.info("removed stale socket %s", socket_path)
        return
    finally:
        probe.close()
    raise HpkError(f"another hpk-net-daemon is serving {socket_path}", "stop it first")


def listen(socket_path: Path) -> tuple[socket.socket, int]:
    """Bind 0600 (no window where it is wider) and return the socket and its inode."""
    prepare_socket_dir(socket_path)
    remove_stale_socket(socket_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        server.bind(str(socket_path))
    finally:
        os.umask(old_umask)
    server.listen(1)
    return server, os.stat(socket_path).st_ino


# -- one connection --------------------------------------------------------------


def our_hello(cfg: DaemonConfig, tap: Tap) -> Hello:
    return Hello(
        vnet_hdr=tap.vnet_hdr and cfg.offload,
        vnet_hdr_len=VNET_HDR_LEN,
        offloads=tap.supported_offloads if cfg.offload else 0,
        max_frame=MAX_FRAME,
        mtu=cfg.mtu or 0,
    )


def exchange_hello(sock: socket.socket, ours: Hello) -> LinkMode:
    sock.settimeout(HELLO_TIMEOUT)
    try:
        sock.sendall(ours.pack())
        data = b""
        while len(data) < hello_mod.SIZE:
            chunk = sock.recv(hello_mod.SIZE - len(data))
            if not chunk:
                raise HelloError(f"peer closed after {len(data)} bytes of hello")
            data += chunk
    except TimeoutError:
        raise HelloError(f"no hello within {HELLO_TIMEOUT:.0f} s") from None
    finally:
        sock.settimeout(None)
    theirs = Hello.unpack(data)
    if ours.mtu and theirs.mtu and ours.mtu != theirs.mtu:
        log.warning("MTU differs: ours %d, peer's %d; frames above the smaller are dropped", ours.mtu, theirs.mtu)
    return hello_mod.negotiate(ours, theirs)


def serve_connection(cfg: DaemonConfig, tap: Tap, conn: socket.socket) -> None:
    """Relay over one connection; protocol errors end it with one log line, never the daemon."""
    stats = cfg.stats
    size_socket_buffers(conn)
    try:
        mode = exchange_hello(conn, our_hello(cfg, tap))
    except (HelloError, OSError) as exc:
        stats.errors += 1
        stats.last_error = f"hello: {exc}"
        log.error("closing connection: bad hello: %s", exc)
        return
    stats.connects += 1
    stats.connected, stats.mode = True, mode.name
    cfg.on_change()
    log.info("connected (%s frames, offloads 0x%02x)", mode.name, mode.offloads)
    try:
        reason = Relay(tap, conn, mode, stats).run()
        log.info("connection ended: %s", reason)
    except FrameError as exc:
        stats.errors += 1
        stats.last_error = str(exc)
        log.error("closing connection: %s", exc)
    finally:
        stats.connected, stats.mode, stats.peer_pid = False, "", None
        cfg.on_change()


# -- the two roles --------------------------------------------------------------


def run_server(cfg: DaemonConfig, tap: Tap) -> None:
    server, inode = listen(cfg.socket_path)
    log.info("listening on %s, TAP %s", cfg.socket_path, cfg.tap_name)
    try:
        while True:
            conn, _ = server.accept()
            with conn:
                cfg.stats.peer_pid = _peer_pid(conn)
                serve_connection(cfg, tap, conn)
    finally:
        server.close()
        _unlink_if_ours(cfg.socket_path, inode)


def run_client(cfg: DaemonConfig, tap: Tap) -> None:
    while True:
        conn = connect(cfg.socket_path, cfg.connect_timeout)
        with conn:
            serve_connection(cfg, tap, conn)
        log.info("reconnecting to %s", cfg.socket_path)


def connect(socket_path: Path, timeout: float) -> socket.socket:
    """Connect with backoff: the server may be starting, or restarting after a crash."""

    @tenacity.retry(
        retry=tenacity.retry_if_exception_type((FileNotFoundError, ConnectionRefusedError)),
        wait=tenacity.wait_exponential(multiplier=0.02, max=0.5),
        stop=tenacity.stop_after_delay(timeout),
        reraise=True,
    )
    def attempt() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(str(socket_path))
        except OSError:
            sock.close()
            raise
        return sock

    try:
        return attempt()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise HpkError(
            f"no hpk-net-daemon server at {socket_path} after {timeout:.0f} s ({exc.strerror})",
            "start the server side first, or raise --connect-timeout",
        ) from None
    except PermissionError:
        raise HpkError(f"no permission to connect to {socket_path}", "run as the socket folder's owner") from None


def run(cfg: DaemonConfig) -> None:
    """Run until SIGTERM/SIGINT; then remove the socket and the TAP."""

    def stop(signum, _frame):
        raise StopRequested(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if cfg.cpu is not None:
        affinity.pin(cfg.cpu)
    if cfg.netns:
        enter_netns(cfg.netns)
    tap = Tap.attach(cfg.tap_name, vnet_hdr=cfg.offload)
    writer = StatsWriter(cfg.stats, cfg.stats_file, cfg.stats_interval) if cfg.stats_file else None
    if writer:
        cfg.on_change = writer.flush
    try:
        tap.configure(mtu=cfg.mtu, master=cfg.bridge if cfg.role == "server" else None)
        if writer:
            writer.start()
        if cfg.role == "server":
            run_server(cfg, tap)
        else:
            run_client(cfg, tap)
    except StopRequested as why:
        log.info("stopping on %s", why)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        tap.close(remove=True)
        if writer:
            writer.stop()


def _peer_pid(conn: socket.socket) -> int | None:
    try:
        pid, _uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return pid or None
    except OSError:
        return None


def _unlink_if_ours(path: Path, inode: int) -> None:
    """Only remove the socket we bound: a newer server may have replaced it."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
