"""Helpers the benchmark scripts share (benchmark-only: nothing of the package needs them).

A script imports this first (`python benchmarks/<script>.py` puts this folder on `sys.path`):
importing it puts the checkout first on `sys.path`, so a benchmark measures the code next to it
whether or not the package is installed.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import Sampler

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = REPO.parent / "shared" / "data"
METRO_WAV = SHARED_DATA / "metro_station-paris.wav"  # the 10-s test recording
LABELS_CSV = SHARED_DATA / "class_labels_indices.csv"  # AudioSet's label map

T = TypeVar("T")


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """`items` rotated by one place per round: every path runs first as often as the others, so a
    machine whose speed drifts within a round slows every path alike."""
    items = list(items)
    shift = round_index % len(items)
    return items[shift:] + items[:shift]


class CyclicSampler(Sampler[int]):
    """`count` indices start, start+1, ... modulo the dataset size (runs past small files)."""

    def __init__(self, size: int, count: int, start: int = 0):
        self.size, self.count, self.start = size, count, start

    def __iter__(self) -> Iterator[int]:
        return iter([(self.start + i) % self.size for i in range(self.count)])

    def __len__(self) -> int:
        return self.count


def parse_workers(text: str) -> list[int]:
    """argparse type: comma-separated DataLoader worker counts, e.g. "0,1,2" (duplicates dropped)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative worker counts, got {text!r}")
    return list(dict.fromkeys(values))


def synthetic_clip(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """Smoothed noise plus one to four steady or gliding, slowly pulsing tones; peak below 1.

    Not `efficient_tagging.data.demo.synthesise_clip`: that one builds labelled events of the demo
    classes; a benchmark only needs broadband audio that keeps an mp3 decoder as busy as real
    recordings do, with random AudioSet-sized targets (see `write_synthetic_hdf5`).
    """
    t = np.arange(num_samples, dtype=np.float64) / sample_rate
    seconds = num_samples / sample_rate
    noise = np.convolve(rng.standard_normal(num_samples), np.ones(8) / 8, mode="same")  # tilt the spectrum down
    signal = rng.uniform(0.02, 0.2) * noise
    for _ in range(int(rng.integers(1, 5))):
        f0 = rng.uniform(80.0, 6000.0)
        glide = rng.uniform(-0.3, 0.3) * f0 / seconds
        phase = 2 * np.pi * (f0 * t + 0.5 * glide * t ** 2)
        envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(0.1, 2.0) * t + rng.uniform(0, 2 * np.pi)))
        signal += rng.uniform(0.05, 0.3) * envelope * np.sin(phase)
    peak = np.abs(signal).max()
    if peak > 0.95:
        signal *= 0.95 / peak
    return signal.astype(np.float32)


def write_synthetic_hdf5(path: Path, num_clips: int, seed: int, clip_seconds: float = 10.0,
                         sample_rate: int = 32000, num_classes: int = 527) -> Path:
    """An AudioSet-format HDF5 of `num_clips` mp3-encoded `synthetic_clip`s, each with one to three
    random positive classes (about 150 ms of encoding per 10-s clip; a progress bar shows it)."""
    from tqdm import tqdm

    from efficient_tagging.audio import encode_audio
    from efficient_tagging.data.hdf5 import AudioSetHDF5Writer

    rng = np.random.default_rng(seed)
    num_samples = int(clip_seconds * sample_rate)
    with AudioSetHDF5Writer(path, num_classes=num_classes, sample_rate=sample_rate,
                            expected_rows=num_clips) as writer:
        for i in tqdm(range(num_clips), desc=f"encoding synthetic clips (mp3, {sample_rate} Hz)", unit="clip"):
            target = np.zeros(num_classes, dtype=np.uint8)
            target[rng.choice(num_classes, size=int(rng.integers(1, 4)), replace=False)] = 1
            writer.add(f"Ysynthetic{i:06d}.mp3", encode_audio(synthetic_clip(rng, num_samples, sample_rate),
                                                              sample_rate), target)
    return path


def run_child(command: list[str], env: Optional[dict] = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one fresh process (`env`: its environment)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=env)
    assert child.stdout is not None
    output = child.stdout.read()
    # wait4, not wait: its rusage is this child's alone, so its peak RSS is not mixed with ours
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}")
    return seconds, usage.ru_maxrss / 1024, output  # ru_maxrss is in KiB on Linux


def reference_model(checkout: Path, state_dict: dict, arch: str) -> torch.nn.Module:
    """EfficientAT's mn10 / dymn10 from a checkout, with our weights (its keys are ours: strict load)."""
    previous = os.getcwd()
    sys.path.insert(0, str(checkout))
    os.chdir(checkout)  # the reference reads metadata/ relative to the working directory at import
    try:
        if arch == "dymn":
            from models.dymn.model import get_model as reference_get_model
        else:
            from models.mn.model import get_model as reference_get_model

        with contextlib.redirect_stdout(open(os.devnull, "w")):  # it prints the whole model
            model = reference_get_model(width_mult=1.0, pretrained_name=None)
    finally:
        os.chdir(previous)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
