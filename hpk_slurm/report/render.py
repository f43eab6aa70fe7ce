"""A job's network report for people: a terminal summary, and one self-contained HTML page.

Both put the problems first, then a table of nodes, one of containers, and
the totals. The page adds a topology picture (inline SVG): each node a box
with its bubble, host IP and overlay subnet, its containers inside with
their addresses, exit codes and traffic, and the nodes joined by the job's
VXLAN overlay, each link labelled with what the node's containers sent and
received. The page loads nothing (inline CSS and SVG, no scripts, no links
to anywhere) and every value from the node files is escaped.
"""

from __future__ import annotations

import html
import math
import time

from hpk_slurm.report.merge import REPORT_SCHEMA, REPORT_VERSION, ContainerRow, JobReport, NodeRow

# -- formatting -------------------------------------------------------------------------------


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 1000:
        return f"{value} B"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 1000 or unit == "PB":
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


class Clock:
    """Times as HH:MM:SS when the whole report is within one day, else with the date (local time)."""

    def __init__(self, report: JobReport):
        times = [t for n in report.nodes for t in (n.started, n.collected) if t]
        times += [t for c in report.containers for t in (c.started, c.ended) if t]
        days = {time.strftime("%Y-%m-%d", time.localtime(t)) for t in times}
        self.day = next(iter(days)) if len(days) == 1 else None

    def __call__(self, when: float | None) -> str:
        if not when:
            return "-"
        return time.strftime("%H:%M:%S" if self.day else "%Y-%m-%d %H:%M:%S", time.localtime(when))


def stamp(when: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(when)) if when else "-"


def exit_text(c: ContainerRow) -> str:
    return "-" if c.exit_code is None else str(c.exit_code)


def node_columns(clock: Clock) -> list[tuple[str, callable, bool]]:
    """(header, value, right-aligned) for the nodes table."""
    return [
        ("NODE", lambda n: n.node, False),
        ("BUBBLE", lambda n: n.bubble or "-", False),
        ("STATE", lambda n: n.state or "none", False),
        ("HOST IP", lambda n: n.host_ip or "-", False),
        ("SLIRP CIDR", lambda n: n.slirp_cidr or "-", False),
        ("FLANNEL SUBNET", lambda n: n.flannel_subnet or "-", False),
        ("MTU", lambda n: str(n.mtu) if n.mtu is not None else "-", True),
        ("VNI", lambda n: str(n.vni) if n.vni is not None else "-", True),
        ("UDP", lambda n: str(n.vxlan_port) if n.vxlan_port is not None else "-", True),
        ("ETCD", lambda n: ", ".join(n.etcd_endpoints) or "-", False),
        ("STARTED", lambda n: clock(n.started), False),
        ("COLLECTED", lambda n: clock(n.collected), False),
        ("CONT.", lambda n: str(n.containers), True),
    ]


def container_columns(clock: Clock) -> list[tuple[str, callable, bool]]:
    return [
        ("NODE", lambda c: c.node, False),
        ("ID", lambda c: c.id + (f" ({c.name})" if c.name else ""), False),
        ("STEP", lambda c: c.step or "-", True),
        ("RANK", lambda c: c.rank or "-", True),
        ("IP", lambda c: c.ip or "-", False),
        ("MODE", lambda c: c.mode or "-", False),
        ("STARTED", lambda c: clock(c.started), False),
        ("ENDED", lambda c: clock(c.ended), False),
        ("EXIT", exit_text, True),
        ("TX", lambda c: human_bytes(c.tx_bytes), True),
        ("RX", lambda c: human_bytes(c.rx_bytes), True),
        ("TX FRAMES", lambda c: number(c.tx_frames), True),
        ("RX FRAMES", lambda c: number(c.rx_frames), True),
        ("DROPS", lambda c: number(c.drops), True),
    ]


def totals_line(report: JobReport) -> str:
    t = report.totals
    counted = "" if t.containers_counted == t.containers else f" (counters from {t.containers_counted} container(s))"
    return (f"{t.nodes} node(s), {t.containers} container(s), {t.containers_failed} failed; "
            f"sent {human_bytes(t.tx_bytes)} in {t.tx_frames:,} frames, received {human_bytes(t.rx_bytes)} "
            f"in {t.rx_frames:,} frames, {t.drops:,} dropped, {t.relay_errors} relay error(s){counted}")


def title(report: JobReport) -> str:
    return f"Job {report.job_id} network report" + (" (live, this node only)" if report.source.get("live") else "")


