"""Tags over time, events, frame-level output, short inputs and streaming (tagging.windows / streaming)."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from conftest import FIXTURES, LABELS_CSV, METRO_WAV, REPO, float_state_dict, load_fixture, requires_shared
from efficient_tagging.audio import encode_audio, load_audio
from efficient_tagging.labels import read_class_labels_csv
from efficient_tagging.models.factory import get_model, save_checkpoint
from efficient_tagging.tagging.streaming import StreamingTagger, read_pcm
from efficient_tagging.tagging.tagger import AudioTagger
from efficient_tagging.tagging.windows import (EventTracker, TagsOverTime, WindowEngine, detect_events,
                                               frame_resolution, frame_tags, tag_over_time, window_grid)

SR = 32000
pytestmark = requires_shared


def _fixture_tagger(case: str = "mn04") -> AudioTagger:
    """A student with the reference-fixture weights (random, BatchNorm statistics from real audio)."""
    fixture = load_fixture(FIXTURES / f"{case}.pt")
    config = {k: v for k, v in fixture["config"].items() if k != "pretrained_name"}
    model = get_model(arch=fixture["kind"], **config)
    model.load_state_dict(float_state_dict(fixture["state_dict"]))
    labels = read_class_labels_csv(LABELS_CSV) if config.get("num_classes", 527) == 527 else None
    return AudioTagger(model.eval(), label_map=labels).eval()


@pytest.fixture(scope="module")
def tagger() -> AudioTagger:
    return _fixture_tagger("mn04")


@pytest.fixture(scope="module")
def metro_then_silence() -> torch.Tensor:
    """The 10-s metro recording followed by 50 s of silence, at 32 kHz (60 s)."""
    metro = load_audio(METRO_WAV, SR)
    return torch.cat([metro, torch.zeros(50 * SR)])


# ----------------------------------------------------------------------------- the grid
@pytest.mark.parametrize("seconds, window, hop, expected", [
    (60.0, 10.0, 2.5, 21), (10.0, 10.0, 2.5, 1), (3.0, 10.0, 2.5, 1), (10.01, 10.0, 2.5, 2), (12.5, 10.0, 2.5, 2),
    (7.0, 2.0, 1.0, 6)])
def test_window_count_is_the_references_grid(tagger, seconds, window, hop, expected):
    grid = window_grid(tagger.frontend, SR, window, hop)
    samples = int(round(seconds * SR))
    # EfficientAT windowed_inference.py: ceil((N - window) / hop) + 1 windows (at least one here)
    reference = max(1, math.ceil((samples - window * SR) / (hop * SR)) + 1)
    assert grid.count(samples) == reference == expected
    assert grid.padded_samples(samples) >= samples
    assert grid.window_frames == tagger.frontend.num_frames(int(window * SR))


def test_hop_is_rounded_to_whole_frames(tagger):
    grid = window_grid(tagger.frontend, SR, 1.0, 0.333)
    assert grid.hop_frames == 33 and grid.hop_seconds == pytest.approx(0.33)
    with pytest.raises(ValueError, match="hop must be a positive"):
        window_grid(tagger.frontend, SR, 1.0, 0.0)


def test_metro_then_silence_csv_png_events(tmp_path, tagger, metro_then_silence):
    """The acceptance run with random (fixture) weights: positions, files, and activity only where the sound is."""
    from efficient_tagging.cli.tag_over_time import main

    audio = tmp_path / "metro_then_silence.flac"
    audio.write_bytes(encode_audio(metro_then_silence, SR, "flac"))
    checkpoint = save_checkpoint(tmp_path / "mn04.pt", tagger.model, arch="mn", config=tagger.model.config,
                                 labels=tagger.label_map, dataset="audioset")
    out_csv, out_png, out_events = tmp_path / "tags.csv", tmp_path / "tags.png", tmp_path / "events.csv"
    code = main(["--audio_path", str(audio), "--model_path", str(checkpoint), "--output", str(out_csv), "--plot",
                 str(out_png), "--events", str(out_events), "--threshold", "0.5", "--no_progress"])
    assert code == 0
    rows = list(csv.reader(out_csv.open()))
    header, body = rows[0], rows[1:]
    assert header[:2] == ["start", "end"] and header[2:] == list(tagger.label_map.names)
    assert len(body) == 21
    starts = np.array([float(r[0]) for r in body])
    ends = np.array([float(r[1]) for r in body])
    np.testing.assert_allclose(starts, np.arange(21) * 2.5)
    np.testing.assert_allclose(ends, np.arange(21) * 2.5 + 10.0)
    probs = np.array([[float(v) for v in r[2:]] for r in body])
    # windows that hold only silence all give the silence output; the sound changes exactly the
    # windows that overlap the first 10 s: starts 0 .. 7.5, and 10 s, whose first frame (centred at
    # 10.000 s) reads the last 16 ms of the recording (frames come from the continuous spectrogram)
    silence = probs[-1]
    changed = np.abs(probs - silence).max(axis=1) > 1e-3
    assert changed.tolist() == [True] * 5 + [False] * 16
    png = out_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    events = list(csv.DictReader(out_events.open()))
    for event in events:  # every event lies on the grid of window centres +- hop/2, inside the file
        assert 0.0 <= float(event["onset"]) < float(event["offset"]) <= 60.0
    # the same through the API: offline tags = CSV (6 significant digits)
    api = tag_over_time(tagger, audio)
    np.testing.assert_allclose(api.probabilities, probs, rtol=1e-5, atol=1e-6)


def test_train_classes_active_only_at_the_start_with_trained_weights(tmp_path, metro_then_silence):
    """With the published mn10_as weights (in the download cache), rail/train classes are active
    in the first windows only. Skipped when the weights are not cached (no network in CI)."""
    from conftest import published_tagger

    tagger = published_tagger("mn10_as")
    tags = tag_over_time(tagger, metro_then_silence)
    rail = [i for i, name in enumerate(tags.labels) if any(w in name.lower() for w in ("train", "rail", "subway"))]
    peak = tags.probabilities[:, rail].max(axis=1)
    assert peak[:3].max() > 0.3 and peak[5:].max() < 0.1


# ----------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("chunk_seconds", [0.1, 0.37, 2.0])
def test_streaming_equals_the_offline_pass(tagger, metro_then_silence, chunk_seconds):
    audio = metro_then_silence[: 25 * SR]
    offline = tag_over_time(tagger, audio, window=4.0, hop=1.0)
    streamer = StreamingTagger(tagger, window=4.0, hop=1.0)
    chunk = int(round(chunk_seconds * SR))
    windows = []
    for begin in range(0, audio.numel(), chunk):
        windows += streamer.feed(audio[begin:begin + chunk])
    last, _ = streamer.close()
    windows += last
    assert [w.index for w in windows] == list(range(len(offline)))
    streamed = np.stack([w.probabilities for w in windows])
    assert np.abs(streamed - offline.probabilities).max() <= 1e-5
    np.testing.assert_allclose([w.start for w in windows], offline.starts)


def test_streaming_emits_each_window_as_soon_as_it_is_complete(tagger):
    """Latency: window i comes out with the chunk that completes its samples (+16 ms frontend look-ahead, +1 step)."""
    streamer = StreamingTagger(tagger, window=2.0, hop=0.5)
    chunk = SR // 10
    signal = 0.1 * torch.randn(8 * SR, generator=torch.Generator().manual_seed(0))
    for begin in range(0, signal.numel(), chunk):
        for window in streamer.feed(signal[begin:begin + chunk]):
            received = (begin + chunk) / SR
            assert window.end <= received <= window.end + 0.016 + 0.1 + 0.1 + 1e-9


def test_streaming_resamples_other_rates(tagger, metro_then_silence):
    """44.1 kHz input: the stream's on-the-fly resampling gives the offline file pass's tags."""
    native, _ = torch.from_numpy(load_audio(METRO_WAV, 44100).numpy()), 44100
    offline = tag_over_time(tagger, load_audio(METRO_WAV, SR), window=4.0, hop=2.0)
    streamer = StreamingTagger(tagger, window=4.0, hop=2.0, input_sample_rate=44100)
    windows = []
    for begin in range(0, native.numel(), 4410):
        windows += streamer.feed(native[begin:begin + 4410])
    windows += streamer.close()[0]
    assert len(windows) == len(offline)
    assert np.abs(np.stack([w.probabilities for w in windows]) - offline.probabilities).max() < 1e-3


def test_cli_stream_from_pcm_equals_offline_pass(tmp_path, tagger, metro_then_silence):
    from efficient_tagging.cli.tag_over_time import main

    audio = metro_then_silence[: 20 * SR]
    pcm = tmp_path / "stream.s16"
    pcm.write_bytes((audio.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().astype("<i2").tobytes())
    samples = torch.from_numpy(np.frombuffer(pcm.read_bytes(), dtype="<i2").astype(np.float32) / 32768.0)
    checkpoint = save_checkpoint(tmp_path / "mn04.pt", tagger.model, arch="mn", config=tagger.model.config,
                                 labels=tagger.label_map, dataset="audioset")
    assert main(["--stream", str(pcm), "--pcm_rate", str(SR), "--output", str(tmp_path / "s.csv"),
                 "--model_path", str(checkpoint), "--window", "4", "--hop", "2", "--quiet"]) == 0
    streamed = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    offline = tag_over_time(tagger, samples, window=4.0, hop=2.0)
    assert streamed.shape == (9, 2 + 527)
    np.testing.assert_allclose(streamed[:, :2], np.stack([offline.starts, offline.ends], axis=1))
    np.testing.assert_allclose(streamed[:, 2:], offline.probabilities, rtol=1e-5, atol=1e-6)  # CSV: 6 digits


def test_read_pcm_formats_channels_and_partial_frames(tmp_path, caplog):
    stereo = np.array([[1000, -1000], [32767, 32767], [-32768, 0]], dtype="<i2")
    path = tmp_path / "x.raw"
    path.write_bytes(stereo.tobytes() + b"\x01")  # one stray byte
    chunks = list(read_pcm(path, channels=2, sample_rate=8000, chunk_seconds=0.00025))  # 2 frames per chunk
    mono = np.concatenate(chunks)
    np.testing.assert_allclose(mono, stereo.astype(np.float32).mean(axis=1) / 32768.0)
    assert any("partial sample frame" in r.getMessage() for r in caplog.records)
    floats = tmp_path / "f.raw"
    floats.write_bytes(np.array([0.5, -0.25], dtype="<f4").tobytes())
    np.testing.assert_array_equal(np.concatenate(list(read_pcm(floats, pcm_format="f32le"))), [0.5, -0.25])
    with pytest.raises(ValueError, match="unknown PCM format"):
        list(read_pcm(floats, pcm_format="mp3"))


# ----------------------------------------------------------------------------- events
def _tags_from(probabilities: np.ndarray, hop: float = 1.0, window: float = 2.0) -> TagsOverTime:
    n = probabilities.shape[0]
    return TagsOverTime(probabilities=probabilities.astype(np.float32), starts=np.arange(n) * hop,
                        ends=np.arange(n) * hop + window, labels=[f"c{i}" for i in range(probabilities.shape[1])],
                        duration=(n - 1) * hop + window, window=window, hop=hop)


def test_events_threshold_median_filter_and_times():
    p = np.zeros((12, 2))
    p[2:6, 0] = 0.9  # one event in windows 2..5
    p[8, 0] = 0.9  # a one-window blip: removed by a 3-window median filter
    p[9:12, 1] = 0.7  # runs to the end
    tags = _tags_from(p)
    raw = detect_events(tags, threshold=0.5, median_window=1)
    assert [(e.label, e.onset, e.offset) for e in raw] == [("c0", 2.5, 6.5), ("c0", 8.5, 9.5), ("c1", 9.5, 13.0)]
    filtered = detect_events(tags, threshold=0.5, median_window=3)
    assert [(e.label, e.onset, e.offset) for e in filtered] == [("c0", 2.5, 6.5), ("c1", 9.5, 13.0)]
    assert filtered[0].peak_probability == pytest.approx(0.9)
    # median-filtering decisions == median-filtering probabilities, then thresholding (odd kernel)
    from scipy.ndimage import median_filter

    smoothed = median_filter(p, size=(3, 1), mode="nearest") > 0.5
    assert smoothed[8, 0] == False and smoothed[2:6, 0].all()  # noqa: E712
    per_class = detect_events(tags, threshold=[0.95, 0.5])
    assert [e.label for e in per_class] == ["c1"]


def test_event_tracker_fed_window_by_window_reports_each_event_once():
    rng = np.random.default_rng(0)
    p = ((rng.random((200, 5)) > 0.6) * 0.8 + rng.random((200, 5)) * 0.1).astype(np.float32)
    tags = _tags_from(p, hop=0.5, window=3.0)
    offline = detect_events(tags, 0.5, 5)
    tracker = EventTracker(tags.labels, lambda i: i * 0.5, 0.5, 3.0, None, 0.5, 5)
    online = []
    for row in p:
        online += tracker.update(row[None])
    online += tracker.finish(tags.duration)
    assert sorted(online, key=lambda e: (e.onset, e.index)) == offline
    spans = {}
    for e in offline:  # no two events of one class overlap: an ongoing event is not re-reported
        for onset, offset in spans.get(e.index, []):
            assert e.onset >= offset or e.offset <= onset
        spans.setdefault(e.index, []).append((e.onset, e.offset))


# ----------------------------------------------------------------------------- frame level
def test_frame_level_fully_convolutional_mean_equals_clip_logits():
    tagger = _fixture_tagger("mn10_fc")
    assert tagger.model.frame_logits_exact
    audio = load_audio(METRO_WAV, SR)
    with torch.no_grad():
        spectrogram = tagger.frontend(audio[None]).unsqueeze(1)
        features = tagger.model.forward_features(spectrogram)
        frames = tagger.model.forward_frames(features)
        clip, _ = tagger.model(spectrogram)  # the same model's clip logits (the tagger's fast copy folds BN)
    assert frames.shape[-1] == math.ceil(spectrogram.shape[-1] / 32)
    assert (frames.mean(-1) - clip).abs().max().item() <= 1e-5
    assert frame_resolution(tagger) == pytest.approx(0.32)
    tags = frame_tags(tagger, audio)
    assert len(tags) == frames.shape[-1] and tags.hop == pytest.approx(0.32)
    np.testing.assert_allclose(tags.probabilities, torch.sigmoid(frames[0].T).numpy(), atol=1e-6)


def test_frame_level_mlp_head_is_the_per_frame_mlp(tagger):
    assert not tagger.model.frame_logits_exact
    audio = load_audio(METRO_WAV, SR)[: 3 * SR]
    with torch.no_grad():
        features = tagger.model.forward_features(tagger.frontend(audio[None]).unsqueeze(1))
        frames = tagger.model.forward_frames(features)
        head = tagger.model.classifier
        one = head[2:](features[..., 4].mean(dim=2))  # frame 4 by hand: mean over frequency, then the MLP
    assert frames.shape[1] == 527
    torch.testing.assert_close(frames[..., 4], one, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- short inputs
def test_short_inputs_are_repeated_to_the_trained_length(tagger):
    assert tagger.clip_length is None  # a model without a stored clip length is not stretched
    audio = load_audio(METRO_WAV, SR)
    short = audio[:SR]
    tagger.clip_length = 10.0
    try:
        repeated = tagger.probabilities(short[None])
        np.testing.assert_allclose(repeated, tagger.probabilities(short.repeat(10)[None]), atol=1e-6)
        tagger.short_inputs = "pad"
        padded = tagger.probabilities(short[None])
        zeros = torch.cat([short, torch.zeros(9 * SR)])
        np.testing.assert_allclose(padded, tagger.probabilities(zeros[None]), atol=1e-6)
        # the 1-s cut tags closer to the whole 10-s recording when repeated than when zero-padded
        whole = tagger.probabilities(audio[None])
        assert (repeated - whole).abs().mean() < (padded - whole).abs().mean()
    finally:
        tagger.clip_length, tagger.short_inputs = None, "repeat"
    with pytest.raises(ValueError, match="short_inputs"):
        AudioTagger(tagger.model, short_inputs="stretch")


def test_catalogue_audioset_models_know_their_10_s_clips():
    model = get_model(arch="mn", width_mult=0.1)
    model.dataset = "audioset"
    assert AudioTagger(model).clip_length == 10.0


def test_engine_refuses_nan_and_empty_input(tagger):
    engine = WindowEngine(tagger, 2.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        engine.push(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="no audio"):
        WindowEngine(tagger, 2.0, 1.0).finish()
    assert REPO.is_dir()
