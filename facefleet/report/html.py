"""Reports as one self-contained HTML file: the plots are inline SVG drawn here, with no
script and nothing fetched, so the file opens anywhere, offline.

`render_job_report(job_dir, out)`: one job (the three files of tables.py): its figures,
the diagnosis, GPU utilization and memory over time with chunk markers, the chunk
timeline per worker coloured by stage, time per stage and throughput over time.
`render_cluster_report(state_dir, since_s, out)`: every job and GPU sample of the last
`since_s` seconds: utilization per GPU and node, busy against idle GPU-hours, jobs per
day and the longest idle stretches.
"""

from __future__ import annotations

import calendar
import html
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from facefleet.errors import FacefleetError
from facefleet.media.files import atomic_output
from facefleet.report.diagnose import MEMORY_NEAR, Finding, diagnose
from facefleet.report.tables import (
    IDLE_UTIL_PCT,
    PROCESSING_COLUMNS,
    SAMPLES_SCHEMA,
    STAGE_GROUPS,
    GpuSeries,
    JobData,
    SampleLog,
    gpu_series,
    gpu_stats,
    job_dirs,
    read_job_data,
    stage_group,
)

WIDTH = 1000  # SVG user units; the figures scale to the page
MAX_POINTS = 600  # points per line: longer series are averaged into buckets
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#edc948", "#76b7b2", "#ff9da7", "#9c755f", "#bab0ac")
STAGES = (  # (chunk column, label, colour)
    ("decode_s", "decode (CPU thread)", "#4e79a7"),
    ("detect_s", "detect (GPU)", "#f28e2b"),
    ("gpu_other_s", "other GPU stages", "#e15759"),
    ("cpu_post_s", "CPU post", "#b07aa1"),
    ("encode_s", "encode (CPU thread)", "#59a14f"),
    ("waiting_s", "waiting", "#bab0ac"),
    ("return_s", "return to controller", "#dddddd"),
)
STAGE_COLOR = {column: color for column, _, color in STAGES}
WAIT_DECODE, WAIT_ENCODE = "#a6c4e0", "#a8d5a2"  # waiting, attributed to the slower CPU thread
SEVERITY_COLOR = {"critical": "#c0392b", "warning": "#d68910", "info": "#2874a6"}
GiB = 2**30


# --------------------------------------------------------------------------- formatting


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _utc(t: float | None, seconds: bool = True) -> str:
    if t is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else ""), time.gmtime(t)) + " UTC"


def _duration(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _num(value: float | None, fmt: str = "{:.1f}", unit: str = "") -> str:
    return "—" if value is None else fmt.format(value) + unit


def _money(value: float | None) -> str:
    """An amount with two decimals, or three significant digits when below 1."""
    if value is None:
        return "—"
    return f"{value:.2f}" if value >= 1 or value == 0 else f"{value:.3g}"


def _gpu_label(uuid: str | None, index: int | None = None) -> str:
    if not uuid:
        return "no GPU"
    short = uuid if uuid.startswith("SIM-") else uuid[:12]
    return f"GPU {index} ({short})" if index is not None and index >= 0 else short


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= raw:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def time_unit(span: float) -> tuple[float, str]:
    """(seconds per unit, unit name) for a time axis `span` seconds long."""
    if span >= 3 * 3600:
        return 3600.0, "hours"
    if span >= 180:
        return 60.0, "minutes"
    return 1.0, "seconds"


def _gpu_time(seconds: float) -> str:
    """GPU time in the unit that keeps the number readable."""
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} GPU-h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} GPU-min"
    return f"{seconds:.1f} GPU-s"


# --------------------------------------------------------------------------- SVG


