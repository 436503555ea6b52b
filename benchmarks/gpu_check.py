#!/usr/bin/env python
"""One GPU check, one table: where the time of the main jobs goes on one accelerator (issue 26, item 6).

Stages, each through the library's own code (nothing re-implemented here):

1. KD training of an mn10 student end to end from HDF5: `train.trainer.train` on a generated
   AudioSet-format HDF5 (10-s clips, mp3 at 32 kHz, decoded by DataLoader workers) with random
   teacher logits (`TeacherLogitsWriter`); frontend, mixup, forward, KD loss and backward on the
   device at `--precision`. Two epochs, evaluation only after the second; the row is the second
   epoch (the first pays CUDA context, kernel selection and allocator warm-up). Its clips/s and
   data-wait fraction come from the run's summary; bound: "decode" when the step loop waits for
   data more than half of the time, else "model+frontend".
2. Teacher labelling with PaSST-S (passt_s_swa_p16_128_ap476 architecture) and AST base384, random
   weights: `labelling.label_hdf5(AudioTagger(model), ...)` over the same HDF5 (after one untimed
   run over a small file); clips/s from its summary. The tagger alone on one decoded batch and the
   DataLoader's decoding alone say which of the two bounds it.
3. The batched frontends on the device: the training mel (`AugmentMelSTFT`, train mode), AST's
   Kaldi fbank (`ASTFbank` as AST labelling builds it) and the 44.1 -> 32 kHz resampler
   (`resample.sinc_resample`), batch 32 x 10 s: median of `--repeats` timed calls after warm-up.
4. Peak GPU memory of every stage (`torch.cuda.max_memory_allocated`; "n/a (cpu)" on the CPU).

    python benchmarks/gpu_check.py                        # on a GPU machine (sized for < 8 min on one H100)
    python benchmarks/gpu_check.py --json gpu_check.json  # the table as JSON too
    python benchmarks/gpu_check.py --device cpu --tiny    # CI smoke run: tiny models, a few 2-s clips
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from _common import synthetic_clip  # puts the checkout on sys.path

import numpy as np
import torch
from torch.utils.data import DataLoader

from efficient_tagging import AudioTagger, get_model
from efficient_tagging.audio import encode_audio
from efficient_tagging.data.hdf5 import AudioSetDataset, AudioSetHDF5Writer
from efficient_tagging.data.teacher_logits import TeacherLogitsWriter
from efficient_tagging.frontends import build_frontend
from efficient_tagging.hardware import cpu_description, threads_for_cpu_work
from efficient_tagging.labelling import label_hdf5
from efficient_tagging.models.registry import AST_PREPROCESSING, PASST_PREPROCESSING, ast_config, passt_config
from efficient_tagging.resample import sinc_resample
from efficient_tagging.train.audioset import AUDIOSET_RECIPE, DEMO_RECIPE
from efficient_tagging.train.trainer import TrainConfig, autocast_context, train, training_frontend

NUM_CLASSES = 527
MAX_ROWS = 2048  # HDF5 rows (~120 MB of 10-s mp3); longer epochs draw them again (same decode work per clip)
UNIQUE_CLIPS = 32  # distinct encodings, repeated over the rows: mp3 encoding (~80 ms per 10-s clip) is setup
DATA_WAIT_BOUND = 0.5  # the trainer's step loop waiting for batches more than this: decoding bounds training


@dataclasses.dataclass
class Settings:
    """What one run measures (from the command line)."""

    device: torch.device
    tiny: bool
    precision: str
    clips: int  # training clips per epoch
    workers: int  # DataLoader workers (decoding) of training and labelling
    repeats: int
    batch_size: int = 120  # training (the AudioSet recipe's)
    label_batch: int = 32  # labelling (label_hdf5's default)
    sample_rate: int = 32000  # of the HDF5 clips (AudioSet format)
    clip_seconds: float = 10.0
    width_mult: float = 1.0  # mn10
    frontend_batch: int = 32

    @property
    def rows(self) -> int:
        return min(self.clips, MAX_ROWS)


@dataclasses.dataclass
class Row:
    """One line of the table."""

    key: str
    stage: str
    clips_per_s: float
    bound: str
    peak_memory_bytes: Optional[int]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Data:
    train: Path  # `rows` clips: training and timed labelling
    small: Path  # the distinct clips once: the training run's evaluation set and the labelling warm-up
    teacher_logits: Path


# ----------------------------------------------------------------------------- measuring

def synchronize(device: torch.device) -> None:
    """CUDA runs asynchronously: a timer must wait for the queued kernels to finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Optional[int]]]:
    """Yields a dict whose "bytes" holds the stage's peak allocated GPU memory afterwards (None on the CPU)."""
    result: dict[str, Optional[int]] = {"bytes": None}
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()  # the previous stage's cached blocks do not count
        torch.cuda.reset_peak_memory_stats(device)
    yield result
    if device.type == "cuda":
        synchronize(device)
        result["bytes"] = int(torch.cuda.max_memory_allocated(device))


