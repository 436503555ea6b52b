"""Fine-tuning losses and metrics against the reference formulas, on identical tensors.

Each `reference_*` helper below re-writes the formula of EfficientAT's script it names
(ex_esc50.py / ex_dcase20.py, ex_openmic.py, datasets/openmic.py), so the package's
implementation is checked against an independent transcription, not against itself.
"""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, roc_auc_score

from efficient_tagging.train import (accuracy_by_group, distillation_loss, evaluate_masked_predictions,
                                     masked_average_precision_per_class, masked_bce_loss, masked_map,
                                     multiclass_metrics, plot_confusion_matrix, reference_partial_wavmix,
                                     single_label_kd_loss, single_label_loss, split_partial_targets, task_loss,
                                     write_confusion_matrix_csv)


def _reference_mixup(bs: int, alpha: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # EfficientAT helpers/utils.py `mixup`: per-sample Beta(alpha, alpha), folded to max(l, 1 - l)
    rn_indices = torch.from_numpy(rng.permutation(bs))
    lambd = rng.beta(alpha, alpha, bs).astype(np.float32)
    lambd = np.concatenate([lambd[:, None], 1 - lambd[:, None]], 1).max(1)
    return rn_indices, torch.from_numpy(lambd)


def _batch(bs: int = 8, classes: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(size=(bs, classes)).astype(np.float32) * 2)
    perm, lam = _reference_mixup(bs, 0.3, rng)
    return rng, logits, perm, lam


# ---------------------------------------------------------------- single-label CE with mixup
def reference_esc50_loss(y_hat: torch.Tensor, y: torch.Tensor, rn_indices, lam) -> torch.Tensor:
    # ex_esc50.py / ex_dcase20.py, the `if args.mixup_alpha:` branch
    bs = y_hat.shape[0]
    samples_loss = (F.cross_entropy(y_hat, y, reduction="none") * lam.reshape(bs) +
                    F.cross_entropy(y_hat, y[rn_indices], reduction="none") * (1. - lam.reshape(bs)))
    return samples_loss.mean()


def test_single_label_mixup_ce_matches_reference_with_integer_labels():
    rng, logits, perm, lam = _batch()
    y = torch.from_numpy(rng.integers(0, 5, 8))
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ours = single_label_loss(a, y, mixup=(perm, lam))
    reference = reference_esc50_loss(b, y, perm, lam)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    # without mixup: the plain mean CE of the reference's else-branch
    assert single_label_loss(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    # a scalar lam is broadcast like a per-sample one
    same = single_label_loss(logits, y, mixup=(perm, torch.tensor(0.7)))
    assert same.item() == pytest.approx(reference_esc50_loss(logits, y, perm, torch.full((8,), 0.7)).item(), rel=1e-6)


def test_single_label_mixup_ce_matches_reference_with_wavmixed_soft_labels():
    # ESC-50's dataset yields one-hot targets and its wavmix mixes them: l * y1 + (1 - l) * y2.
    rng, logits, perm, lam = _batch(seed=1)
    y_int = torch.from_numpy(rng.integers(0, 5, 8))
    wav_partner = torch.from_numpy(rng.integers(0, 8, 8))          # drawn with replacement, as the dataset does
    wav_l = torch.from_numpy(np.maximum(b := rng.beta(2, 2, 8), 1 - b).astype(np.float32))
    one_hot = F.one_hot(y_int, 5).float()
    y_wavmixed = one_hot * wav_l[:, None] + one_hot[wav_partner] * (1 - wav_l[:, None])
    reference = reference_esc50_loss(logits, y_wavmixed, perm, lam)
    # the same from the unmixed integer labels and both mixing steps, in order
    ours = single_label_loss(logits, y_int, mixup=[(wav_partner, wav_l), (perm, lam)])
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    # and from the already wavmixed soft labels
    assert single_label_loss(logits, y_wavmixed, mixup=(perm, lam)).item() == pytest.approx(reference.item(), rel=1e-6)


def test_single_label_loss_rejects_bad_labels():
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="out of range"):
        single_label_loss(logits, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="class indices"):
        single_label_loss(logits, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="shape"):
        single_label_loss(logits, torch.zeros(3, 5))


# ---------------------------------------------------------------- masked BCE (OpenMIC)
def _openmic_raw_targets(bs: int, classes: int, rng: np.random.Generator) -> torch.Tensor:
    # PaSST's OpenMIC files: C relevance values (0.5 where not annotated), then C known flags
    known = rng.random((bs, classes)) < 0.4
    relevance = np.where(known, rng.random((bs, classes)), 0.5)
    return torch.from_numpy(np.concatenate([relevance, known], axis=1).astype(np.float32))


def reference_openmic_loss(y_hat: torch.Tensor, y: torch.Tensor, rn_indices=None, lam=None) -> torch.Tensor:
    # ex_openmic.py training loop
    bs, classes = y_hat.shape
    y_mask = y[:, classes:]
    y = y[:, :classes] > 0.5
    y = y.float()
    if lam is not None:
        y_mix = y * lam.reshape(bs, 1) + y[rn_indices] * (1. - lam.reshape(bs, 1))
        samples_loss = F.binary_cross_entropy_with_logits(y_hat, y_mix, reduction="none")
    else:
        samples_loss = F.binary_cross_entropy_with_logits(y_hat, y, reduction="none")
    samples_loss = y_mask.float() * samples_loss
    return samples_loss.mean()


def test_masked_bce_matches_reference_with_and_without_mixup():
    rng, logits, perm, lam = _batch(bs=8, classes=20, seed=2)
    raw = _openmic_raw_targets(8, 20, rng)
    targets, known = split_partial_targets(raw)
    assert known.dtype == torch.bool and targets.shape == (8, 20)
    for mix in (None, (perm, lam)):
        a = logits.clone().requires_grad_(True)
        b = logits.clone().requires_grad_(True)
        ours = masked_bce_loss(a, targets, known, mixup=mix)
        reference = reference_openmic_loss(b, raw, *(mix or (None, None)))
        assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
        ours.backward()
        reference.backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8)


