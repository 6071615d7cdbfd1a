#!/usr/bin/env bash
# Run THERE (the device machine, its own python3: torch 2.11 / torchvision 0.26, not this project's pins),
# after benchmarks/device/prepare.sh here:
#   run(command="bash benchmarks/device/run.sh", carry=[".whl", ".devdata"], timeout_s=560)
# 1. the tests marked cuda (each CUDA-only path), 2. benchmarks/gpu_speed.py on the carried subset;
# everything under $OUT comes back (gpu_speed.json, the logs). Budget: ~8 minutes in all.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD"
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())" \
    | tee -a "$OUT/device.txt"
timeout 150 python3 -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tail -30 | tee "$OUT/cuda_tests.txt"
timeout 330 python3 benchmarks/gpu_speed.py --device cuda --data .devdata --epochs ${EPOCHS:-6} --out "$OUT/gpu_speed" \
    2>&1 | tee "$OUT/gpu_speed.txt"
cp "$OUT/gpu_speed/gpu_speed.json" "$OUT/" 2>/dev/null || true
