"""Embedded demo data: a small, deterministic, synthetic AudioSet-format dataset.

Ten real AudioSet sound-event classes that can be synthesised convincingly from first
principles (tones, sweeps, coloured noise, clicks, harmonic stacks, ...). Each clip mixes
one or two events of different classes at random onsets, durations and levels over a
quiet noise floor, so the task is genuinely multi-label. Clips are encoded as mp3 and
packed exactly like AudioSet (`audio_name`, `mp3`, `target`), so the demo exercises the
same decode -> resample -> frontend -> model path as real data.

Everything derives from one seed: the same call produces byte-identical audio and labels.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.pool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np
from tqdm.auto import tqdm

from ..audio import encode_audio
from ..labels import LabelMap

DEMO_VERSION = 2  # bump when the synthesis changes, so cached demo files are rebuilt


def _time(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _sine(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    freq = rng.uniform(300, 3000)
    return np.sin(2 * np.pi * freq * _time(n, sr) + rng.uniform(0, 2 * np.pi))


def _chirp(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # exponential sweep, up or down, over the event (phase = integral of frequency)
    f0, f1 = rng.uniform(200, 1000), rng.uniform(3000, 8000)
    if rng.random() < 0.5:
        f0, f1 = f1, f0
    t = _time(n, sr)
    duration = max(t[-1], 1e-3)
    rate = np.log(f1 / f0) / duration
    return np.sin(2 * np.pi * f0 * (np.exp(rate * t) - 1) / rate)


def _white_noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    return rng.standard_normal(n) * 0.5


def _pink_noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum[1:] /= np.sqrt(freqs[1:] / freqs[1])  # 1/f power
    spectrum[0] = 0
    pink = np.fft.irfft(spectrum, n)
    return pink / (np.abs(pink).max() + 1e-9)


def _clicking(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out = np.zeros(n)
    position = int(rng.uniform(0.0, 0.05) * sr)
    click = np.exp(-np.arange(int(0.004 * sr)) / (0.0006 * sr)) * rng.choice([-1, 1], int(0.004 * sr))
    while position < n:
        end = min(n, position + len(click))
        out[position:end] += click[: end - position]
        position += int(rng.uniform(0.03, 0.12) * sr)
    return out


def _mains_hum(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    fundamental = rng.choice([50.0, 60.0])
    t = _time(n, sr)
    return sum(np.sin(2 * np.pi * fundamental * k * t) / k for k in range(1, 12)) / 2


def _beep(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    freq = rng.uniform(800, 2500)
    t = _time(n, sr)
    on, off = rng.uniform(0.08, 0.2), rng.uniform(0.08, 0.25)
    gate = (np.mod(t, on + off) < on).astype(float)
    return np.sin(2 * np.pi * freq * t) * gate


def _siren(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    carrier, depth, rate = rng.uniform(600, 1500), rng.uniform(200, 500), rng.uniform(0.5, 3.0)
    t = _time(n, sr)
    phase = 2 * np.pi * carrier * t - depth / rate * np.cos(2 * np.pi * rate * t)
    return np.sin(phase)


def _thump(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out = np.zeros(n)
    hit_length = int(0.25 * sr)
    for _ in range(int(rng.integers(1, 4))):
        start = int(rng.uniform(0, max(1, n - hit_length)))
        freq = rng.uniform(40, 120)
        k = np.arange(min(hit_length, n - start))
        out[start:start + len(k)] += np.sin(2 * np.pi * freq * k / sr) * np.exp(-k / (0.05 * sr))
    return out


def _buzz(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    freq = rng.uniform(100, 300)
    phase = np.mod(freq * _time(n, sr), 1.0)
    return (2 * phase - 1) * 0.7  # sawtooth: every harmonic present


@dataclass(frozen=True)
class DemoClass:
    name: str  # AudioSet display name
    mid: str  # AudioSet ontology id
    synthesise: Callable[[np.random.Generator, int, int], np.ndarray]


DEMO_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("Sine wave", "/m/01v_m0", _sine),
    DemoClass("Chirp tone", "/m/0hdsk", _chirp),
    DemoClass("White noise", "/m/0chx_", _white_noise),
    DemoClass("Pink noise", "/m/0cj0r", _pink_noise),
    DemoClass("Clicking", "/m/07qc9xj", _clicking),
    DemoClass("Mains hum", "/m/06xkwv", _mains_hum),
    DemoClass("Beep, bleep", "/m/02fs_r", _beep),
    DemoClass("Siren", "/m/03kmc9", _siren),
    DemoClass("Thump, thud", "/m/07qnq_y", _thump),
    DemoClass("Buzz", "/m/07pjwq1", _buzz),
)


def demo_label_map() -> LabelMap:
    return LabelMap.from_names([c.name for c in DEMO_CLASSES], [c.mid for c in DEMO_CLASSES])


def synthesise_clip(rng: np.random.Generator, sample_rate: int, duration: float,
                    max_events: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One clip: (float32 waveform, multi-hot target over DEMO_CLASSES)."""
    n = int(round(sample_rate * duration))
    num_events = int(rng.integers(1, max_events + 1))
    classes = rng.choice(len(DEMO_CLASSES), size=num_events, replace=False)
    clip = rng.standard_normal(n) * 10 ** (-55 / 20)  # quiet noise floor, well below every event
    target = np.zeros(len(DEMO_CLASSES), dtype=bool)
    for index in classes:
        length = int(n * rng.uniform(0.6, 1.0))  # most of the clip: the label is never a faint blip
        start = int(rng.integers(0, n - length + 1))
        event = DEMO_CLASSES[index].synthesise(rng, length, sample_rate)
        event = event / (np.sqrt(np.mean(event ** 2)) + 1e-9)
        fade = min(length // 10, int(0.01 * sample_rate))
        if fade > 0:  # short fades: no onset clicks that would look like the "Clicking" class
            ramp = np.linspace(0.0, 1.0, fade)
            event[:fade] *= ramp
            event[-fade:] *= ramp[::-1]
        level_db = rng.uniform(-20, -12)
        clip[start:start + length] += event * 10 ** (level_db / 20)
        target[index] = True
    peak = np.abs(clip).max()
    if peak > 0.99:
        clip *= 0.99 / peak
    return clip.astype(np.float32), target


@dataclass(frozen=True)
class DemoDataset:
    train_path: Path
    eval_path: Path
    label_map: LabelMap
    sample_rate: int
    clip_length: float


def _is_current(path: Path, signature: dict) -> bool:
    if not path.is_file():
        return False
    import h5py
    try:
        with h5py.File(path, "r") as handle:
            return json.loads(handle.attrs.get("demo_signature", "{}")) == signature
    except OSError:
        return False


def _encoded_clip(task: tuple[int, int, int, float, str]) -> tuple[bytes, np.ndarray]:
    """Synthesise and encode clip `index` of a split; its own seed makes the result order-independent."""
    split_seed, index, sample_rate, duration, codec = task
    rng = np.random.default_rng([split_seed, index])
    waveform, target = synthesise_clip(rng, sample_rate, duration)
    return encode_audio(waveform, sample_rate, codec), target


def build_demo_dataset(root: Union[str, Path], num_train: int = 2000, num_eval: int = 250,
                       sample_rate: int = 16000, clip_length: float = 2.0, seed: int = 1234,
                       codec: str = "mp3", num_workers: int = 2, progress: bool = True) -> DemoDataset:
    """Write (once; reused while the settings match) `demo_train.h5` and `demo_eval.h5` under `root`.

    Clips are stored as 16 kHz mp3 (~8 kB each): half the encoding time of 32 kHz, and the
    training pipeline then exercises its resampling path exactly as with real files that
    are not at the training rate.
    """
    from .hdf5 import AudioSetHDF5Writer

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    label_map = demo_label_map()
    paths = {}
    for split, count, split_seed in (("train", num_train, seed), ("eval", num_eval, seed + 1)):
        path = root / f"demo_{split}.h5"
        signature = {"version": DEMO_VERSION, "split": split, "count": count, "sample_rate": sample_rate,
                     "clip_length": clip_length, "seed": split_seed, "codec": codec}
        paths[split] = path
        if _is_current(path, signature):
            continue
        tasks = [(split_seed, i, sample_rate, clip_length, codec) for i in range(count)]
        extension = "mp3" if codec == "mp3" else codec
        with AudioSetHDF5Writer(path, num_classes=len(label_map), sample_rate=sample_rate,
                                label_map=label_map, expected_rows=count) as writer, \
                _clip_pool(num_workers) as pool:
            clips = pool.imap(_encoded_clip, tasks, chunksize=32) if pool is not None else map(_encoded_clip, tasks)
            for i, (encoded, target) in enumerate(tqdm(clips, total=count, desc=f"demo {split} set",
                                                       disable=not progress, leave=False)):
                writer.add(f"Ydemo_{split}_{i:05d}.{extension}", encoded, target)
            writer.attrs["demo_signature"] = json.dumps(signature)
    return DemoDataset(paths["train"], paths["eval"], label_map, sample_rate, clip_length)


@contextlib.contextmanager
def _clip_pool(num_workers: int) -> Iterator[Optional[multiprocessing.pool.Pool]]:
    # "spawn": forking a process that already runs torch's thread pools can deadlock.
    if num_workers <= 1:
        yield None
        return
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
        yield pool


def default_demo_root(override: Optional[Union[str, Path]] = None) -> Path:
    """Where the demo data is cached: `override`, else `<cache>/demo` (see `efficient_tagging.hub.cache_dir`)."""
    from ..hub import cache_dir
    return Path(override) if override is not None else cache_dir() / "demo"
