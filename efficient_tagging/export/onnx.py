"""ONNX export of taggers (the rooms beside it: `graph.py` rewrites, `metadata.py`, `runtime.py`
(OnnxTagger), `quantize.py` (int8)).

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

import io
import itertools
import json
import logging
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..frontends import AugmentMelSTFT, build_frontend
from ..frontends.mel import GraphMelFrontend
from ..labels import LabelMap
from ..models.layers import min_input_frames
from ..models.registry import is_teacher
from ..tagging.tagger import AudioTagger
from .graph import _global_pools_as_means, _SpectrogramGraph, _WaveformGraph, exportable_model
from .metadata import (DEFAULT_OPSET, EXPORTERS, INPUT_KINDS, METADATA_PREFIX, MIN_OPSET, OnnxMetadata, PathLike,
                       _load_onnx_model, _quiet_exporter, _require, _set_metadata, _write_atomically,
                       read_onnx_metadata)
from .quantize import (AgreementReport, AgreementRow, agreement_report, calibration_waveforms, default_recording,
                       quantize_int8)
from .runtime import OnnxTagger, _as_tagger, max_logit_difference

logger = logging.getLogger(__name__)


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


class _InputLengths(NamedTuple):
    """Lengths of the graph's time axis: STFT hop (samples), shortest input in frames and in samples,
    and the frames of the example the export traces."""
    hop: int
    min_frames: int
    min_samples: int
    frames: int


def _check_export_options(exporter: str, opset: int, with_frontend: bool) -> None:
    _require("onnx")
    _require("onnxruntime")
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET} (ONNX STFT), got {opset!r}")
    if exporter == "dynamo" or with_frontend:
        _require("onnxscript")


def _with_label_map(tagger: AudioTagger, label_map: Optional[LabelMap]) -> AudioTagger:
    if label_map is not None:
        if len(label_map) != tagger.num_classes:
            raise ValueError(f"label map has {len(label_map)} classes but the model outputs {tagger.num_classes}")
        tagger.label_map = label_map
    return tagger


def _teacher_export_error(model: nn.Module) -> ValueError:
    # Measured with torch 2.11: torch.export cannot prove PaSST's patch-grid reshapes for a
    # dynamic time axis (guards such as 12 % (12 * time_patches) != 0), and a fixed-length graph
    # would tag inputs shorter than the window differently from PyTorch (their positional
    # embeddings are cut to the input). Refused rather than exported wrong.
    return ValueError(f"{type(model).__name__}: ONNX export of the transformer teachers is not supported "
                      f"(torch.export cannot keep their time axis dynamic); export a student (mn / dymn)")


def _onnx_output_path(path: PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"output path should end in .onnx, got {path}")
    return path


def _input_lengths(tagger: AudioTagger, model: nn.Module, example_seconds: float) -> _InputLengths:
    """The graph's time-axis lengths; refuses a tagger whose shortest input is below the graph's."""
    hop = int(getattr(tagger.frontend, "hopsize", 0) or 320)
    n_mels = int(getattr(model, "input_dim_f", None) or getattr(tagger.frontend, "n_mels", None) or 128)
    min_frames = min_input_frames(model, n_mels)
    min_samples = int(tagger.min_samples)
    if min_samples < (min_frames - 1) * hop + 1:  # the contract covers the graph (models.factory.model_min_samples)
        raise RuntimeError(f"{type(model).__name__}: the tagger's shortest input ({min_samples} samples) is below the "
                           f"graph's ({(min_frames - 1) * hop + 1}); build the tagger with AudioTagger(model)")
    frames = max(min_frames + 1, int(round(example_seconds * tagger.sample_rate / hop)))
    return _InputLengths(hop, min_frames, min_samples, frames)


def _export_spectrogram_graph(tagger: AudioTagger, model: nn.Module, graph_model: nn.Module, lengths: _InputLengths,
                              probabilities: bool, output_names: list[str], opset: int, exporter: str,
                              check_audio: Optional[Tensor]) -> tuple[Any, nn.Module, Tensor]:
    """The model graph with spectrogram input: (ModelProto, the module it was exported from, example)."""
    spectrogram_graph = _SpectrogramGraph(graph_model, None, probabilities, tagger.task).eval()
    example = _example_spectrogram(tagger, lengths.frames, audio=check_audio)
    model_proto = _export_graph(spectrogram_graph, example, "spectrogram", output_names,
                                {0: ("batch", 1, None), 3: ("frames", lengths.min_frames, None)}, opset, exporter,
                                f"{type(model).__name__} (spectrogram input)")
    return model_proto, spectrogram_graph, example


def _with_waveform_input(model_proto: Any, tagger: AudioTagger, graph_model: nn.Module, lengths: _InputLengths,
                         probabilities: bool, example_seconds: float,
                         check_audio: Optional[Tensor]) -> tuple[Any, nn.Module, Tensor]:
    """`model_proto` with the mel frontend in the graph: (ModelProto, its PyTorch equal, waveform example)."""
    model_proto = _attach_frontend(model_proto, tagger.frontend, lengths.min_samples)
    reference = _WaveformGraph(graph_model, GraphMelFrontend(tagger.frontend), probabilities, tagger.task).eval()
    example = _audio_like(2, max(lengths.min_samples + lengths.hop, int(round(example_seconds * tagger.sample_rate))),
                          tagger.sample_rate, audio=check_audio)
    return model_proto, reference, example


def _export_metadata(tagger: AudioTagger, model: nn.Module, kind: str, output_names: list[str], exporter: str,
                     opset: int, min_samples: int) -> OnnxMetadata:
    from .. import __version__

    return OnnxMetadata(
        label_map=tagger.label_map, sample_rate=int(tagger.sample_rate), input_kind=kind, outputs=tuple(output_names),
        preprocessing=dict(tagger.contract.frontend), task=tagger.task, clip_length=tagger.clip_length,
        min_samples=min_samples, short_inputs=tagger.short_inputs,
        # metadata of teacher graphs (none are exported; see the module doc)
        window_frames=None, hop_frames=None, exporter=exporter, opset=opset,
        arch=getattr(model, "arch", None) or type(model).__name__,
        config=dict(getattr(model, "config", None) or {}), version=__version__)


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
    _check_export_options(exporter, opset, with_frontend)
    tagger = _with_label_map(_as_tagger(tagger_or_model), label_map)
    model = tagger.model.eval()
    teacher = is_teacher(model)
    if teacher:
        raise _teacher_export_error(model)
    if with_frontend:
        _check_graph_frontend(tagger.frontend)
    path = _onnx_output_path(path)

    output_names = ["logits", "probabilities"] if probabilities else ["logits"]
    lengths = _input_lengths(tagger, model, example_seconds)
    graph_model = exportable_model(model)
    model_proto, reference, example = _export_spectrogram_graph(
        tagger, model, graph_model, lengths, probabilities, output_names, opset, exporter, check_audio)
    time_axis = 3
    if with_frontend:
        model_proto, reference, example = _with_waveform_input(
            model_proto, tagger, graph_model, lengths, probabilities, example_seconds, check_audio)
        time_axis = 1

    kind = "waveform" if with_frontend else "spectrogram"
    metadata = _export_metadata(tagger, model, kind, output_names, exporter, opset, lengths.min_samples)
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


__all__ = ["AgreementReport", "AgreementRow", "DEFAULT_OPSET", "EXPORTERS", "GraphMelFrontend", "INPUT_KINDS",
           "METADATA_PREFIX", "OnnxMetadata", "OnnxTagger", "add_frontend", "agreement_report",
           "calibration_waveforms", "default_recording", "export_onnx", "exportable_model", "max_logit_difference",
           "quantize_int8", "read_onnx_metadata"]
