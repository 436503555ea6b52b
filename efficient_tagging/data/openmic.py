"""OpenMIC-2018 in PaSST's HDF5 layout (the files EfficientAT's `ex_openmic.py` reads).

PaSST's `openmic/prepare_scripts/download_preprocess.py` writes two files into one folder:

    openmic_train.csv_mp3.hdf   partitions/split01_train.csv
    openmic_test.csv_mp3.hdf    partitions/split01_test.csv   (the reported mAP)

with `audio_name` (b"{sample_key}.mp3"), `mp3` (the 10 s clip as mp3 at 32 kHz) and an *unpacked*
float32 `target` of shape (N, 40): columns 0-19 are `Y_true` of openmic-2018.npz (the annotators'
relevance per instrument, 0.5 where unknown) and columns 20-39 `Y_mask` (1 where the instrument
was annotated). Clips with no annotated instrument are left out. EfficientAT trains on
`target[:, :20] > 0.5` with the BCE masked by `target[:, 20:]` and weights the per-class AP by the
mask. Items of `OpenMICDataset` carry exactly that: `target` = relevance > 0.5 (float 0/1, 0 where
unknown) and `known` = the mask (bool), both in the instrument order of the release's
`class-map.json` (`OPENMIC_LABELS`). `data.prepare.prepare_openmic` builds the two files from the
official release (openmic-2018.npz, partitions/, audio/).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import h5py
import numpy as np

from ..labels import LabelMap
from .hdf5 import AudioSetDataset

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

# The release's class-map.json ({"accordion": 0, ..., "voice": 19}): the column order of Y_true/Y_mask.
OPENMIC_LABELS = ("accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute", "guitar",
                  "mallet_percussion", "mandolin", "organ", "piano", "saxophone", "synthesizer", "trombone",
                  "trumpet", "ukulele", "violin", "voice")
OPENMIC_NUM_CLASSES = len(OPENMIC_LABELS)
OPENMIC_SPLITS = ("train", "test")
OPENMIC_HDF5_NAMES = {"train": "openmic_train.csv_mp3.hdf", "test": "openmic_test.csv_mp3.hdf"}
# A target value above this counts as positive (and a mask value as known), as in ex_openmic.py.
OPENMIC_THRESHOLD = 0.5

__all__ = ["OPENMIC_HDF5_NAMES", "OPENMIC_LABELS", "OPENMIC_NUM_CLASSES", "OpenMICDataset", "openmic_dataset",
           "openmic_files", "openmic_label_map", "read_openmic_class_map"]


def openmic_label_map() -> LabelMap:
    """The 20 OpenMIC instruments in target order."""
    return LabelMap.from_names(OPENMIC_LABELS)


def read_openmic_class_map(path: PathLike) -> LabelMap:
    """The release's `class-map.json` ({name: index}) as a LabelMap in index order."""
    path = Path(path)
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the OpenMIC class map ({error})") from error
    if not isinstance(mapping, dict) or sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"{path}: expected a JSON object {{instrument: index}} with indices 0..N-1")
    return LabelMap.from_names(sorted(mapping, key=mapping.__getitem__))


