"""Which curves a run has, and inline SVG line charts of them.

:func:`curve_panels` decides what is worth a panel from ``metrics.jsonl`` rows; the report draws
the panels as SVG (crisp at any zoom, a few kB, no image to decode) and the training log's
``plots/curves.png`` draws the same panels with matplotlib, so the two never disagree.
Pure Python: no numpy, torch or matplotlib here.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

#: colours for series, distinguishable and readable on white (matplotlib's tab10)
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")

#: row keys that are bookkeeping, not curves
_NOT_CURVES = ("epoch", "time_s")


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]  # (x, y), x ascending


@dataclass
class Panel:
    title: str
    series: list[Series]
    #: metrics.jsonl keys drawn in this panel
    keys: list[str] = field(default_factory=list)
    #: an x position to mark (the best epoch, on validation panels)
    marker: Optional[float] = None


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _points(rows: Sequence[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """Epochs counted from 1, as the training log prints them."""
    return [(r["epoch"] + 1, float(r[key])) for r in rows if _numeric(r.get(key))]


def _constant(points: list[tuple[float, float]]) -> bool:
    values = [y for _, y in points]
    return max(values) - min(values) <= 1e-12 * max(1.0, abs(values[0]))


def curve_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every numeric key the rows log (training loss parts, LR, validation metrics...)."""
    keys: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in _NOT_CURVES and not key.endswith("_unix") and _numeric(value):
                keys.setdefault(key, None)
    return list(keys)


