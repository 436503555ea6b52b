"""`get_model`: build any architecture by name or config, optionally with pretrained weights.

Checkpoints are read with `torch.load(weights_only=True)`. Two layouts are accepted:
- a plain state_dict (the official EfficientAT / PaSST / AST release files; an optional
  `module.` prefix from DataParallel training is stripped), and
- this project's self-describing file (`save_checkpoint`): a dict holding the state_dict
  plus the architecture, its config, the frontend settings and the label map, so the file
  alone rebuilds a model that tags audio.
Weights are always loaded with `strict=True`; the only keys ever left out are those of the
final classification layer, and only when the caller asks for a different `num_classes`
(fine-tuning a pretrained body on a new label set).
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from ..frontends import build_frontend, frontend_sample_rate, frontend_settings, frontend_window_samples
from ..frontends.contract import CONTRACT_KEY, InputContract
from ..hub import MIRROR_ENV, DownloadError, cached_file, move_aside
from ..labels import LabelMap
from ..locking import temporary_file
from .layers import min_input_frames
from .registry import PretrainedEntry, family_of, get_entry, get_family

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "efficient_tagging.checkpoint"
CHECKPOINT_VERSION = 1
# Where each family keeps its classification head (mn/dymn, PaSST, AST): the only tensors a
# new `num_classes` may replace when loading pretrained weights.
HEAD_PREFIXES = ("classifier.", "head.", "head_dist.", "mlp_head.")


def check_model_kwargs(arch: str, config: dict[str, Any]) -> None:
    """Refuse constructor arguments the family does not take, naming them and the accepted ones."""
    accepted = get_family(arch).constructor_arguments()
    if accepted is None:
        return
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ValueError(f"unknown argument(s) for arch={arch!r}: {', '.join(unknown)}; accepted: "
                         f"{', '.join(sorted(accepted))} (plus cache_dir, weights, progress for get_model)")


def create_model(arch: str, **config: Any) -> nn.Module:
    """A freshly initialised model of architecture `arch` built from reference-named kwargs."""
    family = get_family(arch)
    config.pop("pretrained_name", None)
    check_model_kwargs(arch, config)
    model = family.build(**config)
    model.arch = arch
    if not isinstance(getattr(type(model), "config", None), property):  # models may describe themselves
        model.config = dict(config)
    return model


def pretrained_arch(name_or_path: str) -> Optional[str]:
    """The family a `get_model(name_or_path)` call builds: from the catalogue or the checkpoint's own description.

    None for a plain state_dict, whose family only the caller knows (the `arch` argument).
    """
    if _looks_like_path(name_or_path):
        _, metadata = read_checkpoint(_resolve_file(name_or_path))
        return metadata.get("arch") if metadata else None
    return get_entry(name_or_path).arch


def _looks_like_path(name: str) -> bool:
    return (name.startswith("file://") or os.sep in name or name.endswith((".pt", ".pth", ".ckpt"))
            or Path(name).is_file())


def _load_weights_only(path: Path) -> Any:
    # Memory-mapped: tensors are read when used, so a training checkpoint's optimizer state (2x the
    # weights for Adam) is never read just to tag with its weights. Private mapping: writing to a
    # loaded tensor does not touch the file. Files in torch's pre-1.6 format cannot be mapped.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, not a state_dict, or damaged (checksum)."""


