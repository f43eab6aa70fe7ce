"""iptables (nft backend, Debian's default) inside a bubble: the one place that runs it."""

from __future__ import annotations

import subprocess

from hpk_slurm.errors import HpkError, require_binary


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("iptables", "iptables"), *args], capture_output=True, text=True)


def ensure_rule(table: str, chain: str, rule: list[str]) -> None:
    """Append `rule` unless it is there already."""
    if _run("-t", table, "-C", chain, *rule).returncode == 0:
        return
    added = _run("-t", table, "-A", chain, *rule)
    if added.returncode != 0:
        raise HpkError(f"iptables -t {table} -A {chain} {' '.join(rule)} failed: {added.stderr.strip()}",
                       "the bubble needs iptables-nft (Debian's default iptables)")


def delete_rule(table: str, chain: str, rule: list[str]) -> None:
    """Remove `rule` if present (idempotent)."""
    while _run("-t", table, "-C", chain, *rule).returncode == 0:
        _run("-t", table, "-D", chain, *rule)
