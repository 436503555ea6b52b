"""Teacher-logits HDF5 files: precomputed teacher-ensemble logits, joined to clips by name.

Layout:

    audio_name  (N,)    clip names, the same naming as the audio HDF5 (e.g. "Y--4gqARaEJE.mp3")
    logits      (N, C)  float32 or float16
    missing_audio_name (M,)  clips the teacher could not label (undecodable audio): recorded,
                        never stored as zero logits; readers report them and `lookup` gives None
    attrs               num_classes, num_rows (committed row count), num_missing (committed
                        missing names), created, and the
                        caller's description of the teachers (names, preprocessing,
                        sample_rate, ensemble rule, source dataset, ...) stored as JSON strings

Rows are looked up by name, never by position, so a file may cover any subset of a dataset
in any order; partial files are valid. Only the first `num_rows` rows are committed: a
writer killed between flushes leaves a readable file whose extra rows (if any) are ignored.

`merge_teacher_logits` joins shard files (e.g. one per torchrun rank) into one file by name,
atomically, refusing duplicated names and incompatible teacher setups.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import h5py
import numpy as np

from ..locking import FileLock, OutputLockedError, lock_path_for, temporary_file
from .hdf5 import open_hdf5

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

# Attributes allowed to differ when a file is resumed.
_VOLATILE_ATTRS = ("created", "creation_time", "updated")


def _short_value(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
# Attributes that describe one shard of a job, not the teacher setup (not compared or copied by merge).
_SHARD_ATTRS = ("shard", "num_missing", "merged_from", "labelled_by")
MISSING_DATASET = "missing_audio_name"


def _decode_name(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _decode_attr(value: Any) -> Any:
    """h5py attribute -> plain Python (JSON strings are parsed; foreign values are kept as they are)."""
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _committed_rows(handle: h5py.File) -> int:
    """Rows that were committed by a flush (files without the counter: all rows)."""
    n = min(handle["audio_name"].shape[0], handle["logits"].shape[0])
    if "num_rows" in handle.attrs:
        n = min(n, int(handle.attrs["num_rows"]))
    return n


def _committed_missing(handle: h5py.File) -> list[str]:
    """Committed names of clips recorded as missing (undecodable); [] for files without the record."""
    if MISSING_DATASET not in handle:
        return []
    ds = handle[MISSING_DATASET]
    n = ds.shape[0]
    if "num_missing" in handle.attrs:
        n = min(n, int(handle.attrs["num_missing"]))
    return [_decode_name(name) for name in ds[:n]]


class TeacherLogits:
    """Read-only access to a teacher-logits HDF5 file, by clip name.

    Opening checks the file: a name that appears in two rows is refused (which row would a
    clip get?), and with `check_finite` (the default) every committed logits row is scanned,
    `chunk_rows` rows at a time (bounded memory on AudioSet-sized files), and NaN or inf
    logits are refused, naming the file and the first offending clips. The name -> row index
    is built on open; logits are read per lookup. HDF5 handles are opened lazily per process,
    so the object can be passed to DataLoader workers (forked or spawned).
    """

    def __init__(self, path: PathLike, *, check_finite: bool = True, chunk_rows: int = 65536):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"teacher-logits file not found: {self.path}")
        with open_hdf5(self.path) as handle:
            missing = [key for key in ("audio_name", "logits") if key not in handle]
            if missing:
                raise KeyError(f"{self.path}: not a teacher-logits file, missing dataset(s) {missing}")
            logits = handle["logits"]
            if logits.ndim != 2:
                raise ValueError(f"{self.path}: 'logits' must be (N, num_classes), got shape {logits.shape}")
            self.num_classes = int(logits.shape[1])
            if "num_classes" in handle.attrs and int(handle.attrs["num_classes"]) != self.num_classes:
                raise ValueError(f"{self.path}: attribute num_classes={int(handle.attrs['num_classes'])} but "
                                 f"'logits' has {self.num_classes} columns")
            self.num_rows = _committed_rows(handle)
            self.dtype = logits.dtype
            self.attrs: dict[str, Any] = {key: _decode_attr(value) for key, value in handle.attrs.items()}
            #: clips the labelling job could not decode (no logits; `lookup` returns None for them)
            self.missing: list[str] = _committed_missing(handle)
            self._index: Optional[dict[str, int]] = self._build_index(handle)
            if check_finite:
                self._check_finite(handle, chunk_rows)
        self._handle: Optional[h5py.File] = None
        # the "logits" dataset, opened once per process: a group lookup per item costs as much as the row read
        self._logits: Optional[h5py.Dataset] = None
        self._pid: Optional[int] = None

    def _build_index(self, handle: h5py.File) -> dict[str, int]:
        """audio_name -> row of the committed rows; a name in two rows is an error."""
        index: dict[str, int] = {}
        duplicates: dict[str, list[int]] = {}
        for row, raw in enumerate(handle["audio_name"][: self.num_rows]):
            name = _decode_name(raw)
            first = index.setdefault(name, row)
            if first != row:
                duplicates.setdefault(name, [first]).append(row)
        if duplicates:
            shown = "; ".join(f"{name!r} (rows {', '.join(map(str, rows))})"
                              for name, rows in list(duplicates.items())[:5])
            raise ValueError(f"{self.path}: {len(duplicates)} audio_name(s) appear in more than one row, so a clip's "
                             f"teacher logits are ambiguous (first: {shown}); relabel into a new file, or merge "
                             f"shards with merge_teacher_logits, which refuses duplicates")
        return index

    def _check_finite(self, handle: h5py.File, chunk_rows: int) -> None:
        """Refuse NaN/inf logits, scanning `chunk_rows` rows at a time (never the whole matrix at once)."""
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        logits = handle["logits"]
        bad_rows: list[int] = []
        bad_count = 0
        for start in range(0, self.num_rows, chunk_rows):
            block = logits[start:min(self.num_rows, start + chunk_rows)]
            bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
            bad_count += len(bad)
            bad_rows.extend(int(start + row) for row in bad[: max(0, 5 - len(bad_rows))])
        if bad_count:
            names = handle["audio_name"]
            shown = ", ".join(f"{_decode_name(names[row])!r} (row {row})" for row in bad_rows)
            raise ValueError(f"{self.path}: {bad_count} of {self.num_rows} teacher-logits rows hold NaN or inf "
                             f"(first: {shown}); distilling from them would poison training. Relabel these clips "
                             f"(or the whole file) with ex_teacher_labels.py")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_logits"] = None
        state["_pid"] = None
        return state

    def _file(self) -> h5py.File:
        if self._pid != os.getpid():
            self._handle = None  # a parent's handle is unusable after fork
            self._logits = None
            self._pid = os.getpid()
        if self._handle is None:
            self._handle = h5py.File(self.path, "r")
        return self._handle

    def _logits_column(self) -> h5py.Dataset:
        if self._logits is None or self._pid != os.getpid():
            self._logits = self._file()["logits"]
        return self._logits

    @property
    def index(self) -> dict[str, int]:
        """audio_name -> row (names are unique: checked on open)."""
        if self._index is None:
            self._index = self._build_index(self._file())
        return self._index

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, audio_name: str) -> bool:
        return audio_name in self.index

    def names(self) -> list[str]:
        return list(self.index)

    def lookup(self, audio_name: str) -> Optional[np.ndarray]:
        """float32 logits (num_classes,) of a clip, or None if the file has no row for it."""
        row = self.index.get(audio_name)
        if row is None:
            return None
        return np.asarray(self._logits_column()[row], dtype=np.float32)

    def coverage(self, audio_names: Iterable[str]) -> tuple[int, int]:
        """(found, missing) counts of `audio_names` in this file, for reporting."""
        index = self.index
        found = missing = 0
        for name in audio_names:
            if name in index:
                found += 1
            else:
                missing += 1
        return found, missing

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._logits = None


#: below this fraction of training clips with teacher logits, opening the join warns loudly
COVERAGE_WARN_BELOW = 0.9


def check_teacher_coverage(teacher: TeacherLogits, audio_names: Sequence[str], *, allow_none: bool = False,
                           warn_below: float = COVERAGE_WARN_BELOW, clips_from: Sequence[PathLike] = (),
                           report: bool = True) -> dict[str, Any]:
    """How many of `audio_names` (the training clips) have teacher logits; refuse a join that matches nothing.

    A file whose names match no clip (another dataset, another naming such as "--4gqARaEJE"
    vs "Y--4gqARaEJE.mp3") would silently train without distillation: that is a ValueError
    unless `allow_none`. Coverage below `warn_below` logs a warning with the numbers (when
    `report`). Returns {"found", "missing", "total", "fraction", "file"} for the run summary.
    """
    names = list(audio_names)
    found, missing = teacher.coverage(names)
    total = len(names)
    fraction = found / total if total else 0.0
    where = f" of {', '.join(map(str, clips_from))}" if clips_from else ""
    if total and found == 0 and not allow_none:
        theirs = teacher.names()[:3]
        raise ValueError(f"teacher logits {teacher.path} match none of the {total} training clips{where} "
                         f"(clip names look like {names[:3]}, the teacher file's like {theirs}): wrong file or "
                         f"another naming? To train without distillation anyway, pass --allow_no_teacher_coverage "
                         f"(TrainConfig.allow_no_teacher_coverage=True)")
    if report:
        if fraction < warn_below:
            log.warning("ONLY %.1f%% OF THE TRAINING CLIPS HAVE TEACHER LOGITS: %d of %d clips%s are in %s; the "
                        "other %d get the label loss only (masked out of the distillation loss)",
                        100.0 * fraction, found, total, where, teacher.path, missing)
        else:
            log.info("teacher logits for %d of %d training clips (%.1f%%; %d masked out of the distillation loss)",
                     found, total, 100.0 * fraction, missing)
    return {"found": found, "missing": missing, "total": total, "fraction": fraction, "file": str(teacher.path)}


class TeacherLogitsWriter:
    """Append teacher logits to an HDF5 file, resumably and crash-safely.

    `write()` only buffers rows in memory; `flush()` appends the buffer to the file, then
    advances the committed row counter (`num_rows` attribute) and flushes HDF5. Between
    flushes the file on disk is never touched, so a process killed at any time (even with
    kill -9) loses at most the rows written since the last flush and leaves a readable
    file. Reopening with `resume=True` trims anything past the committed count and carries
    on; `existing_names()` tells the caller which clips to skip.

    The writer holds an exclusive lock on `<path>.lock` (pid inside) from construction to
    `close()`: a second writer on the same path fails at once with `OutputLockedError`
    ("another process is writing PATH (pid N)"), and so does one on a file another process
    has open through HDF5. Only a file that cannot be opened as HDF5 at all is moved aside
    (`<path>.unreadable-<time>`) and started afresh; a file without a single committed row
    (left by a failed first run) is started afresh even if its teacher setup differs.

        with TeacherLogitsWriter("teacher.h5", 527, {"teachers": ["passt_s_swa_p16_128_ap476"]}) as out:
            todo = [n for n in names if n not in out.existing_names()]
            ...
            out.write(batch_names, batch_logits)
            out.flush()
    """

    def __init__(self, path: PathLike, num_classes: int, attrs: dict[str, Any], dtype: str = "float32",
                 resume: bool = True):
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if np.dtype(dtype) not in (np.dtype("float32"), np.dtype("float16")):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        clash = [key for key in attrs if key in ("num_classes", "num_rows", "num_missing")]
        if clash:
            raise ValueError(f"attrs may not set {clash}: the writer manages them")
        self.path = Path(path)
        self.num_classes = int(num_classes)
        self.dtype = np.dtype(dtype)
        self._names: list[str] = []        # committed names, in row order
        self._name_set: set[str] = set()   # committed + buffered
        self._buffer_names: list[str] = []
        self._buffer_logits: list[np.ndarray] = []
        self._missing: list[str] = []          # committed missing names
        self._buffer_missing: list[str] = []
        self.duplicates_skipped = 0
        self._file: Optional[h5py.File] = None

        encoded = {key: json.dumps(value) for key, value in attrs.items()}
        # One writer per output: a second labelling run must not touch a file that is being written.
        self._lock = FileLock(lock_path_for(self.path), what=f"writing {self.path}").acquire()
        try:
            self._open(encoded, resume)
        except BaseException:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._lock.release()
            raise

    def _open(self, encoded: dict[str, str], resume: bool) -> None:
        if resume and self.path.is_file():
            try:
                self._file = h5py.File(self.path, "r+")
            except OSError as error:
                self._check_unopenable(error)
                # HDF5 is not journaled: a kill in the middle of a flush can (rarely) leave a file
                # h5py cannot open. Keep it aside for inspection and start again.
                aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
                log.warning("%s cannot be opened as HDF5 (%s); moving it to %s and starting a new file",
                            self.path, error, aside)
                os.replace(self.path, aside)
                resume = False
            else:
                resume = self._open_existing(encoded)
        if not (resume and self._file is not None):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._file = h5py.File(self.path, "w")
            except OSError as error:
                self._raise_if_hdf5_locked(error)
                raise
            self._file.create_dataset("audio_name", shape=(0,), maxshape=(None,), chunks=(1024,),
                                      dtype=h5py.string_dtype("utf-8"))
            self._file.create_dataset("logits", shape=(0, self.num_classes), maxshape=(None, self.num_classes),
                                      chunks=(max(1, min(1024, 2 ** 20 // (self.num_classes * self.dtype.itemsize))),
                                              self.num_classes), dtype=self.dtype)
            self._file.attrs["num_classes"] = self.num_classes
            self._file.attrs["num_rows"] = 0
            self._file.attrs["num_missing"] = 0
            self._file.attrs["created"] = json.dumps(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            for key, value in encoded.items():
                self._file.attrs[key] = value
            self._file.flush()

    def _raise_if_hdf5_locked(self, error: OSError) -> None:
        text = str(error).lower()
        if getattr(error, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock file" in text \
                or "resource temporarily unavailable" in text:
            raise OutputLockedError(f"another process has {self.path} open (HDF5 file lock: {error}); finish or stop "
                                    f"that process (a labelling run, or a training run reading the file) and rerun",
                                    self._lock.path, None) from error

    def _check_unopenable(self, error: OSError) -> None:
        """Raise unless `error` (from opening the existing file for writing) means the file is corrupt.

        HDF5's own file lock (errno 11 / "unable to lock file") means another process has the
        file open, e.g. a training run reading it or a writer of an older version: that file is
        live, never corrupt. Permission problems are not corruption either. Only a file that also
        fails to open read-only (without HDF5 locking) may be moved aside.
        """
        self._raise_if_hdf5_locked(error)
        if isinstance(error, PermissionError) or getattr(error, "errno", None) == errno.EACCES:
            raise PermissionError(f"{self.path}: no permission to write the teacher-logits file ({error})") from error
        try:
            with h5py.File(self.path, "r", locking=False):
                pass
        except OSError:
            return  # really unreadable as HDF5
        raise OSError(f"{self.path} is a readable HDF5 file but cannot be opened for writing ({error}); "
                      f"it was left as it is") from error

    def _open_existing(self, encoded: dict[str, str]) -> bool:
        """Continue the opened file; False if it holds nothing and is to be started afresh."""
        handle = self._file
        problem = self._resume_problem(handle, encoded)
        if problem:
            empty = ("audio_name" in handle and "logits" in handle and _committed_rows(handle) == 0
                     and not _committed_missing(handle))
            handle.close()
            self._file = None
            if empty:
                # A teacher-logits file without a single committed row (a failed or interrupted first
                # run) holds no work: it must not block a run with another setup.
                log.info("%s holds no labelled clips yet (%s); starting it afresh", self.path, problem)
                return False
            raise ValueError(f"{self.path}: {problem}")
        logits = handle["logits"]
        committed = _committed_rows(handle)
        if handle["audio_name"].shape[0] != committed or logits.shape[0] != committed:
            log.warning("%s: dropping %d uncommitted row(s) left by an interrupted writer", self.path,
                        max(handle["audio_name"].shape[0], logits.shape[0]) - committed)
            handle["audio_name"].resize((committed,))
            logits.resize((committed, self.num_classes))
        handle.attrs["num_rows"] = committed
        self._missing = _committed_missing(handle)
        if MISSING_DATASET in handle and handle[MISSING_DATASET].shape[0] != len(self._missing):
            handle[MISSING_DATASET].resize((len(self._missing),))
        handle.attrs["num_missing"] = len(self._missing)
        for key, value in encoded.items():
            if key not in handle.attrs:
                handle.attrs[key] = value
        handle.attrs["updated"] = json.dumps(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        handle.flush()
        self._names = [_decode_name(name) for name in handle["audio_name"][()]]
        self._name_set = set(self._names) | set(self._missing)
        return True

    def _resume_problem(self, handle: h5py.File, encoded: dict[str, str]) -> Optional[str]:
        """Why the existing file cannot be continued with these settings (None if it can)."""
        if "audio_name" not in handle or "logits" not in handle:
            return "exists but is not a teacher-logits file; use resume=False to overwrite"
        logits = handle["logits"]
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            return f"has logits of shape {logits.shape}, cannot resume with num_classes={self.num_classes}"
        if logits.dtype != self.dtype:
            return f"stores {logits.dtype} logits, cannot resume with dtype={self.dtype}"
        differing = [key for key, value in encoded.items()
                     if key in handle.attrs and key not in _VOLATILE_ATTRS
                     and _decode_attr(handle.attrs[key]) != json.loads(value)]
        if differing:
            values = "; ".join(f"{key}: file {_short_value(_decode_attr(handle.attrs[key]))}, now "
                               f"{_short_value(json.loads(encoded[key]))}" for key in differing)
            return (f"existing attributes {differing} differ from the requested ones ({values}); these logits come "
                    f"from another teacher setup (rerun with the file's settings, or use resume=False or another "
                    f"path)")
        return None

    def __len__(self) -> int:
        """Rows written so far (committed + buffered)."""
        return len(self._names) + len(self._buffer_names)

    def existing_names(self) -> set[str]:
        """Names already in the file or buffered (labelled or recorded missing): the clips a resumed run can skip."""
        return set(self._name_set)

    def missing_names(self) -> list[str]:
        """Names recorded as missing (committed + buffered), in the order they were recorded."""
        return self._missing + self._buffer_missing

    def write_missing(self, audio_names: Sequence[str]) -> int:
        """Record clips the teacher could not label (e.g. undecodable audio); durable after `flush`.

        They get no logits row, so the distillation join treats them as missing. Names already
        labelled or recorded are skipped; returns names added.
        """
        if self._file is None:
            raise RuntimeError(f"{self.path}: writer is closed")
        added = 0
        for name in map(str, audio_names):
            if name in self._name_set:
                continue
            self._name_set.add(name)
            self._buffer_missing.append(name)
            added += 1
        return added

    def write(self, audio_names: Sequence[str], logits: np.ndarray) -> int:
        """Buffer rows (made durable by `flush`). Names already present are skipped; returns rows added."""
        if self._file is None:
            raise RuntimeError(f"{self.path}: writer is closed")
        if hasattr(logits, "detach"):  # accept torch tensors
            logits = logits.detach().float().cpu().numpy()
        logits = np.asarray(logits)
        names = [str(name) for name in audio_names]
        if logits.shape != (len(names), self.num_classes):
            raise ValueError(f"{self.path}: logits have shape {logits.shape}, expected "
                             f"({len(names)}, {self.num_classes}) for {len(names)} names")
        # checked in the storage dtype: float16 turns |logits| > 65504 into inf
        with np.errstate(over="ignore"):
            stored = logits.astype(self.dtype)
        finite = np.isfinite(stored).all(axis=1)
        if not finite.all():
            raise ValueError(f"{self.path}: non-finite logits (NaN/inf, or too large for {self.dtype}) for "
                             f"{names[int(np.argmin(finite))]!r}")
        keep = []
        for row, name in enumerate(names):
            if not name:
                raise ValueError(f"{self.path}: empty audio_name at row {row} of this batch")
            if name in self._name_set:
                self.duplicates_skipped += 1
                continue
            self._name_set.add(name)
            keep.append(row)
        if keep:
            self._buffer_names.extend(names[row] for row in keep)
            self._buffer_logits.append(stored[keep])
        return len(keep)

    def flush(self) -> None:
        """Append buffered rows to the file and commit them (durable once this returns)."""
        if self._file is None:
            return
        if self._buffer_missing:
            self._flush_missing()
        if not self._buffer_names:
            return
        start = len(self._names)
        stop = start + len(self._buffer_names)
        names_ds, logits_ds = self._file["audio_name"], self._file["logits"]
        names_ds.resize((stop,))
        logits_ds.resize((stop, self.num_classes))
        names_ds[start:stop] = np.array(self._buffer_names, dtype=object)
        logits_ds[start:stop] = np.concatenate(self._buffer_logits, axis=0)
        # Rows first, then HDF5 flush, then the counter, then flush again: a crash in between
        # leaves rows past `num_rows`, which readers ignore and resume trims.
        self._file.flush()
        self._file.attrs["num_rows"] = stop
        self._file.flush()
        self._names.extend(self._buffer_names)
        self._buffer_names = []
        self._buffer_logits = []

    def _flush_missing(self) -> None:
        if MISSING_DATASET not in self._file:
            self._file.create_dataset(MISSING_DATASET, shape=(0,), maxshape=(None,), chunks=(256,),
                                      dtype=h5py.string_dtype("utf-8"))
        ds = self._file[MISSING_DATASET]
        start = len(self._missing)
        stop = start + len(self._buffer_missing)
        ds.resize((stop,))
        ds[start:stop] = np.array(self._buffer_missing, dtype=object)
        self._file.flush()
        self._file.attrs["num_missing"] = stop  # committed after the names, like num_rows
        self._file.flush()
        self._missing.extend(self._buffer_missing)
        self._buffer_missing = []

    def discard_buffer(self) -> int:
        """Drop the rows and missing names not flushed yet (after a forced stop); returns rows dropped."""
        dropped = len(self._buffer_names)
        self._name_set -= set(self._buffer_names) | set(self._buffer_missing)
        self._buffer_names, self._buffer_logits, self._buffer_missing = [], [], []
        return dropped

    def close(self) -> None:
        """Flush, close and release the output's lock."""
        if self._file is None:
            return
        try:
            self.flush()
        finally:
            try:
                self._file.close()
            finally:
                self._file = None
                self._lock.release()

    def __enter__(self) -> "TeacherLogitsWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        # Rows computed before an error are still valid logits: keep them.
        self.close()


