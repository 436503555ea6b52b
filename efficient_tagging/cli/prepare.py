"""`prepare_audioset.py`: pack a folder of audio + a label CSV into an AudioSet-format HDF5 (`data.prepare`),
or convert the FSD50K / OpenMIC-2018 release (`data.datasets.fsd50k`, `data.datasets.openmic`)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..data.datasets.fsd50k import FSD50K_HDF5_NAMES, prepare_fsd50k
from ..data.datasets.openmic import OPENMIC_HDF5_NAMES, prepare_openmic
from ..data.prepare import PrepareError, PrepareOptions, Report, prepare, prepare_dataset
from .help import HelpFormatter

DESCRIPTION = """Build an AudioSet-format HDF5 file from a folder of audio files and a label CSV.

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_audioset",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
        epilog="Exit codes: 0 success, 1 nothing could be written (for a release: some split is empty),\n"
               "2 bad arguments or input files.\n"
               "Examples:\n  python experiments/prepare_audioset.py --audio_dir audioset/balanced "
               "--csv balanced_train_segments.csv --output balanced_train_segments_mp3.hdf\n"
               "  python experiments/prepare_audioset.py --fsd50k_dir FSD50K --output_dir fsd50k_hdf5\n"
               "  python experiments/prepare_audioset.py --openmic_dir openmic-2018-v1.0.0 --output_dir openmic_hdf5",
    )
    parser.add_argument("--audio_dir", type=Path,
                        help="folder with the audio files (searched recursively in AudioSet mode)")
    parser.add_argument("--csv", type=Path,
                        help="AudioSet segments CSV or plain 'filename,labels' CSV")
    parser.add_argument("--output", type=Path, help="HDF5 file to write (written atomically)")
    parser.add_argument("--fsd50k_dir", type=Path, default=None,
                        help="instead of --audio_dir/--csv/--output: the raw FSD50K release (FSD50K.dev_audio/, "
                             "FSD50K.eval_audio/, FSD50K.ground_truth/), converted to PaSST's "
                             "FSD50K.{train,val,eval}_mp3.hdf in --output_dir (whole clips)")
    parser.add_argument("--openmic_dir", type=Path, default=None,
                        help="instead of --audio_dir/--csv/--output: the unpacked OpenMIC-2018 release "
                             "(openmic-2018.npz, partitions/, audio/), converted to PaSST's "
                             "openmic_{train,test}.csv_mp3.hdf in --output_dir")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="folder for the HDF5 files of --fsd50k_dir / --openmic_dir")
    parser.add_argument("--class_labels", type=Path, default=None,
                        help="class list 'index,mid,display_name' (AudioSet default: the official list, "
                             "from the download cache or downloaded; plain CSV default: sorted CSV labels)")
    parser.add_argument("--csv_format", choices=("auto", "audioset", "plain"), default="auto",
                        help="CSV format (default: auto, detected from the first line)")
    parser.add_argument("--sample_rate", type=int, default=32000,
                        help="sample rate of the stored mp3s in Hz (default: %(default)s)")
    parser.add_argument("--clip_length", type=float, default=None,
                        help="maximum clip length in seconds (default: 10; --dataset: the layout's, ESC-50 5, "
                             "DCASE20 10, own data derived from the files)")
    parser.add_argument("--cut_segments", action="store_true",
                        help="AudioSet: files are full recordings; cut [start_seconds, end_seconds) from each")
    parser.add_argument("--bitrate", type=int, default=None, help="mp3 bitrate in kbit/s (default: encoder's)")
    parser.add_argument("--num_workers", type=int, default=0,
                        help="processes decoding/encoding in parallel (0: in this process, the default); order is kept")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    dataset = parser.add_argument_group("a fine-tuning dataset in its file layout (-> --output_dir)")
    dataset.add_argument("--dataset", choices=("esc50", "dcase20", "csv", "folder"), default=None,
                         help="pack this layout into AudioSet-format HDF5 files in --output_dir: ESC-50 one per "
                              "fold (esc50_fold1..5.h5), the others <dataset>_train.h5 / _val.h5; folder: the "
                              "class folders are --audio_dir")
    dataset.add_argument("--dataset_dir", default=None, help="esc50 / dcase20: the dataset's root as downloaded")
    dataset.add_argument("--train_csv", default=None, help="csv: filename,labels of the training clips")
    dataset.add_argument("--eval_csv", default=None, help="csv: filename,labels of the evaluation clips")
    dataset.add_argument("--audio_root", default=None, help="csv: folder the file names are relative to")
    dataset.add_argument("--eval_fraction", type=float, default=0.2,
                         help="folder: share of each class held out (default: %(default)s)")
    dataset.add_argument("--split_seed", type=int, default=0, help="folder: seed of that split (default: 0)")
    dataset.add_argument("--task", choices=("multiclass", "multilabel"), default=None,
                         help="csv: the task (default: inferred)")
    return parser


