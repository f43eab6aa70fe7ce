"""Container runtimes for bubbles: one interface, one module per runtime."""

from __future__ import annotations

import shutil

from hpk_slurm.errors import HpkError
from hpk_slurm.runtime.base import Runtime


def select_runtime(name: str = "auto") -> Runtime:
    """Apptainer (or SingularityCE) where installed, the embedded namespace runtime otherwise."""
    from hpk_slurm.runtime.apptainer import ApptainerRuntime
    from hpk_slurm.runtime.embedded import EmbeddedRuntime

    if name == "auto":
        binary = shutil.which("apptainer") or shutil.which("singularity")
        return ApptainerRuntime(binary) if binary else EmbeddedRuntime()
    if name == "embedded":
        return EmbeddedRuntime()
    if name in ("apptainer", "singularity"):
        binary = shutil.which(name)
        if not binary:
            raise HpkError(f"runtime {name} requested but '{name}' is not on PATH",
                           "install Apptainer, or use --runtime embedded")
        return ApptainerRuntime(binary)
    raise HpkError(f"unknown runtime {name!r}", "use auto, embedded or apptainer")