def shard_path(output: PathLike, rank: int, world_size: int) -> Path:
    """`<output>.shard-<rank>-of-<world_size>.h5`: where one rank of a sharded labelling job writes."""
    output = Path(output)
    return output.with_name(f"{output.name}.shard-{int(rank)}-of-{int(world_size)}.h5")


def find_shards(output: PathLike) -> list[Path]:
    """The shard files of `output` on disk (any world size), sorted by rank."""
    output = Path(output)
    found = []
    for path in output.parent.glob(f"{output.name}.shard-*-of-*.h5"):
        middle = path.name[len(output.name) + len(".shard-"):-len(".h5")]
        rank, _, world = middle.partition("-of-")
        if rank.isdigit() and world.isdigit():
            found.append((int(world), int(rank), path))
    return [path for _, _, path in sorted(found)]


class _ShardIndex:
    """What the shards of a merge hold, read shard by shard before anything is written: one teacher
    setup (attributes, number of classes, dtype) and where every clip name is -- a labelled row or a
    missing record -- so a clip found twice is refused before the output is touched."""

    def __init__(self, shard_paths: Sequence[Path]) -> None:
        self.shard_paths = shard_paths
        self.setup: Optional[dict[str, Any]] = None
        self.num_classes: Optional[int] = None
        self.dtype: Any = None
        self.first: Optional[Path] = None  # the shard the setup was taken from (named in errors)
        self.where: dict[str, tuple[int, int]] = {}    # name -> (shard, row)
        self.missing: dict[str, int] = {}               # name -> shard

    def add(self, shard_index: int, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"shard not found: {path}")
        with open_hdf5(path) as handle:
            if "audio_name" not in handle or "logits" not in handle:
                raise ValueError(f"{path}: not a teacher-logits file")
            self._check_setup(path, handle)
            self._add_rows(shard_index, path, handle)
            self._add_missing(shard_index, path, handle)

    def _check_setup(self, path: Path, handle: h5py.File) -> None:
        """Take the first shard's setup; every later shard must match it."""
        attrs = {k: _decode_attr(v) for k, v in handle.attrs.items()
                 if k not in _VOLATILE_ATTRS and k not in _SHARD_ATTRS and k not in ("num_rows",)}
        if self.setup is None:
            self.setup, self.num_classes, self.dtype = attrs, handle["logits"].shape[1], handle["logits"].dtype
            self.first = path
            return
        if handle["logits"].shape[1] != self.num_classes or handle["logits"].dtype != self.dtype:
            raise ValueError(f"{path}: logits {handle['logits'].shape[1]} x {handle['logits'].dtype} do "
                             f"not match {self.first}: {self.num_classes} x {self.dtype}")
        differing = sorted(k for k in set(self.setup) | set(attrs) if self.setup.get(k) != attrs.get(k))
        if differing:
            raise ValueError(f"{path}: attributes {differing} differ from {self.first}: shards of different "
                             f"teacher setups cannot be merged")

    def _add_rows(self, shard_index: int, path: Path, handle: h5py.File) -> None:
        names = handle["audio_name"][: _committed_rows(handle)]
        for row, raw in enumerate(names):
            name = _decode_name(raw)
            if name in self.where or name in self.missing:
                other = self.shard_paths[self.where[name][0] if name in self.where else self.missing[name]]
                raise ValueError(f"clip {name!r} appears in both {other} and {path}: duplicated rows")
            self.where[name] = (shard_index, row)

    def _add_missing(self, shard_index: int, path: Path, handle: h5py.File) -> None:
        for name in _committed_missing(handle):
            if name in self.where or name in self.missing:
                raise ValueError(f"clip {name!r} is recorded missing in {path} but also present elsewhere")
            self.missing[name] = shard_index

    def check_covers(self, expected_names: Sequence[str]) -> None:
        """Every clip of the labelled dataset must be labelled or recorded missing in some shard."""
        expected = list(dict.fromkeys(map(str, expected_names)))
        uncovered = [n for n in expected if n not in self.where and n not in self.missing]
        if uncovered:
            raise ValueError(f"merge: {len(uncovered)} clip(s) of the dataset are in no shard "
                             f"(first: {', '.join(uncovered[:5])}); finish the shards first")


