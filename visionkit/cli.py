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
    if args.debug_local:
        if args.address:
            raise UserError("train: --debug-local runs in this process; it takes no --address")
        # Last, so they win: one process, DataLoader included, so a breakpoint anywhere stops.
        overrides += ["ray.num_workers=0", "train.loader_workers=0"]
        args.debug = True
        print("[visionkit] --debug-local: the training loop runs in this process (ray.num_workers=0, "
              "train.loader_workers=0); errors show their traceback", flush=True)
    train(config, overrides, resume=args.resume, address=args.address)
    return 0


def _cmd_tune(args) -> int:
    from .tune.search import tune

    if not args.config and not args.resume:
        raise UserError("tune: give a CONFIG file with a tune: section, or --resume TUNE_DIR")
    overrides = list(args.overrides)
    config = args.config
    if args.resume and config and "=" in config:
        overrides.insert(0, config)
        config = None
    elif args.resume and config:
        raise UserError("tune: give either a CONFIG file or --resume TUNE_DIR, not both")
    tune(config, overrides, resume=args.resume, address=args.address)
    return 0


def _cmd_eval(args) -> int:
    import json

    if args.target.endswith(".onnx"):
        from .export.evaluate import evaluate as evaluate_onnx

        if args.workers:
            raise UserError("eval: --workers applies to checkpoints; an .onnx model is evaluated in this process")
        result = evaluate_onnx(args.target, data_root=args.data, overrides=list(args.overrides), output=args.output,
                               batch_size=args.batch_size, threads=args.threads)
    else:
        from .train.launch import evaluate

        overrides = list(args.overrides) + ([f"data.root={args.data}"] if args.data else [])
        result = evaluate(args.target, overrides, workers=args.workers, output=args.output, address=args.address)
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k != "checkpoint"}
    print(json.dumps(shown, indent=1))
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    overrides = [f"data.root={args.data}"] if args.data else []
    print(f"[visionkit] report: {write_report(args.run_dir, overrides)}")
    return 0


def _cmd_export(args) -> int:
    from .export.exporter import export

    export(args.target, args.output, list(args.overrides), data_root=args.data, opset=args.opset,
           precision=args.precision, logits=args.logits, check_images=args.check_images,
           calibration_images=args.calibration_images, max_metric_drop=args.max_metric_drop, mlflow=args.mlflow)
    return 0


def _parse_classes(text: str) -> list[str]:
    path = Path(text)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise UserError(f"--classes {text!r}: give a file with one name per line, or names separated by commas")
    return names


def _load_predict_model(args):
    """The model ``predict`` runs (described by --task/--classes... when it carries no metadata).
    Torch-free: only visionkit.runtime (numpy, onnxruntime, Pillow) is imported here."""
    from .runtime import Model, foreign_metadata

    metadata = None
    if args.task:
        if not args.classes:
            raise UserError("predict: --task needs --classes (a file with one name per line, or a,b,c)")
        size = _input_size(args.input_size) if args.input_size else None
        metadata = foreign_metadata(args.task, _parse_classes(args.classes), size, args.mean, args.std, args.channels)
    elif args.classes or args.input_size or args.mean or args.std:
        raise UserError("predict: --classes/--input-size/--mean/--std describe a model without visionkit metadata; "
                        "give --task too")
    return Model.load(args.model, threads=args.threads, metadata=metadata)


def _cmd_predict(args) -> int:
    from .runtime import OptionError, list_images
    from .runtime.output import write_predictions

    model = args.loaded_model if getattr(args, "loaded_model", None) is not None else _load_predict_model(args)
    options = {}
    for option in model.options:  # the task's flags, added to the parser from the same declarations
        value = getattr(args, _option_dest(option), None)
        if value is None:
            continue
        try:
            options[option.name] = value if option.type is bool else option.parse(value)
        except OptionError as exc:
            raise UserError(f"predict: {option.flag} {value}: {exc}") from None
    images = list_images(args.images)
    summary = write_predictions(model, images, Path(args.output), draw=args.draw, batch_size=args.batch_size,
                                **options)
    print(f"[visionkit] {model.metadata.task}: {summary['images']} image(s) -> {args.output}/ "
          f"({', '.join(summary['written'])})")
    return 0


