#!/usr/bin/env bash
# One-GPU check (issue 17): bf16 + torch.compile + activation checkpointing on `small` and a ~1B-active
# MoE, tokens/s, MFU and peak memory, bf16 grouped_mm against the fp32 path; writes benchmarks/gpu.md.
#
#     bash benchmarks/gpu_check.sh          # from the repo root, after `make setup`
#
# Installs nothing: it uses the project's virtual environment (.venv, or $PYTHON). Without a GPU (or
# without torch) it says why and exits 0. Each phase has its own time budget inside gpu_check.py
# (7 minutes in all); the whole check is cut at 470 s so that it ends within 8 minutes.
set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
    echo "gpu_check: no Python at $PY (run make setup first, or set PYTHON): nothing measured"
    exit 0
fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "gpu_check: $PY has no torch (run make setup first): nothing measured"
    exit 0
fi
export PYTHONUNBUFFERED=1
timeout --signal=INT --kill-after=10 470 "$PY" benchmarks/gpu_check.py "$@"
status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 130 ]; then
    echo "gpu_check: stopped at its 470 s limit; benchmarks/gpu.md holds the phases that finished"
fi
exit "$status"
