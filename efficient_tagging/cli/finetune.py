"""The fine-tuning commands: `ex_esc50.py`, `ex_fsd50k.py`, `ex_dcase20.py`, `ex_openmic.py`, `ex_finetune.py`.

One command line for every recipe (`main(argv, recipe=...)`); each `cli/<recipe>.py` is a thin
entry point. The flags and their defaults are EfficientAT's per script (`train.finetune.RECIPES`),
the dataset flags `cli.dataset_flags`'. What a run does:

1. open the dataset's parts (train / held-out / FSD50K's eval) in its official layout, at the
   recipe's clip length (own data: derived from the files and printed), optionally through a
   waveform cache (`--cache_path`);
2. start from a catalogue model or checkpoint (`--pretrained` + `--model_name`, or
   `--pretrained_name`) with its classifier replaced for the dataset's classes, or from scratch;
3. train with the one trainer (`train.trainer.train`), evaluating every epoch (best.pt = the
   best selection score, last.pt = the last epoch, the model the reference keeps);
4. print the result (accuracy + per-device table, or mAP), write a confusion matrix (CSV + PNG)
   for single-label data and `--results_json`.

Without `--train` (FSD50K, OpenMIC, as in the reference) or with `--evaluate` (the others) a model
is evaluated instead: `--model_path` (a fine-tuned checkpoint) or `--pretrained_name`.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from ..data.datasets.audio_files import DatasetLayoutError
from ..data.datasets.source import DatasetSource, DatasetSourceError
from ..interrupt import SignalReceived, exit_code
from ..models.factory import CheckpointError, CheckpointWriteError
from ..models.registry import get_entry
from ..tagging.tagger import load_tagger
from ..data.clip_dataset import UndecodableData
from ..textfile import InputFileError
from ..train.distributed import DeviceUnavailable, DistInfo, select_device
from ..train.finetune import (OWN_LR, RECIPES, REFERENCE_SCRIPTS, FinetuneResult, PreprocessingConflict,
                              adopt_model_frontend, cross_validate, finetune, open_datasets, recipe_defaults)
from ..train.interrupted import TrainingInterrupted
from ..train.run_lock import RunDirectoryBusy, RunDirectoryHoldsRun, check_run_directory
from ..train.tracking import RunTracker
from ..train.trainer import SELECTION_METRIC, ResumeMismatch, TrainConfig, cap_num_workers, dataset_task, evaluate
from .dataset_flags import add_dataset_arguments, source_from_args
from .help import HelpFormatter
from .train_flags import add_training_arguments, explicit_values, print_line

logger = logging.getLogger("efficient_tagging")

TITLES = {
    "esc50": "ESC-50 (2,000 5-s clips, 50 classes, 5 folds)",
    "fsd50k": "FSD50K (51k clips, 200 classes; selection on val, mAP on eval)",
    "dcase20": "DCASE2020 Task 1a (TAU Urban Acoustic Scenes 2020 Mobile, 10 scenes, 9 devices)",
    "openmic": "OpenMIC-2018 (20 instruments, partially labelled)",
    "own": "your own data (CSV lists or class folders)",
}
EXAMPLES = {
    "esc50": "python experiments/ex_esc50.py --dataset_dir ESC-50-master --pretrained --model_name mn10_as --fold 1\n"
             "  python experiments/ex_esc50.py --dataset_dir ESC-50-master --pretrained_name mn40_as_ext --all_folds "
             "--cache_path cache/ --results_json esc50.json",
    "fsd50k": "python experiments/ex_fsd50k.py --dataset_dir FSD50K_hdf5 --train --pretrained --model_name mn10_as\n"
              "  python experiments/ex_fsd50k.py --dataset_dir FSD50K_hdf5 --model_path runs/fsd50k/best.pt",
    "dcase20": "python experiments/ex_dcase20.py --dataset_dir TAU-urban-acoustic-scenes-2020-mobile-development "
               "--pretrained --model_name mn10_as --cache_path cache/",
    "openmic": "python experiments/ex_openmic.py --dataset_dir openmic_hdf5 --train --pretrained --model_name mn10_as",
    "own": "python experiments/ex_finetune.py --train_csv train.csv --eval_csv eval.csv --audio_root clips/ "
           "--pretrained_name mn10_as\n"
           "  python experiments/ex_finetune.py --audio_dir my_sounds/ --model_width 0.4 --n_epochs 30",
}
# how the own recipe's data-dependent defaults read in --help (train.finetune.resolve_own_recipe)
OWN_SHOWN = {"max_lr": f"{OWN_LR['pretrained']:g} from a pretrained model, {OWN_LR['scratch']:g} from scratch",
             "clip_length": "the 95th percentile of the training files' durations (printed)",
             "warm_up_len": "n_epochs/8", "ramp_down_start": "n_epochs/8", "ramp_down_len": "13/16 of n_epochs",
             "batch_size": "64, lowered so an epoch has >= 8 steps"}


def _description(recipe: str) -> str:
    if recipe == "own":
        head = ("Fine-tune (or train from scratch) a model on your own data: a filename,labels CSV (--train_csv, "
                "--eval_csv, --audio_root) or one sub-folder per class (--audio_dir). Any audio format and sample "
                "rate; the task (single- or multi-label) and the clip length are derived from the data and printed. "
                "The recipe is the reference's fine-tuning recipe with small-data defaults (see "
                "efficient_tagging.train.finetune.OWN_RECIPE).")
    else:
        values = RECIPES[recipe]
        head = (f"Fine-tune on {TITLES[recipe]}. Every default is EfficientAT's {REFERENCE_SCRIPTS[recipe]} "
                f"(peak lr {values.max_lr:g}, batch {values.batch_size}, {values.n_epochs} epochs, "
                f"{values.clip_length:g} s clips), so the defaults reproduce the published recipe.")
    return (f"{head}\n\nWrites best.pt and last.pt (self-describing: label map and frontend included, so "
            f"inference.py tags with them) to --out_dir, and the final metrics to --results_json.\n\n"
            f"examples:\n  {EXAMPLES[recipe]}")


def build_parser(recipe: str = "own") -> argparse.ArgumentParser:
    defaults = recipe_defaults(recipe)
    shown = {**defaults, **(OWN_SHOWN if recipe == "own" else {}), "out_dir": f"runs/{recipe}"}
    parser = argparse.ArgumentParser(description=_description(recipe), formatter_class=HelpFormatter)
    if recipe in ("fsd50k", "openmic"):
        parser.add_argument("--train", action="store_true",
                            help="train (EfficientAT's switch; without it the model given by --model_path or "
                                 "--pretrained_name is evaluated on the eval/test split)")
    else:
        parser.add_argument("--evaluate", action="store_true",
                            help="evaluate --model_path (or --pretrained_name) on the held-out part instead of training")
    parser.add_argument("--model_path", default=None, metavar="CHECKPOINT",
                        help="evaluation: a checkpoint fine-tuned on this dataset (e.g. runs/esc50/last.pt)")
    add_dataset_arguments(parser, "own" if recipe == "own" else recipe)
    if recipe == "esc50":
        parser.add_argument("--all_folds", action="store_true",
                            help="5-fold cross-validation: one run per held-out fold (out_dir/fold<k>), then "
                                 "per-fold and mean accuracy")
    parser.add_argument("--cache_path", default=None, metavar="DIR",
                        help="decode and resample every clip once into float16 caches in DIR, so later epochs "
                             "(and ESC-50 folds) read without decoding; safe to share between runs (default: none)")
    add_training_arguments(parser, shown, finetune=True, experiment_name=recipe)
    parser.add_argument("--override_preprocessing", action="store_true",
                        help="starting from a model (--pretrained_name / --pretrained), the run uses the frontend the "
                             "model was trained with (sample rate, mel bins, window, hop, FFT size, band edges) and "
                             "refuses a flag that contradicts it; with this switch such flags are kept (and printed)")
    return parser


def _is_training(args: argparse.Namespace, recipe: str) -> bool:
    return bool(args.train) if recipe in ("fsd50k", "openmic") else not args.evaluate


def _catalogue_family(name: str) -> Optional[str]:
    """The architecture a catalogue name belongs to (None for a name the catalogue does not hold)."""
    try:
        return get_entry(name).arch
    except KeyError:
        return None


def _overrides(args: argparse.Namespace, recipe: str) -> dict[str, Any]:
    values = explicit_values(args)
    # EfficientAT: without --pretrained, --model_name still picks the family trained from scratch
    if "model_name" not in values and "arch" not in values:
        family = _catalogue_family(str(args.model_name))
        if family is not None and family != TrainConfig.arch:
            values["arch"] = family
    values.setdefault("out_dir", f"runs/{recipe}")
    values["dataset"] = recipe if recipe != "own" else "own data"
    return values


# ----------------------------------------------------------------------------- printing

def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


LAYOUT_TASKS = {"esc50": "ESC-50: one class per clip", "dcase20": "DCASE20: one scene per clip",
                "fsd50k": "FSD50K: any number of labels per clip",
                "openmic": "OpenMIC: instruments annotated present/absent or not at all"}


def describe_data(source: DatasetSource, data: Any) -> list[str]:
    """Lines that say what a run reads: parts, clip counts, classes, task and clip length, with reasons."""
    train = data.train
    lines = []
    for role in ("train", "val", "test"):
        part = getattr(data, role)
        if part is not None:
            cached = f"  [cache {data.caches[role]}]" if role in data.caches else ""
            lines.append(f"{source.describe(role)}: {len(part)} clips{cached}")
    task = dataset_task(train)
    reason = getattr(train, "task_reason", None) or LAYOUT_TASKS.get(source.kind, f"the {source.kind} layout")
    lines.append(f"{train.num_classes} classes, task {task} ({reason})")
    estimate = getattr(train, "clip_length_estimate", None)
    why = estimate.describe() if estimate is not None else "the recipe's; --clip_length overrides"
    lines.append(f"clip length {train.clip_length:g} s ({why}); {train.sample_rate} Hz")
    return lines


def print_result(result: FinetuneResult, recipe: str, seconds: float) -> None:
    metrics = result.metrics
    selection = metrics["selection_metric"]
    last, best = metrics.get("last") or {}, metrics.get("best") or {}
    print(f"\n================ {recipe}: result ================")
    if selection == "accuracy":
        print(f"accuracy (last epoch {last.get('epoch')}): {_fmt(last.get('accuracy'))}   mean class accuracy "
              f"{_fmt(last.get('mean_class_accuracy'))}   best {_fmt(best.get('accuracy'))} (epoch {best.get('epoch')})")
    else:
        print(f"mAP (last epoch {last.get('epoch')}): {_fmt(last.get('mAP'))}   ROC-AUC {_fmt(last.get('ROC'))}   "
              f"best val {_fmt(best.get('mAP'))} (epoch {best.get('epoch')})")
    test = metrics.get("test")
    if test:
        print(f"best.pt on the eval split: mAP {_fmt(test.get('mAP'))}   ROC-AUC {_fmt(test.get('mean_roc_auc'))}")
    devices = metrics.get("accuracy_by_device")
    if devices:
        print("accuracy per recording device:")
        for device, entry in devices.items():
            seen = "" if entry.get("seen", True) else "  (unseen in training)"
            print(f"  {device:4s} {entry['accuracy']:.4f}  ({entry['correct']}/{entry['count']}){seen}")
    for name, why in (metrics.get("recipe_choices") or {}).items():
        print(f"recipe choice: {name} = {why}")
    if metrics.get("confusion_matrix_files"):
        print(f"confusion matrix: {', '.join(metrics['confusion_matrix_files'])}")
    print(f"reported ({metrics['reported']}): {selection} {_fmt(metrics.get(selection))}")
    print(f"checkpoints: last {result.last_checkpoint}   best {result.best_checkpoint}")
    summary = result.summary
    print(f"clip decodes that failed (each clip replaced by another of the training set): "
          f"{summary.get('skipped_clips', 0)}")
    coverage = summary.get("teacher_coverage")
    if coverage:
        found, missing = int(coverage.get("found", 0)), int(coverage.get("missing", 0))
        print(f"teacher logits: {found} of {found + missing} training clips")
    print(f"total time: {seconds:.0f} s")


def _plain_metrics(result: FinetuneResult) -> dict[str, Any]:
    out = {k: v for k, v in result.metrics.items() if k != "confusion_matrix"}
    matrix = result.metrics.get("confusion_matrix")
    if matrix is not None:
        out["confusion_matrix"] = [[int(v) for v in row] for row in matrix]
    out.update(checkpoint=result.checkpoint, best_checkpoint=result.best_checkpoint,
               last_checkpoint=result.last_checkpoint, history=result.summary.get("history"))
    return out


# ----------------------------------------------------------------------------- the runs

def _tracker(args: argparse.Namespace, recipe: str, name_suffix: str = "") -> RunTracker:
    return RunTracker((args.experiment_name or recipe) + name_suffix, args.runs_dir, wandb_mode=args.wandb or "offline")


def _start_line(values: dict[str, Any], num_classes: int, class_names: Optional[Sequence[str]] = None) -> str:
    start = values.get("model_name")
    if start:
        stored, stored_names = _stored_head(str(start))
        if stored != num_classes:
            return f"model: from {start} (classifier replaced for {num_classes} classes)"
        # same output width: the trainer keeps the classifier's weights (e.g. continuing an ESC-50 run)
        if stored_names is not None and class_names is not None and list(stored_names) != list(class_names):
            return (f"model: from {start} (its {num_classes}-class classifier is kept, but it was trained for other "
                    f"classes ({', '.join(stored_names[:3])}, ...) than these ({', '.join(list(class_names)[:3])}, "
                    f"...): its first epochs relearn them)")
        return f"model: from {start} (its {num_classes}-class classifier kept: the same number of classes)"
    return f"model: trained from scratch ({values.get('arch', 'mn')}, width {values['width_mult']:g})"


def _stored_head(spec: str) -> tuple[Optional[int], Optional[list[str]]]:
    """(classes, class names) of a catalogue model / checkpoint as stored, from one read of the file
    (None where it cannot be told without loading: names are known for this project's checkpoints)."""
    from ..frontends.contract import CONTRACT_KEY
    from ..models.factory import read_checkpoint
    from ..models.registry import CATALOGUE

    if spec in CATALOGUE:
        return CATALOGUE[spec].num_classes, None
    if not Path(spec).is_file():
        return None, None
    _, metadata = read_checkpoint(spec)
    config = metadata.get("config") or {}
    labels = (metadata.get(CONTRACT_KEY) or {}).get("labels") or metadata.get("labels")
    names = list(labels["names"]) if isinstance(labels, dict) and labels.get("names") else None
    return config.get("num_classes", config.get("label_dim")), names


def _recorded_finetune(tracker: RunTracker, config: dict[str, Any], **kwargs: Any) -> tuple[FinetuneResult, Any]:
    # config: what the run record stores as the run's settings
    """finetune(**kwargs) as a recorded run of `tracker`; returns the result and the run record's payload."""
    holder: dict[str, FinetuneResult] = {}

    def main_fn(run_tracker: RunTracker) -> dict[str, Any]:
        holder["result"] = finetune(tracker=run_tracker, report_epoch=print_line, **kwargs)
        for path in holder["result"].metrics.get("confusion_matrix_files") or []:
            run_tracker.add_artifact(path)
        return _plain_metrics(holder["result"])

    payload = tracker.run(main_fn, {k: v for k, v in config.items() if v is not None})
    return holder["result"], payload


def run_training(args: argparse.Namespace, recipe: str) -> dict[str, Any]:
    """Fine-tune once (one ESC-50 fold, FSD50K, DCASE20, OpenMIC or own data); returns the results_json payload."""
    started = time.time()
    source = source_from_args(args, recipe)
    overrides = _overrides(args, recipe)
    values = {**recipe_defaults(recipe), **overrides}
    # before any data is read: a busy out_dir, or one holding a run this one would replace, is refused now
    check_run_directory(values["out_dir"], resume=bool(values.get("resume")), overwrite=bool(values.get("overwrite")))
    # a model is fine-tuned on the inputs it was trained with: its stored frontend, before the data opens
    for line in adopt_model_frontend(values, set(overrides), values.get("model_name"),
                                     override=args.override_preprocessing):
        print(f"frontend: {line}", flush=True)
    data = open_datasets(source, sample_rate=int(values["sample_rate"]), clip_length=values.get("clip_length"),
                         teacher_logits=overrides.pop("teacher_logits", None), cache_path=args.cache_path)
    for line in describe_data(source, data):
        print(line, flush=True)
    label_map = getattr(data.train, "label_map", None)
    print(_start_line(values, data.train.num_classes, label_map.names if label_map is not None else None), flush=True)
    model = overrides.pop("model_name", None)
    result, _ = _recorded_finetune(_tracker(args, recipe), values, model=model, train_data=data.train,
                                   eval_data=data.val, test_data=data.test, recipe=recipe,
                                   override_preprocessing=args.override_preprocessing, **overrides)
    seconds = time.time() - started
    print_result(result, recipe, seconds)
    payload = _plain_metrics(result)
    payload.update(recipe=recipe, source=source.describe("train"), seconds=seconds, caches=data.caches,
                   model_start=model)
    return payload


def run_cross_validation(args: argparse.Namespace) -> dict[str, Any]:
    """ESC-50 --all_folds: five runs (out_dir/fold1..5), per-fold and mean accuracy."""
    started = time.time()
    source = source_from_args(args, "esc50")
    overrides = _overrides(args, "esc50")
    out_dir = overrides.pop("out_dir")
    model = overrides.pop("model_name", None)
    overrides.pop("dataset", None)
    values = {**recipe_defaults("esc50"), **overrides}
    for fold in range(1, 6):  # before any data is read: no fold's earlier run is replaced unasked
        check_run_directory(Path(out_dir) / f"fold{fold}", resume=bool(values.get("resume")),
                            overwrite=bool(values.get("overwrite")))
    print(f"ESC-50 5-fold cross-validation from {source.dataset_dir}; "
          f"{_start_line({**values, 'model_name': model}, 50)}", flush=True)
    def run_fold(fold: int, **arguments: Any) -> FinetuneResult:
        print(f"\n---------------- fold {fold} held out ----------------", flush=True)
        return _recorded_finetune(_tracker(args, "esc50", f"_fold{fold}"), {**values, "fold": fold}, **arguments)[0]

    summary = cross_validate(model, source, recipe="esc50", out_dir=out_dir, cache_path=args.cache_path,
                             override_preprocessing=args.override_preprocessing,
                             runner=run_fold, **overrides)
    metric = summary["selection_metric"]
    print("\n================ esc50: 5-fold cross-validation ================")
    for entry in summary["folds"]:
        print(f"fold {entry['fold']}: {metric} {_fmt(entry[metric])} (last epoch)   best {_fmt(entry['best'][metric])}"
              f"   {entry['checkpoint']}")
    print(f"mean {metric}: {_fmt(summary[f'mean_{metric}'])} +- {_fmt(summary[f'std_{metric}'])} over "
          f"{len(summary['folds'])} folds")
    seconds = time.time() - started
    print(f"total time: {seconds:.0f} s")
    return {"recipe": "esc50", "selection_metric": metric, f"mean_{metric}": summary[f"mean_{metric}"],
            f"std_{metric}": summary[f"std_{metric}"], metric: summary[f"mean_{metric}"],
            "folds": [{"fold": e["fold"], metric: e[metric], "best": e["best"], "checkpoint": e["checkpoint"],
                       "per_class_accuracy": e["metrics"].get("per_class_accuracy")} for e in summary["folds"]],
            "seconds": seconds, "model_start": model}


def run_evaluation(args: argparse.Namespace, recipe: str) -> dict[str, Any]:
    """Metrics of a model on the part a recipe reports (FSD50K: eval; others: the held-out part)."""
    spec = args.model_path or args.pretrained_name or (args.model_name if args.pretrained else None)
    if not spec:
        raise DatasetSourceError("evaluation needs --model_path CHECKPOINT (or --pretrained_name NAME)")
    device = select_device(bool(args.cuda))
    tagger = load_tagger(None, str(spec)) if Path(str(spec)).is_file() else load_tagger(str(spec), None)
    tagger = tagger.to(device)
    stored = getattr(tagger, "preprocessing", None) or {}
    clip_length = args.clip_length or stored.get("clip_length") or recipe_defaults(recipe).get("clip_length")
    source = source_from_args(args, recipe)
    role = "test" if "test" in source.roles else "val" if "val" in source.roles else "train"
    dataset = source.open(role, sample_rate=int(tagger.sample_rate), clip_length=clip_length,
                          replace_undecodable=False)
    classes = getattr(tagger.model, "num_classes", None)
    if classes is not None and int(classes) != int(dataset.num_classes):
        raise DatasetSourceError(f"{spec} outputs {classes} classes, {source.describe(role)} has "
                                 f"{dataset.num_classes}: evaluate a model fine-tuned on this dataset")
    print(f"evaluating {spec} on {source.describe(role)}: {len(dataset)} clips, clip length "
          f"{dataset.clip_length:g} s", flush=True)
    metrics = evaluate(tagger.model, tagger.frontend, dataset, device, DistInfo(False, 0, 1, 0, device),
                       args.eval_batch_size or args.batch_size or 32, cap_num_workers(args.num_workers or 0),
                       args.precision or "32", not args.no_progress)
    selection = SELECTION_METRIC[dataset_task(dataset)]
    print(f"{selection}: {_fmt(metrics[selection])}")
    if metrics.get("accuracy_by_device"):
        for device_name, entry in metrics["accuracy_by_device"].items():
            print(f"  {device_name:4s} {entry['accuracy']:.4f}  ({entry['correct']}/{entry['count']})")
    out = {k: v for k, v in metrics.items() if k not in ("confusion_matrix",)}
    out.update(model=str(spec), part=source.describe(role))
    return out


def _write_json(path: Optional[str], payload: dict[str, Any]) -> None:
    if path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=str))
        tmp.replace(target)


def main(argv: Optional[Sequence[str]] = None, recipe: str = "own") -> int:
    """Run a fine-tuning command; exit status 0, 1 on an error (one message), 130/143 when interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(recipe).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if not _is_training(args, recipe):
            payload = run_evaluation(args, recipe)
        elif recipe == "esc50" and args.all_folds:
            payload = run_cross_validation(args)
        else:
            payload = run_training(args, recipe)
        _write_json(args.results_json, payload)
        return 0
    except TrainingInterrupted as stopped:
        print(f"\n{stopped}\nto continue exactly from there, run the same command with --resume", file=sys.stderr)
        return stopped.exit_code
    except (KeyboardInterrupt, SignalReceived) as stopped:
        print("\ninterrupted: checkpoints written before (last.pt) are intact", file=sys.stderr)
        return exit_code(stopped.signum) if isinstance(stopped, SignalReceived) else 130
    except (DatasetSourceError, DatasetLayoutError, FileNotFoundError, RunDirectoryBusy, RunDirectoryHoldsRun,
            ResumeMismatch, CheckpointWriteError, CheckpointError, DeviceUnavailable, UndecodableData, InputFileError,
            PreprocessingConflict) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