#: where a checkpoint of this project stores the SHA-256 of its weights (`state_dict_sha256`)
WEIGHTS_HASH_KEY = "state_dict_sha256"


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state_dict's names, dtypes, shapes and bytes, in name order: one flipped bit in
    any weight changes it. (About 1 s per GB of weights.)"""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def read_checkpoint(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint file safely; returns `(state_dict, metadata)` (metadata empty for plain files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        content = _load_weights_only(path)
    except Exception as error:  # torch raises many types for corrupt / non-torch files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: expected a state_dict (dict of tensors), got {type(content).__name__}")
    metadata: dict[str, Any] = {}
    if content.get("format") == CHECKPOINT_FORMAT:
        metadata = {k: v for k, v in content.items() if k != "state_dict"}
        content = content["state_dict"]
        stored = metadata.get(WEIGHTS_HASH_KEY)
        if stored is not None and isinstance(content, dict) and state_dict_sha256(content) != stored:
            raise CheckpointError(f"{path}: the weights do not match the checksum stored when the checkpoint was written "
                             f"(a damaged file: disk or copy error?). Restore it from a good copy (or, for a "
                             f"training run, resume from another checkpoint of it)")
    else:
        for wrapper in ("state_dict", "model"):  # common training-checkpoint wrappers
            if isinstance(content.get(wrapper), dict) and all(
                    isinstance(v, torch.Tensor) for v in content[wrapper].values()):
                content = content[wrapper]
                break
    not_tensors = [k for k, v in content.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: not a state_dict; entries that are not tensors: {not_tensors[:5]}")
    state_dict = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in content.items()}
    return state_dict, metadata


def _describe_mismatch(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape_diff = [(k, tuple(state_dict[k].shape), tuple(own[k].shape)) for k in own
                  if k in state_dict and state_dict[k].shape != own[k].shape]
    lines = [f"checkpoint {source} does not fit the {type(model).__name__} built from config "
             f"{getattr(model, 'config', {})}:"]
    if shape_diff:
        lines.append(f"  {len(shape_diff)} tensors have other shapes, e.g. "
                     + "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in shape_diff[:3]))
        if any(k.endswith(("features.0.0.weight", "in_c.0.weight")) for k, _, _ in shape_diff):
            lines.append("  the stem width differs: the checkpoint was trained with another width_mult")
    if missing:
        lines.append(f"  {len(missing)} keys missing from the checkpoint, e.g. {missing[:3]}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys in the checkpoint, e.g. {unexpected[:3]}")
    lines.append("  (pass the architecture and config the checkpoint was trained with)")
    return "\n".join(lines)


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "<state_dict>",
                 allow_new_head: bool = False) -> list[str]:
    """Load `state_dict` strictly; returns the classifier keys left out when `allow_new_head`.

    With `allow_new_head`, classifier tensors whose shape differs from the model (a new
    number of classes) are skipped and stay freshly initialised; everything else must match.
    """
    own = model.state_dict()
    skipped: list[str] = []
    if allow_new_head:
        skipped = [k for k in own if k.startswith(HEAD_PREFIXES) and k in state_dict
                   and state_dict[k].shape != own[k].shape]
        # The new head keeps its fresh initialisation: its own tensors fill those keys, so the
        # load below stays strict for every other key.
        state_dict = {**state_dict, **{k: own[k] for k in skipped}}
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(_describe_mismatch(model, state_dict, source)) from error
    if skipped:
        logger.info("%s: new classification head (%s) initialised randomly", source, ", ".join(skipped))
    return skipped


def _catalogue_url(entry: PretrainedEntry) -> str:
    if os.environ.get(MIRROR_ENV):
        return os.environ[MIRROR_ENV].rstrip("/") + "/" + urllib.parse.quote(entry.filename)
    return entry.url


def _cached_catalogue_weights(entry: PretrainedEntry, cache_dir: Union[str, Path, None], progress: bool
                              ) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The release file of `entry` from the download cache (downloaded once), read.

    A download must fit the entry's architecture before it is renamed into the cache. A cached copy
    gets the cache's cheap checks only (a full check would build the model at every call); one that
    then fails to read, or (in `get_model`) to load, is replaced by `_replace_cached_download`."""
    path = cached_file(_catalogue_url(entry), entry.filename, cache=cache_dir, sha256=entry.sha256,
                       progress=progress, validate=_fits_catalogue_entry(entry), validate_cached=False)
    try:
        state_dict, metadata = read_checkpoint(path)
    except CheckpointError as error:
        return _replace_cached_download(entry, path, error, cache_dir, progress)
    return path, state_dict, metadata


