"""One self-contained HTML file per run: a timeline, a summary and every output.

No scripts and no external assets: it opens offline, from a mail attachment
or a CI artifact. The timeline is inline SVG, one lane per prefork slot.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.table import Table

from labq.outcome import Outcome, Status

COLOURS = {
    Status.SUCCEEDED: "#2e9d4f",
    Status.FAILED: "#d23c3c",
    Status.SOFT_TIMEOUT: "#e8a33d",
    Status.HARD_TIMEOUT: "#8e3cd2",
    Status.CANCELLED: "#8a8a8a",
    Status.LOST: "#3c6fd2",
    Status.RUNNING: "#9ecbf0",
    Status.QUEUED: "#dddddd",
}
LANE_HEIGHT = 22
PLOT_WIDTH = 900
#: Width of one character of the 12 px lane labels and 11 px bar labels, roughly.
CHAR_WIDTH = 7.2
#: Tick steps in seconds: 1-2-5 below a minute, then minutes and hours a clock has.
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
MAX_TICKS = 7

_CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px} h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
td.worker,td.device{white-space:nowrap}
th{background:#f3f3f3} .num{text-align:right}
.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
pre{background:#f7f7f7;padding:8px;max-height:320px;overflow:auto;white-space:pre-wrap}
details{margin:4px 0} summary{cursor:pointer}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _lane(o: Outcome) -> str:
    return o.slot or (f"{o.worker}/?" if o.worker else "(never started)")


def tick_step(span: float) -> float:
    """The smallest round step that marks ``span`` seconds with at most
    :data:`MAX_TICKS` intervals: 1, 2 or 5 times a power of ten below a
    second, and seconds, minutes and hours a clock has above."""
    if span <= 0:
        return 1.0
    if span / MAX_TICKS < 1:
        exp = math.floor(math.log10(span / MAX_TICKS))
        for mult in (1, 2, 5, 10):
            step = mult * 10.0 ** exp
            if span / step <= MAX_TICKS:
                return float(f"{step:.12g}")
    for step in _STEPS:
        if span / step <= MAX_TICKS:
            return float(step)
    return float(_STEPS[-1] * math.ceil(span / MAX_TICKS / _STEPS[-1]))


def ticks(span: float) -> list[float]:
    """Round tick values from 0 up to the first at or past ``span``."""
    step = tick_step(span)
    count = math.ceil(span / step - 1e-9)
    return [float(f"{k * step:.12g}") for k in range(max(1, count) + 1)]


def tick_label(seconds: float) -> str:
    """``0``, ``0.5 s``, ``15 s``, ``2 min``, ``1.5 h``: no trailing zeros."""
    if seconds == 0:
        return "0"
    if seconds < 60:
        return f"{seconds:.6g} s"
    if seconds < 3600:
        return f"{seconds / 60:.6g} min"
    return f"{seconds / 3600:.6g} h"


def timeline_svg(outcomes: Sequence[Outcome]) -> str:
    """Bars from start to finish, one lane per worker slot, coloured by status,
    each labelled with its device (clipped to the bar; the tooltip has it all)."""
    started = [o for o in outcomes if o.started_at]
    if not started:
        return "<p>No task started.</p>"
    t0 = min(o.started_at for o in started if o.started_at)
    ends = [o.finished_at or o.started_at for o in started]
    lanes = sorted({_lane(o) for o in started})
    label_width = 12 + CHAR_WIDTH * max(len(lane) for lane in lanes)
    axis = ticks(max(0.001, max((e - t0).total_seconds() for e in ends if e)))
    span = axis[-1]
    height = LANE_HEIGHT * len(lanes) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + PLOT_WIDTH + 50:.0f}" '
             f'height="{height}" role="img" aria-label="timeline">']
    for i, lane in enumerate(lanes):
        y = i * LANE_HEIGHT
        parts.append(f'<text x="4" y="{y + 15}" font-size="12" class="lane">{_esc(lane)}</text>'
                     f'<line x1="{label_width:.0f}" x2="{label_width + PLOT_WIDTH:.0f}" '
                     f'y1="{y + LANE_HEIGHT}" y2="{y + LANE_HEIGHT}" stroke="#eee"/>')
    for o in started:
        assert o.started_at
        end = o.finished_at or o.started_at
        x = label_width + (o.started_at - t0).total_seconds() / span * PLOT_WIDTH
        w = max(2.0, (end - o.started_at).total_seconds() / span * PLOT_WIDTH)
        y = lanes.index(_lane(o)) * LANE_HEIGHT + 3
        name = o.device or o.task.rsplit(".", 1)[-1]
        tip = f"{o.device or o.task} {o.status.value} {o.duration or 0:.2f}s"
        # A nested <svg> clips its text to the bar: a short bar shows the
        # start of the name, never text over its neighbour. Hovering falls
        # through the label to the bar's tooltip.
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{y}" width="{w:.1f}" '
                     f'height="{LANE_HEIGHT - 6}" fill="{COLOURS[o.status]}" '
                     f'data-status="{o.status.value}" data-device="{_esc(name)}">'
                     f'<title>{_esc(tip)}</title></rect>'
                     f'<svg class="bar-label" x="{x:.1f}" y="{y}" width="{w:.1f}" '
                     f'height="{LANE_HEIGHT - 6}" pointer-events="none">'
                     f'<text x="3" y="12" font-size="11" fill="#fff">{_esc(name)}</text></svg>')
    axis_y = len(lanes) * LANE_HEIGHT + 18
    for value in axis:
        x = label_width + value / span * PLOT_WIDTH
        anchor = "end" if value == span else "start" if value == 0 else "middle"
        parts.append(f'<text class="tick" x="{x:.0f}" y="{axis_y}" font-size="11" fill="#666" '
                     f'text-anchor="{anchor}">{tick_label(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _summary(outcomes: Sequence[Outcome]) -> str:
    counts = Counter(o.status for o in outcomes)
    rows = "".join(
        f'<tr><td><span class="swatch" style="background:{COLOURS[s]}"></span>{s.value}</td>'
        f'<td class="num">{counts[s]}</td></tr>' for s in Status if counts[s])
    return f"<table><tr><th>status</th><th>tasks</th></tr>{rows}</table>"


def _details(outcomes: Sequence[Outcome]) -> str:
    rows = []
    for o in outcomes:
        body = ""
        if o.value is not None:
            text = o.value if isinstance(o.value, str) else json.dumps(o.value, indent=2)
            body += f"<details><summary>output</summary><pre>{_esc(text)}</pre></details>"
        if o.error is not None:
            body += (f"<details open><summary>{_esc(o.error.type)}: {_esc(o.error.message)}"
                     f"</summary><pre>{_esc(o.error.traceback)}</pre></details>")
        dur = f"{o.duration:.2f}" if o.duration is not None else ""
        rows.append(
            f'<tr><td class="device">{_esc(o.device or "")}</td><td>{_esc(o.task)}</td>'
            f'<td><span class="swatch" style="background:{COLOURS[o.status]}"></span>'
            f'{o.status.value}</td><td class="worker">{_esc(o.worker or "")}</td>'
            f'<td class="num">{dur}</td>'
            f"<td>{body}</td></tr>")
    return ("<table><tr><th>device</th><th>task</th><th>status</th><th>worker</th>"
            f"<th>seconds</th><th>output / error</th></tr>{''.join(rows)}</table>")


def render(run_id: str, outcomes: Sequence[Outcome]) -> str:
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>labq run {_esc(run_id)}</title><style>{_CSS}</style></head><body>"
            f"<h1>labq run {_esc(run_id)}</h1><p>{len(outcomes)} tasks, written {made}</p>"
            f"<h2>Timeline</h2>{timeline_svg(outcomes)}"
            f"<h2>Summary</h2>{_summary(outcomes)}"
            f"<h2>Devices</h2>{_details(outcomes)}</body></html>")


def write_report(path: Path, run_id: str, outcomes: Sequence[Outcome]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(run_id, outcomes), encoding="utf-8")
    return path


def outcome_table(outcomes: Sequence[Outcome], title: str = "") -> Table:
    """A rich table of outcomes: device, task, status, worker, seconds, result."""
    table = Table(title=title or None)
    # Names never wrap (``lab-/a@vm`` reads as two workers); the result folds.
    for col in ("device", "task", "status", "worker", "s"):
        table.add_column(col, no_wrap=True)
    table.add_column("result / error", overflow="fold")
    for o in outcomes:
        if o.error is not None:
            # The first line: a driver's advice runs on for lines; the report has it all.
            detail = str(o.error).strip().splitlines()[0][:160] if str(o.error).strip() else ""
        else:
            text = o.value if isinstance(o.value, str) else json.dumps(o.value)
            detail = (text or "").strip().splitlines()[0][:60] if text else ""
        colour = _RICH_COLOURS.get(o.status, "")
        table.add_row(o.device or "-", o.task.rsplit(".", 1)[-1],
                      f"[{colour}]{o.status.value}[/]" if colour else o.status.value,
                      o.worker or "-", f"{o.duration:.2f}" if o.duration is not None else "-",
                      detail)
    return table


_RICH_COLOURS = {Status.SUCCEEDED: "green", Status.FAILED: "red",
                 Status.SOFT_TIMEOUT: "yellow", Status.HARD_TIMEOUT: "magenta",
                 Status.CANCELLED: "bright_black", Status.LOST: "blue"}
