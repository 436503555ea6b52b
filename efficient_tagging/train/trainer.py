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
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from ..data.augment import gain_augment, mix, mixstyle, mixup, roll_waveforms, wavmix
from ..data.clip_dataset import UndecodableData
from ..data.hdf5 import AudioSetDataset, read_label_map
from ..data.sampling import DistributedWeightedSampler, check_positive_labels, class_balanced_weights
from ..data.teacher_logits import check_teacher_coverage
from ..frontends.mel import AugmentMelSTFT
from ..hardware import THREADS_ENV, available_cpus, resolve_precision, threads_for_cpu_work
from ..labels import LabelMap
from ..models.factory import (CheckpointError, create_model, get_model, pretrained_arch, read_checkpoint,
                              save_checkpoint)
from ..models.layers import forward_spectrogram
from ..models.registry import family_of, get_family
from .distributed import DistInfo, all_gather_tensors, barrier, init_distributed, reduce_max, reduce_sum, select_device
from ..interrupt import StopOnSignal, signal_name
from .interrupted import TrainingInterrupted
from .run_lock import RunDirectoryBusy, RunDirectoryHoldsRun, RunDirectoryLock, check_run_directory
from .losses import (TASK_KINDS, check_kd_lambda, kd_temperature, masked_bce_loss, single_label_loss, task_loss,
                     uses_teacher)
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

    def __post_init__(self) -> None:
        if isinstance(self.train_hdf5, (str, Path)):
            self.train_hdf5 = [str(self.train_hdf5)]
        if isinstance(self.eval_hdf5, (str, Path)):
            self.eval_hdf5 = [str(self.eval_hdf5)]
        self.strides = tuple(int(s) for s in self.strides)  # type: ignore[assignment]
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_kd_lambda(self.kd_lambda)
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
                  "checkpoint_every_steps")


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


def training_frontend(config: TrainConfig) -> AugmentMelSTFT:
    """The mel frontend `config` describes (with its training augmentations: masking, filterbank jitter)."""
    return AugmentMelSTFT(n_mels=config.n_mels, sr=config.sample_rate, win_length=config.window_size,
                          hopsize=config.hop_size, n_fft=config.n_fft, freqm=config.freqm, timem=config.timem,
                          fmin=config.fmin, fmax=config.fmax, fmin_aug_range=config.fmin_aug_range,
                          fmax_aug_range=config.fmax_aug_range)


