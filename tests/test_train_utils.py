"""Training utilities: distillation loss, LR schedule, metrics, run tracking, distributed gather."""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score

from efficient_tagging.train import (RunTracker, all_gather_tensors, average_precision_per_class, barrier, cleanup,
                                     d_prime, distillation_loss, evaluate_predictions, exp_warmup_linear_down,
                                     init_distributed, is_main_process, make_lr_scheduler, mean_average_precision,
                                     reduce_sum, roc_auc_per_class)


# ---------------------------------------------------------------- distillation loss
def _bce(logit: float, target: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(target * math.log(p) + (1.0 - target) * math.log(1.0 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_distillation_loss_matches_hand_computation():
    student = [[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]]
    labels = [[0.7, 0.3], [1.0, 0.0], [0.2, 0.8]]          # already mixup-mixed (soft) targets
    teacher = [[2.0, -1.0], [-0.5, 1.5], [float("nan")] * 2]  # clip 2 has no teacher logits
    has_teacher = torch.tensor([True, True, False])
    lam, temperature = 0.25, 2.0

    expected_clips, label_clips, kd_clips = [], [], []
    for i in range(3):
        label_i = sum(_bce(s, y) for s, y in zip(student[i], labels[i])) / 2
        label_clips.append(label_i)
        if has_teacher[i]:
            # temperature on the teacher only; the student's logits enter the BCE as they are
            kd_i = sum(_bce(s, _sigmoid(t / temperature)) for s, t in zip(student[i], teacher[i])) / 2
            kd_clips.append(kd_i)
            expected_clips.append(lam * label_i + (1 - lam) * kd_i)
        else:
            expected_clips.append(label_i)

    s = torch.tensor(student, requires_grad=True)
    loss, parts = distillation_loss(s, torch.tensor(labels), torch.tensor(teacher), lam, temperature, has_teacher)
    assert loss.item() == pytest.approx(sum(expected_clips) / 3, rel=1e-6)
    assert parts["label_loss"].item() == pytest.approx(sum(label_clips) / 3, rel=1e-6)
    assert parts["kd_loss"].item() == pytest.approx(sum(kd_clips) / 2, rel=1e-6)
    assert parts["teacher_fraction"].item() == pytest.approx(2 / 3)
    loss.backward()
    assert torch.isfinite(s.grad).all()  # the NaN row of the missing teacher must not leak


def test_kd_lambda_one_is_pure_label_bce_and_no_teacher_is_label_only():
    torch.manual_seed(0)
    s, y, t = torch.randn(4, 5), torch.rand(4, 5), torch.randn(4, 5)
    loss, _ = distillation_loss(s, y, t, kd_lambda=1.0, temperature=1.0)
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(s, y).item(), rel=1e-6)

    loss, parts = distillation_loss(s, y, t, 0.1, 1.0, has_teacher=torch.zeros(4, dtype=torch.bool))
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(s, y).item(), rel=1e-6)
    assert parts["kd_loss"].item() == 0.0 and parts["teacher_fraction"].item() == 0.0

    loss, parts = distillation_loss(s, y, None, 0.1, 1.0)
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(s, y).item(), rel=1e-6)


def test_teacher_mix_equals_reference_loss_mixing():
    # The reference mixes the two clips' distillation losses with lam; mixing the teacher
    # probabilities instead must give the same number (BCE is linear in its target).
    torch.manual_seed(1)
    b, c, kd_lambda, temperature = 6, 4, 0.1, 2.0
    s, y, t = torch.randn(b, c), torch.rand(b, c), torch.randn(b, c)
    perm, lam = torch.randperm(b), torch.rand(b)
    p = torch.sigmoid(t / temperature)
    kd = (F.binary_cross_entropy_with_logits(s, p, reduction="none").mean(1) * lam
          + F.binary_cross_entropy_with_logits(s, p[perm], reduction="none").mean(1) * (1 - lam)).mean()
    reference = kd_lambda * F.binary_cross_entropy_with_logits(s, y) + (1 - kd_lambda) * kd
    loss, _ = distillation_loss(s, y, t, kd_lambda, temperature, teacher_mix=(perm, lam))
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


# ---------------------------------------------------------------- LR schedule
def _reference_multiplier(epoch, warmup, rampdown_length, start_rampdown, last_value):
    # EfficientAT helpers/utils.py, written out by hand: clamped exponential rampup times linear rampdown.
    if epoch < warmup:
        e = min(max(epoch, 0.5), warmup)
        up = math.exp(-5.0 * (1.0 - e / warmup) ** 2)
    else:
        up = 1.0
    if epoch <= start_rampdown:
        down = 1.0
    elif epoch - start_rampdown < rampdown_length:
        down = last_value + (1.0 - last_value) * (rampdown_length - epoch + start_rampdown) / rampdown_length
    else:
        down = last_value
    return up * down


