"""What ``visionkit predict`` writes: the task runtime's files (its :class:`PredictionWriter`),
and drawn images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .model import Model

CHUNK = 64  # images per predict() call: bounded memory on large folders


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """One output name per input: a/x.png, b/x.png and x-2.png must not overwrite each other."""
    used: set[str] = set()
    out = []
    for p in paths:
        stem, n = p.stem, 1
        while stem in used:
            n += 1
            stem = f"{p.stem}-{n}"
        used.add(stem)
        out.append(stem)
    return out


def write_predictions(model: Model, images: Sequence[Path], out_dir: Path, draw: bool = False,
                      batch_size: int = 8, **options: Any) -> dict[str, Any]:
    """Runs ``model`` over ``images`` and writes into ``out_dir`` what its task's runtime writes
    (:meth:`TaskRuntime.writer`; by default ``predictions.json``), plus ``drawn/`` with ``draw``.
    ``options``: the task's own, checked before any image is read."""
    out_dir = Path(out_dir)
    resolved = model.resolve(options)
    stems = _unique_stems(images)
    writer = model.task.writer(model.metadata, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(images), CHUNK):
        chunk = list(images[start:start + CHUNK])
        prepared = model.preprocess(chunk)
        results = model.postprocess(model.outputs_per_image(prepared, batch_size), prepared, resolved)
        for k, (path, item, result) in enumerate(zip(chunk, prepared, results)):
            writer.add(start + k, path, stems[start + k], result)
            if draw:
                target = out_dir / "drawn" / f"{stems[start + k]}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                model.task.draw(item.original, result, model.metadata, resolved).save(target)
    written = writer.close()
    return {"images": len(images), "records": len(writer.records), "written": written + (["drawn/"] if draw else [])}
