"""Learning-rate schedules.

`exp_warmup_linear_down` reproduces EfficientAT's multiplier (helpers/utils.py) value for
value: an exponential warm-up (the "rampup" of Laine & Aila, arXiv:1610.02242), a plateau
at 1, a linear ramp down to `last_value`, then `last_value` for the rest of training.

The reference steps its scheduler once per epoch: epoch e trains entirely at
max_lr * f(e). `make_lr_scheduler` does the same by default (it is stepped after every
optimizer step, but evaluates f at the integer epoch step // steps_per_epoch), so a resumed
run continues at the saved step. `per_step=True` (the opt-in `--lr_per_step`) evaluates f at
the fractional epoch step / steps_per_epoch instead: equal at the first step of every epoch,
smooth in between rather than stair steps.
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def exp_warmup_linear_down(warmup: int, rampdown_length: int, start_rampdown: int,
                           last_value: float) -> Callable[[float], float]:
    """LR multiplier as a function of the (possibly fractional) epoch.

    - epoch < warmup: exp(-5 * (1 - e / warmup)^2) with e = epoch clamped to [0.5, warmup]
      (the reference's clamp: epoch 0 already gets the value of epoch 0.5, never exp(-5));
    - up to `start_rampdown`: 1;
    - the next `rampdown_length` epochs: linear from 1 down towards `last_value`;
    - afterwards: `last_value`.
    The two factors multiply, as in the reference, so overlapping phases compose the same way.
    """
    def warmup_factor(epoch: float) -> float:
        if epoch >= warmup:
            return 1.0
        e = min(max(epoch, 0.5), warmup)
        phase = 1.0 - e / warmup
        return math.exp(-5.0 * phase * phase)

    def rampdown_factor(epoch: float) -> float:
        if epoch <= start_rampdown:
            return 1.0
        if epoch - start_rampdown < rampdown_length:
            remaining = (rampdown_length - (epoch - start_rampdown)) / rampdown_length
            return last_value + (1.0 - last_value) * remaining
        return last_value

    def multiplier(epoch: float) -> float:
        return warmup_factor(epoch) * rampdown_factor(epoch)

    return multiplier


def make_lr_scheduler(optimizer: torch.optim.Optimizer, multiplier_fn: Callable[[float], float],
                      steps_per_epoch: int, per_step: bool = False) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR to be stepped after every optimizer step.

    The multiplier is `multiplier_fn(step // steps_per_epoch)` (the reference: constant within
    an epoch), or `multiplier_fn(step / steps_per_epoch)` with `per_step=True`.

    The lambda is a plain closure on purpose: LambdaLR's state_dict then holds only counters
    (no pickled function), so checkpoints load with `torch.load(weights_only=True)` and resume
    at the saved step.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")

    def multiplier(step: int) -> float:
        epoch = step / steps_per_epoch if per_step else step // steps_per_epoch
        return multiplier_fn(epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
