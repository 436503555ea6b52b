"""Tagging many audio files: finding them, batching by length, writing every class probability.

Shared by the tagging command line (`efficient_tagging.cli.tag`) and Python users::

    from efficient_tagging.tagging import AudioTagger
    from efficient_tagging.tagging.files import find_audio_files, tag_files, write_probabilities

    tagger = AudioTagger.from_pretrained("mn10_as")
    found = find_audio_files(["recordings/"])            # recursive, audio extensions only
    results = tag_files(tagger, found.files, batch_size=8, num_workers=2)
    write_probabilities("tags.csv", results, tagger.label_map.names)   # failed files are left out

Rules:
- Folders are searched recursively for the extensions in `AUDIO_EXTENSIONS` (case-insensitive);
  other files and hidden entries (names starting with "." -- e.g. macOS "._x.wav" resource forks)
  are skipped and counted (hidden folders are not searched). A file named explicitly is always tried, whatever its extension.
- Batching: files whose decoded and resampled length is identical run through the model together
  (`batch_size` at most). Files of different lengths are never padded into one batch: padding
  changes globally pooled outputs, so a batch gives exactly what one file at a time gives (up to
  float rounding, about 1e-7). Files longer than the tagger's `chunk_seconds` are tagged alone,
  streamed in bounded memory, as `TaggingMixin.file_probabilities` does.
- A file that fails to decode (`AudioDecodeError`) or that the tagger refuses (`ValueError`) gives
  a `FileTags` with `error` set; the other files are tagged regardless.
- Outputs are written atomically: rows go to a temporary file next to the target, renamed into
  place only when every row is written, so an interrupted run leaves no half file.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, Sequence, Union

import torch
from torch import Tensor

from ..audio import AudioDecodeError, stream_audio
from ..labels import LabelMap
from ..locking import temporary_file
from .tagger import Tag, TaggingMixin

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# Container/codec extensions PyAV (FFmpeg) reads audio from; video containers are tagged by their
# first audio stream.
AUDIO_EXTENSIONS: frozenset[str] = frozenset({
    ".wav", ".wave", ".flac", ".mp3", ".mp2", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4", ".webm",
    ".mka", ".mkv", ".wma", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".ac3", ".amr", ".wv", ".ape",
})

# Waveforms waiting for same-length partners are capped at this many batches' worth: with files of
# all-different lengths the oldest group runs (short of a full batch) instead of memory growing.
WAITING_BATCHES = 4

# Probabilities are float32; 9 significant digits give every float32 value back exactly.
PROBABILITY_FORMAT = ".9g"

OUTPUT_FORMATS = (".csv", ".json")


class WaveformTagger(Protocol):
    """What `tag_files` needs of a tagger (`AudioTagger`, `TeacherEnsemble`, an ONNX runner).

    Optional: `chunk_samples` (longer files are streamed) with `stream_logits(make_blocks)` and
    `logits_to_probabilities(logits)` (`TaggingMixin`); without them a long file is tagged whole.
    """

    sample_rate: int
    label_map: LabelMap

    def probabilities(self, waveform: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class AudioFileList:
    """The files `find_audio_files` will tag, and the non-audio files it passed over."""

    files: list[Path]
    skipped: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class FileTags:
    """One file's outcome: all class probabilities, or why it could not be tagged."""

    path: Path
    probabilities: Optional[Tensor] = None  # (C,) float32 on the CPU; None if the file failed
    duration_s: Optional[float] = None  # decoded duration (before any zero-padding)
    error: Optional[str] = None  # the reason, naming the file

    @property
    def ok(self) -> bool:
        return self.error is None


def is_audio_file(path: Path, extensions: Iterable[str] = AUDIO_EXTENSIONS) -> bool:
    return path.suffix.lower() in set(extensions)


