"""Waveform cache (data.waveform_cache): round trip, no decoding on reuse, rebuild on stale
fingerprints, undecodable clips, killed writers, concurrent fillers, DataLoader workers."""
import logging
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import REPO, corrupt_clip, make_tiny_audioset
from efficient_tagging.data import hdf5 as hdf5_module
from efficient_tagging.data.hdf5 import AudioSetDataset
from efficient_tagging.data.waveform_cache import CachedWaveforms, UndecodableCachedClip, files_fingerprint

SR = 16000
CLIP = 0.5
F16_TOL = 3e-4  # half a float16 step at |x| < 0.6 is 2.4e-4

# make_tiny_audioset writes 1 s clips at 16 kHz: the dataset cuts them to 0.5 s
N = 12


@pytest.fixture()
def hdf5_path(tmp_path):
    return make_tiny_audioset(tmp_path / "tiny.hdf", num_clips=N, sample_rate=SR, codec="mp3")


def dataset(path, **kwargs):
    kwargs.setdefault("sample_rate", SR)
    kwargs.setdefault("clip_length", CLIP)
    return AudioSetDataset(path, **kwargs)


@pytest.fixture()
def decode_counter(monkeypatch):
    """Counts decode_audio calls made by AudioSetDataset in this process."""
    calls = []
    original = hdf5_module.decode_audio

    def counting(*args, **kwargs):
        calls.append(kwargs.get("name"))
        return original(*args, **kwargs)

    monkeypatch.setattr(hdf5_module, "decode_audio", counting)
    return calls


def assert_same_items(cached, decoded, exact_waveform=False):
    assert cached.keys() == decoded.keys()
    for key in cached:
        if key == "waveform":
            assert cached[key].dtype == torch.float32 and cached[key].shape == decoded[key].shape
            tol = 0 if exact_waveform else F16_TOL
            assert float((cached[key] - decoded[key]).abs().max()) <= tol, key
        elif isinstance(cached[key], torch.Tensor):
            assert torch.equal(cached[key], decoded[key]), key
        else:
            assert cached[key] == decoded[key], key


def test_round_trip_matches_decoded_items_within_float16(hdf5_path, tmp_path):
    decoded = [dataset(hdf5_path)[i] for i in range(N)]
    cached = CachedWaveforms(dataset(hdf5_path), tmp_path / "cache")
    assert cached.cache_stats() == {"filled": 0, "undecodable": 0, "missing": N}
    first = [cached[i] for i in range(N)]  # fills
    again = [cached[i] for i in range(N)]  # reads
    for a, b, c in zip(first, again, decoded):
        assert_same_items(a, c)
        assert_same_items(b, a, exact_waveform=True)  # the first epoch already sees the float16 audio
        assert a["waveform"].abs().max() > 0.05  # real audio, not silence
    assert cached.cache_stats() == {"filled": N, "undecodable": 0, "missing": 0}
    # the dataset's attributes pass through
    assert cached.num_classes == 4 and cached.targets.shape == (N, 4) and len(cached) == N
    # the data file is a plain .npy file
    stored = np.load(tmp_path / "cache" / "waveforms.npy", mmap_mode="r")
    assert stored.dtype == np.float16 and stored.shape == (N, int(SR * CLIP))


def test_second_open_reads_without_decoding(hdf5_path, tmp_path, decode_counter):
    first = [CachedWaveforms(dataset(hdf5_path), tmp_path / "cache")[i] for i in range(N)]
    assert len(decode_counter) == N
    reopened = CachedWaveforms(dataset(hdf5_path), tmp_path / "cache")
    items = [reopened[i] for i in range(N)]
    assert len(decode_counter) == N  # no decode at all
    for a, b in zip(items, first):
        assert_same_items(a, b, exact_waveform=True)


