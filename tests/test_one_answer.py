"""One model, one answer (issue 23): every tagging path turns audio into model input through the one
input contract, so the same model and audio give the same tags whatever the path.

The matrix: paths {PyTorch default (fast inference copy), PyTorch eager, ONNX spectrogram graph, ONNX
waveform graph, and every installed backend: the PyTorch tagger computing `forward` with its export in
ONNX Runtime / OpenVINO, the exported file in OpenVINO} x entries {file, float32 waveform at the model's rate, numpy int16 at the file's rate
with `sample_rate=`, float32 at the file's rate with `sample_rate=`, tags over time with one window =
the recording, streaming int16 chunks of 0.1 s and 0.37 s} x durations {0.05, 0.3 s, just below and
above one analysis window, 1, 3, 10, 25 s} x input rates {8, 16, 44.1 kHz}: the same top-5 and max
|delta prob| <= 1e-4 against the in-process file path. (The ONNX waveform graph has no spectrogram
input, so tags over time and streaming -- which slice one continuous spectrogram -- refuse it.)

The model is the demo student's shape (mn04, 16 kHz, 64 mels, hop 320 = 20 ms, 2-s clips: the
analysis window is 33 frames = 0.64 s), with random weights whose BatchNorm statistics come from real
audio and whose classifier is scaled (tests/conftest.py::randomised_student), so its outputs move with
the input (asserted).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import metro_long, randomised_student, requires_shared
from efficient_tagging.audio import encode_audio, load_audio
from efficient_tagging.labels import LabelMap
from efficient_tagging.resample import resampled_length
from efficient_tagging.tagging import StreamingTagger, tag_over_time
from efficient_tagging.tagging.tagger import AudioTagger

pytestmark = requires_shared

MODEL_RATE = 16000
PREPROCESSING = {"sr": MODEL_RATE, "n_mels": 64, "win_length": 800, "hopsize": 320, "n_fft": 1024,
                 "clip_length": 2.0}
LABELS = LabelMap.from_names(["Sine wave", "Chirp tone", "White noise", "Pink noise", "Clicking", "Mains hum",
                              "Beep, bleep", "Siren", "Thump, thud", "Buzz"])
ANALYSIS_WINDOW = 0.64  # 33 frames of 20 ms: the shortest input of the model and of its exports (asserted)
DURATIONS = (0.05, 0.3, ANALYSIS_WINDOW - 0.01, ANALYSIS_WINDOW + 0.01, 1.0, 3.0, 10.0, 25.0)
RATES = (8000, 16000, 44100)
TOLERANCE = 1e-4


def _student() -> torch.nn.Module:
    model = randomised_student("mn", width_mult=0.4, num_classes=len(LABELS), input_dim_f=64, logit_std=2.0,
                               preprocessing=PREPROCESSING)
    model.label_map = LABELS
    model.task = "multilabel"
    return model


@pytest.fixture(scope="module")
def taggers(tmp_path_factory):
    """name -> tagger for every installed path."""
    model = _student()
    default = AudioTagger(model, label_map=LABELS)
    assert default.min_samples == int(round(ANALYSIS_WINDOW * MODEL_RATE)) + 1
    out = {"torch": default, "torch_eager": AudioTagger(model, label_map=LABELS, fast=False)}
    if all(_importable(name) for name in ("onnx", "onnxruntime", "onnxscript")):
        from efficient_tagging.export.onnx import OnnxTagger, add_frontend, export_onnx

        folder = tmp_path_factory.mktemp("one_answer")
        recording = metro_long(4, sample_rate=MODEL_RATE)
        spectrogram = export_onnx(default, folder / "student.onnx", check_audio=recording)
        waveform = add_frontend(spectrogram, folder / "student.waveform.onnx", check_audio=recording)
        out["onnx_spectrogram"] = OnnxTagger(spectrogram, threads=2)
        out["onnx_waveform"] = OnnxTagger(waveform, threads=2)
        # every installed backend of the PyTorch tagger (export.backends: its exported graph computes
        # `forward`), and the exported file in OpenVINO
        from efficient_tagging.export.runtime import SpectrogramModel
        from efficient_tagging.export.engines import installed_runtimes, load_engine

        for runtime in installed_runtimes():
            backend = AudioTagger(model, label_map=LABELS)
            backend.compiled_model = SpectrogramModel.of_engine(load_engine(spectrogram, runtime, threads=2))
            out[f"torch_backend_{runtime}"] = backend
        if "openvino" in installed_runtimes():
            out["onnx_spectrogram_openvino"] = OnnxTagger(spectrogram, threads=2, runtime="openvino")
    return out


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """(rate, duration) -> (wav path, int16 samples at the rate): 16-bit wav files cut from the metro
    recording (25 s: metro_long), each at its own rate."""
    folder = tmp_path_factory.mktemp("one_answer_audio")
    out = {}
    for rate in RATES:
        audio = metro_long(25.0, sample_rate=rate).numpy()
        for duration in DURATIONS:
            count = int(round(duration * rate))
            # quieter copies for the short cuts, so the recordings differ in level as well as content
            pcm = np.clip(np.round(audio[:count] * 32768 * (0.5 if duration < 1 else 1.0)), -32768, 32767)
            pcm = pcm.astype(np.int16)
            path = folder / f"cut_{rate}_{duration:g}.wav"
            path.write_bytes(encode_audio(pcm, rate, "wav"))  # exactly these 16-bit samples
            out[(rate, duration)] = (path, pcm)
    return out


def _entries(tagger, path, pcm, rate):
    """entry name -> (C,) probabilities for one recording."""
    model_rate = tagger.sample_rate
    waveform = load_audio(path, model_rate)
    out = {
        "file": tagger.file_probabilities(path)[0],
        "waveform_float32": tagger.probabilities(waveform)[0],
        "numpy_int16_own_rate": tagger.probabilities(pcm, sample_rate=rate)[0],
        "float32_own_rate": tagger.probabilities(pcm.astype(np.float32) / 32768, sample_rate=rate)[0],
    }
    if getattr(tagger, "input_kind", None) == "waveform":
        return out  # tags over time and streaming slice a spectrogram: not for waveform graphs
    window = resampled_length(len(pcm), rate, model_rate) / model_rate  # one window = the recording
    over_time = tag_over_time(tagger, path, window=window, hop=window)
    assert len(over_time) == 1 and over_time.ends[0] == pytest.approx(over_time.duration)
    out["over_time_one_window"] = torch.from_numpy(over_time.probabilities[0])
    for chunk_seconds in (0.1, 0.37):
        stream = StreamingTagger(tagger, window=window, hop=window, sample_rate=rate)
        step = max(1, int(round(chunk_seconds * rate)))
        for start in range(0, len(pcm), step):
            stream.feed(pcm[start:start + step])
        stream.close()
        streamed = stream.tags()
        assert len(streamed) == 1
        out[f"stream_int16_{chunk_seconds:g}s"] = torch.from_numpy(streamed.probabilities[0])
    return out


def test_every_path_gives_the_file_path_answer(taggers, recordings):
    reference_tagger = taggers["torch"]
    references = {key: reference_tagger.file_probabilities(path)[0] for key, (path, _) in recordings.items()}
    # the model's outputs move with the input: far from constant over these recordings
    stacked = torch.stack(list(references.values()))
    assert float(stacked.std(dim=0).max()) > 0.1
    assert len({int(p.argmax()) for p in stacked}) >= 2
    failures = []
    worst = 0.0
    for name, tagger in taggers.items():
        for (rate, duration), (path, pcm) in recordings.items():
            reference = references[(rate, duration)]
            expected_top5 = reference.topk(5).indices.tolist()
            for entry, probabilities in _entries(tagger, path, pcm, rate).items():
                delta = float((probabilities - reference).abs().max())
                worst = max(worst, delta)
                top5 = probabilities.topk(5).indices.tolist()
                if delta > TOLERANCE or top5 != expected_top5:
                    failures.append(f"{name} / {entry} / {rate} Hz / {duration:g} s: max |delta p| {delta:.2e}, "
                                    f"top-5 {top5} vs {expected_top5}")
    assert not failures, f"{len(failures)} paths disagree with the file path:\n" + "\n".join(failures[:40])
    print(f"paths {sorted(taggers)}: worst max |delta p| {worst:.2e}")


# --------------------------------------------------------------------------------------
# the defects the contract removed, one test each (each fails on the code before it)
# --------------------------------------------------------------------------------------
def test_a_short_file_over_time_is_tagged_like_the_file(taggers, recordings):
    """A 1-s file with 10-s windows: the old windows path zero-padded it into the window (and said the
    window ended at 10 s) while the file path repeated it to the clip length."""
    tagger = taggers["torch"]
    path, _ = recordings[(16000, 1.0)]
    over_time = tag_over_time(tagger, path, window=10.0, hop=2.5)
    assert len(over_time) == 1 and over_time.ends[0] == pytest.approx(1.0)
    assert np.abs(over_time.probabilities[0] - tagger.file_probabilities(path)[0].numpy()).max() <= 1e-6


def test_int16_chunks_are_scaled_as_audio(taggers, recordings):
    """StreamingTagger.feed(int16) took +-32767 as float samples (every window: White noise 0.99)."""
    tagger = taggers["torch"]
    path, pcm = recordings[(16000, 3.0)]
    stream = StreamingTagger(tagger, window=1.0, hop=0.5)
    offline = tag_over_time(tagger, path, window=1.0, hop=0.5)
    for start in range(0, len(pcm), 1600):
        stream.feed(pcm[start:start + 1600])
    stream.close()
    assert np.abs(stream.tags().probabilities - offline.probabilities).max() <= 1e-5


def test_arrays_take_a_sample_rate(taggers, recordings):
    """`tagger.probabilities(numpy_int16, sample_rate=8000)` equals `tag_file` of the same 8 kHz file
    (the old API took torch float tensors at the model's rate only)."""
    tagger = taggers["torch"]
    path, pcm = recordings[(8000, 3.0)]
    from_array = tagger.probabilities(pcm, sample_rate=8000)[0]
    assert torch.equal(from_array, tagger.file_probabilities(path)[0])
    assert [t.index for t in tagger.tag_waveform(pcm, 5, sample_rate=8000)] == [t.index for t in tagger.tag_file(path, 5)]
    with pytest.raises(TypeError, match="int16, int32, uint8 or int8"):
        tagger.probabilities(pcm.astype(np.int64))
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        tagger.probabilities(pcm, sample_rate=0)


def _rewrite_metadata(source, destination, **changes):
    import json

    import onnx

    from efficient_tagging.export.metadata import METADATA_PREFIX

    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        props[METADATA_PREFIX + key] = json.dumps(value)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(destination))
    return destination


