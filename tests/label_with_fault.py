"""Test helper: run a teacher-labelling command line that meets a fault after N batches.

    python tests/label_with_fault.py FAULT BATCHES SCRIPT [labelling flags...]

FAULT is KILL (the process dies like `kill -9`, no cleanup) or a signal a user sends (INT, TERM).
The fault comes from outside the labelling code, which knows nothing of it: the teacher-logits
writer is wrapped so that, counted in batches written, the process is hit where a kill or a
Ctrl-C could land. SCRIPT (e.g. experiments/ex_teacher_labels.py) then runs as if started
directly, with its own `sys.argv`, so what it prints (the command that continues the run) is
what a user would see.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys
from typing import Any, Callable, Sequence

from efficient_tagging.data.teacher_logits import TeacherLogitsWriter


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(17)  # no SIGKILL (Windows): the same abrupt end, no cleanup


def faulty_write(fault: str, batches: int) -> Callable[..., Any]:
    """A replacement for `TeacherLogitsWriter.write` that brings `fault` after `batches` written batches.

    KILL strikes as the next batch is about to be written, i.e. after everything batch `batches`
    did (its flush included), losing whatever was only buffered. A signal is sent right after
    batch `batches` is written, so the run stops at the end of that batch, as for a Ctrl-C that
    arrives during it.
    """
    fault = fault.upper().removeprefix("SIG")
    signum = None if fault == "KILL" else int(getattr(signal, "SIG" + fault))
    original = TeacherLogitsWriter.write
    written = 0

    def write(self: TeacherLogitsWriter, *args: Any, **kwargs: Any) -> Any:
        nonlocal written
        if signum is None and written == batches:
            _die()
        result = original(self, *args, **kwargs)
        written += 1
        if signum is not None and written == batches:
            os.kill(os.getpid(), signum)
        return result

    return write


def main(argv: Sequence[str]) -> None:
    fault, batches, script, *flags = argv
    TeacherLogitsWriter.write = faulty_write(fault, int(batches))  # type: ignore[method-assign]
    sys.argv = [script, *flags]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