def test_exp_warmup_linear_down_matches_reference():
    args = (8, 95, 80, 0.01)  # EfficientAT's ex_audioset.py defaults
    fn = exp_warmup_linear_down(*args)
    assert fn(0) == pytest.approx(math.exp(-5.0 * (1 - 0.5 / 8) ** 2))
    assert fn(4) == pytest.approx(math.exp(-5.0 * 0.25))
    assert fn(8) == 1.0 and fn(80) == 1.0
    assert fn(100) == pytest.approx(0.01 + 0.99 * 75 / 95)
    assert fn(175) == pytest.approx(0.01) and fn(300) == pytest.approx(0.01)
    for epoch in [0, 0.3, 1, 2.5, 7, 7.9, 8, 30, 80, 80.5, 120, 174, 175, 176, 199]:
        assert fn(epoch) == pytest.approx(_reference_multiplier(epoch, *args), rel=1e-12)


def test_lr_is_stepped_per_epoch_by_default_like_the_reference():
    """Default: every step of epoch e runs at max_lr * f(e), f the reference's exp_warmup_linear_down."""
    args = (8, 95, 80, 0.01)  # EfficientAT's ex_audioset.py defaults
    fn = exp_warmup_linear_down(*args)
    steps_per_epoch, max_lr = 5, 0.0008
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    sched = make_lr_scheduler(opt, fn, steps_per_epoch)
    reference_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    reference = torch.optim.lr_scheduler.LambdaLR(reference_opt, fn)  # ex_audioset.py: scheduler.step() per epoch
    for epoch in range(200):
        for _ in range(steps_per_epoch):
            assert opt.param_groups[0]["lr"] == pytest.approx(max_lr * _reference_multiplier(epoch, *args), rel=1e-12)
            assert opt.param_groups[0]["lr"] == reference_opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
        reference_opt.step()
        reference.step()
    from efficient_tagging.train.trainer import TrainConfig
    assert TrainConfig().lr_per_step is False


def test_per_step_lambda_lr_follows_schedule():
    fn = exp_warmup_linear_down(3, 4, 5, 0.1)
    steps_per_epoch, max_lr = 7, 0.5
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    sched = make_lr_scheduler(opt, fn, steps_per_epoch, per_step=True)
    per_epoch_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    per_epoch = torch.optim.lr_scheduler.LambdaLR(per_epoch_opt, fn)  # the reference's usage
    for step in range(12 * steps_per_epoch):
        lr = opt.param_groups[0]["lr"]
        assert lr == pytest.approx(max_lr * fn(step / steps_per_epoch), rel=1e-12)
        if step % steps_per_epoch == 0:
            assert lr == pytest.approx(per_epoch_opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
        if (step + 1) % steps_per_epoch == 0:
            per_epoch_opt.step()
            per_epoch.step()
    # The scheduler state holds no pickled function, so it resumes from a weights_only load.
    state = sched.state_dict()
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"sched_state_{os.getpid()}.pt")
    torch.save(state, path)
    try:
        assert torch.load(path, weights_only=True)["last_epoch"] == 12 * steps_per_epoch
    finally:
        os.remove(path)


# ---------------------------------------------------------------- metrics
def test_metrics_match_sklearn_and_ignore_classes_without_positives():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=np.float32)
    scores = np.array([[0.9, 0.2, 0.1], [0.8, 0.7, 0.3], [0.7, 0.1, 0.5], [0.1, 0.4, 0.2], [0.3, 0.9, 0.0]])
    ap = average_precision_per_class(targets, scores)
    assert ap[0] == pytest.approx(average_precision_score(targets[:, 0], scores[:, 0]))
    assert ap[1] == pytest.approx(average_precision_score(targets[:, 1], scores[:, 1]))
    assert np.isnan(ap[2])  # no positives
    # Hand check of class 0: positives ranked 1st and 3rd -> (1/1 + 2/3) / 2
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    assert mean_average_precision(targets, scores) == pytest.approx((ap[0] + ap[1]) / 2)

    auc = roc_auc_per_class(targets, scores)
    assert auc[0] == pytest.approx(roc_auc_score(targets[:, 0], scores[:, 0]))
    assert np.isnan(auc[2])

    result = evaluate_predictions(torch.from_numpy(targets), torch.from_numpy(scores))
    assert result["mAP"] == pytest.approx((ap[0] + ap[1]) / 2)
    assert result["num_classes_evaluated"] == 2 and result["num_classes_ignored"] == 1
    assert result["mean_roc_auc"] == pytest.approx((auc[0] + auc[1]) / 2)
    assert result["d_prime"] == pytest.approx(d_prime(result["mean_roc_auc"]))
    assert len(result["per_class_ap"]) == 3