def model_config(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    """Constructor kwargs (the reference's own names) of the model described by `config`."""
    frames = 1 + int(config.clip_length * config.sample_rate - 1) // config.hop_size
    shape = dict(width_mult=config.width_mult, head_type=config.head_type, se_dims=config.se_dims,
                 strides=config.strides)
    kwargs = get_family(config.arch).input_config(num_classes=num_classes, n_mels=config.n_mels, frames=frames,
                                                  shape=shape)
    kwargs.update(config.model_kwargs)
    return kwargs


def training_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """Fresh model, or one initialised from `config.model_name` (catalogue name or checkpoint)."""
    if not config.model_name:
        return create_model(config.arch, **model_config(config, num_classes))
    # The pretrained entry decides the architecture; only the head size is ours to choose.
    arch = pretrained_arch(config.model_name)  # None: a plain state_dict
    start_options = (get_family(arch).start_options(n_mels=config.n_mels, pretrain_final_temp=config.pretrain_final_temp)
                     if arch else {})
    options = {**start_options, **config.model_kwargs}
    return get_model(config.model_name, num_classes=num_classes, **options)


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


def train(config: TrainConfig, tracker: Optional[Any] = None, datasets: Optional[tuple[Any, Any]] = None,
          report_epoch: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
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
    `report_epoch` receives each epoch's one-line summary on rank 0 (`epoch_line`; default: logged).
    """
    dist_info = init_distributed()
    device = select_device(config.cuda, dist_info)
    with _locked_run_directory(Path(config.out_dir), dist_info), StopOnSignal(armed=False) as stop:
        _check_out_dir_is_free(config, dist_info)
        callers_threads = torch.get_num_threads()
        try:
            with threads_for_cpu_work(device, log=dist_info.rank == 0):  # fewer threads on busy cores (issue 26)
                return _train(config, tracker, dist_info, device, stop, datasets, report_epoch)
        finally:
            torch.set_num_threads(callers_threads)  # a resumed run may have taken its own count


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
           stop: StopOnSignal, datasets: Optional[tuple[Any, Any]] = None,
           report_epoch: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """The loop: the pieces it calls (data, state, step, epoch, summary) are defined below it."""
    is_main = dist_info.rank == 0
    seed_everything(config.seed + dist_info.rank)
    precision = resolve_precision(config.precision, device)  # bf16 without native bf16: float32, with a note
    if is_main:
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    data = build_training_data(config, dist_info, device, datasets)
    frontend = training_frontend(config).to(device)
    state = TrainingState.create(config, data, device, dist_info, precision)
    state.resume_if_asked(config, dist_info)
    model = state.model
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    run = RunCounters()
    stop.armed = True  # from here on a signal stops the run cleanly after the current step
    for epoch in range(state.epoch, config.n_epochs):
        epoch_result = train_epoch(model, frontend, state, data, config, epoch, device, precision, run, stop,
                                   dist_info)
        if epoch_result.stop_signal:
            _interrupt(state, config, data, dist_info, epoch_result.stop_signal, epoch, state.step_in_epoch,
                       mid_epoch=True)
        record = epoch_result.record
        state.step_in_epoch = 0
        evaluated = (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.n_epochs
        improved = False
        if evaluated:
            metrics = evaluate(model, frontend, data.eval_set, device, dist_info,
                               config.eval_batch_size or config.batch_size, data.num_workers, precision,
                               config.progress and is_main, task=data.task, seen_groups=data.train_devices)
            record.update(_epoch_metrics(data.task, metrics))
            state.final_metrics = {**record, **{k: metrics[k] for k in DETAIL_METRICS if k in metrics}}
            improved = metrics["score"] > state.best_score
            state.best_score = max(state.best_score, metrics["score"])
        state.history.append(record)
        if is_main:
            line = epoch_line(record, epoch_result.timing, data.task, config.n_epochs, evaluated)
            if report_epoch is not None:
                report_epoch(line)
            else:
                logger.info("%s", line)
            if tracker is not None:
                tracker.log_metrics({**record, "data_wait_fraction": epoch_result.timing["data_wait_fraction"]},
                                    step=epoch + 1)
        state.save("last", config, data, dist_info, epoch + 1, 0, state.final_metrics)
        if improved:
            state.save("best", config, data, dist_info, epoch + 1, 0, state.final_metrics)
        stop_signal = _stop_signal(stop, dist_info)  # e.g. received during the evaluation
        if stop_signal and epoch + 1 < config.n_epochs:
            _interrupt(state, config, data, dist_info, stop_signal, epoch + 1, 0, mid_epoch=False)
    return training_summary(config, data, state, run, dist_info)


@dataclass
class TrainingData:
    """The data side of a run: datasets, task, teacher join, sampler and loader."""

    train_set: Any
    eval_set: Any
    source: str  # how messages name the training data
    label_map: Optional[LabelMap]
    num_classes: int
    task: str
    train_devices: Optional[list[str]]  # recording devices of the training clips (DCASE20), else None
    use_teacher: bool
    teacher_coverage: Optional[dict[str, Any]]
    temperature: float
    base_sampler: DistributedWeightedSampler
    sampler: ResumableSampler
    loader: DataLoader
    steps_per_epoch: int
    num_workers: int


def _open_datasets(config: TrainConfig, datasets: Optional[tuple[Any, Any]]
                   ) -> tuple[Any, Any, str, Optional[LabelMap]]:
    """(train set, eval set, source description, label map): the given datasets or the config's HDF5 files."""
    if datasets is not None:
        train_set, eval_set = datasets
        return (train_set, eval_set, getattr(train_set, "source", None) or type(train_set).__name__,
                getattr(train_set, "label_map", None))
    if not config.train_hdf5:
        raise ValueError("no training data: pass --train_hdf5 (AudioSet-format HDF5 files)")
    train_set = AudioSetDataset(config.train_hdf5, sample_rate=config.sample_rate, clip_length=config.clip_length,
                                num_classes=config.num_classes, teacher_logits=config.teacher_logits, seed=config.seed)
    eval_set = AudioSetDataset(config.eval_hdf5 or config.train_hdf5, sample_rate=config.sample_rate,
                               clip_length=config.clip_length, num_classes=train_set.num_classes)
    return train_set, eval_set, ", ".join(map(str, config.train_hdf5)), read_label_map(config.train_hdf5[0])


def build_training_data(config: TrainConfig, dist_info: DistInfo, device: torch.device,
                        datasets: Optional[tuple[Any, Any]] = None) -> TrainingData:
    """Open the data, check labels and the teacher join, and build this rank's sampler and loader."""
    is_main = dist_info.rank == 0
    train_set, eval_set, source, label_map = _open_datasets(config, datasets)
    task = config.task or dataset_task(train_set)
    if task not in TASK_KINDS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_KINDS)}")
    check_positive_labels(train_set.targets, source=source)
    # recording devices of the training clips (DCASE20): the evaluation marks the others unseen
    extras = getattr(train_set, "extras", None) or {}
    train_devices = sorted({str(d) for d in extras["device"]}) if "device" in extras else None
    use_teacher = uses_teacher(config.kd_lambda, getattr(train_set, "teacher_logits", None) is not None)
    # a join that matches no clip is refused (unless allowed), low coverage warns; the numbers go into the summary
    teacher_coverage = (check_teacher_coverage(train_set.teacher_logits, train_set.audio_names,
                                               allow_none=config.allow_no_teacher_coverage,
                                               clips_from=[source], report=is_main)
                        if use_teacher else None)
    temperature = kd_temperature(task, config.temperature)
    if use_teacher and is_main:
        logger.info("distillation: kd_lambda %g, temperature %g%s", config.kd_lambda, temperature,
                    "" if config.temperature is not None else f" (the default for task {task})")
    base_sampler = _epoch_sampler(config, train_set, dist_info)
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
    return TrainingData(train_set, eval_set, source, label_map, train_set.num_classes, task, train_devices,
                        use_teacher, teacher_coverage, temperature, base_sampler, sampler, loader, steps_per_epoch,
                        num_workers)


