"""Robustness of tagging (issue 9, items 11-14, 20, 21): bad waveforms, long and truncated files,
argument validation, the complexity tool's catalogue metadata and plot, checkpoint labels."""
from __future__ import annotations

import logging
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from conftest import FIXTURES, METRO_WAV, REPO, float_state_dict, load_fixture, requires_shared
from efficient_tagging import AudioTagger, get_model, save_checkpoint
from efficient_tagging.audio import (
    AudioDecodeError,
    StreamingResampler,
    encode_audio,
    iter_decode_audio,
    load_audio,
    resample,
    resample_blocks,
    stream_audio,
)
from efficient_tagging import complexity
from efficient_tagging.cli import complexity as complexity_cli
from efficient_tagging.frontends import build_frontend
from efficient_tagging.labels import LabelMap
from efficient_tagging.tagging import TeacherEnsemble
from efficient_tagging.tagging.long_input import SpectrogramStream, WindowPlan, stream_forward

SR = 32000


def _student(width: float = 0.1, num_classes: int = 6, seed: int = 0, head_scale: float = 30.0,
             **config) -> torch.nn.Module:
    """A small random mn student with realistic activations and logits spread over several units.

    Fresh BatchNorm statistics (mean 0, var 1) make a random network's activations vanish, so
    they are set to the statistics of a tone-and-noise spectrogram first; the last layer is then
    scaled so that the logits are not all ~0.
    """
    torch.manual_seed(seed)
    model = get_model(arch="mn", width_mult=width, num_classes=num_classes, **config)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration passes
    model.train()
    frontend = build_frontend({})
    with torch.no_grad():
        model(frontend(torch.stack([_tones(10.0, seed=seed), _tones(10.0, seed=seed + 1)])).unsqueeze(1))
        model.eval()
        last = model.classifier[-1] if isinstance(model.classifier, torch.nn.Sequential) else None
        if isinstance(last, torch.nn.Linear):
            last.weight.mul_(head_scale)
    return model


def _fixture_student(case: str) -> torch.nn.Module:
    fixture = load_fixture(FIXTURES / f"{case}.pt")
    config = {k: v for k, v in fixture["config"].items() if k != "pretrained_name"}
    model = get_model(arch=fixture["kind"], **config)
    model.load_state_dict(float_state_dict(fixture["state_dict"]))
    return model.eval()


def _tones(seconds: float, sample_rate: int = SR, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 0.1 * t) > 0)
    return torch.from_numpy(wave.astype(np.float32))


def _write_float_wav(path, samples: np.ndarray, sample_rate: int) -> None:
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_f32le", rate=sample_rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


# ----------------------------------------------------------------------------------------
# item 11: NaN / inf in a waveform
# ----------------------------------------------------------------------------------------
def test_non_finite_waveform_is_refused_naming_count_and_position():
    tagger = AudioTagger(_student())
    waveform = torch.zeros(SR)
    waveform[100] = float("nan")
    waveform[20000] = float("inf")
    calls = {"probabilities": lambda: tagger.probabilities(waveform[None]),
             "tag_waveform": lambda: tagger.tag_waveform(waveform),
             "forward": lambda: tagger(waveform[None])}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"2 non-finite samples \(1 NaN, 1 inf\)") as error:
            call()
        assert "sample 100 (0.003 s)" in str(error.value) and "sample 20000" in str(error.value), name


def test_file_with_nan_samples_names_count_and_position(tmp_path):
    samples = np.zeros(8000, dtype=np.float32)
    samples[[123, 124, 4000]] = np.nan
    path = tmp_path / "float.wav"
    _write_float_wav(path, samples, 16000)
    tagger = AudioTagger(_student())
    with pytest.raises(AudioDecodeError, match=r"float.wav.*3 non-finite values.*first at sample 123 \(0.008 s\)"):
        tagger.tag_file(path)


