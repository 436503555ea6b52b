"""HEAR 2021 API embeddings for every tagger of this package (students and teachers).

The HEAR benchmark (https://hearbenchmark.com) runs a module that offers

- ``load_model(model_file_path)`` -> a ``torch.nn.Module`` with the attributes ``sample_rate``,
  ``scene_embedding_size`` and ``timestamp_embedding_size``;
- ``get_scene_embeddings(audio, model)`` -> float32 ``(n_sounds, scene_embedding_size)``;
- ``get_timestamp_embeddings(audio, model)`` -> float32 ``(n_sounds, n_timestamps,
  timestamp_embedding_size)`` and timestamps ``(n_sounds, n_timestamps)`` in milliseconds,

for ``audio`` of shape ``(n_sounds, n_samples)`` at ``model.sample_rate``, samples in [-1, 1]
(all sounds of a batch have the same length). This module is such a module
(``hear-validator efficient_tagging.tagging.hear -m mn10_as``) and :class:`HearModel` offers the
same two calls as methods.

Which features form the embedding (``embedding=``)
    A preset name or a sequence of parts, concatenated in the given order (the same parts for
    scene and timestamp embeddings, so both sizes are equal):

    - ``"pooled"``: the model's own embedding, the input of its classifier (students: global
      average of the last 1x1 convolution; PaSST / AST: mean of the final-normed class and
      distillation tokens);
    - ``"logits"``: the raw logits (before any sigmoid);
    - ``"mel_avgs"``: each band of the frontend's spectrogram averaged over the frames of the
      input (EfficientAT HEAR's low-level features; AST's padding frames are left out);
    - ``"b<i>"``: the output of body block ``i``, pooled. Students (mn, dymn): ``b0`` is the
      stem, ``b1`` ... ``b15`` the inverted-residual blocks, ``b16`` the final 1x1 convolution
      (EfficientAT's numbering of ``features``), averaged over frequency and time. Transformers:
      ``b1`` ... ``b<depth>`` are the transformer blocks, averaged over the patch tokens (class and
      distillation tokens left out).

    Presets: ``"pooled"`` (default), ``"logits_pooled"`` (logits then pooled: the PaSST HEAR
    wrapper's choice), ``"blocks"`` (students: ``b5 b11 b13 b15``, the blocks EfficientAT's HEAR
    wrapper collects; transformers: four evenly spaced blocks, ``b3 b6 b9 b12`` for 12 blocks) and
    ``"blocks_mel"`` (``"blocks"`` then ``"mel_avgs"``: EfficientAT HEAR's ``*_all_b_mel_avgs``
    models, its best embeddings). Sizes for the released shapes:

    ============  ======  ===============  ======  ==========
    model         pooled  logits_pooled    blocks  blocks_mel
    ============  ======  ===============  ======  ==========
    mn10 / dymn10    960             1487     472         600
    mn04 / dymn04    384              911     192         320
    PaSST-S          768             1295    3072        3200
    AST base384      768             1295    3072        3200
    ============  ======  ===============  ======  ==========

Timestamp embeddings (``get_timestamp_embeddings``)
    With hop ``h = hop_seconds`` (default 50 ms) and window ``W = window_seconds`` (default
    160 ms; both as in EfficientAT's and PaSST's HEAR wrappers: the HEAR validator asks for at
    most 50 ms between timestamps) a sound of duration ``d`` gets the timestamps
    ``0, h, 2h, ..., floor(d / h) * h`` (in ms; the same for every sound of the batch): evenly
    spaced, starting at 0 and never past the end. The embedding at timestamp ``t`` is the
    embedding of the ``W`` samples centred on ``t`` (start ``round(t * sr) - W // 2``): every
    window is one model input, so each timestamp's embedding is that of a short clip around it.
    The sound is extended by ``W / 2`` at each end by reflection (zeros for sounds shorter than
    ``W / 2``), as in the reference wrappers. Window centres are computed in exact sample
    positions per timestamp (no accumulated rounding of a fractional hop), so they are within
    half a sample of the reported time at any length.

Scene embeddings (``get_scene_embeddings``)
    A sound no longer than ``scene_window_seconds`` is one model input. Its default is the
    clip length stored in this project's checkpoints, else 10 s for the students (their AudioSet
    clips) and, for a transformer, the longest input it takes in one pass (its positional
    embeddings: 10.05 s for PaSST-S with stride 10, 10.26 s for AST). A longer sound is cut into
    windows of that length starting every ``scene_hop_seconds`` (default a quarter window), plus
    one window ending at the last sample (``models.layers``' ``sliding_window_starts``: every
    sample covered, no padding), and the scene embedding is the mean of the windows'
    embeddings. Sounds shorter than the shortest input the model takes (one STFT window; one
    patch of frames for PaSST) are zero-padded at the end.

Cost
    Every timestamp is one model input: 20 per second of audio at the default hop. That is cheap
    for the students and PaSST (a 160-ms input is a handful of patches), but AST's frontend pads
    every input to the model's fixed length (10.24 s), so each timestamp costs a full AST pass;
    use a longer ``hop_seconds`` there, or a PaSST teacher.

The model always runs in eval mode (``train()`` keeps it there), in float32, without gradients;
results are returned on the CPU and are the same for a sound whether it is embedded alone or in
a batch (up to float rounding of batched kernels).
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..frontends import build_frontend, frontend_window_samples
from ..models.factory import get_model
from ..models.layers import forward_spectrogram, sliding_window_starts
from .tagger import AudioTagger

DEFAULT_MODEL = "mn10_as"
DEFAULT_WINDOW_SECONDS = 0.16
DEFAULT_HOP_SECONDS = 0.05
DEFAULT_STUDENT_SCENE_SECONDS = 10.0  # EfficientAT students are trained on 10-s AudioSet clips
DEFAULT_BATCH_SIZE = 32
# EfficientAT's HEAR wrapper collects these block outputs (indices into `features`).
STUDENT_HEAR_BLOCKS = (5, 11, 13, 15)
EMBEDDING_PRESETS = ("pooled", "logits_pooled", "blocks", "blocks_mel")
_BLOCK_PART = re.compile(r"^b(\d+)$")

ModelSource = Union[str, Path, nn.Module, None]


# --------------------------------------------------------------------------------------
# model families: where the body blocks are
# --------------------------------------------------------------------------------------
def body_blocks(model: nn.Module) -> tuple[list[nn.Module], int, Optional[int]]:
    """The blocks ``b<i>`` may name, the number of the first, and the prefix-token count.

    Returns ``(blocks, first_index, prefix_tokens)``: ``blocks[k]`` is block ``first_index + k``;
    ``prefix_tokens`` is None for convolutional bodies (pooled over frequency and time) and the
    number of class/distillation tokens for transformers (pooled over the remaining tokens).
    """
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):  # mn: stem, 15 blocks, final 1x1 conv
        return list(features), 0, None
    if all(hasattr(model, name) for name in ("in_c", "layers", "out_c")):  # dymn
        return [model.in_c, *model.layers, model.out_c], 0, None
    vit = getattr(model, "v", None)  # AST: the DeiT body
    owner = vit if vit is not None and hasattr(vit, "blocks") else model
    blocks = getattr(owner, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and hasattr(owner, "cls_token"):  # PaSST, AST
        prefix = sum(getattr(owner, token, None) is not None for token in ("cls_token", "dist_token"))
        return list(blocks), 1, prefix
    raise ValueError(f"{type(model).__name__}: no body blocks known for block embeddings (b<i>); "
                     f"use embedding='pooled' / 'logits' / 'mel_avgs'")


def embedding_parts(model: nn.Module, embedding: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """The parts (see the module docstring) a preset name or a sequence of parts stands for, checked."""
    if isinstance(embedding, str):
        if embedding in ("pooled", "logits_pooled"):
            return ("pooled",) if embedding == "pooled" else ("logits", "pooled")
        if embedding in ("blocks", "blocks_mel"):
            blocks, first, prefix = body_blocks(model)
            if prefix is None:
                chosen = [f"b{i}" for i in STUDENT_HEAR_BLOCKS if i - first < len(blocks)]
            else:  # four evenly spaced transformer blocks, the last one included
                depth = len(blocks)
                chosen = [f"b{i}" for i in sorted({math.ceil(depth * k / 4) for k in range(1, 5)})]
            return tuple(chosen) + (("mel_avgs",) if embedding == "blocks_mel" else ())
        parts: Sequence[str] = (embedding,)
    else:
        parts = tuple(embedding)
    if not parts:
        raise ValueError("embedding: give a preset name or at least one part")
    checked = []
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"embedding parts must be strings, got {part!r}")
        match = _BLOCK_PART.match(part)
        if match:
            blocks, first, _ = body_blocks(model)
            if not first <= int(match.group(1)) < first + len(blocks):
                raise ValueError(f"embedding part {part!r}: {type(model).__name__} has blocks b{first} ... "
                                 f"b{first + len(blocks) - 1}")
        elif part not in ("pooled", "logits", "mel_avgs"):
            raise ValueError(f"unknown embedding {part!r}: use a preset ({', '.join(EMBEDDING_PRESETS)}) or parts "
                             f"'pooled', 'logits', 'mel_avgs', 'b<i>' (a body block)")
        checked.append(part)
    if len(set(checked)) != len(checked):
        raise ValueError(f"embedding parts repeat: {checked}")
    return tuple(checked)


def family_preprocessing(model: nn.Module) -> dict[str, Any]:
    """Standard frontend settings for a model built without them (a fresh `get_model(arch=...)`).

    AST: its 16 kHz Kaldi fbank padded to ``input_tdim`` frames; PaSST: PaSST's mel with
    ``img_size[0]`` bands; students: EfficientAT's mel with ``input_dim_f`` bands (128 for DyMN).
    """
    if hasattr(model, "input_tdim") and hasattr(model, "input_fdim"):
        return {"frontend": "ast_fbank", "sr": 16000, "n_mels": int(model.input_fdim),
                "target_length": int(model.input_tdim)}
    if hasattr(model, "img_size") and hasattr(model, "patch_embed"):
        return {"frontend": "passt_mel", "n_mels": int(model.img_size[0])}
    return {"n_mels": int(getattr(model, "input_dim_f", 128))}


def as_tagger(source: ModelSource = None, *, cache_dir: Union[str, Path, None] = None, **model_kwargs: Any
              ) -> AudioTagger:
    """An `AudioTagger` from a tagger, a model, a catalogue name or a checkpoint path.

    Names and paths go through `get_model` (``model_kwargs``: e.g. ``arch`` and config for a plain
    official state_dict, ``weights`` for a local copy of a release file). Labels are not loaded:
    embeddings do not need them.
    """
    if isinstance(source, AudioTagger):
        if model_kwargs:
            raise ValueError(f"model arguments {sorted(model_kwargs)} given with an already built tagger")
        return source
    if isinstance(source, nn.Module):
        if model_kwargs:
            raise ValueError(f"model arguments {sorted(model_kwargs)} given with an already built model")
        model = source
    else:
        name = str(source) if source not in (None, "") else DEFAULT_MODEL
        model = get_model(name, cache_dir=cache_dir, **model_kwargs)
    preprocessing = getattr(model, "preprocessing", None) or family_preprocessing(model)
    return AudioTagger(model, frontend=build_frontend(preprocessing), label_map=getattr(model, "label_map", None))


def _frame_hop_seconds(frontend: nn.Module, sample_rate: int) -> float:
    if hasattr(frontend, "hopsize"):
        return float(frontend.hopsize) / sample_rate
    if hasattr(frontend, "frame_shift"):
        return float(frontend.frame_shift) / 1000.0
    return 0.01


def trained_window_seconds(tagger: AudioTagger) -> float:
    """Default scene window: the stored clip length of a checkpoint; for a transformer the longest
    input it takes in one pass (its positional embeddings' length); else 10 s (EfficientAT's clips)."""
    if tagger.clip_length:
        return float(tagger.clip_length)
    one_pass = _longest_single_pass(tagger)
    if one_pass is not None:
        return one_pass / tagger.sample_rate
    return DEFAULT_STUDENT_SCENE_SECONDS


def _longest_single_pass(tagger: AudioTagger) -> Optional[int]:
    """Most samples a transformer takes without sliding windows (None: no such limit is known)."""
    needs_windows = getattr(tagger.model, "needs_sliding_windows", None)
    num_frames = getattr(tagger.frontend, "num_frames", None)
    if not (callable(needs_windows) and callable(num_frames)):
        return None
    low, high = 1, 2  # low fits in one pass (or is below any useful length), high does not
    while not needs_windows(num_frames(high)):
        low, high = high, high * 2
        if high > 1 << 40:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if not needs_windows(num_frames(middle)) else (low, middle)
    return low


def _shortest_input(tagger: AudioTagger) -> int:
    """Fewest samples the frontend and model take: one STFT window, and PaSST's one patch of frames.

    Not the input contract's `min_samples`: HEAR's timestamp windows (160 ms) are embeddings of
    their own definition, run by the PyTorch model, zero-padded to this length."""
    samples = max(2, frontend_window_samples(tagger.frontend))
    patch = getattr(tagger.model, "patch_size", None)
    num_frames = getattr(tagger.frontend, "num_frames", None)
    if patch is not None and callable(num_frames):
        needed = int(patch[1] if isinstance(patch, (tuple, list)) else patch)
        step = max(1, int(round(_frame_hop_seconds(tagger.frontend, tagger.sample_rate) * tagger.sample_rate)))
        while num_frames(samples) < needed:
            samples += step
    return samples


def _positive_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------
# the HEAR model
# --------------------------------------------------------------------------------------
class HearModel(nn.Module):
    """A tagger as a HEAR 2021 model; see the module docstring for the embedding, window and scene rules.

    Args:
        tagger: the model with its frontend (`as_tagger` makes one from a name, path or model).
        embedding: preset (``"pooled"``, ``"logits_pooled"``, ``"blocks"``, ``"blocks_mel"``) or
            a sequence of parts (``"pooled"``, ``"logits"``, ``"mel_avgs"``, ``"b<i>"``).
        window_seconds, hop_seconds: timestamp-embedding window and hop (160 ms, 50 ms).
        scene_window_seconds, scene_hop_seconds: scene windows for long sounds (default: the
            trained input length and a quarter of it).
        batch_size: windows per model call (bounds memory; the result does not depend on it
            beyond float rounding).
    """

    def __init__(self, tagger: AudioTagger, embedding: Union[str, Sequence[str]] = "pooled", *,
                 window_seconds: float = DEFAULT_WINDOW_SECONDS, hop_seconds: float = DEFAULT_HOP_SECONDS,
                 scene_window_seconds: Optional[float] = None, scene_hop_seconds: Optional[float] = None,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.tagger = tagger.eval()
        self.sample_rate = int(tagger.sample_rate)
        self.embedding_parts = embedding_parts(tagger.model, embedding)
        self.hop_seconds = _positive_seconds("hop_seconds", hop_seconds)
        self.window_seconds = _positive_seconds("window_seconds", window_seconds)
        scene_window = _positive_seconds("scene_window_seconds", scene_window_seconds
                                         if scene_window_seconds is not None else trained_window_seconds(tagger))
        self.scene_window_seconds = scene_window
        self.scene_hop_seconds = _positive_seconds("scene_hop_seconds", scene_hop_seconds
                                                   if scene_hop_seconds is not None else scene_window / 4)
        self.batch_size = batch_size
        self.shortest_input = _shortest_input(tagger)
        self.window_samples = int(round(self.window_seconds * self.sample_rate))
        if self.window_samples < self.shortest_input:
            raise ValueError(f"window_seconds={window_seconds} gives {self.window_samples} samples, fewer than the "
                             f"{self.shortest_input} the model needs ({self.shortest_input / self.sample_rate:.3f} s)")
        self.scene_window_samples = max(self.shortest_input, int(round(scene_window * self.sample_rate)))
        self.scene_hop_samples = max(1, int(round(self.scene_hop_seconds * self.sample_rate)))
        probe = self.embed(torch.zeros(1, self.window_samples))
        self.scene_embedding_size = int(probe.shape[-1])  # HEAR asks for plain ints
        self.timestamp_embedding_size = int(probe.shape[-1])

    # -- housekeeping --------------------------------------------------------------------
    def train(self, mode: bool = True) -> "HearModel":
        """Embeddings are always computed in eval mode (no augmentation, no dropout, fixed BatchNorm)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.tagger.device

    def extra_repr(self) -> str:
        return (f"embedding={'+'.join(self.embedding_parts)}, size={self.scene_embedding_size}, "
                f"sample_rate={self.sample_rate}, window={self.window_seconds}s, hop={self.hop_seconds}s, "
                f"scene_window={self.scene_window_seconds}s, scene_hop={self.scene_hop_seconds}s")

    @contextmanager
    def _captured_blocks(self) -> Iterator[dict[str, list[Tensor]]]:
        """Pooled outputs of the requested body blocks, one entry per call (hooks removed afterwards)."""
        wanted = [p for p in self.embedding_parts if _BLOCK_PART.match(p)]
        captured: dict[str, list[Tensor]] = {p: [] for p in wanted}
        handles = []
        if wanted:
            blocks, first, prefix = body_blocks(self.tagger.model)
            for part in wanted:
                def hook(_module: nn.Module, _inputs: Any, output: Tensor, part: str = part) -> None:
                    if prefix is None:  # (B, C, F', T') -> mean over frequency and time
                        captured[part].append(output.detach().float().mean(dim=(2, 3)))
                    else:  # (B, tokens, E) -> mean over the patch tokens
                        captured[part].append(output.detach().float()[:, prefix:].mean(dim=1))
                handles.append(blocks[int(part[1:]) - first].register_forward_hook(hook))
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    # -- one model input per row ------------------------------------------------------------
    @torch.no_grad()
    def embed(self, waveforms: Tensor) -> Tensor:
        """Embeddings (B, D) of a batch of equally long waveforms (B, samples): each row is one model input."""
        if waveforms.shape[-1] < self.shortest_input:
            waveforms = F.pad(waveforms, (0, self.shortest_input - waveforms.shape[-1]))
        waveforms = waveforms.to(self.device, torch.float32)
        spectrogram = self.tagger.frontend(waveforms)
        with self._captured_blocks() as captured:
            logits, pooled = forward_spectrogram(self.tagger.model, spectrogram)
        pieces = []
        for part in self.embedding_parts:
            if part == "pooled":
                pieces.append(pooled.float())
            elif part == "logits":
                pieces.append(logits.float())
            elif part == "mel_avgs":
                pieces.append(self._band_means(spectrogram, waveforms.shape[-1]))
            else:  # a model pass over a long input may run several windows: their mean, like `pooled`
                pieces.append(torch.stack(captured[part]).mean(dim=0))
        return torch.cat(pieces, dim=1).detach()

    def _band_means(self, spectrogram: Tensor, num_samples: int) -> Tensor:
        """(B, bands): each band averaged over the frames of the input (not over AST's padding frames)."""
        bands = spectrogram[:, 0] if spectrogram.dim() == 4 else spectrogram  # (B, F, T)
        num_frames = getattr(self.tagger.frontend, "num_frames", None)
        frames = bands.shape[-1]
        if callable(num_frames):
            frames = max(1, min(frames, int(num_frames(num_samples))))
        return bands[..., :frames].float().mean(dim=-1)

    def _embed_windows(self, audio: Tensor, starts: Sequence[int], length: int) -> Tensor:
        """(n_sounds, len(starts), D): the embedding of ``audio[:, s:s + length]`` for every start."""
        n_sounds = audio.shape[0]
        pairs = [(row, start) for row in range(n_sounds) for start in starts]
        out = []
        for first in range(0, len(pairs), self.batch_size):
            chunk = pairs[first:first + self.batch_size]
            batch = torch.stack([audio[row, start:start + length] for row, start in chunk])
            out.append(self.embed(batch).cpu())
        return torch.cat(out).reshape(n_sounds, len(starts), -1)

    def forward(self, audio: Tensor) -> Tensor:
        """Scene embeddings (n_sounds, scene_embedding_size); see `get_scene_embeddings`."""
        return self.get_scene_embeddings(audio)

    # -- the HEAR calls -----------------------------------------------------------------------
    def _check_audio(self, audio: Any) -> Tensor:
        """(n_sounds, n_samples) float32 on the CPU: any array the input contract takes (torch or
        numpy, float or integer PCM scaled as audio) at `self.sample_rate`, NaN/Inf refused."""
        if isinstance(audio, (list, tuple)):
            audio = np.asarray(audio, dtype=np.float32)
        if isinstance(audio, (Tensor, np.ndarray)) and audio.ndim not in (1, 2):
            raise ValueError(f"HEAR audio must have shape (n_sounds, n_samples), got {tuple(audio.shape)}")
        if isinstance(audio, (Tensor, np.ndarray)) and 0 in tuple(audio.shape):
            raise ValueError(f"empty audio batch of shape {tuple(audio.shape)}")
        return self.tagger.contract.to_waveform(audio).to("cpu", torch.float32)

    @torch.no_grad()
    def get_scene_embeddings(self, audio: Tensor) -> Tensor:
        """float32 (n_sounds, scene_embedding_size): one pass per sound, or the mean over scene windows."""
        self.eval()
        audio = self._check_audio(audio)
        starts = sliding_window_starts(audio.shape[-1], self.scene_window_samples, self.scene_hop_samples)
        length = min(audio.shape[-1], self.scene_window_samples)
        return self._embed_windows(audio, starts, length).mean(dim=1)

    def timestamps(self, num_samples: int) -> Tensor:
        """Timestamps (ms, float64) of a sound of ``num_samples``: 0, hop, ... up to its end."""
        hop_samples = self.hop_seconds * self.sample_rate
        count = int(math.floor(num_samples / hop_samples + 1e-9)) + 1
        return torch.arange(count, dtype=torch.float64) * (self.hop_seconds * 1000.0)

    @torch.no_grad()
    def get_timestamp_embeddings(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """(float32 (n_sounds, n_timestamps, D), float32 timestamps (n_sounds, n_timestamps) in ms)."""
        self.eval()
        audio = self._check_audio(audio)
        n_sounds, num_samples = audio.shape
        times_ms = self.timestamps(num_samples)
        width = self.window_samples
        left, right = width // 2, width - width // 2
        mode = "reflect" if num_samples > max(left, right) else "constant"
        padded = F.pad(audio.unsqueeze(1), (left, right), mode=mode).squeeze(1)
        # Exact centre of every window (no rounding of a fractional hop that would drift); in the padded
        # signal, the window centred on sample c starts at c - width // 2 + left = c.
        starts = [int(round(t * self.sample_rate / 1000.0)) for t in times_ms.tolist()]
        embeddings = self._embed_windows(padded, starts, width)
        timestamps = times_ms.to(torch.float32).unsqueeze(0).expand(n_sounds, -1).contiguous()
        return embeddings, timestamps


# --------------------------------------------------------------------------------------
# the HEAR module API
# --------------------------------------------------------------------------------------
def load_model(model_file_path: ModelSource = "", *, embedding: Union[str, Sequence[str]] = "pooled",
               window_seconds: float = DEFAULT_WINDOW_SECONDS, hop_seconds: float = DEFAULT_HOP_SECONDS,
               scene_window_seconds: Optional[float] = None, scene_hop_seconds: Optional[float] = None,
               batch_size: int = DEFAULT_BATCH_SIZE, cache_dir: Union[str, Path, None] = None,
               **model_kwargs: Any) -> HearModel:
    """HEAR's ``load_model``: a catalogue name (default ``mn10_as``), a checkpoint path, a model or a tagger.

    ``model_kwargs`` go to `get_model` (``arch=...`` and config for a plain official state_dict,
    ``weights=`` for a local copy of a release file). See `HearModel` for the other arguments.
    """
    tagger = as_tagger(model_file_path, cache_dir=cache_dir, **model_kwargs)
    return HearModel(tagger, embedding, window_seconds=window_seconds, hop_seconds=hop_seconds,
                     scene_window_seconds=scene_window_seconds, scene_hop_seconds=scene_hop_seconds,
                     batch_size=batch_size)


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """HEAR's ``get_scene_embeddings``: float32 (n_sounds, model.scene_embedding_size)."""
    return model.get_scene_embeddings(audio)


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """HEAR's ``get_timestamp_embeddings``: embeddings (n_sounds, n_timestamps, D) and timestamps (ms)."""
    return model.get_timestamp_embeddings(audio)


__all__ = ["EMBEDDING_PRESETS", "HearModel", "as_tagger", "body_blocks", "embedding_parts", "family_preprocessing",
           "get_scene_embeddings", "get_timestamp_embeddings", "load_model", "trained_window_seconds"]
