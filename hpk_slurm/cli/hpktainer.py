"""`hpktainer`: Apptainer's command line, with every container on the job's overlay network."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import click

from hpk_slurm.bubble import manager
from hpk_slurm.bubble.spec import default_run_root
from hpk_slurm.container import args as cargs
from hpk_slurm.errors import HpkError
from hpk_slurm.log import setup_logging
from hpk_slurm.procs import die_with_parent
from hpk_slurm.signals import run_passing_signals

BUBBLE_INIT = b"hpk_slurm.bubble.init"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "allow_interspersed_args": False,
               "help_option_names": []}


def fail(exc: Exception, code: int = 1):
    click.echo(f"hpktainer: error: {exc}", err=True)
    sys.exit(code)


# -- where are we? --------------------------------------------------------------------------


def bubble_we_are_in() -> Path | None:
    """Our run folder if this process is inside a bubble (its init is our PID 1, or we were let in)."""
    try:
        cmdline = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        cmdline = []
    if BUBBLE_INIT in cmdline:
        return Path(cmdline[cmdline.index(BUBBLE_INIT) + 1].decode())
    if os.environ.get("HPK_IN_BUBBLE") == "1" and os.environ.get("HPK_RUN_DIR"):
        return Path(os.environ["HPK_RUN_DIR"])
    return None


def find_bubble(selector: str | None) -> Path:
    """From outside: --bubble (ID, name or run folder), HPK_BUBBLE, the Slurm job's bubble, or the only one."""
    selector = selector or os.environ.get("HPK_BUBBLE")
    root = default_run_root()
    if selector:
        path = Path(selector) if "/" in selector else root / (f"bubble{selector}" if selector.isdigit() else selector)
    elif os.environ.get("SLURM_JOB_ID", "").isdigit():
        path = job_bubble(int(os.environ["SLURM_JOB_ID"]))
    else:
        running = [Path(b["run_dir"]) for b in manager.list_bubbles(root) if b["state"] == "ready"]
        if len(running) != 1:
            raise HpkError("not inside a bubble, and " + ("no bubble is running" if not running else
                           f"{len(running)} bubbles are running"),
                           "start one with `hpk-bubble start`, or choose with --bubble ID|NAME|RUN_DIR")
        path = running[0]
    if not (path / "spec.json").is_file():
        raise HpkError(f"no bubble at {path}", "start it with `hpk-bubble start`, or check --bubble")
    return path


def job_bubble(job_id: int) -> Path:
    """This node's bubble of Slurm job `job_id`, or why the prolog could not start it."""
    from hpk_slurm.config import load_config
    from hpk_slurm.slurm.job import job_run_dir
    from hpk_slurm.slurm.prolog import failure_marker

    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    path = job_run_dir(load_config(), os.getuid(), job_id, node)
    marker = failure_marker(path)
    if not path.exists() and marker.is_file():
        raise HpkError(f"job {job_id} has no bubble on this node: {marker.read_text().strip()}",
                       "see the node's slurmd log for the prolog's messages")
    if not path.exists():
        raise HpkError(f"job {job_id} has no bubble on this node ({path})",
                       "is the hpk prolog configured (Prolog=, PrologFlags=Alloc) on this cluster?")
    return path


def reenter(run_dir: Path, argv: list[str]) -> int:
    """Run this same hpktainer command inside the bubble; signals and the exit code pass through."""
    full = manager.enter_argv(run_dir, [sys.executable, "-m", "hpk_slurm.cli.hpktainer", *argv])
    return run_passing_signals(full, dict(os.environ, HPK_RUN_DIR=str(run_dir), HPK_IN_BUBBLE="1"))


def inside_or_reenter(ctx: click.Context):
    """Inside the bubble: its context. Outside: re-run the whole command inside and exit with its code."""
    from hpk_slurm.container.launcher import BubbleContext  # netlink is needed only inside the bubble

    run_dir = bubble_we_are_in()
    if run_dir is None:
        try:
            target = find_bubble(ctx.find_root().params.get("bubble"))
            code = reenter(target, sys.argv[1:])
        except HpkError as exc:
            fail(exc)
        sys.exit(code)
    # Inside: if whoever let us in dies, end cleanly (the container with us).
    die_with_parent(signal.SIGTERM)
    if os.getppid() == 1:  # it died already: we were handed to the bubble's init
        sys.exit(1)
    try:
        return BubbleContext.load(run_dir)
    except (HpkError, FileNotFoundError) as exc:
        fail(exc)


# -- the command line ------------------------------------------------------------------------


