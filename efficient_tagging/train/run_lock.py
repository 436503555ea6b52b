"""An exclusive lock on a run directory, so two training runs never share one `out_dir`.

Two runs writing `last.pt` / `best.pt` into the same folder would overwrite each other's
checkpoints (one run's better `best.pt` replaced by the other's). The lock is the package's
`FileLock` on `<dir>/.lock`, held for the run's lifetime; the file records who holds it (pid,
host, start time, command) so the second run can say whom it collided with. The kernel drops
the lock when its holder dies, however it dies (`kill -9` included): a stale `.lock` file
never blocks the next run.
"""
from __future__ import annotations

import datetime
import socket
import sys
from pathlib import Path
from typing import Any, Union

from ..locking import FileLock, OutputLockedError, describe_holder

LOCK_NAME = ".lock"


class RunDirectoryBusy(OutputLockedError):
    """Another live process holds the lock of the run directory."""

    def __init__(self, directory: Path, holder: Union[str, dict[str, Any]]) -> None:
        if isinstance(holder, dict):
            holder = describe_holder(holder.get("pid"), holder)
        self.directory = Path(directory)
        super().__init__(
            f"{directory} is in use by another training run ({holder}; lock file {self.directory / LOCK_NAME}). "
            "Two runs in one out_dir would overwrite each other's last.pt/best.pt: wait for that run to finish, "
            "stop it, or give this run another --out_dir", self.directory / LOCK_NAME, None, holder)


class RunDirectoryLock(FileLock):
    """`with RunDirectoryLock(out_dir): ...` holds `out_dir/.lock` exclusively, or raises RunDirectoryBusy."""

    def __init__(self, directory: Union[str, Path]) -> None:
        self.directory = Path(directory)
        details = {"host": socket.gethostname(),
                   "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                   "argv": list(sys.argv)}
        super().__init__(self.directory / LOCK_NAME, what=f"training in {self.directory}", details=details)

    def acquire(self) -> "RunDirectoryLock":
        try:
            super().acquire()
        except OutputLockedError as busy:
            raise RunDirectoryBusy(self.directory, busy.holder) from None
        return self


class RunDirectoryHoldsRun(ValueError):
    """`out_dir` already holds the checkpoints of a run, and this run was asked neither to continue
    (`--resume`) nor to replace (`--overwrite`) it."""


#: checkpoints whose presence means out_dir holds a run (finished or interrupted)
RUN_CHECKPOINTS = ("last.pt", "best.pt")


def check_run_directory(directory: Union[str, Path], *, resume: bool = False, overwrite: bool = False,
                        probe_lock: bool = True) -> None:
    """Before anything is loaded: refuse an `out_dir` that another live run holds (RunDirectoryBusy),
    or one holding a run's checkpoints unless `resume` (continue it) or `overwrite` (replace it) --
    a rerun must never silently replace finished work (RunDirectoryHoldsRun, naming the files)."""
    directory = Path(directory)
    if probe_lock and (directory / LOCK_NAME).exists():
        with RunDirectoryLock(directory):  # raises RunDirectoryBusy while another run holds it
            pass
    if resume or overwrite:
        return
    present = [directory / name for name in RUN_CHECKPOINTS if (directory / name).is_file()]
    if present:
        when = datetime.datetime.fromtimestamp(max(p.stat().st_mtime for p in present)).isoformat(" ", "seconds")
        raise RunDirectoryHoldsRun(
            f"{directory} already holds a training run ({', '.join(p.name for p in present)}, last written {when}): "
            f"this run would replace its checkpoints. Give another --out_dir, --resume to continue that run (a "
            f"finished one is only evaluated again), or --overwrite to replace it")


def fresh_run_directory(base: Union[str, Path]) -> Path:
    """`base` if it holds no run's checkpoints, else the first of `base-2`, `base-3`, ... that holds none
    (the demo's student folders: a rerun keeps the earlier result and writes beside it)."""
    base = Path(base)
    candidate, number = base, 1
    while any((candidate / name).is_file() for name in RUN_CHECKPOINTS):
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate
