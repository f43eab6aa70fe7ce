"""Per-job network reports: merging node files, the schema, the terminal summary, the HTML page (rendered in
headless Chromium), privacy of the files, retention, and one real 2-node Slurm job end to end."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpk_slurm.cli.hpktainer import main as hpktainer
from hpk_slurm.container.record import ContainerRecord, Published
from hpk_slurm.files import write_private
from hpk_slurm.procs import ProcRef
from hpk_slurm.report import collect
from hpk_slurm.report.command import job_nodes
from hpk_slurm.report.merge import REPORT_SCHEMA, ReportError, load_job, load_schema, merge
from hpk_slurm.report.prune import prune
from hpk_slurm.report.render import human_bytes, render_html, render_text

IS_ROOT = os.geteuid() == 0
CHROMIUM = shutil.which("chromium")
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
JOB = 4242


# -- synthetic node files, shaped exactly as collect.node_report writes them ----------------------


def container(cid: str, ip: str, step: str = "0", rank: str = "0", exit_code: int | None = 0, tx: int = 1000,
              rx: int = 2000, drops: int = 0, errors: int = 0, mode: str = "relay", name: str = "",
              command: list[str] | None = None, start: float = 10, end: float | None = 70) -> dict:
    record = ContainerRecord(id=cid, address=ip, gateway=ip.rsplit(".", 1)[0] + ".1", mode=mode, image="/",
                             command=command or ["sh", "-c", "run-ranks"], owner=ProcRef(100, 5000),
                             started=T0 + start, step=step, rank=rank, name=name,
                             ended=T0 + end if end is not None else None, exit_code=exit_code,
                             bubble_link="hpk-tap-1", published=[Published("tcp", 8080, 80)] if name else [])
    entry = asdict(record)
    entry["relay"] = {} if mode != "relay" else {
        "role": "client", "tap": "tap0", "tx_bytes": tx, "rx_bytes": rx, "tx_frames": tx // 1000 + 1,
        "rx_frames": rx // 1000 + 1, "rx_drops": drops, "errors": errors,
        "last_error": "bad frame length 0" if errors else "", "connects": 1, "connected": False}
    return entry


def bubble(index: int, state: str = "ready", error: str = "", job: int = JOB) -> dict:
    return {
        "id": job % 254, "name": f"hpk-{job}", "state": state, "error": error, "runtime": "embedded",
        "host_ip": f"172.31.250.{10 + index}", "slirp_cidr": "10.0.2.0/24",
        "role": "controller" if index == 1 else "node", "hosts_etcd": index == 1,
        "flannel_network": "10.244.0.0/16", "flannel_subnet": f"10.244.{20 + index}.1/24", "flannel_mtu": 1450,
        "vxlan_port": 40000 + job % 10000, "vni": job % 16777214 + 1,
        "etcd_endpoints": ["http://127.0.0.1:2379" if index == 1 else "http://172.31.250.11:30000"],
        "etcd_prefix": f"/hpk/jobs/{job}/network", "run_dir": f"/run/hpk/users/1000/hpk-{job}.node{index}",
        "socket_dir": "/x/sock", "started": T0, "pids": {"bubble": 4000 + index},
    }


def node_file(index: int, containers: list[dict], errors: list | None = None, **bubble_args) -> dict:
    facts = bubble(index, **bubble_args) if bubble_args.get("state") != "none" else {}
    return {"schema": collect.SCHEMA_VERSION, "node": f"node{index}", "collected": T0 + 80, "bubble": facts,
            "containers": containers, "errors": list(errors or []) + ([facts["error"]] if facts.get("error") else [])}


def healthy_job() -> list[dict]:
    return [node_file(1, [container("aaaa0001", "10.244.21.2", rank="0", tx=4_000, rx=3_005_272)]),
            node_file(2, [container("bbbb0002", "10.244.22.2", rank="1", tx=3_617_395, rx=4_432)])]


def troubled_job() -> list[dict]:
    """node1 fine but one rank failed and one dropped; node2's bubble failed; node3 has no bubble at all."""
    many = [container(f"cc{i:06d}", f"10.244.21.{i + 2}", rank=str(i), tx=10_000 * (i + 1), rx=5_000)
            for i in range(2, 12)]
    node1 = node_file(1, [container("aaaa0001", "10.244.21.2", rank="0", exit_code=137, tx=5, rx=7),
                          container("aaaa0002", "10.244.21.3", rank="1", drops=3, errors=1, tx=2_000_000, rx=9),
                          container("vvvv0003", "10.244.21.30", step="1", rank="0", mode="veth"),
                          container("iiii0004", "10.244.21.31", step="", rank="", name="web", exit_code=None,
                                    end=None, command=["<script>alert(1)</script>", '"><img src=http://evil/x>']),
                          *many])
    node2 = node_file(2, [], state="failed", error="flanneld exited: no lease")
    node3 = node_file(3, [], errors=["bubble start failed: port 30000 is taken"], state="none")
    return [node1, node2, node3]


