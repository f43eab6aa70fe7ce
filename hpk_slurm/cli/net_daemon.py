"""`hpk-net-daemon`: the command line over hpk_slurm.net.daemon."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hpk_slurm.errors import HpkError
from hpk_slurm.log import setup_logging
from hpk_slurm.net import daemon


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples (the server in the bubble, the client in the container's netns):
  hpk-net-daemon --mode server --socket /run/hpk/b1/sock/c1 --tap hpk-tap-1 --bridge hpk-bridge
  hpk-net-daemon --mode client --socket /run/hpk/b1/sock/c1 --tap tap0 --netns /proc/4242/ns/net
\b
Wire format: each frame preceded by its length (4 bytes, big endian), after a
20-byte hello in which both ends agree on virtio-net headers and offloads.
Exit status: 0 after SIGTERM/SIGINT (socket and TAP removed), 1 on error.""",
)
@click.option("--mode", "role", type=click.Choice(["server", "client"]), required=True,
              help="server: listen on the socket (bubble side); client: connect to it (container side).")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), required=True,
              help="UNIX socket path; its folder is created 0700 and must not be reachable by others.")
@click.option("--tap", "tap_name", required=True, help="TAP device to create, or re-attach to if it exists.")
@click.option("--mtu", type=int, default=None, help="MTU to set on the TAP (default: leave as is, 1500 when new).")
@click.option("--bridge", default=None, help="Server only: add the TAP to this bridge (e.g. hpk-bridge).")
@click.option("--netns", default=None,
              help="Create the TAP in this network namespace: an `ip netns` name or a path like /proc/PID/ns/net.")
@click.option("--no-offload", is_flag=True,
              help="Plain Ethernet frames, no virtio-net headers (for peers without them, and benchmarks).")
@click.option("--stats-file", type=click.Path(path_type=Path), default=None,
              help="Counters as JSON, rewritten every --stats-interval seconds and at exit.")
@click.option("--stats-interval", type=float, default=1.0, show_default=True)
@click.option("--connect-timeout", type=float, default=30.0, show_default=True,
              help="Client only: give up when no server answers for this many seconds.")
@click.option("--cpu", type=click.IntRange(min=0), default=None,
              help="Run on this CPU only. Give both daemons of a pair the same CPU: each frame then wakes "
                   "the other daemon on the CPU already running instead of an idle one (faster on VMs).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(role, socket_path, tap_name, mtu, bridge, netns, no_offload, stats_file, stats_interval,
         connect_timeout, cpu, verbose):
    """Join a TAP device to a peer's TAP over a UNIX socket.

    One hpk-net-daemon runs on each side of a nested container's link: the
    server in the bubble (its TAP on hpk-bridge), the client in the
    container's network namespace (its TAP is the container's tap0). Frames
    read from one TAP are written to the other. With offloads (the default)
    64 KiB TCP segments cross whole. Either side may be restarted: the TAPs
    persist and traffic resumes.
    """
    setup_logging("hpk-net-daemon", verbose)
    if bridge and role != "server":
        raise click.UsageError("--bridge only applies to --mode server")
    try:
        cfg = daemon.DaemonConfig(
            role=role, socket_path=socket_path, tap_name=tap_name, mtu=mtu, bridge=bridge,
            offload=not no_offload, netns=netns, stats_file=stats_file,
            stats_interval=stats_interval, connect_timeout=connect_timeout, cpu=cpu,
        )
        daemon.run(cfg)
    except HpkError as exc:
        click.echo(f"hpk-net-daemon: error: {exc}", err=True)
        sys.exit(1)


def command_line(cfg: daemon.DaemonConfig) -> list[str]:
    """The command that runs `cfg`, beside the options it must match.

    Run with this interpreter, so callers (hpktainer, the test bed) get the
    code they run themselves.
    """
    argv = [sys.executable, "-m", "hpk_slurm.cli.net_daemon", "--mode", cfg.role,
            "--socket", str(cfg.socket_path), "--tap", cfg.tap_name,
            "--connect-timeout", str(cfg.connect_timeout)]
    for flag, value in (("--mtu", cfg.mtu), ("--bridge", cfg.bridge), ("--netns", cfg.netns),
                        ("--cpu", cfg.cpu)):
        if value is not None:
            argv += [flag, str(value)]
    if cfg.stats_file:
        argv += ["--stats-file", str(cfg.stats_file), "--stats-interval", str(cfg.stats_interval)]
    if not cfg.offload:
        argv.append("--no-offload")
    return argv


if __name__ == "__main__":
    main()