def test_unknown_labels_contribute_no_loss_and_no_gradient():
    rng, logits, perm, lam = _batch(bs=6, classes=7, seed=3)
    known = torch.from_numpy(rng.random((6, 7)) < 0.5)
    targets = torch.from_numpy(rng.integers(0, 2, (6, 7)).astype(np.float32))
    garbage = torch.where(known, targets, torch.full_like(targets, float("nan")))   # NaN where unknown
    flipped = torch.where(known, targets, 1 - targets)
    for mix in (None, (perm, lam)):
        s = logits.clone().requires_grad_(True)
        loss = masked_bce_loss(s, garbage, known, mixup=mix)
        assert torch.isfinite(loss)
        loss.backward()
        # the reference's mask is the clip's own: no gradient reaches an unknown output
        assert (s.grad[~known] == 0).all()
        assert (s.grad[known] != 0).all()
        if mix is None:
            # what unknown targets hold changes nothing (with mixup they enter as 0, see below)
            assert masked_bce_loss(logits, flipped, known).item() == pytest.approx(loss.item(), rel=1e-7)
    # moving the logits of unknown entries changes nothing either
    moved = torch.where(known, logits, logits + 5.0)
    assert masked_bce_loss(moved, targets, known).item() == pytest.approx(
        masked_bce_loss(logits, targets, known).item(), rel=1e-7)
    # the reduction divides by all B * C entries, known or not, like the reference
    per_entry = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert masked_bce_loss(logits, targets, known).item() == pytest.approx(
        (per_entry * known).sum().item() / known.numel(), rel=1e-6)


