"""A training step under CPU contention (issue 26, target 5): torch's default thread count vs the
count `efficient_tagging.hardware.contended_threads` picks when other processes keep the cores busy.

A step = mel frontend (train mode) + forward + label BCE + distillation BCE + backward + fused Adam
step of mn04 (channels-last, fp32: the trainer's defaults, as in bench_train_step.py), batch
`--batch_size` of `--seconds`-s clips at 32 kHz on the CPU. Competitors, `--competitors`
processes of each kind (`--kinds`): ``busy loops`` (pure-Python loops, one core each) and ``torch
jobs`` (a depthwise-convolution loop with torch's default 2 intra-op threads, like a second training
or test run: the issue's case); each group is started once and paused (SIGSTOP) while it is not
timed. Paths, timed in interleaved rounds (the order rotates every round; medians reported):

* ``quiet, default threads``: no competitor running, torch's default count (the allowed cores);
* ``quiet, 1 thread``: what a needless reduction would cost;
* ``<kind>, default threads``: one group of competitors running, the default count;
* ``<kind>, chosen threads``: the same competitors, the count `contended_threads` chose while they
  ran (what `train()` now uses).

OpenMP's wait policy is read when torch loads, so compare it by running the script again with
``OMP_WAIT_POLICY=PASSIVE`` in the environment (the header says which policy was in force).

The quiet paths are only quiet when nothing else runs on the machine: the script measures what
other processes keep busy before every round (with the competitors paused) and prints it.

    python benchmarks/bench_contention.py                 # ~2 min on 2 cores
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_contention.py
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Iterator, Optional

import torch

from _common import rotated  # puts the checkout on sys.path
from bench_train_step import make_step

from efficient_tagging.frontends import build_frontend
from efficient_tagging.hardware import available_cpus, busy_cores_of_others, contended_threads, cpu_description
from efficient_tagging.models import get_model

COMPETITORS = {
    # a pure-Python busy loop: one core's worth each, no threads
    "busy loops": "while True:\n    pass\n",
    # another torch job with torch's default (2) intra-op threads: OpenMP regions of its own, like a
    # second training or test run on the machine (the case)
    "torch jobs": ("import torch\n"
                   "x = torch.randn(32, 64, 64, 64)\n"
                   "w = torch.randn(64, 1, 3, 3)\n"
                   "while True:\n"
                   "    torch.nn.functional.conv2d(x, w, padding=1, groups=64).relu_().sum()\n"),
}


@contextlib.contextmanager
def competitors(count: int, code: str) -> Iterator[list[subprocess.Popen]]:
    """`count` processes running `code`, paused (SIGSTOP) until `resume`d; killed on the way out."""
    children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]
    try:
        time.sleep(3.0)  # past their imports
        pause(children)
        yield children
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait()


def pause(children: list[subprocess.Popen]) -> None:
    for child in children:
        os.kill(child.pid, signal.SIGSTOP)


def resume(children: list[subprocess.Popen]) -> None:
    for child in children:
        os.kill(child.pid, signal.SIGCONT)
    time.sleep(0.2)  # let them reach their cores


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=64, help="clips per step")
    parser.add_argument("--seconds", type=float, default=0.7, help="clip length in seconds (32 kHz)")
    parser.add_argument("--width_mult", type=float, default=0.4, help="MobileNet width (0.4: mn04)")
    parser.add_argument("--competitors", type=int, default=2, help="competing processes of each kind")
    parser.add_argument("--kinds", nargs="+", choices=sorted(COMPETITORS), default=list(COMPETITORS),
                        help="kinds of competitor, timed in turn")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args(argv)
    if "EFFICIENT_TAGGING_THREADS" in os.environ or "OMP_NUM_THREADS" in os.environ:
        raise SystemExit("unset EFFICIENT_TAGGING_THREADS / OMP_NUM_THREADS: the benchmark compares thread counts")
    default_threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = get_model(arch="mn", width_mult=args.width_mult)
    frontend = build_frontend({}).train()
    generator = torch.Generator().manual_seed(1)
    samples = int(round(args.seconds * 32000))
    batch = {"waveform": 0.1 * torch.randn(args.batch_size, samples, generator=generator),
             "target": (torch.rand(args.batch_size, 527, generator=generator) < 0.02).float(),
             "teacher": 2 * torch.randn(args.batch_size, 527, generator=generator) - 4}
    step = make_step(model, frontend, batch, channels_last=True, fused=True, bf16=False)
    load_start = os.getloadavg()
    quiet_threads, quiet_reason = contended_threads(current=default_threads)

    with contextlib.ExitStack() as stack:
        groups = {kind: stack.enter_context(competitors(args.competitors, COMPETITORS[kind])) for kind in args.kinds}
        paths: dict[str, tuple[list[subprocess.Popen], int]] = {"quiet, default threads": ([], default_threads),
                                                                "quiet, 1 thread": ([], 1)}
        chosen: dict[str, tuple[int, str]] = {}
        for kind, children in groups.items():
            resume(children)
            chosen[kind] = contended_threads(current=default_threads)
            pause(children)
            paths[f"{kind}, default threads"] = (children, default_threads)
            paths[f"{kind}, chosen threads"] = (children, chosen[kind][0])
        for threads in sorted({threads for _, threads in paths.values()}):
            torch.set_num_threads(threads)
            step()  # warm-up (oneDNN primitives, allocator), quiet
        times: dict[str, list[float]] = {name: [] for name in paths}
        background: list[float] = []  # cores other processes of the machine kept busy before each round
        for round_index in range(args.rounds):
            background.append(busy_cores_of_others()[0])
            for name in rotated(paths, round_index):
                children, threads = paths[name]
                torch.set_num_threads(threads)
                resume(children)
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
                pause(children)
            print(f"round {round_index + 1}/{args.rounds} (background ~{background[-1]:.1f} cores busy): " +
                  ", ".join(f"{name} {times[name][-1]:.2f} s" for name in paths), flush=True)
    torch.set_num_threads(default_threads)

    arch = f"mn{int(round(args.width_mult * 10)):02d}"
    print(f"\n{arch} KD training step, batch {args.batch_size} x {args.seconds:g} s at 32 kHz, fp32, channels-last, "
          f"fused Adam; torch {torch.__version__}; {cpu_description()}; allowed cores {available_cpus()}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; load average at start "
          f"{load_start[0]:.2f}, other processes' load before the rounds ~{statistics.median(background):.1f} cores "
          f"(median); competitors: {args.competitors} processes of each kind; medians of {args.rounds} "
          f"interleaved rounds")
    print(f"chosen when quiet: {quiet_threads} ({quiet_reason})")
    for kind, (threads, reason) in chosen.items():
        print(f"chosen beside {args.competitors} {kind}: {threads} ({reason})")
    quiet = statistics.median(times["quiet, default threads"])
    print(f"\n| {'path':28s} | threads | s/step (median) | min-max | vs quiet |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (_, threads) in paths.items():
        median = statistics.median(times[name])
        print(f"| {name:28s} | {threads} | {median:.2f} | {min(times[name]):.2f}-{max(times[name]):.2f} | "
              f"{median / quiet:.1f}x |")
    print()
    for kind in chosen:
        contended = statistics.median(times[f"{kind}, default threads"])
        fixed = statistics.median(times[f"{kind}, chosen threads"])
        print(f"beside {args.competitors} {kind}: the chosen count is {contended / fixed:.1f}x faster than the default")


if __name__ == "__main__":
    main()
