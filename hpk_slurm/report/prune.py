"""Retention: remove job reports older than a number of days.

A job's folder (<report_dir>/<jobid>, root's, 0711) goes when the newest of
the folder and its files is older than `max_age_days`. Only folders named
by a job ID are considered; symbolic links and anything else are left alone,
and removal never follows links (shutil.rmtree works from file descriptors
on Linux). Run it as root, e.g. daily from cron or a systemd timer:

    python -m hpk_slurm.report.prune --days 30          # report_dir from the site configuration
    python -m hpk_slurm.report.prune --days 30 --report-dir /var/lib/hpk/reports --dry-run
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import stat
import sys
import time
from pathlib import Path

log = logging.getLogger("hpk_slurm.report.prune")


def _newest(folder: Path) -> float:
    newest = os.lstat(folder).st_mtime
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def prune(report_dir: str | Path, max_age_days: float, now: float | None = None, dry_run: bool = False) -> list[Path]:
    """Remove the job folders of `report_dir` untouched for more than `max_age_days`; the folders removed
    (or, with dry_run, that would be). A missing report_dir is fine (nothing to do)."""
    if not isinstance(max_age_days, (int, float)) or isinstance(max_age_days, bool) or max_age_days < 0:
        raise ValueError(f"max_age_days must be a number >= 0, not {max_age_days!r}")
    report_dir = Path(report_dir)
    cutoff = (time.time() if now is None else now) - max_age_days * 86400
    removed: list[Path] = []
    try:
        entries = sorted(os.scandir(report_dir), key=lambda entry: entry.name)
    except FileNotFoundError:
        return removed
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - Linux has it
        raise RuntimeError("this platform's shutil.rmtree can follow symbolic links; refusing to prune")
    for entry in entries:
        if not entry.name.isdigit():
            continue
        folder = Path(entry.path)
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                continue  # a link or a file: not a job's folder
            if _newest(folder) >= cutoff:
                continue
            if not dry_run:
                shutil.rmtree(folder)
            removed.append(folder)
            log.info("%s %s", "would remove" if dry_run else "removed", folder)
        except OSError as exc:
            log.error("pruning %s: %s", folder, exc)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpk_slurm.report.prune", description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=float, required=True, help="keep reports this many days")
    parser.add_argument("--report-dir", help="default: paths.report_dir of the site configuration")
    parser.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="hpk-report-prune: %(message)s")
    report_dir = args.report_dir
    if not report_dir:
        from hpk_slurm.config import load_config
        from hpk_slurm.errors import HpkError

        try:
            report_dir = load_config().paths.report_dir
        except HpkError as exc:
            log.error("%s", exc)
            return 1
    try:
        removed = prune(report_dir, args.days, dry_run=args.dry_run)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    log.info("%d job report(s) %s", len(removed), "to remove" if args.dry_run else "removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
