"""Plain-torch frontends vs torchaudio: clips/s of the AST Kaldi fbank and of the 44.1 -> 32 kHz resampler.

Sections (10-s clips cut from the shared metro recording, each clip different):

- `fbank 16k, batch B`: `kaldi_fbank` on the whole (B, 160000) batch at once vs
  `torchaudio.compliance.kaldi.fbank` clip by clip (what `ASTFbank` did before), AST options;
- `resample 44.1k->32k, batch B`: `sinc_resample` on the (B, 441000) batch vs
  `torchaudio.functional.resample` clip by clip (what `audio.resample` did per clip) and on the
  batch at once (torchaudio rebuilds its kernel on every call; ours is cached).

On the CPU, and on CUDA too when `torch.cuda.is_available()` (the same paths on GPU tensors,
synchronised). Every round runs each path of a section once, in rotating order; each timing
repeats the path until it has run for `--min_time` seconds. The table reports the median clips/s
over `--rounds` rounds (min/max), the ratio of medians to the section's torchaudio clip-by-clip
path, the median of the per-round ("paired") ratios, which is what to read on a CPU whose
speed drifts, and the max |difference| of the outputs to that torchaudio path.

    python benchmarks/bench_frontends.py                 # CPU (+ CUDA if present), 5 rounds
    python benchmarks/bench_frontends.py --rounds 3 --batch_sizes 1 8 --device cpu
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

from _common import METRO_WAV as METRO, rotated  # puts the checkout on sys.path

from efficient_tagging.audio import decode_audio
from efficient_tagging.frontends.kaldi_fbank import kaldi_fbank
from efficient_tagging.resample import sinc_resample
AST_OPTIONS = dict(htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                   num_mel_bins=128, dither=0.0, frame_shift=10)


def clips_at(rate: int, batch: int, source: torch.Tensor) -> torch.Tensor:
    """`batch` different 10-s clips at `rate`: the recording, flipped, shifted and scaled copies."""
    base = source if rate == 44100 else sinc_resample(source, 44100, rate)
    base = base[: 10 * rate]
    rows = []
    for i in range(batch):
        clip = base.flip(0) if i % 2 else base
        rows.append((0.4 + 0.6 * ((i * 7) % 11) / 10) * clip.roll(i * 1237))
    return torch.stack(rows).contiguous()


def timed(run: Callable[[], torch.Tensor], device: torch.device, min_time: float) -> float:
    """Seconds per call, repeating `run` until `min_time` has passed."""
    calls, started = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= min_time:
            return elapsed / calls


def sections(device: torch.device, batch_sizes: list[int], source: torch.Tensor) -> list[tuple[str, int, dict]]:
    """(title, batch, {path name: callable}); the first path of each section is the baseline."""
    import torchaudio

    out = []
    for batch in batch_sizes:
        clips16 = clips_at(16000, batch, source).to(device)
        out.append((f"fbank 16k, batch {batch}", batch, {
            "torchaudio clip by clip": lambda c=clips16: torch.stack(
                [torchaudio.compliance.kaldi.fbank(clip.unsqueeze(0), **AST_OPTIONS) for clip in c]),
            "ours (batched)": lambda c=clips16: kaldi_fbank(c, **AST_OPTIONS),
        }))
    for batch in batch_sizes:
        clips44 = clips_at(44100, batch, source).to(device)
        paths = {
            "torchaudio clip by clip": lambda c=clips44: torch.stack(
                [torchaudio.functional.resample(clip, 44100, 32000) for clip in c]),
        }
        if batch > 1:
            paths["torchaudio batched"] = lambda c=clips44: torchaudio.functional.resample(c, 44100, 32000)
        paths["ours (batched)"] = lambda c=clips44: sinc_resample(c, 44100, 32000)
        out.append((f"resample 44.1k->32k, batch {batch}", batch, paths))
    return out


def run_section(title: str, batch: int, paths: dict, device: torch.device, rounds: int,
                min_time: float) -> list[list[str]]:
    names = list(paths)
    with torch.inference_mode():
        outputs = {name: paths[name]() for name in names}  # warm-up (kernels, caches, CUDA context)
        baseline = outputs[names[0]]
        max_diff = {name: (outputs[name].double() - baseline.double()).abs().max().item() for name in names}
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for round_index in range(rounds):
            for name in rotated(names, round_index):
                seconds[name].append(timed(paths[name], device, min_time))
    base_median = statistics.median(seconds[names[0]])
    rows = []
    for name in names:
        rates = [batch / s for s in seconds[name]]
        paired = statistics.median(base / s for base, s in zip(seconds[names[0]], seconds[name]))
        rows.append([f"{device.type}: {title}", name,
                     f"{statistics.median(rates):.1f} ({min(rates):.1f}/{max(rates):.1f})",
                     f"{base_median / statistics.median(seconds[name]):.2f}x", f"{paired:.2f}x",
                     f"{max_diff[name]:.2g}"])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--min_time", type=float, default=0.5, help="seconds each timing repeats its path for")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                        help="all: the CPU, and CUDA when available")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    try:
        import torchaudio
    except ImportError:
        raise SystemExit("error: this benchmark compares with torchaudio: pip install -e '.[oracle]'")
    if not METRO.is_file():
        raise SystemExit(f"error: the test recording {METRO} is missing")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            raise SystemExit("error: --device cuda but CUDA is not available")
    samples, rate = decode_audio(METRO)
    source = torch.from_numpy(samples)
    print(f"# torch {torch.__version__}, torchaudio {torchaudio.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
          + f"; {args.rounds} rounds, min {args.min_time} s per timing")
    header = ["section", "path", "clips/s median (min/max)", "ratio of medians", "paired ratio",
              "max |Δ| vs torchaudio"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for device in devices:
        for title, batch, paths in sections(device, args.batch_sizes, source):
            for row in run_section(title, batch, paths, device, args.rounds, args.min_time):
                print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
