"""The page: its skeleton and CSS, and the sections every run has (the run, curves, config).

One HTML file with everything inside (CSS in a ``<style>``, charts as inline SVG, pictures as
``data:`` PNGs): it opens from disk, offline, on a phone, or attached to a message. No scripts.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from ..errors import UserError
from . import blocks
from .charts import constants, curve_panels, fmt, panel_chart

esc = html.escape

CSS = """
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1b1f24;background:#f4f5f7}
main{max-width:1120px;margin:0 auto;padding:10px 12px 40px}
header h1{font-size:1.35rem;margin:.4em 0 .1em;word-break:break-word}
header p{margin:0;color:#555}
nav{margin:.6em 0;display:flex;flex-wrap:wrap;gap:4px 14px;font-size:.9rem}
nav a{color:#0b5cad;text-decoration:none}
section{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:10px 14px 14px;margin:12px 0}
h2{font-size:1.1rem;margin:.2em 0 .6em}
h3{font-size:.98rem;margin:1em 0 .4em}
p{margin:.4em 0}
.note{color:#555;font-size:.88rem}
.error{border-left:4px solid #c62828;background:#fdecea;padding:6px 10px;font-size:.9rem}
img{max-width:100%;height:auto;display:block}
figure{margin:0}
figcaption{font-size:.85rem;color:#333;margin:.3em 0;word-break:break-word}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(320px,100%),1fr));gap:14px}
.chart svg{width:100%;height:auto;display:block}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(150px,100%),1fr));gap:12px}
.gallery.wide{grid-template-columns:repeat(auto-fill,minmax(min(340px,100%),1fr))}
.legend{display:flex;flex-wrap:wrap;gap:2px 12px;font-size:.8rem;color:#333;margin:.2em 0}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px;border-radius:2px}
.legend i.dash{height:0;border-top:2px dashed #888;border-radius:0;vertical-align:3px}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse;font-size:.88rem;margin:.3em 0}
th,td{padding:3px 8px;border-bottom:1px solid #eceef1;text-align:left;vertical-align:top}
thead th{border-bottom:2px solid #d5d9de;white-space:nowrap}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.bars{width:100%}
table.bars th{font-weight:normal;white-space:nowrap}
table.bars td.bar{width:55%;min-width:90px;vertical-align:middle}
table.bars b{display:block;height:12px;background:#4c78a8;border-radius:2px}
table.bars td.extra{color:#666;white-space:nowrap}
table.heat td{min-width:2.6em;border:1px solid #fff}
table.heat th.col{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;white-space:nowrap}
table.heat th.corner{font-weight:normal;color:#666;font-size:.8rem}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;margin:.2em 0}
dl.facts dt{color:#555}
dl.facts dd{margin:0;word-break:break-word}
details{margin:.4em 0}
summary{cursor:pointer;color:#0b5cad}
pre{overflow-x:auto;background:#f6f8fa;border:1px solid #e1e4e8;border-radius:6px;padding:10px;font-size:.8rem;
 line-height:1.35}
footer{color:#777;font-size:.8rem;margin-top:18px}
@media (max-width:560px){
 body{font-size:14px} main{padding:6px 6px 30px} section{padding:8px 10px 12px;border-radius:6px}
 dl.facts{grid-template-columns:1fr;gap:0} dl.facts dd{margin-bottom:6px}
 table.bars td.extra{white-space:normal;font-size:.8rem}
}
"""


@dataclass
class ReportSection:
    """One part of the page: a heading and an HTML fragment.

    Build ``html`` with :mod:`visionkit.report.blocks` (inline images, tables, bars, notes), so
    the page stays one self-contained file; a fragment that refers to anything outside the page
    (``http://...``, ``src="file.png"``) is left out and named on the page instead.
    """

    title: str
    html: str


# src=/href= values that would load something from outside the file (internal #anchors and
# data: URIs are fine)
_EXTERNAL = re.compile(r"""(?:\bsrc|\bhref|\bxlink:href|\baction|\bposter)\s*=\s*["']?(?!data:|#)[^\s"'>]""", re.I)
_EXTERNAL_CSS = re.compile(r"url\(\s*['\"]?(?!data:|#)", re.I)


def external_reference(fragment: str) -> Optional[str]:
    """What in ``fragment`` refers to something outside the page (``src=``, ``url(``...), or None.
    The address itself is not repeated: the page names no network location."""
    found = _EXTERNAL.search(fragment) or _EXTERNAL_CSS.search(fragment)
    if found is None:
        return None
    return re.split(r"[\s=(]", found.group(0).strip(), maxsplit=1)[0].lower()


def _slug(title: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    slug, n = base, 2
    while slug in used:
        slug, n = f"{base}-{n}", n + 1
    used.add(slug)
    return slug


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def _count(n: Optional[int]) -> str:
    if n is None:
        return ""
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e4 else str(n)


def _workers(attempts: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Where each attempt's workers ran (workers.json), grouped by host and device."""
    out = []
    for k, attempt in enumerate(attempts):
        workers = attempt.get("workers") or []
        places: dict[tuple[str, str], int] = {}
        for w in workers:
            where = str(w.get("hostname", "?")) + (f" ({w['node_ip']})" if w.get("node_ip") else "")
            key = (where, str(w.get("device", "?")))
            places[key] = places.get(key, 0) + 1
        text = ", ".join(f"{n} on {host}, {device}" for (host, device), n in places.items())
        label = "workers" if len(attempts) == 1 else f"workers, attempt {k + 1}"
        started = attempt.get("started_unix")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if isinstance(started, (int, float)) else "?"
        out.append((label, f"{text}; started {when} at epoch {attempt.get('start_epoch', 0) + 1}"))
    return out


def run_section(run) -> str:
    """Task, model, data, workers, time, throughput and the best epoch's metrics."""
    cfg = run.config
    data, model, train, ray = (cfg.get(k) or {} for k in ("data", "model", "train", "ray"))
    rows = run.rows
    weights = []
    try:
        params = run.parameter_count()
    except UserError as exc:  # an unreadable checkpoint still leaves the logs worth showing
        params, note = None, f"checkpoint not readable: {exc}"
    else:
        note = ""
        ckpt = run.checkpoint
        if ckpt is not None and ckpt.weights == "ema":
            from ..train.ema import weights_label

            weights = [("weights", f"{weights_label(ckpt.weights, ckpt.ema)}: evaluated every epoch, saved as "
                                   "best.pt and exported")]
    model_text = str(model.get("name", "")) + (f" ({_count(params)} parameters)" if params else "")
    speeds = [r["train/images_per_s"] for r in rows if isinstance(r.get("train/images_per_s"), (int, float))]
    epoch_times = [r["time_s"] for r in rows if isinstance(r.get("time_s"), (int, float))]
    layout = f"ray.num_workers: {ray.get('num_workers', '?')}"
    if ray.get("use_gpu"):
        layout += ", GPUs"
    if ray.get("resources_per_worker"):
        layout += f", per worker {ray['resources_per_worker']}"
    layout += f"; {train.get('batch_size', '?')} images per step and worker"
    if (train.get("grad_accum_steps") or 1) > 1:
        layout += f", {train['grad_accum_steps']} steps accumulated"
    layout += f"; amp {train.get('amp', 'off')}"
    items = [
        ("task", run.task),
        ("model", model_text),
        *weights,
        ("data", f"{data.get('root', '')}" + (f" ({data['format']})" if data.get("format") else "")),
        ("epochs", f"{len(rows)} of {train.get('epochs', '?')} finished" if rows else "none finished yet"),
        ("layout", layout),
        *_workers(run.attempts),
        ("training time", _duration(run.wall_time()) + (f" (epochs: {_duration(sum(epoch_times))} with validation)"
                                                        if epoch_times else "")),
        ("throughput", f"{sum(speeds) / len(speeds):.0f} images/s on average while training, {speeds[-1]:.0f} in the last epoch"
         if speeds else ""),
    ]
    out = [blocks.facts(items)]
    if note:
        out.append(f'<p class="error">{esc(note)}</p>')
    best = run.best
    if best:
        primary = best.get("primary")
        epoch = best.get("epoch", 0)
        out.append(blocks.heading(f"Best epoch: {epoch + 1} by {primary} (checkpoints/best.pt)"))
        metrics = [(k, v) for k, v in best.items() if k not in ("epoch", "primary")
                   and isinstance(v, (int, float)) and not isinstance(v, bool)]
        metrics.sort(key=lambda kv: kv[0] != primary)
        row = next((r for r in rows if r.get("epoch") == epoch), {})
        train_parts = [(k, v) for k, v in row.items() if k.startswith("train/") and isinstance(v, (int, float))]
        table_rows = [(f"val/{k}", fmt(float(v))) for k, v in metrics] + [(k, fmt(float(v))) for k, v in train_parts]
        out.append(blocks.table(["metric", "value"], table_rows, numeric=[False, True]))
    elif rows:
        out.append(blocks.note("No evaluation yet: eval_best.json is written at the first validation."))
    return "".join(out)


def curves_section(run) -> str:
    panels = curve_panels(run.rows, run.primary, run.best_epoch)
    flat = constants(run.rows)
    out = []
    if panels:
        out.append(blocks.charts(panel_chart(p) for p in panels))
    elif run.rows:
        out.append(blocks.note("Curves start at the second epoch."))
    else:
        out.append(blocks.note("No epoch finished yet."))
    if flat:
        listed = ", ".join(f"{k} = {fmt(v)}" for k, v in flat.items())
        out.append(blocks.note(f"The same at every epoch, so not drawn: {listed}."))
    if panels:
        out.append(blocks.note("Epochs counted from 1; every value is in metrics.jsonl, and in TensorBoard "
                               "(tensorboard/)."))
    return "".join(out)


def config_section(run) -> str:
    return blocks.details("config.yaml: the resolved config this run trained with",
                          f"<pre>{esc(run.config_text)}</pre>")


def render(run, task_sections: Iterable[ReportSection], version: str) -> str:
    """The whole page. ``task_sections`` come from the task plugin, between curves and config."""
    sections: list[tuple[str, str]] = [("The run", run_section(run)), ("Curves", curves_section(run))]
    for section in task_sections:
        found = external_reference(section.html)
        if found is not None:
            body = (f'<p class="error">Left out: this section refers to something outside the page (a {esc(found)} '
                    'reference); a plugin embeds its images with visionkit.report.blocks.img.</p>')
        else:
            body = section.html
        sections.append((section.title, body))
    sections.append(("Config", config_section(run)))
    used: set[str] = set()
    ids = [_slug(title, used) for title, _ in sections]
    nav = "".join(f'<a href="#{i}">{esc(t)}</a>' for i, (t, _) in zip(ids, sections))
    body = "".join(f'<section id="{i}"><h2>{esc(t)}</h2>{b}</section>' for i, (t, b) in zip(ids, sections))
    best = run.best
    subtitle = [run.task, str((run.config.get("model") or {}).get("name", ""))]
    if best and best.get("primary") in best:
        subtitle.append(f"best {best['primary']} {fmt(float(best[best['primary']]))} at epoch {best['epoch'] + 1}")
    written = time.strftime("%Y-%m-%d %H:%M")
    subtitle_text = " \u00b7 ".join(s for s in subtitle if s)
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="color-scheme" content="light">'
            f"<title>{esc(run.name)} \u2013 visionkit run report</title><style>{CSS}</style></head>"
            f'<body><main><header><h1>{esc(run.name)}</h1><p>{esc(subtitle_text)}</p>'
            f"<nav>{nav}</nav></header>{body}"
            f"<footer>Written by visionkit {esc(version)} on {written} from {esc(run.where)}. "
            "One self-contained file: it opens offline in any browser.</footer></main></body></html>\n")
