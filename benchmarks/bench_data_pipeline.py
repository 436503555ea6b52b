#!/usr/bin/env python
"""Data-pipeline benchmark: HDF5 mp3 -> 32 kHz padded waveform + target + teacher logits (prints a table).

Sections (every number is clips per second unless said otherwise):

1. loading: the real training dataset path, `AudioSetDataset` with teacher logits joined by name
   (HDF5 read + mp3 decode + pad/cut to 10 s + unpacked target + teacher-logits row), through a
   `DataLoader` with num_workers in `--workers` (default 0,1,2); clips/s in all and per worker
   process. Compared in the same rounds with
   - "reference": EfficientAT's `AudioSetDataset.__getitem__` (its `decode_mp3`: PyAV frame by frame,
     `to_ndarray` + `np.concatenate`; numpy zero-padding; `np.unpackbits`) plus the teacher row
     read by name from the same teacher file, i.e. the numpy-style decode the project replaces;
   - "ours": `AudioSetDataset` (`audio.decode_audio`: each PyAV frame's plane buffers viewed, not
     copied, joined and channel-averaged once per block; decoders that already give planar float32,
     as mp3 does, skip the format converter). The script first checks that it decodes every clip of
     the file bit-identically to the reference's `decode_mp3`.
   With `--competing-load N` every path is also measured while N busy processes (one thread each)
   compete for the cores.
2. breakdown: microseconds per clip of the stages of one item in this process (h5py reads, decode,
   fit to 10 s, target, teacher row).
3. training (`--train-steps`, 0 skips it): one short epoch of `train()` (mn04 on the same file, KD)
   per worker count; its `data_wait_fraction` (time blocked waiting for the next batch / step time)
   and clips/s. Skipped with a note if the trainer does not report the field.

Methodology: every round runs each compared path once, in an order rotated by one path per round,
for `--repeats` rounds, so slow phases of a machine whose speed drifts hit every path alike. Each
loader run skips one warm-up batch (worker start-up, HDF5 open). The table gives median (min/max)
clips/s over rounds and the median of the per-round ratios to the reference path with the same
worker count ("paired"), which is the number to compare across runs and machines.

Without `--hdf5` the data is a synthetic AudioSet-format HDF5 of `--num-clips` 10 s clips (noise +
tones, mp3 at 32 kHz, as the PaSST/EfficientAT files; ~0.3 s of encoding per clip) with random
teacher logits; `--data-dir` keeps them for the next run.

    python benchmarks/bench_data_pipeline.py --quick
    python benchmarks/bench_data_pipeline.py --repeats 5 --competing-load 2 --data-dir /tmp/bench_data
    python benchmarks/bench_data_pipeline.py --hdf5 balanced_train.hdf --teacher-logits teacher.h5 --train-steps 0
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from _common import CyclicSampler, parse_workers, rotated, write_synthetic_hdf5  # puts the checkout on sys.path

import av
import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from efficient_tagging.audio import decode_audio
from efficient_tagging.data.hdf5 import AudioSetDataset, read_audio_names
from efficient_tagging.data.teacher_logits import TeacherLogitsWriter

SAMPLE_RATE = 32000
CLIP_SECONDS = 10.0
CLIP_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)


# ----------------------------------------------------------------------------- the compared decoders

def decode_mp3_reference(mp3_arr: np.ndarray) -> np.ndarray:
    """EfficientAT's `datasets/audioset.py: decode_mp3`, unchanged."""
    container = av.open(io.BytesIO(mp3_arr.tobytes()))
    stream = next(s for s in container.streams if s.type == "audio")
    a = []
    for packet in container.demux(stream):
        for frame in packet.decode():
            a.append(frame.to_ndarray().reshape(-1))
    waveform = np.concatenate(a)
    if waveform.dtype != "float32":
        raise RuntimeError("Unexpected wave type")
    return waveform