def test_stale_fingerprint_rebuilds_and_serves_the_new_audio(hdf5_path, tmp_path, caplog, decode_counter):
    cache_dir = tmp_path / "cache"
    old = [CachedWaveforms(dataset(hdf5_path), cache_dir)[i] for i in range(N)]
    # rewrite the source with other audio (another seed); force a different mtime
    stat = hdf5_path.stat()
    make_tiny_audioset(hdf5_path, num_clips=N, sample_rate=SR, codec="mp3", seed=1)
    os.utime(hdf5_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    decode_counter.clear()
    with caplog.at_level(logging.WARNING, logger="efficient_tagging.data.waveform_cache"):
        rebuilt = CachedWaveforms(dataset(hdf5_path), cache_dir)
    assert "built for different audio" in caplog.text and "rebuilding" in caplog.text
    assert "mtime_ns" in caplog.text  # says what changed
    assert rebuilt.cache_stats()["missing"] == N
    fresh = [dataset(hdf5_path)[i] for i in range(N)]
    for i in range(N):
        assert_same_items(rebuilt[i], fresh[i])
    assert any(float((a["waveform"] - b["waveform"]).abs().max()) > 0.01 for a, b in zip(old, fresh))
    # another clip length is another fingerprint too
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="efficient_tagging.data.waveform_cache"):
        shorter = CachedWaveforms(dataset(hdf5_path, clip_length=0.25), cache_dir)
    assert "clip_samples: 8000 -> 4000" in caplog.text
    assert shorter[0]["waveform"].shape == (4000,)
    assert not list(tmp_path.glob("cache.*"))  # no stale/building directories or lock files left


def test_undecodable_clips_are_recorded_and_replaced_like_the_dataset(hdf5_path, tmp_path, decode_counter):
    corrupt_clip(hdf5_path, "Ytiny_0003.mp3")
    decoded = [dataset(hdf5_path)[i] for i in range(N)]
    assert decoded[3]["skipped"] == 1 and decoded[3]["audio_name"] != "Ytiny_0003.mp3"
    cached = CachedWaveforms(dataset(hdf5_path), tmp_path / "cache")
    for i in range(N):
        assert_same_items(cached[i], decoded[i])
    assert cached.cache_stats() == {"filled": N - 1, "undecodable": 1, "missing": 0}
    with pytest.raises(UndecodableCachedClip, match="recorded as undecodable"):
        cached.source(3)

    # reopened: the bad clip is not decoded again; replace_undecodable=False reports it as before
    decode_counter.clear()
    reporting = CachedWaveforms(dataset(hdf5_path, replace_undecodable=False), tmp_path / "cache")
    item = reporting[3]
    assert decode_counter == []
    assert item["decoded"] is False and item["skipped"] == 1 and item["audio_name"] == "Ytiny_0003.mp3"
    assert float(item["waveform"].abs().max()) == 0.0
    assert_same_items(item, dataset(hdf5_path, replace_undecodable=False)[3])


def test_damaged_row_is_detected_and_decoded_again(hdf5_path, tmp_path, caplog):
    cached = CachedWaveforms(dataset(hdf5_path), tmp_path / "cache")
    good = cached[5]["waveform"].clone()
    data = np.load(tmp_path / "cache" / "waveforms.npy", mmap_mode="r+")
    data[5, 100:200] = 0.9  # e.g. a power loss that kept the state word but not the data
    data.flush()
    with caplog.at_level(logging.WARNING, logger="efficient_tagging.data.waveform_cache"):
        again = CachedWaveforms(dataset(hdf5_path), tmp_path / "cache")[5]["waveform"]
    assert "checksum mismatch" in caplog.text
    assert torch.equal(again, good)


def test_dataset_without_the_interface_is_refused(tmp_path):
    with pytest.raises(TypeError, match="lacks load_waveform, cache_fingerprint, waveform_source"):
        CachedWaveforms(list(range(3)), tmp_path / "cache")


