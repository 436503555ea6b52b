"""`windowed_inference.py`: tags over time (CSV, PNG heatmap, events), frame-level tags, live streams.

    python experiments/windowed_inference.py --audio_path long.wav --output tags.csv --plot tags.png --events events.csv
    python experiments/windowed_inference.py --audio_path x.wav --frame_level --output frames.csv
    arecord -f S16_LE -r 32000 -c 1 | python experiments/windowed_inference.py --stream - --hop 1

Windows follow EfficientAT's windowed_inference.py (``--window_size 10 --hop_length 2.5`` seconds;
``--window`` / ``--hop`` are the same flags); see `efficient_tagging.tagging.windows` for the grid,
the event rule and the picture, and `efficient_tagging.tagging.streaming` for the live path.
Without an output flag, the top-5 tags of every window are printed, as the reference does.

Exit status: 0 done; 1 the model or the audio could not be read, or an output not written;
2 usage error; 130 interrupted (outputs are written atomically: none is left half-written).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .help import HelpFormatter
from .model_flags import (add_model_arguments, device_name, load_tagger_for, odd_int, positive_float, positive_int,
                          probability, select_tagging_device)
from .output_paths import check_output_file

EPILOG = """\
outputs (any combination; written atomically):
  --output tags.csv     start,end (s) and one probability column per class, one row per window
  --output tags.json    the same as JSON (labels, starts, ends, probabilities)
  --plot tags.png       heatmap of the --plot_top_k classes over time, events drawn as green bars
  --events events.csv   onset,offset,label,index,peak_probability, one row per detected event
events: a class is active in a window above --threshold; decisions are median-filtered over
  --median_window windows; a window stands for centre +- hop/2 (so events have hop resolution).
--stream PATH|-: raw PCM (--pcm_format, --pcm_rate, --pcm_channels) from a file or stdin, tagged
  live: one line per window as it completes (every hop), events printed when they end; with
  --realtime a file is read at the audio's own speed. Gives the same windows as the offline pass.
exit status: 0 done, 1 failed (model/audio/output), 2 usage error, 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Tag audio over time: class probabilities per window (CSV/JSON), a heatmap (PNG) and sound "
                    "events (onset/offset CSV); frame-level tags of CNN students; live tagging of a PCM stream.",
        formatter_class=HelpFormatter, epilog=EPILOG)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio_path", type=Path, help="audio file in any format and rate PyAV decodes")
    source.add_argument("--stream", metavar="PATH|-", help="raw PCM from a file or '-' (stdin), tagged live")
    add_model_arguments(parser, onnx=True, model_alias=True)
    parser.add_argument("--ensemble", nargs="+", default=None, metavar="NAME",
                        help="mean logits of several catalogue models of one sample rate")
    parser.add_argument("--backend", choices=("torch", "onnx"), default=None,
                        help="torch, or onnx for a --model_path exported with experiments/export_onnx.py "
                             "(default: onnx when --model_path ends in .onnx)")
    parser.add_argument("--eager", action="store_true",
                        help="run the PyTorch model as built: no BatchNorm folding, channels-last or inference_mode "
                             "(the default fast path gives the same logits within float rounding, ~1.7x faster)")
    parser.add_argument("--device", type=device_name, default=None, help="cpu, cuda, cuda:1, mps (default: cpu)")
    parser.add_argument("--cuda", action="store_true", help="the same as --device cuda (EfficientAT's flag)")
    grid = parser.add_argument_group("windows")
    grid.add_argument("--window_size", "--window", dest="window", type=positive_float, default=10.0,
                      help="window length in seconds")
    grid.add_argument("--hop_length", "--hop", dest="hop", type=positive_float, default=2.5,
                      help="seconds between window starts (rounded to whole 10 ms frames)")
    grid.add_argument("--frame_level", action="store_true",
                      help="instead of windows: probabilities per output frame of a CNN student (0.32 s for the "
                           "default frontend and strides; exact for fully-convolutional heads)")
    grid.add_argument("--batch_size", type=positive_int, default=8, help="windows per model call (offline)")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--output", type=Path, default=None, metavar="FILE.csv|FILE.json",
                         help="per-window probabilities of every class")
    outputs.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="heatmap of the top classes")
    outputs.add_argument("--plot_top_k", type=positive_int, default=10, help="classes (rows) in the plot")
    outputs.add_argument("--events", type=Path, default=None, metavar="FILE.csv", help="detected events")
    outputs.add_argument("--threshold", type=probability, default=0.5, help="event threshold on probabilities")
    outputs.add_argument("--median_window", type=odd_int, default=1,
                         help="median filter over this many windows (odd; 1 = none)")
    outputs.add_argument("--top_k", type=positive_int, default=5, help="tags printed per window")
    outputs.add_argument("--quiet", action="store_true", help="print no per-window tags")
    outputs.add_argument("--no_progress", action="store_true", help="no progress bar (stderr)")
    stream = parser.add_argument_group("stream (--stream)")
    stream.add_argument("--pcm_format", choices=("s16le", "s32le", "f32le"), default="s16le", help="sample format")
    stream.add_argument("--pcm_rate", type=positive_int, default=32000, help="sample rate of the PCM (resampled)")
    stream.add_argument("--pcm_channels", type=positive_int, default=1, help="interleaved channels (averaged)")
    stream.add_argument("--chunk_seconds", type=positive_float, default=0.1, help="seconds read per chunk")
    stream.add_argument("--realtime", action="store_true", help="read a file at the audio's own speed")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_output_file(parser, "--output", args.output, (".csv", ".json"))
    check_output_file(parser, "--plot", args.plot, (".png",))
    check_output_file(parser, "--events", args.events, (".csv",))
    if args.audio_path is not None and args.audio_path.is_dir():
        parser.error(f"--audio_path {args.audio_path} is a folder: windowed_inference.py tags one recording over "
                     f"time. For the top tags of every file in a folder use inference.py {args.audio_path}; for "
                     f"each file over time, run this command once per file")
    if args.frame_level and args.stream:
        parser.error("--frame_level tags a file; it cannot be combined with --stream")
    if args.cuda and args.device not in (None, "cuda"):
        parser.error(f"--cuda and --device {args.device} contradict each other; give one")
    if args.backend is None:
        args.backend = "onnx" if args.model_path and str(args.model_path).lower().endswith(".onnx") else "torch"
    if args.backend == "onnx" and not args.model_path:
        parser.error("--backend onnx needs --model_path pointing to an exported .onnx model")


