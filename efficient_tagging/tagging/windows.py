"""Tags over time: class probabilities per window of a recording, and sound events from them.

**Windows.** Window ``i`` covers the samples ``[i * hop, i * hop + window)`` of the recording
(EfficientAT's ``windowed_inference.py`` grid: ``n = ceil((N - window) / hop) + 1`` windows, at
least one, the recording zero-padded at the end so that the last window is complete; the last
window therefore reaches past the end of the file by less than one hop). ``hop`` is rounded to a
whole number of frontend frames (10 ms for every catalogue frontend), and said so in a log line.

**Spectrogram once, windows of frames.** Unlike the reference, which runs the frontend on every
window's samples separately, the spectrogram of the whole recording is computed once, in pieces
(:class:`~efficient_tagging.tagging.long_input.SpectrogramStream`: memory bounded whatever the
length), and window ``i`` is the frames ``[i * hop_frames, i * hop_frames + window_frames)`` with
``window_frames`` = the frames the frontend gives for ``window`` seconds of samples (1000 for
10 s with the 10 ms mel frontend). These are the frames of the window's own samples except the
frontend's edge padding of the first/last ~16 ms, which here come from the neighbouring audio
instead of a reflection: a window is tagged as the middle of a recording, as the model saw its
training clips' insides. The same engine (:class:`WindowEngine`) runs the offline pass and the
live stream (:mod:`~efficient_tagging.tagging.streaming`), so both give the same tags.

**Events** (:func:`detect_events`, the convention of PretrainedSED's inference): a class is
active in a window where its probability exceeds its threshold; the active/inactive sequence is
median-filtered over ``median_window`` windows (odd; edges repeat the first/last decision --
for odd kernels this equals median-filtering the probabilities, then thresholding); each run of
active windows is one event. Window ``i`` stands for the hop-long time around its centre,
``centre_i +- hop / 2`` with ``centre_i = i * hop + window / 2`` (the first window from 0 s, the last
one to the end of the recording), so that one short sound does not turn into an event of a whole
window's length; event times therefore have the resolution of one hop.
:class:`EventTracker` is the same rule applied online (events are emitted as they end, after a
look-ahead of ``median_window // 2`` windows); offline and streamed events are the same.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..audio import AudioSource, stream_audio
from ..locking import temporary_file
from ..models.layers import forward_spectrogram
from .long_input import SpectrogramStream, _FrameBuffer, frame_geometry

logger = logging.getLogger(__name__)

# EfficientAT's windowed_inference.py defaults (seconds)
DEFAULT_WINDOW_SECONDS = 10.0
DEFAULT_HOP_SECONDS = 2.5
DEFAULT_THRESHOLD = 0.5
DEFAULT_MEDIAN_WINDOW = 1
# frames per spectrogram piece in the offline pass (60 s at 10 ms): large pieces, few frontend calls
OFFLINE_STEP_FRAMES = 6000


# --------------------------------------------------------------------------------------
# the window grid
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowGrid:
    """Where the windows of a recording lie, in samples and in frontend frames."""

    sample_rate: int
    window_samples: int
    hop_samples: int
    window_frames: int
    hop_frames: int

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    @property
    def hop_seconds(self) -> float:
        return self.hop_samples / self.sample_rate

    def count(self, num_samples: int) -> int:
        """Windows of a recording of ``num_samples`` samples (at least one)."""
        if num_samples <= self.window_samples:
            return 1
        return math.ceil((num_samples - self.window_samples) / self.hop_samples) + 1

    def padded_samples(self, num_samples: int) -> int:
        """Samples after the end padding that completes the last window."""
        return (self.count(num_samples) - 1) * self.hop_samples + self.window_samples

    def start(self, index: int) -> float:
        """Start of window ``index`` in seconds."""
        return index * self.hop_samples / self.sample_rate

    def end(self, index: int) -> float:
        return (index * self.hop_samples + self.window_samples) / self.sample_rate


def _frame_hop(frontend: nn.Module) -> int:
    geometry = frame_geometry(frontend)
    if geometry is None:
        raise ValueError(f"{type(frontend).__name__} is not a frame-local frontend in eval mode: tags over time "
                         f"need one (the mel and Kaldi-fbank frontends are; call .eval() on the tagger)")
    return geometry.hop


def window_grid(frontend: nn.Module, sample_rate: int, window: float = DEFAULT_WINDOW_SECONDS,
                hop: float = DEFAULT_HOP_SECONDS) -> WindowGrid:
    """The grid of ``window``-second windows every ``hop`` seconds for ``frontend`` at ``sample_rate``.

    The hop is rounded to whole frontend frames (logged when that changes it by more than 0.1 ms).
    """
    for name, value in (("window", window), ("hop", hop)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    frame_hop = _frame_hop(frontend)
    hop_frames = max(1, round(hop * sample_rate / frame_hop))
    hop_samples = hop_frames * frame_hop
    if abs(hop_samples / sample_rate - hop) > 1e-4:
        logger.info("hop %.4f s rounded to %.4f s (%d frames of %.1f ms)", hop, hop_samples / sample_rate,
                    hop_frames, 1000 * frame_hop / sample_rate)
    window_samples = int(round(window * sample_rate))
    window_frames = int(frontend.num_frames(window_samples))
    if window_frames < 1:
        raise ValueError(f"a window of {window} s gives no spectrogram frame: use a longer window")
    return WindowGrid(sample_rate=int(sample_rate), window_samples=window_samples, hop_samples=hop_samples,
                      window_frames=window_frames, hop_frames=hop_frames)


# --------------------------------------------------------------------------------------
# the engine: samples in, logits per window out (offline and streaming)
# --------------------------------------------------------------------------------------
def _members(tagger: nn.Module) -> list[nn.Module]:
    """The single-model taggers whose mean logits the tagger outputs (itself, or ensemble members)."""
    members = list(getattr(tagger, "members", None) or [tagger])
    for member in members:
        if not (hasattr(member, "frontend") and hasattr(member, "model")):
            raise TypeError(f"tags over time need taggers with a frontend and a model (AudioTagger), got "
                            f"{type(member).__name__}")
        if member.model is None or member.frontend is None:  # an ONNX graph with the frontend inside
            raise ValueError(f"{getattr(member, 'path', type(member).__name__)} takes waveforms (the frontend is in "
                             f"the graph), but tags over time and streaming run the model on slices of one "
                             f"continuous spectrogram: export without --with_frontend and tag with that file")
    rates = {int(m.sample_rate) for m in members}
    if len(rates) != 1 or int(tagger.sample_rate) not in rates:
        raise ValueError(f"tags over time with an ensemble need members of one sample rate; got "
                         f"{sorted(rates)} Hz (tag with each model separately)")
    return members


class _MemberWindows:
    """One model's windows: spectrogram pieces in, logits (n, C) of every completed window out."""

    def __init__(self, member: nn.Module, window: float, hop: float, step_frames: int, batch_size: int) -> None:
        self.member = member
        self.grid = window_grid(member.frontend, member.sample_rate, window, hop)
        self.spectrogram = SpectrogramStream(member.frontend, step_frames, device=member.device)
        self.frames = _FrameBuffer()
        self.batch_size = batch_size
        self.next_window = 0

    def _ready(self, limit: Optional[int]) -> list[int]:
        grid, ready = self.grid, []
        index = self.next_window
        while (limit is None or index < limit) and index * grid.hop_frames + grid.window_frames <= self.frames.end:
            ready.append(index)
            index += 1
        return ready

    def _run(self, limit: Optional[int]) -> list[Tensor]:
        out = []
        ready = self._ready(limit)
        grid = self.grid
        for begin in range(0, len(ready), self.batch_size):
            batch = ready[begin:begin + self.batch_size]
            windows = torch.cat([self.frames.frames(i * grid.hop_frames, i * grid.hop_frames + grid.window_frames)
                                 for i in batch])
            model = self.member.inference_model() if hasattr(self.member, "inference_model") else self.member.model
            logits, _ = forward_spectrogram(model, windows)
            out.append(logits.float().cpu())
        if ready:
            self.next_window = ready[-1] + 1
            self.frames.drop_before(self.next_window * grid.hop_frames)
        return out

    def push(self, samples: Tensor) -> list[Tensor]:
        for piece in self.spectrogram.push(samples):
            self.frames.append(piece)
        return self._run(None)

    def finish(self, num_windows: int) -> list[Tensor]:
        for piece in self.spectrogram.flush():
            self.frames.append(piece)
        out = self._run(num_windows)
        if self.next_window != num_windows:  # cannot happen with a consistent grid; never silent
            raise RuntimeError(f"tagged {self.next_window} of {num_windows} windows: frames {self.frames.end}")
        return out