def test_path_that_is_not_a_cache_is_not_replaced(hdf5_path, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a waveform cache"):
        CachedWaveforms(dataset(hdf5_path), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def run_python(code, *args, wait=True):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


KILLED_FILLER = """
    import os, sys
    from efficient_tagging.data import waveform_cache
    from efficient_tagging.data.hdf5 import AudioSetDataset
    calls = []
    original = waveform_cache._pwrite_all
    def dying(fd, data, offset):
        calls.append(1)
        if len(calls) == 9:  # the data of the fifth row: write half of it, then die
            original(fd, memoryview(data).cast("B")[: len(memoryview(data).cast("B")) // 2], offset)
            os._exit(3)
        original(fd, data, offset)
    waveform_cache._pwrite_all = dying
    cached = waveform_cache.CachedWaveforms(AudioSetDataset(sys.argv[1], sample_rate=16000, clip_length=0.5),
                                            sys.argv[2])
    for i in range(len(cached)):
        cached[i]
"""


def test_killed_filler_leaves_only_rows_it_finished(hdf5_path, tmp_path):
    result = run_python(KILLED_FILLER, hdf5_path, tmp_path / "cache")
    assert result.returncode == 3, result.stderr
    cached = CachedWaveforms(dataset(hdf5_path), tmp_path / "cache")
    assert cached.cache_stats() == {"filled": 4, "undecodable": 0, "missing": N - 4}
    # the half-written row is not served: it is decoded again, like every other missing row
    decoded = [dataset(hdf5_path)[i] for i in range(N)]
    for i in range(N):
        assert_same_items(cached[i], decoded[i])
    assert cached.cache_stats()["filled"] == N


KILLED_BUILDER = """
    import os, sys
    import numpy as np
    from efficient_tagging.data import waveform_cache
    from efficient_tagging.data.hdf5 import AudioSetDataset
    original = np.lib.format.open_memmap
    def dying(path, *args, **kwargs):
        if str(path).endswith("rows.npy"):
            os._exit(4)  # the data file exists, nothing else
        return original(path, *args, **kwargs)
    np.lib.format.open_memmap = dying
    waveform_cache.CachedWaveforms(AudioSetDataset(sys.argv[1], sample_rate=16000, clip_length=0.5), sys.argv[2])
"""


def test_killed_builder_leaves_no_cache_and_the_next_one_builds(hdf5_path, tmp_path):
    result = run_python(KILLED_BUILDER, hdf5_path, tmp_path / "cache")
    assert result.returncode == 4, result.stderr
    assert not (tmp_path / "cache").exists() and list(tmp_path.glob("cache.building-*"))
    cached = CachedWaveforms(dataset(hdf5_path), tmp_path / "cache")
    assert not list(tmp_path.glob("cache.building-*"))
    assert_same_items(cached[2], dataset(hdf5_path)[2])


CONCURRENT_FILLER = """
    import hashlib, sys, time
    from pathlib import Path
    from efficient_tagging.data.waveform_cache import CachedWaveforms
    from efficient_tagging.data.hdf5 import AudioSetDataset
    go = Path(sys.argv[3])
    while not go.exists():  # start together
        time.sleep(0.01)
    cached = CachedWaveforms(AudioSetDataset(sys.argv[1], sample_rate=16000, clip_length=0.5), sys.argv[2])
    stats = cached.fill(progress=False)
    digest = hashlib.sha256(b"".join(cached[i]["waveform"].numpy().tobytes() for i in range(len(cached))))
    print(stats["filled"], digest.hexdigest())
"""


def test_two_concurrent_fillers_end_with_one_correct_cache(hdf5_path, tmp_path):
    go = tmp_path / "go"
    fillers = [run_python(CONCURRENT_FILLER, hdf5_path, tmp_path / "cache", go, wait=False) for _ in range(2)]
    go.touch()
    outputs = []
    for filler in fillers:
        out, err = filler.communicate(timeout=120)
        assert filler.returncode == 0, err
        outputs.append(out.split())
    assert outputs[0] == outputs[1] and outputs[0][0] == str(N)
    cached = CachedWaveforms(dataset(hdf5_path), tmp_path / "cache")
    assert cached.cache_stats() == {"filled": N, "undecodable": 0, "missing": 0}
    decoded = [dataset(hdf5_path)[i] for i in range(N)]
    for i in range(N):
        assert_same_items(cached[i], decoded[i])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "go", "tiny.hdf"]  # locks released, no leftovers


def test_dataloader_workers_fill_and_read(hdf5_path, tmp_path, monkeypatch):
    corrupt_clip(hdf5_path, "Ytiny_0007.mp3")
    cached = CachedWaveforms(dataset(hdf5_path), tmp_path / "cache")
    decoded = [dataset(hdf5_path)[i] for i in range(N)]

    def epoch():
        loader = DataLoader(cached, batch_size=4, num_workers=2, shuffle=False)
        return [item for batch in loader for item in zip(batch["waveform"], batch["index"], batch["audio_name"])]

    first = epoch()  # the workers fill the cache
    assert cached.cache_stats() == {"filled": N - 1, "undecodable": 1, "missing": 0}

    def no_decoding(*args, **kwargs):
        raise RuntimeError("decoded although the cache is full")

    # forked workers inherit this: any decode in the second epoch fails the loader
    monkeypatch.setattr(hdf5_module, "decode_audio", no_decoding)
    second = epoch()
    for (wave1, index1, name1), (wave2, index2, name2), reference in zip(first, second, decoded):
        assert int(index1) == int(index2) == reference["index"] and name1 == name2 == reference["audio_name"]
        assert torch.equal(wave1, wave2)
        assert float((wave1 - reference["waveform"]).abs().max()) <= F16_TOL
    # the parent reads what the workers wrote, without decoding
    assert_same_items(cached[0], decoded[0])


def test_fill_in_one_pass_with_workers(hdf5_path, tmp_path, decode_counter):
    cached = CachedWaveforms(dataset(hdf5_path), tmp_path / "cache")
    cached[0]
    stats = cached.fill(num_workers=2, progress=False)
    assert stats == {"filled": N, "undecodable": 0, "missing": 0}
    decode_counter.clear()
    assert_same_items(cached[N - 1], dataset(hdf5_path)[N - 1])
    assert len(decode_counter) == 1  # the uncached reference only


def test_pickled_wrapper_reads_the_same_cache(hdf5_path, tmp_path):
    """What a spawn-started DataLoader worker gets: no maps or descriptors, reopened on first use."""
    cached = CachedWaveforms(dataset(hdf5_path), tmp_path / "cache")
    first = cached[4]
    copy = pickle.loads(pickle.dumps(cached))
    assert copy.cache.__dict__["_data"] is None and copy.dataset.waveform_source is copy.source
    assert_same_items(copy[4], first, exact_waveform=True)
    assert copy.cache_stats()["filled"] == 1


def test_files_fingerprint_lists_few_files_and_digests_many(tmp_path):
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"clip{i}.wav")
        paths[-1].write_bytes(b"x" * (i + 1))
    few = files_fingerprint(paths)
    assert [entry["size"] for entry in few["files"]] == [1, 2, 3, 4, 5]
    many = files_fingerprint(paths, list_limit=2)
    assert many["file_count"] == 5 and many["total_bytes"] == 15 and "files" not in many
    assert files_fingerprint(list(reversed(paths)), list_limit=2) == many  # order-independent digest
    paths[3].write_bytes(b"changed")
    assert files_fingerprint(paths, list_limit=2)["files_sha256"] != many["files_sha256"]