# ----------------------------------------------------------------------------------------
# item 12: long inputs in bounded memory
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rates", [(44100, 32000), (48000, 32000), (16000, 32000), (32000, 16000), (22050, 16000)])
def test_streaming_resampler_is_seamless(rates):
    orig, new = rates
    torch.manual_seed(0)
    signal = torch.randn(orig * 3 + 77)
    whole = resample(signal, orig, new)
    sizes = np.random.default_rng(1).integers(1, 9000, size=400)
    blocks = list(torch.split(signal, [int(s) for s in sizes[np.cumsum(sizes) < len(signal)]]
                              + [len(signal) - int(sizes[np.cumsum(sizes) < len(signal)].sum())]))
    resampler = StreamingResampler(orig, new, step_samples=orig // 3)
    out = [piece for block in blocks for piece in resampler.push(block)] + list(resampler.flush())
    assert len(out) > 5  # really streamed, in many steps
    streamed = torch.cat(out)
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, atol=1e-6, rtol=0)
    # one block alone: a single call, bit-identical
    assert torch.equal(torch.cat(list(resample_blocks([signal], orig, new))), whole)


def test_decoder_and_stream_yield_bounded_blocks(tmp_path):
    path = tmp_path / "long.flac"
    path.write_bytes(encode_audio(_tones(40.0, 44100), 44100, "flac"))
    native = list(iter_decode_audio(path, block_samples=20000))
    assert all(rate == 44100 for _, rate in native)
    assert max(len(block) for block, _ in native) < 20000 + 4608  # a few codec frames over the target at most
    assert sum(len(block) for block, _ in native) == 40 * 44100
    block = 3 * SR
    blocks = list(stream_audio(path, SR, block))
    assert [len(b) for b in blocks[:-1]] == [block] * (len(blocks) - 1) and 0 < len(blocks[-1]) <= block
    torch.testing.assert_close(torch.cat(blocks), load_audio(path, SR), atol=1e-6, rtol=0)
    # a file of at most one block: one block, identical to load_audio
    short = tmp_path / "short.flac"
    short.write_bytes(encode_audio(_tones(2.0, 44100), 44100, "flac"))
    only = list(stream_audio(short, SR, block))
    assert len(only) == 1 and torch.equal(only[0], load_audio(short, SR))


@pytest.mark.parametrize("preprocessing", [{}, {"frontend": "ast_fbank", "sr": 16000, "target_length": 128}],
                         ids=["mel", "ast_fbank"])
def test_spectrogram_stream_equals_the_whole_file_spectrogram(preprocessing):
    frontend = build_frontend(preprocessing)
    rate = int(preprocessing.get("sr", SR))
    waveform = _tones(12.0, rate)
    whole = frontend(waveform[None])
    whole = whole.unsqueeze(1) if whole.dim() == 3 else whole
    stream = SpectrogramStream(frontend, step_frames=150)
    pieces = [p for block in waveform.split(7777) for p in stream.push(block)] + list(stream.flush())
    assert len(pieces) > 5 and max(p.shape[-1] for p in pieces) <= 150
    # AST: each piece removes its own mean (Kaldi's per-frame DC removal cancels it up to rounding)
    tolerance = 1e-4 if preprocessing else 1e-6
    torch.testing.assert_close(torch.cat(pieces, dim=-1), whole, atol=tolerance, rtol=0)


def test_windows_of_a_convolutional_student_equal_the_whole_pass():
    # Without squeeze-excitation the body is purely convolutional: pooled features of windows whose
    # margins cover the receptive field give the whole-file result.
    model = _student(width=0.4, se_dims="none")
    frontend = build_frontend({})
    waveform = _tones(40.0)
    with torch.no_grad():
        logits, embedding = model(frontend(waveform[None]).unsqueeze(1))
        plan = WindowPlan(owned=640, margin=320, stride=32)  # 6 windows of <= 1280 frames
        seen = []
        original = model.forward_features
        model.forward_features = lambda x: (seen.append(x.shape[-1]), original(x))[1]
        chunked_logits, chunked_embedding = stream_forward(frontend, model, waveform.split(SR), 1280, plan=plan)
    assert len(seen) >= 6 and max(seen) <= 1280
    torch.testing.assert_close(chunked_embedding, embedding, atol=1e-5 * float(embedding.abs().max()), rtol=0)
    torch.testing.assert_close(chunked_logits, logits, atol=1e-5 * float(logits.abs().max()), rtol=0)
    # too-narrow margins (half the receptive field is 297 frames) would not be exact
    narrow = stream_forward(frontend, model, waveform.split(SR), 1280, plan=WindowPlan(640, 96, 32))[1]
    assert (narrow - embedding).abs().max() > 1e-3 * embedding.abs().max()