def _copy_shards(shard_paths: Sequence[Path], temporary: str, index: _ShardIndex, attrs: dict[str, Any],
                 missing_order: list[str], chunk_rows: int) -> None:
    """Write every shard's committed rows, then all missing names, into a new file at `temporary`."""
    sources = [h5py.File(p, "r") for p in shard_paths]
    try:
        writer = TeacherLogitsWriter(temporary, num_classes=int(index.num_classes), attrs=attrs,
                                     dtype=str(np.dtype(index.dtype)), resume=False)
        try:
            # shard by shard, in row order, in blocks: sequential reads, bounded memory
            for source in sources:
                rows = _committed_rows(source)
                for start in range(0, rows, chunk_rows):
                    stop = min(rows, start + chunk_rows)
                    names = [_decode_name(n) for n in source["audio_name"][start:stop]]
                    writer.write(names, source["logits"][start:stop])
                    writer.flush()
            writer.write_missing(missing_order)
        finally:
            writer.close()
    finally:
        for source in sources:
            source.close()


def _write_merged(shard_paths: Sequence[Path], output: Path, index: _ShardIndex, missing_order: list[str],
                  chunk_rows: int) -> None:
    """Write the merged file to a temporary name beside `output`, then rename it over `output`."""
    output.parent.mkdir(parents=True, exist_ok=True)
    handle_fd, temporary = temporary_file(output)
    os.close(handle_fd)
    os.unlink(temporary)
    attrs = dict(index.setup or {})
    attrs.pop("num_classes", None)
    attrs["merged_from"] = [p.name for p in shard_paths]
    # the output may be a live file of a running labelling job: never replace it under that job
    output_lock = FileLock(lock_path_for(output), what=f"writing {output}").acquire()
    try:
        _copy_shards(shard_paths, temporary, index, attrs, missing_order, chunk_rows)
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
        output_lock.release()


