#!/usr/bin/env bash
# The prepared GPU check (issue 17): one command, at most 8 minutes on an H100/H200 including
# Triton's compiles and torch.compile, from a fresh checkout with torch, Triton, timm and pandas
# and no network (pytest-benchmark used when installed).
#
#   scripts/gpu_check.sh [--out DIR] [--only STEP,...]             on a CUDA GPU
#   scripts/gpu_check.sh --dry-run [--out DIR] [--only STEP,...]   (or CPU_REHEARSAL=1) every
#                                  step on tiny shapes in the Triton interpreter on the CPU
# --only runs the named steps (say, one that failed, in what is left of a lease) into DIR.
#
# Steps, each under its own time limit (one hang cannot eat the budget; what a step wrote
# stays), in this order:
#   gpu-tests      python -m pytest -m gpu (kernels at full size against their references)
#   bench-*        the three kernel benchmarks at their canonical shapes, bf16 and fp32,
#                  forward and forward+backward, against eager, torch.compile and SDPA where it
#                  applies, with the copy bandwidth measured in the same run
#   end-to-end     segbench run --arch swin,segnet,deeplabv3plus --kernels both on the same
#                  weights (profile gpu-quick: paper defaults, 256 px, 2 epochs)
#   summary        benchmarks/gpu_summary.py: summary.md
# Writes DIR (default results/gpu/<date>_<gpu-name>; a dry run: runs/gpu-check-dry-run):
# run.tsv, steps.tsv, logs/<step>.log, kernels_<kernel>.json (benchmarks/_roofline.py rows),
# pytest_benchmark_<kernel>.json (when installed), e2e/ (the run folder) and summary.md, which
# is written whatever happened before it. Exit status: 0 when every step passed, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
steps_all="gpu-tests,bench-window-attention,bench-max-unpool,bench-dwsep-conv,end-to-end"
mode=gpu
out=""
only=$steps_all
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) mode=dry-run ;;
    --out) [ $# -ge 2 ] || { echo "gpu_check: --out needs a folder" >&2; exit 2; }
           out=$2; shift ;;
    --only) [ $# -ge 2 ] || { echo "gpu_check: --only needs steps: $steps_all" >&2; exit 2; }
            only=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1'; expected --dry-run, --out DIR or --only STEPS" >&2
       exit 2 ;;
  esac
  shift
done
[ "${CPU_REHEARSAL:-0}" = 1 ] && mode=dry-run
for name in ${only//,/ }; do
  case ",$steps_all," in *",$name,"*) ;; *)
    echo "gpu_check: unknown step '$name'; the steps: $steps_all" >&2; exit 2 ;; esac
done
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$mode" = dry-run ]; then
  export TRITON_INTERPRET=1 SEGBENCH_BENCH_REHEARSAL=1 CUDA_VISIBLE_DEVICES=""
  device=cpu-rehearsal
  dtypes="bf16"  # one dtype rehearses every path on the CPU
  limit() { echo 120; }
else
  if ! device=$("$python" -c 'import sys, torch
if not torch.cuda.is_available(): sys.exit(1)
print(torch.cuda.get_device_name().lower().replace(" ", "-"))' 2>/dev/null); then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); on a CPU use --dry-run" >&2
    exit 2
  fi
  dtypes="(bf16 or fp32)"
  # seconds per step, 450 in all: the 8-minute budget less start-up and the summary
  limit() { case "$1" in gpu-tests) echo 100 ;; bench-window-attention) echo 90 ;;
            bench-max-unpool) echo 60 ;; bench-dwsep-conv) echo 60 ;; end-to-end) echo 140 ;;
            *) echo 30 ;; esac; }
fi
out=${out:-$([ "$mode" = dry-run ] && echo runs/gpu-check-dry-run \
                                  || echo "results/gpu/$(date +%F)_${device}")}
mkdir -p "$out/logs"
printf 'mode\t%s\ndevice\t%s\ncommit\t%s\nstarted\t%s\n' "$mode" "$device" \
  "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$(date -Is)" > "$out/run.tsv"
[ -f "$out/steps.tsv" ] || printf 'step\texit\tseconds\tlimit_s\n' > "$out/steps.tsv"  # --only adds
failed=0

step() {  # step NAME COMMAND...: run it under its limit, log it, record exit and seconds
  local name=$1 seconds start status
  shift
  case ",$only," in *",$name,"*) ;; *) return 0 ;; esac
  seconds=$(limit "$name")
  start=$(date +%s)
  echo "gpu_check: $name (limit ${seconds} s)"
  timeout --kill-after=10 "$seconds" "$@" > "$out/logs/$name.log" 2>&1
  status=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - start ))" "$seconds" \
    >> "$out/steps.tsv"
  [ "$status" = 0 ] || { failed=1; echo "gpu_check: $name failed (exit $status), see $out/logs/$name.log"; }
}

summarize() { "$python" benchmarks/gpu_summary.py "$out" || failed=1; }
trap summarize EXIT

bench() {  # bench KERNEL FILE SELECTION
  local args=(-m pytest -q -s -p no:cacheprovider "benchmarks/$2" -k "$3"
              --roofline-json="$out/kernels_$1.json")
  if [ "$mode" = dry-run ]; then
    args+=(-p no:benchmark)
  elif "$python" -c 'import pytest_benchmark' 2>/dev/null; then
    args+=(--benchmark-json="$out/pytest_benchmark_$1.json")
  fi
  step "bench-${1//_/-}" "$python" "${args[@]}"
}

step gpu-tests "$python" -m pytest -m gpu -q -p no:cacheprovider tests
bench window_attention bench_window_attention.py "canonical and swmsa and $dtypes"  # SW-MSA: mask
bench max_unpool bench_max_unpool.py "canonical and $dtypes"
bench dwsep_conv bench_dwsep_conv.py "aspp-b1-d12 and $dtypes"
if [ "$mode" = dry-run ]; then
  # until the CLI accepts --kernels both --device cpu under TRITON_INTERPRET=1
  step end-to-end "$python" scripts/end_to_end_rehearsal.py "$out/e2e"
else
  step end-to-end "$python" -m segbench.cli run --arch swin,segnet,deeplabv3plus \
    --kernels both --device cuda --profile gpu-quick --dataset phantom --out "$out/e2e"
fi
trap - EXIT
summarize
exit "$failed"
