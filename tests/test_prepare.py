"""The preparation command line: folder of audio + label CSV -> AudioSet-format HDF5."""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from efficient_tagging.audio import encode_audio, resample
from efficient_tagging.data import AudioSetDataset, read_audio_names, read_label_map
from efficient_tagging.cli.prepare import main

REPO = Path(__file__).resolve().parents[1]


def signal(seconds, rate, frequency, seed):
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(scale=0.05, size=t.shape)
    return (0.4 * np.sin(2 * np.pi * frequency * t) + noise).astype(np.float32)


def write_audio(path, samples, rate, codec):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_audio(samples, rate, codec))
    return samples


def snr_db(reference, estimate):
    n = min(len(reference), len(estimate))
    error = reference[:n] - estimate[:n]
    return 10 * np.log10(np.sum(reference[:n] ** 2) / np.sum(error ** 2))


@pytest.fixture()
def plain_folder(tmp_path):
    audio = tmp_path / "audio"
    clips = {
        "dog.wav": write_audio(audio / "dog.wav", signal(1.5, 44100, 440, 0), 44100, "wav"),
        "sub/cat.flac": write_audio(audio / "sub" / "cat.flac", signal(0.6, 16000, 300, 1), 16000, "flac"),
    }
    (audio / "broken.wav").write_bytes(b"RIFF not really a wav file")
    (tmp_path / "labels.csv").write_text(
        "filename,labels\n"
        "dog.wav,Dog;Animal\n"
        "sub/cat.flac,\"Cat,Animal\"\n"
        "broken.wav,Dog\n"
        "gone.wav,Cat\n")
    return tmp_path, clips


def test_plain_csv_round_trip(plain_folder, capsys):
    folder, clips = plain_folder
    output = folder / "out.hdf"
    code = main(["--audio_dir", str(folder / "audio"), "--csv", str(folder / "labels.csv"),
                 "--output", str(output), "--clip_length", "1.0", "--quiet"])
    assert code == 0
    report = capsys.readouterr().err
    assert "2 written" in report and "1 missing" in report and "gone.wav" in report
    assert "1 undecodable" in report and "broken.wav" in report
    assert output.exists() and not Path(str(output) + ".partial").exists()

    assert read_audio_names(output) == ["dog.mp3", "sub/cat.mp3"]
    labels = read_label_map(output)
    assert labels.names == ("Animal", "Cat", "Dog")  # sorted vocabulary of the CSV
    with h5py.File(output, "r") as f:
        assert f.attrs["sample_rate"] == 32000 and f.attrs["num_classes"] == 3
    dataset = AudioSetDataset(output, clip_length=1.0)
    np.testing.assert_array_equal(dataset.targets, [[1, 0, 1], [1, 1, 0]])
    for index, (name, rate) in enumerate([("dog.wav", 44100), ("sub/cat.flac", 16000)]):
        expected = resample(clips[name], rate, 32000).numpy()[:32000]
        got = dataset[index]["waveform"].numpy()
        assert got.shape == (32000,)
        n = len(expected)  # the cat clip is 0.6 s: the rest is padding
        assert np.corrcoef(expected, got[:n])[0, 1] > 0.99 and snr_db(expected, got[:n]) > 15
        if n < 32000:
            assert np.abs(got[n + 1200:]).max() < 1e-3


