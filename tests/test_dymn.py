"""DyMN: reference fixtures, checkpoint layout, temperature handling and ablation options."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from efficient_tagging.models.dymn import DyMN, DynamicConv2d, DynamicContext, dymn_temperature
from efficient_tagging.models.layers import MOBILENETV3_BLOCKS, make_divisible

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "fixtures" / "reference"
MANIFEST = REFERENCE / "official_state_dict_keys.json"
MANIFEST_ARGS = REFERENCE / "official_state_dict_keys.args.json"


def _dymn_fixtures() -> list:
    if not REFERENCE.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"reference fixtures not found under {REFERENCE}"))]
    paths = []
    for path in sorted(REFERENCE.glob("*.pt")):
        # mmap: only the small header is read to find the kind at collection time
        if torch.load(path, weights_only=True, mmap=True).get("kind") == "dymn":
            paths.append(pytest.param(path, id=path.stem))
    return paths or [pytest.param(None, marks=pytest.mark.skip(reason="no dymn fixtures"))]


@functools.lru_cache(maxsize=None)
def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _manifest_entries() -> list:
    if not (MANIFEST.is_file() and MANIFEST_ARGS.is_file()):
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{MANIFEST} not found"))]
    names = [name for name in _json(MANIFEST) if name.startswith("dymn")]
    return [pytest.param(name, id=name) for name in names]


def _small(**kwargs) -> DyMN:
    torch.manual_seed(0)
    kwargs.setdefault("width_mult", 0.1)
    kwargs.setdefault("num_classes", 10)
    return DyMN(**kwargs).eval()


@pytest.mark.parametrize("path", _dymn_fixtures())
def test_matches_reference_fixture(path: Path) -> None:
    fx = torch.load(path, weights_only=True)
    model = DyMN(**{k: v for k, v in fx["config"].items() if k != "pretrained_name"})
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in fx["state_dict"].items()},
                          strict=True)
    model.eval()
    with torch.no_grad():
        logits, embedding = model(fx["input"])
    torch.testing.assert_close(logits, fx["logits"], **fx["meta"]["tolerance"])
    torch.testing.assert_close(embedding, fx["embedding"], **fx["meta"]["tolerance"])


@pytest.mark.parametrize("name", _manifest_entries())
def test_state_dict_matches_manifest(name: str) -> None:
    expected = _json(MANIFEST)[name]
    spec = _json(MANIFEST_ARGS)["architectures"][name]
    with torch.device("meta"):  # shapes only: skip allocating up to 40 M parameters
        model = DyMN(**spec["kwargs"])
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == [(k, list(v)) for k, v in expected.items()]
    assert sum(p.numel() for p in model.parameters()) == spec["num_parameters"]
    assert model.embedding_dim == 6 * {0.4: 64, 1.0: 160, 2.0: 320}[spec["kwargs"]["width_mult"]]


def test_temperature_schedule_formula() -> None:
    # defaults T_max=30, T0_slope=1, T1_slope=0.02, T_min=1: steep part 30 - e, gentle part 1.58 - 0.02 e
    assert dymn_temperature(0) == pytest.approx(30.0)
    assert dymn_temperature(10) == pytest.approx(20.0)
    assert dymn_temperature(28.5) == pytest.approx(1.5)
    assert dymn_temperature(29) == pytest.approx(1.0)
    assert dymn_temperature(40) == pytest.approx(1.0)  # floored at T_min
    # lower floor: the gentle decay shows (1 + 0.02 * 29 - 0.02 * 35 = 0.88)
    assert dymn_temperature(35, T_max=30, T0_slope=1, T1_slope=0.02, T_min=0.5) == pytest.approx(0.88)
    assert dymn_temperature(3, T_max=10, T0_slope=2, T1_slope=0.1, T_min=0.1) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        dymn_temperature(1, T0_slope=0)


def test_update_temperature_sets_every_dynamic_conv() -> None:
    model = _small(T_max=20.0, T0_slope=2.0, T1_slope=0.1, T_min=0.5)
    convs = [m for m in model.modules() if isinstance(m, DynamicConv2d)]
    # depthwise + project in every block, expand where the width changes
    n_expand = sum(make_divisible(b.expanded_channels * 0.1) != make_divisible(b.in_channels * 0.1)
                   for b in MOBILENETV3_BLOCKS)
    assert len(convs) == 30 + n_expand
    assert model.temperature == 20.0 and all(c.temperature == 20.0 for c in convs)
    t = model.update_temperature(5)
    assert t == pytest.approx(max(20 - 2 * 5, 1 + 0.1 * 19 / 2 - 0.1 * 5, 0.5))
    assert model.temperature == t and all(c.temperature == t for c in convs)
    with pytest.raises(ValueError):
        model.set_temperature(0.0)


def test_set_temperature_changes_output_but_not_state_dict() -> None:
    model = _small()
    with torch.no_grad():  # sharpen the kernel attention so the temperature visibly matters
        for m in model.modules():
            if isinstance(m, DynamicConv2d):
                m.residuals[0].weight.normal_(0.0, 1.0)
    x = torch.randn(2, 1, 32, 40)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out_hot = model(x)[1]
        model.set_temperature(1.0)
        out_cold = model(x)[1]
    assert model.temperature == 1.0
    # relative: a freshly initialised net in eval mode has tiny activations
    assert (out_hot - out_cold).abs().max() > 1e-3 * out_hot.abs().max()
    after = model.state_dict()
    assert after.keys() == before.keys() and not any("temperature" in k for k in after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # loading weights never transfers the temperature
    fresh = DyMN(width_mult=0.1, num_classes=10)
    fresh.load_state_dict(after)
    assert fresh.temperature == 30.0


@pytest.mark.parametrize("options", [
    dict(use_dy_blocks="replace_se"),
    dict(no_dyconv=True),
    dict(no_dyrelu=True),
    dict(no_ca=True),
    dict(no_dyconv=True, no_dyrelu=True, no_ca=True),
    dict(dyrelu_k=3, dyconv_k=2, context_ratio=2, strides=(2, 1, 2, 1)),
], ids=["replace_se", "no_dyconv", "no_dyrelu", "no_ca", "no_dynamics", "k3_k2_s2121"])
def test_variants_run(options: dict) -> None:
    model = _small(**options)
    with torch.no_grad():
        logits, embedding = model(torch.randn(2, 1, 32, 40))
    assert logits.shape == (2, 10) and embedding.shape == (2, model.embedding_dim)
    assert torch.isfinite(logits).all()
    keys = model.state_dict().keys()
    if options.get("no_dyconv"):  # EfficientAT wraps static convs: `exp_conv.module.weight`
        assert "layers.6.exp_conv.module.weight" in keys
    if options.get("use_dy_blocks") == "replace_se":
        assert "layers.0.block.0.0.weight" in keys and "layers.3.depth_conv.weight" in keys
    # the stored config rebuilds the same architecture
    rebuilt = DyMN(**model.config)
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == \
        [(k, v.shape) for k, v in model.state_dict().items()]


def test_batch_of_one_and_batch_consistency() -> None:
    model = _small(num_classes=527, width_mult=0.4)
    x = torch.randn(3, 1, 64, 50)
    with torch.no_grad():
        logits, embedding = model(x)
        single = [model(x[i:i + 1]) for i in range(3)]
    assert single[0][0].shape == (1, 527) and single[0][1].shape == (1, 384)
    # per-sample kernels: folding the batch into groups must not mix samples
    torch.testing.assert_close(torch.cat([s[0] for s in single]), logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([s[1] for s in single]), embedding, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel_size,stride,groups", [(1, 1, 1), (3, 2, 12), (5, 1, 12)])
def test_dynamic_conv_matches_per_sample_conv(kernel_size: int, stride: int, groups: int) -> None:
    torch.manual_seed(1)
    conv = DynamicConv2d(12, 12 if groups > 1 else 20, context_dim=8, kernel_size=kernel_size, stride=stride,
                         padding=(kernel_size - 1) // 2, groups=groups, num_kernels=3, temperature=0.7)
    x, h_c = torch.randn(2, 12, 9, 11), torch.randn(2, 8, 1, 1)
    ctx = DynamicContext(h_c, torch.empty(0), torch.empty(0))
    out = conv(x, ctx)
    kernels = conv.weight.reshape(3, conv.out_channels, 12 // groups, kernel_size, kernel_size)
    for i in range(2):
        attention = torch.softmax(conv.residuals(h_c[i].flatten()) / 0.7, dim=-1)
        kernel = (attention[:, None, None, None, None] * kernels).sum(0)
        expected = F.conv2d(x[i:i + 1], kernel, stride=stride, padding=(kernel_size - 1) // 2, groups=groups)
        torch.testing.assert_close(out[i:i + 1], expected, atol=1e-5, rtol=1e-5)


def test_training_step_reaches_dynamic_weights() -> None:
    model = _small().train()
    logits, _ = model(torch.randn(2, 1, 32, 40))
    logits.sum().backward()
    assert model.layers[5].depth_conv.weight.grad is not None
    assert model.layers[5].depth_conv.residuals[0].weight.grad.abs().sum() > 0
    assert model.layers[5].depth_act.coef_net[0].weight.grad.abs().sum() > 0


def test_wrong_input_rank_raises() -> None:
    model = _small()
    with pytest.raises(ValueError, match=r"\(2, 32, 40\)"):
        model(torch.randn(2, 32, 40))


@pytest.mark.parametrize("kwargs", [
    dict(use_dy_blocks="some"),
    dict(strides=(2, 2, 2)),
    dict(strides=(2, 2, 3, 2)),
    dict(width_mult=0.0),
    dict(num_classes=0),
    dict(dyconv_k=0),
    dict(min_context_size=64, max_context_size=32),
    dict(T_max=0.0),
    dict(T0_slope=0.0),
])
def test_invalid_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DyMN(**kwargs)
