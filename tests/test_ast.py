"""AST (Audio Spectrogram Transformer) against the reference fixtures in ../shared/fixtures/reference/ast."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from efficient_tagging.cli import fbank_stats
from efficient_tagging.frontends.ast_fbank import ASTFbank, compute_fbank_stats
from efficient_tagging.models import ast as ast_module
from efficient_tagging.models.ast import (AUDIOSET_CHECKPOINT_FILENAME, AUDIOSET_CHECKPOINT_URL, MODEL_SIZES,
                                          ASTModel, ASTSize, ASTTagger, adapt_audioset_pos_embed,
                                          adapt_imagenet_patch_embedding, adapt_imagenet_pos_embed,
                                          load_official_checkpoint)

from conftest import FIXTURES, float_state_dict, load_fixture, make_tiny_audioset, requires_shared

AST_FIXTURES = FIXTURES / "ast"
FP32_ATOL = 5e-6  # the README's recommendation; catches both LayerNorm-eps mistakes (>= 1.1e-5)
FP64_ATOL = 1e-10
FBANK_ATOL = 1e-5


def _ast_files(predicate) -> list[Path]:
    if not AST_FIXTURES.is_dir():
        return []
    found = []
    for path in sorted(AST_FIXTURES.glob("*.pt")):
        if ".state_dict-" in path.name:  # shards of a large case, merged by _load_case
            continue
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if isinstance(content, dict) and predicate(content):
            found.append(path)
    return found


MODEL_CASES = _ast_files(lambda d: "config" in d and "logits" in d)
FBANK_CASES = _ast_files(lambda d: "fbank_call_kwargs" in d and "expected" in d)


def _load_case(path: Path) -> dict:
    case = load_fixture(path)
    state = dict(case["state_dict"])
    for shard in case["meta"].get("state_dict_shards", []):
        state.update(load_fixture(path.parent / shard)["state_dict"])
    case["state_dict"] = float_state_dict(state)
    return case


@pytest.fixture(autouse=True)
def _one_thread():
    # Small matrices: with other processes on the 2 cores, OpenMP threads mostly wait for each other.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _shallow(monkeypatch, size: str, depth: int = 1) -> None:
    """Make `size` a `depth`-block model so constructor paths of large sizes run quickly."""
    original = MODEL_SIZES[size]
    monkeypatch.setitem(MODEL_SIZES, size, ASTSize(original.embed_dim, original.num_heads, depth, original.deit_grid,
                                                   original.timm_name, original.reference_timm_name))


# ---------------------------------------------------------------------------------------
# model cases
# ---------------------------------------------------------------------------------------
@requires_shared
def test_model_cases_exist():
    assert len(MODEL_CASES) >= 2 and len(FBANK_CASES) >= 2


@requires_shared
@pytest.mark.parametrize("path", MODEL_CASES, ids=lambda p: p.stem)
def test_reference_logits(path):
    case = _load_case(path)
    model = ASTModel(**case["config"]).eval()
    assert list(model.state_dict()) == case["meta"]["state_dict_keys_in_order"]
    model.load_state_dict(case["state_dict"], strict=True)
    assert model.num_classes == case["config"]["label_dim"]
    assert model.embedding_dim == MODEL_SIZES[case["config"]["model_size"]].embed_dim
    atol = float(case["meta"].get("atol", FP32_ATOL))
    with torch.no_grad():
        logits = model(case["input"])
        embedding = model.forward_features(case["input"])
    assert logits.shape == case["logits"].shape and embedding.shape == (len(logits), model.embedding_dim)
    diff = (logits - case["logits"]).abs().max().item()
    assert diff <= atol, f"max |logits - reference| = {diff:.3g} > {atol}"
    with torch.no_grad():
        assert torch.allclose(model.mlp_head(embedding), logits, atol=1e-6, rtol=0)
        model.double()
        logits64 = model(case["input"].double())
    diff64 = (logits64 - case["logits_fp64"]).abs().max().item()
    assert diff64 <= FP64_ATOL, f"float64: max |logits - reference| = {diff64:.3g}"


@requires_shared
@pytest.mark.parametrize("path", MODEL_CASES, ids=lambda p: p.stem)
def test_fixture_through_get_model_with_the_fixture_layout(path):
    """The design's contract: get_model(arch=kind, **fixture config) reproduces the fixture on its own input."""
    from efficient_tagging import get_model

    case = _load_case(path)
    assert case["input"].dim() == 3  # the reference's (B, T, F)
    model = get_model(arch="ast", **case["config"]).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    atol = float(case["meta"].get("atol", FP32_ATOL))
    with torch.no_grad():
        logits, embedding = model(case["input"])
        logits4, _ = model(case["input"].transpose(1, 2).unsqueeze(1))  # the project's (B, 1, F, T)
    diff = (logits - case["logits"]).abs().max().item()
    assert diff <= atol, f"max |logits - reference| = {diff:.3g} > {atol}"
    assert torch.equal(logits, logits4) and embedding.shape == (len(logits), model.embedding_dim)
    with pytest.raises(ValueError, match="input_fdim"):
        model(case["input"][..., :-1])