def test_reference_partial_wavmix_matches_openmic_mixup_dataset():
    rng = np.random.default_rng(5)
    raw = _openmic_raw_targets(6, 4, rng)
    partner = torch.from_numpy(rng.integers(0, 6, 6))
    l = np.maximum(b := rng.beta(2, 2, 6), 1 - b).astype(np.float32)
    expected_y, expected_mask = [], []
    for i in range(6):
        # datasets/openmic.py MixupDataset.__getitem__, then ex_openmic.py's `y[:, :20] > 0.5`
        y1, y2 = raw[i].clone(), raw[partner[i]].clone()
        y_mask1, y_mask2 = (y1[4:] > 0.5).float(), (y2[4:] > 0.5).float()
        y1[:4] *= y_mask1
        y2[:4] *= y_mask2
        yres = y1 * float(l[i]) + y2 * (1. - float(l[i]))
        yres[4:] = torch.stack([y_mask1, y_mask2]).max(dim=0).values
        expected_y.append((yres[:4] > 0.5).float())
        expected_mask.append(yres[4:] > 0.5)
    targets, known = split_partial_targets(raw)
    # split_partial_targets binarises first, the reference after zeroing and mixing: pass the relevance
    y, mask = reference_partial_wavmix(raw[:, :4], known, partner, torch.from_numpy(l))
    torch.testing.assert_close(y, torch.stack(expected_y))
    assert torch.equal(mask, torch.stack(expected_mask))


# ---------------------------------------------------------------- KD
def test_default_temperature_is_four_for_single_label_and_one_for_multi_label():
    from efficient_tagging.train.finetune import RECIPES
    from efficient_tagging.train.losses import kd_temperature
    from efficient_tagging.train.trainer import TrainConfig
    rng, logits, perm, lam = _batch(bs=6, classes=5, seed=11)
    teacher = torch.from_numpy(rng.normal(size=(6, 5)).astype(np.float32) * 3)
    classes = torch.from_numpy(rng.integers(0, 5, size=6))
    multi_hot = torch.from_numpy((rng.random((6, 5)) > 0.6).astype(np.float32))
    for kind, targets, default in (("multiclass", classes, 4.0), ("multilabel", multi_hot, 1.0)):
        assert kd_temperature(kind) == default and kd_temperature(kind, 2.0) == 2.0
        implicit, _ = task_loss(kind, logits, targets, teacher_logits=teacher, mixup=(perm, lam))
        explicit, _ = task_loss(kind, logits, targets, teacher_logits=teacher, mixup=(perm, lam), temperature=default)
        other, _ = task_loss(kind, logits, targets, teacher_logits=teacher, mixup=(perm, lam), temperature=2.0)
        assert implicit.item() == explicit.item() and other.item() != implicit.item()
    with pytest.raises(ValueError, match="temperature must be positive"):
        kd_temperature("multiclass", 0.0)
    # the AudioSet recipe keeps the reference's 1; fine-tuning and plain configs take the task's default
    assert TrainConfig().temperature is None and all(r.temperature is None for r in RECIPES.values())
    from efficient_tagging.train.audioset import AUDIOSET_RECIPE, DEMO_RECIPE
    assert AUDIOSET_RECIPE.temperature == 1.0 and DEMO_RECIPE.temperature == 1.0


