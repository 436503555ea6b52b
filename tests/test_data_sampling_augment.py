"""Class-balanced weights, the distributed weighted sampler and the batch augmentations."""
import numpy as np
import pytest
import torch

from efficient_tagging.data import (DistributedWeightedSampler, class_balanced_weights, gain_augment, mix, mixup,
                                    roll_waveforms, wavmix)

# ----------------------------------------------------------------------------- weights

TARGETS = np.array([[1, 0, 0],
                    [1, 1, 0],
                    [1, 0, 1],
                    [0, 0, 0]], dtype=np.uint8)


def test_class_balanced_weights_match_hand_computation():
    # counts 3, 1, 1 (+ offset 2) -> class weights 1000/5, 1000/3, 1000/3
    w0, w1, w2 = 1000 / 5, 1000 / 3, 1000 / 3
    weights = class_balanced_weights(TARGETS, offset=2)
    np.testing.assert_allclose(weights, [w0, w0 + w1, w0 + w2, 0.0])
    np.testing.assert_allclose(class_balanced_weights(TARGETS, offset=2, sum_weights=False), [w0, w1, w2, 0.0])
    # the default offset of the reference (100), and chunking gives the same result
    np.testing.assert_allclose(class_balanced_weights(TARGETS), [1000 / 103, 1000 / 103 + 1000 / 101,
                                                                 1000 / 103 + 1000 / 101, 0.0])
    np.testing.assert_allclose(class_balanced_weights(TARGETS, offset=2, chunk_rows=1), weights)
    with pytest.raises(ValueError, match="shape"):
        class_balanced_weights(np.ones(3))


# ----------------------------------------------------------------------------- sampler

def test_sampler_is_deterministic_per_epoch_and_resumable():
    weights = np.arange(1, 51, dtype=np.float64)
    sampler = DistributedWeightedSampler(weights, num_samples=40, seed=7)
    assert len(sampler) == 40
    first = list(sampler)
    assert list(sampler) == first and all(0 <= i < 50 for i in first)
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    other = DistributedWeightedSampler(weights, num_samples=40, seed=0)
    other.load_state_dict(sampler.state_dict())
    assert other.state_dict() == {"epoch": 1, "seed": 7} and list(other) == second


