"""Waveform -> spectrogram frontends: EfficientAT/PaSST log-mel (`mel.py`) and AST's input features
(`ast_fbank.py`), built on the batched Kaldi-compatible fbank (`kaldi_fbank.py`).

`build_frontend(preprocessing)` turns a model's `preprocessing` settings (stored in the
catalogue and in this project's checkpoints) into the eval-mode frontend it was trained with.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from .ast_fbank import ASTFbank, compute_fbank_stats
from .mel import AugmentMelSTFT

# The 32 kHz mel frontend every EfficientAT student was trained with (AugmentMelSTFT defaults).
DEFAULT_PREPROCESSING: dict[str, Any] = {"sr": 32000, "n_mels": 128, "win_length": 800, "hopsize": 320, "n_fft": 1024}

FRONTENDS = ("mel", "passt_mel", "ast_fbank")


def build_frontend(preprocessing: Optional[dict[str, Any]] = None) -> nn.Module:
    """The eval-mode frontend for a model's `preprocessing` settings.

    `preprocessing["frontend"]` picks the kind:
    - `"mel"` (default): EfficientAT's `AugmentMelSTFT` (EfficientAT defaults for missing keys);
    - `"passt_mel"`: the same class with PaSST's settings (`fmin_aug_range=1`,
      `fmax_aug_range=1000`, so fmax = sr/2 - 500 = 15.5 kHz at 32 kHz);
    - `"ast_fbank"`: AST's Kaldi fbank (`ASTFbank`, 16 kHz) padded to `target_length` frames
      and normalised with `norm_mean` / `norm_std`, in the `(B, 1, F, T)` layout. Longer clips
      keep all their frames (`cut_long=False`): `AudioTagger` tags them with sliding windows.
    """
    settings = dict(preprocessing or {})
    kind = settings.pop("frontend", "mel")
    if kind == "ast_fbank":
        from .ast_fbank import ASTFbank
        kwargs: dict[str, Any] = {}
        for key, name in (("target_length", "target_length"), ("norm_mean", "norm_mean"),
                          ("norm_std", "norm_std"), ("sr", "sample_rate"), ("n_mels", "num_mel_bins")):
            if key in settings:
                kwargs[name] = settings[key]
        return ASTFbank(layout="b1ft", cut_long=False, **kwargs).eval()
    if kind not in ("mel", "passt_mel"):
        raise ValueError(f"unknown frontend {kind!r} in preprocessing; known: {', '.join(FRONTENDS)}")
    settings = dict(DEFAULT_PREPROCESSING, **settings)
    extra = {k: settings[k] for k in ("fmin", "fmax", "fmin_aug_range", "fmax_aug_range") if k in settings}
    if kind == "passt_mel":
        extra.setdefault("fmin_aug_range", 1)
        extra.setdefault("fmax_aug_range", 1000)
    frontend = AugmentMelSTFT(n_mels=settings["n_mels"], sr=settings["sr"], win_length=settings["win_length"],
                              hopsize=settings["hopsize"], n_fft=settings["n_fft"], **extra)
    return frontend.eval()


def frontend_settings(frontend: nn.Module, preprocessing: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Settings that rebuild `frontend` with `build_frontend`: `preprocessing` (a model's stored
    settings, without its clip length) with the frontend's explicit values filled in, `sr` included."""
    settings = {k: v for k, v in dict(preprocessing or {}).items() if k != "clip_length"}
    if isinstance(frontend, AugmentMelSTFT):
        settings.update(sr=int(frontend.sr), n_mels=int(frontend.n_mels), win_length=int(frontend.win_length),
                        hopsize=int(frontend.hopsize), n_fft=int(frontend.n_fft), fmin=float(frontend.fmin),
                        fmax=float(frontend.fmax))
        settings.setdefault("frontend", "mel")
    elif isinstance(frontend, ASTFbank):
        settings.update(frontend="ast_fbank", sr=int(frontend.sample_rate), n_mels=int(frontend.num_mel_bins),
                        target_length=None if frontend.target_length is None else int(frontend.target_length), norm_mean=float(frontend.norm_mean),
                        norm_std=float(frontend.norm_std))
    return settings


def frontend_window_samples(frontend: nn.Module) -> int:
    """Samples of one analysis window of `frontend` (the STFT length; Kaldi's frame length)."""
    return int(getattr(frontend, "n_fft", None) or getattr(frontend, "frame_length_samples", None) or 1024)


def frontend_sample_rate(frontend: nn.Module, default: int = 32000) -> int:
    """Sample rate a frontend expects (`sr` of the mel frontends, `sample_rate` of ASTFbank)."""
    return int(getattr(frontend, "sr", None) or getattr(frontend, "sample_rate", None) or default)


from .contract import InputContract  # noqa: E402  (uses the frontends' floor only)

__all__ = ["ASTFbank", "AugmentMelSTFT", "DEFAULT_PREPROCESSING", "FRONTENDS", "InputContract", "build_frontend",
           "compute_fbank_stats", "frontend_sample_rate", "frontend_settings", "frontend_window_samples"]
