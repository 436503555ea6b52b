"""The backend choice (issue 26): `backend="auto"` picks the fastest installed engine for a tagger, its
export is cached (keyed by weights, input contract, torch and runtime versions) and reused, a stale
compiled model is never used, and the tagging command gives the same tags with every backend."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO, metro_long, randomised_student, requires_shared
from efficient_tagging.export import backends
from efficient_tagging.export.backends import BackendUnavailable, cached_export, choose_backend, use_backend
from efficient_tagging.export.engines import installed_runtimes
from efficient_tagging.labels import LabelMap
from efficient_tagging.models import get_model, save_checkpoint
from efficient_tagging.tagging.tagger import AudioTagger

pytestmark = requires_shared
pytest.importorskip("onnxscript")
RUNTIMES = installed_runtimes()
PREPROCESSING = {"sr": 16000, "n_mels": 64, "win_length": 800, "hopsize": 320, "n_fft": 1024, "clip_length": 2.0}
LABELS = LabelMap.from_names([f"class {i}" for i in range(8)])


def _tagger() -> AudioTagger:
    model = randomised_student("mn", width_mult=0.4, num_classes=len(LABELS), input_dim_f=64, logit_std=2.0,
                               preprocessing=PREPROCESSING)
    model.label_map = LABELS
    return AudioTagger(model, label_map=LABELS)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tagger, its cache folder and the runtime whose export is cached there (exported once)."""
    if not RUNTIMES:
        pytest.skip("no ONNX runtime installed")
    cache = tmp_path_factory.mktemp("backend_cache")
    tagger = _tagger()
    runtime = RUNTIMES[-1]
    return tagger, cache, runtime, cached_export(tagger, runtime, cache)


def test_auto_picks_the_fastest_installed_and_keeps_torch_where_exports_do_not_apply():
    tagger = _tagger()
    expected = "onnxruntime" if "onnxruntime" in RUNTIMES else "torch"  # OpenVINO only when named
    assert choose_backend(tagger, "auto") == expected
    assert choose_backend(tagger, "torch") == "torch"
    teacher = AudioTagger(get_model(arch="passt", embed_dim=64, depth=1, num_heads=4, img_size=(64, 100),
                                    distilled=True, num_classes=3))
    assert choose_backend(teacher, "auto") == "torch"
    with pytest.raises(BackendUnavailable, match="transformer teacher"):
        choose_backend(teacher, "onnxruntime")
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend(tagger, "tensorrt")


def test_a_runtime_that_is_not_installed_is_named(monkeypatch):
    monkeypatch.setattr(backends, "installed_runtimes", lambda: [])
    tagger = _tagger()
    assert choose_backend(tagger, "auto") == "torch"
    with pytest.raises(BackendUnavailable, match=r"not installed here \(pip install"):
        choose_backend(tagger, "openvino")


def test_the_export_is_cached_and_reused(exported, monkeypatch):
    tagger, cache, runtime, path = exported
    assert path.is_file() and path.parent == cache / "compiled"
    calls = []
    import efficient_tagging.export.onnx as onnx_module

    monkeypatch.setattr(onnx_module, "export_onnx", lambda *a, **k: calls.append(a))
    assert cached_export(tagger, runtime, cache) == path  # same weights, contract, versions: no export
    assert calls == []
    other = _tagger()
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)  # other weights: another key
    assert backends.export_key(other, runtime) != backends.export_key(tagger, runtime)


def test_a_damaged_cached_export_is_exported_again(exported, tmp_path):
    tagger, _, runtime, path = exported
    cache = tmp_path / "cache"
    (cache / "compiled").mkdir(parents=True)
    damaged = cache / "compiled" / path.name
    damaged.write_bytes(b"not an onnx file")
    fresh = cached_export(tagger, runtime, cache)
    assert fresh == damaged and fresh.stat().st_size > 1000


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_backend_gives_the_torch_answer(exported, runtime):
    tagger = _tagger()
    # real audio (three 3-s stretches of the metro recording at three levels): on white noise a random
    # network is far outside its operating range and float rounding alone moves its outputs
    metro = metro_long(9, sample_rate=16000)
    audio = metro.reshape(3, 48000) * torch.tensor([[0.5], [1.0], [2.0]])
    with torch.no_grad():
        expected = tagger.probabilities(audio)
    assert use_backend(tagger, runtime, cache_dir=exported[1]) == runtime
    assert tagger.compiled_model is not None and tagger.compiled_model.backend == runtime
    with torch.no_grad():
        got = tagger.probabilities(audio)
    assert float((got - expected).abs().max()) <= 1e-4
    assert all(set(g.topk(5).indices.tolist()) == set(e.topk(5).indices.tolist()) for g, e in zip(got, expected))


