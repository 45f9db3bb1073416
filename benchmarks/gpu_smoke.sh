#!/usr/bin/env bash
# GPU smoke test: use_gpu, AMP fp16 with a grad scaler, NCCL process group, one epoch on Ray.
# Run on a machine with a CUDA GPU from the repo root after `pip install -e .`; record its output
# in benchmarks/README.md.
set -euo pipefail
out=${1:-/tmp/vk-gpu}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print('GPU:', torch.cuda.get_device_name(0))"
python -m visionkit.cli data synth classification "$out/shapes"
# One Ray worker per GPU: TorchTrainer uses the NCCL backend when use_gpu is set.
python -m visionkit.cli train configs/classification/shapes.yaml "data.root=$out/shapes" \
  ray.num_workers=1 ray.use_gpu=true "ray.resources_per_worker={CPU: 2, GPU: 1}" \
  train.amp=fp16 train.epochs=1 train.batch_size=128 train.progress=false \
  "output.storage_path=$out/runs" output.name=gpu-smoke
python -m visionkit.cli eval "$out/runs/gpu-smoke" -o "$out/eval.json"
python - "$out" <<'PY'
import json, sys, torch
state = torch.load(f"{sys.argv[1]}/runs/gpu-smoke/checkpoints/last.pt", weights_only=True)
print("grad scaler scale after one fp16 epoch:", state["scaler"].get("scale"))
print("eval:", {k: v for k, v in json.load(open(f"{sys.argv[1]}/eval.json")).items() if k in ("top1", "num_images")})
PY
