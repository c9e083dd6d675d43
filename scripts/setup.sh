#!/usr/bin/env bash
# Create the virtual environment and install the pinned, tested dependency set.
# torch: the CPU build where there is no NVIDIA GPU (never the CUDA packages), else PyPI's CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
torch_version=$(sed -n 's/^torch==//p' requirements.lock)

python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found: installing torch==$torch_version (CUDA build)"
  "${pip[@]}" "torch==$torch_version"
else
  echo "setup: no GPU: installing torch==$torch_version+cpu"
  # A local wheel (pip's find-links) is used when there is one; else PyTorch's CPU index.
  "${pip[@]}" --no-deps "torch==$torch_version+cpu" 2>/dev/null \
    || "${pip[@]}" --no-deps --extra-index-url https://download.pytorch.org/whl/cpu "torch==$torch_version+cpu"
fi

# Everything else at the exact versions in the lock (torch is already satisfied, so nothing CUDA comes in).
"${pip[@]}" -c requirements.lock -r requirements.lock
"${pip[@]}" --no-deps --no-build-isolation -e .
"$venv/bin/python" -m pip check
if "$venv/bin/python" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
  if ! nvidia-smi -L >/dev/null 2>&1; then echo "setup: CUDA packages were installed on a machine without a GPU" >&2; exit 1; fi
fi
echo "setup: ready ($venv)"
