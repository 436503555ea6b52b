"""Label AudioSet-format HDF5 files with frozen teacher(s) for knowledge distillation.

    python experiments/ex_teacher_labels.py --hdf5 balanced_train.hdf --teachers passt_s_swa_p16_128_ap476 \
        --output teacher_logits.h5 --precision bf16 --cuda
    torchrun --nproc_per_node 4 experiments/ex_teacher_labels.py --hdf5 ... --output teacher_logits.h5 --cuda

See `--help` and `efficient_tagging.cli.label`.
"""
import sys
from pathlib import Path

try:
    import efficient_tagging  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from efficient_tagging.cli.label import main

if __name__ == "__main__":
    raise SystemExit(main())