def test_audioset_segments_csv(tmp_path, capsys):
    audio = tmp_path / "audio"
    write_audio(audio / "Yaaaaaaaaaaa.wav", signal(1.0, 44100, 500, 0), 44100, "wav")
    write_audio(audio / "bbbbbbbbbbb.flac", signal(1.0, 16000, 600, 1), 16000, "flac")
    write_audio(audio / "c_cc-ccc_cc_30.000_40.000.wav", signal(1.0, 32000, 700, 2), 32000, "wav")
    (tmp_path / "classes.csv").write_text(
        'index,mid,display_name\n0,/m/0a,"Speech"\n1,/m/0b,"Music"\n2,/m/0c,"Dog, bark"\n3,/m/0d,"Cat"\n'
        '4,/m/0e,"Rain"\n')
    (tmp_path / "segments.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:25 2017\n"
        "# num_ytids=4, num_segs=4, num_unique_labels=5, num_positive_labels=6\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'aaaaaaaaaaa, 0.000, 10.000, "/m/0a,/m/0c"\n'
        'bbbbbbbbbbb, 30.000, 40.000, "/m/0b,/m/zzz"\n'
        'c_cc-ccc_cc, 30.000, 40.000, "/m/0e"\n'
        'ddddddddddd, 0.000, 10.000, "/m/0d"\n')
    output = tmp_path / "segments.hdf"
    args = ["--audio_dir", str(audio), "--csv", str(tmp_path / "segments.csv"), "--output", str(output),
            "--class_labels", str(tmp_path / "classes.csv"), "--quiet"]
    assert main(args) == 0
    report = capsys.readouterr().err
    assert "3 written" in report and "1 missing" in report and "ddddddddddd" in report
    assert "1 rows with unknown labels" in report and "/m/zzz" in report
    assert read_audio_names(output) == ["Yaaaaaaaaaaa.mp3", "Ybbbbbbbbbbb.mp3", "Yc_cc-ccc_cc.mp3"]
    assert read_label_map(output).ids == ("/m/0a", "/m/0b", "/m/0c", "/m/0d", "/m/0e")
    dataset = AudioSetDataset(output, clip_length=1.0)
    np.testing.assert_array_equal(dataset.targets, [[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 1]])

    # parallel workers give the same file (order preserved)
    parallel = tmp_path / "parallel.hdf"
    assert main(args[:5] + [str(parallel)] + args[6:] + ["--num_workers", "2"]) == 0
    with h5py.File(output, "r") as a, h5py.File(parallel, "r") as b:
        assert a["audio_name"][()].tolist() == b["audio_name"][()].tolist()
        np.testing.assert_array_equal(a["target"][()], b["target"][()])
        assert all(np.array_equal(x, y) for x, y in zip(a["mp3"][()], b["mp3"][()]))

    assert main(args) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_argument_and_input_errors(plain_folder, tmp_path, capsys):
    folder, _ = plain_folder
    output = tmp_path / "x.hdf"
    assert main(["--audio_dir", str(tmp_path / "nope"), "--csv", str(folder / "labels.csv"),
                 "--output", str(output)]) == 2
    assert "nope: no such folder" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("name,tags\nx.wav,Dog\n")
    assert main(["--audio_dir", str(folder / "audio"), "--csv", str(bad), "--output", str(output)]) == 2
    assert "bad.csv: unrecognised CSV header" in capsys.readouterr().err
    assert main(["--audio_dir", str(folder / "audio"), "--csv", str(bad), "--output", str(output),
                 "--csv_format", "plain"]) == 2
    assert "bad CSV header" in capsys.readouterr().err
    assert main(["--audio_dir", str(folder / "audio"), "--csv", str(folder / "labels.csv"),
                 "--output", str(output), "--clip_length", "0"]) == 2
    assert main(["--csv", "x"]) == 2  # argparse usage error
    assert not output.exists()


def test_nothing_written_exits_1_and_leaves_no_file(plain_folder, tmp_path, capsys):
    folder, _ = plain_folder
    only_broken = tmp_path / "broken.csv"
    only_broken.write_text("filename,labels\nbroken.wav,Dog\ngone.wav,Cat\n")
    output = tmp_path / "none.hdf"
    assert main(["--audio_dir", str(folder / "audio"), "--csv", str(only_broken), "--output", str(output),
                 "--quiet"]) == 1
    assert "no clip could be written" in capsys.readouterr().err
    assert not output.exists() and not Path(str(output) + ".partial").exists()


def test_script_help():
    result = subprocess.run([sys.executable, str(REPO / "experiments" / "prepare_audioset.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--class_labels" in result.stdout and "segments CSV" in result.stdout
