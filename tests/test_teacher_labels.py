"""Teacher labelling: kill -9 + resume, torchrun shards + merge, undecodable clips, ensembles."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, corrupt_clip, labelling_args, make_tiny_audioset, save_tiny_teacher
from efficient_tagging.data.teacher_logits import TeacherLogits, find_shards

SCRIPT = str(REPO / "experiments" / "ex_teacher_labels.py")
WITH_FAULT = str(REPO / "tests" / "label_with_fault.py")  # runs SCRIPT, hit by a fault after N batches
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NUM_CLIPS = 24
CORRUPT = "Ytiny_0005.flac"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("teacher_labels")
    data = make_tiny_audioset(root / "train.h5", num_clips=NUM_CLIPS)
    corrupt_clip(data, CORRUPT)
    teachers = [save_tiny_teacher(root / f"teacher{seed}.pt", seed=seed) for seed in (0, 1)]
    return root, data, teachers


_args = labelling_args


def _label_in_process(data, output, teachers, *extra):
    from efficient_tagging.cli.label import run
    return run(_args(data, output, teachers, *extra))


def _as_dict(path):
    stored = TeacherLogits(path)
    try:
        with h5py.File(path, "r") as handle:
            names = [n.decode() for n in handle["audio_name"][: stored.num_rows]]
        assert len(names) == len(set(names)), "duplicated rows"
        return {name: stored.lookup(name) for name in names}, sorted(stored.missing)
    finally:
        stored.close()


def _assert_same(path_a, path_b, atol=0.0):
    a, missing_a = _as_dict(path_a)
    b, missing_b = _as_dict(path_b)
    assert sorted(a) == sorted(b)
    assert missing_a == missing_b
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=atol, err_msg=name)


@pytest.fixture(scope="module")
def reference(setup):
    root, data, teachers = setup
    summary = _label_in_process(data, root / "reference.h5", teachers[:1])
    return root / "reference.h5", summary


def test_undecodable_clip_is_recorded_missing_not_zeros(setup, reference):
    path, summary = reference
    assert summary["missing_names"] == [CORRUPT] and summary["labelled_now"] == NUM_CLIPS - 1
    assert 0.0 <= summary["teacher_mAP"] <= 1.0
    stored = TeacherLogits(path)
    assert stored.missing == [CORRUPT]
    assert stored.lookup(CORRUPT) is None  # the trainer's join masks it out
    assert len(stored) == NUM_CLIPS - 1 and stored.lookup("Ytiny_0000.flac") is not None
    from efficient_tagging.hardware import resolve_precision
    assert stored.attrs["teachers"] == ["teacher0.pt"] and stored.attrs["precision"] == resolve_precision("auto")
    assert stored.attrs["preprocessing"][0]["n_mels"] == 32 and stored.attrs["sample_rate"] == 16000
    assert stored.attrs["ensemble_rule"] == "mean of logits" and stored.attrs["source_files"]
    stored.close()


@pytest.mark.parametrize("crash_after", [3, 5])
def test_killed_run_resumes_to_identical_output(setup, reference, tmp_path, crash_after):
    root, data, teachers = setup
    output = tmp_path / "killed.h5"
    # dies by SIGKILL (no cleanup) after `crash_after` batches; flush every 2 -> buffered rows are lost
    result = subprocess.run([sys.executable, WITH_FAULT, "KILL", str(crash_after), SCRIPT,
                             *_args(data, output, teachers[:1])], capture_output=True, text=True, env=ENV,
                            timeout=120)
    assert result.returncode in (-9, 137, 17), result.stderr[-2000:]
    partial = TeacherLogits(output)
    assert 0 < len(partial) < NUM_CLIPS - 1
    partial.close()
    summary = _label_in_process(data, output, teachers[:1])
    assert summary["labelled_before"] > 0 and summary["labelled_before"] + summary["labelled_now"] == NUM_CLIPS - 1
    _assert_same(output, reference[0])


def test_torchrun_two_ranks_merge_equals_single_process(setup, reference, tmp_path):
    root, data, teachers = setup
    output = tmp_path / "ddp.h5"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
               SCRIPT, *_args(data, output, teachers[:1])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"missing (undecodable): 1: {CORRUPT}" in result.stdout
    assert result.stdout.count("teacher labels ->") == 1  # only rank 0 reports
    _assert_same(output, reference[0], atol=1e-5)
    assert find_shards(output) == []  # merged, then removed
    assert not list(tmp_path.glob("*.tmp"))


def test_manual_shards_and_merge(setup, reference, tmp_path):
    root, data, teachers = setup
    output = tmp_path / "manual.h5"
    for index in range(3):
        _label_in_process(data, output, teachers[:1], "--num_shards", "3", "--shard_index", str(index))
    assert len(find_shards(output)) == 3
    from efficient_tagging.cli.label import run
    summary = run(["--merge", "--output", str(output), "--hdf5", str(data)])
    assert summary["rows"] == NUM_CLIPS - 1 and summary["missing_names"] == [CORRUPT]
    _assert_same(output, reference[0], atol=1e-6)
    # a shard that misses clips cannot pass as a complete dataset
    os.unlink(find_shards(output)[1])
    with pytest.raises(ValueError, match="in no shard"):
        run(["--merge", "--output", str(tmp_path / "incomplete.h5"), "--hdf5", str(data),
             "--shards", *map(str, find_shards(output))])
    # the same clips in two shards are refused
    with pytest.raises(ValueError, match="duplicated"):
        run(["--merge", "--output", str(tmp_path / "dup.h5"), "--shards", str(find_shards(output)[0]),
             str(output)])


def test_ensemble_is_mean_of_teachers(setup, reference, tmp_path):
    root, data, teachers = setup
    _label_in_process(data, tmp_path / "t1.h5", teachers[1:])
    summary = _label_in_process(data, tmp_path / "both.h5", teachers)
    assert summary["missing_names"] == [CORRUPT]
    first, _ = _as_dict(reference[0])
    second, _ = _as_dict(tmp_path / "t1.h5")
    both, _ = _as_dict(tmp_path / "both.h5")
    assert TeacherLogits(tmp_path / "both.h5").attrs["teachers"] == ["teacher0.pt", "teacher1.pt"]
    for name in first:
        np.testing.assert_allclose(both[name], (first[name] + second[name]) / 2, atol=1e-5)


def test_resume_refuses_another_teacher_setup(setup, reference, tmp_path):
    import shutil
    root, data, teachers = setup
    shutil.copy(reference[0], tmp_path / "other.h5")
    with pytest.raises(ValueError, match="differ"):
        _label_in_process(data, tmp_path / "other.h5", teachers[1:])


def test_bf16_fast_path_stays_close_to_fp32(setup, reference, tmp_path):
    root, data, teachers = setup
    _label_in_process(data, tmp_path / "bf16.h5", teachers[:1], "--precision", "bf16")
    _label_in_process(data, tmp_path / "fp32.h5", teachers[:1], "--precision", "32")
    fast, fast_missing = _as_dict(tmp_path / "bf16.h5")
    exact, exact_missing = _as_dict(tmp_path / "fp32.h5")
    assert fast.keys() == exact.keys() and fast_missing == exact_missing
    difference = max(float(np.abs(fast[name] - exact[name]).max()) for name in exact)
    assert 0.0 < difference < 0.1  # bf16 really ran, and changes logits only slightly


@pytest.mark.parametrize("native", [True, False])
def test_default_precision_is_bf16_exactly_where_the_device_has_native_bf16(setup, tmp_path, monkeypatch, native):
    import efficient_tagging.hardware as hardware
    root, data, teachers = setup
    monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu": native)
    summary = _label_in_process(data, tmp_path / "auto.h5", teachers[:1])
    expected = "bf16" if native else "32"
    assert summary["precision"] == expected
    stored = TeacherLogits(tmp_path / "auto.h5")
    assert stored.attrs["precision"] == expected
    stored.close()
    explicit = "bf16" if native else "32"
    _label_in_process(data, tmp_path / "explicit.h5", teachers[:1], "--precision", explicit)
    _assert_same(tmp_path / "auto.h5", tmp_path / "explicit.h5")
    # a resumed file keeps its precision: the other one is refused, naming the attribute and both values
    if native:
        with pytest.raises(ValueError, match="precision: file 'bf16', now '32'"):
            _label_in_process(data, tmp_path / "auto.h5", teachers[:1], "--precision", "32")
    else:  # bf16 without native bf16 runs float32 (issue 24: emulated bf16 was 30x slower): the file's own
        _label_in_process(data, tmp_path / "auto.h5", teachers[:1], "--precision", "bf16")
        _assert_same(tmp_path / "auto.h5", tmp_path / "explicit.h5")


def test_native_bf16_needs_the_cpu_instructions(monkeypatch):
    import efficient_tagging.hardware as hardware
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: frozenset({"avx512f", "avx512bw", "avx512vl"}))
    assert hardware.native_bf16("cpu") is False and hardware.resolve_precision("auto") == "32"
    # an explicit bf16 without native bf16 runs float32 (with a logged note), never emulated
    assert hardware.resolve_precision("bf16") == "32" and hardware.resolve_precision("16") == "16"
    with pytest.raises(ValueError, match="precision must be one of"):
        hardware.resolve_precision("fp8")


def test_hdf5_clips_default_to_the_clip_length_stored_with_the_teacher(tmp_path):
    """A teacher trained on short clips (the demo's 2-s teacher) labels them at that length, not
    zero-padded to AudioSet's 10 s (which changed its logits and mAP: 0.927 instead of 0.949 on
    the demo's eval split); --clip_length still overrides, and a teacher storing none gets 10 s."""
    from efficient_tagging import get_model, save_checkpoint
    from efficient_tagging.cli.label import run
    from efficient_tagging.labels import LabelMap

    data = make_tiny_audioset(tmp_path / "clips.h5", num_clips=6)
    torch.manual_seed(0)
    model = get_model(arch="mn", width_mult=0.1, num_classes=4, input_dim_f=32)
    labels = LabelMap.from_names([f"tone_{i}" for i in range(4)])
    teacher = save_checkpoint(tmp_path / "short.pt", model, labels=labels,
                              preprocessing={"sr": 16000, "n_mels": 32, "hopsize": 320, "clip_length": 1.0})
    common = ["--hdf5", str(data), "--teachers", str(teacher), "--batch_size", "4", "--num_workers", "0",
              "--no_progress"]
    run(common + ["--output", str(tmp_path / "default.h5")])
    run(common + ["--output", str(tmp_path / "explicit.h5"), "--clip_length", "1"])
    with h5py.File(tmp_path / "default.h5", "r") as handle:
        assert float(handle.attrs["clip_length"]) == 1.0
    _assert_same(tmp_path / "default.h5", tmp_path / "explicit.h5")

    plain = save_tiny_teacher(tmp_path / "plain.pt")  # stores no clip length: the AudioSet recipe's 10 s
    run(["--hdf5", str(data), "--teachers", str(plain), "--output", str(tmp_path / "plain.h5"), "--batch_size", "4",
         "--num_workers", "0", "--no_progress"])
    with h5py.File(tmp_path / "plain.h5", "r") as handle:
        assert float(handle.attrs["clip_length"]) == 10.0
