"""AST input features: the Kaldi-compatible log-mel filterbank of the reference AST data pipeline.

:class:`ASTFbank` reproduces the evaluation-mode features of ``AudiosetDataset`` in
``YuanGongND/ast`` (``src/dataloader.py``) for 16 kHz mono audio in [-1, 1]:

1. remove the waveform's mean (global, per clip);
2. the Kaldi fbank the reference computes with ``torchaudio.compliance.kaldi.fbank(w,
   htk_compat=True, sample_frequency=16000, use_energy=False, window_type='hanning',
   num_mel_bins=128, dither=0.0, frame_shift=10)`` (25 ms frames, 10 ms hop,
   ``1 + (n - 400) // 160`` frames; 998 for 10 s), here computed by
   :func:`~efficient_tagging.frontends.kaldi_fbank.kaldi_fbank` (plain torch, the whole batch at once,
   on the input's device; torchaudio is not needed);
3. append rows of 0.0, or cut, to ``target_length`` frames (padding happens *before*
   normalisation, so padded rows end up at ``-mean / (2 std)``, not 0);
4. normalise ``(fbank - norm_mean) / (2 * norm_std)``.

The training-only steps of the reference (mixup, SpecAugment masking, noise and roll) are
not part of this module. Audio must be scaled like ``torchaudio.load`` output (floats in
[-1, 1]); int16-scaled input shifts every value by ``2 ln 32768``.

Dataset statistics: AudioSet -4.2677393 / 4.5689974 (1024 frames), ESC-50 -6.6268077 /
5.358466 (512), Speech Commands -6.845978 / 5.5654526 (128); :func:`compute_fbank_stats`
(or ``python -m efficient_tagging.cli.fbank_stats --hdf5 data.h5``) computes them for new data.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Optional

import torch
from torch import Tensor, nn

from .kaldi_fbank import kaldi_fbank, kaldi_fbank_frames

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974

# name -> (norm_mean, norm_std, target_length) of the reference recipes
DATASET_STATS: dict[str, tuple[float, float, int]] = {
    "audioset": (AUDIOSET_MEAN, AUDIOSET_STD, 1024),
    "esc50": (-6.6268077, 5.358466, 512),
    "speechcommands": (-6.845978, 5.5654526, 128),
}

LAYOUTS = ("btf", "b1ft")


class ASTFbank(nn.Module):
    """Waveform ``(B, samples)`` -> AST input ``(B, target_length, num_mel_bins)``.

    Args:
        target_length: frames to pad (with 0.0, before normalisation) or cut to; None keeps
            the natural ``1 + (samples - 400) // 160`` frames.
        cut_long: False keeps every frame of clips longer than ``target_length`` (shorter ones
            are still padded), for sliding-window tagging of long files; True (the reference)
            cuts them.
        norm_mean, norm_std: dataset statistics of the raw fbank; output is
            ``(fbank - norm_mean) / (2 * norm_std)``. Defaults: AudioSet.
        normalize: False returns the raw (padded) log-mel values, e.g. to compute statistics.
        sample_rate: rate of the input audio (the reference models expect 16 kHz).
        num_mel_bins, frame_shift: fbank options (reference: 128, 10 ms).
        subtract_mean: remove each clip's mean first, as the reference dataloader does
            (mathematically cancelled by the per-frame DC removal; it changes only rounding).
        layout: ``"btf"`` -> ``(B, T, F)`` for :class:`~efficient_tagging.models.ast.ASTModel`;
            ``"b1ft"`` -> ``(B, 1, F, T)`` for :class:`~efficient_tagging.models.ast.ASTTagger`
            and the rest of this project.

    Input: ``(B, samples)``, ``(B, 1, samples)`` or a single clip ``(samples,)`` (treated as
    a batch of one). The whole batch is computed at once on the input's device, in float32
    (float64 input stays float64; other floating dtypes are computed in float32), with autocast
    disabled.
    """

    def __init__(self, target_length: Optional[int] = 1024, norm_mean: float = AUDIOSET_MEAN,
                 norm_std: float = AUDIOSET_STD, normalize: bool = True, sample_rate: int = SAMPLE_RATE,
                 num_mel_bins: int = 128, frame_shift: float = 10.0, subtract_mean: bool = True,
                 layout: str = "btf", cut_long: bool = True) -> None:
        super().__init__()
        if target_length is not None and (isinstance(target_length, bool) or not isinstance(target_length, int)
                                          or target_length < 1):
            raise ValueError(f"target_length must be a positive int or None, got {target_length!r}")
        if normalize and not (math.isfinite(norm_std) and norm_std > 0 and math.isfinite(norm_mean)):
            raise ValueError(f"norm_std must be positive and finite (and norm_mean finite), got "
                             f"norm_mean={norm_mean}, norm_std={norm_std}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if sample_rate <= 0 or num_mel_bins < 1 or frame_shift <= 0:
            raise ValueError(f"sample_rate, num_mel_bins and frame_shift must be positive, got {sample_rate}, "
                             f"{num_mel_bins}, {frame_shift}")
        if num_mel_bins < 4:
            raise ValueError(f"num_mel_bins must be at least 4 (Kaldi's filterbank needs them), got {num_mel_bins}")
        kaldi_fbank_frames(0, sample_frequency=sample_rate, frame_shift=frame_shift)  # raises for a hop < 1 sample
        self.target_length = target_length
        self.norm_mean = float(norm_mean)
        self.norm_std = float(norm_std)
        self.normalize = bool(normalize)
        self.sample_rate = int(sample_rate)
        self.num_mel_bins = int(num_mel_bins)
        self.frame_shift = float(frame_shift)
        self.subtract_mean = bool(subtract_mean)
        self.layout = layout
        self.cut_long = bool(cut_long)

    @classmethod
    def for_dataset(cls, name: str, **overrides: Any) -> "ASTFbank":
        """The reference recipe's settings for ``audioset``, ``esc50`` or ``speechcommands``."""
        key = name.lower().replace("-", "").replace("_", "")
        if key not in DATASET_STATS:
            raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_STATS)}")
        mean, std, length = DATASET_STATS[key]
        kwargs: dict[str, Any] = dict(target_length=length, norm_mean=mean, norm_std=std)
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def fbank_kwargs(self) -> dict[str, Any]:
        """The Kaldi options, in torchaudio's names: what the reference passes to
        ``torchaudio.compliance.kaldi.fbank``, and what :func:`~efficient_tagging.frontends.kaldi_fbank.kaldi_fbank`
        receives here."""
        return dict(htk_compat=True, sample_frequency=self.sample_rate, use_energy=False, window_type="hanning",
                    num_mel_bins=self.num_mel_bins, dither=0.0, frame_shift=self.frame_shift)

    @property
    def frame_length_samples(self) -> int:
        return int(self.sample_rate * 0.025)  # Kaldi's default 25 ms window

    def num_frames(self, num_samples: int) -> int:
        """Raw fbank frames for a clip of ``num_samples`` (before pad/cut)."""
        return kaldi_fbank_frames(num_samples, sample_frequency=self.sample_rate, frame_shift=self.frame_shift)

    def extra_repr(self) -> str:
        return (f"target_length={self.target_length}, norm_mean={self.norm_mean}, norm_std={self.norm_std}, "
                f"normalize={self.normalize}, sample_rate={self.sample_rate}, num_mel_bins={self.num_mel_bins}, "
                f"layout={self.layout!r}, cut_long={self.cut_long}")

    def _check_waveform(self, waveform: Tensor) -> Tensor:
        if not waveform.is_floating_point():
            raise TypeError(f"expected a floating-point waveform scaled to [-1, 1], got dtype {waveform.dtype}")
        if waveform.dtype not in (torch.float32, torch.float64):
            waveform = waveform.float()
        if waveform.shape[-1] < self.frame_length_samples:
            raise ValueError(f"a clip needs at least {self.frame_length_samples} samples (one 25 ms frame at "
                             f"{self.sample_rate} Hz), got waveform of shape {tuple(waveform.shape)}")
        return waveform

    def _batch_fbank(self, waveform: Tensor) -> Tensor:
        """Raw log-mel ``(B, frames, bins)`` of a checked batch ``(B, samples)``."""
        if self.subtract_mean:
            waveform = waveform - waveform.mean(dim=-1, keepdim=True)
        return kaldi_fbank(waveform, **self.fbank_kwargs)

    def raw_fbank(self, waveform: Tensor) -> Tensor:
        """Log-mel ``(frames, num_mel_bins)`` of one clip ``(samples,)`` or ``(channels, samples)``,
        before pad/cut and normalisation (the clip mean is removed first if ``subtract_mean``).

        With several channels, the mean of all of them is removed and the first channel is used
        (what the reference's call does with a multi-channel tensor)."""
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        waveform = self._check_waveform(waveform)
        if self.subtract_mean:
            waveform = waveform - waveform.mean()
        return kaldi_fbank(waveform[0], **self.fbank_kwargs)

    def pad_or_cut(self, fbank: Tensor) -> Tensor:
        """Append rows of 0.0 to, or cut (if ``cut_long``), ``(..., frames, bins)`` to ``target_length`` frames."""
        if self.target_length is None:
            return fbank
        missing = self.target_length - fbank.shape[-2]
        if missing > 0:
            return torch.nn.functional.pad(fbank, (0, 0, 0, missing))
        return fbank[..., : self.target_length, :] if self.cut_long else fbank

    def forward(self, waveform: Tensor) -> Tensor:
        if not isinstance(waveform, Tensor):
            raise TypeError(f"expected a waveform tensor, got {type(waveform).__name__}")
        if waveform.dim() == 3 and waveform.shape[1] == 1:
            waveform = waveform[:, 0]
        elif waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise ValueError(f"ASTFbank expects a waveform of shape (B, samples), (B, 1, samples) or (samples,), "
                             f"got {tuple(waveform.shape)}")
        if waveform.shape[0] == 0:
            out = waveform.new_zeros(0, self.target_length or 0, self.num_mel_bins)
            if not out.is_floating_point():
                out = out.float()
        else:
            out = self.pad_or_cut(self._batch_fbank(self._check_waveform(waveform)))
        if self.normalize:
            out = (out - self.norm_mean) / (self.norm_std * 2)
        if self.layout == "b1ft":
            out = out.transpose(1, 2).unsqueeze(1)
        return out


