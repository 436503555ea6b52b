"""Teacher labelling: run one or more frozen teachers over AudioSet-format HDF5 files and store
their (ensemble-mean) logits in a teacher-logits HDF5 keyed by audio_name.

Command line: `python experiments/ex_teacher_labels.py --help` (`efficient_tagging.cli.label`). Under
torchrun every rank labels the clips `i % world_size == rank` into
`<output>.shard-<rank>-of-<world>.h5` (each resumable), then rank 0 merges the shards into
`--output` by name, atomically (`merge_teacher_logits`).

The output is written in flushed batches through `TeacherLogitsWriter`, so a killed job
keeps every flushed row and a restart labels only the clips that are still missing. Clips
that cannot be decoded are recorded as missing (not as zeros), counted and reported; the
distillation loss later masks them out. SIGINT/SIGTERM stop a run cleanly (every finished
batch committed, `LabellingInterrupted` raised); the output is locked (`<output>.lock`)
while a run writes it, so a second run on it is refused instead of mixing into it.
"""
from __future__ import annotations

import json
import logging
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .data.hdf5 import AudioSetDataset
from .tagging.ensemble import TeacherEnsemble
from .data.teacher_logits import (TeacherLogits, TeacherLogitsWriter, merge_teacher_logits,
                                   shard_path)
from .hardware import resolve_precision, threads_for_cpu_work
from .interrupt import SignalReceived, StopOnSignal, signal_name
from .train.metrics import evaluate_masked_predictions, evaluate_predictions, multiclass_metrics

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

__all__ = ["LabellingInterrupted", "cast_model_weights", "label_dataset", "label_hdf5", "load_teachers", "merge_job", "teacher_metrics",
           "teacher_num_classes", "teacher_preprocessing"]


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "waveform": torch.stack([item["waveform"] for item in batch]),
        "target": torch.stack([item["target"] for item in batch]),
        "audio_name": [item["audio_name"] for item in batch],
        "decoded": torch.tensor([bool(item.get("decoded", True)) for item in batch]),
    }


def _autocast(device: torch.device, precision: str):
    if precision not in ("32", "16", "bf16"):
        raise ValueError(f"precision must be 'auto', '32', '16' or 'bf16', got {precision!r}")
    if precision == "32":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def teacher_metrics(dataset: Any, logits_path: PathLike) -> dict[str, float]:
    """The teacher's quality on the clips of `dataset` that `logits_path` labels ({} without labels).

    By the dataset's task: multilabel mAP / ROC-AUC (`teacher_mAP`, `teacher_ROC`), partial labels
    the same over the known entries, single-label `teacher_accuracy`.
    """
    stored = TeacherLogits(logits_path, check_finite=False)  # written by TeacherLogitsWriter, which refuses NaN/inf
    try:
        rows = [(i, stored.lookup(name)) for i, name in enumerate(dataset.audio_names)]
    finally:
        stored.close()
    rows = [(i, logits) for i, logits in rows if logits is not None]
    if not rows:
        return {}
    kept = [i for i, _ in rows]
    targets = np.asarray(dataset.targets)[kept]
    if not targets.any():
        return {}
    logits = np.stack([logits for _, logits in rows])
    task = getattr(dataset, "task", "multilabel")
    if task == "multiclass":
        return {"teacher_accuracy": float(multiclass_metrics(logits, targets.argmax(axis=1))["accuracy"])}
    if task == "partial_multilabel":
        metrics = evaluate_masked_predictions(targets, logits, np.asarray(dataset.known_mask)[kept])
    else:
        metrics = evaluate_predictions(targets, logits)
    return {"teacher_mAP": float(metrics["mAP"]), "teacher_ROC": float(metrics["mean_roc_auc"])}