@requires_shared
def test_long_file_is_tagged_in_bounded_windows_close_to_the_whole_file(tmp_path):
    # mn04 with the reference-fixture weights; the 10-s recording repeated to 2 minutes, 20-s chunks
    model = _fixture_student("mn04")
    tagger = AudioTagger(model, chunk_seconds=20.0)
    recording = load_audio(METRO_WAV, SR)
    long = recording.repeat(12)
    path = tmp_path / "long.flac"
    path.write_bytes(encode_audio(long, SR, "flac"))
    decoded = load_audio(path, SR)
    with torch.no_grad():
        whole = torch.sigmoid(tagger(decoded[None]))  # the one-pass result (memory grows with length)
    seen = []
    with torch.no_grad():
        running = tagger.inference_model()  # the module that computes the logits (the fast copy by default)
    original = running.forward_features
    running.forward_features = lambda x: (seen.append(x.shape[-1]), original(x))[1]
    chunked = tagger.file_probabilities(path)
    assert len(seen) >= 5 and max(seen) <= tagger.chunk_frames  # the model never sees more than a chunk
    # the documented tolerance for 20-s chunks (module doc of tagging.long_input): squeeze-excitation sees
    # window means instead of whole-file means
    assert (chunked - whole).abs().max() < 0.06
    # a file no longer than the chunk keeps the one-pass result exactly
    short = AudioTagger(model, chunk_seconds=20.0)
    with torch.no_grad():
        expected = torch.sigmoid(short(load_audio(METRO_WAV, SR)[None]))
    assert torch.equal(short.file_probabilities(METRO_WAV), expected)


