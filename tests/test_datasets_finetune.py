"""File datasets for fine-tuning (ESC-50, DCASE2020 Task 1, CSV, class folders) in their exact layouts.

Audio is synthetic (a tone per clip, so the decoded content can be checked) at the datasets' real
sample rates and lengths: ESC-50 44.1 kHz 5 s, TAU Urban Acoustic Scenes 2020 Mobile 44.1 kHz 10 s.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from efficient_tagging.audio import encode_audio
from efficient_tagging.data import AudioSetDataset, TeacherLogits, TeacherLogitsWriter
from efficient_tagging.data.datasets import (DCASE20, DCASE20_SCENES, ESC50, CSVDataset, DatasetLayoutError,
                                             FolderDataset, device_from_filename, esc50_folds, esc50_train_eval,
                                             estimate_clip_length, split_indices)
from efficient_tagging.data.datasets import audio_files as datasets_base
from efficient_tagging.data.datasets.esc50 import ESC50_CATEGORIES

from conftest import make_tiny_audioset


def tone(frequency: float, seconds: float, sample_rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, sample_rate: int, codec: str = "wav") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_audio(samples, sample_rate, codec))
    return path


def dominant_frequency(waveform: torch.Tensor, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform.numpy()))
    return float(np.argmax(spectrum) * sample_rate / waveform.numel())


# ----------------------------------------------------------------------------- ESC-50

ESC50_HEADER = "filename,fold,target,category,esc10,src_file,take\n"


def esc50_frequency(target: int) -> float:
    return 200.0 + 50.0 * target


@pytest.fixture(scope="module")
def esc50_dir(tmp_path_factory) -> Path:
    """meta/esc50.csv + audio/ (44.1 kHz, 5 s wav), two clips per fold, the official naming."""
    root = tmp_path_factory.mktemp("ESC-50-master")
    lines = [ESC50_HEADER]
    for fold in range(1, 6):
        for k in range(2):
            target = (fold * 7 + k * 13) % 50
            name = f"{fold}-{100000 + 10 * fold + k}-A-{target}.wav"
            lines.append(f"{name},{fold},{target},{ESC50_CATEGORIES[target]},False,{100000 + fold},A\n")
            write_audio(root / "audio" / name, tone(esc50_frequency(target), 5.0, 44100), 44100)
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("".join(lines))
    return root


def test_esc50_held_out_fold_never_in_training_and_items_are_one_hot(esc50_dir):
    assert esc50_folds(3) == ([1, 2, 4, 5], [3])
    train, evaluation = esc50_train_eval(esc50_dir, 3)
    assert (len(train), len(evaluation)) == (8, 2)
    assert set(train.clip_folds) == {1, 2, 4, 5} and set(evaluation.clip_folds) == {3}
    assert not set(train.audio_names) & set(evaluation.audio_names)
    assert all(name.startswith("3-") for name in evaluation.audio_names)
    assert train.audio_dir == esc50_dir / "audio"  # no audio_32k/ here
    assert train.num_classes == evaluation.num_classes == 50 and train.task == "multiclass"
    assert train.label_map.names == ESC50_CATEGORIES  # ordered by target, all 50
    assert train.targets.shape == (8, 50) and (train.targets.sum(axis=1) == 1).all()

    item = evaluation[1]
    target = int(item["audio_name"].rsplit("-", 1)[1].split(".")[0])
    assert item["waveform"].shape == (5 * 32000,) and item["waveform"].dtype == torch.float32
    assert item["label"] == target and item["target"].argmax() == target and item["target"].sum() == 1
    assert item["fold"] == 3 and item["decoded"] and item["skipped"] == 0 and not item["has_teacher"]
    assert set(item) >= {"waveform", "target", "teacher_logits", "has_teacher", "index", "audio_name", "skipped",
                         "decoded", "label"}
    # 44.1 kHz decoded and resampled to 32 kHz: the tone is where it was, the clip is full
    assert dominant_frequency(item["waveform"], 32000) == pytest.approx(esc50_frequency(target), abs=1.0)
    assert item["waveform"][-32000:].abs().max() > 0.25

    batch = next(iter(DataLoader(evaluation, batch_size=2)))  # the trainer's default collate
    assert batch["waveform"].shape == (2, 160000) and batch["label"].tolist() == list(evaluation.labels)


def test_esc50_teacher_logits_join_by_filename(esc50_dir, tmp_path):
    train = ESC50(esc50_dir, [1, 2], clip_length=1.0)
    names = train.audio_names
    logits = np.arange(2 * 50, dtype=np.float32).reshape(2, 50)
    with TeacherLogitsWriter(tmp_path / "teacher.h5", 50, {"teachers": ["t"]}) as writer:
        writer.write([names[2], names[0]], logits)
    dataset = ESC50(esc50_dir, [1, 2], clip_length=1.0, teacher_logits=tmp_path / "teacher.h5")
    assert dataset.teacher_coverage() == (2, 2)
    assert torch.equal(dataset[2]["teacher_logits"], torch.from_numpy(logits[0])) and dataset[2]["has_teacher"]
    assert not dataset[1]["has_teacher"] and dataset[1]["teacher_logits"].abs().sum() == 0
    with TeacherLogitsWriter(tmp_path / "wrong.h5", 10, {"teachers": ["t"]}) as writer:
        writer.write(names[:1], np.zeros((1, 10), np.float32))
    with pytest.raises(ValueError, match="10 classes"):
        ESC50(esc50_dir, [1], teacher_logits=TeacherLogits(tmp_path / "wrong.h5"))


def test_esc50_audio_folder_choice_and_undecodable_clip(tmp_path):
    root = tmp_path / "esc"
    rows = [ESC50_HEADER]
    for i, target in enumerate([0, 1, 2]):
        name = f"1-{i}-A-{target}.wav"
        rows.append(f"{name},1,{target},{ESC50_CATEGORIES[target]},True,{i},A\n")
        write_audio(root / "audio" / name, tone(esc50_frequency(target), 0.5, 44100), 44100)
        write_audio(root / "audio_32k" / name, tone(esc50_frequency(target), 0.5, 32000), 32000)
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("".join(rows))
    assert ESC50(root, [1]).audio_dir == root / "audio_32k"  # the reference's folder, at its rate
    assert ESC50(root, [1], sample_rate=16000).audio_dir == root / "audio"  # the originals for another rate
    assert ESC50(root, [1], audio_folder="audio").audio_dir == root / "audio"

    (root / "audio_32k" / "1-1-A-1.wav").write_bytes(b"RIFF not really a wav file")
    dataset = ESC50(root, [1], clip_length=0.5)
    item = dataset[1]
    assert item["skipped"] == 1 and item["index"] != 1 and item["decoded"]
    assert item["label"] == int(item["audio_name"][-5]) and dataset.skipped_clips == 1
    assert "1-1-A-1.wav" in dataset.skipped_names[0]
    strict = ESC50(root, [1], clip_length=0.5, replace_undecodable=False)
    item = strict[1]
    assert not item["decoded"] and item["label"] == 1 and item["waveform"].abs().sum() == 0


def test_esc50_errors_name_the_missing_piece(esc50_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"meta/esc50\.csv.*Expected layout"):
        ESC50(tmp_path, [1])
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text("filename,target,category\n1-1-A-0.wav,0,dog\n")
    with pytest.raises(DatasetLayoutError, match=r"missing column\(s\) \['fold'\]"):
        ESC50(tmp_path, [1])
    (tmp_path / "meta" / "esc50.csv").write_text(ESC50_HEADER + "1-1-A-0.wav,1,0,dog,True,1,A\n")
    with pytest.raises(FileNotFoundError, match=r"neither .*audio nor .*audio_32k"):
        ESC50(tmp_path, [1])
    (tmp_path / "audio").mkdir()
    with pytest.raises(FileNotFoundError, match=r"1-1-A-0\.wav"):
        ESC50(tmp_path, [1])
    (tmp_path / "meta" / "esc50.csv").write_text(ESC50_HEADER + "1-1-A-0.wav,1,x,dog,True,1,A\n")
    with pytest.raises(DatasetLayoutError, match=r"esc50\.csv:2: column 'target' must be an integer"):
        ESC50(tmp_path, [1])
    with pytest.raises(ValueError, match="fold must be one of"):
        esc50_folds(6)
    with pytest.raises(ValueError, match="folds must be"):
        ESC50(esc50_dir, [0, 1])


# ----------------------------------------------------------------------------- DCASE2020 Task 1

DCASE_TRAIN = [("airport", "barcelona", "a"), ("bus", "lyon", "b"), ("park", "paris", "s1"), ("tram", "vienna", "c")]
DCASE_EVAL = [("airport", "lisbon", "a"), ("metro", "helsinki", "s4"), ("street_traffic", "milan", "s6")]


def dcase_name(scene: str, city: str, device: str, k: int) -> str:
    return f"audio/{scene}-{city}-{1000 + k}-{40000 + k}-{device}.wav"


@pytest.fixture(scope="module")
def dcase_dir(tmp_path_factory) -> Path:
    """meta.csv, audio/ (44.1 kHz, 10 s wav) and evaluation_setup/fold1_*.csv, all tab-separated."""
    root = tmp_path_factory.mktemp("TAU-urban-acoustic-scenes-2020-mobile-development")
    meta = ["filename\tscene_label\tidentifier\tsource_label\n"]
    clips = [(*clip, "train") for clip in DCASE_TRAIN] + [(*clip, "evaluate") for clip in DCASE_EVAL]
    # meta.csv in an order unlike the split files, to check that meta.csv's order is kept
    for k, (scene, city, device, _) in enumerate(reversed(clips)):
        name = dcase_name(scene, city, device, k)
        meta.append(f"{name}\t{scene}\t{city}-{1000 + k}\t{device}\n")
        write_audio(root / name, tone(300.0 + 100 * DCASE20_SCENES.index(scene), 10.0, 44100), 44100)
    (root / "meta.csv").write_text("".join(meta))
    names = {clip: dcase_name(*clip[:3], k) for k, clip in enumerate(reversed(clips))}
    setup = root / "evaluation_setup"
    setup.mkdir()
    for split in ("train", "evaluate"):
        rows = [f"{names[clip]}\t{clip[0]}\n" for clip in clips if clip[3] == split]
        (setup / f"fold1_{split}.csv").write_text("filename\tscene_label\n" + "".join(rows))
    return root


def test_dcase20_splits_devices_and_items(dcase_dir):
    train, evaluation = DCASE20(dcase_dir, "train"), DCASE20(dcase_dir, "evaluate")
    assert (len(train), len(evaluation)) == (4, 3)
    assert not set(train.audio_names) & set(evaluation.audio_names)
    assert train.label_map.names == DCASE20_SCENES and train.num_classes == 10 and train.task == "multiclass"
    assert sorted(train.devices) == ["a", "b", "c", "s1"] and sorted(evaluation.devices) == ["a", "s4", "s6"]
    assert not {"s4", "s5", "s6"} & set(train.devices)
    # meta.csv order (reversed relative to the split file here)
    assert [device_from_filename(name) for name in train.audio_names] == ["c", "s1", "b", "a"]
    item = evaluation[1]
    scene = item["audio_name"].split("/")[1].split("-")[0]
    assert item["device"] == item["audio_name"][:-4].rsplit("-", 1)[1] == evaluation.devices[1]
    assert item["label"] == DCASE20_SCENES.index(scene) and item["target"].sum() == 1
    assert item["waveform"].shape == (10 * 32000,)
    assert dominant_frequency(item["waveform"], 32000) == pytest.approx(300 + 100 * item["label"], abs=1.0)
    assert item["waveform"][-32000:].abs().max() > 0.25
    assert list(evaluation.labels) == [DCASE20_SCENES.index(n.split("/")[1].split("-")[0])
                                       for n in evaluation.audio_names]


def test_dcase20_device_parsing():
    assert device_from_filename("audio/airport-lisbon-1000-40000-a.wav") == "a"
    assert device_from_filename("street_pedestrian-london-263-7892-s5.wav") == "s5"
    with pytest.raises(ValueError, match="-<device>.wav"):
        device_from_filename("recording.wav")


def test_dcase20_errors_name_the_file_and_layout(dcase_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"meta\.csv not found.*evaluation_setup"):
        DCASE20(tmp_path)
    (tmp_path / "meta.csv").write_text("filename,scene_label,identifier,source_label\n"
                                       "audio/bus-lyon-1-1-a.wav,bus,lyon-1,a\n")
    with pytest.raises(DatasetLayoutError, match="separated by commas, expected tabs"):
        DCASE20(tmp_path)
    (tmp_path / "meta.csv").write_text("filename\tscene_label\naudio/bus-lyon-1-1-a.wav\tbus\n")
    with pytest.raises(FileNotFoundError, match=r"fold1_train\.csv"):
        DCASE20(tmp_path)
    (tmp_path / "evaluation_setup").mkdir()
    (tmp_path / "evaluation_setup" / "fold1_train.csv").write_text("filename\naudio/tram-oslo-1-1-b.wav\n")
    with pytest.raises(DatasetLayoutError, match=r"not in .*meta\.csv.*tram-oslo"):
        DCASE20(tmp_path)
    (tmp_path / "evaluation_setup" / "fold1_train.csv").write_text("filename\naudio/bus-lyon-1-1-a.wav\n")
    with pytest.raises(FileNotFoundError, match=r"bus-lyon-1-1-a\.wav"):
        DCASE20(tmp_path)
    (tmp_path / "meta.csv").write_text("filename\tscene_label\naudio/bus-lyon-1-1-a.wav\tbeach\n")
    with pytest.raises(DatasetLayoutError, match="unknown scene_label 'beach'"):
        DCASE20(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        DCASE20(dcase_dir, "validation")


# ----------------------------------------------------------------------------- own data: CSV

@pytest.fixture(scope="module")
def mixed_audio(tmp_path_factory) -> Path:
    """Clips in several formats, rates and lengths (the lengths give a known percentile)."""
    root = tmp_path_factory.mktemp("own")
    specs = [("dog/a.wav", 16000, 1.0, "wav"), ("dog/b.flac", 22050, 1.5, "flac"), ("cat/c.wav", 44100, 0.8, "wav"),
             ("cat/d.flac", 48000, 2.0, "flac"), ("bird/e.wav", 32000, 1.2, "wav"), ("bird/f.wav", 8000, 3.0, "wav")]
    for k, (name, rate, seconds, codec) in enumerate(specs):
        write_audio(root / name, tone(250.0 * (k + 1), seconds, rate), rate, codec)
    write_audio(root / "bird/g.mp3", tone(400.0, 1.0, 44100), 44100, "mp3")
    return root


MIXED_DURATIONS = [1.0, 1.5, 0.8, 2.0, 1.2, 3.0]


def test_csv_multilabel_inferred_and_items_at_the_dataset_rate(mixed_audio, tmp_path):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("filename,labels,comment\ndog/a.wav,dog,x\ndog/b.flac,dog;bark\ncat/c.wav,cat\n"
                        "bird/g.mp3,bird;chirp\n")
    dataset = CSVDataset(csv_path, mixed_audio, clip_length=1.0)
    assert dataset.task == "multilabel" and "row 2 has 2 labels" in dataset.task_reason
    assert dataset.label_map.names == ("bark", "bird", "cat", "chirp", "dog")
    assert dataset.targets.tolist() == [[0, 0, 0, 0, 1], [1, 0, 0, 0, 1], [0, 0, 1, 0, 0], [0, 1, 0, 1, 0]]
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["waveform"].shape == (32000,) and item["decoded"] and "label" not in item
    assert dataset[1]["audio_name"] == "dog/b.flac"
    # 22.05 kHz flac, 1.5 s clip cut to 1 s at 32 kHz: tone 500 Hz
    assert dominant_frequency(dataset[1]["waveform"], 32000) == pytest.approx(500.0, abs=1.5)


def test_csv_multiclass_inferred_with_clip_length_from_container_metadata(mixed_audio, tmp_path, monkeypatch):
    csv_path = tmp_path / "train.csv"
    names = ["dog/a.wav", "dog/b.flac", "cat/c.wav", "cat/d.flac", "bird/e.wav", "bird/f.wav"]
    csv_path.write_text("filename,labels\n" + "".join(f"{n},{n.split('/')[0]}\n" for n in names))

    def no_decoding(*args, **kwargs):
        raise AssertionError("the durations must come from container metadata, not from decoding")

    monkeypatch.setattr(datasets_base, "decode_audio", no_decoding)
    dataset = CSVDataset(csv_path, mixed_audio)
    expected = math.ceil(np.percentile(MIXED_DURATIONS, 95) * 10 - 1e-6) / 10
    assert dataset.task == "multiclass" and dataset.task_reason.endswith("every row has exactly one label")
    assert dataset.clip_length == pytest.approx(expected) and dataset.clip_samples == round(expected * 32000)
    estimate = dataset.clip_length_estimate
    assert estimate.files_probed == 6 and estimate.files_decoded == 0
    assert estimate.longest == pytest.approx(3.0, abs=1e-3) and estimate.shortest == pytest.approx(0.8, abs=1e-3)
    assert f"{expected:g} s = 95th percentile" in estimate.describe()
    assert estimate_clip_length([mixed_audio / n for n in names], percentile=50).seconds == pytest.approx(1.4)
    monkeypatch.undo()
    assert dataset[5]["label"] == dataset.label_map.index("bird") and list(dataset.labels) == [2, 2, 1, 1, 0, 0]
    assert CSVDataset(csv_path, mixed_audio, clip_length=2.5).clip_length_estimate is None


def test_csv_errors_and_evaluation_set_with_the_training_label_map(mixed_audio, tmp_path):
    train_csv = tmp_path / "train.csv"
    train_csv.write_text("filename,labels\ndog/a.wav,dog\ncat/c.wav,cat\n")
    train = CSVDataset(train_csv, mixed_audio, clip_length=1.0)
    eval_csv = tmp_path / "eval.csv"
    eval_csv.write_text("filename,labels\ncat/d.flac,cat\n")
    evaluation = CSVDataset(eval_csv, mixed_audio, label_map=train.label_map, task=train.task, clip_length=1.0)
    assert evaluation.targets.tolist() == [[1, 0]] and evaluation[0]["label"] == 0
    eval_csv.write_text("filename,labels\nbird/e.wav,bird\n")
    with pytest.raises(DatasetLayoutError, match=r"\['bird'\] are not in the label map"):
        CSVDataset(eval_csv, mixed_audio, label_map=train.label_map, clip_length=1.0)
    eval_csv.write_text("filename,labels\nbird/e.wav,bird;chirp\n")
    with pytest.raises(DatasetLayoutError, match="row 1 has 2"):
        CSVDataset(eval_csv, mixed_audio, task="multiclass", clip_length=1.0)
    eval_csv.write_text("file,label\nbird/e.wav,bird\n")
    with pytest.raises(DatasetLayoutError, match=r"missing column\(s\) \['filename', 'labels'\].*filename,labels"):
        CSVDataset(eval_csv, mixed_audio)
    eval_csv.write_text("filename,labels\nbird/missing.wav,bird\n")
    with pytest.raises(FileNotFoundError, match=r"bird/missing\.wav"):
        CSVDataset(eval_csv, mixed_audio)
    with pytest.raises(FileNotFoundError, match=r"nothing\.csv not found"):
        CSVDataset(tmp_path / "nothing.csv", mixed_audio)


# ----------------------------------------------------------------------------- own data: folders

@pytest.fixture(scope="module")
def class_folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folders")
    for c, name in enumerate(["bell", "drum", "whistle"]):
        for k in range(5):
            write_audio(root / name / f"{k:02d}.wav", tone(300.0 * (c + 1), 0.25 + 0.05 * k, 16000), 16000)
    (root / "README.txt").write_text("not audio")
    (root / "drum" / ".hidden.wav").write_bytes(b"junk")
    return root


def test_folder_split_is_deterministic_stratified_and_disjoint(class_folders):
    train = FolderDataset(class_folders, "train", eval_fraction=0.4, seed=3)
    evaluation = FolderDataset(class_folders, "eval", eval_fraction=0.4, seed=3)
    everything = FolderDataset(class_folders, "all")
    assert train.task == "multiclass" and "one sub-folder per class" in train.task_reason
    assert train.label_map.names == ("bell", "drum", "whistle")
    assert (len(train), len(evaluation), len(everything)) == (9, 6, 15)
    assert not set(train.audio_names) & set(evaluation.audio_names)
    assert set(train.audio_names) | set(evaluation.audio_names) == set(everything.audio_names)
    assert sorted(np.bincount(evaluation.labels).tolist()) == [2, 2, 2]  # two of five per class
    assert FolderDataset(class_folders, "eval", eval_fraction=0.4, seed=3).audio_names == evaluation.audio_names
    assert any(FolderDataset(class_folders, "eval", eval_fraction=0.4, seed=s).audio_names != evaluation.audio_names
               for s in range(4, 10))
    item = evaluation[0]
    assert item["audio_name"].split("/")[0] == evaluation.label_map.names[item["label"]]
    # durations 0.25 .. 0.45 s in every class: 95th percentile 0.45 -> 0.5 s
    assert train.clip_length == evaluation.clip_length == pytest.approx(0.5)
    assert item["waveform"].shape == (16000,)
    assert split_indices(1, 0.5, 0) == ([0], []) and split_indices(4, 0.01, 0)[1] != []


def test_folder_train_eval_trees_and_errors(tmp_path):
    for split, classes in [("train", ["a", "b"]), ("eval", ["a"])]:
        for name in classes:
            write_audio(tmp_path / split / name / "x.flac", tone(440, 0.2, 22050), 22050, "flac")
    train, evaluation = FolderDataset(tmp_path, "train"), FolderDataset(tmp_path, "eval")
    assert train.has_split_folders and train.audio_names == ["train/a/x.flac", "train/b/x.flac"]
    assert evaluation.label_map == train.label_map and evaluation.audio_names == ["eval/a/x.flac"]
    write_audio(tmp_path / "eval" / "c" / "y.wav", tone(440, 0.2, 16000), 16000)
    with pytest.raises(DatasetLayoutError, match=r"class folder\(s\) \['c'\]"):
        FolderDataset(tmp_path, "eval")

    loose = tmp_path / "loose"
    write_audio(loose / "clip.wav", tone(440, 0.2, 16000), 16000)
    with pytest.raises(DatasetLayoutError, match="no class sub-folders.*one sub-folder per class"):
        FolderDataset(loose)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        FolderDataset(tmp_path / "absent")
    with pytest.raises(ValueError, match="eval_fraction 0 is empty"):
        FolderDataset(tmp_path / "train", "eval", eval_fraction=0.0)


def test_audioset_dataset_shares_the_base(tmp_path):
    dataset = AudioSetDataset(make_tiny_audioset(tmp_path / "tiny.h5", num_clips=3), sample_rate=16000,
                              clip_length=1.0, num_classes=4)
    assert dataset.label_map.names == ("tone_0", "tone_1", "tone_2", "tone_3") and dataset.task == "multilabel"
    assert "label" not in dataset[0] and dataset.teacher_coverage() == (0, 3)
