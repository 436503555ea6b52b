"""ONNX export (issue 11, item 6): mn / dymn graphs with dynamic batch and time, with and without the
mel frontend in the graph, equal to PyTorch on real audio; metadata; the ONNX Runtime tagger behind
`--backend onnx` (files, windows, streaming); int8 static quantization and its agreement report.

Random weights (see `randomised_student`): realistic activations at every length, logits of std 1
over the classes of a 10-s clip. One export per architecture for the whole module (a dynamo export
of a MobileNet with symbolic shapes takes ~30 s here); the waveform graph is the spectrogram graph
with the frontend attached (`add_frontend`, what `with_frontend=True` does).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import METRO_WAV, metro_long, randomised_student, requires_shared

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from efficient_tagging.export.onnx import (  # noqa: E402
    AgreementReport,
    AgreementRow,
    OnnxTagger,
    add_frontend,
    agreement_report,
    calibration_waveforms,
    export_onnx,
    quantize_int8,
    read_onnx_metadata,
)
from efficient_tagging.tagging import StreamingTagger, tag_over_time  # noqa: E402
from efficient_tagging.tagging.tagger import AudioTagger  # noqa: E402

pytestmark = requires_shared
SR = 32000


class Exported:
    def __init__(self, tagger: AudioTagger, spectrogram: Path, waveform: Path) -> None:
        self.tagger, self.spectrogram, self.waveform = tagger, spectrogram, waveform


def _export(arch: str, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    folder = tmp_path_factory.mktemp(f"onnx_{arch}")
    tagger = AudioTagger(randomised_student(arch, width_mult=1.0)).eval()
    recording = metro_long(10)
    spectrogram = export_onnx(tagger, folder / f"{arch}10.onnx", check_audio=recording)
    waveform = add_frontend(spectrogram, folder / f"{arch}10.waveform.onnx", check_audio=recording)
    return Exported(tagger, spectrogram, waveform)


@pytest.fixture(scope="module")
def mn10(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _export("mn", tmp_path_factory)


@pytest.fixture(scope="module")
def dymn10(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _export("dymn", tmp_path_factory)


@pytest.fixture(scope="module")
def long_audio() -> torch.Tensor:
    return metro_long(60)


@pytest.mark.parametrize("arch", ["mn10", "dymn10"])
@pytest.mark.parametrize("graph", ["spectrogram", "waveform"])
def test_export_matches_pytorch_on_real_audio_of_1_10_60_s(request, arch, graph, long_audio):
    """max |delta logit| <= 1e-5, or -- where PyTorch's own float32 result is that far from the float64
    computation (frontend and model in float64; DyMN at 10 s: ~1e-5 with logits of std 1) -- within
    2x that float32 noise, and the ONNX result no further from float64 than 2x PyTorch's is."""
    import copy

    exported: Exported = request.getfixturevalue(arch)
    runner = OnnxTagger(getattr(exported, graph))
    assert runner.input_kind == graph
    model64 = copy.deepcopy(exported.tagger.model).double()
    frontend64 = copy.deepcopy(exported.tagger.frontend).double()
    for seconds in (1, 10, 60):
        waveform = long_audio[: seconds * SR].reshape(1, -1)
        with torch.no_grad():
            expected = exported.tagger(waveform)
            exact = model64(frontend64(waveform.double()).unsqueeze(1))[0]
        got = runner(waveform)
        assert got.shape == expected.shape == (1, 527)
        difference = float((got - expected).abs().max())
        torch_noise = float((expected.double() - exact).abs().max())
        onnx_noise = float((got.double() - exact).abs().max())
        assert difference <= max(1e-5, 2 * torch_noise), (
            f"{arch} {graph} graph, {seconds} s: max |delta logit| {difference:.3g} (PyTorch float32 vs float64: "
            f"{torch_noise:.3g})")
        assert onnx_noise <= 2 * torch_noise + 1e-6, f"{arch} {graph} {seconds} s: {onnx_noise:.3g} vs {torch_noise:.3g}"


def test_dynamic_batch_follows_the_input(mn10, long_audio):
    runner = OnnxTagger(mn10.waveform)
    batch = torch.stack([long_audio[:3 * SR], long_audio[5 * SR:8 * SR], long_audio[20 * SR:23 * SR]])
    with torch.no_grad():
        expected = mn10.tagger(batch)
    got = runner(batch)
    assert got.shape == (3, 527)
    assert float((got - expected).abs().max()) <= 2e-5  # 3 x 3 s, logits of std 1: float32 noise (see above)


def test_onnx_threads_sleep_between_runs_instead_of_spinning(mn10):
    """ORT's workers busy-wait after a run by default and took the cores from the PyTorch frontend
    (and from whatever the caller runs next); the tagger turns that off. Spinning shows as CPU time
    burnt while the process sleeps (measured ~30 ms per 0.3 s with ORT's default, 0 without)."""
    runner = OnnxTagger(mn10.spectrogram, threads=2)
    options = runner.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spectrogram = np.zeros((1, 1, 128, 300), dtype=np.float32)
    for _ in range(3):
        runner.session.run(["logits"], {runner.engine.input_name: spectrogram})
    cpu_before = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - cpu_before < 0.01


