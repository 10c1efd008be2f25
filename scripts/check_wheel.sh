#!/usr/bin/env bash
# CI check of a non-editable install: build the wheel, install it in a fresh virtual environment (CPU
# torch==2.13.0 first, so no multi-GB CUDA build is pulled), then run `covidct models` outside the
# checkout: the three shipped models must be listed with verified checksums.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/covidct-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip wheel --quiet --no-deps -w "$work/dist" .
"$work/venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/*.whl
cd "$work"  # away from the checkout: only the installed package can be imported
env -u COVIDCT_MODELS_DIR -u PYTHONPATH "$work/venv/bin/covidct" models | tee "$work/models.txt"
for name in covid-classifier infection-unet lung-attunet; do
  grep -q "^$name  version .*checksum verified" "$work/models.txt" \
    || { echo "wheel check FAILED: $name is not installed and verified by the wheel" >&2; exit 1; }
done
echo "wheel check passed: the installed wheel ships and verifies the trained models"
