"""Streaming tagging: audio chunks of any size in, tags every hop and merged events out.

:class:`StreamingTagger` is the offline windowed pass (:mod:`~efficient_tagging.tagging.windows`)
fed live: the same :class:`~efficient_tagging.tagging.windows.WindowEngine` computes the
spectrogram incrementally (each chunk adds only its new frames, recomputing two frames of
context at the seam) and keeps the frames of the current model window -- a ring buffer of one
window, dropped as the window moves on -- and runs the model as soon as a window is complete.
So a stream chunked any way gives the per-window tags of the offline pass on the same audio.

Latency: window ``i`` ends at ``i * hop + window`` seconds; its tags come out when the chunk
holding that instant (plus the frontend's 16 ms look-ahead and at most one spectrogram step of
``step_frames``, 100 ms by default) has arrived, plus the compute time of one window. Windows are
one hop apart, so a tag line comes every hop. Events (:class:`EventTracker`) are reported once,
when they end, ``median_window // 2`` hops later than the window that ends them.

Input at another sample rate is resampled on the fly (:class:`efficient_tagging.audio.StreamingResampler`);
raw PCM (signed 16-bit or 32-bit float, interleaved channels) is read by :func:`read_pcm`.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..audio import StreamingResampler
from ..frontends.contract import as_float_waveform
from .windows import (DEFAULT_HOP_SECONDS, DEFAULT_MEDIAN_WINDOW, DEFAULT_THRESHOLD, DEFAULT_WINDOW_SECONDS, Event,
                      EventTracker, TagsOverTime, WindowEngine, tags_from_logits)

logger = logging.getLogger(__name__)

PCM_FORMATS = {"s16le": np.dtype("<i2"), "s32le": np.dtype("<i4"), "f32le": np.dtype("<f4")}
STREAM_STEP_FRAMES = 10  # spectrogram step of the live path: 100 ms at a 10 ms hop


@dataclass
class WindowTags:
    """The tags of one completed window, as the stream emits them."""

    index: int
    start: float  # seconds from the start of the stream
    end: float
    probabilities: np.ndarray  # (classes,)
    labels: Sequence[str]
    events: list[Event] = field(default_factory=list)  # events that ended with this window's decision
    compute_seconds: float = 0.0  # time spent in the push that completed this window

    def top_k(self, k: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.labels[i], float(self.probabilities[i])) for i in order]


class StreamingTagger:
    """Tag a live stream: ``feed(chunk)`` returns the windows completed by the chunk.

    Args:
        tagger: an ``AudioTagger`` (or a same-rate ensemble of them), in eval mode.
        window, hop: seconds (as in the offline pass; hop rounded to whole frames).
        sample_rate (or its older name input_sample_rate): rate of the chunks (default: the
            tagger's); resampled on the fly.
        threshold, median_window: the event rule of :func:`~efficient_tagging.tagging.windows.detect_events`.
        step_frames: spectrogram frames computed per step (latency vs. calls; results are the same).
    """

    def __init__(self, tagger: nn.Module, window: float = DEFAULT_WINDOW_SECONDS, hop: float = DEFAULT_HOP_SECONDS,
                 *, input_sample_rate: Optional[int] = None, sample_rate: Optional[int] = None, threshold: Union[float, Sequence[float]] = DEFAULT_THRESHOLD,
                 median_window: int = DEFAULT_MEDIAN_WINDOW, step_frames: int = STREAM_STEP_FRAMES) -> None:
        self.tagger = tagger
        self.engine = WindowEngine(tagger, window, hop, step_frames=step_frames, batch_size=1)
        self.grid = self.engine.grid
        self.labels = list(tagger.label_map.names)
        self.events = EventTracker(self.labels, self.grid.start, self.grid.hop_seconds, self.grid.window_seconds,
                                   threshold=threshold, median_window=median_window)
        if input_sample_rate is not None and sample_rate is not None and input_sample_rate != sample_rate:
            raise ValueError(f"sample_rate={sample_rate} and input_sample_rate={input_sample_rate} disagree: give one")
        rate = int(sample_rate or input_sample_rate or self.grid.sample_rate)
        if rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer (Hz), got {rate}")
        self.input_sample_rate = rate
        self._resampler = (StreamingResampler(rate, self.grid.sample_rate, step_samples=rate // 10)
                           if rate != self.grid.sample_rate else None)
        self._logits: list[Tensor] = []
        self._closed = False

    @property
    def seconds_received(self) -> float:
        return self.engine.num_samples / self.grid.sample_rate

    def _emit(self, logits: Tensor, compute_seconds: float) -> list[WindowTags]:
        if not logits.shape[0]:
            return []
        self._logits.append(logits)
        probabilities = self.tagger.logits_to_probabilities(logits).numpy()
        first = self.engine.windows_done - logits.shape[0]
        out = []
        for offset, row in enumerate(probabilities):
            index = first + offset
            out.append(WindowTags(index, self.grid.start(index), self.grid.end(index), row, self.labels,
                                  self.events.update(row[None]), compute_seconds))
        return out

    def feed(self, chunk: Union[Tensor, np.ndarray]) -> list[WindowTags]:
        """Add mono samples (any length, at ``input_sample_rate``); returns the completed windows.

        Chunks are any audio array the input contract takes (torch or numpy; float, or integer PCM
        such as int16, scaled as audio): ``frontends.contract.as_float_waveform``."""
        if self._closed:
            raise RuntimeError("feed() after close()")
        started = time.perf_counter()
        samples = as_float_waveform(chunk)
        if samples.shape[0] != 1:
            raise ValueError(f"feed() takes mono samples (samples,), got shape {tuple(np.shape(chunk))}")
        samples = samples.reshape(-1).cpu()
        pieces = list(self._resampler.push(samples)) if self._resampler is not None else [samples]
        logits = [self.engine.push(piece) for piece in pieces if piece.numel()]
        if not logits:
            return []
        return self._emit(torch.cat(logits), time.perf_counter() - started)

    def close(self) -> tuple[list[WindowTags], list[Event]]:
        """End of stream: the last (end-padded) windows and the events still open."""
        if self._closed:
            raise RuntimeError("close() called twice")
        started = time.perf_counter()
        logits = []
        if self._resampler is not None:
            logits += [self.engine.push(piece) for piece in self._resampler.flush() if piece.numel()]
        logits.append(self.engine.finish())
        self._closed = True
        windows = self._emit(torch.cat(logits), time.perf_counter() - started)
        remaining = self.events.finish(self.engine.num_samples / self.grid.sample_rate)
        return windows, remaining

    def tags(self) -> TagsOverTime:
        """Every window so far, as the offline pass returns them."""
        logits = torch.cat(self._logits) if self._logits else torch.zeros(0, len(self.labels))
        return tags_from_logits(self.tagger, logits, self.grid, self.engine.num_samples, "stream")


def read_pcm(source: Union[str, Path, BinaryIO], *, pcm_format: str = "s16le", channels: int = 1,
             sample_rate: int = 32000, chunk_seconds: float = 0.1, realtime: bool = False) -> Iterator[np.ndarray]:
    """Mono float32 chunks of raw interleaved PCM from a file, a pipe or ``"-"`` (stdin).

    ``realtime``: pace the reading at the audio's own speed (a file then behaves like a live
    source, e.g. to measure latency). A trailing partial sample frame is reported and dropped.
    """
    if pcm_format not in PCM_FORMATS:
        raise ValueError(f"unknown PCM format {pcm_format!r}: use one of {', '.join(PCM_FORMATS)}")
    if channels < 1 or sample_rate < 1 or chunk_seconds <= 0:
        raise ValueError(f"channels, sample_rate and chunk_seconds must be positive, got {channels}, "
                         f"{sample_rate}, {chunk_seconds}")
    dtype = PCM_FORMATS[pcm_format]
    frame_bytes = dtype.itemsize * channels
    chunk_bytes = max(1, int(round(chunk_seconds * sample_rate))) * frame_bytes
    scale = {"s16le": 1 / 32768.0, "s32le": 1 / 2147483648.0, "f32le": 1.0}[pcm_format]
    if source == "-":
        handle, close = sys.stdin.buffer, False
    elif isinstance(source, (str, Path)):
        handle, close = open(source, "rb"), True
    else:
        handle, close = source, False
    started, emitted = time.perf_counter(), 0
    leftover = b""
    try:
        while True:
            data = handle.read(chunk_bytes - len(leftover))
            if not data:
                break
            data = leftover + data
            usable = len(data) - len(data) % frame_bytes
            leftover = data[usable:]
            if not usable:
                continue
            frames = np.frombuffer(data[:usable], dtype=dtype).reshape(-1, channels).astype(np.float32) * scale
            mono = frames.mean(axis=1) if channels > 1 else frames[:, 0]
            if realtime:
                ahead = emitted / sample_rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
            emitted += mono.shape[0]
            yield mono
    finally:
        if close:
            handle.close()
    if leftover:
        logger.warning("PCM stream ended with %d bytes of a partial sample frame (%d bytes per frame): dropped",
                       len(leftover), frame_bytes)
