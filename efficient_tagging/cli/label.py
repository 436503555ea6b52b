"""`ex_teacher_labels.py`: label AudioSet-format HDF5 files with frozen teachers into a teacher-logits HDF5.

Resumable (rerun the same command), sharded under torchrun (rank 0 merges), or split by hand
with `--num_shards/--shard_index` and merged with `--merge`. The work is `efficient_tagging.labelling`.

Exit status: 0 done; 1 an error, printed as one message without a traceback (a teacher that
cannot be downloaded, an output another process is writing, a teacher of another class
count); 130 / 143 stopped by Ctrl-C / SIGTERM after saving every finished batch, with the
command that continues the run printed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Optional, Sequence


from ..data.datasets.source import DatasetSource, DatasetSourceError
from ..data.hdf5 import AudioSetDataset
from ..data.teacher_logits import find_shards, merge_teacher_logits, shard_path
from ..interrupt import exit_code, signal_name
from ..hardware import PRECISION_CHOICES
from ..labelling import (LabellingInterrupted, label_dataset, load_teachers, merge_job, teacher_metrics,
                         teacher_preprocessing)
from ..train.distributed import barrier, cleanup, init_distributed, select_device
from .dataset_flags import add_dataset_arguments, clip_length_with_source, own_kind, source_from_args
from .help import HelpFormatter

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Label AudioSet-format HDF5 files with one or more frozen teachers and store their logits "
                    "(the mean over teachers for an ensemble) in a teacher-logits HDF5 keyed by audio_name, for "
                    "knowledge distillation (--teacher_logits of ex_audioset.py). Resumable: rerun the same "
                    "command after an interruption (Ctrl-C / SIGTERM save every finished batch and print that "
                    "command) and only the missing clips are labelled. One run per output at a time "
                    "(<output>.lock). Under torchrun each "
                    "rank labels every world_size-th clip into <output>.shard-<rank>-of-<world>.h5 and rank 0 "
                    "merges the shards into --output.",
        formatter_class=HelpFormatter)
    parser.add_argument("--hdf5", nargs="+", default=None, metavar="FILE",
                        help="AudioSet-format HDF5 file(s) to label (audio_name, mp3/flac bytes, target); "
                             "with --merge optional: if given, the merge checks that every clip is covered. "
                             "Or a fine-tuning dataset: --dataset and its flags below")
    parser.add_argument("--output", default="teacher_logits.h5",
                        help="teacher-logits HDF5 to write (resumed if it exists with the same teacher setup)")
    parser.add_argument("--teachers", nargs="+", default=None, metavar="NAME_OR_PATH",
                        help="catalogue names (e.g. passt_s_swa_p16_128_ap476) or checkpoint paths of this "
                             "project; several: an ensemble whose logits are averaged")
    parser.add_argument("--batch_size", type=int, default=32, help="clips per forward pass")
    parser.add_argument("--num_workers", type=int, default=4, help="DataLoader worker processes (decoding)")
    parser.add_argument("--clip_length", type=float, default=None,
                        help="seconds per clip (longer clips are cut, shorter zero-padded); default: for --hdf5 data the "
                             "clip length stored with the teacher checkpoint (what it was trained on), else 10 s; for "
                             "a --dataset its recipe's (AudioSet, FSD50K, DCASE20, OpenMIC 10 s, ESC-50 5 s), own "
                             "data: derived from the files as the fine-tuning command does")
    parser.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                        help="with --dataset: the part to label; all = every labelled clip (ESC-50: all five folds, "
                             "FSD50K/OpenMIC/DCASE20: the training split, own data: the training CSV / all class "
                             "folders); teacher logits are joined to the training clips by name (default: all)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="precision of the teacher forward pass: auto = bf16 weights + autocast where the "
                             "device multiplies bf16 natively (GPUs since Ampere, CPUs with AVX512-BF16/AMX; "
                             "logits within ~0.02 of float32, several times faster), else 32; 32 = float32 "
                             "everywhere; a resumed output must keep its precision")
    parser.add_argument("--cuda", action="store_true",
                        help="run on the GPU (cuda:LOCAL_RANK under torchrun); an error if there is none")
    parser.add_argument("--flush_every", type=int, default=10,
                        help="commit buffered rows to the file every N batches (a kill loses at most these)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="storage dtype of the logits")
    parser.add_argument("--merge", action="store_true",
                        help="do not label: merge existing shard files (--shards, default <output>.shard-*-of-*.h5) "
                             "into --output and exit")
    parser.add_argument("--shards", nargs="+", default=None, metavar="FILE",
                        help="with --merge: the shard files (default: found next to --output)")
    parser.add_argument("--num_shards", type=int, default=None,
                        help="without torchrun: split the job into N shards (e.g. on different machines) ...")
    parser.add_argument("--shard_index", type=int, default=None,
                        help="... and label shard I of them into <output>.shard-I-of-N.h5 (merge with --merge)")
    parser.add_argument("--keep_shards", action="store_true",
                        help="keep the shard files after rank 0 merged them (default: delete them)")
    parser.add_argument("--cache_dir", default=None, help="download cache for catalogue teachers (default: $EFFICIENT_TAGGING_CACHE, the repo's pretrained/ "
                             "or ~/.cache/efficient_tagging)")
    add_dataset_arguments(parser, "any")
    parser.add_argument("--summary_json", default=None, help="also write the summary to this JSON file")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def continue_command(argv: Optional[Sequence[str]] = None) -> str:
    """The command line that continues this run: the same command with the same arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    on_path = shutil.which("python")
    python = "python" if on_path and Path(on_path).resolve() == Path(sys.executable).resolve() else sys.executable
    script = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if script and Path(script).resolve() == Path(__file__).resolve():
        prefix = [python, "-m", __name__]
    elif script.endswith(".py"):
        prefix = [python, script]
    elif script and script != "-c":
        prefix = [script]  # a console entry point
    else:
        prefix = [python, "-m", __name__]
    return shlex.join(prefix + args)


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"teacher labels -> {summary['output']}")
    if "labelled_now" in summary:
        print(f"  labelled now: {summary['labelled_now']}  before: {summary['labelled_before']}  "
              f"({summary.get('clips_per_s', 0.0):.1f} clips/s, precision {summary.get('precision', '32')})")
    if "rows" in summary:
        print(f"  rows in output: {summary['rows']}  (merged from {len(summary.get('shards', []))} shard(s))")
    names = summary.get("missing_names", [])
    print(f"  missing (undecodable): {len(names)}" + (f": {', '.join(names[:20])}" + (" ..." if len(names) > 20
                                                                                     else "") if names else ""))
    if "teacher_mAP" in summary:
        print(f"  teacher mAP: {summary['teacher_mAP']:.4f}  ROC-AUC: {summary['teacher_ROC']:.4f}")
    if "teacher_accuracy" in summary:
        print(f"  teacher accuracy: {summary['teacher_accuracy']:.4f}")


