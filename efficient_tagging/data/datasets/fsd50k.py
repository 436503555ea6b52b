"""FSD50K in PaSST's HDF5 layout: the three files, their 200-class vocabulary and datasets.

PaSST (`fsd50k/prepare_scripts/create_h5pymp3_dataset.py`) and EfficientAT (`datasets/fsd50k.py`)
read three AudioSet-format files from one folder (`dataset_dir`):

    FSD50K.train_mp3.hdf   dev.csv rows with split == "train"
    FSD50K.val_mp3.hdf     dev.csv rows with split == "val"   (model selection)
    FSD50K.eval_mp3.hdf    eval.csv rows                      (the reported mAP)

each with `audio_name` (b"{fname}.mp3"), `mp3` (the whole clip, 0.3-30 s, as mp3 at 32 kHz; nothing
is cut) and `target` (np.packbits of the 200-class multi-hot vector, classes in the order of
`vocabulary.csv`). PaSST's files carry no attributes, so the readers here pass num_classes=200; files
written by `prepare_fsd50k` (below) also store the class names. The raw release (FSD50K.dev_audio/,
FSD50K.eval_audio/, FSD50K.ground_truth/) is converted to this layout by `prepare_fsd50k`, on the
command line `prepare_audioset.py --fsd50k_dir RAW --output_dir OUT`.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ...labels import LabelMap
from ...textfile import open_text
from ..hdf5 import AudioSetDataset, AudioSetHDF5Writer, read_label_map
from ..prepare import (EncodeSettings, Job, PrepareError, Report, check_encoding, check_outputs, class_lookup,
                       encode_into, lock_output_dir)

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

FSD50K_NUM_CLASSES = 200
FSD50K_SPLITS = ("train", "val", "eval")
FSD50K_HDF5_NAMES = {split: f"FSD50K.{split}_mp3.hdf" for split in FSD50K_SPLITS}
# The raw release, as unzipped from Zenodo (record 4060432).
FSD50K_GROUND_TRUTH = "FSD50K.ground_truth"
FSD50K_AUDIO_DIRS = {"dev": "FSD50K.dev_audio", "eval": "FSD50K.eval_audio"}

# One row of dev.csv / eval.csv: fname, labels, mids, split ("train", "val" or "eval").
FSD50KRow = tuple[str, list[str], list[str], str]

__all__ = ["FSD50K_HDF5_NAMES", "FSD50K_NUM_CLASSES", "FSD50K_SPLITS", "fsd50k_dataset", "fsd50k_files",
           "fsd50k_label_map", "prepare_fsd50k", "read_fsd50k_ground_truth", "read_fsd50k_vocabulary"]


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


# ----------------------------------------------------------------------------- converter (raw release -> HDF5)

def read_fsd50k_ground_truth(csv_path: Path, with_split: bool) -> list[FSD50KRow]:
    """Rows (fname, labels, mids, split) of FSD50K's dev.csv (`fname,labels,mids,split`) or eval.csv
    (`fname,labels,mids`; split "eval"); labels and mids are comma-separated inside quotes."""
    required = ["fname", "labels"] + (["split"] if with_split else [])
    with open_text(csv_path) as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        missing = [name for name in required if name not in header]
        if missing:
            raise PrepareError(f"{csv_path}: missing column(s) {missing} (header {header}; expected "
                               f"{'fname,labels,mids,split' if with_split else 'fname,labels,mids'})")
        rows = []
        for line_number, raw in enumerate(reader, start=2):
            row = {key.strip(): (value or "").strip() for key, value in raw.items() if key is not None}
            if not row.get("fname"):
                raise PrepareError(f"{csv_path}:{line_number}: empty fname")
            split = row["split"] if with_split else "eval"
            if split not in ("train", "val", "eval"):
                raise PrepareError(f"{csv_path}:{line_number}: split {split!r}, expected 'train' or 'val'")
            labels = [label.strip() for label in row.get("labels", "").split(",") if label.strip()]
            mids = [mid.strip() for mid in row.get("mids", "").split(",") if mid.strip()]
            rows.append((row["fname"], labels, mids, split))
    if not rows:
        raise PrepareError(f"{csv_path}: contains no data rows")
    return rows


def _check_fsd50k_release(root: Path) -> Path:
    """The release's ground-truth folder, after checking that every file and folder it needs is there."""
    if not root.is_dir():
        raise PrepareError(f"--fsd50k_dir {root}: no such folder")
    ground_truth = root / FSD50K_GROUND_TRUTH
    needed = [ground_truth / "dev.csv", ground_truth / "eval.csv", ground_truth / "vocabulary.csv"]
    missing = [str(path) for path in needed if not path.is_file()]
    missing += [str(root / name) + "/" for name in FSD50K_AUDIO_DIRS.values() if not (root / name).is_dir()]
    if missing:
        raise PrepareError(f"FSD50K release in {root} is incomplete: missing {', '.join(missing)} "
                           f"(unzip FSD50K.dev_audio, FSD50K.eval_audio and FSD50K.ground_truth from Zenodo "
                           f"record 4060432 into it)")
    return ground_truth