def find_audio_files(paths: Iterable[PathLike], extensions: Iterable[str] = AUDIO_EXTENSIONS) -> AudioFileList:
    """The audio files named by `paths`, in order: a file as given, a folder's audio files (recursive,
    sorted by path).

    A path that does not exist is kept (tagging it reports "not found", like any failing file); a file
    reached twice is listed once. Symbolic links to folders are not followed (no loops).
    """
    wanted = {e.lower() for e in extensions}
    files: list[Path] = []
    skipped: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    for given in paths:
        path = Path(given)
        if not path.is_dir():
            add(path)
            continue
        found = []
        for root, folders, names in os.walk(path):
            folders[:] = sorted(f for f in folders if not f.startswith("."))  # hidden folders: not searched
            for name in names:
                candidate = Path(root) / name
                if name.startswith(".") or candidate.suffix.lower() not in wanted:
                    skipped.append(candidate)
                else:
                    found.append(candidate)
        for candidate in sorted(found):
            add(candidate)
    if skipped:
        logger.info("skipped %d non-audio or hidden files", len(skipped))
    return AudioFileList(files, sorted(skipped))


def _naming(path: Path, error: BaseException) -> str:
    """The error text, starting with the file's name unless it already names it."""
    text = str(error) or type(error).__name__
    return text if str(path) in text else f"{path}: {text}"


@dataclass
class _Decoded:
    """A decoded file on its way to the model: whole (`waveform`) or still streaming (`blocks`)."""

    index: int
    path: Path
    waveform: Optional[Tensor] = None
    blocks: Optional[Iterator[Tensor]] = None
    error: Optional[str] = None


def _decode(index: int, path: Path, sample_rate: int, chunk_samples: int) -> _Decoded:
    """Decode and resample one file; one that fits in a chunk comes back whole, a longer one as
    its open block stream (so memory stays bounded by the chunk)."""
    try:
        blocks = stream_audio(path, sample_rate, chunk_samples, name=str(path))
        first = next(blocks, None)
        if first is None:  # the decoder raises on empty files; this is a safety net
            raise AudioDecodeError(f"{path}: decoded to zero samples")
        second = next(blocks, None)
        if second is None:
            return _Decoded(index, path, waveform=first)
        return _Decoded(index, path, blocks=itertools.chain([first, second], blocks))
    except (AudioDecodeError, ValueError) as error:
        return _Decoded(index, path, error=_naming(path, error))


def _chunk_samples(tagger: WaveformTagger) -> int:
    chunk = getattr(tagger, "chunk_samples", None)
    # a tagger without its own chunk length streams files longer than the library default (60 s)
    return int(chunk) if chunk else int(round(TaggingMixin.chunk_seconds * tagger.sample_rate))


def _tag_batch(tagger: WaveformTagger, batch: list[_Decoded]) -> list[tuple[int, FileTags]]:
    """Tag same-length waveforms in one forward; a refused batch is retried file by file so that
    only the offending file fails."""
    assert all(item.waveform is not None for item in batch)
    try:
        probabilities = tagger.probabilities(torch.stack([item.waveform for item in batch]))  # type: ignore[misc]
    except ValueError as error:
        if len(batch) > 1:
            return [result for item in batch for result in _tag_batch(tagger, [item])]
        return [(batch[0].index, FileTags(batch[0].path, error=_naming(batch[0].path, error)))]
    probabilities = probabilities.detach().float().cpu()
    return [(item.index, FileTags(item.path, probabilities[row], item.waveform.numel() / tagger.sample_rate))
            for row, item in enumerate(batch)]


