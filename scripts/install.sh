#!/usr/bin/env bash
# Install segbench into the active Python environment.
#   bash scripts/install.sh         the package
#   bash scripts/install.sh --dev   the package and the test tools
# torch first, on purpose, and the line "install: torch ..." says which one and why:
# - a torch already installed (say your CUDA build) is kept;
# - on a machine with an NVIDIA driver, the package index's default build (CUDA on Linux);
# - elsewhere the CPU build of torch 2.13.0. The package index is asked first which wheel it
#   would give: one that needs nvidia-* wheels (PyPI's default Linux torch does) is refused,
#   so gigabytes of CUDA libraries never land on a machine that cannot use them. Set
#   SEGBENCH_TORCH_INDEX to PyTorch's CPU wheel index to get the CPU build there (see the
#   README), or SEGBENCH_ALLOW_CUDA_TORCH=1 to take the CUDA build anyway.
# pip then only checks that torch is there.
set -euo pipefail
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
here=$(cd "$(dirname "$0")/.." && pwd)
cpu_version="2.13.0"
index_args=()
[ -n "${SEGBENCH_TORCH_INDEX:-}" ] && index_args=(--index-url "$SEGBENCH_TORCH_INDEX")
where="${SEGBENCH_TORCH_INDEX:-the configured package index}"

# prints "<version> <cuda|cpu> <where from>" of the torch wheel pip would install
# (pip's --report needs pip 22.2 or newer)
resolve_torch() {
  if ! python -c 'import sys, pip; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (22, 2))'; then
    echo "install: pip $(python -m pip --version | cut -d' ' -f2) cannot report what it would install; upgrading pip first" >&2
    python -m pip install --quiet --upgrade "pip>=22.2" >&2
  fi
  local report
  report=$(mktemp)
  trap 'rm -f "$report"' RETURN
  python -m pip install --dry-run --quiet --ignore-installed --no-deps --report "$report" \
    "torch==$cpu_version" ${index_args[@]+"${index_args[@]}"} >&2
  python - "$report" <<'EOF'
import json, sys
(item,) = json.load(open(sys.argv[1]))["install"]
meta = item["metadata"]
cuda = "+cu" in meta["version"] or any(
    r.startswith("nvidia-") for r in meta.get("requires_dist") or [])
print(meta["version"], "cuda" if cuda else "cpu", item["download_info"]["url"].rsplit("/", 1)[0])
EOF
}

if python -c "import torch" 2>/dev/null; then
  build=$(python -c 'import torch; print(f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build")')
  echo "install: torch $(python -c 'import torch; print(torch.__version__)') ($build), kept: it is already installed here"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "install: torch from $where, its default build (CUDA on Linux), because this machine has an NVIDIA driver ($(nvidia-smi -L | head -n 1))"
  python -m pip install torch ${index_args[@]+"${index_args[@]}"}
else
  resolved=$(resolve_torch)
  read -r version build from <<< "$resolved"
  if [ "$build" = "cuda" ] && [ "${SEGBENCH_ALLOW_CUDA_TORCH:-}" != "1" ]; then
    echo "install: error: $where offers torch $version only as a CUDA build (it pulls nvidia-* wheels, several GB), and this machine has no NVIDIA driver; set SEGBENCH_TORCH_INDEX to PyTorch's CPU wheel index (see the README), or SEGBENCH_ALLOW_CUDA_TORCH=1 to install it anyway" >&2
    exit 1
  fi
  echo "install: torch $version ($build build) from $from, because this machine has no NVIDIA driver"
  python -m pip install "torch==$version" ${index_args[@]+"${index_args[@]}"}
fi
python -m pip install -e "${here}${extras}"