@dataclass
class Chart:
    """One SVG chart: a plot area with axes, ticks and labels; shapes go in data units."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    height: int = 260
    x_label: str = ""
    y_label: str = ""
    x_format: Callable[[float], str] = lambda v: f"{v:g}"  # given x / x_scale
    x_scale: float = 1.0  # x ticks fall on round numbers of this unit (60: minutes)
    y_format: Callable[[float], str] = lambda v: f"{v:g}"
    left: int = 64
    right: int = 16
    top: int = 14
    bottom: int = 42
    x_ticks: Sequence[float] | None = None
    y_ticks: Sequence[float] | None = None
    name: str = ""
    parts: list[str] = field(default_factory=list)  # shapes, clipped to the plot area
    labels: list[str] = field(default_factory=list)  # text, anywhere in the figure

    def x(self, v: float) -> float:
        lo, hi = self.x_range
        return self.left + (v - lo) / ((hi - lo) or 1) * (WIDTH - self.left - self.right)

    def y(self, v: float) -> float:
        lo, hi = self.y_range
        return self.height - self.bottom - (v - lo) / ((hi - lo) or 1) * (self.height - self.top - self.bottom)

    def line(self, xs: Iterable[float], ys: Iterable[float], color: str, width: float = 1.6, title: str = "",
             fill: bool = False) -> None:
        points = [(self.x(a), self.y(b)) for a, b in zip(xs, ys) if b is not None and not math.isnan(b)]
        if not points:
            return
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in points)
        tip = f"<title>{_e(title)}</title>" if title else ""
        if fill:
            base = self.y(self.y_range[0])
            self.parts.append(
                f'<polygon points="{points[0][0]:.1f},{base:.1f} {path} {points[-1][0]:.1f},{base:.1f}" '
                f'fill="{color}" fill-opacity="0.18" stroke="none"/>'
            )
        self.parts.append(
            f'<polyline class="series" points="{path}" fill="none" stroke="{color}" stroke-width="{width}" '
            f'stroke-linejoin="round">{tip}</polyline>'
        )

    def rect(self, x0: float, x1: float, y0: float, y1: float, color: str, title: str = "", px: bool = False,
             extra: str = "") -> None:
        """A rectangle from data x0..x1 and y0..y1 (pixels for y when `px`)."""
        a, b = self.x(x0), self.x(x1)
        top, bottom = (y0, y1) if px else (self.y(y1), self.y(y0))
        tip = f"<title>{_e(title)}</title>" if title else ""
        self.parts.append(
            f'<rect class="mark" x="{a:.2f}" y="{top:.2f}" width="{max(b - a, 0.6):.2f}" '
            f'height="{max(bottom - top, 0.6):.2f}" fill="{color}" {extra}>{tip}</rect>'
        )

    def _dashed(self, x1: float, x2: float, y1: float, y2: float, color: str, dash: str, title: str = "") -> None:
        tip = f"<title>{_e(title)}</title>" if title else ""
        self.parts.append(
            f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{y1:.1f}" y2="{y2:.1f}" stroke="{color}" '
            f'stroke-dasharray="{dash}">{tip}</line>'
        )

    def vline(self, v: float, color: str = "#555", label: str = "", dash: str = "4 3") -> None:
        px = self.x(v)
        self._dashed(px, px, self.top, self.height - self.bottom, color, dash, label)
        if label:
            right = px > WIDTH - self.right - 80  # near the right edge: the label goes left of the line
            self.text(px - 3 if right else px + 3, self.height - self.bottom - 5, label, "end" if right else "start",
                      "note")

    def hline(self, v: float, color: str = "#c0392b", label: str = "", dash: str = "6 3") -> None:
        py = self.y(v)
        self._dashed(self.left, WIDTH - self.right, py, py, color, dash)
        if label:
            self.text(WIDTH - self.right - 4, py - 4, label, "end", "note", fill=color)

    def text(self, x_px: float, y_px: float, text: str, anchor: str = "start", cls: str = "label",
             fill: str = "") -> None:
        color = f' fill="{fill}"' if fill else ""
        self.labels.append(
            f'<text x="{x_px:.1f}" y="{y_px:.1f}" class="{cls}" text-anchor="{anchor}"{color}>{_e(text)}</text>'
        )

    def _axes(self) -> list[str]:
        bottom, right = self.height - self.bottom, WIDTH - self.right
        out = []
        for v in self.y_ticks if self.y_ticks is not None else nice_ticks(*self.y_range):
            py = self.y(v)
            out.append(f'<line x1="{self.left}" x2="{right}" y1="{py:.1f}" y2="{py:.1f}" class="grid"/>')
            out.append(f'<text x="{self.left - 6}" y="{py + 4:.1f}" class="tick" text-anchor="end">'
                       f"{_e(self.y_format(v))}</text>")
        lo, hi = (v / self.x_scale for v in self.x_range)
        for v in self.x_ticks if self.x_ticks is not None else nice_ticks(lo, hi, count=8):
            px = self.x(v * self.x_scale)
            out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{bottom}" y2="{bottom + 4}" class="axis"/>')
            out.append(f'<text x="{px:.1f}" y="{bottom + 17}" class="tick" text-anchor="middle">'
                       f"{_e(self.x_format(round(v, 9)))}</text>")
        out.append(f'<line x1="{self.left}" x2="{right}" y1="{bottom}" y2="{bottom}" class="axis"/>')
        out.append(f'<line x1="{self.left}" x2="{self.left}" y1="{self.top}" y2="{bottom}" class="axis"/>')
        if self.x_label:
            out.append(f'<text x="{(self.left + right) / 2:.0f}" y="{self.height - 6}" class="label" '
                       f'text-anchor="middle">{_e(self.x_label)}</text>')
        if self.y_label:
            mid = (self.top + bottom) / 2
            out.append(f'<text transform="translate(14,{mid:.0f}) rotate(-90)" class="label" '
                       f'text-anchor="middle">{_e(self.y_label)}</text>')
        return out

    def svg(self) -> str:
        clip = f"clip-{self.name or id(self)}"
        inner = WIDTH - self.left - self.right
        return (
            f'<svg class="chart" data-chart="{_e(self.name)}" viewBox="0 0 {WIDTH} {self.height}" '
            f'preserveAspectRatio="xMinYMin meet" role="img" xmlns="http://www.w3.org/2000/svg">'
            f'<defs><clipPath id="{clip}"><rect x="{self.left}" y="0" width="{inner}" height="{self.height}"/>'
            f"</clipPath></defs>"
            + "".join(self._axes())
            + f'<g clip-path="url(#{clip})">'
            + "".join(self.parts)
            + "</g>"
            + "".join(self.labels)
            + "</svg>"
        )


def legend(items: Iterable[tuple[str, str]]) -> str:
    return '<div class="legend">' + "".join(
        f'<span><i style="background:{color}"></i>{_e(label)}</span>' for label, color in items
    ) + "</div>"


def bucketed(t: np.ndarray, v: np.ndarray, reduce: Callable = np.nanmean) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_POINTS points: consecutive samples reduced (mean, max) per bucket."""
    if len(t) <= MAX_POINTS:
        return t, v
    edges = np.linspace(0, len(t), MAX_POINTS + 1).astype(int)
    with np.errstate(all="ignore"):
        return (np.array([t[a:b].mean() for a, b in zip(edges, edges[1:])]),
                np.array([reduce(v[a:b]) if np.isfinite(v[a:b]).any() else np.nan for a, b in zip(edges, edges[1:])]))


