#!/usr/bin/env bash
# GPU smoke test: use_gpu, AMP fp16 with a grad scaler, the NCCL process group; a short run of
# each task on one Ray worker per GPU (ray.num_workers: auto), then `visionkit eval` of the
# classifier; the last line is each demo's training throughput with AMP (images/s, best epoch). Run it from the
# repo root on a CUDA machine where visionkit is installed; results go in benchmarks/README.md.
#     bash benchmarks/gpu_smoke.sh [OUT_DIR]
set -euo pipefail
PY=${PYTHON:-python3}
out=${1:-/tmp/vk-gpu}
vk() { "$PY" -m visionkit.cli "$@"; }
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
vk data synth classification "$out/shapes_cls"
vk data synth scenes "$out/scenes"
# TorchTrainer starts the NCCL backend when use_gpu is set; the first line of each run names it.
gpu=(ray.num_workers=auto ray.use_gpu=true train.amp=fp16
     train.progress=false train.loader_workers=2 "output.storage_path=$out/runs")
vk train configs/classification/shapes.yaml "data.root=$out/shapes_cls" "${gpu[@]}" train.epochs=4 train.batch_size=64 output.name=cls
vk eval "$out/runs/cls" -o "$out/cls_eval.json"
vk train configs/detection/shapes.yaml "data.root=$out/scenes" "${gpu[@]}" train.epochs=3 train.batch_size=16 output.name=det
vk train configs/segmentation/shapes.yaml "data.root=$out/scenes" "${gpu[@]}" train.epochs=3 train.batch_size=16 output.name=seg
"$PY" - "$out" <<'PY'
import json, sys, torch
out = sys.argv[1]
for name in ("cls", "det", "seg"):
    state = torch.load(f"{out}/runs/{name}/checkpoints/last.pt", weights_only=True)
    rows = [json.loads(line) for line in open(f"{out}/runs/{name}/metrics.jsonl")]
    last = rows[-1]
    vals = {k: round(v, 4) for k, v in last.items() if k.startswith("val/") and isinstance(v, float)}
    print(f"{name}: epochs {len(rows)}, grad-scaler scale {state['scaler'].get('scale')}, "
          f"{last['train/images_per_s']:.0f} img/s, {vals}")
print("eval:", {k: v for k, v in json.load(open(f"{out}/cls_eval.json")).items() if k in ("top1", "num_images")})
best = {name: max(json.loads(line)["train/images_per_s"] for line in open(f"{out}/runs/{name}/metrics.jsonl"))
        for name in ("cls", "det", "seg")}
print(f"throughput, AMP fp16, {torch.cuda.device_count()} GPU(s) visible, best epoch: "
      + ", ".join(f"{name} {ips:.0f} img/s" for name, ips in best.items()))
PY
