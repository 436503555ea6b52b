"""No silent wrong results, no lost work (issue 24): each failure a fault or hostile-input probe found
ends in a clear error naming the file / key / value and what to do, or in documented, counted
behaviour. Each test fails on the code before its fix."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from conftest import make_tiny_audioset, save_tiny_teacher


# ----------------------------------------------------------------------------- 1. duplicate audio_names
def _duplicate_names(path, rows_and_names):
    """Rename rows of an AudioSet-format HDF5 in place (the writer itself refuses duplicates)."""
    with h5py.File(path, "r+") as handle:
        names = handle["audio_name"][()]
        for row, name in rows_and_names:
            names[row] = name.encode()
        del handle["audio_name"]
        handle.create_dataset("audio_name", data=names)


def test_duplicate_audio_names_are_refused_when_a_dataset_opens(tmp_path):
    """Labelling 400 clips of which 50 shared one name wrote 351 rows while saying 400, and training then
    distilled 49 clips from another clip's logits. Now the dataset refuses to open, naming the repeats."""
    from efficient_tagging.data.hdf5 import AudioSetDataset

    data = make_tiny_audioset(tmp_path / "dup.h5", num_clips=12)
    _duplicate_names(data, [(5, "Ytiny_0002.flac"), (9, "Ytiny_0002.flac"), (11, "Ytiny_0007.flac")])
    with pytest.raises(ValueError) as caught:
        AudioSetDataset(data, sample_rate=16000, clip_length=1.0)
    message = str(caught.value)
    assert str(data) in message and "2 audio_name(s) name more than one clip (3 rows too many)" in message
    assert "'Ytiny_0002.flac' (dup.h5 row 2, dup.h5 row 5, dup.h5 row 9)" in message
    assert "unique audio_name" in message


def test_duplicate_audio_names_across_files_are_refused(tmp_path):
    from efficient_tagging.data.hdf5 import AudioSetDataset

    first = make_tiny_audioset(tmp_path / "a.h5", num_clips=4)
    second = make_tiny_audioset(tmp_path / "b.h5", num_clips=4, seed=1)  # the same names, other clips
    with pytest.raises(ValueError, match=r"'Ytiny_0000.flac' \(a.h5 row 0, b.h5 row 0\)"):
        AudioSetDataset([first, second], sample_rate=16000, clip_length=1.0)


def test_labelling_cli_refuses_duplicates_and_writes_nothing(tmp_path, capsys):
    from efficient_tagging.cli import label as label_cli

    from conftest import labelling_args

    data = make_tiny_audioset(tmp_path / "dup.h5", num_clips=8)
    _duplicate_names(data, [(3, "Ytiny_0001.flac")])
    teacher = save_tiny_teacher(tmp_path / "teacher.pt")
    output = tmp_path / "logits.h5"
    code = label_cli.main(labelling_args(data, output, teacher))
    assert code != 0
    assert "Ytiny_0001.flac" in capsys.readouterr().err
    assert not output.exists()


# ----------------------------------------------------------------------------- 2. weights= with arch=
def test_weights_with_arch_are_loaded_not_ignored(tmp_path):
    """`get_model(arch="mn", ..., weights="/nonexistent/file.pt")` returned a fresh random model."""
    from efficient_tagging import get_model

    with pytest.raises(FileNotFoundError, match="weights file not found: /nonexistent/file.pt"):
        get_model(arch="mn", width_mult=0.4, num_classes=10, weights="/nonexistent/file.pt")
    torch.manual_seed(1)
    trained = get_model(arch="mn", width_mult=0.1, num_classes=10)
    plain = tmp_path / "plain.pt"
    torch.save(trained.state_dict(), plain)  # an official-style plain state_dict
    loaded = get_model(arch="mn", width_mult=0.1, num_classes=10, weights=plain)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match="does not fit"):
        get_model(arch="mn", width_mult=0.4, num_classes=10, weights=plain)  # strict: another width


# ----------------------------------------------------------------------------- 3. undecodable training data
def _training_run(data, eval_data, out_dir, epoch_len=8, extra=()):
    import contextlib
    import io

    from efficient_tagging.cli.audioset import main

    flags = ["--train", "--train_hdf5", str(data), "--eval_hdf5", str(eval_data), "--n_epochs", "1", "--batch_size", "4",
             "--epoch_len", str(epoch_len),
             "--num_workers", "0", "--model_width", "0.1", "--n_mels", "32", "--resample_rate", "16000",
             "--clip_length", "1", "--no_progress", "--wandb", "disabled", "--out_dir", str(out_dir),
             "--runs_dir", str(out_dir.parent / "runs"), *extra]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(flags)
    return code, out.getvalue(), err.getvalue()


