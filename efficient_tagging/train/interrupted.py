"""Stopping a training run cleanly on Ctrl-C (SIGINT) or SIGTERM (a scheduler's `kill`, `timeout`).

The trainer holds an `efficient_tagging.interrupt.StopOnSignal` while it runs, armed once the
training loop starts: the first signal lets the current optimizer step finish, then `last.pt`
is written (a mid-epoch checkpoint, from which `--resume` continues exactly) and
`TrainingInterrupted` is raised. The same signal again aborts at once (`SignalReceived`,
forced); the last periodic checkpoint, written atomically, is still there.
"""
from __future__ import annotations

from pathlib import Path

from ..interrupt import exit_code, signal_name


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing `checkpoint`; resuming from it continues exactly.

    A KeyboardInterrupt, so code that lets Ctrl-C through (and sacred, which records the run
    as INTERRUPTED) treats it as one.
    """

    def __init__(self, signum: int, checkpoint: Path, epoch: int, step_in_epoch: int) -> None:
        self.signum = int(signum)
        self.signal_name = signal_name(signum)
        self.exit_code = exit_code(signum)
        self.checkpoint = Path(checkpoint)
        self.epoch = epoch
        self.step_in_epoch = step_in_epoch
        where = f"epoch {epoch + 1}, step {step_in_epoch}" if step_in_epoch else f"the end of epoch {epoch}"
        super().__init__(f"training stopped by {self.signal_name} at {where}; state saved to {checkpoint}")
