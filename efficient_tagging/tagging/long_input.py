"""Tagging long inputs in bounded memory: streamed spectrogram + model windows with overlap (whole-file result).

A tagger given a waveform longer than its chunk (``chunk_seconds``, default 60 s) does not run
the frontend and the model over the whole input at once (memory grows with the length:
4.8 GB RSS for 30 min with mn10). Instead (:func:`stream_forward`):

1. **Spectrogram in pieces** (:class:`SpectrogramStream`). The frontends are frame-local: frame
   ``t`` depends only on samples ``[t*hop - lead, t*hop - lead + span)`` (EfficientAT/PaSST mel:
   ``lead = n_fft // 2``, ``span = n_fft + 1`` incl. pre-emphasis; AST's Kaldi fbank:
   ``lead = 0``, ``span`` = one 25 ms frame). Each piece is computed from a waveform segment that
   starts on a hop boundary with enough samples either side, and only the frames that do not
   touch the segment's own edge padding are kept; at the true start and end the segment edges
   are the file's, so the padding is the same as for the whole file. The pieces concatenate to
   the whole-file spectrogram (mel: identical in the tests; AST fbank: within 1e-4, because AST
   removes the clip mean before the fbank -- Kaldi's per-frame DC removal cancels any constant
   offset, so a piece's own mean gives the same frames up to rounding).

2. **Model windows**, by model family:

   * **Transformer teachers** (PaSST, AST: ``needs_sliding_windows``): the same windows as the
     whole-file pass (``models.layers.sliding_window_starts``: ``window_frames`` long, a quarter
     window apart, plus one window ending at the last frame) are run as soon as their frames
     have arrived, and logits/embeddings are the unweighted means over windows
     (``mean_over_windows``' rule). Same result as the whole-file pass (within float rounding).

   * **Global-pooling students** (mn / dymn with the ``mlp`` or ``fully_convolutional`` head,
     whose logits are a function of the global average of the body output): **pooled features
     weighted by valid lengths**. With ``S`` the model's total time stride (32 for strides
     2,2,2,2) and a margin ``M`` = half the time receptive field rounded up to a multiple of
     ``S`` (320 frames for mn/dymn), the spectrogram is cut into windows that each own ``K``
     frames (a multiple of ``S``; ``K + 2M`` <= the chunk) and see ``M`` extra frames on each
     side (fewer at the file edges; the last window owns the rest of the file). A window's body
     output is summed over frequency and over the output frames of the frames it owns
     (``[iK/S, (i+1)K/S)``), the sums of all windows are divided by the number of summed
     positions -- giving the global average pool of the whole-file body output -- and the head
     runs on that pooled vector (``forward_head``: for ``mlp`` pooling comes first; the
     ``fully_convolutional`` head is affine before its pooling in eval mode, so pooling first is
     the same). For a purely convolutional body this equals the whole-file pass exactly (the
     margin covers the receptive field). MobileNet's channel squeeze-excitation and DyMN's
     dynamic convolutions/attention use means over the *window* instead of the whole file, so
     the result is close but not identical. Measured (``benchmarks/bench_tagging_memory.py
     --accuracy``; ``benchmarks/RESULTS.md``) on the 10 s recording ``metro_station-paris.wav``
     repeated to 5 minutes, with the reference-fixture weights (random weights whose BatchNorm
     statistics come from real audio), max |delta prob| over the 527 classes vs the whole-file
     pass: mn10 4.6e-3 with the default 60 s chunk (1.2e-2 with 20 s chunks), mn04 1.7e-2
     (4.3e-2 with 20 s). Longer chunks are closer. For scale, the whole-file result of these
     models itself moves by 0.15 (mn10) / 0.34 (mn04) when the input is circularly shifted by 3 s.
     (DyMN follows the same rule; its fixture weights are numerically unstable away from their
     10-s calibration length, so no meaningful number could be measured without trained weights.)

   * **Other models** (e.g. the attention-pooling head): the same windows; logits and
     embeddings are the means of the per-window outputs weighted by the frames each window owns.
     An approximation of the whole-file pass (not measured against it; for the global-pooling
     students this rule was measured 1.4-2x further from the whole-file pass than pooled features).

   The last window is extended to the left (on the stride grid) to a full window where the input
   allows, so that every window sees about one chunk of frames.

Memory (``benchmarks/RESULTS.md``): tagging a 30-min mp3 with mn10 peaks at 0.93 GB RSS against
0.81 GB for a 1-min file (1.14x; the whole-file pass needed 4.5 GB).

Inputs of at most one chunk are passed through the frontend and model in one go, exactly as
before (bit-identical).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..audio import concat_samples
from ..models.layers import forward_spectrogram
from ..models.registry import is_teacher

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SECONDS = 60.0


# --------------------------------------------------------------------------------------
# waveform -> spectrogram pieces
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameGeometry:
    """Frame ``t`` of a frontend reads samples ``[t*hop - lead, t*hop - lead + span)``."""

    hop: int
    lead: int
    span: int


def frame_geometry(frontend: nn.Module) -> Optional[FrameGeometry]:
    """The frame geometry of a frame-local frontend in eval mode (None if not known to be one)."""
    from ..frontends import ASTFbank, AugmentMelSTFT

    if isinstance(frontend, AugmentMelSTFT) and not frontend.training:
        # centred STFT of the pre-emphasised signal y[n] = x[n+1] - 0.97 x[n]
        return FrameGeometry(hop=int(frontend.hopsize), lead=int(frontend.n_fft) // 2, span=int(frontend.n_fft) + 1)
    if isinstance(frontend, ASTFbank):
        options = frontend.fbank_kwargs
        if options.get("snip_edges", True) and options.get("remove_dc_offset", True):
            hop = int(frontend.sample_rate * frontend.frame_shift * 0.001)
            return FrameGeometry(hop=hop, lead=0, span=int(frontend.frame_length_samples))
    return None


def _release_freed_memory() -> None:
    """Hand memory freed by the last window back to the OS (glibc only; a no-op elsewhere).

    Successive windows allocate and free the same few hundred MB of activations; glibc keeps freed
    blocks in its heap, fragmented, and the next window grows the heap again: measured on mn10
    with 60-s chunks, the peak RSS rose by ~110 MB over the first windows without this call.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _cat_frames(pieces: list[Tensor]) -> Tensor:
    """Join spectrogram pieces along time (numpy for CPU tensors: see `audio.concat_samples`)."""
    if len(pieces) == 1:
        return pieces[0]
    if all(p.device.type == "cpu" for p in pieces):
        return torch.from_numpy(np.concatenate([p.numpy() for p in pieces], axis=-1))
    return torch.cat(pieces, dim=-1)


