"""The training loop: exact resume after a hard kill, DDP under torchrun, the demo command, failure modes."""
import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, make_tiny_audioset
from efficient_tagging.models.factory import read_checkpoint

TRAIN_SNIPPET = """
import os, sys, json, torch
torch.set_num_threads(1)
from efficient_tagging.train import trainer
config = trainer.TrainConfig(**json.loads(sys.argv[1]))
kill_after_steps = int(sys.argv[2])
if kill_after_steps:
    # the fault comes from outside the trainer: the process dies (os._exit: no cleanup, no final
    # checkpoint) when step kill_after_steps + 1 would start, like a job killed between steps
    step, steps_done = trainer.train_step, []
    def train_step_or_die(*args, **kwargs):
        if len(steps_done) >= kill_after_steps:
            os._exit(17)
        steps_done.append(1)
        return step(*args, **kwargs)
    trainer.train_step = train_step_or_die
summary = trainer.train(config)
print("SUMMARY", json.dumps({k: summary[k] for k in ("best_mAP", "skipped_clips", "clips_without_teacher")}))
"""


def _train_subprocess(config: dict, expect_rc: int = 0, kill_after_steps: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", TRAIN_SNIPPET, json.dumps(config), str(kill_after_steps)],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == expect_rc, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_audioset(root / "train.h5", num_clips=24), make_tiny_audioset(root / "eval.h5", num_clips=8,
                                                                                   seed=1)


def _config(train_path, eval_path, out_dir, **overrides):
    config = dict(train_hdf5=[str(train_path)], eval_hdf5=[str(eval_path)], sample_rate=16000, clip_length=1.0,
                  batch_size=4, num_workers=0, epoch_len=12, n_epochs=2, width_mult=0.1, n_mels=32, hop_size=320,
                  warm_up_len=1, ramp_down_start=1, ramp_down_len=1, mixup_alpha=0.3, freqm=4, timem=8,
                  roll=True, gain_augment=3.0, out_dir=str(out_dir), checkpoint_every_steps=1, progress=False,
                  seed=3)
    config.update(overrides)
    return config


def test_killed_run_resumes_to_identical_weights(tiny_data, tmp_path):
    train_path, eval_path = tiny_data
    _train_subprocess(_config(train_path, eval_path, tmp_path / "straight"))
    # hard exit (os._exit, no cleanup) in the middle of the second epoch, then --resume
    _train_subprocess(_config(train_path, eval_path, tmp_path / "killed"), expect_rc=17, kill_after_steps=5)
    interrupted, _ = read_checkpoint(tmp_path / "killed" / "last.pt")
    _train_subprocess(_config(train_path, eval_path, tmp_path / "killed", resume=True))
    straight, straight_meta = read_checkpoint(tmp_path / "straight" / "last.pt")
    resumed, resumed_meta = read_checkpoint(tmp_path / "killed" / "last.pt")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert any(not torch.equal(interrupted[k], straight[k]) for k in straight)  # the kill really cut the run short
    def without_timing(history):
        return [{k: v for k, v in epoch.items() if k != "train_clips_per_s"} for epoch in history]

    assert without_timing(straight_meta["extra"]["training"]["history"]) == \
        without_timing(resumed_meta["extra"]["training"]["history"])


