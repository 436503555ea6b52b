"""Audio decoding, resampling and encoding with PyAV (FFmpeg).

Everything the project reads goes through `decode_audio`: files on disk, encoded bytes
from an HDF5 `mp3` column, any format FFmpeg understands (wav, flac, mp3, ogg, m4a, ...).
Decoding keeps the file's own sample rate; `resample` then converts with a windowed-sinc
resampler (`efficient_tagging.resample`: plain torch, equal to the torchaudio resampler the
reference fixtures were made with), never by dropping samples.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import av
import numpy as np
import torch
from torch import Tensor

from .resample import LOWPASS_FILTER_WIDTH, ROLLOFF, sinc_kernel_width, sinc_resample

AudioSource = Union[str, Path, bytes, bytearray, memoryview, np.ndarray]

logger = logging.getLogger(__name__)


class AudioDecodeError(ValueError):
    """An audio file or byte string could not be decoded (names the source)."""


def _describe(source: AudioSource, name: Optional[str]) -> str:
    if name:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{len(source)} encoded bytes>"


# A decoded duration this far from the container's stated duration means a truncated file (or a
# wrong header): max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_FRACTION * stated). mp3 encoder
# delay/padding (< 0.1 s) stays well inside it.
DURATION_TOLERANCE_S = 0.5
DURATION_TOLERANCE_FRACTION = 0.01
# Native-rate samples gathered from consecutive PyAV frames before a block is handed on (~1.5 s
# at 44.1 kHz): keeps the per-block Python overhead small and the memory bounded.
DECODE_BLOCK_SAMPLES = 65536


def stated_duration(container: "av.container.InputContainer", stream: "av.audio.stream.AudioStream") -> Optional[float]:
    """Duration in seconds that the container/stream header states (None if it states none)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / av.time_base
    return None


def wav_header_duration(head: bytes) -> Optional[float]:
    """Seconds of audio a RIFF/WAVE header states (its `data` chunk size over the byte rate), from the
    first bytes of the file; None for anything else, or a header that states no size (streamed WAV).

    FFmpeg reports a truncated WAV's duration from the file size, so the header is read here: a WAV
    whose header says 3 s but whose data holds 1 s is then detected like a truncated mp3."""
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order = "<" if head[:4] == b"RIFF" else ">"
    position, byte_rate = 12, None
    while position + 8 <= len(head):
        chunk, size = head[position:position + 4], struct.unpack(order + "I", head[position + 4:position + 8])[0]
        if chunk == b"fmt " and position + 16 <= len(head):
            byte_rate = struct.unpack(order + "I", head[position + 16:position + 20])[0]
        elif chunk == b"data":
            if not byte_rate or size in (0, 0xFFFFFFFF):
                return None
            return size / byte_rate
        position += 8 + size + (size & 1)
    return None


def _header_bytes(source: "AudioSource", count: int = 4096) -> bytes:
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            return handle.read(count)
    if isinstance(source, np.ndarray):
        return bytes(source[:count].astype(np.uint8))
    return bytes(source[:count])


def check_duration(label: str, decoded_seconds: float, stated_seconds: Optional[float]) -> Optional[str]:
    """A warning text when the decoded duration differs from the stated one beyond the tolerance."""
    if stated_seconds is None or stated_seconds <= 0:
        return None
    tolerance = max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_FRACTION * stated_seconds)
    if abs(decoded_seconds - stated_seconds) <= tolerance:
        return None
    cause = ("the file is probably truncated (an interrupted download or copy?); only the decoded part is used"
             if decoded_seconds < stated_seconds else "its header states a wrong duration")
    return (f"{label}: decoded {decoded_seconds:.2f} s of audio but the container states {stated_seconds:.2f} s: "
            f"{cause}")


def _non_finite_error(label: str, samples: np.ndarray, offset: int, sample_rate: int) -> AudioDecodeError:
    bad = np.flatnonzero(~np.isfinite(samples))
    first = offset + int(bad[0])
    return AudioDecodeError(
        f"{label}: decoded samples contain {bad.size} non-finite values (NaN/Inf) among samples {offset}.."
        f"{offset + samples.size - 1}, the first at sample {first} ({first / sample_rate:.3f} s); the file is "
        f"damaged or holds float samples that are not audio")


# FFmpeg's integer -> float conversion (libswresample): a cast, then the power-of-two scale, in float32
_PCM_FORMATS = {"s16": (np.int16, False), "s16p": (np.int16, True), "s32": (np.int32, False),
                "s32p": (np.int32, True), "flt": (np.float32, False)}


