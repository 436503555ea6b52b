"""The fast inference path of AudioTagger (issue 12): BatchNorm folded into the convolutions,
channels-last weights, inference_mode -- the default -- equals the eager model within float rounding,
follows weight changes, and steps aside for gradients, train mode and `fast=False`."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import METRO_WAV, metro_long, randomised_student, requires_shared
from efficient_tagging.models.inference import count_foldable_batchnorms, fold_batchnorm, inference_copy
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