def test_transformer_teacher_windows_stream_to_the_whole_pass_result():
    torch.manual_seed(0)
    model = get_model(arch="passt", embed_dim=64, depth=1, num_heads=4, num_classes=5, img_size=(128, 998))
    model.preprocessing = {"frontend": "passt_mel"}
    tagger = AudioTagger(model.eval(), chunk_seconds=12.0)
    waveform = _tones(41.0)
    with torch.no_grad():
        whole = tagger(waveform[None])  # sliding windows over the whole spectrogram
        chunked = tagger.stream_logits(lambda: iter(waveform.split(5 * SR)))
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_ensemble_streams_each_member_at_its_rate():
    members = [AudioTagger(_student(seed=1, se_dims="none"), chunk_seconds=10.0),
               AudioTagger(_student(seed=2, se_dims="none"), sample_rate=16000,
                           frontend=build_frontend({"sr": 16000, "win_length": 400, "hopsize": 160, "n_fft": 512}),
                           chunk_seconds=10.0)]
    ensemble = TeacherEnsemble(members)
    ensemble.chunk_seconds = 10.0
    waveform = _tones(25.0)
    with torch.no_grad():
        whole = ensemble(waveform[None])
    chunked = ensemble.stream_logits(lambda: iter(waveform.split(4 * SR)))
    torch.testing.assert_close(chunked, whole, atol=1e-4 * float(whole.abs().max()), rtol=0)
    torch.testing.assert_close(ensemble.probabilities(waveform[None]), torch.sigmoid(whole), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------
# item 13: truncated files
# ----------------------------------------------------------------------------------------
def test_truncated_mp3_warns_with_decoded_and_stated_duration(tmp_path, caplog):
    encoded = encode_audio(_tones(6.0), SR, "mp3")
    complete, truncated = tmp_path / "complete.mp3", tmp_path / "truncated.mp3"
    complete.write_bytes(encoded)
    truncated.write_bytes(encoded[:len(encoded) // 2])
    tagger = AudioTagger(_student())
    with caplog.at_level(logging.WARNING):
        tagger.tag_file(complete)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with caplog.at_level(logging.WARNING):
        tagger.tag_file(truncated)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("truncated.mp3" in m and "container states 6.00 s" in m and "decoded 2.9" in m and "truncated" in m
               for m in messages), messages


def test_tag_cli_prints_the_truncation_warning(tmp_path):
    labels = LabelMap.from_names([f"tone {i}" for i in range(6)])
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", _student(), labels=labels)
    encoded = encode_audio(_tones(6.0), SR, "mp3")
    truncated = tmp_path / "cut.mp3"
    truncated.write_bytes(encoded[:len(encoded) // 2])
    result = subprocess.run([sys.executable, str(REPO / "experiments" / "inference.py"), "--model_path",
                             str(checkpoint), "--audio_path", str(truncated), "--top_k", "2"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "cut.mp3: decoded" in result.stderr and "container states 6.00 s" in result.stderr
    assert "tone" in result.stdout


# ----------------------------------------------------------------------------------------
# item 14: small stuff
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_tag_cli_refuses_a_bad_top_k_with_exit_code_2(tmp_path, capsys, value):
    from efficient_tagging.cli import tag
    labels = LabelMap.from_names([f"c{i}" for i in range(6)])
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", _student(), labels=labels)
    wav = tmp_path / "a.wav"
    wav.write_bytes(encode_audio(_tones(1.0), SR, "wav"))
    with pytest.raises(SystemExit) as exit_:
        tag.main(["--model_path", str(checkpoint), "--audio_path", str(wav), "--top_k", value])
    assert exit_.value.code == 2
    assert "--top_k" in capsys.readouterr().err


def test_library_refuses_a_bad_top_k():
    tagger = AudioTagger(_student())
    waveform = _tones(1.0)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            tagger.tag_waveform(waveform, top_k=bad)
    assert len(tagger.tag_waveform(waveform, top_k=100)) == 6  # more than the classes: all of them


def test_very_short_waveform_is_repeated_like_a_short_file(tmp_path, caplog):
    """One short-input rule down to a few samples (input contract): repeated, as longer short inputs
    are (the old code zero-padded below one analysis window, so ONNX and PyTorch disagreed)."""
    tagger = AudioTagger(_student())
    wav = tmp_path / "ten.wav"
    wav.write_bytes(encode_audio(_tones(1.0)[:10] * 3, SR, "wav"))
    ten = load_audio(wav, SR)
    assert ten.numel() == 10
    with caplog.at_level(logging.WARNING):
        from_waveform = tagger.probabilities(ten)
    assert any("10 samples" in r.getMessage() and "repeated" in r.getMessage() for r in caplog.records)
    assert torch.allclose(from_waveform, tagger.probabilities(ten.repeat(tagger.contract.target_samples // 10 + 1)
                                                              [:tagger.contract.target_samples]))
    assert torch.equal(from_waveform, tagger.file_probabilities(wav))
    assert [t.index for t in tagger.tag_waveform(ten, 3)] == [t.index for t in tagger.tag_file(wav, 3)]
    with pytest.raises(ValueError, match=f"at least {tagger.min_samples} samples"):
        tagger(ten[None])  # the raw forward does not pad
    with pytest.raises(ValueError, match="empty waveform"):
        tagger.tag_waveform(torch.zeros(0))


@pytest.mark.parametrize("flags", [["--model_width", "inf"], ["--model_width", "nan"], ["--duration", "inf"],
                                   ["--table", "--duration", "inf"]])
def test_complexity_refuses_non_finite_numbers(capsys, flags):
    code = complexity_cli.main(flags)
    err = capsys.readouterr().err
    assert code == 2 and "finite" in err and flags[-2] in err


# ----------------------------------------------------------------------------------------
# item 20: complexity tool: catalogue metadata only for catalogue configs; a legible plot
# ----------------------------------------------------------------------------------------
def _json(capsys, *flags):
    import json
    code = complexity_cli.main([*flags, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def test_custom_configuration_has_no_published_map(capsys):
    custom = _json(capsys, "--model_width", "0.4", "--n_mels", "64", "--hop_size", "480")
    assert custom["published_map"] is None and custom["catalogue_entry"] is None
    width_only = _json(capsys, "--model_width", "0.4")  # exactly mn04_as's configuration
    assert width_only["catalogue_entry"] == "mn04_as" and width_only["published_map"] == 0.432
    assert _json(capsys, "--model", "mn10_as")["published_map"] == 0.471
    # mn10 with the fully convolutional head is exactly the catalogue's mn10_as_fc
    assert _json(capsys, "--model", "mn10_as", "--head_type", "fully_convolutional")["catalogue_entry"] == "mn10_as_fc"
    assert _json(capsys, "--model", "mn10_as", "--se_dims", "ct")["published_map"] is None
    # one configuration, several published re-runs (mn40_as, mn40_as(2), ...): no single number
    assert _json(capsys, "--model_width", "4.0")["published_map"] is None
    assert _json(capsys, "--model", "mn40_as(2)")["published_map"] == 0.483


def test_plot_shows_only_audioset_rows_and_its_labels_do_not_overlap():
    import matplotlib.pyplot as plt

    targets = complexity.catalogue_targets(teachers=True)
    rows = complexity.run_table(targets, 16)
    plot = complexity.plot_complexity(rows)
    try:
        plotted = {tuple(point) for collection in plot.axes.collections for point in collection.get_offsets()}
        openmic = [(r.macs / 1e9, t.published_map) for t, r in rows if t.extra.get("dataset") == "openmic"]
        assert openmic and not any(point in plotted for point in openmic)
        assert max(y for _, y in plotted) < 0.6  # only AudioSet mAPs on the axis
        assert plot.points == sum(1 for t, _ in rows if t.published_map is not None
                                  and t.extra.get("dataset") == "audioset")
        renderer = plot.figure.canvas.get_renderer()
        boxes = [complexity.label_text_extent(label, renderer) for label in plot.labels]
        assert len(boxes) >= 25
        frame = plot.axes.get_window_extent(renderer)
        overlaps = [(plot.labels[i].get_text(), plot.labels[j].get_text())
                    for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
        assert not overlaps
        assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    finally:
        plt.close(plot.figure)


# ----------------------------------------------------------------------------------------
# item 21: checkpoint labels as a plain list
# ----------------------------------------------------------------------------------------
def test_save_checkpoint_accepts_a_list_of_names_or_a_label_map(tmp_path):
    model = _student(num_classes=3)
    path = save_checkpoint(tmp_path / "names.pt", model, labels=["dog", "cat, meow", "bird"])
    assert get_model(str(path)).label_map.names == ("dog", "cat, meow", "bird")
    path = save_checkpoint(tmp_path / "map.pt", model, labels=LabelMap.from_names(["a", "b", "c"], ["/m/a", "/m/b",
                                                                                                   "/m/c"]))
    assert get_model(str(path)).label_map.ids == ("/m/a", "/m/b", "/m/c")
    with pytest.raises(ValueError, match="2 labels given but the model outputs 3 classes"):
        save_checkpoint(tmp_path / "short.pt", model, labels=["dog", "cat"])
    with pytest.raises(TypeError, match="list of class names"):
        save_checkpoint(tmp_path / "str.pt", model, labels="dog")
    assert not list(tmp_path.glob("short.pt*")) and not list(tmp_path.glob("str.pt*"))


# ----------------------------------------------------------------------------------------
# item 18 for the tagging and labelling commands: --cuda without a GPU is an error
# ----------------------------------------------------------------------------------------
def test_tag_and_label_cli_refuse_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    from conftest import make_tiny_audioset, save_tiny_teacher
    from efficient_tagging.cli import label, tag

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", _student(), labels=[f"c{i}" for i in range(6)])
    wav = tmp_path / "a.wav"
    wav.write_bytes(encode_audio(_tones(1.0), SR, "wav"))
    assert tag.main(["--model_path", str(checkpoint), "--audio_path", str(wav), "--cuda"]) == 1
    assert "no CUDA device is available; drop --cuda" in capsys.readouterr().err
    data = make_tiny_audioset(tmp_path / "data.h5", num_clips=4)
    teacher = save_tiny_teacher(tmp_path / "teacher.pt")
    output = tmp_path / "logits.h5"
    assert label.main(["--hdf5", str(data), "--teachers", str(teacher), "--output", str(output), "--cuda",
                       "--no_progress"]) == 1
    assert "no CUDA device is available; drop --cuda" in capsys.readouterr().err
    assert not output.exists()