def test_training_on_undecodable_data_stops_with_an_error(tmp_path):
    """Every clip undecodable: the old trainer trained on silence without labels, exited 0, wrote best.pt
    and said the bad clips were "replaced by others"."""
    from conftest import corrupt_clip

    data = make_tiny_audioset(tmp_path / "bad.h5", num_clips=8)
    for i in range(8):
        corrupt_clip(data, f"Ytiny_{i:04d}.flac")
    eval_data = make_tiny_audioset(tmp_path / "eval.h5", num_clips=4, seed=1)
    code, out, err = _training_run(data, eval_data, tmp_path / "run")
    assert code == 1
    assert "failed to decode" in err and "bad.h5" in err and "data looks broken" in err
    assert not (tmp_path / "run" / "best.pt").exists()


def test_mostly_undecodable_data_stops_at_the_documented_share(tmp_path, monkeypatch):
    """More than half of an epoch's decodes failing stops the run (UNDECODABLE_LIMIT), even when every
    drawn clip finds a decodable replacement; one bad clip in eight trains on and is counted."""
    from conftest import corrupt_clip
    from efficient_tagging.train import trainer

    eval_data = make_tiny_audioset(tmp_path / "eval.h5", num_clips=4, seed=1)
    data = make_tiny_audioset(tmp_path / "some_bad.h5", num_clips=8)
    corrupt_clip(data, "Ytiny_0003.flac")
    code, out, err = _training_run(data, eval_data, tmp_path / "ok")
    assert code == 0, err[-2000:]
    assert "clip decodes that failed (each clip replaced by another of the training set): " in out

    many = make_tiny_audioset(tmp_path / "many_bad.h5", num_clips=16)
    for i in range(14):
        corrupt_clip(many, f"Ytiny_{i:04d}.flac")
    monkeypatch.setattr(trainer, "UNDECODABLE_MIN_ATTEMPTS", 8)
    code, out, err = _training_run(many, eval_data, tmp_path / "many", epoch_len=16)
    assert code == 1 and "clip decodes failed this epoch (more than 50%)" in err


