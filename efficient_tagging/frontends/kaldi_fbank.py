"""Kaldi ``compute-fbank-feats`` log-mel filterbanks in plain torch, batched, on the input's device.

:func:`kaldi_fbank` computes what ``torchaudio.compliance.kaldi.fbank`` computes for the options
the AST pipeline uses (it is the reference's feature extractor), but for a whole batch
``(..., samples)`` in one pass and on whatever device the waveform lives on, so torchaudio is
not needed at run time:

1. frames of ``frame_length`` ms every ``frame_shift`` ms that fit completely in the clip
   (Kaldi's ``snip_edges=True``): ``1 + (samples - window) // hop`` frames;
2. per frame: remove the frame's mean (DC offset), pre-emphasis ``y[j] = x[j] - 0.97 x[j - 1]``
   with ``x[-1] := x[0]`` (Kaldi's edge rule: the first sample is emphasised against itself),
   multiply by the window (symmetric Hann, or Povey = Hann ** 0.85);
3. zero-pad each frame to the next power of two (512 for 400 samples), power spectrum
   ``|rfft|**2``;
4. Kaldi's triangular mel filters (``mel(f) = 1127 ln(1 + f / 700)``, ``low_freq`` 20 Hz to
   Nyquist, no area normalisation, no filter on the Nyquist bin);
5. ``log(max(energy, eps))`` with ``eps = torch.finfo(torch.float32).eps`` (Kaldi's floor,
   also for float64 input).

Every float32 operation is the one the torchaudio implementation performs, in the same order
(mel filters are built in float32 whatever the input dtype, like the reference), so CPU float32
results equal it bit for bit in the measured cases (tests/test_torch_frontends.py).
Only these options are implemented; any other Kaldi option is accepted at its default value
(so the full option dict of a reference recipe can be passed) and refused with a ValueError
otherwise.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from ..hardware import in_cpu_pieces

__all__ = ["KALDI_EPSILON", "kaldi_fbank", "kaldi_fbank_frames", "kaldi_mel_banks", "kaldi_window"]

# Kaldi floors every filterbank energy at float32 epsilon before the log (float64 input too).
KALDI_EPSILON = float(torch.finfo(torch.float32).eps)
PREEMPHASIS = 0.97
WINDOWS = ("hanning", "povey")
CPU_CHUNK_FRAMES = 1024  # one 10-s clip (998 frames) per piece: see kaldi_fbank

# Kaldi options (torchaudio's names) that are fixed here, with the only value supported. They are
# accepted so that a reference recipe's complete option dict can be passed through unchanged.
_FIXED_OPTIONS: dict[str, Any] = {
    "blackman_coeff": 0.42,  # only used by the Blackman window, which is not supported
    "channel": -1,
    "dither": 0.0,
    "energy_floor": 1.0,  # only used by the energy column, which is not supported
    "high_freq": 0.0,
    "htk_compat": None,  # any bool: it only moves the energy column (use_energy=False has none)
    "low_freq": 20.0,
    "min_duration": 0.0,
    "preemphasis_coefficient": PREEMPHASIS,
    "raw_energy": True,
    "remove_dc_offset": True,
    "round_to_power_of_two": True,
    "snip_edges": True,
    "subtract_mean": False,
    "use_energy": False,
    "use_log_fbank": True,
    "use_power": True,
    "vtln_high": -500.0,
    "vtln_low": 100.0,
    "vtln_warp": 1.0,
}


def _check_options(options: dict[str, Any]) -> None:
    for name, value in options.items():
        if name not in _FIXED_OPTIONS:
            raise ValueError(f"kaldi_fbank: unknown option {name!r}; supported: sample_frequency, num_mel_bins, "
                             f"frame_shift, frame_length, window_type and, at their defaults only, "
                             f"{', '.join(sorted(_FIXED_OPTIONS))}")
        fixed = _FIXED_OPTIONS[name]
        if fixed is None:
            if not isinstance(value, bool):
                raise ValueError(f"kaldi_fbank: {name} must be a bool, got {value!r}")
        elif isinstance(fixed, bool):
            if value is not fixed and value != fixed:
                raise ValueError(f"kaldi_fbank: {name}={value!r} is not supported (only {fixed!r}, the AST recipe's)")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != float(fixed):
            raise ValueError(f"kaldi_fbank: {name}={value!r} is not supported (only {fixed!r}, the AST recipe's)")


def _frame_geometry(sample_frequency: float, frame_shift: float, frame_length: float) -> tuple[int, int, int]:
    """(window, hop, padded_window) in samples; Kaldi truncates the millisecond products to ints."""
    window = int(sample_frequency * frame_length * 0.001)
    hop = int(sample_frequency * frame_shift * 0.001)
    if window < 2 or hop < 1:
        raise ValueError(f"kaldi_fbank: frame_length {frame_length} ms / frame_shift {frame_shift} ms at "
                         f"{sample_frequency} Hz give a window of {window} and a hop of {hop} samples; need a "
                         f"window >= 2 and a hop >= 1")
    return window, hop, 1 << (window - 1).bit_length()


def _mel(freq: Tensor | float) -> Tensor | float:
    # log(1 + f/700), not log1p: the rounding must be Kaldi's/torchaudio's (log1p moves filter
    # weights by up to 2e-5, which is why frontends.mel.kaldi_mel_filterbank is not reused here).
    if isinstance(freq, Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=16)
def _mel_banks_cpu(num_mel_bins: int, padded_window: int, sample_frequency: float, low_freq: float,
                   high_freq: float) -> Tensor:
    nyquist = 0.5 * sample_frequency
    if high_freq <= 0.0:
        high_freq += nyquist  # Kaldi: a non-positive high_freq is an offset from Nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"kaldi_fbank: need 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz), got low_freq="
                         f"{low_freq}, high_freq={high_freq}")
    mel_low, mel_high = _mel(float(low_freq)), _mel(float(high_freq))
    step = (mel_high - mel_low) / (num_mel_bins + 1)
    # float32 grid on purpose (also for float64 features): these are the reference's filters
    index = torch.arange(num_mel_bins).unsqueeze(1)
    left = mel_low + index * step
    centre = mel_low + (index + 1.0) * step
    right = mel_low + (index + 2.0) * step
    bin_mel = _mel((sample_frequency / padded_window) * torch.arange(padded_window / 2)).unsqueeze(0)
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)
    # no filter reaches the Nyquist bin of the one-sided spectrum: a zero column for it
    return torch.nn.functional.pad(banks, (0, 1))


@functools.lru_cache(maxsize=64)
def _cached_banks(num_mel_bins: int, padded_window: int, sample_frequency: float, low_freq: float,
                  high_freq: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    banks = _mel_banks_cpu(num_mel_bins, padded_window, sample_frequency, low_freq, high_freq)
    # transposed once here so every call multiplies (frames, bins) @ (bins, mels)
    return banks.t().to(device=device, dtype=dtype)


def kaldi_mel_banks(num_mel_bins: int, padded_window: int, sample_frequency: float, low_freq: float = 20.0,
                    high_freq: float = 0.0, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Tensor:
    """Kaldi's triangular mel filters ``(num_mel_bins, padded_window // 2 + 1)``, Nyquist column zero.

    Built in float32 (Kaldi's and torchaudio's arithmetic), then cast to ``dtype`` / moved to
    ``device``; cached per arguments.
    """
    if num_mel_bins < 4:
        raise ValueError(f"kaldi_fbank: num_mel_bins must be at least 4, got {num_mel_bins}")
    if padded_window < 2 or padded_window % 2:
        raise ValueError(f"kaldi_fbank: the padded window must be even, got {padded_window}")
    return _cached_banks(int(num_mel_bins), int(padded_window), float(sample_frequency), float(low_freq),
                         float(high_freq), dtype, torch.device(device)).t()


@functools.lru_cache(maxsize=32)
def _cached_window(window_type: str, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Built on the CPU and moved: the same window values whatever device the features run on.
    window = torch.hann_window(size, periodic=False, dtype=dtype)
    if window_type == "povey":
        window = window.pow(0.85)  # Kaldi's Povey window: a Hann window that stays closer to zero at the edges
    return window.to(device)


def kaldi_window(window_type: str, size: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> Tensor:
    """Kaldi's ``hanning`` (symmetric Hann) or ``povey`` (Hann ** 0.85) window of ``size`` samples."""
    if window_type not in WINDOWS:
        raise ValueError(f"kaldi_fbank: window_type {window_type!r} is not supported; use one of {WINDOWS}")
    return _cached_window(window_type, int(size), dtype, torch.device(device))


