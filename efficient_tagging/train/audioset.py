"""Task recipes of the AudioSet command (`ex_audioset.py`): the AudioSet preset, the embedded demo's presets and its teacher run."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from .reproducibility import PORTABLE_ISA
from .trainer import TrainConfig

logger = logging.getLogger("efficient_tagging")

# AudioSet recipe: EfficientAT's ex_audioset.py. TrainConfig's defaults are that script's defaults;
# the recipe adds its DataLoader workers and states the distillation temperature (1, the
# multi-label kind's default, written out because the recipe fixes it).
AUDIOSET_RECIPE = TrainConfig(num_workers=12, temperature=1.0)

# The embedded demo: 2 s synthetic clips at 16 kHz (the rate they are stored at), a small
# frontend (64 mels, 20 ms hop) and a short schedule, so teacher and student train in a few
# CPU minutes. BatchNorm momentum 0.1: over a few hundred steps the architecture's 0.01 would
# leave the running statistics used at evaluation unsettled. No DataLoader workers: on a
# 2-core machine a decoding worker steals a core from the training threads and costs more
# than it saves (decoding is ~4 ms per clip, the training step ~8 ms).
# The demo also opts into three things the AudioSet recipe leaves off, because a 10-epoch schedule
# is too short for the recipe's stairs: the LR schedule evaluated per step (per epoch, epoch 0 runs
# at 29 % of max_lr and the ramp-down drops in big steps), epochs drawn with replacement, and
# weight decay 1e-4 (measured without them: student mAP 0.894 after 10 epochs, 0.58 at epoch 8).
DEMO_RECIPE = dataclasses.replace(
    AUDIOSET_RECIPE, sample_rate=16000, clip_length=2.0, batch_size=32, num_workers=0, epoch_len=800, n_epochs=10,
    max_lr=0.003, warm_up_len=1, ramp_down_start=6, ramp_down_len=4, last_lr_value=0.05, n_mels=64,
    eval_batch_size=64, bn_momentum=0.1, lr_per_step=True, sampler_replacement=True, weight_decay=0.0001)
# The demo's teacher is a small PaSST trained from scratch on the demo labels, so the demo is a
# Transformer-to-CNN distillation like the AudioSet recipe. Its tokens are full-height patches
# (all 64 mel bins x 4 frames: 25 tokens per 2 s clip): on 2000 clips a transformer from scratch
# learns far faster from spectral-column tokens than from 16x16 patches (measured after 8 epochs:
# mAP 0.90 vs 0.79 with 16x16 patches at stride 12). AdamW at 1e-3 without mixup, 16 epochs
# (measured mAP 0.965, ~90 s on 2 cores); evaluated once, at the end.
DEMO_TEACHER_RECIPE = dataclasses.replace(
    DEMO_RECIPE, arch="passt",
    model_kwargs={"embed_dim": 192, "depth": 4, "num_heads": 3, "patch_size": [64, 4], "stride": [64, 4]},
    n_epochs=16, max_lr=0.001, adamw=True, warm_up_len=1, ramp_down_start=10, ramp_down_len=6, mixup_alpha=0.0,
    eval_every_epochs=16)
# Command-line flags that apply to the demo teacher as well as to the student: where and how to
# run, and the length of the run (so `--n_epochs 1 --epoch_len 64` makes a quick smoke run of both).
TEACHER_RUNTIME_FLAGS = ("cuda", "precision", "seed", "num_workers", "epoch_len", "n_epochs")



def demo_teacher_config(args: Any, train_path: Path, eval_path: Path, root: Path) -> TrainConfig:
    """The demo teacher's training run: DEMO_TEACHER_RECIPE plus the runtime flags given.

    `args` holds the command's options as attributes (`demo_clips`, `no_progress`, TEACHER_RUNTIME_FLAGS).

    Its checkpoint directory is keyed by a hash of everything that changes the teacher, so a
    cached teacher (reused by later demo runs) is never a stale or a smoke-run one.
    """
    runtime = {name: getattr(args, name, None) for name in TEACHER_RUNTIME_FLAGS}
    config = dataclasses.replace(copy.deepcopy(DEMO_TEACHER_RECIPE),
                                 **{name: value for name, value in runtime.items() if value is not None and value is not False},
                                 train_hdf5=[str(train_path)], eval_hdf5=[str(eval_path)], progress=not args.no_progress)
    # The key holds the whole resolved config (TrainConfig's own defaults too: a changed default
    # must not reuse a teacher trained under the old one), less what only says where/how to run.
    runtime_only = ("num_workers", "cuda", "train_hdf5", "eval_hdf5", "out_dir", "progress", "resume",
                    "resume_override")
    # The CPU kernels change the trained teacher too (see train/reproducibility.py).
    native = bool(getattr(args, "demo_native_cpu", False))
    key = json.dumps({"demo_clips": args.demo_clips, "native_cpu": native,
                      **({} if native else {"portable_isa": PORTABLE_ISA}),
                      **{k: v for k, v in config.to_dict().items() if k not in runtime_only}},
                     sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    out_dir = root / f"teacher_{config.arch}_e{config.n_epochs}_n{args.demo_clips}_{digest}"
    config.out_dir = str(out_dir)
    config.resume = (out_dir / "last.pt").is_file()  # a teacher run killed part-way continues
    return config
