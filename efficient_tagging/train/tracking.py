"""Run records: a sacred `FileStorageObserver` on disk, plus optional Weights & Biases.

Usage from a plain training loop (no sacred decorators in user code):

    tracker = RunTracker("audioset_kd", runs_dir="runs", wandb_mode="offline", enabled=is_main_process())
    def main(tracker):
        for epoch in range(n_epochs):
            ...
            tracker.log_metrics({"train_loss": loss, "mAP": m}, step=epoch)
        tracker.add_artifact("best.pt")
        return {"mAP": m}                         # stored as the run's result
    result = tracker.run(main, config=vars(args))
    print("run recorded in", tracker.run_dir)

Each run gets a numbered folder `runs/<experiment_name>/<id>/` holding config.json, run.json
(host, command, sources, git state of the sources, status, result, artefact names),
metrics.json, info.json (our own git state, argv, torch/CUDA versions) and copies of the
artefacts. Sacred finds the sources' git commit itself (via GitPython); we also record
`git rev-parse HEAD` and a dirty flag of the project checkout in info.json.

Sacred runs the main function in the calling thread, so nothing about the training loop
changes. Output capture is off by default, so tqdm bars draw normally. Sacred touches no
network; W&B does only in "online" mode, which the user has to ask for.

W&B is never required: `wandb_mode="disabled"` (default) does not import it, and a failed
import or init warns once and the run goes on with the on-disk record only. "offline" writes
the W&B run under the sacred run folder (sync it later with `wandb sync`).

With `enabled=False` (every rank but 0) all methods are no-ops and `run` simply calls the
main function, so the training code needs no rank checks of its own.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

PathLike = Union[str, Path]
WANDB_MODES = ("disabled", "offline", "online")
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def git_state(path: PathLike) -> Optional[dict[str, Any]]:
    """Commit, dirty flag and root of the git checkout containing `path`; None outside one."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
    try:
        root = git("rev-parse", "--show-toplevel")
        commit = git("rev-parse", "HEAD")
        # Untracked files don't change what the tracked code does, so they don't count as dirty.
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"root": root, "commit": commit, "dirty": dirty}


def _jsonable(value: Any) -> Any:
    """Plain JSON types for a config/result: sacred rejects or mangles anything else."""
    if isinstance(value, dict):
        # sacred forbids '.' in keys (it is its path separator) and a leading '$' (MongoDB).
        return {str(k).replace(".", "_").lstrip("$"): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


def _scalar(value: Any) -> Optional[float]:
    """A float for a number, a 0-d/1-element tensor or array; None for anything else."""
    if isinstance(value, (numbers.Real, np.bool_)):  # includes bool and numpy scalars
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, np.ndarray) and value.size == 1:
        return float(value.item())
    return None


