"""get_model: fixture configs, the release catalogue, local checkpoints and clear failures."""
import json
import urllib.error

import pytest
import torch

from conftest import FIXTURES, LABELS_CSV, fixture_files, float_state_dict, load_fixture, requires_shared
from efficient_tagging import get_model, hub, save_checkpoint
from efficient_tagging.labels import audioset_labels
from efficient_tagging.models import CATALOGUE, get_entry, known_names, read_checkpoint
from efficient_tagging.models.mobilenet import MobileNet

MODEL_FIXTURES = fixture_files("mn", "dymn")


@requires_shared
@pytest.mark.parametrize("path", MODEL_FIXTURES, ids=[p.stem for p in MODEL_FIXTURES])
def test_fixture_config_builds_the_matching_model(path):
    fx = load_fixture(path)
    model = get_model(arch=fx["kind"], **fx["config"])
    model.load_state_dict(float_state_dict(fx["state_dict"]), strict=True)
    model.eval()
    with torch.no_grad():
        logits, embedding = model(fx["input"])
    torch.testing.assert_close(logits, fx["logits"], **fx["meta"]["tolerance"])
    torch.testing.assert_close(embedding, fx["embedding"], **fx["meta"]["tolerance"])


@requires_shared
def test_catalogue_covers_every_efficientat_release_name():
    releases = json.loads((FIXTURES / "official_release_urls.json").read_text())
    for name, release in releases.items():
        if release["family"] not in ("mn", "dymn"):
            continue
        entry = get_entry(name)
        assert entry.url == release["url"], name
        assert entry.filename == release["filename"], name
        assert entry.arch == release["family"], name


@requires_shared
@pytest.mark.parametrize("name", ["mn04_as", "mn10_as_fc_s2221", "mn10_as_mels_64", "dymn04_as",
                                  "dymn04_replace_se_as"])
def test_catalogue_configs_have_the_manifest_layout(name):
    releases = json.loads((FIXTURES / "official_release_urls.json").read_text())
    manifest = json.loads((FIXTURES / "official_state_dict_keys.json").read_text())[releases[name]["architecture"]]
    entry = get_entry(name)
    model = get_model(arch=entry.arch, **entry.config)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == manifest


def test_catalogue_metadata():
    assert get_entry("mn10_as").published_map == pytest.approx(0.471)
    assert get_entry("mn40_as_ext").published_map == pytest.approx(0.487)
    assert get_entry("mn10_as_hop_15").preprocessing["hopsize"] == 480
    assert get_entry("mn10_as_mels_64").preprocessing["n_mels"] == 64
    assert get_entry("mn10_as_mels_64").config["input_dim_f"] == 64
    assert get_entry("mn10_as_fc_s2211").config["strides"] == [2, 2, 1, 1]
    assert get_entry("dymn10_as").config["T_max"] == 1.0
    assert get_entry("mn10_im").num_classes == 1000
    assert len(known_names("dymn")) == 11


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError) as error:
        get_model("mn99_as")
    assert "mn10_as" in str(error.value) and "dymn20_as" in str(error.value)


def _fake_release(tmp_path, name="mn10_as", prefix="module."):
    """A release-layout file (plain state_dict, DataParallel prefix) with random weights."""
    entry = get_entry(name)
    reference = get_model(arch=entry.arch, **entry.config)
    torch.save({prefix + k: v for k, v in reference.state_dict().items()}, tmp_path / entry.filename)
    return reference


def test_pretrained_name_loads_from_the_cache_strictly(tmp_path, capsys):
    reference = _fake_release(tmp_path)
    model = get_model("mn10_as", cache_dir=tmp_path)
    assert capsys.readouterr() == ("", "")  # get_model prints nothing by default
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.preprocessing["hopsize"] == 320 and model.dataset == "audioset"