def _fsd50k_target(labels: list[str], mids: list[str], lookup: dict[str, int], num_classes: int,
                   report: Report) -> np.ndarray:
    """The multi-hot row of one clip; labels found in neither names nor mids are counted in `report`."""
    target = np.zeros(num_classes, dtype=np.uint8)
    # Labels by name (as PaSST does); a name not in the vocabulary by its mid.
    unknown = []
    for position, label in enumerate(labels):
        mid = mids[position] if len(mids) == len(labels) else None
        index = lookup.get(label, lookup.get(mid) if mid else None)
        if index is None:
            unknown.append(label)
        else:
            target[index] = 1
    if unknown:
        report.unknown_label_rows += 1
        report.unknown_labels.update(unknown)
    return target


def _fsd50k_jobs(rows: list[FSD50KRow], split: str, audio_dir: Path, lookup: dict[str, int], num_classes: int,
                 report: Report) -> list[Job]:
    """The encoding jobs of `split`, in CSV order; missing wavs and repeated names are counted in `report`."""
    jobs: list[Job] = []
    names: set[str] = set()
    for fname, labels, mids, row_split in rows:
        if row_split != split:
            continue
        report.rows += 1
        path = audio_dir / f"{fname}.wav"
        if not path.is_file():
            report.missing.append(str(path))
            continue
        audio_name = f"{fname}.mp3"
        if audio_name in names:
            report.duplicates.append(audio_name)
            continue
        names.add(audio_name)
        jobs.append((audio_name, path, _fsd50k_target(labels, mids, lookup, num_classes, report), None, None))
    return jobs


def prepare_fsd50k(fsd50k_dir: Path, output_dir: Path, sample_rate: int = 32000, bitrate: Optional[int] = None,
                   num_workers: int = 0, overwrite: bool = False, quiet: bool = False) -> dict[str, Report]:
    """Convert the raw FSD50K release into PaSST's three HDF5 files (the layout of this module).

    Reads `FSD50K.ground_truth/{dev,eval,vocabulary}.csv` and the wavs of `FSD50K.dev_audio/` and
    `FSD50K.eval_audio/`; writes `FSD50K.{train,val,eval}_mp3.hdf` to `output_dir`, each clip whole
    (nothing cut) as mp3 at `sample_rate`, audio_name "{fname}.mp3", targets in vocabulary order,
    rows in CSV order. Each file is written atomically; the folder is locked against a second
    run. Returns {split: Report}; undecodable and missing wavs are skipped and counted there.
    """
    root, output_dir = Path(fsd50k_dir), Path(output_dir)
    check_encoding(sample_rate, bitrate, num_workers)
    ground_truth = _check_fsd50k_release(root)
    try:
        label_map = read_fsd50k_vocabulary(ground_truth / "vocabulary.csv")
    except ValueError as error:
        raise PrepareError(str(error)) from error
    outputs = {split: output_dir / FSD50K_HDF5_NAMES[split] for split in FSD50K_SPLITS}
    rows = (read_fsd50k_ground_truth(ground_truth / "dev.csv", with_split=True)
            + read_fsd50k_ground_truth(ground_truth / "eval.csv", with_split=False))
    lookup = class_lookup(label_map)
    settings = EncodeSettings(sample_rate, None, False, bitrate)
    reports: dict[str, Report] = {}
    lock = lock_output_dir(output_dir, "FSD50K")
    try:
        check_outputs(outputs, overwrite)  # under the lock: a concurrent run may just have written them
        for split in FSD50K_SPLITS:
            report = Report()
            audio_dir = root / FSD50K_AUDIO_DIRS["eval" if split == "eval" else "dev"]
            jobs = _fsd50k_jobs(rows, split, audio_dir, lookup, len(label_map), report)
            writer = AudioSetHDF5Writer(outputs[split], len(label_map), sample_rate, label_map,
                                        expected_rows=len(jobs))
            writer.attrs["dataset"] = f"FSD50K {split}"
            log.info("FSD50K %s: %d clips -> %s", split, len(jobs), outputs[split])
            encode_into(writer, jobs, settings, num_workers, quiet, report, f"FSD50K {split}")
            reports[split] = report
    finally:
        lock.release()
    return reports
