"""FSD50K in PaSST's HDF5 layout: the three files, their 200-class vocabulary and datasets.

PaSST (`fsd50k/prepare_scripts/create_h5pymp3_dataset.py`) and EfficientAT (`datasets/fsd50k.py`)
read three AudioSet-format files from one folder (`dataset_dir`):

    FSD50K.train_mp3.hdf   dev.csv rows with split == "train"
    FSD50K.val_mp3.hdf     dev.csv rows with split == "val"   (model selection)
    FSD50K.eval_mp3.hdf    eval.csv rows                      (the reported mAP)

each with `audio_name` (b"{fname}.mp3"), `mp3` (the whole clip, 0.3-30 s, as mp3 at 32 kHz; nothing
is cut) and `target` (np.packbits of the 200-class multi-hot vector, classes in the order of
`vocabulary.csv`). PaSST's files carry no attributes, so the readers here pass num_classes=200; files
written by `data.prepare.prepare_fsd50k` also store the class names. The raw release
(FSD50K.dev_audio/, FSD50K.eval_audio/, FSD50K.ground_truth/) is converted to this layout by
`prepare_audioset.py --fsd50k_dir RAW --output_dir OUT`.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Optional, Union

from ..labels import LabelMap
from ..textfile import open_text
from .hdf5 import AudioSetDataset, read_label_map

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

FSD50K_NUM_CLASSES = 200
FSD50K_SPLITS = ("train", "val", "eval")
FSD50K_HDF5_NAMES = {split: f"FSD50K.{split}_mp3.hdf" for split in FSD50K_SPLITS}
# The raw release, as unzipped from Zenodo (record 4060432).
FSD50K_GROUND_TRUTH = "FSD50K.ground_truth"
FSD50K_AUDIO_DIRS = {"dev": "FSD50K.dev_audio", "eval": "FSD50K.eval_audio"}

__all__ = ["FSD50K_HDF5_NAMES", "FSD50K_NUM_CLASSES", "FSD50K_SPLITS", "fsd50k_dataset", "fsd50k_files",
           "fsd50k_label_map", "read_fsd50k_vocabulary"]


def fsd50k_files(dataset_dir: PathLike) -> dict[str, Path]:
    """{"train", "val", "eval"} -> path of PaSST's three FSD50K HDF5 files in `dataset_dir`.

    Also accepted: the files in `dataset_dir/mp3/` (where PaSST's script writes them). A missing file
    is a FileNotFoundError naming it (and, when `dataset_dir` holds the raw release, how to convert it).
    """
    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"FSD50K dataset_dir {folder}: no such folder")
    for candidate in (folder, folder / "mp3"):
        files = {split: candidate / name for split, name in FSD50K_HDF5_NAMES.items()}
        if all(path.is_file() for path in files.values()):
            return files
    files = {split: folder / name for split, name in FSD50K_HDF5_NAMES.items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    hint = ""
    if (folder / FSD50K_GROUND_TRUTH).is_dir():
        hint = (f"; {folder} looks like the raw FSD50K release: convert it with "
                f"`python experiments/prepare_audioset.py --fsd50k_dir {folder} --output_dir OUT` "
                f"and pass OUT as the dataset_dir")
    raise FileNotFoundError(f"FSD50K: missing {', '.join(missing)} (PaSST's HDF5 layout needs "
                            f"{', '.join(FSD50K_HDF5_NAMES.values())} in one folder){hint}")


def read_fsd50k_vocabulary(path: PathLike) -> LabelMap:
    """FSD50K's `vocabulary.csv` (no header: `index,label,mid`, index 0..N-1 in order) as a LabelMap."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FSD50K vocabulary file not found: {path}")
    names: list[str] = []
    ids: list[str] = []
    with open_text(path) as handle:
        for line_number, cells in enumerate(csv.reader(handle), start=1):
            cells = [cell.strip() for cell in cells]
            if not any(cells):
                continue
            if len(cells) < 3:
                raise ValueError(f"{path}:{line_number}: expected 'index,label,mid', got {cells}")
            if not cells[0].isdigit() or int(cells[0]) != len(names):
                raise ValueError(f"{path}:{line_number}: expected index {len(names)}, got {cells[0]!r} "
                                 f"(the file has no header; indices run 0..N-1 in order)")
            names.append(cells[1])
            ids.append(cells[2])
    if not names:
        raise ValueError(f"{path}: no classes found")
    return LabelMap.from_names(names, ids)


def fsd50k_label_map(dataset_dir: PathLike) -> Optional[LabelMap]:
    """The class names of an FSD50K HDF5 folder: stored in the files, or from a `vocabulary.csv`
    next to them (in `dataset_dir` or `dataset_dir/FSD50K.ground_truth/`); None if neither exists."""
    files = fsd50k_files(dataset_dir)
    stored = read_label_map(files["train"])
    if stored is not None:
        return stored
    folder = Path(dataset_dir)
    for candidate in (folder / "vocabulary.csv", folder / FSD50K_GROUND_TRUTH / "vocabulary.csv"):
        if candidate.is_file():
            return read_fsd50k_vocabulary(candidate)
    log.info("%s: no FSD50K class names (neither stored in the files nor a vocabulary.csv next to them)", folder)
    return None


def fsd50k_dataset(dataset_dir: PathLike, split: str, sample_rate: int = 32000, clip_length: float = 10.0,
                   variable_length: bool = False, **kwargs: Any) -> AudioSetDataset:
    """One split ("train", "val" or "eval") of FSD50K in PaSST's layout, 200 classes.

    `variable_length=True` returns every clip at its own length (the reference's
    `--variable_eval_length`: batch size 1). Other keyword arguments go to AudioSetDataset.
    """
    if split not in FSD50K_SPLITS:
        raise ValueError(f"FSD50K split must be one of {FSD50K_SPLITS}, got {split!r}")
    files = fsd50k_files(dataset_dir)
    if "label_map" not in kwargs:
        kwargs["label_map"] = fsd50k_label_map(dataset_dir)
    return AudioSetDataset(files[split], sample_rate=sample_rate, clip_length=clip_length,
                           num_classes=FSD50K_NUM_CLASSES, variable_length=variable_length, **kwargs)
