"""The embedded namespace runtime: util-linux `unshare`, for machines without Apptainer.

The bubble is the host's own file system in new user (root mapped to the
caller), network, mount and PID namespaces. Killing its init ends every
process inside, which makes cleanup complete by construction.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from hpk_slurm.errors import HpkError, require_binary
from hpk_slurm.procs import ProcRef, wait_first_child
from hpk_slurm.runtime.base import Launched, Runtime

LAUNCH_TIMEOUT = 10.0


def unshare_argv(init_argv: list[str]) -> list[str]:
    return [
        "unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork",
        "--mount-proc", "--kill-child", "--", *init_argv,
    ]


class EmbeddedRuntime(Runtime):
    name = "embedded"

    def launch(self, name: str, init_argv: list[str], run_dir: Path, image: str | None, log: Path) -> Launched:
        require_binary("unshare", "util-linux")
        require_binary("nsenter", "util-linux")
        if image:
            raise HpkError("the embedded runtime runs the host's own root file system; it takes no image",
                           "drop --image, or install Apptainer")
        with open(log, "ab") as out:
            launcher = subprocess.Popen(unshare_argv(init_argv), stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, cwd=run_dir)
        bubble = wait_first_child(launcher, LAUNCH_TIMEOUT)
        if bubble is None:
            if launcher.poll() is not None:
                raise HpkError(f"unshare failed (status {launcher.returncode}): {log.read_text(errors='replace').strip()}")
            launcher.kill()
            raise HpkError(f"bubble process did not start within {LAUNCH_TIMEOUT:.0f} s")
        return Launched(bubble=ProcRef.of(bubble), launcher=ProcRef.of(launcher.pid))

    def stop(self, name: str, launched: Launched, timeout: float) -> None:
        launched.bubble.terminate(timeout, resend_every=0.5)  # PID 1 of its namespace
        if launched.launcher:
            launched.launcher.terminate(5)  # unshare exits with its child; this is only a safety net