def write_job(report_dir: Path, nodes: list[dict], job: int = JOB) -> Path:
    folder = report_dir / str(job)
    folder.mkdir(parents=True)
    for data in nodes:
        (folder / f"{data['node']}.json").write_text(collect.to_json(data))
    return folder


def validate(document: dict) -> None:
    """Against schema.json (jsonschema is in the `test` extra)."""
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(load_schema(), format_checker=jsonschema.FormatChecker()).validate(document)


# -- merge ------------------------------------------------------------------------------------------


def test_merge_lists_nodes_containers_and_totals(tmp_path):
    write_job(tmp_path, healthy_job())
    report = load_job(tmp_path, JOB, now=T0 + 100)
    assert [n.node for n in report.nodes] == ["node1", "node2"]
    n1, n2 = report.nodes
    assert (n1.bubble, n1.host_ip, n1.slirp_cidr, n1.flannel_subnet, n1.bridge_ip, n1.mtu) == \
        (f"hpk-{JOB}", "172.31.250.11", "10.0.2.0/24", "10.244.21.0/24", "10.244.21.1", 1450)
    assert (n2.vni, n2.vxlan_port, n2.etcd_endpoints, n2.started, n2.collected) == \
        (JOB + 1, 44242, ["http://172.31.250.11:30000"], T0, T0 + 80)
    assert [(c.node, c.rank, c.ip, c.tx_bytes, c.rx_bytes) for c in report.containers] == [
        ("node1", "0", "10.244.21.2", 4_000, 3_005_272), ("node2", "1", "10.244.22.2", 3_617_395, 4_432)]
    t = report.totals
    assert (t.nodes, t.containers, t.containers_failed, t.tx_bytes, t.rx_bytes, t.drops, t.errors, t.warnings) == \
        (2, 2, 0, 3_621_395, 3_009_704, 0, 0, 0)
    assert report.problems == []
    assert report.overlay == {"network": "10.244.0.0/16", "vni": JOB + 1, "vxlan_port": 44242,
                              "etcd_endpoints": ["http://127.0.0.1:2379", "http://172.31.250.11:30000"],
                              "etcd_prefix": f"/hpk/jobs/{JOB}/network"}


