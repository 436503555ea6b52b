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
