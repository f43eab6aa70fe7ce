"""Slurm Epilog: write this node's part of the job's network report, then tear the job's bubble down.

Runs as root on every node of the allocation. Idempotent, and fine when the
bubble already died or never started. Teardown goes by recorded PIDs: the
bubble's init gives back its flannel lease (and, on the first node, the
job's etcd prefix) before it ends. Exit status is 0 unless the environment
from slurmd is unusable, since a failing epilog drains the node.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hpk_slurm.bubble import manager
from hpk_slurm.config import load_config
from hpk_slurm.errors import HpkError
from hpk_slurm.files import write_private
from hpk_slurm.report.collect import node_report, report_folder, to_json
from hpk_slurm.report.prune import prune
from hpk_slurm.slurm.job import JobEnv, job_run_dir
from hpk_slurm.slurm.logs import setup_script_logging
from hpk_slurm.slurm.prolog import failure_marker

log = logging.getLogger("hpk_slurm.slurm.epilog")


def epilog(environ: dict | None = None) -> int:
    try:
        job = JobEnv.from_environ(environ)
        cfg = load_config()
    except HpkError as exc:
        log.error("epilog: %s", exc)
        return 1
    run_dir = job_run_dir(cfg, job.uid, job.job_id, job.node)
    marker = failure_marker(run_dir)
    errors = [marker.read_text().strip()] if marker.is_file() and not marker.is_symlink() else []
    try:
        folder = report_folder(Path(cfg.paths.report_dir), job.job_id)
        write_private(folder / f"{job.node}.json", to_json(node_report(run_dir, job.node, errors)),
                      job.uid, job.gid, mode=0o400)
        if cfg.paths.report_keep_days:
            prune(Path(cfg.paths.report_dir), cfg.paths.report_keep_days)
    except (OSError, HpkError) as exc:
        log.error("job %d: could not write the network report: %s", job.job_id, exc)
    try:
        stopped = manager.stop(run_dir)
        log.info("job %d: bubble %s", job.job_id, "stopped" if stopped else "was not running")
    except (OSError, HpkError) as exc:
        log.error("job %d: stopping the bubble: %s", job.job_id, exc)
    marker.unlink(missing_ok=True)
    return 0


def main() -> None:
    setup_script_logging("hpk-epilog")
    sys.exit(epilog())


if __name__ == "__main__":
    main()
