"""Traffic for tests, benchmarks and the demo: iperf3 runs between test namespaces."""

from __future__ import annotations

import itertools
import json
import subprocess

from hpk_slurm.testbed.netns import Netns, Testbed, wait_for

_ports = itertools.count(5201)


def wait_listening(ns: Netns, port: int, server: subprocess.Popen, what: str) -> None:
    """Until something in `ns` listens on TCP `port`; fails early if the server exited."""

    def ready() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"{what} exited: {server.log_path.read_text().strip()}")
        return bool(ns.run(["ss", "-ltnH", f"sport = :{port}"]).stdout.strip())

    wait_for(ready, timeout=10, what=what)


def iperf(bed: Testbed, src: Netns, dst: Netns, dst_ip: str, streams: int = 1, seconds: int = 3) -> dict:
    """iperf3 TCP from `src` to a server on `dst_ip` in `dst`; receiver's rate and sender's retransmits."""
    port = next(_ports)
    server = bed.spawn(["iperf3", "-s", "-1", "-B", dst_ip, "-p", str(port)], netns=dst, log_name="iperf3")
    try:
        wait_listening(dst, port, server, "iperf3 server")
        argv = ["iperf3", "-c", dst_ip, "-p", str(port), "-t", str(seconds), "-O", "1",
                "-P", str(streams), "--json"]
        result = src.run(argv, check=False, timeout=seconds + 40)
    finally:
        bed.stop(server)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 failed: {(result.stderr or result.stdout).strip()}") from None
    if "error" in report:
        raise RuntimeError(f"iperf3 failed: {report['error']}")
    end = report["end"]
    return {
        "streams": streams,
        "bits_per_second": end["sum_received"]["bits_per_second"],
        "seconds": end["sum_received"]["seconds"],
        "sent_bits_per_second": end["sum_sent"]["bits_per_second"],
        "retransmits": end["sum_sent"].get("retransmits"),
    }
