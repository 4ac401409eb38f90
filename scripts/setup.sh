#!/usr/bin/env bash
# Create .venv and install lrs-vqa (editable) with its dev tools. Safe to run again: it only adds what is missing.
#
#   TORCH_SPEC   which torch to install first (default: the CPU-capable 2.14.1 pair this project is tested with)
#   TORCH_INDEX  an extra pip index for torch, e.g. https://download.pytorch.org/whl/cu128 for a CUDA build
#   PYTHON       the interpreter that creates the venv (default python3; needs >= 3.11)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

# pip >= 25.1 understands PEP 735 dependency groups (--group dev).
if ! .venv/bin/python -c 'import sys, pip; sys.exit(int(pip.__version__.split(".")[0]) < 25)' 2>/dev/null; then
  "${PIP[@]}" install -q --upgrade "pip>=25.1"
fi

# torch first, pinned, so nothing later pulls a different multi-GB build.
if ! .venv/bin/python -c 'import torch, torchvision' 2>/dev/null; then
  # shellcheck disable=SC2086
  "${PIP[@]}" install -q ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} $TORCH_SPEC
fi

if ! .venv/bin/python -c 'import lrs_vqa, pyramid, rasterio, pyvips, pytest, ruff, importlinter, gradio, playwright, nbclient, ray' \
   2>/dev/null || [ pyproject.toml -nt .venv/.lrs-vqa-installed ]; then
  "${PIP[@]}" install -q -e ".[app]" --group dev
  touch .venv/.lrs-vqa-installed
fi
