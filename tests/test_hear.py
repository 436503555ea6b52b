"""HEAR 2021 API (`efficient_tagging.tagging.hear`): the rules hear-validator checks, by hand.

hear-validator itself needs tensorflow, so its checks are restated here: the model is a
torch.nn.Module with int `sample_rate` (one HEAR accepts), `scene_embedding_size` and
`timestamp_embedding_size`; timestamp embeddings are float32 (n_sounds, n_timestamps, D) with
timestamps (n_sounds, n_timestamps) in ms, regularly spaced (deviation < 1 ms), starting within
one hop of 0, ending within one hop (and 50 ms) of the end and never after it; scene embeddings
are float32 (n_sounds, D). Beyond the validator: timestamps are window centres, the same for
every sound, results do not depend on the batch, and long scenes are means over windows.
All models are small random ones built from config: nothing is downloaded.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import save_tiny_teacher
from efficient_tagging import AudioTagger, get_model
from efficient_tagging.models.layers import sliding_window_starts
from efficient_tagging.tagging import hear
from efficient_tagging.tagging.hear import HearModel, as_tagger, embedding_parts, load_model

HEAR_SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)
TINY_PASST = dict(img_size=(128, 998), patch_size=16, stride=10, embed_dim=48, depth=2, num_heads=3, num_classes=7,
                  distilled=True)
TINY_AST = dict(model_size="tiny224", input_tdim=100, label_dim=5, fstride=16, tstride=16, imagenet_pretrain=False,
                verbose=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Hundreds of tiny model calls: on a shared machine, extra threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Every model here is built from config: a download attempt is a bug."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr("efficient_tagging.models.factory.cached_file", refuse)
    monkeypatch.setattr("efficient_tagging.models.ast.cached_file", refuse, raising=False)


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mn":
        return get_model(arch="mn", width_mult=0.4)
    if kind == "mn_tiny":
        return get_model(arch="mn", width_mult=0.1)
    if kind == "dymn":
        return get_model(arch="dymn", width_mult=0.4)
    if kind == "passt":
        return get_model(arch="passt", **TINY_PASST)
    if kind == "ast":
        return get_model(arch="ast", **TINY_AST)
    raise ValueError(kind)


_HEAR_MODELS: dict = {}


def hear_model(kind: str, embedding: str = "blocks_mel") -> HearModel:
    """One HEAR model per (kind, embedding) for the whole module (building and probing costs time)."""
    key = (kind, embedding)
    if key not in _HEAR_MODELS:
        _HEAR_MODELS[key] = load_model(_model(kind), embedding=embedding)
    return _HEAR_MODELS[key]


def white_noise(n_sounds: int, seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_sounds, int(seconds * sample_rate), generator=generator) * 2 - 1


def check_hear_rules(model: nn.Module, seconds: float, n_sounds: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """hear-validator's checks of the model, get_timestamp_embeddings and get_scene_embeddings."""
    assert isinstance(model, nn.Module)
    assert isinstance(model.sample_rate, int) and model.sample_rate in HEAR_SAMPLE_RATES
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    audio = white_noise(n_sounds, seconds, model.sample_rate)
    duration_ms = 1000 * seconds

    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    assert embeddings.dtype == torch.float32 and embeddings.ndim == 3 and timestamps.ndim == 2
    assert embeddings.shape[0] == n_sounds and embeddings.shape[:2] == timestamps.shape
    assert embeddings.shape[2] == model.timestamp_embedding_size
    assert torch.isfinite(embeddings).all()
    assert timestamps.dtype == torch.float32
    assert (timestamps == timestamps[:1]).all(), "every sound of a batch gets the same timestamps"
    diff = torch.diff(timestamps.double(), dim=1)
    average = diff.mean()
    assert (diff - average).abs().max() < 1e-3, "timestamps are evenly spaced"
    assert diff.max() <= 50.0 + 1e-6, "the validator asks for at most 50 ms between timestamps"
    assert timestamps.min() <= average, "timestamps start within one hop of 0"
    assert timestamps.max() >= duration_ms - average and timestamps.max() >= duration_ms - 50
    assert timestamps.max() <= duration_ms, "no timestamp after the end of the audio"

    scene = hear.get_scene_embeddings(audio, model)
    assert scene.dtype == torch.float32 and scene.shape == (n_sounds, model.scene_embedding_size)
    assert torch.isfinite(scene).all()
    return embeddings, timestamps


