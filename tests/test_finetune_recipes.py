"""The fine-tuning commands end to end, on tiny datasets in the exact official layouts.

Every recipe (`ex_esc50`, `ex_fsd50k`, `ex_dcase20`, `ex_openmic`, `ex_finetune`) is called in-process
(`main(argv)`) for one or two epochs of a width-0.1 model on a handful of clips, and the tests check what
the run really did: which clips were trained and evaluated on, which split picked best.pt, how the
reported numbers are put together, that the waveform cache decodes each clip once, that unknown OpenMIC
labels carry no loss, and that distillation uses the teacher logits.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import efficient_tagging
from efficient_tagging.cli import dcase20 as dcase20_cli
from efficient_tagging.cli import esc50 as esc50_cli
from efficient_tagging.cli import finetune as finetune_cli
from efficient_tagging.cli import fsd50k as fsd50k_cli
from efficient_tagging.cli import label as label_cli
from efficient_tagging.cli import openmic as openmic_cli
from efficient_tagging.cli import own_data as own_cli
from efficient_tagging.cli import prepare as prepare_cli
from efficient_tagging.data.datasets import audio_files as datasets_base
from efficient_tagging.data.datasets.dcase20 import DCASE20_SCENES
from efficient_tagging.data.datasets.esc50 import ESC50, ESC50_CATEGORIES
from efficient_tagging.data.datasets.fsd50k import FSD50K_NUM_CLASSES, fsd50k_dataset
from efficient_tagging.tagging.tagger import AudioTagger
from efficient_tagging.train import finetune as train_finetune
from efficient_tagging.train import trainer as trainer_module
from efficient_tagging.train.distributed import DistInfo

from test_datasets_finetune import ESC50_HEADER, dcase_name, tone, write_audio
from test_fsd50k_openmic import DEV, EVAL, fsd50k_raw, write_passt_file  # noqa: F401 (fsd50k_raw: fixture)


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine their spinning makes a
    run many times slower: one thread keeps the file fast and its time steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_run(tmp: Path, name: str, *, epochs: int = 1, batch: int = 4, clip: bool = True) -> list[str]:
    """Flags of a short CPU run: width-0.1 model, 32 mels, no workers, no progress, no W&B, all output in tmp."""
    flags = ["--model_width", "0.1", "--n_mels", "32", "--n_epochs", str(epochs), "--batch_size", str(batch),
             "--num_workers", "0", "--no_progress", "--wandb", "disabled", "--runs_dir", str(tmp / "runs"),
             "--out_dir", str(tmp / name), "--results_json", str(tmp / f"{name}.json")]
    return flags + (["--clip_length", "1"] if clip else [])


def results(tmp: Path, name: str) -> dict:
    return json.loads((tmp / f"{name}.json").read_text())


def record_opened(monkeypatch) -> list:
    """Every FinetuneData the fine-tuning command opens (its train/val/test datasets), in order."""
    opened = []
    original = finetune_cli.open_datasets

    def recording(*args, **kwargs):
        data = original(*args, **kwargs)
        opened.append(data)
        return data

    monkeypatch.setattr(finetune_cli, "open_datasets", recording)
    return opened


@pytest.fixture()
def quick_confusion_png(monkeypatch):
    """The 50-class confusion-matrix PNG takes ~1 s to draw: an empty file stands in for it."""
    def empty_png(path, *args, **kwargs):
        Path(path).write_bytes(b"")
        return Path(path)

    monkeypatch.setattr(train_finetune, "plot_confusion_matrix", empty_png)


def evaluate_checkpoint_on(checkpoint: str, dataset) -> dict:
    """Metrics of a checkpoint on a dataset, computed here (outside the command) with the stored frontend."""
    tagger = AudioTagger(efficient_tagging.get_model(str(checkpoint)))
    return trainer_module.evaluate(tagger.model, tagger.frontend, dataset, torch.device("cpu"),
                                   DistInfo(False, 0, 1, 0, torch.device("cpu")), 4, 0, "32", False)


# ----------------------------------------------------------------------------- ESC-50

ESC50_CLASSES = (0, 1, 2)  # three distinct classes (dog, rooster, pig), one clip of each per fold


def build_esc50(root: Path) -> Path:
    """meta/esc50.csv + audio/ (44.1 kHz, 5 s wav), three clips per fold, the official naming."""
    lines = [ESC50_HEADER]
    for fold in range(1, 6):
        for k, target in enumerate(ESC50_CLASSES):
            name = f"{fold}-{100000 + 10 * fold + k}-A-{target}.wav"
            lines.append(f"{name},{fold},{target},{ESC50_CATEGORIES[target]},False,{100000 + fold},A\n")
            write_audio(root / "audio" / name, tone(200.0 + 150.0 * target, 5.0, 44100), 44100)
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "esc50.csv").write_text("".join(lines))
    return root


@pytest.fixture(scope="module")
def esc50_root(tmp_path_factory) -> Path:
    return build_esc50(tmp_path_factory.mktemp("ESC-50-master"))


@pytest.fixture(scope="module")
def esc50_fold3(esc50_root, tmp_path_factory):
    """One `ex_esc50 --fold 3` run (2 epochs), recording every clip each opened dataset handed out."""
    tmp = tmp_path_factory.mktemp("esc50_fold3")
    drawn: list[tuple[int, str]] = []
    with pytest.MonkeyPatch.context() as patch:
        opened = record_opened(patch)
        original = ESC50.__getitem__

        def recording_getitem(self, index):
            item = original(self, index)
            drawn.append((id(self), item["audio_name"]))
            return item

        patch.setattr(ESC50, "__getitem__", recording_getitem)
        code = esc50_cli.main(["--dataset_dir", str(esc50_root), "--fold", "3", "--lr", "1e-3",
                               *tiny_run(tmp, "run", epochs=2)])
    assert code == 0
    return {"tmp": tmp, "opened": opened, "drawn": drawn, "results": results(tmp, "run")}


def test_esc50_held_out_fold_is_never_trained_on(esc50_fold3, esc50_root):
    """--fold 3: training draws only folds 1, 2, 4, 5 (each clip once per epoch), evaluation exactly fold 3;
    the reported accuracy is the last epoch's and the checkpoint carries the 50 ESC-50 classes."""
    (data,) = esc50_fold3["opened"]
    drawn = esc50_fold3["drawn"]
    trained = [name for owner, name in drawn if owner == id(data.train)]
    evaluated = [name for owner, name in drawn if owner == id(data.val)]
    all_names = [line.split(",")[0] for line in (esc50_root / "meta" / "esc50.csv").read_text().splitlines()[1:]]
    fold3 = sorted(name for name in all_names if name.startswith("3-"))
    assert len(all_names) == 15 and len(fold3) == 3
    assert len(drawn) == len(trained) + len(evaluated)  # no other ESC50 object handed out clips
    assert not [name for name in trained if name.startswith("3-")]
    # two epochs of a plain shuffle without replacement: every training clip exactly twice
    assert Counter(trained) == {name: 2 for name in all_names if not name.startswith("3-")}
    assert Counter(evaluated) == {name: 2 for name in fold3}  # evaluated after each of the 2 epochs

    out = esc50_fold3["results"]
    history = out["history"]
    assert [record["epoch"] for record in history] == [1, 2]
    assert out["selection_metric"] == "accuracy" and out["reported"] == "last"
    assert out["accuracy"] == history[-1]["accuracy"] == out["last"]["accuracy"]
    assert out["best"]["accuracy"] == max(record["accuracy"] for record in history)
    # the confusion matrix counts the three fold-3 clips, one per true class
    matrix = np.asarray(out["confusion_matrix"])
    assert matrix.shape == (50, 50) and matrix.sum() == 3
    assert [int(matrix[target].sum()) for target in ESC50_CLASSES] == [1, 1, 1]
    assert math.isclose(out["accuracy"], np.trace(matrix) / 3, abs_tol=1e-9)
    assert all(Path(path).is_file() for path in out["confusion_matrix_files"])

    assert out["checkpoint"] == out["last_checkpoint"] and Path(out["checkpoint"]).is_file()
    stored = torch.load(out["checkpoint"], map_location="cpu", weights_only=True)
    assert tuple(stored["labels"]["names"]) == ESC50_CATEGORIES
    model = efficient_tagging.get_model(out["checkpoint"])
    assert model.label_map.names == ESC50_CATEGORIES and model.num_classes == 50


