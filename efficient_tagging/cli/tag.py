"""`inference.py` / `efficient-tagging-infer`: tag audio files with a pretrained or local model (or an ensemble).

    python experiments/inference.py --model_name mn10_as --audio_path x.wav          # top-k of one file
    python experiments/inference.py recordings/ more.mp3 --output tags.csv           # every probability

Give files and/or folders (positional or after `--audio_path`); folders are searched recursively
for `efficient_tagging.tagging.files.AUDIO_EXTENSIONS`, other files there are skipped and counted.
One file given as a file prints EfficientAT's "Acoustic Event Detected" block, exactly as before;
several files print one block per file after a line naming it. --json prints one shape whatever the
number of files: a list of {path, top_k: [{label, index, probability}]}. `--output tags.csv|tags.json`
writes every class probability of every tagged file instead (see `tagging.files.ProbabilitiesWriter`).
The work itself (finding files, decoding ahead in threads, batching files of equal length, atomic
CSV/JSON) lives in `efficient_tagging.tagging.files`; this module parses flags and prints.

Exit status (also in --help):
    0  every file was tagged
    1  nothing was tagged: the model/labels/device could not be set up, no audio file was found,
       every file failed, or the output could not be written (--output is then left untouched)
    2  usage error (bad or conflicting flags)
    3  some files failed to decode (each named on stderr and in the summary line); the rest were
       tagged and written
  130  interrupted (Ctrl-C); --output is left untouched
1 keeps its earlier meaning (the command failed, no result), so one-file scripts and the
"non-zero means failure" rule keep working; a partial result is a new outcome with a code of its own.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any, Optional, Sequence

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..tagging.files import (AUDIO_EXTENSIONS, FileTags, ProbabilitiesWriter, class_names_of, find_audio_files,
                             tag_files, top_tags)
from .help import HelpFormatter
from .model_flags import (add_backend_argument, add_model_arguments, check_backend, device_name, load_tagger_for,
                          non_negative_int, positive_int, select_tagging_device)
from .output_paths import check_output_file

# Imported where used: the ONNX runner (needs the optional onnxruntime), so that --help imports no optional
# packages. The device check comes from hardware.py (the ground floor), not from the training floor.

EXIT_ALL_TAGGED = 0
EXIT_NOTHING_TAGGED = 1
EXIT_USAGE = 2  # argparse's own code
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130

EPILOG = """\
inputs:
  files and folders, positional and/or after --audio_path; folders are searched recursively for
{extensions}
  (any case); other and hidden files there are skipped and counted. Any rate, mono or multi-channel
  (averaged); files longer than 60 s are tagged in windows (torch backend: in bounded memory).

output:
  without --output: the top-k labels of each file on stdout (one file given as a file: EfficientAT's
  block, unchanged). --output X.csv: header `path,<every class>`, one row per tagged file, every
  probability to 9 significant digits (float32 exactly). --output X.json: a list of {{path,
  duration_s, probabilities: {{class: p}}, top_k: [{{label, index, probability}}]}}. Written
  atomically: an interrupted run leaves no half file. Failed files are named on stderr, followed by
  a summary line "tagged N files, M failed: a.mp3, b.wav".

exit status:
  0  every file was tagged
  1  nothing was tagged (model, labels or device could not be set up; no audio found; every file
     failed; output not writable); --output is left untouched
  2  usage error
  3  some files failed to decode (named); the rest were tagged and written
  130  interrupted; --output is left untouched
"""

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Tag audio files with a pretrained or local model and print the top-k labels, or write "
                    "every class probability to a CSV/JSON file.",
        epilog=EPILOG.format(extensions=textwrap.fill(" ".join(sorted(AUDIO_EXTENSIONS)), width=100,
                                                    initial_indent="  ", subsequent_indent="  ")), formatter_class=HelpFormatter)
    parser.add_argument("paths", nargs="*", metavar="PATH", help="audio files and/or folders (recursive)")
    parser.add_argument("--audio_path", nargs="+", action="extend", default=None, metavar="PATH",
                        help="audio file(s) or folder(s) in any format FFmpeg/PyAV decodes (EfficientAT's flag; "
                             "the same as positional paths)")
    add_model_arguments(parser, onnx=True)
    parser.add_argument("--ensemble", nargs="+", default=None, metavar="NAME",
                        help="tag with the mean logits of several catalogue models (e.g. PaSST teachers and "
                             "students; each with its own frontend); replaces --model_name/--model_path. It takes every word up to the "
                             "next flag: put audio paths before it or after --audio_path")
    add_backend_argument(parser)
    parser.add_argument("--top_k", type=positive_int, default=10,
                        help="labels to print per file, and to list under top_k in an --output .json file")
    parser.add_argument("--eager", action="store_true",
                        help="run the PyTorch model as built: no BatchNorm folding, channels-last or inference_mode "
                             "(the default fast path gives the same logits within float rounding, ~1.7x faster)")
    parser.add_argument("--device", type=device_name, default=None,
                        help="cpu, cuda, cuda:N or mps; one that is not there is an error (default: cpu)")
    parser.add_argument("--cuda", action="store_true", help="the same as --device cuda (EfficientAT's flag)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="print the top-k tags as JSON: a list of {path, top_k: [{label, index, probability}]}, "
                             "one entry per file (the same shape for one file or many)")
    output.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="write every class probability of every tagged file to FILE (.csv or .json) "
                             "instead of printing top-k tags")
    parser.add_argument("--batch_size", type=positive_int, default=8,
                        help="files of identical decoded length tagged in one forward pass (never padded "
                             "together; the result equals one file at a time)")
    parser.add_argument("--num_workers", type=non_negative_int, default=2,
                        help="threads decoding files ahead of the model (0: decode in the main thread)")
    parser.add_argument("--no_progress", action="store_true",
                        help="no progress bar (default: a bar on stderr when it is a terminal)")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot express; a bad one exits with status 2."""
    args.inputs = [*args.paths, *(args.audio_path or [])]
    if not args.inputs:
        parser.error("give audio files or folders (positional, or after --audio_path)")
    if args.cuda and args.device not in (None, "cuda"):
        parser.error(f"--cuda and --device {args.device} contradict each other; give one")
    check_backend(parser, args)
    check_output_file(parser, "--output", args.output, (".csv", ".json"))


