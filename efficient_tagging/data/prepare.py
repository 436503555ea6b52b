"""Build an AudioSet-format HDF5 file from a folder of audio files and a label CSV.

Two CSV formats are understood (detected automatically, or forced with --csv_format):

* AudioSet segments CSV (balanced_train_segments.csv, eval_segments.csv, ...):
      # comment lines
      YTID, start_seconds, end_seconds, "mid1,mid2,..."
  with the class list from --class_labels (`index,mid,display_name`; default: the official
  AudioSet list from the download cache). A clip is found in the folder as Y{YTID}.*,
  {YTID}.* or {YTID}_{start}... / Y{YTID}_{start}... ; it is stored as `Y{YTID}.mp3`.

* Plain CSV with a header naming a file column (filename / fname / file / path) and a
  `labels` column; labels are separated by ';' (or ',' inside quotes). The class list is the
  sorted set of labels in the CSV, or --class_labels (labels matched by display name or mid).
  A clip is stored under its CSV filename with the extension replaced by `.mp3`.

Every clip is decoded with PyAV, resampled to --sample_rate, cut to --clip_length seconds
(shorter clips are kept as they are; readers pad) and encoded as mp3.

Two official releases are converted into PaSST's HDF5 files instead (whole clips, nothing cut):

* FSD50K (--fsd50k_dir: FSD50K.dev_audio/, FSD50K.eval_audio/, FSD50K.ground_truth/) ->
  FSD50K.{train,val,eval}_mp3.hdf in --output_dir, split by dev.csv's `split` column.
* OpenMIC-2018 (--openmic_dir: the unpacked openmic-2018-v1.0.0.tgz) ->
  openmic_{train,test}.csv_mp3.hdf in --output_dir (targets: 20 relevances + 20 known-label mask).

A fine-tuning dataset in its file layout (--dataset esc50|dcase20|csv|folder with the fine-tuning
scripts' flags) is packed into --output_dir: ESC-50 as esc50_fold1..5.h5, the others as
<dataset>_train.h5 / <dataset>_val.h5, audio names and label map kept (teacher logits still join).
"""
from __future__ import annotations

import csv
import logging
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np

from ..audio import AudioDecodeError, decode_audio, encode_audio, pad_or_truncate, resample
from ..labels import LabelMap, audioset_labels, read_class_labels_csv
from ..locking import FileLock, OutputLockedError
from ..textfile import open_text
from .hdf5 import AudioSetHDF5Writer

if TYPE_CHECKING:
    from .datasets.registry import DatasetSource

log = logging.getLogger(__name__)

FILE_COLUMNS = ("filename", "fname", "file", "path")
LABEL_COLUMNS = ("labels", "label")


class PrepareError(Exception):
    """A user error (bad argument or input file): reported as a message, exit code 2."""


@dataclass
class Row:
    key: str                      # YTID (AudioSet) or relative filename (plain)
    labels: list[str]
    start: Optional[float] = None
    end: Optional[float] = None
    line: int = 0


@dataclass
class PrepareOptions:
    """What `prepare` does; the command line (`prepare_audioset.py --help`) documents each field."""

    audio_dir: Path
    csv: Path
    output: Path
    class_labels: Optional[Path] = None
    csv_format: str = "auto"          # "auto", "audioset" or "plain"
    sample_rate: int = 32000
    clip_length: float = 10.0
    cut_segments: bool = False
    bitrate: Optional[int] = None
    num_workers: int = 0
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        self.audio_dir, self.csv, self.output = Path(self.audio_dir), Path(self.csv), Path(self.output)
        if self.class_labels is not None:
            self.class_labels = Path(self.class_labels)


@dataclass
class Report:
    rows: int = 0
    written: int = 0
    missing: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    unknown_label_rows: int = 0
    unknown_labels: set[str] = field(default_factory=set)
    duplicates: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)  # left out: no known label (OpenMIC)


# ----------------------------------------------------------------------------- CSV parsing

