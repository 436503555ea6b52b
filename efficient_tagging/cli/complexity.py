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
import contextlib
import dataclasses
import fnmatch
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import torch
from torch import nn

from ..complexity import (
    DEFAULT_BITS_PER_ELEM,
    ComplexityReport,
    complexity_report,
    frontend_spectrogram_shape,
    macs_by_layer,
    spectrogram_shape,
    trace_model,
)

DEFAULT_MODEL = "mn10_as"
COMPLEXITY_TYPES = ("computation", "memory", "all")
# config keys that only MobileNet ("mn") accepts
_MN_ONLY = {"head_type": "--head_type", "se_dims": "--se_dims"}


class UsageError(Exception):
    """A problem with the command line (reported with exit code 2)."""


@dataclass
class Target:
    """A model to measure: how to build it and which input it gets."""

    name: str
    arch: str
    config: dict[str, Any]
    preprocessing: dict[str, Any]
    duration: float
    published_map: Optional[float] = None  # only for exactly a catalogue row's config and preprocessing
    extra: dict[str, Any] = field(default_factory=dict)
    catalogue_entry: Optional[str] = None  # the catalogue row this exact configuration is, if any

    def input_shape(self, use_frontend: bool = True) -> tuple[int, int, int, int]:
        """(1, 1, n_mels, frames) of the frontend output for ``duration`` seconds of audio.

        Measured with the mel frontend (as EfficientAT's complexity.py does) unless
        ``use_frontend`` is False or the frontend is unavailable; the analytic formula
        gives the same result.
        """
        p = self.preprocessing
        if p.get("frontend") == "ast_fbank":
            # AST's fbank is padded / cut to target_length frames whatever the clip length
            return (1, 1, int(p.get("n_mels", 128)), int(p.get("target_length", 1024)))
        kwargs = dict(n_mels=int(p["n_mels"]), hop_size=int(p["hopsize"]), sample_rate=int(p["sr"]),
                      duration=self.duration)
        if use_frontend:
            return frontend_spectrogram_shape(win_length=int(p["win_length"]), n_fft=int(p["n_fft"]), **kwargs)
        return spectrogram_shape(**kwargs)


def _catalogue():
    """(CATALOGUE, get_entry) of the model registry (imported lazily: it pulls in the model code)."""
    from ..models.registry import CATALOGUE, get_entry
    return CATALOGUE, get_entry


