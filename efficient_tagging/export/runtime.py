"""The ONNX tagger: an exported model, run by ONNX Runtime or OpenVINO (`engines`), with the tagging API."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..frontends import build_frontend
from ..models.layers import sliding_window_starts
from ..tagging.tagger import AudioTagger, BlockFactory, TaggingMixin, check_model_input
from .engines import load_engine
from .metadata import PathLike, read_onnx_metadata

logger = logging.getLogger(__name__)


def _as_tagger(tagger_or_model: Union[AudioTagger, nn.Module]) -> AudioTagger:
    if isinstance(tagger_or_model, AudioTagger):
        return tagger_or_model
    if isinstance(tagger_or_model, nn.Module):
        return AudioTagger(tagger_or_model, label_map=getattr(tagger_or_model, "label_map", None))
    raise TypeError(f"export_onnx needs an AudioTagger or a model (nn.Module), got {type(tagger_or_model).__name__}")


# --------------------------------------------------------------------------------------
# ONNX Runtime tagger
# --------------------------------------------------------------------------------------
class SpectrogramModel:
    """`model(spectrogram) -> (logits, empty embedding)` around an exported graph: the call
    `forward_spectrogram` makes on PyTorch models. `logits_of` takes a float32 CPU (B, 1, n_mels,
    frames) tensor (OnnxTagger: its windows for teacher graphs; `backends`: an engine's run);
    `backend` names what computes it."""

    def __init__(self, logits_of: Callable[[Tensor], Tensor], backend: str) -> None:
        self.logits_of = logits_of
        self.backend = backend

    @classmethod
    def of_engine(cls, engine: Any) -> "SpectrogramModel":
        return cls(lambda spectrogram: torch.from_numpy(engine.run(spectrogram.numpy())), engine.runtime)

    def __call__(self, spectrogram: Tensor) -> tuple[Tensor, Tensor]:
        if spectrogram.dim() == 3:
            spectrogram = spectrogram.unsqueeze(1)
        logits = self.logits_of(spectrogram.detach().float().cpu().contiguous())
        return logits, logits.new_zeros(logits.shape[0], 0)


class OnnxTagger(TaggingMixin):
    """An exported model run by ONNX Runtime (default) or OpenVINO (`runtime="openvino"`), with
    :class:`AudioTagger`'s tagging API.

    `forward(waveform (B, samples)) -> logits (B, C)` (also `tagger(waveform)`); `probabilities`,
    `file_probabilities`, `tag_waveform`, `tag_file`, `top_k` come from `TaggingMixin`, with the
    same input rules (NaN/Inf refused, short inputs repeated/padded to the trained clip length).
    Waveform graphs take the audio directly; for spectrogram graphs the PyTorch frontend of the
    stored preprocessing runs first. Label map, sample rate, task, clip length come from the
    file's metadata. `providers`: ONNX Runtime execution providers (default CPU); `threads`:
    intra-op threads (default: the runtime's choice); `cache_dir`: OpenVINO's compiled-kernel cache.

    Long inputs (`stream_logits`, files longer than `chunk_seconds`): the graphs are dynamic in
    time, so the blocks are concatenated and the model runs once over the whole input -- exact
    (no window approximation, unlike `AudioTagger`'s bounded-memory path), but memory grows with
    the length (about 2.5 GB per 10 min of audio for mn10 on CPU). Teacher graphs (fixed longest
    window) run the windows of `sliding_window_forward` and average their logits.
    """

    def __init__(self, path: PathLike, *, providers: Optional[Sequence[Any]] = None,
                 threads: Optional[int] = None, runtime: str = "onnxruntime",
                 cache_dir: Optional[PathLike] = None) -> None:
        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        self.engine = load_engine(self.path, runtime, providers=providers, threads=threads, cache_dir=cache_dir)
        meta = self.metadata
        width = self.engine.output_width
        # the label map must name every output: a file whose metadata says otherwise is refused
        self.contract = meta.contract.validate(str(self.path), num_outputs=width)
        self.num_classes = len(meta.label_map)
        self.preprocessing = dict(meta.preprocessing)
        self.input_kind = meta.input_kind
        self.frontend: Optional[nn.Module] = (build_frontend(meta.preprocessing).eval()
                                              if meta.input_kind == "spectrogram" else None)
        # Spectrogram graphs also serve the windowed and streaming paths, which run the model on
        # slices of one continuous spectrogram (tagging/windows.py): `model(spectrogram)` like a
        # PyTorch model. Waveform graphs have no spectrogram input, so no `model`.
        self.model: Optional[SpectrogramModel] = (SpectrogramModel(self.spectrogram_logits, self.engine.runtime)
                                                  if meta.input_kind == "spectrogram"
                                                   else None)

    def __repr__(self) -> str:
        return (f"OnnxTagger({str(self.path)!r}, input={self.input_kind}, classes={self.num_classes}, "
                f"sample_rate={self.sample_rate}, {self.engine.describe()})")

    @property
    def input_name(self) -> str:
        """The graph's input name ("spectrogram" or "waveform")."""
        return self.engine.input_name

    @property
    def session(self) -> Any:
        """The ONNX Runtime session (runtime "onnxruntime" only)."""
        return self.engine.session

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # inputs and outputs live on the host; ORT's providers place the work

    def to(self, *args: Any, **kwargs: Any) -> "OnnxTagger":
        """No-op for API compatibility with AudioTagger: the providers given at construction decide."""
        return self

    def eval(self) -> "OnnxTagger":
        return self

    def __call__(self, waveform: Tensor) -> Tensor:
        return self.forward(waveform)

    def _run(self, array: np.ndarray) -> Tensor:
        return torch.from_numpy(self.engine.run(array))

    def forward(self, waveform: Tensor) -> Tensor:
        """Logits (B, C) of a waveform batch (B, samples) at `sample_rate`: one pass over the whole input."""
        if not isinstance(waveform, Tensor):
            waveform = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
        if waveform.dim() == 1:
            waveform = waveform.reshape(1, -1)
        check_model_input(waveform, self.min_samples, self.sample_rate)
        waveform = waveform.detach().float().cpu()
        if self.frontend is None:
            return self._run(waveform.numpy())
        with torch.no_grad():
            spectrogram = self.frontend(waveform)
        if spectrogram.dim() == 3:
            spectrogram = spectrogram.unsqueeze(1)
        return self.spectrogram_logits(spectrogram)

    def spectrogram_logits(self, spectrogram: Tensor) -> Tensor:
        """Logits of a (B, 1, n_mels, frames) spectrogram (spectrogram graphs; teachers in windows)."""
        if self.input_kind != "spectrogram":
            raise ValueError(f"{self.path} takes waveforms, not spectrograms")
        window = self.metadata.window_frames
        frames = spectrogram.shape[-1]
        if window is None or frames <= window:
            return self._run(spectrogram.numpy())
        hop = self.metadata.hop_frames or max(1, window // 4)
        starts = sliding_window_starts(frames, window, hop)
        total = sum(self._run(spectrogram[..., s:s + window].contiguous().numpy()) for s in starts)
        return total / len(starts)

    @torch.no_grad()
    def stream_logits(self, make_blocks: BlockFactory) -> Tensor:
        blocks = [block.reshape(-1).float() for block in make_blocks()]
        if not blocks:
            raise ValueError("no audio to tag: the waveform is empty")
        return self.forward(torch.cat(blocks).reshape(1, -1))


def max_logit_difference(torch_tagger: Union[AudioTagger, nn.Module], onnx_tagger: Union[OnnxTagger, PathLike],
                         waveform: Tensor) -> float:
    """Max |logit(ONNX Runtime) - logit(PyTorch)| over a waveform (samples,) or batch (B, samples)."""
    tagger = _as_tagger(torch_tagger)
    runner = onnx_tagger if isinstance(onnx_tagger, OnnxTagger) else OnnxTagger(onnx_tagger)
    waveform = waveform.reshape(1, -1) if waveform.dim() == 1 else waveform
    with torch.no_grad():
        expected = tagger(waveform.to(tagger.device)).float().cpu()
    return float((runner(waveform) - expected).abs().max())