class HpktainerGroup(click.Group):
    """Our verbs; every other verb goes to Apptainer untouched (build, pull, inspect ...)."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return args[0], passthrough, args[1:]
        return super().resolve_command(ctx, args)


@click.group(cls=HpktainerGroup, context_settings=CONTEXT)
@click.option("--bubble", default=None, metavar="ID|NAME|DIR",
              help="The bubble to use from outside one (default: HPK_BUBBLE, the Slurm job's, or the only one).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(bubble, verbose):
    """Apptainer, with every container on the job's overlay network.

    \b
      hpktainer run    [apptainer options] IMAGE [ARGS...]
      hpktainer exec   [apptainer options] IMAGE COMMAND [ARGS...]
      hpktainer shell  [apptainer options] IMAGE
      hpktainer instance start [options] IMAGE NAME [ARGS...] | stop NAME | list
      hpktainer exec instance://NAME COMMAND...  (also shell)
      hpktainer ps [--json] [--all]
      hpktainer hosts [--step N]                 the step's ranks: IP and <jobid>-<rank>
      hpktainer srun [srun options] -- [options] IMAGE [ARGS...]
      hpktainer doctor [--json]                  is this node ready? what to fix
      hpktainer report [JOBID] [--json] [--html FILE]   the job's network report
      hpktainer <anything else>  -> passed to apptainer unchanged

    What differs from apptainer: the container gets its own network
    namespace with an address from the bubble's flannel subnet (HPK_IP),
    a default route via hpk-bridge (HPK_GATEWAY_IP) and the overlay MTU,
    all set before your command starts. It reaches every container of the
    job, on every node, and the outside world through NAT. So the network
    options (--net, --network, --network-args, --dns) are refused.

    \b
    Our options (anywhere before IMAGE):
      --net-mode relay|veth   relay (default): TAP + hpk-net-daemon pair over a
                              UNIX socket, both daemons on one of your CPUs;
                              veth: a kernel veth pair (faster, ~10x lower ping)
      --publish H:C[/tcp|udp] make container port C answer on this node's port H
      --wait-peers            in a job step: start the command once every rank of
                              the step is up; HPK_PEERS and /etc/hosts name them

    Exit status: the container's (128+N if signal N ended it). INT, TERM and
    HUP are passed to the container. Run it on a node of a job with a bubble
    (or inside one: `hpk-bubble shell`). Without Apptainer, the embedded
    runtime runs IMAGE directories as root file systems ("/" = the bubble's).
    """
    setup_logging("hpktainer", verbose)


def _container_command(verb: str):
    @click.pass_context
    def command(ctx, argv):
        try:
            parsed = cargs.parse(verb, list(argv))
        except HpkError as exc:
            fail(exc, 2)
        bubble_ctx = inside_or_reenter(ctx)
        from hpk_slurm.container import instances
        from hpk_slurm.container.launcher import ContainerRun

        try:
            if parsed.image.startswith("instance://"):
                code = instances.join(bubble_ctx, parsed.image.removeprefix("instance://"), parsed)
            else:
                code = ContainerRun(bubble_ctx, parsed).run()
        except HpkError as exc:
            fail(exc)
        sys.exit(code)

    return command


for _verb, _help in (("run", "Run IMAGE's runscript (or ARGS) in a container on the overlay."),
                     ("exec", "Run COMMAND in IMAGE in a container on the overlay."),
                     ("shell", "An interactive shell in IMAGE, on the overlay.")):
    main.command(_verb, help=_help, context_settings=PASSTHROUGH)(
        click.argument("argv", nargs=-1, type=click.UNPROCESSED)(_container_command(_verb)))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-a", "--all", "show_all", is_flag=True, help="Also containers that have exited.")
@click.pass_context
def ps(ctx, as_json, show_all):
    """The bubble's containers: id, IP, PID, mode, command, start time, traffic."""
    bubble_ctx = inside_or_reenter(ctx)
    from hpk_slurm.container.launcher import container_rows, sweep_orphans

    sweep_orphans(bubble_ctx)
    rows = [r for r in container_rows(bubble_ctx) if show_all or r["state"] == "running"]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(f"{'ID':9} {'IP':15} {'PID':>7} {'MODE':5} {'STATE':8} {'TX':>12} {'RX':>12}  COMMAND")
    for r in rows:
        click.echo(f"{r['id']:9} {r['ip']:15} {r['pid'] or '-':>7} {r['mode']:5} {r['state']:8} "
                   f"{r['tx_bytes']:>12} {r['rx_bytes']:>12}  {' '.join(r['command'])}")


@main.group()
def instance():
    """Background containers on the overlay: start, stop, list."""


@instance.command("start", context_settings=PASSTHROUGH)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def instance_start(ctx, argv):
    """[options] IMAGE NAME [ARGS...]: start NAME; returns once it runs with its network up."""
    try:
        parsed = cargs.parse("instance-start", list(argv))
    except HpkError as exc:
        fail(exc, 2)
    bubble_ctx = inside_or_reenter(ctx)
    from hpk_slurm.container import instances

    try:
        container_id, address = instances.start(bubble_ctx, parsed).split()
    except HpkError as exc:
        fail(exc)
    click.echo(f"instance {parsed.instance_name} started: container {container_id}, IP {address}")


@instance.command("stop")
@click.argument("name")
@click.pass_context
def instance_stop(ctx, name):
    """Stop instance NAME (its address, links and forwards are given back)."""
    bubble_ctx = inside_or_reenter(ctx)
    from hpk_slurm.container import instances

    try:
        instances.stop(bubble_ctx, name)
    except HpkError as exc:
        fail(exc)
    click.echo(f"instance {name} stopped")


@instance.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def instance_list(ctx, as_json):
    """Running instances: name, container id, IP."""
    bubble_ctx = inside_or_reenter(ctx)
    from hpk_slurm.container.launcher import container_rows, sweep_orphans

    sweep_orphans(bubble_ctx)
    names = {r.id: r.name for r in bubble_ctx.records.all() if r.name and r.running}
    rows = [dict(r, name=names[r["id"]]) for r in container_rows(bubble_ctx) if r["id"] in names]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        click.echo(f"{r['name']:20} {r['id']:9} {r['ip']:15} {' '.join(r['command'])}")


@main.command()
@click.option("--step", default=None, help="Job step (default: this step, SLURM_STEP_ID).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def hosts(ctx, step, as_json):
    """The step's ranks as a hostfile: overlay IP and name (<jobid>-<rank>), one per line."""
    step = step or os.environ.get("SLURM_STEP_ID")
    job = os.environ.get("SLURM_JOB_ID")
    if not (step and step.isdigit() and job and job.isdigit()):
        fail(HpkError("no job step", "run it inside a job (srun hpktainer hosts), or give --step"), 2)
    bubble_ctx = inside_or_reenter(ctx)
    from hpk_slurm.container.peers import Peers
    from hpk_slurm.overlay.etcd import Etcd

    ranks = Peers(Etcd(bubble_ctx.spec.etcd_endpoints), bubble_ctx.spec.etcd_prefix).ranks(step)
    if as_json:
        click.echo(json.dumps(ranks, indent=1))
        return
    for rank, entry in ranks.items():
        click.echo(f"{entry['ip']}\t{job}-{rank}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def doctor(as_json):
    """Check this node: programs, TUN device, user namespaces, etcd, the job's ports and bubble.

    Exit status 1 when something is wrong; each problem says how to fix it.
    """
    from hpk_slurm import doctor as doc
    from hpk_slurm.config import load_config
    from hpk_slurm.slurm.job import job_run_dir

    try:
        cfg = load_config()
    except HpkError as exc:
        fail(exc)
    job = doc.current_job()
    running = False
    if job is not None:
        node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
        running = any(b["state"] == "ready" and b["run_dir"] == str(job_run_dir(cfg, os.getuid(), job, node))
                      for b in manager.list_bubbles(job_run_dir(cfg, os.getuid(), job, node).parent))
    checks = doc.run_checks(cfg, job, running)
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in checks], indent=1))
    else:
        for check in checks:
            click.echo(check.line())
    sys.exit(0 if all(c.ok for c in checks) else 1)