def constants(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Keys logged at least twice with one value throughout (``val/num_images``, a constant LR):
    a flat line says nothing, so they are listed rather than drawn."""
    out = {}
    for key in curve_keys(rows):
        points = _points(rows, key)
        if len(points) >= 2 and _constant(points):
            out[key] = points[0][1]
    return out


def curve_panels(rows: Sequence[dict[str, Any]], primary: Optional[str] = None,
                 best_epoch: Optional[int] = None) -> list[Panel]:
    """Panels worth drawing: the training loss with its parts, the LR, each validation metric
    (``primary`` first, the best epoch marked), throughput, then anything else a plugin logs.
    A series needs two points that differ; constants go to :func:`constants` instead."""
    keys = curve_keys(rows)
    drawn = {k: p for k in keys if len(p := _points(rows, k)) >= 2 and not _constant(p)}
    marker = best_epoch + 1 if best_epoch is not None else None
    panels: list[Panel] = []

    loss_keys = [k for k in keys if k.startswith("train/") and k != "train/images_per_s" and k in drawn]
    loss_keys.sort(key=lambda k: k != "train/loss")  # the total first, then the parts as logged
    if loss_keys:
        parts = len(loss_keys) > 1
        panels.append(Panel("training loss" + (" and its parts" if parts else ""),
                            [Series(k[len("train/"):] if parts else "loss", drawn[k]) for k in loss_keys], loss_keys))
    if "lr" in drawn:
        panels.append(Panel("learning rate", [Series("lr", drawn["lr"])], ["lr"]))
    val_keys = [k for k in keys if k.startswith("val/") and k in drawn]
    val_keys.sort(key=lambda k: k != f"val/{primary}")
    for key in val_keys:
        name = key[len("val/"):]
        title = f"validation {name}" + (" (picks best.pt)" if name == primary else "")
        panels.append(Panel(title, [Series(name, drawn[key])], [key], marker))
    if "train/images_per_s" in drawn:
        panels.append(Panel("training throughput (images/s)", [Series("images/s", drawn["train/images_per_s"])],
                            ["train/images_per_s"]))
    used = {k for p in panels for k in p.keys}
    for key in keys:
        if key in drawn and key not in used:
            panels.append(Panel(key, [Series(key, drawn[key])], [key]))
    return panels


# --- axes -------------------------------------------------------------------------------------

def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high - low <= 0:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value < high + step * 0.5:
        ticks.append(round(value, 12))
        value += step
        if len(ticks) > 50:
            break
    return ticks


def integer_ticks(low: float, high: float, count: int = 8) -> list[int]:
    """Whole epochs only: a step of 1, 2, 5, 10... so no tick falls between epochs."""
    low, high = math.floor(low), math.ceil(high)
    span = max(1, high - low)
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 10**9) if span / s <= count)
    first = math.ceil(low / step) * step
    ticks = list(range(first, high + 1, step))
    return ticks or [low]


def fmt(value: float) -> str:
    """Short tick and tooltip text: 0.003, 1.2e-05, 0.875, 1250."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


# --- SVG ----------------------------------------------------------------------------------------

def line_chart(series: Sequence[Series], title: str, x_label: str = "epoch", y_label: str = "",
               integer_x: bool = True, x_range: Optional[tuple[float, float]] = None,
               y_range: Optional[tuple[float, float]] = None, marker: Optional[float] = None,
               marker_label: str = "best", width: int = 340, height: int = 210) -> str:
    """One chart as an inline ``<figure>``: an SVG that scales to its container, and an HTML
    legend under it (wraps on a phone, unlike SVG text). Points carry ``<title>`` tooltips."""
    esc = html.escape
    left, right, top, bottom = 48, 12, 8, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    if not xs:
        return ""
    x_lo, x_hi = x_range or (min(xs), max(xs))
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    x_ticks: Iterable[float] = integer_ticks(x_lo, x_hi) if integer_x else nice_ticks(x_lo, x_hi, 5)
    x_ticks = [t for t in x_ticks if x_lo - 1e-9 <= t <= x_hi + 1e-9]
    if y_range:
        y_lo, y_hi = y_range
        y_ticks = nice_ticks(y_lo, y_hi, 5)
    else:
        y_ticks = nice_ticks(min(ys), max(ys), 4)
        y_lo, y_hi = y_ticks[0], y_ticks[-1]
    y_ticks = [t for t in y_ticks if y_lo - 1e-12 <= t <= y_hi + 1e-12]
    if y_hi <= y_lo:
        y_hi = y_lo + 1

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    out = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}" '
           f'font-size="10" font-family="sans-serif">',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#ccc"/>']
    for t in y_ticks:
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{y + 3.5:.1f}" text-anchor="end" fill="#555">{esc(fmt(t))}</text>')
    for t in x_ticks:
        x = sx(t)
        label = str(int(t)) if integer_x else fmt(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#f2f2f2"/>'
                   f'<text x="{x:.1f}" y="{top + plot_h + 13}" text-anchor="middle" fill="#555">{label}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" fill="#333">{esc(x_label)}</text>')
    if y_label:
        out.append(f'<text transform="translate(11 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" '
                   f'fill="#333">{esc(y_label)}</text>')
    if marker is not None and x_lo <= marker <= x_hi:
        x = sx(marker)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#888" '
                   f'stroke-dasharray="3 3"><title>{esc(marker_label)}</title></line>')
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        if len(s.points) <= 60:
            for x, y in s.points:
                what = f"{x_label} {int(x) if integer_x else fmt(x)}: {s.label} {fmt(y)}"
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2" fill="{colour}">'
                           f'<title>{esc(what)}</title></circle>')
    out.append("</svg>")
    legend = ""
    if len(series) > 1 or marker is not None:
        items = [f'<span><i style="background:{COLOURS[i % len(COLOURS)]}"></i>{esc(s.label)}</span>'
                 for i, s in enumerate(series)]
        if marker is not None:
            items.append(f'<span><i class="dash"></i>{esc(marker_label)}</span>')
        legend = f'<div class="legend">{"".join(items)}</div>'
    return (f'<figure class="chart"><figcaption>{esc(title)}</figcaption>{"".join(out)}{legend}</figure>')


def panel_chart(panel: Panel) -> str:
    return line_chart(panel.series, panel.title, marker=panel.marker, marker_label="best epoch")
