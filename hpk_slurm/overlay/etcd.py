"""etcd: the job-local server's command line and a small client over etcdctl (v3 API).

etcdctl (Debian etcd-client) is the one place we talk to etcd from; every
call has a timeout, and reachability is awaited with bounded retries so an
unreachable etcd is a clear error, never a hang.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hpk_slurm.errors import HpkError, require_binary

CALL_TIMEOUT = 5.0


def etcd_server_argv(data_dir: Path, advertise_ip: str, client_port: int, peer_port: int, name: str) -> list[str]:
    """A one-member etcd for the job.

    It listens on every address of the bubble: the bubble's own flanneld reaches
    it at the host IP, which (as a /32 on tap0) is local inside the bubble.
    """
    peer = f"http://127.0.0.1:{peer_port}"
    return [
        "etcd", "--name", name, "--data-dir", str(data_dir),
        "--listen-client-urls", f"http://0.0.0.0:{client_port}",
        "--advertise-client-urls", f"http://{advertise_ip}:{client_port}",
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{name}={peer}",
        "--log-level", "warn",
    ]


class EtcdUnreachable(HpkError):
    pass


@dataclass(frozen=True)
class Etcd:
    endpoints: tuple[str, ...]
    call_timeout: float = CALL_TIMEOUT  # per etcdctl call

    def _run(self, *args: str, stdin: str | None = None, call_timeout: float | None = None) -> str:
        call_timeout = call_timeout or self.call_timeout
        require_binary("etcdctl", "etcd-client")
        env = dict(os.environ, ETCDCTL_API="3")
        try:
            result = subprocess.run(
                ["etcdctl", "--endpoints", ",".join(self.endpoints),
                 "--dial-timeout", f"{min(2.0, call_timeout):.1f}s", "--command-timeout", f"{call_timeout:.1f}s", *args],
                input=stdin, capture_output=True, text=True, env=env, timeout=call_timeout + 5,
            )
        except subprocess.TimeoutExpired:
            raise EtcdUnreachable(f"etcd at {','.join(self.endpoints)} did not answer") from None
        if result.returncode != 0:
            message = result.stderr.strip().splitlines()[-1:] or ["(no message)"]
            raise EtcdUnreachable(f"etcdctl {args[0]} against {','.join(self.endpoints)} failed: {message[0]}")
        return result.stdout

    def get(self, key: str) -> str | None:
        out = self._run("get", key, "--print-value-only")
        return out[:-1] if out.endswith("\n") else (out or None)

    def items(self, prefix: str) -> list[tuple[str, str]]:
        """(key, value) pairs under `prefix` (single-line values, as everything we store is)."""
        lines = self._run("get", prefix, "--prefix").splitlines()
        return list(zip(lines[0::2], lines[1::2]))

    def put(self, key: str, value: str) -> None:
        self._run("put", key, stdin=value)

    def revoke_lease_of(self, key: str) -> bool:
        """Revoke the lease `key` is attached to (the key goes with it); False if there was none."""
        out = self._run("get", key, "-w", "fields")
        for line in out.splitlines():
            if line.startswith('"Lease" :'):
                lease = int(line.split(":", 1)[1])
                if lease:
                    self._run("lease", "revoke", f"{lease:x}")
                    return True
        self.delete(key)
        return False

    def delete(self, key: str, prefix: bool = False) -> int:
        out = self._run("del", key, *(["--prefix"] if prefix else []))
        return int(out.strip() or 0)

    def wait_ready(self, timeout: float, still_worth_waiting=lambda: None) -> None:
        """Bounded wait for etcd to answer; EtcdUnreachable after `timeout` seconds.

        `still_worth_waiting` is called between attempts and may raise to give up
        early (e.g. when the local etcd process died).
        """
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                self._run("endpoint", "health", call_timeout=min(CALL_TIMEOUT, max(1.0, deadline - time.monotonic())))
                return
            except EtcdUnreachable as exc:
                if time.monotonic() + delay > deadline:
                    raise EtcdUnreachable(
                        f"etcd at {','.join(self.endpoints)} unreachable after {timeout:.0f} s ({exc})",
                        "check the endpoints, or that the bubble hosting etcd is running",
                    ) from None
            still_worth_waiting()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
