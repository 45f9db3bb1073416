"""``report.html``: one self-contained page per run, what people open and share.

Written at the end of every ``visionkit train`` and by ``visionkit report RUN_DIR``. The page has
the run (task, model, data, workers, time, best epoch), its curves, the task plugin's sections
(:meth:`visionkit.plugin.TaskPlugin.report_sections`) and the resolved config.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Sequence

from .page import ReportSection
from .run import RunView

REPORT_FILE = "report.html"

__all__ = ["REPORT_FILE", "ReportSection", "RunView", "build_report", "default_sections", "open_run", "write_report"]


def default_sections(plugin, run: RunView) -> list[ReportSection]:
    """What a plugin without its own ``report_sections`` shows: its :meth:`write_visuals` of the
    best epoch's evaluation (redrawn from eval_best.json), as inline images."""
    from . import blocks

    if not run.best:
        return []
    with tempfile.TemporaryDirectory(prefix="visionkit-report-") as tmp:
        paths = plugin.write_visuals(run.best, run.classes, Path(tmp)) or []
        figures = [blocks.figure(blocks.img(Path(p), Path(p).stem), Path(p).stem.replace("_", " "))
                   for p in paths if Path(p).is_file()]
    if not figures:
        return []
    return [ReportSection(f"{plugin.name}: best epoch ({run.best['epoch'] + 1})", blocks.gallery(figures, wide=True))]


def _task_sections(run: RunView) -> list[ReportSection]:
    """The plugin's sections; a plugin that fails here costs its sections, not the page."""
    from . import blocks
    from ..errors import UserError

    try:
        sections = list(run.plugin.report_sections(run))
    except UserError as exc:
        return [ReportSection(f"{run.task}", f'<p class="error">{blocks.esc(str(exc))}</p>')]
    except Exception as exc:
        name = getattr(run.plugin, "name", run.task)
        message = f"task plugin {name!r}: report_sections failed: {type(exc).__name__}: {exc}"
        print(f"[visionkit] {message}", file=sys.stderr, flush=True)
        return [ReportSection(f"{name}", f'<p class="error">{blocks.esc(message)}</p>')]
    bad = [s for s in sections if not isinstance(s, ReportSection)]
    if bad:
        message = (f"task plugin {run.task!r}: report_sections returned a {type(bad[0]).__name__}, "
                   "expected visionkit.report.ReportSection items")
        return [ReportSection(run.task, f'<p class="error">{blocks.esc(message)}</p>')]
    return sections


def build_report(run_dir: Path | str, overrides: Sequence[str] = (), where: str | None = None) -> str:
    """The page for a local run directory, as a string (``where``: the run's name in the page
    when the directory is a local copy)."""
    from .. import __version__
    from .page import render

    run = RunView(run_dir, overrides, where)
    run.plugin  # noqa: B018  (an unknown task is one line before any work)
    return render(run, _task_sections(run), __version__)


def open_run(target: str):
    """A run directory or an object-store URI as the storage module's run object."""
    from ..errors import UserError
    from ..storage import LocalRun, RunStore, default_endpoint, is_remote, split_run_uri

    if is_remote(target):
        storage_path, name = split_run_uri(target)
        run = RunStore(storage_path, name, default_endpoint())
    else:
        path = Path(target).resolve()
        if not path.is_dir():
            raise UserError(f"{target}: no such run directory")
        run = LocalRun(path)
    if not run.exists("config.yaml"):
        raise UserError(f"{run.uri}: not a visionkit run directory (no config.yaml)")
    return run


def write_report(run, overrides: Sequence[str] = ()) -> str:
    """Writes ``report.html`` into the run (a path, a URI, or a LocalRun/RunStore); returns
    where. A run in an object store is read through a temporary local copy of its files."""
    from ..fileio import atomic_write_text

    if isinstance(run, (str, Path)):
        run = open_run(str(run))
    if not run.remote:
        page = build_report(run.local, overrides)
        atomic_write_text(run.local / REPORT_FILE, page)
        return str(run.local / REPORT_FILE)
    with tempfile.TemporaryDirectory(prefix="visionkit-report-") as tmp:
        local = Path(tmp) / run.name
        run.pull(local)
        for name in ("best.pt", "last.pt"):
            if run.exists(f"checkpoints/{name}"):
                run.fetch(f"checkpoints/{name}", local / "checkpoints" / name)
                break
        page = build_report(local, overrides, where=run.uri)
    run.write_bytes(REPORT_FILE, page.encode())
    return f"{run.uri}/{REPORT_FILE}"
