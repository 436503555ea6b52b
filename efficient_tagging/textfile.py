"""Users' text files (CSV/TSV data lists, label lists): opened as UTF-8 with errors that name the file.

A CSV saved by a spreadsheet as Latin-1 / Windows-1252 fails deep inside the csv module with a bare
UnicodeDecodeError; `open_text` turns that into one line naming the file, the offending byte and
what to do.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO, Iterator, Union


class InputFileError(ValueError):
    """A file the user gave cannot be read as what it should be (wrong encoding, wrong format); the
    message names the file and what to do. Command lines print it as one line."""


@contextlib.contextmanager
def open_text(path: Union[str, Path]) -> Iterator[IO[str]]:
    """`open(path, newline="", encoding="utf-8-sig")` whose decoding errors name the file (InputFileError)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        try:
            yield handle
        except UnicodeDecodeError as error:
            byte = error.object[error.start:error.start + 1].hex()
            raise InputFileError(f"{path}: not UTF-8 text (byte 0x{byte} cannot be decoded; the file is probably "
                             f"Latin-1 / Windows-1252, as some spreadsheets save CSV): save it as UTF-8, e.g. "
                             f"iconv -f latin1 -t utf-8 '{path}' > fixed.csv") from None