def test_pretrained_name_downloads_from_a_file_url_mirror(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _fake_release(mirror, "dymn04_as")
    monkeypatch.setenv("EFFICIENT_TAGGING_MIRROR", mirror.as_uri())
    model = get_model("dymn04_as", cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "dymn04_as.pt").is_file()
    assert model.temperature == pytest.approx(1.0)  # released DyMNs run at their final temperature


def test_pretrained_name_offline_without_file_fails_clearly(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub.urllib.request, "urlopen", offline)
    with pytest.raises(hub.DownloadError) as error:
        get_model("mn10_as", cache_dir=tmp_path)
    assert get_entry("mn10_as").url in str(error.value)
    assert str(tmp_path / "mn10_as_mAP_471.pt") in str(error.value)


def test_checkpoint_of_another_width_names_the_problem(tmp_path, monkeypatch):
    """A cached release file of another width: moved aside and fetched again (here from an empty mirror,
    so that fails), the error names the problem, where the bad copy went and where a good one goes."""
    monkeypatch.setenv("EFFICIENT_TAGGING_MIRROR", (tmp_path / "empty_mirror").as_uri())
    torch.save(MobileNet(width_mult=0.4).state_dict(), tmp_path / "mn10_as_mAP_471.pt")
    with pytest.raises(hub.DownloadError, match="(?s)moved to .*mn10_as_mAP_471.pt.bad-.*width_mult"):
        get_model("mn10_as", cache_dir=tmp_path)


def test_not_a_checkpoint_is_rejected(tmp_path):
    # A local file that is not a checkpoint is refused; a bad file in the download cache is moved aside
    # and downloaded again instead (tests/test_robustness_downloads.py).
    local = tmp_path / "mine.pt"
    local.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        get_model(str(local))


def test_new_number_of_classes_keeps_the_body(tmp_path):
    reference = _fake_release(tmp_path)
    model = get_model("mn10_as", cache_dir=tmp_path, num_classes=50)
    assert model.state_dict()["classifier.5.weight"].shape == (50, 1280)
    assert torch.equal(model.state_dict()["features.3.block.0.0.weight"],
                       reference.state_dict()["features.3.block.0.0.weight"])
    assert torch.equal(model.state_dict()["classifier.2.weight"], reference.state_dict()["classifier.2.weight"])


@requires_shared
def test_own_checkpoint_round_trip_keeps_config_and_labels(tmp_path):
    labels = audioset_labels(LABELS_CSV)
    model = get_model(arch="mn", width_mult=0.4, head_type="fully_convolutional")
    model.preprocessing = {"n_mels": 128, "hopsize": 320}
    path = save_checkpoint(tmp_path / "run" / "best.pt", model, labels=labels, dataset="audioset")
    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["labels"]["names"][0] == "Speech"
    restored = get_model(str(path))
    assert restored.label_map == labels
    assert restored.config["head_type"] == "fully_convolutional"
    state_dict, metadata = read_checkpoint(path)
    assert metadata["arch"] == "mn"
    for key, value in model.state_dict().items():
        assert torch.equal(state_dict[key], value)
    restored_from_url = get_model(path.as_uri())
    assert restored_from_url.config == restored.config


def test_checkpoints_are_mapped_not_read_and_the_old_format_still_loads(tmp_path):
    reference = MobileNet(width_mult=0.4)
    torch.save({"model": reference.state_dict(), "optimizer": {"state": {}}}, tmp_path / "zip.pt")
    torch.save(reference.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    mapped, _ = read_checkpoint(tmp_path / "zip.pt")
    legacy, _ = read_checkpoint(tmp_path / "legacy.pt")  # torch < 1.6 format: cannot be mapped, read whole
    for key, value in reference.state_dict().items():
        assert torch.equal(mapped[key], value) and torch.equal(legacy[key], value)
    weight = "features.0.0.weight"
    before = (tmp_path / "zip.pt").read_bytes()
    mapped[weight].add_(1.0)  # a private mapping: the file stays as it was
    assert (tmp_path / "zip.pt").read_bytes() == before
    assert torch.equal(read_checkpoint(tmp_path / "zip.pt")[0][weight], reference.state_dict()[weight])


def test_plain_local_state_dict_needs_and_uses_the_given_config(tmp_path):
    reference = MobileNet(width_mult=0.4)
    torch.save(reference.state_dict(), tmp_path / "plain.pt")
    model = get_model(str(tmp_path / "plain.pt"), arch="mn", width_mult=0.4)
    assert torch.equal(model.state_dict()["features.0.0.weight"], reference.state_dict()["features.0.0.weight"])
    with pytest.raises(ValueError, match="does not fit"):
        get_model(str(tmp_path / "plain.pt"), arch="mn", width_mult=1.0)


def test_every_catalogue_entry_builds():
    # building (not loading) is cheap for all but the widest models; check a spread
    for name in ("mn01_as", "mn10_im_pytorch", "mn10_as_fc_s2211", "dymn10_replace_se_as"):
        entry = CATALOGUE[name]
        model = get_model(arch=entry.arch, **entry.config)
        assert model.num_classes == entry.num_classes


TEACHER_FIXTURES = fixture_files("passt")


@requires_shared
@pytest.mark.parametrize("path", TEACHER_FIXTURES, ids=[p.stem for p in TEACHER_FIXTURES])
def test_passt_fixture_config_builds_through_get_model(path):
    fx = load_fixture(path)
    model = get_model(arch="passt", **fx["config"]).eval()
    model.load_state_dict(float_state_dict(fx["state_dict"]), strict=True)
    with torch.no_grad():
        logits, embedding = model(fx["input"])
    torch.testing.assert_close(logits, fx["logits"], **fx["meta"]["tolerance"])
    torch.testing.assert_close(embedding, fx["embedding"], **fx["meta"]["tolerance"])


@requires_shared
def test_ast_fixture_config_builds_through_get_model():
    path = FIXTURES / "ast" / "tiny224_f16_t16_tdim512_l50.pt"
    fx = load_fixture(path)
    model = get_model(arch="ast", **fx["config"]).eval()
    model.load_state_dict(float_state_dict(fx["state_dict"]), strict=True)
    with torch.no_grad():  # the tagger form takes (B, 1, F, T); the reference input is (B, T, F)
        logits, _ = model(fx["input"].transpose(1, 2).unsqueeze(1))
    torch.testing.assert_close(logits, fx["logits"], atol=1e-4, rtol=1e-4)


def test_num_classes_is_one_spelling_for_every_family_fresh_or_pretrained():
    """AST's constructor says `label_dim`; get_model takes `num_classes` for it too, also for a fresh model."""
    model = get_model(arch="ast", num_classes=5, model_size="tiny224", input_tdim=128, imagenet_pretrain=False)
    assert model.config["label_dim"] == 5 and model.num_classes == 5
