"""Model complexity (params, MACs, peak memory, receptive field), like EfficientAT's complexity.py.

Thin wrapper around `efficient_tagging.cli.complexity`; run ``--help`` for the flags:

    python complexity/complexity.py --model mn10_as
"""
import sys
from pathlib import Path

try:
    import efficient_tagging  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from efficient_tagging.cli.complexity import main

if __name__ == "__main__":
    raise SystemExit(main())