def tag_block(tags: Sequence[Any], task: Optional[str] = None) -> str:
    """EfficientAT's printed result, unchanged for a tagger of sound events; a single-label classifier
    (a digit or scene model: softmax over classes) says that it picks a class instead."""
    lines = ["********* Classified as (softmax over the classes): ****" if task == "multiclass"
             else "************* Acoustic Event Detected: *****************"]
    lines += [f"{tag.label}: {tag.probability:.3f}" for tag in tags]
    lines.append("********************************************************")
    return "\n".join(lines)


def tags_json(tags: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"label": t.label, "index": t.index, "probability": t.probability} for t in tags]


def summary_line(tagged: int, failed: Sequence[FileTags], skipped: int, output: Optional[Path]) -> str:
    line = f"tagged {tagged} file{'' if tagged == 1 else 's'}, {len(failed)} failed"
    if failed:
        line += ": " + ", ".join(str(result.path) for result in failed)
    if skipped:
        line += f" ({skipped} non-audio or hidden file{'' if skipped == 1 else 's'} skipped)"
    if output is not None and tagged:
        line += f"; probabilities written to {output}"
    return line


def say(text: str, stream: Any = None) -> None:
    """Print a line (stderr by default) without breaking a progress bar on the terminal."""
    tqdm.write(text, file=stream if stream is not None else sys.stderr)


class TagReport:
    """Takes each file's result as it comes: prints its top-k (or adds it to --output) and counts it."""

    def __init__(self, args: argparse.Namespace, class_names: Sequence[str], writer: Optional[ProbabilitiesWriter],
                 one_file: bool, task: Optional[str] = None) -> None:
        self.args, self.class_names, self.writer, self.one_file = args, class_names, writer, one_file
        self.task = task
        self.tagged = 0
        self.failed: list[FileTags] = []
        self.json_rows: list[dict[str, Any]] = []

    def add(self, result: FileTags) -> None:
        if not result.ok:
            self.failed.append(result)
            say(f"error: {result.error}")
            return
        self.tagged += 1
        if self.writer is not None:
            self.writer.write(result)
            return
        tags = top_tags(result.probabilities, self.class_names, self.args.top_k)
        if self.args.json:
            self.json_rows.append({"path": str(result.path), "top_k": tags_json(tags)})
        else:
            block = tag_block(tags, self.task)
            say(block if self.one_file else f"{result.path}\n{block}", sys.stdout)

    def print_json(self) -> None:
        if self.args.json and self.json_rows:  # one shape for one file or many: a script parses it one way
            print(json.dumps(self.json_rows, indent=1))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # paths may come before, between or after the flags
    check_arguments(parser, args)
    # library warnings (e.g. a truncated file: decoded vs stated duration) go to stderr
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")

    found = find_audio_files(args.inputs)
    if not found.files:
        say(f"error: no audio files found in {', '.join(args.inputs)} ({len(found.skipped)} non-audio or hidden "
            f"files skipped)")
        return EXIT_NOTHING_TAGGED
    try:
        device = select_tagging_device(args)
        tagger = load_tagger_for(args, device, files=len(found.files))
        class_names = class_names_of(tagger)
        writer = ProbabilitiesWriter(args.output, class_names, args.top_k) if args.output is not None else None
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as error:
        say(f"error: {error}")
        return EXIT_NOTHING_TAGGED

    # EfficientAT's form: one path that is a file prints the bare block, as it always did
    one_file = len(args.inputs) == 1 and not Path(args.inputs[0]).is_dir()
    progress = False if args.no_progress or one_file else None  # None: a bar only on a terminal
    report = TagReport(args, class_names, writer, one_file, getattr(tagger, "task", None))
    not_written = f" ({args.output} not written)" if writer is not None else ""
    try:
        # with a bar on screen, log lines (e.g. truncation warnings) go around it, not through it
        with contextlib.nullcontext() if progress is False else logging_redirect_tqdm():
            for result in tag_files(tagger, found.files, batch_size=args.batch_size,
                                    num_workers=args.num_workers, progress=progress):
                report.add(result)
        if writer is not None and report.tagged:
            writer.close()
        elif writer is not None:
            writer.discard()  # nothing tagged: an earlier file of that name stays as it was
    except KeyboardInterrupt:
        if writer is not None:
            writer.discard()
        say("interrupted" + not_written)
        return EXIT_INTERRUPTED
    except (OSError, ValueError, RuntimeError) as error:  # e.g. the model failing on the device, a full disk
        if writer is not None:
            writer.discard()
        say(f"error: {error}{not_written}")
        return EXIT_NOTHING_TAGGED
    report.print_json()
    if not (one_file and report.tagged and writer is None):  # EfficientAT's one-file output stays as it was
        say(summary_line(report.tagged, report.failed, len(found.skipped), args.output))
    if not report.tagged:
        return EXIT_NOTHING_TAGGED
    return EXIT_SOME_FAILED if report.failed else EXIT_ALL_TAGGED


if __name__ == "__main__":
    raise SystemExit(main())
