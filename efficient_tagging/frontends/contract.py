"""The input contract of a model: what it expects to be fed, and the one function that feeds it.

A model was trained on clips of one sample rate, turned into spectrograms by one frontend, of one
length, with one label map and one task. `InputContract` carries those facts together, is written
identically into checkpoints (`input_contract`) and ONNX metadata (`efficient_tagging.input_contract`),
is validated when read, and owns `prepare`: the only code that turns a user's audio into the model's
input. Every tagging path (PyTorch and ONNX taggers, files, arrays, tags over time, streaming, HEAR)
goes through it, so one model gives one answer whatever the path.

**Any input** (`to_waveform`): a torch tensor or numpy array of shape `(samples,)` or
`(batch, samples)`; float samples of any float dtype (taken as they are, nominally in [-1, 1]), or
integer PCM scaled as audio the way FFmpeg converts it to float: int16 `x / 2**15`, int32
`x / 2**31`, uint8 `(x - 128) / 128`, int8 `x / 128`. `sample_rate=` says the rate of the input
(default: the model's); other rates are resampled with the project's windowed-sinc resampler, the
one file decoding uses, so an array and the file it came from give the same samples.

**Short inputs** (`fit_length`), one rule on every path: an input shorter than the clip length the
model was trained with (or, where that is unknown, than `min_samples`, the shortest input the model
and every export of it accept) is *repeated* to that length (`short_inputs="repeat"`, the default),
or zero-padded at the end (`"pad"`, how training pads short clips). Repeating is the default
because a 1-s sound zero-padded to 10 s is 90 % silence and its tags are diluted (EfficientAT #3);
repeated, the model sees the sound over its whole input. The rule is the same for an input shorter
than one analysis window (down to one sample), so no path pads where another repeats.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..audio import pcm_to_float32, resample
from ..labels import LabelMap

SHORT_INPUT_RULES = ("repeat", "pad")
TASKS = ("multilabel", "multiclass", "partial_multilabel")
#: the key under which checkpoints and ONNX metadata store the contract
CONTRACT_KEY = "input_contract"
CONTRACT_VERSION = 1

AudioArray = Union[Tensor, np.ndarray]


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _positive_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(float(value)) and float(value) > 0)


@dataclass(frozen=True)
class InputContract:
    """What a model sees. See the module doc for the rules `prepare` applies.

    - `sample_rate`: the rate the frontend expects (Hz).
    - `frontend`: the settings `frontends.build_frontend` rebuilds the frontend from (`frontend`
      kind, `sr`, `n_mels`, hop, window, ...); its `sr`, where given, equals `sample_rate`.
    - `clip_length`: seconds per clip the model was trained with (None: unknown).
    - `min_samples`: the shortest input the model takes (one frontend window, or more where the
      network needs more frames).
    - `short_inputs`: "repeat" or "pad" (module doc).
    - `labels`: the label map (None: unknown, named `class_<i>`); `task`: "multilabel" (sigmoid
      per class), "multiclass" (softmax) or "partial_multilabel" (sigmoid).
    """

    sample_rate: int
    frontend: dict[str, Any] = field(default_factory=dict)
    clip_length: Optional[float] = None
    min_samples: int = 1024
    short_inputs: str = "repeat"
    labels: Optional[LabelMap] = None
    task: str = "multilabel"

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- checks
    def validate(self, source: str = "input contract", num_outputs: Optional[int] = None) -> "InputContract":
        """Raise a ValueError naming `source` and both values at the first contradiction."""
        if not _positive_int(self.sample_rate):
            raise ValueError(f"{source}: sample_rate must be a positive integer (Hz), got {self.sample_rate!r}")
        frontend_rate = self.frontend.get("sr")
        if frontend_rate is not None and (not _positive_number(frontend_rate) or int(frontend_rate) != self.sample_rate):
            raise ValueError(f"{source}: contradictory sample rates: sample_rate {self.sample_rate} Hz but the "
                             f"frontend settings say sr={frontend_rate!r}")
        if self.clip_length is not None and not _positive_number(self.clip_length):
            raise ValueError(f"{source}: clip_length must be a positive number of seconds or None, got "
                             f"{self.clip_length!r}")
        if not _positive_int(self.min_samples):
            raise ValueError(f"{source}: min_samples must be a positive integer, got {self.min_samples!r}")
        if self.short_inputs not in SHORT_INPUT_RULES:
            raise ValueError(f"{source}: short_inputs must be one of {', '.join(SHORT_INPUT_RULES)}, got "
                             f"{self.short_inputs!r}")
        if self.task not in TASKS:
            raise ValueError(f"{source}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.labels is not None and not isinstance(self.labels, LabelMap):
            raise ValueError(f"{source}: labels must be a LabelMap, got {type(self.labels).__name__}")
        if num_outputs is not None and self.labels is not None and len(self.labels) != num_outputs:
            raise ValueError(f"{source}: the label map has {len(self.labels)} classes but the model outputs "
                             f"{num_outputs}")
        return self

    def replace(self, **changes: Any) -> "InputContract":
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        """Plain values only (JSON, and `torch.load(weights_only=True)`)."""
        return {"version": CONTRACT_VERSION, "sample_rate": int(self.sample_rate), "frontend": dict(self.frontend),
                "clip_length": None if self.clip_length is None else float(self.clip_length),
                "min_samples": int(self.min_samples), "short_inputs": self.short_inputs,
                "labels": self.labels.to_dict() if self.labels is not None else None, "task": self.task}

    @classmethod
    def from_dict(cls, data: Any, source: str = "input contract", num_outputs: Optional[int] = None
                  ) -> "InputContract":
        """The contract stored in a file, validated (ValueError naming `source` otherwise)."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: the stored input contract is not a mapping ({type(data).__name__})")
        missing = [key for key in ("sample_rate", "frontend", "min_samples") if key not in data]
        if missing:
            raise ValueError(f"{source}: the stored input contract lacks {', '.join(missing)}")
        labels = data.get("labels")
        try:
            label_map = LabelMap.from_dict(labels) if labels is not None else None
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: the stored label map is not valid ({error})") from None
        frontend = data["frontend"]
        if not isinstance(frontend, dict):
            raise ValueError(f"{source}: the stored frontend settings are not a mapping ({frontend!r})")
        try:
            contract = cls(sample_rate=data["sample_rate"], frontend=dict(frontend), clip_length=data.get("clip_length"),
                           min_samples=data["min_samples"], short_inputs=data.get("short_inputs") or "repeat",
                           labels=label_map, task=data.get("task") or "multilabel")
        except ValueError as error:
            raise ValueError(f"{source}: {error}".replace(": input contract:", ":")) from None
        return contract.validate(source, num_outputs)

    # ---------------------------------------------------------------- the one input function
    @property
    def target_samples(self) -> int:
        """Inputs shorter than this are repeated / padded to it: the clip length, at least `min_samples`."""
        clip = int(round(self.clip_length * self.sample_rate)) if self.clip_length else 0
        return max(self.min_samples, clip)

    def to_waveform(self, audio: Any, sample_rate: Optional[int] = None) -> Tensor:
        """Any audio array (module doc) as a float32 (batch, samples) tensor at `self.sample_rate`,
        checked for NaN/Inf. The input is not modified; a tensor keeps its device."""
        waveform = as_float_waveform(audio)
        rate = self.sample_rate if sample_rate is None else sample_rate
        if not _positive_int(rate):
            raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
        if int(rate) != self.sample_rate:
            waveform = resample(waveform, int(rate), self.sample_rate)
        check_finite_waveform(waveform, self.sample_rate)
        return waveform

    def fit_length(self, waveform: Tensor) -> Tensor:
        """The short-input rule: (batch, samples) repeated or zero-padded to `target_samples`."""
        length, target = waveform.shape[-1], self.target_samples
        if length >= target:
            return waveform
        if self.short_inputs == "repeat":
            return waveform.repeat(1, -(-target // length))[:, :target]
        return torch.nn.functional.pad(waveform, (0, target - length))

    def prepare(self, audio: Any, sample_rate: Optional[int] = None) -> Tensor:
        """What the model is fed for `audio` (at `sample_rate`, default the model's): `to_waveform`
        then `fit_length`."""
        return self.fit_length(self.to_waveform(audio, sample_rate))

    def probabilities(self, logits: Tensor) -> Tensor:
        """Softmax over classes for a single-label ("multiclass") model, else sigmoid per class;
        float32 on the CPU."""
        if self.task == "multiclass":
            return torch.softmax(logits.float(), dim=-1).cpu()
        return torch.sigmoid(logits.float()).cpu()


def as_float_waveform(audio: Any) -> Tensor:
    """A tensor or numpy array (samples,) / (batch, samples), float or integer PCM, as a float32
    (batch, samples) tensor (integer PCM scaled like FFmpeg: see the module doc)."""
    if isinstance(audio, Tensor):
        if audio.dtype == torch.bool or audio.is_complex():
            raise TypeError(f"expected audio samples (float or integer PCM), got a tensor of dtype {audio.dtype}")
        if audio.is_floating_point():
            waveform = audio.detach().float()
        else:
            if audio.dtype not in (torch.int16, torch.int32, torch.uint8, torch.int8):
                raise TypeError(f"integer audio must be int16, int32, uint8 or int8 PCM, got {audio.dtype}: "
                                f"convert it to float in [-1, 1] or to one of those")
            waveform = torch.from_numpy(pcm_to_float32(audio.detach().cpu().numpy())).to(audio.device)
    elif isinstance(audio, np.ndarray):
        if audio.dtype.kind == "f":
            waveform = torch.from_numpy(np.asarray(audio, dtype=np.float32))
        elif audio.dtype.kind in "iu":
            waveform = torch.from_numpy(pcm_to_float32(audio))
        else:
            raise TypeError(f"expected audio samples (float or integer PCM), got a numpy array of dtype {audio.dtype}")
    else:
        raise TypeError(f"expected a waveform (torch tensor or numpy array) of shape (samples,) or (batch, samples), "
                        f"got {type(audio).__name__}")
    if waveform.dim() == 1:
        waveform = waveform.reshape(1, -1)
    if waveform.dim() != 2:
        raise ValueError(f"expected a mono waveform of shape (samples,) or (batch, samples), got shape "
                         f"{tuple(waveform.shape)} (downmix channels first, e.g. waveform.mean(0))")
    if waveform.shape[-1] == 0 or waveform.shape[0] == 0:
        raise ValueError(f"empty waveform (shape {tuple(waveform.shape)}): nothing to tag")
    return waveform


def check_finite_waveform(waveform: Tensor, sample_rate: Optional[int] = None) -> None:
    """Raise a ValueError naming how many samples are NaN/Inf and where the first ones are."""
    finite = torch.isfinite(waveform)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero()
    nan = int(torch.isnan(waveform).sum())
    count = bad.shape[0]
    where = []
    for position in bad[:3].tolist():
        sample = position[-1]
        place = f"sample {sample}" + (f" ({sample / sample_rate:.3f} s)" if sample_rate else "")
        if waveform.dim() > 1:
            place = f"row {position[0]}, " + place
        where.append(place)
    more = f" and {count - len(where)} more" if count > len(where) else ""
    raise ValueError(
        f"waveform of shape {tuple(waveform.shape)} contains {count} non-finite samples ({nan} NaN, "
        f"{count - nan} inf), at {'; '.join(where)}{more}: the tags would be NaN. Fix the source of the audio "
        f"or replace them (e.g. torch.nan_to_num(waveform, 0.0, 0.0, 0.0))")
