"""FSD50K (PaSST's HDF5 layout and the raw release) and OpenMIC-2018 (layout, masked labels, release)."""
import json
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
import torch

from efficient_tagging.audio import encode_audio, resample
from efficient_tagging.cli.prepare import main
from efficient_tagging.data import AudioSetDataset, read_audio_names, read_label_map
from efficient_tagging.data.datasets.fsd50k import (FSD50K_NUM_CLASSES, fsd50k_dataset, fsd50k_files,
                                                    fsd50k_label_map, prepare_fsd50k)
from efficient_tagging.data.datasets.openmic import (OPENMIC_LABELS, OpenMICDataset, openmic_dataset, openmic_files,
                                                     prepare_openmic)
from efficient_tagging.data.prepare import PrepareError

RAW_RATE = 44100  # FSD50K wavs and OpenMIC oggs are 44.1 kHz


def tone(seconds, rate, frequency, seed=0):
    t = np.arange(int(round(seconds * rate))) / rate
    noise = np.random.default_rng(seed).normal(scale=0.02, size=t.shape)
    return (0.3 * np.sin(2 * np.pi * frequency * t) + noise).astype(np.float32)


def vocabulary(count=FSD50K_NUM_CLASSES):
    # Sorted names, as in the real vocabulary.csv (PaSST asserts it is sorted).
    return [(f"Label_{i:03d}", f"/m/x{i:03d}") for i in range(count)]


# ----------------------------------------------------------------------------- FSD50K raw release

# fname -> (seconds, class indices, split); lengths span FSD50K's 0.3-30 s range (one longer than 10 s).
DEV = {"1001": (0.3, [0, 5], "train"), "1002": (1.7, [199], "train"), "1003": (2.5, [3, 4, 150], "val"),
       "1004": (0.8, [7], "train"), "1005": (1.0, [8], "val")}
EVAL = {"2001": (11.0, [1, 2], "eval"), "2002": (0.5, [42], "eval")}


@pytest.fixture()
def fsd50k_raw(tmp_path):
    root = tmp_path / "FSD50K"
    truth = root / "FSD50K.ground_truth"
    truth.mkdir(parents=True)
    vocab = vocabulary()
    (truth / "vocabulary.csv").write_text("".join(f"{i},{name},{mid}\n" for i, (name, mid) in enumerate(vocab)))

    def labels(indices):
        names = ",".join(vocab[i][0] for i in indices)
        mids = ",".join(vocab[i][1] for i in indices)
        return f'"{names}","{mids}"'

    for folder, clips in (("FSD50K.dev_audio", DEV), ("FSD50K.eval_audio", EVAL)):
        (root / folder).mkdir()
        for number, (fname, (seconds, _, _)) in enumerate(clips.items()):
            (root / folder / f"{fname}.wav").write_bytes(
                encode_audio(tone(seconds, RAW_RATE, 200 + 50 * number, number), RAW_RATE, "wav"))
    (root / "FSD50K.dev_audio" / "1004.wav").write_bytes(b"RIFF broken")  # undecodable
    dev_rows = [f"{fname},{labels(idx)},{split}" for fname, (_, idx, split) in DEV.items()]
    dev_rows.append(f"1006,{labels([9])},train")  # listed, but no wav
    (truth / "dev.csv").write_text("fname,labels,mids,split\n" + "\n".join(dev_rows) + "\n")
    (truth / "eval.csv").write_text("fname,labels,mids\n" + "\n".join(
        f"{fname},{labels(idx)}" for fname, (_, idx, _) in EVAL.items()) + "\n")
    return root


def multi_hot(indices, count=FSD50K_NUM_CLASSES):
    row = np.zeros(count, np.uint8)
    row[indices] = 1
    return row


