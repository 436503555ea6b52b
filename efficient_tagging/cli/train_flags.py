"""Command-line flags of the training scripts, shared by every `experiments/ex_*.py`.

Flag names follow EfficientAT's scripts (`--batch_size`, `--n_epochs`, `--kd_lambda`, ...).
Every flag that maps to a `TrainConfig` field defaults to None on the command line, so that
a job preset (the AudioSet recipe, the embedded demo) can fill what the user left unset:
`config_from_args(args, preset)` takes the flag, else the preset, else TrainConfig's default.
The help of each flag prints the default that really applies (and the demo's, where different),
read from the same presets, so `--help` cannot drift from the code.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from dataclasses import MISSING, fields
from typing import Any, Mapping, Optional

from ..train.trainer import TrainConfig, cap_num_workers


def _config_defaults() -> dict[str, Any]:
    values = {}
    for f in fields(TrainConfig):
        if f.default is not MISSING:
            values[f.name] = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            values[f.name] = f.default_factory()  # type: ignore[misc]
    return values


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple, dict)) and not value:
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


class _DefaultShowingFlag:
    """Adds a flag to an argument group, stating in its help the default that really applies.

    A flag whose dest has a preset value (a TrainConfig field or a key of the command's preset)
    defaults to None on the command line, so that `config_from_args` can fill what the user left
    unset from the preset; its help gets that value (and the demo's, where it differs) appended.
    Other flags are added as given.
    """

    def __init__(self, base: Mapping[str, Any], demo: Optional[Mapping[str, Any]]) -> None:
        self.base = base  # the command's preset over TrainConfig's defaults
        self.demo = demo  # the embedded demo's preset over `base`; None where the command has no demo

    def _shown(self, dest: str) -> str:
        """What the help says of `dest`'s default, e.g. "default: 64; demo: 8"."""
        default = self.base[dest]
        shown = f"default: {_show(default)}"
        if dest == "num_workers" and isinstance(default, int):
            # training starts at most one worker per core, so the help names the number really started
            capped = cap_num_workers(default, log=False)
            if capped < default:
                shown += f", at most one per core: {capped} here"
        if self.demo is not None and self.demo.get(dest) != default:
            shown += f"; demo: {_show(self.demo[dest])}"
        return shown

    def __call__(self, group: argparse._ArgumentGroup, *names: str, help: str, dest: Optional[str] = None,
                 **kwargs: Any) -> None:
        dest = dest or names[0].lstrip("-")
        if dest in self.base:
            help = f"{help} ({self._shown(dest)})"
            kwargs.setdefault("default", None)
        group.add_argument(*names, dest=dest, help=help, **kwargs)


def add_training_arguments(parser: argparse.ArgumentParser, defaults: Optional[Mapping[str, Any]] = None,
                           demo_defaults: Optional[Mapping[str, Any]] = None, finetune: bool = False,
                           experiment_name: str = "audioset") -> None:
    """Model, data, augmentation, optimisation, distillation and runtime flags.

    `defaults` is the preset the command applies to unset flags (TrainConfig's own defaults
    beneath it); `demo_defaults` the embedded demo's, shown where it differs.

    `finetune=True` gives the fine-tuning scripts' flags (EfficientAT's ex_esc50.py & co.): no
    HDF5 data flags (the command adds its dataset's), `--pretrained` as a switch that starts from
    `--model_name` (default mn10_as; without it the model is trained from scratch, as there),
    `--pretrained_name NAME_OR_PATH` to start from any catalogue model or checkpoint, `--lr` for
    the peak learning rate and `--no_roll` / `--no_wavmix` (both are on by default there).
    `experiment_name`: the run-record name the command uses when --experiment_name is not given.
    """
    base = {**_config_defaults(), **(defaults or {})}
    demo = {**base, **(demo_defaults or {})} if demo_defaults is not None else None
    flag = _DefaultShowingFlag(base, demo)
    # one group per call, in this order: it is the order `--help` lists them in
    _add_data_flags(parser, flag, finetune)
    _add_model_flags(parser, flag, finetune)
    _add_frontend_flags(parser, flag)
    _add_augmentation_flags(parser, flag, finetune)
    _add_optimisation_flags(parser, flag, finetune)
    _add_distillation_flags(parser, flag)
    _add_runtime_flags(parser, flag, experiment_name)


def _add_data_flags(parser: argparse.ArgumentParser, flag: _DefaultShowingFlag, finetune: bool) -> None:
    """Where the clips come from and how they are batched (fine-tuning commands add their dataset's own flags)."""
    data = parser.add_argument_group("data")
    if not finetune:
        flag(data, "--train_hdf5", nargs="+", metavar="FILE",
             help="AudioSet-format HDF5 file(s) to train on, e.g. balanced_train.h5 unbalanced_train.h5; "
                  "none = the embedded demo")
        flag(data, "--eval_hdf5", nargs="+", metavar="FILE", help="AudioSet-format HDF5 file(s) to evaluate on")
    flag(data, "--teacher_preds", "--teacher_logits", dest="teacher_logits", metavar="FILE",
         help="teacher-logits HDF5 joined by audio_name; clips without logits get the label loss only")
    flag(data, "--allow_no_teacher_coverage", action="store_true",
         help="train even if the teacher logits match none of the training clips (distillation then does nothing); "
              "without it such a run stops with an error")
    flag(data, "--resample_rate", "--sample_rate", dest="sample_rate", type=int,
         help="training sample rate in Hz; clips are resampled to it")
    flag(data, "--clip_length", type=float, help="seconds per clip (longer clips are cut, shorter zero-padded)")
    flag(data, "--num_classes", type=int, help="classes of the model head; none = from the data files")
    flag(data, "--batch_size", type=int, help="clips per optimizer step and process")
    flag(data, "--num_workers", type=int, help="DataLoader worker processes decoding audio")
    flag(data, "--sampler", choices=["balanced", "uniform"],
         help="how clips are drawn: balanced = class-balanced weights (the AudioSet recipe), uniform = a plain "
              "shuffle (the fine-tuning recipes)")
    flag(data, "--epoch_len", type=int, help="clips drawn per epoch; none = one pass over the training data")
    flag(data, "--sampler_replacement", action="store_true",
         help="draw each epoch with replacement (opt-in; the reference draws without, so an epoch holds at most "
              "as many clips as the data)")


def _add_model_flags(parser: argparse.ArgumentParser, flag: _DefaultShowingFlag, finetune: bool) -> None:
    """The architecture, or the pretrained model or checkpoint to start from."""
    model = parser.add_argument_group("model")
    flag(model, "--arch", choices=["mn", "dymn", "passt", "ast"],
         help="model family: mn/dymn students, passt/ast transformer teachers")
    flag(model, "--model_kwargs", type=json.loads, metavar="JSON",
         help='further constructor arguments with the reference\'s names, e.g. \'{"embed_dim": 192, "depth": 4}\'')
    flag(model, "--width_mult", "--model_width", dest="width_mult", type=float,
         help="width multiplier of a model trained from scratch: mn10 = 1.0, mn04 = 0.4, mn40 = 4.0")
    if finetune:
        model.add_argument("--pretrained", action="store_true", default=None,
                           help="start from the catalogue model --model_name (EfficientAT's switch; default: off, "
                                "a model trained from scratch)")
        model.add_argument("--model_name", default="mn10_as",
                           help="with --pretrained: the catalogue model to start from (default: mn10_as)")
        model.add_argument("--pretrained_name", default=None, metavar="NAME_OR_PATH",
                           help="start from this catalogue model (e.g. mn40_as_ext, dymn10_as, passt_s_swa_p16_128_ap476) "
                                "or checkpoint, whatever --pretrained/--model_name say (default: none)")
    else:
        flag(model, "--pretrained", "--pretrained_name", dest="pretrained", metavar="NAME_OR_PATH",
             help="start from a catalogue model (e.g. mn10_im, dymn10_im, mn10_as) or a checkpoint; its architecture "
                  "replaces --arch/--width_mult/--strides/--head_type/--se_dims (default: none, a fresh model)")
    flag(model, "--pretrain_final_temp", type=float,
         help="DyMN started from pretrained weights: initial attention temperature, annealed by 1 per epoch "
              "down to 1 (EfficientAT's ex_audioset.py: 30; its fine-tuning scripts: 1, i.e. kept)")
    flag(model, "--head_type", choices=["mlp", "fully_convolutional", "multihead_attention_pooling"],
         help="mn classification head")
    flag(model, "--se_dims", help="mn squeeze-excitation dimensions: letters of c, f, t")
    flag(model, "--strides", type=int, nargs=4, help="strides of the 4 down-sampling blocks")
    flag(model, "--bn_momentum", type=float, help="BatchNorm momentum while training; none = the architecture's 0.01")


def _add_frontend_flags(parser: argparse.ArgumentParser, flag: _DefaultShowingFlag) -> None:
    """The mel spectrogram the model sees, with its SpecAugment masks and band-edge augmentation."""
    frontend = parser.add_argument_group("mel frontend")
    flag(frontend, "--n_mels", type=int, help="mel bins")
    flag(frontend, "--window_size", type=int, help="STFT window in samples")
    flag(frontend, "--hop_size", type=int, help="STFT hop in samples")
    flag(frontend, "--n_fft", type=int, help="FFT size in samples")
    flag(frontend, "--freqm", type=int, help="SpecAugment: maximum frequency-mask width in mel bins, 0 = off")
    flag(frontend, "--timem", type=int, help="SpecAugment: maximum time-mask width in frames, 0 = off")
    flag(frontend, "--fmin", type=float, help="lowest mel filter frequency in Hz")
    flag(frontend, "--fmax", type=float, help="highest mel filter frequency in Hz; none = sr/2 - fmax_aug_range/2")
    flag(frontend, "--fmin_aug_range", type=int, help="training: fmin moves up by a random [0, N) Hz per batch")
    flag(frontend, "--fmax_aug_range", type=int, help="training: fmax moves by a random +-N/2 Hz per batch")


def _add_augmentation_flags(parser: argparse.ArgumentParser, flag: _DefaultShowingFlag, finetune: bool) -> None:
    """Waveform and spectrogram augmentation (the fine-tuning scripts' roll / wavmix are on unless refused)."""
    augment = parser.add_argument_group("augmentation")
    flag(augment, "--mixup_alpha", type=float, help="mixup of spectrograms with Beta(alpha, alpha) weights, 0 = off")
    if finetune:
        augment.add_argument("--no_roll", action="store_true", help="no random circular time shift (default: shift)")
        augment.add_argument("--no_wavmix", action="store_true", help="no mixing of raw waveforms (default: mix)")
    else:
        flag(augment, "--roll", action="store_true", help="random circular time shift of each waveform")
        flag(augment, "--wavmix", action="store_true", help="mix raw waveforms of two clips (before the frontend)")
    flag(augment, "--roll_max_shift", type=int, help="with roll: largest shift in samples")
    flag(augment, "--gain_augment", type=int, help="random gain of whole dB in [-N, N-1], 0 = off")
    flag(augment, "--mixstyle_p", type=float,
         help="frequency-wise MixStyle of spectrograms with this probability per batch (EfficientAT's DCASE recipe); "
              "> 0 replaces mixup")
    flag(augment, "--mixstyle_alpha", type=float, help="MixStyle: Beta(alpha, alpha) mixing weights")


def _add_optimisation_flags(parser: argparse.ArgumentParser, flag: _DefaultShowingFlag, finetune: bool) -> None:
    """Epochs, the learning-rate schedule and the optimizer (the fine-tuning scripts name the peak `--lr`)."""
    optim = parser.add_argument_group("optimisation")
    flag(optim, "--n_epochs", type=int, help="epochs")
    if finetune:
        flag(optim, "--lr", "--max_lr", dest="max_lr", type=float, help="peak learning rate")
    else:
        flag(optim, "--max_lr", type=float, help="peak learning rate")
    flag(optim, "--warm_up_len", type=int, help="epochs of exponential warm-up")
    flag(optim, "--ramp_down_start", type=int, help="epoch the linear ramp-down starts")
    flag(optim, "--ramp_down_len", type=int, help="epochs of linear ramp-down")
    flag(optim, "--last_lr_value", type=float, help="final learning rate as a fraction of max_lr")
    flag(optim, "--lr_per_step", action="store_true",
         help="evaluate the LR schedule at every step (fractional epochs) instead of once per epoch (opt-in)")
    flag(optim, "--adamw", action="store_true", help="AdamW instead of Adam")
    flag(optim, "--weight_decay", type=float, help="weight decay of Adam/AdamW")


def _add_distillation_flags(parser: argparse.ArgumentParser, flag: _DefaultShowingFlag) -> None:
    """How the teacher's logits weigh in."""
    kd = parser.add_argument_group("knowledge distillation")
    flag(kd, "--kd_lambda", type=float,
         help="weight of the label loss; 1 - kd_lambda weighs the distillation loss; 0 = no distillation")
    flag(kd, "--temperature", type=float,
         help="distillation temperature: teacher logits are divided by it before the sigmoid (multi-label) or, "
              "with the student's, before the softmax of Hinton's loss (single-label); none = 1 for multi-label, "
              "4 for single-label tasks")


def _add_runtime_flags(parser: argparse.ArgumentParser, flag: _DefaultShowingFlag, experiment_name: str) -> None:
    """Device, precision, seed, checkpoints, evaluation cadence and the run record."""
    runtime = parser.add_argument_group("runtime")
    flag(runtime, "--cuda", action="store_true", help="train on the GPU (cuda:LOCAL_RANK under torchrun)")
    flag(runtime, "--precision", choices=["32", "16", "bf16"],
         help="autocast precision; 16 uses a gradient scaler")
    flag(runtime, "--no_channels_last", dest="channels_last", action="store_false",
         help="keep the model in the default (contiguous) memory layout instead of channels-last (slower, "
              "same maths)")
    flag(runtime, "--no_fused_optimizer", dest="fused_optimizer", action="store_false",
         help="the for-loop Adam/AdamW instead of the fused one (slower, same maths within float rounding)")
    flag(runtime, "--seed", type=int, help="seed of every random draw (data order, augmentation, initialisation)")
    flag(runtime, "--out_dir", help="where last.pt and best.pt are written")
    flag(runtime, "--resume", action="store_true", help="continue exactly from out_dir/last.pt")
    flag(runtime, "--overwrite", action="store_true",
         help="start over in an out_dir that already holds a run's checkpoints, replacing them (without it, "
              "and without --resume, such an out_dir is refused: a rerun never silently replaces finished work)")
    flag(runtime, "--resume_override", action="store_true",
         help="with --resume: accept settings that differ from the checkpoint's run (batch size, epochs, ...; "
              "printed old -> new); the model's own settings can never change")
    flag(runtime, "--checkpoint_every_steps", type=int,
         help="also write last.pt every N steps inside an epoch, 0 = only after each epoch")
    flag(runtime, "--eval_batch_size", type=int, help="clips per evaluation forward pass; none = --batch_size")
    flag(runtime, "--eval_every_epochs", type=int, help="evaluate (and update best.pt) every N epochs and after the last")
    runtime.add_argument("--experiment_name", default=None,
                         help=f"name of the run record runs/<name>/<id> (default: {experiment_name}"
                              + ("; demo: demo_student)" if experiment_name == "audioset" else ")"))
    runtime.add_argument("--runs_dir", default="runs", help="where sacred run records are written (default: runs)")
    runtime.add_argument("--wandb", default=None, choices=["disabled", "offline", "online"],
                         help="Weights & Biases logging, never required (default: offline for real training, a "
                              "local W&B run to sync later; demo: disabled)")
    runtime.add_argument("--results_json", default=None, help="also write the run summary as JSON to this file")
    runtime.add_argument("--no_progress", action="store_true", help="no progress bars (default: shown)")


def print_line(line: str) -> None:
    """How the training commands report each epoch (`train(..., report_epoch=print_line)`)."""
    print(line, flush=True)


def explicit_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig values the command line sets itself (flags left unset are not in it)."""
    values: dict[str, Any] = {}
    for f in fields(TrainConfig):
        # `--model_name` of ex_audioset.py names the model to *evaluate*; training starts from --pretrained.
        value = getattr(args, f.name, None) if f.name != "model_name" else None
        if value is not None:
            values[f.name] = value
    pretrained = getattr(args, "pretrained", None)
    if getattr(args, "pretrained_name", None):  # the fine-tuning scripts' explicit start
        values["model_name"] = args.pretrained_name
    elif pretrained is True:  # the fine-tuning scripts' switch: start from --model_name
        values["model_name"] = args.model_name
    elif isinstance(pretrained, str) and pretrained:
        values["model_name"] = pretrained
    if getattr(args, "no_roll", False):
        values["roll"] = False
    if getattr(args, "no_wavmix", False):
        values["wavmix"] = False
    values["progress"] = not args.no_progress
    return values


def config_from_args(args: argparse.Namespace, preset: Optional[TrainConfig] = None) -> TrainConfig:
    """A TrainConfig from parsed flags; unset flags come from `preset` (a recipe), else TrainConfig's defaults."""
    return dataclasses.replace(copy.deepcopy(preset) if preset is not None else TrainConfig(), **explicit_values(args))
