"""Exclusive locks on output files, held by a writer for its lifetime.

A lock is a small file next to what it protects (`OUTPUT.lock`) holding the holder's pid,
locked with `fcntl.flock`. The kernel drops the lock when its holder exits, however it exits
(kill -9 included), so a stale lock file never blocks a later run; a clean release deletes it.

    with FileLock(lock_path_for(output), what=f"writing {output}"):
        ...  # a second process gets OutputLockedError("another process is writing OUTPUT (pid N)")
"""
from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks, writers are not protected against each other
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

__all__ = ["FileLock", "OutputLockedError", "lock_path_for"]


class OutputLockedError(RuntimeError):
    """Another process holds the lock: it is writing the same output right now."""

    def __init__(self, message: str, lock_path: Path, holder_pid: Optional[int], holder: str = ""):
        super().__init__(message)
        self.lock_path = lock_path
        self.holder_pid = holder_pid
        self.holder = holder  # "pid N on HOST, started T"


def lock_path_for(path: PathLike) -> Path:
    """`<path>.lock`: the lock file that guards `path`."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _read_details(fd: int) -> dict[str, Any]:
    try:
        lines = os.pread(fd, 65536, 0).decode("utf-8", "replace").splitlines()
        return dict(json.loads(lines[1])) if len(lines) > 1 else {}
    except (OSError, ValueError, TypeError):
        return {}


def describe_holder(pid: Optional[int], details: dict[str, Any]) -> str:
    """"pid N on HOST, started T" from what a lock file says about its holder."""
    who = f"pid {pid}" if pid is not None else "pid unknown"
    if details.get("host"):
        who += f" on {details['host']}"
    if details.get("started"):
        who += f", started {details['started']}"
    return who


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text.split()[0]) if text else None
    except (OSError, ValueError, IndexError):
        return None


class FileLock:
    """An exclusive lock on `lock_path` (see the module docstring).

    `what` completes the refusal message: "another process is {what} (pid N)". By default a
    held lock is refused at once (a second writer is an error); `blocking=True` waits for the
    holder instead (e.g. a second downloader of the same file, which then reuses its result).
    Re-acquiring a lock this object already holds is a no-op; locks of other `FileLock`
    objects on the same path conflict even within one process.
    """

    def __init__(self, lock_path: PathLike, what: str, blocking: bool = False,
                 details: Optional[dict[str, Any]] = None):
        self.path = Path(lock_path)
        self.what = what
        self.blocking = blocking
        self.details = dict(details or {})  # written after the pid (JSON) for whoever collides with us
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FileLock":
        if self._fd is not None:
            return self
        if fcntl is None:
            log.warning("no file locking on this platform: %s is not protected against a second writer", self.path)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                pid = _read_pid(fd)
                if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                holder = describe_holder(pid, _read_details(fd))
                if not self.blocking:
                    os.close(fd)
                    raise OutputLockedError(f"another process is {self.what} ({holder}); wait for it to finish "
                                            f"or stop it (lock file: {self.path})", self.path, pid, holder) from None
                log.info("waiting for another process %s (%s, lock file %s)", self.what, holder, self.path)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
            # The previous holder may have deleted the lock file between our open and flock: then
            # we hold a lock on a file nobody else can see. Only the file at the path counts.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                os.close(fd)
                continue
            mine = os.fstat(fd)
            if (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            content = f"{os.getpid()}\n" + (json.dumps(self.details) + "\n" if self.details else "")
            os.pwrite(fd, content.encode("utf-8"), 0)
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            # delete while still holding it, so nobody can lock the file we are about to drop
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.release()


def temporary_file(destination: Union[str, Path], suffix: str = ".tmp") -> tuple[int, str]:
    """`tempfile.mkstemp` beside `destination` for an atomic write (write, then `os.replace`), with
    the permissions a plain `open()` would give the file (0666 less the umask) instead of mkstemp's
    private 0600 -- so other users and containers can read what was written. Returns (fd, path)."""
    destination = Path(destination)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=suffix, dir=destination.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(handle, 0o666 & ~umask)
    return handle, temporary
