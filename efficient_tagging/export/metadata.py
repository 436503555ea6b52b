"""What an ONNX export stores about itself, and the plumbing every ONNX room shares.

`OnnxMetadata` (``metadata_props``, keys prefixed ``efficient_tagging.``): the input contract
(`frontends.contract`), label map, sample rate, task, frontend settings, clip length, input kind,
output names, exporter and opset, architecture and config, package version, quantization;
:func:`read_onnx_metadata` reads them back and refuses contradictions. Also: the optional-dependency
import (`_require`), the exporter's quiet mode, and atomic writes of ONNX files.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from ..frontends.contract import CONTRACT_KEY, InputContract
from ..labels import LabelMap
from ..locking import temporary_file

logger = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18  # the dynamo exporter's native opset; ONNX STFT needs >= 17
MIN_OPSET = 17
METADATA_PREFIX = "efficient_tagging."
INPUT_KINDS = ("waveform", "spectrogram")
INSTALL_HINT = "ONNX support needs the onnx extra: pip install 'efficient_tagging[onnx]'"

PathLike = Union[str, Path]


def _require(module: str) -> Any:
    """Import an optional ONNX dependency, or raise an ImportError that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({module} is missing: {error})") from error


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """The exporters print progress to stdout and warn a lot: logged at debug level instead."""
    captured = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(captured):
        warnings.simplefilter("always")
        yield captured
    for line in captured.getvalue().splitlines():
        logger.debug("exporter: %s", line)
    for warning in caught:
        logger.debug("exporter warning: %s", warning.message)


# --------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxMetadata:
    """What :func:`export_onnx` stores in an ONNX file's ``metadata_props``."""

    label_map: LabelMap
    sample_rate: int
    input_kind: str  # "waveform" or "spectrogram"
    outputs: tuple[str, ...]
    preprocessing: dict[str, Any]
    task: Optional[str] = None
    clip_length: Optional[float] = None
    min_samples: int = 1024
    short_inputs: str = "repeat"
    window_frames: Optional[int] = None  # transformer teachers: longest input of the graph, in frames
    hop_frames: Optional[int] = None
    exporter: str = ""
    opset: int = 0
    arch: Optional[str] = None
    config: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    quantization: Optional[dict[str, Any]] = None

    @property
    def contract(self) -> InputContract:
        """The input contract every tagging path of this file uses (validated)."""
        return InputContract(sample_rate=self.sample_rate, frontend=dict(self.preprocessing),
                             clip_length=self.clip_length, min_samples=self.min_samples,
                             short_inputs=self.short_inputs, labels=self.label_map, task=self.task or "multilabel")

    def to_props(self) -> dict[str, str]:
        values: dict[str, Any] = {CONTRACT_KEY: self.contract.to_dict(),
            "labels": self.label_map.to_dict(), "sample_rate": self.sample_rate, "input": self.input_kind,
            "outputs": list(self.outputs), "preprocessing": self.preprocessing, "task": self.task,
            "clip_length": self.clip_length, "min_samples": self.min_samples, "short_inputs": self.short_inputs,
            "window_frames": self.window_frames, "hop_frames": self.hop_frames, "exporter": self.exporter,
            "opset": self.opset, "arch": self.arch, "config": self.config, "version": self.version,
            "quantization": self.quantization}
        return {METADATA_PREFIX + key: json.dumps(value, default=_json_default) for key, value in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "<onnx>") -> "OnnxMetadata":
        values = {}
        for key, text in props.items():
            if key.startswith(METADATA_PREFIX):
                try:
                    values[key[len(METADATA_PREFIX):]] = json.loads(text)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{source}: metadata entry {key!r} is not valid JSON ({error})") from None
        missing = [k for k in ("labels", "sample_rate", "input") if k not in values]
        if missing:
            raise ValueError(f"{source}: not an ONNX model exported by efficient_tagging (metadata "
                             f"{', '.join(METADATA_PREFIX + k for k in missing)} missing); export it with "
                             f"efficient_tagging.export.export_onnx or experiments/export_onnx.py")
        if values["input"] not in INPUT_KINDS:
            raise ValueError(f"{source}: unknown input kind {values['input']!r} (expected {INPUT_KINDS})")
        try:
            label_map = LabelMap.from_dict(values["labels"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: metadata labels are not a valid label map ({error})") from None
        meta = cls(label_map=label_map, sample_rate=values["sample_rate"],
                   input_kind=values["input"], outputs=tuple(values.get("outputs") or ("logits",)),
                   preprocessing=dict(values.get("preprocessing") or {}), task=values.get("task"),
                   clip_length=values.get("clip_length"), min_samples=values.get("min_samples") or 1024,
                   short_inputs=values.get("short_inputs") or "repeat", window_frames=values.get("window_frames"),
                   hop_frames=values.get("hop_frames"), exporter=values.get("exporter") or "",
                   opset=int(values.get("opset") or 0), arch=values.get("arch"), config=values.get("config") or {},
                   version=values.get("version") or "", quantization=values.get("quantization"))
        try:
            contract = meta.contract  # validates: rate vs frontend rate, positive numbers, rule, task
        except ValueError as error:
            raise ValueError(f"{source}: contradictory metadata: {error}".replace("input contract: ", "")) from None
        if CONTRACT_KEY in values:  # files from 2026-12-07 on: the stored contract must be the one the fields say
            stored = InputContract.from_dict(values[CONTRACT_KEY], f"{source} ({METADATA_PREFIX}{CONTRACT_KEY})")
            for name in ("sample_rate", "clip_length", "min_samples", "short_inputs", "task"):
                if getattr(stored, name) != getattr(contract, name):
                    raise ValueError(f"{source}: contradictory metadata: {METADATA_PREFIX}{CONTRACT_KEY} says {name}="
                                     f"{getattr(stored, name)!r} but {METADATA_PREFIX}{name} says "
                                     f"{getattr(contract, name)!r}")
            if stored.labels is not None and len(stored.labels) != len(label_map):
                raise ValueError(f"{source}: contradictory metadata: {METADATA_PREFIX}{CONTRACT_KEY} has "
                                 f"{len(stored.labels)} labels but {METADATA_PREFIX}labels has {len(label_map)}")
        return meta


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


def _load_onnx_model(path: PathLike, load_weights: bool = True) -> Any:
    onnx = _require("onnx")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file (expected an .onnx model)")
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except Exception as error:  # onnx raises DecodeError / ValueError / ... for files that are not ONNX
        raise ValueError(f"{path} is not a readable ONNX model ({type(error).__name__}: {error})") from None


def read_onnx_metadata(path: PathLike) -> OnnxMetadata:
    """The efficient_tagging metadata of an exported ``.onnx`` file (a clear ValueError if it has none)."""
    model = _load_onnx_model(path, load_weights=False)
    return OnnxMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))


def _set_metadata(model_proto: Any, props: dict[str, str]) -> None:
    kept = [p for p in model_proto.metadata_props if p.key not in props]
    del model_proto.metadata_props[:]
    for prop in kept:
        model_proto.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in props.items():
        model_proto.metadata_props.add(key=key, value=value)


def _write_atomically(model_proto: Any, path: Path) -> Path:
    """Write an ONNX ModelProto to `path` via a temp file in the same folder + rename (no half-written files)."""
    onnx = _require("onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = temporary_file(path)
    os.close(handle)
    try:
        if model_proto.ByteSize() >= 2 ** 31 - 1:
            raise ValueError(f"{path}: the model is larger than 2 GB, the ONNX protobuf limit (external data "
                             f"files are not supported by this exporter)")
        onnx.save(model_proto, temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return path
