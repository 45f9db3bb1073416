"""The detection peer: Ultralytics YOLOv8n from scratch on the scenes in YOLO format (peers.py).

Runs in benchmarks/.venv-peers (Ultralytics is never a project dependency), on a data.yaml that
benchmarks/_yolo.py wrote from the same COCO json visionkit reads.

Training is Ultralytics' own recipe (`YOLO("yolov8n.yaml").train(...)`: its optimizer choice,
schedule, warmup, mosaic and other augmentation, nominal batch 64 by gradient accumulation, its own
validation after every epoch, EMA weights), with these settings only: imgsz, batch, epochs,
pretrained=False, amp=False, plots=False, device=cpu, seed, and save_period=1 so that every
epoch's EMA weights land in weights/epoch{N}.pt. Torch threads: --threads (default: all cores;
Ultralytics' own default on a CPU is cores - 1, which is 1 on a 2-core machine).

Timing: a callback stamps the wall clock after the first training batch and at the end of every
epoch (`on_fit_epoch_end`: after Ultralytics' own validation and checkpoint save). Scoring: after
training (so not inside the timed curve), each epoch's checkpoint predicts the val images (conf
0.001, NMS IoU 0.7, at most 100 boxes per image: Ultralytics' validation settings with COCO's
100-detection cap) and pycocotools scores them against the same COCO json as visionkit's metric.

Nothing is downloaded: YOLO_OFFLINE=true (no online check, no pip-update check, no telemetry),
settings sync=False, matplotlib's DejaVuSans copied into Ultralytics' config dir as Arial.ttf
(its dataset check downloads Arial.ttf otherwise: the one attempt the smoke run caught), the
model built from the packaged yolov8n.yaml, pretrained=False, amp=False (the AMP check fetches
yolo11n.pt; it runs on CUDA only anyway). To prove it, every DNS lookup and socket connection
to a non-loopback address raises at once (no hang) and is logged with the Ultralytics line that
asked; the last log line lists them ("network_attempts") and peers.py prints a warning if any.

One JSON line per event goes to --log: {"event": "first_step"|"epoch"|"train_end"|"done", "unix": ...}.
"""

import argparse
import json
import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--data-yaml", required=True)
p.add_argument("--coco-val", required=True, help="the val split's COCO json (the ground truth for pycocotools)")
p.add_argument("--val-images", required=True, help="folder of the val images named in --coco-val")
p.add_argument("--log", required=True)
p.add_argument("--project", required=True, help="folder for Ultralytics' run and config dir")
p.add_argument("--epochs", type=int, default=40)
p.add_argument("--imgsz", type=int, default=128)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--threads", type=int, default=os.cpu_count())
p.add_argument("--seed", type=int, default=0)
p.add_argument("--score-every", type=int, default=1, help="score every k-th epoch's checkpoint (the last always)")
p.add_argument("--train-arg", action="append", default=[], help="extra KEY=VALUE for YOLO.train (YAML value)")
args = p.parse_args()
log = open(args.log, "a")


def emit(unix=None, **row):
    log.write(json.dumps({"unix": unix or time.time(), **row}) + "\n")
    log.flush()


# --- no network: fail fast and record, never hang ---------------------------------------------
NETWORK_ATTEMPTS = []
LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0"}
_getaddrinfo, _connect, _connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex


def _guard_host(host):
    host = host.decode() if isinstance(host, bytes) else host
    if host not in LOCAL_HOSTS and not str(host).startswith("127."):
        caller = next((f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(traceback.extract_stack())
                       if "ultralytics" in f.filename), "?")  # the Ultralytics code that asked
        NETWORK_ATTEMPTS.append(f"{host} from {caller}")
        print(f"[peer_yolo] blocked a network access: {NETWORK_ATTEMPTS[-1]}", file=sys.stderr, flush=True)
        raise socket.gaierror(socket.EAI_NONAME, f"network blocked by peer_yolo.py ({host})")


def getaddrinfo(host, *a, **k):
    _guard_host(host)
    return _getaddrinfo(host, *a, **k)


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _guard_host(address[0])
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _guard_host(address[0])
    return _connect_ex(self, address)


socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = getaddrinfo, connect, connect_ex

