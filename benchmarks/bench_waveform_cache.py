#!/usr/bin/env python
"""Waveform cache benchmark: epoch time of decoding vs filling vs reading the cache (prints a table).

Data: a temporary AudioSet-format HDF5 of `--num_clips` (default 3,000) synthetic one-second clips
(noise + tones), mp3 at `--source_rate` (default 32 kHz), or your own file with `--hdf5`; the
dataset reads them at 32 kHz. Every epoch reads its clips once
in a shuffled order through a DataLoader (`--workers`, default 2; batch `--batch_size`, default 32):
all clips in the reading section, the first `--train_clips` (default 320) of the shuffled order in
the training section (a CPU trains mn04 at about 12 clips/s; `--train_clips 0` for all).

Paths, per section:
- `decode (no cache)`: `AudioSetDataset` as is: HDF5 read + mp3 decode + resample/pad per clip;
- `first epoch (decode + fill)`: `CachedWaveforms` on an empty cache: decode + write float16 rows;
- `cached epoch`: `CachedWaveforms` on the filled cache: memory-mapped float16 rows + crc32 check
  also with workers=0: the reads in the main process, without worker start-up and batch transfer;
- training section only (`--section train` / `all`): `compute only (batch in memory)`: the same
  number of mn04 steps (AugmentMelSTFT in train mode + forward + BCE + backward + Adam) on one
  batch held in memory: the floor an epoch that is not bounded by data loading reaches.
In the training section every loaded batch also runs one such step.

Method: every round runs each path once, in an order rotated by one path per round, for
`--repeats` rounds (a machine whose speed drifts then slows every path alike); the first-epoch
path fills a fresh cache each round. The table gives the median (min/max) epoch seconds, clips/s,
and the ratio to the cached epoch, as ratio of medians and as the median of per-round ratios.

    python benchmarks/bench_waveform_cache.py                          # 3,000 clips, both sections
    python benchmarks/bench_waveform_cache.py --section read --repeats 5
    python benchmarks/bench_waveform_cache.py --quick                  # 300 clips, smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from _common import rotated, write_synthetic_hdf5  # puts the checkout on sys.path

import numpy as np
import torch
from torch.utils.data import DataLoader

from efficient_tagging import AugmentMelSTFT, get_model
from efficient_tagging.data.hdf5 import AudioSetDataset
from efficient_tagging.data.waveform_cache import CachedWaveforms

SAMPLE_RATE = 32000
NUM_CLASSES = 527


class Trainer:
    """mn04 (or --width_mult) training step, shared by every training path."""

    def __init__(self, width_mult: float, batch: dict[str, torch.Tensor], seed: int):
        torch.manual_seed(seed)
        self.frontend = AugmentMelSTFT(n_mels=128, sr=SAMPLE_RATE, win_length=800, hopsize=320, n_fft=1024).train()
        self.model = get_model(arch="mn", width_mult=width_mult, num_classes=NUM_CLASSES).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.batch = batch

    def step(self, waveform: torch.Tensor, target: torch.Tensor) -> None:
        logits, _ = self.model(self.frontend(waveform).unsqueeze(1))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def epoch_seconds(dataset: Any, args: argparse.Namespace, round_index: int, trainer: Optional[Trainer],
                  num_clips: int, workers: int) -> float:
    """One shuffled pass over `num_clips` clips (DataLoader start-up included, as in training)."""
    order = np.random.default_rng([args.seed, round_index]).permutation(len(dataset))[:num_clips].tolist()
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=order, num_workers=workers)
    start = time.perf_counter()
    clips = 0
    for batch in loader:
        clips += batch["waveform"].shape[0]
        if trainer is not None:
            trainer.step(batch["waveform"], batch["target"])
    elapsed = time.perf_counter() - start
    assert clips == len(order), (clips, len(order))
    return elapsed


def compute_only_seconds(trainer: Trainer, num_clips: int, batch_size: int) -> float:
    steps = -(-num_clips // batch_size)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(trainer.batch["waveform"], trainer.batch["target"])
    return time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hdf5", type=Path, default=None,
                        help="use this AudioSet-format HDF5 instead of synthetic clips")
    parser.add_argument("--num_clips", "--num-clips", type=int, default=None,
                        help="synthetic clips (default 3000; 300 with --quick)")
    parser.add_argument("--source_rate", "--source-rate", type=int, default=32000,
                        help="sample rate of the synthetic mp3s (default 32000, the AudioSet-format files' rate: no "
                             "resampling; 44100 adds resampling to 32 kHz, as for ESC-50 or most own recordings)")
    parser.add_argument("--clip_length", "--clip-length", type=float, default=1.0, help="seconds per clip (default 1)")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=32, help="clips per batch (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader num_workers (default 2)")
    parser.add_argument("--width_mult", "--width-mult", type=float, default=0.4,
                        help="MobileNet width of the training section: 0.4 = mn04 (default)")
    parser.add_argument("--train_clips", "--train-clips", type=int, default=320,
                        help="clips per epoch of the training section (default 320 = 10 batches: a CPU trains mn04 "
                             "at ~12 clips/s; 0 = all)")
    parser.add_argument("--section", choices=("all", "read", "train"), default="all",
                        help="read: loading only; train: loading + one training step per batch (default all)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 3; 2 with --quick)")
    parser.add_argument("--cache_dir", "--cache-dir", type=Path, default=None,
                        help="where the caches go (default: a temporary directory next to the data)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads of the main process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300 clips, 2 rounds: a smoke run")
    parser.add_argument("--json", type=Path, default=None, help="also write per-round results as JSON here")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.num_clips = args.num_clips or (300 if args.quick else 3000)
    args.repeats = args.repeats or (2 if args.quick else 3)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} | torch threads {torch.get_num_threads()} | CPUs {os.cpu_count()} | "
          f"{platform.processor() or platform.machine()}")
    with tempfile.TemporaryDirectory(prefix="bench_waveform_cache_") as tmp:
        work = Path(tmp)
        hdf5_path = args.hdf5
        if hdf5_path is None:
            hdf5_path = work / "synthetic.hdf"
            write_synthetic_hdf5(hdf5_path, args.num_clips, args.seed, args.clip_length, args.source_rate,
                                 NUM_CLASSES)
        cache_root = args.cache_dir or work
        cache_root.mkdir(parents=True, exist_ok=True)

        def make_dataset() -> AudioSetDataset:
            return AudioSetDataset(hdf5_path, sample_rate=SAMPLE_RATE, clip_length=args.clip_length)

        plain = make_dataset()
        print(f"data: {hdf5_path} ({len(plain)} clips of {args.clip_length:g} s, "
              f"{hdf5_path.stat().st_size / 1e6:.1f} MB)"
              f" | batch {args.batch_size} | workers {args.workers} | rounds {args.repeats}")
        filled_path = cache_root / "filled_cache"
        start = time.perf_counter()
        filled = CachedWaveforms(make_dataset(), filled_path)
        filled.fill(num_workers=args.workers)
        print(f"filled the reference cache in {time.perf_counter() - start:.1f} s "
              f"({sum(f.stat().st_size for f in filled_path.iterdir()) / 1e6:.1f} MB on disk)")

        trainer = None
        if args.section in ("all", "train"):
            items = [plain[i] for i in range(args.batch_size)]
            trainer = Trainer(args.width_mult, {"waveform": torch.stack([x["waveform"] for x in items]),
                                                "target": torch.stack([x["target"] for x in items])}, args.seed)
            for _ in range(2):  # warm-up: allocator, kernel selection
                trainer.step(trainer.batch["waveform"], trainer.batch["target"])

        def first_epoch(round_index: int, with_trainer: Optional[Trainer], num_clips: int) -> float:
            path = cache_root / f"fresh_cache_{round_index}"
            try:
                return epoch_seconds(CachedWaveforms(make_dataset(), path), args, round_index, with_trainer,
                                     num_clips, args.workers)
            finally:
                shutil.rmtree(path, ignore_errors=True)

        paths: list[dict[str, Any]] = []

        def add(section: str, name: str, fn: Callable[[int], float], num_clips: int) -> None:
            paths.append({"section": section, "name": name, "fn": fn, "seconds": [], "clips": num_clips})

        train_clips = min(args.train_clips or len(plain), len(plain))
        for section, step, n in (("read", None, len(plain)), ("train", trainer, train_clips)):
            if args.section not in ("all", section):
                continue
            w = args.workers
            add(section, "decode (no cache)", lambda r, t=step, n=n: epoch_seconds(plain, args, r, t, n, w), n)
            add(section, "first epoch (decode + fill)", lambda r, t=step, n=n: first_epoch(r, t, n), n)
            add(section, "cached epoch", lambda r, t=step, n=n: epoch_seconds(filled, args, r, t, n, w), n)
            if w != 0:
                add(section, "cached epoch, workers=0",
                    lambda r, t=step, n=n: epoch_seconds(filled, args, r, t, n, 0), n)
            if section == "train":
                add(section, "compute only (batch in memory)",
                    lambda r, n=n: compute_only_seconds(trainer, n, args.batch_size), n)

        total = time.perf_counter()
        for r in range(args.repeats):
            line = []
            for p in rotated(paths, r):
                p["seconds"].append(p["fn"](r))
                line.append(f"{p['section']}/{p['name']} {p['seconds'][-1]:.1f} s")
            print(f"round {r + 1}/{args.repeats} ({time.perf_counter() - total:.0f} s): " + "; ".join(line), flush=True)

        header = f"{'path':<34} {'median s':>9} {'min':>7} {'max':>7} {'clips/s':>8} {'/cached':>8} {'paired':>7}"
        for section, title in (("read", f"Epoch of reading ({len(plain)} clips, DataLoader only)"),
                               ("train", f"Epoch of training ({train_clips} clips, mn width {args.width_mult:g}, "
                                         f"one step per batch)")):
            members = [p for p in paths if p["section"] == section]
            if not members:
                continue
            cached = next(p for p in members if p["name"] == "cached epoch")
            print(f"\n{title}\n{header}\n{'-' * len(header)}")
            for p in members:
                p["median"] = statistics.median(p["seconds"])
                p["ratio_to_cached"] = p["median"] / statistics.median(cached["seconds"])
                p["paired_ratio_to_cached"] = statistics.median(a / b for a, b in zip(p["seconds"], cached["seconds"]))
                print(f"{p['name']:<34} {p['median']:9.2f} {min(p['seconds']):7.2f} {max(p['seconds']):7.2f} "
                      f"{p['clips'] / p['median']:8.0f} {p['ratio_to_cached']:7.2f}x "
                      f"{p['paired_ratio_to_cached']:6.2f}x")
        print(f"\nmedian/min/max over {args.repeats} rounds; '/cached' = ratio of medians to "
              f"the cached epoch, 'paired' = median of per-round ratios")
        if args.json is not None:
            args.json.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()},
                                             "paths": [{k: v for k, v in p.items() if k != "fn"} for p in paths]},
                                            indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
