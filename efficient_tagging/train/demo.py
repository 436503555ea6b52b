"""The embedded demo of the AudioSet command: synthetic AudioSet-format data -> a small PaSST teacher
trained on it -> teacher logits -> a student distilled from them -> both evaluated.

Everything is cached under the demo folder (data, teacher, logits), so a rerun only trains a new
student. Progress notices go to ``notify`` (the command prints them; by default they are logged).
The recipes themselves (DEMO_RECIPE, the teacher run) live in ``train/audioset.py``.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..complexity import complexity_report, spectrogram_shape
from ..data.demo import DemoDataset, build_demo_dataset, default_demo_root
from ..data.hdf5 import AudioSetDataset
from ..models.factory import get_model
from ..tagging.tagger import AudioTagger
from .audioset import DEMO_RECIPE, TEACHER_RUNTIME_FLAGS, demo_teacher_config
from .distributed import DistInfo
from .recorded import run_recorded_training
from .reproducibility import portable_cpu_numerics
from .run_lock import fresh_run_directory
from .trainer import TrainConfig, evaluate

logger = logging.getLogger(__name__)

VENDOR_NAMES = {"intel": "Intel", "amd": "AMD"}

#: labelling.label_hdf5 (teacher logits of HDF5 clips). Passed in by the caller: labelling sits on
#: the floor above train, so this module cannot import it.
LabelClips = Callable[..., Any]


@dataclass
class DemoSettings:
    """What a demo run is asked for (the AudioSet command's flags, as plain values)."""

    demo_dir: Optional[str] = None  # cache of data, teacher and logits (None: <cache>/demo)
    clips: int = 2000  # training clips; the eval split gets an eighth as many (at least 16)
    native_cpu: bool = False  # this CPU's fastest kernels instead of portable numerics
    progress: bool = True
    # TrainConfig values the user set (unset ones come from DEMO_RECIPE); the teacher takes only
    # TEACHER_RUNTIME_FLAGS of them
    train_values: dict[str, Any] = field(default_factory=dict)
    experiment_name: Optional[str] = None  # student run record name (None: demo_student)
    runs_dir: str = "runs"
    wandb: Optional[str] = None  # W&B mode of both runs (None: disabled)


@dataclass
class DemoRun:
    """What a demo run gives back."""

    summary: dict[str, Any]  # the student's training summary (every rank)
    result: Optional[dict[str, Any]] = None  # the demo's numbers (rank 0 only): data, teacher, student, timing


@dataclass
class _Teacher:
    config: TrainConfig
    summary: dict[str, Any]  # empty when a cached teacher was reused

    @property
    def directory(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def checkpoint(self) -> Path:
        return self.directory / "best.pt"

    @property
    def logits(self) -> Path:
        return self.directory / "teacher_logits.h5"


def _log(text: str) -> None:
    logger.info(text)


def _barrier(dist_info: DistInfo) -> None:
    if dist_info.enabled:
        torch.distributed.barrier()


def _cpu_numerics(settings: DemoSettings, is_main: bool, notify: Callable[[str], None]) -> dict[str, Any]:
    """Portable CPU numerics (the same numbers on every CPU of one vendor) unless native ones are asked for."""
    if settings.native_cpu:
        return {"native": True}
    numerics = portable_cpu_numerics(threads=2)
    if is_main:
        vendor = VENDOR_NAMES.get(str(numerics.get("cpu_vendor")), "x86-64")
        notify(f"[demo] portable CPU numerics ({numerics.get('aten_capability')} kernels, {numerics['threads']} "
               f"threads): the same numbers on every {vendor} CPU with AVX2, other vendors' differ (README); "
               "--demo_native_cpu for this CPU's fastest kernels")
    return numerics


def _demo_data(settings: DemoSettings, root: Path, dist_info: DistInfo, notify: Callable[[str], None]) -> DemoDataset:
    """The synthetic dataset, built by rank 0 (once: cached) while the other ranks wait."""
    sizes = {"num_train": settings.clips, "num_eval": max(16, settings.clips // 8),
             "sample_rate": DEMO_RECIPE.sample_rate, "clip_length": DEMO_RECIPE.clip_length}
    if dist_info.rank == 0:
        notify(f"[demo] no data paths given: using the embedded demo dataset in {root}")
        build_demo_dataset(root, progress=settings.progress, **sizes)
    _barrier(dist_info)
    return build_demo_dataset(root, progress=False, **sizes)  # built above: only checks the cache


def _teacher_config(settings: DemoSettings, data: DemoDataset, root: Path) -> TrainConfig:
    # demo_teacher_config reads the command's options as attributes
    options = types.SimpleNamespace(**{name: settings.train_values.get(name) for name in TEACHER_RUNTIME_FLAGS},
                                    demo_clips=settings.clips, no_progress=not settings.progress,
                                    demo_native_cpu=settings.native_cpu)
    return demo_teacher_config(options, data.train_path, data.eval_path, root)


def _trained_teacher(settings: DemoSettings, data: DemoDataset, root: Path, dist_info: DistInfo,
                     notify: Callable[[str], None]) -> _Teacher:
    """The demo teacher: a cached one (its folder is keyed by its settings), else trained now."""
    teacher = _Teacher(_teacher_config(settings, data, root), {})
    if not teacher.checkpoint.is_file():
        if dist_info.rank == 0:
            notify(f"[demo] {'resuming' if teacher.config.resume else 'training'} the teacher "
                   f"({teacher.config.arch}, {teacher.config.model_kwargs}) on the demo labels")
        teacher.summary = run_recorded_training(teacher.config, dist_info, experiment_name="demo_teacher",
                                                runs_dir=settings.runs_dir, wandb_mode=settings.wandb or "disabled",
                                                report_epoch=notify)
    return teacher


def _label_training_set(settings: DemoSettings, data: DemoDataset, teacher: _Teacher, dist_info: DistInfo,
                        label_clips: LabelClips, notify: Callable[[str], None]) -> None:
    """Teacher logits of the training clips (rank 0, once: cached beside the teacher)."""
    if dist_info.rank == 0 and not teacher.logits.is_file():
        notify("[demo] labelling the demo training set with the teacher")
        tagger = AudioTagger(get_model(str(teacher.checkpoint)))
        # float32 unless native: bf16 exists on some CPUs only, and the demo gives the same numbers everywhere
        label_clips(tagger, [data.train_path], teacher.logits, clip_length=data.clip_length, batch_size=64,
                    teacher_names=[f"demo_teacher_{teacher.directory.name}"],
                    precision="auto" if settings.native_cpu else "32", progress=settings.progress)
    _barrier(dist_info)


def _student_config(settings: DemoSettings, data: DemoDataset, root: Path, teacher: _Teacher, is_main: bool,
                    notify: Callable[[str], None]) -> TrainConfig:
    """DEMO_RECIPE on the demo data, the user's values over it; a fresh folder unless one is given."""
    config = dataclasses.replace(copy.deepcopy(DEMO_RECIPE), train_hdf5=[str(data.train_path)],
                                 eval_hdf5=[str(data.eval_path)], **settings.train_values)
    if settings.train_values.get("out_dir") is None:
        default_dir = root / "student" / f"{config.arch}{str(config.width_mult).replace('.', '')}"
        # a rerun keeps the earlier student and writes beside it (--resume / --overwrite: that folder)
        config.out_dir = str(default_dir if config.resume or config.overwrite else fresh_run_directory(default_dir))
        if is_main and Path(config.out_dir) != default_dir:
            notify(f"[demo] {default_dir} holds an earlier student run (kept; --overwrite replaces it, --resume "
                   f"continues it): this run writes {config.out_dir}")
    config.teacher_logits = config.teacher_logits or str(teacher.logits)
    return config


def _complexity(model: torch.nn.Module, config: TrainConfig) -> dict[str, Any]:
    shape = spectrogram_shape(config.n_mels, config.hop_size, config.sample_rate, duration=config.clip_length)
    report = complexity_report(model, shape)
    return {"params": report.params, "macs": report.macs, "input_shape": list(shape)}


def _results(data: DemoDataset, teacher: _Teacher, teacher_model: torch.nn.Module, student_config: TrainConfig,
             summary: dict[str, Any], numerics: dict[str, Any], started: float) -> dict[str, Any]:
    """Teacher quality on the same eval split (through its own frontend, from its checkpoint), the
    student's, and both models' size and cost."""
    teacher_tagger = AudioTagger(teacher_model)
    eval_set = AudioSetDataset([data.eval_path], sample_rate=teacher_tagger.sample_rate,
                               clip_length=data.clip_length)
    teacher_metrics = evaluate(teacher_tagger.model, teacher_tagger.frontend, eval_set, torch.device("cpu"),
                               DistInfo(False, 0, 1, 0, torch.device("cpu")), 64, 0, progress=False)
    student_model = get_model(summary["checkpoints"]["best"])
    return {
        "demo": True,
        "data": {"train": str(data.train_path), "eval": str(data.eval_path), "classes": list(data.label_map.names),
                 "clip_length_s": data.clip_length, "sample_rate": data.sample_rate},
        "teacher": {"mAP": teacher_metrics["mAP"], "ROC": teacher_metrics["mean_roc_auc"],
                    "arch": teacher.config.arch, "checkpoint": str(teacher.checkpoint),
                    "logits": str(teacher.logits), **_complexity(teacher_model, teacher.config)},
        "student": {"arch": student_config.arch, "mAP": summary["final"].get("mAP"), "best_mAP": summary["best_mAP"],
                    "ROC": summary["final"].get("ROC"), "checkpoint": summary["checkpoints"]["best"],
                    **_complexity(student_model, student_config)},
        "run_dir": summary["run_dir"],
        "teacher_run_dir": teacher.summary.get("run_dir"),
        "skipped_clips": summary["skipped_clips"],
        "cpu_numerics": numerics,
        "seconds": time.time() - started,
    }


def run_demo(settings: DemoSettings, dist_info: DistInfo, label_clips: LabelClips,
             notify: Callable[[str], None] = _log) -> DemoRun:
    """The whole demo; ``label_clips`` is ``labelling.label_hdf5``, ``notify`` gets the "[demo]" notices
    (rank 0 only). Under torchrun every rank calls this; rank 0 builds, labels and evaluates."""
    started = time.time()
    root = default_demo_root(settings.demo_dir)
    is_main = dist_info.rank == 0
    numerics = _cpu_numerics(settings, is_main, notify)
    data = _demo_data(settings, root, dist_info, notify)
    teacher = _trained_teacher(settings, data, root, dist_info, notify)
    _label_training_set(settings, data, teacher, dist_info, label_clips, notify)

    teacher_model = get_model(str(teacher.checkpoint))
    config = _student_config(settings, data, root, teacher, is_main, notify)
    if is_main:
        notify(f"[demo] distilling the student ({config.arch}, width {config.width_mult}) from the teacher logits")
    summary = run_recorded_training(config, dist_info, experiment_name=settings.experiment_name or "demo_student",
                                    runs_dir=settings.runs_dir, wandb_mode=settings.wandb or "disabled",
                                    report_epoch=notify)
    if not is_main:
        return DemoRun(summary)
    return DemoRun(summary, _results(data, teacher, teacher_model, config, summary, numerics, started))
