"""PaSST: reference fixtures, official state_dict layout, patchout, long/short inputs."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from efficient_tagging.complexity import count_macs, count_params
from efficient_tagging.models.passt import PASST_ARCHITECTURES, Attention, PaSST, build_passt_from_reference_args

from conftest import FIXTURES, fixture_files, float_state_dict, load_fixture, requires_shared

PASST_FIXTURES = fixture_files("passt")
MANIFEST = FIXTURES / "official_state_dict_keys.json"
MANIFEST_ARGS = FIXTURES / "official_state_dict_keys.args.json"


def _manifest_entries() -> list[str]:
    if not MANIFEST_ARGS.is_file():
        return []
    args = json.loads(MANIFEST_ARGS.read_text())["architectures"]
    return sorted(name for name in args if name.startswith(("passt", "openmic")))


# ------------------------------------------------------------------------------------------
# reference fixtures
# ------------------------------------------------------------------------------------------
@requires_shared
@pytest.mark.parametrize("use_sdpa", [True, False], ids=["sdpa", "softmax"])
@pytest.mark.parametrize("path", PASST_FIXTURES, ids=[p.stem for p in PASST_FIXTURES])
def test_matches_reference_fixture(path, use_sdpa, monkeypatch):
    monkeypatch.setattr(Attention, "use_sdpa", use_sdpa)
    fx = load_fixture(path)
    model = PaSST(**fx["config"])
    model.load_state_dict(float_state_dict(fx["state_dict"]), strict=True)
    model.eval()
    with torch.no_grad():
        logits, embedding = model(fx["input"])
    tolerance = fx["meta"]["tolerance"]
    torch.testing.assert_close(logits, fx["logits"], **tolerance)
    torch.testing.assert_close(embedding, fx["embedding"], **tolerance)
    assert embedding.shape[1] == model.embedding_dim


def test_public_fixture_present():
    if not FIXTURES.is_dir():
        pytest.skip("../shared not present")
    assert PASST_FIXTURES, "expected at least one PaSST fixture"


# ------------------------------------------------------------------------------------------
# official state_dict layout
# ------------------------------------------------------------------------------------------
@requires_shared
@pytest.mark.parametrize("name", _manifest_entries())
def test_state_dict_matches_manifest(name):
    expected = json.loads(MANIFEST.read_text())[name]
    info = json.loads(MANIFEST_ARGS.read_text())["architectures"][name]
    kwargs = {k: v for k, v in info["kwargs"].items() if k != "pretrained"}
    with torch.device("meta"):
        model = build_passt_from_reference_args(**kwargs)
    state = model.state_dict()
    assert list(state) == list(expected)
    assert {k: list(v.shape) for k, v in state.items()} == expected
    assert count_params(model) == info["num_parameters"]
    assert len(state) == info["num_keys"]


def test_reference_arch_mapping():
    with torch.device("meta"):
        light = build_passt_from_reference_args("passt_l_kd_p16_128_ap47")
        small = build_passt_from_reference_args("passt_s_p16_s16_128_ap468", fstride=16, tstride=16,
                                                input_tdim=1000, n_classes=20)
    assert len(light.blocks) == 7 and light.embed_dim == 768 and light.distilled
    assert len(small.blocks) == 12 and small.stride == (16, 16) and small.img_size == (128, 1000)
    assert small.num_classes == 20 and small.time_new_pos_embed.shape[-1] == 1000 // 16
    assert set(PASST_ARCHITECTURES) >= {"passt_s_swa_p16_128_ap476", "passt_s_kd_p16_128_ap486"}
    with pytest.raises(ValueError, match="unknown PaSST arch"):
        build_passt_from_reference_args("passt_xl")


# ------------------------------------------------------------------------------------------
# behaviour on a small random model
# ------------------------------------------------------------------------------------------
SMALL = dict(img_size=(128, 998), patch_size=16, stride=10, embed_dim=48, depth=2, num_heads=3,
             num_classes=7, distilled=True)


def _small(**overrides) -> PaSST:
    torch.manual_seed(0)
    model = PaSST(**{**SMALL, **overrides})
    with torch.no_grad():  # non-trivial norms / positional embeddings
        for name, p in model.named_parameters():
            if "pos_embed" in name or name.endswith("_token"):
                p.normal_(0, 0.5)
            elif p.dim() == 1:
                p.normal_(0, 0.1).add_(1.0 if ("norm" in name or name.startswith("head.0")) and
                                        name.endswith("weight") else 0.0)
    return model.eval()


def _spec(frames: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 128, frames, generator=torch.Generator().manual_seed(seed))


def _tokens_seen(model: PaSST, x: torch.Tensor) -> int:
    seen = []
    handle = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def test_eval_tokens_and_determinism():
    model = _small()
    x = _spec(1000)
    assert _tokens_seen(model, x) == 12 * 99 + 2
    with torch.no_grad():
        a, ea = model(x)
        b, eb = model(x)
    assert a.shape == (2, 7) and ea.shape == (2, 48)
    assert torch.equal(a, b) and torch.equal(ea, eb)


def test_patchout_in_training_only():
    model = _small(s_patchout_t=5, s_patchout_f=2, u_patchout=30)
    x = _spec(998, batch=1)
    model.train()
    assert _tokens_seen(model, x) == (12 - 2) * (99 - 5) - 30 + 2
    logits, embedding = model(x)
    assert logits.shape == (1, 7) and embedding.shape == (1, 48)
    logits.sum().backward()
    assert model.time_new_pos_embed.grad is not None
    model.eval()
    assert _tokens_seen(model, x) == 12 * 99 + 2
    # each patchout kind on its own
    for kwargs, tokens in ((dict(s_patchout_t=10), 12 * 89), (dict(s_patchout_f=3), 9 * 99),
                           (dict(u_patchout=100), 12 * 99 - 100)):
        m = _small(**kwargs).train()
        assert _tokens_seen(m, x) == tokens + 2


def test_training_random_time_offset_for_short_input():
    model = _small()
    x = _spec(500)  # 49 time patches of 99
    t_patches = (500 - 16) // 10 + 1
    for seed in (3, 4, 5):
        torch.manual_seed(seed)
        offset = int(torch.randint(1 + 99 - t_patches, (1,)).item())
        torch.manual_seed(seed)
        with torch.no_grad():
            trained = model.train()(x)[0]
        shifted = copy.deepcopy(model).eval()
        with torch.no_grad():
            shifted.time_new_pos_embed[..., :t_patches] = model.time_new_pos_embed[..., offset:offset + t_patches]
            expected = shifted(x)[0]
        torch.testing.assert_close(trained, expected)


def test_shorter_input_uses_first_time_embeddings():
    model = _small()
    x = _spec(500)
    with torch.no_grad():
        logits, embedding = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    # the same as a model trained on exactly 49 time patches with the first 49 embeddings
    short = PaSST(**{**SMALL, "img_size": (128, 490)}).eval()
    state = model.state_dict()
    state["time_new_pos_embed"] = state["time_new_pos_embed"][..., :49]
    short.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(short(x)[0], logits)


def test_longer_input_is_cut_to_the_grid():
    model = _small()
    x = _spec(1300)
    with pytest.warns(UserWarning, match="cut"):
        with torch.no_grad():
            logits, _ = model(x)
    with torch.no_grad():
        expected, _ = model(x[..., :996])  # 99 patches of stride 10 and size 16
    torch.testing.assert_close(logits, expected)


def test_sliding_window():
    assert _small().window_frames == 998
    model = _small(img_size=(128, 400))  # trained on 400 frames: 39 time patches
    window = model.window_frames
    assert window == 400
    x = _spec(2 * window + 30, batch=1)
    starts = model.window_starts(x.shape[-1])
    # hop window // 4 while the windows fit, plus one window ending at the last frame
    assert starts == [0, 100, 200, 300, 400, 430]
    with torch.no_grad():
        logits, embedding = model.sliding_window_forward(x)
        parts = [model(x[..., s:s + window]) for s in starts]
    torch.testing.assert_close(logits, torch.stack([p[0] for p in parts]).mean(0))
    torch.testing.assert_close(embedding, torch.stack([p[1] for p in parts]).mean(0))
    with torch.no_grad():
        # hop = window: two windows, at 0 and at the end
        assert model.window_starts(2 * window, hop_frames=window) == [0, window]
        x2 = x[..., :2 * window]
        halves = (model(x2[..., :window])[0] + model(x2[..., window:])[0]) / 2
        torch.testing.assert_close(model.sliding_window_logits(x2, hop_frames=window), halves)
        # an input of exactly the window length is a plain forward pass
        x1 = x[..., :window]
        assert torch.equal(model.sliding_window_logits(x1), model(x1)[0])
        short = _spec(300, batch=1)
        assert torch.equal(model.sliding_window_forward(short)[1], model(short)[1])
        custom = model.sliding_window_logits(x, window_frames=200, hop_frames=100)
    assert custom.shape == (1, 7)
    with pytest.raises(ValueError):
        model.sliding_window_logits(x, window_frames=8)


def test_head_dist_is_not_used():
    model = _small()
    x = _spec(998)
    with torch.no_grad():
        before = model(x)
        model.head_dist.weight.normal_(0, 10.0)
        model.head_dist.bias.fill_(5.0)
        after = model(x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_not_distilled_and_representation():
    model = _small(distilled=False)
    assert model.dist_token is None and model.head_dist is None and model.new_pos_embed.shape[1] == 1
    with torch.no_grad():
        logits, embedding = model(_spec(800))
    assert logits.shape == (2, 7) and embedding.shape == (2, 48)
    rep = _small(distilled=False, representation_size=32)
    assert rep.embedding_dim == 32 and "pre_logits.fc.weight" in rep.state_dict()
    with torch.no_grad():
        logits, embedding = rep(_spec(800))
    assert logits.shape == (2, 7) and embedding.shape == (2, 32)
    assert (embedding.abs() <= 1).all()  # tanh


def test_sdpa_matches_explicit_softmax(monkeypatch):
    model = _small(depth=3)
    x = _spec(700)
    with torch.no_grad():
        fast = model(x)
        monkeypatch.setattr(Attention, "use_sdpa", False)
        slow = model(x)
    torch.testing.assert_close(fast[0], slow[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[1], slow[1], atol=1e-5, rtol=1e-5)


def test_training_with_dropout_runs():
    model = _small(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2, s_patchout_t=3).train()
    logits, embedding = model(_spec(998, batch=3))
    assert logits.shape == (3, 7) and embedding.shape == (3, 48)


def test_attributes_and_config_roundtrip():
    model = _small()
    assert model.num_classes == 7 and model.embedding_dim == 48
    assert (model.input_dim_f, model.input_dim_t) == (128, 998)
    rebuilt = PaSST(**model.config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.config == model.config
    with torch.device("meta"):
        default = PaSST()
    assert default.img_size == (128, 998) and default.stride == (16, 16) and not default.distilled
    assert isinstance(default.head[0], torch.nn.LayerNorm) and default.head[0].eps == 1e-5
    assert default.norm.eps == 1e-6 and default.blocks[0].norm1.eps == 1e-6


@pytest.mark.parametrize("shape, match", [
    ((2, 128, 998), "rank 3"),
    ((2, 2, 128, 998), r"\(2, 2, 128, 998\)"),
    ((2, 1, 64, 998), r"\(2, 1, 64, 998\)"),
    ((2, 1, 128, 10), "shorter than one patch"),
])
def test_input_validation(shape, match):
    model = _small()
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(shape))


@pytest.mark.parametrize("kwargs", [dict(embed_dim=50, num_heads=3), dict(stride=0), dict(img_size=(128, 998, 1)),
                                    dict(weight_init="jax"), dict(u_patchout=-1), dict(drop_rate=1.5)])
def test_constructor_validation(kwargs):
    with pytest.raises(ValueError):
        with torch.device("meta"):
            PaSST(**kwargs)


# ------------------------------------------------------------------------------------------
# complexity
# ------------------------------------------------------------------------------------------
def _analytic_macs(embed: int, depth: int, classes: int, f_patches: int, t_patches: int,
                   patch: int = 16, mlp_ratio: float = 4.0) -> int:
    n = f_patches * t_patches + 2
    hidden = int(embed * mlp_ratio)
    conv = embed * f_patches * t_patches * (patch * patch + 1)
    block = n * (3 * embed * embed + 3 * embed) + 2 * n * n * embed + n * (embed * embed + embed) \
        + n * (embed * hidden + hidden) + n * (hidden * embed + embed)
    return conv + depth * block + embed * classes + classes


def test_complexity_counts_attention():
    with torch.device("meta"):
        model = build_passt_from_reference_args("passt_s_swa_p16_128_ap476")
    macs = count_macs(model, (1, 1, 128, 998))
    assert macs == _analytic_macs(768, 12, 527, 12, 99)
    assert 120e9 < macs < 135e9
    small = _small()
    assert count_macs(small, (1, 1, 128, 500)) == _analytic_macs(48, 2, 7, 12, 49)
    assert math.isclose(count_params(model), 86153758)


def test_transformer_layers_equal_timms():
    """The package's own token MLP and stochastic depth (written to keep timm out of a command's start)
    compute what timm's do: same keys, same outputs, the same random draws in training."""
    timm_layers = pytest.importorskip("timm.layers")
    from efficient_tagging.models.layers import DropPath, TokenMlp

    torch.manual_seed(0)
    ours = TokenMlp(16, 64, act_layer=torch.nn.GELU, drop=0.1)
    theirs = timm_layers.Mlp(in_features=16, hidden_features=64, act_layer=torch.nn.GELU, drop=0.1)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 16)
    for train in (False, True):
        ours.train(train)
        theirs.train(train)
        torch.manual_seed(1)
        expected = theirs(x)
        torch.manual_seed(1)
        assert torch.equal(ours(x), expected)
    for train in (False, True):
        for rate in (0.0, 0.3):
            torch.manual_seed(2)
            expected = timm_layers.DropPath(rate).train(train)(x)
            torch.manual_seed(2)
            got = DropPath(rate).train(train)(x)
            assert torch.equal(got, expected)
            if train and rate:
                assert not torch.equal(got, x)  # the draw really dropped or rescaled samples