def section(title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f"<section><h2>{_e(title)}</h2>{note_html}{body}</section>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def tiles(items: Iterable[tuple[str, str]]) -> str:
    return '<div class="tiles">' + "".join(
        f'<div class="tile"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>' for k, v in items
    ) + "</div>"


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:22px;margin:6px 0 2px} h2{font-size:17px;margin:0 0 6px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:14px 16px;margin:14px 0}
.meta{color:#555;margin:0 0 8px} .note{color:#666;font-size:12.5px;margin:2px 0 8px}
.banner{background:#fff4d6;border:1px solid #e5c25a;border-radius:6px;padding:8px 12px;margin:10px 0}
.tiles{display:flex;flex-wrap:wrap;gap:10px}
.tile{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:8px 12px;min-width:120px}
.tile .v{font-size:19px;font-weight:600} .tile .k{color:#666;font-size:12px}
.finding{border-left:5px solid #999;padding:6px 12px;margin:10px 0;background:#fafbfc}
.finding h3{font-size:15px;margin:0 0 4px} .finding dl{display:flex;flex-wrap:wrap;gap:4px 18px;margin:4px 0}
.finding dt{color:#666;font-size:12px} .finding dd{margin:0;font-weight:600}
.finding .kind{color:#777;font-size:11.5px;text-transform:uppercase;letter-spacing:.04em}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12.5px;margin:2px 0 4px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-1px;box-shadow:inset 0 0 0 1px #0002}
svg.chart{width:100%;height:auto;display:block}
svg .grid{stroke:#eceef1} svg .axis{stroke:#888} svg .tick{font-size:11px;fill:#555}
svg .label{font-size:12px;fill:#333} svg .note{font-size:11px;fill:#555}
table{border-collapse:collapse;width:100%;font-size:12.5px} th,td{padding:4px 8px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f3f4f6;font-weight:600}
footer{color:#888;font-size:12px;margin-top:18px}
"""


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>{body}"
        f'<footer>Written by facefleet at {_e(_utc(time.time()))}. Self-contained: no scripts, nothing fetched. '
        "Column meanings and thresholds: docs/reports.md.</footer></main></body></html>"
    )


def _write(out_path: Path, text: str) -> Path:
    out_path = Path(out_path)
    with atomic_output(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out_path


SIMULATED_BANNER = (
    '<div class="banner"><b>Simulated GPUs.</b> Utilization, memory, power, clocks and temperatures in this report '
    "come from facefleet's simulated NVML backend (derived from the workers' busy time), not from a GPU.</div>"
)


# --------------------------------------------------------------------------- job report


def findings_html(findings: Sequence[Finding], empty: str) -> str:
    if not findings:
        return f'<p class="finding" style="border-color:#27ae60">{_e(empty)}</p>'
    out = []
    for f in findings:
        numbers = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in f.numbers.items())
        out.append(
            f'<div class="finding" data-kind="{_e(f.kind)}" style="border-color:{SEVERITY_COLOR.get(f.severity, "#999")}">'
            f'<div class="kind">{_e(f.severity)} · {_e(f.kind.replace("_", " "))}</div>'
            f"<h3>{_e(f.headline)}</h3><dl>{numbers}</dl><p><b>Suggestion:</b> {_e(f.suggestion)}</p></div>"
        )
    return "".join(out)


@dataclass
class JobView:
    """A job's tables as the plots use them: times in seconds since the job started."""

    data: JobData
    rows: list[dict]
    gpus: list[GpuSeries]
    t0: float
    t1: float
    colors: dict[str, str]  # GPU uuid -> colour
    names: dict[str, str]  # GPU uuid -> short name (index, and node where there are several)
    scale: float  # seconds per unit of the time axis
    unit: str

    @classmethod
    def of(cls, data: JobData) -> JobView:
        window = data.summary.get("window", {})
        rows = sorted(data.chunks.to_pylist(), key=lambda r: r["started"])
        times = [r["started"] for r in rows] + [r["ended"] for r in rows]
        t0 = window.get("start", min(times, default=0.0))
        t1 = max([window.get("end", t0)] + times)
        gpus = gpu_series(data.samples)
        if gpus:
            t0 = min(t0, min(float(g.time[0]) for g in gpus))
            t1 = max(t1, max(float(g.time[-1]) for g in gpus))
        scale, unit = time_unit(t1 - t0)
        colors = {g.uuid: PALETTE[i % len(PALETTE)] for i, g in enumerate(gpus)}
        names = gpu_names(gpus)
        for r in rows:
            if r["gpu_uuid"] and r["gpu_uuid"] not in colors:
                colors[r["gpu_uuid"]] = PALETTE[len(colors) % len(PALETTE)]
        start = window.get("start", t0)
        return cls(data, rows, gpus, start, t1, colors, names, scale, unit)

    def name(self, uuid: str | None) -> str:
        return self.names.get(uuid or "", _gpu_label(uuid))

    def chart(self, name: str, y_range: tuple[float, float], y_label: str, **kw: Any) -> Chart:
        lo = min([0.0] + [float(g.time[0]) - self.t0 for g in self.gpus])
        return Chart((lo, self.t1 - self.t0), y_range, x_label=f"time since the job started ({self.unit})",
                     y_label=y_label, x_scale=self.scale, name=name, **kw)

    def markers(self, chart: Chart) -> None:
        """Job start and end lines, and a tick where each chunk ended, in its GPU's colour."""
        window = self.data.summary.get("window", {})
        chart.vline(0.0, label="job start")
        if "end" in window:
            chart.vline(window["end"] - self.t0, label="job end")
        for r in self.rows:
            x = chart.x(r["finished"] - self.t0)
            color = self.colors.get(r["gpu_uuid"], "#555")
            chart.parts.append(
                f'<path class="mark" d="M{x - 4:.1f},{chart.top - 1} L{x + 4:.1f},{chart.top - 1} L{x:.1f},{chart.top + 6} Z" '
                f'fill="{color}"><title>chunk {r["chunk"]} ended (worker {r["worker_id"]}, {r["frames"]} frames)</title></path>'
            )

    def gpu_legend(self) -> str:
        return legend((self.name(g.uuid), self.colors[g.uuid]) for g in self.gpus)


def gpu_names(gpus: Sequence[GpuSeries]) -> dict[str, str]:
    """Short GPU names: "GPU 3", with the node ("GPU 3 · 1a2b3c4d") when there are several."""
    several = len({g.node for g in gpus}) > 1
    return {g.uuid: f"GPU {g.index}" + (f" · {g.node[:8]}" if several and g.node else "") for g in gpus}


def utilization_chart(view: JobView) -> str:
    if not view.gpus:
        return '<p class="note">No GPU samples were recorded for this job.</p>'
    chart = view.chart("utilization", (0, 100), "GPU utilization (%)", top=18, y_format=lambda v: f"{v:g} %")
    for g in view.gpus:
        t, u = bucketed(g.time - view.t0, g.util)
        chart.line(t, u, view.colors[g.uuid], title=f"{view.name(g.uuid)} ({g.uuid}): mean "
                   f"{_num(gpu_stats(g)['utilization_mean'], '{:.0f}', ' %')}")
    view.markers(chart)
    return view.gpu_legend() + chart.svg()


def memory_chart(view: JobView) -> str:
    totals = [g.memory_total for g in view.gpus if g.memory_total]
    if not totals:
        return '<p class="note">No GPU memory readings.</p>'
    top = max(totals) / GiB
    chart = view.chart("memory", (0, top * 1.05), "GPU memory used (GiB)", top=18)
    for g in view.gpus:
        t, m = bucketed(g.time - view.t0, g.memory_used / GiB, np.nanmax)
        chart.line(t, m, view.colors[g.uuid], title=f"{view.name(g.uuid)} ({g.uuid}): peak {np.nanmax(m):.1f} GiB")
    chart.hline(top, "#888", f"total {top:.0f} GiB", dash="2 2")
    chart.hline(top * MEMORY_NEAR, "#c0392b", f"{MEMORY_NEAR:.0%} (near the limit)")
    view.markers(chart)
    return view.gpu_legend() + chart.svg()


def chunk_segments(r: dict) -> list[tuple[str, str, float]]:
    """(label, colour, seconds) pieces of a chunk's bar: its processing thread's time by
    stage (waiting put down to the slower of the decode and encode threads), then the
    return to the controller."""
    waiting = "waiting"
    color = STAGE_COLOR["waiting_s"]
    if max(r["decode_s"], r["encode_s"]) > 0:
        waiting, color = (("waiting for decode", WAIT_DECODE) if r["decode_s"] >= r["encode_s"]
                          else ("waiting for encode", WAIT_ENCODE))
    return [
        ("detect", STAGE_COLOR["detect_s"], r["detect_s"]),
        ("other GPU stages", STAGE_COLOR["gpu_other_s"], r["gpu_other_s"]),
        ("CPU post", STAGE_COLOR["cpu_post_s"], r["cpu_post_s"]),
        (waiting, color, r["waiting_s"]),
    ]


def lanes(spans: list[tuple[float, float]]) -> list[int]:
    """A lane per span so that spans in one lane do not overlap (spans sorted by start)."""
    ends: list[float] = []
    out = []
    for start, end in spans:
        lane = next((i for i, e in enumerate(ends) if e <= start + 1e-6), None)
        if lane is None:
            ends.append(end)
            lane = len(ends) - 1
        else:
            ends[lane] = end
        out.append(lane)
    return out


SPAN_LANES = tuple((column[: -len("_s")], label, color) for column, label, color in STAGES
                   if column[: -len("_s")] in STAGE_GROUPS)  # (stage group, label, colour), top to bottom
BARE = STAGE_COLOR["waiting_s"]  # a chunk's bar where none of the lanes' stages is working


def stage_spans(r: dict) -> list[tuple[str, float, float, str]]:
    """(stage group, start, end, what ran) for each stage group with recorded times in the
    chunk row `r` (empty for rows written before schema 2); `what ran` names the worker's
    stages in the group with their own spans, in seconds since the chunk started."""
    started, ended = dict(r.get("stage_started") or ()), dict(r.get("stage_ended") or ())
    models = {kv.split("=", 1)[0] for kv in (r.get("providers") or "").split(",") if kv}
    out = []
    for group, _, _ in SPAN_LANES:
        start, end = r.get(f"{group}_start"), r.get(f"{group}_end")
        if start is None or end is None:
            continue
        parts = [f"{stage} {started[stage] - r['started']:.2f}–{ended[stage] - r['started']:.2f} s"
                 for stage in sorted(started, key=started.get)
                 if stage in ended and stage_group(stage, models) == f"{group}_s"]
        out.append((group, start, end, ", ".join(parts)))
    return out


def gantt_chart(view: JobView) -> str:
    """A row per chunk on its worker's rows. A chunk with recorded stage times (schema 2)
    gets a thin lane per stage group inside its bar, drawn from the group's first to its
    last time on the chunk (the lanes overlap in time: decode and encode threads run
    beside the processing thread); the bar shows bare where no stage worked. A chunk
    without them (older files) is split by each stage's share of its time, as before."""
    if not view.rows:
        return '<p class="note">No chunks finished.</p>'
    spans = {id(r): stage_spans(r) for r in view.rows}
    timed = {group for found in spans.values() for group, *_ in found}
    shown = [lane for lane in SPAN_LANES if lane[0] in timed]  # lanes that some chunk of the job has
    untimed = sum(1 for r in view.rows if not spans[id(r)])
    row_of = {group: k for k, (group, _, _) in enumerate(shown)}
    labels = {group: label for group, label, _ in shown}
    stripe = 4  # px per stage lane
    bar_px = max(13, len(shown) * stripe + 2)
    lane_px, gap = bar_px + 3, 10
    workers = sorted({r["worker_id"] for r in view.rows})
    layout: dict[int, tuple[list[dict], list[int]]] = {}
    for w in workers:
        mine = [r for r in view.rows if r["worker_id"] == w]
        layout[w] = (mine, lanes([(r["started"], r["ended"]) for r in mine]))
    heights = {w: (max(layout[w][1]) + 1) * lane_px for w in workers}
    plot_h = sum(heights.values()) + gap * (len(workers) + 1)
    note_px = 16 if untimed else 0
    chart = view.chart("gantt", (0, 1), "", height=plot_h + 56 + note_px, left=170, top=14 + note_px, y_ticks=[])
    if untimed:
        chart.text(chart.left, 12, f"{untimed} of {len(view.rows)} chunks lack recorded stage times (older data): "
                   "their bars are split by stage shares, not drawn at the stages' times.", cls="note")
    y = chart.top + gap
    for w in workers:
        mine, lane_of = layout[w]
        first = mine[0]
        label = f"worker {w} · {view.name(first['gpu_uuid'])}"
        chart.text(chart.left - 8, y + heights[w] / 2 + 4, label, anchor="end")
        for r, lane in zip(mine, lane_of):
            top = y + lane * lane_px
            total = r["total_s"] or 1e-9
            x = r["started"] - view.t0
            tip = (f"chunk {r['chunk']} (frames {r['start_frame']}–{r['start_frame'] + r['frames'] - 1}) on worker {w}: "
                   f"{total:.2f} s, {r['frames'] / total:.1f} frames/s; decode {r['decode_s']:.2f} s, detect "
                   f"{r['detect_s']:.2f} s, other GPU {r['gpu_other_s']:.2f} s, CPU post {r['cpu_post_s']:.2f} s, "
                   f"encode {r['encode_s']:.2f} s, waiting {r['waiting_s']:.2f} s, return {r['return_s']:.2f} s; "
                   f"batch {r['batch_size']}, attempts {r['attempts']}")
            chunk = f'data-chunk="{r["chunk"]}"'
            if spans[id(r)]:
                chart.rect(x, r["finished"] - view.t0, top, top + bar_px, BARE, tip, px=True,
                           extra=f'{chunk} data-stage="none"')
                for group, start, end, parts in spans[id(r)]:
                    a = top + 1 + row_of[group] * stripe
                    chart.rect(start - view.t0, end - view.t0, a, a + stripe, STAGE_COLOR[f"{group}_s"],
                               f"chunk {r['chunk']}, {labels[group]}: {start - r['started']:.2f}–"
                               f"{end - r['started']:.2f} s after the chunk started, working {r[f'{group}_s']:.2f} s "
                               f"of those {end - start:.2f} s" + (f" ({parts})" if parts else ""),
                               px=True, extra=f'{chunk} data-stage="{group}"')
                x = r["finished"] - view.t0
            else:
                segments = chunk_segments(r)
                stretch = total / max(total, sum(seconds for _, _, seconds in segments))
                for name, color, seconds in segments:
                    if seconds > 0:
                        chart.rect(x, x + seconds * stretch, top, top + bar_px, color, px=True,
                                   extra=f'{chunk} data-share="{_e(name)}"')
                        x += seconds * stretch
                # one tooltip for the whole bar, on a transparent cover
                chart.rect(r["started"] - view.t0, r["ended"] - view.t0, top, top + bar_px, "transparent", tip,
                           px=True)
            chart.rect(x, x + r["return_s"], top, top + bar_px, STAGE_COLOR["return_s"],
                       f"chunk {r['chunk']}: return to controller {r['return_s']:.2f} s", px=True,
                       extra=f'{chunk} data-stage="return"')
        y += heights[w] + gap
    items = [(label, color) for _, label, color in shown]
    if untimed:  # the processing thread's stages that a share-split bar shows
        items += [(label, color) for column, label, color in STAGES
                  if column in PROCESSING_COLUMNS and (label, color) not in items]
        items += [("waiting for decode", WAIT_DECODE), ("waiting for encode", WAIT_ENCODE)]
    items += [("waiting (no stage working)" if shown else "waiting", BARE),
              ("return to controller", STAGE_COLOR["return_s"])]
    return legend(items) + chart.svg()


def stage_chart(view: JobView) -> str:
    frames = sum(r["frames"] for r in view.rows)
    if not frames:
        return '<p class="note">No frames processed.</p>'
    totals = {column: sum(r[column] for r in view.rows) for column, _, _ in STAGES}
    per_frame = {column: 1000 * s / frames for column, s in totals.items()}
    top = max(per_frame.values()) or 1.0
    bar, gap = 22, 8
    chart = Chart((0, top * 1.25), (0, 1), height=len(STAGES) * (bar + gap) + 60, left=170, y_ticks=[],
                  x_label="milliseconds per frame (summed over chunks)", name="stages")
    for i, (column, label, color) in enumerate(STAGES):
        y = chart.top + gap + i * (bar + gap)
        chart.text(chart.left - 8, y + bar / 2 + 4, label, anchor="end")
        chart.rect(0, per_frame[column], y, y + bar, color,
                   f"{label}: {per_frame[column]:.2f} ms/frame, {totals[column]:.1f} s in all", px=True)
        chart.text(chart.x(per_frame[column]) + 6, y + bar / 2 + 4,
                   f"{per_frame[column]:.1f} ms/frame · {_duration(totals[column])}", cls="note")
    return chart.svg()


def throughput_chart(view: JobView) -> str:
    if not view.rows:
        return '<p class="note">No chunks finished.</p>'
    end = max(r["finished"] for r in view.rows) - view.t0
    bins = np.linspace(0, max(end, 1e-3), 81)
    fps = np.zeros(len(bins) - 1)
    for r in view.rows:  # a chunk's frames spread evenly over its time on the worker
        a, b = r["started"] - view.t0, r["finished"] - view.t0
        if b <= a:
            continue
        overlap = np.clip(np.minimum(bins[1:], b) - np.maximum(bins[:-1], a), 0, None)
        fps += r["frames"] * overlap / (b - a)
    fps /= np.diff(bins)
    centers = (bins[:-1] + bins[1:]) / 2
    chart = view.chart("throughput", (0, max(fps.max(), 1.0) * 1.15), "frames per second", top=18)
    chart.line(centers, fps, "#2874a6", width=2, fill=True, title=f"peak {fps.max():.1f} frames/s")
    mean = sum(r["frames"] for r in view.rows) / end if end > 0 else 0.0
    chart.hline(mean, "#2874a6", f"mean {mean:.1f} frames/s")
    view.markers(chart)
    return chart.svg()


def gpu_table(summary: dict) -> str:
    rows = [
        (
            _gpu_label(g["gpu_uuid"], g.get("gpu_index")),
            (g.get("node") or "")[:12],
            g.get("chunks", 0),
            g.get("frames", 0),
            _num(g["utilization_mean"], "{:.0f}", " %"),
            _num(g["utilization_p95"], "{:.0f}", " %"),
            _duration(g["busy_s"]),
            _duration(g["idle_s"]),
            _num(g["memory_peak"] / GiB if g["memory_peak"] is not None else None, "{:.1f}", " GiB"),
            _num(100 * g["memory_peak_fraction"] if g["memory_peak_fraction"] is not None else None, "{:.0f}", " %"),
            _num(g["temperature_max_c"], "{:.0f}", " °C"),
            _num(100 * g["throttled_fraction"], "{:.0f}", " %"),
        )
        for g in summary.get("gpus", [])
    ]
    return table(("GPU", "node", "chunks", "frames", "util mean", "util p95", "busy", "idle (<5 %)", "peak memory",
                  "of total", "max temp", "throttled"), rows)


def worker_table(summary: dict) -> str:
    rows = [
        (f"worker {w['worker_id']}", w.get("node") or "", _gpu_label(w.get("gpu_uuid")), w["chunks"], w["frames"],
         _duration(w["seconds"]), _num(w["chunk_fps"], "{:.1f}"))
        for w in summary.get("workers", [])
    ]
    return table(("worker", "host", "GPU", "chunks", "frames", "time on chunks", "frames/s per chunk"), rows)


def job_tiles(summary: dict) -> str:
    t = summary.get("totals", {})
    price = t.get("price_per_gpu_hour")
    return tiles(
        [
            ("frames", f"{t.get('frames', 0):,}"),
            ("wall time", _duration(t.get("wall_s"))),
            ("throughput", _num(t.get("fps"), "{:.1f}", " fps")),
            ("chunks (retried)", f"{t.get('chunks', 0)} ({t.get('retried_chunks', 0)})"),
            ("GPUs", str(t.get("gpus", 0))),
            ("GPU-hours", _num(t.get("gpu_hours"), "{:.3f}")),
            ("mean GPU utilization", _num(t.get("utilization_mean"), "{:.0f}", " %")),
            ("idle GPU time (<5 %)", _duration(t.get("idle_gpu_seconds"))),
            ("peak GPU memory", _num(t["memory_peak"] / GiB if t.get("memory_peak") else None, "{:.1f}", " GiB")),
            ("estimated cost", f"{_money(t['cost'])} at {price:g}/GPU-hour" if t.get("cost") is not None else "no price set"),
        ]
    )


def job_report_html(data: JobData) -> str:
    summary, job = data.summary, data.job
    view = JobView.of(data)
    name = job.get("name") or job.get("job_id") or data.job_dir.name
    inputs = job.get("inputs") or []
    shown = ", ".join(map(str, inputs[:3])) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
    head = (
        f"<h1>Job {_e(name)}</h1>"
        f'<p class="meta">id {_e(job.get("job_id", data.job_dir.name))} · {_e(job.get("state", "?"))} · created '
        f"{_e(_utc(job.get('created')))} · started {_e(_utc(job.get('started')))} · finished "
        f"{_e(_utc(job.get('finished')))}<br>inputs: {_e(shown or '—')}</p>"
    )
    if summary.get("backend") in ("simulated", "mixed"):
        head += SIMULATED_BANNER
    findings = diagnose(data)
    body = [
        head,
        job_tiles(summary),
        section("Diagnosis", findings_html(findings, "No bottleneck found: the GPUs were neither idle nor saturated, "
                                                     "memory and clocks stayed normal and no worker lagged.")),
        section("GPU utilization over time", utilization_chart(view),
                "One line per GPU; triangles on top mark where each chunk ended (in its GPU's colour)."),
        section("GPU memory over time", memory_chart(view)),
        section("Chunks per worker", gantt_chart(view),
                "Each bar is one chunk, from its start on the worker to the controller having its result. The thin "
                "lanes inside it show when each stage worked on the chunk, from its first to its last call (hover "
                "for its busy time): decoding and encoding run on their own threads beside the GPU stages, so lanes "
                "overlap; where the bar shows bare, no stage was working. Chunks of older jobs, without recorded "
                "stage times, are split by each stage's share of the time instead."),
        section("Time per stage", stage_chart(view),
                "Decode and encode run on their own threads, overlapping the processing thread (detect, other GPU "
                "stages, CPU post, waiting): a bar longer than the GPU stages is a CPU limit."),
        section("Throughput over time", throughput_chart(view)),
        section("GPUs", gpu_table(summary)),
        section("Workers", worker_table(summary)),
    ]
    return page(f"facefleet report: {name}", "".join(body))


def render_job_report(job_dir: Path, out_path: Path) -> Path:
    """Write the job's report as one HTML file at `out_path` (atomically); return the path."""
    return _write(out_path, job_report_html(read_job_data(Path(job_dir))))


# --------------------------------------------------------------------------- cluster report


def idle_stretches(g: GpuSeries, min_s: float = 0.0) -> list[tuple[float, float]]:
    """(start, end) of each run of consecutive samples below IDLE_UTIL_PCT, a gap in the
    samples ending a run."""
    out: list[tuple[float, float]] = []
    start = last = None
    typical = float(np.median(g.weight)) if len(g.weight) else 0.0
    for t, u, w in zip(g.time, g.util, g.weight):
        idle = not math.isnan(u) and u < IDLE_UTIL_PCT
        if idle and start is not None and t - last <= 2 * typical + 1e-9:
            last = t
            continue
        if start is not None:
            out.append((start - typical, last))
        start = last = t if idle else None
    if start is not None:
        out.append((start - typical, last))
    return [(a, b) for a, b in out if b - a >= min_s]


@dataclass
class ClusterData:
    since: float
    until: float
    jobs: list[dict]  # summaries, oldest first, each with "main_finding" (a finding kind or "")
    gpus: list[GpuSeries]


def cluster_data(state_dir: Path, since_s: float, now: float | None = None) -> ClusterData:
    """The jobs that ran in the last `since_s` seconds and the samples of that time (from
    the sample log; from the jobs' own files where the log has none)."""
    until = time.time() if now is None else now
    since = until - since_s
    jobs, own = [], []
    for path in job_dirs(Path(state_dir)):
        data = read_job_data(path)
        window = data.summary.get("window", {})
        if window.get("end", 0) >= since and window.get("start", 0) <= until:
            findings = diagnose(data)
            jobs.append(data.summary | {"main_finding": findings[0].kind if findings else ""})
            own.append(data.samples)
    samples = SampleLog(Path(state_dir)).read(since, until)
    if samples.num_rows == 0 and own:
        samples = pa.concat_tables(own)
        t = samples.column("time").to_numpy()
        samples = samples.filter(pa.array((t >= since) & (t <= until)))
    jobs.sort(key=lambda s: s.get("window", {}).get("start", 0))
    return ClusterData(since, until, jobs, gpu_series(samples.cast(SAMPLES_SCHEMA)))


def heat_color(util: float) -> str:
    """White (idle) to dark blue (busy)."""
    f = min(max(util / 100, 0.0), 1.0)
    r, g, b = (int(255 + (c - 255) * f) for c in (33, 102, 172))
    return f"#{r:02x}{g:02x}{b:02x}"


def _cluster_chart(c: ClusterData, name: str, rows: int, row_px: int, extra_top: int = 0) -> Chart:
    """A chart whose x axis is time before the end of the window, with one row per GPU."""
    span = c.until - c.since
    scale, unit = time_unit(span)
    return Chart((-span, 0), (0, 1), height=extra_top + rows * row_px + 62, left=170, y_ticks=[], name=name,
                 x_label=f"{unit} before {_utc(c.until, seconds=False)}", x_scale=scale,
                 x_format=lambda v: f"{-v:g}" if v else "now")


def cluster_timeline(c: ClusterData, names: dict[str, str]) -> str:
    """Utilization per GPU over the window as heat strips (left blank where nobody
    sampled), the jobs' spans above them."""
    if not c.gpus:
        return '<p class="note">No GPU samples in this window.</p>'
    strip, gap, band = 18, 4, 16
    chart = _cluster_chart(c, "cluster-utilization", len(c.gpus), strip + gap, band + 8)
    for i, job in enumerate(c.jobs):
        w, info = job.get("window", {}), job.get("job", {})
        chart.rect(w.get("start", 0) - c.until, w.get("end", 0) - c.until, chart.top, chart.top + band,
                   PALETTE[i % len(PALETTE)], f"job {info.get('name') or info.get('job_id', '')}: "
                   f"{_utc(w.get('start'))} → {_utc(w.get('end'))}", px=True)
    chart.text(chart.left - 8, chart.top + 12, "jobs", anchor="end")
    bins = np.linspace(c.since, c.until, 241)
    for k, g in enumerate(c.gpus):
        y = chart.top + band + 8 + k * (strip + gap)
        chart.text(chart.left - 8, y + 13, names[g.uuid], anchor="end")
        which = np.digitize(g.time, bins) - 1
        for j in range(len(bins) - 1):
            inside = (which == j) & ~np.isnan(g.util)
            if not inside.any():
                continue
            mean = float(np.average(g.util[inside], weights=g.weight[inside]))
            # as wide as the time the samples stand for, from the first of them
            a = max(bins[j], float(g.time[inside][0] - g.weight[inside][0]))
            b = min(bins[j + 1], a + float(g.weight[inside].sum()))
            chart.rect(a - c.until, b - c.until, y, y + strip, heat_color(mean),
                       f"{names[g.uuid]} {_utc(bins[j], seconds=False)}: {mean:.0f} %", px=True)
    scale = [(f"{p} %", heat_color(p)) for p in (0, 25, 50, 75, 100)] + [("not sampled", "#ffffff00")]
    return legend(scale) + chart.svg()


def busy_idle_chart(stats: list[dict], names: dict[str, str]) -> str:
    if not stats:
        return ""
    bar, gap = 18, 6
    top = max(s["observed_s"] for s in stats) or 1.0
    scale = 3600.0 if top >= 3600 else (60.0 if top >= 60 else 1.0)
    unit = {3600.0: "GPU-hours", 60.0: "GPU-minutes", 1.0: "GPU-seconds"}[scale]
    chart = Chart((0, top * 1.2), (0, 1), height=len(stats) * (bar + gap) + 60, left=170, y_ticks=[],
                  x_label=unit, x_scale=scale, name="busy-idle")
    for k, s in enumerate(stats):
        busy, unused = s["busy_s"], s["observed_s"] - s["busy_s"]
        y = chart.top + gap + k * (bar + gap)
        chart.text(chart.left - 8, y + 13, names[s["gpu_uuid"]], anchor="end")
        chart.rect(0, busy, y, y + bar, "#2166ac", f"busy {_gpu_time(busy)}", px=True)
        chart.rect(busy, busy + unused, y, y + bar, "#f4a582", f"unused {_gpu_time(unused)}", px=True)
        chart.text(chart.x(busy + unused) + 6, y + 13, f"{100 * busy / (s['observed_s'] or 1):.0f} % busy", cls="note")
    return legend([("busy (utilization-weighted)", "#2166ac"), ("unused", "#f4a582")]) + chart.svg()


def jobs_per_day_chart(c: ClusterData) -> str:
    days: dict[str, int] = {}
    for job in c.jobs:
        day = time.strftime("%Y-%m-%d", time.gmtime(job.get("window", {}).get("start", 0)))
        days[day] = days.get(day, 0) + 1
    if not days:
        return '<p class="note">No jobs in this window.</p>'
    first = calendar.timegm(time.strptime(min(days), "%Y-%m-%d"))
    last = calendar.timegm(time.strptime(max(days), "%Y-%m-%d"))
    names = [time.strftime("%Y-%m-%d", time.gmtime(first + d * 86400)) for d in range(round((last - first) / 86400) + 1)]
    chart = Chart((-0.5, len(names) - 0.5), (0, max(days.values()) * 1.2 + 0.5), height=220, name="jobs-per-day",
                  x_ticks=list(range(len(names))), x_format=lambda v: names[int(v)][5:], y_label="jobs",
                  x_label="day (UTC)", y_ticks=nice_ticks(0, max(days.values()) + 1))
    for i, day in enumerate(names):
        n = days.get(day, 0)
        chart.rect(i - 0.35, i + 0.35, 0, n, "#4e79a7", f"{day}: {n} job(s)")
    return chart.svg()


def node_rows(stats: list[dict]) -> list[tuple]:
    nodes: dict[str, list[dict]] = {}
    for s in stats:
        nodes.setdefault(s["node"] or "?", []).append(s)
    rows = []
    for node, mine in sorted(nodes.items()):
        observed = sum(s["observed_s"] for s in mine)
        busy = sum(s["busy_s"] for s in mine)
        rows.append((node, len(mine), _num(100 * busy / observed if observed else None, "{:.0f}", " %"),
                     _gpu_time(busy), _gpu_time(observed - busy), _gpu_time(sum(s["idle_s"] for s in mine))))
    return rows


def cluster_report_html(c: ClusterData) -> str:
    stats = [gpu_stats(g) for g in c.gpus]
    names = gpu_names(c.gpus)
    observed = sum(s["observed_s"] for s in stats)
    busy = sum(s["busy_s"] for s in stats)
    simulated = any(g.backend == "simulated" for g in c.gpus) or any(j.get("backend") in ("simulated", "mixed") for j in c.jobs)
    head = (f"<h1>Cluster report</h1><p class=\"meta\">{_e(_utc(c.since, False))} → {_e(_utc(c.until, False))} · "
            f"{len(c.jobs)} job(s) · {len({g.node for g in c.gpus})} node(s) · {len(c.gpus)} GPU(s)</p>")
    if simulated:
        head += SIMULATED_BANNER
    costs = [j["totals"]["cost"] for j in c.jobs if j.get("totals", {}).get("cost") is not None]
    totals = tiles(
        [
            ("jobs", str(len(c.jobs))),
            ("frames", f"{sum(j.get('totals', {}).get('frames', 0) for j in c.jobs):,}"),
            ("GPU time observed", _gpu_time(observed)),
            ("busy", _gpu_time(busy)),
            ("unused", _gpu_time(observed - busy)),
            ("mean utilization", _num(100 * busy / observed if observed else None, "{:.0f}", " %")),
            ("estimated cost of the jobs", _money(sum(costs)) if costs else "no price set"),
        ]
    )
    gpu_rows = [
        (names[s["gpu_uuid"]], s["gpu_uuid"], _num(s["utilization_mean"], "{:.0f}", " %"),
         _num(s["utilization_p95"], "{:.0f}", " %"), _gpu_time(s["busy_s"]), _gpu_time(s["observed_s"] - s["busy_s"]),
         _gpu_time(s["idle_s"]), _num(s["memory_peak"] / GiB if s["memory_peak"] else None, "{:.1f}", " GiB"),
         _num(100 * s["throttled_fraction"], "{:.0f}", " %"))
        for s in stats
    ]
    stretches = sorted(((b - a, a, b, g) for g in c.gpus for a, b in idle_stretches(g)), key=lambda x: -x[0])[:10]
    idle_rows = [(names[g.uuid], _utc(a), _utc(b), _duration(d)) for d, a, b, g in stretches]
    job_rows = []
    for j in reversed(c.jobs):
        t, job = j.get("totals", {}), j.get("job", {})
        job_rows.append((job.get("job_id", ""), job.get("name", ""), job.get("state", ""),
                         _utc(j.get("window", {}).get("start"), False), _duration(t.get("wall_s")), t.get("frames", 0),
                         _num(t.get("fps"), "{:.1f}"), _num(t.get("utilization_mean"), "{:.0f}", " %"),
                         _num(t.get("gpu_hours"), "{:.3f}"), _money(t.get("cost")),
                         j["main_finding"].replace("_", " ") or "none"))
    body = [
        head,
        totals,
        section("GPU utilization over time", cluster_timeline(c, names),
                "Each strip is one GPU (darker: busier; blank: not sampled); the bars on top are the jobs."),
        section("Busy and unused GPU time per GPU", busy_idle_chart(stats, names)),
        section("Per GPU", table(("GPU", "UUID", "util mean", "util p95", "busy", "unused", f"idle (<{IDLE_UTIL_PCT:g} %)",
                                  "peak memory", "throttled"), gpu_rows)),
        section("Per node", table(("node", "GPUs", "util mean", "busy", "unused", f"idle (<{IDLE_UTIL_PCT:g} %)"),
                                  node_rows(stats))),
        section("Jobs per day", jobs_per_day_chart(c)),
        section("Longest idle stretches", table(("GPU", "from", "to", "idle for"), idle_rows)
                if idle_rows else '<p class="note">No GPU sat idle in this window.</p>',
                f"Runs of consecutive samples below {IDLE_UTIL_PCT:g} % utilization."),
        section("Jobs", table(("job", "name", "state", "started", "wall", "frames", "fps", "util", "GPU-h", "cost",
                               "main finding"), job_rows)),
    ]
    return page("facefleet cluster report", "".join(body))


def parse_since(text: str) -> float:
    """Seconds in a span such as "24h", "90m", "7d", "30s" or a plain number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise FacefleetError(f"--since {text!r}: give a span such as 24h, 90m or 7d")
    return value


def render_cluster_report(state_dir: Path, since_s: float, out_path: Path, now: float | None = None) -> Path:
    """Write the cluster report of the last `since_s` seconds at `out_path`; return the path."""
    return _write(out_path, cluster_report_html(cluster_data(Path(state_dir), since_s, now)))
