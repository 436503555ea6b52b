"""Stopping a training run cleanly on Ctrl-C (SIGINT) or SIGTERM (a scheduler's `kill`, `timeout`).

`GracefulStop` installs handlers for the two signals only while training runs (and restores
the previous ones after), so importing the library changes no process-wide behaviour. The
first signal only sets a flag: the loop finishes the optimizer step it is in, writes
`last.pt` (a mid-epoch checkpoint, from which `--resume` continues exactly) and raises
`TrainingInterrupted`. The same signal again while that happens aborts at once (the previous
handler runs: KeyboardInterrupt for SIGINT, termination for SIGTERM); the last periodic
checkpoint, written atomically, is still there. The other signal is then ignored: torchrun
answers a Ctrl-C by sending its workers SIGTERM, which must not abort the clean stop.

DataLoader workers are forked while the handlers are installed, so they inherit them: a
Ctrl-C (sent to the whole foreground process group) does not kill the workers under the
step that is finishing.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Optional

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code_for(signum: int) -> int:
    """The shell's exit status of a process ended by `signum`: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing `checkpoint`; resuming from it continues exactly.

    A KeyboardInterrupt, so code that lets Ctrl-C through (and sacred, which records the run
    as INTERRUPTED) treats it as one.
    """

    def __init__(self, signum: int, checkpoint: Path, epoch: int, step_in_epoch: int) -> None:
        self.signum = int(signum)
        self.signal_name = signal.Signals(signum).name
        self.exit_code = exit_code_for(signum)
        self.checkpoint = Path(checkpoint)
        self.epoch = epoch
        self.step_in_epoch = step_in_epoch
        where = f"epoch {epoch + 1}, step {step_in_epoch}" if step_in_epoch else f"the end of epoch {epoch}"
        super().__init__(f"training stopped by {self.signal_name} at {where}; state saved to {checkpoint}")


class GracefulStop:
    """`with GracefulStop() as stop:` ... `stop.armed = True` ... `if stop.requested: ...`

    While armed, SIGINT/SIGTERM set a flag instead of interrupting.

    Outside the main thread (where Python cannot install signal handlers) it does nothing and
    `requested` stays None.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        # Until armed (the training loop starts), a signal acts as it did before: a Ctrl-C while
        # the data is being opened must not wait for a first training step.
        self.armed = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> Optional[int]:
        """The first signal received (a number), or None."""
        return self.signum

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is not None and signum != self.signum:
            return  # already stopping; e.g. torchrun's SIGTERM to its workers after a Ctrl-C
        if self.signum is not None or not self.armed:
            # Not armed yet, or the same signal again (the user wants out now): the previous handler.
            previous = self._previous.get(signum, signal.SIG_DFL)
            self._restore()
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        # Only the flag here: logging from a signal handler can deadlock on the handler's lock.
        self.signum = signum

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not the main thread: SIGINT/SIGTERM keep their handlers during training")
            return self
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue  # e.g. SIGINT of a job started in the background: it asked not to be interrupted
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self._restore()
