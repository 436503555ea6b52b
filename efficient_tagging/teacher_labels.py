"""Teacher labelling: run one or more frozen teachers over AudioSet-format HDF5 files and store
their (ensemble-mean) logits in a teacher-logits HDF5 keyed by audio_name.

The output is written in flushed batches through `TeacherLogitsWriter`, so a killed job
keeps every flushed row and a restart labels only the clips that are still missing. Clips
that cannot be decoded are recorded as missing (not as zeros), counted and reported; the
distillation loss later masks them out.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .audio import resample
from .data.hdf5 import AudioSetDataset
from .data.teacher_logits import TeacherLogits, TeacherLogitsWriter
from .train.metrics import evaluate_predictions

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


class TeacherEnsemble(nn.Module):
    """Averages the logits of several waveform-in, logits-out teachers (EfficientAT's ensemble rule).

    Each member needs a `sample_rate` attribute and `forward(waveform (B, samples)) -> logits`;
    `efficient_tagging.inference.AudioTagger` is such a member. Members with other sample
    rates get the batch resampled for them, so teachers with different frontends mix freely.
    """

    def __init__(self, members: Sequence[nn.Module], names: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("a teacher ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.names = list(names) if names is not None else [type(m).__name__ for m in members]
        self.sample_rate = int(members[0].sample_rate)

    def forward(self, waveform: Tensor) -> Tensor:
        logits = []
        for member in self.members:
            member_input = waveform
            if member.sample_rate != self.sample_rate:
                member_input = resample(waveform, self.sample_rate, member.sample_rate).to(waveform.device)
            logits.append(member(member_input).float())
        return torch.stack(logits).mean(dim=0)


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "waveform": torch.stack([item["waveform"] for item in batch]),
        "target": torch.stack([item["target"] for item in batch]),
        "audio_name": [item["audio_name"] for item in batch],
        "decoded": torch.tensor([bool(item.get("decoded", True)) for item in batch]),
    }


@torch.no_grad()
def label_hdf5(teacher: nn.Module, hdf5_paths: Union[PathLike, Sequence[PathLike]], output_path: PathLike, *,
               clip_length: float = 10.0, batch_size: int = 32, num_workers: int = 0,
               device: Union[str, torch.device] = "cpu", precision: str = "32", teacher_names: Sequence[str] = (),
               attrs: Optional[dict[str, Any]] = None, flush_every_batches: int = 10, dtype: str = "float32",
               progress: bool = True) -> dict[str, Any]:
    """Label every clip of `hdf5_paths` with `teacher` into `output_path` (resuming if it exists).

    Returns a summary: clips labelled now / before, missing (undecodable) clips, clips/s and,
    when the data has labels, the teacher's mAP on the labelled clips.
    """
    device = torch.device(device)
    teacher = teacher.to(device).eval()
    sample_rate = int(getattr(teacher, "sample_rate", 32000))
    dataset = AudioSetDataset(hdf5_paths, sample_rate=sample_rate, clip_length=clip_length,
                              replace_undecodable=False)
    info = {
        "teachers": list(teacher_names) or list(getattr(teacher, "names", [type(teacher).__name__])),
        "ensemble_rule": "mean of logits",
        "sample_rate": sample_rate,
        "clip_length": clip_length,
        "source_files": [str(Path(p).resolve()) for p in dataset.paths],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "precision": precision,
        **(attrs or {}),
    }
    writer = TeacherLogitsWriter(output_path, num_classes=dataset.num_classes, attrs=info, dtype=dtype, resume=True)
    done = writer.existing_names()
    todo = [i for i, name in enumerate(dataset.audio_names) if name not in done]
    loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision in ("16", "bf16") else torch.autocast(device_type=device.type, enabled=False))
    missing: list[str] = []
    labelled = 0
    start = time.time()
    bar = tqdm(total=len(todo), desc="teacher labelling", unit="clip", disable=not progress, dynamic_ncols=True)
    try:
        for batch_index, batch in enumerate(loader):
            ok = batch["decoded"]
            names = [n for n, good in zip(batch["audio_name"], ok.tolist()) if good]
            missing.extend(n for n, good in zip(batch["audio_name"], ok.tolist()) if not good)
            if names:
                with autocast:
                    logits = teacher(batch["waveform"][ok].to(device))
                writer.write(names, logits.float().cpu().numpy())
                labelled += len(names)
            if (batch_index + 1) % flush_every_batches == 0:
                writer.flush()
            bar.update(len(batch["audio_name"]))
            bar.set_postfix(clips_s=f"{labelled / max(time.time() - start, 1e-6):.1f}", missing=len(missing))
        writer.flush()
    finally:
        bar.close()
        writer.close()
    if missing:
        logger.warning("%d clips could not be decoded and have no teacher logits (first: %s)",
                       len(missing), ", ".join(missing[:5]))

    summary: dict[str, Any] = {"output": str(output_path), "labelled_now": labelled, "labelled_before": len(done),
                               "missing_undecodable": len(missing), "missing_names": missing,
                               "clips_per_s": labelled / max(time.time() - start, 1e-6)}
    stored = TeacherLogits(output_path)
    rows = [(i, stored.lookup(name)) for i, name in enumerate(dataset.audio_names)]
    rows = [(i, logits) for i, logits in rows if logits is not None]
    if rows:
        targets = dataset.targets[[i for i, _ in rows]]
        if targets.any():
            metrics = evaluate_predictions(targets, np.stack([logits for _, logits in rows]))
            summary["teacher_mAP"] = metrics["mAP"]
            summary["teacher_ROC"] = metrics["mean_roc_auc"]
    stored.close()
    return summary
