"""Knowledge-distillation training / evaluation on AudioSet-format data.

    python experiments/ex_audioset.py --train --width_mult 1.0            # embedded demo (no data needed)
    python experiments/ex_audioset.py --train --train_hdf5 bal.h5 unbal.h5 --eval_hdf5 eval.h5 \
        --teacher_preds teacher_logits.h5 --width_mult 1.0 --cuda          # AudioSet
    python experiments/ex_audioset.py --model_name mn10_as --eval_hdf5 eval.h5   # evaluate

Thin wrapper around `efficient_tagging.cli.audioset`; `--help` lists every flag.
"""
import sys
from pathlib import Path

try:
    import efficient_tagging  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from efficient_tagging.cli.audioset import main

if __name__ == "__main__":
    raise SystemExit(main())