def _option_dest(option) -> str:
    return f"task_option_{option.name}"


def _predict_arguments(p: argparse.ArgumentParser, lenient: bool = False) -> None:
    """``predict``'s own arguments; ``lenient``: positionals optional, to read MODEL before the
    task's flags are known (they come from the model's runtime)."""
    p.add_argument("model", nargs="?" if lenient else None, help="MODEL.onnx")
    p.add_argument("images", nargs="*" if lenient else "+", help="image files and/or folders (searched recursively)")
    p.add_argument("-o", "--output", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--draw", action="store_true", help="also write drawn images to OUTPUT/drawn/")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    g = p.add_argument_group("a model without visionkit metadata")
    g.add_argument("--task", help="its task, whose runtime must run graphs without metadata (built in: "
                   "classification, segmentation)")
    g.add_argument("--classes", help="a file with one class name per line, or names separated by commas")
    g.add_argument("--input-size", help="resize every image to HxW first, e.g. 224x224")
    g.add_argument("--mean", type=float, nargs="+", help="normalisation the graph expects (default ImageNet's)")
    g.add_argument("--std", type=float, nargs="+")
    g.add_argument("--channels", type=int, choices=[1, 3], default=3)


def _task_option_arguments(p: argparse.ArgumentParser, model) -> None:
    """The model's task options as flags (``top_k`` -> ``--top-k``), parsed as text and checked by
    the Option itself, so a bad value is one line naming the flag and what it expects."""
    from .errors import PluginError

    task = model.metadata.task
    g = p.add_argument_group(f"options of this {task} model (declared by its task runtime)")
    for option in model.options:
        shown = "" if option.default is None else f"; default {option.default}"
        text = f"{option.help} ({option.expected()}{shown})".replace("%", "%%")  # argparse %-formats help
        kwargs = ({"action": argparse.BooleanOptionalAction} if option.type is bool
                  else {"metavar": option.type.__name__.upper()})
        try:
            g.add_argument(option.flag, dest=_option_dest(option), default=None, help=text, **kwargs)
        except argparse.ArgumentError:
            raise PluginError(f"the {task} runtime's option {option.name!r}: {option.flag} is one of predict's own "
                              "flags; the runtime must name it otherwise") from None


class _Unparsable(Exception):
    pass


class _QuietParser(argparse.ArgumentParser):
    def error(self, message):
        raise _Unparsable(message)


def _predict_model_of(argv: list[str]):
    """For ``predict``: its model, loaded before the full parse, because the flags it takes come
    from the model's task runtime; None for other commands, or when no model is named yet (the
    full parse then reports what is missing)."""
    rest = list(argv)
    while rest and rest[0].startswith("-"):  # global flags (--debug) take no value
        rest.pop(0)
    if not rest or rest[0] != "predict":
        return None
    peek = _QuietParser(add_help=False)
    _predict_arguments(peek, lenient=True)
    try:
        args, _ = peek.parse_known_args([a for a in rest[1:] if a not in ("-h", "--help")])
    except _Unparsable:
        return None
    if not args.model:
        return None
    if not Path(args.model).is_file():  # a task flag before MODEL took its place: MODEL.onnx is further on
        args.model = next((a for a in rest[1:] if a.lower().endswith(".onnx") and Path(a).is_file()), args.model)
    return _load_predict_model(args)


def _refuse_stray_predict_flags(model, extra: list[str]) -> None:
    """A flag the model's task does not declare: one line naming it and the accepted ones,
    instead of argparse's usage text (or, worse, being ignored)."""
    flag = next((a for a in extra if a.startswith("-")), extra[0]).split("=", 1)[0]
    if model is None:
        raise UserError(f"predict: unrecognized argument {flag}")
    accepted = ", ".join(o.flag for o in model.options) or "none"
    raise UserError(f"predict: {flag}: a {model.metadata.task} model takes no such option (its options: {accepted}; "
                    f"see visionkit predict {model.path} --help)")


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
    if args.kind == "classification" and args.format != "coco":
        raise UserError(f"data synth classification: --format {args.format} applies to scenes (classification "
                        "data is an ImageFolder tree)")
    if args.kind == "classification":
        synth.classification(out, args.num_train or 1600, args.num_val or 400, args.size or 32, args.seed)
    else:
        synth.scenes(out, args.num_train or 400, args.num_val or 100, args.size or 128, args.seed, format=args.format)
    print(f"[visionkit] wrote {args.kind} shapes data to {out}" + (f" ({args.format})" if args.kind == "scenes" else ""))
    return 0


def _cmd_data_check(args) -> int:
    from .datacheck.commands import run_check

    return run_check(args.config, list(args.overrides), args.limit, args.decode)


def _cmd_data_show(args) -> int:
    from .datacheck.commands import run_show

    return run_show(args.config, list(args.overrides), args.output, args.split, args.augmented, args.n)


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


def _cmd_weights(args) -> int:
    """torchvision's published weights in torch's cache: the one other command that downloads."""
    from . import pretrained

    if args.weights_command == "fetch":
        path = pretrained.fetch(args.model, args.name, base=args.mirror)
        print(f"[visionkit] {args.model} {args.name}: {path} (sha256 checked); on an air-gapped machine copy it into "
              "$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints)")
        return 0
    print(f"weights cache: {pretrained.cache_dir()}")
    for path, what in pretrained.cached_files():
        print(f"  {path.name}  {path.stat().st_size / 1e6:.1f} MB  {what or '(no built-in model uses it)'}")
    groups = pretrained.builtin_models()
    for task, models in groups.items():
        chosen = [m for m in models if not args.models or m in args.models]
        if chosen:
            print(f"{task} (model.pretrained: NAME; fetch with `visionkit weights fetch MODEL NAME`):")
        for model in chosen:
            print(f"  {pretrained.describe(model)}")
    unknown = [m for m in args.models if not any(m in models for models in groups.values())]
    for model in unknown:
        print(f"model {model} has no published weights")
    return 0


def _input_size(text: str) -> list[int]:
    """--input-size: ``S`` or ``HxW``, positive integers."""
    parts = text.lower().replace("x", " ").split()
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"predict: --input-size {text!r}: expected S or HxW in pixels, e.g. 224 or 480x640")
    return [int(p) for p in parts]


