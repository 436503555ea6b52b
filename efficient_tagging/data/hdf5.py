"""AudioSet-format HDF5 files: writer, packed targets and the training/eval dataset.

Layout (the PaSST/EfficientAT one, so existing files work unchanged):

    audio_name  (N,)  fixed-length bytes, e.g. b"Y--4gqARaEJE.mp3"
    mp3         (N,)  variable-length uint8: the encoded file bytes (any codec PyAV decodes)
    target      (N, ceil(C / 8)) uint8: np.packbits of the multi-hot label vector

Optional attributes written by `AudioSetHDF5Writer`: `num_classes`, `sample_rate` (of the
encoded audio) and `label_names` / `label_ids` (JSON lists). Files without attributes (the
users' own PaSST/EfficientAT files) are read with `num_classes` from the caller (default 527).
"""
from __future__ import annotations

import bisect
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import h5py
import numpy as np
import torch
from ..audio import AudioDecodeError, decode_audio, resample
from ..labels import AUDIOSET_NUM_CLASSES, LabelMap
from ..textfile import InputFileError
from .clip_dataset import ClipDataset

if TYPE_CHECKING:
    from .teacher_logits import TeacherLogits

log = logging.getLogger(__name__)

PathLike = Union[str, Path]



# ----------------------------------------------------------------------------- targets

def pack_targets(multi_hot: np.ndarray) -> np.ndarray:
    """Pack a multi-hot (…, C) vector/matrix of 0/1 (or bool) values to uint8 bits along the last axis."""
    array = np.asarray(multi_hot)
    if array.dtype != np.bool_:
        if array.size and not np.isin(array, (0, 1)).all():
            raise ValueError(f"targets must be multi-hot (only 0/1 values), got values {np.unique(array)[:8]}")
        array = array.astype(bool)
    return np.packbits(array, axis=-1)