def test_problems_come_first_errors_before_warnings(tmp_path):
    write_job(tmp_path, troubled_job())
    report = load_job(tmp_path, JOB, nodes=["node1", "node2", "node3", "node4"])
    kinds = [(p.severity, p.kind, p.node, p.container) for p in report.problems]
    assert kinds == [
        ("error", "exit_code", "node1", "aaaa0001"),
        ("error", "bubble_failed", "node2", None),
        ("error", "bubble_failed", "node3", None),
        ("warning", "drops", "node1", "aaaa0002"),
        ("warning", "relay_errors", "node1", "aaaa0002"),
        ("warning", "no_exit_code", "node1", "iiii0004"),
        ("warning", "node_missing", "node4", None),
    ], kinds
    messages = [p.message for p in report.problems]
    assert "exit code 137 (signal 9)" in messages[0]
    assert messages[1] == "bubble hpk-4242 failed: flanneld exited: no lease"  # not repeated as a node error
    assert messages[2] == "no bubble: bubble start failed: port 30000 is taken"
    assert "bad frame length 0" in messages[4]
    t = report.totals
    assert (t.nodes, t.nodes_failed, t.containers, t.containers_failed, t.containers_counted) == (3, 2, 14, 1, 13)
    assert (t.drops, t.relay_errors, t.errors, t.warnings) == (3, 1, 3, 4)
    assert report.source["missing_nodes"] == ["node4"]
    veth = next(c for c in report.containers if c.mode == "veth")
    assert veth.counters == "none" and veth.tx_bytes is None  # not counted as zero


def test_overlay_disagreement_is_an_error():
    a, b = healthy_job()
    b["bubble"]["vni"] = 99
    b["bubble"]["flannel_subnet"] = a["bubble"]["flannel_subnet"]
    report = merge(JOB, [("a", a), ("b", b)])
    assert [p.kind for p in report.problems] == ["overlay_mismatch", "overlay_mismatch"]
    assert any("same subnet 10.244.21.0/24" in p.message for p in report.problems)


def test_json_validates_against_the_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(load_schema())
    for number, nodes in enumerate((healthy_job(), troubled_job(), [node_file(1, [])])):
        write_job(tmp_path, nodes, job=number)
        document = json.loads(load_job(tmp_path, number).to_json())
        assert document["schema"] == REPORT_SCHEMA and document["version"] == 1
        validate(document)
    live = merge(7, [("live", healthy_job()[0])], live=True).to_dict()
    validate(live)
    broken = dict(document, totals=dict(document["totals"], drops=-1))
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)  # the schema does check
    with pytest.raises(jsonschema.ValidationError):
        validate(dict(document, surprise=1))


@pytest.mark.parametrize("content, message", [
    ("{not json", "not JSON"),
    ('{"schema": 99, "node": "node1"}', "node report schema 99"),
    ('{"schema": 1, "node": "node1", "bubble": [], "containers": [], "errors": []}', "'bubble' is missing"),
    ('{"schema": 1, "node": "../x", "bubble": {}, "containers": [], "errors": []}', "node name"),
    ('{"schema": 1, "node": "n", "bubble": {}, "containers": [{"id": ""}], "errors": []}', "containers[0] has no id"),
    ("[]", "not a JSON object"),
    ('{"schema": 1, "node": "node1", "bubble": {}, "containers": [], "errors": []}', "it says it is node 'node1'"),
])
def test_a_malformed_node_file_is_named(tmp_path, content, message):
    folder = write_job(tmp_path, healthy_job())
    bad = folder / "node2.json"
    bad.write_text(content)
    with pytest.raises(ReportError, match="malformed") as info:
        load_job(tmp_path, JOB)
    assert str(bad) in str(info.value) and message in str(info.value)


def test_no_such_job_and_links_are_clear_errors(tmp_path):
    with pytest.raises(ReportError, match=f"no report for job 1 in {tmp_path}"):
        load_job(tmp_path, 1)
    with pytest.raises(ReportError, match="which does not exist"):
        load_job(tmp_path / "nowhere", 1)
    folder = tmp_path / "5"
    folder.mkdir()
    with pytest.raises(ReportError, match="no node reports for job 5"):
        load_job(tmp_path, 5)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(collect.to_json(healthy_job()[0]))
    (folder / "node1.json").symlink_to(elsewhere)
    with pytest.raises(ReportError, match="symbolic link"):
        load_job(tmp_path, 5)