def overlay_line(report: JobReport) -> str:
    o = report.overlay
    parts = [f"overlay {o['network'] or '-'}", f"VNI {o['vni'] if o['vni'] is not None else '-'}",
             f"VXLAN UDP port {o['vxlan_port'] if o['vxlan_port'] is not None else '-'}"]
    if o["etcd_prefix"]:
        parts.append(f"etcd prefix {o['etcd_prefix']}")
    return ", ".join(parts)


# -- terminal ---------------------------------------------------------------------------------


def _table(rows: list, columns: list[tuple[str, callable, bool]], indent: str = "  ") -> list[str]:
    cells = [[str(value(row)) for _, value, _ in columns] for row in rows]
    widths = [max([len(header)] + [len(r[i]) for r in cells]) for i, (header, _, _) in enumerate(columns)]

    def line(values):
        out = [v.rjust(w) if right else v.ljust(w) for v, w, (_, _, right) in zip(values, widths, columns)]
        return (indent + "  ".join(out)).rstrip()

    return [line([h for h, _, _ in columns])] + [line(r) for r in cells]


def render_text(report: JobReport) -> str:
    clock = Clock(report)
    lines = [f"{title(report)}: {report.totals.nodes} node(s), {report.totals.containers} container(s)"
             + (f", {clock.day}" if clock.day else ""),
             f"  {overlay_line(report)}", ""]
    if report.problems:
        lines.append(f"PROBLEMS ({report.totals.errors} error(s), {report.totals.warnings} warning(s))")
        for p in report.problems:
            where = " ".join(x for x in (p.node, p.container) if x)
            lines.append(f"  {p.severity.upper():7}  {where + ': ' if where else ''}{p.message}")
    else:
        lines.append("PROBLEMS: none")
    lines += ["", "NODES"] + _table(report.nodes, node_columns(clock))
    lines += ["", "CONTAINERS"]
    lines += _table(report.containers, container_columns(clock)) if report.containers else ["  none"]
    lines += ["", "TOTALS", f"  {totals_line(report)}"]
    return "\n".join(lines) + "\n"


# -- HTML -------------------------------------------------------------------------------------

e = html.escape

CSS = """
:root { --fg:#1d2733; --muted:#5b6776; --line:#d5dbe3; --bg:#f6f8fa; --card:#fff; --accent:#2f6fb3;
        --err:#b42318; --errbg:#fde8e6; --warn:#9a6700; --warnbg:#fff4d6; --ok:#1a7f37; --okbg:#e6f4ea; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 22px 40px; }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 16px; margin: 26px 0 8px; }
.sub { color: var(--muted); margin: 0 0 14px; }
.cards { display:flex; flex-wrap:wrap; gap:10px; margin: 10px 0 4px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px 14px; min-width:120px; }
.card b { display:block; font-size:20px; }
.card span { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card.bad { border-color: var(--err); background: var(--errbg); }
.problems { list-style:none; padding:0; margin:0; }
.problems li { border-radius:6px; padding:6px 10px; margin:4px 0; border-left:5px solid; }
.problems li.error { background:var(--errbg); border-color:var(--err); }
.problems li.warning { background:var(--warnbg); border-color:var(--warn); }
.problems .sev { font-weight:700; text-transform:uppercase; font-size:12px; margin-right:8px; }
.problems .error .sev { color:var(--err); } .problems .warning .sev { color:var(--warn); }
.allgood { background:var(--okbg); color:var(--ok); border-radius:6px; padding:6px 10px; font-weight:600; }
.topology { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px; }
.topology svg { display:block; width:100%; height:auto; }
.scroll { overflow-x:auto; background:var(--card); border:1px solid var(--line); border-radius:8px; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { padding:5px 9px; text-align:left; white-space:nowrap; border-bottom:1px solid var(--line); }
th { background:#eef2f6; font-size:12px; text-transform:uppercase; letter-spacing:.03em; color:var(--muted); }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; }
tr.error td { background:var(--errbg); } tr.warning td { background:var(--warnbg); }
tbody tr:last-child td { border-bottom:none; }
.mono { font-family: "DejaVu Sans Mono", ui-monospace, monospace; font-size:12.5px; }
footer { color:var(--muted); font-size:12px; margin-top:26px; }
"""

# SVG geometry (user units; the picture scales to the page width)
WIDTH = 1180
MARGIN = 16
GAP = 28
HEAD = 84  # node box header
CBOX = 44  # container box height
CGAP = 6
MAX_SHOWN = 8  # containers drawn per node; the rest are in the table
BUS_DROP = 46  # from the node boxes down to the overlay bus
ROW_GAP = 40


NARROW = set("iljtfrI.,:;'!|()[] \u00b7/-")


