"""The fast inference path of AudioTagger (issue 12): BatchNorm folded into the convolutions,
channels-last weights, oneDNN fused convolutions (activation and skip addition as post-ops,
prepacked weights), inference_mode -- the default -- equals the eager model within float rounding,
follows weight changes, and steps aside for gradients, train mode and `fast=False`."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import METRO_WAV, metro_long, randomised_student, requires_shared
from efficient_tagging.models.fused import (OneDnnConv2d, count_foldable_batchnorms, fold_batchnorm, inference_copy,
                                                pointwise_fusion_available)
from efficient_tagging.models.mobilenet import InvertedResidual
from efficient_tagging.tagging.tagger import AudioTagger

pytestmark = requires_shared


@pytest.fixture(scope="module")
def mn10() -> torch.nn.Module:
    return randomised_student("mn", width_mult=1.0, logit_std=3.0)


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


def test_fold_batchnorm_fuses_every_student_norm_and_keeps_the_function(mn10):
    assert count_foldable_batchnorms(mn10) == 46  # every BatchNorm of mn10 follows a conv in a Sequential
    before = copy.deepcopy(mn10.state_dict())
    folded = fold_batchnorm(mn10)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert all(torch.equal(before[k], v) for k, v in mn10.state_dict().items())  # the original is untouched
    spectrogram = torch.randn(2, 1, 128, 300)
    with torch.no_grad():
        expected, expected_embedding = mn10(spectrogram)
        logits, embedding = folded(spectrogram)
        fast_logits, _ = inference_copy(mn10)(spectrogram.contiguous(memory_format=torch.channels_last))
    # a noise spectrogram drives the random network to logits of ~1e4: relative error ~1e-5
    assert _relative_error(logits, expected) <= 1e-4
    assert _relative_error(embedding, expected_embedding) <= 1e-4
    assert _relative_error(fast_logits, expected) <= 1e-4


def test_fast_path_is_the_default_and_equals_eager_on_real_audio(mn10):
    fast, eager = AudioTagger(mn10), AudioTagger(mn10, fast=False)
    assert fast.fast is True
    waveform = metro_long(10).reshape(1, -1)
    with torch.no_grad():
        got, expected = fast(waveform), eager(waveform)
        assert fast.inference_model() is not mn10
    assert _relative_error(got, expected) <= 1e-4  # the bound; measured ~2e-6
    got.add_(1.0)  # a normal tensor, not an inference tensor
    top_fast, top_eager = fast.tag_file(METRO_WAV, top_k=10), eager.tag_file(METRO_WAV, top_k=10)
    assert [t.label for t in top_fast] == [t.label for t in top_eager]
    long_input = metro_long(70)  # > 60 s: the bounded-memory windowed path, also through the copy
    p_fast, p_eager = fast.probabilities(long_input.reshape(1, -1)), eager.probabilities(long_input.reshape(1, -1))
    assert float((p_fast - p_eager).abs().max()) <= 1e-5


def test_fast_copy_follows_weight_changes_and_stays_out_of_the_state_dict():
    model = randomised_student("mn", width_mult=0.4, logit_std=1.0)
    tagger = AudioTagger(model)
    keys = set(tagger.state_dict())
    waveform = metro_long(3).reshape(1, -1)
    with torch.no_grad():
        first = tagger(waveform)
        copy_before = tagger.inference_model()
        classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        classifier.bias.add_(1.0)  # in place, as an optimizer step would
        second = tagger(waveform)
        assert tagger.inference_model() is not copy_before
    assert float((second - first - 1.0).abs().max()) <= 1e-4
    assert set(tagger.state_dict()) == keys


def test_gradients_train_mode_and_fast_false_use_the_model_itself(mn10):
    tagger = AudioTagger(copy.deepcopy(mn10))
    waveform = metro_long(2).reshape(1, -1)
    assert tagger.inference_model() is tagger.model  # gradients on (outside no_grad): the model itself
    logits = tagger(waveform)
    assert logits.requires_grad
    logits.sum().backward()
    assert tagger.model.features[0][0].weight.grad is not None
    tagger.model.train()
    with torch.no_grad():
        assert tagger.inference_model() is tagger.model
    tagger.model.eval()
    with torch.no_grad():
        assert AudioTagger(mn10, fast=False).inference_model() is mn10
    with pytest.raises(ValueError, match="fast"):
        AudioTagger(mn10, fast="yes")


def test_dymn_and_teachers():
    dymn = randomised_student("dymn", width_mult=0.4, logit_std=1.0)
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in dymn.modules())
    assert count_foldable_batchnorms(dymn) == norms  # dynamic convolutions too (each candidate kernel scaled)
    folded = fold_batchnorm(dymn)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert set(folded.state_dict()) - set(dymn.state_dict())  # the folded copy has conv biases ...
    assert set(dymn.state_dict()) == set(randomised_student("dymn", width_mult=0.4).state_dict())  # ... not the model
    waveform = metro_long(10).reshape(1, -1)
    with torch.no_grad():
        assert _relative_error(AudioTagger(dymn)(waveform), AudioTagger(dymn, fast=False)(waveform)) <= 1e-4
    from efficient_tagging.models.passt import PaSST

    teacher = PaSST(img_size=(128, 200), embed_dim=48, depth=1, num_heads=2, num_classes=5).eval()
    tagger = AudioTagger(teacher)
    with torch.no_grad():
        assert tagger.inference_model() is teacher  # nothing to fold: no copy of a large model
        assert torch.allclose(tagger(waveform[:, :64000]), AudioTagger(teacher, fast=False)(waveform[:, :64000]))


def test_tagging_commands_take_eager_to_turn_the_fast_path_off(tmp_path):
    from efficient_tagging.cli.tag import build_parser, load_tagger_for
    from efficient_tagging.models import save_checkpoint

    checkpoint = tmp_path / "mn.pt"
    save_checkpoint(checkpoint, randomised_student("mn", width_mult=0.4))
    for flags, fast in (([], True), (["--eager"], False)):
        args = build_parser().parse_args(["--model_path", str(checkpoint), *flags, "x.wav"])
        args.backend = "torch"
        assert load_tagger_for(args, torch.device("cpu")).fast is fast


needs_onednn = pytest.mark.skipif(not pointwise_fusion_available(),
                                  reason="this torch build has no oneDNN fused convolutions")


@needs_onednn
def test_onednn_fusion_takes_every_conv_activation_and_skip_addition(mn10):
    fast = inference_copy(mn10)
    fused = [m for m in fast.modules() if isinstance(m, OneDnnConv2d)]
    assert len(fused) == sum(isinstance(m, torch.nn.Conv2d) for m in mn10.modules()) == 46
    post_ops = {m.post_op for m in fused}
    assert post_ops == {"relu", "hardswish", "none"}
    # every activation after a conv went into it; the ReLU/Hardswish left are the SE and head ones
    remaining = [m for m in fast.features.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.Hardswish))]
    assert len(remaining) == sum(1 for m in mn10.features.modules() if type(m).__name__ == "SqueezeExcitation")
    residual_blocks = sum(1 for m in mn10.modules() if isinstance(m, InvertedResidual) and m.use_res_connect)
    assert sum(type(m).__name__ == "_FusedInvertedResidual" for m in fast.modules()) == residual_blocks == 10
    assert not any(isinstance(m, OneDnnConv2d) for m in inference_copy(mn10, fuse=False).modules())
    # weights packed for the first call's shape, exact for every later shape and batch size
    frontend = AudioTagger(mn10).frontend
    audio = metro_long(32)
    with torch.no_grad():
        batches = {"10 s": frontend(audio[:320000].reshape(1, -1)),  # the packing call
                   "3 x 3 s": frontend(audio[:288000].reshape(3, -1)),
                   "0.2 s": frontend(audio[:6400].reshape(1, -1)),
                   "32 x 1 s": frontend(audio[:1024000].reshape(32, -1))}
    for name, spectrogram in batches.items():
        spectrogram = spectrogram.unsqueeze(1)
        with torch.no_grad():
            expected = mn10(spectrogram)[0]
        with torch.inference_mode():
            got = fast(spectrogram.contiguous(memory_format=torch.channels_last))[0]
        assert _relative_error(got, expected) <= 1e-4, name  # measured 0.5e-6 - 3.6e-6
    # a residual addition goes out of place: the block's input is not overwritten
    block = next(m for m in fast.modules() if type(m).__name__ == "_FusedInvertedResidual")
    x = torch.randn(1, block.project.out_channels, 8, 20).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    with torch.inference_mode():
        block(x)
    assert torch.equal(x, before)


@needs_onednn
def test_onednn_conv_computes_the_same_outside_its_kernel_and_the_copy_falls_back(mn10, monkeypatch):
    plain = torch.nn.Conv2d(2, 4, 3, padding=1).eval()
    x, other = torch.randn(1, 2, 5, 5), torch.randn(1, 4, 5, 5)
    for post_op, activation in (("relu", torch.relu), ("hardswish", torch.nn.functional.hardswish)):
        conv = OneDnnConv2d(plain, post_op)
        with torch.no_grad():
            expected = activation(plain(x) + other)
            assert torch.allclose(conv(x, residual=other), expected, atol=1e-6)  # the oneDNN kernel
            assert torch.allclose(conv.double()(x.double(), residual=other.double()), expected.double(), atol=1e-6)
            assert torch.allclose(conv.bfloat16()(x.bfloat16(), residual=other.bfloat16()).float(), expected,
                                  atol=0.1)
        conv.float()
        gradient_input = x.clone().requires_grad_(True)
        conv(gradient_input).sum().backward()  # autograd: plain ops
        assert gradient_input.grad is not None
    # a copy cast to bf16 by hand still tags; bf16 weights (the opt-in path) and builds without the
    # kernels keep plain convolutions
    spectrogram = torch.randn(1, 1, 128, 50)
    with torch.inference_mode():
        inference_copy(mn10).bfloat16()(spectrogram.bfloat16())
    assert not any(isinstance(m, OneDnnConv2d) for m in inference_copy(copy.deepcopy(mn10).bfloat16()).modules())
    monkeypatch.setattr("efficient_tagging.models.fused._probe_pointwise_kernels", lambda: False)
    assert not any(isinstance(m, OneDnnConv2d) for m in inference_copy(mn10).modules())