def _as_b1ft(spectrogram: Tensor) -> Tensor:
    return spectrogram.unsqueeze(1) if spectrogram.dim() == 3 else spectrogram


class SpectrogramStream:
    """Frontend output of a long mono waveform fed in blocks, as exact pieces of ``step_frames``.

    ``push(block)`` / ``flush()`` yield (1, 1, F, frames) pieces whose concatenation along time is
    the frontend output of the whole waveform (see the module doc, step 1). Holds about
    ``step_frames`` frames of samples plus one frame of context.
    """

    def __init__(self, frontend: nn.Module, step_frames: int, device: Optional[torch.device] = None) -> None:
        geometry = frame_geometry(frontend)
        if geometry is None:
            raise ValueError(f"{type(frontend).__name__} is not a known frame-local frontend; it cannot be streamed")
        if step_frames < 1:
            raise ValueError(f"step_frames must be positive, got {step_frames}")
        self.frontend = frontend
        self.geometry = geometry
        self.step = int(step_frames)
        self.device = device
        # frames whose window reaches back before a segment start are recomputed: a segment for
        # frame f starts `margin` frames earlier (strictly more than `lead` samples)
        self.margin = geometry.lead // geometry.hop + 1
        self._pieces: list[Tensor] = []
        self._buffer_start = 0  # absolute sample index of the buffer's first sample
        self._buffered = 0
        self.next_frame = 0  # first frame not yet produced

    def _buffer(self) -> Tensor:
        if len(self._pieces) != 1:
            self._pieces = [concat_samples(self._pieces)]
        return self._pieces[0]

    def _segment_frames(self, end_sample: Optional[int]) -> Tensor:
        """Frames from ``next_frame`` on, of the segment that ends at ``end_sample`` (None: the end)."""
        g = self.geometry
        first_sample = max(0, (self.next_frame - self.margin) * g.hop)
        buffer = self._buffer()
        begin = first_sample - self._buffer_start
        stop = None if end_sample is None else end_sample - self._buffer_start
        segment = buffer[begin:stop].unsqueeze(0)
        if self.device is not None:
            segment = segment.to(self.device)
        spectrogram = _as_b1ft(self.frontend(segment))
        real = self.frontend.num_frames(segment.shape[-1])  # frames before any pad to a target length
        local = self.next_frame - first_sample // g.hop
        return spectrogram[..., local:real]

    def _drop_consumed(self) -> None:
        keep_from = max(0, (self.next_frame - self.margin) * self.geometry.hop) - self._buffer_start
        if keep_from > 0:
            self._pieces = [self._buffer()[keep_from:].clone()]
            self._buffer_start += keep_from
            self._buffered -= keep_from

    def push(self, block: Tensor) -> Iterator[Tensor]:
        block = torch.as_tensor(block, dtype=torch.float32).reshape(-1)
        if not block.numel():
            return
        self._pieces.append(block.cpu())
        self._buffered += block.numel()
        g = self.geometry
        while True:
            last = self.next_frame + self.step - 1
            end_sample = last * g.hop - g.lead + g.span  # the last frame's window end
            if end_sample > self._buffer_start + self._buffered:
                return
            piece = self._segment_frames(end_sample)[..., :self.step]
            self.next_frame += piece.shape[-1]
            self._drop_consumed()
            yield piece

    def flush(self) -> Iterator[Tensor]:
        if not self._buffered:
            return
        total = self.frontend.num_frames(self._buffer_start + self._buffered)
        if total > self.next_frame:
            piece = self._segment_frames(None)
            self.next_frame += piece.shape[-1]
            yield piece
        self._pieces, self._buffered = [], 0


