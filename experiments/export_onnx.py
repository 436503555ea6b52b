"""Export a tagger to ONNX: `python experiments/export_onnx.py --model_name mn10_as --output mn10_as.onnx --with_frontend`.

Thin wrapper around `efficient_tagging.cli.export`; run with `--help` for the options.
"""
import sys
from pathlib import Path

try:
    import efficient_tagging  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from efficient_tagging.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())
