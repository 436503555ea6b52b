"""Issue 9, labelling and teacher-logits robustness: each test reproduces one failure of the old code.

Items: 1 (two labelling runs on one output), 4 (SIGINT/SIGTERM during labelling), 7 (teacher
logits matching no / few clips), 8 (duplicate audio_names), 9 (NaN/inf logits), 10 (no
positive labels), 17 (catalogue download errors, wrong class count, blocking debris).
"""
import hashlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, corrupt_clip, labelling_args, make_tiny_audioset, save_tiny_teacher
from efficient_tagging.data.teacher_logits import TeacherLogits, TeacherLogitsWriter, find_shards
from efficient_tagging.locking import OutputLockedError, lock_path_for

SCRIPT = str(REPO / "experiments" / "ex_teacher_labels.py")
WITH_FAULT = str(REPO / "tests" / "label_with_fault.py")  # runs SCRIPT, hit by a fault after N batches
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NUM_CLIPS = 24
CORRUPT = "Ytiny_0005.flac"  # in the second batch of 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("robust_labels")
    data = make_tiny_audioset(root / "train.h5", num_clips=NUM_CLIPS)
    corrupt_clip(data, CORRUPT)
    teachers = {n: save_tiny_teacher(root / f"teacher{n}.pt", num_classes=n) for n in (4, 5)}
    return root, data, teachers


_args = labelling_args


def _rows(path):
    stored = TeacherLogits(path)
    try:
        return {name: stored.lookup(name) for name in stored.names()}, sorted(stored.missing)
    finally:
        stored.close()


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(setup):
    from efficient_tagging.cli.label import run
    root, data, teachers = setup
    run(_args(data, root / "reference.h5", teachers[4]))
    return root / "reference.h5"


def _assert_same_as(path, reference_path):
    rows, missing = _rows(path)
    expected, expected_missing = _rows(reference_path)
    assert sorted(rows) == sorted(expected) and missing == expected_missing
    for name in expected:
        np.testing.assert_array_equal(rows[name], expected[name], err_msg=name)


# ----------------------------------------------------------------------------- item 1: one writer per output

def _writer(path, **kw):
    return TeacherLogitsWriter(path, num_classes=4, attrs={"teachers": ["t"]}, **kw)