class ReferenceDataset(Dataset):
    """EfficientAT's `AudioSetDataset.__getitem__` (no gain augment, 32 kHz: no resampling) + teacher row.

    The HDF5 file is opened once per process on first use, as EfficientAT does; the teacher row is read
    by name from the same teacher-logits file the dataset path uses (EfficientAT indexes an in-memory
    array by position instead; a row read is ~20 us either way).
    """

    def __init__(self, hdf5_path: Path, teacher_path: Path, num_classes: int):
        self.hdf5_path, self.teacher_path, self.classes_num = hdf5_path, teacher_path, num_classes
        with h5py.File(hdf5_path, "r") as handle:
            self.length = len(handle["audio_name"])
        self.teacher_rows = {name: row for row, name in enumerate(read_audio_names(teacher_path))}
        self.dataset_file: Optional[h5py.File] = None
        self.teacher_file: Optional[h5py.File] = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.dataset_file is None:
            self.dataset_file = h5py.File(self.hdf5_path, "r")
            self.teacher_file = h5py.File(self.teacher_path, "r")
        audio_name = self.dataset_file["audio_name"][index].decode()
        waveform = decode_mp3_reference(self.dataset_file["mp3"][index])
        if len(waveform) <= CLIP_SAMPLES:  # EfficientAT's pad_or_truncate
            waveform = np.concatenate((waveform, np.zeros(CLIP_SAMPLES - len(waveform), dtype=np.float32)), axis=0)
        else:
            waveform = waveform[0:CLIP_SAMPLES]
        target = self.dataset_file["target"][index]
        target = np.unpackbits(target, axis=-1, count=self.classes_num).astype(np.float32)
        logits = self.teacher_file["logits"][self.teacher_rows[audio_name]].astype(np.float32)
        return {"waveform": waveform.reshape(1, -1), "audio_name": audio_name, "target": target,
                "teacher_logits": logits}


# ----------------------------------------------------------------------------- data

def build_teacher_file(hdf5_path: Path, path: Path, num_classes: int, seed: int) -> None:
    names = read_audio_names(hdf5_path)
    logits = np.random.default_rng(seed).standard_normal((len(names), num_classes)).astype(np.float32)
    with TeacherLogitsWriter(path, num_classes, {"teachers": ["random (benchmark)"]}, resume=False) as writer:
        writer.write(names, logits)


def build_eval_file(source: Path, path: Path, rows: int) -> None:
    """The first `rows` clips of `source` (the training run's evaluation set: kept small on purpose)."""
    with h5py.File(source, "r") as src, h5py.File(path, "w") as dst:
        for key in ("audio_name", "target"):
            dst.create_dataset(key, data=src[key][:rows])
        mp3 = dst.create_dataset("mp3", shape=(rows,), dtype=h5py.vlen_dtype(np.uint8))
        for row in range(rows):
            mp3[row] = src["mp3"][row]
        for key, value in src.attrs.items():
            dst.attrs[key] = value


# ----------------------------------------------------------------------------- competing load

BUSY_LOOP = """
import os, signal, sys
os.environ["OMP_NUM_THREADS"] = "1"
import numpy as np
a = np.random.default_rng(0).standard_normal((192, 192))
while True:
    a = np.tanh(a @ a.T * 1e-3) + 1e-3
"""


@contextlib.contextmanager
def competing_load(processes: int) -> Iterator[None]:
    """`processes` busy subprocesses (numpy matmul + tanh, one thread each) for the duration of the block."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], env=env) for _ in range(processes)]
    try:
        time.sleep(0.5 if processes else 0.0)  # let them get going
        yield
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(timeout=10)


# ----------------------------------------------------------------------------- timed paths

def loader_rate(dataset: Dataset, workers: int, batch_size: int, batches: int, start: int) -> float:
    """clips/s of `batches` batches through a DataLoader, after one untimed warm-up batch."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True,
                        sampler=CyclicSampler(len(dataset), (batches + 1) * batch_size, start))
    iterator = iter(loader)
    next(iterator)  # worker start-up, HDF5 open, first decode
    clips = 0
    begin = time.perf_counter()
    for batch in iterator:
        clips += batch["waveform"].shape[0]
    elapsed = time.perf_counter() - begin
    del iterator, loader
    if clips != batches * batch_size:
        raise RuntimeError(f"loader gave {clips} clips, expected {batches * batch_size}")
    return clips / elapsed


def check_decoder(hdf5_path: Path, rows: int) -> int:
    """Clips that `audio.decode_audio` decodes bit for bit like the reference's `decode_mp3` (raises otherwise)."""
    with h5py.File(hdf5_path, "r") as handle:
        count = min(rows, len(handle["mp3"]))
        for row in range(count):
            encoded = handle["mp3"][row]
            expected = decode_mp3_reference(encoded)
            got, _ = decode_audio(encoded)
            if got.dtype != expected.dtype or not np.array_equal(got, expected):
                raise SystemExit(f"audio.decode_audio differs from the reference decode_mp3 on row {row}")
    return count


