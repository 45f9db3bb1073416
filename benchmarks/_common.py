"""Helpers shared by the benchmark scripts: machine description, subprocess timing."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def timed_train(args: list[str], env: dict | None = None) -> tuple[float, list[dict], str]:
    """Runs `visionkit train ...` in a new process; returns its start time, metrics rows and output."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "visionkit.cli", "train", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"visionkit train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    run_dir = next(line.split("run directory ", 1)[1].strip() for line in proc.stdout.splitlines() if "run directory" in line)
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return start, rows, proc.stdout


def report(title: str, lines: list[str]) -> None:
    print(f"\n## {title}\n")
    print(f"- date: {time.strftime('%Y-%m-%d')}\n- machine: {machine()}\n- command: `python {' '.join(sys.argv)}`")
    for line in lines:
        print(line)
