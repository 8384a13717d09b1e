#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: makes sure a virtualenv with torch and tlx exists and is active.
# torch is installed first, pinned (the CPU build on a fresh machine); an existing torch (say a CUDA
# build on a GPU node) is kept, because tlx asks only for torch>=2.4.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${TLX_TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[dali,hdf5,tensorboard,export,dev]"
