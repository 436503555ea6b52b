"""Turning Ctrl-C (SIGINT) and SIGTERM into a clean stop of a long job.

    with StopOnSignal() as stop:
        for ...:
            if stop.requested:
                break                      # a safe point: nothing half-written
            with stop.interruptible():     # waiting for data: safe to leave at once
                batch = next(batches)
            ...
    if stop.signum is not None:
        ...  # flush, say how to continue, exit 128 + signum

The first signal only sets `signum`; the job stops at its next safe point. While the main
thread is inside `interruptible()` (e.g. blocked waiting for a DataLoader batch, where
nothing of the job's state is being changed), the signal raises `SignalReceived` right
away. The same signal a second time raises `SignalReceived(forced=True)` wherever the job
is: the caller must then treat unflushed state as suspect. The other signal is ignored once
stopping (torchrun answers a Ctrl-C by sending its workers SIGTERM, which must not turn a
clean stop into an abort). Until `armed` (e.g. while data and models are being opened), a
signal acts as it did before the block. Signals the process ignores (SIG_IGN, e.g. SIGINT of
a job started in the background) stay ignored. Handlers are installed only for the block's
duration and only in the main thread (elsewhere the block does nothing), and the previous
handlers are restored afterwards. Processes forked inside the block (DataLoader workers)
inherit the handlers but keep the previous behaviour: only the job's process stops cleanly.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator, Optional, Sequence

__all__ = ["SignalReceived", "StopOnSignal", "exit_code", "signal_name"]


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """The shell's convention for a job ended by a signal: 128 + signal number (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(signum)


class SignalReceived(BaseException):
    """Raised out of `StopOnSignal.interruptible()` blocks, or anywhere on a second signal.

    A BaseException (like KeyboardInterrupt), so `except Exception` handlers on the way up
    do not swallow the stop.
    """

    def __init__(self, signum: int, forced: bool = False):
        super().__init__(f"{signal_name(signum)} received" + (" again: stopping at once" if forced else ""))
        self.signum = signum
        self.forced = forced


class StopOnSignal:
    """Context manager: SIGINT/SIGTERM request a stop instead of killing the process (see the module doc)."""

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM), armed: bool = True):
        self.signals = tuple(signals)
        self.armed = armed
        self.signum: Optional[int] = None
        self._previous: dict[int, object] = {}
        self._interruptible = False
        self._active = False
        self._pid: Optional[int] = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid or (not self.armed and self.signum is None):
            # A forked child (e.g. a DataLoader worker) inherited this handler: it is not the job's
            # process, so the signal does there what it did before (Ctrl-C: KeyboardInterrupt,
            # which torch's workers treat as a quiet exit). Likewise before the job is armed.
            self._forward_in_child(signum, frame)
            return
        if self.signum is not None:
            if signum != self.signum:
                return  # already stopping: e.g. torchrun's SIGTERM to its workers after a Ctrl-C
            raise SignalReceived(signum, forced=True)
        self.signum = signum
        if self._interruptible:
            raise SignalReceived(signum)

    def _forward_in_child(self, signum: int, frame) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Inside: a stop request raises `SignalReceived` at once (use where no state is being changed)."""
        if self.signum is not None and self._active:
            raise SignalReceived(self.signum)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            for signum in self.signals:
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
            self._active = True
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        self._active = False