@contextlib.contextmanager
def _skip_weight_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s in-place initialisers no-ops for the duration.

    Only used while building on the ``meta`` device, where tensors hold no values: the
    initialisers would only cost time (meta ``normal_`` runs a slow decomposition).
    """
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_") and callable(getattr(nn.init, n))]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def build_model(arch: str, config: dict[str, Any], device: str = "meta") -> nn.Module:
    """A fresh model of ``arch`` from reference-named ``config``; never loads weights.

    On the ``meta`` device weight initialisation is skipped (there are no values).
    """
    from ..models import create_model
    init_ctx = _skip_weight_init() if device == "meta" else contextlib.nullcontext()
    with init_ctx, torch.device(device):
        return create_model(arch, **dict(config))


TEACHER_ARCHS = ("passt", "ast")


def token_info(model: nn.Module, input_shape: Sequence[int]) -> Optional[dict[str, Any]]:
    """Tokens a transformer teacher attends over for ``input_shape`` (None for CNNs).

    PaSST: 16x16 patches at its stride over (F, T), the time axis cut to its time
    positional embeddings (a 10-s clip, 1000 frames, gives 12 x 99 patches for stride 10),
    plus the cls and distillation tokens. AST: its fixed patch grid (input cut/padded to
    ``input_tdim`` by the fbank) plus the same two tokens.
    """
    if hasattr(model, "time_grid") and hasattr(model, "patch_size"):  # PaSST
        (pf, pt), (sf, st) = model.patch_size, model.stride
        grid_f = (int(input_shape[-2]) - pf) // sf + 1
        grid_t = min((int(input_shape[-1]) - pt) // st + 1, int(model.time_grid))
        prefix = 2 if getattr(model, "dist_token", None) is not None else 1
    elif hasattr(model, "grid") and hasattr(model, "mlp_head"):  # AST
        grid_f, grid_t = model.grid
        prefix = 2
    else:
        return None
    return {"tokens": grid_f * grid_t + prefix, "grid": [grid_f, grid_t], "prefix_tokens": prefix}


def measure(target: Target, bits_per_elem: int = DEFAULT_BITS_PER_ELEM, use_frontend: bool = True,
            per_layer: bool = False) -> tuple[ComplexityReport, list]:
    """Complexity report of ``target`` (and the per-layer breakdown if asked)."""
    shape = target.input_shape(use_frontend)
    try:
        model = build_model(target.arch, target.config, "meta")
        trace = trace_model(model, shape)
    except (NotImplementedError, RuntimeError):
        # some operation has no meta implementation: run for real (slower, same numbers)
        model = build_model(target.arch, target.config, "cpu")
        trace = trace_model(model, shape)
    report = complexity_report(model, shape, bits_per_elem, model_name=target.name, trace=trace)
    tokens = token_info(model, shape)
    if tokens is not None:
        target.extra.update(tokens)
    if target.arch in TEACHER_ARCHS:
        # The CNN peak-memory models (layer-by-layer convs, inverted residual blocks) do not
        # describe a transformer (its peak is the attention map / token activations): n/a.
        report = dataclasses.replace(report, peak_memory_kb=None, peak_memory_efficient_kb=None)
    layers = macs_by_layer(model, shape, trace=trace) if per_layer else []
    return report, layers


# --------------------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------------------
def _width_name(width: float) -> str:
    # EfficientAT names a manually specified width like "mn04" (0.4) or "mn10" (1.0)
    return str(float(width)).replace(".", "")


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
    model.add_argument("--arch", choices=("mn", "dymn"), default=None,
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


def _check_teacher_flags(args: argparse.Namespace, name: str, arch: str) -> None:
    """Transformer teachers are measured as released: model / frontend overrides do not apply."""
    used = [flag for flag, value in (("--arch", args.arch), ("--model_width", args.width_mult),
                                      ("--head_type", args.head_type), ("--se_dims", args.se_dims),
                                      ("--strides", args.strides), ("--n_mels", args.n_mels),
                                      ("--hop_size", args.hop_size), ("--n_fft", args.n_fft),
                                      ("--window_size", args.win_length), ("--sample_rate", args.sample_rate))
            if value is not None]
    if used:
        raise UsageError(f"{', '.join(used)} cannot be used with {name!r} (a {arch} transformer teacher); "
                         "it is measured with its own configuration and frontend")


def _constructor_defaults(arch: str) -> dict[str, Any]:
    """Default constructor arguments of a student family (to compare configs completely)."""
    import inspect
    from ..models.dymn import DyMN
    from ..models.mobilenet import MobileNet

    cls = {"mn": MobileNet, "dymn": DyMN}.get(arch)
    if cls is None:
        return {}
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _canonical(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)


def _config_key(arch: str, config: dict[str, Any], preprocessing: dict[str, Any]) -> str:
    full_config = {**_constructor_defaults(arch), **config}
    full_config.pop("pretrained_name", None)
    full_prep = {"frontend": "mel", **preprocessing}
    return json.dumps([arch, _canonical(full_config), _canonical(full_prep)], sort_keys=True, default=str)


def exact_catalogue_entry(arch: str, config: dict[str, Any], preprocessing: dict[str, Any],
                          preferred: Optional[str] = None):
    """The catalogue row whose model config and preprocessing are exactly these (None if none).

    Several rows can share one configuration (re-runs such as mn40_as / mn40_as(2)): then
    ``preferred`` (the --model the user named) wins, else the match must be unique.
    """
    catalogue, _ = _catalogue()
    key = _config_key(arch, config, preprocessing)
    matches = [e for e in catalogue.values()
               if e.arch == arch and _config_key(e.arch, e.config, e.preprocessing) == key]
    for entry in matches:
        if entry.name == preferred:
            return entry
    return matches[0] if len(matches) == 1 else None


def target_from_args(args: argparse.Namespace) -> Target:
    """Resolve --model / --arch and the overrides into what to build and measure."""
    catalogue, get_entry = _catalogue()
    from ..frontends import DEFAULT_PREPROCESSING
    from ..models.registry import ARCHITECTURE_PRESETS

    if args.model is not None and args.model.strip() in ARCHITECTURE_PRESETS:
        preset = args.model.strip()
        arch, config, preprocessing = ARCHITECTURE_PRESETS[preset]
        name, config, preprocessing, published_map = preset, dict(config), dict(preprocessing), None
        _check_teacher_flags(args, name, arch)
    elif args.model is not None:
        try:
            entry = get_entry(args.model)
        except KeyError:
            known = list(catalogue) + list(ARCHITECTURE_PRESETS)
            raise UsageError(f"unknown model {args.model!r}. Known models: {', '.join(known)}") from None
        if entry.arch in TEACHER_ARCHS:
            _check_teacher_flags(args, entry.name, entry.arch)
        if args.arch is not None and args.arch != entry.arch:
            raise UsageError(f"--arch {args.arch} contradicts --model {args.model} (a {entry.arch} model)")
        name, arch = entry.name, entry.arch
        config, preprocessing, published_map = dict(entry.config), dict(entry.preprocessing), entry.published_map
    elif args.arch == "dymn":
        name, arch, config, preprocessing, published_map = "dymn", "dymn", {}, dict(DEFAULT_PREPROCESSING), None
    elif args.arch == "mn":
        name, arch, config, preprocessing, published_map = "mn", "mn", {}, dict(DEFAULT_PREPROCESSING), None
    else:
        entry = get_entry(DEFAULT_MODEL)
        name, arch = entry.name, entry.arch
        config, preprocessing, published_map = dict(entry.config), dict(entry.preprocessing), entry.published_map

    overrides: dict[str, Any] = {}
    if args.width_mult is not None:
        if not (math.isfinite(args.width_mult) and args.width_mult > 0):
            raise UsageError(f"--model_width must be a positive finite number (0.4 = mn04, 1.0 = mn10, "
                             f"4.0 = mn40), got {args.width_mult}")
        overrides["width_mult"] = float(args.width_mult)
    if args.head_type is not None:
        overrides["head_type"] = args.head_type
    if args.se_dims is not None:
        overrides["se_dims"] = args.se_dims
    if args.strides is not None:
        overrides["strides"] = list(args.strides)
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    if arch != "mn":
        for key, flag in _MN_ONLY.items():
            if key in overrides:
                raise UsageError(f"{flag} applies to mn models only ({name} is a {arch} model)")

    for flag, key in (("n_mels", "n_mels"), ("hop_size", "hopsize"), ("n_fft", "n_fft"),
                      ("win_length", "win_length"), ("sample_rate", "sr")):
        value = getattr(args, flag)
        if value is not None:
            if value < 1:
                raise UsageError(f"--{flag} must be a positive integer, got {value}")
            preprocessing[key] = int(value)
    if arch == "mn":
        # MobileNet checks the number of mel bins of its input
        config["input_dim_f"] = int(preprocessing["n_mels"])
    config.update(overrides)
    if not (math.isfinite(args.duration) and args.duration > 0):
        raise UsageError(f"--duration must be a positive finite number of seconds, got {args.duration}")

    # published metadata belongs to a catalogue row only: a changed width, frontend, head ...
    # is a different model with no published mAP
    catalogue_entry = None
    if args.model is None or args.model.strip() not in ARCHITECTURE_PRESETS:  # presets have no weights
        entry = exact_catalogue_entry(arch, config, preprocessing, preferred=args.model)
        catalogue_entry = entry.name if entry is not None else None
        published_map = entry.published_map if entry is not None else None

    if args.model is None and args.arch is None and args.width_mult is not None:
        name = f"mn{_width_name(args.width_mult)}"  # EfficientAT's naming of a manual width
    elif args.model is None and args.arch is not None:
        name = f"{arch}{_width_name(config.get('width_mult', 1.0))}"
    elif overrides:
        name = f"{name} ({', '.join(f'{k}={v}' for k, v in overrides.items())})"
    return Target(name=name, arch=arch, config=config, preprocessing=preprocessing, duration=float(args.duration),
                  published_map=published_map, catalogue_entry=catalogue_entry)


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------
def _clip(duration: float) -> str:
    return f"{duration:g}-seconds"


def _json_record(target: Target, report: ComplexityReport, layers: Sequence = ()) -> dict[str, Any]:
    data = report.to_dict()
    data.update(model=target.name, arch=target.arch, config=target.config, preprocessing=target.preprocessing,
                duration=target.duration, published_map=target.published_map, catalogue_entry=target.catalogue_entry)
    if "tokens" in target.extra:
        data.update(tokens=target.extra["tokens"], token_grid=target.extra["grid"],
                    prefix_tokens=target.extra["prefix_tokens"])
    if layers:
        data["layers"] = [dict(name=l.name, type=l.type_name, kind=l.kind, macs=l.macs,
                               output_shape=list(l.output_shape) if l.output_shape else None) for l in layers]
    return data


def print_human(target: Target, report: ComplexityReport, complexity_type: str, memory_efficient: bool,
                layers: Sequence = ()) -> None:
    """EfficientAT-style sentences, then the exact numbers."""
    clip = _clip(target.duration)
    name = target.name
    teacher = target.arch in TEACHER_ARCHS
    if target.preprocessing.get("frontend") == "ast_fbank":
        clip = f"{target.preprocessing.get('target_length', 1024) / 100:g}-seconds (AST fbank input)"
    if complexity_type in ("computation", "all"):
        print(f"Model '{name}' has {report.params / 1e6:.2f} million parameters and inference of a single {clip} "
              f"audio clip requires {report.macs / 1e9:.2f} billion multiply-accumulate operations.")
    if complexity_type in ("memory", "all"):
        show_efficient = complexity_type == "all" or memory_efficient
        show_cnn = complexity_type == "all" or not memory_efficient
        if teacher:
            print(f"Model '{name}': peak memory n/a (the CNN peak-memory models do not apply to transformers).")
        elif show_efficient:
            if report.peak_memory_efficient_kb is None:
                print(f"Model '{name}': memory-efficient peak memory is not defined (no inverted-residual blocks).")
            else:
                print(f"Model '{name}' inference (memory efficient) of a single {clip} audio clip has a peak memory "
                      f"of {report.peak_memory_efficient_kb:.2f} kB.")
        if show_cnn and not teacher:
            if report.peak_memory_kb is None:
                print(f"Model '{name}': layer-by-layer peak memory is not defined (no convolutions).")
            else:
                print(f"Model '{name}' inference of a single {clip} audio clip has a peak memory of "
                      f"{report.peak_memory_kb:.2f} kB.")
    hop = target.preprocessing.get("hopsize", "10 ms" if target.preprocessing.get("frontend") == "ast_fbank" else "?")
    frontend = target.preprocessing.get("frontend", "mel")
    print(f"  input spectrogram: {tuple(report.input_shape)} (n_mels={report.n_mels}, frames={report.frames}, "
          f"sr={target.preprocessing['sr']}, hop={hop}, frontend={frontend})")
    if "tokens" in target.extra:
        grid_f, grid_t = target.extra["grid"]
        print(f"  tokens: {target.extra['tokens']} ({grid_f}\u00d7{grid_t} patches + {target.extra['prefix_tokens']})")
    if complexity_type in ("computation", "all"):
        field_text = ("global (self-attention; patches are 16x16)" if teacher
                      else f"(freq, time): {report.receptive_field}")
        print(f"  params: {report.params:,}   MACs: {report.macs:,}   receptive field {field_text}")
        shares = ", ".join(f"{kind} {macs / report.macs:.1%}" for kind, macs in report.macs_by_kind.items()
                           if report.macs)
        if shares:
            print(f"  MACs by layer type: {shares}")
    if complexity_type in ("memory", "all") and not teacher:
        print(f"  memory at {report.bits_per_elem} bits per element (kB = 1000 bytes)")
    if layers:
        width = max(len(l.name) for l in layers)
        print(f"  {'layer':<{width}}  {'type':<18} {'MACs':>15}  output")
        for l in layers:
            shape = tuple(l.output_shape[1:]) if l.output_shape else ""
            print(f"  {l.name:<{width}}  {l.type_name:<18} {l.macs:>15,}  {shape}")


def catalogue_targets(duration: float = 10.0, teachers: bool = False) -> list[Target]:
    """Every mn / dymn entry of the catalogue (and the PaSST / AST teachers if asked), at its own preprocessing."""
    catalogue, _ = _catalogue()
    archs = ("mn", "dymn", *TEACHER_ARCHS) if teachers else ("mn", "dymn")
    return [Target(name=e.name, arch=e.arch, config=dict(e.config), preprocessing=dict(e.preprocessing),
                   duration=duration, published_map=e.published_map, catalogue_entry=e.name,
                   extra={"dataset": getattr(e, "dataset", None)})
            for e in catalogue.values() if e.arch in archs]


def run_table(targets: Sequence[Target], bits_per_elem: int) -> list[tuple[Target, ComplexityReport]]:
    """Measure every target; identical (arch, config, input) models are measured once."""
    cache: dict[str, ComplexityReport] = {}
    rows = []
    for target in targets:
        shape = target.input_shape(use_frontend=False)  # analytic: same numbers, no STFT per row
        key = json.dumps([target.arch, target.config, shape], sort_keys=True, default=str)
        if key not in cache:
            cache[key], _ = measure(target, bits_per_elem, use_frontend=False)
        report = cache[key]
        rows.append((target, dataclasses.replace(report, model=target.name)))
    return rows


def format_table(rows: Sequence[tuple[Target, ComplexityReport]]) -> str:
    """Aligned plain-text table."""
    header = ("model", "arch", "input", "params (M)", "MACs (G)", "mAP", "mem eff. (kB)", "mem (kB)", "RF")
    lines = []
    for target, r in rows:
        dataset = target.extra.get("dataset", "audioset")
        published = "-" if target.published_map is None else f"{target.published_map:.3f}"
        if target.published_map is not None and dataset != "audioset":
            published += f" ({'OpenMIC' if dataset == 'openmic' else dataset})"  # not an AudioSet mAP: say so
        lines.append((
            target.name, target.arch, f"{r.n_mels}x{r.frames}", f"{r.params / 1e6:.3f}", f"{r.macs / 1e9:.3f}",
            published,
            f"{r.peak_memory_efficient_kb:.1f}" if r.peak_memory_efficient_kb is not None else "-",
            f"{r.peak_memory_kb:.1f}" if r.peak_memory_kb is not None else "-",
            # a transformer's receptive field is the whole input after the first attention layer
            "global" if target.arch in TEACHER_ARCHS else f"{r.receptive_field[0]}x{r.receptive_field[1]}"))
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    left = {0, 1}  # text columns left-aligned, numbers right-aligned

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(row) for row in lines)])


class ComplexityPlot(NamedTuple):
    figure: Any
    axes: Any
    labels: list  # matplotlib Annotations, one per labelled point
    points: int  # models plotted


def _boxes_overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(ax: Any, anchors: Sequence[tuple[float, float]], texts: Sequence[str], fontsize: float = 7) -> list:
    """Annotate each anchor (data coordinates) with its text so that no two labels overlap.

    Greedy placement in display space: labels are placed from the most crowded anchor outwards;
    each tries offsets on rings of growing radius (12 directions per ring) and takes the first
    whose text box lies inside the axes and intersects neither an already placed label nor a
    marker. Labels away from their point get a thin leader line. The axes limits and layout must
    be final before this is called (display coordinates are used).
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_pixels = fig.dpi / 72.0
    points_px = [tuple(ax.transData.transform(anchor)) for anchor in anchors]
    frame = ax.get_window_extent(renderer)
    marker_half = 4.0 * to_pixels  # markers are ~6 pt wide; keep labels just off them
    markers = [(x - marker_half, y - marker_half, x + marker_half, y + marker_half) for x, y in points_px]
    gap = 1.5 * to_pixels  # white space kept between boxes

    def crowding(i: int) -> int:
        x, y = points_px[i]
        return sum(abs(x - u) < 80 * to_pixels and abs(y - v) < 40 * to_pixels for u, v in points_px)

    order = sorted(range(len(anchors)), key=lambda i: (-crowding(i), points_px[i][0]))
    rings = [5, 12, 20, 30, 42, 56, 72, 90, 110, 132, 156, 182, 210]
    directions = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in
                  (20, -20, 160, 200, 60, -60, 120, 240, 90, 270, 0, 180)]
    placed: list[tuple[float, float, float, float]] = []
    labels: list = [None] * len(anchors)
    for i in order:
        probe = ax.text(0, 0, texts[i], fontsize=fontsize, transform=None)  # only measured
        box = probe.get_window_extent(renderer)
        probe.remove()
        width, height = box.width, box.height
        px, py = points_px[i]
        best = None
        for radius in rings:
            for cx, cy in directions:
                dx, dy = radius * cx, radius * cy
                ha = "left" if cx > 0.1 else "right" if cx < -0.1 else "center"
                va = "bottom" if cy > 0.5 else "top" if cy < -0.5 else "center"
                x0 = px + dx * to_pixels - (0 if ha == "left" else width if ha == "right" else width / 2)
                y0 = py + dy * to_pixels - (0 if va == "bottom" else height if va == "top" else height / 2)
                candidate = (x0 - gap, y0 - gap, x0 + width + gap, y0 + height + gap)
                inside = (candidate[0] >= frame.x0 and candidate[2] <= frame.x1 and candidate[1] >= frame.y0
                          and candidate[3] <= frame.y1)
                if inside and not any(_boxes_overlap(candidate, other) for other in placed) and not any(
                        _boxes_overlap(candidate, m) for j, m in enumerate(markers) if j != i):
                    best = (dx, dy, ha, va, candidate)
                    break
            if best is not None:
                break
        if best is None:  # nowhere free: the far end of the last ring, counted as a failure by the test
            best = (rings[-1], 0.0, "left", "center", (px, py, px, py))
        dx, dy, ha, va, candidate = best
        leader = dict(arrowstyle="-", color="0.6", lw=0.5, shrinkA=1, shrinkB=3) if math.hypot(dx, dy) > 14 else None
        labels[i] = ax.annotate(texts[i], anchors[i], xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                ha=ha, va=va, zorder=4, arrowprops=leader)
        placed.append(candidate)
    return labels


