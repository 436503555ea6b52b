"""Tests for efficient_tagging.models.mobilenet (EfficientAT "mn" MobileNetV3)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from efficient_tagging.models.mobilenet import (
    HEAD_TYPES,
    MobileNet,
    SqueezeExcitation,
)

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE_DIR = SHARED_DIR / "fixtures" / "reference"
_MISSING_REASON = f"shared reference fixtures not found at {REFERENCE_DIR}"

# Small configuration for behavioural tests: fast on 2 CPU cores.
SMALL = dict(width_mult=0.1, num_classes=10, input_dim_f=32, input_dim_t=64)


def _mn_fixture_paths() -> list[Path]:
    """Every reference fixture of kind 'mn' (globbed at collection, so new files are picked up)."""
    if not REFERENCE_DIR.is_dir():
        return []
    paths = []
    for path in sorted(REFERENCE_DIR.glob("*.pt")):
        # mmap: only the small "kind" entry is actually read while collecting
        fixture = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        if fixture.get("kind") == "mn":
            paths.append(path)
    return paths


def _manifest_entries() -> list[str]:
    manifest = REFERENCE_DIR / "official_state_dict_keys.json"
    if not manifest.is_file():
        return []
    return sorted(name for name in json.loads(manifest.read_text()) if name.startswith("mn"))


def _params_or_skip(values: list, what: str) -> list:
    return values or [pytest.param(None, marks=pytest.mark.skip(reason=f"{_MISSING_REASON} (no {what})"))]


def _float_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


@pytest.mark.parametrize("path", _params_or_skip(_mn_fixture_paths(), "mn fixtures"),
                         ids=lambda p: p.stem if isinstance(p, Path) else "missing")
def test_matches_reference_fixture(path: Path) -> None:
    fixture = torch.load(path, weights_only=True, map_location="cpu")
    config = {k: v for k, v in fixture["config"].items() if k != "pretrained_name"}
    model = MobileNet(**config)
    assert list(model.state_dict()) == list(fixture["state_dict"]), "state_dict key order differs from the reference"
    model.load_state_dict(_float_state_dict(fixture["state_dict"]), strict=True)
    model.eval()
    with torch.no_grad():
        logits, embedding = model(fixture["input"])
    assert logits.shape == fixture["logits"].shape
    assert embedding.shape == fixture["embedding"].shape
    torch.testing.assert_close(logits, fixture["logits"], **fixture["meta"]["tolerance"])
    torch.testing.assert_close(embedding, fixture["embedding"], **fixture["meta"]["tolerance"])


@pytest.mark.parametrize("name", _params_or_skip(_manifest_entries(), "state_dict manifest"))
def test_state_dict_matches_manifest(name: str) -> None:
    manifest = json.loads((REFERENCE_DIR / "official_state_dict_keys.json").read_text())[name]
    build = json.loads((REFERENCE_DIR / "official_state_dict_keys.args.json").read_text())["architectures"][name]
    with torch.device("meta"):  # shapes only: no memory or init cost for mn40
        model = MobileNet(**build["kwargs"])
    state = model.state_dict()
    assert list(state) == list(manifest)
    assert {k: list(v.shape) for k, v in state.items()} == manifest
    assert sum(p.numel() for p in model.parameters()) == build["num_parameters"]
    for key, dtype in build["non_float_keys"].items():
        assert str(state[key].dtype) == f"torch.{dtype}"


def test_attributes() -> None:
    model = MobileNet(width_mult=0.4)
    assert model.embedding_dim == 384 and model.input_dim_f == 128 and model.num_classes == 527
    assert model.width_mult == 0.4 and model.head_type == "mlp"
    assert isinstance(model.features, torch.nn.Sequential) and len(model.features) == 17
    assert MobileNet(**model.config).config == model.config
    assert MobileNet(reduced_tail=True).embedding_dim == 480


def _check_outputs(model: MobileNet, x: torch.Tensor) -> None:
    logits, embedding = model(x)
    assert logits.shape == (x.shape[0], model.num_classes)
    assert embedding.shape == (x.shape[0], model.embedding_dim)
    assert torch.isfinite(logits).all() and torch.isfinite(embedding).all()


@pytest.mark.parametrize("se_dims", ["f", "cft", "t", "ft", "none"])
@pytest.mark.parametrize("frames", [64, 41, 150])
def test_frequency_and_time_se_work(se_dims: str, frames: int) -> None:
    torch.manual_seed(0)
    model = MobileNet(**SMALL, se_dims=se_dims).eval()
    with torch.no_grad():
        _check_outputs(model, torch.randn(2, 1, 32, frames))


@pytest.mark.parametrize("se_agg", ["max", "avg", "add", "min"])
def test_se_aggregations(se_agg: str) -> None:
    model = MobileNet(**SMALL, se_dims="cft", se_agg=se_agg).eval()
    with torch.no_grad():
        _check_outputs(model, torch.randn(2, 1, 32, 64))


def test_frequency_se_parameter_shapes() -> None:
    model = MobileNet(width_mult=1.0, se_dims="cf")
    state = model.state_dict()
    # block 4 (features.4): 72 expanded channels, frequency 128 -> 64 (stem) -> 32 -> 16
    assert state["features.4.block.2.conc_se_layers.0.fc1.weight"].shape == (24, 72)
    assert state["features.4.block.2.conc_se_layers.1.fc1.weight"].shape == (8, 16)
    assert state["features.4.block.2.conc_se_layers.1.fc2.weight"].shape == (16, 8)


@pytest.mark.parametrize("se_dims", ["t", "ft"])
def test_dilated_with_time_se(se_dims: str) -> None:
    model = MobileNet(**SMALL, dilated=True, se_dims=se_dims).eval()
    # dilated tail keeps the resolution of block 12: sizes follow the real strides
    assert model.features[13].time_size == model.features[12].time_size
    with torch.no_grad():
        _check_outputs(model, torch.randn(2, 1, 32, 64))
        _check_outputs(model, torch.randn(2, 1, 32, 90))


def test_time_se_trained_length_equals_reference_rule() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(input_dim=25, squeeze_dim=8, axis=3)
    x = torch.randn(3, 6, 5, 25)
    # EfficientAT: mean over channel and frequency -> fc1 -> ReLU -> fc2 -> sigmoid -> scale time
    profile = torch.mean(x, [1, 2], keepdim=True).squeeze(2).squeeze(2)
    scale = torch.sigmoid(se.fc2(torch.relu(se.fc1(profile)))).view(3, 1, 1, 25)
    assert torch.equal(se(x), scale * x)


def test_channel_se_equals_reference_rule() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(input_dim=6, squeeze_dim=8, axis=1)
    x = torch.randn(2, 6, 5, 7)
    profile = torch.mean(x, [2, 3], keepdim=True).squeeze(2).squeeze(2)
    scale = torch.sigmoid(se.fc2(torch.relu(se.fc1(profile)))).view(2, 6, 1, 1)
    assert torch.equal(se(x), scale * x)


@pytest.mark.parametrize("length", [10, 25, 40, 77])
def test_time_se_other_lengths(length: int) -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(input_dim=25, squeeze_dim=8, axis=3)
    # rule: the pooled profile is resampled to the trained size, the scale back to `length`;
    # for an input constant in time the profile is constant, so the MLP sees exactly the
    # trained-length profile and the scale is the trained-length scale resampled
    column = torch.randn(2, 4, 3, 1)
    trained_scale = se.scale(column.expand(2, 4, 3, 25)).flatten(1)
    scale = se.scale(column.expand(2, 4, 3, length))
    assert scale.shape == (2, 1, 1, length)
    expected = torch.nn.functional.interpolate(trained_scale.unsqueeze(1), size=length, mode="linear",
                                               align_corners=False) if length > 25 else \
        torch.nn.functional.adaptive_avg_pool1d(trained_scale.unsqueeze(1), length)
    torch.testing.assert_close(scale.flatten(1), expected.squeeze(1))
    # and a time-varying input still gives a finite, per-frame scale in (0, 1)
    varying = se.scale(torch.randn(2, 4, 3, length))
    assert varying.shape == (2, 1, 1, length) and ((varying > 0) & (varying < 1)).all()


def test_frequency_se_matches_definition() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(input_dim=5, squeeze_dim=8, axis=2)
    x = torch.randn(2, 6, 5, 7)
    profile = x.mean(dim=(1, 3))
    scale = torch.sigmoid(se.fc2(torch.relu(se.fc1(profile)))).view(2, 1, 5, 1)
    torch.testing.assert_close(se(x), scale * x, rtol=0, atol=0)


@pytest.mark.parametrize("head_type", HEAD_TYPES)
@pytest.mark.parametrize("batch", [1, 3])
def test_heads_and_batch_sizes(head_type: str, batch: int) -> None:
    model = MobileNet(**SMALL, head_type=head_type, multihead_attention_heads=2).eval()
    with torch.no_grad():
        _check_outputs(model, torch.randn(batch, 1, 32, 64))


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_single_class_keeps_batch_axis(head_type: str) -> None:
    model = MobileNet(**{**SMALL, "num_classes": 1}, head_type=head_type).eval()
    with torch.no_grad():
        logits, _ = model(torch.randn(3, 1, 32, 64))
    assert logits.shape == (3, 1)


def test_training_backward_with_all_se() -> None:
    model = MobileNet(**SMALL, se_dims="cft", dilated=True).train()
    logits, embedding = model(torch.randn(2, 1, 32, 50))
    (logits.sum() + embedding.sum()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("shape", [(2, 32, 64), (2, 2, 32, 64), (2, 1, 40, 64), (64,)])
def test_bad_input_shape_raises(shape: tuple[int, ...]) -> None:
    model = MobileNet(**SMALL).eval()
    with pytest.raises(ValueError, match=str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
        model(torch.randn(*shape))


def test_loading_other_width_raises() -> None:
    small = MobileNet(width_mult=0.1)
    other = MobileNet(width_mult=0.2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.load_state_dict(small.state_dict(), strict=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(head_type="transformer"), "fully_convolutional"),
    (dict(se_dims="cx"), "se_dims"),
    (dict(se_dims="cftc"), "se_dims"),
    (dict(se_dims=""), "se_dims"),
    (dict(se_agg="median"), "se_agg"),
    (dict(strides=(2, 2, 2)), "strides"),
    (dict(strides=(2, 2, 3, 2)), "stride"),
    (dict(num_classes=0), "num_classes"),
    (dict(width_mult=0.0), "width_mult"),
    (dict(se_r=0), "se_r"),
    (dict(multihead_attention_heads=0), "multihead_attention_heads"),
    (dict(input_dim_t=0), "input_dim_t"),
])
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MobileNet(**kwargs)
