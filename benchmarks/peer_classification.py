"""The classification peer: a plain torchvision script with the demo's recipe (benchmarks/peers.py).

ResNet-18 from scratch, AdamW (no weight decay on norms and biases), linear warmup then cosine,
set every step; random horizontal + vertical flips; top-1 on the val split after every epoch.
One JSON line per event goes to --log: {"event": "first_step"|"epoch", "unix": ..., ...}.
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument("--root", required=True)
p.add_argument("--log", required=True)
p.add_argument("--epochs", type=int, default=12)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--lr", type=float, default=0.003)
p.add_argument("--weight-decay", type=float, default=0.05)
p.add_argument("--warmup-epochs", type=float, default=1.0)
p.add_argument("--warmup-start-factor", type=float, default=0.1)
p.add_argument("--image-size", type=int, default=0, help="resize to a square (0: as stored)")
p.add_argument("--mean", type=float, nargs=3, default=[0.5, 0.5, 0.5])
p.add_argument("--std", type=float, nargs=3, default=[0.25, 0.25, 0.25])
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
torch.set_num_threads(os.cpu_count())
torch.manual_seed(args.seed)
log = open(args.log, "a")


def emit(**row):
    log.write(json.dumps({"unix": time.time(), **row}) + "\n")
    log.flush()


def load(split):
    """The ImageFolder decoded once into one normalised tensor (the demo caches images too)."""
    ds = torchvision.datasets.ImageFolder(os.path.join(args.root, split))
    images = [Image.open(path).convert("RGB") for path, _ in ds.samples]
    if args.image_size:
        images = [im.resize((args.image_size,) * 2, Image.BILINEAR) for im in images]
    x = torch.stack([torchvision.transforms.functional.pil_to_tensor(im) for im in images]).float() / 255
    mean, std = torch.tensor(args.mean).view(1, 3, 1, 1), torch.tensor(args.std).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(ds.targets), ds.classes


x_train, y_train, classes = load("train")
x_val, y_val, _ = load("val")
model = torchvision.models.resnet18(weights=None, num_classes=len(classes))
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": args.weight_decay},
                               {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=args.lr)
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
        x, y = x_train[index], y_train[index]
        flip = torch.rand(len(x)) < 0.5
        x[flip] = x[flip].flip(3)  # horizontal (x is a copy: indexing with a tensor copies)
        flip = torch.rand(len(x)) < 0.5
        x[flip] = x[flip].flip(2)  # vertical
        for group in optimizer.param_groups:
            group["lr"] = lr_at(epoch + i / steps)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if epoch == 0 and i == 0:
            emit(event="first_step")
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x_val[j:j + 256]).argmax(1) == y_val[j:j + 256]).sum())
                      for j in range(0, len(x_val), 256))
    emit(event="epoch", epoch=epoch, metric=correct / len(x_val), loss=float(loss))
