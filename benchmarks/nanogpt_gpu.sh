#!/usr/bin/env bash
# The nanogpt experiment on a CUDA GPU, as one script: a 60 s run of the default (train.py scales
# itself up on a GPU), then a larger model, each trained and scored as the harness does
# (benchmarks/nanogpt_runs.py). The corpus must be prepared: `python examples/nanogpt/prepare.py`,
# or AUTORESEARCH_CACHE pointing at a prepared cache (the GPU machine may have no network).
#
#   bash benchmarks/nanogpt_gpu.sh [OUT_DIR]         # BUDGET=60 by default; PYTHON=python3
#
# OUT_DIR gets gpu.txt (device, driver, torch), runs.jsonl (one JSON line per run) and logs/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
budget=${BUDGET:-60}
py=${PYTHON:-python3}
mkdir -p "$out/logs"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: none"
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
} 2>&1 | tee "$out/gpu.txt"

run() {  # one run of train.py + evaluate.py with the given hyperparameters; a hung run cannot eat the rest
  timeout $((budget * 2 + 150)) $py benchmarks/nanogpt_runs.py --budget "$budget" --seeds 0 \
    --out "$out/runs.jsonl" --logs "$out/logs" "$@"
}
run                                                   # default: GPU_DEPTH 4, GPU_WIDTH 384, GPU_BATCH_SIZE 128
run --set GPU_DEPTH=8 GPU_WIDTH=768 GPU_BATCH_SIZE=64  # a larger model