def cast_model_weights(teacher: nn.Module, precision: str) -> nn.Module:
    """Store the networks' weights in bf16/fp16 for the reduced-precision path; frontends stay fp32.

    Under autocast alone every forward re-casts all fp32 weights to 16 bits (for PaSST-S, 86 M
    parameters per batch), which eats much of the gain on CPU. The log-mel frontends keep
    float32: their filterbank matmul runs with autocast disabled anyway.
    """
    if precision == "32":
        return teacher
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    frontends = [m for m in teacher.modules() if getattr(m, "frontend", None) is not None]
    for tagger in frontends:
        tagger.model.to(dtype)
    if not frontends:  # a bare model without an attached frontend
        teacher.to(dtype)
    return teacher


class LabellingInterrupted(KeyboardInterrupt):
    """`label_hdf5` was stopped by SIGINT/SIGTERM; every finished batch is committed to the output.

    Rerunning the same labelling continues with the clips still missing. `signum` is the
    signal, `summary` the partial summary (output, clips, labelled_now, labelled_before, ...).
    A KeyboardInterrupt, so code that handles Ctrl-C keeps working and `except Exception`
    does not swallow it.
    """

    def __init__(self, signum: int, summary: dict[str, Any]):
        self.signum = int(signum)
        self.summary = summary
        done = summary["labelled_before"] + summary["labelled_now"] + summary["missing_undecodable"]
        super().__init__(f"labelling into {summary['output']} stopped by {signal_name(signum)}: {done} of "
                         f"{summary['clips']} clips are done and saved; run the same labelling again to continue")


def teacher_num_classes(teacher: nn.Module) -> Optional[int]:
    """Classes the teacher outputs, from its attributes (None if it does not say)."""
    for source in (teacher, getattr(teacher, "model", None)):
        value = getattr(source, "num_classes", None) if source is not None else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def _describe_teacher(teacher: nn.Module, teacher_names: Sequence[str]) -> str:
    names = list(teacher_names) or list(getattr(teacher, "names", [])) or [type(teacher).__name__]
    return ("teacher " if len(names) == 1 else "teacher ensemble ") + ", ".join(map(str, names))


def _remove_if_empty(path: Path, writer: Optional[TeacherLogitsWriter]) -> None:
    """A teacher-logits file this run created and never put a row into is debris: remove it."""
    if writer is not None and len(writer) == 0 and not writer.missing_names() and path.is_file():
        path.unlink()
        logger.info("removed %s: the run stopped before labelling any clip", path)


def label_hdf5(teacher: nn.Module, hdf5_paths: Union[PathLike, Sequence[PathLike]], output_path: PathLike, *,
               clip_length: float = 10.0, **kwargs: Any) -> dict[str, Any]:
    """Label every clip of the AudioSet-format `hdf5_paths` with `teacher` (see `label_dataset`)."""
    sample_rate = int(getattr(teacher, "sample_rate", 32000))
    dataset = AudioSetDataset(hdf5_paths, sample_rate=sample_rate, clip_length=clip_length,
                              replace_undecodable=False)
    try:
        return label_dataset(teacher, dataset, output_path, sources=[str(Path(p).resolve()) for p in dataset.paths],
                             **kwargs)
    finally:
        dataset.close()


