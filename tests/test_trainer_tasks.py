"""The one trainer runs every task kind: multi-class data (class folders) train with the single-label loss
and are selected by accuracy; checkpoints stay loadable and self-describing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from efficient_tagging import get_model
from efficient_tagging.audio import encode_audio
from efficient_tagging.data.datasets import FolderDataset
from efficient_tagging.train.trainer import TrainConfig, train


def _class_folders(root, classes=("low", "mid", "high"), per_class=8, sample_rate=16000):
    rng = np.random.default_rng(0)
    t = np.arange(sample_rate) / sample_rate
    for c, name in enumerate(classes):
        for k in range(per_class):
            wave = 0.3 * np.sin(2 * np.pi * 400.0 * (c + 1) * (1 + 0.02 * k) * t) + 0.01 * rng.standard_normal(len(t))
            path = root / name / f"{k:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_audio(wave.astype(np.float32), sample_rate, "wav"))
    return root


def test_multiclass_training_through_the_one_trainer(tmp_path):
    root = _class_folders(tmp_path / "data")
    train_set = FolderDataset(root, "train", eval_fraction=0.25, sample_rate=16000, clip_length=1.0)
    eval_set = FolderDataset(root, "eval", eval_fraction=0.25, sample_rate=16000, clip_length=1.0)
    assert eval_set.label_map.names == train_set.label_map.names  # the class folders define both
    assert train_set.task == "multiclass"
    config = TrainConfig(sample_rate=16000, clip_length=1.0, batch_size=6, num_workers=0, epoch_len=18, n_epochs=2,
                         width_mult=0.1, n_mels=32, warm_up_len=1, ramp_down_start=1, ramp_down_len=1,
                         mixup_alpha=0.3, wavmix=True, out_dir=str(tmp_path / "run"), checkpoint_every_steps=0,
                         progress=False, sampler_replacement=True)
    summary = train(config, datasets=(train_set, eval_set))
    assert summary["task"] == "multiclass" and summary["selection_metric"] == "accuracy"
    assert summary["best_mAP"] is None and 0.0 <= summary["best_score"] <= 1.0
    for epoch in summary["history"]:
        assert {"accuracy", "mean_class_accuracy", "val_loss"} <= set(epoch)
    matrix = np.asarray(summary["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == len(eval_set)
    assert abs(np.trace(matrix) / matrix.sum() - summary["final"]["accuracy"]) < 1e-9
    model = get_model(summary["checkpoints"]["best"])
    assert model.label_map.names == train_set.label_map.names
    raw = torch.load(summary["checkpoints"]["last"], weights_only=True)
    assert raw["extra"]["training"]["metrics"]["accuracy"] == summary["final"]["accuracy"]


def test_partial_multilabel_training_on_openmic_files(tmp_path):
    """OpenMIC's layout trains with the masked loss and is evaluated by mAP over known labels only."""
    import h5py

    from efficient_tagging.data.datasets.openmic import OpenMICDataset

    rng = np.random.default_rng(0)
    names = [f"{i:06d}_3840.mp3" for i in range(12)]
    t = np.arange(16000) / 16000
    known = rng.random((12, 20)) < 0.5
    known[:, :2] = True
    relevance = np.where(known, 0.0, 0.5).astype(np.float32)
    relevance[::2, 0] = relevance[1::2, 1] = 1.0  # two instruments, alternating
    path = tmp_path / "openmic_train.csv_mp3.hdf"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("audio_name", data=np.array([n.encode() for n in names], dtype="S20"))
        mp3 = handle.create_dataset("mp3", shape=(12,), dtype=h5py.vlen_dtype(np.uint8))
        for i in range(12):
            wave = 0.3 * np.sin(2 * np.pi * (500.0 if i % 2 == 0 else 1500.0) * t).astype(np.float32)
            mp3[i] = np.frombuffer(encode_audio(wave, 16000, "mp3"), dtype=np.uint8)
        handle.create_dataset("target", data=np.concatenate([relevance, known.astype(np.float32)], axis=1))
    dataset = OpenMICDataset(path, sample_rate=16000, clip_length=1.0)
    assert dataset.task == "partial_multilabel"
    assert set(dataset[0]) >= {"known", "target"} and dataset[0]["known"].dtype == torch.bool
    config = TrainConfig(sample_rate=16000, clip_length=1.0, batch_size=4, num_workers=0, epoch_len=8, n_epochs=1,
                         width_mult=0.1, n_mels=32, warm_up_len=1, ramp_down_start=1, ramp_down_len=1,
                         out_dir=str(tmp_path / "run"), checkpoint_every_steps=0, progress=False,
                         sampler_replacement=True)
    summary = train(config, datasets=(dataset, dataset))
    assert summary["task"] == "partial_multilabel" and summary["selection_metric"] == "mAP"
    assert np.isfinite(summary["best_score"]) and set(summary["history"][0]) >= {"mAP", "ROC", "val_loss"}


