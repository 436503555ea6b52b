"""One training run recorded as a run (sacred record, optional W&B), with its per-class APs beside
the checkpoints: what the AudioSet command and its demo's teacher and student runs share."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from .distributed import DistInfo
from .tracking import RunTracker
from .trainer import TrainConfig, train


def run_recorded_training(config: TrainConfig, dist_info: DistInfo, *, experiment_name: str, runs_dir: str,
                          wandb_mode: str, report_epoch: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Train ``config`` inside a run record ``runs_dir/experiment_name/<id>`` (rank 0 records).

    Returns the trainer's summary plus ``run_dir`` (the record's folder; None where nothing was
    recorded). Rank 0 adds best.pt and ``out_dir/per_class_ap.json`` to the record. ``report_epoch`` gets
    each epoch's line (`trainer.train`).
    """
    tracker = RunTracker(experiment_name, runs_dir, enabled=dist_info.rank == 0, wandb_mode=wandb_mode)

    def main(run_tracker: RunTracker) -> dict[str, Any]:
        summary = train(config, run_tracker, report_epoch=report_epoch)
        if dist_info.rank == 0:
            run_tracker.add_artifact(summary["checkpoints"]["best"])
            per_class = Path(config.out_dir) / "per_class_ap.json"
            per_class.write_text(json.dumps(dict(zip(summary["class_names"] or [], summary["per_class_ap"] or [])),
                                            indent=1))
            run_tracker.add_artifact(per_class)
        return summary

    summary = tracker.run(main, config.to_dict(), info=None)
    summary["run_dir"] = str(tracker.run_dir) if tracker.run_dir else None
    return summary
