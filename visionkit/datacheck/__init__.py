"""``visionkit data check``: look at a dataset the way training will, before training does.

The core part is the same for every task: each split is built by its task plugin (every
annotation parsed, with the plugin's own one-line errors), then the plugin describes it
(:meth:`visionkit.plugin.TaskPlugin.check_data`: each sample's image file, the size its
annotation states, its class labels, and findings of its own such as degenerate boxes), and this
module reads the images (in parallel), counts classes, and compares the splits:

* every image's header (decodable format, size as annotated) and end (a file cut short,
  :func:`.images.missing_end`), PIL's ``verify()`` and a content hash (full check); headers and
  ends only (the pre-flight of ``visionkit train``, :func:`preflight`);
* class histogram per split, images without objects, classes present in val but not in train;
* exact-duplicate images (sha1 of the bytes) within a split, and val images that are in train.

Errors (an image that does not decode, a size that disagrees, an annotation the plugin refuses)
make ``data check`` exit with 2; warnings leave it at 0. On a large split at most ``limit``
images are read, evenly spread over it (the report says how many and which step); annotations
and labels are always read whole.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import DataError, UserError
from .images import inspect_all, parallel_map

SPLITS = ("train", "val")
#: images read per split by ``data check`` unless --limit says otherwise
FULL_LIMIT = 20000
#: images whose header and end the pre-flight of ``visionkit train`` reads per split
PREFLIGHT_LIMIT = 5000
#: examples named per finding
EXAMPLES = 3


@dataclass
class Sample:
    """One sample as its plugin describes it to the checker."""

    image: Optional[Path]  # the image file; None for data without files (MNIST's arrays)
    size: Optional[tuple[int, int]] = None  # (width, height) the annotation states; checked against the header
    labels: Optional[list[int]] = None  # a class index per object (classification: the image's class)
    where: str = ""  # what states ``size``, for messages (e.g. "instances_train.json: image id 7")
    #: a label file read like an image (segmentation's mask PNG): header and end; its size must be the image's
    mask: Optional[Path] = None


@dataclass
class SplitCheck:
    """A plugin's answer to ``check_data``: its samples and what it found itself."""

    classes: list[str]
    samples: list[Sample]
    findings: list[tuple[str, str]] = field(default_factory=list)  # (error|warning, one line)
    #: what a label counts in the histogram ("objects", "images", "images containing it")
    counts: str = "objects"
    #: a label that does not make an image non-empty (segmentation's background); None: any label does
    background: Optional[int] = None
    #: whether an image without labels is worth a warning (detection: yes; classification: n/a)
    report_empty: bool = True
    #: the expensive per-sample check of a full run (segmentation: decode the mask): returns the
    #: sample's labels, or raises DataError
    deep: Optional[Callable[[int], Optional[list[int]]]] = None


@dataclass
class Finding:
    severity: str  # "error" or "warning"
    split: str  # train, val, or "train/val"
    message: str

    def line(self) -> str:
        return f"{self.split}: {self.message}"


@dataclass
class SplitSummary:
    name: str
    samples: int = 0
    checked: int = 0
    step: int = 1
    read: int = 0  # image files read (checked samples that have one)
    masks: int = 0  # mask files read
    objects: int = 0
    empty: int = 0
    histogram: Counter = field(default_factory=Counter)
    digests: dict[str, list[Path]] = field(default_factory=dict)
    built: bool = False


@dataclass
class Report:
    classes: list[str] = field(default_factory=list)
    counts: str = "objects"
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    mode: str = "full"
    seconds: float = 0.0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]


