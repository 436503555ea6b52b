"""Command-line flags of the training scripts, shared by every `experiments/ex_*.py`.

Flag names follow EfficientAT's scripts (`--batch_size`, `--n_epochs`, `--kd_lambda`, ...).
Flags whose default depends on the job (the embedded demo uses a much shorter schedule than
AudioSet) default to None here and are filled in by `config_from_args(args, defaults)`.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields
from typing import Any, Optional

from ..train.trainer import TrainConfig

# Flags that may be left unset on the command line, so that a job preset can fill them.
PRESET_FLAGS = ("sample_rate", "batch_size", "num_workers", "epoch_len", "n_epochs", "max_lr", "warm_up_len", "ramp_down_start",
                "ramp_down_len", "last_lr_value", "mixup_alpha", "clip_length", "kd_lambda", "temperature",
                "freqm", "timem", "roll", "gain_augment", "wavmix", "n_mels", "hop_size", "eval_batch_size",
                "bn_momentum", "eval_every_epochs")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, data, augmentation, optimisation, distillation and runtime flags."""
    data = parser.add_argument_group("data")
    data.add_argument("--train_hdf5", nargs="+", default=None,
                      help="AudioSet-format HDF5 file(s) to train on (e.g. balanced_train.h5 unbalanced_train.h5)")
    data.add_argument("--eval_hdf5", nargs="+", default=None, help="AudioSet-format HDF5 file(s) to evaluate on")
    data.add_argument("--teacher_preds", "--teacher_logits", dest="teacher_logits", default=None,
                      help="teacher-logits HDF5 (joined by audio_name); clips without logits get label loss only")
    data.add_argument("--allow_no_teacher_coverage", action="store_true",
                      help="train even if the teacher logits match none of the training clips (distillation "
                           "then does nothing); without it such a run stops with an error (default: off)")
    data.add_argument("--resample_rate", "--sample_rate", dest="sample_rate", type=int, default=None,
                      help="training sample rate (clips are resampled to it; AudioSet: 32000)")
    data.add_argument("--clip_length", type=float, default=None, help="seconds per clip (pad/cut); AudioSet: 10")
    data.add_argument("--num_classes", type=int, default=None, help="default: from the data files")
    data.add_argument("--batch_size", type=int, default=None, help="clips per step and process (AudioSet: 120)")
    data.add_argument("--num_workers", type=int, default=None, help="DataLoader workers decoding audio")
    data.add_argument("--epoch_len", type=int, default=None,
                      help="clips drawn per epoch by the class-balanced sampler (AudioSet: 100000)")

    model = parser.add_argument_group("model")
    model.add_argument("--arch", default="mn", choices=["mn", "dymn", "passt", "ast"],
                       help="model family: mn/dymn students, passt/ast transformer teachers")
    model.add_argument("--model_kwargs", type=json.loads, default=None,
                       help='further constructor arguments as JSON, e.g. \'{"embed_dim": 192, "depth": 4}\' '
                            "(reference argument names)")
    model.add_argument("--width_mult", "--model_width", dest="width_mult", type=float, default=1.0,
                       help="width multiplier (mn10 = 1.0, mn04 = 0.4, mn40 = 4.0)")
    model.add_argument("--pretrained", "--pretrained_name", dest="pretrained", default=None,
                       help="start from a catalogue model (e.g. mn10_im, mn10_as) or a checkpoint path")
    model.add_argument("--head_type", default="mlp",
                       choices=["mlp", "fully_convolutional", "multihead_attention_pooling"])
    model.add_argument("--se_dims", default="c", help="squeeze-excitation dimensions: letters of c, f, t, or none")
    model.add_argument("--strides", type=int, nargs=4, default=[2, 2, 2, 2], help="strides of the 4 down-sampling blocks")
    model.add_argument("--bn_momentum", type=float, default=None,
                       help="BatchNorm momentum while training (default: the architecture's 0.01)")

    frontend = parser.add_argument_group("mel frontend")
    frontend.add_argument("--n_mels", type=int, default=None, help="mel bins (default 128)")
    frontend.add_argument("--window_size", type=int, default=800, help="STFT window (samples)")
    frontend.add_argument("--hop_size", type=int, default=None, help="STFT hop (samples, default 320 = 10 ms)")
    frontend.add_argument("--n_fft", type=int, default=1024)
    frontend.add_argument("--freqm", type=int, default=None, help="max frequency-mask width (bins), 0 = off")
    frontend.add_argument("--timem", type=int, default=None, help="max time-mask width (frames), 0 = off")
    frontend.add_argument("--fmin", type=float, default=0.0)
    frontend.add_argument("--fmax", type=float, default=None, help="default sr/2 - fmax_aug_range/2")
    frontend.add_argument("--fmin_aug_range", type=int, default=10, help="random fmin shift range (Hz)")
    frontend.add_argument("--fmax_aug_range", type=int, default=2000, help="random fmax shift range (Hz)")

    augment = parser.add_argument_group("augmentation")
    augment.add_argument("--mixup_alpha", type=float, default=None, help="mixup Beta(alpha, alpha); 0 = off (0.3)")
    augment.add_argument("--roll", action="store_true", default=None, help="random circular time shift")
    augment.add_argument("--wavmix", action="store_true", default=None, help="mix raw waveforms (before the frontend)")
    augment.add_argument("--gain_augment", type=float, default=None, help="random gain up to +-N dB; 0 = off")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--n_epochs", type=int, default=None, help="epochs (AudioSet: 200)")
    optim.add_argument("--max_lr", type=float, default=None, help="peak learning rate (AudioSet: 0.0008)")
    optim.add_argument("--warm_up_len", type=int, default=None, help="epochs of exponential warm-up (8)")
    optim.add_argument("--ramp_down_start", type=int, default=None, help="epoch the linear ramp-down starts (80)")
    optim.add_argument("--ramp_down_len", type=int, default=None, help="epochs of linear ramp-down (95)")
    optim.add_argument("--last_lr_value", type=float, default=None, help="final LR as a fraction of max_lr (0.01)")
    optim.add_argument("--adamw", action="store_true", help="AdamW instead of Adam")
    optim.add_argument("--weight_decay", type=float, default=0.0001)

    kd = parser.add_argument_group("knowledge distillation")
    kd.add_argument("--kd_lambda", type=float, default=None,
                    help="weight of the label loss; 1 - kd_lambda weighs the distillation loss (0.1)")
    kd.add_argument("--temperature", type=float, default=None, help="teacher logits are divided by this (1)")

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--cuda", action="store_true", help="train on the GPU (per-rank GPU under torchrun)")
    runtime.add_argument("--precision", default="32", choices=["32", "16", "bf16"],
                         help="autocast precision (16 uses a gradient scaler)")
    runtime.add_argument("--seed", type=int, default=0)
    runtime.add_argument("--out_dir", default=None, help="checkpoints go here (last.pt, best.pt)")
    runtime.add_argument("--resume", action="store_true", help="continue from out_dir/last.pt exactly")
    runtime.add_argument("--checkpoint_every_steps", type=int, default=500,
                         help="also write last.pt every N steps inside an epoch (0 = only after each epoch)")
    runtime.add_argument("--eval_batch_size", type=int, default=None)
    runtime.add_argument("--eval_every_epochs", type=int, default=None,
                         help="evaluate (and update best.pt) every N epochs and after the last (1)")
    runtime.add_argument("--experiment_name", default=None, help="name of the run record (runs/<name>/<id>)")
    runtime.add_argument("--runs_dir", default="runs", help="where sacred run records are written")
    runtime.add_argument("--wandb", default=None, choices=["disabled", "offline", "online"],
                         help="Weights & Biases logging, never required: 'offline' (default for real training: "
                              "a local W&B run under the run record, sync later), 'online', or 'disabled' "
                              "(the demo's default)")
    runtime.add_argument("--results_json", default=None, help="write the run summary / final metrics here")
    runtime.add_argument("--no_progress", action="store_true", help="no progress bars")
    runtime.add_argument("--crash_after_steps", type=int, default=None, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace, defaults: Optional[dict[str, Any]] = None) -> TrainConfig:
    """A TrainConfig from parsed flags; unset preset flags come from `defaults`, then TrainConfig's own."""
    defaults = dict(defaults or {})
    values: dict[str, Any] = {}
    names = {f.name for f in fields(TrainConfig)}
    for name in names:
        if hasattr(args, name):
            value = getattr(args, name)
            if value is None and name in defaults:
                value = defaults[name]
            if value is not None:
                values[name] = value
        elif name in defaults:
            values[name] = defaults[name]
    values["train_hdf5"] = args.train_hdf5 or defaults.get("train_hdf5", [])
    values["eval_hdf5"] = args.eval_hdf5 or defaults.get("eval_hdf5", [])
    values["model_name"] = args.pretrained or defaults.get("model_name")
    values["progress"] = not args.no_progress
    if args.out_dir is None:
        values["out_dir"] = defaults.get("out_dir", "runs/checkpoints")
    return TrainConfig(**values)
