#!/usr/bin/env bash
# One-shot GPU benchmark (issue #16): every method on resnet50, batched vs naive insertion/deletion, IG2 fused vs
# two-pass, MFABA against the paper, the monitor's overhead on a resnet18 fit; one table, under 8 minutes on one
# GPU. Without CUDA it says so and exits with status 0.
#   bash benchmarks/gpu.sh                 # from the repository root, after `make install`
#   bash benchmarks/gpu.sh --skip monitor  # options of benchmarks/gpu_report.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export WANDB_MODE=${WANDB_MODE:-disabled}
exec "$PYTHON" benchmarks/gpu_report.py "$@"