def _cmd_serve(args) -> int:
    """Torch-free, like predict: the server process imports visionkit.runtime and Starlette only."""
    from .serving.limits import Limits
    from .serving.server import require_packages, serve

    require_packages()
    try:
        limits = Limits.from_units(args.max_body_mb, args.max_megapixels, args.max_images, args.max_pending,
                                   args.body_timeout, args.max_request_megapixels)
    except ValueError as exc:
        raise UserError(f"serve: {exc}") from None
    serve(args.model, host=args.host, port=args.port, threads=args.threads, workers=args.workers,
          max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, limits=limits, log_level=args.log_level)
    return 0


def build_parser(predict_model=None) -> argparse.ArgumentParser:
    """``predict_model``: the model ``predict`` will run; its task's option flags are added."""
    parser = argparse.ArgumentParser(prog="visionkit", description="Train, evaluate and export vision models on Ray.")
    parser.add_argument("--version", action="version", version=f"visionkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a YAML config (on Ray workers)")
    p.add_argument("config", nargs="?", help="configs/<task>/<name>.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=5")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped run from its last checkpoint (a directory, or s3://bucket/prefix/RUN)")
    p.add_argument("--address", help="Ray cluster address, HOST:PORT of the head (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--debug-local", action="store_true",
                   help="run the loop in this process, without Ray workers: tracebacks and breakpoints work")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("tune", help="search hyperparameters on Ray Tune (the config's tune: section), each trial "
                       "a whole run on Ray workers of its own")
    p.add_argument("config", nargs="?", help="a config with a tune: section")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. tune.num_samples=16")
    p.add_argument("--resume", metavar="TUNE_DIR", help="finish a stopped search (a directory, or s3://bucket/prefix/NAME); "
                   "finished trials are not run again")
    p.add_argument("--address", help="Ray cluster address, HOST:PORT of the head (default: $RAY_ADDRESS, else a local Ray)")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("eval", help="evaluate a run's best checkpoint (or a .pt file) and write JSON")
    p.add_argument("target", help="RUN_DIR, CHECKPOINT.pt or MODEL.onnx (an exported model, run by onnxruntime)")
    p.add_argument("overrides", nargs="*", help="e.g. data.root=/other/data to evaluate on other data")
    p.add_argument("--data", metavar="ROOT", help="the dataset root (data.root); an .onnx model otherwise uses the "
                   "data section recorded at export")
    p.add_argument("--workers", type=int, default=0, help="Ray workers (default 0: in this process)")
    p.add_argument("-o", "--output", help="JSON file (default: RUN_DIR/eval.json, or MODEL.eval.json)")
    p.add_argument("--address", help="Ray cluster address")
    p.add_argument("--batch-size", type=int, default=8, help=".onnx: images per onnxruntime call")
    p.add_argument("--threads", type=int, help=".onnx: onnxruntime threads (default: all cores)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("report", help="write RUN_DIR/report.html: the run, its curves, where the model is wrong, "
                       "its config (one self-contained page)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (or s3://bucket/prefix/RUN)")
    p.add_argument("--data", metavar="ROOT", help="the dataset root (data.root), if the run's has moved")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("export", help="export a run's model to ONNX, checked against PyTorch on validation images")
    p.add_argument("target", help="RUN_DIR or CHECKPOINT.pt")
    p.add_argument("overrides", nargs="*", help="data.* overrides for the checks, e.g. data.root=/data/here")
    p.add_argument("-o", "--output", help="model file (default: RUN_DIR/model.onnx; model.int8.onnx ...)")
    p.add_argument("--data", metavar="ROOT", help="the dataset root (data.root), if the run's has moved")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 13-20 (default 17)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="int8: static quantization calibrated on training images; fp16: for GPUs")
    p.add_argument("--logits", action="store_true", help="segmentation: also output the per-pixel logits")
    p.add_argument("--check-images", type=int, default=32, help="validation images for the parity check")
    p.add_argument("--calibration-images", type=int, default=64, help="int8: training images to calibrate on")
    p.add_argument("--max-metric-drop", type=float, default=2.0,
                   help="fp16/int8: largest allowed drop of the validation metric, in points (default 2)")
    p.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=None,
                   help="attach the model and its report to the run's MLflow run (default: when the run was tracked "
                   "with tracking.mlflow, warning if that fails; --mlflow: required; --no-mlflow: never)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", help="run an exported .onnx model on images (onnxruntime, no torch)",
                       epilog="A model's own options (--top-k for classification, --score-thresh for detection, a "
                       "plugin task's own) are declared by its task runtime: `visionkit predict MODEL.onnx --help` "
                       "lists them.")
    _predict_arguments(p)
    if predict_model is not None:
        _task_option_arguments(p, predict_model)
    p.set_defaults(func=_cmd_predict, loaded_model=predict_model)

    p = sub.add_parser("plugins", help="list the installed task plugins and where they come from")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("data", help="check or look at a config's data; built-in data: synthetic shapes, MNIST files")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    s = data_sub.add_parser("synth", help="write the synthetic shapes data set (deterministic by seed)")
    s.add_argument("kind", choices=["classification", "scenes"],
                   help="classification: ImageFolder; scenes: COCO json + mask PNGs (detection, segmentation)")
    s.add_argument("out", help="output folder")
    s.add_argument("--num-train", type=int)
    s.add_argument("--num-val", type=int)
    s.add_argument("--size", type=int, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=["coco", "yolo", "voc"], default="coco",
                   help="scenes: coco (instances JSON + mask PNGs), yolo (Ultralytics txt + data.yaml) or voc (XML)")
    s.set_defaults(func=_cmd_synth)
    c = data_sub.add_parser("check", help="check a config's dataset before training: every annotation, image "
                            "headers and sizes, duplicates, train/val overlap, class histogram (exit 2 on errors)")
    c.add_argument("config", help="a training config")
    c.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.root=/data/other")
    c.add_argument("--limit", type=int, default=20000,
                   help="images read per split, evenly spread, on larger sets (default 20000; 0: all)")
    c.add_argument("--decode", action="store_true", help="decode every pixel too (slower; finds truncated JPEGs)")
    c.set_defaults(func=_cmd_data_check)
    w = data_sub.add_parser("show", help="draw a grid of samples with their labels (boxes, masks, classes)")
    w.add_argument("config", help="a training config")
    w.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    w.add_argument("-o", "--output", default="samples.png", help="PNG file (default samples.png)")
    w.add_argument("--split", choices=["train", "val"], default="train")
    w.add_argument("--augmented", action="store_true",
                   help="through the split's transform: what the model sees (train: the training augmentation)")
    w.add_argument("-n", type=int, default=16, help="samples, evenly spread over the split (default 16)")
    w.set_defaults(func=_cmd_data_show)
    m = data_sub.add_parser("mnist", help="download the MNIST IDX files (the only command that downloads)")
    m.add_argument("out")
    m.add_argument("--mirror", default="https://ossci-datasets.s3.amazonaws.com/mnist")
    m.set_defaults(func=_cmd_mnist)

    p = sub.add_parser("weights", help="torchvision's published weights in torch's cache (model.pretrained): list "
                       "them, or fetch them on a machine with a network")
    weights_sub = p.add_subparsers(dest="weights_command", metavar="WEIGHTS_COMMAND", required=True)
    w = weights_sub.add_parser("list", help="what is cached, and the weights each built-in model offers")
    w.add_argument("models", nargs="*", help="only these models (default: all)")
    w.set_defaults(func=_cmd_weights)
    w = weights_sub.add_parser("fetch", help="download a model's published weights into the cache, sha256 checked")
    w.add_argument("model", help="a torchvision architecture, e.g. resnet50, fasterrcnn_resnet50_fpn")
    w.add_argument("name", nargs="?", default="DEFAULT", help="its weights, e.g. IMAGENET1K_V2 (default DEFAULT)")
    w.add_argument("--from", dest="mirror", metavar="URL",
                   help="a mirror's base URL instead of torchvision's (default: $VISIONKIT_WEIGHTS_URL if set)")
    w.set_defaults(func=_cmd_weights)

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
    p.add_argument("--max-request-megapixels", type=float, default=40.0,
                   help="pixels of all a request's images together, read from their headers before decoding "
                   "(default 40 MP: a few hundred MB decoded; at least --max-megapixels): 413")
    p.add_argument("--max-pending", type=int, default=64, help="requests in flight before 503 (default 64)")
    p.add_argument("--body-timeout", type=int, default=30, help="seconds to receive a request body (default 30): 408")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="uvicorn's log level (info: one line per request)")
    p.set_defaults(func=_cmd_serve)
    return parser


def _report(exc: Exception, debug: bool) -> int:
    """A user's mistake as one line on stderr, and its exit status."""
    if debug:
        raise exc
    if isinstance(exc, UserError):
        print(f"visionkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    # OSError: a file the user named cannot be written or read (read-only folder, a file where
    # a folder should be, disk full): say which, without a traceback.
    where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
    print(f"visionkit: error: {where}{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
    return 2


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # predict's flags depend on its model's task: the model is loaded before the full parse
        predict_model = _predict_model_of(argv)
    except (UserError, OSError) as exc:
        return _report(exc, "--debug" in argv)
    parser = build_parser(predict_model)
    # Overrides may also follow flags (`train CONFIG --debug-local key=value`): argparse stops
    # filling a positional list at the first flag, so the rest arrive as unknown arguments.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "predict":
        try:
            _refuse_stray_predict_flags(predict_model, extra)
        except UserError as exc:
            return _report(exc, args.debug)
    if extra:
        stray = [a for a in extra if a.startswith("-") or "=" not in a]
        if stray or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.overrides = list(args.overrides) + extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (UserError, OSError) as exc:
        return _report(exc, args.debug)
    except KeyboardInterrupt:
        print("visionkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