@main.command(context_settings=PASSTHROUGH)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def srun(argv):
    """Shorthand: hpktainer srun [srun options] -- [options] IMAGE [ARGS] = srun [srun options] hpktainer run ..."""
    argv = sys.argv[sys.argv.index("srun") + 1:]  # raw: click would swallow the `--` that splits them
    if "--" not in argv:
        fail(HpkError("hpktainer srun: put -- between srun's options and the container's"), 2)
    cut = argv.index("--")
    srun_options, container = argv[:cut], argv[cut + 1:]
    binary = shutil.which("srun")
    if not binary:
        fail(HpkError("srun not found", "install the Debian package slurm-client, or run inside a Slurm job"))
    os.execv(binary, [binary, *srun_options, sys.executable, "-m", "hpk_slurm.cli.hpktainer", "run", *container])


@main.command()
@click.argument("job_id", metavar="[JOBID]", required=False, type=click.IntRange(min=0))
@click.option("--json", "as_json", is_flag=True, help="The report as JSON (schema: hpk_slurm/report/schema.json).")
@click.option("--html", "html_file", metavar="FILE", default=None,
              help="Also write one self-contained HTML page with a topology picture (- for standard output).")
@click.option("--report-dir", metavar="DIR", default=None,
              help="Where the node files are (default: paths.report_dir of the site configuration).")
@click.option("--nodes", metavar="LIST", default=None,
              help="The job's nodes (e.g. node[1-4]) when Slurm no longer knows the job.")
def report(job_id, as_json, html_file, report_dir, nodes):
    """What the job's network did: nodes, containers, traffic, problems first.

    JOBID defaults to the current job (SLURM_JOB_ID). Merges the node files
    the epilog writes when the job ends (<report_dir>/<jobid>/<node>.json,
    readable by the job's user and root only); while the job still runs,
    shows this node's part, live.
    """
    from hpk_slurm.report.command import run_report

    try:
        sys.exit(run_report(job_id, as_json=as_json, html_file=html_file, report_dir=report_dir, nodes=nodes))
    except HpkError as exc:
        fail(exc)


@click.command(context_settings=PASSTHROUGH)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def passthrough(ctx, argv):
    binary = next((b for b in ("apptainer", "singularity") if shutil.which(b)), None)
    if not binary:
        fail(HpkError(f"'{ctx.info_name}' is an Apptainer command, and Apptainer is not installed",
                      "install Apptainer (or SingularityCE) for it"))
    os.execvp(binary, [binary, ctx.info_name, *argv])


if __name__ == "__main__":
    main()
