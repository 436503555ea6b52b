"""Tags over time: `python experiments/windowed_inference.py --audio_path x.wav --output tags.csv --plot tags.png`.

Thin wrapper around `efficient_tagging.cli.tag_over_time`; run with `--help` for the options.
"""
import sys
from pathlib import Path

try:
    import efficient_tagging  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from efficient_tagging.cli.tag_over_time import main

if __name__ == "__main__":
    raise SystemExit(main())