def test_single_label_kd_is_hintons_kl_scaled_by_t_squared():
    rng, logits, perm, lam = _batch(bs=5, classes=6, seed=6)
    teacher = torch.from_numpy(rng.normal(size=(5, 6)).astype(np.float32) * 3)
    temperature = 2.5
    p = F.softmax(teacher / temperature, dim=1)
    log_q = F.log_softmax(logits / temperature, dim=1)
    by_hand = (p * (torch.log(p) - log_q)).sum(dim=1).mean() * temperature ** 2
    assert single_label_kd_loss(logits, teacher, temperature).item() == pytest.approx(by_hand.item(), rel=1e-5)
    pytorch_form = F.kl_div(log_q, p, reduction="batchmean") * temperature ** 2
    assert single_label_kd_loss(logits, teacher, temperature).item() == pytest.approx(pytorch_form.item(), rel=1e-6)
    # mixup mixes the teacher *distributions* with the clips' lam and permutation
    p_mix = p * lam[:, None] + p[perm] * (1 - lam[:, None])
    expected = F.kl_div(log_q, p_mix, reduction="batchmean") * temperature ** 2
    assert single_label_kd_loss(logits, teacher, temperature, mixup=(perm, lam)).item() == pytest.approx(
        expected.item(), rel=1e-6)
    assert single_label_kd_loss(teacher, teacher, temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_task_loss_multiclass_combines_per_clip_and_masks_missing_teachers():
    rng, logits, perm, lam = _batch(bs=6, classes=4, seed=7)
    y = torch.from_numpy(rng.integers(0, 4, 6))
    teacher = torch.from_numpy(rng.normal(size=(6, 4)).astype(np.float32))
    teacher[2] = float("nan")                                     # clip 2 has no teacher logits
    has_teacher = torch.tensor([True, True, False, True, True, True])
    kd_lambda, temperature = 0.3, 2.0

    s = logits.clone().requires_grad_(True)
    loss, parts = task_loss("multiclass", s, y, teacher_logits=teacher, has_teacher=has_teacher,
                            kd_lambda=kd_lambda, temperature=temperature, mixup=(perm, lam))
    loss.backward()
    assert torch.isfinite(s.grad).all()

    # reference pieces, per clip
    ce = (F.cross_entropy(logits, y, reduction="none") * lam
          + F.cross_entropy(logits, y[perm], reduction="none") * (1 - lam))
    p = F.softmax(torch.nan_to_num(teacher) / temperature, dim=1)
    p_mix = p * lam[:, None] + p[perm] * (1 - lam[:, None])
    kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), p_mix, reduction="none").sum(1) * temperature ** 2
    covered = has_teacher & has_teacher[perm]                  # a mix has a teacher only if both clips do
    per_clip = torch.where(covered, kd_lambda * ce + (1 - kd_lambda) * kl, ce)
    assert loss.item() == pytest.approx(per_clip.mean().item(), rel=1e-5)
    assert parts["label_loss"].item() == pytest.approx(ce.mean().item(), rel=1e-5)
    assert parts["kd_loss"].item() == pytest.approx(kl[covered].mean().item(), rel=1e-5)
    assert parts["teacher_fraction"].item() == pytest.approx(covered.float().mean().item())

    # no teacher: the label loss alone, whatever kd_lambda is
    alone, parts = task_loss("multiclass", logits, y, kd_lambda=0.1, mixup=(perm, lam))
    assert alone.item() == pytest.approx(ce.mean().item(), rel=1e-6)
    assert parts["teacher_fraction"].item() == 0.0


def test_task_loss_multilabel_is_the_audioset_distillation_loss():
    rng, logits, perm, lam = _batch(bs=6, classes=5, seed=8)
    labels = torch.from_numpy(rng.integers(0, 2, (6, 5)).astype(np.float32))
    teacher = torch.from_numpy(rng.normal(size=(6, 5)).astype(np.float32))
    has_teacher = torch.tensor([True, False, True, True, True, True])
    mixed_labels = labels * lam[:, None] + labels[perm] * (1 - lam[:, None])
    expected, expected_parts = distillation_loss(logits, mixed_labels, teacher, 0.1, 1.5, has_teacher,
                                                 teacher_mix=(perm, lam))
    loss, parts = task_loss("multilabel", logits, labels, teacher_logits=teacher, has_teacher=has_teacher,
                            kd_lambda=0.1, temperature=1.5, mixup=(perm, lam))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts.keys() == expected_parts.keys()


