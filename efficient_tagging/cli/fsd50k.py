"""`ex_fsd50k.py`: fine-tuning on FSD50K with EfficientAT's ex_fsd50k.py defaults (see `cli.finetune`)."""
from __future__ import annotations

from typing import Optional, Sequence

from .finetune import main as finetune_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    return finetune_main(argv, recipe="fsd50k")


if __name__ == "__main__":
    raise SystemExit(main())
