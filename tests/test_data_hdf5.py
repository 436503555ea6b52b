"""AudioSet-format HDF5 (writer, packed targets, dataset) and teacher-logits files."""
import logging
import os
import pickle
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from efficient_tagging.audio import encode_audio
from efficient_tagging.data import (AudioSetDataset, AudioSetHDF5Writer, TeacherLogits, TeacherLogitsWriter,
                                    pack_targets, read_audio_names, read_label_map, unpack_targets)
from efficient_tagging.labels import LabelMap

SR = 32000
CLIP = 0.5  # seconds: short clips keep the tests fast


def tone(frequency, seconds=CLIP, rate=SR, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def multi_hot(num_classes, *active):
    target = np.zeros(num_classes, dtype=np.uint8)
    target[list(active)] = 1
    return target


def make_hdf5(path, names, num_classes=13, rate=SR, codec="mp3", **writer_kwargs):
    """One clip per name: a tone at 300 + 100·i Hz, labelled with classes i and (i + 3) % C."""
    with AudioSetHDF5Writer(path, num_classes, sample_rate=rate, **writer_kwargs) as writer:
        for i, name in enumerate(names):
            writer.add(name, encode_audio(tone(300 + 100 * i, rate=rate), rate, codec),
                       multi_hot(num_classes, i % num_classes, (i + 3) % num_classes))
    return path


def correlation(a, b):
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


# ----------------------------------------------------------------------------- targets and writer

def test_pack_unpack_targets_with_class_count_not_a_multiple_of_8():
    targets = np.zeros((3, 13), dtype=np.uint8)
    targets[0, [0, 12]] = 1
    targets[2, 7] = 1
    packed = pack_targets(targets)
    assert packed.dtype == np.uint8 and packed.shape == (3, 2)
    # the reference layout: np.packbits along the last axis
    np.testing.assert_array_equal(packed, np.packbits(targets, axis=-1))
    unpacked = unpack_targets(packed, 13)
    assert unpacked.dtype == np.float32
    np.testing.assert_array_equal(unpacked, targets)
    np.testing.assert_array_equal(pack_targets(targets.astype(bool)), packed)
    with pytest.raises(ValueError, match="multi-hot"):
        pack_targets(np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="17 classes need 3"):
        unpack_targets(packed, 17)


def test_writer_layout_attrs_and_atomic_rename(tmp_path):
    path = tmp_path / "clips.hdf"
    labels = LabelMap.from_names([f"class {i}" for i in range(13)], [f"/m/{i}" for i in range(13)])
    with AudioSetHDF5Writer(path, 13, label_map=labels, block_rows=2) as writer:
        assert (tmp_path / "clips.hdf.partial").exists() and not path.exists()
        for i, name in enumerate(["Ya.mp3", "Ybbbbbb.mp3", "Yc.mp3"]):
            writer.add(name, encode_audio(tone(440), SR), multi_hot(13, i, 12))
        with pytest.raises(ValueError, match="duplicate"):
            writer.add("Ya.mp3", b"xx", multi_hot(13, 0))
        with pytest.raises(ValueError, match="shape"):
            writer.add("Yd.mp3", b"xx", np.zeros(12))
        with pytest.raises(ValueError, match="empty"):
            writer.add("Yd.mp3", b"", multi_hot(13, 0))
        writer.attrs.update(source="unit test", settings={"clip_length": 0.5})
    assert path.exists() and not (tmp_path / "clips.hdf.partial").exists()
    with h5py.File(path, "r") as f:
        assert f["audio_name"].dtype == np.dtype("S11")
        assert f["mp3"].dtype == h5py.vlen_dtype(np.uint8)
        assert f["target"].shape == (3, 2) and f["target"].dtype == np.uint8
        assert f.attrs["num_classes"] == 13 and f.attrs["sample_rate"] == SR
        assert f.attrs["source"] == "unit test" and f.attrs["settings"] == '{"clip_length": 0.5}'
    assert read_audio_names(path) == ["Ya.mp3", "Ybbbbbb.mp3", "Yc.mp3"]
    assert read_label_map(path) == labels


def test_writer_leaves_nothing_behind_on_error(tmp_path):
    path = tmp_path / "broken.hdf"
    with pytest.raises(RuntimeError, match="boom"):
        with AudioSetHDF5Writer(path, 5) as writer:
            writer.add("Ya.mp3", encode_audio(tone(440), SR), multi_hot(5, 1))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- dataset

def test_dataset_items_resample_and_pad(tmp_path):
    # Encoded at 16 kHz, read at 32 kHz: the tone must stay at its frequency (proper resampling).
    path = make_hdf5(tmp_path / "a.hdf", ["Y0.mp3", "Y1.mp3"], rate=16000)
    dataset = AudioSetDataset(path, sample_rate=SR, clip_length=1.0)
    assert len(dataset) == 2 and dataset.num_classes == 13
    item = dataset[1]
    assert set(item) >= {"waveform", "target", "teacher_logits", "has_teacher", "index", "audio_name", "skipped"}
    assert item["waveform"].dtype == torch.float32 and item["waveform"].shape == (SR,)
    assert item["audio_name"] == "Y1.mp3" and item["index"] == 1 and item["skipped"] == 0
    np.testing.assert_array_equal(item["target"].numpy(), multi_hot(13, 1, 4))
    assert item["target"].dtype == torch.float32
    assert not item["has_teacher"] and torch.equal(item["teacher_logits"], torch.zeros(13))
    wave = item["waveform"].numpy()
    assert np.abs(wave[int(0.55 * SR):]).max() == 0  # 0.5 s of audio, zero-padded to 1 s
    spectrum = np.abs(np.fft.rfft(wave[: SR // 2]))
    assert abs(np.fft.rfftfreq(SR // 2, 1 / SR)[spectrum.argmax()] - 400) < 5
    assert correlation(wave[: SR // 2], tone(400)) > 0.99
    np.testing.assert_array_equal(dataset.targets, np.stack([multi_hot(13, 0, 3), multi_hot(13, 1, 4)]))
    assert dataset.audio_names == ["Y0.mp3", "Y1.mp3"]
    # truncation to a shorter clip length
    assert AudioSetDataset(path, clip_length=0.25)[0]["waveform"].shape == (SR // 4,)


def test_reads_reference_files_without_attributes(tmp_path):
    # The layout of the users' PaSST/EfficientAT files: no attributes, 527 classes, S-names.
    path = tmp_path / "passt.hdf"
    targets = np.zeros((2, 527), dtype=np.uint8)
    targets[0, [0, 526]] = 1
    targets[1, 137] = 1
    with h5py.File(path, "w") as f:
        f.create_dataset("audio_name", data=np.array([b"Y--4gqARaEJE.mp3", b"Y--aaILOrkII.mp3"], dtype="S20"))
        mp3 = f.create_dataset("mp3", shape=(2,), dtype=h5py.vlen_dtype(np.uint8))
        for i in range(2):
            mp3[i] = np.frombuffer(encode_audio(tone(500 + 200 * i), SR), dtype=np.uint8)
        f.create_dataset("target", data=np.packbits(targets, axis=-1))
    dataset = AudioSetDataset(path, clip_length=CLIP)
    assert dataset.num_classes == 527
    item = dataset[0]
    assert item["audio_name"] == "Y--4gqARaEJE.mp3"
    np.testing.assert_array_equal(item["target"].numpy(), targets[0])
    assert correlation(item["waveform"].numpy(), tone(500)) > 0.99
    assert read_label_map(path) is None
    with pytest.raises(ValueError, match="num_classes=13"):
        AudioSetDataset(path, num_classes=13)


def test_num_classes_mismatch_is_reported(tmp_path):
    path = make_hdf5(tmp_path / "a.hdf", ["Y0.mp3"])
    with pytest.raises(ValueError, match="num_classes=12"):
        AudioSetDataset(path, num_classes=12)
    other = make_hdf5(tmp_path / "b.hdf", ["Y1.mp3"], num_classes=20)
    with pytest.raises(ValueError, match="classes"):
        AudioSetDataset([path, other])


def _replace_clip(path, row, payload):
    with h5py.File(path, "r+") as f:
        f["mp3"][row] = np.frombuffer(payload, dtype=np.uint8)


@pytest.mark.parametrize("payload", [np.random.default_rng(0).bytes(3000), b""], ids=["corrupt", "empty"])
def test_bad_clips_are_replaced_logged_and_counted(tmp_path, caplog, payload):
    path = make_hdf5(tmp_path / "a.hdf", [f"Y{i}.mp3" for i in range(4)])
    _replace_clip(path, 2, payload)
    dataset = AudioSetDataset(path, clip_length=CLIP, seed=3)
    with caplog.at_level(logging.WARNING):
        item = dataset[2]
    assert item["audio_name"] != "Y2.mp3" and item["index"] != 2 and item["skipped"] == 1
    assert torch.isfinite(item["waveform"]).all() and item["waveform"].abs().max() > 0.1
    # the replacement is a complete, consistent item of another clip
    np.testing.assert_array_equal(item["target"].numpy(), dataset.targets[item["index"]])
    assert dataset.skipped_clips == 1 and dataset.skipped_names == [f"{path}:Y2.mp3"]
    assert "Y2.mp3" in caplog.text and str(path) in caplog.text
    # deterministic replacement
    assert dataset[2]["index"] == item["index"] and dataset.skipped_clips == 2


def test_all_clips_bad_is_an_error_not_silence(tmp_path):
    """A clip and every replacement drawn for it undecodable: an error naming the file and the clip (it
    used to return silence without labels, and training went on over it; issue 24)."""
    from efficient_tagging.data.clip_dataset import UndecodableData

    path = make_hdf5(tmp_path / "a.hdf", ["Y0.mp3", "Y1.mp3"])
    _replace_clip(path, 0, b"garbage")
    _replace_clip(path, 1, b"")
    dataset = AudioSetDataset(path, clip_length=CLIP, max_resample_retries=3)
    with pytest.raises(UndecodableData, match=r"a\.hdf.*clip 0 \(Y0\.mp3\) and the 3 clips drawn to replace it"):
        dataset[0]


def test_several_files_are_concatenated(tmp_path):
    first = make_hdf5(tmp_path / "balanced.hdf", ["Ya.mp3", "Yb.mp3"])
    second = make_hdf5(tmp_path / "unbalanced.hdf", ["Yc.mp3", "Yd.mp3", "Ye.mp3"])
    dataset = AudioSetDataset([first, second], clip_length=CLIP)
    assert len(dataset) == 5
    assert dataset.audio_names == ["Ya.mp3", "Yb.mp3", "Yc.mp3", "Yd.mp3", "Ye.mp3"]
    assert dataset.locate(3) == (1, 1) and dataset.locate(-1) == (1, 2)
    item = dataset[3]
    assert item["audio_name"] == "Yd.mp3" and item["index"] == 3
    np.testing.assert_array_equal(item["target"].numpy(), multi_hot(13, 1, 4))
    assert dataset.targets.shape == (5, 13)
    with pytest.raises(IndexError):
        dataset[5]


def test_dataloader_workers_open_files_lazily(tmp_path):
    paths = [make_hdf5(tmp_path / "a.hdf", [f"Ya{i}.mp3" for i in range(3)]),
             make_hdf5(tmp_path / "b.hdf", [f"Yb{i}.mp3" for i in range(3)])]
    dataset = AudioSetDataset(paths, clip_length=CLIP)
    dataset[0]  # opens a handle in this process: workers must not reuse it
    assert dataset._handles
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._handles == {} and clone[4]["audio_name"] == "Yb1.mp3"
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    names, skipped = [], 0
    for batch in loader:
        assert batch["waveform"].shape == (len(batch["audio_name"]), SR // 2)
        names.extend(batch["audio_name"])
        skipped += int(batch["skipped"].sum())
    assert names == dataset.audio_names and skipped == 0


# ----------------------------------------------------------------------------- teacher logits

def test_teacher_logits_joined_by_name(tmp_path):
    names = [f"Y{i}.mp3" for i in range(4)]
    path = make_hdf5(tmp_path / "a.hdf", names)
    logits = np.random.default_rng(0).normal(size=(4, 13)).astype(np.float32)
    # rows in another order, and no row for Y1
    order = [3, 0, 2]
    with TeacherLogitsWriter(tmp_path / "teacher.h5", 13, {"teachers": ["passt_a", "passt_b"],
                                                           "ensemble": "mean"}) as writer:
        writer.write([names[i] for i in order], logits[order])
    teacher = TeacherLogits(tmp_path / "teacher.h5")
    assert len(teacher) == 3 and "Y3.mp3" in teacher and "Y1.mp3" not in teacher
    assert teacher.attrs["teachers"] == ["passt_a", "passt_b"] and teacher.attrs["num_classes"] == 13
    assert teacher.coverage(names) == (3, 1)

    dataset = AudioSetDataset(path, clip_length=CLIP, teacher_logits=tmp_path / "teacher.h5")
    assert dataset.teacher_coverage() == (3, 1)
    for i in range(4):
        item = dataset[i]
        if i == 1:
            assert not item["has_teacher"] and torch.equal(item["teacher_logits"], torch.zeros(13))
        else:
            assert item["has_teacher"]
            np.testing.assert_array_equal(item["teacher_logits"].numpy(), logits[i])
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["has_teacher"].tolist() == [True, False, True, True]
    assert int((~batch["has_teacher"]).sum()) == 1  # what a trainer counts as masked
    with pytest.raises(ValueError, match="classes"):
        AudioSetDataset(make_hdf5(tmp_path / "b.hdf", names, num_classes=20), teacher_logits=teacher)


def test_teacher_logits_float16_and_duplicates(tmp_path):
    path = tmp_path / "t16.h5"
    with TeacherLogitsWriter(path, 3, {"source": "demo"}, dtype="float16") as writer:
        assert writer.write(["a", "b"], np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)) == 2
        assert writer.write(["b", "c"], torch.tensor([[0.0, 0, 0], [7, 8, 9]])) == 1
        assert writer.duplicates_skipped == 1
        with pytest.raises(ValueError, match="shape"):
            writer.write(["d"], np.zeros((1, 4)))
        with pytest.raises(ValueError, match="non-finite.*'d'"):
            writer.write(["d"], np.full((1, 3), np.nan))
    teacher = TeacherLogits(path)
    assert teacher.dtype == np.float16
    lookup = teacher.lookup("c")
    assert lookup.dtype == np.float32 and lookup.tolist() == [7, 8, 9]
    assert teacher.lookup("b").tolist() == [4, 5, 6] and teacher.lookup("zzz") is None


CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from efficient_tagging.data.teacher_logits import TeacherLogitsWriter
    writer = TeacherLogitsWriter(sys.argv[1], 4, {"teachers": ["t"]})
    writer.write([f"clip{i}" for i in range(5)], np.arange(20, dtype=np.float32).reshape(5, 4))
    writer.flush()
    writer.write([f"clip{i}" for i in range(5, 8)], np.ones((3, 4), dtype=np.float32))
    os.kill(os.getpid(), signal.SIGKILL)  # no flush, no close
""")


def test_teacher_writer_survives_kill_and_resumes(tmp_path):
    path = tmp_path / "teacher.h5"
    result = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(path)], capture_output=True, timeout=60)
    assert result.returncode == -9, result.stderr.decode()
    teacher = TeacherLogits(path)  # readable after the kill
    assert len(teacher) == 5 and "clip5" not in teacher
    np.testing.assert_array_equal(teacher.lookup("clip4"), np.arange(16, 20, dtype=np.float32))
    teacher.close()  # HDF5 refuses to open a file for writing that this process has open for reading

    with pytest.raises(ValueError, match="teachers"):
        TeacherLogitsWriter(path, 4, {"teachers": ["another"]})
    with pytest.raises(ValueError, match="num_classes=5"):
        TeacherLogitsWriter(path, 5, {"teachers": ["t"]})

    writer = TeacherLogitsWriter(path, 4, {"teachers": ["t"]})
    assert writer.existing_names() == {f"clip{i}" for i in range(5)}
    todo = [f"clip{i}" for i in range(8) if f"clip{i}" not in writer.existing_names()]
    writer.write(todo, np.full((len(todo), 4), 2.0, dtype=np.float32))
    writer.close()
    teacher = TeacherLogits(path)
    assert len(teacher) == 8 and teacher.lookup("clip6").tolist() == [2.0] * 4
    assert teacher.attrs["num_rows"] == 8


def test_uncommitted_rows_are_ignored_and_trimmed(tmp_path):
    # A writer killed inside flush (rows appended, counter not yet advanced).
    path = tmp_path / "teacher.h5"
    with TeacherLogitsWriter(path, 2, {}) as writer:
        writer.write(["a", "b"], np.ones((2, 2)))
    with h5py.File(path, "r+") as f:
        f["audio_name"].resize((3,))
        f["audio_name"][2] = "c"
        f["logits"].resize((3, 2))
    reader = TeacherLogits(path)
    assert len(reader) == 2 and "c" not in reader
    reader.close()
    writer = TeacherLogitsWriter(path, 2, {})
    assert writer.existing_names() == {"a", "b"}
    writer.close()
    with h5py.File(path, "r") as f:
        assert f["logits"].shape == (2, 2)
    # resume=False starts afresh
    TeacherLogitsWriter(path, 2, {}, resume=False).close()
    reader = TeacherLogits(path)
    assert len(reader) == 0
    reader.close()


def test_teacher_logits_pickle_and_fork_safety(tmp_path):
    path = tmp_path / "teacher.h5"
    with TeacherLogitsWriter(path, 2, {}) as writer:
        writer.write(["a", "b"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    teacher = TeacherLogits(path)
    assert teacher.lookup("b").tolist() == [3.0, 4.0]
    clone = pickle.loads(pickle.dumps(teacher))
    assert clone._handle is None and clone.lookup("a").tolist() == [1.0, 2.0]
    teacher._pid = os.getpid() + 1  # as if inherited through fork: must reopen, not reuse
    assert teacher.lookup("a").tolist() == [1.0, 2.0] and teacher._pid == os.getpid()