def _em(char: str) -> float:
    """About how wide a DejaVu Sans glyph is, in em (no font metrics at hand: classes are enough)."""
    if char in NARROW:
        return 0.34
    if char.isdigit():
        return 0.64
    if char in "mwMW\u2191\u2193\u2014\u2026":
        return 0.9
    if char.isupper():
        return 0.72
    return 0.6


def _fit(text: str, width: float, size: float, mono: bool = False, bold: bool = False) -> str:
    """Cut `text` to what fits in `width` user units at font size `size`, ending it with an ellipsis."""
    scale = size * (1.08 if bold else 1.0)
    used = 0.0
    for index, char in enumerate(text):
        used += (0.61 if mono else _em(char)) * scale
        if used > width:
            return text[:max(1, index - 1)] + "\u2026"
    return text


def _text(x, y, content, width, size=12, weight="normal", fill="#1d2733", anchor="start", mono=False, full=None):
    family = ' font-family="DejaVu Sans Mono, monospace"' if mono else ""
    tip = f"<title>{e(full)}</title>" if full and full != content else ""
    return (f'<text x="{x:.0f}" y="{y:.0f}" font-size="{size}" font-weight="{weight}" fill="{fill}" '
            f'text-anchor="{anchor}"{family}>{tip}{e(_fit(content, width, size, mono, weight != "normal"))}</text>')


def _node_state(n: NodeRow, report: JobReport) -> str:
    kinds = {p.kind for p in report.problems if p.node == n.node and p.container is None}
    if kinds & {"bubble_failed", "bubble_gone", "node_error", "overlay_mismatch"}:
        return "error"
    return "ok"


def _container_state(c: ContainerRow, live: bool = False) -> str:
    if c.exit_code not in (None, 0):
        return "error"
    if c.drops or c.relay_errors or (c.exit_code is None and not live):
        return "warning"
    return "ok"


FILL = {"ok": ("#ffffff", "#9fb3c8"), "warning": ("#fff4d6", "#9a6700"), "error": ("#fde8e6", "#b42318")}


def _container_svg(c: ContainerRow, x: float, y: float, w: float, live: bool) -> str:
    fill, stroke = FILL[_container_state(c, live)]
    who = f"rank {c.rank}" if c.rank else (c.name or "container")
    line1 = f"{who}  {c.ip}"
    exit_part = "running" if c.exit_code is None else f"exit {c.exit_code}"
    traffic = ("no counters" if c.counters == "none"
               else f"\u2191 {human_bytes(c.tx_bytes)}  \u2193 {human_bytes(c.rx_bytes)}"
               + (f" \u00b7 {c.drops} dropped" if c.drops else ""))
    line2 = f"{c.id} \u00b7 {c.mode} \u00b7 {exit_part} \u00b7 {traffic}"
    tip = f"container {c.id} step {c.step or '-'} rank {c.rank or '-'}: {' '.join(c.command)}"
    return (f'<g><title>{e(tip)}</title>'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{CBOX}" rx="6" fill="{fill}" stroke="{stroke}"/>'
            + _text(x + 10, y + 18, line1, w - 20, 13, "600", mono=True)
            + _text(x + 10, y + 35, line2, w - 20, 11.5, fill="#3c4a5a")
            + "</g>")


def _node_svg(n: NodeRow, containers: list[ContainerRow], x: float, y: float, w: float, h: float,
              report: JobReport) -> str:
    state = _node_state(n, report)
    stroke = "#b42318" if state == "error" else "#2f6fb3"
    parts = [f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{h:.0f}" rx="10" fill="#f3f7fc" '
             f'stroke="{stroke}" stroke-width="{2.5 if state == "error" else 1.5}"/>',
             f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="26" rx="10" fill="{stroke}"/>',
             f'<rect x="{x:.0f}" y="{y + 14:.0f}" width="{w:.0f}" height="12" fill="{stroke}"/>']
    head = f"{n.node}  \u2014  {n.bubble or 'no bubble'}" + (f" ({n.role})" if n.role else "")
    parts.append(_text(x + 12, y + 18, head, w - 24, 14, "700", "#ffffff"))
    if n.bubble:
        parts.append(_text(x + 12, y + 45, f"host {n.host_ip or '-'} \u00b7 slirp {n.slirp_cidr or '-'}", w - 24, 12,
                           mono=True))
        subnet = f"subnet {n.flannel_subnet or '-'} \u00b7 MTU {n.mtu if n.mtu is not None else '-'}"
        parts.append(_text(x + 12, y + 63, subnet, w - 24, 12, "700", mono=True,
                           full=f"{subnet}; hpk-bridge (the containers' gateway) {n.bridge_ip or '-'}"))
    else:
        parts.append(_text(x + 12, y + 45, "no bubble on this node", w - 24, 12, fill="#5b6776"))
    if state == "error":
        reason = next((p.message for p in report.problems if p.node == n.node and p.container is None), "")
        parts.append(_text(x + 12, y + 79, reason, w - 24, 11.5, "700", "#b42318", full=reason))
    cy = y + HEAD
    for c in containers[:MAX_SHOWN]:
        parts.append(_container_svg(c, x + 10, cy, w - 20, bool(report.source.get("live"))))
        cy += CBOX + CGAP
    if len(containers) > MAX_SHOWN:
        parts.append(_text(x + 14, cy + 12, f"+ {len(containers) - MAX_SHOWN} more (see the table)", w - 28, 12,
                           fill="#5b6776"))
    elif not containers:
        parts.append(_text(x + 14, cy + 14, "no containers", w - 28, 12, fill="#5b6776"))
    return "".join(parts)


