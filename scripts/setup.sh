#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment with the CPU build of
# PyTorch 2.13.0 (taken from local disk where available; never a CUDA build), then
# lowprec itself with its test extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first and pinned, so that nothing below can pull another (multi-GB CUDA) build
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import torch, lowprec; print('lowprec', lowprec.__version__, 'torch', torch.__version__)"
