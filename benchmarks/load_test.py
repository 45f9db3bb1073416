"""Load test for `visionkit serve`: N concurrent clients on loopback for a bounded time.

    python benchmarks/load_test.py MODEL.onnx --images data/shapes_cls/val --clients 8 --duration 30 \
        [--server-arg=--max-batch=8 ...]

Starts the server (a subprocess, as a user would), warms it up, then each client thread sends
images as raw PNG bodies over its own keep-alive connection until the time is up. Prints
throughput, latency percentiles, the error count (anything but a 200 with one prediction; the
script exits 1 if there is any), the server's CPU use and its memory (RSS) after start-up,
after warm-up, after the run, and at peak. Standard library only on the client side; the
client threads share the machine with the server, which the report states.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp",
               ".webp": "image/webp"}


def proc_status(pid: int) -> dict[str, float]:
    """RSS and peak RSS in MiB, CPU seconds (user + system) of a Linux process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def machine() -> str:
    cpu = platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import onnxruntime

    return (f"{os.cpu_count()} cores ({cpu}), onnxruntime {onnxruntime.__version__}, "
            f"Python {platform.python_version()}, load average before {os.getloadavg()[0]:.1f}")


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str, int]:
    cmd = [sys.executable, "-m", "visionkit.cli", "serve", model, "--port", "0", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        match = re.search(r"on http://([\d.]+):(\d+)", line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, match.group(1), int(match.group(2))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit(f"the server did not start: {' '.join(cmd)}")


def wait_healthy(host: str, port: int) -> None:
    for _ in range(600):
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server never answered /health")


class Client(threading.Thread):
    def __init__(self, host: str, port: int, bodies: list[tuple[bytes, str]], offset: int, stop_at: float,
                 measure_from: float):
        super().__init__(daemon=True)
        self.host, self.port, self.bodies, self.i = host, port, bodies, offset
        self.stop_at, self.measure_from = stop_at, measure_from
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        while time.perf_counter() < self.stop_at:
            body, ctype = self.bodies[self.i % len(self.bodies)]
            self.i += 1
            start = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200 and len(json.loads(data)["predictions"]) == 1
                error = None if ok else f"HTTP {resp.status}: {data[:200]!r}"
            except Exception as exc:  # counted, and the connection is remade
                error = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            end = time.perf_counter()
            if start >= self.measure_from:
                if error:
                    self.errors.append(error)
                else:
                    self.latencies.append(end - start)
        conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="MODEL.onnx")
    parser.add_argument("--images", required=True, help="folder (searched recursively) or image file")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds measured (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--max-images", type=int, default=64, help="distinct images to cycle through")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="passed to visionkit serve, e.g. --server-arg=--max-batch=8 (repeatable)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    root = Path(args.images)
    files = sorted(p for p in (root.rglob("*") if root.is_dir() else [root]) if p.suffix.lower() in IMAGE_TYPES)
    if not files:
        raise SystemExit(f"{root}: no images")
    step = max(1, len(files) // args.max_images)
    bodies = [(p.read_bytes(), IMAGE_TYPES[p.suffix.lower()]) for p in files[::step][: args.max_images]]

    described = machine()
    proc, host, port = start_server(args.model, args.server_arg)
    try:
        wait_healthy(host, port)
        after_start = proc_status(proc.pid)
        now = time.perf_counter()
        measure_from = now + args.warmup
        stop_at = measure_from + args.duration
        clients = [Client(host, port, bodies, k * 7, stop_at, measure_from) for k in range(args.clients)]
        for c in clients:
            c.start()
        time.sleep(max(0.0, measure_from - time.perf_counter()))
        after_warmup = proc_status(proc.pid)
        for c in clients:
            c.join()
        after_run = proc_status(proc.pid)
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/metadata")
        server_info = json.loads(conn.getresponse().read())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    latencies = [x for c in clients for x in c.latencies]
    errors = [e for c in clients for e in c.errors]
    figures = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": described,
        "command": "python " + " ".join(sys.argv),
        "model": f"{Path(args.model).name}: {server_info['summary']}",
        "server": server_info["server"],
        "clients": args.clients, "duration_s": args.duration, "distinct_images": len(bodies),
        "requests_ok": len(latencies), "errors": len(errors),
        "throughput_rps": round(len(latencies) / args.duration, 1),
        "latency_ms": {q: round(percentile(latencies, float(q[1:])) * 1000, 1) for q in ("p50", "p90", "p99")},
        "latency_ms_max": round(max(latencies, default=float("nan")) * 1000, 1),
        "server_cpu_cores": round((after_run["cpu_s"] - after_warmup["cpu_s"]) / args.duration, 2),
        "server_rss_mib": {"after_start": round(after_start["VmRSS"], 1), "after_warmup": round(after_warmup["VmRSS"], 1),
                           "after_run": round(after_run["VmRSS"], 1), "peak": round(after_run["VmHWM"], 1)},
        "server_stats": server_info.get("stats"),
    }
    print(json.dumps(figures, indent=1))
    if errors:
        print(f"{len(errors)} errors, e.g. {errors[0]}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