def test_fsd50k_release_to_three_hdf5_files(fsd50k_raw, tmp_path):
    out = tmp_path / "hdf5"
    reports = prepare_fsd50k(fsd50k_raw, out, quiet=True)
    files = fsd50k_files(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in files.values())  # no partial, no lock

    expected = {"train": ["1001.mp3", "1002.mp3"], "val": ["1003.mp3", "1005.mp3"], "eval": ["2001.mp3", "2002.mp3"]}
    for split, names in expected.items():
        assert read_audio_names(files[split]) == names  # CSV order, undecodable/missing rows left out
        dataset = AudioSetDataset(files[split], num_classes=FSD50K_NUM_CLASSES)
        clips = {**DEV, **EVAL}
        np.testing.assert_array_equal(dataset.targets, [multi_hot(clips[n[:-4]][1]) for n in names])
        with h5py.File(files[split], "r") as handle:
            assert handle["target"].shape == (len(names), 25)  # 200 classes packed, as PaSST's files
            assert handle.attrs["sample_rate"] == 32000
    assert reports["train"].rows == 4 and reports["train"].written == 2
    assert [Path(p).name for p in reports["train"].undecodable] == ["1004.wav"]
    assert [Path(p).name for p in reports["train"].missing] == ["1006.wav"]
    assert reports["val"].written == 2 and not reports["val"].undecodable and not reports["eval"].missing
    labels = read_label_map(files["eval"])
    assert labels.names[:2] == ("Label_000", "Label_001") and labels.ids[199] == "/m/x199"
    assert fsd50k_label_map(out) == labels

    # Whole clips at 32 kHz: the 11 s eval clip is not cut, the 0.3 s one keeps its length.
    full = fsd50k_dataset(out, "eval", variable_length=True)
    assert full[0]["waveform"].shape == (11 * 32000,)
    short = fsd50k_dataset(out, "train", variable_length=True)
    assert short[0]["waveform"].shape == (int(0.3 * 32000),) and short[1]["waveform"].shape == (int(1.7 * 32000),)
    source = resample(tone(1.7, RAW_RATE, 250, 1), RAW_RATE, 32000).numpy()
    assert np.corrcoef(source, short[1]["waveform"].numpy())[0, 1] > 0.98
    fixed = fsd50k_dataset(out, "eval")
    assert fixed[0]["waveform"].shape == fixed[1]["waveform"].shape == (320000,)  # default: padded / cut to 10 s


