"""An exclusive lock on a run directory, so two training runs never share one `out_dir`.

Two runs writing `last.pt` / `best.pt` into the same folder would overwrite each other's
checkpoints (one run's better `best.pt` replaced by the other's). The lock is an advisory
`fcntl.flock` on `<dir>/.lock`, held for the run's lifetime; the file records who holds it
(pid, host, start time, command) so the second run can say whom it collided with.

The kernel releases a flock when its process dies, however it dies (`kill -9` included), so
a stale `.lock` file left behind never blocks the next run: only a live holder does. The file
itself is left in place on purpose (deleting it would let a third process lock a new inode
while a second still holds the old one).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Optional, Union

try:
    import fcntl
except ImportError:  # not on POSIX: no flock; runs go unlocked (logged)
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the lock of the run directory."""

    def __init__(self, directory: Path, holder: dict[str, Any]) -> None:
        self.directory = directory
        self.holder = holder
        who = f"pid {holder['pid']}" if holder.get("pid") is not None else "a process of unknown pid"
        if holder.get("host"):
            who += f" on {holder['host']}"
        if holder.get("started"):
            who += f", started {holder['started']}"
        super().__init__(
            f"{directory} is in use by another training run ({who}; lock file {directory / LOCK_NAME}). "
            "Two runs in one out_dir would overwrite each other's last.pt/best.pt: wait for that run to finish, "
            "stop it, or give this run another --out_dir")


def read_lock_holder(directory: Union[str, Path]) -> dict[str, Any]:
    """What the lock file of `directory` says about its (last) holder; {} if nothing readable."""
    try:
        return dict(json.loads((Path(directory) / LOCK_NAME).read_text() or "{}"))
    except (OSError, ValueError, TypeError):
        return {}


class RunDirectoryLock:
    """`with RunDirectoryLock(out_dir): ...` holds `out_dir/.lock` exclusively, or raises RunDirectoryBusy.

    Not re-entrant: flock locks belong to an open file, so a second lock of the same directory
    fails even inside the same process.
    """

    def __init__(self, directory: Union[str, Path]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunDirectoryLock":
        if self._fd is not None:
            return self
        if fcntl is None:
            logger.warning("no fcntl on this platform: %s is not locked against a second run", self.directory)
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirectoryBusy(self.directory, read_lock_holder(self.directory)) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "argv": list(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunDirectoryLock":
        return self.acquire()

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.release()
