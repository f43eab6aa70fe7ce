"""A Slurm cluster on test hosts with the project's prolog and epilog installed: for tests and the demo.

Test hosts, an unprivileged job user (rootless bubbles), a site
configuration whose run and report folders live in the testbed, and
slurmctld + slurmd per host with Prolog/Epilog pointing at prolog/hpk-prolog
and epilog/hpk-epilog through small wrappers that name the configuration
(slurmd gives prologs no environment of ours).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hpk_slurm.testbed.bubble_lab import BubbleLab
from hpk_slurm.testbed.slurm import SlurmCluster

REPO = Path(__file__).resolve().parent.parent.parent
PY = sys.executable


class JobLab:
    """Test hosts, an unprivileged user, the site config, and Slurm with our prolog and epilog."""

    def __init__(self, bed, hosts: int = 2, extra_config: str = ""):
        self.bed = bed
        self.bubbles = BubbleLab(bed, hosts_count=hosts)
        self.user = self.bubbles.user()
        site = bed.workdir / "site"
        site.mkdir(mode=0o755)
        self.run_root = bed.workdir / "run"
        self.report_dir = bed.workdir / "reports"
        self.config = site / "hpk.toml"
        self.config.write_text(f'[paths]\nrun_root = "{self.run_root}"\nreport_dir = "{self.report_dir}"\n'
                               '[bubble]\nruntime = "embedded"\nstart_timeout = 40\n' + extra_config)
        scripts = {}
        for name, target in (("prolog", REPO / "prolog" / "hpk-prolog"), ("epilog", REPO / "epilog" / "hpk-epilog")):
            wrapper = site / f"{name}.sh"  # slurmd gives prologs no environment of ours: point them at the config
            wrapper.write_text(f"#!/bin/sh\nHPK_CONFIG={self.config} exec {target}\n")
            wrapper.chmod(0o755)
            scripts[name] = wrapper
        try:
            self.cluster = SlurmCluster(bed, hosts=self.bubbles.hosts, prolog=scripts["prolog"],
                                        epilog=scripts["epilog"], prolog_flags="Alloc", prolog_epilog_timeout=90).start()
        except BaseException:
            self.bubbles.close()  # the user and /dev/net/tun's mode; the testbed removes the rest
            raise

    def close(self) -> None:
        try:
            self.cluster.close()
        finally:
            self.bubbles.close()

    def job_script(self, body: str, nodes: int = 2) -> str:
        return (f"#!/bin/bash\n#SBATCH -N{nodes} --ntasks-per-node=1\n"
                f"export HPK_CONFIG={self.config} PY={PY}\n{body}\n")

    def run_dirs(self, job_id: int) -> list[Path]:
        return [self.run_root / str(self.user.uid) / f"hpk-{job_id}.{node}" for node in self.cluster.nodes]