def test_contradictory_onnx_metadata_is_refused(taggers, tmp_path):
    """An export whose sample_rate says 32000 while its frontend says 16000 tagged silently with other
    results; 3 labels for 10 outputs gave an IndexError traceback. Both are refused, naming both values."""
    if "onnx_spectrogram" not in taggers:
        pytest.skip("onnx extras not installed")
    from efficient_tagging.export.metadata import read_onnx_metadata
    from efficient_tagging.export.runtime import OnnxTagger

    exported = taggers["onnx_spectrogram"].path
    meta = read_onnx_metadata(exported)
    wrong_rate = _rewrite_metadata(exported, tmp_path / "rate.onnx", sample_rate=32000)
    with pytest.raises(ValueError, match=r"rate\.onnx.*sample_rate 32000 Hz.*sr=16000"):
        OnnxTagger(wrong_rate)
    labels = {"names": ["a", "b", "c"], "ids": ["a", "b", "c"]}
    three_labels = _rewrite_metadata(exported, tmp_path / "labels.onnx", labels=labels,
                                     input_contract=dict(meta.contract.to_dict(), labels=labels))
    with pytest.raises(ValueError, match=r"labels\.onnx.*3 classes but the model outputs 10"):
        OnnxTagger(three_labels)
    contract = dict(meta.contract.to_dict(), clip_length=10.0)
    disagreeing = _rewrite_metadata(exported, tmp_path / "contract.onnx", input_contract=contract)
    with pytest.raises(ValueError, match=r"contract\.onnx.*clip_length=10\.0.*clip_length says 2\.0"):
        OnnxTagger(disagreeing)
    negative = _rewrite_metadata(exported, tmp_path / "negative.onnx", clip_length=-2.0,
                                 input_contract=dict(meta.contract.to_dict(), clip_length=-2.0))
    with pytest.raises(ValueError, match=r"negative\.onnx.*clip_length must be a positive number"):
        OnnxTagger(negative)