# --------------------------------------------------------------------------------------
# the HEAR rules, 1, 3 and 25 s, every family
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, seconds", [("mn", 1), ("mn", 3), ("mn", 25), ("dymn", 1), ("dymn", 3),
                                           ("passt", 1), ("passt", 3), ("passt", 25), ("ast", 1), ("ast", 3)])
def test_hear_rules(kind, seconds):
    model = hear_model(kind)
    # one 25-s sound: 501 windows of 160 ms are 501 model inputs (batching is tested below)
    embeddings, timestamps = check_hear_rules(model, seconds, n_sounds=1 if seconds > 10 else 2)
    # 0, 50, ..., 1000 * seconds ms: one timestamp per hop and one at each end
    assert timestamps.shape[1] == int(round(seconds / 0.05)) + 1
    assert torch.allclose(timestamps[0], torch.arange(timestamps.shape[1], dtype=torch.float32) * 50)


def test_hear_rules_odd_lengths_of_the_validator():
    """hear-validator's own lengths (timestamps of 1.07 s and 1.98 s, scenes of 2.74 s): 22, 40, 55 timestamps."""
    model = hear_model("mn")
    for seconds, count in ((1.07, 22), (1.98, 40), (2.74, 55)):
        _, timestamps = check_hear_rules(model, seconds)
        assert timestamps.shape[1] == count


def test_very_short_sounds():
    """Sounds shorter than half a window (zero-extended) or than one STFT window still follow the rules."""
    model = hear_model("mn")
    for samples in (100, 1600, 3000):
        audio = white_noise(2, samples / model.sample_rate, model.sample_rate)
        embeddings, timestamps = model.get_timestamp_embeddings(audio)
        assert timestamps.shape == (2, samples // 1600 + 1) and embeddings.shape[:2] == timestamps.shape
        assert timestamps.max() <= 1000 * samples / model.sample_rate
        assert model.get_scene_embeddings(audio).shape == (2, model.scene_embedding_size)


# --------------------------------------------------------------------------------------
# what the timestamps mean
# --------------------------------------------------------------------------------------
def test_timestamp_embeddings_are_the_embeddings_of_windows_centred_on_them():
    model = hear_model("mn")
    audio = white_noise(2, 3, model.sample_rate, seed=1)
    embeddings, timestamps = model.get_timestamp_embeddings(audio)
    half = model.window_samples // 2
    for index in (2, 10, 31, 55):  # interior windows (centre >= half a window from either end): no edge extension
        centre = int(round(float(timestamps[0, index]) * model.sample_rate / 1000))
        expected = model.embed(audio[:, centre - half:centre - half + model.window_samples])
        torch.testing.assert_close(embeddings[:, index], expected, rtol=1e-4, atol=1e-5)
    # the first window is centred on sample 0: its left half is the reflection of the sound's start
    first = torch.cat([audio[:, 1:half + 1].flip(-1), audio[:, :model.window_samples - half]], dim=1)
    torch.testing.assert_close(embeddings[:, 0], model.embed(first), rtol=1e-4, atol=1e-5)


def test_fractional_hop_does_not_drift():
    """A hop of 393.6 samples: every window is centred within half a sample of its timestamp."""
    model = load_model(_model("mn_tiny"), hop_seconds=0.0123)
    audio = white_noise(1, 3, model.sample_rate, seed=2)
    embeddings, timestamps = model.get_timestamp_embeddings(audio)
    assert timestamps.shape[1] == math.floor(3 / 0.0123) + 1
    expected = torch.arange(timestamps.shape[1], dtype=torch.float64) * 12.3
    assert (timestamps[0].double() - expected).abs().max() < 1e-3
    half = model.window_samples // 2
    centres = [int(round(float(t) * model.sample_rate / 1000)) for t in expected]
    # the last interior window: where a rounded hop (393 or 394 samples) would have drifted most
    last = max(i for i, c in enumerate(centres) if c + half <= audio.shape[1])
    centre = centres[last]
    torch.testing.assert_close(embeddings[:, last], model.embed(audio[:, centre - half:centre + half]),
                               rtol=1e-4, atol=1e-5)
    # an hour of audio: the timestamps themselves stay exact multiples of the hop
    hour = model.timestamps(3600 * model.sample_rate)
    assert hour[-1] == pytest.approx(12.3 * (len(hour) - 1)) and hour[-1] <= 3600 * 1000


# --------------------------------------------------------------------------------------
# batching, determinism, scenes
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mn", "dymn", "passt", "ast"])
def test_batch_gives_the_per_sound_results_and_is_deterministic(kind):
    model = hear_model(kind)
    audio = white_noise(3, 1.5, model.sample_rate, seed=3)
    embeddings, timestamps = model.get_timestamp_embeddings(audio)
    again, _ = model.get_timestamp_embeddings(audio)
    assert torch.equal(embeddings, again), "same input, same output"
    scene = model.get_scene_embeddings(audio)
    for row in range(audio.shape[0]):
        alone, alone_timestamps = model.get_timestamp_embeddings(audio[row:row + 1])
        assert torch.equal(alone_timestamps[0], timestamps[row])
        torch.testing.assert_close(alone[0], embeddings[row], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.get_scene_embeddings(audio[row:row + 1])[0], scene[row],
                                   rtol=1e-4, atol=1e-5)


def test_batch_size_does_not_change_results():
    tagger = as_tagger(_model("mn"))
    audio = white_noise(2, 1, 32000, seed=4)
    small, _ = HearModel(tagger, batch_size=3).get_timestamp_embeddings(audio)
    large, _ = HearModel(tagger, batch_size=100).get_timestamp_embeddings(audio)
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-5)