def compute_fbank_stats(waveforms: Iterable[Tensor], sample_rate: int = SAMPLE_RATE, num_mel_bins: int = 128,
                        target_length: Optional[int] = None, subtract_mean: bool = True) -> tuple[float, float]:
    """``(mean, std)`` of the raw AST fbank over a collection of clips, for ``ASTFbank(norm_mean, norm_std)``.

    ``waveforms`` yields clips ``(samples,)`` or batches ``(B, samples)`` at ``sample_rate``,
    scaled to [-1, 1]. Every fbank value of every clip counts once (sums in float64; std with
    Bessel's correction). ``target_length`` pads/cuts each clip like the model input first:
    the reference recipe (``get_norm_stats.py``, dataloader with ``skip_norm``) computed its
    statistics on padded inputs, so pass the model's ``input_tdim`` to follow it; None uses
    the natural frames only. (The reference also averaged per-batch means and stds over
    training batches with mixup and SpecAugment; this function computes the pooled values.)
    """
    fbank = ASTFbank(target_length=target_length, normalize=False, sample_rate=sample_rate,
                     num_mel_bins=num_mel_bins, subtract_mean=subtract_mean)
    total = torch.zeros((), dtype=torch.float64)
    total_sq = torch.zeros((), dtype=torch.float64)
    count = 0
    for item in waveforms:
        item = torch.as_tensor(item)
        if item.dim() == 1:
            item = item.unsqueeze(0)
        if item.dim() != 2:
            raise ValueError(f"compute_fbank_stats expects clips (samples,) or batches (B, samples), got "
                             f"{tuple(item.shape)}")
        if item.shape[0] == 0:
            continue
        # the whole batch at once: padded rows are zeros here (normalize=False)
        values = fbank(item.float()).double()
        total += values.sum().cpu()
        total_sq += values.square().sum().cpu()
        count += values.numel()
    if count < 2:
        raise ValueError("compute_fbank_stats needs at least one clip with two fbank values")
    mean = total / count
    variance = (total_sq - count * mean * mean) / (count - 1)
    return float(mean), float(variance.clamp_min(0).sqrt())
