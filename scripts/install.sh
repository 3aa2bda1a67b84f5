#!/usr/bin/env bash
# Install segbench into the active Python environment.
#   bash scripts/install.sh         the package
#   bash scripts/install.sh --dev   the package and the test tools
# torch first, on purpose: a torch that is already installed (say a CUDA build) is kept; on a
# machine with an NVIDIA driver the registry's default (CUDA) build is installed; elsewhere the
# CPU build 2.13.0 (set SEGBENCH_TORCH_INDEX to a CPU wheel index where the registry has only
# CUDA builds). pip then only checks that torch is there, so no multi-GB CUDA wheels land on a
# CPU-only machine.
set -euo pipefail
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
here=$(cd "$(dirname "$0")/.." && pwd)

if python -c "import torch" 2>/dev/null; then
  echo "install: keeping torch $(python -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  python -m pip install torch
else
  python -m pip install "torch==2.13.0" ${SEGBENCH_TORCH_INDEX:+--index-url "$SEGBENCH_TORCH_INDEX"}
fi
python -m pip install -e "${here}${extras}"
