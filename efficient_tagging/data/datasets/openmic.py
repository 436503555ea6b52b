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
`class-map.json` (`OPENMIC_LABELS`). `prepare_openmic` (below) builds the two files from the
official release (openmic-2018.npz, partitions/, audio/).
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import h5py
import numpy as np

from ...labels import LabelMap
from ...textfile import open_text
from ..hdf5 import AudioSetDataset, AudioSetHDF5Writer
from ..prepare import (EncodeSettings, Job, PrepareError, Report, check_encoding, check_outputs, encode_into,
                       lock_output_dir)

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
# The release's labels as a table, read where openmic-2018.npz could only be read by unpickling.
OPENMIC_AGGREGATED_LABELS = "openmic-2018-aggregated-labels.csv"

__all__ = ["OPENMIC_HDF5_NAMES", "OPENMIC_LABELS", "OPENMIC_NUM_CLASSES", "OpenMICDataset", "openmic_dataset",
           "openmic_files", "openmic_label_map", "prepare_openmic", "read_openmic_aggregated_labels",
           "read_openmic_class_map"]


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


# ----------------------------------------------------------------------------- converter (release -> HDF5)

def _openmic_root(release_dir: Path) -> Path:
    """The folder with openmic-2018.npz: `release_dir` itself or its `openmic-2018/` (the tarball's layout)."""
    for candidate in (release_dir, release_dir / "openmic-2018"):
        if (candidate / "openmic-2018.npz").is_file():
            return candidate
    return release_dir


def _read_partition(path: Path) -> list[str]:
    keys = []
    with open_text(path) as handle:
        for line in handle:
            key = line.strip().split(",")[0].strip()
            if key and key != "sample_key":  # one sample key per line; tolerate a header
                keys.append(key)
    if not keys:
        raise PrepareError(f"{path}: contains no sample keys")
    return keys


def _read_openmic_npz(path: Path, num_classes: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sample keys, Y_true, Y_mask) of openmic-2018.npz, never unpickling (ValueError if it would have to)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            absent = [key for key in ("Y_true", "Y_mask", "sample_key") if key not in npz.files]
            if absent:
                raise PrepareError(f"{path}: missing array(s) {absent} (found {npz.files})")
            y_true = np.asarray(npz["Y_true"], dtype=np.float32)
            y_mask = np.asarray(npz["Y_mask"]).astype(np.float32)
            sample_keys = [str(key) for key in npz["sample_key"]]
    except OSError as error:
        raise PrepareError(f"{path}: cannot read ({error})") from error
    shape = (len(sample_keys), num_classes)
    if y_true.shape != shape or y_mask.shape != shape:
        raise PrepareError(f"{path}: Y_true {y_true.shape} and Y_mask {y_mask.shape} must both be {shape} "
                           f"(one row of {num_classes} instruments per sample_key)")
    return sample_keys, y_true, y_mask