def _reference_mixstyle(x, lam, perm, eps=1e-6):
    """EfficientAT's frequency MixStyle (helpers/utils.py `mixstyle`) with its random draws given."""
    f_mu = x.mean(dim=[1, 3], keepdim=True)
    f_var = x.var(dim=[1, 3], keepdim=True)
    f_sig = (f_var + eps).sqrt()
    x_normed = (x - f_mu) / f_sig
    lam = lam.reshape(-1, 1, 1, 1)
    mu_mix = f_mu * lam + f_mu[perm] * (1 - lam)
    sig_mix = f_sig * lam + f_sig[perm] * (1 - lam)
    return x_normed * sig_mix + mu_mix


def test_mixstyle_matches_the_reference_formula_and_its_probability():
    from efficient_tagging.data.augment import _beta, mixstyle

    x = torch.randn(6, 1, 16, 20) * 3 + 1
    out = mixstyle(x, p=1.0, alpha=0.4, generator=torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)  # the same draws, in mixstyle's order: gate, Beta, partners
    torch.rand(1, generator=replay)
    lam = _beta(0.4, 6, replay)
    perm = torch.randperm(6, generator=replay)
    torch.testing.assert_close(out, _reference_mixstyle(x, lam, perm))
    # per-frequency statistics move towards the partner's; content (normalised shape) is kept
    assert not torch.allclose(out, x)
    assert torch.equal(mixstyle(x, p=0.0, alpha=0.4, generator=torch.Generator().manual_seed(1)), x)
    gate = torch.Generator().manual_seed(0)
    applied = sum(not torch.equal(mixstyle(x, 0.4, 0.4, gate), x) for _ in range(500))
    assert 150 < applied < 250  # one draw per batch with probability p = 0.4
    with pytest.raises(ValueError, match="batch, channels, freq, time"):
        mixstyle(x[0], 1.0)


@pytest.mark.parametrize("num_clips, steps", [(10, 3), (9, 2)])
def test_uniform_sampler_is_one_pass_with_the_partial_batch_unless_single(tmp_path, num_clips, steps):
    """sampler="uniform", epoch_len None: every clip once per epoch, the last partial batch trained on
    (10 clips, batch 4: 4 + 4 + 2), except a single left-over clip (9 clips: 4 + 4, one dropped)."""
    from efficient_tagging.data.hdf5 import AudioSetDataset

    from conftest import make_tiny_audioset

    path = make_tiny_audioset(tmp_path / "tiny.h5", num_clips=num_clips)
    drawn = []
    original = AudioSetDataset.__getitem__

    def recording(self, index):
        item = original(self, index)
        if self.replace_undecodable and len(self) == num_clips and getattr(self, "_record", False):
            drawn.append(item["audio_name"])
        return item

    train_set = AudioSetDataset([path], sample_rate=16000, clip_length=1.0)
    train_set._record = True
    eval_set = AudioSetDataset([path], sample_rate=16000, clip_length=1.0)
    config = TrainConfig(sample_rate=16000, clip_length=1.0, batch_size=4, num_workers=0, epoch_len=None,
                         sampler="uniform", n_epochs=2, width_mult=0.1, n_mels=32, warm_up_len=1, ramp_down_start=1,
                         ramp_down_len=1, out_dir=str(tmp_path / "run"), progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AudioSetDataset, "__getitem__", recording)
        summary = train(config, datasets=(train_set, eval_set))
    assert len(summary["history"]) == 2
    per_epoch = (steps - 1) * 4 + (2 if num_clips == 10 else 4)
    assert len(drawn) == 2 * per_epoch
    first = drawn[:per_epoch]
    assert len(set(first)) == per_epoch  # without replacement: no clip twice in an epoch
    if num_clips == 10:
        assert set(first) == set(train_set.audio_names)  # every clip once