def _source(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Optional[DatasetSource]:
    """The data to label: --hdf5 files or a --dataset (None: neither given)."""
    if args.hdf5 and (args.dataset or own_kind(args)):
        parser.error("give either --hdf5 files or a --dataset, not both")
    if args.hdf5:
        return DatasetSource(kind="hdf5", train_hdf5=list(args.hdf5))
    if args.dataset or own_kind(args):
        return source_from_args(args, "any")
    return None


def _open(source: DatasetSource, args: argparse.Namespace, sample_rate: int, teacher: Any = None) -> Any:
    """The part to label, at the teacher's rate, reporting (not replacing) undecodable clips."""
    if source.kind == "hdf5":
        # what the teacher was trained on (an ensemble: its longest member's), else AudioSet's 10 s
        clip_length, origin = clip_length_with_source(args.clip_length, getattr(teacher, "clip_length", None) or None,
                                                      "the teacher")
        logger.info("clip length %g s (%s)", clip_length, origin)
        return AudioSetDataset(source.train_hdf5, sample_rate=sample_rate, clip_length=clip_length,
                               replace_undecodable=False)
    return source.open(args.split, sample_rate=sample_rate, clip_length=args.clip_length, replace_undecodable=False)


def _sources(source: DatasetSource, dataset: Any) -> list[str]:
    if source.kind == "hdf5":
        return [str(Path(p).resolve()) for p in dataset.paths]
    return [str(Path(p).resolve()) for p in (source.dataset_dir, source.train_csv, source.eval_csv, source.audio_dir)
            if p]


def _close(dataset: Any) -> None:
    if hasattr(dataset, "close"):
        dataset.close()


def run(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """The command line's work; returns the summary (rank 0: of the whole job; other ranks: their shard)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    output = Path(args.output)
    source = _source(args, parser)
    if args.merge:
        shards = [Path(p) for p in args.shards] if args.shards else find_shards(output)
        if not shards:
            parser.error(f"--merge: no shard files {output.name}.shard-*-of-*.h5 next to {output}")
        dataset = _open(source, args, 32000) if source is not None else None
        summary = merge_teacher_logits(shards, output,
                                       expected_names=list(dataset.audio_names) if dataset is not None else None)
        if dataset is not None:
            summary.update(teacher_metrics(dataset, output))
            _close(dataset)
        return summary
    if source is None or not args.teachers:
        parser.error("--teachers and the data (--hdf5 FILE..., or --dataset KIND with its flags) are required "
                     "(unless --merge)")
    if (args.num_shards is None) != (args.shard_index is None):
        parser.error("--num_shards and --shard_index go together")

    dist_info = init_distributed(timeout_s=7 * 24 * 3600.0)
    try:
        device = select_device(args.cuda, dist_info)  # --cuda without a GPU: an error, not a silent CPU run
        if dist_info.enabled:
            rank, world_size = dist_info.rank, dist_info.world_size
        else:
            rank, world_size = (args.shard_index, args.num_shards) if args.num_shards else (0, 1)
        target = shard_path(output, rank, world_size) if world_size > 1 else output
        teacher, names = load_teachers(args.teachers, cache_dir=args.cache_dir)
        attrs = {"teacher_paths": [str(Path(t).resolve()) if Path(t).is_file() else t for t in args.teachers],
                 "preprocessing": teacher_preprocessing(teacher)}
        dataset = _open(source, args, int(getattr(teacher, "sample_rate", 32000)), teacher)
        if source.kind != "hdf5":
            attrs["dataset"] = source.describe(args.split)
        try:
            summary = label_dataset(teacher, dataset, target, sources=_sources(source, dataset),
                                    batch_size=args.batch_size,
                                    num_workers=args.num_workers, device=device, precision=args.precision,
                                    teacher_names=names, attrs=attrs, flush_every_batches=args.flush_every,
                                    dtype=args.dtype, progress=not args.no_progress and rank == 0,
                                    shard=(rank, world_size), metrics=world_size == 1)
            if dist_info.enabled and world_size > 1:
                barrier()
                if rank == 0:
                    summary = merge_job(dataset, output, world_size, keep_shards=args.keep_shards)
                barrier()
        finally:
            _close(dataset)
        return summary
    finally:
        cleanup()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; exit status 0, 1 on an error (message only, no traceback), 130/143 on SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary_json = build_parser().parse_args(argv).summary_json
    try:
        summary = run(argv)
    except LabellingInterrupted as stopped:
        if int(os.environ.get("RANK", 0)) == 0:
            partial = stopped.summary
            done = partial["labelled_before"] + partial["labelled_now"] + partial["missing_undecodable"]
            print(f"interrupted by {signal_name(stopped.signum)}: {done} of {partial['clips']} clips are labelled and "
                  f"saved in {partial['output']}", file=sys.stderr)
            under = " (under the same torchrun launch)" if "LOCAL_RANK" in os.environ else ""
            print(f"to continue{under}, run:\n  {continue_command(argv)}", file=sys.stderr, flush=True)
        return exit_code(stopped.signum)
    except KeyboardInterrupt:  # Ctrl-C before labelling started (e.g. while loading the teachers)
        print("interrupted before labelling started; nothing was written", file=sys.stderr)
        return exit_code(signal.SIGINT)
    except (OSError, ValueError, KeyError, RuntimeError, DatasetSourceError) as error:
        # clear messages (a download that failed, a locked output, a teacher of the wrong class count):
        # the message says what to do; a traceback would only bury it
        logging.getLogger(__name__).debug("labelling failed", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", 0)) == 0:
        _print_summary(summary)
        if summary_json:
            Path(summary_json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
