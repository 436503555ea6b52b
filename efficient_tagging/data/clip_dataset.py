"""The part every clip dataset shares: decode with skip-and-count, teacher-logit join, the item dict.

`ClipDataset` is the base of `AudioSetDataset` (HDF5 rows) and of the file datasets in
`efficient_tagging.data.datasets` (ESC-50, DCASE2020, CSV, folders), so the one trainer and the
labelling code read all of them the same way. A subclass says where clip `index` comes from:

    _clip_name(index)           audio_name (the key of the teacher-logits join)
    _clip_source(index)         where the clip lives, for log messages (HDF5 file or audio file)
    _clip_target(index)         float32 (num_classes,) target
    _load_clip(index, name)     float32 (clip_samples,) waveform; raises on undecodable audio
    audio_names, targets        all names / the (N, C) uint8 target matrix
    _extra_fields(index)        optional extra item fields (e.g. a recording device)

and calls `_init_clips(...)` and `attach_teacher_logits(...)` from its constructor.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..audio import AudioDecodeError, pad_or_truncate, resample
from ..labels import LabelMap

if TYPE_CHECKING:
    from .teacher_logits import TeacherLogits

log = logging.getLogger(__name__)

# Bump when what `_load_clip` / `_fit_waveform` produce changes (cut margin, padding, ...):
# waveform caches key on it and rebuild instead of serving audio the current code would not make.
WAVEFORM_PIPELINE_VERSION = 1

PathLike = Union[str, Path]

TASKS = ("multilabel", "multiclass")

# Errors that mean "this clip cannot be read", never "the program is wrong": the clip is skipped.
DECODE_ERRORS = (AudioDecodeError, OSError, ValueError)


class UndecodableData(RuntimeError):
    """Too much of a training set fails to decode to train on it: the data is broken, and training on
    the rest (or on silence) would give a model without saying so."""


class ClipDataset(Dataset):
    """Base of the clip datasets; see the module docstring for what a subclass provides.

    Each item is a dict:
        waveform        float32 (clip_length * sample_rate,) mono at the dataset's sample rate
        target          float32 (num_classes,): multi-hot (multilabel) or one-hot (multiclass)
        teacher_logits  float32 (num_classes,) joined by audio_name (zeros when missing)
        has_teacher     bool tensor: whether teacher logits were found for this clip
        index           int: index of the clip actually returned
        audio_name      str
        skipped         int: clips that failed to decode before this one was produced
        decoded         bool: False only with replace_undecodable=False for a clip that failed
        label           int, multiclass datasets only: the class index (-1 for a clip without a label)
        + `_extra_fields(index)` of the subclass

    Undecodable or empty clips are never raised: they are logged (once per clip and process),
    counted and (unless `replace_undecodable=False`, for labelling and evaluation) replaced by
    another clip drawn deterministically from (seed, index, attempt); the item then describes the
    replacement. `skipped_clips` counts failures in the current process only (every DataLoader
    worker counts its own), so trainers sum the per-item `skipped` field instead.
    """

    task: str = "multilabel"
    num_classes: int
    # Where `__getitem__` takes waveforms from: None decodes; data.waveform_cache.CachedWaveforms sets
    # a callable (index -> waveform, raising AudioDecodeError for undecodable clips) on the instance.
    waveform_source: Optional[Callable[[int], torch.Tensor]] = None
    label_map: Optional[LabelMap] = None

    def _init_clips(self, sample_rate: int, clip_length: float, *, max_resample_retries: int = 10, seed: int = 0,
                    replace_undecodable: bool = True) -> None:
        if sample_rate <= 0 or clip_length <= 0:
            raise ValueError(f"sample_rate and clip_length must be positive, got {sample_rate}, {clip_length}")
        self.sample_rate = int(sample_rate)
        self.clip_length = float(clip_length)
        self.clip_samples = int(round(clip_length * sample_rate))
        self.max_resample_retries = int(max_resample_retries)
        self.seed = int(seed)
        # Training wants a usable clip for every draw; labelling/evaluation want to know which
        # clips failed: then an undecodable clip comes back as silence with `decoded` False.
        self.replace_undecodable = bool(replace_undecodable)
        self.teacher_logits: Optional["TeacherLogits"] = None
        self._skipped = 0
        self._skipped_names: list[str] = []
        self._warned: set[str] = set()

    def attach_teacher_logits(self, teacher_logits: Union["TeacherLogits", PathLike, None]) -> None:
        """Open (a path) and check the class count of the teacher logits joined by audio_name."""
        if teacher_logits is not None and not hasattr(teacher_logits, "lookup"):
            from .teacher_logits import TeacherLogits
            teacher_logits = TeacherLogits(teacher_logits)
        if teacher_logits is not None and teacher_logits.num_classes != self.num_classes:
            raise ValueError(f"teacher logits {teacher_logits.path} have {teacher_logits.num_classes} classes, "
                             f"the dataset {self.num_classes}")
        self.teacher_logits = teacher_logits

    # -- what subclasses provide ------------------------------------------------
    def _clip_name(self, index: int) -> str:
        raise NotImplementedError

    def _clip_source(self, index: int) -> str:
        raise NotImplementedError

    def _clip_target(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _load_clip(self, index: int, name: str) -> torch.Tensor:
        raise NotImplementedError

    def _extra_fields(self, index: int) -> dict[str, Any]:
        return {}

    # -- waveform cache (data.waveform_cache.CachedWaveforms) ---------------------
    def load_waveform(self, index: int) -> torch.Tensor:
        """Decode clip `index` itself (no replacement, no cache); raises AudioDecodeError if it cannot."""
        index = int(index)
        return self._load_clip(index, self._clip_name(index))

    def _fingerprint_files(self) -> list[Any]:
        """The files the waveforms come from (default: every clip's source)."""
        return sorted({str(self._clip_source(i)) for i in range(len(self))})

    def cache_fingerprint(self) -> dict[str, Any]:
        """Everything that determines the waveforms this dataset produces, as JSON-able values: the
        source files (path, size, mtime), clip count, sample rate, clip length, decoder and resampler.
        A waveform cache built for one fingerprint is never served for another."""
        if getattr(self, "variable_length", False):
            raise ValueError(f"{type(self).__name__} returns clips at their own length (variable_length): "
                             "a waveform cache holds fixed-length rows, so it cannot cache them")
        from ..audio import decoder_settings, resampler_settings
        from .waveform_cache import files_fingerprint

        return {"kind": type(self).__name__, "pipeline_version": WAVEFORM_PIPELINE_VERSION,
                **files_fingerprint(self._fingerprint_files()), "num_clips": len(self),
                "sample_rate": self.sample_rate, "clip_samples": self.clip_samples,
                "decoder": decoder_settings(), "resampler": resampler_settings()}

    @property
    def audio_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def targets(self) -> np.ndarray:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------
    def _fit_waveform(self, samples: np.ndarray, native_rate: int, name: str) -> torch.Tensor:
        """Native-rate samples -> exactly `clip_samples` at the dataset's rate (cut/pad at the end)."""
        if native_rate == self.sample_rate:
            # The common case (AudioSet HDF5s hold 32 kHz mp3): cut/zero-pad in numpy into a new
            # clip-sized array. The same values as the torch path below, but single-threaded: torch's
            # pad and isfinite ran on the intra-op threads, which with num_workers=0 are the training
            # process's and, on a busy machine, wait for each other (measured 37 ms per 10 s clip).
            samples = np.asarray(samples, dtype=np.float32)
            waveform = np.zeros(self.clip_samples, dtype=np.float32)
            kept = min(len(samples), self.clip_samples)
            waveform[:kept] = samples[:kept]
            if not np.isfinite(waveform).all():
                raise AudioDecodeError(f"{name}: non-finite samples")
            return torch.from_numpy(waveform)
        # Cut at the native rate first (cheap), keeping a margin so the resampler's edge effects
        # fall outside the clip, then cut exactly at the target rate.
        margin = 64
        samples = samples[: int(np.ceil(self.clip_length * native_rate)) + margin]
        resampled = pad_or_truncate(resample(samples, native_rate, self.sample_rate), self.clip_samples)
        # numpy's check on the tensor's memory: torch.isfinite(...).all() takes ~30x longer per clip
        if not np.isfinite(resampled.numpy()).all():
            raise AudioDecodeError(f"{name}: non-finite samples after resampling")
        return resampled.contiguous()

    @property
    def skipped_clips(self) -> int:
        """Clips that failed to decode in this process (each DataLoader worker counts its own)."""
        return self._skipped

    @property
    def skipped_names(self) -> list[str]:
        """`source:audio_name` of every failure in this process, in order (repeats included)."""
        return list(self._skipped_names)

    def _replacement(self, index: int, attempt: int) -> int:
        rng = np.random.default_rng([self.seed, index, attempt])
        other = int(rng.integers(len(self) - 1))
        return other + 1 if other >= index else other  # never the failing clip itself

    def _check_index(self, index: int) -> int:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} clips")
        return index

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(int(index))
        original = index
        skipped = 0
        while True:
            name = self._clip_name(index)
            try:
                waveform = (self._load_clip(index, name) if self.waveform_source is None
                            else self.waveform_source(index))
                break
            except DECODE_ERRORS as error:
                skipped += 1
                self._record_failure(self._clip_source(index), name, error)
                if not self.replace_undecodable:
                    return self._item(torch.zeros(self.clip_samples), self._clip_target(index), index, name,
                                      skipped, teacher=False, decoded=False)
                if skipped > self.max_resample_retries or len(self) < 2:
                    source = self._clip_source(original)
                    raise UndecodableData(
                        f"{source}: clip {original} ({self._clip_name(original)}) and the {skipped - 1} clips drawn "
                        f"to replace it all failed to decode (last: {name}: {error}). The data looks broken: "
                        f"check that its files decode (e.g. efficient_tagging.audio.decode_audio on a few), "
                        f"rather than train on what is left")
                index = self._replacement(original, skipped)
        return self._item(waveform, self._clip_target(index), index, name, skipped)

    def _record_failure(self, source: Any, name: str, error: Exception) -> None:
        key = f"{source}:{name}"
        self._skipped += 1
        self._skipped_names.append(key)
        # Warn once per clip and process; the same bad clip is drawn again every epoch.
        if key not in self._warned:
            self._warned.add(key)
            log.warning("skipping undecodable clip %s in %s: %s", name, source, error)
        else:
            log.debug("skipping undecodable clip %s in %s again", name, source)

    def _item(self, waveform: torch.Tensor, target: np.ndarray, index: int, name: str, skipped: int,
              teacher: bool = True, decoded: bool = True) -> dict[str, Any]:
        logits = self.teacher_logits.lookup(name) if (teacher and self.teacher_logits is not None) else None
        item = {
            "waveform": waveform,
            "target": torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)),
            "teacher_logits": (torch.from_numpy(np.asarray(logits, dtype=np.float32)) if logits is not None
                               else torch.zeros(self.num_classes, dtype=torch.float32)),
            "has_teacher": torch.tensor(logits is not None),
            "index": index,
            "audio_name": name,
            "skipped": skipped,
            "decoded": decoded,
        }
        if self.task == "multiclass":
            # the give-up item has no label: -1, which cross-entropy must ignore (ignore_index=-1)
            item["label"] = int(np.argmax(target)) if np.any(target) else -1
        item.update(self._extra_fields(index))
        return item

    def teacher_coverage(self) -> tuple[int, int]:
        """(found, missing) clip counts of the teacher-logits join (0, N without teacher logits)."""
        if self.teacher_logits is None:
            return 0, len(self)
        return self.teacher_logits.coverage(self.audio_names)
