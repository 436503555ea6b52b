"""Decoding (PyAV), resampling and encoding."""
import numpy as np
import pytest
import torch

from conftest import FIXTURES, METRO_WAV, load_fixture, requires_shared
from efficient_tagging.audio import AudioDecodeError, decode_audio, encode_audio, load_audio, pad_or_truncate, resample


@requires_shared
def test_decode_24bit_wav_at_native_rate():
    samples, sample_rate = decode_audio(METRO_WAV)
    assert sample_rate == 44100
    assert samples.dtype == np.float32 and samples.shape == (441000,)
    assert 0.5 < np.abs(samples).max() <= 1.0


@requires_shared
def test_load_and_resample_matches_the_fixture_input():
    # The reference fixtures resampled this file to 32 kHz with torchaudio's sinc resampler.
    waveform = load_audio(METRO_WAV, 32000)
    expected = load_fixture(FIXTURES / "mel_default.pt")["input"][0]
    torch.testing.assert_close(waveform, expected, atol=1e-6, rtol=0)


def test_resampling_keeps_a_tone_and_is_band_limited():
    t = np.arange(44100) / 44100
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(tone, 44100, 32000).numpy()
    assert out.shape == (32000,)
    spectrum = np.abs(np.fft.rfft(out[1000:-1000]))
    frequencies = np.fft.rfftfreq(len(out) - 2000, 1 / 32000)
    assert abs(frequencies[spectrum.argmax()] - 440) < 2
    # a 20 kHz tone cannot exist at 32 kHz: it must be filtered out, not aliased to 12 kHz
    # (dropping/repeating samples would keep it at full amplitude)
    alias = resample(np.sin(2 * np.pi * 20000 * t).astype(np.float32), 44100, 32000).numpy()
    assert np.abs(alias[1000:-1000]).max() < 0.02


@pytest.mark.parametrize("codec,tolerance", [("wav", 1e-4), ("flac", 1e-4), ("mp3", None)])
def test_encode_decode_round_trip(codec, tolerance):
    t = np.arange(32000) / 32000
    signal = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    encoded = encode_audio(signal, 32000, codec)
    decoded, rate = decode_audio(encoded, name=f"clip.{codec}")
    assert rate == 32000
    if tolerance is not None:
        assert decoded.shape == signal.shape
        assert np.abs(decoded - signal).max() < tolerance
    else:  # lossy: same length within a frame, same content
        assert abs(len(decoded) - len(signal)) < 1152
        n = min(len(decoded), len(signal))
        assert np.corrcoef(decoded[:n], signal[:n])[0, 1] > 0.99


def test_stereo_is_averaged_to_mono(tmp_path):
    import av
    left = np.full(16000, 0.5, dtype=np.float32)
    right = np.full(16000, -0.25, dtype=np.float32)
    path = tmp_path / "stereo.wav"
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=16000)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(np.round(np.stack([left, right]) * 32767).astype(np.int16),
                                           format="s16p", layout="stereo")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    samples, rate = decode_audio(path)
    assert rate == 16000
    assert np.allclose(samples, 0.125, atol=1e-3)


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"this is not audio" * 100)
    with pytest.raises(AudioDecodeError, match="broken.mp3"):
        decode_audio(bad)
    with pytest.raises(AudioDecodeError, match="not found"):
        decode_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioDecodeError, match="clip_7"):
        decode_audio(b"\x00" * 64, name="clip_7")


def test_pad_or_truncate():
    x = torch.arange(5.0)
    assert pad_or_truncate(x, 3).tolist() == [0, 1, 2]
    assert pad_or_truncate(x, 7).tolist() == [0, 1, 2, 3, 4, 0, 0]


def _decode_frame_by_frame(data: bytes) -> np.ndarray:
    """The plain way: every frame converted to planar float32, averaged over channels, joined."""
    import io

    import av
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        converter = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.codec_context.sample_rate)
        parts = [converted.to_ndarray().mean(axis=0).astype(np.float32)
                 for frame in container.decode(stream) for converted in converter.resample(frame)]
        parts += [converted.to_ndarray().mean(axis=0).astype(np.float32) for converted in converter.resample(None)]
    return np.concatenate([p for p in parts if p.size])


@pytest.mark.parametrize("codec,channels", [("mp3", 1), ("mp3", 2), ("wav", 1), ("wav", 2), ("wav_s32", 1),
                                            ("wav_s32", 2), ("wav_float", 2), ("flac", 2), ("aac", 2)])
def test_decoding_equals_frame_by_frame_conversion_bit_for_bit(codec, channels):
    # mp3/aac decode to planar float32, read as they are; PCM (s16/s32/packed float wav, flac) is
    # converted with FFmpeg's formula in numpy; the expected samples go through FFmpeg's converter
    rng = np.random.default_rng(channels)
    t = np.arange(3 * 22050) / 22050
    left = 0.4 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 540 * t) + 0.05 * rng.standard_normal(t.size)
    signal = np.stack([left, right]).astype(np.float32) if channels == 2 else left.astype(np.float32)
    encoded = _encode_channels(signal, 22050, codec)
    expected = _decode_frame_by_frame(encoded)
    decoded, rate = decode_audio(encoded)
    assert rate == 22050 and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, expected)
    # blocks of any size join to the same samples
    from efficient_tagging.audio import iter_decode_audio
    blocks = [block for block, _ in iter_decode_audio(encoded, block_samples=3000)]
    assert len(blocks) > 5
    np.testing.assert_array_equal(np.concatenate(blocks), expected)


def _encode_channels(signal: np.ndarray, sample_rate: int, codec: str) -> bytes:
    """`signal` (N,) or (2, N) float32 encoded with PyAV into `codec`'s container, in memory."""
    import io

    import av
    codec_names = {"mp3": ("mp3", "mp3", "fltp"), "wav": ("wav", "pcm_s16le", "s16"),
                   "wav_s32": ("wav", "pcm_s32le", "s32"), "wav_float": ("wav", "pcm_f32le", "flt"),
                   "flac": ("flac", "flac", "s16"), "aac": ("adts", "aac", "fltp")}
    container_format, codec_name, sample_format = codec_names[codec]
    layout = "stereo" if signal.ndim == 2 else "mono"
    planar = np.atleast_2d(signal)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(codec_name, rate=sample_rate)
        stream.layout = layout
        if sample_format == "s16":  # packed int16: (1, N * channels), interleaved
            data = np.round(planar.T.reshape(1, -1) * 32767).astype(np.int16)
        elif sample_format == "s32":  # packed int32
            data = np.round(np.clip(planar.T.reshape(1, -1), -1, 1).astype(np.float64) * (2 ** 31 - 1)).astype(np.int32)
        elif sample_format == "flt":  # packed float32
            data = np.ascontiguousarray(planar.T.reshape(1, -1), dtype=np.float32)
        else:
            data = planar.astype(np.float32)
        frame = av.AudioFrame.from_ndarray(data, format=sample_format, layout=layout)
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