def test_task_loss_partial_multilabel_kd_over_all_classes():
    rng, logits, perm, lam = _batch(bs=6, classes=5, seed=9)
    known = torch.from_numpy(rng.random((6, 5)) < 0.5)
    targets = torch.from_numpy(rng.integers(0, 2, (6, 5)).astype(np.float32))
    teacher = torch.from_numpy(rng.normal(size=(6, 5)).astype(np.float32))
    kd_lambda, temperature = 0.4, 2.0
    y_mix = targets * known * lam[:, None] + (targets * known)[perm] * (1 - lam[:, None])
    label = (F.binary_cross_entropy_with_logits(logits, y_mix, reduction="none") * known).mean(1)
    q = torch.sigmoid(teacher / temperature)
    q_mix = q * lam[:, None] + q[perm] * (1 - lam[:, None])
    kd_all = F.binary_cross_entropy_with_logits(logits, q_mix, reduction="none")
    s = logits.clone().requires_grad_(True)
    loss, parts = task_loss("partial_multilabel", s, targets, known_mask=known, teacher_logits=teacher,
                            kd_lambda=kd_lambda, temperature=temperature, mixup=(perm, lam))
    expected = (kd_lambda * label + (1 - kd_lambda) * kd_all.mean(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["label_loss"].item() == pytest.approx(label.mean().item(), rel=1e-6)
    # the teacher's guesses reach the unannotated classes too: that is what a partial label lacks
    loss.backward()
    assert (s.grad[~known] != 0).all()
    # without a teacher it is the reference's masked loss
    alone, _ = task_loss("partial_multilabel", logits, targets, known_mask=known, mixup=(perm, lam))
    assert alone.item() == pytest.approx(masked_bce_loss(logits, targets, known, mixup=(perm, lam)).item(), rel=1e-7)


def test_task_loss_rejects_bad_arguments():
    logits, y = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="unknown task kind"):
        task_loss("regression", logits, y)
    with pytest.raises(ValueError, match="kd_lambda"):
        task_loss("multiclass", logits, y, kd_lambda=1.5)
    with pytest.raises(ValueError, match="known_mask is required"):
        task_loss("partial_multilabel", logits, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="known_mask"):
        task_loss("multilabel", logits, torch.zeros(2, 3), known_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="teacher logits"):
        task_loss("multiclass", logits, y, teacher_logits=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="permutation"):
        task_loss("multiclass", logits, y, mixup=(torch.tensor([0, 1, 2]), torch.ones(3)))


# ---------------------------------------------------------------- metrics
def test_multiclass_metrics_match_sklearn_and_the_reference_accuracy():
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 4, 40)
    logits = rng.normal(size=(40, 5))
    logits[np.arange(40), np.where(rng.random(40) < 0.6, labels, rng.integers(0, 5, 40))] += 5
    names = ["dog", "rain", "siren", "bird", "never"]              # class 4 has no examples
    result = multiclass_metrics(torch.from_numpy(logits), labels, names)
    # ex_dcase20.py: accuracy_score(targets, outputs.argmax(axis=1)); ex_esc50.py: with one-hot targets
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, logits.argmax(1)))
    one_hot = np.eye(5)[labels]
    assert multiclass_metrics(logits, one_hot, names)["accuracy"] == pytest.approx(
        accuracy_score(one_hot.argmax(axis=1), logits.argmax(axis=1)))
    np.testing.assert_array_equal(result["confusion_matrix"],
                                  confusion_matrix(labels, logits.argmax(1), labels=range(5)))
    for c, name in enumerate(names[:4]):
        members = labels == c
        assert result["per_class_accuracy"][name] == pytest.approx((logits.argmax(1)[members] == c).mean())
        assert result["per_class_count"][name] == members.sum()
    assert math.isnan(result["per_class_accuracy"]["never"])
    assert result["mean_class_accuracy"] == pytest.approx(np.mean([result["per_class_accuracy"][n] for n in names[:4]]))
    with pytest.raises(ValueError, match="class names"):
        multiclass_metrics(logits, labels, names[:3])
    with pytest.raises(ValueError, match="out of range"):
        multiclass_metrics(logits, np.full(40, 5))


