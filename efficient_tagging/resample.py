"""Band-limited resampling in plain torch: a Hann-windowed sinc filter applied as a strided convolution.

This is the resampler of the whole project (`efficient_tagging.audio.resample` and the streaming
resampler use it). It computes the same thing as `torchaudio.functional.resample(waveform, orig,
new)` with its defaults (`resampling_method="sinc_interp_hann"`, `lowpass_filter_width=6`,
`rolloff=0.99`), which made the reference fixtures and the project's earlier caches, but needs
no torchaudio, runs on a whole batch `(..., time)` at once and on the input's device:

* the rates are reduced by their gcd to `orig`/`new`; `new` output phases repeat every `orig`
  input samples, so output `k * new + j` is the dot product of input samples
  `k * orig - width .. k * orig + orig + width - 1` with the kernel of phase `j`;
* kernel of phase `j` at input offset `i`: with `t = (i / orig - j / new) * cutoff`, `cutoff =
  0.99 * min(orig, new)` and `t` clipped to [-6, 6], the tap is
  `sinc(pi t) * cos(pi t / 12) ** 2 * cutoff / orig` (a low-pass at 99 % of the lower Nyquist
  frequency, windowed to 6 zero crossings either side); `width = ceil(6 * orig / cutoff)`;
* the input is zero-padded by `width` before and `width + orig` after, convolved with stride
  `orig`, the phases interleaved, and the output cut to `ceil(new * length / orig)` samples.

The kernel is evaluated in the input's dtype with the same float operations in the same order as
torchaudio's: the float32 rounding of the tap positions is part of the result (a kernel evaluated
in float64 moves 44.1 -> 32 kHz outputs by up to 1e-5 and no longer reproduces the fixtures'
resampled input to 1e-6). It is built once on the CPU per (orig, new, dtype) and cached per device. CPU results equal torchaudio's bit for bit in
the measured cases; the one deliberate difference is the output length for outputs of more than
2**24 samples, which torchaudio computes in float32 (it can be off by a few samples there) and
this module exactly.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .hardware import in_cpu_pieces

__all__ = ["LOWPASS_FILTER_WIDTH", "ROLLOFF", "resampled_length", "sinc_kernel_width", "sinc_resample",
           "sinc_resample_kernel"]

LOWPASS_FILTER_WIDTH = 6  # zero crossings of the sinc either side of the centre
ROLLOFF = 0.99  # cut-off as a fraction of the lower of the two Nyquist frequencies
CPU_CHUNK_SAMPLES = 1 << 21  # input samples per CPU piece (four 10-s clips at 44.1 kHz): see sinc_resample


def _reduce(orig_sr: int, target_sr: int) -> tuple[int, int]:
    if isinstance(orig_sr, bool) or isinstance(target_sr, bool) or int(orig_sr) != orig_sr or int(target_sr) != target_sr:
        raise ValueError(f"sample rates must be integers (scale both to keep the ratio), got {orig_sr} -> {target_sr}")
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    gcd = math.gcd(orig_sr, target_sr)
    return orig_sr // gcd, target_sr // gcd


def sinc_kernel_width(orig_sr: int, target_sr: int) -> int:
    """Input samples the kernel reaches beyond each block of `orig` (reduced) inputs."""
    orig, new = _reduce(orig_sr, target_sr)
    return math.ceil(LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * ROLLOFF))


def resampled_length(num_samples: int, orig_sr: int, target_sr: int) -> int:
    """Output samples for `num_samples` inputs: ceil(num_samples * target / orig), in exact integer arithmetic."""
    orig, new = _reduce(orig_sr, target_sr)
    return -(-int(num_samples) * new // orig)


@functools.lru_cache(maxsize=32)
def _cpu_kernel(orig: int, new: int, dtype: torch.dtype) -> Tensor:
    cutoff = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / cutoff)
    # Evaluated in `dtype`, operation by operation as torchaudio does (see the module docstring):
    # positions of the taps in input periods, shifted back by each output phase, in units of the cut-off.
    taps = torch.arange(-width, width + orig, dtype=dtype) / orig
    phases = torch.arange(0, -new, -1, dtype=dtype) / new
    t = (phases.view(-1, 1, 1) + taps.view(1, 1, -1)) * cutoff
    t = t.clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    hann = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones((), dtype=dtype), t.sin() / t)
    return sinc * (hann * (cutoff / orig))  # (new, 1, 2 * width + orig): one filter per output phase


@functools.lru_cache(maxsize=32)
def _device_kernel(orig: int, new: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Built on the CPU and copied: the same taps whatever device resamples.
    return _cpu_kernel(orig, new, dtype).to(device)


def sinc_resample_kernel(orig_sr: int, target_sr: int, dtype: torch.dtype = torch.float32,
                         device: torch.device | str = "cpu") -> tuple[Tensor, int]:
    """`(kernel, width)`: the filters `(new, 1, 2 * width + orig)` for the gcd-reduced rates, cached
    per (orig, new, dtype, device)."""
    orig, new = _reduce(orig_sr, target_sr)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the resampling kernel is built in float32 or float64, got {dtype}")
    return _device_kernel(orig, new, dtype, torch.device(device)), sinc_kernel_width(orig, new)


def sinc_resample(waveform: Tensor, orig_sr: int, target_sr: int) -> Tensor:
    """Resample `waveform` `(..., time)` from `orig_sr` to `target_sr` Hz along the last axis.

    All leading axes are independent signals, resampled together on `waveform`'s device.
    float32 and float64 keep their dtype; other floating dtypes are computed and returned in
    float32. Equal rates return the input itself. Autocast is disabled inside (a half-precision
    convolution would add ~1e-3 of noise). Output length: `resampled_length(time, orig_sr, target_sr)`.
    """
    if not isinstance(waveform, Tensor):
        raise TypeError(f"expected a waveform tensor, got {type(waveform).__name__}")
    if not waveform.is_floating_point():
        raise TypeError(f"expected a floating-point waveform, got dtype {waveform.dtype}")
    if waveform.dim() == 0:
        raise ValueError("expected a waveform of shape (..., time), got a scalar")
    orig, new = _reduce(orig_sr, target_sr)
    if orig == new:
        return waveform
    if waveform.dtype not in (torch.float32, torch.float64):
        waveform = waveform.float()
    kernel, width = sinc_resample_kernel(orig, new, waveform.dtype, waveform.device)
    leading, length = waveform.shape[:-1], waveform.shape[-1]
    out_length = resampled_length(length, orig, new)
    signals = waveform.reshape(math.prod(leading), length)  # not (-1, length): length may be 0
    if signals.shape[0] == 0:
        return waveform.new_zeros(*leading, out_length)
    # On the CPU the signals go through in pieces of about CPU_CHUNK_SAMPLES input samples, so that
    # a piece's convolution output and its transposed copy stay in the caches: measured on 32
    # 10-s clips 44.1 -> 32 kHz, 4-clip pieces 440 clips/s, one pass 280 (the result is the same
    # bit for bit).
    with torch.autocast(device_type=waveform.device.type, enabled=False):
        out = in_cpu_pieces(lambda piece: _resample_rows(piece, kernel, width, orig, out_length),
                            signals, CPU_CHUNK_SAMPLES, length)
    return out.reshape(*leading, out_length)


def _resample_rows(signals: Tensor, kernel: Tensor, width: int, orig: int, out_length: int) -> Tensor:
    padded = torch.nn.functional.pad(signals, (width, width + orig))
    # (signals, new phases, blocks): block k of phase j is output k * new + j
    phased = torch.nn.functional.conv1d(padded.unsqueeze(1), kernel, stride=orig)
    return phased.transpose(1, 2).reshape(signals.shape[0], -1)[:, :out_length]