def _epoch_sampler(config: TrainConfig, train_set: Any, dist_info: DistInfo) -> DistributedWeightedSampler:
    if config.sampler == "uniform":
        weights = np.ones(len(train_set), dtype=np.float64)
        # one pass: every clip once (a multiple of the world size, so every rank gets as many)
        epoch_len = config.epoch_len or max(len(train_set) - len(train_set) % dist_info.world_size,
                                            dist_info.world_size)
    else:
        weights = class_balanced_weights(train_set.targets)
        epoch_len = config.epoch_len or int((weights > 0).sum())
    return DistributedWeightedSampler(weights, epoch_len, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                      replacement=config.sampler_replacement, seed=config.seed)


def _fresh_totals() -> dict[str, float]:
    return {"loss": 0.0, "label_loss": 0.0, "kd_loss": 0.0, "steps": 0}


@dataclass
class TrainingState:
    """Everything `last.pt` holds and `--resume` restores: the model, optimiser, schedule, AMP scaler,
    augmentation RNG, the position in the run, the best score and the epoch history."""

    model: nn.Module  # unwrapped (never the DDP wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    augment_generator: torch.Generator
    arch: str
    model_config: dict[str, Any]  # constructor kwargs, stored with every checkpoint
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_totals: dict[str, float] = field(default_factory=_fresh_totals)  # running sums of this epoch
    epoch_lr: float = 0.0  # the LR of the current epoch's first step
    resumed_totals: Optional[dict[str, float]] = None  # the sums of a resumed, partly trained epoch
    resumed_epoch_lr: Optional[float] = None
    final_metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, config: TrainConfig, data: TrainingData, device: torch.device, dist_info: DistInfo,
               precision: str) -> "TrainingState":
        model = training_model(config, data.num_classes).to(device)
        if config.bn_momentum is not None:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = config.bn_momentum
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer_class = torch.optim.AdamW if config.adamw else torch.optim.Adam
        optimizer = optimizer_class(model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay,
                                    **({"fused": True} if config.fused_optimizer else {}))
        schedule = exp_warmup_linear_down(config.warm_up_len, config.ramp_down_len, config.ramp_down_start,
                                          config.last_lr_value)
        scheduler = make_lr_scheduler(optimizer, schedule, data.steps_per_epoch, per_step=config.lr_per_step)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")
        augment_generator = torch.Generator().manual_seed(config.seed * 1000 + dist_info.rank)
        state = cls(model, optimizer, scheduler, scaler, augment_generator, arch=getattr(model, "arch", config.arch),
                    model_config=dict(getattr(model, "config", {})))
        state.epoch_lr = optimizer.param_groups[0]["lr"]
        return state

    def resume_if_asked(self, config: TrainConfig, dist_info: DistInfo) -> None:
        """With `config.resume`: continue from out_dir's `last.pt` exactly (or start fresh when there is none)."""
        last_path = _training_state_path(Path(config.out_dir), "last")
        if not config.resume:
            return
        if not last_path.is_file():
            if dist_info.rank == 0:
                logger.info("--resume: no checkpoint at %s, starting from scratch", last_path)
            return
        try:
            weights, checkpoint = read_checkpoint(last_path)
        except CheckpointError as error:
            raise CheckpointError(f"--resume: {error}. To start this run over instead, delete {last_path} or "
                                  f"use another --out_dir") from None
        saved = checkpoint["extra"]["training"]
        check_resume_config(saved.get("train_config"), config, last_path, _shape_mismatches(self.model, weights))
        self.model.load_state_dict(weights, strict=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.epoch, self.step_in_epoch = saved["epoch"], saved["step_in_epoch"]
        self.resumed_totals = dict(saved["epoch_totals"]) if self.step_in_epoch else None
        # the LR of the epoch's first step (for its history record); read from the optimizer it
        # would be a later one after a stop at the last step (per-epoch LR) or with lr_per_step
        self.resumed_epoch_lr = saved.get("epoch_lr") if self.step_in_epoch else None
        self.global_step, self.best_score, self.history = saved["global_step"], saved["best_map"], list(saved["history"])
        self.final_metrics = self.history[-1] if self.history else {}
        self.epoch_lr = self.optimizer.param_groups[0]["lr"]
        rank = dist_info.rank
        _set_rng_state(saved["rng"][rank] if rank < len(saved["rng"]) else saved["rng"][0])
        self.augment_generator.set_state(saved["augment_rng"][min(rank, len(saved["augment_rng"]) - 1)])
        _keep_the_runs_threads(saved.get("cpu_threads"), self.model)
        if dist_info.rank == 0:
            logger.info("resumed from %s at epoch %d, step %d", last_path, self.epoch, self.step_in_epoch)

    def save(self, name: str, config: TrainConfig, data: TrainingData, dist_info: DistInfo, epoch: int, step: int,
             metrics: Optional[dict[str, Any]] = None) -> None:
        """Write `<out_dir>/<name>.pt` (rank 0) at (epoch, step): the model checkpoint plus the training state."""
        # Every rank's RNG state is gathered so a resumed DDP job continues identically.
        rng_states = _gather_objects(_rng_state(), dist_info)
        augment_states = _gather_objects(self.augment_generator.get_state(), dist_info)
        if dist_info.rank != 0:
            return
        training = {"epoch": epoch, "step_in_epoch": step, "global_step": self.global_step,
                    "best_map": self.best_score, "history": self.history,
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(), "sampler": data.base_sampler.state_dict(), "rng": rng_states,
                    "augment_rng": augment_states, "epoch_totals": dict(self.epoch_totals), "epoch_lr": self.epoch_lr,
                    "train_config": _plain(config.to_dict()), "metrics": _plain(metrics or {}),
                    "cpu_threads": torch.get_num_threads()}
        save_checkpoint(_training_state_path(Path(config.out_dir), name), self.model, arch=self.arch,
                        config=self.model_config, preprocessing=config.preprocessing, labels=data.label_map,
                        dataset=config.dataset, task=data.task, extra={"training": training})


def _keep_the_runs_threads(saved_threads: Optional[int], model: nn.Module) -> None:
    """A CPU run resumes with the intra-op thread count it was trained with: another count changes the
    kernels' reduction order, and the continuation would no longer equal an uninterrupted run
    (`EFFICIENT_TAGGING_THREADS=N` chooses another count on purpose)."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    if not on_cpu or not saved_threads or os.environ.get(THREADS_ENV) or saved_threads == torch.get_num_threads():
        return
    logger.warning("resuming with the run's %d CPU thread(s) instead of %d: the continuation then equals an "
                   "uninterrupted run bit for bit (%s=N to choose)", saved_threads, torch.get_num_threads(),
                   THREADS_ENV)
    torch.set_num_threads(int(saved_threads))


@dataclass
class RunCounters:
    """Clip counts over the whole run (this process) and each epoch's data-wait timing."""

    skipped_clips: int = 0  # undecodable clips replaced by others
    masked_teacher_clips: int = 0  # trained without teacher logits (label loss only)
    timing: list[dict[str, Any]] = field(default_factory=list)  # data_wait_record of every epoch trained


def train_step(model: nn.Module, frontend: nn.Module, batch: dict[str, Any], state: TrainingState,
               data: TrainingData, config: TrainConfig, device: torch.device,
               precision: str) -> tuple[Tensor, dict[str, Tensor]]:
    """One optimisation step on a batch: augment, forward, loss, backward, optimiser and schedule step."""
    waveform = batch["waveform"].to(device, non_blocking=True)
    labels = batch["target"].to(device)
    teacher = batch["teacher_logits"].to(device) if data.use_teacher else None
    has_teacher = batch["has_teacher"].to(device) if data.use_teacher else None
    teacher_mixes: list[tuple[Tensor, Tensor]] = []  # mixes the loss applies to labels and teacher alike
    generator = state.augment_generator
    if config.roll:
        waveform = roll_waveforms(waveform, config.roll_max_shift, generator)
    if config.gain_augment > 0:
        waveform = gain_augment(waveform, config.gain_augment, generator, integer_db=True)
    if config.wavmix:
        mixed = wavmix(waveform, labels, None, generator=generator)
        waveform = mixed.waveform
        teacher_mixes.append((mixed.permutation, mixed.lam))
    with autocast_context(device, precision):
        spectrogram = frontend(waveform).unsqueeze(1)
        if config.mixstyle_p > 0:  # the reference's DCASE recipe: MixStyle instead of mixup
            spectrogram = mixstyle(spectrogram, config.mixstyle_p, config.mixstyle_alpha, generator)
        elif config.mixup_alpha > 0:
            permutation, lam = mixup(spectrogram.shape[0], config.mixup_alpha, generator)
            spectrogram = mix(spectrogram, permutation, lam)
            teacher_mixes.append((permutation, lam))
        logits, _ = model(spectrogram)
    known = batch["known"].to(device) if data.task == "partial_multilabel" else None
    loss, parts = task_loss(data.task, logits, labels, known_mask=known, teacher_logits=teacher,
                            has_teacher=has_teacher, kd_lambda=config.kd_lambda, temperature=data.temperature,
                            mixup=teacher_mixes or None)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    return loss, parts


@dataclass
class EpochResult:
    record: dict[str, Any]  # the epoch's history record (losses, LR, throughput, model schedule)
    timing: dict[str, Any]  # data_wait_record
    stop_signal: int = 0  # a signal stopped the epoch after this step (then `record` is incomplete)


def train_epoch(model: nn.Module, frontend: nn.Module, state: TrainingState, data: TrainingData, config: TrainConfig,
                epoch: int, device: torch.device, precision: str, run: RunCounters, stop: StopOnSignal,
                dist_info: DistInfo) -> EpochResult:
    """Train one epoch (the rest of it, when resumed mid-epoch); stops early after a step when a signal came."""
    data.base_sampler.set_epoch(epoch)
    data.sampler.skip = state.step_in_epoch * config.batch_size
    family = family_of(state.model)
    model_schedule = family.start_epoch(state.model, epoch) if family else {}  # DyMN: attention temperature
    state.epoch_lr = (state.resumed_epoch_lr if state.resumed_epoch_lr is not None
                      else state.optimizer.param_groups[0]["lr"])
    state.resumed_epoch_lr = None
    model.train()
    frontend.train()
    state.epoch_totals.update(state.resumed_totals or _fresh_totals())
    state.resumed_totals = None
    totals = state.epoch_totals
    epoch_start, clips_done = time.time(), 0
    bar = tqdm(total=data.steps_per_epoch - state.step_in_epoch, desc=f"epoch {epoch + 1}/{config.n_epochs}",
               disable=not (config.progress and dist_info.rank == 0), dynamic_ncols=True)
    stop_signal = 0
    # Data wait: time blocked in next() (worker start-up included) out of the epoch's step time, so
    # a run shows whether decoding keeps up with the model (near 0) or the model waits (near 1).
    data_wait, loop_start = 0.0, time.perf_counter()
    decode_failures, decode_attempts = 0, 0  # clip decodes of this epoch (this process)
    batches = iter(data.loader)
    while True:
        wait_start = time.perf_counter()
        batch = next(batches, None)
        data_wait += time.perf_counter() - wait_start
        if batch is None:
            break
        loss, parts = train_step(model, frontend, batch, state, data, config, device, precision)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}, step {state.step_in_epoch}")
        state.step_in_epoch += 1
        state.global_step += 1
        batch_size, skipped = batch["waveform"].shape[0], int(batch["skipped"].sum())
        run.skipped_clips += skipped
        decode_failures += skipped
        decode_attempts += skipped + batch_size
        _check_undecodable(decode_failures, decode_attempts, final=False)
        if data.use_teacher:
            run.masked_teacher_clips += int((~batch["has_teacher"]).sum())
        totals["loss"] += float(loss.detach())
        totals["label_loss"] += float(parts["label_loss"])
        totals["kd_loss"] += float(parts["kd_loss"])
        totals["steps"] += 1
        clips_done += batch_size
        bar.update(1)
        bar.set_postfix(loss=f"{totals['loss'] / totals['steps']:.4f}", lr=f"{state.scheduler.get_last_lr()[0]:.2e}",
                        clips_s=f"{clips_done * dist_info.world_size / max(time.time() - epoch_start, 1e-6):.1f}",
                        data_wait=f"{data_wait / max(time.perf_counter() - loop_start, 1e-9):.0%}")
        if config.checkpoint_every_steps and state.global_step % config.checkpoint_every_steps == 0 \
                and state.step_in_epoch < data.steps_per_epoch:
            state.save("last", config, data, dist_info, epoch, state.step_in_epoch)
        stop_signal = _stop_signal(stop, dist_info)
        if stop_signal:
            break
    step_time = time.perf_counter() - loop_start
    del batches  # shuts the epoch's workers down now, not while evaluation runs its own
    if not stop_signal:
        _check_undecodable(decode_failures, decode_attempts, final=True)
    bar.close()
    timing = data_wait_record(epoch + 1, data_wait, step_time)
    run.timing.append(timing)
    steps_done = max(totals["steps"], 1)
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": totals["loss"] / steps_done,
        "label_loss": totals["label_loss"] / steps_done,
        "distillation_loss": totals["kd_loss"] / steps_done,
        "learning_rate": state.epoch_lr,
        "train_clips_per_s": clips_done * dist_info.world_size / max(time.time() - epoch_start, 1e-6),
        **model_schedule,
    }
    return EpochResult(record, timing, stop_signal)