def breakdown(dataset: AudioSetDataset, clips: int) -> dict[str, float]:
    """Microseconds per clip of each stage of one item, in this process."""
    handle = h5py.File(dataset.paths[0], "r")
    mp3, names, targets = handle["mp3"], handle["audio_name"], handle["target"]
    encoded = [mp3[i] for i in range(clips)]
    teacher = dataset.teacher_logits
    stages: dict[str, Callable[[int], Any]] = {
        "h5py: audio_name + mp3 + target rows (open datasets)": lambda i: (names[i], mp3[i], targets[i]),
        "h5py: the same with a group lookup per read": lambda i: (handle["audio_name"][i], handle["mp3"][i],
                                                                   handle["target"][i]),
        "decode: audio.decode_audio": lambda i: decode_audio(encoded[i]),
        "decode: reference decode_mp3": lambda i: decode_mp3_reference(encoded[i]),
        "fit to 10 s (_fit_waveform)": lambda i: dataset._fit_waveform(decoded[i], SAMPLE_RATE, "x"),
        "teacher row (TeacherLogits.lookup)": lambda i: teacher.lookup(dataset.audio_names[i]) if teacher else None,
        "whole item (AudioSetDataset[i])": lambda i: dataset[i],
    }
    decoded = [decode_audio(e)[0] for e in encoded]
    result = {}
    for label, fn in stages.items():
        fn(0)
        begin = time.perf_counter()
        for i in range(clips):
            fn(i)
        result[label] = (time.perf_counter() - begin) / clips * 1e6
    handle.close()
    return result


def training_run(hdf5_path: Path, eval_path: Path, teacher_path: Path, workers: int, batch_size: int, steps: int,
                 out_dir: Path) -> Optional[dict[str, Any]]:
    """One short KD epoch of `train()`; its data-wait fraction and clips/s (None if not reported)."""
    from efficient_tagging.train.trainer import TrainConfig, train

    shutil.rmtree(out_dir, ignore_errors=True)
    config = TrainConfig(train_hdf5=[str(hdf5_path)], eval_hdf5=[str(eval_path)], teacher_logits=str(teacher_path),
                         batch_size=batch_size, epoch_len=batch_size * steps, n_epochs=1, num_workers=workers,
                         width_mult=0.4, progress=False, out_dir=str(out_dir), checkpoint_every_steps=0,
                         sampler="uniform")
    summary = train(config)
    record = dict(summary["history"][-1])
    timing = (summary.get("epoch_timing") or [{}])[-1]
    record.update(timing)
    if "data_wait_fraction" not in record:
        return None
    return {"data_wait_fraction": record["data_wait_fraction"], "clips_per_s": record["train_clips_per_s"],
            "data_wait_s": record.get("data_wait_s"), "step_time_s": record.get("step_time_s")}


# ----------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--hdf5", type=Path, default=None, metavar="PATH",
                      help="an AudioSet-format HDF5 of 32 kHz mp3 clips instead of the synthetic one")
    data.add_argument("--teacher-logits", "--teacher_logits", dest="teacher_logits", type=Path, default=None,
                      metavar="PATH", help="its teacher-logits HDF5 (default: random logits for every clip)")
    data.add_argument("--num-clips", "--num_clips", dest="num_clips", type=int, default=None,
                      help="synthetic clips (default 96; 24 with --quick)")
    data.add_argument("--data-dir", "--data_dir", dest="data_dir", type=Path, default=None,
                      help="keep the synthetic files here and reuse them on the next run (default: a temporary "
                           "folder, deleted at the end)")
    data.add_argument("--seed", type=int, default=0)
    work = parser.add_argument_group("workload")
    work.add_argument("--workers", type=parse_workers, default=[0, 1, 2],
                      help="DataLoader num_workers of the loading section (default 0,1,2)")
    work.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    work.add_argument("--batches", type=int, default=None,
                      help="timed batches per loader run, after one warm-up batch (default 8; 3 with --quick)")
    work.add_argument("--competing-load", "--competing_load", dest="competing_load", type=int, default=0,
                      metavar="N", help="also measure every loading path with N busy processes competing for the "
                                        "cores (default 0: only as the machine is)")
    work.add_argument("--breakdown-clips", "--breakdown_clips", dest="breakdown_clips", type=int, default=None,
                      help="clips per stage in the breakdown section (default 48; 12 with --quick; 0 skips it)")
    work.add_argument("--train-steps", "--train_steps", dest="train_steps", type=int, default=None,
                      help="steps of the short training epoch per worker count (default 8; 3 with --quick; 0 skips "
                           "the training section)")
    work.add_argument("--train-workers", "--train_workers", dest="train_workers", type=parse_workers, default=None,
                      help="num_workers of the training section (default: --workers)")
    method = parser.add_argument_group("method and output")
    method.add_argument("--repeats", type=int, default=None, help="rounds (default 5; 2 with --quick)")
    method.add_argument("--train-repeats", "--train_repeats", dest="train_repeats", type=int, default=None,
                        help="rounds of the training section (default 2; 1 with --quick)")
    method.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    method.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write all results as JSON")
    return parser


