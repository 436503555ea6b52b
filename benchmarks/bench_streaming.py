"""Streaming tagging on this CPU: latency and real-time factor of `StreamingTagger` for mn04 / mn10.

A recording (the shared 10-s metro recording, tiled to `--seconds`) is fed in chunks of
`--chunk` seconds as a live source would deliver them (no sleeping: the compute is timed, and the
latency is what the compute adds to the moment the audio that completes a window has arrived):

- latency of a window = the compute time of the `feed` call that completed it (the audio is
  there at that moment; a real stream adds the chunk length and the 16 ms frontend look-ahead);
- real-time factor (RTF) = compute time of all feeds / audio duration (< 1: keeps up; 0.05 = 20x
  faster than real time);
- every window's tags are also checked against the offline pass (max |delta prob|).

Models have random weights (speed does not depend on them); models are interleaved, rounds
repeated, medians reported (these CPUs change speed by up to 3x for tens of seconds).

    python benchmarks/bench_streaming.py                  # mn04 + mn10, window 10 s, hop 1 s, 0.1-s chunks
    python benchmarks/bench_streaming.py --window 2 --hop 0.5 --threads 1
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np
import torch

from _common import METRO_WAV as METRO  # puts the checkout on sys.path

from efficient_tagging.audio import load_audio
from efficient_tagging.models.factory import get_model
from efficient_tagging.tagging.streaming import StreamingTagger
from efficient_tagging.tagging.tagger import AudioTagger
from efficient_tagging.tagging.windows import tag_over_time


def one_run(tagger: AudioTagger, audio: torch.Tensor, window: float, hop: float, chunk: int) -> dict:
    streamer = StreamingTagger(tagger, window, hop)
    latencies, total, windows = [], 0.0, []
    for begin in range(0, audio.numel(), chunk):
        started = time.perf_counter()
        out = streamer.feed(audio[begin:begin + chunk])
        elapsed = time.perf_counter() - started
        total += elapsed
        if out:
            latencies.append(elapsed)
            windows += out
    started = time.perf_counter()
    last, _ = streamer.close()
    total += time.perf_counter() - started
    windows += last
    return {"rtf": total / (audio.numel() / tagger.sample_rate), "latency_median": statistics.median(latencies),
            "latency_max": max(latencies), "windows": windows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["0.4", "1.0"], help="mn width multipliers")
    parser.add_argument("--seconds", type=float, default=60.0, help="stream length")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--hop", type=float, default=1.0)
    parser.add_argument("--chunk", type=float, default=0.1, help="seconds per fed chunk")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    metro = load_audio(METRO, 32000)
    audio = metro.repeat(int(np.ceil(args.seconds / 10.0)))[: int(args.seconds * 32000)]
    taggers = {}
    for width in args.models:
        torch.manual_seed(0)
        taggers[f"mn{round(float(width) * 10):02d}"] = AudioTagger(get_model(arch="mn", width_mult=float(width))).eval()
    chunk = int(round(args.chunk * 32000))
    results: dict[str, list[dict]] = {name: [] for name in taggers}
    for _ in range(args.rounds):
        for name, tagger in taggers.items():  # interleaved
            results[name].append(one_run(tagger, audio, args.window, args.hop, chunk))
    print(f"\nstreaming, {args.seconds:g} s stream in {args.chunk:g}-s chunks, window {args.window:g} s, hop "
          f"{args.hop:g} s; {args.threads} threads, {platform.machine()}, torch {torch.__version__}; medians of "
          f"{args.rounds} interleaved rounds\n")
    print("| model | windows | latency median (ms) | latency max (ms) | real-time factor | x real time | "
          "max abs dprob vs offline |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        offline = tag_over_time(taggers[name], audio, args.window, args.hop)
        streamed = np.stack([w.probabilities for w in runs[0]["windows"]])
        delta = float(np.abs(streamed - offline.probabilities).max())
        rtf = statistics.median(r["rtf"] for r in runs)
        print(f"| {name} | {len(runs[0]['windows'])} | {1000 * statistics.median(r['latency_median'] for r in runs):.1f} "
              f"| {1000 * statistics.median(r['latency_max'] for r in runs):.1f} | {rtf:.3f} | {1 / rtf:.1f} | "
              f"{delta:.1e} |")
    print("\nlatency = compute added after the audio completing a window has arrived (+ chunk + 16 ms look-ahead "
          "for a live source)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