def test_accuracy_by_group_recombines_to_the_overall_accuracy():
    rng = np.random.default_rng(11)
    n = 90
    labels = rng.integers(0, 10, n)
    logits = rng.normal(size=(n, 10))
    logits[np.arange(n), labels] += rng.normal(1.0, 1.0, n)      # partly right
    devices = rng.choice(["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"], n)
    table = accuracy_by_group(logits, labels, devices, seen_groups=["a", "b", "c", "s1", "s2", "s3"])
    assert list(table) == sorted(set(devices))
    overall = multiclass_metrics(logits, labels)["accuracy"]
    assert sum(e["count"] for e in table.values()) == n
    recombined = sum(e["accuracy"] * e["count"] for e in table.values()) / n
    assert recombined == pytest.approx(overall, rel=1e-12)
    assert overall != pytest.approx(np.mean([e["accuracy"] for e in table.values()]))  # unweighted would differ
    assert table["s4"]["seen"] is False and table["a"]["seen"] is True
    for key, entry in table.items():
        members = devices == key
        assert entry["accuracy"] == pytest.approx((logits[members].argmax(1) == labels[members]).mean())
    with pytest.raises(ValueError, match="group values"):
        accuracy_by_group(logits, labels, devices[:-1])


def reference_openmic_map(targets, outputs, targets_mask):
    # ex_openmic.py `_test`
    return np.array([average_precision_score(targets[:, i], outputs[:, i], sample_weight=targets_mask[:, i])
                     for i in range(targets.shape[1])])


def test_masked_map_matches_the_reference_evaluation():
    rng = np.random.default_rng(12)
    raw = _openmic_raw_targets(60, 6, rng).numpy()
    relevance, known = raw[:, :6], raw[:, 6:] > 0.5
    scores = rng.random((60, 6))
    binary = (relevance > 0.5).astype(np.float32)
    reference = reference_openmic_map(binary, scores, known.astype(np.float32))
    ours = masked_average_precision_per_class(relevance, scores, known)
    np.testing.assert_allclose(ours, reference, rtol=1e-12)
    assert masked_map(relevance, scores, known) == pytest.approx(reference.mean())
    # scores of unknown entries do not matter
    shuffled = np.where(known, scores, rng.random((60, 6)) * 10)
    assert masked_map(relevance, shuffled, known) == pytest.approx(reference.mean())
    # ROC AUC the same way
    auc = evaluate_masked_predictions(relevance, scores, known)["mean_roc_auc"]
    reference_auc = np.mean([roc_auc_score(binary[:, i], scores[:, i], sample_weight=known[:, i]) for i in range(6)])
    assert auc == pytest.approx(reference_auc)


def test_masked_map_leaves_out_classes_without_known_positives():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    known = np.array([[1, 1], [1, 0], [1, 0], [1, 1]], dtype=bool)    # class 1: its positives are unknown
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.9], [0.1, 0.2]])
    ap = masked_average_precision_per_class(targets, scores, known)
    assert ap[0] == pytest.approx(1.0) and math.isnan(ap[1])
    result = evaluate_masked_predictions(targets, scores, known)
    assert result["mAP"] == pytest.approx(1.0)
    assert result["num_classes_ignored"] == 1 and result["num_classes_evaluated"] == 1


def test_confusion_matrix_csv_and_png(tmp_path):
    names = ["airport", "bus", "metro"]
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    csv_path = write_confusion_matrix_csv(tmp_path / "out" / "confusion.csv", matrix, names)
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["true \\ predicted", *names]
    assert [r[0] for r in rows[1:]] == names
    np.testing.assert_array_equal(np.array([[int(v) for v in r[1:]] for r in rows[1:]]), matrix)
    assert not list((tmp_path / "out").glob("*.tmp")) and not list((tmp_path / "out").glob("*.lock"))

    png = plot_confusion_matrix(tmp_path / "out" / "confusion.png", matrix, names, title="fold 1")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    big = plot_confusion_matrix(tmp_path / "big.png", np.eye(50, dtype=int) * 8, [f"class {i}" for i in range(50)])
    assert big.stat().st_size > 0
    from PIL import Image
    with Image.open(png) as small_image, Image.open(big) as big_image:
        assert big_image.size[0] > small_image.size[0]      # the figure grows with the class count
    with pytest.raises(ValueError, match="class names"):
        write_confusion_matrix_csv(tmp_path / "x.csv", matrix, names[:2])
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix(tmp_path / "x.png", np.zeros((2, 3)), names[:2])