def resolve(args: argparse.Namespace) -> None:
    defaults = {"num_clips": (96, 24), "batches": (8, 3), "breakdown_clips": (48, 12), "train_steps": (8, 3),
                "repeats": (5, 2), "train_repeats": (2, 1)}
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.train_workers is None:
        args.train_workers = list(args.workers)
    for key in ("num_clips", "batches", "repeats", "batch_size", "train_repeats"):
        if getattr(args, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be at least 1")
    if args.competing_load < 0 or args.train_steps < 0 or args.breakdown_clips < 0:
        raise SystemExit("--competing-load, --train-steps and --breakdown-clips must not be negative")


def prepare_data(args: argparse.Namespace, folder: Path) -> tuple[Path, Path]:
    if args.hdf5 is not None:
        if not args.hdf5.is_file():
            raise SystemExit(f"--hdf5: file not found: {args.hdf5}")
        hdf5_path = args.hdf5
    else:
        hdf5_path = folder / f"synthetic_{args.num_clips}.hdf"
        if not hdf5_path.is_file():
            print(f"encoding {args.num_clips} synthetic 10 s clips (mp3, 32 kHz) into {hdf5_path} ...", flush=True)
            write_synthetic_hdf5(hdf5_path, args.num_clips, args.seed, CLIP_SECONDS, SAMPLE_RATE)
    if args.teacher_logits is not None:
        if not args.teacher_logits.is_file():
            raise SystemExit(f"--teacher-logits: file not found: {args.teacher_logits}")
        return hdf5_path, args.teacher_logits
    teacher_path = folder / f"{hdf5_path.stem}.teacher.h5"
    if not teacher_path.is_file() or teacher_path.stat().st_mtime < hdf5_path.stat().st_mtime:
        with h5py.File(hdf5_path, "r") as handle:
            num_classes = int(handle.attrs.get("num_classes", 527))
        build_teacher_file(hdf5_path, teacher_path, num_classes, args.seed)
    return hdf5_path, teacher_path


def median_ratio(values: list[float], base: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(values, base))


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    hdf5_path, teacher_path = prepare_data(args, folder)
    dataset = AudioSetDataset(hdf5_path, sample_rate=SAMPLE_RATE, clip_length=CLIP_SECONDS,
                              teacher_logits=teacher_path)
    found, missing = dataset.teacher_coverage()  # the name index is built here; forked workers inherit it
    reference = ReferenceDataset(hdf5_path, teacher_path, dataset.num_classes)
    checked = check_decoder(hdf5_path, min(len(dataset), 32))
    print(f"data: {hdf5_path} ({len(dataset)} clips, {dataset.num_classes} classes; teacher logits for {found}, "
          f"missing {missing}); audio.decode_audio bit-identical to the reference decode_mp3 on {checked} clips")

    loads = [0] + ([args.competing_load] if args.competing_load else [])
    paths: list[dict[str, Any]] = []
    for load in loads:
        for workers in args.workers:
            for kind in ("reference", "ours"):
                paths.append({"kind": kind, "workers": workers, "load": load, "clips_per_s": []})

    def measure(path: dict[str, Any], start: int) -> float:
        target = reference if path["kind"] == "reference" else dataset
        return loader_rate(target, path["workers"], args.batch_size, args.batches, start)

    for i in range(args.batch_size):  # decoder set-up, page cache
        dataset[i % len(dataset)]
        reference[i % len(reference)]
    begin = time.perf_counter()
    for r in range(args.repeats):
        start = (r * args.batch_size * (args.batches + 1)) % len(dataset)
        line = []
        for load in loads:
            members = [p for p in paths if p["load"] == load]
            with competing_load(load):
                for path in rotated(members, r):
                    gc.collect()
                    value = measure(path, start)
                    path["clips_per_s"].append(value)
                    line.append(f"{path['kind']} w={path['workers']}{' +load' if load else ''}: {value:.0f}")
        print(f"round {r + 1}/{args.repeats} ({time.perf_counter() - begin:.0f} s): " + "; ".join(line), flush=True)

    for path in paths:
        base = next(p for p in paths if p["kind"] == "reference" and p["workers"] == path["workers"]
                    and p["load"] == path["load"])
        path["median"] = statistics.median(path["clips_per_s"])
        path["min"], path["max"] = min(path["clips_per_s"]), max(path["clips_per_s"])
        path["per_worker_median"] = path["median"] / max(1, path["workers"])
        path["paired_vs_reference"] = median_ratio(path["clips_per_s"], base["clips_per_s"])

    stages: dict[str, float] = {}
    if args.breakdown_clips:
        stage_rounds: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for label, value in breakdown(dataset, min(args.breakdown_clips, len(dataset))).items():
                stage_rounds.setdefault(label, []).append(value)
        stages = {label: statistics.median(values) for label, values in stage_rounds.items()}

    training: list[dict[str, Any]] = []
    if args.train_steps:
        eval_path = folder / f"{hdf5_path.stem}.eval8.hdf"
        if not eval_path.is_file() or eval_path.stat().st_mtime < hdf5_path.stat().st_mtime:
            build_eval_file(hdf5_path, eval_path, min(8, len(dataset)))
        runs = {w: [] for w in args.train_workers}
        for r in range(args.train_repeats):
            for workers in rotated(args.train_workers, r):
                result = training_run(hdf5_path, eval_path, teacher_path, workers, args.batch_size, args.train_steps,
                                      folder / f"train_w{workers}")
                if result is None:
                    print("training: this trainer does not report data_wait_fraction; section skipped")
                    runs = {}
                    break
                runs[workers].append(result)
                print(f"training round {r + 1}/{args.train_repeats}, workers={workers}: data wait "
                      f"{100 * result['data_wait_fraction']:.0f}% of step time, {result['clips_per_s']:.1f} clips/s",
                      flush=True)
            if not runs:
                break
        for workers, results in runs.items():
            training.append({"workers": workers, "runs": results,
                             "data_wait_fraction": statistics.median(x["data_wait_fraction"] for x in results),
                             "clips_per_s": statistics.median(x["clips_per_s"] for x in results)})

    dataset.close()
    print_tables(args, paths, stages, training)
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "hdf5": str(hdf5_path), "paths": paths, "breakdown_us_per_clip": stages, "training": training}


