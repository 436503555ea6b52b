"""Ensembles of waveform-in, logits-out taggers (e.g. PaSST / AST teachers plus students).

EfficientAT's rule (``models/ensemble.py``, ``EnsemblerModel.forward``): run every member
and return the plain mean of their logits (before any sigmoid). Here every member brings
its own frontend and sample rate: the ensemble takes a waveform at ``sample_rate`` and
resamples it once per distinct member rate.

The ensemble has the tagging interface of :class:`efficient_tagging.tagging.AudioTagger`
(``label_map``, ``probabilities``, ``tag_waveform``, ``tag_file``), so evaluation and the
inference CLI (``--ensemble NAME NAME ...``) use it like a single model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..audio import resample, resample_blocks
from ..frontends.contract import InputContract
from .tagger import AudioTagger, BlockFactory, TaggingMixin


def _member_classes(member: nn.Module) -> int:
    label_map = getattr(member, "label_map", None)
    if label_map is not None:
        return len(label_map)
    return int(getattr(member, "num_classes", 0) or getattr(getattr(member, "model", None), "num_classes", 0))


class TeacherEnsemble(TaggingMixin, nn.Module):
    """Mean of the logits of several taggers; ``forward(waveform (B, samples))`` -> logits (B, C).

    Args:
        members: modules with a ``sample_rate`` attribute and ``forward(waveform) -> logits``
            (typically :class:`AudioTagger`); all must output the same number of classes.
        names: one name per member (default: each member's ``pretrained_name`` or class name).
        sample_rate: rate of the waveform given to ``forward`` (default: the first member's).
    """

    def __init__(self, members: Sequence[nn.Module], names: Optional[Sequence[str]] = None,
                 sample_rate: Optional[int] = None) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("a teacher ensemble needs at least one member")
        if names is None:
            names = [str(getattr(getattr(m, "model", m), "pretrained_name", None) or type(m).__name__)
                     for m in members]
        names = list(names)
        if len(names) != len(members):
            raise ValueError(f"got {len(names)} names for {len(members)} ensemble members")
        missing = [n for n, m in zip(names, members) if not getattr(m, "sample_rate", None)]
        if missing:
            raise ValueError(f"ensemble members need a sample_rate attribute: {', '.join(missing)}")
        classes = [_member_classes(m) for m in members]
        if len(set(classes)) != 1:
            detail = ", ".join(f"{n}: {c}" for n, c in zip(names, classes))
            raise ValueError(f"ensemble members must output the same number of classes; got {detail}")
        self.members = nn.ModuleList(members)
        self.names = names
        self.num_classes = classes[0]
        rate = int(sample_rate or members[0].sample_rate)
        tasks = {getattr(m, "task", None) for m in members}
        label_map = getattr(members[0], "label_map", None)
        # short inputs are repeated (or padded) to the longest clip length a member was trained on
        lengths = [float(m.clip_length) for m in members if getattr(m, "clip_length", None)]
        self.contract = InputContract(
            sample_rate=rate, frontend={"members": self.member_preprocessing},
            clip_length=max(lengths) if lengths else None,
            min_samples=max(int(getattr(m, "min_samples", 1024) * rate / m.sample_rate + 0.5) for m in members),
            labels=label_map, task=(tasks.pop() if len(tasks) == 1 else None) or "multilabel")

    @classmethod
    def from_names(cls, names: Sequence[str], cache_dir: Union[str, Path, None] = None,
                   device: Union[str, torch.device] = "cpu", labels_path: Union[str, Path, None] = None,
                   sample_rate: Optional[int] = None) -> "TeacherEnsemble":
        """Ensemble of catalogue names (or checkpoint paths), each an :class:`AudioTagger`."""
        members = [AudioTagger.from_pretrained(name, labels_path=labels_path, cache_dir=cache_dir).to(device)
                   for name in names]
        return cls(members, names=[str(n).strip() for n in names], sample_rate=sample_rate)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def member_preprocessing(self) -> list[dict[str, Any]]:
        """Each member's frontend settings (with its name and sample rate), e.g. for HDF5 attributes."""
        out = []
        for name, member in zip(self.names, self.members):
            prep = dict(getattr(member, "preprocessing", None)
                        or getattr(getattr(member, "model", None), "preprocessing", None) or {})
            prep.setdefault("frontend", "mel")
            prep.update(name=name, sample_rate=int(member.sample_rate))
            out.append(prep)
        return out

    def member_logits(self, waveform: Tensor) -> list[Tensor]:
        """Logits of every member (float32), for a waveform batch at ``self.sample_rate``."""
        resampled: dict[int, Tensor] = {}
        logits = []
        for member in self.members:
            rate = int(member.sample_rate)
            if rate not in resampled:
                resampled[rate] = waveform if rate == self.sample_rate else resample(
                    waveform, self.sample_rate, rate).to(waveform.device)
            logits.append(member(resampled[rate]).float())
        return logits

    def forward(self, waveform: Tensor) -> Tensor:
        return torch.stack(self.member_logits(waveform)).mean(dim=0)

    @torch.no_grad()
    def stream_logits(self, make_blocks: BlockFactory) -> Tensor:
        """Mean logits (1, C) of the members over one long waveform given as blocks (bounded memory:
        each member streams it on its own, resampled block by block to the member's rate)."""
        logits = []
        for member in self.members:
            rate = int(member.sample_rate)
            factory = make_blocks if rate == self.sample_rate else (
                lambda rate=rate: resample_blocks(make_blocks(), self.sample_rate, rate))
            if hasattr(member, "stream_logits"):
                logits.append(member.stream_logits(factory).float())
            else:  # a plain waveform-in module: one pass
                logits.append(member(torch.cat(list(factory())).reshape(1, -1)).float())
        return torch.stack(logits).mean(dim=0)

    def extra_repr(self) -> str:
        return f"names={self.names}, sample_rate={self.sample_rate}, num_classes={self.num_classes}"