def read_openmic_aggregated_labels(path: Path, label_map: LabelMap) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sample keys, Y_true, Y_mask) rebuilt from `openmic-2018-aggregated-labels.csv`
    (`sample_key,instrument,relevance,num_responses`): relevance where annotated, 0.5 and mask 0 elsewhere,
    as in openmic-2018.npz."""
    lookup = {name: i for i, name in enumerate(label_map.names)}
    rows: dict[str, int] = {}
    known: list[tuple[int, int, float]] = []
    with open_text(path) as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        if not {"sample_key", "instrument", "relevance"} <= set(header):
            raise PrepareError(f"{path}: expected columns sample_key,instrument,relevance, got {header}")
        for line_number, raw in enumerate(reader, start=2):
            row = {key.strip(): (value or "").strip() for key, value in raw.items() if key is not None}
            instrument = row["instrument"].replace(" ", "_")
            if instrument not in lookup:
                raise PrepareError(f"{path}:{line_number}: unknown instrument {row['instrument']!r}")
            try:
                relevance = float(row["relevance"])
            except ValueError:
                raise PrepareError(f"{path}:{line_number}: relevance {row['relevance']!r} is not a number") from None
            known.append((rows.setdefault(row["sample_key"], len(rows)), lookup[instrument], relevance))
    y_true = np.full((len(rows), len(label_map)), 0.5, np.float32)
    y_mask = np.zeros((len(rows), len(label_map)), np.float32)
    for row, column, relevance in known:
        y_true[row, column], y_mask[row, column] = relevance, 1.0
    return list(rows), y_true, y_mask


def _check_openmic_release(release: Path, split_name: str) -> tuple[Path, dict[str, Path]]:
    """(the release's root, {"train", "test"} -> partition file), after checking that what the
    conversion reads is there (the npz may be absent when the aggregated-labels CSV replaces it)."""
    if not release.is_dir():
        raise PrepareError(f"--openmic_dir {release}: no such folder")
    root = _openmic_root(release)
    partitions = {split: root / "partitions" / f"{split_name}_{split}.csv" for split in ("train", "test")}
    npz_path, csv_path = root / "openmic-2018.npz", root / OPENMIC_AGGREGATED_LABELS
    needed = [*partitions.values()] + ([] if csv_path.is_file() else [npz_path])
    missing = [str(path) for path in needed if not path.is_file()]
    if not (root / "audio").is_dir():
        missing.append(str(root / "audio") + "/")
    if missing:
        raise PrepareError(f"OpenMIC release in {release} is incomplete: missing {', '.join(missing)} "
                           f"(unpack openmic-2018-v1.0.0.tgz from Zenodo record 1432913)")
    return root, partitions


def _check_openmic_class_map(root: Path) -> None:
    """A release's `class-map.json`, when present, must name OPENMIC_LABELS in order (the target columns)."""
    if not (root / "class-map.json").is_file():
        return
    try:
        stored = read_openmic_class_map(root / "class-map.json")
    except ValueError as error:
        raise PrepareError(str(error)) from error
    if stored.names != OPENMIC_LABELS:
        raise PrepareError(f"{root / 'class-map.json'}: instruments {list(stored.names)} differ from "
                           f"OpenMIC-2018's {list(OPENMIC_LABELS)}")


def _read_openmic_labels(root: Path, label_map: LabelMap) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sample keys, Y_true, Y_mask): from openmic-2018.npz, else from the aggregated-labels CSV."""
    npz_path, csv_path = root / "openmic-2018.npz", root / OPENMIC_AGGREGATED_LABELS
    try:
        if not npz_path.is_file():
            raise FileNotFoundError(npz_path)
        return _read_openmic_npz(npz_path, OPENMIC_NUM_CLASSES)
    except (FileNotFoundError, ValueError) as error:
        if not csv_path.is_file():
            raise PrepareError(f"{npz_path}: cannot read without unpickling ({error}), which is never done; "
                               f"put the release's {OPENMIC_AGGREGATED_LABELS} next to it") from error
        log.info("%s: %s; reading the labels from %s", npz_path, error, csv_path)
        return read_openmic_aggregated_labels(csv_path, label_map)


class _OpenMICAudio:
    """Finds a clip's ogg: at its place in the release (`audio/{key[:3]}/{key}.ogg`), else by name
    anywhere under `audio/` (files moved around), indexed once, when first needed."""

    def __init__(self, root: Path):
        self.folder = root / "audio"
        self._index: Optional[dict[str, Path]] = None

    def expected(self, key: str) -> Path:
        return self.folder / key[:3] / f"{key}.ogg"

    def find(self, key: str) -> Optional[Path]:
        path = self.expected(key)
        if path.is_file():
            return path
        if self._index is None:
            self._index = {p.stem: p for p in sorted(self.folder.rglob("*")) if p.is_file()}
        return self._index.get(key)


def _openmic_jobs(keys: list[str], row_of: dict[str, int], y_true: np.ndarray, y_mask: np.ndarray,
                  audio: _OpenMICAudio, report: Report) -> list[Job]:
    """The encoding jobs of one partition (target = [Y_true, Y_mask] of the clip); clips without any
    annotated instrument and missing files are listed in `report`."""
    jobs: list[Job] = []
    for key in keys:
        row = row_of.get(key)
        if row is None or not (y_mask[row] > OPENMIC_THRESHOLD).any():
            report.unlabelled.append(key)  # no annotated instrument: nothing to learn from
            continue
        path = audio.find(key)
        if path is None:
            report.missing.append(str(audio.expected(key)))
            continue
        jobs.append((f"{key}.mp3", path, np.concatenate([y_true[row], y_mask[row]]), None, None))
    return jobs


def prepare_openmic(openmic_dir: Path, output_dir: Path, sample_rate: int = 32000, bitrate: Optional[int] = None,
                    num_workers: int = 0, overwrite: bool = False, quiet: bool = False,
                    split_name: str = "split01") -> dict[str, Report]:
    """Convert the official OpenMIC-2018 release into PaSST's two HDF5 files (the layout of this module).

    `openmic_dir` is the unpacked openmic-2018-v1.0.0.tgz (the folder with openmic-2018.npz, or its
    parent): `openmic-2018.npz` (Y_true, Y_mask, sample_key), `partitions/{split01}_{train,test}.csv`
    (one sample key per line), `audio/*/{sample_key}.ogg`, optionally `class-map.json`. The labels come
    from the npz; where its `sample_key` array could only be read by unpickling (never done here) they
    are rebuilt from `openmic-2018-aggregated-labels.csv` of the same release instead. Writes
    `openmic_{train,test}.csv_mp3.hdf` to `output_dir`: whole clips as mp3 at `sample_rate`,
    audio_name "{sample_key}.mp3", target float32 (N, 40) = [Y_true, Y_mask]; clips without any
    annotated instrument are left out (as PaSST does; listed in `Report.unlabelled`). Each file is
    written atomically; the folder is locked against a second run. Returns {split: Report}.
    """
    release = Path(openmic_dir)
    check_encoding(sample_rate, bitrate, num_workers)
    root, partitions = _check_openmic_release(release, split_name)
    label_map = openmic_label_map()
    _check_openmic_class_map(root)
    sample_keys, y_true, y_mask = _read_openmic_labels(root, label_map)
    row_of = {key: row for row, key in enumerate(sample_keys)}
    outputs = {split: Path(output_dir) / OPENMIC_HDF5_NAMES[split] for split in ("train", "test")}
    audio = _OpenMICAudio(root)
    settings = EncodeSettings(sample_rate, None, False, bitrate)
    reports: dict[str, Report] = {}
    lock = lock_output_dir(Path(output_dir), "OpenMIC")
    try:
        check_outputs(outputs, overwrite)
        for split, partition in partitions.items():
            keys = _read_partition(partition)
            report = Report(rows=len(keys))
            jobs = _openmic_jobs(keys, row_of, y_true, y_mask, audio, report)
            writer = AudioSetHDF5Writer(outputs[split], OPENMIC_NUM_CLASSES, sample_rate, label_map,
                                        expected_rows=len(jobs), target_width=2 * OPENMIC_NUM_CLASSES)
            writer.attrs["dataset"] = f"OpenMIC-2018 {split_name} {split}"
            writer.attrs["target_layout"] = "openmic: relevance[0:20] (0.5 unknown), mask[20:40]"
            log.info("OpenMIC %s: %d clips -> %s", split, len(jobs), outputs[split])
            encode_into(writer, jobs, settings, num_workers, quiet, report, f"OpenMIC {split}")
            reports[split] = report
    finally:
        lock.release()
    return reports
