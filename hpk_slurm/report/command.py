"""`hpktainer report [JOBID]`: find the job's node files, merge them, print or write the report.

The job's folder (<report_dir>/<jobid>) is root's and 0711: root lists it,
the job's user opens its files by name, so for users the job's nodes come
from --nodes, the job's environment (SLURM_JOB_NODELIST), or Slurm
(scontrol, then sacct). While the job runs there is no folder yet (the
epilog writes it): for the current job, this node's part is then taken live
from its bubble.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import hostlist

from hpk_slurm.errors import HpkError
from hpk_slurm.report.merge import JobReport, ReportError, job_folder, load_job, merge
from hpk_slurm.report.render import render_html, render_text


def expand_nodes(text: str) -> list[str]:
    try:
        return list(hostlist.expand_hostlist(text.strip()))
    except hostlist.BadHostlist as exc:
        raise ReportError(f"node list {text!r}: {exc}") from None


def job_nodes(job_id: int, environ: dict | None = None, why: list[str] | None = None) -> list[str] | None:
    """The job's nodes: from its own environment, else scontrol (recent jobs), else sacct (accounting).
    None when nobody knows; then `why` (if given) collects what each source said."""
    env = os.environ if environ is None else environ
    why = [] if why is None else why
    if env.get("SLURM_JOB_ID") == str(job_id):
        text = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if text:
            return expand_nodes(text)
    queries = (["scontrol", "show", "job", "-o", str(job_id)],
               ["sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", "NodeList"])
    for argv in queries:
        if not shutil.which(argv[0]):
            why.append(f"{argv[0]} is not installed")
            continue
        for attempt in range(2):  # one retry: a busy slurmctld may time out once
            try:
                result = subprocess.run(argv, capture_output=True, text=True, timeout=15)
            except (OSError, subprocess.TimeoutExpired) as exc:
                reason = str(exc)
            else:
                if argv[0] == "scontrol":
                    values = [item.partition("=")[2] for item in result.stdout.split() if item.startswith("NodeList=")]
                else:
                    values = [line.strip() for line in result.stdout.splitlines() if line.strip()][:1]
                if result.returncode == 0 and values and values[0] not in ("", "(null)", "None", "None assigned"):
                    return expand_nodes(values[0])
                reason = (result.stderr.strip().splitlines() or [f"no node list for job {job_id}"])[-1]
                if result.returncode == 0 or "Invalid job id" in reason:
                    break  # an answer, just not a useful one: no retry
            if attempt == 0:
                time.sleep(1)
        why.append(f"{argv[0]}: {reason}")
    return None


def live_report(job_id: int, report_dir: Path) -> JobReport | None:
    """This node's part of the current job, from its running bubble (None when there is none here)."""
    from hpk_slurm.config import load_config
    from hpk_slurm.report.collect import node_report
    from hpk_slurm.slurm.job import job_run_dir

    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    run_dir = job_run_dir(load_config(), os.getuid(), job_id, node)
    if not (run_dir / "spec.json").is_file():
        return None
    try:
        data = node_report(run_dir, node)
    except (OSError, ValueError, KeyError, HpkError) as exc:
        raise ReportError(f"job {job_id} is running; reading this node's bubble ({run_dir}) failed: {exc}") from None
    return merge(job_id, [(str(run_dir), data)], report_dir=str(report_dir), live=True)


def build(job_id: int, report_dir: Path, nodes: list[str] | None = None, environ: dict | None = None) -> JobReport:
    env = os.environ if environ is None else environ
    folder = job_folder(report_dir, job_id)
    if not os.path.lexists(folder) and env.get("SLURM_JOB_ID") == str(job_id):
        report = live_report(job_id, report_dir)
        if report is not None:
            return report
    if nodes is None and os.path.isdir(folder):
        try:
            os.listdir(folder)
        except PermissionError:
            why: list[str] = []
            nodes = job_nodes(job_id, env, why)
            if nodes is None:
                raise ReportError(f"cannot list {folder} (permission denied), and the job's nodes are unknown "
                                  f"({'; '.join(why)})",
                                  "give them with --nodes, or run it where Slurm still knows the job") from None
    return load_job(report_dir, job_id, nodes)


def write_file(path: str, text: str) -> None:
    """The page, private to its writer like the report it shows (mode 0600 when created)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror}") from None


def run_report(job_id: int | None, as_json: bool = False, html_file: str | None = None,
               report_dir: str | None = None, nodes: str | None = None) -> int:
    """The command: 0 when a report was shown (even one with problems); errors raise HpkError."""
    if as_json and html_file == "-":
        raise ReportError("--json and --html - both write to standard output", "choose one, or give --html a FILE")
    if job_id is None:
        current = os.environ.get("SLURM_JOB_ID", "")
        if not current.isdigit():
            raise ReportError("no job given, and not inside a Slurm job (SLURM_JOB_ID is not set)",
                              "give the job ID: hpktainer report JOBID")
        job_id = int(current)
    if report_dir is None:
        from hpk_slurm.config import load_config

        report_dir = load_config().paths.report_dir
    report = build(job_id, Path(report_dir), expand_nodes(nodes) if nodes else None)
    if html_file:
        page = render_html(report)
        if html_file == "-":
            sys.stdout.write(page)
        else:
            write_file(html_file, page)
            print(f"hpktainer: report of job {job_id} written to {html_file}", file=sys.stderr)
    if as_json:
        sys.stdout.write(report.to_json() + "\n")
    elif html_file != "-":
        sys.stdout.write(render_text(report))
    return 0
