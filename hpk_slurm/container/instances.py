"""Instances: containers that keep running in the background, on the overlay like any other.

`instance start` forks a keeper that owns the container (it is the record's
owner, so a killed keeper is swept like a killed hpktainer) and returns once
the container runs with its network up. `instance stop` asks the keeper to
end it; teardown is the same as for every container.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

from hpk_slurm.container.args import ContainerArgs
from hpk_slurm.container.engines import ApptainerEngine, select_engine
from hpk_slurm.container.launcher import BubbleContext, ContainerRun, container_env
from hpk_slurm.container.record import ContainerRecord
from hpk_slurm.errors import HpkError
from hpk_slurm.runtime import apptainer as apptainer_cli
from hpk_slurm.signals import run_passing_signals

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
STOP_TIMEOUT = 30.0


class _KeptRun(ContainerRun):
    def __init__(self, ctx: BubbleContext, args: ContainerArgs, ready_fd: int):
        super().__init__(ctx, args)
        self.ready_fd = ready_fd

    def on_running(self, record: ContainerRecord) -> None:
        os.write(self.ready_fd, f"{record.id} {record.address}".encode())
        os.close(self.ready_fd)
        self.ready_fd = -1


def running(ctx: BubbleContext, name: str) -> ContainerRecord | None:
    return next((r for r in ctx.records.all() if r.name == name and r.running), None)


def start(ctx: BubbleContext, args: ContainerArgs) -> str:
    """Start the instance; returns "<id> <ip>" once its command runs with its network up."""
    name = args.instance_name or ""
    if not _NAME.match(name):
        raise HpkError(f"invalid instance name {name!r}", "use letters, digits, '.', '_' and '-'")
    if running(ctx, name):
        raise HpkError(f"instance {name} is already running", f"hpktainer instance stop {name}")
    read_fd, write_fd = os.pipe()
    log_path = ctx.records.folder / f"instance-{name}.log"
    pid = os.fork()
    if pid == 0:  # the keeper: detached, owns the container until it is stopped
        os.close(read_fd)
        os.setsid()
        code = 1
        try:
            with open(os.devnull, "rb") as null, open(log_path, "ab") as log:
                os.dup2(null.fileno(), 0)
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
            code = _KeptRun(ctx, args, write_fd).run()  # it passes SIGTERM (instance stop) to the container
        except BaseException as exc:  # noqa: BLE001 - the keeper must always exit, with a trace in its log
            print(f"hpktainer instance {name}: {exc}", file=sys.stderr)
        finally:
            os._exit(code)
    os.close(write_fd)
    data = b""
    while chunk := os.read(read_fd, 4096):
        data += chunk
    os.close(read_fd)
    if not data:
        os.waitpid(pid, 0)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:] if log_path.exists() else []
        raise HpkError(f"instance {name} did not start: {' | '.join(tail) or 'no message'}")
    return data.decode()


def stop(ctx: BubbleContext, name: str) -> None:
    record = running(ctx, name)
    if not record:
        raise HpkError(f"no running instance {name}", "hpktainer instance list")
    record.owner.signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while record.owner.alive():
        if time.monotonic() > deadline:
            record.owner.signal(signal.SIGKILL)
            break
        time.sleep(0.05)


def join(ctx: BubbleContext, name: str, args: ContainerArgs) -> int:
    """`hpktainer exec|shell instance://NAME ...`: run a command in a running instance's namespaces."""
    record = running(ctx, name)
    if not record or not record.holder:
        raise HpkError(f"no running instance {name}", "hpktainer instance list")
    command = args.command if args.verb == "exec" else ["/bin/sh"]
    engine = select_engine()
    if isinstance(engine, ApptainerEngine):
        argv = apptainer_cli.nested_command_argv(engine.binary, args.verb, f"hpk-{record.id}", command)
    else:  # the instance's first process has the container's namespaces and root
        argv = ["nsenter", "-t", str(record.holder.pid), "-n", "-m", "-p", "-r", "-w", "--", *command]
    return run_passing_signals(argv, dict(os.environ, **container_env(ctx, record)))
