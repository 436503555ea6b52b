"""ESC-50 (Piczak 2015) in its official layout as downloaded, for 5-fold cross-validation.

    <dataset_dir>/meta/esc50.csv   filename,fold,target,category,esc10,src_file,take
    <dataset_dir>/audio/           2,000 five-second 44.1 kHz wav files
    <dataset_dir>/audio_32k/       optional: the same files resampled to 32 kHz (EfficientAT/PaSST's layout)

Compared with EfficientAT's datasets/esc50.py (which reads only `audio_32k/`, loads with librosa
at 32 kHz and pads/cuts to 5 s): the same fold semantics (train = every fold but `fold`, eval =
`fold`), the same one-hot target over 50 classes and 5 s clips; differences: `audio/` (44.1 kHz)
works as well, so no resampling step before training is needed, decoding is PyAV + a windowed-sinc
resampler instead of librosa's default resampler, and the item also carries the integer `label`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from ...labels import LabelMap
from .audio_files import DatasetLayoutError, FileClipDataset, check_files_exist, one_hot, parse_int, read_table

if TYPE_CHECKING:
    from ..teacher_logits import TeacherLogits

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

ESC50_NUM_CLASSES = 50
ESC50_FOLDS = (1, 2, 3, 4, 5)
ESC50_LAYOUT = ("<dataset_dir>/meta/esc50.csv (columns filename,fold,target,category,esc10,src_file,take) and "
                "<dataset_dir>/audio/*.wav (44.1 kHz, 5 s) or a pre-resampled <dataset_dir>/audio_32k/, as in "
                "https://github.com/karolpiczak/ESC-50 (the repository's master.zip)")
# The official class names by target index; used only for a target the metadata does not list
# (a subset of the csv), so the label map always has all 50 entries.
ESC50_CATEGORIES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind", "pouring_water",
    "toilet_flush", "thunderstorm",
    "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing", "brushing_teeth",
    "snoring", "drinking_sipping",
    "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks", "can_opening", "washing_machine",
    "vacuum_cleaner", "clock_alarm", "clock_tick", "glass_breaking",
    "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells", "airplane", "fireworks",
    "hand_saw",
)


def esc50_folds(fold: int) -> tuple[list[int], list[int]]:
    """(training folds, evaluation folds) when `fold` (1..5) is held out."""
    if fold not in ESC50_FOLDS:
        raise ValueError(f"ESC-50 fold must be one of {list(ESC50_FOLDS)}, got {fold!r}")
    return [f for f in ESC50_FOLDS if f != fold], [fold]


def _audio_folder(dataset_dir: Path, audio_folder: Optional[str], sample_rate: int) -> Path:
    if audio_folder is not None:
        folder = dataset_dir / audio_folder
        if not folder.is_dir():
            raise FileNotFoundError(f"ESC-50 audio folder {folder} not found. Expected layout: {ESC50_LAYOUT}")
        return folder
    original, resampled = dataset_dir / "audio", dataset_dir / "audio_32k"
    # audio_32k is what the reference reads; it only helps when the clips are wanted at 32 kHz.
    candidates = [resampled, original] if sample_rate == 32000 else [original, resampled]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"ESC-50: neither {original} nor {resampled} exists. Expected layout: {ESC50_LAYOUT}")


def read_esc50_meta(dataset_dir: PathLike) -> tuple[list[dict[str, Any]], LabelMap]:
    """The rows of meta/esc50.csv (filename, fold, target, category) and the 50-class label map."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"ESC-50 dataset_dir {dataset_dir} does not exist. Expected layout: {ESC50_LAYOUT}")
    meta_csv = dataset_dir / "meta" / "esc50.csv"
    table = read_table(meta_csv, ("filename", "fold", "target", "category"), ESC50_LAYOUT)
    if not table:
        raise DatasetLayoutError(f"{meta_csv} lists no clips. Expected layout: {ESC50_LAYOUT}")
    rows: list[dict[str, Any]] = []
    names = list(ESC50_CATEGORIES)
    named: dict[int, str] = {}
    for row in table:
        target, fold = parse_int(meta_csv, row, "target"), parse_int(meta_csv, row, "fold")
        if not 0 <= target < ESC50_NUM_CLASSES:
            raise DatasetLayoutError(f"{meta_csv}:{row['_line']}: target {target} is outside 0..49")
        if fold not in ESC50_FOLDS:
            raise DatasetLayoutError(f"{meta_csv}:{row['_line']}: fold {fold} is outside 1..5")
        if not row["filename"]:
            raise DatasetLayoutError(f"{meta_csv}:{row['_line']}: empty filename")
        category = row["category"]
        if named.setdefault(target, category) != category:
            raise DatasetLayoutError(f"{meta_csv}:{row['_line']}: target {target} is named {category!r} here but "
                                     f"{named[target]!r} before")
        names[target] = category
        rows.append({"filename": row["filename"], "fold": fold, "target": target, "category": category})
    return rows, LabelMap.from_names(names)


