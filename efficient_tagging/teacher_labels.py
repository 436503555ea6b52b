"""Teacher labelling: run one or more frozen teachers over AudioSet-format HDF5 files and store
their (ensemble-mean) logits in a teacher-logits HDF5 keyed by audio_name.

Command line: `python experiments/ex_teacher_labels.py --help` (or `main(argv)` here). Under
torchrun every rank labels the clips `i % world_size == rank` into
`<output>.shard-<rank>-of-<world>.h5` (each resumable), then rank 0 merges the shards into
`--output` by name, atomically (`merge_teacher_logits`).

The output is written in flushed batches through `TeacherLogitsWriter`, so a killed job
keeps every flushed row and a restart labels only the clips that are still missing. Clips
that cannot be decoded are recorded as missing (not as zeros), counted and reported; the
distillation loss later masks them out.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .data.hdf5 import AudioSetDataset
from .models.ensemble import TeacherEnsemble  # re-exported here for compatibility
from .data.teacher_logits import (TeacherLogits, TeacherLogitsWriter, find_shards, merge_teacher_logits,
                                   shard_path)
from .train.metrics import evaluate_predictions

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

__all__ = ["TeacherEnsemble", "label_hdf5", "load_teachers", "teacher_metrics", "run", "main"]


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "waveform": torch.stack([item["waveform"] for item in batch]),
        "target": torch.stack([item["target"] for item in batch]),
        "audio_name": [item["audio_name"] for item in batch],
        "decoded": torch.tensor([bool(item.get("decoded", True)) for item in batch]),
    }


def _autocast(device: torch.device, precision: str):
    if precision not in ("32", "16", "bf16"):
        raise ValueError(f"precision must be '32', '16' or 'bf16', got {precision!r}")
    if precision == "32":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _crash(batch_index: int) -> None:
    """Test hook (hidden --crash_after_batches): die like kill -9, without any cleanup."""
    sys.stdout.flush()
    sys.stderr.flush()
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(17)


def teacher_metrics(dataset: AudioSetDataset, logits_path: PathLike) -> dict[str, float]:
    """Teacher mAP / ROC-AUC over the clips of `dataset` that `logits_path` labels ({} without labels)."""
    stored = TeacherLogits(logits_path)
    try:
        rows = [(i, stored.lookup(name)) for i, name in enumerate(dataset.audio_names)]
    finally:
        stored.close()
    rows = [(i, logits) for i, logits in rows if logits is not None]
    if not rows:
        return {}
    targets = dataset.targets[[i for i, _ in rows]]
    if not targets.any():
        return {}
    metrics = evaluate_predictions(targets, np.stack([logits for _, logits in rows]))
    return {"teacher_mAP": float(metrics["mAP"]), "teacher_ROC": float(metrics["mean_roc_auc"])}


def cast_model_weights(teacher: nn.Module, precision: str) -> nn.Module:
    """Store the networks' weights in bf16/fp16 for the reduced-precision path; frontends stay fp32.

    Under autocast alone every forward re-casts all fp32 weights to 16 bits (for PaSST-S, 86 M
    parameters per batch), which eats much of the gain on CPU. The log-mel frontends keep
    float32: their filterbank matmul runs with autocast disabled anyway.
    """
    if precision == "32":
        return teacher
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    frontends = [m for m in teacher.modules() if getattr(m, "frontend", None) is not None]
    for tagger in frontends:
        tagger.model.to(dtype)
    if not frontends:  # a bare model without an attached frontend
        teacher.to(dtype)
    return teacher


@torch.no_grad()
def label_hdf5(teacher: nn.Module, hdf5_paths: Union[PathLike, Sequence[PathLike]], output_path: PathLike, *,
               clip_length: float = 10.0, batch_size: int = 32, num_workers: int = 0,
               device: Union[str, torch.device] = "cpu", precision: str = "32", teacher_names: Sequence[str] = (),
               attrs: Optional[dict[str, Any]] = None, flush_every_batches: int = 10, dtype: str = "float32",
               progress: bool = True, shard: tuple[int, int] = (0, 1), metrics: bool = True,
               crash_after_batches: Optional[int] = None) -> dict[str, Any]:
    """Label every clip of `hdf5_paths` with `teacher` into `output_path` (resuming if it exists).

    `shard=(rank, world_size)` labels only the clips `i % world_size == rank` (the caller picks
    the shard's file name, see `shard_path`). Undecodable clips are recorded as missing in the
    output (`missing_audio_name`), never as zero logits.

    Returns a summary: clips labelled now / before, missing (undecodable) clips with names,
    clips/s and, when the data has labels (and `metrics`), the teacher's mAP on the labelled clips.
    """
    rank, world_size = (int(shard[0]), int(shard[1]))
    if not 0 <= rank < world_size:
        raise ValueError(f"shard rank {rank} is not in [0, {world_size})")
    if flush_every_batches < 1:
        raise ValueError(f"flush_every_batches must be >= 1, got {flush_every_batches}")
    device = torch.device(device)
    autocast = _autocast(device, precision)
    teacher = cast_model_weights(teacher.to(device).eval(), precision)
    sample_rate = int(getattr(teacher, "sample_rate", 32000))
    dataset = AudioSetDataset(hdf5_paths, sample_rate=sample_rate, clip_length=clip_length,
                              replace_undecodable=False)
    info = {
        "teachers": list(teacher_names) or list(getattr(teacher, "names", [type(teacher).__name__])),
        "ensemble_rule": "mean of logits",
        "sample_rate": sample_rate,
        "clip_length": clip_length,
        "source_files": [str(Path(p).resolve()) for p in dataset.paths],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "precision": precision,
        **(attrs or {}),
    }
    if world_size > 1:
        info["shard"] = [rank, world_size]
    writer = TeacherLogitsWriter(output_path, num_classes=dataset.num_classes, attrs=info, dtype=dtype, resume=True)
    done = writer.existing_names()
    missing_before = len(writer.missing_names())
    mine = [i for i, name in enumerate(dataset.audio_names) if i % world_size == rank]
    todo = [i for i in mine if dataset.audio_names[i] not in done]
    loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    missing: list[str] = []
    labelled = 0
    start = time.time()
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="teacher labelling", unit="clip",
               disable=not progress, dynamic_ncols=True, smoothing=0.1)
    try:
        for batch_index, batch in enumerate(loader):
            ok = batch["decoded"]
            names = [n for n, good in zip(batch["audio_name"], ok.tolist()) if good]
            bad = [n for n, good in zip(batch["audio_name"], ok.tolist()) if not good]
            if bad:
                missing.extend(bad)
                writer.write_missing(bad)
            if names:
                with autocast:
                    logits = teacher(batch["waveform"][ok].to(device))
                writer.write(names, logits.float().cpu().numpy())
                labelled += len(names)
            if (batch_index + 1) % flush_every_batches == 0:
                writer.flush()
            if crash_after_batches is not None and batch_index + 1 >= crash_after_batches:
                _crash(batch_index)
            bar.update(len(batch["audio_name"]))
            bar.set_postfix(missing=len(missing) + missing_before, refresh=False)
        writer.flush()
        all_missing = writer.missing_names()
    finally:
        bar.close()
        writer.close()
    elapsed = max(time.time() - start, 1e-6)
    if missing:
        logger.warning("%d clips could not be decoded and have no teacher logits (first: %s)",
                       len(missing), ", ".join(missing[:5]))

    summary: dict[str, Any] = {"output": str(output_path), "shard": [rank, world_size], "clips": len(mine),
                               "labelled_now": labelled, "labelled_before": len(done) - missing_before,
                               "missing_undecodable": len(all_missing), "missing_names": all_missing,
                               "clips_per_s": labelled / elapsed, "seconds": elapsed}
    if metrics:
        summary.update(teacher_metrics(dataset, output_path))
    dataset.close()
    return summary


# ----------------------------------------------------------------------------------------------
# command line


def load_teachers(specs: Sequence[str], cache_dir: Optional[PathLike] = None) -> tuple[nn.Module, list[str]]:
    """Taggers for catalogue names / checkpoint paths; several become a `TeacherEnsemble` (mean of logits)."""
    from .inference import load_tagger

    members, names = [], []
    for spec in specs:
        if Path(spec).is_file():
            members.append(load_tagger(None, spec, cache_dir=cache_dir))
            names.append(Path(spec).name)
        else:
            members.append(load_tagger(spec, cache_dir=cache_dir))
            names.append(spec)
    return (members[0] if len(members) == 1 else TeacherEnsemble(members, names)), names


def _preprocessing_of(tagger: nn.Module) -> list[dict[str, Any]]:
    members = list(getattr(tagger, "members", [tagger]))
    out = []
    for member in members:
        model = getattr(member, "model", member)
        settings = dict(getattr(model, "preprocessing", None) or {})
        settings.setdefault("frontend", type(getattr(member, "frontend", None)).__name__)
        settings.setdefault("sr", int(getattr(member, "sample_rate", 0)) or None)
        out.append(json.loads(json.dumps(settings, default=str)))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Label AudioSet-format HDF5 files with one or more frozen teachers and store their logits "
                    "(the mean over teachers for an ensemble) in a teacher-logits HDF5 keyed by audio_name, for "
                    "knowledge distillation (--teacher_logits of ex_audioset.py). Resumable: rerun the same "
                    "command after an interruption and only the missing clips are labelled. Under torchrun each "
                    "rank labels every world_size-th clip into <output>.shard-<rank>-of-<world>.h5 and rank 0 "
                    "merges the shards into --output.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--hdf5", nargs="+", default=None, metavar="FILE",
                        help="AudioSet-format HDF5 file(s) to label (audio_name, mp3/flac bytes, target); "
                             "with --merge optional: if given, the merge checks that every clip is covered")
    parser.add_argument("--output", default="teacher_logits.h5",
                        help="teacher-logits HDF5 to write (resumed if it exists with the same teacher setup)")
    parser.add_argument("--teachers", nargs="+", default=None, metavar="NAME_OR_PATH",
                        help="catalogue names (e.g. passt_s_swa_p16_128_ap476) or checkpoint paths of this "
                             "project; several: an ensemble whose logits are averaged")
    parser.add_argument("--batch_size", type=int, default=32, help="clips per forward pass")
    parser.add_argument("--num_workers", type=int, default=4, help="DataLoader worker processes (decoding)")
    parser.add_argument("--clip_length", type=float, default=10.0,
                        help="seconds per clip (longer clips are cut, shorter zero-padded)")
    parser.add_argument("--precision", choices=("32", "16", "bf16"), default="32",
                        help="autocast precision of the teacher forward pass (bf16: fast path on CPU/GPU)")
    parser.add_argument("--cuda", action="store_true",
                        help="run on the GPU (cuda:LOCAL_RANK under torchrun) if one is available")
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
    parser.add_argument("--cache_dir", default=None, help="download cache for catalogue teachers")
    parser.add_argument("--summary_json", default=None, help="also write the summary to this JSON file")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--crash_after_batches", type=int, default=None, help=argparse.SUPPRESS)  # test hook
    return parser


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"teacher labels -> {summary['output']}")
    if "labelled_now" in summary:
        print(f"  labelled now: {summary['labelled_now']}  before: {summary['labelled_before']}  "
              f"({summary.get('clips_per_s', 0.0):.1f} clips/s)")
    if "rows" in summary:
        print(f"  rows in output: {summary['rows']}  (merged from {len(summary.get('shards', []))} shard(s))")
    names = summary.get("missing_names", [])
    print(f"  missing (undecodable): {len(names)}" + (f": {', '.join(names[:20])}" + (" ..." if len(names) > 20
                                                                                     else "") if names else ""))
    if "teacher_mAP" in summary:
        print(f"  teacher mAP: {summary['teacher_mAP']:.4f}  ROC-AUC: {summary['teacher_ROC']:.4f}")


def run(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """The command line's work; returns the summary (rank 0: of the whole job; other ranks: their shard)."""
    from .train.distributed import barrier, cleanup, init_distributed

    parser = build_parser()
    args = parser.parse_args(argv)
    output = Path(args.output)
    if args.merge:
        shards = [Path(p) for p in args.shards] if args.shards else find_shards(output)
        if not shards:
            parser.error(f"--merge: no shard files {output.name}.shard-*-of-*.h5 next to {output}")
        expected = None
        if args.hdf5:
            from .data.hdf5 import read_audio_names
            expected = [name for path in args.hdf5 for name in read_audio_names(path)]
        summary = merge_teacher_logits(shards, output, expected_names=expected)
        if args.hdf5:
            dataset = AudioSetDataset(args.hdf5, replace_undecodable=False)
            summary.update(teacher_metrics(dataset, output))
            dataset.close()
        return summary
    if not args.hdf5 or not args.teachers:
        parser.error("--hdf5 and --teachers are required (unless --merge)")
    if (args.num_shards is None) != (args.shard_index is None):
        parser.error("--num_shards and --shard_index go together")

    dist_info = init_distributed(timeout_s=7 * 24 * 3600.0)
    try:
        if dist_info.enabled:
            rank, world_size = dist_info.rank, dist_info.world_size
            device = dist_info.device if args.cuda else torch.device("cpu")
        else:
            rank, world_size = (args.shard_index, args.num_shards) if args.num_shards else (0, 1)
            device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
        target = shard_path(output, rank, world_size) if world_size > 1 else output
        teacher, names = load_teachers(args.teachers, cache_dir=args.cache_dir)
        attrs = {"teacher_paths": [str(Path(t).resolve()) if Path(t).is_file() else t for t in args.teachers],
                 "preprocessing": _preprocessing_of(teacher)}
        summary = label_hdf5(teacher, args.hdf5, target, clip_length=args.clip_length, batch_size=args.batch_size,
                             num_workers=args.num_workers, device=device, precision=args.precision,
                             teacher_names=names, attrs=attrs, flush_every_batches=args.flush_every,
                             dtype=args.dtype, progress=not args.no_progress and rank == 0,
                             shard=(rank, world_size), metrics=world_size == 1,
                             crash_after_batches=args.crash_after_batches)
        if dist_info.enabled and world_size > 1:
            barrier()
            if rank == 0:
                summary = _merge_job(args, output, world_size)
            barrier()
        return summary
    finally:
        cleanup()


def _merge_job(args: argparse.Namespace, output: Path, world_size: int) -> dict[str, Any]:
    from .data.hdf5 import read_audio_names

    shards = [shard_path(output, r, world_size) for r in range(world_size)]
    expected = [name for path in args.hdf5 for name in read_audio_names(path)]
    summary = merge_teacher_logits(shards, output, expected_names=expected)
    dataset = AudioSetDataset(args.hdf5, replace_undecodable=False)
    summary.update(teacher_metrics(dataset, output))
    dataset.close()
    if not args.keep_shards:
        for path in shards:
            path.unlink()
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary_json = build_parser().parse_args(argv).summary_json
    summary = run(argv)
    if int(os.environ.get("RANK", 0)) == 0:
        _print_summary(summary)
        if summary_json:
            Path(summary_json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