def test_scene_of_a_short_sound_is_one_pass_and_of_a_long_sound_the_mean_over_windows():
    model = load_model(_model("mn_tiny"), scene_window_seconds=10.0)
    assert model.scene_hop_seconds == 2.5
    short = white_noise(2, 3, model.sample_rate, seed=5)
    torch.testing.assert_close(model.get_scene_embeddings(short), model.embed(short), rtol=1e-4, atol=1e-5)
    long = white_noise(2, 25, model.sample_rate, seed=6)
    window = 10 * model.sample_rate
    starts = sliding_window_starts(long.shape[1], window, model.sample_rate * 5 // 2)
    assert starts == [0, 80000, 160000, 240000, 320000, 400000, 480000]  # 0, 2.5 ... 15 s: the last ends at 25 s
    expected = torch.stack([model.embed(long[:, s:s + window]) for s in starts]).mean(dim=0)
    torch.testing.assert_close(model.get_scene_embeddings(long), expected, rtol=1e-4, atol=1e-5)


def test_default_scene_windows_follow_the_trained_length():
    assert hear_model("mn").scene_window_seconds == 10.0
    passt = hear_model("passt")  # 998-frame grid: 99 time patches, i.e. at most 1005 frames of 10 ms
    assert passt.scene_window_seconds == pytest.approx(10.05)
    assert passt.scene_hop_seconds == pytest.approx(10.05 / 4)
    ast = hear_model("ast")  # input_tdim=100 frames of 10 ms (plus the last frame's 25 ms window)
    assert ast.sample_rate == 16000 and 1.0 < ast.scene_window_seconds < 1.03
    # a sound longer than the PaSST grid is several windows, and no window is cut (no warning)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert passt.get_scene_embeddings(white_noise(1, 12, 32000)).shape == (1, passt.scene_embedding_size)


# --------------------------------------------------------------------------------------
# embedding choices
# --------------------------------------------------------------------------------------
def test_student_embedding_sizes_mn10_and_dymn10():
    """EfficientAT HEAR's sizes: blocks 5/11/13/15 of mn10 = 40 + 112 + 160 + 160, plus 128 mel bands = 600."""
    for arch in ("mn", "dymn"):
        tagger = as_tagger(get_model(arch=arch, width_mult=1.0))
        sizes = {name: HearModel(tagger, name).scene_embedding_size for name in hear.EMBEDDING_PRESETS}
        assert sizes == {"pooled": 960, "logits_pooled": 527 + 960, "blocks": 472, "blocks_mel": 600}, arch
        assert embedding_parts(tagger.model, "blocks") == ("b5", "b11", "b13", "b15")


def test_student_parts_are_what_they_say():
    model = _model("mn")
    tagger = as_tagger(model)
    hear_blocks = HearModel(tagger, ("b0", "b5", "b16", "logits", "mel_avgs", "pooled"))
    audio = white_noise(2, 1, 32000, seed=7)
    embedding = hear_blocks.embed(audio)
    with torch.no_grad():
        spectrogram = tagger.frontend(audio).unsqueeze(1)
        x, pooled_blocks = spectrogram, []
        for index, block in enumerate(model.features):
            x = block(x)
            if index in (0, 5, 16):
                pooled_blocks.append(x.mean(dim=(2, 3)))
        logits, pooled = model(spectrogram)
    expected = torch.cat(pooled_blocks + [logits, spectrogram[:, 0].mean(dim=-1), pooled], dim=1)
    torch.testing.assert_close(embedding, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(embedding[:, -pooled.shape[1]:], pooled)  # b16 pooled is the model's embedding
    torch.testing.assert_close(pooled_blocks[-1], pooled, rtol=1e-4, atol=1e-5)


def test_dymn_blocks_are_its_layers():
    model = _model("dymn")
    hear_model_ = HearModel(as_tagger(model), ("b0", "b3", "b16"))
    audio = white_noise(1, 1, 32000, seed=8)
    with torch.no_grad():
        x = hear_model_.tagger.frontend(audio).unsqueeze(1)
        x0 = model.in_c(x)
        x3 = model.layers[2](model.layers[1](model.layers[0](x0)))
        _, pooled = model(x)
    expected = torch.cat([x0.mean(dim=(2, 3)), x3.mean(dim=(2, 3)), pooled], dim=1)
    torch.testing.assert_close(hear_model_.embed(audio), expected, rtol=1e-4, atol=1e-5)


def test_transformer_embeddings():
    passt = _model("passt")
    tagger = as_tagger(passt)
    assert embedding_parts(passt, "blocks") == ("b1", "b2")  # four evenly spaced blocks of two: both
    depth12 = get_model(arch="passt", **{**TINY_PASST, "depth": 12})
    assert embedding_parts(depth12, "blocks") == ("b3", "b6", "b9", "b12")
    depth7 = get_model(arch="passt", **{**TINY_PASST, "depth": 7})
    assert embedding_parts(depth7, "blocks") == ("b2", "b4", "b6", "b7")
    model = HearModel(tagger, ("b2", "logits", "pooled"))
    assert model.scene_embedding_size == 48 + 7 + 48
    audio = white_noise(2, 1, 32000, seed=9)
    captured = []
    handle = passt.blocks[1].register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        with torch.no_grad():
            spectrogram = tagger.frontend(audio).unsqueeze(1)
            logits, pooled = passt(spectrogram)
    finally:
        handle.remove()
    patch_mean = captured[0][:, 2:].mean(dim=1)  # class and distillation tokens left out
    torch.testing.assert_close(model.embed(audio), torch.cat([patch_mean, logits, pooled], dim=1),
                               rtol=1e-4, atol=1e-5)

    ast = hear_model("ast", "blocks_mel")
    assert ast.embedding_parts == ("b3", "b6", "b9", "b12", "mel_avgs")
    assert ast.scene_embedding_size == 4 * 192 + 128
    assert hear_model("ast", "logits_pooled").scene_embedding_size == 5 + 192


def test_ast_band_means_leave_out_the_padding_frames():
    model = HearModel(as_tagger(_model("ast")), "mel_avgs")
    audio = white_noise(1, 0.5, 16000, seed=10)  # 48 fbank frames, padded to 100
    spectrogram = model.tagger.frontend(audio)
    frames = model.tagger.frontend.num_frames(audio.shape[1])
    assert frames == 48 and spectrogram.shape[-1] == 100
    torch.testing.assert_close(model.embed(audio), spectrogram[:, 0, :, :frames].mean(dim=-1))


def test_bad_embedding_choices_are_refused():
    model = _model("mn")
    with pytest.raises(ValueError, match="unknown embedding"):
        embedding_parts(model, "middle")
    with pytest.raises(ValueError, match="b0 ... b16"):
        embedding_parts(model, ("b17",))
    with pytest.raises(ValueError, match="b1 ... b2"):
        embedding_parts(_model("passt"), ("b0",))
    with pytest.raises(ValueError, match="repeat"):
        embedding_parts(model, ("pooled", "pooled"))
    with pytest.raises(ValueError, match="at least one"):
        embedding_parts(model, ())
    with pytest.raises(ValueError, match="fewer than"):
        load_model(model, window_seconds=0.01)  # 320 samples: shorter than the 1024-sample STFT window
    with pytest.raises(ValueError, match="hop_seconds"):
        load_model(model, hop_seconds=0)


def test_integer_pcm_and_numpy_are_audio():
    """Any input (input contract): int16 PCM is scaled as audio (x / 32768), numpy as torch."""
    model = hear_model("mn")
    pcm = (torch.sin(torch.arange(16000) * 0.05) * 12000).to(torch.int16).reshape(1, -1)
    as_float = pcm.float() / 32768
    expected = model.get_scene_embeddings(as_float)
    assert torch.equal(model.get_scene_embeddings(pcm), expected)
    assert torch.equal(model.get_scene_embeddings(pcm.numpy()), expected)
    stamps, _ = model.get_timestamp_embeddings(pcm.numpy())
    assert torch.equal(stamps, model.get_timestamp_embeddings(as_float)[0])


def test_bad_audio_is_refused():
    model = hear_model("mn")
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        model.get_scene_embeddings(torch.zeros(1, 1, 32000))
    with pytest.raises(TypeError, match="float or integer PCM"):
        model.get_timestamp_embeddings(torch.zeros(1, 32000, dtype=torch.bool))
    with pytest.raises(TypeError, match="int16, int32, uint8 or int8"):
        model.get_timestamp_embeddings(torch.zeros(1, 32000, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-finite"):
        model.get_scene_embeddings(torch.full((1, 32000), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        model.get_scene_embeddings(torch.zeros(2, 0))


# --------------------------------------------------------------------------------------
# load_model's sources
# --------------------------------------------------------------------------------------
def test_load_model_from_a_checkpoint_path(tmp_path):
    path = save_tiny_teacher(tmp_path / "tiny.pt")  # mn width 0.1, 32 mels at 16 kHz
    model = load_model(str(path), embedding="blocks_mel")
    assert model.sample_rate == 16000 and model.tagger.frontend.n_mels == 32
    assert model.scene_embedding_size == 8 + 16 + 16 + 16 + 32  # blocks 5/11/13/15 at width 0.1, 32 bands
    check_hear_rules(model, 1)


def test_load_model_from_a_catalogue_name_with_a_local_weights_file(tmp_path):
    torch.manual_seed(0)
    state = get_model(arch="mn", width_mult=0.4).state_dict()
    torch.save(state, tmp_path / "mn04_as_mAP_432.pt")
    model = load_model("mn04_as", weights=tmp_path / "mn04_as_mAP_432.pt")
    assert torch.equal(model.tagger.model.state_dict()["features.0.0.weight"], state["features.0.0.weight"])
    assert model.scene_embedding_size == 384 and model.tagger.model.pretrained_name == "mn04_as"


def test_load_model_defaults_to_mn10_as(monkeypatch):
    asked = []

    def fake_get_model(name, **kwargs):
        asked.append((name, kwargs))
        return get_model(arch="mn", width_mult=0.1)

    monkeypatch.setattr(hear, "get_model", fake_get_model)
    assert load_model().scene_embedding_size == 96  # what hear-validator calls without -m
    assert load_model("").sample_rate == 32000
    assert [name for name, _ in asked] == ["mn10_as", "mn10_as"]


def test_load_model_from_a_tagger_and_errors():
    tagger = AudioTagger(_model("mn_tiny"))
    assert load_model(tagger).tagger is tagger
    with pytest.raises(ValueError, match="already built"):
        load_model(tagger, width_mult=1.0)
    with pytest.raises(ValueError, match="already built"):
        load_model(_model("mn_tiny"), arch="mn")


def test_hear_model_stays_in_eval_mode_and_moves_like_a_module():
    model = load_model(_model("mn_tiny"))
    model.train()
    assert not model.training and not model.tagger.model.training and not model.tagger.frontend.training
    assert model.to("cpu") is model and model.device.type == "cpu"
    assert "embedding=pooled" in repr(model)
