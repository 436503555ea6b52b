"""The training data pipeline: AudioSetDataset items equal the plain decode -> resample -> pad path, and the
trainer reports how much of its step time it spends waiting for data."""
import math
import time

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from efficient_tagging.audio import decode_audio, encode_audio, pad_or_truncate, resample
from efficient_tagging.data import AudioSetDataset, AudioSetHDF5Writer, TeacherLogitsWriter, unpack_targets
from efficient_tagging.train.trainer import TrainConfig, data_wait_record, train

NUM_CLASSES = 11
CLIP_LENGTH = 1.0
SAMPLE_RATE = 32000


def _clip(rng, seconds, rate):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t) + 0.05 * rng.standard_normal(len(t))
    return wave.astype(np.float32)


def _make_file(path, rate, lengths, prefix, seed):
    """Clips shorter and longer than CLIP_LENGTH (padding and cutting), mp3 and flac, at `rate`."""
    rng = np.random.default_rng(seed)
    names = []
    with AudioSetHDF5Writer(path, NUM_CLASSES, sample_rate=rate) as writer:
        for i, seconds in enumerate(lengths):
            name = f"Y{prefix}{i:03d}.mp3"
            target = np.zeros(NUM_CLASSES, np.uint8)
            target[rng.choice(NUM_CLASSES, size=1 + i % 3, replace=False)] = 1
            writer.add(name, encode_audio(_clip(rng, seconds, rate), rate, "mp3" if i % 2 == 0 else "flac"), target)
            names.append(name)
    return names


@pytest.fixture(scope="module")
def pipeline_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    # 32 kHz (the AudioSet case: no resampling) and 44.1 kHz (resampled) files, read as one dataset
    names = _make_file(root / "a.h5", SAMPLE_RATE, [0.4, 1.0, 1.6, 0.7, 1.3, 0.9], "a", 0)
    names += _make_file(root / "b.h5", 44100, [0.6, 1.4, 1.0], "b", 1)
    teacher = root / "teacher.h5"
    rng = np.random.default_rng(2)
    covered = [name for i, name in enumerate(names) if i % 4 != 1]  # a few clips without teacher logits
    logits = rng.standard_normal((len(covered), NUM_CLASSES)).astype(np.float32)
    with TeacherLogitsWriter(teacher, NUM_CLASSES, {"teachers": ["test"]}) as writer:
        writer.write(covered[::-1], logits[::-1])  # stored in another order than the clips: joined by name
    return [root / "a.h5", root / "b.h5"], teacher, names, dict(zip(covered, logits))


def _expected_items(paths, names, teacher_rows):
    """Every item the straightforward way: one fresh h5py read per field, decode, cut with the margin,
    resample, pad/cut, unpack, teacher row by name (the pipeline as it was before it was made faster)."""
    items = []
    for path in paths:
        with h5py.File(path, "r") as handle:
            for row in range(len(handle["audio_name"])):
                name = handle["audio_name"][row].decode()
                samples, rate = decode_audio(handle["mp3"][row], name=name)
                samples = samples[: int(np.ceil(CLIP_LENGTH * rate)) + 64]
                waveform = pad_or_truncate(resample(samples, rate, SAMPLE_RATE), int(CLIP_LENGTH * SAMPLE_RATE))
                logits = teacher_rows.get(name)
                items.append({"waveform": waveform.contiguous(),
                              "target": torch.from_numpy(unpack_targets(handle["target"][row], NUM_CLASSES)),
                              "teacher_logits": (torch.from_numpy(logits) if logits is not None
                                                 else torch.zeros(NUM_CLASSES)),
                              "has_teacher": torch.tensor(logits is not None), "audio_name": name})
    assert [item["audio_name"] for item in items] == names
    return items


def _assert_same(item, expected, index):
    assert item["audio_name"] == expected["audio_name"] and item["index"] == index
    assert item["skipped"] == 0 and item["decoded"] is True
    for key in ("waveform", "target", "teacher_logits", "has_teacher"):
        assert item[key].dtype == expected[key].dtype, key
        assert torch.equal(item[key], expected[key]), (key, expected["audio_name"])
    assert item["waveform"].is_contiguous()


@pytest.mark.parametrize("names_preloaded", [False, True])
def test_items_equal_the_plain_decode_path(pipeline_data, names_preloaded):
    paths, teacher, names, teacher_rows = pipeline_data
    expected = _expected_items(paths, names, teacher_rows)
    dataset = AudioSetDataset(paths, sample_rate=SAMPLE_RATE, clip_length=CLIP_LENGTH, teacher_logits=teacher)
    if names_preloaded:  # what the trainer does (teacher coverage reads all names in the parent)
        assert dataset.teacher_coverage() == (len(teacher_rows), len(names) - len(teacher_rows))
    assert set(dataset[0]) == {"waveform", "target", "teacher_logits", "has_teacher", "index", "audio_name",
                               "skipped", "decoded"}
    for index in [*range(len(names)), 3, 3, -1]:  # repeated reads, a negative index
        _assert_same(dataset[index], expected[index % len(names)], index % len(names))
    dataset.close()
    _assert_same(dataset[4], expected[4], 4)  # reopened after close


