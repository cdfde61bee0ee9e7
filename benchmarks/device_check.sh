#!/usr/bin/env bash
# The device check on one GPU (under 8 minutes), or `--cpu-smoke` on a CPU (under 2 minutes).
# Run from the repository root: benchmarks/device_check.sh [--cpu-smoke]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
exec timeout 480 "$PY" benchmarks/device_check.py "$@"
