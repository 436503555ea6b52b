"""Transformer teachers in the catalogue: PaSST / AST names, frontends, tagging, ensembles, complexity."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import FIXTURES, LABELS_CSV, requires_shared
from efficient_tagging.frontends.ast_fbank import ASTFbank
from efficient_tagging.complexity import build_model
from efficient_tagging.cli.complexity import main as complexity_main
from efficient_tagging.frontends.mel import AugmentMelSTFT
from efficient_tagging import AudioTagger, build_frontend
from efficient_tagging.labels import LabelMap
from efficient_tagging.models import CATALOGUE, get_entry, get_model
from efficient_tagging import TeacherEnsemble
from efficient_tagging.models.registry import ARCHITECTURE_PRESETS

torch.set_num_threads(1)


def _releases() -> dict:
    return json.loads((FIXTURES / "official_release_urls.json").read_text())


PASST_NAMES = [n for n, r in _releases().items() if r["family"] == "passt"] if FIXTURES.is_dir() else []


def _meta_layout(arch: str, config: dict) -> dict:
    model = build_model(arch, config, "meta")
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@requires_shared
@pytest.mark.parametrize("name", PASST_NAMES, ids=[n.strip() for n in PASST_NAMES])
def test_every_passt_release_resolves_with_the_manifest_layout(name):
    release = _releases()[name]
    manifest = json.loads((FIXTURES / "official_state_dict_keys.json").read_text())[release["architecture"]]
    entry = get_entry(name)
    assert entry.arch == "passt" and entry.url == release["url"] and entry.filename == release["filename"]
    assert entry.num_classes == release["num_classes"]
    assert list(entry.config["img_size"]) == release["input_size"][1:]
    assert entry.preprocessing["frontend"] == "passt_mel"
    assert entry.published_map is not None
    assert _meta_layout(entry.arch, entry.config) == manifest


def test_passt_metadata_from_names():
    assert get_entry("passt_s_swa_p16_128_ap476").published_map == pytest.approx(0.476)
    assert get_entry("passt_s_swa_p16_128_ap4761").published_map == pytest.approx(0.4761)
    assert get_entry("passt_l_kd_p16_128_ap47").published_map == pytest.approx(0.47)
    assert get_entry("passt_l_kd_p16_128_ap47").config["depth"] == 7
    assert get_entry("passt_s_p16_s12_128_ap470").config["stride"] == (12, 12)
    assert get_entry("passt_s_swa_f128_stfthop100_p16_s10_ap473").preprocessing["hopsize"] == 100
    assert get_entry("passt_s_swa_f128_stfthop160_p16_s10_ap473").preprocessing["hopsize"] == 160
    openmic = get_entry("openmic2008_passt_u_f128_p16_s10_ap85")  # release name has two trailing spaces
    assert openmic.dataset == "openmic" and openmic.num_classes == 20


@requires_shared
def test_ast_entries_build_with_the_official_layout():
    manifest = json.loads((FIXTURES / "ast" / "official_state_dict_keys.json").read_text())
    entry = get_entry("ast_audioset_10_10_0.4593")
    assert entry.arch == "ast" and entry.filename == manifest["checkpoint_file"]
    assert entry.url in [u["url"] for u in manifest["checkpoint_urls"][entry.filename]]
    assert entry.published_map == pytest.approx(0.4593) and entry.num_classes == 527
    assert entry.config["imagenet_pretrain"] is False and entry.config["audioset_pretrain"] is False
    assert _meta_layout(entry.arch, entry.config) == manifest["state_dict_bare"]
    for name, shapes in manifest["other_official_checkpoints_derived_shapes"].items():
        key = "ast_" + name[:-len(".pth")]
        if key not in CATALOGUE:
            continue  # speechcommands: not an AudioSet tagger
        layout = _meta_layout("ast", get_entry(key).config)
        assert layout["v.pos_embed"] == shapes["module.v.pos_embed"], name


def test_build_frontend_for_each_kind():
    mel = build_frontend({})
    assert isinstance(mel, AugmentMelSTFT) and mel.fmax == 15000 and not mel.training
    passt = build_frontend(get_entry("passt_s_swa_p16_128_ap476").preprocessing)
    assert isinstance(passt, AugmentMelSTFT) and passt.fmax == 15500 and passt.fmin_aug_range == 1
    hop100 = build_frontend(get_entry("passt_s_swa_f128_stfthop100_p16_s10_ap473").preprocessing)
    assert hop100.num_frames(320000) == 3200
    fbank = build_frontend(get_entry("ast_audioset_10_10_0.4593").preprocessing)
    assert isinstance(fbank, ASTFbank) and fbank.layout == "b1ft" and fbank.sample_rate == 16000
    assert fbank.target_length == 1024 and fbank.norm_mean == pytest.approx(-4.2677393)
    assert fbank(torch.randn(1, 16000)).shape == (1, 1, 128, 1024)
    with pytest.raises(ValueError, match="unknown frontend"):
        build_frontend({"frontend": "cqt"})


TINY_PASST = dict(embed_dim=64, depth=1, num_heads=4)


def _tiny_passt_entry(monkeypatch, tmp_path, name="passt_s_swa_p16_128_ap476", num_classes=527):
    entry = get_entry(name)
    tiny = dataclasses.replace(entry, config=dict(entry.config, num_classes=num_classes, **TINY_PASST))
    monkeypatch.setitem(CATALOGUE, name, tiny)
    torch.manual_seed(0)
    model = get_model(arch="passt", **tiny.config)
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / tiny.filename)
    return tiny


@requires_shared
def test_audio_tagger_tags_with_a_passt_release_from_the_cache(monkeypatch, tmp_path):
    _tiny_passt_entry(monkeypatch, tmp_path)
    tagger = AudioTagger.from_pretrained("passt_s_swa_p16_128_ap476", cache_dir=tmp_path, labels_path=LABELS_CSV)
    assert tagger.sample_rate == 32000 and tagger.frontend.fmax == 15500
    waveform = torch.randn(32000 * 3) * 0.1
    tags = tagger.tag_waveform(waveform, top_k=3)
    assert len(tags) == 3 and tags[0].label in tagger.label_map.names
    # 25 s > the 10-s grid: mean over sliding windows, as PaSST.sliding_window_forward
    long = torch.randn(1, 32000 * 25) * 0.1
    spec = tagger.frontend(long).unsqueeze(1)
    expected = tagger.model.sliding_window_logits(spec)
    with torch.no_grad():
        torch.testing.assert_close(tagger(long), expected)


def _tiny_ast_tagger(num_classes=527) -> AudioTagger:
    torch.manual_seed(1)
    config = dict(get_entry("ast_audioset_10_10_0.4593").config, model_size="tiny224", label_dim=num_classes,
                  input_tdim=128)
    model = get_model(arch="ast", **config)
    model.preprocessing = dict(get_entry("ast_audioset_10_10_0.4593").preprocessing, target_length=128)
    return AudioTagger(model)


def test_audio_tagger_windows_ast_inputs_longer_than_its_input_length():
    tagger = _tiny_ast_tagger()  # input_tdim 128 frames = 1.28 s at 16 kHz
    assert isinstance(tagger.frontend, ASTFbank) and not tagger.frontend.cut_long
    long = torch.randn(1, 16000 * 4) * 0.1
    spec = tagger.frontend(long)
    assert spec.shape == (1, 1, 128, 398)  # every frame kept, not cut to 128
    cut = ASTFbank(target_length=128, layout="b1ft")(long)
    torch.testing.assert_close(cut, spec[..., :128])  # the reference frontend cuts to the same first frames
    # windows of 128 frames every 32 frames, plus one ending at the last frame (398 - 128 = 270)
    starts = list(range(0, 257, 32)) + [270]
    assert tagger.model.window_starts(398) == starts
    with torch.no_grad():
        expected = torch.stack([tagger.model(spec[..., s:s + 128])[0] for s in starts]).mean(0)
        torch.testing.assert_close(tagger(long), expected)
        # a clip within the input length is padded to it and tagged in one pass
        short = torch.randn(1, 8000) * 0.1
        torch.testing.assert_close(tagger(short), tagger.model(tagger.frontend(short))[0])
    with pytest.raises(ValueError, match="input_tdim=128"):
        tagger.model.sliding_window_forward(spec[..., :100])


def _small_mn_tagger(num_classes=527) -> AudioTagger:
    torch.manual_seed(2)
    model = get_model(arch="mn", width_mult=0.1, num_classes=num_classes)
    return AudioTagger(model)


def test_ensemble_averages_members_at_their_own_rates():
    mn, ast = _small_mn_tagger(), _tiny_ast_tagger()
    assert (mn.sample_rate, ast.sample_rate) == (32000, 16000)
    ensemble = TeacherEnsemble([mn, ast], names=["mn01", "ast_tiny"])
    assert ensemble.sample_rate == 32000 and ensemble.num_classes == 527 and ensemble.names == ["mn01", "ast_tiny"]
    assert [p["frontend"] for p in ensemble.member_preprocessing] == ["mel", "ast_fbank"]
    waveform = torch.randn(2, 32000) * 0.1
    from efficient_tagging.audio import resample
    with torch.no_grad():
        expected = (mn(waveform) + ast(resample(waveform, 32000, 16000))) / 2
        torch.testing.assert_close(ensemble(waveform), expected)
    assert len(ensemble.tag_waveform(waveform[0], top_k=5)) == 5
    assert ensemble.probabilities(waveform).shape == (2, 527)


def test_ensemble_rejects_members_with_other_class_counts():
    with pytest.raises(ValueError, match=r"same number of classes.*mn01: 527.*ast_tiny: 10"):
        TeacherEnsemble([_small_mn_tagger(), _tiny_ast_tagger(num_classes=10)], names=["mn01", "ast_tiny"])


@requires_shared
def test_ensemble_from_names_and_cli(monkeypatch, tmp_path, capsys):
    from efficient_tagging.cli import tag as inference
    from conftest import METRO_WAV
    _tiny_passt_entry(monkeypatch, tmp_path, "passt_s_swa_p16_128_ap476")
    _tiny_passt_entry(monkeypatch, tmp_path, "passt_s_kd_p16_128_ap486")
    ensemble = TeacherEnsemble.from_names(["passt_s_swa_p16_128_ap476", "passt_s_kd_p16_128_ap486"],
                                          cache_dir=tmp_path, labels_path=LABELS_CSV)
    assert ensemble.names == ["passt_s_swa_p16_128_ap476", "passt_s_kd_p16_128_ap486"]
    if METRO_WAV.is_file():
        code = inference.main(["--audio_path", str(METRO_WAV), "--ensemble", "passt_s_swa_p16_128_ap476",
                               "passt_s_kd_p16_128_ap486", "--cache_dir", str(tmp_path), "--labels_path",
                               str(LABELS_CSV), "--json", "--top_k", "2"])
        assert code == 0
        assert len(json.loads(capsys.readouterr().out)[0]["top_k"]) == 2


def _complexity_json(capsys, *args) -> dict:
    assert complexity_main(["--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_complexity_of_a_passt_release(capsys):
    data = _complexity_json(capsys, "--model", "passt_s_swa_p16_128_ap476")
    assert data["params"] == 86_153_758
    # the PaSST frontend gives 1000 frames for 10 s; 12 x 99 patches (the trained grid) + cls + dist
    assert data["input_shape"] == [1, 1, 128, 1000]
    assert data["tokens"] == 1190 and data["token_grid"] == [12, 99]
    assert data["macs_by_kind"]["attention"] == 12 * 2 * 1190 * 1190 * 768
    assert data["peak_memory_kb"] is None


def test_complexity_of_the_ast_preset(capsys):
    assert "ast_base384" in ARCHITECTURE_PRESETS and "ast_base384" not in CATALOGUE
    data = _complexity_json(capsys, "--model", "ast_base384")
    assert data["params"] == 88_132_063
    assert data["input_shape"] == [1, 1, 128, 1024]
    assert data["tokens"] == 1214 and data["token_grid"] == [12, 101]
    assert complexity_main(["--model", "ast_base384"]) == 0
    assert "tokens: 1214 (12\u00d7101 patches + 2)" in capsys.readouterr().out
    assert complexity_main(["--model", "ast_base384", "--n_mels", "64"]) == 2


def test_complexity_table_with_teachers(capsys, tmp_path):
    names = ["mn10_as", "passt_s_swa_p16_128_ap476", "ast_audioset_10_10_0.4593"]
    assert complexity_main(["--table", "--teachers", "--json", "--only", *names]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == sorted(names)
    assert rows["passt_s_swa_p16_128_ap476"]["params"] == 86_153_758
    assert rows["passt_s_swa_p16_128_ap476"]["tokens"] == 1190
    assert rows["ast_audioset_10_10_0.4593"]["params"] == 88_132_063
    assert rows["ast_audioset_10_10_0.4593"]["tokens"] == 1214
    # without --teachers the table is the students' only, with the same student rows
    assert complexity_main(["--table", "--json", "--only", *names]) == 0
    assert json.loads(capsys.readouterr().out) == [rows["mn10_as"]]
    plot = tmp_path / "complexity.png"
    assert complexity_main(["--table", "--teachers", "--only", *names, "--plot", str(plot)]) == 0
    out = capsys.readouterr()
    assert "global" in out.out and plot.stat().st_size > 0 and "3 models" in out.err
    assert complexity_main(["--teachers"]) == 2  # needs --table


def test_evaluation_command_windows_an_ast_over_long_clips(tmp_path):
    """`ex_audioset.py` without --train: an AST checkpoint evaluated on clips longer than its input."""
    from conftest import make_tiny_audioset
    from efficient_tagging.data.hdf5 import AudioSetDataset
    from efficient_tagging.models.factory import save_checkpoint
    from efficient_tagging.cli.audioset import main as audioset_main
    from efficient_tagging.train.metrics import evaluate_predictions

    eval_path = make_tiny_audioset(tmp_path / "eval.h5", num_clips=12, num_classes=4, seconds=2.0)
    tagger = _tiny_ast_tagger(num_classes=4)  # input_tdim 128 frames: a 2 s clip (198 frames) needs windows
    checkpoint = save_checkpoint(tmp_path / "ast_tiny.pt", tagger.model, arch="ast",
                                 preprocessing=tagger.model.preprocessing)
    results = tmp_path / "results.json"
    assert audioset_main(["--model_path", str(checkpoint), "--eval_hdf5", str(eval_path), "--clip_length", "2",
                          "--batch_size", "5", "--no_progress", "--results_json", str(results)]) == 0
    reported = json.loads(results.read_text())
    # the same clips through AudioTagger (sliding windows), one at a time
    dataset = AudioSetDataset([eval_path], sample_rate=16000, clip_length=2.0)
    with torch.no_grad():
        logits = torch.cat([tagger(dataset[i]["waveform"][None]) for i in range(len(dataset))])
    targets = torch.stack([torch.as_tensor(dataset[i]["target"]) for i in range(len(dataset))]).float()
    expected = evaluate_predictions(targets.numpy(), logits.numpy())
    assert reported["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
