"""What the tagging commands share: the model-selection flags, argparse types, the device check and
the tagger they describe (`inference.py`, `windowed_inference.py`, `export_onnx.py`)."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Any, Optional

import torch

from ..hardware import select_device

logger = logging.getLogger(__name__)

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


#: the default of --backend where the command line gives none (e.g. "torch" to skip exporting)
BACKEND_ENV = "EFFICIENT_TAGGING_BACKEND"
BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "openvino", "onnx")
ONNX_RUNTIMES = ("onnxruntime", "openvino")
# --backend auto compiles for an ONNX runtime only when the run is long enough to win back the start:
# measured on 2 cores (benchmarks/RESULTS.md, issue 26 target 4), loading the cached export costs
# ~0.7 s more than PyTorch's fast path, and each 10-s file then takes ~1-15 ms less (batch 1-32).
AUTO_COMPILED_MIN_FILES = 64
# ... and PyTorch's fast path (the inference copy: BatchNorm folded, fused convolutions) only from this
# many files on: building the copy takes ~0.2 s, it saves ~6 ms per 10-s file (mn10, batch 1), so
# for one file the model as built finishes first (1.56 s vs 1.75 s cold, benchmarks/bench_cold_start.py)
AUTO_FAST_PATH_MIN_FILES = 32


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=BACKEND_CHOICES, default=None,
        help="what computes the model: auto (default; $" + BACKEND_ENV + " changes it) = the fastest installed "
             "for this model, device and run -- on the CPU, for " + str(AUTO_COMPILED_MIN_FILES) + " files or more, "
             "a student's graph exported once to ONNX (cached beside the downloads) and run by ONNX Runtime; "
             "else PyTorch (its fast path from " + str(AUTO_FAST_PATH_MIN_FILES) + " files on: both "
             "start slower than they pay back on fewer); torch, onnxruntime or openvino by name. A "
             "--model_path ending in .onnx runs in ONNX Runtime, or OpenVINO when named (onnx = onnxruntime)")


def check_backend(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolve --backend against the model flags: an exported .onnx file runs in an ONNX runtime."""
    onnx_file = bool(args.model_path) and str(args.model_path).lower().endswith(".onnx")
    if args.backend is None:  # not on the command line: the environment's default, else auto
        args.backend = "auto" if onnx_file else (os.environ.get(BACKEND_ENV) or "auto")
        if args.backend not in BACKEND_CHOICES:
            parser.error(f"${BACKEND_ENV}={args.backend!r} is not a backend; choose one of {', '.join(BACKEND_CHOICES)}")
    if args.backend == "onnx":
        if args.ensemble:
            parser.error("--ensemble runs PyTorch models; it cannot be combined with --backend onnx")
        if not onnx_file:
            parser.error("--backend onnx needs --model_path pointing to an exported .onnx model")
        args.backend = "onnxruntime"
    if onnx_file:
        if args.backend == "torch":
            parser.error(f"{args.model_path} is an exported ONNX model: it runs with --backend onnxruntime or "
                         f"openvino (or auto), not torch")
        if args.backend == "auto":
            args.backend = "onnxruntime"  # OpenVINO when named (export.backends: why not by default)
        if args.device == "mps":
            parser.error("--backend onnx runs on cpu or cuda, not mps")
    if getattr(args, "eager", False) and args.backend in ONNX_RUNTIMES:
        # the compiled model replaces the fast path only; with --eager it would silently never run
        parser.error(f"--eager runs the PyTorch model as built; it cannot be combined with --backend {args.backend}")
    args.onnx_file = onnx_file


def load_onnx_tagger(model_path: str, device: torch.device, runtime: str = "onnxruntime") -> Any:
    """The exported model at `model_path` run by `runtime`, on the CPU (or ONNX Runtime's CUDA provider)."""
    try:
        from ..export.runtime import OnnxTagger
    except ImportError as error:
        raise RuntimeError(f"--backend onnx needs efficient_tagging.export.runtime (to run {model_path} in {runtime}), "
                           f"which this installation lacks or cannot import ({error})") from error
    if runtime == "openvino":
        if device.type != "cpu":
            raise RuntimeError(f"--backend openvino runs on the CPU here, not {device}")
        return OnnxTagger(model_path, runtime="openvino")
    if device.type == "cuda":
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return OnnxTagger(model_path, providers=providers, threads=None)



def load_tagger_for(args: argparse.Namespace, device: torch.device, files: Optional[int] = None) -> Any:
    """The tagger --model_name/--model_path/--ensemble/--backend describe, on `device`; `files`: how
    many files the run tags (--backend auto keeps PyTorch below AUTO_COMPILED_MIN_FILES)."""
    from ..tagging.ensemble import TeacherEnsemble  # imported when used: --help stays light
    from ..tagging.tagger import load_tagger

    backend = getattr(args, "backend", "torch")
    if getattr(args, "onnx_file", False) or backend == "onnx":
        return load_onnx_tagger(args.model_path, device, "onnxruntime" if backend == "onnx" else backend)
    if args.ensemble:
        tagger = TeacherEnsemble.from_names(args.ensemble, cache_dir=args.cache_dir, labels_path=args.labels_path)
    else:
        tagger = load_tagger(args.model_name, args.model_path, labels_path=args.labels_path, cache_dir=args.cache_dir)
    eager = getattr(args, "eager", False) or (backend == "auto" and files is not None
                                             and files < AUTO_FAST_PATH_MIN_FILES)
    for member in getattr(tagger, "members", None) or [tagger]:
        if hasattr(member, "fast"):
            member.fast = not eager
    tagger = tagger.to(device)
    if backend == "auto" and files is not None and files < AUTO_COMPILED_MIN_FILES:
        logger.info("backend auto: PyTorch%s for %d file(s) (its fast path pays off from %d files on, an ONNX "
                    "runtime from %d)", " as built" if eager else "", files, AUTO_FAST_PATH_MIN_FILES,
                    AUTO_COMPILED_MIN_FILES)
        return tagger
    if backend in ("auto", *ONNX_RUNTIMES) and not (eager and backend == "auto"):
        from ..export.backends import use_backend

        chosen = use_backend(tagger, backend, cache_dir=args.cache_dir,
                             notify=lambda line: print(line, file=sys.stderr, flush=True))
        logger.info("backend: %s", chosen)
    return tagger
