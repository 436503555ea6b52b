"""Tagging audio with a trained model: audio/file -> class probabilities -> top-k labels.

`AudioTagger` bundles a model with the frontend it was trained with and its label map. It
is the piece the inference scripts, evaluation, tags over time, streaming and HEAR embeddings share.

Input rules (shared by `AudioTagger`, `TeacherEnsemble` and `export.OnnxTagger`): every tagger
holds one `frontends.InputContract` (`tagger.contract`), and every entry turns its input into the
model's input through it -- `probabilities`, `tag_waveform`, `tag_file`, tags over time, streaming
and HEAR. So:
- any audio array: torch or numpy, float or integer PCM (int16/int32/uint8/int8, scaled as audio),
  (samples,) or (batch, samples), with `sample_rate=` (default: the model's; other rates are
  resampled like decoded files are);
- NaN/Inf samples are refused (ValueError naming how many and where);
- inputs shorter than the clip length the model was trained with (stored in this project's
  checkpoints; 10 s for the catalogue's AudioSet models) are **repeated** to that length
  (`short_inputs = "repeat"`, the default: a 1-s clip zero-padded to 10 s would be 90 % silence,
  EfficientAT #3), or zero-padded at the end (`short_inputs = "pad"`, how training pads short
  clips) -- the same rule down to a single sample; `forward` (the raw model call) refuses inputs
  shorter than `min_samples` and never pads.
- Inputs longer than `chunk_seconds` (default 60 s) are tagged in bounded memory: files are
  decoded and resampled block by block and the spectrogram/model run in overlapping windows
  (`tagging.long_input`, which documents the combination rule and its measured accuracy). Shorter
  inputs are tagged in one pass, exactly as before.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import Tensor, nn

from ..audio import AudioSource, stream_audio
from ..frontends import build_frontend, frontend_sample_rate
from ..frontends.contract import SHORT_INPUT_RULES, InputContract, check_finite_waveform
from ..labels import LabelMap, audioset_labels
from ..models.factory import get_model, model_input_contract, read_checkpoint
from ..models.layers import forward_spectrogram
from ..models.registry import is_teacher
from .long_input import DEFAULT_CHUNK_SECONDS, WindowPlan, frame_geometry, plan_windows, stream_forward

logger = logging.getLogger(__name__)

BlockFactory = Callable[[], Iterator[Tensor]]
SHORT_INPUT_POLICIES = SHORT_INPUT_RULES


@dataclass(frozen=True)
class Tag:
    label: str
    index: int
    probability: float


def check_top_k(k: Any) -> int:
    """`k` as an int >= 1, or a ValueError saying what a top-k count must be."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be a positive integer (the number of tags to return), got {k!r}")
    return k


def check_model_input(waveform: Tensor, min_samples: int, sample_rate: int) -> None:
    """What a tagger's `forward` refuses: NaN/Inf, or fewer samples than one frontend window."""
    check_finite_waveform(waveform, sample_rate)
    if waveform.shape[-1] < min_samples:
        raise ValueError(
            f"waveform of shape {tuple(waveform.shape)} is too short: the model needs at least "
            f"{min_samples} samples ({1000 * min_samples / sample_rate:.1f} ms at {sample_rate} Hz); "
            f"tag_waveform / tag_file repeat or pad shorter inputs")


