"""What the complexity tool measures: a model (catalogue row, weight-less preset or fresh family
config) with the input it gets, built shape-only and measured.

No weights are downloaded: models are built from their config on PyTorch's ``meta`` device
(shapes only, so even mn40 is instant), falling back to the CPU where an operation has no meta
implementation. Transformer teachers (PaSST / AST) are measured at their own frontend's input
size and as released; their peak memory is n/a (the CNN memory models do not apply).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from ..models.family import ModelFamily
from ..models.registry import CATALOGUE, FAMILIES, family_of, get_entry

from .counting import (
    DEFAULT_BITS_PER_ELEM,
    ComplexityReport,
    complexity_report,
    frontend_spectrogram_shape,
    macs_by_layer,
    spectrogram_shape,
    trace_model,
)

DEFAULT_MODEL = "mn10_as"


class TargetError(ValueError):
    """Options that describe no measurable model: an unknown name, an option the model does not
    take, a value out of range. The message names each option as the complexity command spells it
    (the options of :func:`resolve_target` are that command's flags)."""


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


# --------------------------------------------------------------------------------------
# what a family says about measuring it (models.family.ModelFamily)
# --------------------------------------------------------------------------------------
#: the students' shape options the command offers; a family takes those in its `complexity_options`
STUDENT_SHAPE_OPTIONS = ("head_type", "se_dims")
#: the CNN students (a fresh default config exists for each) and the transformer teachers
STUDENT_ARCHS = tuple(name for name, family in FAMILIES.items() if not family.is_teacher)
TEACHER_ARCHS = tuple(name for name, family in FAMILIES.items() if family.is_teacher)


def family_for(arch: str) -> ModelFamily:
    """The family of ``arch``; an unknown name gets the interface's defaults (a student without options)."""
    return FAMILIES.get(arch) or ModelFamily()


def token_info(model: nn.Module, input_shape: Sequence[int]) -> Optional[dict[str, Any]]:
    """Tokens a transformer teacher attends over for ``input_shape`` (None for CNNs)."""
    family = family_of(model)
    return family.token_info(model, input_shape) if family is not None else None


def _constructor_defaults(arch: str) -> dict[str, Any]:
    """Default constructor arguments of a student family (to compare configs completely); {} otherwise."""
    family = family_for(arch)
    return family.constructor_defaults() if arch in STUDENT_ARCHS else {}


# --------------------------------------------------------------------------------------
# building and measuring
# --------------------------------------------------------------------------------------
def _catalogue():
    """(CATALOGUE, get_entry) of the model registry."""
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


def measure(target: Target, bits_per_elem: int = DEFAULT_BITS_PER_ELEM, use_frontend: bool = True,
            per_layer: bool = False) -> tuple[ComplexityReport, list]:
    """Complexity report of ``target`` (and the per-layer breakdown if asked).

    A teacher's token count goes into ``target.extra`` (tokens, grid, prefix_tokens).
    """
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
    if family_for(target.arch).is_teacher:
        # The CNN peak-memory models (layer-by-layer convs, inverted residual blocks) do not
        # describe a transformer (its peak is the attention map / token activations): n/a.
        report = dataclasses.replace(report, peak_memory_kb=None, peak_memory_efficient_kb=None)
    layers = macs_by_layer(model, shape, trace=trace) if per_layer else []
    return report, layers


def catalogue_targets(duration: float = 10.0, teachers: bool = False,
                      only: Optional[Sequence[str]] = None) -> list[Target]:
    """Every student entry of the catalogue (and the PaSST / AST teachers if asked), at its own
    preprocessing; with ``only``, just the names matching one of those shell patterns."""
    catalogue, _ = _catalogue()
    archs = (*STUDENT_ARCHS, *TEACHER_ARCHS) if teachers else STUDENT_ARCHS
    targets = [Target(name=e.name, arch=e.arch, config=dict(e.config), preprocessing=dict(e.preprocessing),
                      duration=duration, published_map=e.published_map, catalogue_entry=e.name,
                      extra={"dataset": getattr(e, "dataset", None)})
               for e in catalogue.values() if e.arch in archs]
    if only is not None:
        targets = [t for t in targets if any(fnmatch.fnmatchcase(t.name, p) for p in only)]
    return targets


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


# --------------------------------------------------------------------------------------
# which catalogue row a configuration is
# --------------------------------------------------------------------------------------
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
    ``preferred`` (the model the user named) wins, else the match must be unique.
    """
    catalogue, _ = _catalogue()
    key = _config_key(arch, config, preprocessing)
    matches = [e for e in catalogue.values()
               if e.arch == arch and _config_key(e.arch, e.config, e.preprocessing) == key]
    for entry in matches:
        if entry.name == preferred:
            return entry
    return matches[0] if len(matches) == 1 else None


# --------------------------------------------------------------------------------------
# options -> target
# --------------------------------------------------------------------------------------
@dataclass
class _Start:
    """What the named model (or the default) gives before any option changes it."""

    name: str
    arch: str
    config: dict[str, Any]
    preprocessing: dict[str, Any]
    published_map: Optional[float]
    preset: bool = False  # a weight-less architecture preset: never a catalogue row


def _width_name(width: float) -> str:
    # EfficientAT names a manually specified width like "mn04" (0.4) or "mn10" (1.0)
    return str(float(width)).replace(".", "")


def _refuse_teacher_options(name: str, arch: str, used: Sequence[str]) -> None:
    """Transformer teachers are measured as released: model / frontend options do not apply."""
    if used:
        raise TargetError(f"{', '.join(used)} cannot be used with {name!r} (a {arch} transformer teacher); "
                          "it is measured with its own configuration and frontend")


def _starting_point(model: Optional[str], arch: Optional[str], teacher_options: Sequence[str]) -> _Start:
    """The preset, catalogue row, fresh family config or default model the options start from.

    ``teacher_options``: the options given that a teacher refuses (as flags, for the message).
    """
    catalogue, get_entry = _catalogue()
    from ..frontends import DEFAULT_PREPROCESSING
    from ..models.registry import ARCHITECTURE_PRESETS

    if model is not None and model.strip() in ARCHITECTURE_PRESETS:
        preset = model.strip()
        preset_arch, config, preprocessing = ARCHITECTURE_PRESETS[preset]
        _refuse_teacher_options(preset, preset_arch, teacher_options)  # every preset is a teacher shape
        return _Start(preset, preset_arch, dict(config), dict(preprocessing), None, preset=True)
    if model is not None:
        try:
            entry = get_entry(model)
        except KeyError:
            known = list(catalogue) + list(ARCHITECTURE_PRESETS)
            raise TargetError(f"unknown model {model!r}. Known models: {', '.join(known)}") from None
        if family_for(entry.arch).is_teacher:
            _refuse_teacher_options(entry.name, entry.arch, teacher_options)
        if arch is not None and arch != entry.arch:
            raise TargetError(f"--arch {arch} contradicts --model {model} (a {entry.arch} model)")
        return _Start(entry.name, entry.arch, dict(entry.config), dict(entry.preprocessing), entry.published_map)
    if arch is not None:
        if arch not in STUDENT_ARCHS:
            raise TargetError(f"--arch must be one of {', '.join(STUDENT_ARCHS)} (a fresh default config), "
                              f"got {arch!r}")
        return _Start(arch, arch, {}, dict(DEFAULT_PREPROCESSING), None)
    entry = get_entry(DEFAULT_MODEL)
    return _Start(entry.name, entry.arch, dict(entry.config), dict(entry.preprocessing), entry.published_map)


def _model_overrides(width_mult: Optional[float], head_type: Optional[str], se_dims: Optional[str],
                     strides: Optional[Sequence[int]], num_classes: Optional[int]) -> dict[str, Any]:
    """The constructor options given, in a fixed order (it shows in the target's name)."""
    overrides: dict[str, Any] = {}
    if width_mult is not None:
        if not (math.isfinite(width_mult) and width_mult > 0):
            raise TargetError(f"--model_width must be a positive finite number (0.4 = mn04, 1.0 = mn10, "
                              f"4.0 = mn40), got {width_mult}")
        overrides["width_mult"] = float(width_mult)
    if head_type is not None:
        overrides["head_type"] = head_type
    if se_dims is not None:
        overrides["se_dims"] = se_dims
    if strides is not None:
        overrides["strides"] = list(strides)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return overrides


def _with_input_options(preprocessing: dict[str, Any], options: Sequence[tuple[str, str, Optional[int]]]
                        ) -> dict[str, Any]:
    """``preprocessing`` with the given (option, key, value) input settings; each must be >= 1."""
    for option, key, value in options:
        if value is not None:
            if value < 1:
                raise TargetError(f"--{option} must be a positive integer, got {value}")
            preprocessing[key] = int(value)
    return preprocessing


def _target_name(start: _Start, model: Optional[str], arch: Optional[str], width_mult: Optional[float],
                 config: dict[str, Any], overrides: dict[str, Any]) -> str:
    if model is None and arch is None and width_mult is not None:
        return f"{start.arch}{_width_name(width_mult)}"  # EfficientAT's naming of a manual width
    if model is None and arch is not None:
        return f"{start.arch}{_width_name(config.get('width_mult', 1.0))}"
    if overrides:
        return f"{start.name} ({', '.join(f'{k}={v}' for k, v in overrides.items())})"
    return start.name


def resolve_target(model: Optional[str] = None, *, arch: Optional[str] = None, width_mult: Optional[float] = None,
                   head_type: Optional[str] = None, se_dims: Optional[str] = None,
                   strides: Optional[Sequence[int]] = None, num_classes: Optional[int] = None,
                   n_mels: Optional[int] = None, hop_size: Optional[int] = None, n_fft: Optional[int] = None,
                   win_length: Optional[int] = None, sample_rate: Optional[int] = None,
                   duration: float = 10.0) -> Target:
    """The target a catalogue / preset name (or a fresh ``arch`` config, or the default model) and
    the given overrides describe; None leaves a setting as the model has it.

    Raises TargetError for an unknown name, options the model does not take or bad values.
    The published mAP is kept only when the result is exactly a catalogue row's configuration.
    """
    teacher_options = [flag for flag, value in (
        ("--arch", arch), ("--model_width", width_mult), ("--head_type", head_type), ("--se_dims", se_dims),
        ("--strides", strides), ("--n_mels", n_mels), ("--hop_size", hop_size), ("--n_fft", n_fft),
        ("--window_size", win_length), ("--sample_rate", sample_rate)) if value is not None]
    start = _starting_point(model, arch, teacher_options)
    overrides = _model_overrides(width_mult, head_type, se_dims, strides, num_classes)
    for key in STUDENT_SHAPE_OPTIONS:
        if key in overrides and key not in family_for(start.arch).complexity_options:
            raise TargetError(f"--{key} applies to mn models only ({start.name} is a {start.arch} model)")
    preprocessing = _with_input_options(start.preprocessing, (
        ("n_mels", "n_mels", n_mels), ("hop_size", "hopsize", hop_size), ("n_fft", "n_fft", n_fft),
        ("win_length", "win_length", win_length), ("sample_rate", "sr", sample_rate)))
    config = start.config
    mel_bins_argument = family_for(start.arch).mel_bins_argument
    if mel_bins_argument is not None:
        config[mel_bins_argument] = int(preprocessing["n_mels"])
    config.update(overrides)
    if not (math.isfinite(duration) and duration > 0):
        raise TargetError(f"--duration must be a positive finite number of seconds, got {duration}")

    # published metadata belongs to a catalogue row only: a changed width, frontend, head ...
    # is a different model with no published mAP (presets have no weights, so no row)
    published_map, catalogue_entry = None, None
    if not start.preset:
        entry = exact_catalogue_entry(start.arch, config, preprocessing, preferred=model)
        if entry is not None:
            published_map, catalogue_entry = entry.published_map, entry.name
    return Target(name=_target_name(start, model, arch, width_mult, config, overrides), arch=start.arch,
                  config=config, preprocessing=preprocessing, duration=float(duration),
                  published_map=published_map, catalogue_entry=catalogue_entry)