def label_text_extent(label: Any, renderer: Any) -> Any:
    """Display box of an annotation's text alone (an Annotation's own extent includes its leader line)."""
    import matplotlib.text as mtext
    label.update_positions(renderer)
    return mtext.Text.get_window_extent(label, renderer)


def plot_complexity(rows: Sequence[tuple[Target, ComplexityReport]]) -> ComplexityPlot:
    """MACs (log x) vs published AudioSet mAP of the rows with an AudioSet mAP, labels placed without overlap.

    Rows whose published mAP is on another dataset (the OpenMIC-2008 PaSST models) are left out:
    they do not belong on the AudioSet axis.
    """
    import matplotlib
    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    points = [(t, r) for t, r in rows
              if t.published_map is not None and t.extra.get("dataset", "audioset") == "audioset"]
    other = sorted({str(t.extra.get("dataset")) for t, _ in rows
                    if t.published_map is not None and t.extra.get("dataset", "audioset") != "audioset"})
    fig, ax = plt.subplots(figsize=(12, 8), dpi=120)
    markers = {"mn": ("o", "tab:blue", "MobileNetV3 (mn)"), "dymn": ("s", "tab:red", "dynamic MobileNet (dymn)"),
               "passt": ("^", "tab:green", "PaSST (teacher)"), "ast": ("D", "tab:purple", "AST (teacher)")}
    to_label: list[tuple[Target, ComplexityReport]] = []
    for arch, (marker, color, label) in markers.items():
        sel = [(t, r) for t, r in points if t.arch == arch]
        if sel:
            ax.scatter([r.macs / 1e9 for _, r in sel], [t.published_map for t, _ in sel], marker=marker, s=28,
                       color=color, label=label, zorder=3)
        # re-runs of one architecture (e.g. mn40_as, mn40_as(2)) share a MACs value: label the best only
        best: dict[int, tuple[Target, ComplexityReport]] = {}
        for t, r in sel:
            if r.macs not in best or t.published_map > best[r.macs][0].published_map:
                best[r.macs] = (t, r)
        to_label.extend(best.values())
    ax.set_xscale("log")
    ax.set_xlabel("MACs per 10-s clip (billions, log scale)")
    ax.set_ylabel("published AudioSet mAP")
    title = "Complexity vs. performance of the released models"
    if other:
        title += f"\n(not shown: models whose published mAP is on another dataset: {', '.join(other)})"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if points:
        macs = [r.macs / 1e9 for _, r in points]
        maps = [t.published_map for t, _ in points]
        # room for labels around the outermost points
        ax.set_xlim(min(macs) / 2.5, max(macs) * 4.0)
        span = max(maps) - min(maps) or 0.05
        ax.set_ylim(min(maps) - 0.12 * span, max(maps) + 0.12 * span)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    labels = place_labels(ax, [(r.macs / 1e9, t.published_map) for t, r in to_label], [t.name for t, _ in to_label])
    return ComplexityPlot(fig, ax, labels, len(points))


