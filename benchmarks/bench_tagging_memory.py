"""Peak memory of tagging a long file: bounded windows (streamed decode) vs the old whole-file pass.

Generates audio files of the given lengths (noise + gliding tones + bursts, 44.1 kHz so that the
resampler is exercised, encoded block by block to mp3 or flac in a temporary folder), then tags each
one in a fresh subprocess with mn10 (random weights: `get_model(arch="mn", width_mult=1.0)` in an
`AudioTagger`) and reads the child's peak resident set size (VmHWM from /proc/self/status, or
ru_maxrss). Paths:

  chunked     `AudioTagger.tag_file`: decodes and resamples block by block, spectrogram and model in
              windows of at most `--chunk_seconds` (the default path; memory flat in file length)
  whole_file  the pre-issue-9 path: `load_audio` (whole file) -> frontend -> model in one pass
              (run only for the lengths in `--whole_file_minutes`: 30 min needs ~5 GB)
  baseline    the child imports torch, builds the tagger and tags 1 s of audio: the fixed cost

The table prints peak RSS, the increment over the baseline, wall time, and the ratio of each
chunked run to the shortest chunked run (issue 9's target: 30 min within 1.5x of 1 min).

`--accuracy` adds how close the chunked result is to the whole-file pass (needs ../shared): the
10-s recording metro_station-paris.wav repeated to `--accuracy_minutes`, reference-fixture weights
(mn10, mn04: random weights whose BatchNorm statistics were taken on real audio), max |delta prob|
over the 527 classes; for scale, the change of the whole-file result itself when the input is
circularly shifted by 3 s.

    python benchmarks/bench_tagging_memory.py                    # 1 and 30 min, mp3 (~4 min on 2 cores)
    python benchmarks/bench_tagging_memory.py --minutes 1 5 30 --whole_file_minutes 1 5 --accuracy
    python benchmarks/bench_tagging_memory.py --quick            # 0.5 and 3 min, flac
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO  # puts the checkout on sys.path

import numpy as np

FILE_RATE = 44100


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM; ru_maxrss where /proc is missing), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_test_file(path: Path, minutes: float, codec: str, seed: int = 0) -> None:
    """Noise + gliding tones + bursts, encoded one second at a time (the parent never holds the file)."""
    from efficient_tagging.audio import audio_writer

    rng = np.random.default_rng(seed)
    with audio_writer(path, FILE_RATE, codec) as write:
        for second in range(int(round(minutes * 60))):
            t = second + np.arange(FILE_RATE) / FILE_RATE
            wave = 0.05 * rng.standard_normal(FILE_RATE)
            wave += 0.2 * np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * t / 37)) * t)
            if second % 7 == 0:  # a 300 ms burst every 7 s
                wave[: FILE_RATE * 3 // 10] += 0.3 * rng.standard_normal(FILE_RATE * 3 // 10)
            write(wave)


def child(args: argparse.Namespace) -> None:
    """Tag one file in this (fresh) process and print one JSON line with the peak RSS."""
    import torch

    from efficient_tagging import AudioTagger, get_model
    from efficient_tagging.audio import load_audio

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tagger = AudioTagger(get_model(arch="mn", width_mult=args.width_mult), chunk_seconds=args.chunk_seconds)
    start = time.perf_counter()
    with torch.no_grad():
        if args.mode == "baseline":
            probabilities = tagger.probabilities(torch.zeros(tagger.sample_rate))
        elif args.mode == "whole_file":
            probabilities = torch.sigmoid(tagger(load_audio(args.path, tagger.sample_rate)[None]))
        else:
            probabilities = tagger.file_probabilities(args.path)
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "seconds": seconds,
                      "top": int(probabilities[0].argmax()), "max_prob": float(probabilities.max())}))


def run_child(mode: str, path: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--mode", mode, "--path", str(path),
               "--width_mult", str(args.width_mult), "--chunk_seconds", str(args.chunk_seconds),
               "--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"child {mode} {path.name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def accuracy(args: argparse.Namespace) -> list[str]:
    """Rows: max |delta prob| chunked vs whole-file on the repeated test recording."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import FIXTURES, METRO_WAV, float_state_dict, load_fixture

    from efficient_tagging import AudioTagger, get_model
    from efficient_tagging.audio import load_audio

    torch.set_num_threads(args.threads)
    if not METRO_WAV.is_file():
        return ["(accuracy: ../shared/data/metro_station-paris.wav not found)"]
    rows = []
    recording = load_audio(METRO_WAV, 32000)
    waveform = recording.repeat(int(round(args.accuracy_minutes * 6)))
    for case in ("mn10", "mn04"):
        fixture = load_fixture(FIXTURES / f"{case}.pt")
        config = {k: v for k, v in fixture["config"].items() if k != "pretrained_name"}
        model = get_model(arch="mn", **config)
        model.load_state_dict(float_state_dict(fixture["state_dict"]))
        for chunk in args.accuracy_chunks:
            tagger = AudioTagger(model.eval(), chunk_seconds=chunk)
            with torch.no_grad():
                whole = torch.sigmoid(tagger(waveform[None]))
                shifted = torch.sigmoid(tagger(torch.roll(waveform, 3 * 32000)[None]))
            chunked = tagger.probabilities(waveform[None])
            delta = (chunked - whole).abs()
            rows.append(f"| {case} | {args.accuracy_minutes:g} min | {chunk:g} s | {delta.max():.2e} "
                        f"| {delta.mean():.2e} | {(shifted - whole).abs().max():.2e} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 30.0],
                        help="lengths of the generated files in minutes (default: 1 30)")
    parser.add_argument("--whole_file_minutes", type=float, nargs="*", default=[1.0],
                        help="lengths also tagged with the old whole-file pass (default: 1; 30 needs ~5 GB)")
    parser.add_argument("--codec", choices=("mp3", "flac"), default="mp3", help="file codec (default: mp3)")
    parser.add_argument("--width_mult", type=float, default=1.0, help="mn width (default: 1.0 = mn10)")
    parser.add_argument("--chunk_seconds", type=float, default=60.0, help="tagger chunk length (default: 60)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per child (default: 2)")
    parser.add_argument("--accuracy", action="store_true", help="also measure chunked vs whole-file max |delta prob|")
    parser.add_argument("--accuracy_minutes", type=float, default=5.0, help="repeated recording length (default: 5)")
    parser.add_argument("--accuracy_chunks", type=float, nargs="+", default=[60.0, 20.0],
                        help="chunk lengths for --accuracy (default: 60 20)")
    parser.add_argument("--quick", action="store_true", help="0.5 and 3 minutes, flac, no accuracy section")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="chunked", help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.minutes, args.whole_file_minutes, args.codec, args.accuracy = [0.5, 3.0], [0.5], "flac", False

    import torch
    print(f"# tagging peak RSS: mn{args.width_mult * 10:02.0f} random weights, {args.codec} at {FILE_RATE} Hz, "
          f"chunk {args.chunk_seconds:g} s, torch {torch.__version__}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_tagging_memory_") as folder:
        files = {}
        for minutes in sorted(set(args.minutes) | set(args.whole_file_minutes)):
            path = Path(folder) / f"test_{minutes:g}min.{args.codec}"
            start = time.perf_counter()
            write_test_file(path, minutes, args.codec)
            files[minutes] = path
            print(f"# generated {path.name} ({path.stat().st_size / 1e6:.1f} MB) in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
        baseline = run_child("baseline", files[min(files)], args)
        rows.append(("-", "baseline (tag 1 s)", baseline))
        for minutes in sorted(files):
            if minutes in args.minutes:
                rows.append((minutes, "chunked", run_child("chunked", files[minutes], args)))
                print(f"# {minutes:g} min chunked done", flush=True)
            if minutes in args.whole_file_minutes:
                rows.append((minutes, "whole_file", run_child("whole_file", files[minutes], args)))
                print(f"# {minutes:g} min whole_file done", flush=True)
    chunked = [(m, r) for m, mode, r in rows if mode == "chunked"]
    reference = chunked[0][1]["peak_rss_mb"] if chunked else None
    print()
    print("| file | path | peak RSS (MB) | over baseline (MB) | wall (s) | RSS / shortest chunked |")
    print("| --- | --- | --- | --- | --- | --- |")
    for minutes, mode, r in rows:
        ratio = f"{r['peak_rss_mb'] / reference:.2f}x" if reference and mode != "baseline" else "-"
        label = f"{minutes:g} min" if minutes != "-" else "-"
        print(f"| {label} | {mode} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - baseline['peak_rss_mb']:.0f} | "
              f"{r['seconds']:.1f} | {ratio} |")
    if len(chunked) > 1:
        ratio = chunked[-1][1]["peak_rss_mb"] / chunked[0][1]["peak_rss_mb"]
        verdict = "within" if ratio <= 1.5 else "NOT within"
        print(f"\n{chunked[-1][0]:g} min / {chunked[0][0]:g} min chunked peak RSS: {ratio:.2f}x "
              f"({verdict} the 1.5x target)")
    if args.accuracy:
        print("\n| weights | input | chunk | max abs dprob | mean abs dprob | whole-file vs 3-s shifted input |")
        print("| --- | --- | --- | --- | --- | --- |")
        for row in accuracy(args):
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
