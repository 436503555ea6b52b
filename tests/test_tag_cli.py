"""The tagging command line over many files (`efficient_tagging.cli.tag`) and its library half
(`efficient_tagging.tagging.files`): finding files, batching by length, CSV/JSON output, exit codes."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from conftest import REPO
from efficient_tagging import AudioTagger, get_model, save_checkpoint
from efficient_tagging.audio import encode_audio, load_audio
from efficient_tagging.cli import tag
from efficient_tagging.frontends import build_frontend
from efficient_tagging.labels import LabelMap
from efficient_tagging.tagging.files import (AUDIO_EXTENSIONS, ProbabilitiesWriter, find_audio_files, tag_files,
                                             write_probabilities)

SR = 32000
CLASSES = ["dog", "cat, meow", "bird", "car", "rain"]
SCRIPT = REPO / "experiments" / "inference.py"


def _signal(seconds: float, rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """Noise and a tone whose pitch depends on `seed`: different files get different tags."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    tone = 0.3 * np.sin(2 * np.pi * (200 + 150 * seed) * t) * (np.sin(2 * np.pi * (0.5 + seed) * t) > 0)
    rows = [tone + 0.05 * rng.standard_normal(len(t)) for _ in range(channels)]
    return np.stack(rows).astype(np.float32)


