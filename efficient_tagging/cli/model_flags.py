"""What the tagging commands share: the model-selection flags, argparse types, the device check and
the tagger they describe (`inference.py`, `windowed_inference.py`, `export_onnx.py`)."""
from __future__ import annotations

import argparse
import re
from typing import Any

import torch

from ..hardware import select_device

DEVICE_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def _int_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (bad values exit with code 2 and a usage message)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def device_name(text: str) -> str:
    """argparse type: cpu, cuda, cuda:N or mps (whether it exists is checked when the run starts)."""
    if not DEVICE_PATTERN.match(text.strip()):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")
    return text.strip()


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def odd_int(text: str) -> int:
    value = positive_int(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd (a centred median filter), got {value}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, *, onnx: bool = True, model_alias: bool = False) -> None:
    """--model_name (also --model: EfficientAT's windowed_inference.py spelling), --model_path,
    --labels_path, --cache_dir, with one wording for every command."""
    names = ("--model_name", "--model") if model_alias else ("--model_name",)
    parser.add_argument(*names, dest="model_name", default="mn10_as",
                        help="catalogue name (see `python complexity/complexity.py --table`); with --model_path "
                             "it gives the architecture/frontend of a plain official state_dict"
                             + ("; --model is EfficientAT's spelling" if model_alias else ""))
    parser.add_argument("--model_path", default=None,
                        help="local checkpoint: this project's checkpoint, a plain official state_dict "
                             "(then --model_name says which architecture it is)"
                             + (", or an exported .onnx model" if onnx else ""))
    parser.add_argument("--labels_path", default=None,
                        help="AudioSet class_labels_indices.csv (default: cache, downloaded if missing)")
    parser.add_argument("--cache_dir", default=None, help="download cache (default: $EFFICIENT_TAGGING_CACHE, "
                                                          "the repo's pretrained/ or ~/.cache/efficient_tagging)")


def select_tagging_device(args: argparse.Namespace) -> torch.device:
    """The device --cuda / --device ask for, checked to exist (hardware.select_device: DeviceUnavailable
    otherwise, never a silent CPU run)."""
    return select_device(bool(args.cuda), device=args.device)


def load_onnx_tagger(model_path: str, device: torch.device) -> Any:
    """The exported model behind --backend onnx, on the CPU or the CUDA execution provider."""
    try:
        from ..export.runtime import OnnxTagger
    except ImportError as error:
        raise RuntimeError(f"--backend onnx needs efficient_tagging.export.runtime, which this installation "
                           f"lacks or cannot import ({error})") from error
    if device.type == "cuda":
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return OnnxTagger(model_path, providers=providers, threads=None)


def load_tagger_for(args: argparse.Namespace, device: torch.device) -> Any:
    """The tagger --model_name/--model_path/--ensemble/--backend describe, on `device`."""
    from ..tagging.ensemble import TeacherEnsemble  # imported when used: --help stays light
    from ..tagging.tagger import load_tagger

    if args.backend == "onnx":
        return load_onnx_tagger(args.model_path, device)
    if args.ensemble:
        tagger = TeacherEnsemble.from_names(args.ensemble, cache_dir=args.cache_dir, labels_path=args.labels_path)
    else:
        tagger = load_tagger(args.model_name, args.model_path, labels_path=args.labels_path, cache_dir=args.cache_dir)
    for member in getattr(tagger, "members", None) or [tagger]:
        if hasattr(member, "fast"):
            member.fast = not getattr(args, "eager", False)
    return tagger.to(device)
