"""Fine-tuning, EfficientAT's ex_dcase20.py (thin wrapper around `efficient_tagging.cli.dcase20`; `--help` lists every flag).

    python experiments/ex_dcase20.py --dataset_dir TAU-urban-acoustic-scenes-2020-mobile-development --pretrained --cache_path cache/
"""
import sys
from pathlib import Path

try:
    import efficient_tagging  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from efficient_tagging.cli.dcase20 import main

if __name__ == "__main__":
    raise SystemExit(main())
