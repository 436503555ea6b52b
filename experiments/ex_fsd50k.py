"""Fine-tuning, EfficientAT's ex_fsd50k.py (thin wrapper around `efficient_tagging.cli.fsd50k`; `--help` lists every flag).

    python experiments/ex_fsd50k.py --dataset_dir FSD50K_hdf5 --train --pretrained --model_name mn10_as
"""
import sys
from pathlib import Path

try:
    import efficient_tagging  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from efficient_tagging.cli.fsd50k import main

if __name__ == "__main__":
    raise SystemExit(main())