def test_items_through_worker_processes_equal_the_plain_path(pipeline_data):
    paths, teacher, names, teacher_rows = pipeline_data
    expected = _expected_items(paths, names, teacher_rows)
    dataset = AudioSetDataset(paths, sample_rate=SAMPLE_RATE, clip_length=CLIP_LENGTH, teacher_logits=teacher)
    dataset[0]  # handles opened in the parent must not leak into the forked workers
    order = [5, 0, 8, 2, 7, 1, 6, 3, 4]
    loader = DataLoader(torch.utils.data.Subset(dataset, order), batch_size=3, num_workers=2)
    position = 0
    for batch in loader:
        for j in range(len(batch["audio_name"])):
            index = order[position]
            item = {key: batch[key][j] for key in batch}
            item["index"], item["skipped"] = int(item["index"]), int(item["skipped"])
            item["decoded"] = bool(item["decoded"])
            _assert_same(item, expected[index], index)
            position += 1
    assert position == len(order)


def test_non_finite_resampled_samples_are_an_undecodable_clip(pipeline_data, monkeypatch, caplog):
    paths, _, names, _ = pipeline_data
    dataset = AudioSetDataset(paths[1], sample_rate=SAMPLE_RATE, clip_length=CLIP_LENGTH, replace_undecodable=False)
    from efficient_tagging.data import clip_dataset as base

    def poisoned(samples, orig, target):
        out = resample(samples, orig, target)
        out[17] = float("nan")
        return out

    monkeypatch.setattr(base, "resample", poisoned)
    with caplog.at_level("WARNING"):
        item = dataset[0]  # a 44.1 kHz clip: resampled, then checked
    assert item["decoded"] is False and item["skipped"] == 1 and dataset.skipped_clips == 1
    assert "non-finite samples after resampling" in caplog.text and names[6] in caplog.text


# ----------------------------------------------------------------------------- data wait in the trainer

def test_data_wait_record_is_a_bounded_fraction():
    assert data_wait_record(3, 1.0, 4.0) == {"epoch": 3, "data_wait_fraction": 0.25, "data_wait_s": 1.0,
                                             "step_time_s": 4.0}
    assert data_wait_record(1, 5.0, 4.0)["data_wait_fraction"] == 1.0  # clock jitter never gives > 1
    assert data_wait_record(1, -0.1, 4.0)["data_wait_fraction"] == 0.0
    assert data_wait_record(1, 0.0, 0.0)["data_wait_fraction"] == 0.0  # an epoch without steps


class InMemoryClips(Dataset):
    """Precomputed 1-s clips at 16 kHz with the item fields the trainer reads; `delay` seconds per item."""

    task = "multilabel"
    teacher_logits = None
    label_map = None

    def __init__(self, count, delay=0.0, seed=0):
        rng = np.random.default_rng(seed)
        self.num_classes = 3
        self.targets = np.eye(3, dtype=np.uint8)[np.arange(count) % 3]
        self.waveforms = torch.from_numpy(0.1 * rng.standard_normal((count, 16000)).astype(np.float32))
        self.delay = delay

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        if self.delay:
            time.sleep(self.delay)
        return {"waveform": self.waveforms[index], "target": torch.from_numpy(self.targets[index].astype(np.float32)),
                "teacher_logits": torch.zeros(3), "has_teacher": torch.tensor(False), "index": index,
                "audio_name": f"clip{index}", "skipped": 0, "decoded": True}


def _short_run(train_set, out_dir):
    config = TrainConfig(sample_rate=16000, clip_length=1.0, batch_size=2, num_workers=0, epoch_len=8, n_epochs=2,
                         width_mult=0.1, n_mels=32, sampler="uniform", warm_up_len=1, ramp_down_start=1,
                         ramp_down_len=1, mixup_alpha=0.0, out_dir=str(out_dir), checkpoint_every_steps=0,
                         progress=False, kd_lambda=0.0, seed=0)
    torch.set_num_threads(1)
    reported: list[str] = []  # the epoch lines the commands print
    summary = train(config, datasets=(train_set, InMemoryClips(4, seed=1)), report_epoch=reported.append)
    printed = "\n".join(reported)
    timing = summary["epoch_timing"]
    assert [t["epoch"] for t in timing] == [1, 2]
    for record in timing:
        assert 0.0 <= record["data_wait_fraction"] <= 1.0 and math.isfinite(record["data_wait_fraction"])
        assert 0.0 <= record["data_wait_s"] <= record["step_time_s"]
        assert f"epoch {record['epoch']}/2: " in printed and f"data_wait {record['data_wait_fraction']:.0%}" in printed
    # the history (what a resumed run must reproduce exactly) holds no timing besides train_clips_per_s
    assert all("data_wait_fraction" not in record for record in summary["history"])
    return [t["data_wait_fraction"] for t in timing]


def test_trainer_reports_data_wait_slow_vs_fast_dataset(tmp_path):
    threads = torch.get_num_threads()
    try:
        # 4 steps of 2 items per epoch; 0.2 s of sleep per item (0.4 s per step) dwarfs a step of the
        # tiny model, while the in-memory set hands a batch over in microseconds
        slow = _short_run(InMemoryClips(8, delay=0.2), tmp_path / "slow")
        fast = _short_run(InMemoryClips(8), tmp_path / "fast")
    finally:
        torch.set_num_threads(threads)
    assert min(slow) > 0.6, slow
    assert max(fast) < 0.3, fast
