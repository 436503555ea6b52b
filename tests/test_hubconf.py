"""hubconf.py: torch.hub entry points for every catalogue name, plus `tagger`; nothing is downloaded.

`torch.hub.list` / `torch.hub.help` only take GitHub repositories (they fetch the repository into
the hub cache first); here that fetch is replaced by the path of this checkout, so they read its
hubconf.py exactly as they would read a downloaded copy. `torch.hub.load(..., source="local")` runs
unchanged.
"""
from __future__ import annotations

import keyword

import pytest
import torch

from conftest import REPO
from efficient_tagging import AudioTagger, get_model
from efficient_tagging.models.registry import CATALOGUE, known_names


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr("efficient_tagging.models.factory.cached_file", refuse)
    monkeypatch.setattr("efficient_tagging.labels.cached_file", refuse, raising=False)


@pytest.fixture
def hub_from_checkout(monkeypatch):
    """torch.hub.list/help on this checkout: the GitHub fetch returns the checkout's path."""
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: str(REPO))
    return "owner/efficient_tagging"


def _hubconf():
    return torch.hub._import_module("hubconf", str(REPO / "hubconf.py"))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_has_one_entry_per_catalogue_name_and_the_tagger(hub_from_checkout):
    entries = torch.hub.list(hub_from_checkout)
    hubconf = _hubconf()
    expected = {hubconf._hub_name(name) for name in known_names()}
    assert set(entries) == expected | {"tagger"}, "only entries are public callables"
    assert len(entries) == len(CATALOGUE) + 1
    for name in ("mn04_as", "mn10_as", "mn40_as_ext", "mn10_as_hop_15", "mn10_as_mels_64", "mn10_as_fc",
                 "dymn04_as", "dymn10_as", "dymn20_as", "mn10_im_pytorch", "passt_s_swa_p16_128_ap476",
                 "ast_audioset_10_10_0_4593", "mn40_as_2", "passt_s_f128_30sec_p16_s10_ap473_swa",
                 "openmic2008_passt_u_f128_p16_s10_ap85"):
        assert name in entries
    for name in entries:
        assert name.isidentifier() and not keyword.iskeyword(name)
    # every entry goes back to its catalogue name
    assert {hubconf._ENTRY_NAMES[name] for name in entries if name != "tagger"} == set(known_names())


def test_help_gives_each_entry_a_docstring(hub_from_checkout):
    text = torch.hub.help(hub_from_checkout, "mn04_as")
    assert text.startswith("mn04_as: width 0.4 MobileNetV3") and "pretrained" in text and "0.432" in text
    assert "mn40_as(2)" in torch.hub.help(hub_from_checkout, "mn40_as_2")
    assert "AudioTagger" in torch.hub.help(hub_from_checkout, "tagger")
    hubconf = _hubconf()
    for name in torch.hub.list(hub_from_checkout):
        assert getattr(hubconf, name).__doc__, name


def test_dependencies_are_importable():
    import importlib.util

    hubconf = _hubconf()
    assert "torch" in hubconf.dependencies
    assert all(importlib.util.find_spec(name) is not None for name in hubconf.dependencies)


def test_load_without_weights_builds_the_release_architecture():
    model = torch.hub.load(str(REPO), "mn04_as", source="local", pretrained=False)
    assert _params(model) == _params(get_model(arch="mn", width_mult=0.4))
    assert model.width_mult == 0.4 and model.num_classes == 527
    assert model.preprocessing["n_mels"] == 128 and model.preprocessing["sr"] == 32000
    hop = torch.hub.load(str(REPO), "mn10_as_hop_15", source="local", pretrained=False)
    assert hop.preprocessing["hopsize"] == 480
    dymn = torch.hub.load(str(REPO), "dymn04_as", source="local", pretrained=False, num_classes=10)
    assert _params(dymn) == _params(get_model(arch="dymn", width_mult=0.4, num_classes=10))
    assert dymn.temperature == 1.0  # released DyMNs run at their final temperature
    with torch.no_grad():
        logits, embedding = model(torch.zeros(1, 1, 128, 100))
    assert logits.shape == (1, 527) and embedding.shape == (1, 384)


def test_load_with_weights_goes_through_get_model(tmp_path):
    torch.manual_seed(0)
    state = get_model(arch="mn", width_mult=0.4).state_dict()
    path = tmp_path / "mn04_as_mAP_432.pt"
    torch.save(state, path)
    model = torch.hub.load(str(REPO), "mn04_as", source="local", weights=path)
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert model.pretrained_name == "mn04_as"
    with pytest.raises(ValueError, match="pretrained=True"):
        torch.hub.load(str(REPO), "mn04_as", source="local", pretrained=False, weights=path)


def test_ast_entries_take_num_classes_like_every_family(monkeypatch):
    """A fresh AST (too big to build here) gets num_classes as AST's own label_dim."""
    hubconf = _hubconf()
    built = {}

    def fake_get_model(name=None, **kwargs):
        built.update(name=name, **kwargs)
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(hubconf._efficient_tagging, "get_model", fake_get_model)
    model = hubconf.ast_audioset_16_16_0_4422(pretrained=False, num_classes=3)
    assert built["arch"] == "ast" and built["label_dim"] == 3 and "num_classes" not in built
    assert built["fstride"] == 16 and built["imagenet_pretrain"] is False
    assert model.preprocessing["frontend"] == "ast_fbank"


def test_tagger_entry():
    tagger = torch.hub.load(str(REPO), "tagger", "mn04_as", source="local", pretrained=False)
    assert isinstance(tagger, AudioTagger) and tagger.sample_rate == 32000
    probabilities = tagger.probabilities(torch.zeros(1, 32000))
    assert probabilities.shape == (1, 527)


def test_tagger_entry_takes_the_hub_spelling_of_a_name(monkeypatch):
    hubconf = _hubconf()
    asked = []
    monkeypatch.setattr(hubconf, "_build", lambda name, pretrained, kwargs: asked.append(name)
                        or get_model(arch="mn", width_mult=0.1))
    hubconf.tagger("mn40_as_2", pretrained=False)  # mn40 itself is too big to build here
    hubconf.tagger("mn40_as(2)", pretrained=False)
    assert asked == ["mn40_as(2)", "mn40_as(2)"]


def test_tagger_entry_with_a_checkpoint(tmp_path):
    from conftest import save_tiny_teacher

    path = save_tiny_teacher(tmp_path / "tiny.pt")
    tagger = torch.hub.load(str(REPO), "tagger", str(path), source="local")
    assert tagger.sample_rate == 16000 and tagger.label_map.names[0] == "tone_0"