@requires_shared
def test_tagger_matches_model():
    path = min(MODEL_CASES, key=lambda p: p.stat().st_size)
    case = _load_case(path)
    model = ASTModel(**case["config"]).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    spec = case["input"].transpose(1, 2).unsqueeze(1)  # (B, 1, F, T), the project's layout
    tagger = ASTTagger.from_model(model).eval()
    assert tagger.v.pos_embed is model.v.pos_embed  # shares the weights
    fresh = ASTTagger(**model.config).eval()
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert fresh.config == model.config and list(fresh.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        expected = model(case["input"])
        for candidate in (tagger, fresh):
            logits, embedding = candidate(spec)
            torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
            torch.testing.assert_close(embedding, model.forward_features(case["input"]), atol=1e-6, rtol=0)
    assert tagger.num_classes == model.num_classes and tagger.embedding_dim == model.embedding_dim


@requires_shared
def test_official_state_dict_layout_on_meta():
    manifest = json.loads((AST_FIXTURES / "official_state_dict_keys.json").read_text())
    with torch.device("meta"):
        model = ASTModel(imagenet_pretrain=False, verbose=False)  # base384, 527 labels, f10/t10, 128x1024
    layout = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(layout) == list(manifest["state_dict_bare"])
    assert layout == manifest["state_dict_bare"]
    assert ["module." + key for key in layout] == list(manifest["state_dict_prefixed"])
    assert sum(p.numel() for p in model.parameters()) == manifest["n_params"]
    assert len(layout) == manifest["n_tensors"]
    assert list(model.grid) == manifest["patch_grid_f_t"]
    for name, entry in manifest["other_official_checkpoints_derived_shapes"].items():
        config = entry["assumed_constructor"]
        with torch.device("meta"):
            other = ASTModel(**config, imagenet_pretrain=False, verbose=False)
        shapes = {"module." + k: list(v.shape) for k, v in other.state_dict().items()}
        for key, shape in entry.items():
            if key.startswith("module."):
                assert shapes[key] == shape, (name, key)


# ---------------------------------------------------------------------------------------
# weight-adaptation rules
# ---------------------------------------------------------------------------------------
@requires_shared
def test_imagenet_rule_functions():
    fixture = load_fixture(AST_FIXTURES / "rule_imagenet_init.pt")
    for case in fixture["cases"]:
        weight, bias = adapt_imagenet_patch_embedding(case["deit_patch_weight"], case["deit_patch_bias"])
        assert torch.equal(weight, case["expected_patch_weight"]) and torch.equal(bias, case["expected_patch_bias"])
        pos = adapt_imagenet_pos_embed(case["deit_pos_embed"], *case["grid_f_t"])
        assert torch.equal(pos, case["expected_pos_embed"]), case["config"]


@requires_shared
def test_audioset_rule_function():
    fixture = load_fixture(AST_FIXTURES / "rule_audioset_pretrain.pt")
    for case in fixture["cases"]:
        pos = adapt_audioset_pos_embed(fixture["checkpoint_pos_embed"], *case["grid_f_t"])
        assert torch.equal(pos, case["expected_pos_embed"]), case["config"]


def _deit_state_dict(size: ASTSize, pos_embed, weight, bias) -> dict:
    """A timm-layout DeiT-distilled state dict with the given patch/position tensors (random rest)."""
    with torch.device("meta"):
        donor = ast_module.DistilledViT(size, 16, 16, (size.deit_grid, size.deit_grid))
    state = {k: torch.randn(v.shape) for k, v in donor.state_dict().items()}
    state.update({"pos_embed": pos_embed, "patch_embed.proj.weight": weight, "patch_embed.proj.bias": bias})
    return state


@requires_shared
def test_imagenet_init_through_constructor(monkeypatch):
    fixture = load_fixture(AST_FIXTURES / "rule_imagenet_init.pt")
    for case in fixture["cases"]:
        config = case["config"]
        _shallow(monkeypatch, config["model_size"])
        size = MODEL_SIZES[config["model_size"]]
        deit = _deit_state_dict(size, case["deit_pos_embed"], case["deit_patch_weight"], case["deit_patch_bias"])
        model = ASTModel(**config, imagenet_state_dict=deit)
        assert list(model.grid) == case["grid_f_t"]
        assert torch.equal(model.v.pos_embed.data, case["expected_pos_embed"])
        assert torch.equal(model.v.patch_embed.proj.weight.data, case["expected_patch_weight"])
        assert torch.equal(model.v.patch_embed.proj.bias.data, case["expected_patch_bias"])
        assert model.v.patch_embed.proj.stride == (config["fstride"], config["tstride"])
        assert torch.equal(model.v.blocks[0].attn.qkv.weight.data, deit["blocks.0.attn.qkv.weight"])
        assert torch.equal(model.v.cls_token.data, deit["cls_token"])
        assert model.mlp_head[1].out_features == config["label_dim"]
        assert model.config["imagenet_pretrain"] is False  # rebuilding never re-fetches weights


@requires_shared
def test_audioset_init_through_constructor(monkeypatch, tmp_path):
    fixture = load_fixture(AST_FIXTURES / "rule_audioset_pretrain.pt")
    _shallow(monkeypatch, "base384")
    with torch.device("meta"):
        layout = ASTModel(imagenet_pretrain=False, verbose=False).state_dict()
    generator = torch.Generator().manual_seed(0)
    checkpoint = {"module." + k: torch.randn(v.shape, generator=generator) for k, v in layout.items()}
    checkpoint["module.v.pos_embed"] = fixture["checkpoint_pos_embed"]
    path = tmp_path / "audioset.pth"
    torch.save(checkpoint, path)
    for index, case in enumerate(fixture["cases"]):
        source = checkpoint if index % 2 == 0 else path  # a state dict or a file
        model = ASTModel(**case["config"], audioset_state_dict=source)
        assert list(model.grid) == case["grid_f_t"]
        assert torch.equal(model.v.pos_embed.data, case["expected_pos_embed"])
        for key, value in model.v.state_dict().items():
            if key != "pos_embed":
                assert torch.equal(value, checkpoint["module.v." + key]), key
        assert model.mlp_head[1].weight.shape == (case["config"]["label_dim"], 768)


def test_offline_errors_are_explained(monkeypatch, tmp_path):
    from efficient_tagging import hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(hub.urllib.request, "urlopen", offline)  # the DeiT weights come through the cache
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="imagenet_state_dict") as info:
        ASTModel(model_size="tiny224", input_tdim=128)
    assert "imagenet_pretrain=False" in str(info.value)

    calls = []

    def no_download(url, filename=None, *args, **kwargs):
        calls.append((url, filename))
        raise hub.DownloadError(f"could not download {url}")

    monkeypatch.setattr(hub, "cached_file", no_download)
    with pytest.raises(hub.DownloadError, match="audioset_state_dict"):
        ASTModel(audioset_pretrain=True, input_tdim=128)
    assert calls == [(AUDIOSET_CHECKPOINT_URL, AUDIOSET_CHECKPOINT_FILENAME)]