# ----------------------------------------------------------------------------- 4. names printed from files
def test_label_names_with_terminal_escapes_are_printed_escaped(tmp_path, capsys):
    """Label names from a file with an escape sequence cleared the screen when printed."""
    from efficient_tagging import get_model, save_checkpoint
    from efficient_tagging.cli import tag as tag_cli
    from efficient_tagging.audio import encode_audio
    from efficient_tagging.labels import LabelMap

    names = ["\x1b[2J\x1b[Hclear", "bell\x07", "line\nbreak", "plain"]
    model = get_model(arch="mn", width_mult=0.1, num_classes=4, input_dim_f=32)
    checkpoint = save_checkpoint(tmp_path / "hostile.pt", model, preprocessing={"sr": 16000, "n_mels": 32, "hopsize": 320},
                                 labels=LabelMap.from_names(names))
    wav = tmp_path / "tone.wav"
    wav.write_bytes(encode_audio(0.1 * np.sin(np.arange(16000) * 0.1).astype(np.float32), 16000, "wav"))
    assert tag_cli.main(["--model_path", str(checkpoint), "--audio_path", str(wav), "--top_k", "4"]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed
    assert "\\x1b[2J\\x1b[Hclear" in printed and "line\\nbreak" in printed and "plain" in printed
    with pytest.raises(ValueError, match="list of 'names'"):
        LabelMap.from_dict({"names": "abc"})


# ----------------------------------------------------------------------------- 5. truncated WAV
def test_a_truncated_wav_is_tagged_with_a_warning(tmp_path, caplog):
    """Header says 3 s, data holds 1 s: FFmpeg takes the duration from the file size, so nothing was
    said (mp3 was detected). The WAV header's data size is read and compared with what was decoded."""
    import logging

    from efficient_tagging.audio import encode_audio, wav_header_duration
    from efficient_tagging.tagging.tagger import AudioTagger
    from efficient_tagging import get_model

    whole = encode_audio((0.1 * np.sin(np.arange(48000) * 0.1)).astype(np.float32), 16000, "wav")
    assert wav_header_duration(whole) == pytest.approx(3.0)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(whole[:len(whole) - 32000])
    intact = tmp_path / "intact.wav"
    intact.write_bytes(whole)
    model = get_model(arch="mn", width_mult=0.1, num_classes=3, input_dim_f=32)
    model.preprocessing = {"sr": 16000, "n_mels": 32, "hopsize": 320}
    tagger = AudioTagger(model)
    with caplog.at_level(logging.WARNING):
        tagger.tag_file(intact, 2)
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        tagger.tag_file(truncated, 2)
    warned = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert warned and str(truncated) in warned[0] and "states 3.00 s" in warned[0]


# ----------------------------------------------------------------------------- 6. checkpoint integrity
def _flip_a_bit_in_the_largest_tensor(path):
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        with open(path, "rb") as handle:
            handle.seek(entry.header_offset)
            local = handle.read(30)
        name_length, extra_length = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        start = entry.header_offset + 30 + name_length + extra_length
    data = bytearray(path.read_bytes())
    data[start + entry.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_a_flipped_bit_is_refused(tmp_path):
    """One flipped bit inside a weight tensor loaded and ran silently (get_model, --resume)."""
    from efficient_tagging import get_model, save_checkpoint
    from efficient_tagging.models.factory import read_checkpoint

    model = get_model(arch="mn", width_mult=0.1, num_classes=3)
    path = save_checkpoint(tmp_path / "good.pt", model)
    state, metadata = read_checkpoint(path)
    assert len(metadata["state_dict_sha256"]) == 64
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    _flip_a_bit_in_the_largest_tensor(path)
    with pytest.raises(ValueError, match=r"good\.pt: the weights do not match the checksum"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match=r"good\.pt: the weights do not match the checksum"):
        get_model(str(path))


def test_resume_from_a_damaged_checkpoint_is_one_clear_error(tmp_path):
    """A corrupt --resume checkpoint printed a traceback before the (good) message."""
    data = make_tiny_audioset(tmp_path / "d.h5", num_clips=8)
    eval_data = make_tiny_audioset(tmp_path / "e.h5", num_clips=4, seed=1)
    assert _training_run(data, eval_data, tmp_path / "run")[0] == 0
    _flip_a_bit_in_the_largest_tensor(tmp_path / "run" / "last.pt")
    code, out, err = _training_run(data, eval_data, tmp_path / "run", extra=("--resume",))
    assert code == 1
    assert "Traceback" not in err and "--resume:" in err and "last.pt: the weights do not match the checksum" in err
    assert "delete" in err


# ----------------------------------------------------------------------------- 7. wrong file in the cache
def test_a_wrong_architecture_in_the_download_cache_is_moved_aside(tmp_path, monkeypatch):
    """A file of another architecture served under a catalogue name was cached, and every later
    get_model(name) failed until the user deleted it by hand. Downloads must fit before they are
    renamed into the cache; a bad cached copy is moved aside and fetched again."""
    from efficient_tagging import get_model
    from efficient_tagging.hub import DownloadError
    from efficient_tagging.models.registry import get_entry

    entry = get_entry("mn04_as")
    wrong = get_model(arch="mn", width_mult=0.5)  # another width: other shapes
    right = get_model(arch="mn", width_mult=0.4)
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    cache.mkdir()
    monkeypatch.setenv("EFFICIENT_TAGGING_MIRROR", mirror.as_uri())

    # a mirror serving the wrong file: refused before it reaches the cache
    torch.save(wrong.state_dict(), mirror / entry.filename)
    with pytest.raises(DownloadError, match="do not fit mn04_as"):
        get_model("mn04_as", cache_dir=cache)
    assert not (cache / entry.filename).exists()

    # a wrong file already in the cache (put there by hand, or by an older version): moved aside, fetched again
    torch.save(wrong.state_dict(), cache / entry.filename)
    torch.save(right.state_dict(), mirror / entry.filename)
    model = get_model("mn04_as", cache_dir=cache)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), right.state_dict().values()))
    assert len(list(cache.glob(f"{entry.filename}.bad-*"))) == 1
    assert get_model("mn04_as", cache_dir=cache) is not None  # and the next call just works


