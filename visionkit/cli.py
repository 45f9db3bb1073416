"""The ``visionkit`` command. Heavy imports (torch, ray) happen inside the subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from . import __version__
from .errors import UserError


def _cmd_train(args) -> int:
    from .train.launch import train

    if not args.config and not args.resume:
        raise UserError("train: give a CONFIG file, or --resume RUN_DIR")
    overrides = list(args.overrides)
    config = args.config
    if args.resume and config and "=" in config:
        overrides.insert(0, config)  # `--resume RUN key=value`: the first override landed in CONFIG
        config = None
    elif args.resume and config:
        raise UserError("train: give either a CONFIG file or --resume RUN_DIR, not both")
    train(config, overrides, resume=args.resume, address=args.address)
    return 0


def _cmd_eval(args) -> int:
    import json

    from .train.launch import evaluate

    result = evaluate(args.target, list(args.overrides), workers=args.workers, output=args.output,
                      address=args.address)
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k != "checkpoint"}
    print(json.dumps(shown, indent=1))
    return 0


def _cmd_plugins(args) -> int:
    from .registry import entries

    found = entries()
    if not found:
        print("no task plugins installed (entry-point group 'visionkit.tasks')")
        return 1
    broken = 0
    for name, entry in sorted(found.items()):
        try:
            plugin = entry.load()
            print(f"{name:16s} {plugin.summary}\n{'':16s} {entry.target}  [{entry.distribution}]")
        except UserError as exc:
            broken += 1
            print(f"{name:16s} BROKEN: {exc}")
    return 1 if broken else 0


def _cmd_synth(args) -> int:
    from .data import synth

    out = Path(args.out)
    if args.kind == "classification":
        synth.classification(out, args.num_train or 1600, args.num_val or 400, args.size or 32, args.seed)
    else:
        synth.scenes(out, args.num_train or 400, args.num_val or 100, args.size or 128, args.seed)
    print(f"[visionkit] wrote {args.kind} shapes data to {out}")
    return 0


def _cmd_mnist(args) -> int:
    """Fetching happens only here, when the user asks; training reads the files from disk."""
    import gzip
    import shutil
    import urllib.request

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        target = out / f"{stem}.gz"
        if target.exists():
            continue
        url = f"{args.mirror.rstrip('/')}/{stem}.gz"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(target, "wb") as fh:
                shutil.copyfileobj(resp, fh)
            gzip.open(target).read(16)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise UserError(f"{url}: download failed ({exc}); copy the four MNIST *-ubyte.gz files into {out} by hand") from None
    print(f"[visionkit] MNIST IDX files in {out}")
    return 0


def _cmd_serve(args) -> int:
    """Torch-free, like predict: the server process imports visionkit.runtime and Starlette only."""
    from .serving.limits import Limits
    from .serving.server import require_packages, serve

    require_packages()

    try:
        limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_pixels=int(args.max_megapixels * 1e6),
                        max_images=args.max_images, max_pending=args.max_pending)
    except ValueError as exc:
        raise UserError(f"serve: {exc}") from None
    if args.max_batch < 1 or args.batch_wait_ms < 0:
        raise UserError("serve: --max-batch must be at least 1 and --batch-wait-ms at least 0")
    serve(args.model, host=args.host, port=args.port, threads=args.threads, workers=args.workers,
          max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, limits=limits, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionkit", description="Train, evaluate and export vision models on Ray.")
    parser.add_argument("--version", action="version", version=f"visionkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a YAML config (on Ray workers)")
    p.add_argument("config", nargs="?", help="configs/<task>/<name>.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=5")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's best checkpoint (or a .pt file) and write JSON")
    p.add_argument("target", help="RUN_DIR or CHECKPOINT.pt")
    p.add_argument("overrides", nargs="*", help="e.g. data.root=/other/data to evaluate on other data")
    p.add_argument("--workers", type=int, default=0, help="Ray workers (default 0: in this process)")
    p.add_argument("-o", "--output", help="JSON file (default: RUN_DIR/eval.json)")
    p.add_argument("--address", help="Ray cluster address")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("plugins", help="list the installed task plugins and where they come from")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("data", help="built-in data: synthetic shapes, MNIST files")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    s = data_sub.add_parser("synth", help="write the synthetic shapes data set (deterministic by seed)")
    s.add_argument("kind", choices=["classification", "scenes"],
                   help="classification: ImageFolder; scenes: COCO json + mask PNGs (detection, segmentation)")
    s.add_argument("out", help="output folder")
    s.add_argument("--num-train", type=int)
    s.add_argument("--num-val", type=int)
    s.add_argument("--size", type=int, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_synth)
    m = data_sub.add_parser("mnist", help="download the MNIST IDX files (the only command that downloads)")
    m.add_argument("out")
    m.add_argument("--mirror", default="https://ossci-datasets.s3.amazonaws.com/mnist")
    m.set_defaults(func=_cmd_mnist)

    p = sub.add_parser("serve", help="serve an exported .onnx model over HTTP (onnxruntime, no torch)")
    p.add_argument("model", help="MODEL.onnx (exported by visionkit export)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 for every interface, e.g. in a container)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port, printed)")
    p.add_argument("--threads", type=int, help="onnxruntime threads per call (default: all cores)")
    p.add_argument("--workers", type=int, help="threads decoding and running requests (default: cores, at most 4)")
    p.add_argument("--max-batch", type=int, default=1,
                   help="micro-batching: run up to N images of concurrent requests together (default 1: off)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0,
                   help="micro-batching: how long an image waits for others (default 2 ms)")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body (default 16 MiB): 413")
    p.add_argument("--max-megapixels", type=float, default=25.0, help="largest image (default 25 MP): 413")
    p.add_argument("--max-images", type=int, default=16, help="images per multipart request (default 16)")
    p.add_argument("--max-pending", type=int, default=64, help="requests in flight before 503 (default 64)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="uvicorn's log level (info: one line per request)")
    p.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"visionkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("visionkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