def test_constructor_and_input_validation():
    with pytest.raises(ValueError, match="model_size"):
        ASTModel(model_size="huge", imagenet_pretrain=False)
    with pytest.raises(ValueError, match="imagenet_pretrain=True"):
        ASTModel(audioset_pretrain=True, imagenet_pretrain=False)
    with pytest.raises(ValueError, match="base384"):
        ASTModel(audioset_pretrain=True, model_size="tiny224")
    with pytest.raises(ValueError, match="tstride"):
        ASTModel(audioset_pretrain=True, fstride=12, tstride=12)
    with pytest.raises(ValueError, match="input_tdim"):
        ASTModel(input_tdim=8, imagenet_pretrain=False)
    model = ASTModel(model_size="tiny224", input_tdim=100, label_dim=3, imagenet_pretrain=False).eval()
    assert model.grid == (12, 9)
    with pytest.raises(ValueError, match=r"\(2, 100, 64\)"):
        model(torch.zeros(2, 100, 64))
    with pytest.raises(ValueError, match=r"\(2, 200, 128\)"):
        model(torch.zeros(2, 200, 128))
    with pytest.raises(ValueError, match=r"\(B, T, F\)"):
        model(torch.zeros(2, 1, 100, 128))
    with torch.no_grad():
        assert model(torch.zeros(2, 105, 128)).shape == (2, 3)  # frames past the last full patch are dropped
    tagger = ASTTagger.from_model(model)
    with torch.no_grad():  # the reference layout (B, T, F) is accepted too (the design's fixture contract)
        assert torch.equal(tagger(torch.ones(2, 105, 128))[0], model(torch.ones(2, 105, 128)))
    with pytest.raises(ValueError, match=r"\(B, 1, F, T\)"):
        tagger(torch.zeros(100, 128))
    with pytest.raises(ValueError, match=r"\(2, 1, 128, 300\)"):
        tagger(torch.zeros(2, 1, 128, 300))


def test_verbose_logs_but_never_prints(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="efficient_tagging.models.ast"):
        ASTModel(model_size="tiny224", input_tdim=64, imagenet_pretrain=False)  # verbose=True by default
    assert capsys.readouterr().out == ""
    assert "12x5 = 60 patches" in caplog.text