def print_window(window: Any, top_k: int) -> None:
    tags = ", ".join(f"{label} {p:.2f}" for label, p in window.top_k(top_k))
    print(f"[{window.start:8.2f} - {window.end:8.2f} s] {tags}", flush=True)


def print_event(event: Any) -> None:
    print(f"event: {event.label}  {event.onset:.2f} - {event.offset:.2f} s  (peak {event.peak_probability:.2f})",
          flush=True)


def write_outputs(args: argparse.Namespace, tags: Any, events: Sequence[Any]) -> None:
    from ..tagging.windows import PlotStyle, events_to_csv, plot_tags_over_time, write_text_atomic

    if args.output is not None:
        if args.output.suffix.lower() == ".csv":
            tags.to_csv(args.output)
        else:
            write_text_atomic(args.output, json.dumps(tags.to_dict()))
        print(f"wrote {args.output} ({len(tags)} rows x {len(tags.labels)} classes)", file=sys.stderr)
    if args.events is not None:
        events_to_csv(events, args.events)
        print(f"wrote {args.events} ({len(events)} events)", file=sys.stderr)
    if args.plot is not None:
        plot_tags_over_time(tags, args.plot, PlotStyle(top_k=args.plot_top_k, events=list(events)))
        print(f"wrote {args.plot}", file=sys.stderr)


def run_offline(args: argparse.Namespace, tagger: Any) -> None:
    from tqdm.auto import tqdm

    from ..tagging.windows import detect_events, frame_tags, tag_over_time

    if args.frame_level:
        tags = frame_tags(tagger, args.audio_path)
        exact = getattr(tagger.model, "frame_logits_exact", False)
        print(f"frame-level: {len(tags)} frames of {tags.hop:.3f} s "
              f"({'exact: the frame logits average to the clip logits' if exact else 'decision-level approximation'})",
              file=sys.stderr)
    else:
        with tqdm(total=None, unit="s", unit_scale=False, desc="tagging", disable=args.no_progress,
                  file=sys.stderr) as bar:
            def progress(done: int, _total: int) -> None:
                bar.n = round(done / tagger.sample_rate, 1)
                bar.refresh()
            tags = tag_over_time(tagger, args.audio_path, args.window, args.hop, batch_size=args.batch_size,
                                 progress=progress)
    events = detect_events(tags, args.threshold, args.median_window)
    if not args.quiet and args.output is None and args.plot is None and args.events is None:
        for start, end, row in zip(tags.starts, tags.ends, tags.probabilities):
            order = row.argsort()[::-1][:args.top_k]
            print(f"Window: {start:.2f} - {end:.2f}")
            for index in order:
                print(f"\t{tags.labels[index]}: {row[index]:.2f}")
    for event in events if not args.quiet else []:
        print_event(event)
    write_outputs(args, tags, events)


def run_stream(args: argparse.Namespace, tagger: Any) -> None:
    from ..tagging.streaming import StreamingTagger, read_pcm

    streamer = StreamingTagger(tagger, args.window, args.hop, input_sample_rate=args.pcm_rate,
                               threshold=args.threshold, median_window=args.median_window)
    events = []
    chunks = read_pcm(args.stream, pcm_format=args.pcm_format, channels=args.pcm_channels,
                      sample_rate=args.pcm_rate, chunk_seconds=args.chunk_seconds, realtime=args.realtime)
    try:
        for chunk in chunks:
            for window in streamer.feed(chunk):
                if not args.quiet:
                    print_window(window, args.top_k)
                for event in window.events:
                    events.append(event)
                    if not args.quiet:
                        print_event(event)
    except KeyboardInterrupt:  # Ctrl-C is how a live stream ends: tag what arrived, write the outputs
        print(f"stream stopped after {streamer.seconds_received:.1f} s", file=sys.stderr)
    windows, remaining = streamer.close()
    for window in windows if not args.quiet else []:
        print_window(window, args.top_k)
    for event in remaining:
        events.append(event)
        if not args.quiet:
            print_event(event)
    write_outputs(args, streamer.tags(), sorted(events, key=lambda e: (e.onset, e.index)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        tagger = load_tagger_for(args, select_tagging_device(args))
        if args.stream:
            run_stream(args, tagger)
        else:
            run_offline(args, tagger)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
