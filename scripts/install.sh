#!/usr/bin/env bash
# Create .venv and install charlm into it, with a torch build that fits this machine.
#
# Where no NVIDIA GPU is present, torch is installed as its CPU build ("+cpu"): 754 MB installed
# (2.13.0, Linux), instead of the several GB of CUDA libraries a plain `pip install torch` pulls there.
# The whole .venv, with the dev and search extras, is 1.4 GB; the core install alone 1.2 GB.
# Settings (environment): PYTHON (default python3), TORCH_VERSION (default below), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
CPU_INDEX=https://download.pytorch.org/whl/cpu

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --progress-bar off)
extra=()

if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "torch already installed: $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("torch"))')"
elif [ "$(uname -s)" = Darwin ] || { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
    # macOS wheels are CPU/MPS only; with an NVIDIA GPU the default (CUDA) build is the one we want.
    "${pip[@]}" "torch==$TORCH_VERSION"
else
    # The "+cpu" local version names only the CPU build, so this can never fall back to CUDA.
    # PyTorch's CPU index serves it; a mirror or --find-links in pip's own config may too.
    if "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=5)" \
        >/dev/null 2>&1; then
        extra=(--extra-index-url "$CPU_INDEX")
    fi
    "${pip[@]}" ${extra[@]+"${extra[@]}"} "torch==$TORCH_VERSION+cpu"
fi

# Pinned to the torch now installed, so no dependency can swap it for another (CUDA) build.
torch_installed=$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("torch"))')
# dev: the tests and the linter; search: hparams_search=optuna, which the tests run too
"${pip[@]}" ${extra[@]+"${extra[@]}"} -e ".[dev,search]" -c <(echo "torch==$torch_installed")
echo "charlm installed in $VENV: activate it with 'source $VENV/bin/activate'"