def test_second_writer_on_a_live_output_is_refused_and_the_first_keeps_writing(tmp_path):
    path = tmp_path / "out.h5"
    first = _writer(path)
    first.write(["a", "b"], np.ones((2, 4), np.float32))
    first.flush()
    assert lock_path_for(path).read_text().split()[0] == str(os.getpid())
    with pytest.raises(OutputLockedError, match=rf"another process is writing .*out\.h5 \(pid {os.getpid()}\)"):
        _writer(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5", "out.h5.lock"]  # nothing moved aside
    first.write(["c"], np.zeros((1, 4), np.float32))
    first.close()
    assert not lock_path_for(path).exists()  # released and removed on close
    rows, _ = _rows(path)
    assert sorted(rows) == ["a", "b", "c"]
    with _writer(path) as again:  # free again once the first writer closed
        assert again.existing_names() == {"a", "b", "c"}


LABEL_AND_WAIT = """
import sys
from efficient_tagging.data.teacher_logits import TeacherLogitsWriter
import numpy as np
writer = TeacherLogitsWriter(sys.argv[1], num_classes=4, attrs={"teachers": ["other run"]})
writer.write(["Ytiny_0000.flac"], np.ones((1, 4), np.float32))
writer.flush()
print("ready", flush=True)
sys.stdin.readline()
writer.close()
"""

OPEN_AND_WAIT = """
import sys, h5py
handle = h5py.File(sys.argv[1], "r")
print("ready", flush=True)
sys.stdin.readline()
"""


def _holder(snippet, path):
    process = subprocess.Popen([sys.executable, "-c", snippet, str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert process.stdout.readline().strip() == "ready", process.stderr.read()
    return process


def _release(process):
    process.stdin.write("\n")
    process.stdin.flush()
    process.wait(timeout=60)
    assert process.returncode == 0, process.stderr.read()


def test_second_labelling_run_refuses_while_another_process_writes(setup, tmp_path, capsys):
    from efficient_tagging.cli.label import main
    root, data, teachers = setup
    output = tmp_path / "live.h5"
    holder = _holder(LABEL_AND_WAIT, output)
    try:
        before = _digest(output)
        assert main(_args(data, output, teachers[4])) == 1
        err = capsys.readouterr().err
        assert f"another process is writing {output} (pid {holder.pid})" in err and "Traceback" not in err
        assert _digest(output) == before  # the live file was not touched, let alone moved aside
        assert not list(tmp_path.glob("*.unreadable-*"))
    finally:
        _release(holder)
    assert sorted(_rows(output)[0]) == ["Ytiny_0000.flac"]


def test_hdf5_lock_of_another_process_is_not_treated_as_corruption(tmp_path):
    path = tmp_path / "read_elsewhere.h5"
    with _writer(path) as writer:
        writer.write(["a"], np.ones((1, 4), np.float32))
    before = _digest(path)
    reader = _holder(OPEN_AND_WAIT, path)  # e.g. a training run reading the file: HDF5 locks it (errno 11)
    try:
        with pytest.raises(OutputLockedError, match="another process has .* open"):
            _writer(path)
    finally:
        _release(reader)
    assert _digest(path) == before and not list(tmp_path.glob("*.unreadable-*"))
    assert not lock_path_for(path).exists()  # the refused writer released its own lock


def test_a_file_that_really_is_not_hdf5_is_still_moved_aside(tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # HDF5 signature, nothing behind it
    with _writer(path) as writer:
        writer.write(["a"], np.ones((1, 4), np.float32))
    assert len(list(tmp_path.glob("broken.h5.unreadable-*"))) == 1
    assert sorted(_rows(path)[0]) == ["a"]


# ----------------------------------------------------------------------------- item 4: SIGINT / SIGTERM

@pytest.mark.parametrize("name,code", [("TERM", 143), ("INT", 130)])
def test_signal_during_labelling_flushes_says_how_to_continue_and_resumes(setup, reference, tmp_path, name, code):
    root, data, teachers = setup
    output = tmp_path / "stopped.h5"
    # after batch 3 (flushes every 2 batches: batch 3 is only buffered when the signal comes)
    args = _args(data, output, teachers[4])
    result = subprocess.run([sys.executable, WITH_FAULT, name, "3", SCRIPT, *args], capture_output=True,
                            text=True, env=ENV, timeout=120)
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"interrupted by SIG{name}: 12 of {NUM_CLIPS} clips are labelled and saved in {output}" in result.stderr
    command = result.stderr.split("to continue, run:\n", 1)[1].strip().splitlines()[0]
    # exactly the user's command line again: this script with the same flags, nothing dropped or added
    assert shlex.split(command)[1:] == [SCRIPT, *args] and f"--output {output}" in command
    rows, missing = _rows(output)
    assert len(rows) == 11 and missing == [CORRUPT]  # all three finished batches, the buffered one included
    assert not lock_path_for(output).exists()
    # the printed command continues the run (run once as printed, once in-process to keep the test short);
    # the result equals an uninterrupted run
    if name == "TERM":
        again = subprocess.run(command, shell=True, capture_output=True, text=True, env=ENV, timeout=120)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "labelled now: 12  before: 11" in again.stdout
    else:
        from efficient_tagging.cli.label import run
        summary = run(shlex.split(command)[2:])  # without "python SCRIPT"
        assert summary["labelled_now"] == 12 and summary["labelled_before"] == 11
    _assert_same_as(output, reference)


def test_sigterm_from_outside_as_soon_as_the_output_is_opened(setup, reference, tmp_path):
    root, data, teachers = setup
    output = tmp_path / "external.h5"
    process = subprocess.Popen([sys.executable, SCRIPT, *_args(data, output, teachers[4])], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while not lock_path_for(output).exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    # the handlers are in place before the output is opened (and its lock file appears)
    assert process.returncode == 143, err[-3000:]
    assert "to continue, run:" in err and "Traceback" not in err
    from efficient_tagging.cli.label import run
    run(_args(data, output, teachers[4]))
    _assert_same_as(output, reference)


def test_label_hdf5_restores_the_signal_handlers_it_found(setup, tmp_path):
    from efficient_tagging.labelling import label_hdf5, load_teachers
    root, data, teachers = setup
    teacher, names = load_teachers([str(teachers[4])])
    seen = []

    def previous(signum, frame):
        seen.append(signum)

    old = signal.signal(signal.SIGTERM, previous)
    try:
        label_hdf5(teacher, data, tmp_path / "handlers.h5", clip_length=1.0, batch_size=8, progress=False,
                   metrics=False)
        assert signal.getsignal(signal.SIGTERM) is previous
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, old)


def test_library_stop_raises_labelling_interrupted_with_the_partial_summary(setup, tmp_path, monkeypatch):
    from label_with_fault import faulty_write

    from efficient_tagging.labelling import LabellingInterrupted, label_hdf5, load_teachers
    root, data, teachers = setup
    teacher, _ = load_teachers([str(teachers[4])])
    monkeypatch.setattr(TeacherLogitsWriter, "write", faulty_write("INT", 1))  # Ctrl-C during batch 1
    with pytest.raises(LabellingInterrupted) as stopped:
        label_hdf5(teacher, data, tmp_path / "lib.h5", clip_length=1.0, batch_size=4, progress=False,
                   flush_every_batches=100)
    assert stopped.value.signum == signal.SIGINT and stopped.value.summary["labelled_now"] == 4
    assert len(_rows(tmp_path / "lib.h5")[0]) == 4  # the buffered batch was flushed by the clean stop


# ----------------------------------------------------------------------------- item 17: clear errors, no debris

FAILING_DOWNLOAD = """
import sys, urllib.error, urllib.request
def offline(*args, **kwargs):
    raise urllib.error.URLError("offline (test)")
urllib.request.urlopen = offline
from efficient_tagging.cli.label import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_catalogue_teacher_that_cannot_be_downloaded_prints_the_message_only(setup, tmp_path):
    root, data, _ = setup
    output = tmp_path / "never.h5"
    result = subprocess.run([sys.executable, "-c", FAILING_DOWNLOAD, *_args(data, output, "mn10_as"),
                             "--cache_dir", str(tmp_path / "empty_cache")], capture_output=True, text=True, env=ENV,
                            timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "could not download" in result.stderr and str(tmp_path / "empty_cache" / "mn10_as_mAP_471.pt") in \
        result.stderr
    assert not output.exists() and not lock_path_for(output).exists()


def test_teacher_of_another_class_count_fails_before_labelling_and_leaves_nothing(setup, reference, tmp_path,
                                                                                  capsys):
    from efficient_tagging.cli.label import main
    root, data, teachers = setup
    output = tmp_path / "classes.h5"
    shard = ["--num_shards", "2", "--shard_index", "0"]
    assert main(_args(data, output, teachers[5], *shard)) == 1
    err = capsys.readouterr().err
    assert "outputs 5 classes" in err and "have 4" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no shard, no partial, no lock file
    # the next run (the right teacher) is not blocked by anything the failed one left
    assert main(_args(data, output, teachers[4], *shard)) == 0
    assert main(_args(data, output, teachers[4], "--num_shards", "2", "--shard_index", "1")) == 0
    assert main(["--merge", "--output", str(output), "--hdf5", str(data)]) == 0
    assert len(find_shards(output)) == 2
    rows, missing = _rows(output)
    expected, expected_missing = _rows(reference)
    assert sorted(rows) == sorted(expected) and missing == expected_missing


def test_an_empty_output_left_by_a_failed_run_does_not_block_another_teacher(setup, tmp_path):
    from efficient_tagging.cli.label import run
    root, data, teachers = setup
    output = tmp_path / "empty.h5"
    TeacherLogitsWriter(output, num_classes=4, attrs={"teachers": ["a teacher that failed"]}).close()
    summary = run(_args(data, output, teachers[4]))
    assert summary["labelled_now"] == NUM_CLIPS - 1


# ----------------------------------------------------------------------------- items 8, 9: bad teacher files

def _raw_teacher_file(path, names, logits):
    with h5py.File(path, "w") as handle:
        handle.create_dataset("audio_name", data=np.array(names, dtype=object), dtype=h5py.string_dtype("utf-8"))
        handle.create_dataset("logits", data=np.asarray(logits))
        handle.attrs["num_classes"] = np.asarray(logits).shape[1]
    return path


def test_duplicate_audio_names_are_refused_naming_them_and_the_file(tmp_path):
    names = ["a", "b", "c", "b", "d", "a", "b"]
    path = _raw_teacher_file(tmp_path / "dup.h5", names, np.arange(28, dtype=np.float32).reshape(7, 4))
    with pytest.raises(ValueError, match=r"dup\.h5: 2 audio_name\(s\) appear in more than one row") as error:
        TeacherLogits(path)
    assert "'b' (rows 1, 3, 6)" in str(error.value) and "'a' (rows 0, 5)" in str(error.value)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_refused_on_open_naming_file_and_clips(tmp_path, bad_value):
    logits = np.zeros((10, 4), np.float32)
    logits[7, 2] = bad_value  # in the third block of 3 rows
    logits[9, 0] = bad_value
    path = _raw_teacher_file(tmp_path / "bad.h5", [f"clip{i}" for i in range(10)], logits)
    for open_file in (lambda: TeacherLogits(path), lambda: TeacherLogits(path, chunk_rows=3)):
        with pytest.raises(ValueError, match=r"bad\.h5: 2 of 10 teacher-logits rows hold NaN or inf") as error:
            open_file()
        assert "'clip7' (row 7), 'clip9' (row 9)" in str(error.value)
    from efficient_tagging.data.hdf5 import AudioSetDataset
    data = make_tiny_audioset(tmp_path / "data.h5", num_clips=4)
    with pytest.raises(ValueError, match="NaN or inf"):
        AudioSetDataset(data, teacher_logits=path)


def test_finite_check_reads_the_logits_in_blocks(tmp_path, monkeypatch):
    path = _raw_teacher_file(tmp_path / "ok.h5", [f"clip{i}" for i in range(10)], np.zeros((10, 4), np.float16))
    shapes = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        out = original(self, key)
        if self.name == "/logits":
            shapes.append(np.shape(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    TeacherLogits(path, chunk_rows=4)
    assert shapes == [(4, 4), (4, 4), (2, 4)]


def test_writer_refuses_logits_that_overflow_float16(tmp_path):
    with _writer(tmp_path / "half.h5", dtype="float16") as writer:
        with pytest.raises(ValueError, match="too large for float16"):
            writer.write(["a"], np.full((1, 4), 1e6, np.float32))


# ----------------------------------------------------------------------------- items 7, 10: training joins

def _train_config(data, eval_data, out_dir, **overrides):
    from efficient_tagging.train.trainer import TrainConfig
    values = dict(train_hdf5=[str(data)], eval_hdf5=[str(eval_data)], sample_rate=16000, clip_length=1.0,
                  batch_size=4, num_workers=0, epoch_len=4, n_epochs=1, width_mult=0.1, n_mels=32, hop_size=320,
                  warm_up_len=1, ramp_down_start=1, ramp_down_len=1, mixup_alpha=0.0, out_dir=str(out_dir),
                  checkpoint_every_steps=0, progress=False, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust_train")
    return make_tiny_audioset(root / "train.h5", num_clips=8), make_tiny_audioset(root / "eval.h5", num_clips=4,
                                                                                  seed=1)


def _teacher_for(path, names):
    with TeacherLogitsWriter(path, num_classes=4, attrs={"teachers": ["test"]}) as writer:
        if names:
            writer.write(names, np.random.default_rng(0).standard_normal((len(names), 4)).astype(np.float32))
    return path


def test_teacher_logits_matching_no_clip_are_refused_unless_allowed(train_data, tmp_path):
    from efficient_tagging.train.trainer import train
    data, eval_data = train_data
    # another naming of the same clips (no "Y" prefix, no extension): joins nothing
    teacher = _teacher_for(tmp_path / "other_naming.h5", [f"tiny_{i:04d}" for i in range(8)])
    with pytest.raises(ValueError, match=r"other_naming\.h5 match none of the 8 training clips") as error:
        train(_train_config(data, eval_data, tmp_path / "run", teacher_logits=str(teacher)))
    assert "--allow_no_teacher_coverage" in str(error.value) and str(data) in str(error.value)
    assert not (tmp_path / "run" / "last.pt").exists()
    summary = train(_train_config(data, eval_data, tmp_path / "run", teacher_logits=str(teacher),
                                  allow_no_teacher_coverage=True))
    assert summary["teacher_coverage"]["found"] == 0 and summary["teacher_coverage"]["fraction"] == 0.0


def test_low_teacher_coverage_warns_with_the_numbers_and_is_in_the_summary(train_data, tmp_path, caplog):
    from efficient_tagging.data.hdf5 import read_audio_names
    from efficient_tagging.train.trainer import train
    data, eval_data = train_data
    teacher = _teacher_for(tmp_path / "half.h5", read_audio_names(data)[:4])
    with caplog.at_level(logging.WARNING, logger="efficient_tagging"):
        summary = train(_train_config(data, eval_data, tmp_path / "run", teacher_logits=str(teacher)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("50.0% OF THE TRAINING CLIPS HAVE TEACHER LOGITS: 4 of 8" in message for message in warnings)
    coverage = summary["teacher_coverage"]
    assert coverage["found"] == 4 and coverage["missing"] == 4 and coverage["fraction"] == 0.5
    assert coverage["file"] == str(teacher)


def test_allow_no_teacher_coverage_flag_reaches_the_config():
    import argparse

    from efficient_tagging.cli.train_flags import add_training_arguments, config_from_args
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    assert config_from_args(parser.parse_args(["--allow_no_teacher_coverage"])).allow_no_teacher_coverage is True
    assert config_from_args(parser.parse_args([])).allow_no_teacher_coverage is False


def test_training_on_data_without_positive_labels_names_the_file(train_data, tmp_path):
    import shutil

    from efficient_tagging.data.sampling import class_balanced_weights
    from efficient_tagging.train.trainer import train
    data, eval_data = train_data
    unlabelled = tmp_path / "unlabelled.h5"
    shutil.copy(data, unlabelled)
    with h5py.File(unlabelled, "r+") as handle:
        handle["target"][...] = 0
    with pytest.raises(ValueError, match=rf"no positive labels: all 8 clips in {unlabelled} have an all-zero target"):
        train(_train_config(unlabelled, eval_data, tmp_path / "run"))
    with pytest.raises(ValueError, match="no positive labels"):
        class_balanced_weights(np.zeros((5, 3), np.uint8))
