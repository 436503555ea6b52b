"""`ex_dcase20.py`: fine-tuning on DCASE2020 Task 1 with EfficientAT's ex_dcase20.py defaults (see `cli.finetune`)."""
from __future__ import annotations

from typing import Optional, Sequence

from .finetune import main as finetune_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    return finetune_main(argv, recipe="dcase20")


if __name__ == "__main__":
    raise SystemExit(main())
