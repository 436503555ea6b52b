"""Waveform cache: decoded, resampled, padded/cut clips stored once as float16 and memory-mapped.

Decoding mp3 (and resampling) is what bounds an epoch of a small model on a CPU; a cache makes
every epoch after the first, and every later fold or run over the same clips, read plain samples
instead. `CachedWaveforms(dataset, cache_path)` puts a dataset behind a cache and returns the
same item dicts as the dataset itself (targets, names, teacher logits come from the dataset, only
the waveform from the cache).

Layout of a cache (a directory at `cache_path`; nothing pickled):

    index.json     format version, the fingerprint (JSON) and its sha256, num_clips, clip_samples
    waveforms.npy  float16 (num_clips, clip_samples): a standard .npy file (np.load(mmap_mode="r"))
    rows.npy       int64 (num_clips,): per-row state: 0 = not filled yet, COMMITTED | crc32 of the
                   row's bytes = filled, UNDECODABLE = the clip failed to decode (not tried again)

The fingerprint holds everything that determines the waveforms: the dataset's source files (path,
size, mtime), clip count, sample rate, clip length, decoder and resampler settings and versions
(see `AudioSetDataset.cache_fingerprint`). Opening a cache whose fingerprint differs (or whose
files are damaged) logs a warning saying why and rebuilds it: stale audio is never served.

Filling is lazy: a row is decoded the first time any process asks for it and written in place,
so the first epoch (in DataLoader workers, several processes at once) fills the cache while it
trains; `CachedWaveforms.fill()` fills all missing rows in one pass (DataLoader workers, tqdm)
for use before training or across folds.

Concurrency and crashes:
- Creating or rebuilding the files happens under `FileLock(<cache_path>.lock, blocking=True)` in a
  temporary sibling directory that is renamed into place when complete: a second process waits and
  then uses what the first built; a killed builder leaves only a temporary directory (removed by
  the next builder).
- Rows are written with `pwrite` (data first, then the row's state word): a process killed between
  the two leaves the row marked unfilled, so it is decoded again; a row is only ever served when its
  state says filled and the crc32 of its bytes matches (`verify=True`), so neither a reader running
  alongside a writer nor a power loss that persisted the state before the data can serve a torn row.
  Two processes filling the same row write identical bytes (decoding is deterministic).
- `fill()` holds `<cache_path>.fill.lock` (blocking): a second eager filler waits and finds the rows done.
- Memory maps and file descriptors are opened lazily in each process (after a fork too), so the
  dataset can be handed to DataLoader workers.

Waveforms returned while filling are the float16-rounded values that later epochs read, so the
first epoch sees the same audio as the cached ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..audio import AudioDecodeError
from ..locking import FileLock, lock_path_for

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

__all__ = ["CachedWaveforms", "UndecodableCachedClip", "WaveformCache", "files_fingerprint"]

FORMAT_VERSION = 1
COMMITTED = 1 << 32    # state word of a filled row: COMMITTED | crc32(row bytes)
UNDECODABLE = 2 << 32  # state word of a clip that failed to decode
_INDEX, _DATA, _ROWS = "index.json", "waveforms.npy", "rows.npy"


class UndecodableCachedClip(AudioDecodeError):
    """The cache records this clip as undecodable (it failed when the cache was filled)."""


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable paths where two JSON values differ ("files[0].mtime_ns: 1 -> 2")."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{prefix}[{i}]")]
    if old != new:
        shorten = lambda v: (text if len(text := json.dumps(v)) <= 80 else text[:77] + "...")  # noqa: E731
        return [f"{prefix or 'value'}: {shorten(old)} -> {shorten(new)}"]
    return []


def files_fingerprint(paths: Sequence[PathLike], list_limit: int = 64) -> dict[str, Any]:
    """Identity of source files for a dataset's `cache_fingerprint()`: absolute path, size, mtime.

    Up to `list_limit` files are listed one by one (a mismatch then names the file); more (a folder of
    clips) are summarised by count, total size and a sha256 over the sorted entries, so the index of
    a cache over millions of files stays small.
    """
    entries = []
    for path in paths:
        stat = Path(path).stat()
        entries.append({"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    if len(entries) <= list_limit:
        return {"files": entries}
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e["path"]):
        digest.update(f"{entry['path']}\0{entry['size']}\0{entry['mtime_ns']}\n".encode("utf-8"))
    return {"file_count": len(entries), "total_bytes": sum(e["size"] for e in entries),
            "files_sha256": digest.hexdigest()}


def _pwrite_all(fd: int, data: Union[bytes, memoryview], offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform/filesystem; the rename is what matters
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class WaveformCache:
    """The files of one cache (see the module docstring): open or (re)build, read and write rows.

    `fingerprint` is a JSON-able dict describing everything that determines the waveforms; the
    cache stores it together with the row shape and rebuilds when any of it differs.
    """

    def __init__(self, path: PathLike, fingerprint: dict[str, Any], num_clips: int, clip_samples: int,
                 verify: bool = True):
        if num_clips <= 0 or clip_samples <= 0:
            raise ValueError(f"waveform cache {path}: num_clips and clip_samples must be positive, "
                             f"got {num_clips}, {clip_samples}")
        self.path = Path(path)
        self.num_clips = int(num_clips)
        self.clip_samples = int(clip_samples)
        self.verify = bool(verify)
        self.fingerprint = {"format_version": FORMAT_VERSION, "dtype": "float16", "num_clips": self.num_clips,
                            "clip_samples": self.clip_samples, "source": fingerprint}
        self.fingerprint_sha256 = hashlib.sha256(_canonical(self.fingerprint).encode("utf-8")).hexdigest()
        self._reset_process_state()
        self._ensure()

    # -- process-local state ---------------------------------------------------
    def _reset_process_state(self) -> None:
        self._pid: Optional[int] = None
        self._data: Optional[np.memmap] = None
        self._rows: Optional[np.memmap] = None
        self._data_fd: Optional[int] = None
        self._rows_fd: Optional[int] = None
        self._read_only = False

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # maps and descriptors belong to the process that opened them
        for key in ("_pid", "_data", "_rows", "_data_fd", "_rows_fd"):
            state[key] = None
        state["_read_only"] = False
        return state

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        self._reset_process_state()  # after a fork: the parent's descriptors stay the parent's
        index = self._read_index()
        if index.get("fingerprint_sha256") != self.fingerprint_sha256:
            raise RuntimeError(f"waveform cache {self.path} was rebuilt for different audio by another process "
                               f"while this one was using it; use a separate cache_path per dataset")
        self._data = np.load(self.path / _DATA, mmap_mode="r")
        self._rows = np.load(self.path / _ROWS, mmap_mode="r")
        self._pid = os.getpid()

    def _writable(self) -> bool:
        self._open()
        if self._read_only:
            return False
        if self._data_fd is None:
            try:
                self._data_fd = os.open(self.path / _DATA, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
                self._rows_fd = os.open(self.path / _ROWS, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            except OSError as error:
                log.warning("waveform cache %s is not writable (%s): missing rows are decoded on every read",
                            self.path, error)
                self._read_only = True
                return False
        return True

    def close(self) -> None:
        """Close this process's maps and descriptors (reopened on the next access)."""
        if self._pid == os.getpid():
            for fd in (self._data_fd, self._rows_fd):
                if fd is not None:
                    os.close(fd)
        self._reset_process_state()

    # -- open / build --------------------------------------------------------------
    def _read_index(self) -> dict[str, Any]:
        with open(self.path / _INDEX, "r", encoding="utf-8") as handle:
            return json.load(handle)

    def _problem(self) -> Optional[str]:
        """None when a valid cache for this fingerprint is at `path`, else what is wrong."""
        if not (self.path / _INDEX).exists():
            return "missing"
        try:
            index = self._read_index()
        except (OSError, ValueError) as error:
            return f"has an unreadable index ({error})"
        if index.get("fingerprint_sha256") != self.fingerprint_sha256:
            changes = _differences(index.get("fingerprint"), self.fingerprint)
            more = f" (+{len(changes) - 4} more)" if len(changes) > 4 else ""
            return "was built for different audio: " + ("; ".join(changes[:4]) + more if changes else "fingerprint")
        try:
            data = np.load(self.path / _DATA, mmap_mode="r")
            rows = np.load(self.path / _ROWS, mmap_mode="r")
        except (OSError, ValueError) as error:
            return f"has damaged data files ({error})"
        if data.shape != (self.num_clips, self.clip_samples) or data.dtype != np.float16 \
                or rows.shape != (self.num_clips,) or rows.dtype != np.int64:
            return (f"has data files of the wrong shape ({data.shape} {data.dtype}, {rows.shape} {rows.dtype}; "
                    f"expected ({self.num_clips}, {self.clip_samples}) float16)")
        return None

    def _ensure(self) -> None:
        if self._problem() is None:
            return
        with FileLock(lock_path_for(self.path), what=f"building the waveform cache {self.path}", blocking=True):
            problem = self._problem()  # another process may have built it while we waited
            if problem is None:
                return
            if problem == "missing":
                log.info("creating waveform cache %s (%d clips x %d samples, float16: %.2f GB when full)",
                         self.path, self.num_clips, self.clip_samples, self.num_clips * self.clip_samples * 2e-9)
            else:
                log.warning("waveform cache %s %s; rebuilding it (decoding again)", self.path, problem)
            self._build()

    def _build(self) -> None:
        parent, name = self.path.parent, self.path.name
        parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not (self.path.is_dir() and ((self.path / _INDEX).exists()
                                                               or not any(self.path.iterdir()))):
            raise ValueError(f"{self.path} exists and is not a waveform cache (a directory with {_INDEX}); "
                             f"pass another cache_path")
        # We hold the lock: directories left by killed builders are nobody's now.
        for leftover in list(parent.glob(f"{name}.building-*")) + list(parent.glob(f"{name}.stale-*")):
            shutil.rmtree(leftover, ignore_errors=True)
        size = self.num_clips * self.clip_samples * 2
        free = shutil.disk_usage(parent).free
        if free < size:
            log.warning("waveform cache %s needs %.2f GB when full but only %.2f GB are free on that disk",
                        self.path, size * 1e-9, free * 1e-9)
        building = parent / f"{name}.building-{os.getpid()}"
        building.mkdir()
        # open_memmap makes a sparse file: space is used only as rows are written.
        data = np.lib.format.open_memmap(building / _DATA, mode="w+", dtype=np.float16,
                                         shape=(self.num_clips, self.clip_samples))
        del data
        rows = np.lib.format.open_memmap(building / _ROWS, mode="w+", dtype=np.int64, shape=(self.num_clips,))
        rows.flush()
        del rows
        index = {"format_version": FORMAT_VERSION, "fingerprint_sha256": self.fingerprint_sha256,
                 "fingerprint": self.fingerprint, "num_clips": self.num_clips, "clip_samples": self.clip_samples,
                 "dtype": "float16", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with open(building / _INDEX, "w", encoding="utf-8") as handle:
            json.dump(index, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(building)
        stale = None
        if self.path.exists():
            stale = parent / f"{name}.stale-{os.getpid()}"
            os.rename(self.path, stale)  # readers holding the old files keep them until they close
        os.rename(building, self.path)
        _fsync_dir(parent)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
        self._reset_process_state()

    # -- rows ------------------------------------------------------------------
    def _check_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for the waveform cache {self.path} of {self.num_clips} clips")
        return index

    def lookup(self, index: int) -> Optional[np.ndarray]:
        """The float16 row of clip `index`, or None while it is not filled (or damaged: then refill it).

        Raises UndecodableCachedClip when the cache records the clip as undecodable.
        """
        index = self._check_index(index)
        self._open()
        state = int(self._rows[index])
        if state == UNDECODABLE:
            raise UndecodableCachedClip(f"clip {index} is recorded as undecodable in the waveform cache {self.path}")
        if state >> 32 != COMMITTED >> 32:
            return None
        row = self._data[index]
        if self.verify and zlib.crc32(row) != state & 0xFFFFFFFF:
            log.warning("row %d of the waveform cache %s is damaged (checksum mismatch); decoding it again",
                        index, self.path)
            return None
        return np.array(row)

    def store(self, index: int, waveform: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        """Write clip `index` (data, then its state word) and return the float16 row as stored."""
        index = self._check_index(index)
        row = np.ascontiguousarray(torch.as_tensor(waveform).detach().cpu().numpy(), dtype=np.float16)
        if row.shape != (self.clip_samples,):
            raise ValueError(f"waveform cache {self.path}: clip {index} has shape {row.shape}, "
                             f"expected ({self.clip_samples},)")
        if not np.isfinite(row).all():
            raise AudioDecodeError(f"clip {index}: samples beyond the float16 range (|x| > 65504)")
        if self._writable():
            _pwrite_all(self._data_fd, row.data, self._data.offset + index * row.nbytes)
            # only after the data: a process killed in between leaves the row unfilled
            _pwrite_all(self._rows_fd, np.int64(COMMITTED | zlib.crc32(row)).tobytes(), self._rows.offset + 8 * index)
        return row

    def mark_undecodable(self, index: int) -> None:
        """Record that clip `index` does not decode, so no process tries again."""
        index = self._check_index(index)
        if self._writable():
            _pwrite_all(self._rows_fd, np.int64(UNDECODABLE).tobytes(), self._rows.offset + 8 * index)

    def states(self) -> np.ndarray:
        """Copy of the per-row state words (0 unfilled, COMMITTED | crc, UNDECODABLE)."""
        self._open()
        return np.array(self._rows)

    def missing(self) -> np.ndarray:
        """Indices of the rows not filled yet."""
        return np.flatnonzero(self.states() == 0)

    def stats(self) -> dict[str, int]:
        """Row counts: filled, undecodable, missing."""
        states = self.states()
        return {"filled": int(((states >> 32) == 1).sum()), "undecodable": int((states == UNDECODABLE).sum()),
                "missing": int((states == 0).sum())}

    def flush(self) -> None:
        """fsync what this process wrote (the crc check already guards against torn rows)."""
        for fd in (self._data_fd, self._rows_fd):
            if fd is not None and self._pid == os.getpid():
                os.fsync(fd)


class _CachedSource:
    """`waveform_source` of a cached dataset: the cached row, or decode + store it."""

    def __init__(self, cache: WaveformCache, dataset: Any):
        self.cache = cache
        self.dataset = dataset

    def __call__(self, index: int) -> torch.Tensor:
        row = self.cache.lookup(index)  # raises UndecodableCachedClip for recorded failures
        if row is None:
            try:
                waveform = self.dataset.load_waveform(index)
            except AudioDecodeError:
                # Only decode errors are permanent; an OSError (a flaky disk) is tried again next time.
                self.cache.mark_undecodable(index)
                raise
            row = self.cache.store(index, waveform)
        return torch.from_numpy(row.astype(np.float32))


class _RowsOfParent:
    """`waveform_source` of a dataset whose clips are a part of a cached dataset: row i -> the parent's row."""

    def __init__(self, source: _CachedSource, rows: list[int]):
        self.source = source
        self.rows = rows

    def __call__(self, index: int) -> torch.Tensor:
        return self.source(self.rows[index])


class _FillRows(Dataset):
    def __init__(self, source: _CachedSource, indices: np.ndarray):
        self.source = source
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> int:
        try:
            self.source(int(self.indices[position]))
            return 1
        except (AudioDecodeError, OSError, ValueError):
            return 0  # recorded (decode errors) or left for a later try (I/O errors)


def _count(batch: list[int]) -> int:
    return len(batch)


class CachedWaveforms(Dataset):
    """`dataset` with its waveforms served from a `WaveformCache` at `cache_path`.

    Items are the dataset's own item dicts: the dataset's `__getitem__` runs as before (targets,
    names, teacher logits, replacement of undecodable clips, `skipped`/`decoded` fields) but takes
    each waveform from the cache, decoding only rows not filled yet. Clips that fail to decode are
    recorded in the cache and raise `UndecodableCachedClip` (an AudioDecodeError) inside the
    dataset, which then replaces or reports them exactly as when decoding. Other attributes
    (num_classes, targets, label_map, teacher_coverage(), ...) are the dataset's.

    The dataset must provide `load_waveform(index)` (decode clip `index` itself, no replacement,
    raising AudioDecodeError), `cache_fingerprint()` (JSON-able description of everything that
    determines its waveforms), `sample_rate`, `clip_samples`, and a `waveform_source` attribute
    that its `__getitem__` uses instead of decoding when set (see `AudioSetDataset`). The wrapper
    sets `dataset.waveform_source`: wrap a dataset once and use the wrapper.

    For folds of one collection (ESC-50 ...), cache the dataset of all clips once and let each
    fold's dataset read from it (`serve(part)`): every fold then reads the same cache.
    """

    def __init__(self, dataset: Any, cache_path: PathLike, verify: bool = True):
        missing = [name for name in ("load_waveform", "cache_fingerprint", "waveform_source", "clip_samples",
                                     "sample_rate") if not hasattr(dataset, name)]
        if missing:
            raise TypeError(f"{type(dataset).__name__} cannot be cached: it lacks {', '.join(missing)} "
                            f"(see CachedWaveforms for the interface; AudioSetDataset implements it)")
        if dataset.waveform_source is not None:
            raise ValueError(f"{type(dataset).__name__} already serves waveforms from {dataset.waveform_source!r}; "
                             f"wrap a dataset in CachedWaveforms once")
        self.cache = WaveformCache(cache_path, dataset.cache_fingerprint(), num_clips=len(dataset),
                                   clip_samples=int(dataset.clip_samples), verify=verify)
        self.source = _CachedSource(self.cache, dataset)
        dataset.waveform_source = self.source
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the wrapper: the dataset's (num_classes, targets, ...).
        if name.startswith("__"):
            raise AttributeError(name)
        dataset = self.__dict__.get("dataset")
        if dataset is None:  # during unpickling, before __dict__ is restored
            raise AttributeError(name)
        return getattr(dataset, name)

    @property
    def cache_path(self) -> Path:
        return self.cache.path

    def serve(self, part: Any) -> Any:
        """Make `part` (a dataset whose clips are among this one's, e.g. one ESC-50 fold of the cached
        whole collection) read its waveforms from this cache; returns `part`.

        Clips are matched by audio_name; sample rate and clip length must be the cached dataset's
        (the rows hold exactly those samples). Every fold split of a collection then decodes each clip
        once, however many folds are run.
        """
        if getattr(part, "waveform_source", None) is not None:
            raise ValueError(f"{type(part).__name__} already serves waveforms from {part.waveform_source!r}")
        if int(part.sample_rate) != int(self.dataset.sample_rate) or int(part.clip_samples) != int(
                self.dataset.clip_samples):
            raise ValueError(f"{part!r} has {part.clip_samples} samples at {part.sample_rate} Hz per clip, the cache "
                             f"{self.cache.path} {self.dataset.clip_samples} at {self.dataset.sample_rate} Hz")
        row_of = {name: row for row, name in enumerate(self.dataset.audio_names)}
        missing = [name for name in part.audio_names if name not in row_of]
        if missing:
            raise ValueError(f"{len(missing)} clips of {part!r} are not in the cached dataset {self.dataset!r}, "
                             f"e.g. {missing[:3]}")
        part.waveform_source = _RowsOfParent(self.source, [row_of[name] for name in part.audio_names])
        return part

    def cache_stats(self) -> dict[str, int]:
        """Row counts of the cache: filled, undecodable, missing."""
        return self.cache.stats()

    def fill(self, num_workers: int = 0, batch_size: int = 16, progress: bool = True) -> dict[str, int]:
        """Decode and store every missing row in one pass (DataLoader workers decode); returns `cache_stats()`.

        A second process calling `fill()` on the same cache waits for the first, then finds the rows done.
        """
        with FileLock(self.cache.path.with_name(self.cache.path.name + ".fill.lock"),
                      what=f"filling the waveform cache {self.cache.path}", blocking=True):
            todo = self.cache.missing()
            if len(todo):
                log.info("filling waveform cache %s: %d of %d clips to decode", self.cache.path, len(todo), len(self))
                loader = DataLoader(_FillRows(self.source, todo), batch_size=batch_size, num_workers=num_workers,
                                    collate_fn=_count)
                with tqdm(total=len(todo), desc="filling waveform cache", unit="clip", disable=not progress) as bar:
                    for done in loader:
                        bar.update(done)
                self.cache.flush()
            stats = self.cache.stats()
        if stats["undecodable"]:
            log.warning("waveform cache %s: %d clips are undecodable (recorded; the dataset replaces or reports them)",
                        self.cache.path, stats["undecodable"])
        return stats
