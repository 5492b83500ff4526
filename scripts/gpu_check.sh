#!/usr/bin/env bash
# The prepared GPU check (see scripts/gpu_check.py): device tests, distributed tests (NCCL when
# the machine has two GPUs or more), the scale benchmark on CUDA, one table at the end.
#
#   scripts/gpu_check.sh [--shapes gpt2-0.1m,...] [--skip scale] [--cpu-smoke]
#
# Picks the first Python that imports torch with CUDA (the repository's .venv, then python3);
# without one it runs the CPU smoke version. Results go to $OUT (or ./gpu-check-out).
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  local candidate
  for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "error: no Python with torch found" >&2
  exit 2
}

PYTHON="$(pick_python)"
export OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
echo "[gpu_check] $PYTHON: $("$PYTHON" -c 'import torch; print(torch.__version__, "cuda" if torch.cuda.is_available() else "cpu", torch.cuda.device_count())')"
exec "$PYTHON" scripts/gpu_check.py --out "$OUT" "$@"