def _interrupt(state: TrainingState, config: TrainConfig, data: TrainingData, dist_info: DistInfo, signum: int,
               epoch: int, step: int, mid_epoch: bool) -> None:
    """Stop the run for a signal: `last.pt` is current (a mid-epoch state is written now, so --resume
    continues exactly where this run stopped), then TrainingInterrupted."""
    last_path = _training_state_path(Path(config.out_dir), "last")
    if dist_info.rank == 0:
        if mid_epoch:
            logger.warning("%s received: stopping after step %d of epoch %d, writing %s", signal_name(signum),
                           step, epoch + 1, last_path)
        else:
            logger.warning("%s received: stopping after epoch %d (%s is current)", signal_name(signum), epoch,
                           last_path)
    if mid_epoch:
        # even after the epoch's last step: the resumed run then only evaluates
        state.save("last", config, data, dist_info, epoch, step)
    barrier()
    raise TrainingInterrupted(signum, last_path, epoch, step)


def epoch_line(record: dict[str, Any], timing: dict[str, Any], task: str, n_epochs: int, evaluated: bool) -> str:
    """The one-line report of an epoch (the training commands print it)."""
    metrics = ("  " + "  ".join(f"{name} {record[name]:.4f}" for name in EPOCH_METRICS[task])) if evaluated else ""
    return (f"epoch {record['epoch']}/{n_epochs}: train_loss {record['train_loss']:.4f}{metrics}"
            f"  data_wait {timing['data_wait_fraction']:.0%}")