# --------------------------------------------------------------------------------------
# spectrogram pieces -> model windows
# --------------------------------------------------------------------------------------
class _FrameBuffer:
    """Spectrogram frames (1, 1, F, T) received so far, minus those dropped; absolute indexing."""

    def __init__(self) -> None:
        self._pieces: list[Tensor] = []
        self.start = 0  # absolute index of the first held frame
        self.end = 0  # absolute index after the last received frame

    def append(self, piece: Tensor) -> None:
        self._pieces.append(piece)
        self.end += piece.shape[-1]

    def frames(self, begin: int, stop: int) -> Tensor:
        if begin < self.start or stop > self.end:
            raise RuntimeError(f"frames {begin}:{stop} requested, buffer holds {self.start}:{self.end}")
        if len(self._pieces) > 1:
            self._pieces = [torch.cat(self._pieces, dim=-1)]
        # a contiguous copy: convolutions on a strided time slice run about 2x slower
        return self._pieces[0][..., begin - self.start:stop - self.start].contiguous()

    def drop_before(self, frame: int) -> None:
        if frame <= self.start:
            return
        if len(self._pieces) > 1:
            self._pieces = [_cat_frames(self._pieces)]
        if self._pieces:
            self._pieces = [self._pieces[0][..., frame - self.start:].clone()]
        self.start = frame


