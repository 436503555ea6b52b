"""One rule for every output-file flag of the tagging commands (`--output`, `--plot`, `--events`).

The name's ending chooses the format; the folder must already exist (a typo in a path must not
quietly create folders somewhere); the path must not be a folder. Checked before any work starts.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence


def check_output_file(parser: argparse.ArgumentParser, flag: str, path: Optional[Path],
                      suffixes: Sequence[str]) -> None:
    """A usage error (exit 2) naming `flag` and `path` if the file cannot be written as asked."""
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        ending = " or ".join(suffixes)
        parser.error(f"{flag} {path}: the name must end in {ending}" + (" (it chooses the format)"
                                                                      if len(suffixes) > 1 else ""))
    if path.is_dir():
        parser.error(f"{flag} {path} is a folder; give a file name ending in {' or '.join(suffixes)}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        parser.error(f"{flag} {path}: the folder {folder} does not exist; create it first (outputs never create "
                     f"folders, so a mistyped path cannot scatter files)")
