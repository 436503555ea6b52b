"""Tagging audio with a trained model: waveform/file -> class probabilities -> top-k labels.

`AudioTagger` bundles a model with the frontend it was trained with and its label map. It
is the piece the inference scripts, evaluation and (later) windowed tagging share.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..audio import AudioSource, load_audio
from ..frontends import build_frontend, frontend_sample_rate
from ..labels import LabelMap, audioset_labels
from ..models.factory import get_model, read_checkpoint
from ..models.layers import forward_spectrogram


@dataclass(frozen=True)
class Tag:
    label: str
    index: int
    probability: float


class TaggingMixin:
    """Tagging on top of `forward(waveform (B, samples)) -> logits (B, C)`.

    Shared by `AudioTagger` (one model) and `models.ensemble.TeacherEnsemble` (several).
    The class needs `sample_rate`, `label_map`, `device` and `min_samples` (shortest useful input).
    """

    sample_rate: int
    label_map: LabelMap
    min_samples: int = 1024

    @torch.no_grad()
    def probabilities(self, waveform: Tensor) -> Tensor:
        """Sigmoid class probabilities for a waveform batch (B, samples) at `self.sample_rate`."""
        return torch.sigmoid(self(waveform)).float().cpu()  # type: ignore[operator]

    def top_k(self, probabilities: Tensor, k: int = 10) -> list[Tag]:
        values, indices = probabilities.topk(min(k, probabilities.numel()))
        return [Tag(self.label_map.names[i], int(i), float(p)) for p, i in zip(values.tolist(), indices.tolist())]

    def tag_waveform(self, waveform: Tensor, top_k: int = 10) -> list[Tag]:
        """Top-k tags of one mono waveform (samples,) at `self.sample_rate`."""
        return self.top_k(self.probabilities(waveform.reshape(1, -1))[0], top_k)

    def tag_file(self, source: AudioSource, top_k: int = 10) -> list[Tag]:
        """Decode any PyAV-readable file (any sample rate; resampled) and return its top-k tags."""
        waveform = load_audio(source, self.sample_rate)
        # A file shorter than the clips the model was trained on is zero-padded to that length,
        # as training and evaluation pad them (clip length stored with the checkpoint, if any);
        # anything shorter than one frame of real content is padded to that.
        clip_samples = int(round((getattr(self, "clip_length", None) or 0.0) * self.sample_rate))
        shortest = max(self.min_samples, clip_samples)
        if waveform.numel() < shortest:
            waveform = torch.nn.functional.pad(waveform, (0, shortest - waveform.numel()))
        return self.tag_waveform(waveform, top_k)


class AudioTagger(TaggingMixin, nn.Module):
    """Model + frontend + labels. `forward(waveform (B, samples))` returns logits (B, C).

    The frontend comes from the model's `preprocessing` (`build_frontend`): EfficientAT mel,
    PaSST mel or AST fbank. Transformer teachers (PaSST, AST: `needs_sliding_windows`) tag
    inputs longer than their trained length as the mean of the logits of overlapping windows.
    """

    def __init__(self, model: nn.Module, frontend: Optional[nn.Module] = None,
                 label_map: Optional[LabelMap] = None, sample_rate: Optional[int] = None) -> None:
        super().__init__()
        preprocessing = getattr(model, "preprocessing", None) or {}
        self.model = model.eval()
        self.frontend = (frontend or build_frontend(preprocessing)).eval()
        self.sample_rate = int(sample_rate or frontend_sample_rate(self.frontend, preprocessing.get("sr", 32000)))
        self.preprocessing = dict(preprocessing)
        # seconds per clip the model was trained with (this project's checkpoints store it); None if unknown
        self.clip_length: Optional[float] = (float(preprocessing["clip_length"])
                                             if preprocessing.get("clip_length") is not None else None)
        num_classes = int(getattr(model, "num_classes", 0) or (len(label_map) if label_map else 0))
        if label_map is not None and num_classes and len(label_map) != num_classes:
            raise ValueError(f"label map has {len(label_map)} classes but the model outputs {num_classes}")
        if label_map is None:
            label_map = LabelMap.from_names([f"class_{i}" for i in range(num_classes)])
        self.label_map = label_map
        self.num_classes = len(label_map)
        self.min_samples = int(getattr(self.frontend, "n_fft", None)
                               or getattr(self.frontend, "frame_length_samples", None) or 1024)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, labels_path: Union[str, Path, None] = None,
                        cache_dir: Union[str, Path, None] = None, weights: Union[str, Path, None] = None,
                        **config: Any) -> "AudioTagger":
        """A tagger for a catalogue name or a checkpoint path (see `get_model`)."""
        model = get_model(name_or_path, cache_dir=cache_dir, weights=weights, **config)
        label_map = getattr(model, "label_map", None)
        if label_map is None and getattr(model, "dataset", None) == "audioset":
            label_map = audioset_labels(labels_path, cache=cache_dir)
        return cls(model, label_map=label_map)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, waveform: Tensor) -> Tensor:
        logits, _ = forward_spectrogram(self.model, self.frontend(waveform.to(self.device)))
        return logits


def load_tagger(model_name: Optional[str], model_path: Union[str, Path, None] = None, *,
                labels_path: Union[str, Path, None] = None, cache_dir: Union[str, Path, None] = None) -> AudioTagger:
    """The tagger the command lines mean by `--model_name` / `--model_path`.

    A checkpoint written by this project describes itself; a plain official state_dict at
    `model_path` is loaded into the catalogue architecture `model_name`.
    """
    if model_path is None:
        if not model_name:
            raise ValueError("give a catalogue model name or a checkpoint path")
        return AudioTagger.from_pretrained(model_name, labels_path=labels_path, cache_dir=cache_dir)
    _, metadata = read_checkpoint(model_path)
    if metadata or not model_name:
        return AudioTagger.from_pretrained(str(model_path), labels_path=labels_path, cache_dir=cache_dir)
    return AudioTagger.from_pretrained(model_name, weights=model_path, labels_path=labels_path, cache_dir=cache_dir)