@torch.no_grad()
def label_dataset(teacher: nn.Module, dataset: Any, output_path: PathLike, *, sources: Sequence[str] = (),
                  batch_size: int = 32, num_workers: int = 0,
                  device: Union[str, torch.device] = "cpu", precision: str = "auto", teacher_names: Sequence[str] = (),
                  attrs: Optional[dict[str, Any]] = None, flush_every_batches: int = 10, dtype: str = "float32",
                  progress: bool = True, shard: tuple[int, int] = (0, 1), metrics: bool = True) -> dict[str, Any]:
    """Label every clip of `dataset` with `teacher` into `output_path` (resuming if it exists).

    `dataset` is any clip dataset of this package (AudioSet HDF5, ESC-50, FSD50K, DCASE20, OpenMIC,
    CSV, folder) opened at the teacher's sample rate with `replace_undecodable=False`, so that a
    clip that cannot be decoded is reported instead of replaced; `sources` (file/folder names) go
    into the output's attributes.
    `shard=(rank, world_size)` labels only the clips `i % world_size == rank` (the caller picks
    the shard's file name, see `shard_path`). Undecodable clips are recorded as missing in the
    output (`missing_audio_name`), never as zero logits.

    A teacher whose class count differs from the data's fails before anything is written.
    SIGINT/SIGTERM (in the main thread) stop the job cleanly: the current batch is finished (or
    the wait for the next one abandoned), everything labelled is committed, the handlers that
    were there before are restored and `LabellingInterrupted` is raised; rerun to continue. A
    run that fails or stops before labelling a single clip leaves no output file behind. The
    output is locked for the run's lifetime (a second run on it fails with `OutputLockedError`).

    `precision`: "auto" (default) or "32", see `_labelling_precision`; stored in the output's
    attributes (a resumed run must use the same).

    Returns a summary: clips labelled now / before, missing (undecodable) clips with names,
    clips/s and, when the data has labels (and `metrics`), the teacher's mAP on the labelled clips.
    """
    rank, world_size = (int(shard[0]), int(shard[1]))
    if not 0 <= rank < world_size:
        raise ValueError(f"shard rank {rank} is not in [0, {world_size})")
    if flush_every_batches < 1:
        raise ValueError(f"flush_every_batches must be >= 1, got {flush_every_batches}")
    output_path = Path(output_path)
    device = torch.device(device)
    precision = _labelling_precision(precision, device)
    sources = list(sources) or [str(getattr(dataset, "source", type(dataset).__name__))]
    sample_rate = _check_teacher_fits(teacher, dataset, teacher_names, sources)
    teacher = cast_model_weights(teacher.to(device).eval(), precision)
    info = {
        "teachers": list(teacher_names) or list(getattr(teacher, "names", [type(teacher).__name__])),
        "ensemble_rule": "mean of logits", "sample_rate": sample_rate, "clip_length": float(dataset.clip_length),
        "source_files": sources, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "precision": precision, **(attrs or {}), **({"shard": [rank, world_size]} if world_size > 1 else {}),
    }
    mine = [i for i, name in enumerate(dataset.audio_names) if i % world_size == rank]
    run = _LabellingRun(teacher, device, _autocast(device, precision), flush_every_batches)
    stop = StopOnSignal()
    start = time.time()
    with threads_for_cpu_work(device, log=rank == 0):  # fewer threads on busy cores (issue 26)
        writer = run.label_into(output_path, dataset, mine, stop, info=info, dtype=dtype, batch_size=batch_size,
                                num_workers=num_workers, progress=progress)
    summary = run.summary(output_path, writer, (rank, world_size), len(mine), max(time.time() - start, 1e-6),
                          precision)
    if not run.completed:
        raise LabellingInterrupted(stop.signum if stop.signum is not None else signal.SIGINT, summary)
    if run.missing:
        logger.warning("%d clips could not be decoded and have no teacher logits (first: %s)",
                       len(run.missing), ", ".join(run.missing[:5]))
    if metrics:
        summary.update(teacher_metrics(dataset, output_path))
    return summary


def _labelling_precision(requested: str, device: torch.device) -> str:
    """"auto" runs bf16 weights under bf16 autocast where the device multiplies bf16 natively
    (`hardware.native_bf16`: CUDA bf16, AVX512-BF16/AMX CPUs) and float32 elsewhere; "32" turns
    reduced precision off. bf16 changes the logits by up to ~0.02 (PaSST-S, AST; measured in
    benchmarks/RESULTS.md)."""
    precision = resolve_precision(requested, device)
    if requested == "auto":
        logger.info("precision auto: %s (%s)", precision, "native bf16 on this device" if precision == "bf16"
                    else "no native bf16 on this device")
    return precision


