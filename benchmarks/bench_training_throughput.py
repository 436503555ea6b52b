#!/usr/bin/env python
"""Data-loading and training throughput benchmark (prints a table; not a test).

Measures, in clips per second:

1. data loading: `AudioSetDataset` (HDF5 read + mp3 decode + resample/pad) through a
   `torch.utils.data.DataLoader` with num_workers in {0, 1, 2} (`--workers`), also per worker;
2. training: full steps of a MobileNet student (mn10 by default) on 10 s clips at 32 kHz
   (128 mels, hop 320: the AudioSet setting): `AugmentMelSTFT` in train mode + forward +
   BCE loss + backward + Adam step,
   - with one batch already in memory (pure compute), and
   - fed from the DataLoader (end to end) with num_workers 0 and 1 (`--e2e-workers`).

Methodology: every round runs each path once, in an order rotated by one path per round, for
`--repeats` rounds, so slow phases of a machine whose speed drifts hit every path alike. Each
path skips one warm-up batch/step (worker start-up, allocator, kernel selection) before its
timed batches. The table gives the median (and min/max) clips/s over rounds, the ratio of
medians to the section's baseline, and the median of the per-round ratios to the baseline
measured in the same round ("paired"), which is the number to trust on a noisy machine.

By default the data is a temporary AudioSet-format HDF5 of `--num-clips` synthetic 10 s clips
(noise + tones), mp3-encoded at 32 kHz (about 150 ms of encoding per clip); `--hdf5 PATH`
benchmarks your own file instead. Files are read from the page cache after the first round,
so loading numbers are decode-bound, not disk-bound.

    python benchmarks/bench_training_throughput.py --quick           # < 2 minutes on a laptop CPU
    python benchmarks/bench_training_throughput.py --repeats 5 --json results.json
    python benchmarks/bench_training_throughput.py --hdf5 balanced_train.hdf --device cuda --batch-size 64
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from _common import CyclicSampler, parse_workers, rotated, write_synthetic_hdf5  # puts the checkout on sys.path

import torch
from torch.utils.data import DataLoader

from efficient_tagging import AugmentMelSTFT, get_model
from efficient_tagging.data.hdf5 import AudioSetDataset

SAMPLE_RATE = 32000
CLIP_SECONDS = 10.0
NUM_CLASSES = 527


# ----------------------------------------------------------------------------- data

def make_loader(dataset: AudioSetDataset, batch_size: int, num_batches: int, workers: int, start: int,
                pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True,
                      sampler=CyclicSampler(len(dataset), num_batches * batch_size, start),
                      pin_memory=pin_memory)


# ----------------------------------------------------------------------------- timed paths

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """Everything the timed paths share: dataset, model, frontend, optimiser, in-memory batch."""

    def __init__(self, args: argparse.Namespace, dataset: AudioSetDataset, device: torch.device):
        self.args, self.dataset, self.device = args, dataset, device
        self.pin = device.type == "cuda"
        self.round_offset = 0  # changes the clips each round reads (same amount of work)
        if args.section in ("all", "training"):
            torch.manual_seed(args.seed)
            self.frontend = AugmentMelSTFT(n_mels=128, sr=SAMPLE_RATE, win_length=800, hopsize=320,
                                           n_fft=1024).to(device).train()
            self.model = get_model(arch="mn", width_mult=args.width_mult,
                                   num_classes=dataset.num_classes).to(device).train()
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
            self.num_parameters = sum(p.numel() for p in self.model.parameters())
            items = [dataset[i % len(dataset)] for i in range(args.batch_size)]
            self.waveform = torch.stack([item["waveform"] for item in items]).to(device)
            self.target = torch.stack([item["target"] for item in items]).to(device)

    def train_step(self, waveform: torch.Tensor, target: torch.Tensor) -> None:
        spectrogram = self.frontend(waveform).unsqueeze(1)
        logits, _ = self.model(spectrogram)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    # Each path returns clips/s over its timed batches (the warm-up batch excluded).
    def loading(self, workers: int) -> float:
        n, bs = self.args.load_batches, self.args.batch_size
        loader = make_loader(self.dataset, bs, n + 1, workers, self.round_offset, pin_memory=False)
        iterator = iter(loader)
        next(iterator)  # warm-up: worker start-up, HDF5 open, first decode
        start = time.perf_counter()
        clips = 0
        for batch in iterator:
            clips += batch["waveform"].shape[0]
        elapsed = time.perf_counter() - start
        del iterator, loader
        assert clips == n * bs, (clips, n * bs)
        return clips / elapsed

    def train_in_memory(self) -> float:
        n, bs = self.args.train_steps, self.args.batch_size
        self.train_step(self.waveform, self.target)  # warm-up
        sync(self.device)
        start = time.perf_counter()
        for _ in range(n):
            self.train_step(self.waveform, self.target)
        sync(self.device)
        return n * bs / (time.perf_counter() - start)

    def train_end_to_end(self, workers: int) -> float:
        n, bs = self.args.train_steps, self.args.batch_size
        loader = make_loader(self.dataset, bs, n + 1, workers, self.round_offset, pin_memory=self.pin)
        iterator = iter(loader)
        clips = 0
        start = 0.0
        for step, batch in enumerate(iterator):
            self.train_step(batch["waveform"].to(self.device, non_blocking=True),
                            batch["target"].to(self.device, non_blocking=True))
            if step == 0:  # warm-up step done: start the clock
                sync(self.device)
                start = time.perf_counter()
            else:
                clips += batch["waveform"].shape[0]
        sync(self.device)
        elapsed = time.perf_counter() - start
        del iterator, loader
        assert clips == n * bs, (clips, n * bs)
        return clips / elapsed


# ----------------------------------------------------------------------------- reporting

def summarise(paths: list[dict[str, Any]]) -> None:
    """Add median/min/max, ratio of medians and paired (per-round) ratio to the section baseline."""
    for section in {p["section"] for p in paths}:
        members = [p for p in paths if p["section"] == section]
        base = next(p for p in members if p["baseline"])
        for p in members:
            p["median"] = statistics.median(p["clips_per_s"])
            p["min"], p["max"] = min(p["clips_per_s"]), max(p["clips_per_s"])
            p["per_worker_median"] = p["median"] / max(1, p["workers"]) if p["workers"] is not None else None
        for p in members:
            p["ratio_of_medians"] = p["median"] / base["median"]
            p["paired_ratio_median"] = statistics.median(
                a / b for a, b in zip(p["clips_per_s"], base["clips_per_s"]))


def print_table(paths: list[dict[str, Any]], titles: dict[str, str]) -> None:
    header = (f"{'path':<34} {'median':>8} {'min':>8} {'max':>8} {'/worker':>8} {'x base':>7} {'paired':>7}")
    for section, title in titles.items():
        members = [p for p in paths if p["section"] == section]
        if not members:
            continue
        print(f"\n{title}")
        print(header)
        print("-" * len(header))
        for p in members:
            per_worker = f"{p['per_worker_median']:8.1f}" if p["per_worker_median"] is not None else f"{'':>8}"
            name = p["name"] + (" (base)" if p["baseline"] else "")
            print(f"{name:<34} {p['median']:8.1f} {p['min']:8.1f} {p['max']:8.1f} {per_worker} "
                  f"{p['ratio_of_medians']:7.2f} {p['paired_ratio_median']:7.2f}")


# ----------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--hdf5", type=Path, default=None, metavar="PATH",
                      help="benchmark this AudioSet-format HDF5 file (audio_name/mp3/target) instead of building a "
                           "temporary synthetic one")
    data.add_argument("--num-clips", "--num_clips", dest="num_clips", type=int, default=None,
                      help="clips in the synthetic file (default 64; 16 with --quick); each takes ~150 ms to encode. "
                           "Paths that need more clips than the file holds cycle through it")
    data.add_argument("--seed", type=int, default=0, help="seed of the synthetic audio and model init (default 0)")

    work = parser.add_argument_group("workload")
    work.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                      help="clips per batch for loading and training (default 8 on CPU, 32 on CUDA; 4 with --quick "
                           "on CPU)")
    work.add_argument("--width-mult", "--width_mult", dest="width_mult", type=float, default=1.0,
                      help="MobileNet width multiplier: 1.0 = mn10 (default), 0.4 = mn04, 4.0 = mn40")
    work.add_argument("--load-batches", "--load_batches", dest="load_batches", type=int, default=None,
                      help="timed batches per data-loading path and round, after one warm-up batch (default 8; "
                           "4 with --quick)")
    work.add_argument("--train-steps", "--train_steps", dest="train_steps", type=int, default=None,
                      help="timed training steps per training path and round, after one warm-up step (default 5; "
                           "2 with --quick)")
    work.add_argument("--warmup-steps", "--warmup_steps", dest="warmup_steps", type=int, default=None,
                      help="untimed training steps before round 1 (default 3; 2 with --quick)")
    work.add_argument("--workers", type=parse_workers, default=[0, 1, 2],
                      help="comma-separated DataLoader num_workers for the loading section; the first is the "
                           "baseline (default 0,1,2)")
    work.add_argument("--e2e-workers", "--e2e_workers", dest="e2e_workers", type=parse_workers, default=[0, 1],
                      help="comma-separated num_workers for the end-to-end training paths (default 0,1)")
    work.add_argument("--section", choices=("all", "loading", "training"), default="all",
                      help="which section(s) to run (default all)")

    method = parser.add_argument_group("method and output")
    method.add_argument("--repeats", type=int, default=None,
                        help="rounds; every round runs every path once, in rotating order (default 5; 2 with --quick)")
    method.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where training runs: auto = cuda if available, else cpu (default auto). Loading always "
                             "runs on the CPU; CUDA work is synchronised before every clock read")
    method.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the main process (default: leave torch's default). "
                             "DataLoader workers use one thread each")
    method.add_argument("--quick", action="store_true",
                        help="tiny configuration for a smoke run (< 2 minutes on a CPU): 16 synthetic clips, "
                             "batch 4 on CPU, 4 loading batches, 2 training steps, 2 warm-up steps, 2 rounds; "
                             "explicit flags win")
    method.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write configuration, environment and per-round results as JSON to PATH")
    return parser


def resolve_args(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch build / on this machine")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    defaults = {"num_clips": (64, 16), "warmup_steps": (3, 2), "load_batches": (8, 4), "train_steps": (5, 2),
                "repeats": (5, 2),
                "batch_size": ((32, 32) if device.type == "cuda" else (8, 4))}
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    for key in ("num_clips", "load_batches", "train_steps", "repeats", "batch_size"):
        if getattr(args, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be at least 1")
    if args.warmup_steps < 0:
        raise SystemExit("--warmup-steps must be at least 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return device


def run(args: argparse.Namespace, hdf5_path: Path, device: torch.device, environment: dict[str, Any]) -> dict:
    dataset = AudioSetDataset(hdf5_path, sample_rate=SAMPLE_RATE, clip_length=CLIP_SECONDS)
    print(f"data: {hdf5_path} ({len(dataset)} clips, {dataset.num_classes} classes)")
    bench = Bench(args, dataset, device)

    paths: list[dict[str, Any]] = []

    def add(section: str, name: str, fn: Callable[[], float], workers: Optional[int], baseline: bool) -> None:
        paths.append({"section": section, "name": name, "workers": workers, "baseline": baseline, "fn": fn,
                      "clips_per_s": []})

    if args.section in ("all", "loading"):
        for i, w in enumerate(args.workers):
            add("loading", f"loader workers={w}", lambda w=w: bench.loading(w), w, i == 0)
    if args.section in ("all", "training"):
        add("training", "train step, batch in memory", bench.train_in_memory, None, True)
        for w in args.e2e_workers:
            add("training", f"train step + loader workers={w}", lambda w=w: bench.train_end_to_end(w), w, False)
        print(f"model: mn width_mult={args.width_mult} ({bench.num_parameters / 1e6:.2f} M parameters), "
              f"input {args.batch_size} x {int(SAMPLE_RATE * CLIP_SECONDS)} samples -> 128 mels x "
              f"{bench.frontend.num_frames(int(SAMPLE_RATE * CLIP_SECONDS))} frames")

    # Untimed global warm-up: the first training steps of a fresh process are much slower
    # (allocator growth, oneDNN/cuDNN kernel selection) and would penalise round 1's first path.
    total_start = time.perf_counter()
    if args.section in ("all", "training"):
        for _ in range(args.warmup_steps):
            bench.train_step(bench.waveform, bench.target)
        sync(device)
    if args.section in ("all", "loading"):
        for i in range(args.batch_size):  # decoder and resampler set-up in the main process
            dataset[i % len(dataset)]
    print(f"warm-up done ({time.perf_counter() - total_start:.1f} s, {args.warmup_steps} training steps)")

    rounds: list[list[str]] = []
    for r in range(args.repeats):
        order = rotated(paths, r)
        bench.round_offset = (r * args.batch_size) % len(dataset)
        rounds.append([p["name"] for p in order])
        line = []
        for p in order:
            gc.collect()
            value = p["fn"]()
            p["clips_per_s"].append(value)
            line.append(f"{p['name']}: {value:.1f}")
        print(f"round {r + 1}/{args.repeats} ({time.perf_counter() - total_start:.0f} s): " + "; ".join(line),
              flush=True)
    dataset.close()

    summarise(paths)
    print_table(paths, {
        "loading": f"Data loading, clips/s (AudioSetDataset -> DataLoader, batch {args.batch_size}, "
                   f"{args.load_batches} timed batches per path and round)",
        "training": f"Training, clips/s (mn width_mult={args.width_mult}, batch {args.batch_size}, "
                    f"{args.train_steps} timed steps per path and round, {device.type}; frontend+fwd+BCE+bwd+Adam)",
    })
    print(f"\nmedian/min/max over {args.repeats} rounds; 'x base' = ratio of medians to the section's (base) path; "
          f"'paired' = median of per-round ratios to the base path; '/worker' = clips/s / max(1, workers).")

    for p in paths:
        p.pop("fn")
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "hdf5": str(hdf5_path) if args.hdf5 else None, "num_clips_in_file": len(dataset),
            "environment": environment, "round_orders": rounds, "paths": paths,
            "total_seconds": time.perf_counter() - total_start}


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_args(args)
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    environment = {
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "cpu_affinity": affinity, "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(), "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    print(f"torch {environment['torch']} | torch threads {environment['torch_threads']} | "
          f"cpu_count {environment['cpu_count']} (usable {affinity}) | device {device}"
          + (f" ({environment['cuda_device']})" if environment["cuda_device"] else ""))
    print(f"batch {args.batch_size} | repeats {args.repeats} | loading: workers {args.workers}, "
          f"{args.load_batches} batches | training: {args.train_steps} steps, e2e workers {args.e2e_workers}"
          + (" | --quick" if args.quick else ""))

    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        if args.hdf5 is not None:
            if not args.hdf5.is_file():
                raise SystemExit(f"--hdf5: file not found: {args.hdf5}")
            hdf5_path = args.hdf5
        else:
            hdf5_path = Path(tmp) / "synthetic.hdf"
            write_synthetic_hdf5(hdf5_path, args.num_clips, args.seed, CLIP_SECONDS, SAMPLE_RATE, NUM_CLASSES)
        results = run(args, hdf5_path, device, environment)

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