def test_job_nodes_come_from_the_jobs_own_environment():
    env = {"SLURM_JOB_ID": "12", "SLURM_JOB_NODELIST": "node[1-3],gpu7"}
    assert job_nodes(12, env) == ["node1", "node2", "node3", "gpu7"]


def fake_slurm(folder: Path, scontrol: str, sacct: str) -> str:
    """A PATH with stand-ins for scontrol and sacct (shell bodies)."""
    folder.mkdir()
    for name, body in (("scontrol", scontrol), ("sacct", sacct)):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return f"{folder}:/usr/bin:/bin"


def test_job_nodes_from_scontrol_then_sacct(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "a", "echo 'JobId=5 ReqNodeList=(null) NodeList=n[1-2] X=1'",
                                          "exit 1"))
    assert job_nodes(5, {}) == ["n1", "n2"]
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "b", "echo 'slurm_load_jobs error: Invalid job id specified' >&2;"
                                          " exit 1", "echo 'n[3-4]'"))
    assert job_nodes(5, {}) == ["n3", "n4"]
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "c", "echo 'Invalid job id specified' >&2; exit 1",
                                          "echo 'accounting storage is disabled' >&2; exit 1"))
    why: list[str] = []
    assert job_nodes(5, {}, why) is None
    assert why == ["scontrol: Invalid job id specified", "sacct: accounting storage is disabled"]


# -- rendering --------------------------------------------------------------------------------------


def test_terminal_summary_puts_problems_first(tmp_path):
    write_job(tmp_path, troubled_job())
    text = render_text(load_job(tmp_path, JOB))
    assert text.index("PROBLEMS (3 error(s), 3 warning(s))") < text.index("NODES") < text.index("CONTAINERS") \
        < text.index("TOTALS")
    problems = text[text.index("PROBLEMS"):text.index("NODES")]
    assert problems.index("ERROR") < problems.index("WARNING")
    assert "node2" in problems and "flanneld exited: no lease" in problems
    header = next(line for line in text.splitlines() if line.strip().startswith("NODE ") and "FLANNEL SUBNET" in line)
    for column in ("BUBBLE", "HOST IP", "SLIRP CIDR", "MTU", "VNI", "UDP", "ETCD", "STARTED", "COLLECTED"):
        assert column in header
    assert "10.244.21.31" in text and "137" in text
    assert "14 container(s), 1 failed" in text


def test_healthy_summary_says_no_problems(tmp_path):
    write_job(tmp_path, healthy_job())
    text = render_text(load_job(tmp_path, JOB))
    assert "PROBLEMS: none" in text and "3.6 MB" in text and "3.0 MB" in text


def test_human_bytes():
    assert [human_bytes(v) for v in (None, 0, 999, 1000, 3_617_395, 12_345_678_901)] == \
        ["-", "0 B", "999 B", "1.0 kB", "3.6 MB", "12.3 GB"]


def page_structure(page: str) -> tuple[set[str], set[str], list[str]]:
    """Every tag and attribute name of the page, and its style sheets."""
    from html.parser import HTMLParser

    class Parser(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.attributes, self.styles, self.in_style = set(), set(), [], False

        def handle_starttag(self, tag, attrs):
            self.tags.add(tag)
            self.attributes.update(name for name, _ in attrs)
            self.in_style = tag == "style"

        def handle_endtag(self, tag):
            self.in_style = False

        def handle_data(self, data):
            if self.in_style:
                self.styles.append(data)

    parser = Parser()
    parser.feed(page)
    return parser.tags, parser.attributes, parser.styles


def test_html_is_self_contained_and_escapes_everything(tmp_path):
    write_job(tmp_path, troubled_job())
    page = render_html(load_job(tmp_path, JOB))
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and page.count("<table>") == 2
    tags, attributes, styles = page_structure(page)
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "image", "use", "base", "a"}, tags
    assert not attributes & {"src", "href", "xlink:href", "srcset", "action", "style"}, attributes
    assert styles and not any(("url(" in css or "@import" in css) for css in styles)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the user's command, shown, not run
    assert "&lt;img src=http://evil/x&gt;" in page
    assert "10.244.21.31" in page and "hpk-4242" in page and "flanneld exited: no lease" in page