def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _data_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    with open_text(path) as handle:
        for line_number, row in enumerate(csv.reader(handle, skipinitialspace=True), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            yield line_number, [cell.strip() for cell in row]


def detect_csv_format(path: Path) -> str:
    """'audioset' or 'plain', from the first lines of the file."""
    with open_text(path) as handle:
        for line in handle:
            if line.strip():
                break
        else:
            raise PrepareError(f"{path}: the CSV file is empty")
    if line.lstrip().startswith("#"):
        return "audioset"
    first = next(csv.reader([line], skipinitialspace=True))
    header = [cell.strip().lower() for cell in first]
    if len(first) >= 4 and _is_float(first[1]) and _is_float(first[2]):
        return "audioset"
    if any(c in header for c in FILE_COLUMNS) and any(c in header for c in LABEL_COLUMNS):
        return "plain"
    raise PrepareError(f"{path}: unrecognised CSV header {first}: expected an AudioSet segments CSV "
                       f"('# YTID, start_seconds, end_seconds, positive_labels') or a header with a "
                       f"file column ({'/'.join(FILE_COLUMNS)}) and a 'labels' column")


def read_segments_csv(path: Path) -> list[Row]:
    """Rows of an AudioSet segments CSV (comment lines starting with '#' are skipped)."""
    rows = []
    for line_number, cells in _data_lines(path):
        if cells[0].startswith("#"):
            continue
        if len(cells) < 4 or not _is_float(cells[1]) or not _is_float(cells[2]):
            raise PrepareError(f"{path}:{line_number}: expected 'YTID, start_seconds, end_seconds, "
                               f"\"labels\"', got {cells}")
        labels = [label.strip() for label in ",".join(cells[3:]).split(",") if label.strip()]
        rows.append(Row(cells[0], labels, float(cells[1]), float(cells[2]), line_number))
    return rows


def _split_labels(text: str) -> list[str]:
    separator = ";" if ";" in text else ","
    return [label.strip() for label in text.split(separator) if label.strip()]


def read_plain_csv(path: Path) -> list[Row]:
    """Rows of a `filename,labels` CSV (header required)."""
    lines = _data_lines(path)
    try:
        _, header = next(lines)
    except StopIteration:
        raise PrepareError(f"{path}: the CSV file is empty") from None
    lowered = [cell.lower() for cell in header]
    file_column = next((lowered.index(c) for c in FILE_COLUMNS if c in lowered), None)
    label_column = next((lowered.index(c) for c in LABEL_COLUMNS if c in lowered), None)
    if file_column is None or label_column is None:
        raise PrepareError(f"{path}: bad CSV header {header}: expected a file column "
                           f"({'/'.join(FILE_COLUMNS)}) and a 'labels' column")
    rows = []
    for line_number, cells in lines:
        if len(cells) <= max(file_column, label_column):
            # A label-less row ("clip.wav,") still counts; a row without a file name does not.
            if len(cells) <= file_column:
                raise PrepareError(f"{path}:{line_number}: expected {len(header)} columns, got {cells}")
            cells = cells + [""] * (label_column + 1 - len(cells))
        if not cells[file_column]:
            raise PrepareError(f"{path}:{line_number}: empty file name")
        rows.append(Row(cells[file_column], _split_labels(cells[label_column]), line=line_number))
    return rows


# ----------------------------------------------------------------------------- file matching

class AudioSetFolderIndex:
    """Finds the file of an AudioSet YTID in a folder (searched recursively)."""

    def __init__(self, folder: Path):
        self.exact: dict[str, Path] = {}
        self.prefixed: dict[str, list[tuple[str, Path]]] = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            stem = path.stem
            if stem in self.exact:
                log.warning("several files for %s: using %s, ignoring %s", stem, self.exact[stem], path)
                continue
            self.exact[stem] = path
            # Stems like "{YTID}_{start}_{end}" or "Y{YTID}_{start}": index every '_' split
            # (YTIDs may contain '_' themselves).
            for position, char in enumerate(stem):
                if char != "_":
                    continue
                rest = stem[position + 1:]
                self.prefixed.setdefault(stem[:position], []).append((rest, path))
                if stem.startswith("Y") and position > 1:
                    self.prefixed.setdefault(stem[1:position], []).append((rest, path))

    def find(self, ytid: str, start: Optional[float]) -> Optional[Path]:
        for stem in (f"Y{ytid}", ytid):
            if stem in self.exact:
                return self.exact[stem]
        candidates = self.prefixed.get(ytid, [])
        if len(candidates) == 1:
            return candidates[0][1]
        if candidates and start is not None:
            for rest, path in candidates:
                token = rest.split("_")[0]
                if _is_float(token) and (abs(float(token) - start) < 1e-3 or abs(float(token) - 1000 * start) < 0.5):
                    return path
            log.warning("%s: %d files match but none has start %.3f: %s", ytid, len(candidates), start,
                        [str(p) for _, p in candidates])
        return None


# ----------------------------------------------------------------------------- decode + encode

@dataclass
class EncodeSettings:
    sample_rate: int
    clip_length: Optional[float]  # None: keep the whole recording (FSD50K, OpenMIC)
    cut_segments: bool
    bitrate: Optional[int]


def encode_clip(path: Path, settings: EncodeSettings, start: Optional[float] = None,
                end: Optional[float] = None) -> bytes:
    """Decode `path`, optionally cut [start, end), resample, cut to the clip length (if any), encode mp3."""
    samples, native_rate = decode_audio(path)
    if settings.cut_segments and start is not None:
        first = int(round(start * native_rate))
        last = int(round(end * native_rate)) if end is not None and end > start else None
        samples = samples[first:last]
        if len(samples) == 0:
            raise AudioDecodeError(f"{path}: segment {start}-{end} s lies outside the recording")
    if len(samples) == 0:
        raise AudioDecodeError(f"{path}: no audio samples")
    if settings.clip_length is None:
        waveform = resample(samples, native_rate, settings.sample_rate)
    else:
        # Cut at the native rate first (cheap) with a margin for the resampler's edge, then exactly.
        samples = samples[: int(np.ceil(settings.clip_length * native_rate)) + 64]
        waveform = resample(samples, native_rate, settings.sample_rate)
        clip_samples = int(round(settings.clip_length * settings.sample_rate))
        if waveform.shape[-1] > clip_samples:
            waveform = pad_or_truncate(waveform, clip_samples)
    return encode_audio(waveform, settings.sample_rate, "mp3",
                        bitrate=settings.bitrate * 1000 if settings.bitrate else None)


def _encode_job(job: tuple[int, str, str, Optional[float], Optional[float], EncodeSettings]
                ) -> tuple[int, Optional[bytes], Optional[str]]:
    number, _, path, start, end, settings = job
    try:
        return number, encode_clip(Path(path), settings, start, end), None
    except (AudioDecodeError, ValueError, OSError) as error:
        return number, None, str(error)


def _worker_init() -> None:
    import torch
    torch.set_num_threads(1)  # parallelism comes from the processes


# ----------------------------------------------------------------------------- main

def _class_lookup(label_map: LabelMap) -> dict[str, int]:
    lookup = {name: i for i, name in enumerate(label_map.names)}
    lookup.update({mid: i for i, mid in enumerate(label_map.ids)})
    return lookup


def _check_args(args: PrepareOptions) -> None:
    if not args.audio_dir.is_dir():
        raise PrepareError(f"--audio_dir {args.audio_dir}: no such folder")
    if not args.csv.is_file():
        raise PrepareError(f"--csv {args.csv}: no such file")
    if args.class_labels is not None and not args.class_labels.is_file():
        raise PrepareError(f"--class_labels {args.class_labels}: no such file")
    if args.sample_rate <= 0:
        raise PrepareError(f"--sample_rate must be positive, got {args.sample_rate}")
    if args.clip_length <= 0:
        raise PrepareError(f"--clip_length must be positive, got {args.clip_length}")
    if args.num_workers < 0:
        raise PrepareError(f"--num_workers must be >= 0, got {args.num_workers}")
    if args.bitrate is not None and args.bitrate <= 0:
        raise PrepareError(f"--bitrate must be positive, got {args.bitrate}")
    if args.output.exists() and not args.overwrite:
        raise PrepareError(f"--output {args.output} exists; pass --overwrite to replace it")
    if args.output.is_dir():
        raise PrepareError(f"--output {args.output} is a folder")


def _label_map(args: PrepareOptions, csv_format: str, rows: Sequence[Row]) -> LabelMap:
    if args.class_labels is not None:
        try:
            return read_class_labels_csv(args.class_labels)
        except ValueError as error:
            raise PrepareError(str(error)) from error
    if csv_format == "audioset":
        try:
            return audioset_labels()
        except Exception as error:  # network or cache problems: tell the user how to avoid them
            raise PrepareError(f"cannot get the AudioSet class list ({error}); pass --class_labels "
                               f"class_labels_indices.csv") from error
    names = sorted({label for row in rows for label in row.labels})
    if not names:
        raise PrepareError(f"{args.csv}: no labels found; pass --class_labels to set the class list")
    return LabelMap.from_names(names)


def _jobs(args: PrepareOptions, csv_format: str, rows: Sequence[Row], label_map: LabelMap,
          report: Report) -> list[tuple[str, Path, np.ndarray, Optional[float], Optional[float]]]:
    lookup = _class_lookup(label_map)
    index = AudioSetFolderIndex(args.audio_dir) if csv_format == "audioset" else None
    jobs, names = [], set()
    for row in rows:
        if index is not None:
            path = index.find(row.key, row.start)
            audio_name = f"Y{row.key}.mp3"
        else:
            path = args.audio_dir / row.key
            path = path if path.is_file() else None
            audio_name = Path(row.key).with_suffix(".mp3").as_posix()
        if path is None:
            report.missing.append(row.key)
            continue
        if audio_name in names:
            report.duplicates.append(audio_name)
            continue
        names.add(audio_name)
        target = np.zeros(len(label_map), dtype=np.uint8)
        unknown = [label for label in row.labels if label not in lookup]
        if unknown:
            # Unknown labels are dropped (the clip keeps its known ones) and reported.
            report.unknown_label_rows += 1
            report.unknown_labels.update(unknown)
        for label in row.labels:
            if label in lookup:
                target[lookup[label]] = 1
        jobs.append((audio_name, path, target, row.start, row.end))
    return jobs


def prepare(args: PrepareOptions) -> Report:
    """Run the preparation described by `args`; returns the counts (raises PrepareError on bad input)."""
    _check_args(args)
    csv_format = detect_csv_format(args.csv) if args.csv_format == "auto" else args.csv_format
    rows = read_segments_csv(args.csv) if csv_format == "audioset" else read_plain_csv(args.csv)
    if not rows:
        raise PrepareError(f"{args.csv}: contains no data rows")
    label_map = _label_map(args, csv_format, rows)
    report = Report(rows=len(rows))
    jobs = _jobs(args, csv_format, rows, label_map, report)
    settings = EncodeSettings(args.sample_rate, args.clip_length, args.cut_segments, args.bitrate)
    writer = AudioSetHDF5Writer(args.output, len(label_map), args.sample_rate, label_map, expected_rows=len(jobs))
    _encode_into(writer, jobs, settings, args.num_workers, args.quiet, report, "prepare")
    return report


Job = tuple[str, Path, np.ndarray, Optional[float], Optional[float]]  # audio_name, file, target, start, end


def _encode_into(writer: AudioSetHDF5Writer, jobs: Sequence[Job], settings: EncodeSettings, num_workers: int,
                 quiet: bool, report: Report, desc: str) -> None:
    """Encode every job (in order, `num_workers` processes) into `writer` and close it atomically.

    Undecodable files are skipped and listed in `report.undecodable`; with nothing written the
    partial file is discarded (no output), and any exception discards it too.
    """
    work = [(number, name, str(path), start, end, settings)
            for number, (name, path, _, start, end) in enumerate(jobs)]
    from tqdm import tqdm
    pool = None
    if num_workers > 0 and len(work) > 1:
        # spawn, not fork: the parent may already run torch threads, which fork can deadlock.
        pool = multiprocessing.get_context("spawn").Pool(num_workers, initializer=_worker_init)
        results = pool.imap(_encode_job, work, chunksize=4)
    else:
        results = map(_encode_job, work)
    try:
        for number, encoded, error in tqdm(results, total=len(work), desc=desc, unit="clip", disable=quiet):
            name, path, target = jobs[number][:3]
            if encoded is None:
                log.warning("skipping undecodable clip %s: %s", name, error)  # the error names the file
                report.undecodable.append(str(path))
                continue
            writer.add(name, encoded, target)
            report.written += 1
        if report.written:
            writer.close()
        else:
            writer.abort()
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


# ----------------------------------------------------------------------------- FSD50K and OpenMIC releases

def _lock_output_dir(output_dir: Path, what: str) -> FileLock:
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(output_dir / f".{what}.prepare.lock", what=f"preparing {what} into {output_dir}")
    try:
        return lock.acquire()
    except OutputLockedError as error:
        raise PrepareError(str(error)) from error


def _check_outputs(outputs: dict[str, Path], overwrite: bool) -> None:
    existing = [str(path) for path in outputs.values() if path.exists()]
    if existing and not overwrite:
        raise PrepareError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    folders = [str(path) for path in outputs.values() if path.is_dir()]
    if folders:
        raise PrepareError(f"{', '.join(folders)} is a folder, not an HDF5 file")


def _check_encoding(sample_rate: int, bitrate: Optional[int], num_workers: int) -> None:
    if sample_rate <= 0:
        raise PrepareError(f"--sample_rate must be positive, got {sample_rate}")
    if bitrate is not None and bitrate <= 0:
        raise PrepareError(f"--bitrate must be positive, got {bitrate}")
    if num_workers < 0:
        raise PrepareError(f"--num_workers must be >= 0, got {num_workers}")


def read_fsd50k_ground_truth(csv_path: Path, with_split: bool) -> list[tuple[str, list[str], list[str], str]]:
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


def prepare_fsd50k(fsd50k_dir: Path, output_dir: Path, sample_rate: int = 32000, bitrate: Optional[int] = None,
                   num_workers: int = 0, overwrite: bool = False, quiet: bool = False) -> dict[str, Report]:
    """Convert the raw FSD50K release into PaSST's three HDF5 files (see `data.fsd50k`).

    Reads `FSD50K.ground_truth/{dev,eval,vocabulary}.csv` and the wavs of `FSD50K.dev_audio/` and
    `FSD50K.eval_audio/`; writes `FSD50K.{train,val,eval}_mp3.hdf` to `output_dir`, each clip whole
    (nothing cut) as mp3 at `sample_rate`, audio_name "{fname}.mp3", targets in vocabulary order,
    rows in CSV order. Each file is written atomically; the folder is locked against a second
    run. Returns {split: Report}; undecodable and missing wavs are skipped and counted there.
    """
    from .fsd50k import (FSD50K_AUDIO_DIRS, FSD50K_GROUND_TRUTH, FSD50K_HDF5_NAMES, FSD50K_SPLITS,
                         read_fsd50k_vocabulary)
    root, output_dir = Path(fsd50k_dir), Path(output_dir)
    _check_encoding(sample_rate, bitrate, num_workers)
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
    try:
        label_map = read_fsd50k_vocabulary(ground_truth / "vocabulary.csv")
    except ValueError as error:
        raise PrepareError(str(error)) from error
    outputs = {split: output_dir / FSD50K_HDF5_NAMES[split] for split in FSD50K_SPLITS}
    rows = (read_fsd50k_ground_truth(ground_truth / "dev.csv", with_split=True)
            + read_fsd50k_ground_truth(ground_truth / "eval.csv", with_split=False))
    lookup = _class_lookup(label_map)
    settings = EncodeSettings(sample_rate, None, False, bitrate)
    reports: dict[str, Report] = {}
    lock = _lock_output_dir(output_dir, "FSD50K")
    try:
        _check_outputs(outputs, overwrite)  # under the lock: a concurrent run may just have written them
        for split in FSD50K_SPLITS:
            report = Report()
            audio_dir = root / FSD50K_AUDIO_DIRS["eval" if split == "eval" else "dev"]
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
                target = np.zeros(len(label_map), dtype=np.uint8)
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
                jobs.append((audio_name, path, target, None, None))
            writer = AudioSetHDF5Writer(outputs[split], len(label_map), sample_rate, label_map,
                                        expected_rows=len(jobs))
            writer.attrs["dataset"] = f"FSD50K {split}"
            log.info("FSD50K %s: %d clips -> %s", split, len(jobs), outputs[split])
            _encode_into(writer, jobs, settings, num_workers, quiet, report, f"FSD50K {split}")
            reports[split] = report
    finally:
        lock.release()
    return reports


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


OPENMIC_AGGREGATED_LABELS = "openmic-2018-aggregated-labels.csv"


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


def prepare_openmic(openmic_dir: Path, output_dir: Path, sample_rate: int = 32000, bitrate: Optional[int] = None,
                    num_workers: int = 0, overwrite: bool = False, quiet: bool = False,
                    split_name: str = "split01") -> dict[str, Report]:
    """Convert the official OpenMIC-2018 release into PaSST's two HDF5 files (see `data.openmic`).

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
    from .openmic import (OPENMIC_HDF5_NAMES, OPENMIC_LABELS, OPENMIC_NUM_CLASSES, openmic_label_map,
                          read_openmic_class_map)
    release = Path(openmic_dir)
    _check_encoding(sample_rate, bitrate, num_workers)
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
    label_map = openmic_label_map()
    if (root / "class-map.json").is_file():
        try:
            stored = read_openmic_class_map(root / "class-map.json")
        except ValueError as error:
            raise PrepareError(str(error)) from error
        if stored.names != OPENMIC_LABELS:
            raise PrepareError(f"{root / 'class-map.json'}: instruments {list(stored.names)} differ from "
                               f"OpenMIC-2018's {list(OPENMIC_LABELS)}")
    try:
        if not npz_path.is_file():
            raise FileNotFoundError(npz_path)
        sample_keys, y_true, y_mask = _read_openmic_npz(npz_path, OPENMIC_NUM_CLASSES)
    except (FileNotFoundError, ValueError) as error:
        if not csv_path.is_file():
            raise PrepareError(f"{npz_path}: cannot read without unpickling ({error}), which is never done; "
                               f"put the release's {OPENMIC_AGGREGATED_LABELS} next to it") from error
        log.info("%s: %s; reading the labels from %s", npz_path, error, csv_path)
        sample_keys, y_true, y_mask = read_openmic_aggregated_labels(csv_path, label_map)
    row_of = {key: row for row, key in enumerate(sample_keys)}
    outputs = {split: Path(output_dir) / OPENMIC_HDF5_NAMES[split] for split in ("train", "test")}
    audio_index: Optional[dict[str, Path]] = None
    settings = EncodeSettings(sample_rate, None, False, bitrate)
    reports: dict[str, Report] = {}
    lock = _lock_output_dir(Path(output_dir), "OpenMIC")
    try:
        _check_outputs(outputs, overwrite)
        for split, partition in partitions.items():
            keys = _read_partition(partition)
            report = Report(rows=len(keys))
            jobs: list[Job] = []
            for key in keys:
                row = row_of.get(key)
                if row is None or not (y_mask[row] > 0.5).any():
                    report.unlabelled.append(key)  # no annotated instrument: nothing to learn from
                    continue
                path = root / "audio" / key[:3] / f"{key}.ogg"
                if not path.is_file():
                    if audio_index is None:  # files moved around: find them by name, once
                        audio_index = {p.stem: p for p in sorted((root / "audio").rglob("*")) if p.is_file()}
                    found = audio_index.get(key)
                    if found is None:
                        report.missing.append(str(path))
                        continue
                    path = found
                jobs.append((f"{key}.mp3", path, np.concatenate([y_true[row], y_mask[row]]), None, None))
            writer = AudioSetHDF5Writer(outputs[split], OPENMIC_NUM_CLASSES, sample_rate, label_map,
                                        expected_rows=len(jobs), target_width=2 * OPENMIC_NUM_CLASSES)
            writer.attrs["dataset"] = f"OpenMIC-2018 {split_name} {split}"
            writer.attrs["target_layout"] = "openmic: relevance[0:20] (0.5 unknown), mask[20:40]"
            log.info("OpenMIC %s: %d clips -> %s", split, len(jobs), outputs[split])
            _encode_into(writer, jobs, settings, num_workers, quiet, report, f"OpenMIC {split}")
            reports[split] = report
    finally:
        lock.release()
    return reports


# ----------------------------------------------------------------------------- fine-tuning datasets

def dataset_outputs(source: "DatasetSource", output_dir: Path) -> dict[str, Path]:
    """The HDF5 files `prepare_dataset` writes for `source`: ESC-50 one per fold, others one per part."""
    if source.kind == "esc50":
        return {f"fold{fold}": output_dir / f"esc50_fold{fold}.h5" for fold in range(1, 6)}
    return {role: output_dir / f"{source.kind}_{role}.h5" for role in source.roles}


def prepare_dataset(source: "DatasetSource", output_dir: Path, sample_rate: int = 32000,
                    clip_length: Optional[float] = None, bitrate: Optional[int] = None, num_workers: int = 0,
                    overwrite: bool = False, quiet: bool = False) -> tuple[dict[str, Report], dict[str, Path]]:
    """Pack a file-based fine-tuning dataset (ESC-50, DCASE20, CSV lists, class folders) into AudioSet-format
    HDF5 files (mp3 at `sample_rate`, cut to the clip length), one per fold (ESC-50) or part.

    Audio names are the dataset's own (e.g. `1-100032-A-0.wav`), so teacher logits labelled over the
    files join the HDF5 clips too, and the label map is stored with every file. `clip_length` None =
    the layout's (ESC-50 5 s, DCASE20 10 s; own data: derived from the training files). FSD50K and
    OpenMIC have their own converters (--fsd50k_dir / --openmic_dir); their PaSST layout is HDF5 already.
    """
    if source.kind not in ("esc50", "dcase20", "csv", "folder"):
        raise PrepareError(f"{source.kind} data is read from HDF5 files already; --prepare packs the file-based "
                           f"layouts (esc50, dcase20, csv, folder)")
    _check_encoding(sample_rate, bitrate, num_workers)
    output_dir = Path(output_dir)
    outputs = dataset_outputs(source, output_dir)
    if source.kind == "esc50":
        from .datasets.esc50 import ESC50
        parts = {f"fold{fold}": ESC50(source.dataset_dir, [fold], sample_rate=sample_rate,
                                      clip_length=clip_length or 5.0) for fold in range(1, 6)}
    else:
        train = source.open("train", sample_rate=sample_rate, clip_length=clip_length)
        parts = {"train": train}
        for role in source.roles[1:]:
            parts[role] = source.open(role, sample_rate=sample_rate, clip_length=train.clip_length,
                                      label_map=train.label_map)
    reports: dict[str, Report] = {}
    lock = _lock_output_dir(output_dir, source.kind)
    try:
        _check_outputs(outputs, overwrite)
        for part_name, dataset in parts.items():
            report = Report(rows=len(dataset))
            settings = EncodeSettings(sample_rate, float(dataset.clip_length), False, bitrate)
            jobs: list[Job] = [(name, path, np.asarray(dataset.targets[i], dtype=np.uint8), None, None)
                               for i, (name, path) in enumerate(zip(dataset.audio_names, dataset.files))]
            writer = AudioSetHDF5Writer(outputs[part_name], int(dataset.num_classes), sample_rate,
                                        dataset.label_map, expected_rows=len(jobs))
            writer.attrs["dataset"] = source.describe("train" if part_name.startswith("fold") else part_name)
            writer.attrs["task"] = dataset.task
            writer.attrs["clip_length"] = float(dataset.clip_length)
            log.info("%s %s: %d clips -> %s", source.kind, part_name, len(jobs), outputs[part_name])
            _encode_into(writer, jobs, settings, num_workers, quiet, report, f"{source.kind} {part_name}")
            reports[part_name] = report
    finally:
        lock.release()
    return reports, outputs
