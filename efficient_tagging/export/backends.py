"""Which engine computes a tagger's logits: PyTorch, ONNX Runtime or OpenVINO, chosen automatically.

`use_backend(tagger, "auto")` gives a PyTorch `AudioTagger` the fastest correct backend installed
for its device: on the CPU, a student's spectrogram graph exported once to ONNX and run by ONNX
Runtime (if installed), else the PyTorch fast path. OpenVINO (a little faster still) is used when
named: with it loaded, this project's full test process crashed (segfault) at a later subprocess
start, reproducibly in the suite but not in isolation, so it is not chosen automatically until
that is understood. The frontend stays the
tagger's own (PyTorch), so every backend sees the same spectrogram; the backends differ only in
float rounding (parity tests: same top-5, |delta p| <= 1e-4).

The export is cached in the model cache (`<cache>/compiled/`), keyed by the weights' hash, the
input contract, torch's version and the runtime's version: exported once per model and machine,
said once, safe against a second process exporting the same model (a lock; the file is renamed
into place whole). Long inputs, tags over time, streaming and embeddings keep the PyTorch model
(they need its features or its windows); `forward` -- the one-pass logits of a file or an array --
runs the backend.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..hub import cache_dir as default_cache_dir
from ..locking import FileLock
from ..models.factory import state_dict_sha256
from ..models.registry import is_teacher
from ..tagging.tagger import AudioTagger
from .engines import exporter_installed, installed_runtimes, load_engine, runtime_version
from .metadata import PathLike, read_onnx_metadata
from .runtime import SpectrogramModel

logger = logging.getLogger(__name__)

#: what `backend=` accepts; "auto" picks the first installed of AUTO_ORDER that applies
BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
# Measured on CPUs (benchmarks/RESULTS.md, "backends"): OpenVINO >= ONNX Runtime > PyTorch's fast path;
# OpenVINO is left out of auto (see the module docstring).
AUTO_ORDER = ("onnxruntime", "torch")
#: bumped when the exported graph changes meaning (old cached exports are then not reused)
EXPORT_FORMAT = 1


class BackendUnavailable(RuntimeError):
    """A backend that was asked for by name cannot run here (not installed, or not for this model/device)."""


def _why_torch_only(tagger: Any) -> Optional[str]:
    """Why only PyTorch can run this tagger (None: an exported graph can)."""
    if not isinstance(tagger, AudioTagger):
        return f"a {type(tagger).__name__} (ensembles and exported files choose their own engines)"
    if tagger.device.type != "cpu":
        return f"the model runs on {tagger.device} (the ONNX backends here run on the CPU)"
    if is_teacher(tagger.model):
        return "a transformer teacher (fixed-length windows; not exported)"
    return None


def choose_backend(tagger: Any, requested: str = "auto") -> str:
    """The backend `requested` means for `tagger`: "auto" -> the fastest that applies and is installed."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    reason = _why_torch_only(tagger)
    if requested == "torch" or (requested == "auto" and reason is not None):
        return "torch"
    if reason is not None:
        raise BackendUnavailable(f"backend {requested!r} cannot run {reason}; use backend 'torch' or 'auto'")
    installed = installed_runtimes() if exporter_installed() else []
    if requested == "auto":
        return next(name for name in AUTO_ORDER if name == "torch" or name in installed)
    if requested not in installed:
        raise BackendUnavailable(f"backend {requested!r} (or the ONNX exporter) is not installed here (pip install "
                                 f"\"efficient_tagging[{'openvino' if requested == 'openvino' else 'onnx'}]\")")
    return requested


def export_key(tagger: AudioTagger, runtime: str) -> str:
    """What a cached export depends on: the weights, the input contract, torch and the runtime."""
    description = {"weights": state_dict_sha256(tagger.model.state_dict()), "contract": tagger.contract.to_dict(),
                   "torch": torch.__version__, "runtime": [runtime, runtime_version(runtime)],
                   "format": EXPORT_FORMAT}
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def cached_export(tagger: AudioTagger, runtime: str, cache_dir: Optional[PathLike] = None,
                  notify: Callable[[str], None] = logger.info) -> Path:
    """The tagger's spectrogram graph as ONNX in the cache, exported now if it is not there yet.

    A second process exporting the same model waits for the first and reuses its file; a file
    that does not read back as an export of this package is exported again."""
    from .onnx import export_onnx  # the exporter is imported only when something is exported

    folder = Path(default_cache_dir(cache_dir)) / "compiled"
    name = str(getattr(tagger.model, "pretrained_name", None) or getattr(tagger.model, "arch", "model"))
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem)[:40]
    path = folder / f"{stem}-{export_key(tagger, runtime)[:20]}.onnx"
    if _usable(path):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(path.name + ".lock"), "exporting this model", blocking=True):
        if _usable(path):  # exported by the process we waited for
            return path
        notify(f"exporting {name} for {runtime} once (cached in {path})")
        started = time.monotonic()
        export_onnx(tagger, path, with_frontend=False)  # written to a temporary file and renamed
        notify(f"exported in {time.monotonic() - started:.0f} s")
    return path


def _usable(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        read_onnx_metadata(path)
        return True
    except Exception as error:  # a damaged file: exported again
        logger.warning("cached export %s is not usable (%s); exporting again", path, error)
        return False


def use_backend(tagger: Any, backend: str = "auto", *, cache_dir: Optional[PathLike] = None,
                threads: Optional[int] = None, notify: Callable[[str], None] = logger.info) -> str:
    """Make `tagger.forward` run on `backend` ("auto": the fastest installed that applies); returns the
    backend chosen. "torch" leaves the tagger as it is (its PyTorch fast path)."""
    chosen = choose_backend(tagger, backend)
    if chosen == "torch":
        if isinstance(tagger, AudioTagger):
            tagger.compiled_model = None
        return chosen
    path = cached_export(tagger, chosen, cache_dir, notify)
    engine = load_engine(path, chosen, threads=threads,
                         cache_dir=path.parent / f"openvino-{runtime_version('openvino')}"
                         if chosen == "openvino" else None)
    tagger.compiled_model = SpectrogramModel.of_engine(engine)
    return chosen
