"""`ex_audioset.py`: knowledge-distillation training on AudioSet-format data, or evaluation.

- With `--train` and data paths: train the student described by the flags on the given
  HDF5 files, distilling from `--teacher_preds` (a teacher-logits HDF5).
- With `--train` and no data paths: the embedded demo. A synthetic AudioSet-format dataset
  is built once (cached), a small transformer teacher (PaSST) is trained on it and labels it
  with the package's teacher-labelling code, then the requested student is distilled from
  those logits.
- Without `--train`: evaluate a pretrained (`--model_name`) or local (`--model_path`) model
  on `--eval_hdf5` and print mAP / ROC-AUC.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..data.clip_dataset import UndecodableData
from ..data.hdf5 import AudioSetDataset
from ..interrupt import SignalReceived, exit_code
from ..labelling import label_hdf5
from ..models.factory import CheckpointError, CheckpointWriteError
from ..tagging.tagger import AudioTagger, load_tagger
from ..textfile import InputFileError
from ..train.audioset import AUDIOSET_RECIPE, DEMO_RECIPE
from ..train.demo import DemoSettings, run_demo
from ..train.distributed import DeviceUnavailable, DistInfo, init_distributed, select_device
from ..train.interrupted import TrainingInterrupted
from ..train.recorded import run_recorded_training
from ..train.run_lock import RunDirectoryBusy, RunDirectoryHoldsRun
from ..train.trainer import ResumeMismatch, TrainConfig, cap_num_workers, evaluate
from .train_flags import add_training_arguments, config_from_args, explicit_values, print_line
from .dataset_flags import clip_length_with_source
from .help import HelpFormatter

logger = logging.getLogger("efficient_tagging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=HelpFormatter)
    parser.add_argument("--train", action="store_true", help="train (default: evaluate a model)")
    parser.add_argument("--model_name", default="mn10_as", help="evaluation: catalogue model to evaluate")
    parser.add_argument("--model_path", default=None, help="evaluation: local checkpoint to evaluate")
    parser.add_argument("--demo_dir", default=None,
                        help="where the demo dataset, teacher and logits are cached (default <cache>/demo)")
    parser.add_argument("--demo_clips", type=int, default=2000,
                        help="demo training clips (the eval split gets an eighth as many); fewer for a quick smoke "
                             "run (default: 2000)")
    parser.add_argument("--demo_native_cpu", action="store_true",
                        help="demo: use this CPU's fastest kernels and all its threads instead of portable numerics "
                             "(AVX2 kernels, 2 threads), which make the demo's numbers the same on x86-64 CPUs "
                             "of one vendor; Intel and AMD differ (README: what the demo's numbers mean) "
                             "(default: off)")
    add_training_arguments(parser, AUDIOSET_RECIPE.to_dict(), DEMO_RECIPE.to_dict())
    return parser


def _write_json(path: Optional[str], payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=1, default=str))


def _run_training(config: TrainConfig, args: argparse.Namespace, dist_info: DistInfo) -> dict[str, Any]:
    return run_recorded_training(config, dist_info, experiment_name=args.experiment_name or "audioset",
                                 runs_dir=args.runs_dir, wandb_mode=args.wandb or "offline", report_epoch=print_line)


def print_training_summary(summary: dict[str, Any], *, title: str = "training summary",
                           header_lines: Sequence[str] = (), seconds: Optional[float] = None) -> None:
    """The end-of-run report of every training run (the demo adds its teacher/student lines on top)."""
    print(f"\n================ {title} ================")
    for line in header_lines:
        print(line)
    evaluated = [record for record in summary.get("history") or [] if record.get("mAP") is not None]
    final = summary.get("final") or {}
    if evaluated:
        best = max(evaluated, key=lambda record: record["mAP"])
        final_line = ""
        if final.get("mAP") is not None:
            final_line = (f"final (epoch {final.get('epoch')}): mAP {final['mAP']:.4f}  "
                          f"ROC {final.get('ROC', float('nan')):.4f}  d' {final.get('d_prime', float('nan')):.3f}")
        print(f"best mAP {best['mAP']:.4f} (epoch {best['epoch']})   {final_line}".rstrip())
    else:
        print("no evaluation ran")
    if final.get("train_loss") is not None:
        print(f"final train loss {final['train_loss']:.4f} after {final.get('epoch')} epochs")
    checkpoints = summary.get("checkpoints") or {}
    print(f"checkpoints: best {checkpoints.get('best')}   last {checkpoints.get('last')}")
    print(f"run record: {summary.get('run_dir') or 'none'}")
    print(f"clip decodes that failed (each clip replaced by another of the training set): "
          f"{summary.get('skipped_clips', 0)}")
    coverage = summary.get("teacher_coverage")
    if coverage:
        found, missing = int(coverage.get("found", 0)), int(coverage.get("missing", 0))
        total = found + missing
        print(f"teacher logits: {found} of {total} training clips ({100.0 * found / max(total, 1):.1f}%); "
              f"{summary.get('clips_without_teacher', 0)} drawn clips trained on the label loss only")
    if seconds is not None:
        print(f"total time: {seconds:.0f} s")


def demo_settings(args: argparse.Namespace) -> DemoSettings:
    """The demo's settings from the command's flags."""
    return DemoSettings(demo_dir=args.demo_dir, clips=args.demo_clips, native_cpu=args.demo_native_cpu,
                        progress=not args.no_progress, train_values=explicit_values(args),
                        experiment_name=args.experiment_name, runs_dir=args.runs_dir, wandb=args.wandb)


def _demo_command(args: argparse.Namespace, dist_info: DistInfo) -> dict[str, Any]:
    """The embedded demo (train/demo.py); rank 0 prints its summary and returns its numbers."""
    run = run_demo(demo_settings(args), dist_info, label_clips=label_hdf5, notify=print_line)
    if run.result is None:
        return run.summary
    result = run.result
    header = [f"classes ({len(result['data']['classes'])}): {' | '.join(result['data']['classes'])}"]
    for role in ("teacher", "student"):
        part = result[role]
        header.append(f"{role:8s} {part['arch']:6s} mAP {part['mAP']:.3f}   params {part['params'] / 1e6:.2f} M   "
                      f"MACs {part['macs'] / 1e9:.3f} G per {result['data']['clip_length_s']:g} s clip")
    header.append("student run:")
    print_training_summary(run.summary, title="demo summary", header_lines=header, seconds=result["seconds"])
    return result


def evaluation_data_settings(args: argparse.Namespace, tagger: AudioTagger) -> dict[str, Any]:
    """Sample rate and clip length of an evaluation, each with where it came from.

    The clip length is the flag's, else the one stored with the checkpoint (what the model was
    trained and evaluated with), else the AudioSet recipe's 10 s. The sample rate is the model
    frontend's: a flag cannot change it, and one that contradicts it is refused.
    """
    stored = getattr(tagger, "preprocessing", None) or {}
    clip_length, clip_source = clip_length_with_source(args.clip_length, stored.get("clip_length"))
    sample_rate = int(tagger.sample_rate)
    if args.sample_rate is not None and int(args.sample_rate) != sample_rate:
        raise SystemExit(f"error: --resample_rate {args.sample_rate} contradicts the model: its frontend takes "
                         f"{sample_rate} Hz audio (from its {'checkpoint' if stored.get('sr') else 'settings'}); "
                         "drop --resample_rate")
    sample_source = "the model's frontend" + (", stored in the checkpoint" if stored.get("sr") else "")
    return {"clip_length": clip_length, "clip_length_source": clip_source, "sample_rate": sample_rate,
            "sample_rate_source": sample_source}


def run_evaluation(args: argparse.Namespace) -> dict[str, Any]:
    if not args.eval_hdf5:
        raise SystemExit("error: evaluation needs --eval_hdf5 (AudioSet-format eval file); add --train to train")
    device = select_device(bool(args.cuda))
    tagger = load_tagger(args.model_name, args.model_path).to(device)
    settings = evaluation_data_settings(args, tagger)
    print(f"clip length {settings['clip_length']:g} s ({settings['clip_length_source']}); "
          f"sample rate {settings['sample_rate']} Hz ({settings['sample_rate_source']})", flush=True)
    dataset = AudioSetDataset(args.eval_hdf5, sample_rate=settings["sample_rate"], clip_length=settings["clip_length"])
    metrics = evaluate(tagger.model, tagger.frontend, dataset, device, DistInfo(False, 0, 1, 0, device),
                       args.batch_size or 32, cap_num_workers(args.num_workers or 0), args.precision or "32",
                       not args.no_progress)
    metrics.update(settings)
    print(f"Results on {', '.join(args.eval_hdf5)} for {args.model_path or args.model_name}:")
    print(f"  mAP: {metrics['mAP']:.3f}")
    print(f"  ROC: {metrics['mean_roc_auc']:.3f}")
    print(f"  d':  {metrics['d_prime']:.3f}")
    return {k: v for k, v in metrics.items() if k != "per_class_ap"}


def resume_command(argv: Sequence[str]) -> str:
    """The command that continues an interrupted run: this one's arguments plus --resume."""
    args = list(argv) + ([] if "--resume" in argv else ["--resume"])
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else None
    prefix = [sys.executable, script] if script else [sys.executable, "-m", "efficient_tagging.cli.audioset"]
    if "WORLD_SIZE" in os.environ:  # under torchrun: its own flags are not ours to know
        return "torchrun <your torchrun flags> " + shlex.join([script or "-m efficient_tagging.cli.audioset", *args])
    return shlex.join([*prefix, *args])


