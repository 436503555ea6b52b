"""Fine-tuning, your own data (thin wrapper around `efficient_tagging.cli.own_data`; `--help` lists every flag).

    python experiments/ex_finetune.py --train_csv train.csv --eval_csv eval.csv --pretrained_name mn10_as
"""
import sys
from pathlib import Path

try:
    import efficient_tagging  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from efficient_tagging.cli.own_data import main

if __name__ == "__main__":
    raise SystemExit(main())
