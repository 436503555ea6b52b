"""Teacher-logits HDF5 files: precomputed teacher-ensemble logits, joined to clips by name.

Layout:

    audio_name  (N,)    clip names, the same naming as the audio HDF5 (e.g. "Y--4gqARaEJE.mp3")
    logits      (N, C)  float32 or float16
    attrs               num_classes, num_rows (committed row count), created, and the
                        caller's description of the teachers (names, preprocessing,
                        sample_rate, ensemble rule, source dataset, ...) stored as JSON strings

Rows are looked up by name, never by position, so a file may cover any subset of a dataset
in any order; partial files are valid. Only the first `num_rows` rows are committed: a
writer killed between flushes leaves a readable file whose extra rows (if any) are ignored.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import h5py
import numpy as np

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

# Attributes allowed to differ when a file is resumed.
_VOLATILE_ATTRS = ("created", "creation_time", "updated")


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


class TeacherLogits:
    """Read-only access to a teacher-logits HDF5 file, by clip name.

    The name -> row index is built once (on first use) from the `audio_name` column; logits
    are read per lookup. HDF5 handles are opened lazily per process, so the object can be
    passed to DataLoader workers (forked or spawned).
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"teacher-logits file not found: {self.path}")
        with h5py.File(self.path, "r") as handle:
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
        self._index: Optional[dict[str, int]] = None
        self._handle: Optional[h5py.File] = None
        self._pid: Optional[int] = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def _file(self) -> h5py.File:
        if self._pid != os.getpid():
            self._handle = None  # a parent's handle is unusable after fork
            self._pid = os.getpid()
        if self._handle is None:
            self._handle = h5py.File(self.path, "r")
        return self._handle

    @property
    def index(self) -> dict[str, int]:
        """audio_name -> row (later rows win if a name repeats)."""
        if self._index is None:
            names = self._file()["audio_name"][: self.num_rows]
            self._index = {_decode_name(name): row for row, name in enumerate(names)}
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
        return np.asarray(self._file()["logits"][row], dtype=np.float32)

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


class TeacherLogitsWriter:
    """Append teacher logits to an HDF5 file, resumably and crash-safely.

    `write()` only buffers rows in memory; `flush()` appends the buffer to the file, then
    advances the committed row counter (`num_rows` attribute) and flushes HDF5. Between
    flushes the file on disk is never touched, so a process killed at any time (even with
    kill -9) loses at most the rows written since the last flush and leaves a readable
    file. Reopening with `resume=True` trims anything past the committed count and carries
    on; `existing_names()` tells the caller which clips to skip.

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
        clash = [key for key in attrs if key in ("num_classes", "num_rows")]
        if clash:
            raise ValueError(f"attrs may not set {clash}: the writer manages them")
        self.path = Path(path)
        self.num_classes = int(num_classes)
        self.dtype = np.dtype(dtype)
        self._names: list[str] = []        # committed names, in row order
        self._name_set: set[str] = set()   # committed + buffered
        self._buffer_names: list[str] = []
        self._buffer_logits: list[np.ndarray] = []
        self.duplicates_skipped = 0

        encoded = {key: json.dumps(value) for key, value in attrs.items()}
        if resume and self.path.is_file():
            self._file = h5py.File(self.path, "r+")
            self._open_existing(encoded)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = h5py.File(self.path, "w")
            self._file.create_dataset("audio_name", shape=(0,), maxshape=(None,), chunks=(1024,),
                                      dtype=h5py.string_dtype("utf-8"))
            self._file.create_dataset("logits", shape=(0, self.num_classes), maxshape=(None, self.num_classes),
                                      chunks=(max(1, min(1024, 2 ** 20 // (self.num_classes * self.dtype.itemsize))),
                                              self.num_classes), dtype=self.dtype)
            self._file.attrs["num_classes"] = self.num_classes
            self._file.attrs["num_rows"] = 0
            self._file.attrs["created"] = json.dumps(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            for key, value in encoded.items():
                self._file.attrs[key] = value
            self._file.flush()

    def _open_existing(self, encoded: dict[str, str]) -> None:
        handle = self._file
        problem = self._resume_problem(handle, encoded)
        if problem:
            handle.close()
            raise ValueError(f"{self.path}: {problem}")
        logits = handle["logits"]
        committed = _committed_rows(handle)
        if handle["audio_name"].shape[0] != committed or logits.shape[0] != committed:
            log.warning("%s: dropping %d uncommitted row(s) left by an interrupted writer", self.path,
                        max(handle["audio_name"].shape[0], logits.shape[0]) - committed)
            handle["audio_name"].resize((committed,))
            logits.resize((committed, self.num_classes))
        handle.attrs["num_rows"] = committed
        for key, value in encoded.items():
            if key not in handle.attrs:
                handle.attrs[key] = value
        handle.attrs["updated"] = json.dumps(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        handle.flush()
        self._names = [_decode_name(name) for name in handle["audio_name"][()]]
        self._name_set = set(self._names)

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
            return (f"existing attributes {differing} differ from the requested ones; these logits come from "
                    f"another teacher setup (use resume=False or another path)")
        return None

    def __len__(self) -> int:
        """Rows written so far (committed + buffered)."""
        return len(self._names) + len(self._buffer_names)

    def existing_names(self) -> set[str]:
        """Names already in the file or buffered: the clips a resumed run can skip."""
        return set(self._name_set)

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
        finite = np.isfinite(logits).all(axis=1)
        if not finite.all():
            raise ValueError(f"{self.path}: non-finite logits for {names[int(np.argmin(finite))]!r}")
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
            self._buffer_logits.append(logits[keep].astype(self.dtype))
        return len(keep)

    def flush(self) -> None:
        """Append buffered rows to the file and commit them (durable once this returns)."""
        if self._file is None or not self._buffer_names:
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

    def close(self) -> None:
        """Flush and close."""
        if self._file is None:
            return
        try:
            self.flush()
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> "TeacherLogitsWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        # Rows computed before an error are still valid logits: keep them.
        self.close()