def training_summary(config: TrainConfig, data: TrainingData, state: TrainingState, run: RunCounters,
                     dist_info: DistInfo) -> dict[str, Any]:
    """What `train` returns: the selection metric's best, the final metrics, history, timing and counts."""
    task, final_metrics, out_dir = data.task, state.final_metrics, Path(config.out_dir)
    skipped_total = int(reduce_sum(run.skipped_clips))
    masked_total = int(reduce_sum(run.masked_teacher_clips))
    best_score = state.best_score if state.best_score > -math.inf else None
    summary = {
        "task": task,
        "selection_metric": SELECTION_METRIC[task],
        "best_score": best_score,
        "best_mAP": best_score if SELECTION_METRIC[task] == "mAP" else None,
        "final": {k: v for k, v in final_metrics.items() if k not in DETAIL_METRICS},
        "per_class_ap": final_metrics.get("per_class_ap"),
        **{k: final_metrics[k] for k in DETAIL_METRICS if k in final_metrics and k != "per_class_ap"},
        "class_names": list(data.label_map.names) if data.label_map else None,
        "history": state.history,
        "epoch_timing": run.timing,
        "skipped_clips": skipped_total,
        "clips_without_teacher": masked_total,
        "teacher_coverage": data.teacher_coverage,
        "kd_temperature": data.temperature if data.use_teacher else None,
        "checkpoints": {"last": str(_training_state_path(out_dir, "last")),
                        "best": str(_training_state_path(out_dir, "best"))},
        "num_classes": data.num_classes,
        "model": {"arch": state.arch, "config": _plain(state.model_config)},
    }
    if dist_info.rank == 0 and skipped_total:
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
