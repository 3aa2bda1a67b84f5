"""scripts/install.sh picks torch as it says, and never a CUDA build on a machine without an
NVIDIA driver: run against a stand-in `python` whose pip only reports and records."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install.sh"
STUB = """#!/usr/bin/env bash
# a python without torch whose pip resolves to the wheel in $STUB_WHEEL and installs nothing
if [ "$1" = "-c" ] && [ "$2" = "import torch" ]; then exit "${STUB_HAS_TORCH:-1}"; fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "$*" >> "$STUB_LOG"
  if [[ " $* " == *" --dry-run "* ]]; then
    while [ $# -gt 0 ]; do
      if [ "$1" = "--report" ]; then cp "$STUB_WHEEL" "$2"; fi
      shift
    done
  fi
  exit 0
fi
exec "$REAL_PYTHON" "$@"
"""


def wheel_report(version: str, requires: list[str], url: str) -> dict:
    return {"install": [{"metadata": {"name": "torch", "version": version,
                                      "requires_dist": requires},
                         "download_info": {"url": url}}]}


CPU_WHEEL = wheel_report("2.13.0+cpu", ["filelock", "sympy>=1.13.3"],
                         "https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-x.whl")
CUDA_WHEEL = wheel_report("2.13.0", ["filelock", 'nvidia-cublas-cu12==12.8.4.1; '
                                     'platform_system == "Linux"'],
                          "https://files.pythonhosted.org/packages/torch-2.13.0-x.whl")


def install(tmp_path, wheel: dict, **env) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    (tmp_path / "wheel.json").write_text(json.dumps(wheel))
    log = tmp_path / "pip.log"
    log.touch()
    # PATH without nvidia-smi: the stub, then only what bash and the script itself need
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("bash", "dirname", "mktemp", "rm", "cp", "cut", "head", "cat"):
        (tools / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
        env={"PATH": f"{bin_dir}:{tools}", "HOME": str(tmp_path), "REAL_PYTHON": sys.executable,
             "STUB_WHEEL": str(tmp_path / "wheel.json"), "STUB_LOG": str(log), **env})
    return result, log.read_text().splitlines()


def installs(pip_calls: list[str]) -> list[str]:
    return [call for call in pip_calls if " install " in f" {call} " and "--dry-run" not in call]


def test_cpu_machine_gets_the_cpu_build_it_names(tmp_path):
    result, calls = install(tmp_path, CPU_WHEEL,
                            SEGBENCH_TORCH_INDEX="https://download.pytorch.org/whl/cpu")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("install: torch")]
    assert line == ("install: torch 2.13.0+cpu (cpu build) from https://download.pytorch.org/"
                    "whl/cpu, because this machine has no NVIDIA driver")
    assert installs(calls)[0] == ("-m pip install torch==2.13.0+cpu --index-url "
                                  "https://download.pytorch.org/whl/cpu")
    assert "--index-url https://download.pytorch.org/whl/cpu" in calls[0]  # the dry run


def test_cuda_build_refused_without_a_driver(tmp_path):
    result, calls = install(tmp_path, CUDA_WHEEL)
    assert result.returncode == 1
    assert "offers torch 2.13.0 only as a CUDA build" in result.stderr
    assert "SEGBENCH_TORCH_INDEX to PyTorch's CPU wheel index" in result.stderr
    assert installs(calls) == []  # neither torch nor segbench


def test_cuda_build_taken_when_asked(tmp_path):
    result, calls = install(tmp_path, CUDA_WHEEL, SEGBENCH_ALLOW_CUDA_TORCH="1")
    assert result.returncode == 0, result.stderr
    assert "install: torch 2.13.0 (cuda build)" in result.stdout
    assert installs(calls)[0] == "-m pip install torch==2.13.0"


def test_installed_torch_is_kept(tmp_path):
    result, calls = install(tmp_path, CUDA_WHEEL, STUB_HAS_TORCH="0")
    assert result.returncode == 0, result.stderr
    assert "kept: it is already installed here" in result.stdout
    assert not [c for c in calls if "torch" in c.split()]