def test_checkpoints_are_self_describing_and_safe_to_load(tiny_data, tmp_path):
    train_path, eval_path = tiny_data
    _train_subprocess(_config(train_path, eval_path, tmp_path / "run", n_epochs=1))
    raw = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert raw["labels"]["names"] == ["tone_0", "tone_1", "tone_2", "tone_3"]
    assert raw["preprocessing"]["sr"] == 16000 and raw["preprocessing"]["n_mels"] == 32
    training = raw["extra"]["training"]
    assert {"optimizer", "scheduler", "sampler", "rng", "scaler", "history"} <= training.keys()
    from efficient_tagging import get_model
    model = get_model(str(tmp_path / "run" / "best.pt"))
    assert model.label_map.names[0] == "tone_0"
    assert not list((tmp_path / "run").glob("*.tmp"))

    # evaluation mode of ex_audioset (no --train) on the trained checkpoint
    result = subprocess.run([sys.executable, str(REPO / "experiments" / "ex_audioset.py"), "--model_path",
                             str(tmp_path / "run" / "best.pt"), "--eval_hdf5", str(eval_path), "--clip_length", "1",
                             "--results_json", str(tmp_path / "eval.json"), "--no_progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mAP:" in result.stdout
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["eval_clips"] == 8


def test_teacher_logits_join_masks_missing_clips(tiny_data, tmp_path):
    import numpy as np

    from efficient_tagging.data.hdf5 import read_audio_names
    from efficient_tagging.data.teacher_logits import TeacherLogitsWriter
    train_path, eval_path = tiny_data
    names = read_audio_names(train_path)
    with TeacherLogitsWriter(tmp_path / "teacher.h5", num_classes=4, attrs={"teachers": ["test"]}) as writer:
        kept = names[::-1][: len(names) // 2]  # other order than the audio file, half of the clips
        writer.write(kept, np.random.default_rng(0).standard_normal((len(kept), 4)).astype(np.float32))
    result = _train_subprocess(_config(train_path, eval_path, tmp_path / "run", n_epochs=1,
                                       teacher_logits=str(tmp_path / "teacher.h5")))
    summary = json.loads(result.stdout.split("SUMMARY", 1)[1])
    assert summary["clips_without_teacher"] > 0  # counted, and the loss stayed finite


def test_ddp_two_processes_with_gloo(tiny_data, tmp_path):
    train_path, eval_path = tiny_data
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               str(REPO / "experiments" / "ex_audioset.py"), "--train", "--train_hdf5", str(train_path),
               "--eval_hdf5", str(eval_path), "--resample_rate", "16000", "--clip_length", "1", "--width_mult", "0.1",
               "--n_mels", "32", "--batch_size", "4", "--epoch_len", "16", "--n_epochs", "1", "--num_workers", "0",
               "--out_dir", str(tmp_path / "ckpt"), "--runs_dir", str(tmp_path / "runs"), "--experiment_name", "ddp",
               "--results_json", str(tmp_path / "result.json"), "--no_progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 1/1:") == 1  # only rank 0 reports
    records = [p for p in (tmp_path / "runs" / "ddp").iterdir() if p.name.isdigit()]
    assert len(records) == 1  # only rank 0 records the run
    assert (tmp_path / "ckpt" / "last.pt").is_file() and (tmp_path / "ckpt" / "best.pt").is_file()
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["final"]["epoch"] == 1
    training = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["extra"]["training"]
    assert len(training["rng"]) == 2  # both ranks' RNG states, for an exact resume


def test_demo_command_runs_end_to_end_small(tmp_path):
    command = [sys.executable, "ex_audioset.py", "--train", "--width_mult", "0.4", "--n_epochs", "1",
               "--epoch_len", "64", "--demo_clips", "96", "--demo_dir", str(tmp_path / "demo"),
               "--runs_dir", str(tmp_path / "runs"), "--results_json", str(tmp_path / "demo.json"), "--no_progress"]
    result = subprocess.run(command, cwd=REPO / "experiments", capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "demo.json").read_text())
    # Transformer-to-CNN: a PaSST teacher, trained for the same shortened run as the student
    assert summary["teacher"]["arch"] == "passt" and summary["student"]["arch"] == "mn"
    teacher_dir = os.path.dirname(summary["teacher"]["checkpoint"])
    assert os.path.basename(teacher_dir).startswith("teacher_passt_e1_n96_")
    assert 0.0 <= summary["student"]["mAP"] <= 1.0 and 0.0 <= summary["teacher"]["mAP"] <= 1.0
    teacher_logits = summary["teacher"]["logits"]
    assert teacher_logits.startswith(str(tmp_path / "demo")) and os.path.isfile(teacher_logits)
    assert "demo summary" in result.stdout and "run record" in result.stdout


def test_bad_configuration_is_rejected():
    from efficient_tagging.train.trainer import TrainConfig
    with pytest.raises(ValueError, match="kd_lambda"):
        TrainConfig(kd_lambda=1.5)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="8")


def test_transformer_teacher_trains_and_fine_tunes_through_the_same_trainer(tiny_data, tmp_path):
    train_path, eval_path = tiny_data
    passt = {"embed_dim": 32, "depth": 1, "num_heads": 2, "stride": [16, 16]}
    _train_subprocess(_config(train_path, eval_path, tmp_path / "teacher", arch="passt", n_epochs=1,
                              model_kwargs=passt))
    from efficient_tagging import get_model
    teacher = get_model(str(tmp_path / "teacher" / "best.pt"))
    assert type(teacher).__name__ == "PaSST" and teacher.num_classes == 4
    # fine-tuning on another label set keeps the body and replaces the head
    fine_tuned = get_model(str(tmp_path / "teacher" / "best.pt"), num_classes=2)
    assert fine_tuned.state_dict()["head.1.weight"].shape == (2, 32)
    assert torch.equal(fine_tuned.state_dict()["blocks.0.attn.qkv.weight"], teacher.state_dict()["blocks.0.attn.qkv.weight"])


