"""Waveform -> log-mel frontends.

`AugmentMelSTFT` is the 32 kHz log-mel frontend of EfficientAT and PaSST. In eval mode it
is deterministic and numerically equal to both references (they differ only in the
default `fmax`); in train mode it adds the references' augmentations: a random jitter of
the filterbank's lowest/highest frequency per batch, and SpecAugment-style frequency and
time masks drawn independently per example.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..hardware import in_cpu_pieces

# Kaldi's mel scale (natural log, 1127 factor), which both references use through
# torchaudio.compliance.kaldi.get_mel_banks.
_MEL_FACTOR = 1127.0
_MEL_BREAK_HZ = 700.0
CPU_CHUNK_SAMPLES = 1 << 19  # waveform samples per CPU piece (one 10-s clip at 32 kHz): see AugmentMelSTFT.forward


def _hz_to_mel(freq: Tensor | float) -> Tensor | float:
    if isinstance(freq, Tensor):
        return _MEL_FACTOR * torch.log1p(freq / _MEL_BREAK_HZ)
    return _MEL_FACTOR * math.log1p(freq / _MEL_BREAK_HZ)


def kaldi_mel_filterbank(n_mels: int, n_fft: int, sample_rate: float, fmin: float, fmax: float) -> Tensor:
    """Triangular Kaldi-style mel filters as a (n_mels, n_fft // 2 + 1) matrix.

    Filters are triangles in the mel domain between `n_mels + 2` equally spaced mel
    points, evaluated at the FFT bin frequencies `j * sr / n_fft` for j < n_fft / 2,
    without area normalisation. Kaldi leaves the Nyquist bin out; a zero column is
    appended so the matrix multiplies a full one-sided power spectrum.
    """
    if fmax <= 0:
        fmax += sample_rate / 2  # Kaldi convention: non-positive fmax is an offset from Nyquist
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(
            f"mel filterbank needs 0 <= fmin < fmax <= sr/2, got fmin={fmin}, fmax={fmax}, sr={sample_rate}")
    # float32 arithmetic on purpose: it is what the references compute with.
    mel_low, mel_high = _hz_to_mel(float(fmin)), _hz_to_mel(float(fmax))
    mel_step = (mel_high - mel_low) / (n_mels + 1)
    index = torch.arange(n_mels, dtype=torch.float32).unsqueeze(1)
    left = mel_low + index * mel_step
    center = mel_low + (index + 1.0) * mel_step
    right = mel_low + (index + 2.0) * mel_step
    bin_width = sample_rate / n_fft
    bin_mels = _hz_to_mel(bin_width * torch.arange(n_fft // 2, dtype=torch.float32)).unsqueeze(0)
    rising = (bin_mels - left) / (center - left)
    falling = (right - bin_mels) / (right - center)
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1), value=0.0)


def _iid_mask(spec: Tensor, max_width: int, axis: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Zero one random band along `axis` (1 = mel, 2 = time), drawn independently per example.

    The distribution and the random draws are torchaudio's iid masking (`mask_along_axis_iid`,
    which EfficientAT's `FrequencyMasking/TimeMasking(iid_masks=True)` run): per example
    `value = U * max_width`, `start = U' * (size - value)`, and the band is
    `[floor(start), floor(start) + floor(value))` - so widths are 0 .. max_width - 1.
    """
    batch, size = spec.shape[0], spec.shape[axis]
    value = torch.rand(batch, device=spec.device, dtype=spec.dtype, generator=generator) * max_width
    start = torch.rand(batch, device=spec.device, dtype=spec.dtype, generator=generator) * (size - value)
    start, end = start.long(), start.long() + value.long()  # truncation == floor: both are >= 0
    positions = torch.arange(size, device=spec.device).view(1, -1)
    masked = (positions >= start.view(-1, 1)) & (positions < end.view(-1, 1))  # (B, size)
    masked = masked.unsqueeze(2) if axis == 1 else masked.unsqueeze(1)
    return spec.masked_fill(masked, 0.0)


class AugmentMelSTFT(nn.Module):
    """Pre-emphasis -> STFT power -> Kaldi mel filterbank -> log -> (x + 4.5) / 5.

    Args use EfficientAT's names and defaults. `fmax=None` means
    `sr // 2 - fmax_aug_range // 2` (15 kHz with EfficientAT's defaults, 15.5 kHz with
    PaSST's `fmax_aug_range=1000`). `htk` and `norm` are accepted for PaSST argument
    compatibility and have no effect (PaSST ignores them too).

    Input: waveform (batch, samples) float. Output: log-mel (batch, n_mels, frames) with
    frames = 1 + (samples - 1) // hopsize.
    """

    def __init__(
        self,
        n_mels: int = 128,
        sr: int = 32000,
        win_length: int = 800,
        hopsize: int = 320,
        n_fft: int = 1024,
        freqm: int = 48,
        timem: int = 192,
        fmin: float = 0.0,
        fmax: Optional[float] = None,
        fmin_aug_range: int = 10,
        fmax_aug_range: int = 2000,
        htk: bool = False,
        norm: int = 1,
    ) -> None:
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft})")
        if fmax is None:
            fmax = sr // 2 - fmax_aug_range // 2
        if fmin_aug_range < 1 or fmax_aug_range < 1:
            raise ValueError("fmin_aug_range and fmax_aug_range must be >= 1 (1 means no jitter)")
        self.n_mels, self.sr, self.win_length, self.hopsize, self.n_fft = n_mels, sr, win_length, hopsize, n_fft
        self.freqm, self.timem = freqm, timem
        self.fmin, self.fmax = float(fmin), float(fmax)
        self.fmin_aug_range, self.fmax_aug_range = fmin_aug_range, fmax_aug_range
        # Neither buffer is persistent: checkpoints of the references hold no frontend state.
        self.register_buffer("window", torch.hann_window(win_length, periodic=False), persistent=False)
        self.register_buffer("eval_mel_basis", kaldi_mel_filterbank(n_mels, n_fft, sr, self.fmin, self.fmax),
                             persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a waveform of `num_samples` samples."""
        return 1 + (num_samples - 1) // self.hopsize

    def extra_repr(self) -> str:
        return (f"n_mels={self.n_mels}, sr={self.sr}, win_length={self.win_length}, hopsize={self.hopsize}, "
                f"n_fft={self.n_fft}, fmin={self.fmin}, fmax={self.fmax}, freqm={self.freqm}, timem={self.timem}")

    def _log_mel(self, waveform: Tensor, mel_basis: Tensor) -> Tensor:
        # Pre-emphasis without padding: y[n] = x[n+1] - 0.97 x[n].
        emphasised = waveform[:, 1:] - 0.97 * waveform[:, :-1]
        spectrum = torch.stft(emphasised, self.n_fft, hop_length=self.hopsize, win_length=self.win_length,
                              window=self.window, center=True, pad_mode="reflect", normalized=False,
                              onesided=True, return_complex=True)
        power = spectrum.real.square() + spectrum.imag.square()
        # The matmul stays in float32 under autocast: fp16 mel energies lose the quiet bins.
        with torch.autocast(device_type=power.device.type, enabled=False):
            mel = torch.matmul(mel_basis, power)
        return (mel + 1e-5).log()

    def _mel_basis(self) -> Tensor:
        if not self.training or (self.fmin_aug_range == 1 and self.fmax_aug_range == 1):
            return self.eval_mel_basis
        # One random filterbank range per batch (reference behaviour): fmin moves up by
        # [0, fmin_aug_range), fmax moves within +-fmax_aug_range/2.
        fmin = self.fmin + torch.randint(self.fmin_aug_range, (1,)).item()
        fmax = self.fmax + self.fmax_aug_range // 2 - torch.randint(self.fmax_aug_range, (1,)).item()
        fmax = min(fmax, self.sr / 2)
        return kaldi_mel_filterbank(self.n_mels, self.n_fft, self.sr, fmin, fmax).to(self.window.device)

    def forward(self, waveform: Tensor) -> Tensor:
        if waveform.dim() != 2:
            hint = " (drop the channel axis: downmix to mono first)" if waveform.dim() == 3 else ""
            raise ValueError(
                f"AugmentMelSTFT expects a waveform batch of shape (batch, samples), got shape "
                f"{tuple(waveform.shape)}{hint}")
        if waveform.shape[1] < 2:
            raise ValueError(f"AugmentMelSTFT needs at least 2 samples per waveform, got shape {tuple(waveform.shape)}")
        waveform = waveform.float()
        mel_basis = self._mel_basis()  # one (random, in training) filterbank for the whole batch
        # On the CPU the batch goes through in pieces of about CPU_CHUNK_SAMPLES samples, so that a
        # piece's spectrum (513 x frames complex per clip, 4 MB for 10 s) stays in the caches:
        # measured on 32 10-s clips, 1-clip pieces ~400 clips/s, one pass ~155; the same values bit
        # for bit. Masks are drawn afterwards for the whole batch, so the random draws do not change.
        log_mel = in_cpu_pieces(lambda piece: self._log_mel(piece, mel_basis), waveform, CPU_CHUNK_SAMPLES,
                                waveform.shape[1])
        if self.training:
            if self.freqm > 0:
                log_mel = _iid_mask(log_mel, self.freqm, axis=1)
            if self.timem > 0:
                log_mel = _iid_mask(log_mel, self.timem, axis=2)
        return (log_mel + 4.5) / 5.0


class GraphMelFrontend(nn.Module):
    """``AugmentMelSTFT`` (eval mode) in an exportable form: float32 pre-emphasis, float64 STFT.

    Same function as the frontend it is built from (``(x + 4.5) / 5`` of the log-mel of the
    pre-emphasised, centred, reflect-padded STFT power); the STFT runs in float64 (``export/onnx.py``:
    a float32 ONNX STFT moves quiet log-mel bands by 4.5e-6, which the model amplifies; float64 stays
    within torch's own float32 rounding). Input (B, samples) float32, output (B, n_mels, frames).
    Kept here, beside ``AugmentMelSTFT``, so a change to one is seen next to the other
    (tests/test_frontend.py checks that they stay equal).
    """

    def __init__(self, frontend: AugmentMelSTFT) -> None:
        super().__init__()
        if not isinstance(frontend, AugmentMelSTFT):
            raise TypeError(f"GraphMelFrontend needs an AugmentMelSTFT frontend, got {type(frontend).__name__}")
        self.n_fft, self.hopsize, self.win_length = int(frontend.n_fft), int(frontend.hopsize), int(frontend.win_length)
        self.register_buffer("window", frontend.window.detach().double().clone(), persistent=False)
        self.register_buffer("mel_basis", frontend.eval_mel_basis.detach().float().clone(), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        waveform = waveform.float()
        emphasised = waveform[:, 1:] - 0.97 * waveform[:, :-1]  # float32, bit-identical to the frontend
        spectrum = torch.stft(emphasised.double(), self.n_fft, hop_length=self.hopsize, win_length=self.win_length,
                              window=self.window, center=True, pad_mode="reflect", normalized=False,
                              onesided=True, return_complex=True)
        power = (spectrum.real.square() + spectrum.imag.square()).float()
        mel = torch.matmul(self.mel_basis, power)
        return ((mel + 1e-5).log() + 4.5) / 5.0
