#!/usr/bin/env bash
# The real HEAR 2021 validator (`hearvalidator`, which needs TensorFlow) against this package's HEAR
# module, in its own virtual environment so TensorFlow never touches the project's venv.
#
#   bash tests/external/check_hearvalidator.sh [VENV_DIR] [MODEL]
#
# VENV_DIR (default /tmp/hear-validator-venv) is made once and reused. MODEL is what
# `efficient_tagging.tagging.hear.load_model` receives: a catalogue name (downloaded once), a checkpoint
# path, or, by default, a small mn04 checkpoint with random weights written here (no network needed).
# Ends with the validator's own verdict ("Looks good!") and exit status 0 when it passes.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${1:-/tmp/hear-validator-venv}"
model="${2:-}"
if [ ! -x "$venv/bin/hear-validator" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    # TensorFlow only for the validator's own imports; torch as the project pins it. hearvalidator
    # 2021.0.6 (the release that accepts 32 kHz models) declares Python < 3.9 although it runs on newer
    # ones: install 2021.0.2 for its dependencies, then 2021.0.6 over it without the version check.
    "$venv/bin/python" -m pip install -q "hearvalidator==2021.0.2" tensorflow-cpu
    "$venv/bin/python" -m pip install -q --no-deps --ignore-requires-python "hearvalidator==2021.0.6"
    "$venv/bin/python" -m pip install -q -e .
fi
if [ -z "$model" ]; then
    model="$(mktemp -d)/mn04_random.pt"
    "$venv/bin/python" - "$model" <<'PY'
import sys
import torch
from efficient_tagging import get_model, save_checkpoint
torch.manual_seed(0)
save_checkpoint(sys.argv[1], get_model(arch="mn", width_mult=0.4), dataset="audioset")
PY
fi
"$venv/bin/hear-validator" efficient_tagging.tagging.hear --model "$model"