def _replace_cached_download(entry: PretrainedEntry, path: Path, error: Exception, cache_dir: Union[str, Path, None],
                             progress: bool) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """A cached release file that cannot be used (unreadable, or weights of another architecture, e.g.
    served under this name by a mirror): moved aside to `<name>.bad-<time>`, like a truncated file,
    and downloaded once more (checked before it is renamed into the cache)."""
    moved = move_aside(path)
    logger.warning("cached %s (%s) is not usable (%s); moved it to %s and downloading it again",
                   entry.name, path, str(error).splitlines()[0], moved)
    try:
        path = cached_file(_catalogue_url(entry), entry.filename, cache=cache_dir, sha256=entry.sha256,
                           progress=progress, validate=_fits_catalogue_entry(entry), validate_cached=False)
    except Exception as download_error:
        raise DownloadError(f"the cached copy of {entry.name} was not usable and was moved to {moved}; downloading "
                            f"it again failed: {download_error}\nWhat was wrong with the cached copy: {error}\n"
                            f"Put a good copy of {entry.url} at {path} (or copy_into_cache it) and run again"
                            ) from download_error
    state_dict, metadata = read_checkpoint(path)
    return path, state_dict, metadata


def _fits_catalogue_entry(entry: PretrainedEntry) -> Callable[[Path], None]:
    """A download-cache validator: the file's weights must fit the architecture of `entry` (names and
    shapes), so a wrong file served under a catalogue name is refused before it is renamed into the
    cache, and a bad cached copy is moved aside instead of failing every later `get_model`."""
    def validate(path: Path) -> None:
        state_dict, _ = read_checkpoint(path)
        expected = {name: tuple(shape) for name, shape in _catalogue_shapes(entry).items()}
        found = {name: tuple(tensor.shape) for name, tensor in state_dict.items()}
        if found != expected:
            missing = sorted(set(expected) - set(found))
            unexpected = sorted(set(found) - set(expected))
            shapes = [f"{k}: {found[k]} (expected {expected[k]})" for k in expected if k in found and found[k] != expected[k]]
            raise CheckpointError(f"its weights do not fit {entry.name} ({entry.arch}, {entry.config}): "
                                  f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} of other shape"
                                  + (f", e.g. {(missing + unexpected + shapes)[0]}" if missing or unexpected or shapes
                                     else ""))
    return validate


_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {}


def _catalogue_shapes(entry: PretrainedEntry) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the state_dict of a catalogue architecture (built once per process)."""
    if entry.name not in _SHAPES:
        model = create_model(entry.arch, **get_family(entry.arch).shapes_only_config(dict(entry.config)))
        _SHAPES[entry.name] = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    return _SHAPES[entry.name]


def _resolve_file(location: str) -> Path:
    if location.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(location).path))
    return Path(location).expanduser()


def get_model(pretrained_name: Optional[str] = None, *, arch: str = "mn",
              cache_dir: Union[str, Path, None] = None, weights: Union[str, Path, None] = None,
              progress: bool = False, **config: Any) -> nn.Module:
    """Build a model; with `pretrained_name`, also load its weights.

    - `get_model(arch="mn", width_mult=0.4, ...)`: a fresh model, reference argument names.
    - `get_model("mn10_as")`: a catalogue name: config and frontend settings come from the
      catalogue, the release file is downloaded once into the cache. `config` entries
      override the catalogue (e.g. `num_classes=50` keeps the body and starts a new head).
    - `get_model("path/to/file.pt", arch=..., **config)` or a `file://` URL: a local
      checkpoint; this project's own checkpoints carry their arch/config, official plain
      state_dicts need `arch` and `config`.
    - `get_model("mn10_as", weights="my/copy/mn10_as_mAP_471.pt")`: catalogue config with a
      local copy of the release file (no download).

    Downloads go to `cache_dir` (see `efficient_tagging.hub.cache_dir`); the environment
    variable `EFFICIENT_TAGGING_MIRROR` replaces the release base URL (an https mirror, or a
    `file://` folder; plain http is refused). A fresh `arch="ast"` model with the default
    ImageNet init downloads its DeiT weights into the same cache.

    The returned model has attributes `arch`, `config`, `preprocessing` (mel frontend
    settings), `dataset` and `label_map` (a `LabelMap` or None when not known offline).
    """
    config.pop("pretrained_name", None)
    if pretrained_name is None and weights is not None:
        # a fresh architecture with a weights file: the file is loaded (strictly), never ignored
        pretrained_name = str(_existing_file(weights, f"get_model(arch={arch!r}, weights=...) loads it into the "
                                                      f"{arch} model built from the given config"))
    if pretrained_name is None:
        return _fresh_model(arch, cache_dir, config)
    source = _weights_source(pretrained_name, arch, weights, cache_dir, progress)
    family = get_family(source.arch)
    config = family.normalise_config(config)
    new_head = (family.class_count_key in config
                and config[family.class_count_key] != source.config.get(family.class_count_key, 527))
    check_model_kwargs(family.name, config)
    config, stored_config = family.pretrained_configs(config, source.config)
    model = create_model(family.name, **{**stored_config, **config})
    source = _load_source(model, source, new_head, cache_dir, progress)
    family.restore_state(model, source.metadata, config)
    _describe(model, source, new_head)
    if CONTRACT_KEY in source.metadata and not new_head and not config:
        _check_stored_contract(model, source.metadata, source.label)
    return model


class _WeightsSource(NamedTuple):
    """Where `get_model`'s weights come from: the file read, and what it (or its catalogue entry) says."""

    arch: str
    config: dict[str, Any]  # the stored constructor config (catalogue entry's, or the checkpoint's own)
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    entry: Optional[PretrainedEntry]
    path: Path
    label: str  # how messages name it
    weights_given: bool  # a local copy of a catalogue file (never replaced by a download)


