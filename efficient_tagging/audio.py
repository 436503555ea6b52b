"""Audio decoding, resampling and encoding with PyAV (FFmpeg).

Everything the project reads goes through `decode_audio`: files on disk, encoded bytes
from an HDF5 `mp3` column, any format FFmpeg understands (wav, flac, mp3, ogg, m4a, ...).
Decoding keeps the file's own sample rate; `resample` then converts with a windowed-sinc
resampler (torchaudio's, as the reference fixtures did), never by dropping samples.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Union

import av
import numpy as np
import torch
import torchaudio.functional as AF

AudioSource = Union[str, Path, bytes, bytearray, memoryview, np.ndarray]


class AudioDecodeError(ValueError):
    """An audio file or byte string could not be decoded (names the source)."""


def _describe(source: AudioSource, name: Optional[str]) -> str:
    if name:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{len(source)} encoded bytes>"


def decode_audio(source: AudioSource, name: Optional[str] = None) -> tuple[np.ndarray, int]:
    """Decode a file path or encoded bytes to float32 mono samples in [-1, 1] at the native rate.

    Multi-channel audio is averaged to mono. Returns `(samples, sample_rate)`.
    Raises `AudioDecodeError` naming the source if nothing can be decoded.
    """
    label = _describe(source, name)
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise AudioDecodeError(f"audio file not found: {source}")
        handle: Union[str, io.BytesIO] = str(source)
    else:
        handle = io.BytesIO(bytes(np.asarray(source, dtype=np.uint8)) if isinstance(source, np.ndarray)
                            else bytes(source))
    chunks: list[np.ndarray] = []
    try:
        with av.open(handle, mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{label}: contains no audio stream")
            stream = container.streams.audio[0]
            sample_rate = stream.codec_context.sample_rate or stream.rate
            # Convert every frame to planar float32 at the native rate and layout; the
            # channel average happens here (FFmpeg's own downmix would apply mix levels).
            converter = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=sample_rate)
            for frame in container.decode(stream):
                for converted in converter.resample(frame):
                    chunks.append(converted.to_ndarray())
            for converted in converter.resample(None):
                chunks.append(converted.to_ndarray())
    except AudioDecodeError:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError) as error:
        raise AudioDecodeError(f"{label}: cannot decode audio ({type(error).__name__}: {error})") from error
    if not chunks or sum(c.shape[-1] for c in chunks) == 0:
        raise AudioDecodeError(f"{label}: decoded to zero samples")
    samples = np.concatenate(chunks, axis=-1).mean(axis=0).astype(np.float32, copy=False)
    if not np.all(np.isfinite(samples)):
        raise AudioDecodeError(f"{label}: decoded samples contain NaN or Inf")
    return samples, int(sample_rate)


def resample(samples: Union[np.ndarray, torch.Tensor], orig_sr: int, target_sr: int) -> torch.Tensor:
    """Band-limited resampling along the last axis (windowed sinc); returns a float32 tensor."""
    waveform = torch.as_tensor(samples, dtype=torch.float32)
    if orig_sr == target_sr:
        return waveform
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    return AF.resample(waveform, orig_sr, target_sr)


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


def encode_audio(waveform: Union[np.ndarray, torch.Tensor], sample_rate: int, codec: str = "mp3",
                 bitrate: Optional[int] = None) -> bytes:
    """Encode mono float samples in [-1, 1] to bytes (`mp3`, `flac` or `wav`)."""
    samples = torch.as_tensor(waveform, dtype=torch.float32).detach().cpu().numpy()
    if samples.ndim != 1:
        raise ValueError(f"encode_audio expects mono samples of shape (samples,), got {samples.shape}")
    container_format, codec_name, sample_format = {
        "mp3": ("mp3", "libmp3lame", "fltp"),
        "flac": ("flac", "flac", "s16"),
        "wav": ("wav", "pcm_s16le", "s16"),
    }.get(codec, (None, None, None))
    if container_format is None:
        raise ValueError(f"unsupported codec {codec!r}; use 'mp3', 'flac' or 'wav'")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec_name, rate=sample_rate)
        stream.layout = "mono"
        if bitrate is not None:
            stream.bit_rate = bitrate
        frame_samples = np.clip(samples, -1.0, 1.0).reshape(1, -1)
        if sample_format == "s16":
            frame_samples = np.round(frame_samples * 32767.0).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(frame_samples, format=sample_format, layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