def merge_teacher_logits(shard_paths: Sequence[PathLike], output: PathLike, *,
                         expected_names: Optional[Sequence[str]] = None, chunk_rows: int = 65536) -> dict[str, Any]:
    """Merge teacher-logits shard files into `output`, by name, atomically (temp file + rename).

    Checks: all shards have the same number of classes, dtype and teacher setup (attributes
    other than creation time / shard bookkeeping); no clip name appears twice (in two shards,
    or as labelled in one and missing in another). With `expected_names` (the clips of the
    labelled dataset), every expected clip must be labelled or recorded missing. Rows are
    written shard by shard in row order (readers join by name). Missing (undecodable) clips of all
    shards are kept in the `missing_audio_name` record.

    Returns a summary: output, shards, rows, missing, missing_names.
    """
    shard_paths = [Path(p) for p in shard_paths]
    if not shard_paths:
        raise ValueError("merge_teacher_logits: no shard files given")
    output = Path(output)
    index = _ShardIndex(shard_paths)
    for shard_index, path in enumerate(shard_paths):
        index.add(shard_index, path)
    if expected_names is not None:
        index.check_covers(expected_names)
    missing_order = list(index.missing)
    _write_merged(shard_paths, output, index, missing_order, chunk_rows)
    log.info("merged %d shard(s) into %s: %d rows, %d missing", len(shard_paths), output, len(index.where),
             len(missing_order))
    return {"output": str(output), "shards": [str(p) for p in shard_paths], "rows": len(index.where),
            "missing": len(missing_order), "missing_names": missing_order}
