"""The user's own data: a CSV of file names and labels, or a folder with one sub-folder per class.

    CSV:     filename,labels                 labels separated by ";" ("dog" or "dog;bark");
             dogs/1.wav,dog                  filename relative to audio_root (default: the CSV's
             street.flac,car;horn            folder) or absolute; extra columns are ignored
    folder:  <audio_dir>/<class>/**/<file>   one sub-folder per class (torchvision's ImageFolder
                                             convention), split by eval_fraction with a fixed seed,
             <audio_dir>/train/<class>/...   or train/ + eval/ sub-trees holding the class folders
             <audio_dir>/eval/<class>/...

Any format FFmpeg decodes, any sample rate (clips are resampled to `sample_rate`). Without a
`clip_length` it is derived from the data (`estimate_clip_length`: a percentile of the durations
that the containers state) and described in `clip_length_estimate.describe()` for the caller to
print; `task` is inferred when not given and explained in `task_reason`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from ...labels import LabelMap
from ..clip_dataset import TASKS
from .audio_files import (AUDIO_EXTENSIONS, ClipLengthEstimate, DatasetLayoutError, FileClipDataset, check_files_exist,
                   estimate_clip_length, read_table, scan_audio_files)

if TYPE_CHECKING:
    from ..teacher_logits import TeacherLogits

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

CSV_LAYOUT = ("a CSV with a header line and the columns filename,labels, one row per clip; several labels in "
              "one row are separated by ';' (e.g. 'street/0001.wav,car;horn'); filename relative to audio_root "
              "or absolute")
FOLDER_LAYOUT = ("<audio_dir>/<class name>/<audio files> (one sub-folder per class), or <audio_dir>/train/<class "
                 "name>/... and <audio_dir>/eval/<class name>/...")
FOLDER_SPLITS = ("train", "eval", "all")


def infer_task(label_lists: Sequence[Sequence[str]], source: str) -> tuple[str, str]:
    """("multilabel" | "multiclass", reason) for rows of labels: multilabel as soon as one row has 0 or 2+."""
    for row, labels in enumerate(label_lists):
        if len(labels) >= 2:
            return "multilabel", f"{source}: row {row + 1} has {len(labels)} labels ({';'.join(labels)})"
        if not labels:
            return "multilabel", f"{source}: row {row + 1} has no label (a single-label dataset needs one per row)"
    return "multiclass", f"{source}: every row has exactly one label"


def _resolve_clip_length(clip_length: Optional[float], files: Sequence[Path], percentile: float,
                         seed: int) -> tuple[float, Optional[ClipLengthEstimate]]:
    if clip_length is not None:
        return float(clip_length), None
    estimate = estimate_clip_length(files, percentile=percentile, seed=seed)
    log.info("derived %s", estimate.describe())
    return estimate.seconds, estimate


def _targets(label_lists: Sequence[Sequence[str]], label_map: LabelMap, source: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(label_map.names)}
    unknown = sorted({label for labels in label_lists for label in labels if label not in index})
    if unknown:
        raise DatasetLayoutError(f"{source}: label(s) {unknown[:10]} are not in the label map "
                                 f"({len(label_map)} classes: {list(label_map.names)[:10]}...); an evaluation set "
                                 f"may only use the training set's classes")
    targets = np.zeros((len(label_lists), len(label_map)), dtype=np.uint8)
    for row, labels in enumerate(label_lists):
        targets[row, [index[label] for label in labels]] = 1
    return targets


def _check_task(task: Optional[str], label_lists: Sequence[Sequence[str]], source: str) -> tuple[str, str]:
    if task is None:
        return infer_task(label_lists, source)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} (or None to infer it), got {task!r}")
    if task == "multiclass":
        for row, labels in enumerate(label_lists):
            if len(labels) != 1:
                raise DatasetLayoutError(f"{source}: task 'multiclass' needs exactly one label per row, but row "
                                         f"{row + 1} has {len(labels)} ({';'.join(labels) or 'none'}); use task "
                                         f"'multilabel'")
    return task, "given"


class CSVDataset(FileClipDataset):
    """Clips listed in a `filename,labels` CSV (see the module docstring for the layout).

    The label map is the sorted set of labels in the CSV unless `label_map` is given (pass the
    training set's to an evaluation set, so class indices agree; with a `label_map`, labels
    outside it are an error). `task` None infers it: multilabel if any row has two or more (or no)
    labels, otherwise multiclass; `task_reason` says why. `clip_length` None derives it from the
    durations of the listed files (`clip_length_estimate`); pass the training set's to the
    evaluation set.
    """

    def __init__(self, csv_path: PathLike, audio_root: Optional[PathLike] = None, *,
                 label_map: Optional[LabelMap] = None, task: Optional[str] = None, sample_rate: int = 32000,
                 clip_length: Optional[float] = None, clip_percentile: float = 95.0, label_separator: str = ";",
                 teacher_logits: Union["TeacherLogits", PathLike, None] = None, max_resample_retries: int = 10,
                 seed: int = 0, replace_undecodable: bool = True, allow_missing: bool = False):
        self.csv_path = Path(csv_path)
        self.audio_root = Path(audio_root) if audio_root is not None else self.csv_path.parent
        if audio_root is not None and not self.audio_root.is_dir():
            raise FileNotFoundError(f"audio_root {self.audio_root} is not a folder")
        delimiter = "\t" if self.csv_path.suffix.lower() in (".tsv", ".tab") else ","
        rows = read_table(self.csv_path, ("filename", "labels"), CSV_LAYOUT, delimiter=delimiter)
        if not rows:
            raise DatasetLayoutError(f"{self.csv_path} lists no clips. Expected: {CSV_LAYOUT}")
        for row in rows:
            if not row["filename"]:
                raise DatasetLayoutError(f"{self.csv_path}:{row['_line']}: empty filename")
        label_lists = [[label.strip() for label in row["labels"].split(label_separator) if label.strip()]
                       for row in rows]
        label_lists = [list(dict.fromkeys(labels)) for labels in label_lists]  # a label twice in a row is once
        self.task, self.task_reason = _check_task(task, label_lists, str(self.csv_path))
        log.info("%s: task %s (%s)", self.csv_path, self.task, self.task_reason)
        if label_map is None:
            names = sorted({label for labels in label_lists for label in labels})
            if not names:
                raise DatasetLayoutError(f"{self.csv_path}: no row has a label. Expected: {CSV_LAYOUT}")
            label_map = LabelMap.from_names(names)
        files = [Path(row["filename"]) if Path(row["filename"]).is_absolute() else self.audio_root / row["filename"]
                 for row in rows]
        kept = check_files_exist(files, str(self.csv_path), allow_missing)
        files, rows = [files[i] for i in kept], [rows[i] for i in kept]
        label_lists = [label_lists[i] for i in kept]
        targets = _targets(label_lists, label_map, str(self.csv_path))
        clip_length, self.clip_length_estimate = _resolve_clip_length(clip_length, files, clip_percentile, seed)
        super().__init__(files, [row["filename"] for row in rows], targets, label_map, self.task,
                         sample_rate=sample_rate, clip_length=clip_length, teacher_logits=teacher_logits,
                         max_resample_retries=max_resample_retries, seed=seed,
                         replace_undecodable=replace_undecodable, description=str(self.csv_path))


def _class_folders(root: Path, what: str) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"{what} {root} is not a folder. Expected layout: {FOLDER_LAYOUT}")
    folders = sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not folders:
        loose = [path.name for path in root.iterdir() if path.suffix.lower() in AUDIO_EXTENSIONS][:3]
        found = f" (it holds audio files directly, e.g. {loose}: put them in one sub-folder per class)" if loose else ""
        raise DatasetLayoutError(f"{what} {root} has no class sub-folders{found}. Expected layout: {FOLDER_LAYOUT}")
    return folders


def _class_files(folders: Sequence[Path], base: Path) -> dict[str, list[Path]]:
    files = {folder.name: scan_audio_files(folder) for folder in folders}
    for name, found in files.items():
        if not found:
            log.warning("class folder %s holds no audio files (endings %s)", base / name,
                        ", ".join(sorted(AUDIO_EXTENSIONS)))
    return files


def split_indices(count: int, eval_fraction: float, seed: int, salt: int = 0) -> tuple[list[int], list[int]]:
    """(train, eval) positions of `count` items: a fixed-seed shuffle, round(eval_fraction * count) for eval
    (at least one of each when count >= 2 and 0 < eval_fraction)."""
    if count == 0:
        return [], []
    n_eval = int(round(eval_fraction * count))
    if eval_fraction > 0 and count >= 2:
        n_eval = min(max(n_eval, 1), count - 1)
    order = np.random.default_rng([seed, salt]).permutation(count)
    return sorted(order[n_eval:].tolist()), sorted(order[:n_eval].tolist())


class FolderDataset(FileClipDataset):
    """Clips in one sub-folder per class (multiclass; the folder name is the class name).

    With `<audio_dir>/train/` and `<audio_dir>/eval/` both present, `split` "train"/"eval" reads
    that sub-tree (classes: the folders under train/; eval/ may hold only those). Otherwise the
    class folders sit directly in `audio_dir` and each class is split on its own (stratified) by
    `eval_fraction` with `seed`: the same arguments give the same split, and train and eval never
    share a file. `split="all"` takes every file. audio_name is the file's path relative to
    `audio_dir` (posix). `clip_length` None derives it from the durations of all files under
    `audio_dir` (so the train and eval sets get the same value).
    """

    def __init__(self, audio_dir: PathLike, split: str = "train", *, eval_fraction: float = 0.2, seed: int = 0,
                 sample_rate: int = 32000, clip_length: Optional[float] = None, clip_percentile: float = 95.0,
                 teacher_logits: Union["TeacherLogits", PathLike, None] = None, max_resample_retries: int = 10,
                 replace_undecodable: bool = True):
        if split not in FOLDER_SPLITS:
            raise ValueError(f"split must be one of {FOLDER_SPLITS}, got {split!r}")
        if not 0 <= eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        self.audio_dir = Path(audio_dir)
        self.split = split
        self.eval_fraction = float(eval_fraction)
        self.split_seed = int(seed)
        train_dir, eval_dir = self.audio_dir / "train", self.audio_dir / "eval"
        self.has_split_folders = train_dir.is_dir() and eval_dir.is_dir()
        if self.has_split_folders:
            train_files = _class_files(_class_folders(train_dir, "training folder"), train_dir)
            eval_files = _class_files(_class_folders(eval_dir, "evaluation folder"), eval_dir)
            extra = sorted(set(eval_files) - set(train_files))
            if extra:
                raise DatasetLayoutError(f"{eval_dir} has class folder(s) {extra} that {train_dir} does not have; "
                                         f"the evaluation classes must be training classes")
            classes = sorted(train_files)
            chosen = {"train": [train_files], "eval": [eval_files], "all": [train_files, eval_files]}[split]
            self.task_reason = f"{self.audio_dir}: train/ and eval/ with one sub-folder per class"
            all_files = [path for tree in (train_files, eval_files) for found in tree.values() for path in found]
            selected = [(path, name) for tree in chosen for name in classes for path in tree.get(name, [])]
        else:
            tree = _class_files(_class_folders(self.audio_dir, "audio_dir"), self.audio_dir)
            classes = sorted(tree)
            if split == "eval" and eval_fraction == 0:
                raise ValueError(f"split 'eval' of {self.audio_dir} with eval_fraction 0 is empty; pass an "
                                 f"eval_fraction > 0 or use train/ and eval/ sub-folders")
            selected = []
            for salt, name in enumerate(classes):
                train, held_out = split_indices(len(tree[name]), eval_fraction, seed, salt)
                positions = {"train": train, "eval": held_out, "all": range(len(tree[name]))}[split]
                selected.extend((tree[name][i], name) for i in positions)
            self.task_reason = f"{self.audio_dir}: one sub-folder per class"
            all_files = [path for found in tree.values() for path in found]
        if not selected:
            raise DatasetLayoutError(f"{self.audio_dir}: no audio files for split {split!r} (file endings "
                                     f"{', '.join(sorted(AUDIO_EXTENSIONS))}). Expected layout: {FOLDER_LAYOUT}")
        self.task = "multiclass"
        label_map = LabelMap.from_names(classes)
        class_index = {name: i for i, name in enumerate(classes)}
        targets = np.zeros((len(selected), len(classes)), dtype=np.uint8)
        targets[np.arange(len(selected)), [class_index[name] for _, name in selected]] = 1
        files = [path for path, _ in selected]
        clip_length, self.clip_length_estimate = _resolve_clip_length(clip_length, all_files, clip_percentile, seed)
        super().__init__(files, [path.relative_to(self.audio_dir).as_posix() for path in files], targets, label_map,
                         "multiclass", sample_rate=sample_rate, clip_length=clip_length,
                         teacher_logits=teacher_logits, max_resample_retries=max_resample_retries, seed=seed,
                         replace_undecodable=replace_undecodable, description=f"{self.audio_dir} ({split})")