class TaggingMixin:
    """Tagging on top of `forward(waveform (B, samples)) -> logits (B, C)`.

    Shared by `AudioTagger` (one model), `TeacherEnsemble` (several) and `OnnxTagger`. The class
    sets `contract` (its `InputContract`) and provides `device`, `chunk_seconds` and
    `stream_logits` (logits of one long waveform given as blocks). `sample_rate`, `label_map`,
    `clip_length`, `min_samples`, `short_inputs` and `task` read (and, set, replace) the contract.
    """

    contract: InputContract
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS

    def _set_contract_field(self, name: str, value: Any) -> None:
        self.__dict__["contract"] = self.contract.replace(**{name: value})

    sample_rate = property(lambda self: self.contract.sample_rate)
    clip_length = property(lambda self: self.contract.clip_length,
                           lambda self, value: self._set_contract_field("clip_length", value))
    min_samples = property(lambda self: self.contract.min_samples,
                           lambda self, value: self._set_contract_field("min_samples", int(value)))
    short_inputs = property(lambda self: self.contract.short_inputs,
                            lambda self, value: self._set_contract_field("short_inputs", value))
    task = property(lambda self: self.contract.task,
                    lambda self, value: self._set_contract_field("task", value or "multilabel"))

    @property
    def label_map(self) -> LabelMap:
        labels = self.contract.labels
        return labels if labels is not None else LabelMap.from_names([f"class_{i}" for i in range(self.num_classes)])

    @label_map.setter
    def label_map(self, value: LabelMap) -> None:
        if value is not None and len(value) != self.num_classes:
            raise ValueError(f"label map has {len(value)} classes but the model outputs {self.num_classes}")
        self._set_contract_field("labels", value)

    @property
    def chunk_samples(self) -> int:
        """Inputs longer than this many samples are tagged in windows (bounded memory)."""
        return max(1, int(round(self.chunk_seconds * self.sample_rate)))

    def stream_logits(self, make_blocks: BlockFactory) -> Tensor:
        """Logits (1, C) of one long mono waveform: `make_blocks()` yields its 1-D blocks at
        `sample_rate` (a fresh iterator per call)."""
        raise NotImplementedError

    def _prepare_waveform(self, waveform: Any, sample_rate: Optional[int] = None) -> Tensor:
        """The model input for any audio (`InputContract.prepare`), with a logged note for inputs
        shorter than one analysis window."""
        waveform = self.contract.to_waveform(waveform, sample_rate)
        if waveform.shape[-1] < self.min_samples:
            logger.warning("waveform of %d samples (%.1f ms at %d Hz) is shorter than the %d samples the model "
                           "needs: %s to %d samples", waveform.shape[-1], 1000 * waveform.shape[-1] / self.sample_rate,
                           self.sample_rate, self.min_samples,
                           "repeated" if self.short_inputs == "repeat" else "zero-padded at the end",
                           self.contract.target_samples)
        return self.contract.fit_length(waveform)

    def logits_to_probabilities(self, logits: Tensor) -> Tensor:
        """Sigmoid per class for a multi-label model; softmax over classes for a single-label one
        (a checkpoint fine-tuned with task "multiclass", e.g. on ESC-50 or DCASE20)."""
        return self.contract.probabilities(logits)

    @torch.no_grad()
    def probabilities(self, waveform: Any, sample_rate: Optional[int] = None) -> Tensor:
        """Class probabilities (sigmoid; softmax for a single-label model) (B, C) for audio (samples,)
        or (batch, samples): torch or numpy, float or integer PCM, at `sample_rate` (default: the
        model's `self.sample_rate`; other rates are resampled).

        Waveforms longer than `chunk_seconds` are tagged in overlapping windows (bounded memory).
        """
        waveform = self._prepare_waveform(waveform, sample_rate)
        if waveform.shape[-1] <= self.chunk_samples:
            return self.logits_to_probabilities(self(waveform))  # type: ignore[operator]
        logits = [self.stream_logits(lambda row=row: iter(row.split(self.chunk_samples))) for row in waveform]
        return self.logits_to_probabilities(torch.cat(logits))

    @torch.no_grad()
    def file_probabilities(self, source: AudioSource) -> Tensor:
        """Sigmoid class probabilities (1, C) of a file (any PyAV-readable format and rate).

        The file is decoded and resampled block by block: memory does not grow with its length.
        """
        blocks = stream_audio(source, self.sample_rate, self.chunk_samples)
        first = next(blocks, None)  # the decoder raises on files with no samples; this is a safety net
        if first is None:
            raise ValueError(f"{source}: decoded to zero samples")
        second = next(blocks, None)
        if second is None:  # at most one chunk: one pass, as for a waveform
            return self.probabilities(first)
        opened = [itertools.chain([first, second], blocks)]

        def make_blocks() -> Iterator[Tensor]:  # ensembles read the file once per member
            return opened.pop() if opened else stream_audio(source, self.sample_rate, self.chunk_samples)

        return self.logits_to_probabilities(self.stream_logits(make_blocks))

    def top_k(self, probabilities: Tensor, k: int = 10) -> list[Tag]:
        values, indices = probabilities.topk(min(check_top_k(k), probabilities.numel()))
        return [Tag(self.label_map.names[i], int(i), float(p)) for p, i in zip(values.tolist(), indices.tolist())]

    def tag_waveform(self, waveform: Any, top_k: int = 10, sample_rate: Optional[int] = None) -> list[Tag]:
        """Top-k tags of one mono waveform (samples,) at `sample_rate` (default: the model's); any
        array type, as for `probabilities`."""
        check_top_k(top_k)
        waveform = self.contract.to_waveform(waveform, sample_rate)
        if waveform.shape[0] != 1:
            raise ValueError(f"tag_waveform takes one waveform (samples,), got shape {tuple(waveform.shape)}: "
                             f"use probabilities() for a batch")
        return self.top_k(self.probabilities(waveform)[0], top_k)

    def tag_file(self, source: AudioSource, top_k: int = 10) -> list[Tag]:
        """Decode any PyAV-readable file (any sample rate; resampled) and return its top-k tags.

        Files shorter than the stored training clip length are repeated (or padded) like waveforms;
        a file whose decoded duration differs from its header's (e.g. a truncated mp3) is tagged
        with a logged warning.
        """
        check_top_k(top_k)
        return self.top_k(self.file_probabilities(source)[0], top_k)


