#!/usr/bin/env python
"""Cold start and peak memory of the tagging command (issue 12, targets 1 and 7): fresh processes.

Each path is a new Python process, timed from start to exit, with its peak resident set size
(`ru_maxrss` of that child, from `os.wait4`):

  import torch            `python -c "import torch"`: the floor every PyTorch tool pays
  inference.py --help     the tagging CLI's help (must import no plotting or tracking package)
  tag one file (default)  `inference.py --model_path mn10.pt --audio_path <10-s recording>`: import,
                          model load, decode, resample, mel, model, top-10 with the default backend
                          (auto: PyTorch's fast path for a run this short)
  tag one file --backend openvino   the same in OpenVINO (ONNX Runtime without it), its export cached
                          by a first, untimed run
  tag one file --eager    the same without the inference copy

plus a phase breakdown measured inside one child per round (import torch, import the CLI module,
`load_tagger`, first `tag_file` (builds the inference copy), second `tag_file`).
The checkpoint is an mn10 with random weights and the AudioSet label map, written by
`save_checkpoint` to a temporary folder. Rounds rotate the order of the paths; medians.

    python benchmarks/bench_cold_start.py             # ~1 min on 2 cores
    python benchmarks/bench_cold_start.py --rounds 7
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional

from _common import LABELS_CSV, METRO_WAV, REPO, rotated, run_child  # puts the checkout on sys.path

PHASES = r"""
import sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from efficient_tagging.cli import tag
t2 = time.perf_counter()
from efficient_tagging.tagging.tagger import load_tagger
tagger = load_tagger(None, sys.argv[1])
t3 = time.perf_counter()
tagger.tag_file(sys.argv[2], top_k=10)
t4 = time.perf_counter()
tagger.tag_file(sys.argv[2], top_k=10)
t5 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
"""
PHASE_NAMES = ("import torch", "import the CLI module", "load_tagger (build + weights)",
               "first tag_file (+ inference copy)", "second tag_file")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rotated rounds")
    parser.add_argument("--audio", type=Path, default=METRO_WAV, help="the file to tag")
    args = parser.parse_args(argv)
    if not args.audio.is_file():
        raise SystemExit(f"{args.audio} not found (pass --audio)")

    from efficient_tagging import get_model, save_checkpoint
    from efficient_tagging.labels import audioset_labels

    workdir = tempfile.TemporaryDirectory()
    checkpoint = Path(workdir.name) / "mn10.pt"
    labels = audioset_labels(LABELS_CSV) if LABELS_CSV.is_file() else None
    save_checkpoint(checkpoint, get_model(arch="mn", width_mult=1.0), labels=labels, dataset="audioset")

    script = str(REPO / "experiments" / "inference.py")
    tag_one = [sys.executable, script, "--model_path", str(checkpoint), "--audio_path", str(args.audio),
               "--cache_dir", str(Path(workdir.name) / "cache")]
    # an ONNX runtime backend exports the model once per machine: paid here, before the rounds
    runtime = "openvino" if importlib.util.find_spec("openvino") else "onnxruntime"
    seconds, _, _ = run_child(tag_one + ["--backend", runtime])
    print(f"first run with --backend {runtime} (exports the model once, cached): {seconds:.1f} s")
    paths = {
        "import torch": [sys.executable, "-c", "import torch"],
        "inference.py --help": [sys.executable, script, "--help"],
        "tag one file (default)": tag_one + ["--backend", "auto"],
        f"tag one file --backend {runtime}": tag_one + ["--backend", runtime],
        "tag one file --eager": tag_one + ["--backend", "torch", "--eager"],
        "phases": [sys.executable, "-c", PHASES, str(checkpoint), str(args.audio)],
    }
    wall: dict[str, list[float]] = {name: [] for name in paths}
    rss: dict[str, list[float]] = {name: [] for name in paths}
    phases: list[list[float]] = []
    names = list(paths)
    for round_index in range(args.rounds):
        for name in rotated(names, round_index):
            seconds, peak, output = run_child(paths[name])
            wall[name].append(seconds)
            rss[name].append(peak)
            if name == "phases":
                phases.append([float(value) for value in output.split()])

    import torch

    print(f"cold start, fresh processes, torch {torch.__version__}, {os.cpu_count()} CPUs; "
          f"medians of {args.rounds} rotated rounds; file {args.audio.name}")
    print(f"{'process':34s} {'wall s':>7s} {'peak RSS MiB':>13s}")
    for name in names:
        if name != "phases":
            print(f"{name:34s} {statistics.median(wall[name]):7.2f} {statistics.median(rss[name]):13.0f}")
    print("\nphases inside one process (s):")
    for index, phase in enumerate(PHASE_NAMES):
        print(f"  {phase:36s} {statistics.median(values[index] for values in phases):6.3f}")
    workdir.cleanup()


if __name__ == "__main__":
    main()