def spread(n: int, limit: Optional[int]) -> list[int]:
    """Indices of at most ``limit`` samples evenly spread over ``n`` (all of them when they fit)."""
    if not limit or n <= limit:
        return list(range(n))
    return sorted({i * n // limit for i in range(limit)})


def _nth(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 < 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:EXAMPLES])
    return shown + (f" (+{len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else "")


def _check_images(split: str, check: SplitCheck, summary: SplitSummary, full: bool, decode: bool,
                  limit: Optional[int], report: Report) -> None:
    chosen = spread(len(check.samples), limit)
    summary.checked = len(chosen)
    summary.step = max(1, round(len(check.samples) / len(chosen))) if chosen else 1
    with_files = [i for i in chosen if check.samples[i].image is not None]
    with_masks = [i for i in with_files if check.samples[i].mask is not None]
    summary.read, summary.masks = len(with_files), len(with_masks)
    facts = inspect_all([check.samples[i].image for i in with_files], verify=full, digest=full, decode=decode)
    masks = dict(zip(with_masks, inspect_all([check.samples[i].mask for i in with_masks])))
    failed = set()  # samples with a file error: the deep check would only say it again
    for i, fact in zip(with_files, facts):
        sample, mask = check.samples[i], masks.get(i)
        problem = fact.error or (mask.error if mask is not None else None)
        if problem is None and sample.size is not None and tuple(fact.size) != tuple(sample.size):
            problem = (f"{sample.where or sample.image}: the annotation gives the image as {sample.size[0]}x"
                       f"{sample.size[1]} pixels but {fact.path} is {fact.size[0]}x{fact.size[1]}")
        if problem is None and mask is not None and tuple(mask.size) != tuple(fact.size):
            problem = (f"{mask.path}: mask is {mask.size[0]}x{mask.size[1]} pixels but its image {fact.path} is "
                       f"{fact.size[0]}x{fact.size[1]}")
        if problem is not None:
            report.findings.append(Finding("error", split, problem))
            failed.add(i)
        if fact.digest:
            summary.digests.setdefault(fact.digest, []).append(fact.path)
    if full and check.deep is not None:
        chosen = [i for i in chosen if i not in failed]
        def run(i: int):
            try:
                return check.deep(i), None
            except UserError as exc:
                return None, str(exc)

        for i, (labels, error) in zip(chosen, parallel_map(run, chosen)):
            if error:
                report.findings.append(Finding("error", split, error))
            elif labels is not None:
                check.samples[i].labels = list(labels)


def _count(split: str, check: SplitCheck, summary: SplitSummary, report: Report) -> None:
    empty = []
    for sample in check.samples:
        if sample.labels is None:
            continue
        summary.histogram.update(sample.labels)
        summary.objects += len(sample.labels)
        if check.report_empty and not [x for x in sample.labels if x != check.background]:
            empty.append(str(sample.image))
    summary.empty = len(empty)
    if empty:
        report.findings.append(Finding("warning", split, f"{len(empty)} of {len(check.samples)} images have no "
                                       f"objects: {_examples(empty)}"))


def _compare(report: Report) -> None:
    for name, summary in report.splits.items():
        groups = [paths for paths in summary.digests.values() if len(paths) > 1]
        if groups:
            shown = [" = ".join(str(p) for p in g[:2]) for g in groups]
            extra = sum(len(g) - 1 for g in groups)
            report.findings.append(Finding("warning", name, f"{extra} exact duplicate image(s) in {len(groups)} "
                                           f"group(s) (same bytes): {_examples(shown)}"))
    train, val = report.splits.get("train"), report.splits.get("val")
    if train is None or val is None or not train.built or not val.built:
        return
    shared = sorted(set(train.digests) & set(val.digests))
    if shared:
        shown = [f"{val.digests[d][0]} = {train.digests[d][0]}" for d in shared]
        count = sum(len(val.digests[d]) for d in shared)
        report.findings.append(Finding("warning", "train/val", f"{count} val image(s) are byte-identical to train "
                                       f"images (the metric would score memorised images): {_examples(shown)}"))
    if train.histogram is not None and (train.objects or val.objects):
        only_val = [report.classes[k] if 0 <= k < len(report.classes) else str(k)
                    for k in sorted(val.histogram) if val.histogram[k] and not train.histogram.get(k)]
        if only_val:
            report.findings.append(Finding("warning", "train/val", f"class(es) in val but never in train (the model "
                                           f"cannot learn them): {', '.join(only_val)}"))


def check_datasets(plugin, datasets: dict[str, Any], mode: str = "full", limit: Optional[int] = FULL_LIMIT,
                   decode: bool = False, report: Optional[Report] = None) -> Report:
    """Checks built datasets (``{"train": ..., "val": ...}``). ``mode``: ``full`` (headers,
    verify, hashes, the plugin's deep check, histograms, comparisons) or ``fast`` (headers and ends)."""
    report = report or Report()
    report.mode = mode
    tic = time.perf_counter()
    full = mode == "full"
    for split, dataset in datasets.items():
        summary = report.splits.setdefault(split, SplitSummary(split))
        check = plugin.check_data(dataset, split)
        summary.built = True
        summary.samples = len(check.samples)
        if not report.classes:
            report.classes, report.counts = list(check.classes), check.counts
        report.findings += [Finding(sev, split, msg) for sev, msg in check.findings if full or sev == "error"]
        _check_images(split, check, summary, full, decode, limit, report)
        if full:
            _count(split, check, summary, report)
    if full:
        _compare(report)
    report.seconds += time.perf_counter() - tic
    return report


def check(plugin, data: Any, limit: Optional[int] = FULL_LIMIT, decode: bool = False) -> Report:
    """``visionkit data check``: builds each split (an annotation error is an error finding, and
    the other split is still checked) and checks it in full."""
    report = Report(splits={split: SplitSummary(split) for split in SPLITS})
    tic = time.perf_counter()
    datasets = {}
    for split in SPLITS:
        try:
            datasets[split] = plugin.build_dataset(data, split)
        except UserError as exc:
            report.findings.append(Finding("error", split, str(exc)))
    report.seconds = time.perf_counter() - tic
    return check_datasets(plugin, datasets, "full", limit, decode, report)


def preflight(plugin, datasets: dict[str, Any], limit: Optional[int] = PREFLIGHT_LIMIT) -> Report:
    """The fast form, run by ``visionkit train`` before Ray starts: image headers and ends (at most
    ``limit`` per split, spread evenly); the first error is raised as one line."""
    report = check_datasets(plugin, datasets, "fast", limit)
    if report.errors:
        first, more = report.errors[0], len(report.errors) - 1
        tail = f" (and {more} more problem(s); `visionkit data check CONFIG` lists them)" if more else ""
        raise DataError(f"{first.message}{tail}")
    return report


def preflight_line(report: Report) -> str:
    """What a passed pre-flight read, in one line for ``visionkit train``'s log."""
    splits = [s for s in report.splits.values() if s.built]
    sizes = " / ".join(f"{s.samples} {s.name}" for s in splits)
    read, masks = sum(s.read for s in splits), sum(s.masks for s in splits)
    if not read:
        what = "no image files to read (the samples are arrays)"
    else:
        sampled = [f"{s.name} every {_nth(s.step)}" for s in splits if s.step > 1]
        files = f"{read} images" + (f" and {masks} masks" if masks else "")
        what = f"headers and ends of {files} read ({', '.join(sampled) if sampled else 'all'})"
    return f"data: {sizes} samples; {what}, no problems, {report.seconds:.2f} s"


def format_report(report: Report, max_lines: int = 20) -> str:
    """The summary table, the class histogram and the findings, as printed by ``data check``."""
    lines = []
    objects = report.counts == "objects"
    rows = [("split", "images", "checked", *(("objects",) if objects else ()), "empty")]
    for s in report.splits.values():
        if not s.built:
            rows.append((s.name, "not built", "-", *(("-",) if objects else ()), "-"))
            continue
        checked = f"{s.checked}" + (f" (every {_nth(s.step)})" if s.step > 1 else "")
        rows.append((s.name, str(s.samples), checked, *((str(s.objects),) if objects else ()), str(s.empty)))
    lines += _table(rows)
    if report.classes and any(s.histogram for s in report.splits.values()):
        lines.append("")
        names = list(report.splits)
        lines.append(f"{report.counts} per class:")
        rows = [("class", *names)]
        for k, name in enumerate(report.classes):
            rows.append((name, *(str(report.splits[n].histogram.get(k, 0)) for n in names)))
        lines += _table(rows)
    for title, items in (("errors", report.errors), ("warnings", report.warnings)):
        if items:
            lines.append("")
            lines.append(f"{title} ({len(items)}):")
            lines += [f"  {f.line()}" for f in items[:max_lines]]
            if len(items) > max_lines:
                lines.append(f"  ... and {len(items) - max_lines} more")
    verdict = (f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)" if report.findings
               else "no problems found")
    lines.append("")
    lines.append(f"{verdict} ({report.seconds:.1f}s)")
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def default_check(dataset: Any, split: str) -> SplitCheck:
    """For a plugin without its own ``check_data``: no image files known, so the full check loads
    samples through the dataset itself (bounded like the image reads)."""

    def deep(i: int) -> None:
        try:
            dataset[i]
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001  (whatever a plugin's loader raises is a finding about the sample)
            first = (str(exc).strip().splitlines() or [""])[0]
            raise DataError(f"sample {i} (dataset[{i}]): {type(exc).__name__}: {first}") from None
        return None

    samples = [Sample(None) for _ in range(len(dataset))]
    return SplitCheck(list(getattr(dataset, "classes", [])), samples, deep=deep, report_empty=False)


__all__ = ["Sample", "SplitCheck", "Report", "Finding", "check", "check_datasets", "preflight", "preflight_line",
           "format_report", "default_check", "spread"]
