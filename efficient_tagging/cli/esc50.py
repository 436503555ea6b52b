"""`ex_esc50.py`: fine-tuning on ESC-50 with EfficientAT's ex_esc50.py defaults (see `cli.finetune`)."""
from __future__ import annotations

from typing import Optional, Sequence

from .finetune import main as finetune_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    return finetune_main(argv, recipe="esc50")


if __name__ == "__main__":
    raise SystemExit(main())
