"""How a nested container is started: its namespaces first, the user's command once the network is up.

Both engines split the start in two so that hpktainer can wire the network
in between, with no race: `prepare` creates the container's namespaces and
returns its first process; `go` starts the user's command.
- embedded: `unshare` (net, mount, PID) running stage1 from the bubble's
  file system; stage1 waits on a pipe, then chroots into IMAGE (a
  directory; "/" is the bubble's own root) and runs the command.
- apptainer: an instance with loopback only (`--net --network none`), then
  `apptainer run|exec|shell instance://...`, then `instance stop`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from hpk_slurm.container.args import ContainerArgs
from hpk_slurm.errors import HpkError, require_binary
from hpk_slurm.procs import ProcRef, die_with_parent, wait_first_child
from hpk_slurm.runtime import apptainer as apptainer_cli

START_TIMEOUT = 10.0


@dataclass
class Started:
    holder: ProcRef  # the container's first process: its namespaces are the container's
    process: subprocess.Popen | None  # what hpktainer waits on (None: the holder itself)
    extra: dict = field(default_factory=dict)


class Engine(ABC):
    @abstractmethod
    def prepare(self, args: ContainerArgs, name: str, env: dict[str, str], hosts: Path | None = None) -> Started:
        """`hosts`: a file that will hold the step's peers, to become the container's /etc/hosts."""

    @abstractmethod
    def go(self, started: Started, args: ContainerArgs, name: str, env: dict[str, str],
           hosts: Path | None = None) -> None: ...

    @abstractmethod
    def signal_target(self, started: Started) -> int | None: ...

    @abstractmethod
    def cleanup(self, started: Started, name: str) -> None: ...


def select_engine() -> Engine:
    binary = shutil.which("apptainer") or shutil.which("singularity")
    return ApptainerEngine(binary) if binary else EmbeddedEngine()


# -- embedded ---------------------------------------------------------------------------

#: Apptainer options the embedded runtime understands; any other needs Apptainer.
EMBEDDED_OPTIONS = {"--env", "--cleanenv", "-e", "--pwd", "--pid", "-p"}


class EmbeddedEngine(Engine):
    def rootfs(self, image: str) -> str:
        if image == "/":
            return "-"
        path = Path(image)
        if path.is_dir():
            return str(path.resolve())
        if path.exists():
            raise HpkError(f"{image} is an image file; the embedded runtime runs directory images only",
                           "install Apptainer to run SIF images, or give a root file system directory")
        raise HpkError(f"image {image} not found")

    def command(self, args: ContainerArgs, rootfs: str) -> list[str]:
        if args.verb == "exec":
            return args.command
        if args.verb == "shell":
            return ["/bin/sh"]
        root = Path("/" if rootfs == "-" else rootfs)
        script = "startscript" if args.verb == "instance-start" else "runscript"
        if (root / ".singularity.d" / script).exists():
            return [f"/.singularity.d/{script}", *args.command]
        if args.verb == "instance-start":
            return args.command or ["sleep", "infinity"]
        return args.command or ["/bin/sh"]

    def check_options(self, args: ContainerArgs) -> None:
        for opt in args.apptainer_options:
            name = opt.split("=", 1)[0]
            if name.startswith("-") and name not in EMBEDDED_OPTIONS:
                raise HpkError(f"option {name} needs Apptainer; the embedded runtime supports "
                               f"{', '.join(sorted(EMBEDDED_OPTIONS))}")

    def environment(self, args: ContainerArgs, hpk_env: dict[str, str]) -> dict[str, str]:
        cleanenv = any(o in ("--cleanenv", "-e") for o in args.apptainer_options)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"} if cleanenv else dict(os.environ)
        for item in args.option_values("--env"):
            for pair in item.split(","):
                key, _, value = pair.partition("=")
                env[key] = value
        env.update(hpk_env)
        return env

    def prepare(self, args: ContainerArgs, name: str, env: dict[str, str], hosts: Path | None = None) -> Started:
        require_binary("unshare", "util-linux")
        self.check_options(args)
        rootfs = self.rootfs(args.image)
        go_r, go_w = os.pipe()
        cwd = (args.option_values("--pwd") or [None])[-1] if rootfs == "-" else None
        # As with Apptainer, a PID namespace only on request (--pid): an interactive shell's job
        # control needs to see the terminal's process group, which a PID namespace would hide.
        pid_ns = ["--pid", "--mount-proc"] if {"--pid", "-p"} & set(args.apptainer_options) else []
        argv = ["unshare", "--net", "--mount", *pid_ns, "--fork", "--kill-child", "--",
                sys.executable, "-m", "hpk_slurm.container.stage1", str(go_r), rootfs, "--",
                *self.command(args, rootfs)]
        try:
            process = subprocess.Popen(argv, pass_fds=(go_r,), env=self.environment(args, env), cwd=cwd,
                                       preexec_fn=die_with_parent)
        finally:
            os.close(go_r)
        holder = wait_first_child(process, START_TIMEOUT)
        if holder is None:
            os.close(go_w)
            raise HpkError(f"the container's namespaces could not be created (unshare status {process.poll()})")
        return Started(ProcRef.of(holder), process, {"go": go_w})

    def go(self, started: Started, args: ContainerArgs, name: str, env: dict[str, str],
           hosts: Path | None = None) -> None:
        go_w = started.extra.pop("go")
        message = json.dumps({"env": env, "hosts": str(hosts) if hosts else None}).encode()
        with os.fdopen(go_w, "wb") as pipe:
            pipe.write(message)

    def signal_target(self, started: Started) -> int | None:
        return started.holder.pid  # stage1, PID 1 of the container, passes them on

    def cleanup(self, started: Started, name: str) -> None:
        if "go" in started.extra:  # never went: stage1 sees EOF and exits
            os.close(started.extra.pop("go"))
        if started.process.poll() is None:
            started.process.kill()
        started.process.wait()


# -- apptainer -----------------------------------------------------------------------------


class ApptainerEngine(Engine):
    def __init__(self, binary: str):
        self.binary = binary

    def prepare(self, args: ContainerArgs, name: str, env: dict[str, str], hosts: Path | None = None) -> Started:
        options = args.apptainer_options + (["--bind", f"{hosts}:/etc/hosts"] if hosts else [])
        argv = apptainer_cli.nested_instance_start_argv(self.binary, options, args.image, name)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise HpkError(f"apptainer instance start failed: {result.stderr.strip()[-500:]}")
        listing = subprocess.run(apptainer_cli.instance_list_argv(self.binary, name), capture_output=True, text=True)
        pid = apptainer_cli.instance_pid(listing.stdout, name)
        if not pid:
            raise HpkError(f"instance {name} started but apptainer does not list it")
        return Started(ProcRef.of(pid), process=None)  # type: ignore[arg-type]

    def go(self, started: Started, args: ContainerArgs, name: str, env: dict[str, str],
           hosts: Path | None = None) -> None:
        # The hosts file was bound at instance start (see prepare); env goes in as APPTAINERENV_*.
        if args.verb == "instance-start":
            return  # the instance's start script is its command; hpktainer watches the instance
        verb = "exec" if args.verb == "exec" else args.verb
        argv = apptainer_cli.nested_command_argv(self.binary, verb, name, args.command)
        started.process = subprocess.Popen(argv, env=dict(os.environ, **apptainer_cli.apptainer_env(env)),
                                           preexec_fn=die_with_parent)

    def signal_target(self, started: Started) -> int | None:
        return started.process.pid if started.process else None

    def cleanup(self, started: Started, name: str) -> None:
        if started.process and started.process.poll() is None:
            started.process.terminate()
            started.process.wait()
        subprocess.run(apptainer_cli.instance_stop_argv(self.binary, name, 10), capture_output=True)