class ESC50(FileClipDataset):
    """The ESC-50 clips of the given folds; single-label (multiclass) over 50 classes.

    Items are `ClipDataset` items (one-hot `target`, integer `label`) plus `fold`. The label map
    (category names ordered by target) comes from the whole metadata file, so the training and
    evaluation datasets of a fold agree. `audio_folder` None picks `audio_32k/` when it exists and
    `sample_rate` is 32 kHz, otherwise `audio/`.
    """

    def __init__(self, dataset_dir: PathLike, folds: Sequence[int], sample_rate: int = 32000,
                 clip_length: float = 5.0, *, audio_folder: Optional[str] = None,
                 teacher_logits: Union["TeacherLogits", PathLike, None] = None, max_resample_retries: int = 10,
                 seed: int = 0, replace_undecodable: bool = True, allow_missing: bool = False):
        self.dataset_dir = Path(dataset_dir)
        folds = [int(fold) for fold in ([folds] if isinstance(folds, int) else folds)]
        bad = [fold for fold in folds if fold not in ESC50_FOLDS]
        if not folds or bad:
            raise ValueError(f"ESC-50 folds must be a non-empty list of values in {list(ESC50_FOLDS)}, got {folds}")
        self.folds = sorted(set(folds))
        rows, label_map = read_esc50_meta(self.dataset_dir)
        self.audio_dir = _audio_folder(self.dataset_dir, audio_folder, sample_rate)
        rows = [row for row in rows if row["fold"] in self.folds]
        if not rows:
            raise DatasetLayoutError(f"{self.dataset_dir / 'meta' / 'esc50.csv'} lists no clips in folds {self.folds}")
        files = [self.audio_dir / row["filename"] for row in rows]
        kept = check_files_exist(files, f"ESC-50 {self.audio_dir}", allow_missing)
        rows = [rows[i] for i in kept]
        super().__init__([files[i] for i in kept], [row["filename"] for row in rows],
                         one_hot([row["target"] for row in rows], ESC50_NUM_CLASSES), label_map, "multiclass",
                         sample_rate=sample_rate, clip_length=clip_length, teacher_logits=teacher_logits,
                         max_resample_retries=max_resample_retries, seed=seed,
                         replace_undecodable=replace_undecodable, extras={"fold": [row["fold"] for row in rows]},
                         description=f"ESC-50 folds {self.folds}")

    @property
    def clip_folds(self) -> np.ndarray:
        """(N,) fold of every clip."""
        return np.asarray(self.extras["fold"], dtype=np.int64)


def esc50_train_eval(dataset_dir: PathLike, fold: int, **kwargs: Any) -> tuple[ESC50, ESC50]:
    """(training set, evaluation set) with `fold` held out; keyword arguments go to both `ESC50`s."""
    train_folds, eval_folds = esc50_folds(fold)
    return ESC50(dataset_dir, train_folds, **kwargs), ESC50(dataset_dir, eval_folds, **kwargs)
