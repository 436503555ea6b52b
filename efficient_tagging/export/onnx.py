"""ONNX export of taggers, an ONNX Runtime tagger, and int8 static quantization.

**Export** (:func:`export_onnx`). The students (``mn``, ``dymn``) export with a dynamic batch
axis *and* a dynamic time axis: one ``.onnx`` file tags 1 s or 60 min. Two graph kinds:

* ``with_frontend=False``: input ``spectrogram`` (B, 1, n_mels, frames), the model's own input;
  :class:`OnnxTagger` runs the PyTorch frontend in front of it.
* ``with_frontend=True``: input ``waveform`` (B, samples) at the model's sample rate; the mel
  frontend is part of the graph, so the file alone maps audio to tags (any ONNX runtime).

Outputs: ``logits`` (B, C) and, with ``probabilities=True``, also ``probabilities`` (sigmoid; softmax
for a single-label ``task="multiclass"`` checkpoint).

*Exporter and opset.* The default is PyTorch's ``torch.export``-based exporter (``dynamo=True``,
onnxscript) at **opset 18**, its native opset (STFT needs >= 17). It is the one that works for our
models with a dynamic time axis: ``torch.stft`` maps to the ONNX ``STFT`` op (the legacy TorchScript
exporter refuses complex STFT outright), the symbolic shapes keep adaptive pooling, the
squeeze-excitation means and DyMN's context means dynamic, and a wrong specialisation is an error at
export time instead of a silently fixed shape. The legacy exporter (``exporter="torchscript"``) is
kept for spectrogram graphs only (faster to export; it traces, so shape logic that is not plain
tensor-size arithmetic would be frozen -- :func:`export_onnx` checks every export at a second batch
size and length and refuses a graph that does not follow them).

*The frontend in the graph* (:class:`GraphMelFrontend`, equal to ``AugmentMelSTFT`` in eval mode)
computes the pre-emphasis in float32 exactly like the PyTorch frontend (same ops, bit-identical),
then the STFT power spectrum in **float64** (ONNX ``STFT`` on doubles), and the mel filterbank and
log in float32. Why float64: the log-mel of quiet bands is sensitive to rounding (``log(mel + 1e-5)``
amplifies it); a float32 ONNX STFT (ORT's own FFT) differs from torch's by 4.5e-6 in log-mel on the
metro recording, which the mn10 fixture weights turn into 1.8e-5 in the logits, while the float64
STFT differs by 1.2e-6 (torch's own float32 rounding) -- within float32 noise of the model itself.
Rounding the pre-emphasis in float32 matters as much: in float64 it alone moves log-mel by 8.6e-6.
Measured numbers: ``tests/test_onnx_export.py`` and the module's README section.

*DyMN.* Its dynamic convolutions fold the batch into the channel axis (``groups = groups * B``); ONNX
``Conv`` has a fixed ``group`` attribute, so that formulation cannot have a dynamic batch. For export,
each :class:`~efficient_tagging.models.dymn.DynamicConv2d` is swapped (in a copy of the model) for
:class:`BatchFreeDynamicConv2d`, the same function written without the batch in ``group``: a 1x1
convolution is a batched matrix product with each sample's mixed kernel; any other (the depthwise
convolutions) uses linearity of convolution in its kernel -- the K candidate kernels are one static
grouped ``Conv`` and its K outputs are mixed with each sample's attention weights (K times the
depthwise MACs, the model's cheapest layers). Equal to the original within float rounding.

*Teachers.* PaSST/AST are refused (a clear ValueError): with torch 2.11, torch.export cannot keep
their time axis dynamic (it cannot prove the patch-grid reshapes, e.g. ``12 % (12 * time_patches)
!= 0``), and a fixed-length graph would tag inputs shorter than the window unlike PyTorch, which
cuts the positional embeddings to the input. The window logic for teacher graphs in
:class:`OnnxTagger` (metadata ``window_frames``) stays for when the exporter allows it.

*Metadata* (``metadata_props``, keys prefixed ``efficient_tagging.``): label map (JSON), sample rate,
task, preprocessing/frontend settings, clip length, input kind, output names, exporter and opset,
architecture and config, package version; :func:`read_onnx_metadata` reads them back.

**Runner** (:class:`OnnxTagger`): the :class:`~efficient_tagging.tagging.tagger.TaggingMixin` API
(``probabilities``, ``file_probabilities``, ``tag_file``, ``top_k``, ...) on ONNX Runtime; this is
what ``--backend onnx`` of the tagging command uses.

**int8** (:func:`quantize_int8`): ONNX Runtime static quantization, QDQ format, per-channel weights
(int8) and per-tensor activations (uint8), calibrated (min/max) on real audio
(:func:`calibration_waveforms`: windows of recordings plus the embedded demo clips). In waveform
graphs the frontend stays float (its STFT/mel matmul would lose the quiet bands).
:func:`agreement_report` compares the int8 tagger with fp32 (top-5 agreement, mean/max |delta prob|).

Everything here needs the ``onnx`` extra (``pip install efficient_tagging[onnx]``); onnx,
onnxruntime and onnxscript are imported when first used.
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..audio import AudioSource, load_audio
from ..frontends import AugmentMelSTFT, build_frontend
from ..frontends.contract import CONTRACT_KEY, InputContract
from ..labels import LabelMap
from ..locking import temporary_file
from ..models.layers import min_input_frames, sliding_window_starts
from ..tagging.tagger import AudioTagger, BlockFactory, TaggingMixin, check_model_input

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


# --------------------------------------------------------------------------------------
# graph modules
# --------------------------------------------------------------------------------------
class GraphMelFrontend(nn.Module):
    """``AugmentMelSTFT`` (eval mode) in an exportable form: float32 pre-emphasis, float64 STFT.

    Same function as the frontend it is built from (``(x + 4.5) / 5`` of the log-mel of the
    pre-emphasised, centred, reflect-padded STFT power); see the module docstring for why the STFT
    runs in float64. Input (B, samples) float32, output (B, n_mels, frames).
    """

    def __init__(self, frontend: AugmentMelSTFT) -> None:
        super().__init__()
        if not isinstance(frontend, AugmentMelSTFT):
            raise TypeError(f"GraphMelFrontend needs an AugmentMelSTFT frontend, got {type(frontend).__name__}")
        self.n_fft, self.hopsize, self.win_length = int(frontend.n_fft), int(frontend.hopsize), int(frontend.win_length)
        self.register_buffer("window", frontend.window.detach().double().clone(), persistent=False)
        self.register_buffer("mel_basis", frontend.eval_mel_basis.detach().float().clone(), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        waveform = waveform.float()
        emphasised = waveform[:, 1:] - 0.97 * waveform[:, :-1]  # float32, bit-identical to the frontend
        spectrum = torch.stft(emphasised.double(), self.n_fft, hop_length=self.hopsize, win_length=self.win_length,
                              window=self.window, center=True, pad_mode="reflect", normalized=False,
                              onesided=True, return_complex=True)
        power = (spectrum.real.square() + spectrum.imag.square()).float()
        mel = torch.matmul(self.mel_basis, power)
        return ((mel + 1e-5).log() + 4.5) / 5.0


class BatchFreeDynamicConv2d(nn.Module):
    """A DyMN ``DynamicConv2d`` written without the batch in the convolution's ``group`` count.

    Wraps (shares the parameters of) the original module; ``forward(x, ctx)`` is the same function.
    1x1 convolutions (``groups == 1``): a batched matmul with each sample's mixed kernel. Others:
    one static grouped conv with the K candidate kernels, whose outputs are mixed per sample with
    the attention weights (convolution is linear in its kernel).
    """

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor, ctx: Any) -> Tensor:
        c = self.conv
        b = x.shape[0]
        attention = torch.softmax(c.residuals(ctx.h_c.reshape(b, -1)) / c.temperature, dim=-1)  # (B, K)
        kernels, groups = c.num_kernels, c.groups
        if c.kernel_size == 1 and groups == 1 and c.padding == 0:
            mixed = (attention @ c.weight.reshape(kernels, -1)).reshape(b, c.out_channels, c.in_channels)
            if c.stride > 1:
                x = x[:, :, ::c.stride, ::c.stride]
            # (B, 1, O, I) @ (B, F, I, T): no reshape merging F and T, which torch.export could only
            # trace with guards on the time length
            return torch.matmul(mixed.unsqueeze(1), x.transpose(1, 2)).transpose(1, 2)
        per_group = c.out_channels // groups
        weight = c.weight.reshape(kernels, groups, per_group, c.in_channels // groups, c.kernel_size, c.kernel_size)
        weight = weight.transpose(0, 1).reshape(groups * kernels * per_group, c.in_channels // groups,
                                                c.kernel_size, c.kernel_size)
        out = F.conv2d(x, weight, None, c.stride, c.padding, c.dilation, groups)  # (B, g*K*per_group, F', T')
        f, t = out.shape[-2], out.shape[-1]
        out = out.reshape(b, groups, kernels, per_group, f, t)
        out = (out * attention.reshape(b, 1, kernels, 1, 1, 1)).sum(dim=2)
        return out.reshape(b, c.out_channels, f, t)


class AvgPoolAsConv(nn.Module):
    """``nn.AvgPool2d`` (zero padding counted, floor mode) as a depthwise conv with weights 1/(kh*kw).

    Same function; exported because ``torch.export`` turns the pooling output-size formula into
    guards on the parity of the time length (it would only export for one parity), while the
    convolution's size formula stays symbolic.
    """

    def __init__(self, pool: nn.AvgPool2d) -> None:
        super().__init__()
        pair = nn.modules.utils._pair
        self.kernel_size, self.stride, self.padding = pair(pool.kernel_size), pair(pool.stride), pair(pool.padding)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        weight = torch.full((channels, 1, *self.kernel_size), 1.0 / (self.kernel_size[0] * self.kernel_size[1]),
                            dtype=x.dtype, device=x.device)
        return F.conv2d(x, weight, None, self.stride, self.padding, 1, channels)


def _pool_as_conv(module: nn.Module) -> bool:
    return (isinstance(module, nn.AvgPool2d) and module.count_include_pad and not module.ceil_mode
            and module.divisor_override is None)


def exportable_model(model: nn.Module) -> nn.Module:
    """The model itself, or an eval-mode copy in an exportable form of the same function.

    DyMN: dynamic convs become :class:`BatchFreeDynamicConv2d`, its context generator's strided
    average pools :class:`AvgPoolAsConv`. Other models are returned unchanged.
    """
    from ..models.dymn import DynamicConv2d

    if not any(isinstance(m, DynamicConv2d) for m in model.modules()):
        return model
    clone = copy.deepcopy(model).eval()
    for name, module in list(clone.named_modules()):
        replacement: Optional[nn.Module] = None
        if isinstance(module, DynamicConv2d):
            replacement = BatchFreeDynamicConv2d(module)
        elif _pool_as_conv(module):
            replacement = AvgPoolAsConv(module)
        if replacement is not None:
            parent_name, _, child = name.rpartition(".")
            parent = clone.get_submodule(parent_name) if parent_name else clone
            setattr(parent, child, replacement)
    return clone


def _global_pools_as_means(exported: Any) -> int:
    """Rewrite `adaptive_avg_pool2d` nodes that pool whole axes (output size 1 per pooled axis, the
    input size on the others -- DyMN's ``(None, 1)`` / ``(1, None)`` profiles) into `mean`.

    The same function; needed because the ATen decomposition of adaptive pooling turns a symbolic
    input length into a fixed kernel (the example's length), which would be wrong at any other
    length. Returns the number of nodes rewritten.
    """
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    aten = torch.ops.aten
    targets = (aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default)
    rewritten = 0
    graph = exported.graph_module.graph
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in targets:
            continue
        source, size = node.args[0], list(node.args[1])
        shape = source.meta["val"].shape
        axes: list[int] = []
        for axis, out in zip((len(shape) - 2, len(shape) - 1), size):
            if statically_known_true(out == shape[axis]):
                continue  # this axis is kept as it is
            if isinstance(out, int) and out == 1:
                axes.append(axis)
                continue
            axes = []
            break
        if axes:
            node.target, node.args, node.kwargs = aten.mean.dim, (source, axes, True), {}
            rewritten += 1
    if rewritten:
        graph.lint()
        exported.graph_module.recompile()
    return rewritten


class _ExportGraph(nn.Module):
    """What goes into the ONNX file: [frontend ->] model -> logits [, probabilities]."""

    def __init__(self, model: nn.Module, frontend: Optional[nn.Module], probabilities: bool,
                 task: Optional[str]) -> None:
        super().__init__()
        self.model = model
        self.frontend = frontend
        self.probabilities = probabilities
        self.softmax = task == "multiclass"

    def _outputs(self, spectrogram: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        logits = self.model(spectrogram)[0]
        if not self.probabilities:
            return logits
        return logits, (torch.softmax(logits, dim=-1) if self.softmax else torch.sigmoid(logits))


class _WaveformGraph(_ExportGraph):
    def forward(self, waveform: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        assert self.frontend is not None
        return self._outputs(self.frontend(waveform).unsqueeze(1))


class _SpectrogramGraph(_ExportGraph):
    def forward(self, spectrogram: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        return self._outputs(spectrogram)


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


# --------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------
def _as_tagger(tagger_or_model: Union[AudioTagger, nn.Module]) -> AudioTagger:
    if isinstance(tagger_or_model, AudioTagger):
        return tagger_or_model
    if isinstance(tagger_or_model, nn.Module):
        return AudioTagger(tagger_or_model, label_map=getattr(tagger_or_model, "label_map", None))
    raise TypeError(f"export_onnx needs an AudioTagger or a model (nn.Module), got {type(tagger_or_model).__name__}")


def _is_teacher(model: nn.Module) -> bool:
    return hasattr(model, "needs_sliding_windows")


def _audio_like(batch: int, samples: int, sample_rate: int, seed: int = 0, audio: Optional[Tensor] = None) -> Tensor:
    """(batch, samples) of sound for the export checks: stretches of `audio` (a waveform at
    `sample_rate`, tiled if short) or embedded demo clips (tones, noises, events).

    Not white noise: a network with dynamic parts (DyMN's Dy-ReLU and attention) can be far outside
    its operating range on a flat noise spectrogram, where its outputs explode and float rounding
    alone makes two correct implementations disagree, so the check would test the input, not the export.
    """
    if audio is not None:
        audio = torch.as_tensor(audio).detach().float().cpu().reshape(-1)
        if audio.numel() == 0:
            raise ValueError("check_audio is empty")
        audio = audio.repeat(-(-(samples + batch * 997 * (seed + 1)) // audio.numel()))
        return torch.stack([audio[(i + seed) * 997 * (seed + 1):][:samples] for i in range(batch)])
    from ..data.demo import synthesise_clip

    rng = np.random.default_rng(seed)
    seconds = samples / sample_rate
    clips = [torch.from_numpy(synthesise_clip(rng, sample_rate, seconds)[0])[:samples] for _ in range(batch)]
    return torch.stack([F.pad(clip, (0, samples - clip.numel())) for clip in clips]).float()


def _example_spectrogram(tagger: AudioTagger, frames: int, batch: int = 2, audio: Optional[Tensor] = None) -> Tensor:
    waveform = _audio_like(batch, tagger.sample_rate * 4, tagger.sample_rate, audio=audio)
    with torch.no_grad():
        spectrogram = tagger.frontend(waveform)
    if spectrogram.dim() == 3:
        spectrogram = spectrogram.unsqueeze(1)
    if spectrogram.shape[-1] < frames:
        spectrogram = spectrogram.repeat(1, 1, 1, -(-frames // spectrogram.shape[-1]))
    return spectrogram[..., :frames].contiguous()


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


def export_onnx(tagger_or_model: Union[AudioTagger, nn.Module], path: PathLike, *, with_frontend: bool = False,
                probabilities: bool = False, opset: int = DEFAULT_OPSET, exporter: str = "dynamo",
                label_map: Optional[LabelMap] = None, example_seconds: float = 2.0,
                check_audio: Optional[Tensor] = None) -> Path:
    """Export a tagger (or a bare model, wrapped with its frontend) to ONNX; returns `path`.

    Dynamic batch and time axes (students; teachers are refused). `with_frontend=True`
    puts the mel frontend into the graph (input: waveform (B, samples) at the tagger's sample
    rate), otherwise the input is the spectrogram (B, 1, n_mels, frames). `probabilities=True`
    adds a `probabilities` output. `opset` >= 17; `exporter`: "dynamo" (default, torch.export) or
    "torchscript" (legacy; students only -- the frontend, if asked for, is always exported with
    dynamo). The file is written atomically; the label map, sample rate, task, preprocessing and
    export settings go into its metadata.

    The model and the frontend are exported as two graphs and joined (`onnx.compose`): the same
    graph as one export, and :func:`add_frontend` can turn an existing spectrogram export into a
    waveform one in seconds (exporting a MobileNet with symbolic shapes takes a minute).

    Every export is checked with ONNX Runtime at a batch size and length other than the example's
    (outputs must follow them and agree with PyTorch); a failure raises RuntimeError. The example
    and the check run on `check_audio` (a waveform at the tagger's sample rate; stretches of it)
    or, by default, on embedded demo clips -- give real audio of the model's domain for a model
    that is far outside its range on synthetic tones.
    """
    _require("onnx")
    _require("onnxruntime")
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET} (ONNX STFT), got {opset!r}")
    if exporter == "dynamo" or with_frontend:
        _require("onnxscript")
    tagger = _as_tagger(tagger_or_model)
    if label_map is not None:
        if len(label_map) != tagger.num_classes:
            raise ValueError(f"label map has {len(label_map)} classes but the model outputs {tagger.num_classes}")
        tagger.label_map = label_map
    model = tagger.model.eval()
    teacher = _is_teacher(model)
    if teacher:
        # Measured with torch 2.11: torch.export cannot prove PaSST's patch-grid reshapes for a
        # dynamic time axis (guards such as 12 % (12 * time_patches) != 0), and a fixed-length graph
        # would tag inputs shorter than the window differently from PyTorch (their positional
        # embeddings are cut to the input). Refused rather than exported wrong.
        raise ValueError(f"{type(model).__name__}: ONNX export of the transformer teachers is not supported "
                         f"(torch.export cannot keep their time axis dynamic); export a student (mn / dymn)")
    if with_frontend:
        _check_graph_frontend(tagger.frontend)
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"output path should end in .onnx, got {path}")

    output_names = ["logits", "probabilities"] if probabilities else ["logits"]
    window_frames = hop_frames = None  # metadata of teacher graphs (none are exported; see the module doc)
    hop = int(getattr(tagger.frontend, "hopsize", 0) or 320)
    n_mels = int(getattr(model, "input_dim_f", None) or getattr(tagger.frontend, "n_mels", None) or 128)
    min_frames = min_input_frames(model, n_mels)
    min_samples = int(tagger.min_samples)
    if min_samples < (min_frames - 1) * hop + 1:  # the contract covers the graph (models.factory.model_min_samples)
        raise RuntimeError(f"{type(model).__name__}: the tagger's shortest input ({min_samples} samples) is below the "
                           f"graph's ({(min_frames - 1) * hop + 1}); build the tagger with AudioTagger(model)")
    frames = max(min_frames + 1, int(round(example_seconds * tagger.sample_rate / hop)))
    time_min, time_max = min_frames, None
    graph_model = exportable_model(model)
    spectrogram_graph = _SpectrogramGraph(graph_model, None, probabilities, tagger.task).eval()
    example = _example_spectrogram(tagger, frames, audio=check_audio)
    model_proto = _export_graph(spectrogram_graph, example, "spectrogram", output_names,
                                {0: ("batch", 1, None), 3: ("frames", time_min, time_max)}, opset, exporter,
                                f"{type(model).__name__} (spectrogram input)")
    reference: nn.Module = spectrogram_graph
    time_axis = 3
    if with_frontend:
        model_proto = _attach_frontend(model_proto, tagger.frontend, min_samples)
        reference = _WaveformGraph(graph_model, GraphMelFrontend(tagger.frontend), probabilities, tagger.task).eval()
        example = _audio_like(2, max(min_samples + hop, int(round(example_seconds * tagger.sample_rate))),
                              tagger.sample_rate, audio=check_audio)
        time_axis = 1

    from .. import __version__

    kind = "waveform" if with_frontend else "spectrogram"
    metadata = OnnxMetadata(
        label_map=tagger.label_map, sample_rate=int(tagger.sample_rate), input_kind=kind, outputs=tuple(output_names),
        preprocessing=dict(tagger.contract.frontend), task=tagger.task, clip_length=tagger.clip_length,
        min_samples=min_samples, short_inputs=tagger.short_inputs,
        window_frames=window_frames, hop_frames=hop_frames, exporter=exporter, opset=opset,
        arch=getattr(model, "arch", None) or type(model).__name__,
        config=dict(getattr(model, "config", None) or {}), version=__version__)
    _set_metadata(model_proto, metadata.to_props())
    model_proto.doc_string = (f"efficient_tagging {type(model).__name__}: {kind} -> {', '.join(output_names)} "
                              f"({len(tagger.label_map)} classes, {tagger.sample_rate} Hz)")
    _validate_export(model_proto, reference, example, time_axis, teacher, str(path))
    _write_atomically(model_proto, path)
    logger.info("exported %s (%s input, %s exporter, opset %d) to %s", type(model).__name__, kind, exporter, opset, path)
    return path


def add_frontend(spectrogram_path: PathLike, out_path: PathLike, check_audio: Optional[Tensor] = None) -> Path:
    """Turn an exported spectrogram graph into a waveform graph by putting the mel frontend in front.

    The frontend comes from the file's stored preprocessing (it must be the mel frontend); only the
    frontend is exported (a few seconds), then joined to the model graph. The result is what
    `export_onnx(..., with_frontend=True)` writes. Returns `out_path` (written atomically).
    The joined graph is checked on `check_audio` (as in :func:`export_onnx`; default: demo clips).
    """
    _require("onnxscript")
    spectrogram_path, out_path = Path(spectrogram_path), Path(out_path)
    meta = read_onnx_metadata(spectrogram_path)
    if meta.input_kind != "spectrogram":
        raise ValueError(f"{spectrogram_path} already takes waveforms (the frontend is in the graph)")
    if meta.window_frames is not None:
        raise ValueError(f"{spectrogram_path} is a transformer teacher graph: its sliding windows run outside the "
                         f"graph, so the frontend cannot go into it")
    if out_path.suffix.lower() != ".onnx":
        raise ValueError(f"output path should end in .onnx, got {out_path}")
    frontend = build_frontend(meta.preprocessing)
    _check_graph_frontend(frontend)
    model_proto = _attach_frontend(_load_onnx_model(spectrogram_path), frontend, meta.min_samples)
    props = meta.to_props()
    props[METADATA_PREFIX + "input"] = json.dumps("waveform")
    _set_metadata(model_proto, props)
    # check: the joined graph equals the PyTorch frontend followed by the (ONNX) model graph
    ort = _require("onnxruntime")
    session = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    spectrogram_session = ort.InferenceSession(str(spectrogram_path), providers=["CPUExecutionProvider"])
    hop = int(getattr(frontend, "hopsize", 320))
    probe = _audio_like(3, meta.min_samples + 7 * hop + 5, meta.sample_rate, seed=1, audio=check_audio)
    with torch.no_grad():
        spectrogram = frontend(probe).unsqueeze(1)
    ours = session.run(["logits"], {"waveform": probe.numpy()})[0]
    theirs = spectrogram_session.run(["logits"], {spectrogram_session.get_inputs()[0].name: spectrogram.numpy()})[0]
    difference = float(np.abs(ours - theirs).max())
    if ours.shape != theirs.shape or not difference <= 1e-3 * (1.0 + float(np.abs(theirs).max())):
        raise RuntimeError(f"{out_path}: the graph with the frontend differs from frontend + model graph by "
                           f"{difference:.3g} (shapes {ours.shape} vs {theirs.shape})")
    _write_atomically(model_proto, out_path)
    logger.info("wrote %s: %s with the mel frontend in the graph", out_path, spectrogram_path)
    return out_path


def _check_graph_frontend(frontend: nn.Module) -> None:
    if not isinstance(frontend, AugmentMelSTFT) or frontend.training:
        raise ValueError(f"the frontend in the graph must be the mel frontend (AugmentMelSTFT in eval mode), not "
                         f"{type(frontend).__name__}; export without the frontend and let OnnxTagger run it")


class _FrontendGraph(nn.Module):
    def __init__(self, frontend: AugmentMelSTFT) -> None:
        super().__init__()
        self.frontend = GraphMelFrontend(frontend)

    def forward(self, waveform: Tensor) -> Tensor:
        return self.frontend(waveform).unsqueeze(1)


def _export_graph(module: nn.Module, example: Tensor, input_name: str, output_names: list[str],
                  axes: dict[int, tuple[str, int, Optional[int]]], opset: int, exporter: str, what: str) -> Any:
    """One ONNX ModelProto for `module(example)` with the given dynamic axes {axis: (name, min, max)}."""
    onnx = _require("onnx")
    try:
        with _quiet_exporter():
            if exporter == "dynamo":
                # torch.export first (not torch.onnx.export's fallbacks, which may specialise a dynamic
                # axis to the example's size instead of failing), then the ONNX translation
                dims = {axis: torch.export.Dim(name, min=low, **({} if high is None else {"max": high}))
                        for axis, (name, low, high) in axes.items()}
                exported = torch.export.export(module, (example,), dynamic_shapes={input_name: dims})
                _global_pools_as_means(exported)
                program = torch.onnx.export(exported, (example,), None, dynamo=True, opset_version=opset,
                                            input_names=[input_name], output_names=output_names,
                                            external_data=False)
                model_proto = program.model_proto
            else:
                buffer = io.BytesIO()
                dynamic_axes = {input_name: {axis: name for axis, (name, _, _) in axes.items()}}
                dynamic_axes.update({name: {0: "batch"} for name in output_names})
                torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                                  input_names=[input_name], output_names=output_names, dynamic_axes=dynamic_axes)
                model_proto = onnx.load_from_string(buffer.getvalue())
    except Exception as error:
        raise RuntimeError(f"ONNX export of {what} (exporter {exporter}, opset {opset}) failed: "
                           f"{type(error).__name__}: {str(error).strip()[:2000]}") from error
    _name_dims(model_proto, {axis: name for axis, (name, _, _) in axes.items()})
    return model_proto


def _name_dims(model_proto: Any, names: dict[int, str]) -> None:
    """Give the input's symbolic dimensions readable names (batch, frames, samples) throughout the graph."""
    graph = model_proto.graph
    renames = {}
    for axis, name in names.items():
        dim = graph.input[0].type.tensor_type.shape.dim[axis]
        if dim.dim_param and dim.dim_param != name:
            renames[dim.dim_param] = name
    if not renames:
        return
    for value in itertools.chain(graph.input, graph.output, graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def _attach_frontend(model_proto: Any, frontend: AugmentMelSTFT, min_samples: int) -> Any:
    """`model_proto` (spectrogram input) with the mel frontend graph in front of it (waveform input)."""
    onnx = _require("onnx")
    from onnx import compose

    opset = next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), DEFAULT_OPSET)
    hop = int(frontend.hopsize)
    example = 0.1 * torch.randn(2, min_samples + 50 * hop + 17, generator=torch.Generator().manual_seed(0))
    front = _export_graph(_FrontendGraph(frontend).eval(), example, "waveform", ["frontend_output"],
                          {0: ("batch", 1, None), 1: ("samples", min_samples, None)}, opset, "dynamo", "the mel frontend")
    front = compose.add_prefix(front, "frontend/", rename_inputs=False, rename_outputs=False)
    ir_version = max(front.ir_version, model_proto.ir_version)
    front.ir_version = model_proto.ir_version = ir_version
    spectrogram_input = model_proto.graph.input[0].name
    try:
        merged = compose.merge_models(front, model_proto, io_map=[("frontend_output", spectrogram_input)])
    except Exception as error:
        raise RuntimeError(f"joining the frontend graph to the model graph failed: {error}") from error
    versions: dict[str, int] = {}
    for entry in merged.opset_import:  # merge_models lists the default domain once per graph
        versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    del merged.opset_import[:]
    for domain, version in versions.items():
        merged.opset_import.add(domain=domain, version=version)
    onnx.checker.check_model(merged)
    return merged


def _validate_export(model_proto: Any, graph: nn.Module, example: Tensor, time_axis: int,
                     teacher: bool, source: str) -> None:
    """Run the graph in ONNX Runtime at another batch size and length; it must follow them and match torch."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    length = example.shape[time_axis]
    length = length - max(1, length // 7) if teacher else length + max(1, length // 3)
    probe = torch.cat([example, example[:1]])
    probe = probe.narrow(time_axis, 0, length) if teacher else torch.cat(
        [probe, probe.narrow(time_axis, 0, length - example.shape[time_axis])], dim=time_axis)
    with torch.no_grad():
        reference = graph(probe)
    reference = reference if isinstance(reference, tuple) else (reference,)
    outputs = session.run(None, {session.get_inputs()[0].name: probe.numpy()})
    for name, ours, theirs in zip([o.name for o in session.get_outputs()], outputs, reference):
        if tuple(ours.shape) != tuple(theirs.shape):
            raise RuntimeError(f"{source}: exported graph gives {name} of shape {tuple(ours.shape)} for input "
                               f"{tuple(probe.shape)}, PyTorch {tuple(theirs.shape)}: a shape was frozen at export")
        difference = float(np.abs(ours - theirs.numpy()).max())
        scale = 1.0 + float(theirs.abs().max())
        if not difference <= 1e-3 * scale:
            raise RuntimeError(f"{source}: exported graph differs from PyTorch by {difference:.3g} in {name} for "
                               f"input {tuple(probe.shape)}: the export is wrong")
        logger.debug("export check %s: input %s, max |delta %s| %.3g", source, tuple(probe.shape), name, difference)


# --------------------------------------------------------------------------------------
# ONNX Runtime tagger
# --------------------------------------------------------------------------------------
class _SpectrogramModel:
    """`model(spectrogram) -> (logits, empty embedding)` of a spectrogram graph, the call
    `forward_spectrogram` makes on PyTorch models (teacher graphs run their windows inside)."""

    def __init__(self, tagger: "OnnxTagger") -> None:
        self.tagger = tagger

    def __call__(self, spectrogram: Tensor) -> tuple[Tensor, Tensor]:
        if spectrogram.dim() == 3:
            spectrogram = spectrogram.unsqueeze(1)
        logits = self.tagger.spectrogram_logits(spectrogram.detach().float().cpu().contiguous())
        return logits, logits.new_zeros(logits.shape[0], 0)


class OnnxTagger(TaggingMixin):
    """An exported model run by ONNX Runtime, with :class:`AudioTagger`'s tagging API.

    `forward(waveform (B, samples)) -> logits (B, C)` (also `tagger(waveform)`); `probabilities`,
    `file_probabilities`, `tag_waveform`, `tag_file`, `top_k` come from `TaggingMixin`, with the
    same input rules (NaN/Inf refused, short inputs repeated/padded to the trained clip length).
    Waveform graphs take the audio directly; for spectrogram graphs the PyTorch frontend of the
    stored preprocessing runs first. Label map, sample rate, task, clip length come from the
    file's metadata. `providers`: ONNX Runtime execution providers (default CPU); `threads`:
    intra-op threads (default: ONNX Runtime's choice).

    Long inputs (`stream_logits`, files longer than `chunk_seconds`): the graphs are dynamic in
    time, so the blocks are concatenated and the model runs once over the whole input -- exact
    (no window approximation, unlike `AudioTagger`'s bounded-memory path), but memory grows with
    the length (about 2.5 GB per 10 min of audio for mn10 on CPU). Teacher graphs (fixed longest
    window) run the windows of `sliding_window_forward` and average their logits.
    """

    def __init__(self, path: PathLike, *, providers: Optional[Sequence[Any]] = None,
                 threads: Optional[int] = None) -> None:
        ort = _require("onnxruntime")
        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
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
        meta = self.metadata
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        width = (outputs.get("logits") or [None])[-1]
        # the label map must name every output: a file whose metadata says otherwise is refused
        self.contract = meta.contract.validate(str(self.path), num_outputs=width if isinstance(width, int) else None)
        self.num_classes = len(meta.label_map)
        self.preprocessing = dict(meta.preprocessing)
        self.input_kind = meta.input_kind
        self.input_name = self.session.get_inputs()[0].name
        self.frontend: Optional[nn.Module] = (build_frontend(meta.preprocessing).eval()
                                              if meta.input_kind == "spectrogram" else None)
        # Spectrogram graphs also serve the windowed and streaming paths, which run the model on
        # slices of one continuous spectrogram (tagging/windows.py): `model(spectrogram)` like a
        # PyTorch model. Waveform graphs have no spectrogram input, so no `model`.
        self.model: Optional[_SpectrogramModel] = (_SpectrogramModel(self) if meta.input_kind == "spectrogram"
                                                   else None)

    def __repr__(self) -> str:
        return (f"OnnxTagger({str(self.path)!r}, input={self.input_kind}, classes={self.num_classes}, "
                f"sample_rate={self.sample_rate}, providers={self.session.get_providers()})")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # inputs and outputs live on the host; ORT's providers place the work

    def to(self, *args: Any, **kwargs: Any) -> "OnnxTagger":
        """No-op for API compatibility with AudioTagger: the providers given at construction decide."""
        return self

    def eval(self) -> "OnnxTagger":
        return self

    def __call__(self, waveform: Tensor) -> Tensor:
        return self.forward(waveform)

    def _run(self, array: np.ndarray) -> Tensor:
        logits = self.session.run(["logits"], {self.input_name: np.ascontiguousarray(array, dtype=np.float32)})[0]
        return torch.from_numpy(logits)

    def forward(self, waveform: Tensor) -> Tensor:
        """Logits (B, C) of a waveform batch (B, samples) at `sample_rate`: one pass over the whole input."""
        if not isinstance(waveform, Tensor):
            waveform = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
        if waveform.dim() == 1:
            waveform = waveform.reshape(1, -1)
        check_model_input(waveform, self.min_samples, self.sample_rate)
        waveform = waveform.detach().float().cpu()
        if self.frontend is None:
            return self._run(waveform.numpy())
        with torch.no_grad():
            spectrogram = self.frontend(waveform)
        if spectrogram.dim() == 3:
            spectrogram = spectrogram.unsqueeze(1)
        return self.spectrogram_logits(spectrogram)

    def spectrogram_logits(self, spectrogram: Tensor) -> Tensor:
        """Logits of a (B, 1, n_mels, frames) spectrogram (spectrogram graphs; teachers in windows)."""
        if self.input_kind != "spectrogram":
            raise ValueError(f"{self.path} takes waveforms, not spectrograms")
        window = self.metadata.window_frames
        frames = spectrogram.shape[-1]
        if window is None or frames <= window:
            return self._run(spectrogram.numpy())
        hop = self.metadata.hop_frames or max(1, window // 4)
        starts = sliding_window_starts(frames, window, hop)
        total = sum(self._run(spectrogram[..., s:s + window].contiguous().numpy()) for s in starts)
        return total / len(starts)

    @torch.no_grad()
    def stream_logits(self, make_blocks: BlockFactory) -> Tensor:
        blocks = [block.reshape(-1).float() for block in make_blocks()]
        if not blocks:
            raise ValueError("no audio to tag: the waveform is empty")
        return self.forward(torch.cat(blocks).reshape(1, -1))


def max_logit_difference(torch_tagger: Union[AudioTagger, nn.Module], onnx_tagger: Union[OnnxTagger, PathLike],
                         waveform: Tensor) -> float:
    """Max |logit(ONNX Runtime) - logit(PyTorch)| over a waveform (samples,) or batch (B, samples)."""
    tagger = _as_tagger(torch_tagger)
    runner = onnx_tagger if isinstance(onnx_tagger, OnnxTagger) else OnnxTagger(onnx_tagger)
    waveform = waveform.reshape(1, -1) if waveform.dim() == 1 else waveform
    with torch.no_grad():
        expected = tagger(waveform.to(tagger.device)).float().cpu()
    return float((runner(waveform) - expected).abs().max())


# --------------------------------------------------------------------------------------
# int8
# --------------------------------------------------------------------------------------
def default_recording() -> Optional[Path]:
    """The shared 10-s recording (``metro_station-paris.wav``) next to a source checkout, if present."""
    candidate = Path(__file__).resolve().parents[3] / "shared" / "data" / "metro_station-paris.wav"
    return candidate if candidate.is_file() else None


def calibration_waveforms(sample_rate: int, audio: Iterable[AudioSource] = (), *, window_seconds: float = 2.0,
                          hop_seconds: float = 1.0, demo_clips: int = 8, demo_seconds: float = 2.0,
                          seed: int = 0) -> list[Tensor]:
    """Calibration audio at `sample_rate`: overlapping windows of each file in `audio` plus `demo_clips`
    clips of the embedded demo set (synthetic AudioSet classes, deterministic)."""
    from ..data.demo import synthesise_clip

    window, hop = int(round(window_seconds * sample_rate)), max(1, int(round(hop_seconds * sample_rate)))
    waveforms: list[Tensor] = []
    for source in audio:
        samples = load_audio(source, sample_rate)
        if samples.numel() <= window:
            waveforms.append(samples)
            continue
        waveforms.extend(samples[start:start + window] for start in range(0, samples.numel() - window + 1, hop))
    rng = np.random.default_rng(seed)
    for _ in range(demo_clips):
        clip, _ = synthesise_clip(rng, sample_rate, demo_seconds)
        waveforms.append(torch.from_numpy(clip))
    if not waveforms:
        raise ValueError("no calibration audio: give recordings or demo_clips > 0")
    return waveforms


class _CalibrationReader:
    """ONNX Runtime `CalibrationDataReader`: one input dict per calibration waveform."""

    def __init__(self, inputs: list[np.ndarray], input_name: str) -> None:
        self.inputs, self.input_name, self.position = inputs, input_name, 0

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self.position >= len(self.inputs):
            return None
        self.position += 1
        return {self.input_name: self.inputs[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0

    def __len__(self) -> int:
        return len(self.inputs)


def _frontend_nodes(model_proto: Any) -> list[str]:
    """Names of the nodes that compute the first Conv's input: the mel frontend of a waveform graph."""
    producers = {output: node for node in model_proto.graph.node for output in node.output}
    first_conv = next((node for node in model_proto.graph.node if node.op_type == "Conv"), None)
    if first_conv is None:
        return []
    seen: set[str] = set()
    stack = [first_conv.input[0]]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(node.input)
    return sorted(seen)


def _io_layer_nodes(model_proto: Any, frontend: set[str]) -> list[str]:
    """The first Conv after the frontend and the last Gemm/MatMul (the classifier) of a graph."""
    nodes = [node for node in model_proto.graph.node if node.name not in frontend]
    first_conv = next((node.name for node in nodes if node.op_type == "Conv"), None)
    last_linear = next((node.name for node in reversed(nodes) if node.op_type in ("Gemm", "MatMul")), None)
    return [name for name in (first_conv, last_linear) if name]


def quantize_int8(fp32_path: PathLike, out_path: PathLike, calibration: Sequence[Tensor], *,
                  per_channel: bool = True, calibrate_method: str = "percentile", reduce_range: bool = False,
                  exclude_frontend: bool = True, float_io_layers: bool = True) -> Path:
    """int8 copy of an exported model: ONNX Runtime static quantization, QDQ, per-channel weights.

    `calibration`: waveforms (samples,) at the model's sample rate (see :func:`calibration_waveforms`);
    spectrogram graphs are calibrated on their frontend output. Weights int8 (per output channel),
    activations uint8 (per tensor; range = the 0.001-99.999 percentiles over the calibration set,
    or "minmax" / "entropy"). In waveform graphs the frontend nodes stay float (`exclude_frontend`);
    `float_io_layers` keeps the first convolution and the classifier float (common practice: they
    are a tiny share of the MACs and the most sensitive layers). The metadata of the fp32 file is
    copied, with a `quantization` entry; the file is written atomically.

    Measured (mn10 trained on 12 synthetic sound classes, 13 test inputs incl. the metro recording):
    these defaults give top-1 agreement 100 %, mean |delta prob| 4.3e-3; plain min/max with every
    layer quantized 85 % and 5.1e-3. Random-weight networks are no test of int8: their
    activations are chaotic in the quantization noise (top-1 agreement ~40 %).
    """
    _require("onnx")
    quantization = _require("onnxruntime.quantization")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    methods = {"minmax": quantization.CalibrationMethod.MinMax, "entropy": quantization.CalibrationMethod.Entropy,
               "percentile": quantization.CalibrationMethod.Percentile}
    if calibrate_method not in methods:
        raise ValueError(f"calibrate_method must be one of {', '.join(methods)}, got {calibrate_method!r}")
    if not calibration:
        raise ValueError("quantize_int8 needs calibration waveforms (real audio: see calibration_waveforms)")
    if out_path.resolve() == fp32_path.resolve():
        raise ValueError(f"the int8 model would overwrite its fp32 source {fp32_path}")
    runner = OnnxTagger(fp32_path)
    inputs = []
    for waveform in calibration:
        waveform = runner.contract.prepare(waveform)
        if runner.frontend is None:
            inputs.append(waveform.numpy())
        else:
            with torch.no_grad():
                spectrogram = runner.frontend(waveform)
            inputs.append((spectrogram.unsqueeze(1) if spectrogram.dim() == 3 else spectrogram).numpy())
    model_proto = _load_onnx_model(fp32_path)
    excluded = _frontend_nodes(model_proto) if exclude_frontend and runner.input_kind == "waveform" else []
    if float_io_layers:
        excluded += _io_layer_nodes(model_proto, set(excluded))
    settings = {"format": "QDQ", "per_channel": per_channel, "weight_type": "int8", "activation_type": "uint8",
                "calibrate_method": calibrate_method, "calibration_inputs": len(inputs), "reduce_range": reduce_range,
                "float_io_layers": float_io_layers,
                "float_nodes": len(excluded), "onnxruntime": _require("onnxruntime").__version__}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=out_path.parent) as workdir:
        quantized = Path(workdir) / "model.int8.onnx"
        try:
            with _quiet_exporter():
                quantization.quantize_static(
                    str(fp32_path), str(quantized), _CalibrationReader(inputs, runner.input_name),
                    quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                    activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                    nodes_to_exclude=excluded, calibrate_method=methods[calibrate_method],
                    extra_options={"CalibTensorRangeSymmetric": False})
        except Exception as error:
            raise RuntimeError(f"int8 quantization of {fp32_path} failed: {type(error).__name__}: {error}") from error
        int8_proto = _load_onnx_model(quantized)
    meta = runner.metadata
    props = dict(meta.to_props())
    props[METADATA_PREFIX + "quantization"] = json.dumps(settings)
    _set_metadata(int8_proto, props)
    _write_atomically(int8_proto, out_path)
    logger.info("wrote int8 model %s (%d calibration inputs, %d float frontend nodes)", out_path, len(inputs),
                len(excluded))
    return out_path


@dataclass(frozen=True)
class AgreementRow:
    name: str
    top_k_same: bool  # the same set of top-k classes
    top_k_overlap: float  # fraction of the fp32 top-k also in the int8 top-k
    top1_same: bool
    mean_abs_delta: float
    max_abs_delta: float


@dataclass(frozen=True)
class AgreementReport:
    """How closely a quantized tagger follows its fp32 original, per input and overall."""

    k: int
    rows: tuple[AgreementRow, ...]

    @property
    def top_k_agreement(self) -> float:
        """Fraction of inputs whose top-k class sets are identical."""
        return sum(r.top_k_same for r in self.rows) / len(self.rows)

    @property
    def top_k_overlap(self) -> float:
        return sum(r.top_k_overlap for r in self.rows) / len(self.rows)

    @property
    def top1_agreement(self) -> float:
        return sum(r.top1_same for r in self.rows) / len(self.rows)

    @property
    def mean_abs_delta(self) -> float:
        """Mean |delta prob| over every class of every input."""
        return sum(r.mean_abs_delta for r in self.rows) / len(self.rows)

    @property
    def max_abs_delta(self) -> float:
        return max(r.max_abs_delta for r in self.rows)

    def format(self) -> str:
        width = max([len("input")] + [len(r.name) for r in self.rows])
        lines = [f"int8 vs fp32 agreement over {len(self.rows)} input(s):",
                 f"  {'input':<{width}}  top-{self.k} same  overlap  top-1 same  mean |dprob|  max |dprob|"]
        for r in self.rows:
            lines.append(f"  {r.name:<{width}}  {'yes' if r.top_k_same else 'NO':>10}  {r.top_k_overlap:7.2f}  "
                         f"{'yes' if r.top1_same else 'NO':>10}  {r.mean_abs_delta:12.2e}  {r.max_abs_delta:11.2e}")
        lines.append(f"  top-{self.k} agreement {self.top_k_agreement:.0%} (overlap {self.top_k_overlap:.0%}), "
                     f"top-1 agreement {self.top1_agreement:.0%}, mean |delta prob| {self.mean_abs_delta:.2e}, "
                     f"max |delta prob| {self.max_abs_delta:.2e}")
        return "\n".join(lines)


def agreement_report(fp32_tagger: TaggingMixin, int8_tagger: TaggingMixin,
                     waveforms: Union[Sequence[Tensor], dict[str, Tensor]], k: int = 5) -> AgreementReport:
    """Compare two taggers' probabilities on waveforms (a list, or a dict name -> waveform)."""
    named = list(waveforms.items()) if isinstance(waveforms, dict) else [
        (f"input {i}", w) for i, w in enumerate(waveforms)]
    if not named:
        raise ValueError("agreement_report needs at least one waveform")
    rows = []
    for name, waveform in named:
        reference = fp32_tagger.probabilities(waveform.reshape(1, -1))[0]
        candidate = int8_tagger.probabilities(waveform.reshape(1, -1))[0]
        kk = min(k, reference.numel())
        top_ref, top_new = set(reference.topk(kk).indices.tolist()), set(candidate.topk(kk).indices.tolist())
        delta = (candidate - reference).abs()
        rows.append(AgreementRow(name, top_ref == top_new, len(top_ref & top_new) / kk,
                                 int(reference.argmax()) == int(candidate.argmax()), float(delta.mean()),
                                 float(delta.max())))
    return AgreementReport(k, tuple(rows))


__all__ = ["AgreementReport", "AgreementRow", "BatchFreeDynamicConv2d", "DEFAULT_OPSET", "EXPORTERS",
           "GraphMelFrontend", "OnnxMetadata", "OnnxTagger", "agreement_report", "calibration_waveforms",
           "default_recording", "export_onnx", "exportable_model", "max_logit_difference", "quantize_int8",
           "read_onnx_metadata"]