def _check_teacher_fits(teacher: nn.Module, dataset: Any, teacher_names: Sequence[str], sources: Sequence[str]) -> int:
    """Refuse data the teacher cannot label (rate, replaced clips, class count) before anything is
    written; returns the teacher's sample rate."""
    sample_rate = int(getattr(teacher, "sample_rate", 32000))
    if int(getattr(dataset, "sample_rate", sample_rate)) != sample_rate:
        raise ValueError(f"{_describe_teacher(teacher, teacher_names)} takes {sample_rate} Hz audio, the dataset is "
                         f"opened at {dataset.sample_rate} Hz: open it at the teacher's rate")
    if getattr(dataset, "replace_undecodable", False):
        raise ValueError("open the dataset with replace_undecodable=False for labelling: an undecodable clip "
                         "would otherwise be labelled with another clip's audio")
    teacher_classes = teacher_num_classes(teacher)
    if teacher_classes is not None and teacher_classes != dataset.num_classes:
        raise ValueError(f"{_describe_teacher(teacher, teacher_names)} outputs {teacher_classes} classes, but "
                         f"{', '.join(sources)} have {dataset.num_classes}: teacher logits must have "
                         f"one column per class of the data. Use a teacher trained on these classes (AudioSet: "
                         f"527; a dataset of your own: a model fine-tuned on it); nothing was written")
    return sample_rate


class _LabellingRun:
    """The labelling loop of one `label_dataset` call and what it has done so far."""

    def __init__(self, teacher: nn.Module, device: torch.device, autocast: Any, flush_every_batches: int) -> None:
        self.teacher, self.device, self.autocast = teacher, device, autocast
        self.flush_every_batches = flush_every_batches
        self.labelled = 0  # clips labelled by this run
        self.missing: list[str] = []  # undecodable clips met by this run
        self.done: set[str] = set()  # clips the output held when the run started
        self.missing_before = 0
        self.completed = False

    def label_into(self, output_path: Path, dataset: Any, mine: list[int], stop: StopOnSignal, *,
                   info: dict[str, Any], dtype: str, batch_size: int, num_workers: int,
                   progress: bool) -> Optional[TeacherLogitsWriter]:
        """Open (or resume) the output and label the clips `mine` it lacks; returns the closed writer
        (None when it could not be opened). An output this run created is removed if it holds nothing."""
        created = not output_path.exists()
        writer: Optional[TeacherLogitsWriter] = None
        try:
            # Handlers go in before the output is opened: from the moment the file is locked, a signal
            # means a clean stop.
            with stop:
                writer = TeacherLogitsWriter(output_path, num_classes=dataset.num_classes, attrs=info, dtype=dtype,
                                             resume=True)
                self.done = writer.existing_names()
                self.missing_before = len(writer.missing_names())
                todo = [i for i in mine if dataset.audio_names[i] not in self.done]
                loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, num_workers=num_workers,
                                    collate_fn=_collate)
                bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="teacher labelling", unit="clip",
                           disable=not progress, dynamic_ncols=True, smoothing=0.1)
                try:  # the bar and the output close however the loop ends
                    self.label(loader, writer, stop, bar)
                finally:
                    bar.close()
                    writer.close()  # commits every finished batch
        except SignalReceived:
            pass  # a second signal while closing: the file keeps what was committed
        finally:
            if not self.completed and created:
                _remove_if_empty(output_path, writer)
        return writer

    def label(self, loader: DataLoader, writer: TeacherLogitsWriter, stop: StopOnSignal, bar: Any) -> None:
        """Label the loader's batches into `writer` until done or a signal stops the run."""
        batches = None
        try:
            with stop.interruptible():  # starting workers changes nothing of ours
                batches = iter(loader)
            batch_index = 0
            while not stop.requested:
                # waiting for the next batch: a signal may end the run right here
                with stop.interruptible():
                    batch = next(batches, None)
                if batch is None:
                    self.completed = True
                    break
                self._label_batch(batch, writer)
                if (batch_index + 1) % self.flush_every_batches == 0:
                    writer.flush()
                bar.update(len(batch["audio_name"]))
                bar.set_postfix(missing=len(self.missing) + self.missing_before, refresh=False)
                batch_index += 1
        except SignalReceived as received:
            if received.forced:
                # a second signal may have landed inside a write: keep only what was committed
                dropped = writer.discard_buffer()
                self.labelled -= dropped
                logger.warning("second %s: stopping at once, %d unflushed clip(s) dropped",
                               signal_name(received.signum), dropped)
        finally:
            del batches  # shuts DataLoader workers down now

    def summary(self, output_path: Path, writer: Optional[TeacherLogitsWriter], shard: tuple[int, int], clips: int,
                elapsed: float, precision: str) -> dict[str, Any]:
        """What `label_dataset` returns (and `LabellingInterrupted` carries)."""
        missing_names = writer.missing_names() if writer is not None else []
        return {"output": str(output_path), "shard": list(shard), "clips": clips, "labelled_now": self.labelled,
                "labelled_before": len(self.done) - self.missing_before, "missing_undecodable": len(missing_names),
                "missing_names": missing_names, "clips_per_s": self.labelled / elapsed, "seconds": elapsed,
                "precision": precision}

    def _label_batch(self, batch: dict[str, Any], writer: TeacherLogitsWriter) -> None:
        ok = batch["decoded"]
        names = [n for n, good in zip(batch["audio_name"], ok.tolist()) if good]
        bad = [n for n, good in zip(batch["audio_name"], ok.tolist()) if not good]
        if bad:
            self.missing.extend(bad)
            writer.write_missing(bad)
        if names:
            with self.autocast:
                logits = self.teacher(batch["waveform"][ok].to(self.device))
            writer.write(names, logits.float().cpu().numpy())
            self.labelled += len(names)


