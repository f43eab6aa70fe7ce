"""`hpk-bubble`: start, stop and look into a node's bubble (the command line over bubble.manager)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from hpk_slurm.bubble import manager
from hpk_slurm.bubble.spec import ETCD_CLIENT_PORT, LOCAL_ETCD, BubbleSpec, default_run_root, parse_id
from hpk_slurm.errors import HpkError
from hpk_slurm.log import setup_logging
from hpk_slurm.net.host import detect_host_ip
from hpk_slurm.overlay.flannel import NetworkConfig

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def bubble_id(_ctx, _param, value):
    try:
        return parse_id(value)
    except HpkError as exc:
        raise click.BadParameter(str(exc)) from None


def run_dir_of(run_root: Path | None, name: str | None, ident: int) -> Path:
    return (run_root or default_run_root()) / (name or f"bubble{ident}")


def fail(exc: HpkError) -> None:
    click.echo(f"hpk-bubble: error: {exc}", err=True)
    sys.exit(1)


id_argument = click.argument("ident", metavar="ID", default="1", callback=bubble_id)
name_option = click.option("--name", default=None, help="Bubble name (default: bubble<ID>; Slurm jobs use hpk-<jobid>).")
root_option = click.option("--run-root", type=click.Path(path_type=Path), default=None,
                           help="Folder holding bubbles' run folders (default /run/hpk as root, else the user's runtime dir).")


@click.group(context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose):
    """Rootless bubbles: one per job and node, joined by a Flannel overlay.

    A bubble is a rootless container (user, network, mount and PID namespaces)
    whose way out is slirp4netns. Inside it run flanneld (etcd backend, VXLAN),
    etcd on the controller node, and hpk-bridge, the gateway of the nested
    containers started with `hpktainer run`. ID (0-253) picks the bubble's
    slirp network 10.0.(ID+1).0/24 and its default name bubble<ID>.

    \b
    Two nodes by hand (the seed's HPK_ROLE / ETCD_IP / HOST_IP work too):
      node1$ hpk-bubble start 1 --controller --host-ip 172.31.250.11
      node2$ hpk-bubble start 2 --etcd-ip 172.31.250.11 --host-ip 172.31.250.12
      node2$ hpk-bubble status 2 --json
      node2$ hpk-bubble exec 2 -- ip -br addr
      node2$ hpk-bubble stop 2
    """
    setup_logging("hpk-bubble", verbose)


@main.command()
@id_argument
@name_option
@root_option
@click.option("--run-dir", type=click.Path(path_type=Path), default=None, help="This bubble's run folder (overrides --run-root/--name).")
@click.option("--host-ip", envvar="HOST_IP", default=None, help="This node's IPv4 address (default: detected). Env: HOST_IP.")
@click.option("--controller/--node", "controller", default=None,
              help="Controller: write the overlay config, and host the job's etcd unless --etcd-endpoints "
                   "names one. Env: HPK_ROLE=controller|node.")
@click.option("--etcd-ip", envvar="ETCD_IP", default=None, help="Node: the controller's host IP. Env: ETCD_IP.")
@click.option("--etcd-port", type=int, default=ETCD_CLIENT_PORT, show_default=True,
              help="Host TCP port of the job's etcd (forwarded to the controller bubble).")
@click.option("--etcd-endpoints", envvar="ETCD_ENDPOINTS", default=None,
              help="Comma-separated URLs of an existing etcd (instead of a job-local one).")
@click.option("--etcd-prefix", default="/hpk/network", show_default=True, help="etcd key prefix of this overlay.")
@click.option("--network", default="10.244.0.0/16", show_default=True, help="Overlay address pool.")
@click.option("--subnet-len", type=int, default=24, show_default=True, help="Prefix length of each bubble's subnet.")
@click.option("--vni", type=int, default=1, show_default=True, help="VXLAN network identifier.")
@click.option("--vxlan-port", type=int, default=8472, show_default=True, help="VXLAN UDP port (host side, forwarded).")
@click.option("--runtime", type=click.Choice(["auto", "embedded", "apptainer", "singularity"]), default="auto",
              show_default=True, help="auto: Apptainer where installed, else the embedded namespace runtime.")
@click.option("--image", default=None, help="Apptainer image of the bubble (images/hpk-bubble).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for the bubble to be ready.")
@click.option("--json", "as_json", is_flag=True, help="Print the bubble's facts as JSON.")
def start(ident, name, run_root, run_dir, host_ip, controller, etcd_ip, etcd_port, etcd_endpoints, etcd_prefix,
          network, subnet_len, vni, vxlan_port, runtime, image, timeout, as_json):
    """Start bubble ID and wait until its overlay is up."""
    try:
        if controller is None:
            role = os.environ.get("HPK_ROLE", "")
            if role not in ("", "controller", "node"):
                raise HpkError(f"HPK_ROLE={role!r} is neither controller nor node")
            controller = role == "controller" or (not role and not etcd_ip and not etcd_endpoints)
        if etcd_endpoints:
            endpoints = tuple(e.strip() for e in etcd_endpoints.split(",") if e.strip())
        elif controller:
            endpoints = LOCAL_ETCD
        elif etcd_ip:
            endpoints = (f"http://{etcd_ip}:{etcd_port}",)
        else:
            raise HpkError("a node bubble needs the controller's address", "give --etcd-ip (or ETCD_IP) or --etcd-endpoints")
        spec = BubbleSpec(
            id=ident, name=name or "", host_ip=host_ip or detect_host_ip(), controller=controller,
            etcd_endpoints=endpoints, etcd_prefix=etcd_prefix,
            network=NetworkConfig(network, subnet_len, vni, vxlan_port), etcd_port=etcd_port,
            run_dir=run_dir or run_dir_of(run_root, name, ident), runtime=runtime, image=image,
            start_timeout=timeout,
        )
        facts = manager.start(spec)
    except HpkError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(facts, indent=1))
    else:
        click.echo(f"bubble {facts['name']} ready: subnet {facts['flannel_subnet']} (MTU {facts['flannel_mtu']}), "
                   f"VXLAN port {facts['vxlan_port']} VNI {facts['vni']}, pid {facts['pids'].get('bubble')}")


def _selected_run_dir(ident, name, run_root, run_dir) -> Path:
    return run_dir or run_dir_of(run_root, name, ident)


run_dir_option = click.option("--run-dir", type=click.Path(path_type=Path), default=None, help="The bubble's run folder.")


@main.command()
@id_argument
@name_option
@root_option
@run_dir_option
def stop(ident, name, run_root, run_dir):
    """Stop bubble ID: its processes by recorded PID, its lease, sockets and state. Safe to repeat."""
    try:
        found = manager.stop(_selected_run_dir(ident, name, run_root, run_dir))
    except HpkError as exc:
        fail(exc)
    click.echo(f"bubble {name or f'bubble{ident}'} {'stopped' if found else 'was not running'}")


@main.command()
@id_argument
@name_option
@root_option
@run_dir_option
@click.option("--json", "as_json", is_flag=True, help="All facts as JSON.")
def status(ident, name, run_root, run_dir, as_json):
    """Show bubble ID (exit 1 if it is not running)."""
    path = _selected_run_dir(ident, name, run_root, run_dir)
    if not (path / "spec.json").is_file():
        if as_json:
            click.echo(json.dumps({"name": name or f"bubble{ident}", "state": "absent"}))
        else:
            click.echo(f"bubble {name or f'bubble{ident}'}: not running")
        sys.exit(1)
    facts = manager.describe(path)
    if as_json:
        click.echo(json.dumps(facts, indent=1))
    else:
        for key, value in facts.items():
            click.echo(f"{key:16} {value}")
    sys.exit(0 if facts["state"] == "ready" else 1)


@main.command("list")
@root_option
@click.option("--json", "as_json", is_flag=True)
def list_(run_root, as_json):
    """The bubbles under the run root."""
    bubbles = manager.list_bubbles(run_root)
    if as_json:
        click.echo(json.dumps(bubbles, indent=1))
        return
    for b in bubbles:
        click.echo(f"{b['name']:20} {b['state']:8} {b['flannel_subnet'] or '-':18} {b['host_ip']}")


@main.command(context_settings={"ignore_unknown_options": True})
@id_argument
@name_option
@root_option
@run_dir_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec(ident, name, run_root, run_dir, command):  # noqa: A001 - the verb users type
    """Run COMMAND inside bubble ID: hpk-bubble exec 1 -- ip -br addr."""
    _enter(_selected_run_dir(ident, name, run_root, run_dir), list(command))


@main.command()
@id_argument
@name_option
@root_option
@run_dir_option
def shell(ident, name, run_root, run_dir):
    """An interactive shell inside bubble ID."""
    _enter(_selected_run_dir(ident, name, run_root, run_dir), [os.environ.get("SHELL", "/bin/bash")])


def _enter(path: Path, argv: list[str]) -> None:
    try:
        full = manager.enter_argv(path, argv)
    except (HpkError, FileNotFoundError) as exc:
        fail(exc if isinstance(exc, HpkError) else HpkError(f"no bubble at {path}"))
    os.execvp(full[0], full)


if __name__ == "__main__":
    main()
