"""Tagging a file end to end through the command line and the AudioTagger API."""
import subprocess
import sys

import pytest
import torch

from conftest import LABELS_CSV, METRO_WAV, REPO, requires_shared
from efficient_tagging import get_model, save_checkpoint
from efficient_tagging.audio import encode_audio
from efficient_tagging import AudioTagger
from efficient_tagging.labels import audioset_labels
from efficient_tagging.models import get_entry

SCRIPT = REPO / "experiments" / "inference.py"


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def release_cache(tmp_path_factory):
    """A cache holding an mn04_as release-layout file (random weights) and the label list."""
    cache = tmp_path_factory.mktemp("cache")
    entry = get_entry("mn04_as")
    torch.manual_seed(0)
    model = get_model(arch="mn", **entry.config)
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, cache / entry.filename)
    if LABELS_CSV.is_file():
        (cache / "class_labels_indices.csv").write_bytes(LABELS_CSV.read_bytes())
    return cache


@requires_shared
def test_cli_tags_a_44k_wav_by_model_name(release_cache):
    result = _run("--model_name", "mn04_as", "--audio_path", METRO_WAV, "--cache_dir", release_cache)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    tag_lines = lines[1:-1]
    assert len(tag_lines) == 10
    names = set(audioset_labels(LABELS_CSV).names)
    for line in tag_lines:
        label, probability = line.rsplit(": ", 1)
        assert label in names and 0.0 <= float(probability) <= 1.0


@requires_shared
def test_cli_local_plain_checkpoint_and_cwd_inside_experiments(release_cache, tmp_path):
    plain = release_cache / get_entry("mn04_as").filename
    result = _run("--model_name", "mn04_as", "--model_path", plain, "--audio_path", METRO_WAV,
                  "--labels_path", LABELS_CSV, "--top_k", "3", "--json", cwd=REPO / "experiments")
    assert result.returncode == 0, result.stderr
    assert '"probability"' in result.stdout and result.stdout.count('"label"') == 3


@requires_shared
def test_api_matches_cli_and_resamples_any_rate(release_cache, tmp_path):
    tagger = AudioTagger.from_pretrained("mn04_as", cache_dir=release_cache)
    from_wav = tagger.tag_file(METRO_WAV, top_k=5)
    # the same audio as 48 kHz FLAC gives (nearly) the same tags
    from efficient_tagging.audio import load_audio
    flac = tmp_path / "metro.flac"
    flac.write_bytes(encode_audio(load_audio(METRO_WAV, 48000), 48000, "flac"))
    from_flac = tagger.tag_file(flac, top_k=5)
    assert [t.label for t in from_wav] == [t.label for t in from_flac]
    for a, b in zip(from_wav, from_flac):
        assert abs(a.probability - b.probability) < 0.02


@requires_shared
def test_own_checkpoint_carries_its_labels(tmp_path):
    model = get_model(arch="mn", width_mult=0.4, num_classes=3)
    path = save_checkpoint(tmp_path / "tiny.pt", model, labels=audioset_labels(LABELS_CSV).__class__.from_names(
        ["dog", "cat", "bird"]), preprocessing={"n_mels": 128})
    result = _run("--model_path", path, "--audio_path", METRO_WAV, "--top_k", "3")
    assert result.returncode == 0, result.stderr
    assert {line.split(":")[0] for line in result.stdout.splitlines()[1:-1]} == {"dog", "cat", "bird"}


@requires_shared  # the label list comes from ../shared (no download here)
def test_cli_unreadable_audio_names_the_file(release_cache, tmp_path):
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF" + b"\x00" * 100)
    result = _run("--model_name", "mn04_as", "--audio_path", bad, "--cache_dir", release_cache)
    assert result.returncode == 1
    assert "corrupt.wav" in result.stderr


def test_cli_help_explains_the_flags():
    result = _run("--help")
    assert result.returncode == 0
    for flag in ("--audio_path", "--model_name", "--model_path", "--top_k", "--labels_path", "--cuda"):
        assert flag in result.stdout
