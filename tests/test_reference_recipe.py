"""Training defaults equal EfficientAT's ex_audioset.py; improvements are opt-in flags.

Each test states the reference behaviour it checks (read from EfficientAT's code; formulas
re-derived here, not imported from the package).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny_audioset
from efficient_tagging import get_model
from efficient_tagging.cli.audioset import build_parser
from efficient_tagging.cli.train_flags import config_from_args
from efficient_tagging.data.sampling import DistributedWeightedSampler, class_balanced_weights
from efficient_tagging.models.registry import get_entry
from efficient_tagging.train.audioset import AUDIOSET_RECIPE
from efficient_tagging.train.trainer import TrainConfig, train


def _audioset_config(*flags: str) -> TrainConfig:
    args = build_parser().parse_args(["--train", "--train_hdf5", "x.h5", *flags])
    return config_from_args(args, AUDIOSET_RECIPE)


def reference_dymn_temperature(epoch: int, t_max: float, t0_slope: float = 1.0, t1_slope: float = 0.02,
                               t_min: float = 1.0) -> float:
    """EfficientAT's DynamicConv.update_params(epoch)."""
    t0 = t_max - t0_slope * epoch
    t1 = 1 + t1_slope * (t_max - 1) / t0_slope - t1_slope * epoch
    return max(t0, t1, t_min)


def test_audioset_command_defaults_are_the_reference_recipe():
    config = _audioset_config()
    assert config.weight_decay == 0.0 and not config.adamw                 # Adam(weight_decay=0)
    assert config.sampler_replacement is False                             # WeightedRandomSampler(replacement=False)
    assert config.lr_per_step is False                                     # scheduler.step() once per epoch
    assert config.pretrain_final_temp == 30.0                              # --pretrain_final_temp 30
    assert config.roll_max_shift == 4000                                   # roll: +-4000 samples
    assert (config.batch_size, config.epoch_len, config.n_epochs, config.max_lr) == (120, 100_000, 200, 0.0008)
    assert (config.warm_up_len, config.ramp_down_start, config.ramp_down_len, config.last_lr_value) == (8, 80, 95, 0.01)
    assert (config.mixup_alpha, config.kd_lambda, config.temperature) == (0.3, 0.1, 1.0)
    assert (config.freqm, config.timem, config.gain_augment, config.roll, config.wavmix) == (0, 0, 0, False, False)
    assert (config.sample_rate, config.n_mels, config.hop_size, config.window_size, config.n_fft) == \
        (32000, 128, 320, 800, 1024)
    assert TrainConfig().weight_decay == 0.0
    # the improvements are flags
    opted = _audioset_config("--sampler_replacement", "--lr_per_step", "--weight_decay", "1e-4")
    assert opted.sampler_replacement and opted.lr_per_step and opted.weight_decay == 1e-4


def test_sampler_draws_each_epoch_without_replacement_by_default():
    targets = np.eye(4, dtype=np.uint8)[np.arange(200) % 4]
    targets[:150, 0] = 1  # a frequent class: its clips get small weights
    sampler = DistributedWeightedSampler(class_balanced_weights(targets), num_samples=150, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(set(drawn)) == 150  # no clip twice in an epoch
    with pytest.raises(ValueError, match="--epoch_len"):
        DistributedWeightedSampler(class_balanced_weights(targets), num_samples=201)
    repeated = DistributedWeightedSampler(class_balanced_weights(targets), num_samples=400, replacement=True)
    assert len(set(repeated)) < 400


def test_get_model_rejects_unknown_keyword_arguments():
    with pytest.raises(ValueError, match="unknown argument.*wdth_mult"):
        get_model(arch="mn", wdth_mult=0.4)
    with pytest.raises(ValueError, match="unknown argument.*pretrain_final_temp"):
        get_model(arch="mn", pretrain_final_temp=30)  # a DyMN argument, not an mn one
    with pytest.raises(ValueError, match="unknown argument.*depht"):
        get_model(arch="passt", depht=2)


@pytest.fixture
def fake_dymn10_im(tmp_path, monkeypatch):
    """A local stand-in for the dymn10_im release file (ImageNet head, 1000 classes) in the download cache."""
    entry = get_entry("dymn10_im")
    torch.manual_seed(0)
    model = get_model(arch="dymn", **{k: v for k, v in entry.config.items() if k != "T_max"})
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save(model.state_dict(), cache / entry.filename)
    monkeypatch.setenv("EFFICIENT_TAGGING_CACHE", str(cache))
    return cache


def test_pretrained_dymn_temperature_follows_pretrain_final_temp(fake_dymn10_im):
    # EfficientAT's get_dymn(pretrained_name=..., pretrain_final_temp=T): the model starts at T (default 1.0)
    assert get_model("dymn10_im").temperature == 1.0
    assert get_model("dymn10_im", pretrain_final_temp=30).temperature == 30.0
    model = get_model("dymn10_im", num_classes=10, pretrain_final_temp=30)
    assert [model.update_temperature(e) for e in (0, 1, 28, 29, 40)] == \
        [reference_dymn_temperature(e, 30.0) for e in (0, 1, 28, 29, 40)]


def test_finetuning_dymn10_im_anneals_like_the_reference(fake_dymn10_im, tmp_path):
    train_path = make_tiny_audioset(tmp_path / "train.h5", num_clips=16)
    config = _audioset_config("--pretrained", "dymn10_im", "--pretrain_final_temp", "30", "--n_epochs", "3",
                              "--epoch_len", "8", "--batch_size", "4", "--num_workers", "0", "--clip_length", "1",
                              "--resample_rate", "16000", "--n_mels", "32", "--out_dir", str(tmp_path / "run"),
                              "--checkpoint_every_steps", "0", "--no_progress")
    config.train_hdf5, config.eval_hdf5 = [str(train_path)], [str(train_path)]
    summary = train(config)
    temperatures = [epoch["dymn_temperature"] for epoch in summary["history"]]
    assert temperatures == [reference_dymn_temperature(e, 30.0) for e in range(3)] == [30.0, 29.0, 28.0]
    # the checkpoint remembers where the schedule stood: evaluation runs at the trained temperature
    assert get_model(summary["checkpoints"]["last"]).temperature == 28.0
