"""Training robustness (issue 9): one run per out_dir (lock), --resume with changed flags, SIGINT/SIGTERM,
a full disk while checkpointing, data settings stored with checkpoints (and used by evaluation and tagging),
--cuda without a GPU, DataLoader workers capped to the cores, and a summary after every training run.

Most runs are in-process through the command's `main` (imports paid once); the signal test needs real
processes. Data: the tiny tone set of conftest (16 kHz, 1 s clips), mn width 0.1 with 32 mels.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, make_tiny_audioset
from efficient_tagging.cli.audioset import main
from efficient_tagging.models.factory import read_checkpoint

TRAIN_FLAGS = ["--resample_rate", "16000", "--clip_length", "1", "--width_mult", "0.1", "--n_mels", "32",
               "--batch_size", "4", "--epoch_len", "12", "--n_epochs", "2", "--num_workers", "0", "--warm_up_len", "1",
               "--ramp_down_start", "1", "--ramp_down_len", "1", "--freqm", "4", "--timem", "8", "--roll",
               "--gain_augment", "3", "--seed", "3", "--checkpoint_every_steps", "1", "--wandb", "disabled",
               "--no_progress", "--experiment_name", "robust"]


def _train_flags(data, out_dir: Path, *extra: str) -> list[str]:
    train_path, eval_path = data
    return ["--train", "--train_hdf5", str(train_path), "--eval_hdf5", str(eval_path), *TRAIN_FLAGS,
            "--out_dir", str(out_dir), "--runs_dir", str(out_dir.parent / "runs"), *extra]


@contextlib.contextmanager
def _one_thread():
    """The thread count of the subprocess runs, so in-process results match theirs bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_main(flags: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with _one_thread(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(flags)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_audioset(root / "train.h5", num_clips=24), make_tiny_audioset(root / "eval.h5", num_clips=8,
                                                                                   seed=1)


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    """One uninterrupted 2-epoch run through `ex_audioset.py --train` with data paths."""
    out_dir = tmp_path_factory.mktemp("finished") / "ckpt"
    results = out_dir.parent / "result.json"
    code, stdout, stderr = _run_main(_train_flags(tiny_data, out_dir, "--results_json", str(results)))
    assert code == 0, stderr[-3000:]
    return {"out_dir": out_dir, "stdout": stdout, "result": json.loads(results.read_text())}


def _copy_run(run_dir: Path, destination: Path) -> Path:
    destination.mkdir(parents=True)
    shutil.copy(run_dir / "last.pt", destination / "last.pt")
    return destination


# --- item 19: every training run ends with a summary ------------------------------------------------
def test_training_with_data_paths_prints_the_summary(finished_run):
    stdout, result, out_dir = finished_run["stdout"], finished_run["result"], finished_run["out_dir"]
    assert "training summary" in stdout
    summary = stdout.split("training summary", 1)[1]
    best = max(record["mAP"] for record in result["history"])
    assert f"best mAP {best:.4f} (epoch" in summary
    assert f"final (epoch 2): mAP {result['final']['mAP']:.4f}" in summary
    assert f"best {out_dir / 'best.pt'}" in summary and f"last {out_dir / 'last.pt'}" in summary
    assert f"run record: {result['run_dir']}" in summary and result["run_dir"]
    assert "clip decodes that failed (each clip replaced by another of the training set): 0" in summary
    assert "total time:" in summary


def test_summary_reports_teacher_coverage(capsys):
    from efficient_tagging.cli.audioset import print_training_summary
    print_training_summary({"history": [{"epoch": 1, "mAP": 0.5}], "final": {"epoch": 1, "mAP": 0.5},
                            "checkpoints": {"best": "b.pt", "last": "l.pt"}, "run_dir": None, "skipped_clips": 2,
                            "teacher_coverage": {"found": 3, "missing": 1}, "clips_without_teacher": 5})
    out = capsys.readouterr().out
    assert "teacher logits: 3 of 4 training clips (75.0%); 5 drawn clips" in out
    assert "clip decodes that failed (each clip replaced by another of the training set): 2" in out


# --- item 15: clip length and sample rate travel with the checkpoint -----------------------------------
def test_evaluation_uses_the_clip_length_stored_in_the_checkpoint(finished_run, tiny_data, tmp_path):
    last = finished_run["out_dir"] / "last.pt"
    raw = torch.load(last, weights_only=True)
    assert raw["preprocessing"]["clip_length"] == 1.0 and raw["preprocessing"]["sr"] == 16000
    results = tmp_path / "eval.json"
    code, stdout, stderr = _run_main(["--model_path", str(last), "--eval_hdf5", str(tiny_data[1]), "--batch_size", "4",
                                      "--results_json", str(results), "--no_progress"])
    assert code == 0, stderr[-3000:]
    assert "clip length 1 s (stored in the checkpoint; --clip_length overrides)" in stdout
    assert "sample rate 16000 Hz" in stdout
    metrics = json.loads(results.read_text())
    # the same number the training reported for its last epoch on this eval file (10 s padding gave another)
    assert metrics["mAP"] == pytest.approx(finished_run["result"]["final"]["mAP"], abs=1e-9)
    assert metrics["clip_length"] == 1.0
    # a flag still overrides, and says so
    code, stdout, _ = _run_main(["--model_path", str(last), "--eval_hdf5", str(tiny_data[1]), "--clip_length", "2",
                                 "--no_progress"])
    assert code == 0 and "clip length 2 s (--clip_length; the checkpoint says 1 s)" in stdout
    # the sample rate belongs to the model's frontend: a contradicting flag is refused, not obeyed silently
    with pytest.raises(SystemExit, match="--resample_rate 32000 contradicts the model: its frontend takes 16000 Hz"):
        _run_main(["--model_path", str(last), "--eval_hdf5", str(tiny_data[1]), "--resample_rate", "32000"])


def test_tagging_pads_short_files_to_the_stored_clip_length(finished_run, tmp_path):
    from efficient_tagging.audio import encode_audio
    from efficient_tagging.tagging.tagger import load_tagger
    tagger = load_tagger(None, finished_run["out_dir"] / "last.pt")
    assert tagger.clip_length == 1.0 and tagger.sample_rate == 16000
    wave = 0.1 * torch.randn(4000, generator=torch.Generator().manual_seed(0))  # 0.25 s
    path = tmp_path / "short.flac"
    path.write_bytes(encode_audio(wave.numpy(), 16000, "flac"))
    from efficient_tagging.audio import load_audio
    decoded = load_audio(path, 16000)
    expected = tagger.probabilities(torch.nn.functional.pad(decoded, (0, 16000 - decoded.numel()))[None])[0]
    tags = tagger.tag_file(path, top_k=4)
    assert [t.index for t in tags] == expected.topk(4).indices.tolist()
    assert [t.probability for t in tags] == pytest.approx(expected.topk(4).values.tolist(), abs=1e-6)


# --- item 2: one run per out_dir --------------------------------------------------------------------
HOLD_LOCK = """
import sys
from efficient_tagging.train import run_lock
with run_lock.RunDirectoryLock(sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.readline()  # hold until the test says so
"""


def test_second_run_on_the_same_out_dir_is_refused(tiny_data, tmp_path):
    from efficient_tagging.train.run_lock import RunDirectoryBusy, RunDirectoryLock
    out_dir = tmp_path / "ckpt"
    # the other run: a process holding the lock
    lock_module = REPO / "efficient_tagging" / "train" / "run_lock.py"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_module), str(out_dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, stderr = _run_main(_train_flags(tiny_data, out_dir))
        assert code == 1
        assert f"error: {out_dir} is in use by another training run (pid {holder.pid} on " in stderr
        assert "Traceback" not in stderr
        assert not (out_dir / "last.pt").exists()  # the refused run wrote nothing
        with pytest.raises(RunDirectoryBusy, match=f"pid {holder.pid}"):
            RunDirectoryLock(out_dir).acquire()
    finally:
        holder.communicate("\n", timeout=30)
    RunDirectoryLock(out_dir).acquire().release()  # free again once the holder has gone


# --- item 3: --resume with changed flags -------------------------------------------------------------
def test_resume_refuses_a_changed_model(finished_run, tiny_data, tmp_path):
    out_dir = _copy_run(finished_run["out_dir"], tmp_path / "ckpt")
    before = (out_dir / "last.pt").read_bytes()
    changed = _train_flags(tiny_data, out_dir, "--resume", "--width_mult", "0.2", "--n_mels", "64")
    code, _, stderr = _run_main(changed)
    assert code == 1, stderr[-2000:]
    assert f"cannot resume from {out_dir / 'last.pt'}: these settings change the model" in stderr
    assert "width_mult: 0.1 -> 0.2" in stderr and "n_mels: 32 -> 64" in stderr
    assert "Traceback" not in stderr
    # no override for the model itself
    code, _, stderr = _run_main(changed + ["--resume_override"])
    assert code == 1 and "width_mult: 0.1 -> 0.2" in stderr
    assert (out_dir / "last.pt").read_bytes() == before


def test_resume_with_other_changes_needs_resume_override(finished_run, tiny_data, tmp_path, caplog):
    out_dir = _copy_run(finished_run["out_dir"], tmp_path / "ckpt")
    code, _, stderr = _run_main(_train_flags(tiny_data, out_dir, "--resume", "--batch_size", "3", "--n_epochs", "3"))
    assert code == 1
    assert "--resume with settings that differ from the run in" in stderr
    assert "batch_size: 4 -> 3" in stderr and "n_epochs: 2 -> 3" in stderr and "--resume_override" in stderr
    # runtime-only settings never count: this resume finds the run complete and simply ends
    code, _, stderr = _run_main(_train_flags(tiny_data, out_dir, "--resume", "--num_workers", "1",
                                             "--checkpoint_every_steps", "0", "--eval_batch_size", "2"))
    assert code == 0, stderr[-2000:]
    # with the override it continues, and says what changed
    with caplog.at_level(logging.WARNING, logger="efficient_tagging"):
        code, _, stderr = _run_main(_train_flags(tiny_data, out_dir, "--resume", "--n_epochs", "3",
                                                 "--resume_override"))
    assert code == 0, stderr[-2000:]
    assert any("n_epochs: 2 -> 3" in record.getMessage() for record in caplog.records)
    training = torch.load(out_dir / "last.pt", weights_only=True)["extra"]["training"]
    assert training["epoch"] == 3 and len(training["history"]) == 3


# --- item 4: SIGTERM / Ctrl-C -----------------------------------------------------------------------
SLOW_COMMAND = """
import sys, time
import torch
torch.set_num_threads(1)
import efficient_tagging.train.trainer as trainer

original = trainer.task_loss
def slow_loss(*args, **kwargs):  # time for the test to signal mid-run; the numbers stay the same
    time.sleep(0.3)
    return original(*args, **kwargs)
trainer.task_loss = slow_loss
from efficient_tagging.cli.audioset import main
sys.exit(main())
"""


def test_sigterm_saves_last_pt_prints_the_resume_command_and_resumes_exactly(finished_run, tiny_data, tmp_path):
    script = tmp_path / "slow_ex_audioset.py"
    script.write_text(SLOW_COMMAND)
    out_dir = tmp_path / "ckpt"
    flags = _train_flags(tiny_data, out_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.Popen([sys.executable, str(script), *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env)
    deadline = time.time() + 300
    while not (out_dir / "last.pt").exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "training stopped by SIGTERM" in stderr
    command = stderr.rsplit("to continue exactly from there, run:\n", 1)[1].strip().splitlines()[0]
    assert shlex.split(command) == [sys.executable, str(script), *flags, "--resume"]
    state = torch.load(out_dir / "last.pt", weights_only=True)["extra"]["training"]
    assert 0 < state["global_step"] < 6  # stopped part-way (2 epochs of 3 steps), state of that step saved

    resumed = subprocess.run(shlex.split(command), capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight, straight_meta = read_checkpoint(finished_run["out_dir"] / "last.pt")
    weights, meta = read_checkpoint(out_dir / "last.pt")
    assert straight.keys() == weights.keys()
    for key in straight:
        assert torch.equal(straight[key], weights[key]), key

    def without_timing(history):
        return [{k: v for k, v in epoch.items() if k != "train_clips_per_s"} for epoch in history]

    assert without_timing(meta["extra"]["training"]["history"]) == \
        without_timing(straight_meta["extra"]["training"]["history"])


def test_signal_handlers_are_restored_after_training(tiny_data, tmp_path):
    from efficient_tagging.cli.audioset import build_parser
    from efficient_tagging.cli.train_flags import config_from_args
    from efficient_tagging.train.audioset import AUDIOSET_RECIPE
    from efficient_tagging.train.trainer import train
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    args = build_parser().parse_args(_train_flags(tiny_data, tmp_path / "ckpt", "--n_epochs", "1", "--epoch_len", "4"))
    with _one_thread():
        train(config_from_args(args, AUDIOSET_RECIPE))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# --- item 5: disk full while checkpointing ----------------------------------------------------------
TORCH_DISK_FULL = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                   "file write failed")


def _failing_save(error: BaseException):
    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")  # torch has written part of the file when the disk fills up
        raise error
    return save


@pytest.mark.parametrize("error", [RuntimeError(TORCH_DISK_FULL), OSError(errno.ENOSPC, "No space left on device")],
                         ids=["torch-writer", "oserror"])
def test_disk_full_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, error):
    from efficient_tagging import get_model
    from efficient_tagging.models import factory
    model = get_model(arch="mn", width_mult=0.1, num_classes=3, input_dim_f=32)
    path = factory.save_checkpoint(tmp_path / "last.pt", model)
    before = path.read_bytes()
    monkeypatch.setattr(factory.torch, "save", _failing_save(error))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))
    with pytest.raises(OSError) as caught:
        factory.save_checkpoint(path, model)
    assert str(caught.value).startswith(f"no space left writing {path}; previous checkpoint kept")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # the partial temp file is gone
    with pytest.raises(OSError, match="no checkpoint was written"):
        factory.save_checkpoint(tmp_path / "first.pt", model)


def test_disk_full_during_training_is_one_clear_line(tiny_data, tmp_path, monkeypatch):
    from efficient_tagging.models import factory
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 1:
            return real_save(obj, f, *args, **kwargs)
        return _failing_save(RuntimeError(TORCH_DISK_FULL))(obj, f)

    monkeypatch.setattr(factory.torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 1000))
    out_dir = tmp_path / "ckpt"
    code, _, stderr = _run_main(_train_flags(tiny_data, out_dir))
    assert code == 1
    assert f"error: no space left writing {out_dir / 'last.pt'}; previous checkpoint kept" in stderr
    assert "Traceback" not in stderr
    assert torch.load(out_dir / "last.pt", weights_only=True)["extra"]["training"]["global_step"] == 1