def median_seconds(call: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `call` over `repeats` runs, after `warmup` untimed ones (kernel selection, caches)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------- data

def write_hdf5(path: Path, encoded: list[bytes], rows: int, sample_rate: int, rng: np.random.Generator) -> Path:
    """An AudioSet-format HDF5 of `rows` clips cycling through `encoded`, each with 1-3 random positive classes."""
    with AudioSetHDF5Writer(path, num_classes=NUM_CLASSES, sample_rate=sample_rate, expected_rows=rows) as writer:
        for i in range(rows):
            target = np.zeros(NUM_CLASSES, dtype=np.uint8)
            target[rng.choice(NUM_CLASSES, size=int(rng.integers(1, 4)), replace=False)] = 1
            writer.add(f"Ygpucheck{i:06d}.mp3", encoded[i % len(encoded)], target)
    return path


def write_data(settings: Settings, folder: Path) -> Data:
    """The training HDF5, the small one and random teacher logits for every clip name."""
    rng = np.random.default_rng(0)
    samples = int(settings.clip_seconds * settings.sample_rate)
    # Decoding a repeated encoding costs as much as decoding a new one, so a few distinct clips suffice.
    encoded = [encode_audio(synthetic_clip(rng, samples, settings.sample_rate), settings.sample_rate)
               for _ in range(min(UNIQUE_CLIPS, settings.rows))]
    train_path = write_hdf5(folder / "train.h5", encoded, settings.rows, settings.sample_rate, rng)
    small_path = write_hdf5(folder / "small.h5", encoded, len(encoded), settings.sample_rate, rng)
    logits_path = folder / "teacher_logits.h5"
    names = [f"Ygpucheck{i:06d}.mp3" for i in range(settings.rows)]
    with TeacherLogitsWriter(logits_path, NUM_CLASSES, {"teachers": ["random (gpu_check)"]}, resume=False) as out:
        out.write(names, rng.standard_normal((len(names), NUM_CLASSES)).astype(np.float32))
    return Data(train_path, small_path, logits_path)


# ----------------------------------------------------------------------------- 1. KD training

def training_config(settings: Settings, data: Data, out_dir: Path) -> TrainConfig:
    """The AudioSet recipe (the demo's small frontend and short clips with --tiny) on the generated data."""
    recipe = DEMO_RECIPE if settings.tiny else AUDIOSET_RECIPE
    return dataclasses.replace(
        recipe, train_hdf5=[str(data.train)], eval_hdf5=[str(data.small)], teacher_logits=str(data.teacher_logits),
        sample_rate=settings.sample_rate, clip_length=settings.clip_seconds, width_mult=settings.width_mult,
        batch_size=settings.batch_size, eval_batch_size=settings.batch_size, num_workers=settings.workers,
        # epochs longer than the file draw with replacement; what a step costs does not change
        epoch_len=settings.clips, sampler_replacement=True,
        n_epochs=2, eval_every_epochs=2,  # epoch 1 warms up; one evaluation, at the end
        precision=settings.precision, cuda=settings.device.type == "cuda", out_dir=str(out_dir),
        checkpoint_every_steps=0, progress=False)


def training_stage(settings: Settings, data: Data, folder: Path) -> Row:
    """Stage 1: clips/s and data wait of the second training epoch."""
    config = training_config(settings, data, folder / "train_run")
    with peak_memory(settings.device) as peak:
        summary = train(config)
    record, timing = summary["history"][-1], summary["epoch_timing"][-1]
    wait = float(timing["data_wait_fraction"])
    bound = f"decode (data wait {wait:.0%})" if wait > DATA_WAIT_BOUND else f"model+frontend (data wait {wait:.0%})"
    name = f"mn{round(settings.width_mult * 10):02d}"
    stage = (f"{name} KD training from HDF5, batch {settings.batch_size} x {settings.clip_seconds:g} s "
             f"@ {settings.sample_rate // 1000} kHz, {workers(settings)}")
    details = {"data_wait_fraction": wait, "data_wait_s": timing["data_wait_s"], "step_time_s": timing["step_time_s"],
               "first_epoch_clips_per_s": summary["history"][0]["train_clips_per_s"], "epoch_clips": settings.clips}
    return Row("train_mn", stage, float(record["train_clips_per_s"]), bound, peak["bytes"], details)


# ----------------------------------------------------------------------------- 2. teacher labelling

def build_teacher(name: str, settings: Settings) -> AudioTagger:
    """A PaSST-S or AST-base384 tagger with random weights; --tiny: the same families, tiny and for 2-s clips."""
    torch.manual_seed(0)
    frames = int(round(settings.clip_seconds * 100))  # both frontends hop 10 ms
    if name == "passt":
        config = passt_config("passt_s_swa_p16_128_ap476")
        if settings.tiny:
            config = {**passt_config("passt_s_swa_p16_128_ap476", input_tdim=frames),
                      "embed_dim": 64, "depth": 1, "num_heads": 2}
        model = get_model(arch="passt", **config)
        model.preprocessing = dict(PASST_PREPROCESSING)
    else:
        # AST's sizes are fixed presets: the smallest (tiny224: 192 wide, 12 blocks) with
        # non-overlapping 16 x 16 patches over 2 s is cheap enough for a CPU smoke run
        config = (ast_config(fstride=16, tstride=16, input_tdim=frames, model_size="tiny224") if settings.tiny
                  else ast_config())
        model = get_model(arch="ast", **config)
        model.preprocessing = dict(AST_PREPROCESSING, target_length=config["input_tdim"])
    return AudioTagger(model)


def label(tagger: AudioTagger, hdf5: Path, output: Path, settings: Settings) -> dict[str, Any]:
    return label_hdf5(tagger, [hdf5], output, clip_length=settings.clip_seconds, batch_size=settings.label_batch,
                      num_workers=settings.workers, device=settings.device, precision=settings.precision,
                      progress=False, metrics=False)


def tagger_alone(tagger: AudioTagger, settings: Settings, data: Data) -> float:
    """Clips/s of the tagger (frontend + model on the device) on one decoded batch, as labelling calls it."""
    dataset = AudioSetDataset([data.train], sample_rate=tagger.sample_rate, clip_length=settings.clip_seconds,
                              replace_undecodable=False)
    try:
        count = min(settings.label_batch, len(dataset))
        batch = torch.stack([dataset[i]["waveform"] for i in range(count)]).to(settings.device)
    finally:
        dataset.close()
    # label_hdf5 has moved the tagger to the device and cast its weights; this is its per-batch call,
    # with the CPU thread count it labels with (fewer on cores other processes keep busy)
    with torch.no_grad(), autocast_context(settings.device, settings.precision), \
            threads_for_cpu_work(settings.device, log=False):
        seconds = median_seconds(lambda: tagger(batch), settings.device, settings.repeats)
    return count / seconds


def decode_alone(sample_rate: int, settings: Settings, data: Data) -> float:
    """Clips/s of labelling's input alone: the clips decoded (and resampled to `sample_rate`) by DataLoader
    workers as in labelling (with its CPU thread count), worker start-up included, nothing consuming the batches."""
    dataset = AudioSetDataset([data.train], sample_rate=sample_rate, clip_length=settings.clip_seconds,
                              replace_undecodable=False)
    try:
        loader = DataLoader(dataset, batch_size=settings.label_batch, num_workers=settings.workers)
        with threads_for_cpu_work(settings.device, log=False):
            start = time.perf_counter()
            count = sum(len(batch["audio_name"]) for batch in loader)
            return count / (time.perf_counter() - start)
    finally:
        dataset.close()


def labelling_bound(decode: float, model: float, workers: int, clips: int, seconds: float) -> str:
    """The slower of decoding (CPU workers) and the tagger (device) bounds labelling; both rates are shown,
    and the run's fixed cost (start-up, output file, ...) when it is over a tenth of the run."""
    slower = "decode" if decode < model else "model"
    how = "in series, no workers: " if workers == 0 else ""
    # without workers decoding and the model take turns; with them they overlap
    expected = 1 / (1 / decode + 1 / model) if workers == 0 else min(decode, model)
    fixed = seconds - clips / expected
    extra = f"; fixed cost {fixed:.2f} of {seconds:.2f} s" if fixed > 0.1 * seconds else ""
    return f"{slower} ({how}decode {decode:.1f}, model alone {model:.1f} clips/s{extra})"


def labelling_stage(name: str, settings: Settings, data: Data, folder: Path) -> Row:
    """Stage 2 for one teacher: an untimed run over the small file, the timed run, then the tagger alone
    and the decoding alone."""
    title = {"passt": "PaSST-S", "ast": "AST-base384"}[name] + (" (tiny)" if settings.tiny else "")
    with peak_memory(settings.device) as peak:
        tagger = build_teacher(name, settings)
        label(tagger, data.small, folder / f"{name}_warmup.h5", settings)  # CUDA context, kernels, worker start
        summary = label(tagger, data.train, folder / f"{name}_logits.h5", settings)
        alone = tagger_alone(tagger, settings, data)
        decode = decode_alone(tagger.sample_rate, settings, data)
    del tagger
    rate = float(summary["clips_per_s"])
    bound = labelling_bound(decode, alone, settings.workers, summary["labelled_now"], summary["seconds"])
    stage = (f"{title} labelling, batch {settings.label_batch} x {settings.clip_seconds:g} s "
             f"@ {32 if name == 'passt' else 16} kHz, {workers(settings)}")
    details = {"clips": summary["labelled_now"], "seconds": summary["seconds"], "precision": summary["precision"],
               "tagger_alone_clips_per_s": alone, "decode_alone_clips_per_s": decode}
    return Row(f"label_{name}", stage, rate, bound, peak["bytes"], details)


# ----------------------------------------------------------------------------- 3. frontends

def frontend_row(key: str, stage: str, compute: Callable[[torch.Tensor], torch.Tensor], sample_rate: int,
                 settings: Settings) -> Row:
    """Clips/s of `compute` on a batch of noise clips made on the device (inside the run's autocast and,
    on the CPU, with the thread count of training and labelling, as those jobs call the frontends)."""
    samples = int(settings.clip_seconds * sample_rate)
    generator = torch.Generator().manual_seed(0)
    with peak_memory(settings.device) as peak:
        batch = (0.1 * torch.randn(settings.frontend_batch, samples, generator=generator)).to(settings.device)
        with torch.no_grad(), autocast_context(settings.device, settings.precision), \
                threads_for_cpu_work(settings.device, log=False):
            seconds = median_seconds(lambda: compute(batch), settings.device, settings.repeats)
    title = f"{stage}, batch {settings.frontend_batch} x {settings.clip_seconds:g} s"
    return Row(key, title, settings.frontend_batch / seconds, "", peak["bytes"], {"median_s": seconds})


def frontend_stage(settings: Settings, config: TrainConfig) -> list[Row]:
    """Stage 3: the training mel (as `config` builds it), AST's fbank and the resampler."""
    mel = training_frontend(config).to(settings.device).train()  # train mode: one jittered filterbank per batch
    fbank = build_frontend(AST_PREPROCESSING).to(settings.device)
    return [frontend_row("frontend_mel", f"mel (AugmentMelSTFT, train mode) @ {config.sample_rate // 1000} kHz", mel,
                         config.sample_rate, settings),
            frontend_row("frontend_fbank", "Kaldi fbank (ASTFbank) @ 16 kHz", fbank, 16000, settings),
            frontend_row("frontend_resampler", "resampler 44.1 -> 32 kHz (sinc_resample)",
                         lambda x: sinc_resample(x, 44100, 32000), 44100, settings)]


def frontend_bounds(rows: list[Row]) -> None:
    """A frontend bounds nothing but itself; its bound says what share of a job's time per clip it is."""
    rates = {row.key: row.clips_per_s for row in rows}
    related = {"frontend_mel": ("train_mn", "KD training"), "frontend_fbank": ("label_ast", "AST labelling")}
    for row in rows:
        if not row.key.startswith("frontend_"):
            continue
        row.bound = "frontend compute"
        key, job = related.get(row.key, (None, ""))
        if key in rates:
            share = rates[key] / row.clips_per_s
            row.details["share_of_" + key] = share
            row.bound += f" ({share:.1%} of {job}'s time per clip)"


# ----------------------------------------------------------------------------- report

def workers(settings: Settings) -> str:
    return f"{settings.workers} worker{'' if settings.workers == 1 else 's'}"


def format_memory(value: Optional[int]) -> str:
    return "n/a (cpu)" if value is None else f"{value / 2 ** 30:.2f} GiB"


def header(settings: Settings) -> dict[str, Any]:
    """What the numbers depend on: the device, the CPU that decodes, torch, precision, workers."""
    device = settings.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description()
    return {"device": str(device), "device_name": name, "cpu": cpu_description(), "torch": torch.__version__,
            "precision": settings.precision, "workers": settings.workers, "tiny": settings.tiny,
            "torch_threads": torch.get_num_threads()}


def print_table(info: dict[str, Any], rows: list[Row]) -> None:
    decode = "" if info["device"] == "cpu" else f" | decoding CPU: {info['cpu']}"  # the workers' CPU matters too
    tiny = " | --tiny" if info["tiny"] else ""
    print(f"\ndevice: {info['device_name']} ({info['device']}) | torch {info['torch']} | precision "
          f"{info['precision']} | DataLoader: {info['workers']} decoding workers{decode}{tiny}")
    cells = [("stage", "clips/s", "bound", "peak memory")]
    cells += [(r.stage, f"{r.clips_per_s:.1f}", r.bound, format_memory(r.peak_memory_bytes)) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(4)]
    for n, line in enumerate(cells):
        print("| " + " | ".join(text.ljust(width) for text, width in zip(line, widths)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


# ----------------------------------------------------------------------------- main

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where the models run (default cuda)")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke run: 16 clips of 2 s at 16 kHz, mn01, tiny PaSST / AST, small frontend batches")
    parser.add_argument("--clips", type=int, default=None,
                        help="training clips per epoch (default 12000 on cuda, 480 on cpu, 16 with --tiny); the "
                             f"HDF5 holds min(clips, {MAX_ROWS}) of them, and labelling labels those")
    parser.add_argument("--precision", choices=("32", "16", "bf16"), default=None,
                        help="training and labelling precision (default bf16 on cuda, 32 on cpu)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers that decode (default: the available cores less one; 0 with --tiny)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per frontend / tagger (default 5; 3 with --tiny)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the table as JSON here too")
    args = parser.parse_args(argv)
    if args.clips is not None and args.clips < 1:
        parser.error("--clips must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available here (use --device cpu --tiny for a smoke run)")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    device = torch.device(args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    on_gpu = device.type == "cuda"
    settings = Settings(device=device, tiny=args.tiny, precision=args.precision or ("bf16" if on_gpu else "32"),
                        clips=args.clips or (16 if args.tiny else 12000 if on_gpu else 480),
                        # one core stays with the main process, which feeds the GPU
                        workers=args.workers if args.workers is not None else (0 if args.tiny else max(1, cores - 1)),
                        repeats=args.repeats or (3 if args.tiny else 5))
    if args.tiny:  # the demo's clips (2 s at 16 kHz), an mn01 student, batches a 2-core CPU does in seconds
        settings = dataclasses.replace(settings, sample_rate=16000, clip_seconds=2.0, width_mult=0.1, batch_size=8,
                                       label_batch=4, frontend_batch=4)
    # an epoch must hold one full training batch
    return dataclasses.replace(settings, batch_size=min(settings.batch_size, settings.clips))


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = settings_from(args)
    if settings.device.type == "cuda":
        torch.cuda.init()  # before the first stage resets the memory statistics
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        folder = Path(tmp)
        data = write_data(settings, folder)
        print(f"data: {settings.rows} clips ({settings.clip_seconds:g} s mp3 @ {settings.sample_rate} Hz) in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        rows = []
        stages = (lambda: training_stage(settings, data, folder),
                  lambda: labelling_stage("passt", settings, data, folder),
                  lambda: labelling_stage("ast", settings, data, folder))
        for run in stages:
            rows.append(run())
            print(f"{rows[-1].stage}: {rows[-1].clips_per_s:.1f} clips/s "
                  f"({time.perf_counter() - start:.0f} s in)", flush=True)
        rows += frontend_stage(settings, training_config(settings, data, folder / "unused"))
    frontend_bounds(rows)
    wall = time.perf_counter() - start
    info = {**header(settings), "wall_s": wall}
    print_table(info, rows)
    print(f"\nwall time {wall:.1f} s")
    bad = [row.key for row in rows if not (math.isfinite(row.clips_per_s) and row.clips_per_s > 0)]
    if args.json:
        table = [{**dataclasses.asdict(row), "peak_memory": format_memory(row.peak_memory_bytes)} for row in rows]
        args.json.write_text(json.dumps({**info, "stages": table}, indent=1))
    if bad:
        print(f"no valid clips/s for: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