def write_plot(rows: Sequence[tuple[Target, ComplexityReport]], path: str) -> int:
    """Write :func:`plot_complexity` to ``path`` (PNG); returns the number of plotted models."""
    import matplotlib.pyplot as plt

    plot = plot_complexity(rows)
    plot.figure.savefig(path, dpi=plot.figure.dpi)
    plt.close(plot.figure)
    return plot.points


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
        targets = catalogue_targets(args.duration, teachers=args.teachers)
        if args.only is not None:
            targets = [t for t in targets if any(fnmatch.fnmatchcase(t.name, p) for p in args.only)]
            if not targets:
                raise UsageError(f"--only {' '.join(args.only)} matches no catalogue model")
        rows = run_table(targets, args.bits_per_elem)
        if args.json:
            print(json.dumps([_json_record(t, r) for t, r in rows], indent=1))
        else:
            print(format_table(rows))
            print(f"(MACs and memory for one {_clip(args.duration)} clip at each model's own preprocessing; "
                  f"memory at {args.bits_per_elem} bits per element; mAP as published, on AudioSet unless "
                  f"marked)")
        if args.plot is not None:
            count = write_plot(rows, args.plot)
            print(f"wrote {args.plot} ({count} models with a published AudioSet mAP)", file=sys.stderr)
        return 0

    target = target_from_args(args)
    try:
        report, layers = measure(target, args.bits_per_elem, per_layer=args.per_layer)
    except (ValueError, TypeError) as error:  # invalid model config, e.g. a bad --se_dims
        raise UsageError(f"cannot build/measure {target.name}: {error}") from error
    if args.json:
        print(json.dumps(_json_record(target, report, layers), indent=1))
    else:
        print_human(target, report, args.complexity_type, args.memory_efficient_inference, layers)
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
    except UsageError as error:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
