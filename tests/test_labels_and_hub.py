"""AudioSet label list and the download cache (offline-safe: only local files and file:// URLs)."""
import urllib.error

import pytest

from conftest import LABELS_CSV, requires_shared
from efficient_tagging import hub
from efficient_tagging.labels import AUDIOSET_LABELS_FILENAME, LabelMap, audioset_labels, read_class_labels_csv


@requires_shared
def test_official_label_list_from_path():
    labels = audioset_labels(LABELS_CSV)
    assert len(labels) == 527
    assert labels.names[0] == "Speech" and labels.ids[0] == "/m/09x0r"
    assert labels.index("Speech") == 0 and labels.index("/m/09x0r") == 0
    assert LabelMap.from_dict(labels.to_dict()) == labels


@requires_shared
def test_label_list_is_taken_from_the_cache(tmp_path):
    hub.copy_into_cache(LABELS_CSV, cache=tmp_path)
    assert len(audioset_labels(cache=tmp_path, download=False)) == 527


@requires_shared
def test_label_list_download_goes_through_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("efficient_tagging.labels.AUDIOSET_LABELS_URL", LABELS_CSV.resolve().as_uri())
    labels = audioset_labels(cache=tmp_path / "cache")
    assert len(labels) == 527
    assert (tmp_path / "cache" / AUDIOSET_LABELS_FILENAME).is_file()


def test_malformed_label_files_name_the_problem(tmp_path):
    bad_header = tmp_path / "a.csv"
    bad_header.write_text("id,name\n0,x\n")
    with pytest.raises(ValueError, match="header"):
        read_class_labels_csv(bad_header)
    out_of_order = tmp_path / "b.csv"
    out_of_order.write_text("index,mid,display_name\n0,/m/a,A\n2,/m/b,B\n")
    with pytest.raises(ValueError, match=r"b.csv:3"):
        read_class_labels_csv(out_of_order)
    short = tmp_path / "c.csv"
    short.write_text("index,mid,display_name\n0,/m/a,A\n")
    with pytest.raises(ValueError, match="527"):
        audioset_labels(short)


def test_download_is_atomic_and_checksummed(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"abc" * 1000)
    url = source.as_uri()
    target = hub.cached_file(url, "copy.bin", cache=tmp_path / "cache", sha256=hub.sha256_of(source))
    assert target.read_bytes() == source.read_bytes()
    with pytest.raises(hub.DownloadError, match="checksum mismatch"):
        hub.download_url(url, tmp_path / "cache" / "other.bin", sha256="0" * 64)
    assert not (tmp_path / "cache" / "other.bin").exists()
    assert not list((tmp_path / "cache").glob("*.part"))


def test_offline_download_explains_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub.urllib.request, "urlopen", offline)
    with pytest.raises(hub.DownloadError) as error:
        hub.cached_file("https://example.org/weights/model.pt", cache=tmp_path)
    message = str(error.value)
    assert "https://example.org/weights/model.pt" in message
    assert str(tmp_path / "model.pt") in message
    assert not list(tmp_path.iterdir())


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "env"))
    assert hub.cache_dir() == tmp_path / "env"
    assert hub.cache_dir(tmp_path / "arg") == tmp_path / "arg"