def test_demo_teacher_config_is_keyed_and_resumes(tmp_path):
    from efficient_tagging.cli.audioset import build_parser
    from efficient_tagging.train.audioset import DEMO_TEACHER_RECIPE, demo_teacher_config

    def config(*flags):
        args = build_parser().parse_args(["--train", *flags])
        return demo_teacher_config(args, tmp_path / "train.h5", tmp_path / "eval.h5", tmp_path)

    default = config()
    assert default.arch == "passt" and default.model_kwargs == DEMO_TEACHER_RECIPE.model_kwargs
    assert default.n_epochs == 16 and default.adamw and default.mixup_alpha == 0.0 and not default.resume
    # student-only flags leave the teacher alone; run-length flags change it (and its cache key)
    assert config("--width_mult", "2.0", "--max_lr", "0.1", "--mixup_alpha", "0.5").out_dir == default.out_dir
    assert config("--num_workers", "2").out_dir == default.out_dir
    assert config("--demo_native_cpu").out_dir != default.out_dir  # other kernels, another teacher
    short = config("--n_epochs", "1", "--epoch_len", "64")
    assert (short.n_epochs, short.epoch_len) == (1, 64) and short.out_dir != default.out_dir
    assert config("--seed", "3").out_dir != default.out_dir
    # a teacher run killed part-way continues from its last checkpoint
    os.makedirs(default.out_dir)
    open(os.path.join(default.out_dir, "last.pt"), "wb").close()
    assert config().resume


def test_fast_training_defaults_follow_the_plain_path(tiny_data, tmp_path):
    """channels-last + fused Adam (the defaults) train the same model as contiguous + for-loop Adam,
    within float rounding: 6 steps with mixup, roll and gain augmentation."""
    train_path, eval_path = tiny_data
    _train_subprocess(_config(train_path, eval_path, tmp_path / "fast"))
    _train_subprocess(_config(train_path, eval_path, tmp_path / "plain", channels_last=False, fused_optimizer=False))
    fast, fast_meta = read_checkpoint(tmp_path / "fast" / "last.pt")
    plain, plain_meta = read_checkpoint(tmp_path / "plain" / "last.pt")
    assert fast_meta["extra"]["training"]["train_config"]["channels_last"] is True
    largest = max(float((fast[k].float() - plain[k].float()).abs().max()) for k in fast if fast[k].is_floating_point())
    scale = max(float(plain[k].float().abs().max()) for k in plain if plain[k].is_floating_point())
    assert largest <= 1e-3 * scale, f"weights differ by {largest:.3g} (largest weight {scale:.3g})"
    losses = [[e["train_loss"] for e in meta["extra"]["training"]["history"]] for meta in (fast_meta, plain_meta)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_a_resumed_cpu_run_keeps_the_thread_count_it_was_trained_with(tiny_data, tmp_path, monkeypatch, caplog):
    """The thread count may be lowered on a busy machine (issue 26); a resumed run takes the count its
    checkpoint was trained with, so the continuation stays bit-exact, and the caller's count comes back."""
    from efficient_tagging.train import trainer

    monkeypatch.delenv("EFFICIENT_TAGGING_THREADS", raising=False)
    train_path, eval_path = tiny_data
    config = _config(train_path, eval_path, tmp_path / "run", n_epochs=1)
    seen = []
    step = trainer.train_step

    def counting_step(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", counting_step)

    @contextlib.contextmanager
    def quiet_machine(device, log=True):  # whatever else runs on this machine now: the count stays
        yield torch.get_num_threads()

    monkeypatch.setattr(trainer, "threads_for_cpu_work", quiet_machine)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        trainer.train(trainer.TrainConfig(**config))
        assert set(seen) == {1}
        torch.set_num_threads(2)
        seen.clear()
        with caplog.at_level("WARNING"):
            trainer.train(trainer.TrainConfig(**{**config, "n_epochs": 2, "resume": True, "resume_override": True}))
        assert seen and set(seen) == {1}
        assert "resuming with the run's 1 CPU thread(s) instead of" in caplog.text
        assert torch.get_num_threads() == 2  # the caller's count again
    finally:
        torch.set_num_threads(threads)