def _float_planes(frame: Any) -> list[np.ndarray]:
    """Views of a planar-float32 frame's channels (each keeps the frame alive)."""
    return [np.frombuffer(plane, dtype=np.float32, count=frame.samples) for plane in frame.planes]


#: integer PCM -> float: FFmpeg's converter to float, (x - offset) * scale
_PCM_TO_FLOAT = {np.dtype(np.int16): (0, 2.0 ** -15), np.dtype(np.int32): (0, 2.0 ** -31),
                 np.dtype(np.uint8): (128, 2.0 ** -7), np.dtype(np.int8): (0, 2.0 ** -7)}


def pcm_to_float32(samples: np.ndarray) -> np.ndarray:
    """Integer PCM samples (int16, int32, uint8, int8; any shape) as float32 in [-1, 1), bit for bit
    what decoding a file of that sample format gives (FFmpeg's formula: int16 x * 2**-15, int32 x
    cast to float then * 2**-31, uint8 (x - 128) * 2**-7, int8 x * 2**-7)."""
    samples = np.asarray(samples)
    dtype = samples.dtype.newbyteorder("=") if samples.dtype.byteorder not in "=|" else samples.dtype
    if dtype not in _PCM_TO_FLOAT:
        raise TypeError(f"integer audio must be int16, int32, uint8 or int8 PCM, got {samples.dtype}: convert it to "
                        f"float in [-1, 1] or to one of those")
    offset, scale = _PCM_TO_FLOAT[dtype]
    if offset:
        samples = samples.astype(np.int16) - np.int16(offset)
    return np.multiply(samples, np.float32(scale), dtype=np.float32)


def _pcm_channels(frame: Any, count: int) -> Optional[list[np.ndarray]]:
    """Per-channel float32 samples of a PCM frame, bit for bit what FFmpeg's converter to planar
    float gives (x * 2**-15 for s16, x cast to float then * 2**-31 for s32, packed float split);
    None for a format handled elsewhere."""
    spec = _PCM_FORMATS.get(frame.format.name)
    if spec is None:
        return None
    dtype, planar = spec
    planes = frame.planes
    if planar:
        raw = [np.frombuffer(plane, dtype=dtype, count=count) for plane in planes]
    else:
        width = len(frame.layout.channels)
        interleaved = np.frombuffer(planes[0], dtype=dtype, count=count * width)
        raw = [interleaved[c::width] for c in range(width)]
    if dtype is np.float32:
        return [np.ascontiguousarray(channel) for channel in raw]
    return [pcm_to_float32(channel) for channel in raw]


def _decoder_input(source: AudioSource) -> Union[str, io.BytesIO]:
    """What `av.open` reads: a file path (checked to exist) or the encoded bytes in memory."""
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise AudioDecodeError(f"audio file not found: {source}")
        return str(source)
    return io.BytesIO(bytes(np.asarray(source, dtype=np.uint8)) if isinstance(source, np.ndarray)
                      else bytes(source))


def _first_audio_stream(container: "av.container.InputContainer", label: str) -> "av.audio.stream.AudioStream":
    if not container.streams.audio:
        raise AudioDecodeError(f"{label}: contains no audio stream")
    return container.streams.audio[0]


