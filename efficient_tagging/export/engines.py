"""The runtimes that run this package's ONNX exports: ONNX Runtime and OpenVINO.

An engine loads one exported file and runs it: `run(array) -> logits` (float32 in and out).
Both read the same ONNX file, so a model has one export whichever runtime runs it; the
taggers on top (`runtime.OnnxTagger`, a tagger's compiled model in `backends`) do not care
which engine they hold.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .metadata import PathLike, _require

logger = logging.getLogger(__name__)

#: runtime name -> the Python module that provides it
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def runtime_installed(runtime: str) -> bool:
    return importlib.util.find_spec(RUNTIME_MODULES[runtime]) is not None


def exporter_installed() -> bool:
    """Whether models can be exported here (torch.onnx's dynamo exporter needs onnx and onnxscript)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def installed_runtimes() -> list[str]:
    """The ONNX runtimes importable here, in RUNTIME_MODULES order."""
    return [name for name in RUNTIME_MODULES if runtime_installed(name)]


def runtime_version(runtime: str) -> str:
    return str(getattr(importlib.import_module(RUNTIME_MODULES[runtime]), "__version__", "unknown"))


def _check_threads(threads: Optional[int]) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")


class OnnxRuntimeEngine:
    """An exported model in an ONNX Runtime session. `providers`: execution providers (default CPU);
    `threads`: intra-op threads (default: ONNX Runtime's choice)."""

    runtime = "onnxruntime"

    def __init__(self, path: PathLike, *, providers: Optional[Sequence[Any]] = None,
                 threads: Optional[int] = None) -> None:
        ort = _require("onnxruntime")
        _check_threads(threads)
        self.path = Path(path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        # ONNX Runtime's worker threads busy-wait after every run by default; between runs this
        # process computes the frontend (and the caller's work) in PyTorch on the same cores, and
        # the spinning threads took those cores away (measured: a PyTorch model timed after an ORT
        # run took 2x as long). Sleeping workers cost nothing measurable per run.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = list(providers) if providers else ["CPUExecutionProvider"]
        unknown = [p for p in providers if (p[0] if isinstance(p, tuple) else p) not in available]
        if unknown:
            raise ValueError(f"ONNX Runtime providers {unknown} are not available here (available: {available})")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:
            raise ValueError(f"{self.path}: ONNX Runtime cannot load the model ({error})") from None
        self.input_name = self.session.get_inputs()[0].name
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        width = (outputs.get("logits") or [None])[-1]
        self.output_width: Optional[int] = width if isinstance(width, int) else None

    def describe(self) -> str:
        return f"onnxruntime {runtime_version('onnxruntime')}, providers={self.session.get_providers()}"

    def run(self, array: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {self.input_name: np.ascontiguousarray(array, dtype=np.float32)})[0]


class OpenVinoEngine:
    """An exported model compiled by OpenVINO for the CPU, latency-tuned (one request at a time).

    Inference precision is pinned to f32: on CPUs with native bf16 OpenVINO would otherwise
    compute in bf16 by default, which changes the outputs (a precision path must be asked for).
    `cache_dir`: where OpenVINO keeps its compiled kernels between processes (faster start).
    """

    runtime = "openvino"

    def __init__(self, path: PathLike, *, threads: Optional[int] = None,
                 cache_dir: Optional[PathLike] = None) -> None:
        ov = _require("openvino")
        _check_threads(threads)
        self.path = Path(path)
        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        try:
            self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        except Exception as error:
            raise ValueError(f"{self.path}: OpenVINO cannot load the model ({error})") from None
        self.request = self.compiled.create_infer_request()
        self.input_name = self.compiled.input(0).get_any_name()
        self.output = self.compiled.output("logits")
        width = self.output.get_partial_shape()[-1]
        self.output_width = width.get_length() if width.is_static else None

    def describe(self) -> str:
        return f"openvino {runtime_version('openvino')}, CPU, f32"

    def run(self, array: np.ndarray) -> np.ndarray:
        result = self.request.infer([np.ascontiguousarray(array, dtype=np.float32)])
        return np.array(result[self.output], dtype=np.float32, copy=True)


def load_engine(path: PathLike, runtime: str, *, providers: Optional[Sequence[Any]] = None,
                threads: Optional[int] = None, cache_dir: Optional[PathLike] = None) -> Any:
    """An engine of `runtime` ("onnxruntime" or "openvino") for the exported file at `path`."""
    if runtime == "onnxruntime":
        return OnnxRuntimeEngine(path, providers=providers, threads=threads)
    if runtime == "openvino":
        if providers:
            raise ValueError("providers are ONNX Runtime's; OpenVINO runs on the CPU here")
        return OpenVinoEngine(path, threads=threads, cache_dir=cache_dir)
    raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIME_MODULES)}")
