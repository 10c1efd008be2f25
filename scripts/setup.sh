#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install CovidCT with its test tools.
# torch is pinned to the CPU build 2.13.0 first, so that no multi-GB CUDA build is pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "CovidCT installed in $(pwd)/.venv"
