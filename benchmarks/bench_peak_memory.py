#!/usr/bin/env python
"""Peak memory of the package's main jobs (issue 12, target 7): fresh processes, peak RSS.

Each job is a new Python process running a README command; its peak resident set size is
`ru_maxrss` of that child (from `os.wait4`), next to its wall time:

  tag one 10-s file      `inference.py --model_path mn10.pt --audio_path <recording>` (mn10, random
                         weights, AudioSet labels; the default fast path)
  label 10-s clips       `ex_teacher_labels.py` over `--clips` generated 10-s mp3 clips at 32 kHz in an
                         AudioSet-format HDF5 with a PaSST-S teacher (passt_s_swa_p16_128_ap476
                         architecture, random weights), batch 32, 2 decoding workers (their memory is
                         not in the parent's RSS: `ru_maxrss` of the waited-for child is its own), at the
                         default precision (`auto`: bf16 where the CPU has native bf16) and `--precision 32`
  demo (--demo)          README command 1's job, `ex_audioset.py --train --width_mult 1.0`, in a fresh
                         cache folder (builds the demo data, trains the teacher and the student; ~3 min)

The jobs run once each, in this order (peak memory does not drift like speed does; pass
`--rounds` to repeat the short ones).

    python benchmarks/bench_peak_memory.py                 # tagging + labelling, ~3 min on 2 cores
    python benchmarks/bench_peak_memory.py --demo          # + the demo, ~6 min
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional

from _common import LABELS_CSV, METRO_WAV, REPO, run_child, write_synthetic_hdf5  # puts the checkout on sys.path


def save_passt_s(path: Path) -> Path:
    """A PaSST-S checkpoint with random weights that the labelling CLI loads like a trained one."""
    from efficient_tagging import get_model, save_checkpoint
    from efficient_tagging.labels import audioset_labels
    from efficient_tagging.models.registry import PASST_PREPROCESSING, passt_config

    config = passt_config("passt_s_swa_p16_128_ap476")
    labels = audioset_labels(LABELS_CSV) if LABELS_CSV.is_file() else None
    return save_checkpoint(path, get_model(arch="passt", **config), arch="passt", config=config,
                           preprocessing=PASST_PREPROCESSING, labels=labels, dataset="audioset")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="10-s clips the labelling jobs label")
    parser.add_argument("--rounds", type=int, default=1, help="runs of the tagging and labelling jobs (median)")
    parser.add_argument("--demo", action="store_true", help="also run the demo (README command 1), ~3 min")
    parser.add_argument("--audio", type=Path, default=METRO_WAV, help="the file to tag")
    args = parser.parse_args(argv)
    if not args.audio.is_file():
        raise SystemExit(f"{args.audio} not found (pass --audio)")

    import torch

    from efficient_tagging import get_model, save_checkpoint
    from efficient_tagging.hardware import resolve_precision
    from efficient_tagging.labels import audioset_labels

    workdir = tempfile.TemporaryDirectory()
    folder = Path(workdir.name)
    student = folder / "mn10.pt"
    labels = audioset_labels(LABELS_CSV) if LABELS_CSV.is_file() else None
    save_checkpoint(student, get_model(arch="mn", width_mult=1.0), labels=labels, dataset="audioset")
    teacher = save_passt_s(folder / "passt_s.pt")
    data = write_synthetic_hdf5(folder / "clips.hdf", args.clips, seed=0)  # content does not change memory

    def label_command(precision: str, output: str) -> list[str]:
        return [sys.executable, str(REPO / "experiments" / "ex_teacher_labels.py"), "--hdf5", str(data),
                "--teachers", str(teacher), "--output", str(folder / output), "--batch_size", "32",
                "--num_workers", "2", "--no_progress", *(["--precision", precision] if precision != "auto" else [])]

    default_precision = resolve_precision("auto")
    jobs = {
        "tag one 10-s file (mn10)": [sys.executable, str(REPO / "experiments" / "inference.py"), "--model_path",
                                     str(student), "--audio_path", str(args.audio)],
        f"label {args.clips} clips, PaSST-S, default ({default_precision})": label_command("auto", "auto.h5"),
        f"label {args.clips} clips, PaSST-S, --precision 32": label_command("32", "fp32.h5"),
    }
    wall: dict[str, list[float]] = {name: [] for name in jobs}
    rss: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.rounds):
        for name, command in jobs.items():
            for output in folder.glob("*.h5"):
                output.unlink()  # a fresh labelling job each time, not a resume
            seconds, peak, _ = run_child(command)
            wall[name].append(seconds)
            rss[name].append(peak)
    if args.demo:
        name = "demo (ex_audioset.py --train --width_mult 1.0)"
        environment = {**os.environ, "EFFICIENT_TAGGING_CACHE": str(folder / "cache")}
        seconds, peak, _ = run_child([sys.executable, str(REPO / "experiments" / "ex_audioset.py"), "--train",
                                      "--width_mult", "1.0", "--out_dir", str(folder / "demo_runs")],
                                     env=environment)
        wall[name], rss[name] = [seconds], [peak]

    print(f"peak RSS of fresh processes, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} threads; median of {args.rounds} run(s)")
    print("| job | wall s | peak RSS MiB |")
    print("| --- | --- | --- |")
    for name in wall:
        print(f"| {name} | {statistics.median(wall[name]):.1f} | {statistics.median(rss[name]):.0f} |")
    workdir.cleanup()


if __name__ == "__main__":
    main()