def _tag_stream(tagger: WaveformTagger, item: _Decoded) -> FileTags:
    """Tag a file longer than one chunk from its block stream (bounded memory when the tagger streams)."""
    assert item.blocks is not None
    counted = 0

    def count(blocks: Iterator[Tensor]) -> Iterator[Tensor]:
        nonlocal counted
        for block in blocks:
            counted += block.numel()
            yield block

    opened = [count(item.blocks)]
    chunk = _chunk_samples(tagger)

    def make_blocks() -> Iterator[Tensor]:  # an ensemble reads the file once per member
        return opened.pop() if opened else stream_audio(item.path, tagger.sample_rate, chunk, name=str(item.path))

    try:
        stream_logits: Optional[Callable[..., Tensor]] = getattr(tagger, "stream_logits", None)
        to_probabilities = getattr(tagger, "logits_to_probabilities", None)
        if stream_logits is not None and to_probabilities is not None:
            probabilities = to_probabilities(stream_logits(make_blocks))
        else:
            probabilities = tagger.probabilities(torch.cat(list(make_blocks())).reshape(1, -1))
    except (AudioDecodeError, ValueError) as error:
        return FileTags(item.path, error=_naming(item.path, error))
    return FileTags(item.path, probabilities.detach().float().cpu()[0], counted / tagger.sample_rate)


def _decoded_in_order(files: Sequence[Path], sample_rate: int, chunk_samples: int,
                      num_workers: int) -> Iterator[_Decoded]:
    """Decode files in order; with `num_workers` threads a few files are decoded ahead (PyAV and
    the resampler release the GIL, so decoding overlaps the model)."""
    if num_workers <= 0:
        for index, path in enumerate(files):
            yield _decode(index, path, sample_rate, chunk_samples)
        return
    ahead = 2 * num_workers  # decoded waveforms held ahead of the model: bounded memory
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="decode") as pool:
        pending: deque[Future[_Decoded]] = deque()
        queued = iter(enumerate(files))
        try:
            for index, path in itertools.islice(queued, ahead):
                pending.append(pool.submit(_decode, index, path, sample_rate, chunk_samples))
            while pending:
                decoded = pending.popleft().result()
                for index, path in itertools.islice(queued, 1):
                    pending.append(pool.submit(_decode, index, path, sample_rate, chunk_samples))
                yield decoded
        finally:
            for future in pending:
                future.cancel()


