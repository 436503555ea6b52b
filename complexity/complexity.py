"""Model complexity (params, MACs, peak memory, receptive field), like EfficientAT's complexity.py.

Thin wrapper around :mod:`efficient_tagging.complexity_cli`; run ``--help`` for the flags:

    python complexity/complexity.py --model mn10_as
"""
import sys
from pathlib import Path

try:
    from efficient_tagging.complexity_cli import main
except ImportError:
    # not installed: use the checkout this script lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from efficient_tagging.complexity_cli import main

if __name__ == "__main__":
    sys.exit(main())
