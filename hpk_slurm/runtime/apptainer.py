"""Apptainer (or SingularityCE, same CLI) as the bubble runtime: the one place that knows its command line.

The bubble is an instance started with --fakeroot (a user namespace with
root mapped to the caller) and --network none (its own network namespace,
which slirp4netns then serves). Home, cwd, /tmp and host file systems stay
out, a writable tmpfs overlays the image, and the run folder is bound in so
the init inside and the tools outside share state. The image's start script
runs `python3 -m hpk_slurm.bubble.init RUN_DIR` (images/hpk-bubble).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from hpk_slurm.errors import HpkError
from hpk_slurm.procs import ProcRef
from hpk_slurm.runtime.base import Launched, Runtime

DEFAULT_IMAGE = "hpk-bubble.sif"


def instance_start_argv(binary: str, image: str, name: str, run_dir: Path, init_args: list[str]) -> list[str]:
    return [
        binary, "instance", "start",
        "--fakeroot", "--network", "none",
        "--no-mount", "home,cwd,tmp,hostfs",
        "--writable-tmpfs",
        "--bind", "/etc/resolv.conf",
        "--bind", f"{run_dir}:{run_dir}",
        "--env", f"HPK_RUN_DIR={run_dir}",
        image, name, *init_args,
    ]


def instance_list_argv(binary: str, name: str) -> list[str]:
    return [binary, "instance", "list", "--json", name]


def instance_stop_argv(binary: str, name: str, timeout: float) -> list[str]:
    return [binary, "instance", "stop", "--timeout", str(int(timeout)), name]


def instance_pid(list_output: str, name: str) -> int | None:
    """The PID of instance `name` in `instance list --json` output."""
    for inst in json.loads(list_output or "{}").get("instances", []):
        if inst.get("instance") == name:
            return int(inst["pid"])
    return None


class ApptainerRuntime(Runtime):
    name = "apptainer"

    def __init__(self, binary: str = "apptainer"):
        self.binary = binary

    def launch(self, name: str, init_argv: list[str], run_dir: Path, image: str | None, log: Path) -> Launched:
        # init_argv is [python, -m, module, RUN_DIR]: the image's start script supplies python and the module.
        args = [str(run_dir)]
        with open(log, "ab") as out:
            result = subprocess.run(instance_start_argv(self.binary, image or DEFAULT_IMAGE, name, run_dir, args),
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120)
        if result.returncode != 0:
            raise HpkError(f"{self.binary} instance start failed: {log.read_text(errors='replace').strip()[-500:]}")
        for _ in range(100):
            listing = subprocess.run(instance_list_argv(self.binary, name), capture_output=True, text=True)
            pid = instance_pid(listing.stdout, name)
            if pid:
                return Launched(bubble=ProcRef.of(pid), launcher=None)
            time.sleep(0.05)
        raise HpkError(f"instance {name} started but {self.binary} does not list it")

    def stop(self, name: str, launched: Launched, timeout: float) -> None:
        if name:
            subprocess.run(instance_stop_argv(self.binary, name, timeout), capture_output=True, timeout=timeout + 30)
        launched.bubble.terminate(timeout)


# -- nested containers (hpktainer inside a bubble) ------------------------------------


def nested_instance_start_argv(binary: str, options: list[str], image: str, name: str) -> list[str]:
    """The container's namespaces first, with loopback only: hpktainer wires its network next."""
    return [binary, "instance", "start", "--net", "--network", "none", *options, image, name]


def nested_command_argv(binary: str, verb: str, name: str, command: list[str]) -> list[str]:
    """The user's command in the prepared instance (run|exec|shell)."""
    return [binary, verb, f"instance://{name}", *command]


def apptainer_env(env: dict[str, str]) -> dict[str, str]:
    """Variables for inside the container, the way Apptainer takes them (APPTAINERENV_*)."""
    return {f"APPTAINERENV_{k}": v for k, v in env.items()}