class AudioTagger(TaggingMixin, nn.Module):
    """Model + frontend + labels. `forward(waveform (B, samples))` returns logits (B, C).

    The frontend comes from the model's `preprocessing` (`build_frontend`): EfficientAT mel,
    PaSST mel or AST fbank. Transformer teachers (PaSST, AST: `needs_sliding_windows`) tag
    inputs longer than their trained length as the mean of the logits of overlapping windows.

    `chunk_seconds` (default 60): `probabilities` / `tag_waveform` / `tag_file` tag longer inputs
    in windows of at most this length, in memory that does not grow with the input
    (`tagging.long_input` gives the rule and its measured accuracy); `forward` always runs one pass.

    `fast` (default True): without gradients, the model runs as an inference copy
    (`models.fused.inference_copy`: BatchNorm folded into the convolutions, channels-last
    weights and, for float32 on a CPU, oneDNN convolutions with the activation and skip addition
    fused in and prepacked weights) under `torch.inference_mode` -- the same logits within float
    rounding (max relative error ~4e-6 on mn10, tests/test_inference_fast_path.py), about 2x faster
    on CPU (benchmarks/RESULTS.md). The copy is
    rebuilt when the model's weights, device, dtype or mode change; with gradients enabled, in
    train mode, or with `fast=False`, the model itself runs.
    """

    def __init__(self, model: nn.Module, frontend: Optional[nn.Module] = None,
                 label_map: Optional[LabelMap] = None, sample_rate: Optional[int] = None,
                 chunk_seconds: float = DEFAULT_CHUNK_SECONDS, short_inputs: str = "repeat",
                 fast: bool = True) -> None:
        super().__init__()
        if not isinstance(fast, bool):
            raise ValueError(f"fast must be True or False, got {fast!r}")
        self.fast = fast
        self._fast_model: Optional[nn.Module] = None
        self._fast_signature: Optional[tuple] = None
        self._compiled_model: Optional[Any] = None  # see `compiled_model`
        self._compiled_signature: Optional[tuple] = None
        if short_inputs not in SHORT_INPUT_POLICIES:
            raise ValueError(f"short_inputs must be one of {', '.join(SHORT_INPUT_POLICIES)}, got {short_inputs!r}")
        if isinstance(chunk_seconds, bool) or not isinstance(chunk_seconds, (int, float)) or not (
                math.isfinite(chunk_seconds) and chunk_seconds > 0):
            raise ValueError(f"chunk_seconds must be a positive number of seconds, got {chunk_seconds!r}")
        self.chunk_seconds = float(chunk_seconds)
        self._window_plan: Optional[WindowPlan] = None
        preprocessing = getattr(model, "preprocessing", None) or {}
        self.model = model.eval()
        self.frontend = (frontend or build_frontend(preprocessing)).eval()
        frontend_rate = frontend_sample_rate(self.frontend, preprocessing.get("sr", 32000))
        if sample_rate is not None and int(sample_rate) != frontend_rate:
            raise ValueError(f"sample_rate {sample_rate} Hz contradicts the frontend's {frontend_rate} Hz: give "
                             f"audio at another rate with probabilities(..., sample_rate=) instead")
        self.preprocessing = dict(preprocessing)
        num_classes = int(getattr(model, "num_classes", 0) or (len(label_map) if label_map else 0))
        if label_map is not None and num_classes and len(label_map) != num_classes:
            raise ValueError(f"label map has {len(label_map)} classes but the model outputs {num_classes}")
        self.num_classes = num_classes or (len(label_map) if label_map else 0)
        # what every path feeds the model: sample rate, frontend settings, clip length (this project's
        # checkpoints store it; 10 s for the catalogue's AudioSet models), shortest input, labels, task
        self.contract = model_input_contract(self.model, self.frontend, label_map=label_map, short_inputs=short_inputs)

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

    @property
    def chunk_frames(self) -> int:
        """Spectrogram frames of one chunk: the most frames the model sees at once on long inputs."""
        num_frames = getattr(self.frontend, "num_frames", None)
        return int(num_frames(self.chunk_samples)) if num_frames else self.chunk_samples // 320

    def window_plan(self) -> WindowPlan:
        """How long inputs are cut into model windows (CNN students; see `tagging.long_input`)."""
        if self._window_plan is None:
            n_mels = int(getattr(self.frontend, "n_mels", None) or getattr(self.frontend, "num_mel_bins", 128))
            self._window_plan = plan_windows(self.model, self.chunk_frames, n_mels)
        return self._window_plan

    @property
    def compiled_model(self) -> Optional[Any]:
        """Another engine computing this model's logits in `forward` (`export.backends.use_backend`:
        its exported graph in ONNX Runtime or OpenVINO): `compiled_model(spectrogram) -> (logits, _)`.
        Used where the fast path applies, while the model's weights are those it was made from."""
        return self._compiled_model

    @compiled_model.setter
    def compiled_model(self, engine: Optional[Any]) -> None:
        self._compiled_model = engine
        self._compiled_signature = self._model_signature() if engine is not None else None

    def _current_compiled_model(self) -> Optional[Any]:
        if self._compiled_model is not None and self._model_signature() != self._compiled_signature:
            logger.warning("the model changed after it was compiled for %s: tagging with PyTorch again",
                           getattr(self._compiled_model, "backend", "another backend"))
            self.compiled_model = None
        return self._compiled_model

    def forward(self, waveform: Tensor) -> Tensor:
        """Logits (B, C) of a waveform batch (B, samples): one pass over the whole input."""
        check_model_input(waveform, self.min_samples, self.sample_rate)
        if not self._fast_path_applies():
            logits, _ = forward_spectrogram(self.model, self.frontend(waveform.to(self.device)))
            return logits
        compiled = self._current_compiled_model()
        if compiled is not None:
            with torch.inference_mode():
                logits, _ = compiled(self.frontend(waveform.to(self.device)))
            return logits.clone()
        model = self.inference_model()
        with torch.inference_mode():
            logits, _ = forward_spectrogram(model, self.frontend(waveform.to(self.device)))
        return logits.clone()  # a normal tensor again (inference tensors refuse in-place ops outside the mode)

    def _fast_path_applies(self) -> bool:
        return self.fast and not torch.is_grad_enabled() and not self.model.training

    def _model_signature(self) -> tuple:
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return (tuple(id(t) for t in tensors), tuple(t._version for t in tensors),
                tuple({(t.device, t.dtype) for t in tensors}), self.model.training)

    def inference_model(self) -> nn.Module:
        """The module that computes this tagger's logits now: the fast inference copy (see the class
        doc) when `fast` is on, gradients are off and the model is in eval mode; else the model."""
        if not self._fast_path_applies():
            return self.model
        signature = self._model_signature()
        if self._fast_model is None or signature != self._fast_signature:
            from ..models.fused import count_foldable_batchnorms, inference_copy

            # no BatchNorm to fold (the transformer teachers): no copy, the model runs as it is
            fast = inference_copy(self.model) if count_foldable_batchnorms(self.model) else self.model
            self.__dict__["_fast_model"] = fast  # not a registered submodule: not in state_dict(), not moved by .to()
            self._fast_signature = signature
        return self._fast_model

    @torch.no_grad()
    def stream_logits(self, make_blocks: BlockFactory) -> Tensor:
        blocks = make_blocks()
        first = next(blocks, None)
        if first is None:
            raise ValueError("no audio to tag: the waveform is empty")
        second = next(blocks, None)
        if second is None and first.numel() <= self.chunk_samples:
            return self(first.reshape(1, -1))
        rest = itertools.chain([first] + ([second] if second is not None else []), blocks)
        if frame_geometry(self.frontend) is None:
            logger.warning("%s is not a frame-local frontend: tagging the whole input at once (memory grows with "
                           "its length)", type(self.frontend).__name__)
            return self(torch.cat(list(rest)).reshape(1, -1))
        plan = None if is_teacher(self.model) else self.window_plan()
        logits, _ = stream_forward(self.frontend, self.inference_model(), rest, self.chunk_frames, plan=plan,
                                   device=self.device)
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
    if not model_name:  # the checkpoint must describe itself: one read, in from_pretrained
        return AudioTagger.from_pretrained(str(model_path), labels_path=labels_path, cache_dir=cache_dir)
    _, metadata = read_checkpoint(model_path)
    if metadata:
        return AudioTagger.from_pretrained(str(model_path), labels_path=labels_path, cache_dir=cache_dir)
    return AudioTagger.from_pretrained(model_name, weights=model_path, labels_path=labels_path, cache_dir=cache_dir)