def unpack_targets(packed: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse of `pack_targets`: (…, ceil(C/8)) uint8 -> (…, C) float32 multi-hot."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.shape[-1] != (num_classes + 7) // 8:
        raise ValueError(f"packed targets have {packed.shape[-1]} bytes per row, but {num_classes} classes "
                         f"need {(num_classes + 7) // 8}")
    return np.unpackbits(packed, axis=-1, count=num_classes).astype(np.float32)


# ----------------------------------------------------------------------------- reading helpers

def _decode_name(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def open_hdf5(path: PathLike, mode: str = "r", **options: Any) -> h5py.File:
    """`h5py.File(path, mode)`; a file that is not HDF5 (or is damaged) is an InputFileError naming it and
    what was expected, not h5py's bare "file signature not found"."""
    try:
        return h5py.File(path, mode, **options)
    except OSError as error:
        if "signature" in str(error) or "truncated" in str(error) or "bad object header" in str(error):
            raise InputFileError(f"{path}: not an HDF5 file, or a damaged one ({error}); this takes AudioSet-format HDF5 "
                             f"files (audio_name, mp3, target: see efficient_tagging.data.prepare to pack audio "
                             f"into one) or teacher-logits HDF5 files") from None
        raise


def read_audio_names(path: PathLike) -> list[str]:
    """The `audio_name` column of an AudioSet-format (or teacher-logits) HDF5 file as a list of str."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HDF5 file not found: {path}")
    with open_hdf5(path) as handle:
        if "audio_name" not in handle:
            raise KeyError(f"{path}: no 'audio_name' dataset (found {sorted(handle.keys())})")
        return [_decode_name(name) for name in handle["audio_name"][()]]


def read_label_map(path: PathLike) -> Optional[LabelMap]:
    """The label map stored in the file's `label_names`/`label_ids` attributes, or None if absent."""
    with open_hdf5(path) as handle:
        if "label_names" not in handle.attrs:
            return None
        names = json.loads(_decode_name(handle.attrs["label_names"]))
        ids = json.loads(_decode_name(handle.attrs["label_ids"])) if "label_ids" in handle.attrs else None
        return LabelMap.from_names(names, ids)


def _file_num_classes(handle: h5py.File, path: Path, requested: Optional[int]) -> int:
    """Class count of one file: the `num_classes` attribute, checked against `requested` and the target width."""
    stored = int(handle.attrs["num_classes"]) if "num_classes" in handle.attrs else None
    if requested is not None and stored is not None and requested != stored:
        raise ValueError(f"{path}: file stores num_classes={stored}, but num_classes={requested} was requested")
    num_classes = requested if requested is not None else (stored if stored is not None else AUDIOSET_NUM_CLASSES)
    width = handle["target"].shape[-1]
    if width != (num_classes + 7) // 8:
        raise ValueError(f"{path}: 'target' has {width} bytes per row, which cannot hold num_classes={num_classes} "
                         f"(needs {(num_classes + 7) // 8}); pass the right num_classes")
    return num_classes


# ----------------------------------------------------------------------------- writer

class AudioSetHDF5Writer:
    """Write an AudioSet-format HDF5 file clip by clip, atomically.

    Rows go to `path + ".partial"`; `close()` renames it to `path` only when everything was
    written. Used as a context manager, an exception inside the block removes the partial file,
    so a broken run never leaves a half-written file at `path`. Extra file attributes can be
    set in `writer.attrs` before closing. With `target_width` set, targets are stored unpacked as
    float32 rows of that width instead of packed bits (OpenMIC's 20 relevances + 20 mask values).

        with AudioSetHDF5Writer("train.hdf", num_classes=527) as writer:
            writer.add("Y--4gqARaEJE.mp3", mp3_bytes, multi_hot)
    """

    def __init__(self, path: PathLike, num_classes: int, sample_rate: int = 32000,
                 label_map: Optional[LabelMap] = None, expected_rows: Optional[int] = None,
                 block_rows: int = 256, target_width: Optional[int] = None):
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if label_map is not None and len(label_map) != num_classes:
            raise ValueError(f"label map has {len(label_map)} classes but num_classes={num_classes}")
        self.path = Path(path)
        self.partial_path = Path(str(self.path) + ".partial")
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.label_map = label_map
        self.block_rows = block_rows
        if target_width is not None and target_width <= 0:
            raise ValueError(f"target_width must be positive, got {target_width}")
        self.target_width = target_width
        width = (num_classes + 7) // 8 if target_width is None else int(target_width)
        self.partial_path.parent.mkdir(parents=True, exist_ok=True)
        self._file: Optional[h5py.File] = h5py.File(self.partial_path, "w")
        capacity = max(int(expected_rows or 0), 0)  # preallocated; the unused tail is trimmed at close
        chunk = 1024
        self._mp3 = self._file.create_dataset("mp3", shape=(capacity,), maxshape=(None,),
                                              dtype=h5py.vlen_dtype(np.uint8), chunks=(chunk,))
        self._target = self._file.create_dataset("target", shape=(capacity, width), maxshape=(None, width),
                                                 dtype=np.uint8 if target_width is None else np.float32,
                                                 chunks=(chunk, width))
        # Names are kept in memory and written at close: the column is fixed-length bytes
        # (S{n}, as in the reference files) and n is only known once every name has been seen.
        self._names: list[str] = []
        self._seen: set[str] = set()
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._written = 0
        # Extra file attributes, written at close (str/number as they are, anything else as JSON).
        self.attrs: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, audio_name: str) -> bool:
        return audio_name in self._seen

    def add(self, audio_name: str, encoded: bytes, target: np.ndarray) -> None:
        """Append one clip: its name, encoded audio bytes and multi-hot target (length num_classes)."""
        if self._file is None:
            raise RuntimeError(f"{self.path}: writer is closed")
        if not audio_name:
            raise ValueError("audio_name must be a non-empty string")
        if audio_name in self._seen:
            raise ValueError(f"{self.path}: duplicate audio_name {audio_name!r}")
        if not encoded:
            raise ValueError(f"{audio_name}: encoded audio is empty")
        target = np.asarray(target)
        expected = self.num_classes if self.target_width is None else self.target_width
        if target.shape != (expected,):
            raise ValueError(f"{audio_name}: target has shape {target.shape}, expected ({expected},)")
        if self.target_width is None:
            packed = pack_targets(target)
        else:
            packed = target.astype(np.float32)
            if not np.isfinite(packed).all():
                raise ValueError(f"{audio_name}: target has non-finite values")
        self._names.append(audio_name)
        self._seen.add(audio_name)
        self._pending.append((np.frombuffer(bytes(encoded), dtype=np.uint8), packed))
        if len(self._pending) >= self.block_rows:
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        start, stop = self._written, self._written + len(self._pending)
        if stop > self._mp3.shape[0]:
            self._mp3.resize((stop,))
            self._target.resize((stop, self._target.shape[1]))
        for offset, (encoded, _) in enumerate(self._pending):
            self._mp3[start + offset] = encoded
        self._target[start:stop] = np.stack([packed for _, packed in self._pending])
        self._written = stop
        self._pending = []

    def close(self) -> None:
        """Finish the file and move it to `path` (replacing an existing file there)."""
        if self._file is None:
            return
        try:
            self._write_pending()
            # Trim a preallocated (expected_rows) tail.
            self._mp3.resize((self._written,))
            self._target.resize((self._written, self._target.shape[1]))
            width = max([len(name.encode("utf-8")) for name in self._names] + [1])
            self._file.create_dataset("audio_name", data=np.array([n.encode("utf-8") for n in self._names],
                                                                  dtype=f"S{width}"))
            for key, value in self.attrs.items():
                plain = isinstance(value, (str, bytes, int, float, np.generic))
                self._file.attrs[key] = value if plain else json.dumps(value)
            self._file.attrs["num_classes"] = self.num_classes
            self._file.attrs["sample_rate"] = self.sample_rate
            if self.label_map is not None:
                self._file.attrs["label_names"] = json.dumps(list(self.label_map.names))
                self._file.attrs["label_ids"] = json.dumps(list(self.label_map.ids))
            self._file.close()
        except BaseException:
            self.abort()
            raise
        self._file = None
        os.replace(self.partial_path, self.path)

    def abort(self) -> None:
        """Discard everything: close and delete the partial file."""
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # the file may already be unusable; removing it is what matters
                pass
            self._file = None
        self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> "AudioSetHDF5Writer":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ----------------------------------------------------------------------------- dataset

class AudioSetDataset(ClipDataset):
    """Clips from one or more AudioSet-format HDF5 files (concatenated in the given order).

    Each item is a dict:
        waveform        float32 (clip_length * sample_rate,) mono, resampled from the file's rate
        target          float32 (num_classes,) multi-hot
        teacher_logits  float32 (num_classes,) joined by audio_name (zeros when missing)
        has_teacher     bool tensor: whether teacher logits were found for this clip
        index           int: global index of the clip actually returned
        audio_name      str
        skipped         int: clips that failed to decode before this one was produced
        decoded         bool: False only with replace_undecodable=False for a clip that failed

    Undecodable or empty clips are never raised: they are logged (name + file), counted and
    (unless `replace_undecodable=False`, for labelling and evaluation) replaced by another clip drawn deterministically from (seed, index, attempt); `index`,
    `audio_name`, target and teacher logits then describe the replacement. `skipped_clips`
    counts failures in the *current process* only: with DataLoader workers every worker
    counts its own, so trainers should sum the per-item `skipped` field over batches instead.

    `load_waveform(index)` decodes one clip itself (no replacement); `cache_fingerprint()` describes
    everything that determines the waveforms; when `waveform_source` is set (by
    data.waveform_cache.CachedWaveforms), items take their waveforms from it instead of decoding,
    with the same replacement/reporting of clips it reports undecodable (AudioDecodeError).

    HDF5 handles are opened lazily in the process that reads (and reopened after a fork),
    so the dataset can be pickled and handed to DataLoader workers safely. Calling
    `teacher_coverage()` before creating the DataLoader builds the teacher name index once
    in the parent (forked workers inherit it) and gives the numbers to report.
    """

    def __init__(self, hdf5_paths: Union[PathLike, Sequence[PathLike]], sample_rate: int = 32000,
                 clip_length: float = 10.0, num_classes: Optional[int] = None,
                 teacher_logits: Union["TeacherLogits", PathLike, None] = None,
                 max_resample_retries: int = 10, seed: int = 0, replace_undecodable: bool = True,
                 variable_length: bool = False, label_map: Optional[LabelMap] = None):
        if isinstance(hdf5_paths, (str, Path)):
            hdf5_paths = [hdf5_paths]
        self.paths = [Path(p) for p in hdf5_paths]
        if not self.paths:
            raise ValueError("AudioSetDataset needs at least one HDF5 file")
        self._init_clips(sample_rate, clip_length, max_resample_retries=max_resample_retries, seed=seed,
                         replace_undecodable=replace_undecodable)
        # Evaluation of clips at their own length (FSD50K's `--variable_eval_length`): no pad/cut,
        # so batch size 1.
        self.variable_length = bool(variable_length)

        lengths: list[int] = []
        self.file_sample_rates: list[Optional[int]] = []
        resolved = num_classes
        for path in self.paths:
            if not path.is_file():
                raise FileNotFoundError(f"HDF5 file not found: {path}")
            with open_hdf5(path) as handle:
                missing = [key for key in ("audio_name", "mp3", "target") if key not in handle]
                if missing:
                    raise KeyError(f"{path}: not an AudioSet-format HDF5 file, missing dataset(s) {missing}")
                n = handle["audio_name"].shape[0]
                if handle["mp3"].shape[0] != n or handle["target"].shape[0] != n:
                    raise ValueError(f"{path}: column lengths differ (audio_name {n}, mp3 {handle['mp3'].shape[0]}, "
                                     f"target {handle['target'].shape[0]})")
                file_classes = self._check_targets(handle, path, num_classes)
                if resolved is not None and file_classes != resolved:
                    raise ValueError(f"{path}: has {file_classes} classes but earlier files have {resolved}")
                resolved = file_classes
                self.file_sample_rates.append(int(handle.attrs["sample_rate"]) if "sample_rate" in handle.attrs
                                              else None)
                lengths.append(n)
        self.num_classes = int(resolved)
        self.lengths = lengths
        self.offsets = np.cumsum([0] + lengths).tolist()
        self._refuse_duplicate_names()

        self.attach_teacher_logits(teacher_logits)

        self._handles: dict[int, h5py.File] = {}
        # h5py Dataset objects of each open file: a `handle[key]` lookup costs about as much as the
        # row read itself, and every item reads three columns
        self._columns: dict[tuple[int, str], h5py.Dataset] = {}
        self._pid: Optional[int] = None
        self._audio_names: Optional[list[str]] = None
        self._targets: Optional[np.ndarray] = None
        self._label_map: Optional[LabelMap] = label_map
        self._label_map_read = label_map is not None
        if label_map is not None and len(label_map) != self.num_classes:
            raise ValueError(f"label_map has {len(label_map)} classes, the files {self.num_classes}")

    def _refuse_duplicate_names(self) -> None:
        """Clips are joined to teacher logits, and labelled, by `audio_name`: two rows of one name would
        silently share one clip's logits. Refused when the files are opened, naming the first ones.

        Cheap at AudioSet size: the names are compared as one numpy bytes array (about 1 s and 60 MB
        transient for 2 million names), never as Python strings."""
        columns = []
        for path in self.paths:
            with h5py.File(path, "r") as handle:
                columns.append(np.asarray(handle["audio_name"][()]))
        names = np.concatenate(columns) if len(columns) > 1 else columns[0]
        if names.size < 2:
            return
        unique, counts = np.unique(names, return_counts=True)
        if int(counts.max()) < 2:
            return
        repeated = unique[counts > 1]
        extra_rows = int((counts[counts > 1] - 1).sum())
        examples = []
        for name in repeated[:3]:
            rows = np.flatnonzero(names == name)[:4]
            places = [f"{self.paths[self._file_of(int(r))].name} row {int(r) - self.offsets[self._file_of(int(r))]}"
                      for r in rows]
            examples.append(f"{_decode_name(name)!r} ({', '.join(places)})")
        where = self.paths[0] if len(self.paths) == 1 else ", ".join(str(p) for p in self.paths)
        raise ValueError(
            f"{where}: {len(repeated)} audio_name(s) name more than one clip ({extra_rows} rows too many), e.g. "
            f"{'; '.join(examples)}. Clips are labelled and joined to teacher logits by name, so same-named clips "
            f"would share one clip's logits: give every clip a unique audio_name (re-pack the data with "
            f"efficient_tagging.data.prepare, or rename the repeats, e.g. with their row number)")

    def _file_of(self, row: int) -> int:
        """Index of the file holding global row `row`."""
        return int(np.searchsorted(self.offsets, row, side="right")) - 1

    # -- target layout (overridden by datasets that store targets differently, e.g. OpenMIC) --
    def _check_targets(self, handle: h5py.File, path: Path, requested: Optional[int]) -> int:
        """Class count of one file, checked against its 'target' column (packed multi-hot here)."""
        return _file_num_classes(handle, path, requested)

    def _read_labels(self, handle: h5py.File, row: int) -> dict[str, np.ndarray]:
        """The label arrays of one row: always 'target' (num_classes,), plus any extra item fields."""
        return {"target": unpack_targets(handle["target"][row], self.num_classes)}

    def _all_targets(self, handle: h5py.File) -> np.ndarray:
        """(rows, num_classes) uint8 multi-hot targets of one open file."""
        return np.unpackbits(handle["target"][()], axis=-1, count=self.num_classes)

    # -- process-local state -------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # h5py handles cannot cross processes
        state["_columns"] = {}
        state["_pid"] = None
        state["_targets"] = None  # large and cheap to reread: don't ship it to every worker
        return state

    def _file(self, file_index: int) -> h5py.File:
        if self._pid != os.getpid():
            # Inherited through fork: the parent's HDF5 handles must not be used here.
            self._handles = {}
            self._columns = {}
            self._pid = os.getpid()
        handle = self._handles.get(file_index)
        if handle is None:
            handle = h5py.File(self.paths[file_index], "r")
            self._handles[file_index] = handle
        return handle

    def _column(self, file_index: int, key: str) -> h5py.Dataset:
        """The `key` dataset of file `file_index`, opened once per process."""
        column = self._columns.get((file_index, key)) if self._pid == os.getpid() else None
        if column is None:
            column = self._file(file_index)[key]
            self._columns[(file_index, key)] = column
        return column

    def close(self) -> None:
        """Close this process's HDF5 handles (they are reopened on the next access)."""
        if self._pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
        self._handles = {}
        self._columns = {}

    # -- metadata --------------------------------------------------------------
    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(file index, row within that file) of a global clip index."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} clips")
        file_index = bisect.bisect_right(self.offsets, index) - 1
        return file_index, index - self.offsets[file_index]

    @property
    def audio_names(self) -> list[str]:
        """All clip names in dataset order (read once)."""
        if self._audio_names is None:
            names: list[str] = []
            for path in self.paths:
                names.extend(read_audio_names(path))
            self._audio_names = names
        return self._audio_names

    @property
    def targets(self) -> np.ndarray:
        """All targets as an (N, num_classes) uint8 multi-hot matrix (read once; used for sampling weights)."""
        if self._targets is None:
            parts = []
            for path in self.paths:
                with h5py.File(path, "r") as handle:
                    parts.append(self._all_targets(handle))
            self._targets = np.concatenate(parts, axis=0) if parts else np.zeros((0, self.num_classes), np.uint8)
        return self._targets

    @property
    def label_map(self) -> Optional[LabelMap]:
        """The label map stored in the first file's attributes (None if it stores none)."""
        if not self._label_map_read:
            self._label_map = read_label_map(self.paths[0])
            self._label_map_read = True
        return self._label_map

    # -- items (ClipDataset hooks) -------------------------------------------------
    def _row(self, index: int) -> tuple[h5py.File, int]:
        file_index, row = self.locate(index)
        return self._file(file_index), row

    def _clip_name(self, index: int) -> str:
        if self._audio_names is not None:  # already read (e.g. by teacher_coverage in the parent)
            return self._audio_names[index if index >= 0 else index + len(self)]
        file_index, row = self.locate(index)
        return _decode_name(self._column(file_index, "audio_name")[row])

    def _clip_source(self, index: int) -> str:
        return str(self.paths[self.locate(index)[0]])

    def _fingerprint_files(self) -> list[Any]:
        return list(self.paths)

    @property
    def _packed_targets(self) -> bool:
        """Whether the targets are this class's packed multi-hot rows (no subclass reads its own layout)."""
        return type(self)._read_labels is AudioSetDataset._read_labels

    def _clip_target(self, index: int) -> np.ndarray:
        file_index, row = self.locate(index)
        if self._packed_targets:  # from the column opened once, not through a lookup per item
            return unpack_targets(self._column(file_index, "target")[row], self.num_classes)
        return self._read_labels(self._file(file_index), row)["target"]

    def _extra_fields(self, index: int) -> dict[str, Any]:
        if self._packed_targets:  # packed targets carry no fields besides the target: nothing to read
            return {}
        handle, row = self._row(index)
        return {key: torch.from_numpy(np.ascontiguousarray(value))
                for key, value in self._read_labels(handle, row).items() if key != "target"}

    def _load_clip(self, index: int, name: str) -> torch.Tensor:
        file_index, row = self.locate(index)
        encoded = self._column(file_index, "mp3")[row]
        if encoded is None or len(encoded) == 0:
            raise AudioDecodeError(f"{name}: empty encoded audio")
        samples, native_rate = decode_audio(encoded, name=name)
        if self.variable_length:
            if len(samples) == 0:
                raise AudioDecodeError(f"{name}: no samples decoded")
            waveform = resample(samples, native_rate, self.sample_rate)
            # numpy's check: torch.isfinite over a clip is ~30x slower and runs on the intra-op threads
            if not np.isfinite(waveform.numpy()).all():
                raise AudioDecodeError(f"{name}: non-finite samples after resampling")
            return waveform.contiguous()
        return self._fit_waveform(samples, native_rate, name)
