"""Packing audio into AudioSet-format HDF5 files, and the pieces every dataset converter shares.

`prepare(PrepareOptions)`: a folder of audio files + a label CSV (an AudioSet segments CSV or a plain
`filename,labels` CSV) -> one HDF5 file, each clip decoded, resampled, cut to the clip length and
encoded as mp3. `prepare_dataset(DatasetSource)`: a file-based fine-tuning dataset (ESC-50, DCASE20,
CSV lists, class folders) -> one HDF5 file per fold or part, audio names and label map kept.

The release converters live with their datasets (`datasets.fsd50k.prepare_fsd50k`,
`datasets.openmic.prepare_openmic`) and share what is here: `PrepareError`, `Report`, the encoding
(`EncodeSettings`, `Job`, `encode_into`: in order, optionally in several processes, into a file written
atomically), `class_lookup` and the output-folder checks (`check_encoding`, `lock_output_dir`,
`check_outputs`). The command line (`cli/prepare.py`, `prepare_audioset.py --help`) describes the
formats and flags.
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
    from .datasets.source import DatasetSource

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


# ----------------------------------------------------------------------------- decode + encode (shared)

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


Job = tuple[str, Path, np.ndarray, Optional[float], Optional[float]]  # audio_name, file, target, start, end


def encode_into(writer: AudioSetHDF5Writer, jobs: Sequence[Job], settings: EncodeSettings, num_workers: int,
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


# ----------------------------------------------------------------------------- output folders and labels (shared)

def class_lookup(label_map: LabelMap) -> dict[str, int]:
    """Class index by display name and by id (mid), so a label may be given either way."""
    lookup = {name: i for i, name in enumerate(label_map.names)}
    lookup.update({mid: i for i, mid in enumerate(label_map.ids)})
    return lookup


def lock_output_dir(output_dir: Path, what: str) -> FileLock:
    """Create `output_dir` and hold its lock for `what`, so two runs never write the same files."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(output_dir / f".{what}.prepare.lock", what=f"preparing {what} into {output_dir}")
    try:
        return lock.acquire()
    except OutputLockedError as error:
        raise PrepareError(str(error)) from error


def check_outputs(outputs: dict[str, Path], overwrite: bool) -> None:
    """No output may exist (unless `overwrite`) or be a folder."""
    existing = [str(path) for path in outputs.values() if path.exists()]
    if existing and not overwrite:
        raise PrepareError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    folders = [str(path) for path in outputs.values() if path.is_dir()]
    if folders:
        raise PrepareError(f"{', '.join(folders)} is a folder, not an HDF5 file")


def check_encoding(sample_rate: int, bitrate: Optional[int], num_workers: int) -> None:
    """The encoding settings of a release converter or dataset packer, checked before any work."""
    if sample_rate <= 0:
        raise PrepareError(f"--sample_rate must be positive, got {sample_rate}")
    if bitrate is not None and bitrate <= 0:
        raise PrepareError(f"--bitrate must be positive, got {bitrate}")
    if num_workers < 0:
        raise PrepareError(f"--num_workers must be >= 0, got {num_workers}")


# ----------------------------------------------------------------------------- folder + CSV -> one HDF5 file

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
    lookup = class_lookup(label_map)
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
    encode_into(writer, jobs, settings, args.num_workers, args.quiet, report, "prepare")
    return report


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
    check_encoding(sample_rate, bitrate, num_workers)
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
    lock = lock_output_dir(output_dir, source.kind)
    try:
        check_outputs(outputs, overwrite)
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
            encode_into(writer, jobs, settings, num_workers, quiet, report, f"{source.kind} {part_name}")
            reports[part_name] = report
    finally:
        lock.release()
    return reports, outputs