# -- headless Chromium ----------------------------------------------------------------------------

# Chromium leaves helpers (crashpad) behind; run it under a child subreaper that reaps or kills them all.
REAPER = r"""
import ctypes, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    code = proc.wait(timeout=float(os.environ["REAPER_TIMEOUT"]))
except subprocess.TimeoutExpired:
    proc.kill()
    code = proc.wait()
deadline = time.monotonic() + 5
while True:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:
        if time.monotonic() > deadline:
            kids = []
            for task in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{task}/children") as f:
                    kids += [int(k) for k in f.read().split()]
            for kid in kids:
                os.kill(kid, signal.SIGKILL)
        time.sleep(0.05)
sys.exit(code)
"""


def screenshot(page: Path, png: Path, workdir: Path) -> list[dict]:
    """Render `page` at 1280x900 into `png`; the URL requests Chromium's network stack saw (from its net log)."""
    netlog = workdir / "netlog.json"
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={workdir / 'profile'}", f"--screenshot={png}", "--window-size=1280,900",
            "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND", f"--log-net-log={netlog}",
            f"file://{page}"]
    result = subprocess.run([sys.executable, "-c", REAPER, *argv], env=dict(os.environ, REAPER_TIMEOUT="45"),
                            capture_output=True, timeout=60)
    assert result.returncode == 0 and png.is_file(), result.stderr.decode(errors="replace")[-2000:]
    log = json.loads(netlog.read_text())
    names = {value: key for key, value in log["constants"]["logEventTypes"].items()}
    return [e["params"] for e in log["events"]
            if names.get(e["type"]) == "URL_REQUEST_START_JOB" and "url" in e.get("params", {})]


def keep(png: Path, name: str) -> None:
    """HPK_KEEP_SCREENSHOTS=DIR keeps the screenshots there, for a human to look at."""
    folder = os.environ.get("HPK_KEEP_SCREENSHOTS")
    if folder:
        shutil.copy(png, Path(folder) / name)


def page_requests(requests: list[dict]) -> list[str]:
    """Requests the page made: Chromium's own (update checks, network time) have no origin as initiator."""
    return [r["url"] for r in requests if r.get("initiator") != "not an origin"]


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """A minimal PNG reader (8-bit RGB/RGBA, not interlaced): width, height and each row's pixel bytes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = previous[i], previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line) if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3))
        previous = line
    return width, height, rows


def colour_counts(rows: list[bytes]) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for row in rows:
        for i in range(0, len(row), 3):
            pixel = row[i:i + 3]
            counts[pixel] = counts.get(pixel, 0) + 1
    return counts


def screenshot_report(tmp_path, nodes: list[dict], name: str):
    """Store the job's report parts, render its page and screenshot it: the PNG, and what the page fetched."""
    write_job(tmp_path / "reports", nodes)
    page = tmp_path / f"{name}.html"
    page.write_text(render_html(load_job(tmp_path / "reports", JOB)))
    png = tmp_path / f"{name}.png"
    return png, page_requests(screenshot(page, png, tmp_path))


@pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian package chromium")
def test_html_page_renders_in_headless_chromium_without_network(tmp_path):
    png, requests = screenshot_report(tmp_path, troubled_job(), "report")
    assert requests == [], "the page asked for something over the network"
    width, height, rows = read_png(png)
    assert (width, height) == (1280, 900)
    counts = colour_counts(rows)
    background = max(counts, key=counts.get)
    assert background == bytes.fromhex("f6f8fa")  # the page's background: CSS applied
    assert len(counts) > 50, "a blank page"
    assert sum(n for colour, n in counts.items() if colour != background) > 0.15 * width * height
    assert counts.get(bytes.fromhex("fde8e6"), 0) > 2000  # the problems, in their red boxes
    keep(png, "hpk-report-screenshot.png")


@pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian package chromium")
def test_the_network_check_catches_a_page_that_fetches(tmp_path):
    """The detector itself: a page with a remote image and stylesheet is caught (nothing gets out: the
    resolver maps every name to nothing)."""
    page = tmp_path / "fetching.html"
    page.write_text('<!DOCTYPE html><body><img src="http://canary.invalid/x.png">'
                    '<link rel="stylesheet" href="https://canary.invalid/a.css"></body>')
    requests = page_requests(screenshot(page, tmp_path / "fetching.png", tmp_path))
    assert sorted(requests) == ["http://canary.invalid/x.png", "https://canary.invalid/a.css"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian package chromium")
def test_topology_of_a_healthy_job(tmp_path):
    png, requests = screenshot_report(tmp_path, healthy_job(), "healthy")
    assert requests == []
    counts = colour_counts(read_png(png)[2])
    assert counts.get(bytes.fromhex("2f6fb3"), 0) > 3000  # node headers and the overlay bus
    assert counts.get(bytes.fromhex("fde8e6"), 0) == 0  # no problem boxes
    assert counts.get(bytes.fromhex("e6f4ea"), 0) > 1000  # "No problems"


# -- the command ------------------------------------------------------------------------------------


def test_report_command_terminal_json_and_html(tmp_path):
    write_job(tmp_path, healthy_job())
    runner = CliRunner()
    result = runner.invoke(hpktainer, ["report", str(JOB), "--report-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "PROBLEMS: none" in result.output and "node2" in result.output
    result = runner.invoke(hpktainer, ["report", str(JOB), "--json", "--report-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    validate(json.loads(result.output))
    page = tmp_path / "page.html"
    result = runner.invoke(hpktainer, ["report", str(JOB), "--html", str(page), "--report-dir", str(tmp_path)],
                           env={"SLURM_JOB_ID": str(JOB)})
    assert result.exit_code == 0, result.output
    assert page.read_text().startswith("<!DOCTYPE html>") and stat.S_IMODE(page.stat().st_mode) == 0o600
    result = runner.invoke(hpktainer, ["report", "--json", "--report-dir", str(tmp_path)],
                           env={"SLURM_JOB_ID": str(JOB)})  # the current job by default
    assert result.exit_code == 0 and json.loads(result.output)["job_id"] == JOB


@pytest.mark.parametrize("args, env, message", [
    (["77"], {}, "no report for job 77"),
    ([], {"SLURM_JOB_ID": ""}, "not inside a Slurm job"),
    (["--json", "--html", "-", str(JOB)], {}, "both write to standard output"),
    ([str(JOB), "--nodes", "node[1-"], {}, "node list"),
])
def test_report_command_errors(tmp_path, args, env, message):
    write_job(tmp_path, healthy_job())
    result = CliRunner().invoke(hpktainer, ["report", "--report-dir", str(tmp_path), *args], env=env)
    assert result.exit_code == 1 and message in result.output, result.output


def test_report_command_names_a_malformed_file(tmp_path):
    folder = write_job(tmp_path, healthy_job())
    (folder / "node1.json").write_text('{"schema": 1}')
    result = CliRunner().invoke(hpktainer, ["report", str(JOB), "--report-dir", str(tmp_path)])
    assert result.exit_code == 1 and f"{folder / 'node1.json'}: malformed report" in result.output


# -- privacy ----------------------------------------------------------------------------------------


@pytest.fixture
def two_users():
    from hpk_slurm.testbed.bubble_lab import TestUser

    users = []
    try:
        users.append(TestUser.create())
        users.append(TestUser.create())
        yield users
    finally:
        for user in users:
            user.close()


@pytest.mark.skipif(not IS_ROOT, reason="needs root: creates users")
def test_another_user_cannot_read_a_report(two_users):
    owner, other = two_users
    base = Path(tempfile.mkdtemp(prefix="hpk-report-"))
    try:
        base.chmod(0o755)  # reachable by anyone, as /var/lib/hpk is
        report_dir = base / "reports"
        folder = collect.report_folder(report_dir, JOB)  # as the epilog makes it
        for data in healthy_job():
            write_private(folder / f"{data['node']}.json", collect.to_json(data), owner.uid, owner.gid, mode=0o400)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o711 and folder.stat().st_uid == 0
        path = folder / "node1.json"

        def as_user(user, argv):
            return subprocess.run(user.argv(argv), capture_output=True, text=True, timeout=30, cwd="/")

        assert as_user(owner, ["cat", str(path)]).returncode == 0  # the control: the owner can
        denied = as_user(other, ["cat", str(path)])
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        listing = as_user(other, ["ls", str(folder)])
        assert listing.returncode != 0 and "Permission denied" in listing.stderr  # not even the node names

        report = [sys.executable, "-m", "hpk_slurm.cli.hpktainer", "report", str(JOB), "--json",
                  "--report-dir", str(report_dir), "--nodes", "node[1-2]"]
        mine = as_user(owner, report)
        assert mine.returncode == 0, mine.stderr
        assert [n["node"] for n in json.loads(mine.stdout)["nodes"]] == ["node1", "node2"]
        theirs = as_user(other, report)
        assert theirs.returncode == 1 and f"cannot read {path}: permission denied" in theirs.stderr, theirs.stderr
    finally:
        shutil.rmtree(base)


# -- retention --------------------------------------------------------------------------------------


def test_prune_removes_only_old_job_folders(tmp_path):
    now = time.time()
    report_dir = tmp_path / "reports"
    old, recent, touched = report_dir / "100", report_dir / "200", report_dir / "300"
    for folder in (old, recent, touched):
        folder.mkdir(parents=True)
        (folder / "node1.json").write_text("{}")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("keep")
    os.utime(precious, (now - 90 * 86400, now - 90 * 86400))
    (report_dir / "400").symlink_to(precious)  # a link that looks like a job: never followed
    (report_dir / "notes").mkdir()  # not a job ID: not ours to remove
    day = 86400
    for path, age in ((old / "node1.json", 40), (old, 40), (recent / "node1.json", 3), (recent, 3),
                      (touched, 40), (touched / "node1.json", 5), (report_dir / "notes", 400)):
        os.utime(path, (now - age * day, now - age * day), follow_symlinks=False)

    assert prune(report_dir, 30, now=now, dry_run=True) == [old]
    assert old.exists()
    assert prune(report_dir, 30, now=now) == [old]
    assert not old.exists() and recent.exists() and touched.exists() and (report_dir / "notes").exists()
    assert (precious / "keep").read_text() == "keep" and (report_dir / "400").is_symlink()
    assert prune(report_dir, 0, now=now + 1) == [recent, touched]
    assert prune(tmp_path / "nowhere", 30) == []
    with pytest.raises(ValueError):
        prune(report_dir, -1)


# -- end to end: a real 2-node Slurm job ----------------------------------------------------------


@pytest.mark.skipif(shutil.which("slurmctld") is None,
                    reason="needs the Debian packages slurmctld, slurmd, slurm-client and munge")
def test_two_node_job_report_lists_nodes_containers_and_traffic(testbed, tmp_path):
    from hpk_slurm.testbed.job_lab import PY, JobLab
    from hpk_slurm.testbed.netns import wait_for

    sent = 3_000_000
    lab = JobLab(testbed)
    try:
        body = r'''
srun -N2 --ntasks-per-node=1 $PY -m hpk_slurm.cli.hpktainer exec --wait-peers / sh -c '
  if [ "$HPK_RANK" = 0 ]; then
    exec $PY -m hpk_slurm.testbed.tcpcheck serve 0.0.0.0 5001
  else
    for try in 1 2 3 4 5 6 7 8 9 10; do
      $PY -m hpk_slurm.testbed.tcpcheck send $SLURM_JOB_ID-0 5001 SENT 2>/dev/null && exit 0
      sleep 0.5
    done
    exit 1
  fi'
$PY -m hpk_slurm.cli.hpktainer report --json | $PY -c '
import json, sys
r = json.load(sys.stdin)
print("LIVE", r["source"]["live"], [n["node"] for n in r["nodes"]], [c["rank"] for c in r["containers"]])'
'''.replace("SENT", str(sent))
        job = lab.cluster.sbatch(lab.job_script(body), user=lab.user, nodes=None)
        state = lab.cluster.wait_job(job, timeout=120)
        output = lab.cluster.output(job)
        assert state == "COMPLETED", output
        nodes = lab.cluster.nodes
        # during the job, the current job's report is this node's, live from its bubble
        assert f"LIVE True ['{nodes[0]}'] ['0']" in output, output
        files = [lab.report_dir / str(job) / f"{node}.json" for node in nodes]
        wait_for(lambda: all(f.exists() for f in files), timeout=60, what="both nodes' reports")

        # as the job's user, who cannot list the job's folder: the nodes come from Slurm (scontrol)
        result = lab.cluster.run([PY, "-m", "hpk_slurm.cli.hpktainer", "report", str(job), "--json"],
                                 user=lab.user, env={"HPK_CONFIG": str(lab.config)}, timeout=60)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        validate(report)
        assert [n["node"] for n in report["nodes"]] == nodes
        assert all(n["bubble"] == f"hpk-{job}" and n["flannel_subnet"] for n in report["nodes"])
        assert len({n["flannel_subnet"] for n in report["nodes"]}) == 2
        records = [c for f in files for c in json.loads(f.read_text())["containers"]]
        assert sorted(c["id"] for c in report["containers"]) == sorted(r["id"] for r in records)
        by_rank = {c["rank"]: c for c in report["containers"]}
        assert by_rank["1"]["node"] == nodes[1] and by_rank["0"]["node"] == nodes[0]
        assert by_rank["1"]["tx_bytes"] >= sent and by_rank["0"]["rx_bytes"] >= sent
        assert all(c["exit_code"] == 0 for c in report["containers"])
        assert report["totals"]["tx_bytes"] >= sent and report["totals"]["rx_bytes"] >= sent
        # no errors; warnings may be (a relay client's hello reset once, then reconnected, was seen here)
        assert [p for p in report["problems"] if p["severity"] == "error"] == [], report["problems"]
        assert report["source"]["live"] is False

        text = lab.cluster.run([PY, "-m", "hpk_slurm.cli.hpktainer", "report", str(job)],
                               user=lab.user, env={"HPK_CONFIG": str(lab.config)}, timeout=60)
        assert text.returncode == 0 and "PROBLEMS" in text.stdout and nodes[1] in text.stdout, text.stderr
        assert text.stdout.index("PROBLEMS") < text.stdout.index("NODES") < text.stdout.index("CONTAINERS")

        if CHROMIUM:  # the real job's page, as an admin (root) makes it
            page = tmp_path / "job.html"
            result = CliRunner().invoke(hpktainer, ["report", str(job), "--report-dir", str(lab.report_dir),
                                                    "--html", str(page)])
            assert result.exit_code == 0, result.output
            png = tmp_path / "job.png"
            assert page_requests(screenshot(page, png, tmp_path)) == []
            counts = colour_counts(read_png(png)[2])
            assert counts.get(bytes.fromhex("2f6fb3"), 0) > 3000 and len(counts) > 50
            keep(png, "hpk-report-job-screenshot.png")
    finally:
        lab.close()