def test_load_official_checkpoint_strips_module_prefix(tmp_path):
    model = ASTModel(model_size="tiny224", input_tdim=128, label_dim=5, imagenet_pretrain=False).eval()
    path = tmp_path / "ckpt.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    loaded = load_official_checkpoint(path, model_size="tiny224", input_tdim=128, label_dim=5).eval()
    x = torch.randn(1, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="pos_embed"):
        load_official_checkpoint(path, model_size="tiny224", input_tdim=256, label_dim=5)


# ---------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------
@requires_shared
@pytest.mark.parametrize("path", FBANK_CASES, ids=lambda p: p.stem)
def test_fbank_matches_reference(path):
    case = load_fixture(path)
    frontend = ASTFbank(target_length=case["target_length"], norm_mean=case["norm_mean"], norm_std=case["norm_std"],
                        sample_rate=case["sample_rate"])
    assert frontend.fbank_kwargs == case["fbank_call_kwargs"]
    waveform = case["waveform"]
    features = frontend(waveform)
    assert features.shape == (1, case["target_length"], 128)
    diff = (features[0] - case["expected"]).abs().max().item()
    assert diff <= FBANK_ATOL, f"max |fbank - reference| = {diff:.3g}"
    raw = frontend.raw_fbank(waveform[0])
    assert raw.shape == case["raw_fbank"].shape and frontend.num_frames(waveform.shape[-1]) == raw.shape[0]
    torch.testing.assert_close(raw, case["raw_fbank"], atol=1e-4, rtol=0)
    # batch layouts
    batch = torch.cat([waveform, 0.5 * waveform])
    both = frontend(batch)
    torch.testing.assert_close(both[0], features[0], atol=0, rtol=0)
    assert torch.equal(frontend(batch.unsqueeze(1)), both)
    image = ASTFbank(target_length=case["target_length"], norm_mean=case["norm_mean"], norm_std=case["norm_std"],
                     layout="b1ft")(batch)
    assert torch.equal(image, both.transpose(1, 2).unsqueeze(1))
    if case["target_length"] > raw.shape[0]:  # padded rows are zeros before normalisation
        pad_value = -case["norm_mean"] / (2 * case["norm_std"])
        torch.testing.assert_close(features[0, raw.shape[0]:], torch.full_like(features[0, raw.shape[0]:],
                                                                                pad_value))


def test_fbank_presets_and_validation():
    esc = ASTFbank.for_dataset("esc50")
    assert (esc.target_length, esc.norm_mean, esc.norm_std) == (512, -6.6268077, 5.358466)
    assert ASTFbank.for_dataset("audioset").target_length == 1024
    with pytest.raises(ValueError, match="unknown dataset"):
        ASTFbank.for_dataset("nope")
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 16000\)"):
        ASTFbank()(torch.zeros(2, 3, 4, 16000))
    with pytest.raises(ValueError, match="400 samples"):
        ASTFbank()(torch.zeros(1, 100))
    assert ASTFbank(target_length=None)(torch.randn(2, 16000)).shape == (2, 98, 128)


@requires_shared
def test_compute_fbank_stats():
    case = load_fixture(min(FBANK_CASES, key=lambda p: p.name))
    waveform = case["waveform"]
    mean, std = compute_fbank_stats([waveform[0], torch.cat([waveform, waveform])])
    raw = case["raw_fbank"].double()
    assert mean == pytest.approx(raw.mean().item(), abs=1e-4)
    assert std == pytest.approx(raw.std().item(), abs=1e-4)
    features = ASTFbank(target_length=None, norm_mean=mean, norm_std=std)(waveform)
    assert abs(features.mean().item()) < 1e-4 and features.std().item() == pytest.approx(0.5, abs=1e-4)
    padded_mean, _ = compute_fbank_stats([waveform], target_length=1024)
    assert padded_mean == pytest.approx(raw.sum().item() / (1024 * 128), abs=1e-4)


def test_stats_cli(tmp_path, capsys):
    path = make_tiny_audioset(tmp_path / "tiny.h5", num_clips=3, sample_rate=16000, seconds=1.0)
    assert fbank_stats.main(["--hdf5", str(path), "--clip-length", "1", "--target-length", "0"]) == 0
    out = capsys.readouterr().out
    values = dict(line.split("=") for line in out.splitlines() if "=" in line)
    from efficient_tagging.data.hdf5 import AudioSetDataset
    dataset = AudioSetDataset(path, sample_rate=16000, clip_length=1.0)
    mean, std = compute_fbank_stats(dataset[i]["waveform"] for i in range(len(dataset)))
    assert "clips: 3" in out
    assert float(values["norm_mean"]) == pytest.approx(mean, abs=1e-5)
    assert float(values["norm_std"]) == pytest.approx(std, abs=1e-5)