def _write(path: Path, samples: np.ndarray, rate: int, codec: str, sample_format: str) -> Path:
    """Encode (channels, n) samples with PyAV: any codec/container this FFmpeg has (ogg+opus, ...)."""
    channels = samples.shape[0]
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame_size = stream.codec_context.frame_size or 4096
        planar = sample_format.endswith("p")
        for start in range(0, samples.shape[1], frame_size):
            piece = samples[:, start:start + frame_size]
            if piece.shape[1] < frame_size and codec in ("libopus",):
                piece = np.pad(piece, ((0, 0), (0, frame_size - piece.shape[1])))
            data = piece if planar else piece.T.reshape(1, -1)
            if sample_format.startswith("s16"):
                data = (np.clip(data, -1, 1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=sample_format, layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _model(num_classes: int = len(CLASSES), seed: int = 0, width: float = 0.4) -> torch.nn.Module:
    """A tiny mn (width 0.4) with BatchNorm statistics of real-ish spectrograms and a scaled head,
    so that its probabilities differ between files (a fresh one outputs ~0.5 everywhere)."""
    torch.manual_seed(seed)
    model = get_model(arch="mn", width_mult=width, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    frontend = build_frontend({})
    waves = torch.from_numpy(np.concatenate([_signal(2.0, SR, s) for s in range(4)]))
    with torch.no_grad():
        model.train()
        model(frontend(waves).unsqueeze(1))
        model.eval()
        model.classifier[-1].weight.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", _model(), labels=CLASSES)


@pytest.fixture(scope="module")
def tagger(checkpoint) -> AudioTagger:
    return AudioTagger.from_pretrained(str(checkpoint))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """wav/flac/mp3/ogg, 8-48 kHz, mono and stereo, in sub-folders; one corrupt file, two non-audio ones."""
    root = tmp_path_factory.mktemp("recordings")
    (root / "birds" / "night").mkdir(parents=True)
    (root / "street").mkdir()
    _write(root / "a_8k_mono.wav", _signal(1.5, 8000, 1), 8000, "pcm_s16le", "s16")
    _write(root / "birds" / "b_16k_stereo.flac", _signal(1.0, 16000, 2, channels=2), 16000, "flac", "s16")
    (root / "birds" / "night" / "c_22k.mp3").write_bytes(encode_audio(_signal(1.2, 22050, 3)[0], 22050, "mp3"))
    _write(root / "street" / "d_48k_stereo.ogg", _signal(1.0, 48000, 4, channels=2), 48000, "libopus", "flt")
    _write(root / "street" / "e_44k_stereo.WAV", _signal(0.8, 44100, 5, channels=2), 44100, "pcm_s16le", "s16")
    _write(root / "f_32k.flac", _signal(2.0, SR, 6), SR, "flac", "s16")
    (root / "street" / "broken.mp3").write_bytes(b"ID3" + bytes(np.random.default_rng(0).integers(0, 256, 900,
                                                                                                  dtype=np.uint8)))
    (root / "notes.txt").write_text("not audio")
    (root / "birds" / "._b_16k_stereo.flac").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    return root


GOOD = ["a_8k_mono.wav", "birds/b_16k_stereo.flac", "birds/night/c_22k.mp3", "f_32k.flac",
        "street/d_48k_stereo.ogg", "street/e_44k_stereo.WAV"]


def _run_script(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


# ----------------------------------------------------------------------------------------------------
# the acceptance case: a folder of mixed formats with one corrupt file, through the script
# ----------------------------------------------------------------------------------------------------
def test_folder_of_mixed_formats_writes_one_row_per_good_file_and_names_the_bad_one(mixed_folder, checkpoint,
                                                                                      tagger, tmp_path):
    output = tmp_path / "tags.csv"
    result = _run_script(mixed_folder, "--model_path", checkpoint, "--output", output, "--batch_size", "4")
    assert result.returncode == tag.EXIT_SOME_FAILED == 3, result.stderr
    assert result.stdout == ""  # with --output nothing is printed
    assert "broken.mp3" in result.stderr and "cannot decode" in result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"tagged 6 files, 1 failed: {mixed_folder / 'street' / 'broken.mp3'}")
    assert "2 non-audio or hidden files skipped" in summary and str(output) in summary
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", *CLASSES]
    assert [Path(r[0]).relative_to(mixed_folder).as_posix() for r in rows[1:]] == GOOD
    for row in rows[1:]:  # every probability, at full float32 precision
        expected = tagger.file_probabilities(row[0])[0]
        written = torch.tensor([float(v) for v in row[1:]])
        assert torch.equal(written.float(), expected.float()) or (written - expected).abs().max() < 1e-6
    assert len({tuple(r[1:]) for r in rows[1:]}) == len(GOOD)  # the files really got different tags
    assert not [p for p in tmp_path.iterdir() if p.name != "tags.csv"]  # no temporary file left behind


def test_json_output_lists_path_duration_probabilities_and_top_k(mixed_folder, checkpoint, tagger, tmp_path, capsys):
    output = tmp_path / "tags.json"
    code = tag.main([str(mixed_folder / "birds"), str(mixed_folder / "f_32k.flac"), "--model_path", str(checkpoint),
                     "--output", str(output), "--top_k", "2", "--no_progress"])
    assert code == 0, capsys.readouterr().err
    entries = json.loads(output.read_text())
    assert [Path(e["path"]).name for e in entries] == ["b_16k_stereo.flac", "c_22k.mp3", "f_32k.flac"]
    for entry in entries:
        assert list(entry["probabilities"]) == CLASSES
        expected = tagger.file_probabilities(entry["path"])[0]
        assert (torch.tensor(list(entry["probabilities"].values())) - expected).abs().max() < 1e-6
        assert [t["label"] for t in entry["top_k"]] == [t.label for t in tagger.tag_file(entry["path"], 2)]
    assert entries[0]["duration_s"] == pytest.approx(1.0, abs=1e-3)
    assert entries[2]["duration_s"] == pytest.approx(2.0, abs=1e-3)
    assert capsys.readouterr().err.strip() == (f"tagged 3 files, 0 failed (1 non-audio or hidden file skipped); "
                                               f"probabilities written to {output}")


# ----------------------------------------------------------------------------------------------------
# batching
# ----------------------------------------------------------------------------------------------------
def test_batches_of_equal_length_equal_one_file_at_a_time(tmp_path):
    files = []
    for i in range(7):  # five of one length, two of others: batches of 2 + 2 + 1, then singles
        seconds = 1.0 if i < 5 else 0.5 + 0.3 * i
        files.append(_write(tmp_path / f"clip{i}.wav", _signal(seconds, 16000, i), 16000, "pcm_s16le", "s16"))
    tagger = AudioTagger(_model())
    sizes = []
    original = tagger.model.forward
    tagger.model.forward = lambda x: (sizes.append(x.shape[0]), original(x))[1]
    batched = list(tag_files(tagger, files, batch_size=2, num_workers=2))
    assert sorted(sizes) == [1, 1, 1, 2, 2]  # same-length files shared a forward pass, the others did not
    sizes.clear()
    single = list(tag_files(tagger, files, batch_size=1, num_workers=0))
    assert sizes == [1] * 7
    assert [r.path for r in batched] == [r.path for r in single] == files  # input order either way
    for a, b in zip(batched, single):
        assert a.ok and b.ok and a.duration_s == b.duration_s
        assert (a.probabilities - b.probabilities).abs().max() < 1e-6
        # and equal to the one-file API
        assert (a.probabilities - tagger.file_probabilities(a.path)[0]).abs().max() < 1e-6
    # a bigger batch than there are files of a length; many lengths waiting: still every file, in order
    assert [r.path for r in tag_files(tagger, files, batch_size=16)] == files


def test_long_files_are_streamed_and_short_ones_batched_around_them(tmp_path):
    tagger = AudioTagger(_model(width=0.1), chunk_seconds=10.0)  # files over 10 s stream in windows
    short = [_write(tmp_path / f"s{i}.flac", _signal(0.75, SR, i), SR, "flac", "s16") for i in range(3)]
    long = _write(tmp_path / "long.flac", _signal(10.5, SR, 9), SR, "flac", "s16")
    files = [short[0], long, short[1], short[2]]
    results = list(tag_files(tagger, files, batch_size=3, num_workers=1))
    assert [r.path for r in results] == files
    assert results[1].duration_s == pytest.approx(10.5, abs=1e-3)
    assert torch.equal(results[1].probabilities, tagger.file_probabilities(long)[0])  # the same streamed pass
    for result in results[:1] + results[2:]:
        assert (result.probabilities - tagger.file_probabilities(result.path)[0]).abs().max() < 1e-6


class _RefusesSilence:
    """A duck-typed tagger (like an ONNX runner: no streaming) that refuses batches holding silence."""

    sample_rate = SR
    label_map = LabelMap.from_names(["loud", "quiet"])

    def __init__(self) -> None:
        self.batches: list[int] = []

    def probabilities(self, waveform: torch.Tensor) -> torch.Tensor:
        self.batches.append(waveform.shape[0])
        if bool((waveform.abs().amax(dim=-1) == 0).any()):
            raise ValueError("silent input")
        level = waveform.abs().mean(dim=-1, keepdim=True)
        return torch.cat([level, 1 - level], dim=-1)


def test_a_refused_file_fails_alone_and_its_batch_mates_are_tagged(tmp_path):
    files = [_write(tmp_path / f"{i}.wav", _signal(0.5, SR, i) * (i != 1), SR, "pcm_s16le", "s16") for i in range(3)]
    fake = _RefusesSilence()
    results = list(tag_files(fake, files + [tmp_path / "missing.wav"], batch_size=3))
    assert [r.ok for r in results] == [True, False, True, False]
    assert "1.wav" in results[1].error and "silent input" in results[1].error
    assert "not found" in results[3].error and "missing.wav" in results[3].error
    assert fake.batches == [3, 1, 1, 1]  # the batch failed, then each file alone
    with pytest.raises(ValueError, match="batch_size"):
        list(tag_files(fake, files, batch_size=0))


# ----------------------------------------------------------------------------------------------------
# finding files, writing outputs
# ----------------------------------------------------------------------------------------------------
def test_find_audio_files_recurses_sorts_skips_and_counts(mixed_folder, tmp_path):
    found = find_audio_files([mixed_folder])
    assert [p.relative_to(mixed_folder).as_posix() for p in found.files] == sorted(
        GOOD[:4] + ["street/broken.mp3", "street/d_48k_stereo.ogg", "street/e_44k_stereo.WAV"])
    assert {p.name for p in found.skipped} == {"notes.txt", "._b_16k_stereo.flac"}
    # a file given by name is tried whatever its extension; a missing one is kept (it fails when tagged);
    # a file reached twice is listed once
    odd = tmp_path / "take1.audio"
    odd.write_bytes(b"")
    again = find_audio_files([odd, tmp_path / "nope.wav", mixed_folder / "f_32k.flac", mixed_folder])
    assert again.files[:3] == [odd, tmp_path / "nope.wav", mixed_folder / "f_32k.flac"]
    assert len(again.files) == 3 + len(found.files) - 1
    assert {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a"} <= AUDIO_EXTENSIONS


def test_writer_is_atomic_and_keeps_an_older_file_on_failure(tmp_path, tagger, mixed_folder):
    output = tmp_path / "tags.csv"
    output.write_text("older result\n")
    results = list(tag_files(tagger, [mixed_folder / "f_32k.flac"]))
    with pytest.raises(RuntimeError):
        with ProbabilitiesWriter(output, CLASSES) as writer:
            writer.write(results[0])
            raise RuntimeError("killed half way")
    assert output.read_text() == "older result\n" and sorted(tmp_path.iterdir()) == [output]
    write_probabilities(output, results, CLASSES)
    assert output.read_text().splitlines()[0] == 'path,dog,"cat, meow",bird,car,rain'
    assert oct(output.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    with pytest.raises(ValueError, match=r"\.csv or \.json"):
        ProbabilitiesWriter(tmp_path / "tags.txt", CLASSES)


# ----------------------------------------------------------------------------------------------------
# the command line: EfficientAT's one-file form, several files, exit status
# ----------------------------------------------------------------------------------------------------
def test_one_file_prints_efficientat_block_and_json_as_before(mixed_folder, checkpoint, tagger, capsys):
    path = mixed_folder / "f_32k.flac"
    expected = tagger.tag_file(path, top_k=3)
    assert tag.main(["--model_path", str(checkpoint), "--audio_path", str(path), "--top_k", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ("************* Acoustic Event Detected: *****************\n"
                            + "".join(f"{t.label}: {t.probability:.3f}\n" for t in expected)
                            + "********************************************************\n")
    assert captured.err == ""
    assert tag.main(["--model_path", str(checkpoint), "--audio_path", str(path), "--top_k", "3", "--json"]) == 0
    # one JSON shape for one file or many (issue 24: a bare list for one file, {path, top_k} for several)
    assert json.loads(capsys.readouterr().out) == [{"path": str(path), "top_k": [
        {"label": t.label, "index": t.index, "probability": t.probability} for t in expected]}]


def test_several_files_print_a_block_per_file_in_order(mixed_folder, checkpoint, capsys):
    paths = [mixed_folder / "f_32k.flac", mixed_folder / "a_8k_mono.wav"]
    # paths may sit between flags
    assert tag.main([str(paths[0]), "--model_path", str(checkpoint), str(paths[1]), "--top_k", "2",
                     "--no_progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(paths[0]) and lines[5] == str(paths[1]) and len(lines) == 10
    assert lines[1].startswith("*************") and lines[2].split(": ")[0] in CLASSES
    assert tag.main(["--model_path", str(checkpoint), "--audio_path", *map(str, paths), "--json",
                     "--no_progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [e["path"] for e in printed] == list(map(str, paths)) and len(printed[0]["top_k"]) == 5


def test_ensemble_of_checkpoints_tags_a_folder(mixed_folder, checkpoint, tmp_path, capsys):
    other = save_checkpoint(tmp_path / "other.pt", _model(seed=1), labels=CLASSES)
    output = tmp_path / "tags.csv"
    code = tag.main([str(mixed_folder / "birds"), "--ensemble", str(checkpoint), str(other), "--output", str(output),
                     "--no_progress"])
    assert code == 0, capsys.readouterr().err
    assert len(output.read_text().splitlines()) == 3


def test_exit_status_when_nothing_can_be_tagged(tmp_path, checkpoint, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF" + b"\x00" * 100)
    output = tmp_path / "tags.json"
    assert tag.main([str(bad), "--model_path", str(checkpoint), "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert "bad.wav" in err and "tagged 0 files, 1 failed" in err and not output.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    assert tag.main([str(empty), "--model_path", str(checkpoint)]) == 1
    assert "no audio files found" in capsys.readouterr().err
    assert tag.main([str(bad), "--model_path", str(tmp_path / "no_such_model.pt")]) == 1
    assert "no_such_model.pt" in capsys.readouterr().err


def test_interrupted_run_writes_nothing(tmp_path, checkpoint, mixed_folder, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        yield from list(tag_files(*args, **kwargs))[:2]
        raise KeyboardInterrupt

    monkeypatch.setattr(tag, "tag_files", interrupted)
    output = tmp_path / "tags.csv"
    assert tag.main([str(mixed_folder), "--model_path", str(checkpoint), "--output", str(output)]) == 130
    assert "not written" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (["--output", "tags.txt"], ".csv or .json"),
    (["--cuda", "--device", "cpu"], "contradict"),
    (["--device", "gpu"], "cpu, cuda, cuda:N or mps"),
    (["--backend", "onnx"], "--model_path"),
    (["--backend", "onnx", "--model_path", "m.onnx", "--ensemble", "mn10_as"], "--ensemble"),
    (["--batch_size", "0"], "--batch_size"),
    (["--num_workers", "-1"], "--num_workers"),
    (["--json", "--output", "tags.csv"], "not allowed with"),
], ids=["suffix", "cuda-device", "device", "onnx-path", "onnx-ensemble", "batch", "workers", "json-output"])
def test_usage_errors_exit_with_2(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        tag.main(["x.wav", *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        tag.main([])  # no input at all
    assert exit_.value.code == 2


def test_missing_device_is_an_error_not_a_cpu_run(mixed_folder, checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = str(mixed_folder / "f_32k.flac")
    assert tag.main([path, "--model_path", str(checkpoint), "--device", "cuda:1"]) == 1
    assert "no CUDA device is available" in capsys.readouterr().err
    assert tag.main([path, "--model_path", str(checkpoint), "--device", "cpu"]) == 0


def test_onnx_backend_without_the_runner_says_so(mixed_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "efficient_tagging.export.runtime", None)  # as if not installed
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    code = tag.main([str(mixed_folder / "f_32k.flac"), "--model_path", str(model)])  # .onnx picks the backend
    assert code == 1 and "--backend onnx needs efficient_tagging.export.runtime" in capsys.readouterr().err


def test_help_documents_exit_status_and_imports_no_plotting_or_tracking():
    result = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    for text in ("exit status:", "3  some files failed", "--output", "--batch_size", "--device", "--backend",
                 ".ogg", "--no_progress"):
        assert text in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" in imported  # the check really sees the imports
    assert not imported & {"matplotlib", "wandb", "sacred"}


def test_progress_bar_goes_to_stderr(tagger, mixed_folder, capsys):
    list(tag_files(tagger, [mixed_folder / "f_32k.flac"], progress=True))
    captured = capsys.readouterr()
    assert "tagging" in captured.err and "1/1" in captured.err and captured.out == ""


def test_one_file_with_output_writes_it_and_says_so(mixed_folder, checkpoint, tmp_path, capsys):
    output = tmp_path / "out" / "one.csv"  # one rule for every output flag: the folder must exist (issue 24)
    with pytest.raises(SystemExit):
        tag.main(["--audio_path", str(mixed_folder / "a_8k_mono.wav"), "--model_path", str(checkpoint),
                  "--output", str(output)])
    assert "does not exist; create it first" in capsys.readouterr().err and not output.parent.exists()
    output.parent.mkdir()
    assert tag.main(["--audio_path", str(mixed_folder / "a_8k_mono.wav"), "--model_path", str(checkpoint),
                     "--output", str(output)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == f"tagged 1 file, 0 failed; probabilities written to {output}"
    assert len(output.read_text().splitlines()) == 2
