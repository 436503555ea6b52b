"""The training loop every experiment shares: knowledge distillation (or plain label training).

One readable loop, no framework: waveforms come from an AudioSet-format dataset through a
class-balanced sampler; augmentations run batched on the device (roll, gain, wavmix on
waveforms; mel frontend with its own masking/jitter; mixup on spectrograms, as in
EfficientAT); the loss mixes label BCE and distillation BCE against stored teacher logits;
the learning rate follows the reference schedule per step; after each epoch the model is
evaluated (mAP, ROC-AUC, d', per-class AP) and `last.pt` / `best.pt` are written
atomically with everything needed to resume exactly (optimizer, scheduler, sampler
position, RNG states, AMP scaler).

Runs single-process or under `torchrun` (DistributedDataParallel; nccl on GPU, gloo on
CPU): each rank trains on its share of every epoch, evaluation outputs are gathered, and
only rank 0 writes checkpoints and run records.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from ..data.augment import gain_augment, mix, mixstyle, mixup, roll_waveforms, wavmix
from ..data.base import UndecodableData
from ..data.hdf5 import AudioSetDataset, read_label_map
from ..data.sampling import DistributedWeightedSampler, check_positive_labels, class_balanced_weights
from ..data.teacher_logits import check_teacher_coverage
from ..frontends.mel import AugmentMelSTFT
from ..hardware import resolve_precision
from ..labels import LabelMap
from ..models.factory import (CheckpointError, create_model, get_model, pretrained_arch, read_checkpoint,
                              save_checkpoint)
from ..models.layers import forward_spectrogram
from .distributed import DistInfo, all_gather_tensors, barrier, init_distributed, reduce_max, reduce_sum, select_device
from ..interrupt import StopOnSignal, signal_name
from .interrupt import TrainingInterrupted
from .run_lock import RunDirectoryBusy, RunDirectoryHoldsRun, RunDirectoryLock, check_run_directory
from .losses import TASK_KINDS, kd_temperature, masked_bce_loss, single_label_loss, task_loss
from .metrics import (accuracy_by_group, evaluate_masked_predictions, evaluate_predictions,
                      multiclass_metrics)
from .schedules import exp_warmup_linear_down, make_lr_scheduler

logger = logging.getLogger(__name__)

PRECISIONS = ("32", "16", "bf16")
SAMPLERS = ("balanced", "uniform")


@dataclass
class TrainConfig:
    """Everything a training run depends on. Field names follow EfficientAT's flags."""

    # --- data ------------------------------------------------------------------------------
    train_hdf5: list[str] = field(default_factory=list)
    eval_hdf5: list[str] = field(default_factory=list)
    teacher_logits: Optional[str] = None  # teacher-logits HDF5 (joined by audio_name)
    allow_no_teacher_coverage: bool = False  # train even if the teacher logits match no training clip
    sample_rate: int = 32000
    clip_length: float = 10.0
    num_classes: Optional[int] = None  # default: from the data files
    batch_size: int = 120
    num_workers: int = 4
    # "balanced": class-balanced weighted draws (the AudioSet recipe); "uniform": every clip equally
    # likely, i.e. a plain shuffle when drawn without replacement (the fine-tuning recipes'
    # DataLoader(shuffle=True); with it the last, partial batch of an epoch is trained on too).
    sampler: str = "balanced"
    epoch_len: Optional[int] = 100_000  # clips drawn per epoch; None = one pass over the training data
    sampler_replacement: bool = False  # the reference draws each epoch without replacement
    # "multilabel" (BCE, mAP), "multiclass" (mixup CE, accuracy) or "partial_multilabel" (masked BCE,
    # mAP over known labels); None = the training dataset's own `task` (AudioSet HDF5: multilabel).
    task: Optional[str] = None
    # --- model -----------------------------------------------------------------------------
    arch: str = "mn"
    model_name: Optional[str] = None  # catalogue name or checkpoint path to start from
    width_mult: float = 1.0
    head_type: str = "mlp"
    se_dims: str = "c"
    strides: tuple[int, int, int, int] = (2, 2, 2, 2)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # any further constructor kwargs
    # DyMN started from pretrained weights: initial attention temperature (EfficientAT's
    # ex_audioset.py: 30, annealed to 1 by epoch 29; fine-tuning scripts: 1, kept).
    pretrain_final_temp: float = 30.0
    # BatchNorm momentum during training (None keeps the architecture's: 0.01 for mn/dymn).
    # Short runs need a larger one, or the running statistics used at eval never settle.
    bn_momentum: Optional[float] = None
    # --- frontend (AugmentMelSTFT) ----------------------------------------------------------
    n_mels: int = 128
    window_size: int = 800
    hop_size: int = 320
    n_fft: int = 1024
    freqm: int = 0
    timem: int = 0
    fmin: float = 0.0
    fmax: Optional[float] = None
    fmin_aug_range: int = 10
    fmax_aug_range: int = 2000
    # --- augmentation ----------------------------------------------------------------------
    mixup_alpha: float = 0.3  # 0 disables
    roll: bool = False
    roll_max_shift: int = 4000  # samples, EfficientAT's roll range (+-4000, i.e. 0.125 s at 32 kHz)
    wavmix: bool = False
    # frequency-wise MixStyle on spectrograms (EfficientAT's ex_dcase20.py): applied to a batch with
    # probability mixstyle_p; as in the reference, mixstyle_p > 0 replaces mixup (no mixup at all then).
    mixstyle_p: float = 0.0
    mixstyle_alpha: float = 0.4
    gain_augment: int = 0  # whole decibels from [-g, g - 1] like the reference's pydub_augment; 0 disables
    # --- optimisation ----------------------------------------------------------------------
    n_epochs: int = 200
    max_lr: float = 0.0008
    warm_up_len: int = 8
    ramp_down_start: int = 80
    ramp_down_len: int = 95
    last_lr_value: float = 0.01
    lr_per_step: bool = False  # opt-in: evaluate the schedule at fractional epochs (reference: per epoch)
    adamw: bool = False
    weight_decay: float = 0.0  # EfficientAT's ex_audioset.py: Adam without weight decay
    # --- distillation ----------------------------------------------------------------------
    kd_lambda: float = 0.1  # label-loss weight; 0 switches distillation off, as in EfficientAT
    # None = the task kind's default (`losses.kd_temperature`): 1 for multi-label (the AudioSet
    # recipe's), 4 for single-label (Hinton's loss)
    temperature: Optional[float] = None
    # --- runtime ---------------------------------------------------------------------------
    precision: str = "32"
    # speed, not recipe (same maths, measured in benchmarks/RESULTS.md): channels-last weights and
    # activations (oneDNN / cuDNN convolutions prefer them) and the fused (single-kernel) Adam/AdamW
    channels_last: bool = True
    fused_optimizer: bool = True
    cuda: bool = False
    seed: int = 0
    dataset: str = "audioset"  # what the model is trained on: stored in its checkpoint
    out_dir: str = "runs/audioset"
    resume: bool = False
    overwrite: bool = False  # start over in an out_dir that holds a run's checkpoints (else refused)
    resume_override: bool = False  # --resume although settings differ from the checkpoint's run (not the model)
    checkpoint_every_steps: int = 500  # also checkpoint mid-epoch, so a killed job loses little
    eval_batch_size: Optional[int] = None
    eval_every_epochs: int = 1  # evaluation (and `best.pt`) every N epochs and after the last one
    progress: bool = True
    crash_after_steps: Optional[int] = None  # testing aid: hard-exit after this many steps

    def __post_init__(self) -> None:
        if isinstance(self.train_hdf5, (str, Path)):
            self.train_hdf5 = [str(self.train_hdf5)]
        if isinstance(self.eval_hdf5, (str, Path)):
            self.eval_hdf5 = [str(self.eval_hdf5)]
        self.strides = tuple(int(s) for s in self.strides)  # type: ignore[assignment]
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 <= self.kd_lambda <= 1.0:
            raise ValueError(f"kd_lambda must be in [0, 1], got {self.kd_lambda}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not 0.0 <= self.mixstyle_p <= 1.0:
            raise ValueError(f"mixstyle_p must be in [0, 1], got {self.mixstyle_p}")
        if self.mixstyle_p > 0 and self.mixstyle_alpha <= 0:
            raise ValueError(f"mixstyle_alpha must be positive, got {self.mixstyle_alpha}")
        for name in ("batch_size", "epoch_len", "n_epochs", "eval_every_epochs"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Frontend settings stored with checkpoints (what inference must use)."""
        prep = {"sr": self.sample_rate, "n_mels": self.n_mels, "win_length": self.window_size,
                "hopsize": self.hop_size, "n_fft": self.n_fft, "fmin": self.fmin,
                # the data setting too: evaluation and tagging pad/cut clips to what the model saw
                "clip_length": self.clip_length}
        if self.fmax is not None:
            prep["fmax"] = self.fmax
        else:  # fmax then follows from fmax_aug_range (sr/2 - range/2): keep what decides it
            prep["fmax_aug_range"] = self.fmax_aug_range
        return prep


# TrainConfig fields that decide the model's parameters or the shape of its input: a resumed
# run cannot change them (the checkpoint's weights would not fit, or would mean something else).
MODEL_FIELDS = ("arch", "model_name", "width_mult", "head_type", "se_dims", "strides", "model_kwargs", "num_classes",
                "n_mels")
# Fields that only say where and how a run executes, not what it computes: never compared on resume.
RUNTIME_FIELDS = ("num_workers", "progress", "cuda", "eval_batch_size", "out_dir", "resume", "overwrite", "resume_override",
                  "crash_after_steps", "checkpoint_every_steps")


# Training stops when more than this share of an epoch's clip decodes fail (checked once at least
# UNDECODABLE_MIN_ATTEMPTS were made, and at the epoch's end): undecodable clips are replaced by others,
# but a set that is mostly broken is not the data the user meant to train on.
UNDECODABLE_LIMIT = 0.5
UNDECODABLE_MIN_ATTEMPTS = 256


def _check_undecodable(failed: int, attempts: int, final: bool) -> None:
    if attempts and failed > UNDECODABLE_LIMIT * attempts and (final or attempts >= UNDECODABLE_MIN_ATTEMPTS):
        raise UndecodableData(f"{failed} of {attempts} clip decodes failed this epoch (more than "
                              f"{UNDECODABLE_LIMIT:.0%}): the training data looks broken (the log names the clips); "
                              f"fix or remove them rather than train on what is left")


class ResumeMismatch(ValueError):
    """`resume` with settings that differ from those the checkpoint was trained with."""


def _show_value(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_resume_config(stored: Optional[dict[str, Any]], config: TrainConfig, checkpoint: Path,
                        shape_mismatches: Sequence[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Compare the stored run's TrainConfig with the new one; returns the accepted differences (old, new).

    Raises ResumeMismatch for a changed model (MODEL_FIELDS, or weights of other shapes), and
    for any other changed setting unless `config.resume_override`. RUNTIME_FIELDS never count,
    nor fields the stored config does not know (written by an older version).
    """
    current = _plain(config.to_dict())
    differences = {name: (old, current[name]) for name, old in (stored or {}).items()
                   if name in current and name not in RUNTIME_FIELDS and old != current[name]}
    lines = [f"  {name}: {_show_value(old)} -> {_show_value(new)}" for name, (old, new) in differences.items()]
    model_lines = [line for line, name in zip(lines, differences) if name in MODEL_FIELDS]
    if model_lines or shape_mismatches:
        details = model_lines + [f"  {problem}" for problem in shape_mismatches]
        raise ResumeMismatch(
            f"cannot resume from {checkpoint}: these settings change the model it holds:\n" + "\n".join(details)
            + "\na resumed run keeps the checkpoint's model: drop the changed flags to continue it, or start a new run "
              "in another out_dir (e.g. initialised from it with --pretrained " + str(checkpoint) + ")")
    if differences and not config.resume_override:
        raise ResumeMismatch(
            f"--resume with settings that differ from the run in {checkpoint} (old -> new):\n" + "\n".join(lines)
            + "\npass --resume_override (resume_override=True) to continue with the new values, or drop the changed "
              "flags to continue exactly as before")
    if differences:
        logger.warning("resuming %s with changed settings (--resume_override; old -> new):\n%s", checkpoint,
                       "\n".join(lines))
    return differences


def _shape_mismatches(model: nn.Module, weights: dict[str, Tensor]) -> list[str]:
    """Tensors of the checkpoint that do not fit `model` (missing, unexpected, other shapes); the first few."""
    own = model.state_dict()
    problems = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
                for k, v in own.items() if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    problems += [f"{k}: not in the checkpoint" for k in own if k not in weights]
    problems += [f"{k}: in the checkpoint, not in the model" for k in weights if k not in own]
    return problems[:8] + ([f"... {len(problems) - 8} more"] if len(problems) > 8 else [])


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_num_workers(requested: int, log: bool = True) -> int:
    """`requested` DataLoader workers, at most one per available core (said once, in one log line).

    More workers than cores only compete with the training threads, and torch warns about it
    on every DataLoader it starts.
    """
    cores = available_cpus()
    if requested <= cores:
        return requested
    if log:
        logger.info("num_workers %d capped to %d: the CPU cores available to this process", requested, cores)
    return cores


def data_wait_record(epoch: int, data_wait_s: float, step_time_s: float) -> dict[str, Any]:
    """One epoch's data-loading timing: seconds blocked waiting for batches, seconds of all its steps
    (waits included) and their ratio `data_wait_fraction` in [0, 1] (0 for an epoch without steps)."""
    step_time_s = max(float(step_time_s), 0.0)
    data_wait_s = min(max(float(data_wait_s), 0.0), step_time_s)
    fraction = data_wait_s / step_time_s if step_time_s > 0 else 0.0
    return {"epoch": int(epoch), "data_wait_fraction": fraction, "data_wait_s": data_wait_s,
            "step_time_s": step_time_s}


def build_frontend(config: TrainConfig) -> AugmentMelSTFT:
    return AugmentMelSTFT(n_mels=config.n_mels, sr=config.sample_rate, win_length=config.window_size,
                          hopsize=config.hop_size, n_fft=config.n_fft, freqm=config.freqm, timem=config.timem,
                          fmin=config.fmin, fmax=config.fmax, fmin_aug_range=config.fmin_aug_range,
                          fmax_aug_range=config.fmax_aug_range)


def model_config(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    """Constructor kwargs (the reference's own names) of the model described by `config`."""
    frames = 1 + int(config.clip_length * config.sample_rate - 1) // config.hop_size
    if config.arch == "mn":
        kwargs: dict[str, Any] = dict(num_classes=num_classes, width_mult=config.width_mult,
                                      head_type=config.head_type, se_dims=config.se_dims,
                                      strides=list(config.strides), input_dim_f=config.n_mels, input_dim_t=frames)
    elif config.arch == "dymn":
        kwargs = dict(num_classes=num_classes, width_mult=config.width_mult, strides=list(config.strides))
    elif config.arch == "passt":
        # A transformer teacher: sizes come from model_kwargs (embed_dim, depth, num_heads, stride, ...).
        kwargs = dict(num_classes=num_classes, img_size=[config.n_mels, frames], distilled=True)
    elif config.arch == "ast":
        kwargs = dict(label_dim=num_classes, input_fdim=config.n_mels, input_tdim=frames,
                      imagenet_pretrain=False, audioset_pretrain=False)
    else:
        raise ValueError(f"unknown architecture {config.arch!r}")
    kwargs.update(config.model_kwargs)
    return kwargs


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """Fresh model, or one initialised from `config.model_name` (catalogue name or checkpoint)."""
    kwargs = model_config(config, num_classes)
    if config.model_name:
        # The pretrained entry decides the architecture; only the head size is ours to choose.
        extra = dict(config.model_kwargs)
        family = pretrained_arch(config.model_name)
        if family == "dymn":
            # EfficientAT: a DyMN started from pretrained weights begins at pretrain_final_temp.
            extra.setdefault("pretrain_final_temp", config.pretrain_final_temp)
        elif family == "mn":
            # the mel bins the run feeds it: the model's own unless --override_preprocessing chose others
            # (its weights do not depend on them; the input check and frequency SE sizes do)
            extra.setdefault("input_dim_f", config.n_mels)
        return get_model(config.model_name, num_classes=num_classes, **extra)
    return create_model(config.arch, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class ResumableSampler(Sampler[int]):
    """Wraps the epoch sampler so a resumed epoch skips the clips already trained on."""

    def __init__(self, base: DistributedWeightedSampler) -> None:
        self.base = base
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(iter(self.base))
        return iter(indices[self.skip:])

    def __len__(self) -> int:
        return len(self.base) - self.skip


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


#: the metric that picks best.pt, per task kind
SELECTION_METRIC = {"multilabel": "mAP", "multiclass": "accuracy", "partial_multilabel": "mAP"}


def dataset_task(dataset: Any) -> str:
    """The task kind of a dataset (its `task` attribute; AudioSet-format HDF5 data is multi-label)."""
    task = getattr(dataset, "task", None) or "multilabel"
    if task not in TASK_KINDS:
        raise ValueError(f"dataset {type(dataset).__name__} has unknown task {task!r}; expected one of "
                         f"{', '.join(TASK_KINDS)}")
    return task


@torch.no_grad()
def evaluate(model: nn.Module, frontend: nn.Module, dataset: Any, device: torch.device,
             dist_info: DistInfo, batch_size: int, num_workers: int, precision: str = "32",
             progress: bool = True, task: Optional[str] = None,
             seen_groups: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Metrics of `model` on `dataset` (sharded across ranks), by task kind.

    multilabel: mAP / ROC-AUC / d' / per-class AP; multiclass: accuracy, per-class accuracy,
    confusion matrix (and accuracy per `device` where the items carry one); partial_multilabel:
    mAP / ROC-AUC over the known labels only. Always `val_loss` (the label loss) and `score`,
    the value of the task's model-selection metric (`SELECTION_METRIC`). `seen_groups` (the devices
    of the training clips) marks each device of the accuracy table seen or unseen.
    """
    task = task or dataset_task(dataset)
    model.eval()
    frontend.eval()
    shard = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    if getattr(dataset, "variable_length", False):
        batch_size = 1  # clips at their own lengths (FSD50K's --variable_eval_length): one per forward
    # Own generator: creating a DataLoader iterator otherwise draws from the global RNG, which
    # would make a resumed run diverge from an uninterrupted one.
    loader = DataLoader(torch.utils.data.Subset(dataset, shard), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, generator=torch.Generator())
    logits, targets, known, groups, skipped = [], [], [], [], 0
    for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        with autocast_context(device, precision):
            # any frontend layout and, for transformer teachers, inputs longer than their trained length
            batch_logits, _ = forward_spectrogram(model, frontend(batch["waveform"].to(device, non_blocking=True)))
        logits.append(batch_logits.float())
        targets.append(batch["target"].to(device))
        if task == "partial_multilabel":
            known.append(batch["known"].to(device).float())
        if "device" in batch:
            groups.extend(batch["device"])
        skipped += int(batch["skipped"].sum())
    num_classes = dataset.num_classes

    def gathered(parts: list[Tensor]) -> Tensor:
        local = torch.cat(parts) if parts else torch.zeros(0, num_classes, device=device)
        return all_gather_tensors(local).cpu()

    all_logits, all_targets = gathered(logits), gathered(targets)
    all_known = gathered(known) if task == "partial_multilabel" else None
    if task == "multiclass":
        labels = all_targets.argmax(dim=1)
        label_map = getattr(dataset, "label_map", None)
        metrics = multiclass_metrics(all_logits.numpy(), labels.numpy(),
                                     list(label_map.names) if label_map is not None else None)
        if groups and not dist_info.enabled:  # string groups are not gathered across ranks
            metrics["accuracy_by_device"] = accuracy_by_group(all_logits.numpy(), labels.numpy(), groups,
                                                              seen_groups)
        metrics["val_loss"] = float(single_label_loss(all_logits, all_targets))
    elif task == "partial_multilabel":
        metrics = evaluate_masked_predictions(all_targets.numpy(), all_logits.numpy(), all_known.numpy())
        metrics["val_loss"] = float(masked_bce_loss(all_logits, all_targets, all_known))
    else:
        metrics = evaluate_predictions(all_targets.numpy(), all_logits.numpy())
        metrics["val_loss"] = float(nn.functional.binary_cross_entropy_with_logits(all_logits, all_targets))
    metrics["score"] = float(metrics[SELECTION_METRIC[task]])
    metrics["eval_clips"] = int(all_logits.shape[0])
    metrics["eval_skipped_clips"] = int(reduce_sum(skipped))
    return metrics


def _training_state_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.pt"


@contextlib.contextmanager
def _locked_run_directory(out_dir: Path, dist_info: DistInfo) -> Iterator[None]:
    """Rank 0 holds out_dir's lock for the run; every rank learns whether it got it (no rank waits alone)."""
    lock = RunDirectoryLock(out_dir)
    failure: Optional[RunDirectoryBusy] = None
    if dist_info.rank == 0:
        try:
            lock.acquire()
        except RunDirectoryBusy as err:
            failure = err
    if dist_info.enabled and reduce_max(1.0 if failure else 0.0) > 0 and failure is None:
        raise RunDirectoryBusy(out_dir, {"pid": None, "host": "(seen by rank 0)"})
    if failure is not None:
        raise failure
    try:
        yield
    finally:
        lock.release()


def train(config: TrainConfig, tracker: Optional[Any] = None,
          datasets: Optional[tuple[Any, Any]] = None) -> dict[str, Any]:
    """Train (or resume) a model as `config` says; returns the final summary (rank 0 has the metrics).

    The data are `config.train_hdf5` / `config.eval_hdf5` (AudioSet-format HDF5), or `datasets`:
    a (train, eval) pair of datasets with the same item interface (`efficient_tagging.data`'s
    fine-tuning datasets: ESC-50, DCASE20, OpenMIC, CSV/folder ...); their `task` picks the loss
    and metrics unless `config.task` says otherwise.

    Holds `out_dir/.lock` for the whole run (RunDirectoryBusy if another run holds it); an out_dir
    that already holds a run's checkpoints is refused unless `config.resume` or `config.overwrite`
    (RunDirectoryHoldsRun: a rerun never silently replaces finished work). On
    SIGINT/SIGTERM it finishes the current step, writes `last.pt` and raises TrainingInterrupted
    (resuming from it continues exactly); the signal handlers are the previous ones again after.
    """
    dist_info = init_distributed()
    device = select_device(config.cuda, dist_info)
    with _locked_run_directory(Path(config.out_dir), dist_info), StopOnSignal(armed=False) as stop:
        _check_out_dir_is_free(config, dist_info)
        return _train(config, tracker, dist_info, device, stop, datasets)


def _check_out_dir_is_free(config: TrainConfig, dist_info: DistInfo) -> None:
    """Rank 0 (which writes the checkpoints) checks, under the lock, that out_dir holds no earlier run
    this one would replace; every rank learns the verdict (no rank trains on alone)."""
    refusal: Optional[RunDirectoryHoldsRun] = None
    if dist_info.rank == 0:
        try:
            check_run_directory(config.out_dir, resume=config.resume, overwrite=config.overwrite, probe_lock=False)
        except RunDirectoryHoldsRun as error:
            refusal = error
    if dist_info.enabled and reduce_max(1.0 if refusal else 0.0) > 0 and refusal is None:
        raise RunDirectoryHoldsRun(f"{config.out_dir} already holds a training run (seen by rank 0)")
    if refusal is not None:
        raise refusal


def _stop_signal(stop: StopOnSignal, dist_info: DistInfo) -> int:
    """The stop signal any rank received (0 for none): all ranks stop at the same step, or none does."""
    local = stop.signum or 0
    return int(reduce_max(float(local))) if dist_info.enabled else local


def _train(config: TrainConfig, tracker: Optional[Any], dist_info: DistInfo, device: torch.device,
           stop: StopOnSignal, datasets: Optional[tuple[Any, Any]] = None) -> dict[str, Any]:
    is_main = dist_info.rank == 0
    show_progress = config.progress and is_main
    seed_everything(config.seed + dist_info.rank)
    out_dir = Path(config.out_dir)
    precision = resolve_precision(config.precision, device)  # bf16 without native bf16: float32, with a note
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    # --- data ----------------------------------------------------------------------------------
    if datasets is not None:
        train_set, eval_set = datasets
        data_source = getattr(train_set, "source", None) or type(train_set).__name__
        label_map: Optional[LabelMap] = getattr(train_set, "label_map", None)
    else:
        if not config.train_hdf5:
            raise ValueError("no training data: pass --train_hdf5 (AudioSet-format HDF5 files)")
        train_set = AudioSetDataset(config.train_hdf5, sample_rate=config.sample_rate,
                                    clip_length=config.clip_length, num_classes=config.num_classes,
                                    teacher_logits=config.teacher_logits, seed=config.seed)
        eval_set = AudioSetDataset(config.eval_hdf5 or config.train_hdf5, sample_rate=config.sample_rate,
                                   clip_length=config.clip_length, num_classes=train_set.num_classes)
        data_source = ", ".join(map(str, config.train_hdf5))
        label_map = read_label_map(config.train_hdf5[0])
    num_classes = train_set.num_classes
    task = config.task or dataset_task(train_set)
    if task not in TASK_KINDS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_KINDS)}")
    check_positive_labels(train_set.targets, source=data_source)
    # recording devices of the training clips (DCASE20): the evaluation marks the others unseen
    extras = getattr(train_set, "extras", None) or {}
    train_devices = sorted({str(d) for d in extras["device"]}) if "device" in extras else None
    # As in EfficientAT, kd_lambda == 0 switches distillation off (label loss only).
    use_teacher = getattr(train_set, "teacher_logits", None) is not None and config.kd_lambda > 0
    # a join that matches no clip is refused (unless allowed), low coverage warns; the numbers go into the summary
    teacher_coverage = (check_teacher_coverage(train_set.teacher_logits, train_set.audio_names,
                                               allow_none=config.allow_no_teacher_coverage,
                                               clips_from=[data_source], report=is_main)
                        if use_teacher else None)
    temperature = kd_temperature(task, config.temperature)
    if use_teacher and is_main:
        logger.info("distillation: kd_lambda %g, temperature %g%s", config.kd_lambda, temperature,
                    "" if config.temperature is not None else f" (the default for task {task})")

    if config.sampler == "uniform":
        weights = np.ones(len(train_set), dtype=np.float64)
        # one pass: every clip once (a multiple of the world size, so every rank gets as many)
        epoch_len = config.epoch_len or max(len(train_set) - len(train_set) % dist_info.world_size,
                                            dist_info.world_size)
    else:
        weights = class_balanced_weights(train_set.targets)
        epoch_len = config.epoch_len or int((weights > 0).sum())
    base_sampler = DistributedWeightedSampler(weights, epoch_len, num_replicas=dist_info.world_size,
                                              rank=dist_info.rank, replacement=config.sampler_replacement,
                                              seed=config.seed)
    sampler = ResumableSampler(base_sampler)
    num_workers = cap_num_workers(config.num_workers, log=is_main)
    # The fine-tuning recipes (uniform) train on an epoch's last, partial batch as the reference's
    # DataLoader does, unless it holds a single clip (mixup has no partner, BatchNorm no statistics).
    keep_partial = config.sampler == "uniform" and len(base_sampler) % config.batch_size > 1
    loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, num_workers=num_workers,
                        drop_last=not keep_partial, pin_memory=device.type == "cuda",
                        generator=torch.Generator())  # keeps the global RNG untouched (exact resume)
    steps_per_epoch = len(base_sampler) // config.batch_size + int(keep_partial)
    if steps_per_epoch == 0:
        raise ValueError(f"an epoch of {len(base_sampler)} clips per rank gives no full batch of "
                         f"{config.batch_size}: lower --batch_size (or raise --epoch_len)")

    # --- model, optimiser, schedule ---------------------------------------------------------------
    frontend = build_frontend(config).to(device)
    model = build_model(config, num_classes).to(device)
    if config.bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config.bn_momentum
    model_kwargs = dict(getattr(model, "config", {}))
    arch = getattr(model, "arch", config.arch)
    optimizer_class = torch.optim.AdamW if config.adamw else torch.optim.Adam
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = optimizer_class(model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay,
                                **({"fused": True} if config.fused_optimizer else {}))
    scheduler = make_lr_scheduler(optimizer, exp_warmup_linear_down(config.warm_up_len, config.ramp_down_len,
                                                                    config.ramp_down_start, config.last_lr_value),
                                  steps_per_epoch, per_step=config.lr_per_step)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")
    augment_generator = torch.Generator().manual_seed(config.seed * 1000 + dist_info.rank)

    start_epoch, step_in_epoch, global_step, best_map = 0, 0, 0, -math.inf
    resumed_totals: Optional[dict[str, float]] = None
    resumed_epoch_lr: Optional[float] = None
    history: list[dict[str, Any]] = []
    last_path = _training_state_path(out_dir, "last")
    if config.resume and last_path.is_file():
        try:
            weights, checkpoint = read_checkpoint(last_path)
        except CheckpointError as error:
            raise CheckpointError(f"--resume: {error}. To start this run over instead, delete {last_path} or "
                                  f"use another --out_dir") from None
        state = checkpoint["extra"]["training"]
        check_resume_config(state.get("train_config"), config, last_path, _shape_mismatches(unwrap(model), weights))
        unwrap(model).load_state_dict(weights, strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
        resumed_totals = dict(state["epoch_totals"]) if step_in_epoch else None
        # the LR of the epoch's first step (for its history record); read from the optimizer it
        # would be a later one after a stop at the last step (per-epoch LR) or with lr_per_step
        resumed_epoch_lr = state.get("epoch_lr") if step_in_epoch else None
        global_step, best_map, history = state["global_step"], state["best_map"], list(state["history"])
        _set_rng_state(state["rng"][dist_info.rank] if dist_info.rank < len(state["rng"]) else state["rng"][0])
        augment_generator.set_state(state["augment_rng"][min(dist_info.rank, len(state["augment_rng"]) - 1)])
        if is_main:
            logger.info("resumed from %s at epoch %d, step %d", last_path, start_epoch, step_in_epoch)
    elif config.resume and is_main:
        logger.info("--resume: no checkpoint at %s, starting from scratch", last_path)

    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    epoch_totals = {"loss": 0.0, "label_loss": 0.0, "kd_loss": 0.0, "steps": 0}  # running sums of this epoch

    def save_training_state(name: str, epoch: int, step: int, metrics: Optional[dict[str, Any]] = None) -> None:
        # Every rank's RNG state is gathered so a resumed DDP job continues identically.
        rng_states = _gather_objects(_rng_state(), dist_info)
        augment_states = _gather_objects(augment_generator.get_state(), dist_info)
        if not is_main:
            return
        training = {"epoch": epoch, "step_in_epoch": step, "global_step": global_step, "best_map": best_map,
                    "history": history, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "sampler": base_sampler.state_dict(), "rng": rng_states,
                    "augment_rng": augment_states, "epoch_totals": dict(epoch_totals), "epoch_lr": epoch_lr,
                    "train_config": _plain(config.to_dict()),
                    "metrics": _plain(metrics or {})}
        save_checkpoint(_training_state_path(out_dir, name), unwrap(model), arch=arch, config=model_kwargs,
                        preprocessing=config.preprocessing, labels=label_map, dataset=config.dataset, task=task,
                        extra={"training": training})

    # --- the loop ---------------------------------------------------------------------------------
    skipped_clips, clips_seen, masked_teacher_clips = 0, 0, 0
    timing_history: list[dict[str, Any]] = []  # data_wait_record of every epoch this process trained
    final_metrics: dict[str, Any] = history[-1] if history else {}
    epoch_lr = optimizer.param_groups[0]["lr"]
    stop.armed = True  # from here on a signal stops the run cleanly after the current step
    for epoch in range(start_epoch, config.n_epochs):
        base_sampler.set_epoch(epoch)
        sampler.skip = step_in_epoch * config.batch_size
        attention_temperature = None
        if hasattr(unwrap(model), "update_temperature"):  # DyMN: anneal the attention temperature
            attention_temperature = unwrap(model).update_temperature(epoch)
        # the LR of this epoch's first step
        epoch_lr = resumed_epoch_lr if resumed_epoch_lr is not None else optimizer.param_groups[0]["lr"]
        resumed_epoch_lr = None
        model.train()
        frontend.train()
        epoch_totals.update(resumed_totals or {"loss": 0.0, "label_loss": 0.0, "kd_loss": 0.0, "steps": 0})
        resumed_totals = None
        epoch_start, clips_done = time.time(), 0
        bar = tqdm(total=steps_per_epoch - step_in_epoch, desc=f"epoch {epoch + 1}/{config.n_epochs}",
                   disable=not show_progress, dynamic_ncols=True)
        stop_signal = 0
        # Data wait: time blocked in next() (worker start-up included) out of the epoch's step time, so
        # a run shows whether decoding keeps up with the model (near 0) or the model waits (near 1).
        data_wait, loop_start = 0.0, time.perf_counter()
        epoch_failed, epoch_attempts = 0, 0  # clip decodes of this epoch (this process): failed, all
        batches = iter(loader)
        while True:
            wait_start = time.perf_counter()
            batch = next(batches, None)
            data_wait += time.perf_counter() - wait_start
            if batch is None:
                break
            waveform = batch["waveform"].to(device, non_blocking=True)
            labels = batch["target"].to(device)
            teacher = batch["teacher_logits"].to(device) if use_teacher else None
            has_teacher = batch["has_teacher"].to(device) if use_teacher else None
            teacher_mixes: list[tuple[Tensor, Tensor]] = []
            if config.roll:
                waveform = roll_waveforms(waveform, config.roll_max_shift, augment_generator)
            if config.gain_augment > 0:
                waveform = gain_augment(waveform, config.gain_augment, augment_generator, integer_db=True)
            if config.wavmix:
                mixed = wavmix(waveform, labels, None, generator=augment_generator)
                waveform = mixed.waveform  # labels and teacher are mixed in the loss, step by step
                teacher_mixes.append((mixed.permutation, mixed.lam))
            with autocast_context(device, precision):
                spectrogram = frontend(waveform).unsqueeze(1)
                if config.mixstyle_p > 0:  # the reference's DCASE recipe: MixStyle instead of mixup
                    spectrogram = mixstyle(spectrogram, config.mixstyle_p, config.mixstyle_alpha, augment_generator)
                elif config.mixup_alpha > 0:
                    permutation, lam = mixup(spectrogram.shape[0], config.mixup_alpha, augment_generator)
                    spectrogram = mix(spectrogram, permutation, lam)
                    teacher_mixes.append((permutation, lam))
                logits, _ = model(spectrogram)
            known = batch["known"].to(device) if task == "partial_multilabel" else None
            loss, parts = task_loss(task, logits, labels, known_mask=known, teacher_logits=teacher,
                                    has_teacher=has_teacher, kd_lambda=config.kd_lambda,
                                    temperature=temperature, mixup=teacher_mixes or None)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}, step {step_in_epoch}")

            step_in_epoch += 1
            global_step += 1
            skipped_clips += int(batch["skipped"].sum())
            clips_seen += waveform.shape[0]
            epoch_failed += int(batch["skipped"].sum())
            epoch_attempts += int(batch["skipped"].sum()) + waveform.shape[0]
            _check_undecodable(epoch_failed, epoch_attempts, final=False)
            if use_teacher:
                masked_teacher_clips += int((~batch["has_teacher"]).sum())
            epoch_totals["loss"] += float(loss.detach())
            epoch_totals["label_loss"] += float(parts["label_loss"])
            epoch_totals["kd_loss"] += float(parts["kd_loss"])
            epoch_totals["steps"] += 1
            clips_done += waveform.shape[0]
            clips_per_s = clips_done * dist_info.world_size / max(time.time() - epoch_start, 1e-6)
            bar.update(1)
            bar.set_postfix(loss=f"{epoch_totals['loss'] / epoch_totals['steps']:.4f}",
                            lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            clips_s=f"{clips_per_s:.1f}",
                            data_wait=f"{data_wait / max(time.perf_counter() - loop_start, 1e-9):.0%}")
            if config.checkpoint_every_steps and global_step % config.checkpoint_every_steps == 0 \
                    and step_in_epoch < steps_per_epoch:
                save_training_state("last", epoch, step_in_epoch)
            if config.crash_after_steps is not None and global_step >= config.crash_after_steps:
                barrier()
                os._exit(17)  # simulate a killed job: no cleanup, no final checkpoint
            stop_signal = _stop_signal(stop, dist_info)
            if stop_signal:
                break
        step_time = time.perf_counter() - loop_start
        del batches  # shuts the epoch's workers down now, not while evaluation runs its own
        if not stop_signal:
            _check_undecodable(epoch_failed, epoch_attempts, final=True)
        bar.close()
        epoch_timing = data_wait_record(epoch + 1, data_wait, step_time)
        if stop_signal:
            # A mid-epoch state (even after the epoch's last step: the resumed run then only
            # evaluates), so --resume continues exactly where this run stopped.
            if is_main:
                logger.warning("%s received: stopping after step %d of epoch %d, writing %s",
                               signal_name(stop_signal), step_in_epoch, epoch + 1, last_path)
            save_training_state("last", epoch, step_in_epoch)
            barrier()
            raise TrainingInterrupted(stop_signal, last_path, epoch, step_in_epoch)

        steps_done = max(epoch_totals["steps"], 1)
        epoch_record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": epoch_totals["loss"] / steps_done,
            "label_loss": epoch_totals["label_loss"] / steps_done,
            "distillation_loss": epoch_totals["kd_loss"] / steps_done,
            "learning_rate": epoch_lr,
            "train_clips_per_s": clips_done * dist_info.world_size / max(time.time() - epoch_start, 1e-6),
        }
        if attention_temperature is not None:
            epoch_record["dymn_temperature"] = attention_temperature
        # Timing is kept out of `history` (whose records a resumed run reproduces exactly, apart from
        # train_clips_per_s): it goes to the summary's `epoch_timing`, the tracker and the epoch line.
        timing_history.append(epoch_timing)
        step_in_epoch = 0
        evaluate_now = (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.n_epochs
        improved = False
        if evaluate_now:
            metrics = evaluate(model, frontend, eval_set, device, dist_info,
                               config.eval_batch_size or config.batch_size, num_workers, precision,
                               show_progress, task=task, seen_groups=train_devices)
            epoch_record.update(_epoch_metrics(task, metrics))
            final_metrics = {**epoch_record, **{k: metrics[k] for k in DETAIL_METRICS if k in metrics}}
            improved = metrics["score"] > best_map
            best_map = max(best_map, metrics["score"])
        history.append(epoch_record)
        if is_main:
            evaluated = ("  " + "  ".join(f"{name} {epoch_record[name]:.4f}" for name in EPOCH_METRICS[task])
                         if evaluate_now else "")
            print(f"epoch {epoch + 1}/{config.n_epochs}: train_loss {epoch_record['train_loss']:.4f}{evaluated}"
                  f"  data_wait {epoch_timing['data_wait_fraction']:.0%}", flush=True)
            if tracker is not None:
                tracker.log_metrics({**epoch_record, "data_wait_fraction": epoch_timing["data_wait_fraction"]},
                                    step=epoch + 1)
        save_training_state("last", epoch + 1, 0, final_metrics)
        if improved:
            save_training_state("best", epoch + 1, 0, final_metrics)
        stop_signal = _stop_signal(stop, dist_info)  # e.g. received during the evaluation
        if stop_signal and epoch + 1 < config.n_epochs:
            if is_main:
                logger.warning("%s received: stopping after epoch %d (%s is current)", signal_name(stop_signal),
                               epoch + 1, last_path)
            barrier()
            raise TrainingInterrupted(stop_signal, last_path, epoch + 1, 0)

    skipped_total = int(reduce_sum(skipped_clips))
    masked_total = int(reduce_sum(masked_teacher_clips))
    best_score = best_map if best_map > -math.inf else None
    summary = {
        "task": task,
        "selection_metric": SELECTION_METRIC[task],
        "best_score": best_score,
        "best_mAP": best_score if SELECTION_METRIC[task] == "mAP" else None,
        "final": {k: v for k, v in final_metrics.items() if k not in DETAIL_METRICS},
        "per_class_ap": final_metrics.get("per_class_ap"),
        **{k: final_metrics[k] for k in DETAIL_METRICS if k in final_metrics and k != "per_class_ap"},
        "class_names": list(label_map.names) if label_map else None,
        "history": history,
        "epoch_timing": timing_history,
        "skipped_clips": skipped_total,
        "clips_without_teacher": masked_total,
        "teacher_coverage": teacher_coverage,
        "kd_temperature": temperature if use_teacher else None,
        "checkpoints": {"last": str(last_path), "best": str(_training_state_path(out_dir, "best"))},
        "num_classes": num_classes,
        "model": {"arch": arch, "config": _plain(model_kwargs)},
    }
    if is_main and skipped_total:
        logger.warning("%d undecodable clips were skipped and replaced during training", skipped_total)
    barrier()
    return summary


# per task: the metrics of each epoch's record (printed and logged), and the larger details kept
# only for the final summary
EPOCH_METRICS = {"multilabel": ("mAP", "ROC", "d_prime", "val_loss"),
                 "multiclass": ("accuracy", "mean_class_accuracy", "val_loss"),
                 "partial_multilabel": ("mAP", "ROC", "val_loss")}
DETAIL_METRICS = ("per_class_ap", "per_class_accuracy", "per_class_count", "confusion_matrix", "class_names",
                  "accuracy_by_device")


def _epoch_metrics(task: str, metrics: dict[str, Any]) -> dict[str, float]:
    renamed = {"ROC": metrics.get("mean_roc_auc")}
    return {name: float(renamed[name] if name in renamed else metrics[name]) for name in EPOCH_METRICS[task]}


def _gather_objects(obj: Any, dist_info: DistInfo) -> list[Any]:
    if not dist_info.enabled:
        return [obj]
    gathered: list[Any] = [None] * dist_info.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def _plain(value: Any) -> Any:
    """Only plain Python values (and tensors) go into checkpoints: weights_only loading stays possible."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value