def _planar_frames(container: "av.container.InputContainer", stream: "av.audio.stream.AudioStream",
                   sample_rate: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    """`(samples, channels)` of every decoded frame, each channel float32 at the native rate and layout.

    The channel average happens in the caller (FFmpeg's own downmix would apply mix levels). Frames
    in planar float32 (mp3, aac, vorbis, opus) are read as they are, and integer / packed-float PCM
    (wav, flac, ...) is converted here with FFmpeg's own formula (_pcm_channels); anything else (or a
    mid-stream change of format, layout or rate) goes through FFmpeg's converter, which then takes
    every later frame, in order (its buffered samples would otherwise come out of order).
    """
    layout = stream.layout.name
    converter = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
    converting = False
    for frame in container.decode(stream):
        if not converting and frame.layout.name == layout and frame.sample_rate == sample_rate:
            count = frame.samples
            if frame.format.name == "fltp":
                yield count, _float_planes(frame)
                continue
            direct = _pcm_channels(frame, count)
            if direct is not None:
                yield count, direct
                continue
        converting = True
        for converted in converter.resample(frame):
            yield converted.samples, _float_planes(converted)
    if converting:
        for converted in converter.resample(None):
            yield converted.samples, _float_planes(converted)


class _PendingChannels:
    """Decoded samples gathered until a block is full, per channel.

    Holds float32 arrays (views of fltp frames' plane buffers, each keeping its frame alive); the
    channel average runs once per block, elementwise the same as per frame, so it costs one numpy
    call per block instead of one per frame.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.channels: list[list[np.ndarray]] = []
        self.samples = 0

    def add(self, count: int, planes: list[np.ndarray]) -> None:
        if len(self.channels) != len(planes):
            if self.channels:  # the converter keeps the stream's layout: cannot happen short of a bug
                raise AudioDecodeError(f"{self.label}: channel count changed from {len(self.channels)} to "
                                       f"{len(planes)} mid-stream")
            self.channels = [[] for _ in planes]
        for views, plane in zip(self.channels, planes):
            views.append(plane)
        self.samples += count

    def take_block(self, offset: int, sample_rate: int) -> np.ndarray:
        """The gathered samples as one mono block (checked finite; `offset` names its first sample in
        the error), emptying the buffer but keeping the channel count for the next check."""
        joined = [np.concatenate(views) for views in self.channels]
        block = joined[0] if len(joined) == 1 else np.vstack(joined).mean(axis=0).astype(np.float32, copy=False)
        if not np.all(np.isfinite(block)):
            raise _non_finite_error(self.label, block, offset, sample_rate)
        self.channels, self.samples = [[] for _ in self.channels], 0
        return block


def _stated_seconds(source: AudioSource, container: "av.container.InputContainer",
                    stream: "av.audio.stream.AudioStream") -> Optional[float]:
    """The duration the file states, to compare the decoded one against."""
    stated = stated_duration(container, stream)
    header = wav_header_duration(_header_bytes(source)) if container.format.name == "wav" else None
    if header is not None:
        stated = header  # the WAV header's own statement (FFmpeg's comes from the file size)
    return stated


def iter_decode_audio(source: AudioSource, name: Optional[str] = None,
                      block_samples: int = DECODE_BLOCK_SAMPLES) -> Iterator[tuple[np.ndarray, int]]:
    """Decode a file path or encoded bytes block by block, never holding the whole file.

    Yields `(samples, sample_rate)`: float32 mono samples in [-1, 1] at the native rate, in
    blocks of about `block_samples` (consecutive PyAV frames joined; the last block is
    shorter). Multi-channel audio is averaged to mono. Raises `AudioDecodeError` naming the
    source if nothing can be decoded or a block holds NaN/Inf; logs a warning (module logger)
    when the decoded duration differs from the container's stated duration by more than
    max(0.5 s, 1 %) -- e.g. a truncated mp3 whose header still states the full length.
    """
    label = _describe(source, name)
    handle = _decoder_input(source)
    decoded = 0
    try:
        with av.open(handle, mode="r") as container:
            stream = _first_audio_stream(container, label)
            sample_rate = int(stream.codec_context.sample_rate or stream.rate)
            pending = _PendingChannels(label)
            for count, planes in _planar_frames(container, stream, sample_rate):
                if count == 0:
                    continue
                pending.add(count, planes)
                if pending.samples >= block_samples:
                    block = pending.take_block(decoded, sample_rate)
                    decoded += block.size
                    yield block, sample_rate
            if pending.samples:
                block = pending.take_block(decoded, sample_rate)
                decoded += block.size
                yield block, sample_rate
            stated = _stated_seconds(source, container, stream)
    except AudioDecodeError:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError) as error:
        raise AudioDecodeError(f"{label}: cannot decode audio ({type(error).__name__}: {error})") from error
    if decoded == 0:
        raise AudioDecodeError(f"{label}: decoded to zero samples")
    warning = check_duration(label, decoded / sample_rate, stated)
    if warning:
        logger.warning(warning)


def decode_audio(source: AudioSource, name: Optional[str] = None) -> tuple[np.ndarray, int]:
    """Decode a file path or encoded bytes to float32 mono samples in [-1, 1] at the native rate.

    Multi-channel audio is averaged to mono. Returns `(samples, sample_rate)`.
    Raises `AudioDecodeError` naming the source if nothing can be decoded, and warns (logging)
    about a decoded duration that differs from the stated one (see `iter_decode_audio`).
    """
    blocks: list[np.ndarray] = []
    sample_rate = 0
    # one block for the whole file: a NaN/Inf count then covers the whole file
    for block, sample_rate in iter_decode_audio(source, name, block_samples=1 << 62):
        blocks.append(block)
    return (blocks[0] if len(blocks) == 1 else np.concatenate(blocks)), int(sample_rate)


def resample(samples: Union[np.ndarray, torch.Tensor], orig_sr: int, target_sr: int) -> torch.Tensor:
    """Band-limited resampling along the last axis (windowed sinc); returns a float32 tensor.

    Any leading axes are separate signals, resampled together; a tensor stays on its device.
    Output length `ceil(samples * target_sr / orig_sr)`. See `efficient_tagging.resample`.
    """
    waveform = torch.as_tensor(samples, dtype=torch.float32)
    if orig_sr == target_sr:
        return waveform
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    return sinc_resample(waveform, orig_sr, target_sr)


def resampler_settings() -> dict:
    """What determines `resample`'s output besides the rates: the resampler, its parameters, torch.

    Caches of resampled audio (data.waveform_cache) key on this, so a change of resampler (or of
    the torch whose float32 sin/cos/conv1d it runs on) invalidates them instead of serving audio
    the current code would not produce. The resampler is this project's own since torchaudio was
    dropped: its CPU output equals torchaudio's bit for bit in every case measured, but equality
    is not guaranteed for every input, torch build and length (output lengths above 2**24 samples
    differ on purpose), so the description changed and caches made with torchaudio are rebuilt once.
    """
    return {"resampler": "efficient_tagging.resample.sinc_resample",
            "computes": "Hann-windowed sinc low-pass at rolloff * min(rates) / 2, gcd-reduced rates, strided "
                        "conv1d in float32, kernel evaluated in float32 as torchaudio's sinc_interp_hann, "
                        "zero padding at both ends, exact ceil(n * new / orig) output samples",
            "method": "sinc_interp_hann", "lowpass_filter_width": LOWPASS_FILTER_WIDTH, "rolloff": ROLLOFF,
            "torch": torch.__version__.split("+")[0]}


def decoder_settings() -> dict:
    """What determines `decode_audio`'s samples besides the input bytes: PyAV and its FFmpeg."""
    ffmpeg = getattr(av, "ffmpeg_version_info", None) or str(getattr(av, "library_versions", {}).get("libavcodec", ""))
    return {"decoder": "pyav", "av": av.__version__, "ffmpeg": str(ffmpeg), "mono": "mean of channels"}


def resampler_context(orig_sr: int, target_sr: int) -> int:
    """Input samples either side of a block that `resample` (the windowed sinc) reads.

    The resampler reduces the rates by their gcd to `orig`/`new` and convolves with a kernel that
    reaches `width = ceil(6 * orig / (0.99 * min(orig, new)))` input samples beyond each block
    of `orig` inputs (`efficient_tagging.resample.sinc_kernel_width`). Returned as a multiple of
    `orig` (so output positions stay integral), at least `width`.
    """
    gcd = math.gcd(int(orig_sr), int(target_sr))
    orig = orig_sr // gcd
    width = sinc_kernel_width(orig_sr, target_sr)
    return orig * math.ceil((width + 1) / orig)


def concat_samples(pieces: list[Tensor]) -> Tensor:
    """Join 1-D sample blocks. CPU blocks are joined with numpy: torch.cat of many 1-D CPU tensors
    with several intra-op threads was measured 50x slower (0.25 s for 30 x 65536 samples on a busy
    2-core machine)."""
    if len(pieces) == 1:
        return pieces[0]
    if all(p.device.type == "cpu" for p in pieces):
        return torch.from_numpy(np.concatenate([p.numpy() for p in pieces]))
    return torch.cat(pieces)


class StreamingResampler:
    """`resample` over a stream of blocks, seamlessly: the output equals one `resample` call on the
    concatenated input (within float rounding), holding only about `step` + 2 contexts of input.

    The input is cut into steps of a multiple of the reduced rate `orig` (each step gives an
    integral number of outputs); every step is resampled together with `resampler_context`
    input samples of its neighbours on both sides, and only the outputs of the step itself are
    kept, so the zero padding of the single call appears only at the true start and end.
    Nothing is emitted until more than one step of input has arrived: an input of at most one
    step is resampled in one call at `flush`, bit-identical to `resample`.
    """

    def __init__(self, orig_sr: int, target_sr: int, step_samples: int = 1 << 20) -> None:
        if orig_sr <= 0 or target_sr <= 0:
            raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
        self.orig_sr, self.target_sr = int(orig_sr), int(target_sr)
        gcd = math.gcd(self.orig_sr, self.target_sr)
        self._orig, self._new = self.orig_sr // gcd, self.target_sr // gcd
        self.context = resampler_context(self.orig_sr, self.target_sr)
        self.step = self._orig * max(1, math.ceil(step_samples / self._orig))
        self._pieces: list[Tensor] = []
        self._buffered = 0  # samples in _pieces
        self._position = 0  # absolute input index of the next output step (multiple of _orig)
        self._buffer_start = 0  # absolute input index of _pieces[0][0]

    def _buffer(self) -> Tensor:
        if len(self._pieces) != 1:
            self._pieces = [concat_samples(self._pieces)] if self._pieces else [torch.zeros(0)]
        return self._pieces[0]

    def push(self, samples: Union[np.ndarray, Tensor]) -> Iterator[Tensor]:
        """Feed input samples; yields every output block that is now final."""
        block = torch.as_tensor(samples, dtype=torch.float32).reshape(-1)
        if self.orig_sr == self.target_sr:
            yield block
            return
        self._pieces.append(block)
        self._buffered += block.numel()
        end = self._buffer_start + self._buffered
        while end >= self._position + self.step + self.context:
            buffer = self._buffer()
            left = min(self.context, self._position)
            start = self._position - left - self._buffer_start
            segment = buffer[start:start + left + self.step + self.context]
            out = sinc_resample(segment, self.orig_sr, self.target_sr)
            first = left // self._orig * self._new
            yield out[first:first + self.step // self._orig * self._new]
            self._position += self.step
            keep_from = self._position - self.context - self._buffer_start
            self._pieces = [buffer[keep_from:].clone()]
            self._buffer_start += keep_from
            self._buffered -= keep_from

    def flush(self) -> Iterator[Tensor]:
        """Yields the outputs of the remaining input (the true end: zero padding as `resample`)."""
        if self.orig_sr == self.target_sr or not self._buffered:
            return
        buffer = self._buffer()
        left = self._position - self._buffer_start
        if self._buffer_start + self._buffered <= self._position:
            return
        out = sinc_resample(buffer, self.orig_sr, self.target_sr)
        self._pieces, self._buffered = [], 0
        yield out[left // self._orig * self._new:]


def resample_blocks(blocks: Iterable[Union[np.ndarray, Tensor]], orig_sr: int, target_sr: int,
                    step_samples: int = 1 << 20) -> Iterator[Tensor]:
    """`resample` applied to a stream of blocks (see `StreamingResampler`); one input block alone
    is resampled in one call, exactly as `resample` does."""
    iterator = iter(blocks)
    first = next(iterator, None)
    if first is None:
        return
    second = next(iterator, None)
    if second is None:
        yield resample(first, orig_sr, target_sr)
        return
    resampler = StreamingResampler(orig_sr, target_sr, step_samples)
    for block in (first, second):
        yield from resampler.push(block)
    for block in iterator:
        yield from resampler.push(block)
    yield from resampler.flush()


def rebuffer(blocks: Iterable[Tensor], block_samples: int) -> Iterator[Tensor]:
    """Re-cut a stream of 1-D blocks into blocks of exactly `block_samples` (the last one shorter)."""
    pending: list[Tensor] = []
    pending_samples = 0
    for block in blocks:
        pending.append(block)
        pending_samples += block.numel()
        if pending_samples >= block_samples:
            joined = concat_samples(pending)
            cut = 0
            while pending_samples - cut >= block_samples:
                yield joined[cut:cut + block_samples]
                cut += block_samples
            pending = [joined[cut:].clone()] if cut < joined.numel() else []
            pending_samples -= cut
    if pending_samples:
        yield concat_samples(pending)


def stream_audio(source: AudioSource, sample_rate: int, block_samples: int,
                 name: Optional[str] = None) -> Iterator[Tensor]:
    """Decode `source` and resample it to `sample_rate` as 1-D float32 blocks of `block_samples`.

    Memory stays bounded by a few blocks whatever the file length: the file is decoded frame by
    frame (`iter_decode_audio`) and resampled with `StreamingResampler` (seamless across blocks).
    The concatenated blocks equal `load_audio(source, sample_rate)` within float rounding; a file
    of at most `block_samples` output samples comes as a single block identical to `load_audio`.
    Raises/warns like `decode_audio`.
    """
    if block_samples < 1:
        raise ValueError(f"block_samples must be a positive sample count, got {block_samples}")

    def resampled() -> Iterator[Tensor]:
        resampler: Optional[StreamingResampler] = None
        for samples, native_sr in iter_decode_audio(source, name):
            if resampler is None:
                # one step gives just more than one output block: a file of one block is
                # resampled in a single call, like load_audio
                resampler = StreamingResampler(native_sr, sample_rate,
                                               math.ceil(block_samples * native_sr / sample_rate) + 1)
            yield from resampler.push(samples)
        if resampler is not None:
            yield from resampler.flush()

    yield from rebuffer(resampled(), block_samples)


def pad_or_truncate(waveform: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad at the end or cut the last axis to exactly `length` samples."""
    current = waveform.shape[-1]
    if current == length:
        return waveform
    if current > length:
        return waveform[..., :length]
    return torch.nn.functional.pad(waveform, (0, length - current))


def load_audio(source: AudioSource, sample_rate: int, duration: Optional[float] = None,
               name: Optional[str] = None) -> torch.Tensor:
    """Decode `source`, resample to `sample_rate` and optionally pad/cut to `duration` seconds.

    Returns a 1-D float32 tensor.
    """
    samples, native_sr = decode_audio(source, name=name)
    waveform = resample(samples, native_sr, sample_rate)
    if duration is not None:
        waveform = pad_or_truncate(waveform, int(round(duration * sample_rate)))
    return waveform


# codec -> (container format, FFmpeg encoder, sample format fed to it)
ENCODINGS = {"mp3": ("mp3", "libmp3lame", "fltp"), "flac": ("flac", "flac", "s16"), "wav": ("wav", "pcm_s16le", "s16")}


@contextlib.contextmanager
def audio_writer(destination: Union[str, Path, io.BytesIO], sample_rate: int, codec: str = "mp3",
                 bitrate: Optional[int] = None) -> Iterator[Callable[[Union[np.ndarray, torch.Tensor]], None]]:
    """`with audio_writer(path, sr, "mp3") as write: write(block); write(block) ...`: encode mono float
    samples in [-1, 1] block by block (`mp3`, `flac` or `wav`), so long files never sit in memory whole.
    Blocks of int16 PCM (numpy) go to wav / flac exactly as they are; float blocks are scaled by 32767."""
    if codec not in ENCODINGS:
        raise ValueError(f"unsupported codec {codec!r}; use {', '.join(repr(c) for c in ENCODINGS)}")
    container_format, codec_name, sample_format = ENCODINGS[codec]
    target = str(destination) if isinstance(destination, (str, Path)) else destination
    with av.open(target, mode="w", format=container_format) as container:
        stream = container.add_stream(codec_name, rate=sample_rate)
        stream.layout = "mono"
        if bitrate is not None:
            stream.bit_rate = bitrate

        def write(block: Union[np.ndarray, torch.Tensor]) -> None:
            if isinstance(block, np.ndarray) and block.dtype == np.int16 and sample_format == "s16":
                frame_samples = block.reshape(1, -1)  # 16-bit PCM given: written exactly as it is
                if block.ndim != 1:
                    raise ValueError(f"audio_writer expects mono samples of shape (samples,), got {block.shape}")
            else:
                samples = torch.as_tensor(block, dtype=torch.float32).detach().cpu().numpy()
                if samples.ndim != 1:
                    raise ValueError(f"audio_writer expects mono samples of shape (samples,), got {samples.shape}")
                frame_samples = np.clip(samples, -1.0, 1.0).reshape(1, -1)
            if sample_format == "s16" and frame_samples.dtype != np.int16:
                frame_samples = np.round(frame_samples * 32767.0).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(frame_samples, format=sample_format, layout="mono")
            frame.sample_rate = sample_rate
            for packet in stream.encode(frame):
                container.mux(packet)

        yield write
        for packet in stream.encode(None):
            container.mux(packet)


def encode_audio(waveform: Union[np.ndarray, torch.Tensor], sample_rate: int, codec: str = "mp3",
                 bitrate: Optional[int] = None) -> bytes:
    """Encode mono float samples in [-1, 1] to bytes (`mp3`, `flac` or `wav`); int16 PCM (numpy) is
    written to wav / flac exactly as it is."""
    samples = waveform if isinstance(waveform, np.ndarray) and waveform.dtype == np.int16 else torch.as_tensor(
        waveform, dtype=torch.float32)
    if samples.ndim != 1:
        raise ValueError(f"encode_audio expects mono samples of shape (samples,), got {tuple(samples.shape)}")
    buffer = io.BytesIO()
    with audio_writer(buffer, sample_rate, codec, bitrate) as write:
        write(samples)
    return buffer.getvalue()
