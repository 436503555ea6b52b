"""`prepare_audioset.py`: pack a folder of audio + a label CSV into an AudioSet-format HDF5 (`data.prepare`)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..data import prepare as preparation
from ..data.prepare import PrepareError, PrepareOptions, Report, prepare
from .help import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_audioset",
        description=preparation.__doc__,
        formatter_class=HelpFormatter,
        epilog="Exit codes: 0 success, 1 nothing could be written, 2 bad arguments or input files.\n"
               "Example:\n  python experiments/prepare_audioset.py --audio_dir audioset/balanced "
               "--csv balanced_train_segments.csv --output balanced_train_segments_mp3.hdf",
    )
    parser.add_argument("--audio_dir", required=True, type=Path,
                        help="folder with the audio files (searched recursively in AudioSet mode)")
    parser.add_argument("--csv", required=True, type=Path,
                        help="AudioSet segments CSV or plain 'filename,labels' CSV")
    parser.add_argument("--output", required=True, type=Path, help="HDF5 file to write (written atomically)")
    parser.add_argument("--class_labels", type=Path, default=None,
                        help="class list 'index,mid,display_name' (AudioSet default: the official list, "
                             "from the download cache or downloaded; plain CSV default: sorted CSV labels)")
    parser.add_argument("--csv_format", choices=("auto", "audioset", "plain"), default="auto",
                        help="CSV format (default: auto, detected from the first line)")
    parser.add_argument("--sample_rate", type=int, default=32000,
                        help="sample rate of the stored mp3s in Hz (default: %(default)s)")
    parser.add_argument("--clip_length", type=float, default=10.0,
                        help="maximum clip length in seconds (default: %(default)s)")
    parser.add_argument("--cut_segments", action="store_true",
                        help="AudioSet: files are full recordings; cut [start_seconds, end_seconds) from each")
    parser.add_argument("--bitrate", type=int, default=None, help="mp3 bitrate in kbit/s (default: encoder's)")
    parser.add_argument("--num_workers", type=int, default=0,
                        help="processes decoding/encoding in parallel (0: in this process, the default); order is kept")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit code (0 ok, 1 nothing written, 2 bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) and argparse usage errors (2)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = prepare(PrepareOptions(**vars(args)))
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print_report(report, args.output)
    if report.written == 0:
        print("error: no clip could be written; nothing was saved", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