def _existing_file(location: Union[str, Path], purpose: str) -> Path:
    path = Path(location).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} ({purpose})")
    return path


def _fresh_model(arch: str, cache_dir: Union[str, Path, None], config: dict[str, Any]) -> nn.Module:
    family = get_family(arch)
    model = create_model(arch, **family.fresh_config(family.normalise_config(config), cache_dir))
    model.preprocessing = {}
    model.dataset = None
    model.label_map = None
    return model


def _weights_source(name_or_path: str, arch: str, weights: Union[str, Path, None],
                    cache_dir: Union[str, Path, None], progress: bool) -> _WeightsSource:
    if _looks_like_path(name_or_path):
        path = _resolve_file(name_or_path)
        state_dict, metadata = read_checkpoint(path)
        # this project's checkpoints describe their model; a plain state_dict needs the caller's arch
        arch = metadata["arch"] if metadata else arch
        config = dict(metadata.get("config", {})) if metadata else {}
        return _WeightsSource(arch, config, state_dict, metadata, None, path, str(path), False)
    entry = get_entry(name_or_path)
    if weights is not None:
        path = Path(weights).expanduser()
        state_dict, metadata = read_checkpoint(path)
    else:
        path, state_dict, metadata = _cached_catalogue_weights(entry, cache_dir, progress)
    return _WeightsSource(entry.arch, dict(entry.config), state_dict, metadata, entry, path,
                          f"{path} ({entry.name})", weights is not None)


def _load_source(model: nn.Module, source: _WeightsSource, new_head: bool, cache_dir: Union[str, Path, None],
                 progress: bool) -> _WeightsSource:
    """Load the weights strictly; a cached download that does not fit is replaced once (moved aside)."""
    try:
        load_weights(model, source.state_dict, source=source.label, allow_new_head=new_head)
        return source
    except ValueError as error:
        if source.entry is None or source.weights_given:
            raise
        path, state_dict, metadata = _replace_cached_download(source.entry, source.path, error, cache_dir, progress)
    source = source._replace(path=path, state_dict=state_dict, metadata=metadata,
                             label=f"{path} ({source.entry.name})")
    load_weights(model, state_dict, source=source.label, allow_new_head=new_head)
    return source


def _describe(model: nn.Module, source: _WeightsSource, new_head: bool) -> None:
    """The attributes every pretrained model carries: frontend settings, dataset, task, labels, name."""
    entry, metadata = source.entry, source.metadata
    model.preprocessing = dict(entry.preprocessing) if entry else dict(metadata.get("preprocessing") or {})
    model.dataset = entry.dataset if entry else metadata.get("dataset")
    # a new head is a new task; the catalogue's models are all multi-label taggers
    model.task = None if new_head else (metadata.get("task") or "multilabel")
    labels = metadata.get("labels")
    model.label_map = LabelMap.from_dict(labels) if labels and not new_head else None
    model.pretrained_name = entry.name if entry else source.label