# --- Ultralytics, configured before its import -------------------------------------------------
project = Path(args.project).resolve()
config_dir = project / "yolo-config"
config_dir.mkdir(parents=True, exist_ok=True)
os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
os.environ["YOLO_OFFLINE"] = "true"
os.environ["OMP_NUM_THREADS"] = str(args.threads)  # Ultralytics sets 1 at import when unset
import matplotlib  # noqa: E402  (an Ultralytics dependency; ships DejaVuSans)
import torch  # noqa: E402
import ultralytics.utils.torch_utils as torch_utils  # noqa: E402
from ultralytics import YOLO, settings  # noqa: E402
from ultralytics.utils import USER_CONFIG_DIR  # noqa: E402  ($YOLO_CONFIG_DIR/Ultralytics)

for name in ("Arial.ttf", "Arial.Unicode.ttf"):  # what check_font() looks for before downloading
    if not (USER_CONFIG_DIR / name).exists():
        shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", USER_CONFIG_DIR / name)
settings.update({"sync": False})
torch_utils.NUM_THREADS = args.threads  # select_device() calls torch.set_num_threads(NUM_THREADS) on a CPU
torch.set_num_threads(args.threads)

stamps = {}


def on_train_batch_end(trainer):
    if "first_step" not in stamps:
        stamps["first_step"] = time.time()
        emit(event="first_step", unix=stamps["first_step"], threads=torch.get_num_threads())


def on_fit_epoch_end(trainer):
    if trainer.epoch < trainer.epochs and trainer.epoch not in stamps:  # final_eval calls it once more
        stamps[trainer.epoch] = time.time()
        emit(event="yolo_epoch", epoch=trainer.epoch, unix=stamps[trainer.epoch],
             yolo_metrics={k: float(v) for k, v in trainer.metrics.items()})


def on_train_start(trainer):
    emit(event="train_args", args={k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                                   for k, v in vars(trainer.args).items()})


import yaml  # noqa: E402  (Ultralytics dependency)

extra = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.train_arg)}
shutil.rmtree(project / "yolo", ignore_errors=True)  # no checkpoint of an earlier run is ever scored
model = YOLO("yolov8n.yaml")
model.add_callback("on_train_start", on_train_start)
model.add_callback("on_train_batch_end", on_train_batch_end)
model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
train_args = dict(data=args.data_yaml, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device="cpu",
                  pretrained=False, amp=False, plots=False, save_period=1, seed=args.seed, project=str(project),
                  name="yolo", exist_ok=True)
model.train(**{**train_args, **extra})
emit(event="train_end")  # after Ultralytics' final validation of best.pt

# --- score each epoch's checkpoint with pycocotools (outside the timed curve) -----------------
import contextlib  # noqa: E402
import io  # noqa: E402

from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO(args.coco_val)
cat_ids = sorted(coco.getCatIds())
image_ids = {Path(img["file_name"]).name: img["id"] for img in coco.dataset["images"]}
paths = [str(Path(args.val_images) / img["file_name"]) for img in coco.dataset["images"]]
weights = project / "yolo" / "weights"
epochs = sorted(e for e in stamps if isinstance(e, int))
for e in epochs:
    if e % args.score_every and e != epochs[-1]:
        continue
    tic = time.time()
    results = []
    predictions = YOLO(str(weights / f"epoch{e}.pt")).predict(
        paths, imgsz=extra.get("imgsz", args.imgsz), conf=0.001, iou=0.7, max_det=100, device="cpu", batch=16,
        stream=True, verbose=False)
    for r in predictions:
        image_id = image_ids[Path(r.path).name]
        for (x0, y0, x1, y1), score, cls in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist()):
            results.append({"image_id": image_id, "category_id": cat_ids[int(cls)], "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dets = coco.loadRes(results)
        else:  # loadRes rejects an empty list; no detections scores 0 (as visionkit's metric does)
            dets = COCO()
            dets.dataset = {**coco.dataset, "annotations": []}
            dets.createIndex()
        ev = COCOeval(coco, dets, "bbox")
        ev.params.imgIds = sorted(image_ids.values())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    emit(event="epoch", epoch=e, unix=stamps[e], metric=float(ev.stats[1]), mAP=float(ev.stats[0]),
         mAP50=float(ev.stats[1]), detections=len(results), score_s=round(time.time() - tic, 2))
emit(event="done", network_attempts=NETWORK_ATTEMPTS)