def _stroke(bytes_: int, biggest: int) -> float:
    """Link width 2..10 by traffic, logarithmic so that small flows stay visible."""
    if not bytes_ or not biggest:
        return 1.5
    return 2 + 8 * math.log1p(bytes_) / math.log1p(biggest)


def render_svg(report: JobReport) -> str:
    nodes = report.nodes
    by_node: dict[str, list[ContainerRow]] = {n.node: [] for n in nodes}
    for c in report.containers:
        by_node.setdefault(c.node, []).append(c)
    count = max(1, len(nodes))
    cols = min(count, 3)
    box_w = (WIDTH - 2 * MARGIN - (cols - 1) * GAP) / cols
    rows = [nodes[i:i + cols] for i in range(0, len(nodes), cols)]
    biggest = max([n.tx_bytes + n.rx_bytes for n in nodes] + [0])
    o = report.overlay
    bus_label = (f"VXLAN overlay {o['network'] or ''}  \u00b7  VNI {o['vni'] if o['vni'] is not None else '-'}"
                 f"  \u00b7  UDP {o['vxlan_port'] if o['vxlan_port'] is not None else '-'}")
    parts, y, buses = [], MARGIN, []
    for row in rows:
        shown = [min(len(by_node.get(n.node, [])), MAX_SHOWN) for n in row]
        extra = [1 if len(by_node.get(n.node, [])) != s or s == 0 else 0 for n, s in zip(row, shown)]
        h = HEAD + max(s * (CBOX + CGAP) + x * 22 for s, x in zip(shown, extra)) + 6
        bus_y = y + h + BUS_DROP
        row_w = len(row) * box_w + (len(row) - 1) * GAP
        x0 = MARGIN + (WIDTH - 2 * MARGIN - row_w) / 2
        for i, n in enumerate(row):
            x = x0 + i * (box_w + GAP)
            cx = x + box_w / 2
            width = _stroke(n.tx_bytes + n.rx_bytes, biggest)
            dead = _node_state(n, report) == "error" and not n.bubble
            parts.append(f'<line x1="{cx:.0f}" y1="{y + h:.0f}" x2="{cx:.0f}" y2="{bus_y:.0f}" stroke="#2f6fb3" '
                         f'stroke-width="{width:.1f}"' + (' stroke-dasharray="6 5"' if dead else "") + "/>")
            room = (box_w + GAP if i < len(row) - 1 else box_w / 2) - width / 2 - 20  # up to the next node's link
            parts.append(_text(cx + width / 2 + 8, y + h + 17, f"\u2191 sent {human_bytes(n.tx_bytes)}", room, 12, "600"))
            received = f"\u2193 received {human_bytes(n.rx_bytes)}" + (f", {n.drops} dropped" if n.drops else "")
            parts.append(_text(cx + width / 2 + 8, y + h + 33, received, room, 12, "600",
                               "#b42318" if n.drops else "#1d2733"))
            parts.append(_node_svg(n, by_node.get(n.node, []), x, y, box_w, h, report))
        buses.append((x0, x0 + row_w, bus_y))
        y = bus_y + ROW_GAP
    left = min(b[0] for b in buses) if buses else MARGIN
    right = max(b[1] for b in buses) if buses else WIDTH - MARGIN
    for _, _, by in buses:
        parts.append(f'<line x1="{left:.0f}" y1="{by:.0f}" x2="{right:.0f}" y2="{by:.0f}" stroke="#2f6fb3" '
                     f'stroke-width="5" stroke-linecap="round"/>')
    if len(buses) > 1:  # rows of nodes share one overlay: join their buses on the left
        parts.append(f'<line x1="{left:.0f}" y1="{buses[0][2]:.0f}" x2="{left:.0f}" y2="{buses[-1][2]:.0f}" '
                     f'stroke="#2f6fb3" stroke-width="5" stroke-linecap="round"/>')
    last_bus = buses[-1][2] if buses else y
    parts.append(_text(WIDTH / 2, last_bus + 22, bus_label, WIDTH - 2 * MARGIN, 13, "700", "#2f6fb3", "middle"))
    height = last_bus + 34
    return (f'<svg viewBox="0 0 {WIDTH} {height:.0f}" role="img" '
            f'aria-label="topology of job {report.job_id}" font-family="DejaVu Sans, Arial, sans-serif">'
            + "".join(parts) + "</svg>")