def test_sampler_splits_one_epoch_across_ranks():
    weights = np.ones(30)
    single = DistributedWeightedSampler(weights, num_samples=21, num_replicas=1, rank=0, seed=3)
    ranks = [DistributedWeightedSampler(weights, num_samples=21, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 11  # 21 rounded up to a multiple of the world size
    full = ranks[0].epoch_indices().tolist()
    assert full[:21] == list(single)  # the ranks together reproduce the single-process draw
    assert list(ranks[0]) == full[0::2] and list(ranks[1]) == full[1::2]
    with pytest.raises(ValueError, match="rank"):
        DistributedWeightedSampler(weights, num_samples=4, num_replicas=2, rank=2)


def test_sampler_follows_the_weights_and_respects_replacement():
    weights = np.array([0.0, 1.0, 3.0])
    draws = np.bincount(list(DistributedWeightedSampler(weights, num_samples=4000, replacement=True, seed=1)),
                        minlength=3)
    assert draws[0] == 0 and 2.5 < draws[2] / draws[1] < 3.5
    without = DistributedWeightedSampler(weights, num_samples=2, replacement=False)
    assert sorted(without) == [1, 2]
    with pytest.raises(ValueError, match="without replacement"):
        DistributedWeightedSampler(weights, num_samples=3, replacement=False)
    with pytest.raises(ValueError, match="not all zero"):
        DistributedWeightedSampler(np.zeros(3), num_samples=3)


# ----------------------------------------------------------------------------- mixup

def test_mixup_lambda_and_permutation():
    permutation, lam = mixup(64, 0.3, generator=torch.Generator().manual_seed(0))
    assert sorted(permutation.tolist()) == list(range(64))
    assert lam.shape == (64,) and lam.dtype == torch.float32
    assert (lam >= 0.5).all() and (lam <= 1).all() and lam.std() > 0  # per-sample λ
    again = mixup(64, 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], permutation) and torch.equal(again[1], lam)
    with pytest.raises(ValueError):
        mixup(4, 0.0)


def test_mix_formula_broadcasts_over_trailing_axes():
    x = torch.randn(4, 1, 3, 5)
    labels = torch.rand(4, 7)
    permutation = torch.tensor([2, 0, 3, 1])
    lam = torch.tensor([0.5, 0.6, 0.9, 1.0])
    mixed = mix(x, permutation, lam)
    for i in range(4):
        torch.testing.assert_close(mixed[i], x[i] * lam[i] + x[permutation[i]] * (1 - lam[i]))
    mixed_labels = mix(labels, permutation, lam)
    torch.testing.assert_close(mixed_labels[1], labels[1] * 0.6 + labels[0] * 0.4)
    torch.testing.assert_close(mixed_labels[3], labels[3])
    with pytest.raises(ValueError, match="lam"):
        mix(x, permutation, lam[:3])


# ----------------------------------------------------------------------------- roll and gain

def test_roll_shifts_each_sample_circularly():
    waveform = torch.randn(6, 1000)
    rolled = roll_waveforms(waveform, 50, generator=torch.Generator().manual_seed(1))
    assert rolled.shape == waveform.shape
    shifts = []
    for row in range(6):
        matches = [s for s in range(-50, 51) if torch.equal(rolled[row], torch.roll(waveform[row], s))]
        assert len(matches) == 1
        shifts.append(matches[0])
    assert len(set(shifts)) > 1  # drawn per sample
    channel = roll_waveforms(waveform.unsqueeze(1), 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(channel.squeeze(1), rolled)  # (B, 1, T) works the same
    assert torch.equal(roll_waveforms(waveform, 0), waveform)


def test_gain_is_per_sample_and_bounded():
    waveform = torch.ones(200, 10)
    out = gain_augment(waveform, 6.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == waveform.shape
    gain_db = 20 * torch.log10(out[:, 0])
    assert torch.allclose(out, out[:, :1].expand_as(out))  # one gain per sample
    assert gain_db.min() >= -6.0 - 1e-4 and gain_db.max() <= 6.0 + 1e-4 and gain_db.std() > 1
    whole = 20 * torch.log10(gain_augment(waveform, 3, integer_db=True)[:, 0])
    assert set(torch.round(whole).tolist()) <= {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0}
    torch.testing.assert_close(whole, torch.round(whole), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- wavmix

def test_wavmix_mixes_centred_waveforms_and_targets():
    generator = torch.Generator().manual_seed(0)
    waveform = torch.randn(8, 400) + 0.3
    targets = torch.eye(8)
    teacher = torch.rand(8, 8)
    result = wavmix(waveform, targets, teacher, alpha=2.0, rate=1.0, generator=generator)
    assert (result.lam >= 0.5).all() and (result.lam <= 1).all()
    centred = waveform - waveform.mean(dim=1, keepdim=True)
    for i in range(8):
        j, lam = int(result.permutation[i]), float(result.lam[i])
        expected = centred[i] * lam + centred[j] * (1 - lam)
        torch.testing.assert_close(result.waveform[i], expected - expected.mean(), atol=1e-5, rtol=0)
        torch.testing.assert_close(result.targets[i], targets[i] * lam + targets[j] * (1 - lam))
        torch.testing.assert_close(result.teacher[i], teacher[i] * lam + teacher[j] * (1 - lam))
    unchanged = wavmix(waveform, targets, rate=0.0)
    assert torch.equal(unchanged.waveform, waveform) and torch.equal(unchanged.targets, targets)
    assert unchanged.teacher is None and torch.equal(unchanged.permutation, torch.arange(8))
    assert torch.equal(unchanged.lam, torch.ones(8))