def openmic_files(dataset_dir: PathLike) -> dict[str, Path]:
    """{"train", "test"} -> path of PaSST's two OpenMIC HDF5 files in `dataset_dir` (or `dataset_dir/mp3/`).

    A missing file is a FileNotFoundError naming it, and how to build it from the official release.
    """
    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"OpenMIC dataset_dir {folder}: no such folder")
    for candidate in (folder, folder / "mp3"):
        files = {split: candidate / name for split, name in OPENMIC_HDF5_NAMES.items()}
        if all(path.is_file() for path in files.values()):
            return files
    files = {split: folder / name for split, name in OPENMIC_HDF5_NAMES.items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    raise FileNotFoundError(f"OpenMIC: missing {', '.join(missing)}; build them from the official release "
                            f"(openmic-2018-v1.0.0.tgz from Zenodo record 1432913, unpacked) with "
                            f"`python experiments/prepare_audioset.py --openmic_dir RELEASE --output_dir "
                            f"{folder}`, or use the files of PaSST's openmic/prepare_scripts/download_preprocess.py")


class OpenMICDataset(AudioSetDataset):
    """Clips of OpenMIC HDF5 files: AudioSetDataset items plus `known` (20 bools).

    `target` is float32 (20,) with 1 where the relevance is > 0.5 and the label is known, 0
    otherwise; `known` is True where the instrument was annotated: a loss or metric must ignore
    the other entries (unknown is not negative). `targets` (for sampling) is the same positive
    matrix, `known_mask` the (N, 20) mask. Everything else (decoding, undecodable clips, teacher
    logits joined by audio_name, variable_length) is AudioSetDataset's.
    """

    task = "partial_multilabel"  # the trainer's masked BCE and masked mAP

    def __init__(self, hdf5_paths: Union[PathLike, Sequence[PathLike]], sample_rate: int = 32000,
                 clip_length: float = 10.0, **kwargs: Any):
        requested = kwargs.pop("num_classes", None)
        if requested not in (None, OPENMIC_NUM_CLASSES):
            raise ValueError(f"OpenMIC has {OPENMIC_NUM_CLASSES} classes, got num_classes={requested}")
        kwargs.setdefault("label_map", openmic_label_map())
        self._known: Optional[np.ndarray] = None
        super().__init__(hdf5_paths, sample_rate=sample_rate, clip_length=clip_length,
                         num_classes=OPENMIC_NUM_CLASSES, **kwargs)

    def _check_targets(self, handle: h5py.File, path: Path, requested: Optional[int]) -> int:
        target = handle["target"]
        width = 2 * OPENMIC_NUM_CLASSES
        if target.ndim != 2 or target.shape[1] != width:
            raise ValueError(f"{path}: 'target' has shape {target.shape}, but OpenMIC files hold ({width},) rows "
                             f"per clip ({OPENMIC_NUM_CLASSES} relevances, then {OPENMIC_NUM_CLASSES} mask values)")
        if target.dtype.kind not in "fiub":
            raise ValueError(f"{path}: 'target' has dtype {target.dtype}, expected float relevances + mask")
        stored = handle.attrs.get("num_classes")
        if stored is not None and int(stored) != OPENMIC_NUM_CLASSES:
            raise ValueError(f"{path}: file stores num_classes={int(stored)}, OpenMIC has {OPENMIC_NUM_CLASSES}")
        return OPENMIC_NUM_CLASSES

    @staticmethod
    def _split(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.float32)
        known = rows[..., OPENMIC_NUM_CLASSES:] > OPENMIC_THRESHOLD
        positive = (rows[..., :OPENMIC_NUM_CLASSES] > OPENMIC_THRESHOLD) & known
        return positive, known

    def _read_labels(self, handle: h5py.File, row: int) -> dict[str, np.ndarray]:
        positive, known = self._split(handle["target"][row])
        return {"target": positive.astype(np.float32), "known": known}

    def _all_targets(self, handle: h5py.File) -> np.ndarray:
        return self._split(handle["target"][()])[0].astype(np.uint8)

    @property
    def known_mask(self) -> np.ndarray:
        """(N, 20) bool: which labels are known, in dataset order (read once)."""
        if self._known is None:
            parts = []
            for path in self.paths:
                with h5py.File(path, "r") as handle:
                    parts.append(self._split(handle["target"][()])[1])
            self._known = np.concatenate(parts, axis=0)
        return self._known

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_known"] = None  # cheap to reread, like the targets
        return state


def openmic_dataset(dataset_dir: PathLike, split: str, sample_rate: int = 32000, clip_length: float = 10.0,
                    **kwargs: Any) -> OpenMICDataset:
    """One split ("train" or "test") of OpenMIC in PaSST's layout."""
    if split not in OPENMIC_SPLITS:
        raise ValueError(f"OpenMIC split must be one of {OPENMIC_SPLITS}, got {split!r}")
    return OpenMICDataset(openmic_files(dataset_dir)[split], sample_rate=sample_rate, clip_length=clip_length,
                          **kwargs)
