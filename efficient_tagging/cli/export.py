"""`export_onnx.py`: export a tagger to ONNX (optionally with the mel frontend in the graph, and an int8 copy)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .help import HelpFormatter
from .model_flags import add_model_arguments

EPILOG = """\
examples:
  python experiments/export_onnx.py --model_name mn10_as --output mn10_as.onnx --with_frontend --check
  python experiments/export_onnx.py --model_path my_checkpoint.pt --output model.onnx --int8 \\
      --calibration_audio a.wav b.mp3

The graph has a dynamic batch and time axis. Without --with_frontend its input is the log-mel
spectrogram (B, 1, n_mels, frames) and the frontend runs in PyTorch (OnnxTagger does this for
you); with it, the input is the waveform (B, samples) at the model's sample rate. The label map,
sample rate and frontend settings are stored as ONNX metadata. Tag with the result:
  python experiments/inference.py --backend onnx --model_path model.onnx --audio_path x.wav
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a tagger to ONNX (dynamic batch and time), check it against PyTorch, and "
                    "optionally write an int8 copy (ONNX Runtime static quantization) with an agreement report.",
        formatter_class=HelpFormatter, epilog=EPILOG)
    add_model_arguments(parser, onnx=False)
    parser.add_argument("--output", default=None,
                        help="the .onnx file to write (default: <model name or checkpoint name>.onnx)")
    parser.add_argument("--with_frontend", action="store_true",
                        help="put the mel frontend into the graph: input waveform (B, samples) instead of the "
                             "spectrogram (students with the mel frontend only)")
    parser.add_argument("--probabilities", action="store_true",
                        help="add a `probabilities` output (sigmoid; softmax for a single-label model) next to "
                             "`logits`")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, at least 17 (STFT)")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                        help="torch.onnx exporter: dynamo (torch.export) or the legacy torchscript (students only)")
    parser.add_argument("--check", action="store_true",
                        help="run the exported graph in ONNX Runtime and print max |delta logit| against PyTorch "
                             "on --check_audio")
    parser.add_argument("--check_audio", default=None,
                        help="audio for --check (default: the first --calibration_audio file, else the shared "
                             "metro recording of a source checkout, else a demo clip)")
    parser.add_argument("--int8", action="store_true",
                        help="also write <output>.int8.onnx (QDQ, per-channel, calibrated on real audio) and print "
                             "its agreement with fp32 (top-5 agreement, mean and max |delta prob|)")
    parser.add_argument("--calibration_audio", nargs="+", default=None, metavar="FILE",
                        help="recordings to calibrate int8 on (windows of them, plus the embedded demo clips) and "
                             "to report agreement on (default: the shared metro recording of a source checkout)")
    return parser


def _default_output(args: argparse.Namespace) -> Path:
    stem = Path(args.model_path).stem if args.model_path else args.model_name
    return Path(f"{stem}.onnx")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    output = Path(args.output) if args.output else _default_output(args)
    if output.suffix.lower() != ".onnx":
        print(f"error: --output must end in .onnx, got {output}", file=sys.stderr)
        return 1
    missing = [f for f in (args.calibration_audio or []) + ([args.check_audio] if args.check_audio else [])
               if not Path(f).is_file()]
    if missing:
        print(f"error: audio file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 1
    try:
        from ..audio import load_audio
        from ..export.onnx import export_onnx
        from ..export.quantize import agreement_report, calibration_waveforms, default_recording, quantize_int8
        from ..export.runtime import OnnxTagger, max_logit_difference
        from ..tagging.tagger import load_tagger

        tagger = load_tagger(args.model_name, args.model_path, labels_path=args.labels_path, cache_dir=args.cache_dir)
        recordings = [Path(f) for f in args.calibration_audio] if args.calibration_audio else []
        if not recordings and default_recording() is not None:
            recordings = [default_recording()]
        check_source = Path(args.check_audio) if args.check_audio else (recordings[0] if recordings else None)
        check_audio = load_audio(check_source, tagger.sample_rate) if check_source is not None else None
        path = export_onnx(tagger, output, with_frontend=args.with_frontend, probabilities=args.probabilities,
                           opset=args.opset, exporter=args.exporter, check_audio=check_audio)
        runner = OnnxTagger(path)
        outputs = ", ".join(o.name for o in runner.session.get_outputs())
        print(f"wrote {path}: {runner.input_kind} input -> {outputs}; {runner.num_classes} classes at "
              f"{runner.sample_rate} Hz; {args.exporter} exporter, opset {args.opset}; accepts >= "
              f"{runner.min_samples} samples ({runner.min_samples / runner.sample_rate:.2f} s)")

        if args.check:
            if check_audio is not None:
                waveform, name = check_audio, check_source.name
            else:
                waveform, name = calibration_waveforms(tagger.sample_rate, demo_clips=1, demo_seconds=10.0)[0], \
                    "a 10-s demo clip"
            waveform = tagger.contract.prepare(waveform)
            difference = max_logit_difference(tagger, runner, waveform)
            print(f"check: max |delta logit| ONNX Runtime vs PyTorch on {name} "
                  f"({waveform.shape[-1] / tagger.sample_rate:.1f} s): {difference:.3g}")
        if args.int8:
            if not recordings:
                print("warning: no real recording to calibrate on (give --calibration_audio): calibrating on the "
                      "synthetic demo clips only", file=sys.stderr)
            calibration = calibration_waveforms(tagger.sample_rate, recordings)
            int8_path = quantize_int8(path, output.with_suffix(".int8.onnx"), calibration)
            int8_runner = OnnxTagger(int8_path)
            evaluation = ({p.name: load_audio(p, tagger.sample_rate) for p in recordings} if recordings else
                          {f"demo clip {i}": w for i, w in enumerate(calibration)})
            print(f"wrote {int8_path} ({len(calibration)} calibration inputs)")
            print(agreement_report(runner, int8_runner, evaluation).format())
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
