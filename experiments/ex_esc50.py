"""Fine-tuning, EfficientAT's ex_esc50.py (thin wrapper around `efficient_tagging.cli.esc50`; `--help` lists every flag).

    python experiments/ex_esc50.py --dataset_dir ESC-50-master --pretrained --model_name mn10_as --fold 1
"""
import sys
from pathlib import Path

try:
    import efficient_tagging  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from efficient_tagging.cli.esc50 import main

if __name__ == "__main__":
    raise SystemExit(main())
