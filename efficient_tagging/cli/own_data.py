"""`ex_finetune.py`: fine-tuning on your own data, CSV lists or class folders (see `cli.finetune`)."""
from __future__ import annotations

from typing import Optional, Sequence

from .finetune import main as finetune_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    return finetune_main(argv, recipe="own")


if __name__ == "__main__":
    raise SystemExit(main())
