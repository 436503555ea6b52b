"""One KD training step of mn10 (issue 12, target 2): the trainer's defaults vs the plain fp32 loop.

A step = mel frontend (train mode) + forward + label BCE + distillation BCE against sigma(teacher)
+ backward + Adam step, batch `--batch_size` of 10-s clips at 32 kHz, on the CPU. Paths, timed in
interleaved rounds (every round runs every path once; medians reported):

* ``reference loop``: EfficientAT's mn10 (``--reference_checkout PATH``) in the reference's loop
  (contiguous layout, for-loop Adam, fp32);
* ``plain fp32``: our mn10 the same way (``--no_channels_last --no_fused_optimizer``);
* ``default``: what ``ex_audioset.py --train`` runs now: channels-last model, fused Adam, fp32;
* ``default + bf16 autocast`` (opt-in ``--precision bf16``): only where the CPU has native bf16
  (AVX512-BF16 / AMX: detected from /proc/cpuinfo), else skipped.

Every path starts from the same weights; the loss of the first step is compared with the plain
path's (fp32 paths must agree within float rounding).

    python benchmarks/bench_train_step.py                  # ~3 min on 2 cores
    python benchmarks/bench_train_step.py --reference_checkout /path/to/EfficientAT
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from _common import reference_model  # puts the checkout on sys.path

from efficient_tagging.frontends import build_frontend
from efficient_tagging.hardware import native_bf16
from efficient_tagging.models import get_model


def make_step(model: torch.nn.Module, frontend: torch.nn.Module, batch: dict, *, channels_last: bool,
              fused: bool, bf16: bool, kd_lambda: float = 0.1) -> Callable[[], float]:
    model = copy.deepcopy(model).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, **({"fused": True} if fused else {}))

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            spectrogram = frontend(batch["waveform"]).unsqueeze(1)
            logits = model(spectrogram)[0]
        logits = logits.float()
        label_loss = F.binary_cross_entropy_with_logits(logits, batch["target"])
        kd_loss = F.binary_cross_entropy_with_logits(logits, torch.sigmoid(batch["teacher"]))
        loss = kd_lambda * label_loss + (1 - kd_lambda) * kd_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss)

    return step


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference_checkout", type=Path, default=None, help="an EfficientAT checkout to time")
    parser.add_argument("--batch_size", type=int, default=16, help="clips per step")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = get_model(arch="mn", width_mult=1.0)
    frontend = build_frontend({}).train()
    generator = torch.Generator().manual_seed(1)
    batch = {"waveform": 0.1 * torch.randn(args.batch_size, 320000, generator=generator),
             "target": (torch.rand(args.batch_size, 527, generator=generator) < 0.02).float(),
             "teacher": 2 * torch.randn(args.batch_size, 527, generator=generator) - 4}

    paths: dict[str, Callable[[], float]] = {}
    if args.reference_checkout is not None:
        paths["reference loop (fp32)"] = make_step(reference_model(args.reference_checkout, model.state_dict(), "mn"),
                                                   frontend, batch, channels_last=False, fused=False, bf16=False)
    paths["plain fp32"] = make_step(model, frontend, batch, channels_last=False, fused=False, bf16=False)
    paths["default (fp32)"] = make_step(model, frontend, batch, channels_last=True, fused=True, bf16=False)
    bf16 = native_bf16()
    if bf16:
        paths["default + bf16 autocast"] = make_step(model, frontend, batch, channels_last=True, fused=True, bf16=True)

    first_loss = {}
    for name, step in paths.items():  # warm-up step; the same frontend draws -> seed before each
        torch.manual_seed(123)
        first_loss[name] = step()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, step in paths.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    base_name = "reference loop (fp32)" if "reference loop (fp32)" in paths else "plain fp32"
    base = statistics.median(times[base_name])
    print(f"mn10 KD step, batch {args.batch_size} x 10 s, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.machine()}, native bf16: {'yes' if bf16 else 'no'}; medians of {args.rounds} interleaved rounds")
    print(f"{'path':26s} {'s/step':>8s} {'clips/s':>8s} {'vs ' + base_name.split(' (')[0]:>16s}  first-step loss")
    for name in paths:
        median = statistics.median(times[name])
        print(f"{name:26s} {median:8.3f} {args.batch_size / median:8.1f} {base / median:15.2f}x  "
              f"{first_loss[name]:.6f}")


if __name__ == "__main__":
    main()