def test_esc50_all_folds_with_cache_decodes_each_clip_once(esc50_root, tmp_path, monkeypatch, quick_confusion_png):
    """--all_folds --cache_path: five runs (folds 1..5), the mean of their accuracies, one collection cache
    and every clip decoded at most once over all five folds."""
    decoded = Counter()
    original = datasets_base.decode_audio

    def counting_decode(path, *args, **kwargs):
        decoded[Path(path).name] += 1
        return original(path, *args, **kwargs)

    monkeypatch.setattr(datasets_base, "decode_audio", counting_decode)
    cache = tmp_path / "cache"
    code = esc50_cli.main(["--dataset_dir", str(esc50_root), "--all_folds", "--cache_path", str(cache),
                           *tiny_run(tmp_path, "cv")])
    assert code == 0
    out = results(tmp_path, "cv")
    folds = out["folds"]
    assert [entry["fold"] for entry in folds] == [1, 2, 3, 4, 5]
    accuracies = [entry["accuracy"] for entry in folds]
    assert out["mean_accuracy"] == pytest.approx(float(np.mean(accuracies)), abs=1e-12)
    assert out["std_accuracy"] == pytest.approx(float(np.std(accuracies)), abs=1e-12)
    assert out["accuracy"] == out["mean_accuracy"]
    for entry in folds:
        assert Path(entry["checkpoint"]) == tmp_path / "cv" / f"fold{entry['fold']}" / "last.pt"
        assert Path(entry["checkpoint"]).is_file()
    caches = sorted(path.name for path in cache.glob("esc50_all_*.cache"))
    assert caches == ["esc50_all_32k_1s.cache"]
    assert not list(cache.glob("esc50_train*")) and not list(cache.glob("esc50_val*"))
    # 15 clips: each decoded once (the folds all read the one cache), none twice
    assert set(decoded) == {path.name for path in (esc50_root / "audio").iterdir()}
    assert max(decoded.values()) == 1