def test_d_prime():
    assert d_prime(0.5) == pytest.approx(0.0, abs=1e-12)
    # Phi(1 / sqrt(2)) maps to d' = 1
    assert d_prime(0.5 * (1 + math.erf(0.5))) == pytest.approx(1.0)


# ---------------------------------------------------------------- run tracking
def _train(tracker: RunTracker, artefact) -> dict:
    for epoch in range(3):
        tracker.log_metrics({"train_loss": torch.tensor(1.0 / (epoch + 1)), "mAP": 0.1 * epoch,
                             "per_class_ap": [0.5, float("nan")]}, step=epoch)
    artefact.write_text("weights")
    tracker.add_artifact(artefact)
    return {"mAP": 0.2}


def test_run_tracker_writes_sacred_record(tmp_path, caplog):
    tracker = RunTracker("unit", runs_dir=tmp_path / "runs", wandb_mode="disabled")
    config = {"batch_size": 4, "n_epochs": 3, "teacher": tmp_path / "t.h5", "seed": 7}
    with caplog.at_level(logging.INFO):
        result = tracker.run(lambda t: _train(t, tmp_path / "model.pt"), config)
    assert result == {"mAP": 0.2}
    # sacred's own lines reach the log, its dump of the whole result does not (it is in run.json)
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("Completed after") for m in messages), messages
    assert not any(m.startswith("Result:") for m in messages), messages
    run_dir = tracker.run_dir
    assert run_dir is not None and run_dir.parent == tmp_path / "runs" / "unit"
    for name in ("config.json", "metrics.json", "run.json", "info.json", "model.pt"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "config.json").read_text())["batch_size"] == 4
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["mAP"]["steps"] == [0, 1, 2]
    assert metrics["train_loss"]["values"] == pytest.approx([1.0, 0.5, 1 / 3])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "COMPLETED" and run["result"] == {"mAP": 0.2}
    info = json.loads((run_dir / "info.json").read_text())
    assert "git" in info and "torch" in info


def test_run_tracker_disabled_is_a_no_op(tmp_path):
    tracker = RunTracker("unit", runs_dir=tmp_path / "runs", enabled=False)
    assert tracker.run(lambda t: _train(t, tmp_path / "model.pt"), {"a": 1}) == {"mAP": 0.2}
    assert tracker.run_dir is None and not (tmp_path / "runs").exists()


def test_run_tracker_wandb_offline(tmp_path):
    pytest.importorskip("wandb")
    tracker = RunTracker("unit", runs_dir=tmp_path / "runs", wandb_mode="offline")
    tracker.run(lambda t: _train(t, tmp_path / "model.pt"), {"a": 1})
    assert list((tracker.run_dir / "wandb").glob("offline-run-*")), "no offline W&B run written"


def test_run_tracker_survives_missing_wandb(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    tracker = RunTracker("unit", runs_dir=tmp_path / "runs", wandb_mode="offline")
    with pytest.warns(RuntimeWarning, match="W&B unavailable"):
        assert tracker.run(lambda t: _train(t, tmp_path / "model.pt"), {"a": 1}) == {"mAP": 0.2}
    assert (tracker.run_dir / "metrics.json").is_file()


# ---------------------------------------------------------------- distributed
def _gather_worker(rank: int, world_size: int, port: int) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # two ranks, CPU only, whatever the machine has
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = init_distributed("gloo", timeout_s=30)
    try:
        assert info.enabled and info.rank == rank and info.world_size == world_size
        assert is_main_process() == (rank == 0)
        rows = 1 + 2 * rank  # unequal sizes: 1 and 3 rows
        local = torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2) + 100 * rank
        gathered = all_gather_tensors(local)
        expected = torch.cat([torch.arange((1 + 2 * r) * 2, dtype=torch.float32).reshape(-1, 2) + 100 * r
                              for r in range(world_size)])
        assert torch.equal(gathered, expected)
        assert reduce_sum(1.0) == float(world_size)
        assert torch.equal(reduce_sum(torch.tensor([rank, 1])), torch.tensor([1, 2]))
        barrier()
    finally:
        cleanup()


def test_all_gather_tensors_unequal_sizes_two_process_gloo():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_gather_worker, args=(2, port), nprocs=2, join=True)


def test_distributed_helpers_without_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed()
    assert not info.enabled and info.rank == 0 and info.world_size == 1
    x = torch.randn(3, 2)
    assert all_gather_tensors(x) is x and reduce_sum(2) == 2.0 and is_main_process()
    barrier()
