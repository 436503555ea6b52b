"""`ex_openmic.py`: fine-tuning on OpenMIC-2018 with EfficientAT's ex_openmic.py defaults (see `cli.finetune`)."""
from __future__ import annotations

from typing import Optional, Sequence

from .finetune import main as finetune_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    return finetune_main(argv, recipe="openmic")


if __name__ == "__main__":
    raise SystemExit(main())
