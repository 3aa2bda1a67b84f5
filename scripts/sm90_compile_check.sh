#!/usr/bin/env bash
# Compile every Triton kernel launch for Hopper (sm_90) on a machine without a GPU, and fail on
# any compile error, spill or shared memory over the 227 KB per-block limit.
#
# The check (triton_aot_check.py, shared tooling) runs the kernel tests in the interpreter and
# records their launches, plus those scripts/sm90_launches.py makes as a GPU would launch (bf16
# dot operands, canonical shapes), then compiles each with Triton's own ptxas. It fails when a
# kernel test fails, too: under another Triton (PYTHON below) it is also that Triton's test run.
#
#   scripts/sm90_compile_check.sh [OUT]    default OUT: results/kernels/sm90_compile.txt
#
# PYTHON: the interpreter whose Triton compiles (default: python; CI also runs a Triton 3.6
# environment). TRITON_AOT_CHECK: the tool (default ../shared/tools/triton_aot_check.py from
# the repository root). KERNEL_TESTS: the test files to capture (default: the three kernels').
# OUT keeps the tool's lines (registers, spills, shared memory per specialization and per
# kernel) with the per-compile seconds taken out, so that the file changes only when a kernel
# does.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/kernels/sm90_compile.txt}
python=${PYTHON:-python}
tool=${TRITON_AOT_CHECK:-../shared/tools/triton_aot_check.py}
tests=${KERNEL_TESTS:-tests/test_kernel_dwsep_conv.py tests/test_kernel_max_unpool.py tests/test_kernel_window_attention.py}
if [ ! -f "$tool" ]; then
  echo "sm90 compile check: $tool not found; set TRITON_AOT_CHECK to triton_aot_check.py" >&2
  exit 2
fi
mkdir -p "$(dirname "$out")"
# shellcheck disable=SC2086  # $tests is a list of paths
set +e
"$python" "$tool" run --jobs "$(nproc)" --call scripts.sm90_launches:capture_gpu_launches \
  --pytest $tests -q -p no:cacheprovider 2>&1 \
  | sed -E 's/, [0-9]+\.[0-9] s([;,]|$)/\1/' | tee "$out"
status=${PIPESTATUS[0]}
set -e
# The capture ran the kernel tests in the interpreter: a failing test fails the check too
# (the tool itself judges only the compiles). 5: no test selected.
tests_exit=$(grep -o 'pytest exit [0-9]*' "$out" | head -1 | grep -o '[0-9]*$' || echo missing)
if [ "$tests_exit" != 0 ] && [ "$tests_exit" != 5 ]; then
  echo "sm90 compile check: the kernel tests failed in the interpreter (pytest exit $tests_exit)"
  status=1
fi
echo "sm90 compile check: exit $status; output in $out"
exit "$status"