def test_metadata_round_trip(mn10):
    meta = read_onnx_metadata(mn10.spectrogram)
    assert meta.sample_rate == SR and meta.input_kind == "spectrogram" and meta.task == mn10.tagger.task
    assert meta.exporter == "dynamo" and meta.opset == 18
    assert list(meta.label_map.names) == list(mn10.tagger.label_map.names)
    assert meta.preprocessing == OnnxTagger(mn10.spectrogram).preprocessing
    assert read_onnx_metadata(mn10.waveform).input_kind == "waveform"
    runner = OnnxTagger(mn10.waveform)
    assert runner.frontend is None and runner.model is None  # the frontend is inside the graph


def test_probabilities_output_and_bad_arguments(mn10, tmp_path):
    tagger = mn10.tagger
    with pytest.raises(ValueError, match="opset"):
        export_onnx(tagger, tmp_path / "x.onnx", opset=16)
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx(tagger, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(tagger, tmp_path / "x.onnx", exporter="tflite")
    with pytest.raises(ValueError, match="already takes waveforms"):
        add_frontend(mn10.waveform, tmp_path / "y.onnx")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        (tmp_path / "broken.onnx").write_bytes(b"not a model")
        OnnxTagger(tmp_path / "broken.onnx")


def test_onnx_tagger_top10_equals_torch_on_the_metro_file(mn10, dymn10):
    for exported in (mn10, dymn10):
        expected = exported.tagger.tag_file(METRO_WAV, top_k=10)
        for path in (exported.spectrogram, exported.waveform):
            got = OnnxTagger(path).tag_file(METRO_WAV, top_k=10)
            assert [tag.label for tag in got] == [tag.label for tag in expected]
            assert np.allclose([tag.probability for tag in got], [tag.probability for tag in expected], atol=5e-6)


def test_short_clip_is_repeated_like_pytorch(mn10):
    one_second = metro_long(1)
    expected = mn10.tagger.probabilities(one_second.reshape(1, -1))
    got = OnnxTagger(mn10.waveform).probabilities(one_second.reshape(1, -1))
    assert float((got - expected).abs().max()) <= 5e-6  # |delta logit| <= 2e-5 -> |delta p| <= 5e-6


def test_tagging_cli_backend_onnx_gives_the_torch_top10(mn10, tmp_path, capsys):
    from efficient_tagging.cli import tag as tag_cli

    checkpoint = tmp_path / "random_mn10.pt"
    from efficient_tagging.models import save_checkpoint

    save_checkpoint(checkpoint, mn10.tagger.model, labels=mn10.tagger.label_map)
    outputs = {}
    for backend, model_path in (("torch", checkpoint), ("onnx", mn10.waveform)):
        out = tmp_path / f"{backend}.json"
        code = tag_cli.main(["--model_path", str(model_path), "--backend", backend, "--output", str(out),
                             "--no_progress", str(METRO_WAV)])
        assert code == 0, capsys.readouterr().err
        outputs[backend] = json.loads(out.read_text())
    def top10(payload):
        probabilities = payload[0]["probabilities"]
        return sorted(probabilities, key=probabilities.get, reverse=True)[:10]
    assert top10(outputs["onnx"]) == top10(outputs["torch"])


def test_windows_and_streaming_with_the_onnx_backend_equal_torch(mn10, long_audio):
    audio = long_audio[: 25 * SR]
    expected = tag_over_time(mn10.tagger, audio, window=10.0, hop=5.0)
    runner = OnnxTagger(mn10.spectrogram)
    offline = tag_over_time(runner, audio, window=10.0, hop=5.0)
    assert np.array_equal(offline.starts, expected.starts)
    assert float(np.abs(offline.probabilities - expected.probabilities).max()) <= 1e-5
    streaming = StreamingTagger(runner, window=10.0, hop=5.0)
    for begin in range(0, audio.numel(), int(0.37 * SR)):
        streaming.feed(audio[begin:begin + int(0.37 * SR)])
    streaming.close()
    streamed = streaming.tags()
    assert np.array_equal(streamed.starts, offline.starts)
    assert float(np.abs(streamed.probabilities - offline.probabilities).max()) <= 1e-6
    with pytest.raises(ValueError, match="without --with_frontend"):
        tag_over_time(OnnxTagger(mn10.waveform), audio, window=10.0, hop=5.0)


def test_int8_is_quantized_per_channel_keeps_float_layers_and_reports_agreement(mn10, tmp_path):
    import onnx

    calibration = calibration_waveforms(SR, [METRO_WAV], demo_clips=4)
    int8_path = quantize_int8(mn10.waveform, tmp_path / "mn10.int8.onnx", calibration)
    graph = onnx.load(str(int8_path)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50
    initialisers = {t.name: t for t in graph.initializer}
    # per-channel weights: some DequantizeLinear of an int8 initialiser has a vector of scales
    per_channel = [node for node in graph.node if node.op_type == "DequantizeLinear"
                   and node.input[0] in initialisers and initialisers[node.input[0]].data_type == onnx.TensorProto.INT8
                   and len(initialisers[node.input[1]].dims) == 1 and initialisers[node.input[1]].dims[0] > 1]
    assert per_channel
    assert "STFT" in ops  # the frontend stays float inside the int8 graph
    meta = read_onnx_metadata(int8_path)
    props = {p.key: p.value for p in onnx.load(str(int8_path), load_external_data=False).metadata_props}
    quantization = json.loads(props["efficient_tagging.quantization"])
    assert quantization["format"] == "QDQ" and quantization["per_channel"] is True
    assert quantization["calibration_inputs"] == len(calibration) and quantization["float_io_layers"] is True
    assert meta.label_map.names == read_onnx_metadata(mn10.waveform).label_map.names
    runner = OnnxTagger(int8_path)
    report = agreement_report(OnnxTagger(mn10.waveform), runner, {"metro": metro_long(10)})
    text = report.format()
    assert "mean |delta prob|" in text and "top-5" in text and "metro" in text
    assert 0.0 <= report.mean_abs_delta <= report.max_abs_delta <= 1.0
    with pytest.raises(ValueError, match="overwrite"):
        quantize_int8(int8_path, int8_path, calibration)


def test_agreement_report_arithmetic():
    class Fixed:
        def __init__(self, probabilities):
            self.p = torch.tensor([probabilities])

        def probabilities(self, _waveform):
            return self.p

    fp32 = Fixed([0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.0])
    same_order = Fixed([0.8, 0.7, 0.6, 0.5, 0.4, 0.2, 0.1])     # same top-5, |delta| 0.1 everywhere
    swapped = Fixed([0.9, 0.8, 0.7, 0.6, 0.05, 0.5, 0.0])       # class 4 leaves the top-5 for class 5
    report = agreement_report(fp32, same_order, [torch.zeros(10)])
    assert report.top_k_agreement == 1.0 and report.top1_agreement == 1.0
    assert report.mean_abs_delta == pytest.approx(0.1) and report.max_abs_delta == pytest.approx(0.1)
    report = agreement_report(fp32, swapped, {"a": torch.zeros(10), "b": torch.zeros(10)})
    assert report.top_k_agreement == 0.0 and report.top_k_overlap == pytest.approx(0.8)
    assert report.mean_abs_delta == pytest.approx((0.45 + 0.4) / 7)
    assert isinstance(report, AgreementReport) and isinstance(report.rows[0], AgreementRow)


def test_export_cli_writes_checks_and_quantizes(tmp_path, capsys, mn10):
    from efficient_tagging.cli import export as export_cli
    from efficient_tagging.models import save_checkpoint

    checkpoint = tmp_path / "random_mn10.pt"
    save_checkpoint(checkpoint, mn10.tagger.model, labels=mn10.tagger.label_map)
    out = tmp_path / "cli.onnx"
    code = export_cli.main(["--model_path", str(checkpoint), "--output", str(out), "--exporter", "torchscript",
                            "--check", "--check_audio", str(METRO_WAV)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert out.is_file() and "spectrogram input" in printed and "max |delta logit|" in printed
    difference = float(printed.split("max |delta logit|")[1].split(":")[-1].split()[0])
    assert difference <= 1e-5
    assert export_cli.main(["--model_path", str(checkpoint), "--output", str(tmp_path / "x.pt")]) == 1
    assert "must end in .onnx" in capsys.readouterr().err


def test_teachers_are_refused_with_a_clear_error(tmp_path):
    from efficient_tagging.models.passt import PaSST

    teacher = PaSST(img_size=(128, 200), embed_dim=48, depth=1, num_heads=2, num_classes=5).eval()
    with pytest.raises(ValueError, match="transformer teachers is not supported"):
        export_onnx(AudioTagger(teacher), tmp_path / "passt.onnx")
    assert not (tmp_path / "passt.onnx").exists()


def test_int8_top5_agrees_with_fp32_on_metro_with_the_published_weights(tmp_path):
    """The acceptance check for int8 (random weights cannot show it: they are chaotic under
    quantization noise). Runs when the published mn10_as weights are in the download cache."""
    from conftest import published_tagger

    tagger = published_tagger("mn10_as")
    fp32 = export_onnx(tagger, tmp_path / "mn10_as.onnx", check_audio=metro_long(10))
    int8 = quantize_int8(fp32, tmp_path / "mn10_as.int8.onnx", calibration_waveforms(SR, [METRO_WAV]))
    report = agreement_report(OnnxTagger(fp32), OnnxTagger(int8), {"metro": metro_long(10)})
    print(report.format())
    assert report.rows[0].top_k_same and report.mean_abs_delta < 0.02