def test_fsd50k_cli_and_errors(fsd50k_raw, tmp_path, capsys):
    out = tmp_path / "hdf5"
    assert main(["--fsd50k_dir", str(fsd50k_raw), "--output_dir", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "2 written" in err and "1004.wav" in err and "1006.wav" in err
    # A second run refuses to replace the files without --overwrite, naming them.
    assert main(["--fsd50k_dir", str(fsd50k_raw), "--output_dir", str(out), "--quiet"]) == 2
    assert "FSD50K.train_mp3.hdf" in capsys.readouterr().err
    # Mixed modes are usage errors.
    assert main(["--fsd50k_dir", str(fsd50k_raw), "--output", str(out / "x.hdf")]) == 2
    assert main(["--fsd50k_dir", str(fsd50k_raw)]) == 2
    assert "--output_dir" in capsys.readouterr().err

    (fsd50k_raw / "FSD50K.ground_truth" / "vocabulary.csv").unlink()
    with pytest.raises(PrepareError, match="vocabulary.csv"):
        prepare_fsd50k(fsd50k_raw, tmp_path / "other", quiet=True)
    (out / "FSD50K.val_mp3.hdf").unlink()
    with pytest.raises(FileNotFoundError, match=r"FSD50K\.val_mp3\.hdf") as error:
        fsd50k_files(out)
    assert "train" not in str(error.value).split("(")[0]  # names only the missing file
    with pytest.raises(FileNotFoundError, match="prepare_audioset.py --fsd50k_dir"):
        fsd50k_files(fsd50k_raw)  # the raw release is recognised and the conversion named


def test_fsd50k_dev_csv_without_split_column(fsd50k_raw, tmp_path):
    dev = fsd50k_raw / "FSD50K.ground_truth" / "dev.csv"
    dev.write_text("fname,labels,mids\n1001,Label_000,/m/x000\n")
    with pytest.raises(PrepareError, match=r"dev\.csv.*split"):
        prepare_fsd50k(fsd50k_raw, tmp_path / "out", quiet=True)


def write_passt_file(path, names, clips, targets, rate=32000):
    """An FSD50K/OpenMIC HDF5 file exactly as PaSST's scripts write it: no attributes, S20 names."""
    with h5py.File(path, "w") as handle:
        handle.create_dataset("audio_name", data=np.array([n.encode() for n in names], dtype="S20"))
        mp3 = handle.create_dataset("mp3", shape=(len(names),), dtype=h5py.vlen_dtype(np.uint8))
        for i, clip in enumerate(clips):
            mp3[i] = np.frombuffer(encode_audio(clip, rate, "mp3"), dtype=np.uint8)
        handle.create_dataset("target", data=targets)


def test_passt_layout_fsd50k_reader_and_variable_length(tmp_path):
    lengths = {"train": [0.4, 2.0], "val": [1.2], "eval": [0.3, 12.0, 3.3]}
    rng = np.random.default_rng(0)
    truth = {}
    for split, seconds in lengths.items():
        names = [f"{split}{i}.mp3" for i in range(len(seconds))]
        hot = (rng.random((len(seconds), FSD50K_NUM_CLASSES)) < 0.05).astype(np.uint8)
        hot[:, 199] = 1  # the last class must survive packing
        truth[split] = hot
        write_passt_file(tmp_path / f"FSD50K.{split}_mp3.hdf", names,
                         [tone(s, 32000, 300) for s in seconds], np.packbits(hot, axis=-1))
    dataset = fsd50k_dataset(tmp_path, "eval", variable_length=True)
    assert dataset.num_classes == 200 and dataset.label_map is None  # PaSST's files store no class names
    np.testing.assert_array_equal(dataset.targets, truth["eval"])
    for index, seconds in enumerate(lengths["eval"]):
        item = dataset[index]
        assert item["waveform"].shape == (int(round(seconds * 32000)),)  # own length: not padded, not cut
        np.testing.assert_array_equal(item["target"].numpy(), truth["eval"][index])
    loader = torch.utils.data.DataLoader(dataset, batch_size=1)
    assert [batch["waveform"].shape[1] for batch in loader] == [9600, 384000, 105600]
    # The default 527 classes cannot read 25-byte targets: the error says what to pass.
    with pytest.raises(ValueError, match="num_classes"):
        AudioSetDataset(tmp_path / "FSD50K.eval_mp3.hdf")
    # A vocabulary.csv next to the files names the classes.
    (tmp_path / "vocabulary.csv").write_text("".join(f"{i},{n},{m}\n" for i, (n, m) in enumerate(vocabulary())))
    assert fsd50k_dataset(tmp_path, "val").label_map.names[5] == "Label_005"


# ----------------------------------------------------------------------------- OpenMIC

def openmic_rows(count, seed):
    """[Y_true | Y_mask] rows like openmic-2018.npz: relevances in [0, 1], 0.5 where unknown."""
    rng = np.random.default_rng(seed)
    mask = rng.random((count, 20)) < 0.3
    mask[:, 0] = True
    relevance = np.where(mask, rng.choice([0.0, 0.2, 0.45, 0.55, 0.8, 1.0], size=(count, 20)), 0.5)
    relevance[0, 0], relevance[0, 1], mask[0, 1] = 0.9, 0.9, False  # known positive; unknown with high score
    return relevance.astype(np.float32), mask


def test_openmic_reader_target_and_known_mask(tmp_path):
    relevance, mask = openmic_rows(4, 0)
    names = [f"00004{i}_3840.mp3" for i in range(4)]
    targets = np.concatenate([relevance, mask.astype(np.float32)], axis=1)
    for split in ("train", "test"):
        write_passt_file(tmp_path / f"openmic_{split}.csv_mp3.hdf", names, [tone(10.0, 32000, 440)] * 4, targets)
    dataset = openmic_dataset(tmp_path, "test")
    assert dataset.num_classes == 20 and dataset.label_map.names == OPENMIC_LABELS
    assert OPENMIC_LABELS[0] == "accordion" and OPENMIC_LABELS[19] == "voice" and len(OPENMIC_LABELS) == 20
    expected = (relevance > 0.5) & mask
    np.testing.assert_array_equal(dataset.targets, expected)
    np.testing.assert_array_equal(dataset.known_mask, mask)
    for index in range(4):
        item = dataset[index]
        assert item["waveform"].shape == (320000,) and item["audio_name"] == names[index]
        assert item["known"].dtype == torch.bool
        np.testing.assert_array_equal(item["known"].numpy(), mask[index])
        np.testing.assert_array_equal(item["target"].numpy(), expected[index].astype(np.float32))
    assert dataset[0]["target"][0] == 1 and dataset[0]["target"][1] == 0 and not dataset[0]["known"][1]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["known"].shape == (4, 20) and batch["target"].shape == (4, 20)
    # A packed 527-class AudioSet file is not an OpenMIC file: said clearly.
    write_passt_file(tmp_path / "audioset.hdf", names[:1], [tone(1.0, 32000, 440)],
                     np.packbits(np.zeros((1, 527), np.uint8), axis=-1))
    with pytest.raises(ValueError, match=r"\(40,\) rows"):
        OpenMICDataset(tmp_path / "audioset.hdf")
    (tmp_path / "openmic_train.csv_mp3.hdf").unlink()
    with pytest.raises(FileNotFoundError, match=r"openmic_train\.csv_mp3\.hdf.*--openmic_dir"):
        openmic_files(tmp_path)


def write_ogg(path, samples, rate):
    """A Vorbis .ogg like OpenMIC's audio (stereo: FFmpeg's own Vorbis encoder takes no mono)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("vorbis", rate=rate, layout="stereo")
        stream.codec_context.options = {"strict": "experimental"}
        for start in range(0, len(samples), 4096):
            block = samples[start:start + 4096]
            frame = av.AudioFrame.from_ndarray(np.stack([block, block]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_openmic_release_preparation(tmp_path, capsys):
    root = tmp_path / "openmic-2018-v1.0.0" / "openmic-2018"
    keys = ["000046_3840", "000135_483840", "000139_119040", "000141_153600", "000144_30720"]
    relevance, mask = openmic_rows(len(keys), 1)
    mask[3] = False  # no annotated instrument: left out, as PaSST does
    relevance[3] = 0.5
    root.mkdir(parents=True)
    np.savez(root / "openmic-2018.npz", X=np.zeros((len(keys), 10, 128), np.uint8), Y_true=relevance,
             Y_mask=mask, sample_key=np.array(keys))
    (root / "class-map.json").write_text(json.dumps({name: i for i, name in enumerate(OPENMIC_LABELS)}))
    (root / "partitions").mkdir()
    (root / "partitions" / "split01_train.csv").write_text("\n".join(keys[:3]) + "\n")
    (root / "partitions" / "split01_test.csv").write_text("\n".join(keys[3:]) + "\n")
    for number, key in enumerate(keys):
        write_ogg(root / "audio" / key[:3] / f"{key}.ogg", tone(10.0 if number == 0 else 1.5, RAW_RATE, 300),
                  RAW_RATE)
    out = tmp_path / "hdf5"
    assert main(["--openmic_dir", str(tmp_path / "openmic-2018-v1.0.0"), "--output_dir", str(out), "--quiet"]) == 0
    assert "without any known label" in capsys.readouterr().err
    files = openmic_files(out)
    assert read_audio_names(files["train"]) == [f"{k}.mp3" for k in keys[:3]]
    assert read_audio_names(files["test"]) == [f"{keys[4]}.mp3"]
    with h5py.File(files["train"], "r") as handle:
        np.testing.assert_allclose(handle["target"][()], np.concatenate([relevance[:3], mask[:3]], axis=1))
    train = OpenMICDataset(files["train"])
    np.testing.assert_array_equal(train.known_mask, mask[:3])
    np.testing.assert_array_equal(train.targets, (relevance[:3] > 0.5) & mask[:3])
    first = train[0]
    assert first["waveform"].shape == (320000,)
    own_length = OpenMICDataset(files["train"], variable_length=True)[1]["waveform"].shape[0]
    assert abs(own_length - 1.5 * 32000) < 320  # whole clip (Vorbis adds a few samples of padding)
    # A release without its partitions is named.
    (root / "partitions" / "split01_test.csv").unlink()
    with pytest.raises(PrepareError, match=r"split01_test\.csv"):
        prepare_openmic(root, tmp_path / "again", quiet=True)


def test_openmic_labels_from_aggregated_csv_when_npz_needs_pickle(tmp_path):
    """An npz whose sample_key is an object array is never unpickled: the release's CSV gives the labels."""
    root = tmp_path / "openmic-2018"
    keys = ["000046_3840", "000135_483840"]
    root.mkdir()
    np.savez(root / "openmic-2018.npz", Y_true=np.full((2, 20), 0.5, np.float32), Y_mask=np.zeros((2, 20), bool),
             sample_key=np.array(keys, dtype=object))
    (root / "partitions").mkdir()
    (root / "partitions" / "split01_train.csv").write_text(keys[0] + "\n")
    (root / "partitions" / "split01_test.csv").write_text(keys[1] + "\n")
    for key in keys:
        write_ogg(root / "audio" / key[:3] / f"{key}.ogg", tone(1.0, RAW_RATE, 330), RAW_RATE)
    with pytest.raises(PrepareError, match="aggregated-labels.csv"):
        prepare_openmic(root, tmp_path / "out", quiet=True)
    (root / "openmic-2018-aggregated-labels.csv").write_text(
        "sample_key,instrument,relevance,num_responses\n"
        f"{keys[0]},piano,0.9,3\n{keys[0]},mallet_percussion,0.1,2\n{keys[1]},voice,1.0,1\n")
    reports = prepare_openmic(root, tmp_path / "out", quiet=True)
    assert reports["train"].written == reports["test"].written == 1
    train = openmic_dataset(tmp_path / "out", "train")
    item = train[0]
    assert [OPENMIC_LABELS[i] for i in np.flatnonzero(item["known"].numpy())] == ["mallet_percussion", "piano"]
    assert [OPENMIC_LABELS[i] for i in np.flatnonzero(item["target"].numpy())] == ["piano"]
    with h5py.File(tmp_path / "out" / "openmic_train.csv_mp3.hdf", "r") as handle:
        row = handle["target"][0]
    assert row[OPENMIC_LABELS.index("drums")] == 0.5 and row[20 + OPENMIC_LABELS.index("drums")] == 0


def test_fsd50k_preparation_is_atomic_and_locked(fsd50k_raw, tmp_path, monkeypatch):
    from efficient_tagging.data import prepare as preparation
    from efficient_tagging.locking import FileLock

    out = tmp_path / "hdf5"
    encode = preparation._encode_job
    calls = []

    def interrupted(job):
        calls.append(job)
        if len(calls) == 3:  # in the middle of the train split
            raise KeyboardInterrupt
        return encode(job)

    monkeypatch.setattr(preparation, "_encode_job", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_fsd50k(fsd50k_raw, out, quiet=True)
    assert list(out.iterdir()) == []  # no half-written file, no partial, lock released
    monkeypatch.setattr(preparation, "_encode_job", encode)

    with FileLock(out / ".FSD50K.prepare.lock", what="preparing FSD50K"):
        with pytest.raises(PrepareError, match="another process"):
            prepare_fsd50k(fsd50k_raw, out, quiet=True)
    assert not (out / "FSD50K.train_mp3.hdf").exists()
