"""DCASE2020 Task 1a: TAU Urban Acoustic Scenes 2020 Mobile, development dataset, as downloaded.

    <dataset_dir>/meta.csv                          tab-separated: filename, scene_label, identifier, source_label
    <dataset_dir>/audio/<scene>-<city>-<location>-<segment>-<device>.wav   10 s, 44.1 kHz
    <dataset_dir>/evaluation_setup/fold1_train.csv    tab-separated, header filename[, scene_label]
    <dataset_dir>/evaluation_setup/fold1_evaluate.csv

`filename` in these files is relative to <dataset_dir> (e.g. "audio/airport-lisbon-1000-40000-a.wav")
and is the clip's audio_name. Devices: a, b, c (real), s1-s6 (simulated); s4-s6 appear only in
the evaluation split ("unseen" devices).

Compared with EfficientAT's datasets/dcase20.py: the same 10 scene classes in the same order
(its sklearn LabelEncoder sorts the scene names alphabetically), the same split (the rows of
meta.csv whose filename is listed in the fold1 file, in meta.csv order) and labels from meta.csv;
clips are 10 s at 32 kHz like its librosa loading, but here every clip is cut/padded to exactly
`clip_length` (the reference keeps each file's own length, 10 s in this dataset) and resampled
with PyAV + a windowed-sinc resampler instead of librosa. The reference encodes the device from
`source_label`; here the item carries the device name parsed from the file name (the part after
the last "-"), which is what per-device accuracy tables need. Its city index is not carried.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ...labels import LabelMap
from .audio_files import DatasetLayoutError, FileClipDataset, check_files_exist, one_hot, read_table

if TYPE_CHECKING:
    from ..teacher_logits import TeacherLogits

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

# sorted, as the reference's LabelEncoder orders them
DCASE20_SCENES = ("airport", "bus", "metro", "metro_station", "park", "public_square", "shopping_mall",
                  "street_pedestrian", "street_traffic", "tram")
DCASE20_DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
DCASE20_UNSEEN_DEVICES = ("s4", "s5", "s6")  # not in the fold1 training split
DCASE20_SPLITS = {"train": "fold1_train.csv", "evaluate": "fold1_evaluate.csv", "test": "fold1_test.csv"}
DCASE20_LAYOUT = ("<dataset_dir>/meta.csv (tab-separated, columns filename, scene_label, identifier, "
                  "source_label), <dataset_dir>/audio/*.wav and <dataset_dir>/evaluation_setup/fold1_train.csv, "
                  "fold1_evaluate.csv (tab-separated, header filename[<tab>scene_label]), i.e. the extracted "
                  "TAU-urban-acoustic-scenes-2020-mobile-development zip files")


def device_from_filename(filename: str) -> str:
    """Recording device from a TAU file name: the last "-"-separated part of the stem ("...-s4.wav" -> "s4")."""
    stem = Path(filename).stem
    if "-" not in stem:
        raise ValueError(f"cannot read a recording device from {filename!r}: TAU file names end in "
                         f"'-<device>.wav' (e.g. airport-lisbon-1000-40000-a.wav)")
    return stem.rsplit("-", 1)[1]


class DCASE20(FileClipDataset):
    """One split ("train", "evaluate" or "test") of TAU Urban Acoustic Scenes 2020 Mobile (development).

    Single-label (multiclass) over the 10 scenes of `DCASE20_SCENES`; items are `ClipDataset`
    items plus `device` (str). `devices` lists every clip's device.
    """

    def __init__(self, dataset_dir: PathLike, split: str = "train", sample_rate: int = 32000,
                 clip_length: float = 10.0, *, teacher_logits: Union["TeacherLogits", PathLike, None] = None,
                 max_resample_retries: int = 10, seed: int = 0, replace_undecodable: bool = True,
                 allow_missing: bool = False):
        if split not in DCASE20_SPLITS:
            raise ValueError(f"DCASE2020 split must be one of {list(DCASE20_SPLITS)}, got {split!r}")
        self.dataset_dir = Path(dataset_dir)
        self.split = split
        if not self.dataset_dir.is_dir():
            raise FileNotFoundError(f"DCASE2020 dataset_dir {self.dataset_dir} does not exist. "
                                    f"Expected layout: {DCASE20_LAYOUT}")
        meta_csv = self.dataset_dir / "meta.csv"
        meta = read_table(meta_csv, ("filename", "scene_label"), DCASE20_LAYOUT, delimiter="\t")
        split_csv = self.dataset_dir / "evaluation_setup" / DCASE20_SPLITS[split]
        listed = {row["filename"] for row in read_table(split_csv, ("filename",), DCASE20_LAYOUT, delimiter="\t")}
        if not listed:
            raise DatasetLayoutError(f"{split_csv} lists no files. Expected layout: {DCASE20_LAYOUT}")
        known = {row["filename"] for row in meta}
        unknown = sorted(listed - known)
        if unknown:
            raise DatasetLayoutError(f"{split_csv}: {len(unknown)} file(s) are not in {meta_csv}, e.g. "
                                     f"{unknown[:3]}; both must come from the same dataset release")
        # meta.csv order, as the reference selects its rows
        rows = [row for row in meta if row["filename"] in listed]
        scene_index = {scene: i for i, scene in enumerate(DCASE20_SCENES)}
        for row in rows:
            if row["scene_label"] not in scene_index:
                raise DatasetLayoutError(f"{meta_csv}:{row['_line']}: unknown scene_label {row['scene_label']!r}; "
                                         f"expected one of {list(DCASE20_SCENES)}")
        devices = [device_from_filename(row["filename"]) for row in rows]
        files = [self.dataset_dir / row["filename"] for row in rows]
        kept = check_files_exist(files, f"DCASE2020 {self.dataset_dir}", allow_missing)
        rows = [rows[i] for i in kept]
        super().__init__([files[i] for i in kept], [row["filename"] for row in rows],
                         one_hot([scene_index[row["scene_label"]] for row in rows], len(DCASE20_SCENES)),
                         LabelMap.from_names(DCASE20_SCENES), "multiclass", sample_rate=sample_rate,
                         clip_length=clip_length, teacher_logits=teacher_logits,
                         max_resample_retries=max_resample_retries, seed=seed,
                         replace_undecodable=replace_undecodable, extras={"device": [devices[i] for i in kept]},
                         description=f"DCASE2020 {split}")

    @property
    def devices(self) -> list[str]:
        """Recording device of every clip, in dataset order."""
        return list(self.extras["device"])


def dcase20_train_eval(dataset_dir: PathLike, **kwargs: Any) -> tuple[DCASE20, DCASE20]:
    """(fold1 training set, fold1 evaluation set); keyword arguments go to both."""
    return DCASE20(dataset_dir, "train", **kwargs), DCASE20(dataset_dir, "evaluate", **kwargs)