def _html_table(rows: list, columns, row_class=lambda r: "", cell_title=None) -> str:
    head = "".join(f'<th class="num">{e(h)}</th>' if right else f"<th>{e(h)}</th>" for h, _, right in columns)
    body = []
    for row in rows:
        cls = row_class(row)
        cells = []
        for header, value, right in columns:
            tip = cell_title(row, header) if cell_title else None
            attrs = (' class="num"' if right else "") + (f' title="{e(tip)}"' if tip else "")
            cells.append(f"<td{attrs}>{e(str(value(row)))}</td>")
        body.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>" if cls else "<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def render_html(report: JobReport) -> str:
    clock = Clock(report)
    live = bool(report.source.get("live"))
    t = report.totals
    cards = [(t.nodes, "nodes", t.nodes_failed > 0), (t.containers, "containers", False),
             (t.containers_failed, "failed", t.containers_failed > 0),
             (human_bytes(t.tx_bytes), "sent", False), (human_bytes(t.rx_bytes), "received", False),
             (number(t.drops), "drops", t.drops > 0), (len(report.problems), "problems", t.errors > 0)]
    cards_html = "".join(f'<div class="card{" bad" if bad else ""}"><b>{e(str(v))}</b><span>{e(k)}</span></div>'
                         for v, k, bad in cards)
    if report.problems:
        items = []
        for p in report.problems:
            where = " ".join(x for x in (p.node, p.container) if x)
            when = f" at {clock(p.time)}" if p.time else ""
            items.append(f'<li class="{e(p.severity)}"><span class="sev">{e(p.severity)}</span>'
                         f'<b>{e(where)}</b>{e(when)}{": " if where or when else ""}{e(p.message)}</li>')
        problems = f'<ul class="problems">{"".join(items)}</ul>'
    else:
        problems = ('<div class="allgood">No problems so far (the job is still running).</div>' if live else
                    '<div class="allgood">No problems: every bubble ran, every container exited 0, nothing dropped.</div>')
    node_state = {n.node: _node_state(n, report) for n in report.nodes}
    node_table = _html_table(report.nodes, node_columns(clock),
                             lambda n: "error" if node_state[n.node] == "error" else "")
    exact = {"TX": "tx_bytes", "RX": "rx_bytes"}
    container_table = _html_table(
        report.containers, container_columns(clock),
        lambda c: {"ok": ""}.get(_container_state(c, live), _container_state(c, live)),
        lambda c, h: (f"{getattr(c, exact[h]):,} bytes" if h in exact and getattr(c, exact[h]) is not None
                      else " ".join(c.command) if h == "ID" else None),
    ) if report.containers else "<p>No containers.</p>"
    when = f"{clock.day}" if clock.day else ""
    source = "live, from this node's bubble only" if report.source.get("live") else \
        f"{len(report.source.get('files', []))} node file(s) in {report.source.get('report_dir', '')}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title(report))}</title>
<style>{CSS}</style></head>
<body><main>
<h1>{e(title(report))}</h1>
<p class="sub">{e(overlay_line(report))}{e(" · " + when) if when else ""}</p>
<div class="cards">{cards_html}</div>
<h2>Problems</h2>
{problems}
<h2>Topology</h2>
<div class="topology">{render_svg(report)}</div>
<h2>Nodes</h2>
{node_table}
<h2>Containers</h2>
{container_table}
<h2>Totals</h2>
<p>{e(totals_line(report))}.</p>
<footer>Report schema {e(REPORT_SCHEMA)} version {REPORT_VERSION};
generated {e(stamp(report.generated))} from {e(source)}. Counters are the relay's, container side:
sent (↑) and received (↓) by each container; with offloads one frame carries up to 64 KiB.</footer>
</main></body></html>
"""
