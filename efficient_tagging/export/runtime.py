"""The ONNX Runtime tagger: an exported model with the tagging API (`--backend onnx`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..frontends import build_frontend
from ..models.layers import sliding_window_starts
from ..tagging.tagger import AudioTagger, BlockFactory, TaggingMixin, check_model_input
from .metadata import PathLike, _require, read_onnx_metadata

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
class _SpectrogramModel:
    """`model(spectrogram) -> (logits, empty embedding)` of a spectrogram graph, the call
    `forward_spectrogram` makes on PyTorch models (teacher graphs run their windows inside)."""

    def __init__(self, tagger: "OnnxTagger") -> None:
        self.tagger = tagger

    def __call__(self, spectrogram: Tensor) -> tuple[Tensor, Tensor]:
        if spectrogram.dim() == 3:
            spectrogram = spectrogram.unsqueeze(1)
        logits = self.tagger.spectrogram_logits(spectrogram.detach().float().cpu().contiguous())
        return logits, logits.new_zeros(logits.shape[0], 0)


class OnnxTagger(TaggingMixin):
    """An exported model run by ONNX Runtime, with :class:`AudioTagger`'s tagging API.

    `forward(waveform (B, samples)) -> logits (B, C)` (also `tagger(waveform)`); `probabilities`,
    `file_probabilities`, `tag_waveform`, `tag_file`, `top_k` come from `TaggingMixin`, with the
    same input rules (NaN/Inf refused, short inputs repeated/padded to the trained clip length).
    Waveform graphs take the audio directly; for spectrogram graphs the PyTorch frontend of the
    stored preprocessing runs first. Label map, sample rate, task, clip length come from the
    file's metadata. `providers`: ONNX Runtime execution providers (default CPU); `threads`:
    intra-op threads (default: ONNX Runtime's choice).

    Long inputs (`stream_logits`, files longer than `chunk_seconds`): the graphs are dynamic in
    time, so the blocks are concatenated and the model runs once over the whole input -- exact
    (no window approximation, unlike `AudioTagger`'s bounded-memory path), but memory grows with
    the length (about 2.5 GB per 10 min of audio for mn10 on CPU). Teacher graphs (fixed longest
    window) run the windows of `sliding_window_forward` and average their logits.
    """

    def __init__(self, path: PathLike, *, providers: Optional[Sequence[Any]] = None,
                 threads: Optional[int] = None) -> None:
        ort = _require("onnxruntime")
        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        # ONNX Runtime's worker threads busy-wait after every run by default; between runs this
        # process computes the frontend (and the caller's work) in PyTorch on the same cores, and
        # the spinning threads took those cores away (measured: a PyTorch model timed after an ORT
        # run took 2x as long). Sleeping workers cost nothing measurable per run.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = list(providers) if providers else ["CPUExecutionProvider"]
        unknown = [p for p in providers if (p[0] if isinstance(p, tuple) else p) not in available]
        if unknown:
            raise ValueError(f"ONNX Runtime providers {unknown} are not available here (available: {available})")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:
            raise ValueError(f"{self.path}: ONNX Runtime cannot load the model ({error})") from None
        meta = self.metadata
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        width = (outputs.get("logits") or [None])[-1]
        # the label map must name every output: a file whose metadata says otherwise is refused
        self.contract = meta.contract.validate(str(self.path), num_outputs=width if isinstance(width, int) else None)
        self.num_classes = len(meta.label_map)
        self.preprocessing = dict(meta.preprocessing)
        self.input_kind = meta.input_kind
        self.input_name = self.session.get_inputs()[0].name
        self.frontend: Optional[nn.Module] = (build_frontend(meta.preprocessing).eval()
                                              if meta.input_kind == "spectrogram" else None)
        # Spectrogram graphs also serve the windowed and streaming paths, which run the model on
        # slices of one continuous spectrogram (tagging/windows.py): `model(spectrogram)` like a
        # PyTorch model. Waveform graphs have no spectrogram input, so no `model`.
        self.model: Optional[_SpectrogramModel] = (_SpectrogramModel(self) if meta.input_kind == "spectrogram"
                                                   else None)

    def __repr__(self) -> str:
        return (f"OnnxTagger({str(self.path)!r}, input={self.input_kind}, classes={self.num_classes}, "
                f"sample_rate={self.sample_rate}, providers={self.session.get_providers()})")

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
        logits = self.session.run(["logits"], {self.input_name: np.ascontiguousarray(array, dtype=np.float32)})[0]
        return torch.from_numpy(logits)

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