# --- item 18: --cuda without a GPU; workers capped to the cores ---------------------------------------
def test_cuda_flag_without_a_gpu_is_an_error(finished_run, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = "--cuda given but no CUDA device is available; drop --cuda to run on the CPU"
    code, _, stderr = _run_main(_train_flags(tiny_data, tmp_path / "ckpt", "--cuda"))
    assert code == 1 and message in stderr
    assert not (tmp_path / "ckpt" / "last.pt").exists()
    code, _, stderr = _run_main(["--model_path", str(finished_run["out_dir"] / "last.pt"), "--eval_hdf5",
                                 str(tiny_data[1]), "--cuda", "--no_progress"])
    assert code == 1 and message in stderr


def test_num_workers_are_capped_to_the_available_cores(tiny_data, tmp_path, monkeypatch, caplog):
    import warnings

    from efficient_tagging.train import trainer
    monkeypatch.setattr(trainer, "available_cpus", lambda: 1, raising=False)
    with caplog.at_level(logging.INFO, logger="efficient_tagging"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, stderr = _run_main(_train_flags(tiny_data, tmp_path / "ckpt", "--num_workers", "3", "--n_epochs",
                                                 "1", "--epoch_len", "8"))
    assert code == 0, stderr[-2000:]
    capped = [r.getMessage() for r in caplog.records if "capped" in r.getMessage()]
    assert capped == ["num_workers 3 capped to 1: the CPU cores available to this process"]
    assert not [w for w in caught if "worker processes" in str(w.message)]
