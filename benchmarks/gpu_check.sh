#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) with the PyTorch a GPU machine already has.
#
#   bash benchmarks/gpu_check.sh [--cpu] [--out FILE] [--only train,speed,inference,memory,data]
#
# $PYTHON (default python3) and its torch, torchvision and timm are used as they are. When that Python
# lacks the project's other packages (Hydra, OmegaConf, submitit, wids), they are installed from the
# wheels in benchmarks/wheels/ (git-ignored) into .gpu_check/venv, a virtual environment that sees the
# system's packages, with the project itself (editable, no dependencies) — no network needed. Fill the
# folder on a machine with network, then carry it with the tree:
#
#   make gpu-check-wheels     # pure-Python wheels of the versions in constraints.txt
#
# On one H100/H200 it takes about 5 minutes and writes benchmarks/results/gpu_check-<date>-gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
need='import hydra, omegaconf, submitit, wids, mixer_scaling'
if ! "$PY" -c "$need" 2>/dev/null; then
  venv=.gpu_check/venv
  [ -x "$venv/bin/python" ] || "$PY" -m venv --system-site-packages "$venv"
  if compgen -G "benchmarks/wheels/*.whl" >/dev/null; then
    "$venv/bin/python" -m pip install -q --no-index --no-deps benchmarks/wheels/*.whl
  fi
  # The project itself, editable; with an old setuptools that cannot build it, from the source tree.
  if ! "$venv/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1; then
    echo "gpu_check: pip could not install the project here; using it from src/ (PYTHONPATH)" >&2
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
  PY=$venv/bin/python
  if ! "$PY" -c "$need"; then
    echo "gpu_check: packages missing; fill benchmarks/wheels/ with 'make gpu-check-wheels' where there is network" >&2
    exit 2
  fi
fi
exec "$PY" benchmarks/gpu_check.py "$@"
