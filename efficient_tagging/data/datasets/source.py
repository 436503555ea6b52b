"""One way to name a dataset and its parts, for every command that reads one.

Fine-tuning, evaluation, teacher labelling and preparation all take "which dataset, where, which
part": a `DatasetSource` says it once (`kind` plus the layout's own arguments) and `open(role)`
builds the dataset of a part:

    role     what it is                                     ESC-50          FSD50K  DCASE20          OpenMIC  CSV        folder
    train    the clips trained on                           folds != fold   train   fold1_train      train    train_csv  train
    val      evaluated every epoch, picks best.pt           fold            val     fold1_evaluate   test     eval_csv   eval
    test     reported once at the end with best.pt          -               eval    -                -        -          -
    all      every labelled clip (teacher logits for KD)    all 5 folds     train   fold1_train      train    train_csv  all

(OpenMIC has no validation split: its reference recipe evaluates on the test split every epoch,
as the ESC-50 and DCASE recipes do on their held-out part.) An AudioSet-format pair of HDF5 lists
is `kind="hdf5"` (train_hdf5 / eval_hdf5).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ...labels import LabelMap
from .dcase20 import DCASE20
from .esc50 import ESC50, ESC50_FOLDS, esc50_folds
from .own import CSVDataset, FolderDataset

if TYPE_CHECKING:
    from ..teacher_logits import TeacherLogits

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

DATASET_KINDS = ("esc50", "fsd50k", "dcase20", "openmic", "csv", "folder", "hdf5")
ROLES = ("train", "val", "test", "all")
# the clip length each layout's reference recipe uses (None: derived from the files)
DEFAULT_CLIP_LENGTH: dict[str, Optional[float]] = {"esc50": 5.0, "fsd50k": 10.0, "dcase20": 10.0, "openmic": 10.0,
                                                    "csv": None, "folder": None, "hdf5": 10.0}


class DatasetSourceError(ValueError):
    """A DatasetSource that lacks what its kind needs (names the missing argument/flag)."""


@dataclass
class DatasetSource:
    """Which dataset, where: `kind` and the arguments of its layout (see the module docstring).

    esc50 / fsd50k / dcase20 / openmic: `dataset_dir` (plus `fold` for ESC-50); csv: `train_csv`
    (+ `eval_csv`, `audio_root`, `task`); folder: `audio_dir` (+ `eval_fraction`, `seed`); hdf5:
    `train_hdf5` (+ `eval_hdf5`). `variable_eval_length` (FSD50K's reference flag): val/test clips
    at their own length.
    """

    kind: str
    dataset_dir: Optional[str] = None
    fold: int = 1
    train_csv: Optional[str] = None
    eval_csv: Optional[str] = None
    audio_root: Optional[str] = None
    audio_dir: Optional[str] = None
    eval_fraction: float = 0.2
    task: Optional[str] = None
    seed: int = 0
    train_hdf5: list[str] = field(default_factory=list)
    eval_hdf5: list[str] = field(default_factory=list)
    variable_eval_length: bool = False

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise DatasetSourceError(f"unknown dataset kind {self.kind!r}; expected one of {', '.join(DATASET_KINDS)}")
        needs = {"esc50": "dataset_dir", "fsd50k": "dataset_dir", "dcase20": "dataset_dir", "openmic": "dataset_dir",
                 "csv": "train_csv", "folder": "audio_dir", "hdf5": "train_hdf5"}[self.kind]
        if not getattr(self, needs):
            raise DatasetSourceError(f"dataset {self.kind} needs --{needs} (where the data is)")
        if self.kind == "esc50" and self.fold not in ESC50_FOLDS:
            raise DatasetSourceError(f"ESC-50 fold must be one of {list(ESC50_FOLDS)}, got {self.fold!r}")
        if isinstance(self.train_hdf5, (str, Path)):
            self.train_hdf5 = [str(self.train_hdf5)]
        if isinstance(self.eval_hdf5, (str, Path)):
            self.eval_hdf5 = [str(self.eval_hdf5)]
        self._train_label_map: Optional[LabelMap] = None

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this source has parts for ("train", "val" and, for FSD50K, "test")."""
        if self.kind == "fsd50k":
            return ("train", "val", "test")
        if self.kind == "csv" and not self.eval_csv or self.kind == "hdf5" and not self.eval_hdf5:
            return ("train",)
        if self.kind == "folder" and self.eval_fraction == 0 and not (Path(self.audio_dir or "") / "eval").is_dir():
            return ("train",)
        return ("train", "val")

    @property
    def default_clip_length(self) -> Optional[float]:
        return DEFAULT_CLIP_LENGTH[self.kind]

    def describe(self, role: str) -> str:
        where = {"esc50": self.dataset_dir, "fsd50k": self.dataset_dir, "dcase20": self.dataset_dir,
                 "openmic": self.dataset_dir, "folder": self.audio_dir,
                 "csv": self.eval_csv if role == "val" else self.train_csv,
                 "hdf5": ", ".join(self.eval_hdf5 if role == "val" else self.train_hdf5)}[self.kind]
        fold = f" (fold {self.fold} held out)" if self.kind == "esc50" and role != "all" else ""
        return f"{self.kind} {role}{fold}: {where}"

    def open(self, role: str, *, sample_rate: int = 32000, clip_length: Optional[float] = None,
             teacher_logits: Union["TeacherLogits", PathLike, None] = None, replace_undecodable: bool = True,
             label_map: Optional[LabelMap] = None) -> Any:
        """The dataset of `role` at `sample_rate`; `clip_length` None = the layout's default (csv/folder:
        derived from the files). val/test of a csv source use the training CSV's label map (or `label_map`)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if role not in self.roles and role != "all":
            raise DatasetSourceError(f"{self.kind} dataset has no {role!r} part "
                                     f"({'give --eval_csv' if self.kind == 'csv' else 'give --eval_hdf5' if self.kind == 'hdf5' else 'its parts are ' + ', '.join(self.roles)})")
        clip_length = clip_length if clip_length is not None else self.default_clip_length
        common: dict[str, Any] = dict(sample_rate=sample_rate, teacher_logits=teacher_logits,
                                      replace_undecodable=replace_undecodable)
        variable = self.variable_eval_length and role in ("val", "test")
        if self.kind == "esc50":
            folds = list(ESC50_FOLDS) if role == "all" else esc50_folds(self.fold)[0 if role == "train" else 1]
            return ESC50(self.dataset_dir, folds, clip_length=clip_length, seed=self.seed, **common)
        if self.kind == "dcase20":
            split = "evaluate" if role == "val" else "train"
            return DCASE20(self.dataset_dir, split, clip_length=clip_length, seed=self.seed, **common)
        if self.kind == "fsd50k":
            from .fsd50k import fsd50k_dataset  # with its converter: imported when used
            split = {"train": "train", "all": "train", "val": "val", "test": "eval"}[role]
            return fsd50k_dataset(self.dataset_dir, split, clip_length=clip_length, variable_length=variable,
                                  seed=self.seed, **common)
        if self.kind == "openmic":
            from .openmic import openmic_dataset
            split = "test" if role == "val" else "train"
            return openmic_dataset(self.dataset_dir, split, clip_length=clip_length, variable_length=variable,
                                   seed=self.seed, **common)
        if self.kind == "hdf5":
            from ..hdf5 import AudioSetDataset, read_label_map
            paths = self.eval_hdf5 if role == "val" else self.train_hdf5
            # files without a num_classes attribute (PaSST's) take the training files' class count
            num_classes = (AudioSetDataset(self.train_hdf5, sample_rate=sample_rate).num_classes
                           if role == "val" else None)
            return AudioSetDataset(paths, clip_length=clip_length, variable_length=variable, seed=self.seed,
                                   num_classes=num_classes, label_map=label_map or read_label_map(self.train_hdf5[0]),
                                   **common)
        if self.kind == "csv":
            if role == "val":
                train = self._train_map(sample_rate, clip_length) if label_map is None else label_map
                return CSVDataset(self.eval_csv, self.audio_root, label_map=train, task=self.task,
                                  clip_length=clip_length, seed=self.seed, **common)
            dataset = CSVDataset(self.train_csv, self.audio_root, label_map=label_map, task=self.task,
                                 clip_length=clip_length, seed=self.seed, **common)
            self._train_label_map = dataset.label_map
            return dataset
        split = {"train": "train", "val": "eval", "all": "all"}[role]
        return FolderDataset(self.audio_dir, split, eval_fraction=self.eval_fraction, seed=self.seed,
                             clip_length=clip_length, **common)

    def _train_map(self, sample_rate: int, clip_length: Optional[float]) -> LabelMap:
        if self._train_label_map is None:
            # the label map only: a clip length (any) avoids probing every file's duration
            self._train_label_map = CSVDataset(self.train_csv, self.audio_root, task=self.task,
                                               clip_length=clip_length or 1.0, sample_rate=sample_rate).label_map
        return self._train_label_map