class _TransformerWindows:
    """The whole-file sliding windows of a PaSST / AST teacher, run as their frames arrive."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.window = int(model.window_frames)
        starts = model.window_starts(4 * self.window)
        self.hop = starts[1] - starts[0]
        self.frames = _FrameBuffer()
        self.windowed = False  # does the input (so far) need windows at all?
        self.next_start = 0
        self.last_start: Optional[int] = None
        self.count = 0
        self.sums: Optional[tuple[Tensor, Tensor]] = None

    def _run(self, start: int) -> None:
        logits, embedding = self.model(self.frames.frames(start, start + self.window))
        self.sums = (logits, embedding) if self.sums is None else (self.sums[0] + logits, self.sums[1] + embedding)
        self.count += 1
        self.last_start = start
        _release_freed_memory()

    def consume(self, piece: Tensor) -> None:
        self.frames.append(piece)
        self.windowed = self.windowed or bool(self.model.needs_sliding_windows(self.frames.end))
        if not self.windowed:
            return
        while self.next_start + self.window <= self.frames.end:
            self._run(self.next_start)
            self.next_start += self.hop
        # keep the last full window (for the final one ending at the last frame) and what is pending
        self.frames.drop_before(max(0, min(self.next_start, self.frames.end - self.window)))

    def finish(self) -> tuple[Tensor, Tensor]:
        total = self.frames.end
        if not self.windowed:  # short input: the plain forward, like forward_spectrogram
            return forward_spectrogram(self.model, self.frames.frames(0, total))
        if self.last_start != total - self.window:
            self._run(total - self.window)
        assert self.sums is not None
        return self.sums[0] / self.count, self.sums[1] / self.count


@dataclass(frozen=True)
class WindowPlan:
    """Windows owning ``owned`` frames each, seeing ``margin`` more frames on each side."""

    owned: int
    margin: int
    stride: int  # total time stride of the model body (output frame = `stride` input frames)


class _OwnedWindows:
    """Windows ``[max(0, iK - M), (i+1)K + M)`` owning ``[iK, (i+1)K)``; the last owns the rest."""

    def __init__(self, model: nn.Module, plan: WindowPlan, pooled_features: bool) -> None:
        self.model = model
        self.plan = plan
        self.pooled_features = pooled_features
        self.frames = _FrameBuffer()
        self.index = 0  # next window
        self.feature_sum: Optional[Tensor] = None
        self.positions = 0
        self.weighted: Optional[tuple[Tensor, Tensor]] = None
        self.weight = 0

    def _run(self, last: bool) -> None:
        self._add_window(last)  # its activations are freed on return
        self.index += 1
        _release_freed_memory()
        # keep one more window's frames: the last window may reach back that far
        k, m = self.plan.owned, self.plan.margin
        self.frames.drop_before(max(0, (self.index - 1) * k - m))

    def _add_window(self, last: bool) -> None:
        k, m, s = self.plan.owned, self.plan.margin, self.plan.stride
        own_from = self.index * k
        own_to = self.frames.end if last else own_from + k
        start = max(0, own_from - m)
        stop = self.frames.end if last else own_to + m
        if last:
            # the last window sees a full window of frames where the input allows (more left
            # context, on the stride grid): windows of similar length give similar squeeze-
            # excitation / dynamic-conv statistics
            start = max(0, min(start, (self.frames.end - k - 2 * m) // s * s))
        window = self.frames.frames(start, stop)
        if self.pooled_features:
            features = self.model.forward_features(window)
            first = (own_from - start) // s
            count = math.ceil((own_to - own_from) / s)
            owned = features[..., first:first + count]
            total = owned.sum(dim=(2, 3))
            self.feature_sum = total if self.feature_sum is None else self.feature_sum + total
            self.positions += owned.shape[2] * owned.shape[3]
        else:
            logits, embedding = forward_spectrogram(self.model, window)
            weight = own_to - own_from
            parts = (logits * weight, embedding * weight)
            self.weighted = parts if self.weighted is None else (self.weighted[0] + parts[0],
                                                                 self.weighted[1] + parts[1])
            self.weight += weight

    def consume(self, piece: Tensor) -> None:
        self.frames.append(piece)
        k, m = self.plan.owned, self.plan.margin
        while (self.index + 1) * k + m <= self.frames.end:
            self._run(last=False)

    def finish(self) -> tuple[Tensor, Tensor]:
        if self.index * self.plan.owned < self.frames.end or self.index == 0:
            self._run(last=True)
        if self.pooled_features:
            assert self.feature_sum is not None
            pooled = (self.feature_sum / self.positions)[..., None, None]
            return self.model.forward_head(pooled)
        assert self.weighted is not None
        return self.weighted[0] / self.weight, self.weighted[1] / self.weight


def pools_globally(model: nn.Module) -> bool:
    """True for models whose logits are a function of the global average of ``forward_features``."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        return False
    from ..models.dymn import DyMN
    from ..models.mobilenet import MobileNet

    if isinstance(model, MobileNet):
        return model.head_type in ("mlp", "fully_convolutional")
    return isinstance(model, DyMN)