class _DropResultDump(logging.Filter):
    """Sacred logs the whole returned summary ("Result: {...}", pages of per-epoch history) at
    INFO; it is already in the run record's run.json, so the console keeps only the other lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Result:")


def _drop_result_dump(run_logger: logging.Logger) -> None:
    if not any(isinstance(f, _DropResultDump) for f in run_logger.filters):
        run_logger.addFilter(_DropResultDump())


class RunTracker:
    """Records one or more training/eval runs with sacred (on disk) and optionally W&B."""

    def __init__(self, experiment_name: str = "efficient_tagging", runs_dir: PathLike = "runs", *,
                 enabled: bool = True, wandb_mode: str = "disabled", wandb_project: str = "EfficientAudioTagging",
                 wandb_kwargs: Optional[dict[str, Any]] = None, capture_mode: str = "no") -> None:
        """
        Args:
            experiment_name: names the folder `runs_dir/experiment_name` and the W&B run.
            runs_dir: root of all run records.
            enabled: False makes every method a no-op (use on ranks other than 0).
            wandb_mode: "disabled" (default), "offline" or "online".
            wandb_project: W&B project name.
            wandb_kwargs: extra arguments for `wandb.init` (entity, tags, notes, ...).
            capture_mode: sacred's stdout capture: "no" (default; keeps tqdm intact), "sys" or "fd".
        """
        if wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb_mode must be one of {WANDB_MODES}, got {wandb_mode!r}")
        self.experiment_name = experiment_name
        self.runs_dir = Path(runs_dir)
        self.enabled = enabled
        self.wandb_mode = wandb_mode
        self.wandb_project = wandb_project
        self.wandb_kwargs = dict(wandb_kwargs or {})
        self.capture_mode = capture_mode
        self.config: dict[str, Any] = {}
        self._run = None           # sacred Run while `run` is executing
        self._observer = None
        self._wandb_run = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ running
    def run(self, main_fn: Callable[["RunTracker"], Any], config: Any,
            info: Optional[dict[str, Any]] = None) -> Any:
        """Run `main_fn(self)` as a recorded run with `config` (a dict or an argparse Namespace).

        The return value (made JSON-friendly) becomes the run's result. An exception marks
        the run FAILED (Ctrl-C: INTERRUPTED) in the record and propagates unchanged.
        Sacred records `config["seed"]` if present, else a seed of its own that nothing uses:
        global RNG states are left exactly as the caller set them.
        """
        self.config = _jsonable(dict(config) if isinstance(config, dict) else dict(vars(config)))
        if not self.enabled:
            return main_fn(self)

        from sacred import Experiment
        from sacred.observers import FileStorageObserver

        # base_dir = this package: sacred then stores the package's imported sources (and their
        # git commit), not everything under site-packages when installed non-editable.
        ex = Experiment(self.experiment_name, base_dir=str(_PACKAGE_DIR), save_git_info=True)
        main_script = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_script and main_script.endswith(".py") and os.path.isfile(main_script):
            ex.add_source_file(os.path.abspath(main_script))  # the script that drives the run
        self._observer = FileStorageObserver(self.runs_dir / self.experiment_name)
        ex.observers.append(self._observer)
        ex.add_config(self.config)
        ex.logger = logging.getLogger("efficient_tagging.runs")
        _drop_result_dump(ex.logger.getChild(ex.path))  # the logger sacred's run logs to

        outcome: dict[str, Any] = {}

        def main(_run):
            self._run = _run
            _run.info.update(self._run_info())
            if info:
                _run.info.update(_jsonable(info))
            self._start_wandb()
            exit_code = 1
            try:
                outcome["value"] = main_fn(self)
                exit_code = 0
            finally:
                self._finish_wandb(exit_code, outcome.get("value"))
                self._run = None
            return _jsonable(outcome["value"])

        ex.main(main)
        # Sacred re-seeds random/numpy/torch from config["seed"] when a run starts. The trainer
        # seeds its own RNGs, so that side effect is switched off for the duration of the run.
        import sacred.run
        set_global_seed = sacred.run.set_global_seed
        sacred.run.set_global_seed = lambda seed: None
        try:
            ex.run(options={"--capture": self.capture_mode})
        finally:
            sacred.run.set_global_seed = set_global_seed
        return outcome["value"]

    @property
    def run_dir(self) -> Optional[Path]:
        """Folder of the current (or last) run's record; None when disabled or not started."""
        if not self.enabled or self._observer is None or getattr(self._observer, "dir", None) is None:
            return None
        return Path(self._observer.dir)

    # ------------------------------------------------------------------ recording
    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        """Record scalar metrics at `step` (use one step axis per run, e.g. the epoch).

        Numbers and one-element tensors/arrays go to sacred's metrics.json and W&B; other
        values (e.g. a per-class AP list) are kept as the latest value under that key in
        info.json instead.
        """
        if not self.enabled:
            return
        if self._run is None:
            self._warn_once("outside", "RunTracker.log_metrics called outside RunTracker.run; ignored")
            return
        scalars = {}
        for name, value in metrics.items():
            number = _scalar(value)
            if number is None:
                self._run.info[name] = _jsonable(value)
                continue
            scalars[name] = number
            self._run.log_scalar(name, number, step)
        if self._wandb_run is not None and scalars:
            try:
                self._wandb_run.log(scalars, step=step)
            except Exception as err:  # W&B is optional: never let it stop training
                self._warn_once("wandb_log", f"wandb.log failed ({err}); continuing without W&B")

    def add_artifact(self, path: PathLike, name: Optional[str] = None) -> None:
        """Copy a file (checkpoint, plot, table) into the run record (and W&B files)."""
        if not self.enabled:
            return
        if self._run is None:
            self._warn_once("outside", "RunTracker.add_artifact called outside RunTracker.run; ignored")
            return
        path = Path(path)
        self._run.add_artifact(str(path), name=name)
        if self._wandb_run is not None:
            try:
                self._wandb_run.save(str(path.resolve()), base_path=str(path.resolve().parent), policy="now")
            except Exception as err:
                self._warn_once("wandb_save", f"wandb save of {path} failed ({err})")

    def log_info(self, key: str, value: Any) -> None:
        """Store a free-form value (dataset sizes, class counts, ...) in info.json."""
        if self.enabled and self._run is not None:
            self._run.info[key] = _jsonable(value)

    # ------------------------------------------------------------------ internals
    def _run_info(self) -> dict[str, Any]:
        cuda = torch.cuda.is_available()
        return {
            "git": git_state(_PACKAGE_DIR) or git_state(Path.cwd()),
            "argv": list(sys.argv),
            "cwd": str(Path.cwd()),
            "torch": {
                "version": str(torch.__version__),
                "cuda": torch.version.cuda,
                "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            },
        }

    def _start_wandb(self) -> None:
        self._wandb_run = None
        if self.wandb_mode == "disabled":
            return
        try:
            import wandb
            kwargs = dict(project=self.wandb_project, name=self.experiment_name, config=self.config,
                          mode=self.wandb_mode, dir=str(self.run_dir),
                          # console="off": W&B must not wrap stdout/stderr (tqdm, sacred).
                          settings=wandb.Settings(console="off", silent=True))
            kwargs.update(self.wandb_kwargs)
            self._wandb_run = wandb.init(**kwargs)
            if self._run is not None and self._wandb_run is not None:
                self._run.info["wandb"] = {"mode": self.wandb_mode, "id": self._wandb_run.id,
                                           "dir": str(self._wandb_run.dir)}
        except Exception as err:
            self._warn_once("wandb_init", f"W&B unavailable ({type(err).__name__}: {err}); "
                                          "recording the run on disk only")
            self._wandb_run = None

    def _finish_wandb(self, exit_code: int, result: Any) -> None:
        if self._wandb_run is None:
            return
        try:
            if exit_code == 0 and isinstance(result, dict):
                for key, value in result.items():
                    number = _scalar(value)
                    if number is not None and math.isfinite(number):
                        self._wandb_run.summary[key] = number
            self._wandb_run.finish(exit_code=exit_code)
        except Exception as err:
            self._warn_once("wandb_finish", f"wandb finish failed ({err})")
        self._wandb_run = None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
