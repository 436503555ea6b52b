#!/usr/bin/env bash
# Lent GPU machine (no network; its python3 has torch, h5py, scikit-learn, tqdm): carry a cp312 PyAV wheel, `pip install --no-index --target /tmp/site av-*.whl`, then `PYTHONPATH=/tmp/site bash benchmarks/gpu_check.sh --json gpu_check.json` (sized for < 8 min on one H100; not yet run on one).
exec python3 "$(dirname "$0")/gpu_check.py" "$@"
