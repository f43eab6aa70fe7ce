"""The container's first process (embedded runtime): wait for the network, enter the root, run the command.

It starts in the container's fresh namespaces (network, mount, and PID with
--pid, where it is PID 1) from the bubble's file system, so the image needs nothing of
ours. It blocks until hpktainer says the network is up (a JSON message on
the go fd, with late environment such as the step's peers), then, for an
image directory, mounts /proc, /dev and /sys inside it and chroots (for the bubble's own root, only a fresh /sys); then runs the command as its child, passes INT/TERM/HUP on, and
exits with the command's status (128+N when a signal N ended it).

Run: python -m hpk_slurm.container.stage1 GO_FD ROOTFS|- -- COMMAND [ARGS...]
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import select
import signal
import sys
import termios
import tty

from hpk_slurm.procs import die_with_parent
from hpk_slurm.signals import FORWARDED, exit_code, forward_to

MS_BIND = 0x1000
MS_REC = 0x4000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8


def _mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


SAFE = MS_NOSUID | MS_NODEV | MS_NOEXEC


def mount_sysfs(target: str) -> None:
    """A sysfs of the container's own network namespace (/sys/class/net shows tap0, not the host's)."""
    _mount("sysfs", target, "sysfs", SAFE)


def enter_root(rootfs: str) -> None:
    for name in ("proc", "dev", "sys"):
        os.makedirs(os.path.join(rootfs, name), exist_ok=True)
    _mount("proc", os.path.join(rootfs, "proc"), "proc", SAFE)
    _mount("/dev", os.path.join(rootfs, "dev"), None, MS_BIND | MS_REC)
    mount_sysfs(os.path.join(rootfs, "sys"))
    os.chroot(rootfs)
    os.chdir("/")


def read_go(go_fd: int) -> dict | None:
    """hpktainer's go-ahead: {"env": {...}, "hosts": path or null}; None if it gave up (EOF)."""
    data = b""
    while chunk := os.read(go_fd, 65536):
        data += chunk
    os.close(go_fd)
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def run(go_fd: int, rootfs: str, command: list[str]) -> int:
    go = read_go(go_fd)
    if go is None:
        print("hpktainer: the container's network was not set up; not starting the command", file=sys.stderr)
        return 125
    os.environ.update(go.get("env", {}))
    if go.get("hosts"):  # the step's peers by name
        target = os.path.join(rootfs if rootfs != "-" else "/", "etc/hosts")
        if os.path.exists(target):
            _mount(go["hosts"], target, None, MS_BIND)
    if rootfs != "-":
        enter_root(rootfs)
    else:
        mount_sysfs("/sys")
    if os.isatty(0) and os.isatty(1):
        return run_on_own_terminal(command)
    try:
        child = os.fork()
    except OSError as exc:
        print(f"hpktainer: cannot start the command: {exc}", file=sys.stderr)
        return 126
    if child == 0:
        exec_command(command)
    forward_to(lambda: child)
    while True:  # as PID 1 (--pid) we also reap orphans of the command
        pid, status = os.wait()
        if pid == child:
            return exit_code(status)


def exec_command(command: list[str]) -> None:
    """In the forked child: default signals, die with stage1, become the command."""
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    die_with_parent()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"hpktainer: {command[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


def run_on_own_terminal(command: list[str]) -> int:
    """An interactive command gets a terminal of its own, relayed to the user's (as `docker -t` does).

    The user's terminal belongs to a session outside the bubble's PID
    namespace; a shell there cannot see its process groups and fails at job
    control. Inside, a fresh pseudo-terminal gives it a session of its own;
    the user's terminal is put in raw mode, so Ctrl-C travels as a byte and
    becomes SIGINT for the container's foreground job.
    """
    master, slave = os.openpty()
    _copy_window_size(0, slave)
    child = os.fork()
    if child == 0:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.close(master)
        os.close(slave)
        exec_command(command)
    os.close(slave)
    saved = termios.tcgetattr(0)
    tty.setraw(0, termios.TCSANOW)  # not TCSAFLUSH: keep what the user typed ahead
    signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(0, master))
    forward_to(lambda: child)
    inputs = [0, master]
    try:
        while True:
            ready, _, _ = select.select(inputs, [], [])  # retried after SIGWINCH (PEP 475)
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the command's side closed
                    break
                if not data:
                    break
                os.write(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    inputs.remove(0)
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)
    return exit_code(os.waitpid(child, 0)[1])


def _copy_window_size(src: int, dst: int) -> None:
    try:
        fcntl.ioctl(dst, termios.TIOCSWINSZ, fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        pass


def main(argv: list[str]) -> int:
    go_fd, rootfs = int(argv[0]), argv[1]
    if argv[2] != "--" or len(argv) < 4:
        print("usage: python -m hpk_slurm.container.stage1 GO_FD ROOTFS|- -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_IGN)  # until the command runs: nothing to pass on yet
    return run(go_fd, rootfs, argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