# ----------------------------------------------------------------------------- 8. errors that name the file
def test_a_latin1_csv_and_a_non_hdf5_file_are_named(tmp_path, capsys):
    """A Latin-1 own-data CSV gave a raw UnicodeDecodeError; a non-HDF5 --train_hdf5 gave h5py's
    `file signature not found`; neither named the file."""
    from efficient_tagging.cli import own_data as own_cli
    from efficient_tagging.data.hdf5 import AudioSetDataset

    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes("filename,labels\ncaf\xe9.wav,b\xe9b\xe9\n".encode("latin-1"))
    code = own_cli.main(["--train_csv", str(csv_path), "--audio_root", str(tmp_path), "--no_progress",
                         "--wandb", "disabled", "--out_dir", str(tmp_path / "run"), "--runs_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 1 and str(csv_path) in err and "not UTF-8" in err and "0xe9" in err and "Traceback" not in err

    not_hdf5 = tmp_path / "train.h5"
    not_hdf5.write_text("this is not HDF5")
    with pytest.raises(ValueError, match=r"train\.h5: not an HDF5 file"):
        AudioSetDataset(not_hdf5, sample_rate=16000, clip_length=1.0)


# ----------------------------------------------------------------------------- 9. a rerun keeps finished work
def test_a_rerun_does_not_replace_a_finished_run(tmp_path):
    """Rerunning a training command replaced the finished best.pt (mAP 0.918 -> 0.316 after one epoch of
    the rerun) with no warning. Now: refused naming the files, unless --resume or --overwrite."""
    data = make_tiny_audioset(tmp_path / "d.h5", num_clips=8)
    eval_data = make_tiny_audioset(tmp_path / "e.h5", num_clips=4, seed=1)
    out_dir = tmp_path / "run"
    assert _training_run(data, eval_data, out_dir)[0] == 0
    finished = (out_dir / "best.pt").read_bytes()
    code, out, err = _training_run(data, eval_data, out_dir)
    assert code == 1 and "already holds a training run (last.pt, best.pt" in err and "--overwrite" in err
    assert (out_dir / "best.pt").read_bytes() == finished
    assert _training_run(data, eval_data, out_dir, extra=("--resume",))[0] == 0  # a finished run: evaluated again
    assert _training_run(data, eval_data, out_dir, extra=("--overwrite",))[0] == 0


def test_fine_tuning_checks_its_out_dir_before_reading_data(tmp_path, monkeypatch, capsys):
    """A second run in a locked (or finished) --out_dir loaded its data first (~10 s) before it hit the lock."""
    from efficient_tagging.cli import finetune as finetune_cli
    from efficient_tagging.cli import own_data as own_cli

    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "last.pt").write_bytes(b"an earlier run")
    opened = []
    monkeypatch.setattr(finetune_cli, "open_datasets", lambda *a, **k: opened.append(1))
    code = own_cli.main(["--audio_dir", str(tmp_path), "--no_progress", "--wandb", "disabled", "--out_dir", str(out_dir),
                         "--runs_dir", str(tmp_path / "runs")])
    assert code == 1 and not opened and "already holds a training run" in capsys.readouterr().err


def test_the_demo_keeps_an_earlier_student(tmp_path):
    from efficient_tagging.train.run_lock import fresh_run_directory

    base = tmp_path / "student" / "mn10"
    assert fresh_run_directory(base) == base
    base.mkdir(parents=True)
    (base / "best.pt").write_bytes(b"x")
    assert fresh_run_directory(base) == base.with_name("mn10-2")


# ----------------------------------------------------------------------------- 10. file permissions
def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    """Files written with mkstemp + rename were 0600 (CSV/PNG/events of windowed_inference.py, .onnx
    exports, checkpoints): other users and containers could not read them."""
    import os

    from efficient_tagging import get_model, save_checkpoint
    from efficient_tagging.tagging.windows import write_text_atomic

    previous = os.umask(0o022)
    try:
        written = [save_checkpoint(tmp_path / "model.pt", get_model(arch="mn", width_mult=0.1, num_classes=2)),
                   write_text_atomic(tmp_path / "tags.csv", "start,end\n")]
        try:
            import onnx

            from efficient_tagging.export.metadata import _write_atomically

            graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                           [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                           [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
            written.append(_write_atomically(onnx.helper.make_model(graph), tmp_path / "model.onnx"))
        except ImportError:
            pass
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(previous)
    expected = plain.stat().st_mode & 0o777
    assert expected == 0o644
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in written} == {str(p): oct(expected) for p in written}


# ----------------------------------------------------------------------------- 16. bf16 without native bf16
def test_bf16_without_native_bf16_runs_float32_with_a_note(monkeypatch, caplog):
    """bf16 on a CPU without native bf16 was 30x slower than float32 (883 vs 31 ms on an AVX2 CPU): it
    now falls back to float32 with a one-line note wherever it can be asked for (labelling, training)."""
    import logging

    from efficient_tagging import hardware

    monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu": False)
    with caplog.at_level(logging.WARNING):
        assert hardware.resolve_precision("bf16", "cpu") == "32"
    assert any("no native bf16" in r.getMessage() and "float32" in r.getMessage() for r in caplog.records)
    assert hardware.resolve_precision("auto", "cpu") == "32" and hardware.resolve_precision("16", "cpu") == "16"
    monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu": True)
    assert hardware.resolve_precision("bf16", "cpu") == "bf16"


# ----------------------------------------------------------------------------- 11, 12. command-line outputs
def test_windowed_inference_outputs_follow_one_rule(tmp_path, capsys):
    """`--plot /nonexistent/dir/x.png` silently created folders; a folder as --audio_path said "audio file
    not found". Every output flag now needs an existing folder, and a folder input is explained."""
    from efficient_tagging.cli import tag as tag_cli
    from efficient_tagging.cli import tag_over_time as over_time_cli

    missing = tmp_path / "nonexistent" / "dir"
    for flag, name in (("--plot", "x.png"), ("--events", "e.csv"), ("--output", "t.csv")):
        with pytest.raises(SystemExit) as stop:
            over_time_cli.main(["--audio_path", str(tmp_path), flag, str(missing / name)])
        assert stop.value.code == 2
        assert f"{flag} {missing / name}: the folder {missing} does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tag_cli.main(["--audio_path", str(tmp_path), "--output", str(missing / "t.csv")])
    assert "does not exist; create it first" in capsys.readouterr().err
    assert not (tmp_path / "nonexistent").exists()
    with pytest.raises(SystemExit):
        over_time_cli.main(["--audio_path", str(tmp_path)])
    assert "is a folder: windowed_inference.py tags one recording" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 13. what is printed is true
def test_help_and_printed_lines_say_what_happens(tmp_path, capsys):
    """--experiment_name showed "default: audioset" in the fine-tuning commands (recorded under runs/own),
    --num_workers "default: 12" on a 2-core machine; a digit classifier printed "Acoustic Event Detected"."""
    from efficient_tagging.cli import finetune as finetune_cli
    from efficient_tagging.cli.tag import tag_block
    from efficient_tagging.tagging.tagger import Tag
    from efficient_tagging.train.trainer import cap_num_workers

    own_help = finetune_cli.build_parser("own").format_help()
    assert "(default: own)" in " ".join(own_help.split()) and "default: audioset" not in own_help
    assert "(default: esc50)" in " ".join(finetune_cli.build_parser("esc50").format_help().split())
    if cap_num_workers(12, log=False) < 12:
        assert f"at most one per core: {cap_num_workers(12, log=False)} here" in " ".join(own_help.split())
    assert tag_block([Tag("seven", 7, 0.9)]).startswith("************* Acoustic Event Detected: *****************")
    assert "Classified as" in tag_block([Tag("seven", 7, 0.9)], "multiclass")


# ----------------------------------------------------------------------------- 14. catalogue
def test_dymn_rows_carry_their_published_map_and_openmic_maps_are_marked(capsys):
    """dymn04_as / dymn10_as had no published mAP (EfficientAT's README: 45.0, 47.7), so the plot left them
    out; the table showed the OpenMIC teachers' 0.850 in the mAP column as if it were AudioSet's."""
    from efficient_tagging.cli import complexity as complexity_cli
    from efficient_tagging.models.registry import get_entry

    assert get_entry("dymn04_as").published_map == pytest.approx(0.450)
    assert get_entry("dymn10_as").published_map == pytest.approx(0.477)
    assert complexity_cli.main(["--table", "--teachers", "--only", "dymn04_as",
                                "openmic2008_passt_u_f128_p16_s10_ap85_swa"]) == 0
    table = capsys.readouterr().out
    assert "0.450" in table and "0.850 (OpenMIC)" in table
