"""Batch augmentations of the reference recipes: mixup, wavmix, roll, gain and frequency MixStyle.

All functions are pure: they take batched tensors (batch first) and an optional
`torch.Generator` and return new tensors. Without a generator torch's global RNG is used,
so `torch.manual_seed` makes them reproducible.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch


def _beta(alpha: float, size: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    # torch's Beta distribution takes no generator: seed numpy's from the torch generator so
    # the draw is still governed by it (or by the global torch seed).
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator).item())
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size).astype(np.float32))


def mixup(batch_size: int, alpha: float, generator: Optional[torch.Generator] = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup partners and weights for a batch, as in EfficientAT's `mixup`.

    Returns `(permutation, lam)`: a random permutation of the batch and per-sample
    λ ~ Beta(alpha, alpha) folded to max(λ, 1 − λ) ≥ 0.5, so each mixed sample stays
    dominated by its own clip. Apply with `mix(x, permutation, lam)` to inputs, labels and
    teacher targets alike (mix teacher *probabilities*, σ(logits / T), as the reference's
    loss does, not raw logits).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be positive, got {alpha}")
    permutation = torch.randperm(batch_size, generator=generator)
    lam = _beta(alpha, batch_size, generator)
    return permutation, torch.maximum(lam, 1.0 - lam)


def mix(x: torch.Tensor, permutation: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """x · λ + x[permutation] · (1 − λ), with the per-sample λ broadcast over trailing axes."""
    if lam.shape != (x.shape[0],):
        raise ValueError(f"lam has shape {tuple(lam.shape)}, expected ({x.shape[0]},) for a batch of {x.shape[0]}")
    weights = lam.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    weights = weights.reshape((-1,) + (1,) * (x.dim() - 1))
    permutation = permutation.to(x.device)
    return x * weights + x[permutation] * (1.0 - weights)


def mixstyle(spectrogram: torch.Tensor, p: float = 0.4, alpha: float = 0.4, generator: Optional[torch.Generator] = None,
             eps: float = 1e-6) -> torch.Tensor:
    """Frequency-wise MixStyle of a (B, C, F, T) spectrogram batch, as in EfficientAT's DCASE recipe.

    With probability `p` (one draw per batch) every clip's per-frequency statistics (mean and
    standard deviation over channels and time, unbiased variance + eps) are replaced by a
    Beta(alpha, alpha)-weighted mix of its own and those of a random partner in the batch; the
    statistics are treated as constants (no gradient through them). Labels are not mixed: the
    content stays the clip's own, only its "device colouring" changes. Otherwise the batch is
    returned unchanged.
    """
    if spectrogram.dim() != 4:
        raise ValueError(f"mixstyle expects a (batch, channels, freq, time) tensor, got shape "
                         f"{tuple(spectrogram.shape)}")
    if not 0.0 <= p <= 1.0 or alpha <= 0:
        raise ValueError(f"mixstyle needs p in [0, 1] and alpha > 0, got p={p}, alpha={alpha}")
    if torch.rand(1, generator=generator).item() >= p:
        return spectrogram
    batch = spectrogram.shape[0]
    mean = spectrogram.mean(dim=(1, 3), keepdim=True).detach()
    std = (spectrogram.var(dim=(1, 3), keepdim=True) + eps).sqrt().detach()
    normed = (spectrogram - mean) / std
    lam = _beta(alpha, batch, generator).to(device=spectrogram.device, dtype=spectrogram.dtype).reshape(batch, 1, 1, 1)
    partner = torch.randperm(batch, generator=generator).to(spectrogram.device)
    mixed_mean = mean * lam + mean[partner] * (1 - lam)
    mixed_std = std * lam + std[partner] * (1 - lam)
    return normed * mixed_std + mixed_mean


def roll_waveforms(waveform: torch.Tensor, max_shift: int, generator: Optional[torch.Generator] = None
                   ) -> torch.Tensor:
    """Circularly shift each sample along the last (time) axis by a random integer in [−max_shift, max_shift].

    The reference's "roll" augmentation, drawn per sample (EfficientAT: max_shift=4000 samples at
    32 kHz; PaSST: 50).
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return waveform.clone()
    batch, length = waveform.shape[0], waveform.shape[-1]
    shifts = torch.randint(-max_shift, max_shift + 1, (batch,), generator=generator).to(waveform.device)
    # out[t] = in[(t - shift) mod length], as torch.roll does for a positive shift.
    positions = torch.arange(length, device=waveform.device)
    source = (positions.unsqueeze(0) - shifts.unsqueeze(1)) % length          # (B, T)
    source = source.reshape((batch,) + (1,) * (waveform.dim() - 2) + (length,)).expand_as(waveform)
    return torch.gather(waveform, -1, source)