def kaldi_fbank_frames(num_samples: int, sample_frequency: float = 16000.0, frame_shift: float = 10.0,
                       frame_length: float = 25.0) -> int:
    """Frames :func:`kaldi_fbank` gives for ``num_samples`` (0 if the clip is shorter than a window)."""
    window, hop, _ = _frame_geometry(sample_frequency, frame_shift, frame_length)
    return 1 + (num_samples - window) // hop if num_samples >= window else 0


def kaldi_fbank(waveform: Tensor, *, sample_frequency: float = 16000.0, num_mel_bins: int = 23,
                frame_shift: float = 10.0, frame_length: float = 25.0, window_type: str = "povey",
                **options: Any) -> Tensor:
    """Kaldi log-mel filterbank of ``waveform`` ``(..., samples)`` -> ``(..., frames, num_mel_bins)``.

    Option names and defaults are Kaldi's (as in ``torchaudio.compliance.kaldi.fbank``); see the
    module docstring for which are supported. Every leading axis is a separate clip (a single
    clip ``(samples,)`` gives ``(frames, num_mel_bins)``); all clips are computed together on
    ``waveform``'s device. Float32 in, float32 out; float64 stays float64; other floating dtypes
    are computed in float32. Autocast is disabled inside: half-precision energies would lose the
    quiet bins and break the epsilon floor.
    """
    if not isinstance(waveform, Tensor):
        raise TypeError(f"kaldi_fbank: expected a waveform tensor, got {type(waveform).__name__}")
    if not waveform.is_floating_point():
        raise TypeError(f"kaldi_fbank: expected a floating-point waveform, got dtype {waveform.dtype}")
    if waveform.dim() < 1:
        raise ValueError("kaldi_fbank: expected a waveform of shape (..., samples), got a scalar")
    _check_options(options)
    if window_type not in WINDOWS:
        raise ValueError(f"kaldi_fbank: window_type {window_type!r} is not supported; use one of {WINDOWS}")
    if sample_frequency <= 0:
        raise ValueError(f"kaldi_fbank: sample_frequency must be positive, got {sample_frequency}")
    window, hop, padded = _frame_geometry(sample_frequency, frame_shift, frame_length)
    if waveform.shape[-1] < window:
        raise ValueError(f"kaldi_fbank: a clip needs at least {window} samples (one {frame_length} ms frame at "
                         f"{sample_frequency} Hz), got a waveform of shape {tuple(waveform.shape)}")
    if waveform.dtype not in (torch.float32, torch.float64):
        waveform = waveform.float()
    device, dtype = waveform.device, waveform.dtype
    low_freq = float(options.get("low_freq", _FIXED_OPTIONS["low_freq"]))
    high_freq = float(options.get("high_freq", _FIXED_OPTIONS["high_freq"]))
    banks_t = _cached_banks(int(num_mel_bins), padded, float(sample_frequency), low_freq, high_freq, dtype, device)
    window_fn = kaldi_window(window_type, window, dtype, device)
    leading, length = waveform.shape[:-1], waveform.shape[-1]
    clips = waveform.reshape(math.prod(leading), length)
    frames_per_clip = 1 + (length - window) // hop
    if clips.shape[0] == 0:  # the FFT refuses empty batches
        return waveform.new_zeros(*leading, frames_per_clip, int(num_mel_bins))
    # In-place steps save a third of the memory traffic; they are only skipped when autograd must
    # see every intermediate.
    inplace = not (torch.is_grad_enabled() and waveform.requires_grad)
    # On the CPU the batch goes through in pieces of about CPU_CHUNK_FRAMES frames, so that a
    # piece's intermediates (frames x 512 floats, ~2 MB for a 10-s clip) stay in the caches:
    # measured on 32 10-s clips, 1-clip pieces 610 clips/s, 8-clip pieces 350, one pass 210
    # (benchmarks/bench_frontends.py).
    with torch.autocast(device_type=device.type, enabled=False):
        out = in_cpu_pieces(lambda chunk: _fbank_rows(chunk, window, hop, padded, window_fn, banks_t, inplace),
                            clips, CPU_CHUNK_FRAMES, frames_per_clip)
    return out.reshape(*leading, frames_per_clip, out.shape[-1])