def load_teachers(specs: Sequence[str], cache_dir: Optional[PathLike] = None) -> tuple[nn.Module, list[str]]:
    """Taggers for catalogue names / checkpoint paths; several become a `TeacherEnsemble` (mean of logits)."""
    from .tagging.tagger import load_tagger

    members, names = [], []
    for spec in specs:
        if Path(spec).is_file():
            members.append(load_tagger(None, spec, cache_dir=cache_dir))
            names.append(Path(spec).name)
        else:
            members.append(load_tagger(spec, cache_dir=cache_dir))
            names.append(spec)
    return (members[0] if len(members) == 1 else TeacherEnsemble(members, names)), names


def teacher_preprocessing(tagger: nn.Module) -> list[dict[str, Any]]:
    """The frontend settings of every member of a teacher (stored as a teacher-logits attribute)."""
    members = list(getattr(tagger, "members", [tagger]))
    out = []
    for member in members:
        model = getattr(member, "model", member)
        settings = dict(getattr(model, "preprocessing", None) or {})
        settings.setdefault("frontend", type(getattr(member, "frontend", None)).__name__)
        settings.setdefault("sr", int(getattr(member, "sample_rate", 0)) or None)
        out.append(json.loads(json.dumps(settings, default=str)))
    return out


def merge_job(dataset: Any, output: Path, world_size: int, keep_shards: bool = False) -> dict[str, Any]:
    """Rank 0 after a sharded run: merge the ranks' shards into `output`, check that they cover every clip of
    `dataset` (the labelled one, or AudioSet-format HDF5 paths), add the teacher's metrics."""
    opened = None
    if isinstance(dataset, (str, Path, list, tuple)):
        dataset = opened = AudioSetDataset(dataset, replace_undecodable=False)
    shards = [shard_path(output, r, world_size) for r in range(world_size)]
    summary = merge_teacher_logits(shards, output, expected_names=list(dataset.audio_names))
    summary.update(teacher_metrics(dataset, output))
    if opened is not None:
        opened.close()
    if not keep_shards:
        for path in shards:
            path.unlink()
    return summary