def _print_report(report: Report, output: Path) -> None:
    def sample(items: Iterable[str]) -> str:
        items = list(items)
        return ", ".join(items[:10]) + (f", ... ({len(items) - 10} more)" if len(items) > 10 else "")

    print(f"{report.rows} CSV rows: {report.written} written to {output}", file=sys.stderr)
    if report.missing:
        print(f"  {len(report.missing)} missing (no audio file): {sample(report.missing)}", file=sys.stderr)
    if report.undecodable:
        print(f"  {len(report.undecodable)} undecodable (skipped): {sample(report.undecodable)}", file=sys.stderr)
    if report.unknown_label_rows:
        print(f"  {report.unknown_label_rows} rows with unknown labels (those labels dropped): "
              f"{sample(sorted(report.unknown_labels))}", file=sys.stderr)
    if report.duplicates:
        print(f"  {len(report.duplicates)} duplicate rows (skipped): {sample(report.duplicates)}", file=sys.stderr)


def _print_release_reports(reports: dict[str, Report], outputs: dict[str, Path]) -> int:
    empty = []
    for split, report in reports.items():
        _print_report(report, outputs[split])
        if report.unlabelled:
            print(f"  {len(report.unlabelled)} without any known label (left out)", file=sys.stderr)
        if report.written == 0:
            empty.append(split)
    if empty:
        print(f"error: no clip could be written for {', '.join(empty)}; those files were not saved", file=sys.stderr)
        return 1
    return 0


def _check_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Optional[str]:
    """'fsd50k', 'openmic' or None (folder + CSV); a usage error if the flags are mixed."""
    if args.dataset is not None:
        if args.fsd50k_dir is not None or args.openmic_dir is not None or args.csv is not None or args.output:
            parser.error("--dataset writes to --output_dir; it does not take --fsd50k_dir/--openmic_dir/--csv/--output")
        if args.output_dir is None:
            parser.error("--dataset needs --output_dir (the folder for the HDF5 files)")
        return "dataset"
    releases = [name for name in ("fsd50k_dir", "openmic_dir") if getattr(args, name) is not None]
    plain = [name for name in ("audio_dir", "csv", "output") if getattr(args, name) is not None]
    if len(releases) > 1:
        parser.error("give one of --fsd50k_dir and --openmic_dir")
    if releases:
        if plain:
            parser.error(f"--{releases[0]} writes to --output_dir; it does not take "
                         f"{', '.join('--' + name for name in plain)}")
        if args.output_dir is None:
            parser.error(f"--{releases[0]} needs --output_dir (the folder for the HDF5 files)")
        unused = [flag for flag, value, default in (("--clip_length", args.clip_length, None),
                                                    ("--cut_segments", args.cut_segments, False),
                                                    ("--class_labels", args.class_labels, None),
                                                    ("--csv_format", args.csv_format, "auto")) if value != default]
        if unused:
            parser.error(f"--{releases[0]} keeps whole clips and the release's labels; {', '.join(unused)} "
                         f"do(es) not apply")
        return releases[0].replace("_dir", "")
    missing = [name for name in ("audio_dir", "csv", "output") if getattr(args, name) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join('--' + name for name in missing)} "
                     f"(or --fsd50k_dir / --openmic_dir with --output_dir)")
    if args.output_dir is not None:
        parser.error("--output_dir is for --fsd50k_dir / --openmic_dir; use --output for one HDF5 file")
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit code (0 ok, 1 nothing written, 2 bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        mode = _check_mode(parser, args)
    except SystemExit as exit_:  # --help (0) and argparse usage errors (2)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if mode == "dataset":
        return _prepare_dataset(args)
    if mode is not None:
        names = FSD50K_HDF5_NAMES if mode == "fsd50k" else OPENMIC_HDF5_NAMES
        run = prepare_fsd50k if mode == "fsd50k" else prepare_openmic
        try:
            reports = run(getattr(args, f"{mode}_dir"), args.output_dir, sample_rate=args.sample_rate,
                          bitrate=args.bitrate, num_workers=args.num_workers, overwrite=args.overwrite,
                          quiet=args.quiet)
        except PrepareError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return _print_release_reports(reports, {split: args.output_dir / name for split, name in names.items()})
    options = {key: value for key, value in vars(args).items() if key in PrepareOptions.__dataclass_fields__}
    options["clip_length"] = 10.0 if args.clip_length is None else args.clip_length
    try:
        report = prepare(PrepareOptions(**options))
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print_report(report, args.output)
    if report.written == 0:
        print("error: no clip could be written; nothing was saved", file=sys.stderr)
        return 1
    return 0


def _prepare_dataset(args: argparse.Namespace) -> int:
    from ..data.datasets.audio_files import DatasetLayoutError
    from ..data.datasets.source import DatasetSourceError
    from .dataset_flags import source_from_args

    if args.dataset == "folder" and args.audio_dir is not None:
        args.audio_dir = str(args.audio_dir)
    try:
        source = source_from_args(args, args.dataset)
        reports, outputs = prepare_dataset(source, args.output_dir, sample_rate=args.sample_rate,
                                           clip_length=args.clip_length, bitrate=args.bitrate,
                                           num_workers=args.num_workers, overwrite=args.overwrite, quiet=args.quiet)
    except (PrepareError, DatasetSourceError, DatasetLayoutError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return _print_release_reports(reports, outputs)


if __name__ == "__main__":
    sys.exit(main())