def _fbank_rows(clips: Tensor, window: int, hop: int, padded: int, window_fn: Tensor, banks_t: Tensor,
                inplace: bool) -> Tensor:
    """Log-mel ``(N, frames, mels)`` of ``clips`` ``(N, samples)``: every float op is torchaudio's, in its order."""
    frames = clips.unfold(-1, window, hop)  # (N, frames, window): a strided view, no copy
    frames = frames - frames.mean(dim=-1, keepdim=True)
    # Kaldi's pre-emphasis edge rule: the first sample of a frame is its own predecessor. (Both
    # supported windows are 0 at that sample, so the rule cannot change the output; it is kept
    # so that the frames equal Kaldi's before windowing too.)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    if inplace:
        frames.sub_(previous.mul_(PREEMPHASIS)).mul_(window_fn)
    else:
        frames = (frames - PREEMPHASIS * previous) * window_fn
    # rfft's n= zero-pads each frame to the power of two (the same transform as padding first)
    power = torch.fft.rfft(frames, n=padded).abs()
    power = power.pow_(2.0) if inplace else power.pow(2.0)
    energies = torch.matmul(power, banks_t)
    return energies.clamp_min_(KALDI_EPSILON).log_() if inplace else energies.clamp_min(KALDI_EPSILON).log()