def print_tables(args: argparse.Namespace, paths: list[dict[str, Any]], stages: dict[str, float],
                 training: list[dict[str, Any]]) -> None:
    print(f"\nLoading, clips/s (HDF5 mp3 32 kHz -> 10 s float32 + target + teacher logits; batch {args.batch_size}, "
          f"{args.batches} timed batches per run; medians of {args.repeats} rounds)")
    header = f"{'path':<24} {'workers':>7} {'load':>5} {'median':>8} {'min':>7} {'max':>7} {'/worker':>8} {'paired':>7}"
    print(header)
    print("-" * len(header))
    for p in paths:
        print(f"{p['kind']:<24} {p['workers']:>7} {p['load']:>5} {p['median']:8.1f} {p['min']:7.1f} {p['max']:7.1f} "
              f"{p['per_worker_median']:8.1f} {p['paired_vs_reference']:6.2f}x")
    print("'/worker' = clips/s / max(1, workers); 'paired' = median over rounds of clips/s / the reference path's "
          "clips/s (same round, workers and load); 'load' = competing busy processes")
    if stages:
        print("\nBreakdown, microseconds per clip in this process (medians):")
        for label, value in stages.items():
            print(f"  {label:<56} {value:9.0f}")
    if training:
        print(f"\nShort training epoch (mn04, KD, batch {args.batch_size}, {args.train_steps} steps; medians of "
              f"{args.train_repeats}):")
        for t in training:
            print(f"  workers={t['workers']}: data wait {100 * t['data_wait_fraction']:5.1f}% of step time, "
                  f"{t['clips_per_s']:.1f} clips/s")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    resolve(args)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__} | PyAV {av.__version__} | threads {torch.get_num_threads()} | cpu_count "
          f"{os.cpu_count()} (usable {usable}) | load average at start {load[0]:.2f}" if load else "")
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
        results = run(args, args.data_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_data_pipeline_") as tmp:
            results = run(args, Path(tmp))
    results["environment"] = {"python": platform.python_version(), "torch": torch.__version__, "av": av.__version__,
                              "cpu_count": os.cpu_count(), "usable_cpus": usable, "load_average_start": load}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