# ----------------------------------------------------------------------------- FSD50K

def fsd50k_hdf5(raw: Path, out: Path) -> Path:
    assert prepare_cli.main(["--fsd50k_dir", str(raw), "--output_dir", str(out), "--quiet"]) == 0
    return out


def test_fsd50k_from_the_raw_release_selects_on_val_and_reports_eval(fsd50k_raw, tmp_path, capsys):
    """Raw release -> prepare CLI -> `ex_fsd50k --train`: best.pt is picked by the val history, the reported
    mAP is best.pt on the eval split (2 clips), and `--model_path best.pt` without --train gives it again."""
    data_dir = fsd50k_hdf5(fsd50k_raw, tmp_path / "hdf5")
    capsys.readouterr()
    code = fsd50k_cli.main(["--dataset_dir", str(data_dir), "--train", "--lr", "1e-3", *tiny_run(tmp_path, "run", epochs=2,
                                                                                                 batch=2)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fsd50k train: " in printed and ": 2 clips" in printed.split("fsd50k train: ")[1].splitlines()[0]
    assert "fsd50k test: " in printed and ": 2 clips" in printed.split("fsd50k test: ")[1].splitlines()[0]
    out = results(tmp_path, "run")
    history = out["history"]
    assert out["selection_metric"] == "mAP" and out["reported"] == "test"
    scores = [record["mAP"] for record in history]
    assert out["best"]["mAP"] == max(scores)
    assert out["best"]["epoch"] == history[int(np.argmax(scores))]["epoch"]
    # the history's mAP is val's: best.pt evaluated on the val split here reproduces the best epoch's score
    val = fsd50k_dataset(data_dir, "val", clip_length=1.0)
    assert len(val) == sum(1 for _, _, split in DEV.values() if split == "val") == 2
    assert evaluate_checkpoint_on(out["best_checkpoint"], val)["mAP"] == pytest.approx(out["best"]["mAP"], abs=1e-6)
    # ... and the reported mAP is best.pt on the eval split
    test = out["test"]
    assert out["mAP"] == test["mAP"] and test["eval_clips"] == len(EVAL) == 2
    evaluation = fsd50k_dataset(data_dir, "eval", clip_length=1.0)
    assert evaluate_checkpoint_on(out["best_checkpoint"], evaluation)["mAP"] == pytest.approx(test["mAP"], abs=1e-6)
    assert out["checkpoint"] == out["best_checkpoint"]

    # evaluation only (no --train): best.pt on eval, printed and written
    code = fsd50k_cli.main(["--dataset_dir", str(data_dir), "--model_path", out["best_checkpoint"], "--clip_length", "1",
                            "--num_workers", "0", "--no_progress", "--results_json", str(tmp_path / "eval.json")])
    assert code == 0
    printed = capsys.readouterr().out
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["eval_clips"] == 2 and evaluated["mAP"] == pytest.approx(test["mAP"], abs=1e-6)
    assert f"mAP: {evaluated['mAP']:.4f}" in printed and "fsd50k test" in printed


def test_fsd50k_variable_eval_length_evaluates_one_clip_at_a_time(fsd50k_raw, tmp_path, monkeypatch):
    """--variable_eval_length: val and eval clips go through the model one at a time at their own lengths,
    even with --eval_batch_size 4."""
    data_dir = fsd50k_hdf5(fsd50k_raw, tmp_path / "hdf5")
    shapes = []
    original = trainer_module.forward_spectrogram

    def recording(model, spectrogram, *args, **kwargs):
        shapes.append(tuple(spectrogram.shape))
        return original(model, spectrogram, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "forward_spectrogram", recording)
    code = fsd50k_cli.main(["--dataset_dir", str(data_dir), "--train", "--variable_eval_length", "--eval_batch_size", "4",
                            *tiny_run(tmp_path, "run", batch=2)])
    assert code == 0
    out = results(tmp_path, "run")
    assert out["test"]["eval_clips"] == 2 and math.isfinite(out["mAP"])
    # 2 val clips (after the epoch) + 2 eval clips (best.pt), batch size 1 each
    assert len(shapes) == 4 and all(shape[0] == 1 for shape in shapes)
    # val 1003 (2.5 s), 1005 (1.0 s), then eval 2001 (11 s), 2002 (0.5 s), at 10 ms per frame: their own
    # lengths, not the 1 s clip length
    frames = [shape[-1] for shape in shapes]
    assert all(abs(got - want) <= 2 for got, want in zip(frames, [250, 100, 1100, 50])), frames


def test_fsd50k_from_passt_hdf5_layout(tmp_path):
    """PaSST's three FSD50K.{train,val,eval}_mp3.hdf (packed 200-class targets, no attributes) train directly."""
    rng = np.random.default_rng(1)
    counts = {"train": 4, "val": 2, "eval": 3}
    for split, count in counts.items():
        hot = np.zeros((count, FSD50K_NUM_CLASSES), np.uint8)
        hot[np.arange(count), rng.integers(0, 4, size=count)] = 1
        hot[:, 199] = 1
        write_passt_file(tmp_path / f"FSD50K.{split}_mp3.hdf", [f"{split}{i}.mp3" for i in range(count)],
                         [tone(300 + 100 * i, 0.8 + 0.3 * i, 32000) for i in range(count)], np.packbits(hot, axis=-1))
    code = fsd50k_cli.main(["--dataset_dir", str(tmp_path), "--train", *tiny_run(tmp_path, "run", batch=2)])
    assert code == 0
    out = results(tmp_path, "run")
    assert out["test"]["eval_clips"] == 3 and out["mAP"] == out["test"]["mAP"] and math.isfinite(out["mAP"])
    assert len(out["history"]) == 1 and math.isfinite(out["history"][0]["mAP"])
    model = efficient_tagging.get_model(out["best_checkpoint"])
    assert model.num_classes == FSD50K_NUM_CLASSES


# ----------------------------------------------------------------------------- DCASE2020

DCASE_TRAIN_CLIPS = [("airport", "barcelona", "a"), ("bus", "lyon", "b"), ("park", "paris", "c"),
                     ("tram", "vienna", "s1"), ("metro", "prague", "s2"), ("airport", "london", "s3")]
DCASE_EVAL_CLIPS = [("airport", "lisbon", "a"), ("bus", "helsinki", "a"), ("park", "milan", "b"),
                    ("metro", "stockholm", "s4"), ("tram", "barcelona", "s5")]


@pytest.fixture(scope="module")
def dcase_root(tmp_path_factory) -> Path:
    """meta.csv, audio/ (44.1 kHz, 10 s wav), evaluation_setup/fold1_{train,evaluate}.csv, tab-separated."""
    root = tmp_path_factory.mktemp("TAU-urban-acoustic-scenes-2020-mobile-development")
    clips = [(*clip, "train") for clip in DCASE_TRAIN_CLIPS] + [(*clip, "evaluate") for clip in DCASE_EVAL_CLIPS]
    meta = ["filename\tscene_label\tidentifier\tsource_label\n"]
    splits = {"train": [], "evaluate": []}
    for k, (scene, city, device, split) in enumerate(clips):
        name = dcase_name(scene, city, device, k)
        meta.append(f"{name}\t{scene}\t{city}-{1000 + k}\t{device}\n")
        splits[split].append(f"{name}\t{scene}\n")
        write_audio(root / name, tone(300.0 + 100 * DCASE20_SCENES.index(scene), 10.0, 44100), 44100)
    (root / "meta.csv").write_text("".join(meta))
    (root / "evaluation_setup").mkdir()
    for split, rows in splits.items():
        (root / "evaluation_setup" / f"fold1_{split}.csv").write_text("filename\tscene_label\n" + "".join(rows))
    return root


def test_dcase20_accuracy_by_device_recombines_and_marks_unseen(dcase_root, tmp_path):
    """The per-device table: counts add up to the evaluate split, count-weighted accuracies give the overall
    accuracy, and devices absent from fold1_train (s4, s5) are marked unseen."""
    code = dcase20_cli.main(["--dataset_dir", str(dcase_root), *tiny_run(tmp_path, "run", batch=3)])
    assert code == 0
    out = results(tmp_path, "run")
    devices = out["accuracy_by_device"]
    assert set(devices) == {"a", "b", "s4", "s5"}
    assert {name: entry["count"] for name, entry in devices.items()} == {"a": 2, "b": 1, "s4": 1, "s5": 1}
    assert sum(entry["count"] for entry in devices.values()) == len(DCASE_EVAL_CLIPS)
    recombined = sum(e["accuracy"] * e["count"] for e in devices.values()) / sum(e["count"] for e in devices.values())
    assert recombined == pytest.approx(out["accuracy"], abs=1e-9)
    for entry in devices.values():
        assert entry["accuracy"] == pytest.approx(entry["correct"] / entry["count"], abs=1e-12)
    assert {name: entry["seen"] for name, entry in devices.items()} == {"a": True, "b": True, "s4": False, "s5": False}
    assert out["accuracy"] == out["history"][-1]["accuracy"]


def test_dcase20_mixstyle_replaces_mixup(dcase_root, tmp_path, monkeypatch):
    """--mixstyle_p 1.0 (EfficientAT's DCASE recipe): MixStyle runs on every training batch, mixup never."""
    calls = Counter()
    mixstyle, mixup = trainer_module.mixstyle, trainer_module.mixup

    def counted_mixstyle(spectrogram, p, *args, **kwargs):
        calls["mixstyle"] += 1
        assert p == 1.0
        return mixstyle(spectrogram, p, *args, **kwargs)

    def counted_mixup(*args, **kwargs):
        calls["mixup"] += 1
        return mixup(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "mixstyle", counted_mixstyle)
    monkeypatch.setattr(trainer_module, "mixup", counted_mixup)
    code = dcase20_cli.main(["--dataset_dir", str(dcase_root), "--mixstyle_p", "1.0",
                             *tiny_run(tmp_path, "run", batch=3)])
    assert code == 0
    assert calls == {"mixstyle": 2}  # 6 training clips, batches of 3
    out = results(tmp_path, "run")
    assert math.isfinite(out["history"][0]["train_loss"]) and 0.0 <= out["accuracy"] <= 1.0


# ----------------------------------------------------------------------------- OpenMIC

def openmic_layout(folder: Path, relevance: np.ndarray, mask: np.ndarray) -> Path:
    """PaSST's openmic_{train,test}.csv_mp3.hdf: target = [relevance | mask] (N, 40); the test file fixed."""
    folder.mkdir(parents=True)
    names = [f"{100 + i:06d}_3840.mp3" for i in range(len(relevance))]
    clips = [tone(250 + 60 * i, 10.0, 32000) for i in range(len(relevance))]
    write_passt_file(folder / "openmic_train.csv_mp3.hdf", names, clips,
                     np.concatenate([relevance, mask.astype(np.float32)], axis=1))
    test_relevance, test_mask = np.full((2, 20), 0.5, np.float32), np.zeros((2, 20), bool)
    test_mask[:, :4] = True
    test_relevance[:, :4] = [[0.9, 0.1, 0.8, 0.0], [0.1, 0.9, 0.0, 0.7]]
    write_passt_file(folder / "openmic_test.csv_mp3.hdf", ["900000_0.mp3", "900001_0.mp3"],
                     [tone(440, 10.0, 32000), tone(660, 10.0, 32000)],
                     np.concatenate([test_relevance, test_mask.astype(np.float32)], axis=1))
    return folder


def confident_openmic_start(path: Path) -> Path:
    """A 20-class mn checkpoint whose outputs are far from 0 (head bias +-3): at logit 0 the BCE is log 2
    whatever the label, so a fresh head would hide which labels enter the loss."""
    torch.manual_seed(0)
    model = efficient_tagging.get_model(arch="mn", width_mult=0.1, num_classes=20, input_dim_f=32)
    with torch.no_grad():
        model.classifier[5].bias.copy_(torch.tensor([3.0, -3.0] * 10))
    return efficient_tagging.save_checkpoint(path, model, preprocessing={"sr": 32000, "n_mels": 32, "hopsize": 320})


def test_openmic_unknown_labels_carry_no_loss(tmp_path):
    """Same seed, same audio: changing the relevance of unknown (mask 0) labels leaves the training loss as it
    is; changing a known relevance, or turning the unknown labels into known negatives, changes it."""
    start = confident_openmic_start(tmp_path / "start.pt")
    rng = np.random.default_rng(0)
    mask = rng.random((4, 20)) < 0.4
    mask[:, 0] = True
    relevance = np.where(mask, rng.choice([0.0, 0.2, 0.8, 1.0], size=(4, 20)), 0.5).astype(np.float32)
    relevance[0, 0] = 0.9  # a known positive
    variants = {
        "base": (relevance, mask),
        # unknown entries get arbitrary relevances, many of them "positive" (> 0.5)
        "unknown_changed": (np.where(mask, relevance, rng.choice([0.0, 0.7, 0.95, 1.0], size=(4, 20))), mask),
        # one known entry flipped from positive to negative
        "known_changed": (np.where(np.arange(20) == 0, np.where(np.arange(4)[:, None] == 0, 0.1, relevance),
                                   relevance), mask),
        # the unknown entries as known negatives: if unknown meant negative, this would not change the loss
        "unknown_as_negative": (np.where(mask, relevance, 0.0), np.ones_like(mask)),
    }
    losses = {}
    for name, (values, known) in variants.items():
        folder = openmic_layout(tmp_path / name, values.astype(np.float32), known)
        code = openmic_cli.main(["--dataset_dir", str(folder), "--train", "--pretrained_name", str(start),
                                 *tiny_run(tmp_path, f"run_{name}", batch=2)])
        assert code == 0
        out = results(tmp_path, f"run_{name}")
        assert out["selection_metric"] == "mAP" and out["task"] == "partial_multilabel"
        losses[name] = out["history"][0]["train_loss"]
    assert all(math.isfinite(value) for value in losses.values())
    assert losses["unknown_changed"] == pytest.approx(losses["base"], abs=1e-6)
    # a flipped known label at logit ~+3 adds ~3 / (batch 2 x 20 classes) to one step's loss
    assert abs(losses["known_changed"] - losses["base"]) > 1e-2
    assert abs(losses["unknown_as_negative"] - losses["base"]) > 1e-2


# ----------------------------------------------------------------------------- own data: CSV

OWN_CLASSES = ("bell", "drum", "whistle")



@pytest.fixture(scope="module")
def own_audio(tmp_path_factory) -> Path:
    """Four clips per class, 16 kHz wav, 0.5-0.8 s long (95th percentile: 0.8 s)."""
    root = tmp_path_factory.mktemp("own_audio")
    for c, name in enumerate(OWN_CLASSES):
        for k in range(4):
            write_audio(root / name / f"{k:02d}.wav", tone(300.0 * (c + 1), 0.5 + 0.1 * k, 16000), 16000)
    return root


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "filename,labels") -> Path:
    path.write_text(header + "\n" + "".join(f"{name},{labels}\n" for name, labels in rows))
    return path


def test_own_csv_multiclass_and_multilabel(own_audio, tmp_path, capsys):
    """CSV lists: one label per row -> multiclass (accuracy), a row with `a;b` -> multilabel (mAP); the task,
    its reason and the derived clip length are printed."""
    train_rows = [(f"{c}/{k:02d}.wav", c) for c in OWN_CLASSES for k in range(3)]
    eval_rows = [(f"{c}/03.wav", c) for c in OWN_CLASSES]
    train_csv = write_csv(tmp_path / "train.csv", train_rows)
    eval_csv = write_csv(tmp_path / "eval.csv", eval_rows)
    code = own_cli.main(["--train_csv", str(train_csv), "--eval_csv", str(eval_csv), "--audio_root", str(own_audio),
                         *tiny_run(tmp_path, "multiclass", clip=False)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"3 classes, task multiclass ({train_csv}: every row has exactly one label)" in printed
    # training files 0.5, 0.6, 0.7 s: the 95th percentile 0.69 s rounds up to 0.7 s
    assert "clip length 0.7 s (clip length 0.7 s = 95th percentile of the durations of 9 files" in printed
    assert ": 9 clips" in printed and ": 3 clips" in printed
    out = results(tmp_path, "multiclass")
    assert out["task"] == "multiclass" and out["selection_metric"] == "accuracy"
    assert out["accuracy"] == out["history"][-1]["accuracy"] and 0.0 <= out["accuracy"] <= 1.0
    assert np.asarray(out["confusion_matrix"]).sum() == 3
    assert efficient_tagging.get_model(out["checkpoint"]).label_map.names == OWN_CLASSES

    multi_rows = [(name, labels if k % 3 else f"{labels};drum") for k, (name, labels) in enumerate(train_rows)]
    multi_csv = write_csv(tmp_path / "multi.csv", multi_rows)
    code = own_cli.main(["--train_csv", str(multi_csv), "--eval_csv", str(eval_csv), "--audio_root", str(own_audio),
                         *tiny_run(tmp_path, "multilabel", clip=False)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"task multilabel ({multi_csv}: row 1 has 2 labels (bell;drum))" in printed
    out = results(tmp_path, "multilabel")
    assert out["task"] == "multilabel" and out["selection_metric"] == "mAP"
    assert "mAP" in out and math.isfinite(out["mAP"]) and "accuracy" not in out
    assert out["mAP"] == out["history"][-1]["mAP"]


def test_own_csv_errors_name_the_file_and_column(own_audio, tmp_path, capsys):
    """A CSV without the labels column, or one listing a missing file: exit code 1 and an error naming it."""
    bad_column = tmp_path / "no_labels.csv"
    bad_column.write_text("filename,label\nbell/00.wav,bell\n")
    code = own_cli.main(["--train_csv", str(bad_column), "--audio_root", str(own_audio),
                         *tiny_run(tmp_path, "bad")])
    assert code == 1
    err = capsys.readouterr().err
    assert str(bad_column) in err and "missing column(s) ['labels']" in err

    missing_file = write_csv(tmp_path / "missing.csv", [("bell/00.wav", "bell"), ("bell/absent.wav", "bell")])
    code = own_cli.main(["--train_csv", str(missing_file), "--audio_root", str(own_audio),
                         *tiny_run(tmp_path, "bad")])
    assert code == 1
    err = capsys.readouterr().err
    assert "bell/absent.wav" in err and str(missing_file) in err
    assert not (tmp_path / "bad" / "last.pt").exists()


# ----------------------------------------------------------------------------- own data: folders

def test_own_class_folders_split_is_disjoint(own_audio, tmp_path, monkeypatch):
    """--audio_dir with one sub-folder per class, --eval_fraction 0.25: one clip per class held out, the
    training and evaluation clips disjoint and together all twelve."""
    opened = record_opened(monkeypatch)
    code = own_cli.main(["--audio_dir", str(own_audio), "--eval_fraction", "0.25", *tiny_run(tmp_path, "run")])
    assert code == 0
    (data,) = opened
    train, evaluation = set(data.train.audio_names), set(data.val.audio_names)
    assert len(train) == 9 and len(evaluation) == 3 and not train & evaluation
    assert train | evaluation == {f"{c}/{k:02d}.wav" for c in OWN_CLASSES for k in range(4)}
    assert sorted(name.split("/")[0] for name in evaluation) == list(OWN_CLASSES)
    out = results(tmp_path, "run")
    assert out["task"] == "multiclass" and np.asarray(out["confusion_matrix"]).sum() == 3
    assert [int(row) for row in np.asarray(out["confusion_matrix"]).sum(axis=1)] == [1, 1, 1]


def test_fine_tuning_starts_from_the_models_frontend(own_audio, tmp_path, capsys):
    """A checkpoint trained at 16 kHz with 64 mel bins (the demo student's frontend): fine-tuning from it
    uses that frontend -- the old code built the recipe's 32 kHz / 128-mel frontend and crashed with
    "MobileNet: expected 64 mel bins ... got shape (20, 1, 128, 70)". A flag that contradicts the model
    is refused with both values named, unless --override_preprocessing (then printed)."""
    from efficient_tagging.models.factory import save_checkpoint
    from efficient_tagging.tagging.tagger import load_tagger

    demo_like = {"sr": 16000, "n_mels": 64, "win_length": 800, "hopsize": 320, "n_fft": 1024, "clip_length": 2.0}
    model = efficient_tagging.get_model(arch="mn", width_mult=0.1, input_dim_f=64, num_classes=10)
    start = save_checkpoint(tmp_path / "demo_like.pt", model, arch="mn", preprocessing=demo_like,
                            labels=[f"event {i}" for i in range(10)], task="multilabel")
    flags = tiny_run(tmp_path, "from_demo")
    flags = flags[:flags.index("--n_mels")] + flags[flags.index("--n_mels") + 2:]  # the model says how many
    common = ["--audio_dir", str(own_audio), "--eval_fraction", "0.25", "--pretrained_name", str(start)]
    assert own_cli.main([*common, *flags]) == 0
    printed = capsys.readouterr().out
    assert "frontend: sample_rate 16000 (from the model" in printed and "frontend: n_mels 64 (from the model" in printed
    tagger = load_tagger(None, results(tmp_path, "from_demo")["checkpoint"])
    assert tagger.sample_rate == 16000 and tagger.contract.frontend["n_mels"] == 64
    tags = tagger.tag_file(own_audio / "bell" / "00.wav", 3)
    assert len(tags) == 3 and {t.label for t in tags} == set(OWN_CLASSES)

    refused = tiny_run(tmp_path, "refused")
    refused = refused[:refused.index("--n_mels")] + refused[refused.index("--n_mels") + 2:]
    assert own_cli.main([*common, *refused, "--n_mels", "128"]) == 1
    err = capsys.readouterr().err
    assert "--n_mels 128 contradicts the model it starts from" in err and "trained with n_mels 64" in err
    assert "--override_preprocessing" in err
    overridden = tiny_run(tmp_path, "overridden")
    overridden = overridden[:overridden.index("--n_mels")] + overridden[overridden.index("--n_mels") + 2:]
    assert own_cli.main([*common, *overridden, "--n_mels", "128", "--hop_size", "160", "--override_preprocessing"]) == 0
    printed = capsys.readouterr().out
    assert "frontend: n_mels 128 (--override_preprocessing: the model was trained with 64)" in printed
    assert "frontend: hop_size 160 (--override_preprocessing: the model was trained with 320)" in printed
    overridden_tagger = load_tagger(None, results(tmp_path, "overridden")["checkpoint"])
    assert overridden_tagger.contract.frontend["hopsize"] == 160 and overridden_tagger.contract.frontend["n_mels"] == 128
    assert len(overridden_tagger.tag_file(own_audio / "bell" / "00.wav", 3)) == 3


# ----------------------------------------------------------------------------- distillation

def test_kd_with_teacher_logits_from_the_labelling_cli(esc50_fold3, esc50_root, tmp_path, capsys,
                                                       quick_confusion_png):
    """Label ESC-50 with the fold-3 checkpoint (same 50 classes), then fine-tune with --teacher_preds and
    --kd_lambda 0.5: all 12 training clips have teacher logits and the distillation loss is half the loss."""
    teacher = esc50_fold3["results"]["checkpoint"]
    logits = tmp_path / "logits.h5"
    code = label_cli.main(["--dataset", "esc50", "--dataset_dir", str(esc50_root), "--teachers", teacher,
                           "--output", str(logits), "--clip_length", "1", "--batch_size", "8", "--num_workers", "0",
                           "--no_progress"])
    assert code == 0 and logits.is_file()
    capsys.readouterr()
    code = esc50_cli.main(["--dataset_dir", str(esc50_root), "--fold", "3", "--teacher_preds", str(logits),
                           "--kd_lambda", "0.5", *tiny_run(tmp_path, "kd")])
    assert code == 0
    assert "teacher logits: 12 of 12 training clips" in capsys.readouterr().out
    record = results(tmp_path, "kd")["history"][0]
    assert record["distillation_loss"] > 0
    assert record["train_loss"] == pytest.approx(0.5 * record["label_loss"] + 0.5 * record["distillation_loss"],
                                                 rel=1e-5)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_exits_1_with_a_message(tmp_path, capsys):
    """A dataset_dir that does not exist, or own data without --train_csv / --audio_dir: exit code 1 and a
    message naming the path / both flags."""
    missing = tmp_path / "nonexistent"
    assert esc50_cli.main(["--dataset_dir", str(missing), *tiny_run(tmp_path, "esc")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err
    assert own_cli.main(tiny_run(tmp_path, "own")) == 1
    err = capsys.readouterr().err
    assert "--train_csv" in err and "--audio_dir" in err
    assert not (tmp_path / "esc").exists() and not (tmp_path / "own").exists()


def test_single_label_checkpoint_tags_with_softmax(tmp_path):
    """A checkpoint trained with task multiclass stores its task; the tagger then gives softmax
    probabilities (summing to 1 over classes), while a multi-label one keeps per-class sigmoids."""
    import torch
    from efficient_tagging import AudioTagger, get_model, save_checkpoint

    model = get_model(arch="mn", width_mult=0.1, num_classes=5)
    single = save_checkpoint(tmp_path / "single.pt", model, arch="mn", config=dict(model.config),
                             labels=[f"c{i}" for i in range(5)], task="multiclass")
    multi = save_checkpoint(tmp_path / "multi.pt", model, arch="mn", config=dict(model.config),
                            labels=[f"c{i}" for i in range(5)], task="multilabel")
    assert torch.load(single, weights_only=True)["task"] == "multiclass"
    waveform = torch.randn(2, 32000) * 0.1
    p_single = AudioTagger(get_model(str(single))).probabilities(waveform)
    p_multi = AudioTagger(get_model(str(multi))).probabilities(waveform)
    torch.testing.assert_close(p_single.sum(dim=1), torch.ones(2))
    logits = AudioTagger(get_model(str(multi)))(waveform)
    torch.testing.assert_close(p_multi, torch.sigmoid(logits))
    torch.testing.assert_close(p_single, torch.softmax(logits, dim=1))


def test_preparation_packs_esc50_folds_and_keeps_names_and_labels(esc50_root, tmp_path):
    """prepare_audioset.py --dataset esc50: one AudioSet-format HDF5 per fold, holding exactly that fold's clips
    under their own names with their classes, cut to the given clip length; running it again is refused
    unless --overwrite (no half-written second copy)."""
    from efficient_tagging.cli import prepare as prepare_cli
    from efficient_tagging.data.datasets import ESC50
    from efficient_tagging.data.hdf5 import AudioSetDataset, read_label_map

    out = tmp_path / "packed"
    assert prepare_cli.main(["--dataset", "esc50", "--dataset_dir", str(esc50_root), "--output_dir", str(out),
                             "--clip_length", "1", "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.h5")) == [f"esc50_fold{k}.h5" for k in range(1, 6)]
    for fold in range(1, 6):
        packed = AudioSetDataset([out / f"esc50_fold{fold}.h5"], clip_length=1.0)
        files = ESC50(esc50_root, [fold], clip_length=1.0)
        assert list(packed.audio_names) == list(files.audio_names)
        np.testing.assert_array_equal(np.asarray(packed.targets), np.asarray(files.targets))
        assert read_label_map(out / f"esc50_fold{fold}.h5").names == files.label_map.names
        item = packed[0]
        assert item["waveform"].shape == (32000,)
        assert float(item["waveform"].abs().max()) > 0.05  # the tone survived mp3 at 32 kHz
    assert prepare_cli.main(["--dataset", "esc50", "--dataset_dir", str(esc50_root), "--output_dir", str(out),
                             "--quiet"]) == 2


README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_fine_tuning_command_in_the_readme_parses():
    """Each `python experiments/ex_<recipe>.py ...` line in the README is accepted by that script's parser
    (a renamed or removed flag fails here, not in a user's shell)."""
    import shlex

    from efficient_tagging.cli.finetune import build_parser

    recipes = {"ex_esc50.py": "esc50", "ex_fsd50k.py": "fsd50k", "ex_dcase20.py": "dcase20",
               "ex_openmic.py": "openmic", "ex_finetune.py": "own"}
    text = README.read_text().replace("\\\n", " ")
    commands = [line.strip() for line in text.splitlines()
                if line.strip().startswith("python experiments/ex_") and line.split()[1].split("/")[-1] in recipes]
    assert len(commands) >= 7
    for command in commands:
        words = shlex.split(command.split("#")[0])
        build_parser(recipes[words[1].split("/")[-1]]).parse_args(words[2:])


def test_cross_validation_checks_every_fold_folder_first(esc50_root, tmp_path, monkeypatch, capsys):
    """A finished fold is never replaced unasked, and the check comes before any data is read (issue 24)."""
    opened = []
    monkeypatch.setattr(train_finetune, "open_datasets", lambda *a, **k: opened.append(1))
    (tmp_path / "cv" / "fold3").mkdir(parents=True)
    (tmp_path / "cv" / "fold3" / "best.pt").write_bytes(b"an earlier fold")
    code = esc50_cli.main(["--dataset_dir", str(esc50_root), "--all_folds", *tiny_run(tmp_path, "cv")])
    assert code == 1 and not opened
    assert "fold3 already holds a training run" in capsys.readouterr().err