def test_the_contract_is_stored_identically_in_checkpoints_and_onnx(taggers, tmp_path):
    if "onnx_spectrogram" not in taggers:
        pytest.skip("onnx extras not installed")
    from efficient_tagging.models.factory import read_checkpoint, save_checkpoint
    from efficient_tagging.tagging.tagger import load_tagger

    tagger = taggers["torch"]
    path = save_checkpoint(tmp_path / "student.pt", tagger.model, arch="mn", labels=LABELS)
    _, metadata = read_checkpoint(path)
    assert metadata["input_contract"] == tagger.contract.to_dict()
    assert taggers["onnx_spectrogram"].contract == tagger.contract
    assert load_tagger(None, path).contract == tagger.contract


def test_streamed_int16_metro_gives_the_offline_tags(taggers):
    """The metro recording (44.1 kHz) as int16 chunks of 0.37 s fed at its own rate: the windows of the
    offline pass over the file, and the same top-5 as tag_file for each window's stretch."""
    from conftest import METRO_WAV
    from efficient_tagging.audio import decode_audio

    tagger = taggers["torch"]
    samples, rate = decode_audio(METRO_WAV)
    assert rate == 44100
    pcm = np.clip(np.round(samples * 32768), -32768, 32767).astype(np.int16)
    stream = StreamingTagger(tagger, window=2.0, hop=1.0, sample_rate=rate)
    step = int(0.37 * rate)
    for start in range(0, len(pcm), step):
        stream.feed(pcm[start:start + step])
    stream.close()
    offline = tag_over_time(tagger, pcm, window=2.0, hop=1.0, sample_rate=rate)
    streamed = stream.tags()
    assert len(streamed) == len(offline) == 9
    assert np.abs(streamed.probabilities - offline.probabilities).max() <= 1e-4
    assert (np.argsort(-streamed.probabilities, axis=1)[:, :5] == np.argsort(-offline.probabilities, axis=1)[:, :5]).all()
    # and they move over the recording: not one answer for every window
    assert float(offline.probabilities.std(axis=0).max()) > 0.02