def _train_command(args: argparse.Namespace, dist_info: DistInfo) -> dict[str, Any]:
    started = time.time()
    if not args.train_hdf5:
        return _demo_command(args, dist_info)
    config = config_from_args(args, AUDIOSET_RECIPE)
    result = _run_training(config, args, dist_info)
    result["seconds"] = time.time() - started
    if dist_info.rank == 0:
        print_training_summary(result, seconds=result["seconds"])
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dist_info: Optional[DistInfo] = None
    try:
        if not args.train:
            _write_json(args.results_json, run_evaluation(args))
            return 0
        dist_info = init_distributed()
        result = _train_command(args, dist_info)
        if dist_info.rank == 0:
            _write_json(args.results_json, result)
        return 0
    except TrainingInterrupted as stopped:
        if dist_info is None or dist_info.rank == 0:
            print(f"\n{stopped}\nto continue exactly from there, run:\n  {resume_command(argv)}", file=sys.stderr,
                  flush=True)
        return stopped.exit_code
    except (KeyboardInterrupt, SignalReceived) as stopped:
        print("\ninterrupted: nothing more was saved (checkpoints written before, e.g. last.pt, are intact)",
              file=sys.stderr)
        return exit_code(stopped.signum) if isinstance(stopped, SignalReceived) else 130
    except (RunDirectoryBusy, RunDirectoryHoldsRun, ResumeMismatch, CheckpointWriteError, CheckpointError,
            DeviceUnavailable, UndecodableData, InputFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if dist_info is not None and dist_info.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
