"""Tag an audio file: `python experiments/inference.py --model_name mn10_as --audio_path x.wav`.

Thin wrapper around `efficient_tagging.cli.tag`; run with `--help` for the options.
"""
import sys
from pathlib import Path

try:
    import efficient_tagging  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from efficient_tagging.cli.tag import main

if __name__ == "__main__":
    raise SystemExit(main())
