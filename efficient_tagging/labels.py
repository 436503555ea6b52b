"""Class label maps: AudioSet ontology names/ids, and the label maps stored in checkpoints.

The official AudioSet list (`class_labels_indices.csv`: index, mid, display_name) is read
from a given path, from the download cache, or downloaded (over https) from Google's AudioSet
storage; a download, or a cached copy, that is not a 527-class label list is never used.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .hub import cached_file
from .textfile import open_text

logger = logging.getLogger(__name__)

AUDIOSET_LABELS_URL = "https://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/class_labels_indices.csv"
AUDIOSET_LABELS_FILENAME = "class_labels_indices.csv"
AUDIOSET_NUM_CLASSES = 527


def printable(text: str) -> str:
    """`text` with control characters (terminal escapes, NUL, newlines, ...) written as \\xNN / \\uNNNN, so
    that text read from a file cannot act on a terminal or break a line-based output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


@dataclass(frozen=True)
class LabelMap:
    """Ordered class names and ids (index i = logit i)."""

    names: tuple[str, ...]
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.ids):
            raise ValueError(f"label map has {len(self.names)} names but {len(self.ids)} ids")
        # Names come from files (checkpoints, ONNX metadata, CSVs) and end up on terminals, in CSV and
        # JSON: control characters (e.g. an escape sequence that clears the screen) are shown escaped.
        for attribute in ("names", "ids"):
            values = getattr(self, attribute)
            if not all(isinstance(v, str) for v in values):
                bad = next(v for v in values if not isinstance(v, str))
                raise ValueError(f"label {attribute} must be strings, got {bad!r} ({type(bad).__name__})")
            cleaned = tuple(printable(v) for v in values)
            if cleaned != values:
                changed = sum(a != b for a, b in zip(values, cleaned))
                logger.warning("label map: %d %s contained control characters; shown escaped (e.g. %s)", changed,
                               attribute, next(c for v, c in zip(values, cleaned) if v != c))
                object.__setattr__(self, attribute, cleaned)

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_names(cls, names: Sequence[str], ids: Optional[Sequence[str]] = None) -> "LabelMap":
        return cls(tuple(names), tuple(ids) if ids is not None else tuple(names))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists of str), safe for `torch.save` + `torch.load(weights_only=True)` and JSON."""
        return {"names": list(self.names), "ids": list(self.ids)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LabelMap":
        if not isinstance(data, dict) or not isinstance(data.get("names"), (list, tuple)):
            raise ValueError(f"a stored label map is a mapping with a list of 'names', got {str(data)[:80]!r}")
        ids = data.get("ids")
        if ids is not None and not isinstance(ids, (list, tuple)):
            raise ValueError(f"a stored label map's 'ids' are a list, got {str(ids)[:80]!r}")
        return cls.from_names(data["names"], ids)

    def index(self, name_or_id: str) -> int:
        """Index of a class given its display name or id."""
        for collection in (self.names, self.ids):
            if name_or_id in collection:
                return collection.index(name_or_id)
        raise KeyError(f"unknown class {name_or_id!r}")


def read_class_labels_csv(path: Union[str, Path]) -> LabelMap:
    """Parse an AudioSet-style `index,mid,display_name` CSV, checking that indices run 0..N-1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    names: list[str] = []
    ids: list[str] = []
    with open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["index", "mid", "display_name"]:
            raise ValueError(f"{path}: expected the header 'index,mid,display_name', got {header}")
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 3:
                raise ValueError(f"{path}:{line_number}: expected 3 columns (index, mid, display_name), got {row}")
            if int(row[0]) != len(names):
                raise ValueError(f"{path}:{line_number}: index {row[0]} out of order (expected {len(names)})")
            ids.append(row[1].strip())
            names.append(row[2].strip())
    if not names:
        raise ValueError(f"{path}: contains no labels")
    return LabelMap(tuple(names), tuple(ids))


def _check_audioset_csv(path: Path) -> None:
    """Validator for the download cache: the file must be the full AudioSet label list."""
    labels = read_class_labels_csv(path)
    if len(labels) != AUDIOSET_NUM_CLASSES:
        raise ValueError(f"{path}: expected {AUDIOSET_NUM_CLASSES} AudioSet classes, found {len(labels)}")


def audioset_labels(path: Union[str, Path, None] = None, cache: Union[str, Path, None] = None,
                    download: bool = True) -> LabelMap:
    """The 527 AudioSet classes: from `path`, else the cache, else downloaded (if `download`)."""
    if path is None:
        if download:
            path = cached_file(AUDIOSET_LABELS_URL, AUDIOSET_LABELS_FILENAME, cache=cache, progress=False,
                               validate=_check_audioset_csv)
        else:
            from .hub import cache_dir
            path = cache_dir(cache) / AUDIOSET_LABELS_FILENAME
    labels = read_class_labels_csv(path)
    if len(labels) != AUDIOSET_NUM_CLASSES:
        raise ValueError(f"{path}: expected {AUDIOSET_NUM_CLASSES} AudioSet classes, found {len(labels)}")
    return labels