def _time_stride_and_field(model: nn.Module, n_mels: int) -> tuple[int, int]:
    """(total time stride, time receptive field) of a CNN body, from one traced forward pass."""
    from ..complexity import receptive_field_of_layers, trace_model

    device = next(model.parameters()).device
    trace = trace_model(model, (1, 1, n_mels, 256))
    convs = trace.conv_layers
    stride = math.prod(int(c.stride[1]) for c in convs) if convs else 1
    _, field = receptive_field_of_layers((c.kernel_size, c.stride, c.dilation) for c in convs)
    if hasattr(model, "forward_features"):
        # the alignment rule needs output length ceil(T / stride) ("same" padding everywhere)
        probe = 5 * stride + 1
        out = model.forward_features(torch.zeros(1, 1, n_mels, probe, device=device))
        if out.shape[-1] != math.ceil(probe / stride):
            raise ValueError(f"{type(model).__name__}: body output of {out.shape[-1]} frames for {probe} input "
                             f"frames does not follow ceil(T / {stride})")
    return stride, field


def plan_windows(model: nn.Module, chunk_frames: int, n_mels: int) -> WindowPlan:
    """The window plan for a CNN student and a chunk of ``chunk_frames`` spectrogram frames."""
    stride, field = _time_stride_and_field(model, n_mels)
    margin = stride * math.ceil((field // 2) / stride)
    owned = (chunk_frames - 2 * margin) // stride * stride
    if owned < stride:
        raise ValueError(f"a chunk of {chunk_frames} frames is too short for windows with {margin}-frame margins "
                         f"(receptive field {field} frames): use a chunk of at least {2 * margin + stride} frames")
    return WindowPlan(owned=owned, margin=margin, stride=stride)


def stream_forward(frontend: nn.Module, model: nn.Module, blocks: Iterable[Tensor], chunk_frames: int,
                   plan: Optional[WindowPlan] = None, device: Optional[torch.device] = None) -> tuple[Tensor, Tensor]:
    """``(logits (1, C), embedding (1, D))`` of a long mono waveform given as 1-D blocks (module doc).

    ``chunk_frames`` bounds the spectrogram frames held and passed to the model at once.
    ``plan`` (CNN students) defaults to :func:`plan_windows`.
    """
    spectrogram = SpectrogramStream(frontend, step_frames=max(1, chunk_frames // 2), device=device)
    consumer: "_TransformerWindows | _OwnedWindows"
    if is_teacher(model):
        consumer = _TransformerWindows(model)
    else:
        n_mels = int(getattr(frontend, "n_mels", None) or getattr(frontend, "num_mel_bins", 128))
        consumer = _OwnedWindows(model, plan or plan_windows(model, chunk_frames, n_mels), pools_globally(model))
    received = False
    for block in blocks:
        for piece in spectrogram.push(block):
            consumer.consume(piece)
            received = True
    for piece in spectrogram.flush():
        consumer.consume(piece)
        received = True
    if not received:
        raise ValueError("no audio to tag: the waveform is empty")
    return consumer.finish()
