"""What the file-based datasets share: a list of audio files with targets, read through `ClipDataset`.

Also the helpers their constructors use: reading a delimited table with clear errors, checking
that the listed files exist, and deriving a clip length from container metadata.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import av
import numpy as np
import torch

from ...audio import AudioDecodeError, decode_audio, stated_duration
from ...labels import LabelMap
from ...textfile import open_text
from ..clip_dataset import TASKS, ClipDataset

if TYPE_CHECKING:
    from ..teacher_logits import TeacherLogits

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

# File name endings taken as audio when a folder is scanned (anything FFmpeg reads may be listed in a CSV).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif",
                              ".aiff", ".au", ".mka", ".webm", ".mp4", ".caf", ".w64"})


class DatasetLayoutError(ValueError):
    """A dataset folder or metadata file does not have the expected layout (names what and where)."""


# ----------------------------------------------------------------------------- tables

def read_table(path: Path, required: Sequence[str], layout: str, delimiter: str = ",") -> list[dict[str, str]]:
    """Rows of a delimited text file with a header line, as dicts; `required` columns must be present.

    Cells are stripped of surrounding white space. `layout` describes the expected layout and is
    quoted in every error.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found. Expected layout: {layout}")
    with open_text(path) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DatasetLayoutError(f"{path} is empty; expected a header line with {', '.join(required)}. "
                                     f"Expected layout: {layout}")
        header = [column.strip() for column in header]
        missing = [column for column in required if column not in header]
        if missing:
            hint = ""
            if len(header) == 1 and (("\t" if delimiter == "," else ",") in header[0]):
                hint = f" (the file seems to be separated by {'tabs' if delimiter == ',' else 'commas'}, " \
                       f"expected {'commas' if delimiter == ',' else 'tabs'})"
            raise DatasetLayoutError(f"{path}: missing column(s) {missing} (found {header}){hint}. "
                                     f"Expected layout: {layout}")
        rows = []
        for line_number, cells in enumerate(reader, start=2):
            if not cells or all(not cell.strip() for cell in cells):
                continue
            if len(cells) < len(header):
                cells = cells + [""] * (len(header) - len(cells))
            row = {column: cells[i].strip() for i, column in enumerate(header)}
            row["_line"] = str(line_number)
            rows.append(row)
    return rows


def parse_int(path: Path, row: dict[str, str], column: str) -> int:
    try:
        return int(row[column])
    except ValueError:
        raise DatasetLayoutError(f"{path}:{row['_line']}: column {column!r} must be an integer, got "
                                 f"{row[column]!r}") from None


def check_files_exist(files: Sequence[Path], what: str, allow_missing: bool) -> list[int]:
    """Indices of the files that exist; raises naming the first missing ones unless `allow_missing`."""
    present = [i for i, path in enumerate(files) if path.is_file()]
    if len(present) < len(files):
        missing = [str(files[i]) for i in sorted(set(range(len(files))) - set(present))]
        shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        message = f"{what}: {len(missing)} of {len(files)} listed audio files do not exist: {shown}"
        if not allow_missing:
            raise FileNotFoundError(f"{message}. Is the download completely extracted? (allow_missing=True "
                                    f"drops them instead)")
        log.warning("%s; dropping them", message)
    return present


def scan_audio_files(folder: Path) -> list[Path]:
    """Audio files (by extension, hidden files skipped) below `folder`, recursively, sorted."""
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


# ----------------------------------------------------------------------------- clip length

def probe_duration(path: PathLike) -> Optional[float]:
    """Duration in seconds that the file's container states, without decoding (None if unknown/unreadable)."""
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.audio:
                return None
            return stated_duration(container, container.streams.audio[0])
    except (av.FFmpegError, ValueError, OSError, EOFError):
        return None


@dataclass(frozen=True)
class ClipLengthEstimate:
    """A clip length derived from the durations of (a sample of) the files."""

    seconds: float  # the percentile, rounded up to 0.1 s
    percentile: float
    files_probed: int
    files_decoded: int  # probed files whose container states no duration (decoded to measure)
    files_unreadable: int
    shortest: float
    median: float
    longest: float

    def describe(self) -> str:
        return (f"clip length {self.seconds:g} s = {self.percentile:g}th percentile of the durations of "
                f"{self.files_probed} files (shortest {self.shortest:.2f} s, median {self.median:.2f} s, "
                f"longest {self.longest:.2f} s; {self.files_decoded} measured by decoding, "
                f"{self.files_unreadable} unreadable)")


