"""The segmentation peer: a plain torchvision LR-ASPP script on the scenes' mask PNGs (peers.py).

lraspp_mobilenet_v3_large from scratch (no weights, no backbone weights), cross-entropy (with the
demo's per-class weights when given), AdamW (no weight decay on norms and biases), linear warmup
then cosine, set every step. After every epoch: mIoU over all classes, background included, from
one confusion matrix, classes with an empty union left out of the mean (visionkit's metric).
One JSON line per event goes to --log: {"event": "first_step"|"epoch", "unix": ..., ...}.
"""

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

p = argparse.ArgumentParser()
p.add_argument("--root", required=True, help="images/{split}/*.png, masks/{split}/*.png, classes.txt")
p.add_argument("--log", required=True)
p.add_argument("--epochs", type=int, default=20)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--lr", type=float, default=0.003)
p.add_argument("--weight-decay", type=float, default=1e-4)
p.add_argument("--warmup-epochs", type=float, default=1.0)
p.add_argument("--warmup-start-factor", type=float, default=0.1)
p.add_argument("--class-weights", type=float, nargs="*", default=None)
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
torch.set_num_threads(os.cpu_count())
torch.manual_seed(args.seed)
log = open(args.log, "a")
root = Path(args.root)
classes = [c.strip() for c in (root / "classes.txt").read_text().splitlines() if c.strip()]
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def emit(**row):
    log.write(json.dumps({"unix": time.time(), **row}) + "\n")
    log.flush()


def load(split):
    """Every image and mask decoded once (400 + 100 small PNGs); images normalised."""
    files = sorted((root / "images" / split).glob("*.png"))
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).permute(0, 3, 1, 2)
    y = torch.from_numpy(np.stack([np.asarray(Image.open(root / "masks" / split / f.name)) for f in files]))
    return (x.float() / 255 - MEAN) / STD, y.long()


x_train, y_train = load("train")
x_val, y_val = load("val")
K = len(classes)
model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=K)
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": args.weight_decay},
                               {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=args.lr)
weight = torch.tensor(args.class_weights) if args.class_weights else None
steps = math.ceil(len(x_train) / args.batch_size)


def lr_at(progress):  # progress in epochs: linear warmup, then cosine to 0 at the last step
    if progress < args.warmup_epochs:
        return args.lr * (args.warmup_start_factor + (1 - args.warmup_start_factor) * progress / args.warmup_epochs)
    t = min(1.0, (progress - args.warmup_epochs) / max(args.epochs - args.warmup_epochs, 1e-9))
    return args.lr * 0.5 * (1 + math.cos(math.pi * t))


for epoch in range(args.epochs):
    model.train()
    order = torch.randperm(len(x_train))
    for i in range(steps):
        index = order[i * args.batch_size:(i + 1) * args.batch_size]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(epoch + i / steps)
        loss = F.cross_entropy(model(x_train[index])["out"], y_train[index], weight=weight, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if epoch == 0 and i == 0:
            emit(event="first_step")
    model.eval()
    confusion = torch.zeros(K * K, dtype=torch.int64)  # rows: ground truth, columns: prediction
    with torch.no_grad():
        for j in range(0, len(x_val), 16):
            pred, target = model(x_val[j:j + 16])["out"].argmax(1), y_val[j:j + 16]
            valid = target != 255
            confusion += torch.bincount(target[valid] * K + pred[valid], minlength=K * K)
    confusion = confusion.view(K, K).double()
    tp, union = confusion.diag(), confusion.sum(0) + confusion.sum(1) - confusion.diag()
    iou = tp[union > 0] / union[union > 0]
    emit(event="epoch", epoch=epoch, metric=float(iou.mean()), pixel_acc=float(tp.sum() / confusion.sum()),
         iou_per_class=[float(v) if u > 0 else None for v, u in zip(tp / union.clamp(min=1), union)], loss=float(loss))