AUDIOSET_CLIP_SECONDS = 10.0  # the catalogue's AudioSet models were trained on 10-s clips


def model_min_samples(model: nn.Module, frontend: nn.Module) -> int:
    """The shortest input (samples) of `model` behind `frontend`: one analysis window, or more where
    a CNN student needs more frames (`layers.min_input_frames`) -- the same for PyTorch and for
    every ONNX export of the model."""
    window = frontend_window_samples(frontend)
    hop = int(getattr(frontend, "hopsize", 0) or 0)
    # the mel bins the model takes (a model whose stored frontend says otherwise cannot be tagged, but
    # it can be saved: its shortest input is still the model's)
    n_mels = int(getattr(model, "input_dim_f", 0) or getattr(frontend, "n_mels", 0) or 128)
    if not hop or not hasattr(model, "forward_frames"):
        return window
    return max(window, (min_input_frames(model, n_mels) - 1) * hop + 1)


def model_input_contract(model: nn.Module, frontend: Optional[nn.Module] = None, *,
                         preprocessing: Optional[dict[str, Any]] = None, label_map: Optional[LabelMap] = None,
                         task: Optional[str] = None, dataset: Optional[str] = None,
                         short_inputs: str = "repeat") -> InputContract:
    """The input contract of a model built by `get_model` (or trained here): its frontend settings
    (`model.preprocessing`, the catalogue mel where none), clip length (stored; 10 s for the
    catalogue's AudioSet models), shortest input, label map and task. An argument given replaces
    the model's attribute of that name."""
    if preprocessing is None:
        preprocessing = getattr(model, "preprocessing", None)
    preprocessing = dict(preprocessing or {})
    frontend = frontend if frontend is not None else build_frontend(preprocessing)
    clip_length = float(preprocessing["clip_length"]) if preprocessing.get("clip_length") is not None else None
    if clip_length is None and (dataset or getattr(model, "dataset", None)) == "audioset":
        clip_length = AUDIOSET_CLIP_SECONDS
    labels = label_map if label_map is not None else getattr(model, "label_map", None)
    return InputContract(sample_rate=frontend_sample_rate(frontend, preprocessing.get("sr", 32000)),
                         frontend=frontend_settings(frontend, preprocessing), clip_length=clip_length,
                         min_samples=model_min_samples(model, frontend), short_inputs=short_inputs,
                         labels=labels, task=task or getattr(model, "task", None) or "multilabel")


def _check_stored_contract(model: nn.Module, metadata: dict[str, Any], source: str) -> None:
    """A checkpoint's stored input contract must be valid and say what its other fields say."""
    stored = InputContract.from_dict(metadata[CONTRACT_KEY], source, num_outputs=getattr(model, "num_classes", None))
    actual = model_input_contract(model)
    for name in ("sample_rate", "clip_length", "task"):
        if getattr(stored, name) != getattr(actual, name):
            raise ValueError(f"{source}: contradictory checkpoint: its input contract says {name}="
                             f"{getattr(stored, name)!r} but its model settings give {getattr(actual, name)!r}")
    if stored.labels is not None and actual.labels is not None and stored.labels != actual.labels:
        raise ValueError(f"{source}: contradictory checkpoint: its input contract has {len(stored.labels)} labels "
                         f"({', '.join(stored.labels.names[:3])}, ...) but its label map has {len(actual.labels)} "
                         f"({', '.join(actual.labels.names[:3])}, ...)")


def as_label_map(labels: Union[LabelMap, Sequence[str]]) -> LabelMap:
    """A `LabelMap` from a `LabelMap` or a sequence of class names (which are then also the ids)."""
    if isinstance(labels, LabelMap):
        return labels
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise TypeError(f"labels must be a LabelMap or a list of class names, got {type(labels).__name__}")
    names = list(labels)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"labels must be class names (str); got {bad[:3]} ({type(bad[0]).__name__})")
    return LabelMap.from_names(names)