def test_file_datasets_are_cached_too(tmp_path, monkeypatch):
    """The fine-tuning file datasets (here class folders) go behind the same cache: a second open decodes nothing."""
    from efficient_tagging.audio import encode_audio
    from efficient_tagging.data.datasets import FolderDataset
    from efficient_tagging.data.datasets import audio_files as datasets_base

    t = np.arange(8000) / 8000
    for c, name in enumerate(["a", "b"]):
        for k in range(3):
            path = tmp_path / "data" / name / f"{k}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_audio((0.3 * np.sin(2 * np.pi * 300 * (c + 1) * t)).astype(np.float32), 8000,
                                          "wav"))

    def folders():
        return FolderDataset(tmp_path / "data", "all", sample_rate=16000, clip_length=0.5)

    decoded = [folders()[i] for i in range(6)]
    first = CachedWaveforms(folders(), tmp_path / "cache")
    assert [float((first[i]["waveform"] - decoded[i]["waveform"]).abs().max()) < 1e-3 for i in range(6)] == [True] * 6
    monkeypatch.setattr(datasets_base, "decode_audio", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    again = CachedWaveforms(folders(), tmp_path / "cache")
    assert all(torch.equal(again[i]["waveform"], first[i]["waveform"]) for i in range(6))
    assert [again[i]["label"] for i in range(6)] == [decoded[i]["label"] for i in range(6)]
