"""Build an AudioSet-format HDF5 file (audio_name, mp3, target) from a folder of audio and a label CSV.

    python experiments/prepare_audioset.py --audio_dir clips/ --csv balanced_train_segments.csv \
        --class_labels class_labels_indices.csv --output balanced_train_segments_mp3.hdf

Thin wrapper around `efficient_tagging.cli.prepare`; run with `--help` for the options.
"""
import sys
from pathlib import Path

try:
    import efficient_tagging  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from efficient_tagging.cli.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