def gain_augment(waveform: torch.Tensor, max_gain_db: float, generator: Optional[torch.Generator] = None,
                 integer_db: bool = False) -> torch.Tensor:
    """Scale each sample by a random gain, uniform in [−max_gain_db, +max_gain_db] dB.

    `integer_db=True` draws whole decibels from [−max_gain_db, max_gain_db − 1] like the
    reference's `pydub_augment`; the default is a continuous uniform draw.
    """
    if max_gain_db < 0:
        raise ValueError(f"max_gain_db must be >= 0, got {max_gain_db}")
    batch = waveform.shape[0]
    if integer_db:
        span = int(max_gain_db)
        gain_db = (torch.randint(0, 2 * span, (batch,), generator=generator) - span).float() if span > 0 \
            else torch.zeros(batch)
    else:
        gain_db = (torch.rand(batch, generator=generator) * 2.0 - 1.0) * max_gain_db
    amplitude = torch.pow(10.0, gain_db / 20.0).to(device=waveform.device, dtype=waveform.dtype)
    return waveform * amplitude.reshape((-1,) + (1,) * (waveform.dim() - 1))


class WavmixResult(NamedTuple):
    waveform: torch.Tensor
    targets: torch.Tensor
    teacher: Optional[torch.Tensor]
    permutation: torch.Tensor   # partner of each sample (itself where it was not mixed)
    lam: torch.Tensor           # weight of the sample's own clip (1 where it was not mixed)


def wavmix(waveform: torch.Tensor, targets: torch.Tensor, teacher: Optional[torch.Tensor] = None,
           alpha: float = 2.0, rate: float = 0.5, generator: Optional[torch.Generator] = None) -> WavmixResult:
    """Mix raw waveforms before the frontend: the reference's `--wavmix` (EfficientAT's MixupDataset).

    With probability `rate`, a sample is mixed with a random partner from the batch (drawn
    with replacement, as the reference draws a random dataset clip) using
    λ ~ Beta(alpha, alpha) folded to max(λ, 1 − λ): both waveforms have their mean (DC)
    removed, are mixed as x·λ + x_partner·(1 − λ), and the mix has its mean removed again.
    Targets are mixed with the same λ; so is `teacher` if given (pass teacher
    *probabilities*, σ(logits / T)). Samples not mixed are returned unchanged with
    partner = itself and λ = 1, so a trainer can combine masks such as `has_teacher`
    through `permutation` (e.g. has_teacher & has_teacher[permutation]).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"wavmix rate must be in [0, 1], got {rate}")
    batch = waveform.shape[0]
    if targets.shape[0] != batch or (teacher is not None and teacher.shape[0] != batch):
        raise ValueError("waveform, targets and teacher must have the same batch size")
    mixed = torch.rand(batch, generator=generator) < rate
    partners = torch.randint(0, batch, (batch,), generator=generator)
    lam = _beta(alpha, batch, generator)
    lam = torch.maximum(lam, 1.0 - lam)
    permutation = torch.where(mixed, partners, torch.arange(batch))
    lam = torch.where(mixed, lam, torch.ones(batch))

    centred = waveform - waveform.mean(dim=-1, keepdim=True)
    out = mix(centred, permutation, lam)
    out = out - out.mean(dim=-1, keepdim=True)
    keep = (~mixed).to(waveform.device).reshape((-1,) + (1,) * (waveform.dim() - 1))
    out = torch.where(keep, waveform, out)  # unmixed clips keep their DC, as in the reference
    return WavmixResult(out, mix(targets, permutation, lam),
                        mix(teacher, permutation, lam) if teacher is not None else None, permutation, lam)