def save_checkpoint(path: Union[str, Path], model: nn.Module, *, arch: Optional[str] = None,
                    config: Optional[dict[str, Any]] = None, preprocessing: Optional[dict[str, Any]] = None,
                    labels: Union[LabelMap, Sequence[str], None] = None, dataset: Optional[str] = None,
                    task: Optional[str] = None, extra: Optional[dict[str, Any]] = None) -> Path:
    """Write a self-describing checkpoint atomically (temp file + rename).

    `task`: "multiclass" (one label per clip: taggers turn logits into probabilities with a
    softmax), "multilabel" / "partial_multilabel" (sigmoid); default: the model's `task`, if any.

    `labels`: a `LabelMap` or a plain list of class names (one per logit, in logit order);
    default: the model's `label_map`. Holds only tensors and plain Python values, so
    `torch.load(weights_only=True)` reads it.
    """
    path = Path(path)
    arch = arch or getattr(model, "arch", None)
    if arch is None:
        raise ValueError("save_checkpoint needs the architecture name (arch=...)")
    labels = as_label_map(labels) if labels is not None else getattr(model, "label_map", None)
    num_classes = getattr(model, "num_classes", None)
    if labels is not None and isinstance(num_classes, int) and num_classes and len(labels) != num_classes:
        raise ValueError(f"save_checkpoint: {len(labels)} labels given but the model outputs {num_classes} classes")
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "config": dict(config if config is not None else getattr(model, "config", {})),
        "preprocessing": dict(preprocessing if preprocessing is not None else getattr(model, "preprocessing", {})),
        "dataset": dataset if dataset is not None else getattr(model, "dataset", None),
        "labels": labels.to_dict() if labels is not None else None,
        "task": task if task is not None else getattr(model, "task", None),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    payload[WEIGHTS_HASH_KEY] = state_dict_sha256(payload["state_dict"])  # verified by read_checkpoint
    # what every tagging path will feed the model (frontends.contract); read back and checked by get_model
    payload[CONTRACT_KEY] = model_input_contract(model, preprocessing=payload["preprocessing"], label_map=labels,
                                                 task=payload["task"], dataset=payload["dataset"]).to_dict()
    family = family_of(model)
    if family is not None:
        payload.update(family.checkpoint_state(model))  # training state that is not a weight (DyMN temperature)
    if extra:
        payload["extra"] = extra
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle, temporary = temporary_file(path)
    except OSError as err:
        raise _write_error(path, err, payload) from err
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as err:
        if os.path.exists(temporary):
            os.unlink(temporary)  # free the space first: the free-space check below must see it
        failure = _write_error(path, err, payload)
        if failure is None:
            raise
        raise failure from err
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, I/O error); the file at `path` is unchanged."""

    def __init__(self, errno_: int, message: str, path: Path) -> None:
        super().__init__(errno_, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return self.message


_NO_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _write_error(path: Path, err: BaseException, payload: dict[str, Any]) -> Optional[CheckpointWriteError]:
    """The clear error for a failed checkpoint write, or None for an error that is not about writing.

    torch does not pass the OS error on: a full disk surfaces as a RuntimeError from its zip
    writer (`inline_container.cc`: "PytorchStreamWriter failed writing file ..." or "unexpected
    pos ..."). Whether that was a full disk is judged from the free space left next to the file.
    """
    kept = "previous checkpoint kept" if path.exists() else "no checkpoint was written"
    if isinstance(err, OSError):
        if err.errno in _NO_SPACE_ERRNOS:
            return CheckpointWriteError(errno.ENOSPC, f"no space left writing {path}; {kept}", path)
        return CheckpointWriteError(err.errno or errno.EIO, f"could not write {path} ({err}); {kept}", path)
    text = str(err)
    if "inline_container" not in text and "PytorchStreamWriter" not in text:
        return None  # not a write failure (e.g. an object torch cannot serialise)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = 0
    if free < _tensor_bytes(payload) + (1 << 20):
        return CheckpointWriteError(errno.ENOSPC, f"no space left writing {path}; {kept} "
                                    f"({free / 1e6:.1f} MB free there)", path)
    first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return CheckpointWriteError(errno.EIO, f"could not write {path} (torch: {first_line}); {kept}", path)