class WindowEngine:
    """Samples in (blocks of any size), logits of every completed window out, in window order.

    ``push(block)`` returns the logits (n, C) of the windows completed by the block (n may be 0);
    ``finish()`` pads the recording to complete the last window (see the module doc) and returns
    the rest. Ensembles (same sample rate) give the mean logits of their members.
    """

    def __init__(self, tagger: nn.Module, window: float = DEFAULT_WINDOW_SECONDS, hop: float = DEFAULT_HOP_SECONDS,
                 *, step_frames: int = OFFLINE_STEP_FRAMES, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.tagger = tagger
        self._members = [_MemberWindows(m, window, hop, step_frames, batch_size) for m in _members(tagger)]
        grids = {(w.grid.window_samples, w.grid.hop_samples) for w in self._members}
        if len(grids) != 1:
            raise ValueError(f"ensemble members disagree on the window grid (frame hops differ): {sorted(grids)}")
        self.grid = self._members[0].grid
        self.num_samples = 0
        self.windows_done = 0
        # a recording of at most one window is tagged exactly as the file path tags it (the input
        # contract's short-input rule, not zero padding): its samples are kept until it is longer
        self._head: Optional[list[Tensor]] = []
        self._pending: list[list[Tensor]] = [[] for _ in self._members]
        self._finished = False

    @property
    def sample_rate(self) -> int:
        return self.grid.sample_rate

    def _combine(self) -> Tensor:
        counts = [sum(t.shape[0] for t in pending) for pending in self._pending]
        ready = min(counts)
        if not ready:
            return torch.zeros(0, int(self.tagger.num_classes))
        parts = []
        for index, pending in enumerate(self._pending):
            stacked = torch.cat(pending)
            parts.append(stacked[:ready])
            self._pending[index] = [stacked[ready:]] if stacked.shape[0] > ready else []
        self.windows_done += ready
        return torch.stack(parts).mean(0) if len(parts) > 1 else parts[0]

    @torch.no_grad()
    def push(self, block: Tensor) -> Tensor:
        if self._finished:
            raise RuntimeError("push() after finish(): start a new engine for a new recording")
        block = torch.as_tensor(block, dtype=torch.float32).reshape(-1)
        if not bool(torch.isfinite(block).all()):
            bad = int((~torch.isfinite(block)).sum())
            raise ValueError(f"audio block of {block.numel()} samples at sample {self.num_samples} "
                             f"({self.num_samples / self.sample_rate:.3f} s) contains {bad} NaN/inf samples")
        self.num_samples += block.numel()
        if self._head is not None:
            if self.num_samples <= self.grid.window_samples:
                self._head.append(block.clone())
            else:
                self._head = None  # longer than one window: the grid of windows, nothing kept
        for index, member in enumerate(self._members):
            self._pending[index].extend(member.push(block))
        return self._combine()

    @torch.no_grad()
    def finish(self) -> Tensor:
        if self._finished:
            raise RuntimeError("finish() called twice")
        if self.num_samples == 0:
            raise ValueError("no audio was given: nothing to tag")
        self._finished = True
        if self._head is not None:  # the whole recording fits in one window: the file path's answer
            recording = torch.cat(self._head).reshape(1, -1)
            self.windows_done = 1
            return self.tagger(self.tagger.contract.fit_length(recording)).float().cpu()
        padding = self.grid.padded_samples(self.num_samples) - self.num_samples
        total = self.grid.count(self.num_samples)
        for index, member in enumerate(self._members):
            if padding:
                self._pending[index].extend(member.push(torch.zeros(padding)))
            self._pending[index].extend(member.finish(total))
        return self._combine()


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------
@dataclass
class TagsOverTime:
    """Per-window class probabilities of one recording."""

    probabilities: np.ndarray  # (windows, classes) float32
    starts: np.ndarray  # (windows,) seconds
    ends: np.ndarray  # (windows,) seconds; the last one may reach past `duration` (end padding)
    labels: list[str]
    duration: float  # seconds of real audio
    window: float
    hop: float
    source: str = ""

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def centres(self) -> np.ndarray:
        return (self.starts + self.ends) / 2

    def top_classes(self, k: int = 10) -> list[int]:
        """The ``k`` classes with the highest peak probability over the windows, highest first."""
        peak = self.probabilities.max(axis=0)
        return [int(i) for i in np.argsort(-peak, kind="stable")[:k]]

    def rows(self) -> Iterator[list[Any]]:
        for start, end, probs in zip(self.starts, self.ends, self.probabilities):
            yield [f"{start:.3f}", f"{end:.3f}", *(f"{p:.6g}" for p in probs)]

    def to_csv(self, path: Union[str, Path]) -> Path:
        """CSV: ``start,end`` in seconds and one column per class (probability), one row per window."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["start", "end", *self.labels])
        writer.writerows(self.rows())
        return write_text_atomic(path, buffer.getvalue())

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "duration": self.duration, "window": self.window, "hop": self.hop,
                "labels": self.labels, "starts": self.starts.tolist(), "ends": self.ends.tolist(),
                "probabilities": self.probabilities.tolist()}


def write_text_atomic(path: Union[str, Path], text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and a rename (no half-written file on a kill)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = temporary_file(path)
    try:
        with os.fdopen(handle, "w", newline="") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _label_names(tagger: nn.Module) -> list[str]:
    return list(tagger.label_map.names)


def tags_from_logits(tagger: nn.Module, logits: Tensor, grid: WindowGrid, num_samples: int,
                     source: str = "") -> TagsOverTime:
    probabilities = tagger.logits_to_probabilities(logits).numpy().astype(np.float32)
    indices = np.arange(probabilities.shape[0])
    ends = (indices * grid.hop_samples + grid.window_samples) / grid.sample_rate
    if num_samples <= grid.window_samples:  # one window, tagged like the file: it ends where the file ends
        ends = np.minimum(ends, num_samples / grid.sample_rate)
    return TagsOverTime(probabilities=probabilities,
                        starts=indices * grid.hop_samples / grid.sample_rate,
                        ends=ends,
                        labels=_label_names(tagger), duration=num_samples / grid.sample_rate,
                        window=grid.window_seconds, hop=grid.hop_seconds, source=source)


@torch.no_grad()
def tag_over_time(tagger: nn.Module, audio: Union[AudioSource, Tensor, np.ndarray], window: float = DEFAULT_WINDOW_SECONDS,
                  hop: float = DEFAULT_HOP_SECONDS, *, sample_rate: Optional[int] = None, batch_size: int = 8,
                  progress: Optional[Callable[[int, int], None]] = None) -> TagsOverTime:
    """Class probabilities per window of a file (any PyAV format and rate) or one mono waveform
    (samples,): torch or numpy, float or integer PCM, at ``sample_rate`` (default: the tagger's;
    see ``frontends.contract``). Memory stays bounded whatever the length of a file.

    A recording no longer than one window is one window, tagged exactly as ``tag_file`` tags it
    (repeated to the trained clip length, not zero-padded), and that window ends where the
    recording ends.

    ``progress(done_samples, total_samples_or_0)`` is called after every decoded block.
    """
    engine = WindowEngine(tagger, window, hop, batch_size=batch_size)
    block_samples = OFFLINE_STEP_FRAMES * engine.grid.hop_samples // engine.grid.hop_frames
    if isinstance(audio, (Tensor, np.ndarray)):
        waveform = tagger.contract.to_waveform(audio, sample_rate)
        if waveform.shape[0] != 1:
            raise ValueError(f"expected one mono waveform (samples,), got shape {tuple(audio.shape)}")
        waveform = waveform.reshape(-1)
        blocks: Iterable[Tensor] = waveform.split(block_samples)
        source = "waveform"
        total = waveform.numel()
    else:
        if sample_rate is not None:
            raise ValueError("sample_rate= is for audio arrays; a file states its own rate")
        blocks = stream_audio(audio, engine.sample_rate, block_samples)
        source = str(audio) if isinstance(audio, (str, Path)) else "bytes"
        total = 0
    logits = []
    for block in blocks:
        logits.append(engine.push(block))
        if progress is not None:
            progress(engine.num_samples, total)
    logits.append(engine.finish())
    return tags_from_logits(tagger, torch.cat(logits), engine.grid, engine.num_samples, source)


# --------------------------------------------------------------------------------------
# frame level: logits per output frame of a CNN student, no time pooling
# --------------------------------------------------------------------------------------
def frame_resolution(tagger: nn.Module) -> float:
    """Seconds per output frame of a student: its total time stride x the frontend hop
    (32 x 10 ms = 0.32 s for the default frontend and strides)."""
    from .long_input import _time_stride_and_field

    model = tagger.model
    if not hasattr(model, "forward_frames"):
        raise ValueError(f"{type(model).__name__} has no frame-level output (the PyTorch CNN students mn / dymn have; an ONNX export pools over time)")
    n_mels = int(getattr(tagger.frontend, "n_mels", 128))
    stride, _ = _time_stride_and_field(model, n_mels)
    return stride * _frame_hop(tagger.frontend) / tagger.sample_rate


@torch.no_grad()
def frame_tags(tagger: nn.Module, audio: Union[AudioSource, Tensor, np.ndarray], *,
               sample_rate: Optional[int] = None) -> TagsOverTime:
    """Class probabilities per output frame of a CNN student (mn / dymn) for a file or waveform.

    Frame ``j`` covers ``[j * r, (j + 1) * r)`` with ``r`` = :func:`frame_resolution`. Exact for the
    ``fully_convolutional`` head (the mean of the frame *logits* over time is the clip logits);
    a decision-level approximation for the MLP / attention heads (``model.frame_logits_exact``).
    The whole input goes through the model at once (memory grows with its length: use
    :func:`tag_over_time` for hours of audio).
    """
    from ..audio import load_audio

    if isinstance(audio, (Tensor, np.ndarray)):
        waveform = tagger.contract.to_waveform(audio, sample_rate).reshape(1, -1)
    else:
        waveform = tagger.contract.to_waveform(load_audio(audio, tagger.sample_rate)).reshape(1, -1)
    if waveform.shape[-1] < tagger.min_samples:  # frames stand for real time: zeros, only up to the shortest input
        waveform = torch.nn.functional.pad(waveform, (0, tagger.min_samples - waveform.shape[-1]))
    resolution = frame_resolution(tagger)
    spectrogram = tagger.frontend(waveform.to(tagger.device))
    if spectrogram.dim() == 3:
        spectrogram = spectrogram.unsqueeze(1)
    features = tagger.model.forward_features(spectrogram)
    logits = tagger.model.forward_frames(features)[0].transpose(0, 1).float().cpu()  # (T', C)
    probabilities = tagger.logits_to_probabilities(logits).numpy().astype(np.float32)
    indices = np.arange(probabilities.shape[0])
    return TagsOverTime(probabilities=probabilities, starts=indices * resolution, ends=(indices + 1) * resolution,
                        labels=_label_names(tagger), duration=waveform.shape[-1] / tagger.sample_rate,
                        window=resolution, hop=resolution,
                        source=str(audio) if isinstance(audio, (str, Path)) else "waveform")


# --------------------------------------------------------------------------------------
# events
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    label: str
    index: int
    onset: float  # seconds
    offset: float  # seconds
    peak_probability: float


def _thresholds(threshold: Union[float, Sequence[float], np.ndarray], num_classes: int) -> np.ndarray:
    values = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (num_classes,)).copy() \
        if np.ndim(threshold) == 0 else np.asarray(threshold, dtype=np.float64)
    if values.shape != (num_classes,):
        raise ValueError(f"expected one threshold or {num_classes} (one per class), got {values.shape[0]}")
    if not np.all((values >= 0) & (values <= 1)):
        raise ValueError(f"thresholds must lie in [0, 1], got min {values.min()} max {values.max()}")
    return values


def _check_median_window(median_window: int) -> int:
    if isinstance(median_window, bool) or not isinstance(median_window, int) or median_window < 1 \
            or median_window % 2 == 0:
        raise ValueError(f"median_window must be an odd number of windows >= 1, got {median_window!r}")
    return median_window


class EventTracker:
    """Events from per-window probabilities fed one window (or several) at a time.

    ``update(probabilities (n, C))`` returns the events that ended; ``finish()`` the rest.
    Decisions lag the input by ``median_window // 2`` windows (the median filter's look-ahead).
    An event that is still going on is never emitted twice: it is reported once, when it ends.
    """

    def __init__(self, labels: Sequence[str], grid_start: Callable[[int], float], hop: float, window: float,
                 duration: Optional[float] = None, threshold: Union[float, Sequence[float]] = DEFAULT_THRESHOLD,
                 median_window: int = DEFAULT_MEDIAN_WINDOW) -> None:
        self.labels = list(labels)
        self.thresholds = _thresholds(threshold, len(self.labels))
        self.median_window = _check_median_window(median_window)
        self.radius = self.median_window // 2
        self.start_of = grid_start
        self.hop, self.window = hop, window
        self.duration = duration
        # raw active/inactive decisions and probabilities of the windows still needed by the filter
        # (windows from `_base` on; older ones are dropped so a long stream holds a few windows)
        self._decisions: list[np.ndarray] = []
        self._probabilities: list[np.ndarray] = []
        self._base = 0
        self._received = 0
        self._filtered = 0  # windows whose filtered decision has been taken
        self._onset_window = np.full(len(self.labels), -1)
        self._peak = np.zeros(len(self.labels))

    def _time(self, index: int, edge: str, last: bool = False) -> float:
        if edge == "onset" and index == 0:
            return 0.0  # the first window stands for the start of the recording
        if edge == "offset" and last and self.duration is not None:
            return self.duration  # ... and the last one for its end
        centre = self.start_of(index) + self.window / 2
        time = centre - self.hop / 2 if edge == "onset" else centre + self.hop / 2
        time = max(0.0, time)
        return min(time, self.duration) if self.duration is not None else time

    def _filtered_decision(self, index: int) -> np.ndarray:
        last = self._received - 1
        rows = [self._decisions[min(max(j, 0), last) - self._base]
                for j in range(index - self.radius, index + self.radius + 1)]
        return np.sum(rows, axis=0) > self.radius

    def _advance(self, final: bool) -> list[Event]:
        events = []
        limit = self._received if final else self._received - self.radius
        while self._filtered < limit:
            index = self._filtered
            active = self._filtered_decision(index)
            for c in np.flatnonzero(active & (self._onset_window < 0)):
                self._onset_window[c], self._peak[c] = index, 0.0
            self._peak[active] = np.maximum(self._peak[active], self._probabilities[index - self._base][active])
            for c in np.flatnonzero(~active & (self._onset_window >= 0)):
                events.append(self._event(int(c), index - 1))
            self._filtered += 1
        keep_from = max(0, self._filtered - self.radius)  # the filter looks back `radius` windows
        if keep_from > self._base:
            del self._decisions[:keep_from - self._base]
            del self._probabilities[:keep_from - self._base]
            self._base = keep_from
        return events

    def _event(self, c: int, last_window: int, at_end: bool = False) -> Event:
        event = Event(self.labels[c], c, self._time(int(self._onset_window[c]), "onset"),
                      self._time(last_window, "offset", last=at_end), float(self._peak[c]))
        self._onset_window[c] = -1
        return event

    def update(self, probabilities: Union[np.ndarray, Tensor]) -> list[Event]:
        probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(self.labels))
        for row in probabilities:
            self._decisions.append(row > self.thresholds)
            self._probabilities.append(row)
            self._received += 1
        return self._advance(final=False)

    def finish(self, duration: Optional[float] = None) -> list[Event]:
        if duration is not None:
            self.duration = duration
        events = self._advance(final=True) if self._received else []
        for c in np.flatnonzero(self._onset_window >= 0):
            events.append(self._event(int(c), self._received - 1, at_end=True))
        return sorted(events, key=lambda e: (e.onset, e.index))


def detect_events(tags: TagsOverTime, threshold: Union[float, Sequence[float]] = DEFAULT_THRESHOLD,
                  median_window: int = DEFAULT_MEDIAN_WINDOW) -> list[Event]:
    """Sound events (onset/offset per class) of tags over time; see the module doc for the rule."""
    # the duration is given at the end, as a stream learns it: events are the same offline and live
    tracker = EventTracker(tags.labels, lambda i: i * tags.hop, tags.hop, tags.window, None, threshold, median_window)
    events = tracker.update(tags.probabilities)
    return sorted(events + tracker.finish(tags.duration), key=lambda e: (e.onset, e.index))


def events_to_csv(events: Sequence[Event], path: Union[str, Path]) -> Path:
    """CSV with ``onset,offset,label,index,peak_probability`` (seconds), one row per event."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["onset", "offset", "label", "index", "peak_probability"])
    for e in events:
        writer.writerow([f"{e.onset:.3f}", f"{e.offset:.3f}", e.label, e.index, f"{e.peak_probability:.4f}"])
    return write_text_atomic(path, buffer.getvalue())


def events_to_json(events: Sequence[Event]) -> str:
    return json.dumps([e.__dict__ for e in events], indent=1)


# --------------------------------------------------------------------------------------
# the picture
# --------------------------------------------------------------------------------------
@dataclass
class PlotStyle:
    top_k: int = 10
    width: float = 12.0
    row_height: float = 0.42
    cmap: str = "magma"
    title: Optional[str] = None
    events: Sequence[Event] = field(default_factory=list)


def plot_tags_over_time(tags: TagsOverTime, path: Union[str, Path], style: Optional[PlotStyle] = None) -> Path:
    """PNG heatmap of the top classes' probabilities over time (rows = the classes with the
    highest peak probability, highest first; each window drawn around its centre, seconds on the
    x axis), with the detected events drawn as green bars when given. Written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    style = style or PlotStyle()
    classes = tags.top_classes(style.top_k)
    matrix = tags.probabilities[:, classes].T  # (classes, windows)
    height = 1.6 + style.row_height * len(classes)
    figure, axis = plt.subplots(figsize=(style.width, height), dpi=110)
    # each window is drawn over the slot around its centre (half-way to the neighbouring centres),
    # the first from 0 s and the last to the end of the recording: the picture covers the file
    centres = tags.centres
    edges = np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [max(tags.duration, centres[-1])]])
    mesh = axis.pcolormesh(edges, np.arange(len(classes) + 1), matrix, cmap=style.cmap, vmin=0.0, vmax=1.0,
                           shading="flat")
    axis.set_yticks(np.arange(len(classes)) + 0.5)
    axis.set_yticklabels([tags.labels[c] for c in classes])
    axis.invert_yaxis()
    axis.set_xlim(0.0, edges[-1])
    axis.set_xlabel("time (s)")
    for event in style.events:
        if event.index in classes:
            row = classes.index(event.index)
            axis.plot([event.onset, event.offset], [row + 0.5, row + 0.5], color="#39d353", linewidth=3,
                      solid_capstyle="butt")
    name = Path(tags.source).name if tags.source else ""
    axis.set_title(style.title or f"{name}  (window {tags.window:g} s, hop {tags.hop:g} s)")
    colorbar = figure.colorbar(mesh, ax=axis, pad=0.01)
    colorbar.set_label("probability")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = temporary_file(path, suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)
    return path
