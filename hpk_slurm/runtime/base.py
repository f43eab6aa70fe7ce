"""The runtime interface: how a bubble's init gets its namespaces, and how we enter them."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from hpk_slurm.procs import ProcRef


@dataclass(frozen=True)
class Launched:
    """A started bubble: the process in its namespaces, and the launcher holding it (if any)."""

    bubble: ProcRef
    launcher: ProcRef | None


class Runtime(ABC):
    name: str

    @abstractmethod
    def launch(self, name: str, init_argv: list[str], run_dir: Path, image: str | None, log: Path) -> Launched:
        """Start `init_argv` in new user, network, mount (and PID) namespaces, detached."""

    def enter_argv(self, bubble_pid: int, argv: list[str]) -> list[str]:
        """argv run inside a running bubble's namespaces.

        Root enters as root of the bubble's user namespace; the bubble's own user
        keeps its credentials (it is root there already, and may not setgroups).
        """
        creds = [] if os.geteuid() == 0 else ["--preserve-credentials"]
        return ["nsenter", "-t", str(bubble_pid), "-U", "-n", "-m", "-p", *creds, f"--wd={os.getcwd()}", "--", *argv]

    @abstractmethod
    def stop(self, name: str, launched: Launched, timeout: float) -> None:
        """End the bubble (its init first, gracefully), whatever state it is in."""
