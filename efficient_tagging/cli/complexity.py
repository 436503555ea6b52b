"""Command-line complexity tool: params, MACs, peak memory and receptive field of a model.

Mirrors EfficientAT's ``complexity.py`` (same flags and printed sentences) and adds
catalogue names for every released MN / DyMN model, JSON output, a table over the whole
catalogue and a complexity-vs-mAP plot::

    python complexity/complexity.py --model mn10_as
    python complexity/complexity.py --model_width 0.4 --complexity_type memory --memory_efficient_inference
    python complexity/complexity.py --model dymn10_as --json
    python complexity/complexity.py --table --plot complexity.png
    python complexity/complexity.py --model passt_s_swa_p16_128_ap476   # transformer teachers:
    python complexity/complexity.py --model ast_base384                 # + token count, attention MACs

Teachers (PaSST / AST releases and the weight-less presets in
``registry.ARCHITECTURE_PRESETS``) are measured at their own frontend's input size; their
peak memory is reported as n/a (the CNN memory models do not apply).

No weights are downloaded: models are built from the catalogue config on PyTorch's
``meta`` device (shapes only, so even mn40 is instant), falling back to CPU if a model
cannot run there.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Optional

from ..complexity import (
    DEFAULT_BITS_PER_ELEM,
    DEFAULT_MODEL,
    STUDENT_ARCHS,
    Target,
    TargetError,
    catalogue_targets,
    clip_phrase,
    describe_measurement,
    format_table,
    measure,
    measurement_record,
    resolve_target,
    run_table,
    write_plot,
)

COMPLEXITY_TYPES = ("computation", "memory", "all")


class UsageError(Exception):
    """A problem with the command line (reported with exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="complexity",
        description="Parameters, multiply-accumulate operations (MACs), analytical peak activation memory and "
                    "receptive field of EfficientAT-style MobileNet (mn) and dynamic MobileNet (dymn) audio "
                    "taggers, and parameters, MACs (attention included) and token counts of the PaSST / AST "
                    "teachers, for one clip (10 s at 32 kHz by default). Models are built from the catalogue "
                    "config without downloading weights.",
        epilog="Examples: --model mn10_as | --model_width 0.4 --complexity_type memory --memory_efficient_inference "
               "| --model dymn10_as --json | --model passt_s_swa_p16_128_ap476 | --model ast_base384 "
               "| --table --plot complexity.png | --table --teachers --plot complexity.png")
    model = parser.add_argument_group("model")
    model.add_argument("--model", "--model_name", dest="model", default=None, metavar="NAME",
                       help=f"catalogue name (e.g. mn10_as, mn40_as, dymn10_as, mn10_as_hop_15); its model config and "
                            f"preprocessing give the defaults of every other flag (default: {DEFAULT_MODEL})")
    model.add_argument("--arch", choices=STUDENT_ARCHS, default=None,
                       help="model family when no --model is given: a fresh default config of that family "
                            "(default: mn, i.e. the mn10_as config)")
    model.add_argument("--model_width", "--width_mult", dest="width_mult", type=float, default=None, metavar="W",
                       help="width multiplier (0.4 = mn04, 1.0 = mn10, 4.0 = mn40); overrides the model's")
    model.add_argument("--head_type", choices=("mlp", "fully_convolutional", "multihead_attention_pooling"),
                       default=None, help="classification head (mn only)")
    model.add_argument("--se_dims", default=None,
                       help="squeeze-excitation dimensions (mn only): 'none' or letters of c/f/t, e.g. 'c', 'ct'")
    model.add_argument("--strides", type=int, nargs=4, default=None, metavar=("S1", "S2", "S3", "S4"),
                       help="strides of the four down-sampling blocks, e.g. 2 2 2 1")
    model.add_argument("--num_classes", type=int, default=None, help="number of output classes")

    prep = parser.add_argument_group("preprocessing (input spectrogram size)")
    prep.add_argument("--n_mels", type=int, default=None, help="mel bins (model input height; default: model's, 128)")
    prep.add_argument("--hop_size", type=int, default=None,
                      help="STFT hop in samples (default: model's, 320 = 10 ms at 32 kHz)")
    prep.add_argument("--n_fft", type=int, default=None, help="FFT size (default: model's, 1024)")
    prep.add_argument("--window_size", "--win_length", dest="win_length", type=int, default=None,
                      help="STFT window length in samples (default: model's, 800)")
    prep.add_argument("--sample_rate", "--resample_rate", dest="sample_rate", type=int, default=None,
                      help="sample rate in Hz (default: model's, 32000)")
    prep.add_argument("--duration", type=float, default=10.0, help="clip length in seconds (default: 10)")

    what = parser.add_argument_group("what to compute and how to print it")
    what.add_argument("--complexity_type", choices=COMPLEXITY_TYPES, default="all",
                      help="'computation' (params + MACs), 'memory' (peak memory) or 'all' (default)")
    what.add_argument("--memory_efficient_inference", action="store_true",
                      help="with --complexity_type memory: report the memory-efficient (channel-sliced) peak memory "
                           "instead of layer-by-layer inference")
    what.add_argument("--bits_per_elem", type=int, default=DEFAULT_BITS_PER_ELEM,
                      help=f"bits per stored activation for peak memory (default: {DEFAULT_BITS_PER_ELEM})")
    what.add_argument("--json", action="store_true",
                      help="print one JSON object (with --table: a JSON list) with exact numbers instead of text")
    what.add_argument("--per_layer", action="store_true", help="also print the MACs of every layer")
    what.add_argument("--teachers", action="store_true",
                      help="with --table: also the PaSST and AST teachers of the catalogue (params, MACs including "
                           "attention; no peak memory: the CNN memory model does not describe a transformer)")
    what.add_argument("--table", action="store_true",
                      help="measure every mn/dymn model of the catalogue (at its own preprocessing) and print a table "
                           "of params, MACs, published mAP and peak memory")
    what.add_argument("--only", nargs="+", default=None, metavar="PATTERN",
                      help="with --table: only models whose name matches one of these shell patterns, e.g. 'mn*_as' "
                           "'dymn*'")
    what.add_argument("--plot", default=None, metavar="PATH.png",
                      help="with --table: write a MACs (log scale) vs published mAP scatter plot to this file")
    return parser



