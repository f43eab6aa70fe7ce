"""A throw-away Slurm 22.05 cluster on test hosts, for tests, benchmarks and the demo.

One slurmctld (on host 1) and one slurmd per test host, each in its host's
network namespace and in a UTS namespace of its own whose hostname is the node
name, so `hostname` in a job prints the node. Everything lives in the testbed's
folder: slurm.conf, state, spool, logs, pid files, job scripts and outputs.
Nothing under /etc/slurm is read or written (daemons get `-f`, clients
SLURM_CONF).

munge: by default the cluster runs its own munged, with its own key and
socket in the testbed folder (slurm.conf `AuthInfo=socket=...`), so concurrent
clusters never share, stop or depend on each other's munged and nothing is
written to /run/munge. `munge_socket="/run/munge/munge.socket.2"` uses the
system's munged instead (started if none answers there, and stopped again,
with /run/munge if we made it, only if this cluster started it).

    bed = Testbed()
    cluster = SlurmCluster(bed).start()          # 2 nodes, all idle
    job = cluster.sbatch("#!/bin/sh\\nsrun -N2 hostname\\n", user=user)
    assert cluster.wait_job(job) == "COMPLETED"
    print(cluster.output(job))
    cluster.close(); bed.close()

Clean-up stops every daemon by PID (cancelling jobs first), then ends, by PID,
any process still in a daemon's UTS namespace (left-over slurmstepd and job
processes: slurmd double-forks slurmstepd, so they are not its children).
Safety: the hosts have no route off their private switch, so Slurm traffic
stays inside the test namespaces.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from hpk_slurm.errors import require_binary
from hpk_slurm.procs import ProcRef
from hpk_slurm.testbed.bubble_lab import TestUser
from hpk_slurm.testbed.netns import Netns, Testbed, wait_for

HOST_SUBNET = "172.31.250"
SYSTEM_MUNGE_SOCKET = "/run/munge/munge.socket.2"
SYSTEM_MUNGE_KEY = Path("/etc/munge/munge.key")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

#: Job states after which a job will not run again (scontrol's JobState).
FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
})


def _uts_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/uts")
    except OSError:
        return None


def _argv0(pid: int) -> str:
    """The program a process runs, by its argv[0] (Debian's slurmctld is /usr/sbin/slurmctld-wlm via a link)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


def _socket_answers(path: str) -> bool:
    """A munged serves `path` (it encodes a credential for us)."""
    if not os.path.exists(path):
        return False
    return subprocess.run(["munge", "-n", "-S", path], capture_output=True, timeout=10).returncode == 0


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"  ({exc.strerror})"
    return "\n".join("  " + line for line in text[-lines:])


@dataclass
class SlurmCluster:
    """slurmctld on host 1 and a slurmd on each of `hosts_count` test hosts, all in `bed.workdir`."""

    bed: Testbed
    hosts_count: int = 2
    #: Absolute paths of executables slurmd runs as root around each job (None: none).
    prolog: str | Path | None = None
    epilog: str | Path | None = None
    #: e.g. "Alloc" or "Alloc,DeferBatch" (TESTBED.md: DeferBatch starts the script after every node's prolog).
    prolog_flags: str | None = None
    #: Seconds before slurmd kills a prolog/epilog (None: Slurm's default, wait forever).
    prolog_epilog_timeout: int | None = None
    #: Hosts to use (e.g. a BubbleLab's); None: make `hosts_count` on a private switch with `subnet`.
    hosts: list[Netns] | None = None
    subnet: str = HOST_SUBNET
    cpus: int = 2
    real_memory: int = 1000
    partition: str = "hpk"
    #: More slurm.conf lines, appended verbatim.
    extra_conf: str = ""
    #: None: a private munged in the testbed folder; a path: use (or start) munged on that socket.
    munge_socket: str | None = None
    start_timeout: float = 30.0

    switch: Netns | None = field(default=None, init=False)
    addresses: list[str] = field(default_factory=list, init=False)
    slurmctld: subprocess.Popen | None = field(default=None, init=False)
    slurmds: list[subprocess.Popen] = field(default_factory=list, init=False)
    munged: subprocess.Popen | None = field(default=None, init=False)
    _uts: set[str] = field(default_factory=set, init=False)
    _made_munge_dir: Path | None = field(default=None, init=False)
    _scripts: int = field(default=0, init=False)
    _closed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        for binary, package in (("slurmctld", "slurmctld"), ("slurmd", "slurmd"), ("sbatch", "slurm-client"),
                                ("munged", "munge"), ("munge", "munge"), ("unshare", "util-linux"),
                                ("setpriv", "util-linux")):
            require_binary(binary, package)
        self.dir = self.bed.workdir / "slurm"
        self.conf = self.dir / "etc" / "slurm.conf"
        self.jobs_dir = self.dir / "jobs"
        self.log_dir = self.dir / "log"
        self.cluster_name = self.bed.prefix

    # -- names ------------------------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        """Node names: the host namespaces' names (also each slurmd's hostname)."""
        return [host.name for host in self.hosts or []]

    def host(self, index: int) -> Netns:
        """Host `index` (1-based)."""
        return self.hosts[index - 1]

    @property
    def socket_path(self) -> str:
        return self.munge_socket or str(self.dir / "munge" / "munge.sock")

    # -- start ------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "SlurmCluster":
        """Hosts, slurm.conf, munged, slurmctld and the slurmds; returns once every node is idle."""
        try:
            if self.hosts is None:
                self.switch, self.hosts = self.bed.hosts(self.hosts_count, self.subnet)
            self.addresses = [self._address(host) for host in self.hosts]
            self._folders()
            self._start_munged()
            self.conf.write_text(self.config())
            self.conf.chmod(0o644)
            (self.conf.parent / "plugstack.conf").write_text("")  # no SPANK plugins
            self._start_slurmctld()
            for host in self.hosts:
                self._start_slurmd(host)
            self.wait_idle(self.start_timeout)
        except BaseException:
            try:
                self.close()
            except Exception:
                pass  # the start error is the one to report
            raise
        return self

    def _address(self, host: Netns) -> str:
        out = host.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout.split()
        return out[out.index("inet") + 1].split("/")[0]

    def _folders(self) -> None:
        # Slurm (SlurmUser=slurm) and job users must reach their files below the testbed folder.
        os.chmod(self.bed.workdir, 0o711)
        for sub, mode in (("", 0o755), ("etc", 0o755), ("state", 0o755), ("log", 0o755), ("run", 0o755),
                          ("spool", 0o755), ("jobs", 0o1777)):
            path = self.dir / sub
            path.mkdir(exist_ok=True)
            path.chmod(mode)
        slurm = pwd.getpwnam("slurm")
        for sub in ("state", "log"):
            os.chown(self.dir / sub, slurm.pw_uid, slurm.pw_gid)
        for node in self.nodes:  # slurmd logs "Domain socket directory ...: No such file" without them
            (self.dir / "spool" / node).mkdir(exist_ok=True)

    def config(self) -> str:
        d = self.dir
        lines = [
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={self.nodes[0]}({self.addresses[0]})",
            "SlurmUser=slurm",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket_path}",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool/%n",
            f"SlurmctldPidFile={d}/run/slurmctld.pid",
            f"SlurmdPidFile={d}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={d}/log/slurmctld.log",
            f"SlurmdLogFile={d}/log/slurmd-%n.log",
            f"PlugStackConfig={d}/etc/plugstack.conf",
            "SlurmctldDebug=info",
            "SlurmdDebug=debug",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            # Schedule a submitted batch job at once (the default batch_sched_delay=3 costs ~3 s per job).
            "SchedulerParameters=batch_sched_delay=0",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "MinJobAge=300",
            "KillWait=5",
            "Waittime=0",
        ]
        if self.prolog:
            lines.append(f"Prolog={self.prolog}")
        if self.epilog:
            lines.append(f"Epilog={self.epilog}")
        if self.prolog_flags:
            lines.append(f"PrologFlags={self.prolog_flags}")
        if self.prolog_epilog_timeout is not None:
            lines.append(f"PrologEpilogTimeout={self.prolog_epilog_timeout}")
        for node, address in zip(self.nodes, self.addresses):
            lines.append(f"NodeName={node} NodeAddr={address} CPUs={self.cpus} RealMemory={self.real_memory} "
                         "State=UNKNOWN")
        lines.append(f"PartitionName={self.partition} Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE "
                     "State=UP")
        if self.extra_conf:
            lines.append(self.extra_conf.strip())
        return "\n".join(lines) + "\n"

    def _daemon_env(self) -> dict[str, str]:
        return {"PATH": PATH, "SLURM_CONF": str(self.conf)}

    def _start_munged(self) -> None:
        munge = pwd.getpwnam("munge")
        folder = self.dir / "munge"
        folder.mkdir(exist_ok=True)
        os.chown(folder, munge.pw_uid, munge.pw_gid)
        folder.chmod(0o755)
        if self.munge_socket is None:
            key = folder / "munge.key"
            key.write_bytes(os.urandom(128))  # what `mungekey --create` makes: 1024 random bits
            os.chown(key, munge.pw_uid, munge.pw_gid)
            key.chmod(0o600)
            argv = [f"--socket={self.socket_path}", f"--key-file={key}", f"--pid-file={folder}/munged.pid"]
        else:
            if _socket_answers(self.munge_socket):
                return  # someone's munged: use it, never stop it
            self._system_munge_key()
            sockdir = Path(self.munge_socket).parent
            if not sockdir.exists():
                sockdir.mkdir(mode=0o755, parents=True)
                self._made_munge_dir = sockdir
            os.chown(sockdir, munge.pw_uid, munge.pw_gid)
            argv = [f"--socket={self.munge_socket}", f"--pid-file={sockdir}/munged.pid"]
        argv.append(f"--seed-file={folder}/munged.seed")
        # -F: no daemonizing, so the testbed tracks (and stops) munged itself by PID; it logs to the spawn log.
        self.munged = self.bed.spawn(
            ["setpriv", f"--reuid={munge.pw_uid}", f"--regid={munge.pw_gid}", "--init-groups", "--",
             "munged", "-F", *argv],
            log_name="munged", env={"PATH": PATH},
        )
        self._wait_started(self.munged, lambda: _socket_answers(self.socket_path), "munged", 10)

    @staticmethod
    def _system_munge_key() -> None:
        if SYSTEM_MUNGE_KEY.exists():
            return
        tool = shutil.which("mungekey")
        if tool:
            subprocess.run([tool, "--create", f"--keyfile={SYSTEM_MUNGE_KEY}"], check=True, capture_output=True)
        else:
            subprocess.run([require_binary("create-munge-key", "munge"), "-r"], check=True, capture_output=True)
        munge = pwd.getpwnam("munge")
        os.chown(SYSTEM_MUNGE_KEY, munge.pw_uid, munge.pw_gid)
        SYSTEM_MUNGE_KEY.chmod(0o600)

    def _in_host(self, host: Netns, name: str, command: str) -> list[str]:
        """`command` (via sh, cwd /) in `host`'s netns and a new UTS namespace whose hostname is `name`.

        nsenter, not `ip netns exec`: that remounts /sys, and slurmd then fails with "No filesystem
        mounted on /sys/fs/cgroup". nsenter, unshare and sh all exec, so the PID is the daemon's.
        """
        return host.exec_argv(["unshare", "--uts", "sh", "-c", f"cd / && hostname {name} && exec {command}"])

    def _start_slurmctld(self) -> None:
        node = self.nodes[0]
        self.slurmctld = self.bed.spawn(
            self._in_host(self.hosts[0], node, f"slurmctld -D -i -f {self.conf}"),
            log_name="slurmctld", env=self._daemon_env(),
        )
        self._record_uts(self.slurmctld, "slurmctld")
        self._wait_started(self.slurmctld, lambda: self.run(["scontrol", "ping"], timeout=10).returncode == 0,
                           "slurmctld", self.start_timeout)

    def _start_slurmd(self, host: Netns) -> None:
        proc = self.bed.spawn(self._in_host(host, host.name, f"slurmd -D -f {self.conf}"),
                              log_name=f"slurmd-{host.name}", env=self._daemon_env())
        self.slurmds.append(proc)
        self._record_uts(proc, "slurmd")

    def _record_uts(self, proc: subprocess.Popen, binary: str) -> None:
        """Remember the daemon's own UTS namespace (for the sweep at close), once it runs `binary`."""
        mine = _uts_ns(os.getpid())

        def settled():
            if proc.poll() is not None:
                raise RuntimeError(f"{binary} exited ({proc.returncode}) at start:\n{self.diagnostics()}")
            return _argv0(proc.pid) == binary and _uts_ns(proc.pid)

        uts = wait_for(settled, timeout=10, what=f"{binary} to start")
        if uts != mine:  # never the machine's own namespace: the sweep would hit everything
            self._uts.add(uts)

    def _wait_started(self, proc: subprocess.Popen, ready, what: str, timeout: float) -> None:
        def check():
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited ({proc.returncode}) at start:\n{self.diagnostics()}")
            return ready()

        try:
            wait_for(check, timeout=timeout, interval=0.05, what=what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnostics()}") from None

    # -- state ------------------------------------------------------------------
    def node_states(self) -> dict[str, str]:
        """{node: sinfo's short state} ("idle", "alloc", "mix", "drain", "down*", ...); {} if unanswered."""
        result = self.run(["sinfo", "-N", "-h", "-o", "%N %t"], timeout=10)
        if result.returncode != 0:
            return {}
        return dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until every node is idle; TimeoutError with states and log tails if not within `timeout`."""
        def idle():
            for proc in [self.slurmctld, *self.slurmds, self.munged]:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"a daemon exited (rc {proc.returncode}, output {proc.log_path.name}):\n"
                                       f"{self.diagnostics()}")
            states = self.node_states()
            return all(states.get(node) == "idle" for node in self.nodes)

        try:
            wait_for(idle, timeout=timeout, interval=0.1, what="all Slurm nodes idle")
        except TimeoutError as exc:
            reasons = self.run(["sinfo", "-N", "-h", "-o", "%N %t %E"], timeout=10).stdout.strip()
            raise TimeoutError(f"{exc}; sinfo: {reasons or 'no answer'}\n{self.diagnostics()}") from None

    def diagnostics(self) -> str:
        """Tails of every log of this cluster, for error messages."""
        logs = sorted(self.log_dir.glob("*.log")) if self.log_dir.exists() else []
        # The daemons' own stdout/stderr: start-up failures before their log files are open.
        spawned = [p.log_path for p in [self.munged, self.slurmctld, *self.slurmds] if p is not None]
        return "\n".join([f"--- {path}\n{_tail(path, 25)}" for path in logs]
                         + [f"--- {path}\n{_tail(path, 8)}" for path in spawned])

    # -- clients ----------------------------------------------------------------
    def client_env(self, user: TestUser | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
        home = pwd.getpwuid(user.uid).pw_dir if user else "/root"
        name = user.name if user else "root"
        base = {"PATH": PATH, "SLURM_CONF": str(self.conf), "HOME": home, "USER": name, "LOGNAME": name,
                "LANG": "C.UTF-8"}
        return {**base, **(env or {})}

    def run(self, argv: list[str], user: TestUser | None = None, host: int = 1, timeout: float = 30,
            env: dict[str, str] | None = None, check: bool = False, cwd: str | Path | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        """A Slurm client command (sbatch, srun, squeue, scontrol, sinfo...) on host `host`, as `user` or root.

        The environment is clean (PATH, SLURM_CONF, HOME, USER, LOGNAME, LANG, plus `env`); sbatch and
        srun pass it on to the job. The default cwd, the jobs folder, is reachable by any user.
        """
        argv = user.argv(argv) if user else list(argv)
        return self.host(host).run(argv, check=check, timeout=timeout, env=self.client_env(user, env),
                                   cwd=str(cwd or self.jobs_dir), input=input)

    def sbatch(self, script_text: str, user: TestUser | None = None, nodes: int | None = 2,
               args: list[str] | tuple[str, ...] = (), host: int = 1, env: dict[str, str] | None = None) -> int:
        """Submit `script_text` (as `user`); the job id. Its output goes to output_path(job_id).

        `nodes` is passed as -N (it overrides an #SBATCH -N line); None leaves it to the script.
        """
        self._scripts += 1
        script = self.jobs_dir / f"job-{self._scripts}.sh"
        script.write_text(script_text)
        script.chmod(0o755)
        if user:
            os.chown(script, user.uid, user.gid)
        argv = ["sbatch", "--parsable", "-o", str(self.jobs_dir / "slurm-%j.out")]
        if nodes is not None:
            argv += ["-N", str(nodes)]
        result = self.run([*argv, *args, str(script)], user=user, host=host, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
        return int(result.stdout.strip().split(";")[0])

    def output_path(self, job_id: int) -> Path:
        return self.jobs_dir / f"slurm-{job_id}.out"

    def output(self, job_id: int) -> str:
        """What the job wrote to its stdout/stderr file (sbatch's -o)."""
        return self.output_path(job_id).read_text(errors="replace")

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict ({} once Slurm has forgotten the job)."""
        result = self.run(["scontrol", "show", "job", "-o", str(job_id)], timeout=10)
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return {}
            raise RuntimeError(f"scontrol show job {job_id} failed: {result.stderr.strip()}")
        info = {}
        for item in result.stdout.split():
            key, sep, value = item.partition("=")
            if sep:
                info[key] = value
        return info

    def wait_job(self, job_id: int, timeout: float = 30.0) -> str:
        """Until the job has ended (and its epilogs have run); its final state, e.g. "COMPLETED".

        "PURGED" if Slurm forgot the job before we saw it end (MinJobAge is 300 s, so not in practice).
        """
        last: dict[str, str] = {}

        def ended():
            nonlocal last
            last = self.job(job_id)
            if not last:
                return "PURGED"
            state = last.get("JobState", "")
            return state if state in FINAL_STATES else None

        try:
            return wait_for(ended, timeout=timeout, interval=0.1, what=f"job {job_id} to end")
        except TimeoutError as exc:
            state = f"JobState={last.get('JobState')} Reason={last.get('Reason')}" if last else "unknown"
            raise TimeoutError(f"{exc} ({state}); nodes: {self.node_states()}\n{self.diagnostics()}") from None

    # -- close --------------------------------------------------------------------
    def _cancel_jobs(self, timeout: float = 15.0) -> None:
        """Cancel what is still queued or running and give epilogs a chance to run."""
        if self.slurmctld is None or self.slurmctld.poll() is not None:
            return
        queued = self.run(["squeue", "-h", "-o", "%i"], timeout=10)
        ids = queued.stdout.split() if queued.returncode == 0 else []
        if not ids:
            return
        self.run(["scancel", *ids], timeout=10)

        def drained():
            result = self.run(["squeue", "-h", "-o", "%i"], timeout=10)
            return result.returncode != 0 or not result.stdout.strip()

        try:
            wait_for(drained, timeout=timeout, interval=0.2, what="cancelled jobs to end")
        except TimeoutError:
            pass  # the daemons go anyway; the sweep below ends what is left

    def _sweep(self) -> list[str]:
        """End (by PID) every process still in a daemon's UTS namespace: stray slurmstepd and job processes."""
        if not self._uts:
            return []
        refs = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid() and _uts_ns(int(entry)) in self._uts:
                try:
                    refs.append(ProcRef.of(int(entry)))
                except ProcessLookupError:
                    pass
        for ref in refs:  # strays by now (jobs were cancelled, daemons stopped): no grace period
            ref.signal(signal.SIGKILL)
        try:
            wait_for(lambda: not any(ref.alive() for ref in refs), timeout=10, what="stray job processes to end")
        except TimeoutError:
            return [f"pid {ref.pid} survived SIGKILL" for ref in refs if ref.alive()]
        return []

    def close(self) -> None:
        """Cancel jobs, stop slurmds, slurmctld and our munged by PID, end stray job processes."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        try:
            self._cancel_jobs()
        except Exception as exc:
            errors.append(f"cancel jobs: {exc}")
        for proc in [*reversed(self.slurmds), self.slurmctld]:
            if proc is not None:
                try:
                    self.bed.stop(proc)
                except Exception as exc:
                    errors.append(f"pid {proc.pid}: {exc}")
        errors += self._sweep()
        if self.munged is not None:
            try:
                self.bed.stop(self.munged)
            except Exception as exc:
                errors.append(f"munged pid {self.munged.pid}: {exc}")
        if self._made_munge_dir is not None:
            shutil.rmtree(self._made_munge_dir, ignore_errors=True)
        if errors:
            raise RuntimeError("Slurm cluster cleanup incomplete: " + "; ".join(errors))