def estimate_clip_length(files: Sequence[PathLike], percentile: float = 95.0, max_files: int = 1000,
                         seed: int = 0) -> ClipLengthEstimate:
    """Clip length from the `percentile` of file durations, read from container metadata.

    At most `max_files` files (a fixed-seed sample) are probed; only files whose container states
    no duration are decoded. Most clips then fit whole, and a few long outliers do not make every
    batch long.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    files = list(files)
    if not files:
        raise ValueError("cannot derive a clip length from an empty list of files; pass clip_length")
    if len(files) > max_files:
        chosen = np.random.default_rng(seed).choice(len(files), size=max_files, replace=False)
        files = [files[i] for i in sorted(chosen)]
    durations: list[float] = []
    decoded = unreadable = 0
    for path in files:
        duration = probe_duration(path)
        if duration is None or duration <= 0:
            try:
                samples, rate = decode_audio(path)
            except AudioDecodeError:
                unreadable += 1
                continue
            decoded += 1
            duration = samples.size / rate
        durations.append(duration)
    if not durations:
        raise ValueError(f"none of the {len(files)} probed audio files could be read (e.g. {files[0]}); "
                         f"cannot derive a clip length")
    value = float(np.percentile(durations, percentile))
    seconds = max(0.1, math.ceil(round(value * 10, 6)) / 10)
    return ClipLengthEstimate(seconds=seconds, percentile=float(percentile), files_probed=len(durations),
                              files_decoded=decoded, files_unreadable=unreadable, shortest=float(min(durations)),
                              median=float(np.median(durations)), longest=float(max(durations)))


# ----------------------------------------------------------------------------- dataset

class FileClipDataset(ClipDataset):
    """Clips read from audio files on disk (any format FFmpeg decodes, any sample rate).

    `files[i]` is decoded, resampled to `sample_rate` and cut/zero-padded (at the end) to
    `clip_length` seconds; `names[i]` is its audio_name (the teacher-logits key); `targets` is the
    (N, C) multi-hot or one-hot matrix; `extras` holds per-clip values added to each item under
    their key (e.g. {"device": [...]}).
    """

    def __init__(self, files: Sequence[PathLike], names: Sequence[str], targets: np.ndarray,
                 label_map: LabelMap, task: str, *, sample_rate: int = 32000, clip_length: float = 10.0,
                 teacher_logits: Union["TeacherLogits", PathLike, None] = None, max_resample_retries: int = 10,
                 seed: int = 0, replace_undecodable: bool = True,
                 extras: Optional[dict[str, Sequence[Any]]] = None, description: str = "dataset"):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.files = [Path(path) for path in files]
        self.names = [str(name) for name in names]
        targets = np.asarray(targets)
        if targets.ndim != 2 or targets.shape[0] != len(self.files) or len(self.names) != len(self.files):
            raise ValueError(f"{description}: {len(self.files)} files, {len(self.names)} names and targets of "
                             f"shape {targets.shape} do not match")
        if not self.files:
            raise ValueError(f"{description}: no clips selected")
        if len(label_map) != targets.shape[1]:
            raise ValueError(f"{description}: label map has {len(label_map)} classes, targets {targets.shape[1]}")
        seen: set[str] = set()
        duplicates = [name for name in self.names if name in seen or seen.add(name)]
        if duplicates:
            # the teacher-logits join is by name: two clips with one name would share logits
            raise ValueError(f"{description}: duplicate audio names {duplicates[:5]}")
        self._init_clips(sample_rate, clip_length, max_resample_retries=max_resample_retries, seed=seed,
                         replace_undecodable=replace_undecodable)
        self.task = task
        self.label_map = label_map
        self.num_classes = len(label_map)
        self._targets = targets.astype(np.uint8)
        self.extras = {key: list(values) for key, values in (extras or {}).items()}
        for key, values in self.extras.items():
            if len(values) != len(self.files):
                raise ValueError(f"{description}: extra field {key!r} has {len(values)} values for "
                                 f"{len(self.files)} clips")
        self.description = description
        self.attach_teacher_logits(teacher_logits)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def audio_names(self) -> list[str]:
        return list(self.names)

    @property
    def targets(self) -> np.ndarray:
        """(N, num_classes) uint8 multi-hot/one-hot matrix (for sampling weights and metrics)."""
        return self._targets

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class indices of a multiclass dataset (-1 for a row without a label)."""
        if self.task != "multiclass":
            raise AttributeError(f"{self.description} is {self.task}: it has no single label per clip")
        return np.where(self._targets.any(axis=1), self._targets.argmax(axis=1), -1).astype(np.int64)

    def _clip_name(self, index: int) -> str:
        return self.names[index]

    def _clip_source(self, index: int) -> str:
        return str(self.files[index].parent)

    def _clip_target(self, index: int) -> np.ndarray:
        return self._targets[index].astype(np.float32)

    def _load_clip(self, index: int, name: str) -> torch.Tensor:
        samples, native_rate = decode_audio(self.files[index], name=str(self.files[index]))
        return self._fit_waveform(samples, native_rate, name)

    def _extra_fields(self, index: int) -> dict[str, Any]:
        return {key: values[index] for key, values in self.extras.items()}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.description}: {len(self)} clips, {self.num_classes} classes, "
                f"{self.task}, {self.clip_length:g} s at {self.sample_rate} Hz)")


def one_hot(indices: Sequence[int], num_classes: int) -> np.ndarray:
    targets = np.zeros((len(indices), num_classes), dtype=np.uint8)
    targets[np.arange(len(indices)), np.asarray(indices, dtype=np.int64)] = 1
    return targets