def _target(args: argparse.Namespace) -> Target:
    """The --model / --arch target with the flags' overrides."""
    return resolve_target(args.model, arch=args.arch, width_mult=args.width_mult, head_type=args.head_type,
                          se_dims=args.se_dims, strides=args.strides, num_classes=args.num_classes,
                          n_mels=args.n_mels, hop_size=args.hop_size, n_fft=args.n_fft, win_length=args.win_length,
                          sample_rate=args.sample_rate, duration=args.duration)


def _print_table(args: argparse.Namespace) -> None:
    targets = catalogue_targets(args.duration, teachers=args.teachers, only=args.only)
    if args.only is not None and not targets:
        raise UsageError(f"--only {' '.join(args.only)} matches no catalogue model")
    rows = run_table(targets, args.bits_per_elem)
    if args.json:
        print(json.dumps([measurement_record(t, r) for t, r in rows], indent=1))
    else:
        print(format_table(rows))
        print(f"(MACs and memory for one {clip_phrase(args.duration)} clip at each model's own preprocessing; "
              f"memory at {args.bits_per_elem} bits per element; mAP as published, on AudioSet unless "
              f"marked)")
    if args.plot is not None:
        count = write_plot(rows, args.plot)
        print(f"wrote {args.plot} ({count} models with a published AudioSet mAP)", file=sys.stderr)


def _print_one(args: argparse.Namespace) -> None:
    target = _target(args)
    try:
        report, layers = measure(target, args.bits_per_elem, per_layer=args.per_layer)
    except (ValueError, TypeError) as error:  # invalid model config, e.g. a bad --se_dims
        raise UsageError(f"cannot build/measure {target.name}: {error}") from error
    if args.json:
        print(json.dumps(measurement_record(target, report, layers), indent=1))
    else:
        for line in describe_measurement(target, report, args.complexity_type, args.memory_efficient_inference,
                                         layers):
            print(line)


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    if args.bits_per_elem < 1:
        raise UsageError(f"--bits_per_elem must be a positive integer, got {args.bits_per_elem}")
    if not (math.isfinite(args.duration) and args.duration > 0):
        raise UsageError(f"--duration must be a positive finite number of seconds, got {args.duration}")
    if (args.plot is not None or args.only is not None or args.teachers) and not args.table:
        raise UsageError("--plot, --only and --teachers need --table (for one teacher: --model NAME)")
    if args.table:
        _print_table(args)
    else:
        _print_one(args)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Run the tool with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    0 on success, 2 on a usage error (unknown model, invalid flag values); ``--help``
    prints the help and returns 0.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help or an argparse error: return its code instead of exiting
        return int(exit_.code or 0)
    try:
        return _run(args)
    except (UsageError, TargetError) as error:  # TargetError: options that name no measurable model
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
