"""Fine-tuning recipes (EfficientAT's ex_esc50.py, ex_fsd50k.py, ex_dcase20.py, ex_openmic.py) and `finetune()`.

A recipe is a preset of `TrainConfig` values: the defaults read in the reference script of that
dataset, so "fine-tune with the defaults" reproduces the published recipe. All of them share the
reference scripts' common part (`FINETUNE_BASE`):

    80 epochs, Adam without weight decay, LR schedule per epoch: exponential warm-up over 10 epochs,
    linear ramp-down from epoch 10 over 65 epochs to 1 % of the peak; mixup 0.3 on spectrograms,
    roll (+-0.125 s) and waveform mixing (wavmix) on, gain +-12 dB; clips drawn by a plain shuffle,
    one pass per epoch (DataLoader(shuffle=True)); 32 kHz, 128 mels, 25 ms window, 10 ms hop;
    DyMN temperature 1 (pretrain_final_temp), i.e. no annealing

and differ in the peak learning rate and batch size (plus each dataset's clip length and task):

    recipe    script         lr       batch  task                 selection (best.pt)   reported
    esc50     ex_esc50.py    6e-5     128    multiclass           held-out fold acc.    last-epoch accuracy
    fsd50k    ex_fsd50k.py   7e-5     64     multilabel           val mAP               eval mAP (best.pt)
    dcase20   ex_dcase20.py  8e-4     64     multiclass           fold1_evaluate acc.   last-epoch accuracy
    openmic   ex_openmic.py  1e-5     64     partial_multilabel   test mAP              last-epoch mAP
    own       (ours)         see OWN_RECIPE: small-data defaults of this package

The reference scripts start from scratch unless `--pretrained` (then from `--model_name`,
default mn10_as); they keep the last epoch's model. Here `last.pt` is that model and `best.pt`
the one the selection metric picked; `finetune()` reports both.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from torch import nn

from ..data.datasets.source import DatasetSource
from ..models.factory import get_model, save_checkpoint
from ..tagging.tagger import AudioTagger
from .distributed import DistInfo, select_device
from .metrics import plot_confusion_matrix, write_confusion_matrix_csv
from .trainer import SELECTION_METRIC, TrainConfig, cap_num_workers, evaluate, train

logger = logging.getLogger(__name__)

# The part every EfficientAT fine-tuning script shares (read in ex_esc50.py, ex_fsd50k.py,
# ex_dcase20.py, ex_openmic.py; see the module docstring): where it differs from TrainConfig's
# defaults (which are ex_audioset.py's).
FINETUNE_BASE = TrainConfig(
    n_epochs=80, warm_up_len=10, ramp_down_start=10, ramp_down_len=65, roll=True, wavmix=True, gain_augment=12,
    sampler="uniform", epoch_len=None, pretrain_final_temp=1.0, num_workers=12, checkpoint_every_steps=0)

RECIPES: dict[str, TrainConfig] = {
    "esc50": dataclasses.replace(FINETUNE_BASE, max_lr=6e-5, batch_size=128, clip_length=5.0, task="multiclass"),
    "fsd50k": dataclasses.replace(FINETUNE_BASE, max_lr=7e-5, batch_size=64, clip_length=10.0, task="multilabel"),
    "dcase20": dataclasses.replace(FINETUNE_BASE, max_lr=8e-4, batch_size=64, clip_length=10.0, task="multiclass"),
    "openmic": dataclasses.replace(FINETUNE_BASE, max_lr=1e-5, batch_size=64, clip_length=10.0,
                                   task="partial_multilabel"),
}
# The settings a fine-tuning recipe fixes (`recipe_defaults`): the reference scripts' common frontend,
# schedule, augmentation, sampling and distillation settings, then each script's own. Where to write,
# which data and which model to start from are the caller's.
COMMON_FIELDS = ("sample_rate", "n_mels", "window_size", "hop_size", "n_fft", "freqm", "timem", "fmin", "fmax",
                 "fmin_aug_range", "fmax_aug_range", "n_epochs", "warm_up_len", "ramp_down_start", "ramp_down_len",
                 "last_lr_value", "lr_per_step", "weight_decay", "adamw", "mixup_alpha", "roll", "roll_max_shift",
                 "wavmix", "gain_augment", "mixstyle_p", "mixstyle_alpha", "sampler", "epoch_len",
                 "sampler_replacement", "pretrain_final_temp", "head_type", "se_dims", "width_mult", "num_workers",
                 "kd_lambda", "temperature", "checkpoint_every_steps")
RECIPE_FIELDS = COMMON_FIELDS + ("max_lr", "batch_size", "clip_length", "task")
REFERENCE_SCRIPTS = {"esc50": "ex_esc50.py", "fsd50k": "ex_fsd50k.py", "dcase20": "ex_dcase20.py",
                     "openmic": "ex_openmic.py"}
# what each recipe reports as its result (the reference keeps the last epoch's model; FSD50K
# selects on val and reports eval)
REPORTED = {"esc50": "last", "dcase20": "last", "openmic": "last", "fsd50k": "test", "own": "last"}

# Own data (ex_finetune.py): the reference shape, with what small data needs out of the box.
# - the LR: a pretrained model is fine-tuned at the ESC-50 recipe's 6e-5; a model trained from
#   scratch needs the from-scratch rate of the AudioSet / DCASE recipes, 8e-4 (at 6e-5 it barely moves
#   in 80 epochs of a small dataset);
# - the schedule is the reference's 80-epoch shape scaled to n_epochs (warm-up 1/8, ramp-down from
#   1/8 over 13/16 of the run), so a shorter --n_epochs still warms up and decays;
# - BatchNorm momentum 0.1: a small set gives a few hundred steps, too few for the architecture's
#   0.01 to settle the running statistics evaluation uses;
# - batch size 64, lowered for small sets so an epoch has at least 8 steps.
OWN_RECIPE = dataclasses.replace(FINETUNE_BASE, batch_size=64, bn_momentum=0.1)
# what the own-data recipe decides from the data (`resolve_own_recipe`, `finetune`), not in advance
OWN_DATA_DECIDES = ("clip_length", "max_lr")
OWN_LR = {"pretrained": 6e-5, "scratch": 8e-4}
OWN_SCHEDULE_FRACTIONS = {"warm_up_len": 10 / 80, "ramp_down_start": 10 / 80, "ramp_down_len": 65 / 80}
MIN_STEPS_PER_EPOCH = 8

ModelSpec = Union[str, Path, nn.Module, None]


def recipe_defaults(recipe: str) -> dict[str, Any]:
    """The TrainConfig preset of `recipe` ("esc50", "fsd50k", "dcase20", "openmic" or "own")."""
    if recipe == "own":
        values = {name: getattr(OWN_RECIPE, name) for name in COMMON_FIELDS + ("batch_size", "clip_length",
                                                                               "bn_momentum", "max_lr")}
        return {**values, **{name: None for name in OWN_DATA_DECIDES}}
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {', '.join([*RECIPES, 'own'])}")
    return {name: getattr(RECIPES[recipe], name) for name in RECIPE_FIELDS}


def resolve_own_recipe(values: dict[str, Any], given: set[str], num_train_clips: int) -> dict[str, str]:
    """Fill the own-data recipe's data-dependent values in `values` (not those in `given`); returns why each."""
    reasons: dict[str, str] = {}
    if "max_lr" not in given:
        start = "pretrained" if values.get("model_name") else "scratch"
        values["max_lr"] = OWN_LR[start]
        reasons["max_lr"] = f"{values['max_lr']:g} ({'fine-tuning a pretrained model' if start == 'pretrained' else 'training from scratch'})"
    epochs = int(values["n_epochs"])
    for name, fraction in OWN_SCHEDULE_FRACTIONS.items():
        if name not in given:
            values[name] = max(1, round(fraction * epochs)) if name != "ramp_down_start" else round(fraction * epochs)
    reasons["schedule"] = (f"warm-up {values['warm_up_len']} epochs, ramp-down from epoch {values['ramp_down_start']} "
                           f"over {values['ramp_down_len']} (the reference's 80-epoch shape scaled to {epochs})")
    if "batch_size" not in given:
        batch = min(int(values["batch_size"]), max(2, num_train_clips // MIN_STEPS_PER_EPOCH))
        if batch != values["batch_size"]:
            reasons["batch_size"] = f"{batch} (so that {num_train_clips} clips give >= {MIN_STEPS_PER_EPOCH} steps per epoch)"
        values["batch_size"] = batch
    return reasons


@dataclass
class FinetuneData:
    """The parts of a DatasetSource opened for a run (val/test None where the source has none)."""

    train: Any
    val: Any = None
    test: Any = None
    caches: dict[str, str] = field(default_factory=dict)  # role -> waveform cache path


def open_datasets(source: DatasetSource, *, sample_rate: int = 32000, clip_length: Optional[float] = None,
                  teacher_logits: Union[str, Path, None] = None, cache_path: Union[str, Path, None] = None,
                  cached_collection: Any = None) -> FinetuneData:
    """The train / val / test parts of `source` at `sample_rate`, one clip length for all of them.

    `clip_length` None = the layout's default (own data: derived from the training files). With
    `cache_path` (a folder) the waveforms are decoded once into float16 caches there (see
    `data.waveform_cache`): an ESC-50 source caches the whole collection once and every fold's
    parts read from it (`cached_collection`, e.g. from an earlier fold, skips reopening it); other
    sources get one cache per part. Clips evaluated at their own length (variable_eval_length)
    are not cached.
    """
    from ..data.waveform_cache import CachedWaveforms

    train = source.open("train", sample_rate=sample_rate, clip_length=clip_length, teacher_logits=teacher_logits)
    clip_length = train.clip_length
    label_map = getattr(train, "label_map", None)
    val = source.open("val", sample_rate=sample_rate, clip_length=clip_length, label_map=label_map) \
        if "val" in source.roles else None
    test = source.open("test", sample_rate=sample_rate, clip_length=clip_length) if "test" in source.roles else None
    data = FinetuneData(train, val, test)
    if cache_path is None:
        return data
    folder = Path(cache_path)
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{sample_rate // 1000}k_{clip_length:g}s"
    if source.kind == "esc50":
        collection = cached_collection or CachedWaveforms(source.open("all", sample_rate=sample_rate,
                                                                      clip_length=clip_length),
                                                          folder / f"esc50_all_{tag}.cache")
        for part in (data.train, data.val):
            collection.serve(part)
        data.caches = {"train": str(collection.cache_path), "val": str(collection.cache_path)}
        data.collection = collection  # type: ignore[attr-defined]
        return data
    for role in ("train", "val", "test"):
        part = getattr(data, role)
        if part is None:
            continue
        if getattr(part, "variable_length", False):
            logger.info("%s: clips at their own length are not cached", source.describe(role))
            continue
        cached = CachedWaveforms(part, folder / f"{source.kind}_{role}_{tag}.cache")
        setattr(data, role, cached)
        data.caches[role] = str(cached.cache_path)
    return data


# TrainConfig field -> its key in a model's stored frontend settings (the input contract's `frontend`)
FRONTEND_FIELDS = {"sample_rate": "sr", "n_mels": "n_mels", "window_size": "win_length", "hop_size": "hopsize",
                   "n_fft": "n_fft", "fmin": "fmin"}


class PreprocessingConflict(ValueError):
    """A setting given for a fine-tuning run contradicts the frontend of the model it starts from."""


def stored_frontend(model: ModelSpec) -> dict[str, Any]:
    """The frontend settings of the model a run starts from: a catalogue entry's, a checkpoint's
    stored input contract (or its preprocessing), an in-memory model's `preprocessing`; {} where
    nothing is stored (a plain official state_dict, or training from scratch)."""
    from ..frontends.contract import CONTRACT_KEY
    from ..models.factory import read_checkpoint
    from ..models.registry import CATALOGUE

    if model is None:
        return {}
    if isinstance(model, nn.Module):
        return dict(getattr(model, "preprocessing", None) or {})
    spec = str(model)
    if spec in CATALOGUE:
        return dict(CATALOGUE[spec].preprocessing)
    if Path(spec).is_file():
        _, metadata = read_checkpoint(spec)
        contract = metadata.get(CONTRACT_KEY)
        return dict((contract or {}).get("frontend") or metadata.get("preprocessing") or {})
    return {}


def _effective_fmax(values: dict[str, Any]) -> float:
    if values.get("fmax") is not None:
        return float(values["fmax"])
    return values["sample_rate"] / 2 - values.get("fmax_aug_range", 2000) / 2


def adopt_model_frontend(values: dict[str, Any], given: set[str], model: ModelSpec, *,
                         override: bool = False) -> list[str]:
    """Make `values` (TrainConfig settings) use the frontend of the model the run starts from.

    A model is fine-tuned on the inputs it was trained with: its stored sample rate, mel bins, window,
    hop, FFT size and band edges replace the recipe's defaults. A setting the user gave (`given`)
    that contradicts them is refused with both values named (PreprocessingConflict), unless
    `override` -- then it is kept and reported. Returns one line per adopted or overridden setting.
    """
    stored = stored_frontend(model)
    if stored.get("frontend", "mel") != "mel":
        return []  # PaSST / AST frontends are set up by their own recipes
    lines: list[str] = []
    wanted = {name: stored[key] for name, key in FRONTEND_FIELDS.items() if stored.get(key) is not None}
    if stored.get("fmax") is not None or stored.get("fmax_aug_range") is not None:
        rate = float(wanted.get("sample_rate", values["sample_rate"]))
        wanted["fmax"] = (float(stored["fmax"]) if stored.get("fmax") is not None
                          else rate / 2 - float(stored["fmax_aug_range"]) / 2)
    for name, value in wanted.items():
        current = _effective_fmax(values) if name == "fmax" else values.get(name)
        if current is not None and float(current) == float(value):
            continue
        if name in given:
            if not override:
                raise PreprocessingConflict(
                    f"--{name} {current:g} contradicts the model it starts from ({model}): it was trained with "
                    f"{name} {value:g}. Leave --{name} out to use the model's, or add --override_preprocessing "
                    f"to train with {current:g} anyway (the model then sees inputs unlike those it learnt from)")
            lines.append(f"{name} {current:g} (--override_preprocessing: the model was trained with {value:g})")
            continue
        values[name] = type(values[name])(value) if isinstance(values.get(name), (int, float)) else value
        lines.append(f"{name} {value:g} (from the model {model}; the recipe's default was {current:g})")
    return lines


@dataclass
class FinetuneResult:
    """What `finetune()` returns: the reported metrics, where the models are, the whole training summary."""

    metrics: dict[str, Any]
    checkpoint: str  # the reported model: last.pt (the reference keeps the last epoch) or best.pt (FSD50K)
    best_checkpoint: str
    last_checkpoint: str
    summary: dict[str, Any] = field(repr=False, default_factory=dict)


def _model_reference(model: ModelSpec, out_dir: Path) -> Optional[str]:
    """A catalogue name / checkpoint path for TrainConfig.model_name (an in-memory model is saved first)."""
    if model is None:
        return None
    if isinstance(model, nn.Module):
        arch, config = getattr(model, "arch", None), getattr(model, "config", None)
        if arch is None or config is None:
            raise TypeError(f"{type(model).__name__} is not a model of this package (no arch/config): pass a "
                            "catalogue name, a checkpoint path or a model from efficient_tagging.get_model")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "initial_model.pt"
        save_checkpoint(path, model, arch=arch, config=dict(config),
                        preprocessing=getattr(model, "preprocessing", None))
        return str(path)
    return str(model)


def finetune(model: ModelSpec, train_data: Any, eval_data: Any = None, *, test_data: Any = None,
             task: Optional[str] = None, recipe: str = "own", out_dir: Union[str, Path, None] = None,
             cache_path: Union[str, Path, None] = None, tracker: Optional[Any] = None,
             override_preprocessing: bool = False, report_epoch: Optional[Callable[[str], None]] = None,
             **overrides: Any) -> FinetuneResult:
    """Fine-tune `model` (catalogue name, checkpoint path, a model of this package, or None = from scratch).

    `train_data` / `eval_data` / `test_data` are datasets (`efficient_tagging.data`: ESC50, CSVDataset,
    FolderDataset, fsd50k_dataset(...), ...) or a `DatasetSource`, whose train/val/test parts are
    then opened at the recipe's sample rate and clip length (`open_datasets`; `cache_path` caches
    their waveforms). `recipe` picks the preset
    (`recipe_defaults`); `overrides` are any TrainConfig fields (e.g. n_epochs=10, max_lr=1e-4,
    teacher_logits="logits.h5", kd_lambda=0.5). The classifier is replaced for the data's label set;
    the checkpoints carry the label map and frontend settings, so `AudioTagger` / inference.py tag
    with them directly.

    Starting from a model, the run uses that model's frontend (sample rate, mel bins, hop, ...:
    `adopt_model_frontend`); an override that contradicts it raises PreprocessingConflict unless
    `override_preprocessing=True`. `report_epoch` receives each epoch's one-line summary (default: logged).

    Returns the reported metrics (the recipe's: last epoch, or best.pt on `test_data`), plus
    `best` (best.pt's selection score) and `test` (best.pt on test_data, when given).
    """
    values = recipe_defaults(recipe)
    given = set(overrides)
    unknown = sorted(given - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"finetune() got unknown settings {unknown}; they must be TrainConfig fields")
    values.update(overrides)
    for line in adopt_model_frontend(values, given, model if model is not None else values.get("model_name"),
                                     override=override_preprocessing):
        logger.info("frontend: %s", line)
    if task is not None:
        values["task"] = task
    out = Path(out_dir or values.get("out_dir") or tempfile.mkdtemp(prefix="finetune_"))
    values["out_dir"] = str(out)
    values["model_name"] = _model_reference(model, out) if model is not None else values.get("model_name")
    if isinstance(train_data, DatasetSource):
        values.setdefault("dataset", train_data.kind)
        opened = open_datasets(train_data, sample_rate=int(values["sample_rate"]), clip_length=values.get("clip_length"),
                               teacher_logits=values.get("teacher_logits"), cache_path=cache_path)
        train_data, eval_data, test_data = opened.train, eval_data or opened.val, test_data or opened.test
    if eval_data is None:
        raise ValueError("finetune() needs evaluation data (eval_data): the model is evaluated every epoch")
    if values.get("teacher_logits") and getattr(train_data, "teacher_logits", None) is None:
        if not hasattr(train_data, "attach_teacher_logits"):
            raise TypeError(f"{type(train_data).__name__} cannot join teacher logits (no attach_teacher_logits); "
                            "pass teacher_logits to the dataset itself")
        train_data.attach_teacher_logits(values["teacher_logits"])
    values["clip_length"] = float(getattr(train_data, "clip_length", values.get("clip_length") or 10.0))
    values["sample_rate"] = int(getattr(train_data, "sample_rate", values["sample_rate"]))
    reasons = resolve_own_recipe(values, given, len(train_data)) if recipe == "own" else {}
    for name, why in reasons.items():
        logger.info("recipe own: %s %s", name, why)
    if values.get("task") is None:
        values.pop("task", None)
    config = TrainConfig(**{k: v for k, v in values.items() if k in TrainConfig.__dataclass_fields__})
    summary = train(config, tracker, datasets=(train_data, eval_data), report_epoch=report_epoch)
    return report(summary, recipe, config, test_data, reasons)


def report(summary: dict[str, Any], recipe: str, config: TrainConfig, test_data: Any = None,
           reasons: Optional[dict[str, str]] = None) -> FinetuneResult:
    """The recipe's result from a training summary (evaluating best.pt on `test_data` when given)."""
    task = summary["task"]
    selection = SELECTION_METRIC[task]
    final = dict(summary.get("final") or {})
    metrics: dict[str, Any] = {"task": task, "selection_metric": selection, "reported": REPORTED.get(recipe, "last"),
                               "last": final, "best": {selection: summary.get("best_score"),
                                                       "epoch": _best_epoch(summary, selection)}}
    for name in ("accuracy_by_device", "per_class_accuracy", "confusion_matrix", "class_names", "per_class_ap"):
        if summary.get(name) is not None:
            metrics[name] = summary[name]
    checkpoints = summary["checkpoints"]
    if summary.get("confusion_matrix") is not None and summary.get("class_names"):
        out = Path(config.out_dir)
        metrics["confusion_matrix_files"] = [
            str(write_confusion_matrix_csv(out / "confusion_matrix.csv", summary["confusion_matrix"],
                                           summary["class_names"])),
            str(plot_confusion_matrix(out / "confusion_matrix.png", summary["confusion_matrix"],
                                      summary["class_names"], title=f"{config.dataset}: last epoch"))]
    if test_data is not None:
        metrics["test"] = evaluate_checkpoint(checkpoints["best"], test_data, config)
    reported = metrics["test"] if metrics["reported"] == "test" and "test" in metrics else final
    metrics[selection] = reported.get(selection)
    if reasons:
        metrics["recipe_choices"] = dict(reasons)
    checkpoint = checkpoints["best"] if metrics["reported"] == "test" else checkpoints["last"]
    return FinetuneResult(metrics=metrics, checkpoint=checkpoint, best_checkpoint=checkpoints["best"],
                          last_checkpoint=checkpoints["last"], summary=summary)


def _best_epoch(summary: dict[str, Any], selection: str) -> Optional[int]:
    scored = [record for record in summary.get("history") or [] if record.get(selection) is not None]
    return max(scored, key=lambda record: record[selection])["epoch"] if scored else None


def evaluate_checkpoint(checkpoint: Union[str, Path], dataset: Any, config: TrainConfig) -> dict[str, Any]:
    """Metrics of a trained checkpoint on `dataset` (e.g. FSD50K's eval split), through its stored frontend."""
    device = select_device(config.cuda)
    tagger = AudioTagger(get_model(str(checkpoint))).to(device)
    metrics = evaluate(tagger.model, tagger.frontend, dataset, device, DistInfo(False, 0, 1, 0, device),
                       config.eval_batch_size or config.batch_size, cap_num_workers(config.num_workers, log=False),
                       config.precision, config.progress)
    return {k: v for k, v in metrics.items() if k not in ("per_class_ap",)}


def cross_validate(model: ModelSpec, source: DatasetSource, folds: Any = (1, 2, 3, 4, 5), *,
                   recipe: str = "esc50", out_dir: Union[str, Path] = "runs/esc50",
                   cache_path: Union[str, Path, None] = None, runner: Optional[Any] = None,
                   override_preprocessing: bool = False, **overrides: Any) -> dict[str, Any]:
    """ESC-50's 5-fold cross-validation: one `finetune` per held-out fold (out_dir/fold<k>), then the mean.

    Every fold starts from the same `model`; with `cache_path` the collection is decoded once for
    all folds. Returns {"folds": [{fold, <metric>, checkpoint, ...}], "mean_<metric>", "std_<metric>"}.
    `runner(fold, **finetune_arguments)` runs one fold instead of `finetune` (e.g. as a recorded run).
    """
    import numpy as np

    if source.kind != "esc50":
        raise ValueError(f"cross-validation over folds is defined for ESC-50, not {source.kind}")
    values = recipe_defaults(recipe)
    values.update(overrides)
    adopt_model_frontend(values, set(overrides), model, override=override_preprocessing)  # the data's rate too
    per_fold: list[dict[str, Any]] = []
    collection = None
    for fold in folds:
        fold_source = dataclasses.replace(source, fold=int(fold))
        opened = open_datasets(fold_source, sample_rate=int(values["sample_rate"]),
                               clip_length=values.get("clip_length"), teacher_logits=values.get("teacher_logits"),
                               cache_path=cache_path, cached_collection=collection)
        collection = getattr(opened, "collection", None)
        fold_dir = Path(out_dir) / f"fold{int(fold)}"
        arguments = dict(model=model, train_data=opened.train, eval_data=opened.val, recipe=recipe, out_dir=fold_dir,
                         dataset=f"esc50 fold {int(fold)} held out", override_preprocessing=override_preprocessing,
                         **overrides)
        result = runner(int(fold), **arguments) if runner is not None else finetune(**arguments)
        metric = result.metrics["selection_metric"]
        per_fold.append({"fold": int(fold), metric: result.metrics[metric], "best": result.metrics["best"],
                         "checkpoint": result.checkpoint, "metrics": result.metrics})
    metric = per_fold[0]["metrics"]["selection_metric"] if per_fold else "accuracy"
    scores = np.asarray([entry[metric] for entry in per_fold], dtype=np.float64)
    return {"folds": per_fold, "selection_metric": metric, f"mean_{metric}": float(scores.mean()) if len(scores) else None,
            f"std_{metric}": float(scores.std()) if len(scores) else None}