def test_a_changed_model_is_not_tagged_by_its_stale_export(exported, caplog):
    _, cache, runtime, _ = exported
    tagger = _tagger()
    use_backend(tagger, runtime, cache_dir=cache)
    with torch.no_grad():
        for parameter in tagger.model.classifier.parameters():
            parameter.mul_(-1.0)  # fine-tuned in place after compiling
        audio = metro_long(2, sample_rate=16000).reshape(1, -1)
        expected = AudioTagger(tagger.model, label_map=LABELS, fast=False).probabilities(audio)
        with caplog.at_level("WARNING"):
            got = tagger.probabilities(audio)
    assert "changed after it was compiled" in caplog.text and tagger.compiled_model is None
    assert float((got - expected).abs().max()) <= 1e-4


@pytest.mark.skipif(not RUNTIMES, reason="no ONNX runtime installed")
def test_the_tagging_command_gives_the_same_tags_with_every_backend(tmp_path):
    tagger = _tagger()
    checkpoint = save_checkpoint(tmp_path / "student.pt", tagger.model, arch="mn", labels=LABELS, task="multilabel")
    from efficient_tagging.audio import encode_audio

    wav = tmp_path / "clip.wav"
    wav.write_bytes(encode_audio(metro_long(3, sample_rate=16000).numpy(), 16000, "wav"))
    printed = {}
    for backend in ("torch", *RUNTIMES, "auto"):
        result = subprocess.run([sys.executable, str(REPO / "experiments" / "inference.py"), "--model_path",
                                 str(checkpoint), "--audio_path", str(wav), "--backend", backend, "--top_k", "5",
                                 "--cache_dir", str(tmp_path / "cache")], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        printed[backend] = [line for line in result.stdout.splitlines() if line.startswith("class ")]
        if backend != "torch":
            assert "exporting" in result.stderr or backend == "auto"  # said once, when it happens
    labels = {backend: [line.split(":")[0] for line in lines] for backend, lines in printed.items()}
    assert len(labels["torch"]) == 5 and all(value == labels["torch"] for value in labels.values()), labels


def test_the_command_compiles_only_runs_long_enough_to_pay_off(tmp_path, monkeypatch):
    """`--backend auto` keeps PyTorch's fast path for a short run (it starts ~0.7 s sooner) and takes an
    ONNX runtime from AUTO_COMPILED_MIN_FILES files on; a backend named on the command line is used as is."""
    import argparse

    from efficient_tagging.cli import model_flags

    tagger = _tagger()
    checkpoint = save_checkpoint(tmp_path / "student.pt", tagger.model, arch="mn", labels=LABELS, task="multilabel")
    used = []
    monkeypatch.setattr(backends, "use_backend", lambda tagger, backend, **kwargs: used.append(backend) or backend)

    def load(backend, files):
        args = argparse.Namespace(backend=backend, model_path=str(checkpoint), model_name=None, ensemble=None,
                                  labels_path=None, cache_dir=str(tmp_path), eager=False, onnx_file=False)
        return model_flags.load_tagger_for(args, torch.device("cpu"), files=files)

    assert not load("auto", 1).fast  # one file: the model as built finishes first
    assert load("auto", model_flags.AUTO_FAST_PATH_MIN_FILES).fast
    assert load("auto", model_flags.AUTO_COMPILED_MIN_FILES - 1).fast
    assert load("torch", 1).fast  # named: as asked
    assert used == []
    load("auto", model_flags.AUTO_COMPILED_MIN_FILES)
    load("onnxruntime", 1)
    assert used == ["auto", "onnxruntime"]


def test_eager_and_a_named_runtime_contradict_each_other(capsys):
    """--eager runs the PyTorch model as built; a compiled model never runs then, so asking for both is
    refused instead of silently tagging with PyTorch."""
    from efficient_tagging.cli import tag

    for backend in RUNTIMES:
        with pytest.raises(SystemExit) as exit_:
            tag.main(["x.wav", "--model_name", "mn10_as", "--eager", "--backend", backend])
        assert exit_.value.code == 2 and f"cannot be combined with --backend {backend}" in capsys.readouterr().err