def tag_files(tagger: WaveformTagger, files: Iterable[PathLike], *, batch_size: int = 1, num_workers: int = 0,
              progress: Optional[bool] = False) -> Iterator[FileTags]:
    """Tag audio files (any PyAV format and rate), yielding one `FileTags` per file in input order.

    Args:
        tagger: `AudioTagger`, `TeacherEnsemble` or anything with `WaveformTagger`'s interface.
        batch_size: at most this many files of identical decoded length share one forward pass.
        num_workers: threads decoding files ahead of the model (0: decode in this thread).
        progress: tqdm bar on stderr: True shows it, False hides it, None shows it on a terminal only.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    from tqdm.auto import tqdm

    paths = [Path(f) for f in files]
    chunk = _chunk_samples(tagger)
    waiting: dict[int, list[_Decoded]] = {}  # decoded length -> files waiting for a full batch (oldest first)
    finished: dict[int, FileTags] = {}
    next_index = 0
    bar = tqdm(total=len(paths), desc="tagging", unit="file", disable=(None if progress is None else not progress),
               dynamic_ncols=True)

    def run(length: int) -> None:
        for index, result in _tag_batch(tagger, waiting.pop(length)):
            finished[index] = result

    def ready() -> Iterator[FileTags]:  # results that can go out without breaking the input order
        nonlocal next_index
        while next_index in finished:
            bar.update(1)
            yield finished.pop(next_index)
            next_index += 1

    try:
        for item in _decoded_in_order(paths, tagger.sample_rate, chunk, num_workers):
            if item.error is not None:
                finished[item.index] = FileTags(item.path, error=item.error)
            elif item.blocks is not None:
                finished[item.index] = _tag_stream(tagger, item)
            else:
                assert item.waveform is not None
                group = waiting.setdefault(item.waveform.numel(), [])
                group.append(item)
                if len(group) >= batch_size:
                    run(item.waveform.numel())
                while sum(len(g) for g in waiting.values()) > WAITING_BATCHES * batch_size:
                    run(next(iter(waiting)))
            yield from ready()
        while waiting:
            run(next(iter(waiting)))
        yield from ready()
    finally:
        bar.close()


def top_tags(probabilities: Tensor, class_names: Sequence[str], k: int) -> list[Tag]:
    """The `k` most probable classes (all of them if there are fewer), most probable first."""
    values, indices = probabilities.topk(min(int(k), probabilities.numel()))
    return [Tag(class_names[i], int(i), float(p)) for p, i in zip(values.tolist(), indices.tolist())]


def _number(value: float) -> float:
    return float(format(value, PROBABILITY_FORMAT))


class ProbabilitiesWriter:
    """Writes `FileTags` rows to a .csv or .json file, atomically (temporary file + rename on close).

    CSV: a header `path,<class 0>,<class 1>,...`, then one row per tagged file with every class
    probability (9 significant digits: float32 values exactly). JSON: a list of
    `{"path", "duration_s", "probabilities": {class: p, ...}, "top_k": [{"label", "index", "probability"}]}`.
    Failed files are not written. Used as a context manager: leaving it with an exception (or
    calling `discard`) removes the temporary file and leaves `path` as it was.
    """

    def __init__(self, path: PathLike, class_names: Sequence[str], top_k: int = 10) -> None:
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(f"{self.path}: the output must end in .csv or .json (the format is chosen by it)")
        if int(top_k) < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        self.class_names = list(class_names)
        self.top_k = int(top_k)
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = temporary_file(self.path)  # the permissions any new file would get
        self._temporary = Path(temporary)
        self._stream: Optional[io.TextIOWrapper] = open(handle, "w", encoding="utf-8", newline="")
        self._csv = None
        if self.format == ".csv":
            self._csv = csv.writer(self._stream)
            self._csv.writerow(["path", *self.class_names])
        else:
            self._stream.write("[")

    def write(self, result: FileTags) -> None:
        """Add one file's row (a failed file is ignored)."""
        if self._stream is None:
            raise ValueError(f"{self.path}: writer already closed")
        if result.probabilities is None:
            return
        values = result.probabilities.reshape(-1).tolist()
        if len(values) != len(self.class_names):
            raise ValueError(f"{result.path}: {len(values)} probabilities for {len(self.class_names)} classes")
        if self._csv is not None:
            self._csv.writerow([str(result.path), *(format(v, PROBABILITY_FORMAT) for v in values)])
        else:
            entry = {
                "path": str(result.path),
                "duration_s": result.duration_s,
                "probabilities": {name: _number(v) for name, v in zip(self.class_names, values)},
                "top_k": [{"label": t.label, "index": t.index, "probability": _number(t.probability)}
                          for t in top_tags(result.probabilities.reshape(-1), self.class_names, self.top_k)],
            }
            self._stream.write(("\n" if self.rows == 0 else ",\n") + json.dumps(entry))
        self.rows += 1

    def close(self) -> Path:
        """Finish the file and move it into place."""
        if self._stream is None:
            return self.path
        try:
            if self._csv is None:
                self._stream.write("\n]\n")
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()
            self._stream = None
            os.replace(self._temporary, self.path)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        """Drop everything written; `path` stays as it was."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._temporary.unlink(missing_ok=True)

    def __enter__(self) -> "ProbabilitiesWriter":
        return self

    def __exit__(self, kind: Optional[type[BaseException]], value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()


def write_probabilities(path: PathLike, results: Iterable[FileTags], class_names: Sequence[str],
                        top_k: int = 10) -> Path:
    """Write every tagged file's class probabilities to `path` (.csv or .json; see
    `ProbabilitiesWriter`), atomically. Returns `path`."""
    with ProbabilitiesWriter(path, class_names, top_k) as writer:
        for result in results:
            writer.write(result)
    return writer.path


def class_names_of(tagger: Any) -> list[str]:
    """The tagger's class names, or class_0, class_1, ... when it carries none."""
    label_map = getattr(tagger, "label_map", None)
    if label_map is not None:
        return list(label_map.names)
    return [f"class_{i}" for i in range(int(getattr(tagger, "num_classes")))]
