"""Download cache for checkpoints and metadata files.

Files are fetched once into a cache directory and reused. The directory is chosen, in
order, by an explicit `cache_dir` argument, the `EFFICIENT_TAGGING_CACHE` environment
variable, the `pretrained/` folder of a source checkout, or `~/.cache/efficient_tagging`.

What may end up in the cache (each rule exists because the opposite happened):

- Only `https://` and `file://` URLs are fetched (a local mirror is a `file://` folder, see
  `EFFICIENT_TAGGING_MIRROR` in `get_model`); plain `http://` is refused, also after a
  redirect. `EFFICIENT_TAGGING_ALLOW_HTTP_LOCALHOST=1` allows `http://` to `localhost` /
  `127.0.0.1` / `::1` only: for tests and a mirror served on this machine.
- A download goes to a temporary file in the cache directory and is renamed into place only
  when it is complete and plausible: as many bytes as the server's Content-Length, not an
  HTML page (a captive portal or login page answers 200 with HTML), the expected sha256 where
  one is known, and for checkpoint files (`.pt`, `.pth`, `.ckpt`) a successful
  `torch.load(weights_only=True, map_location="cpu")`. Anything else is discarded with an
  error that says what went wrong and where to put the file by hand.
- A file already in the cache is checked cheaply on every use (sha256 where known; for
  checkpoints, that it is a torch zip archive or a legacy torch file; never an HTML page).
  A bad one is moved aside to `<name>.bad-<timestamp>` (kept, not deleted) and downloaded
  once more; offline, the error names both the moved file and where a good copy goes.
- Two processes fetching the same file take turns on a lock file `<name>.lock` next to it
  (POSIX `flock`; removed when the download ends): the second one waits, then finds the
  first one's file. Downloads are atomic either way, so a reader never sees a partial file.
- Cache file names are plain names: path separators, `.` and `..` are refused, so nothing is
  written outside the cache directory.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PureWindowsPath
from typing import Callable, Optional, Union

from tqdm.auto import tqdm

from .locking import FileLock, lock_path_for


logger = logging.getLogger(__name__)

CACHE_ENV = "EFFICIENT_TAGGING_CACHE"
MIRROR_ENV = "EFFICIENT_TAGGING_MIRROR"
# Test / local-mirror escape: plain http is allowed only to this machine, and only with this set to 1.
ALLOW_HTTP_LOCALHOST_ENV = "EFFICIENT_TAGGING_ALLOW_HTTP_LOCALHOST"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
_LOCALHOST_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_HTML_SUFFIXES = (".html", ".htm")
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<title", b"<meta", b"<script")
# torch.save files from before the zip format start with a pickled magic number (protocol 2, LONG1).
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_SOURCE_CHECKOUT_CACHE = Path(__file__).resolve().parents[1] / "pretrained"

Validator = Callable[[Path], None]
"""Checks a downloaded or cached file's content; raises (any exception, with a message) when it is wrong."""


class DownloadError(RuntimeError):
    """A file could not be fetched; the message says where to put it by hand."""


def cache_dir(override: Union[str, Path, None] = None) -> Path:
    """The directory downloads are cached in (created on demand by the download)."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if _SOURCE_CHECKOUT_CACHE.is_dir() and (_SOURCE_CHECKOUT_CACHE.parent / "pyproject.toml").is_file():
        return _SOURCE_CHECKOUT_CACHE
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "efficient_tagging"


def sha256_of(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_url(url: str) -> None:
    """Raise `DownloadError` unless `url` is one this cache fetches: https://, file://, or (with
    `EFFICIENT_TAGGING_ALLOW_HTTP_LOCALHOST=1`) http:// to this machine."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("https", "file"):
        return
    if scheme == "http":
        if os.environ.get(ALLOW_HTTP_LOCALHOST_ENV) == "1" and (parts.hostname or "") in _LOCALHOST_NAMES:
            return
        raise DownloadError(
            f"refusing to download {url} over plain http: the answer could be altered or replaced on the way "
            f"(a proxy, a captive portal). Use its https:// address, or a local mirror folder as a file:// URL "
            f"through the {MIRROR_ENV} environment variable.")
    raise DownloadError(f"refusing to download {url}: only https:// and file:// URLs are fetched (a local mirror "
                        f"folder can be given as a file:// URL through the {MIRROR_ENV} environment variable)")


def is_checkpoint_name(name: str) -> bool:
    """Whether a file of this name must be a torch checkpoint (checked before it enters the cache)."""
    return name.lower().endswith(CHECKPOINT_SUFFIXES)


def _check_plain_filename(filename: str, directory: Path) -> None:
    if (not filename or filename in (".", "..") or "\x00" in filename or "/" in filename or "\\" in filename
            or PureWindowsPath(filename).drive):
        raise ValueError(f"cache file name {filename!r} must be a plain file name (no path separators, not '.' or "
                         f"'..'), so that the file stays inside the cache directory {directory}")


def _looks_like_html(head: bytes) -> bool:
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_HTML_STARTS)


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(error).__name__}: {line[:limit]}"


def content_problem(path: Union[str, Path], name: Optional[str] = None, thorough: bool = True) -> Optional[str]:
    """Why the file at `path` cannot be what its name (`name`, default the file's own) promises, or None.

    Every file: not empty, not an HTML page (unless named .html). Checkpoints (by suffix): a torch
    zip archive holding a data.pkl, or a legacy torch file; with `thorough`, also loadable with
    `torch.load(weights_only=True)` (memory-mapped where the format allows, so cheap even for big files).
    """
    path = Path(path)
    name = name or path.name
    if path.stat().st_size == 0:
        return "is empty"
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not name.lower().endswith(_HTML_SUFFIXES) and _looks_like_html(head):
        return "is an HTML page (a login, captive-portal or error page?), not the file itself"
    if not is_checkpoint_name(name):
        return None
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as error:
            return f"is not a loadable PyTorch checkpoint (a damaged zip archive: {error})"
        if not any(entry == "data.pkl" or entry.endswith("/data.pkl") for entry in names):
            return "is not a loadable PyTorch checkpoint (a zip archive without the data.pkl of torch.save)"
        memory_map = True
    elif head.startswith(_LEGACY_TORCH_MAGIC):
        memory_map = False  # torch cannot memory-map the pre-zip format
    else:
        return ("is not a loadable PyTorch checkpoint (neither a torch zip archive nor a legacy torch file: "
                "cut off during the download?)")
    if thorough:
        import torch  # only checkpoints need it

        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=memory_map)
        except Exception as error:  # torch raises many types for damaged or unsafe files
            return f"is not a loadable PyTorch checkpoint (torch.load(weights_only=True) failed: {_first_line(error)})"
    return None


def _where_to_put(destination: Path) -> str:
    return (f"If this machine is offline, download the file elsewhere and put it at:\n  {destination}\n"
            f"(the cache directory can be changed with the {CACHE_ENV} environment variable "
            f"or the cache_dir argument).")


def download_url(url: str, destination: Union[str, Path], sha256: Optional[str] = None,
                 progress: bool = True, timeout: float = 60.0, validate: Optional[Validator] = None) -> Path:
    """Download `url` (https or file://) to `destination` atomically, renaming it into place only
    when it is complete (Content-Length), not an HTML page, matches `sha256` (if given), loads as a
    torch checkpoint (for checkpoint names) and passes `validate` (if given)."""
    check_url(url)
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    where = _where_to_put(destination)
    handle, partial = tempfile.mkstemp(prefix=destination.name + ".", suffix=".part", dir=destination.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            logger.info("downloading %s to %s", url, destination)
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as error:
                reason = getattr(error, "reason", error)
                raise DownloadError(f"could not download {url} ({reason}).\n{where}") from error
            with response:
                final_url = response.geturl()
                if final_url != url:
                    try:
                        check_url(final_url)
                    except DownloadError as error:
                        raise DownloadError(f"{url} redirected to another address: {error}") from None
                length = (response.headers.get("Content-Length") or "").strip()
                total = int(length) if length.isdigit() else None
                content_type = response.headers.get("Content-Type") or ""
                if "html" in content_type.lower() and not destination.name.lower().endswith(_HTML_SUFFIXES):
                    raise DownloadError(
                        f"{url} answered with an HTML page (Content-Type {content_type}) instead of "
                        f"{destination.name}: a login, captive-portal or error page. Nothing was cached; check the "
                        f"network (open the URL in a browser).\n{where}")
                received = 0
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=destination.name,
                          disable=not progress, leave=False) as bar:
                    while True:
                        try:
                            block = response.read(1 << 20)
                        except (http.client.HTTPException, OSError) as error:
                            raise DownloadError(
                                f"the download of {url} broke off after {received:,} bytes ({_first_line(error)}); "
                                f"nothing was cached, run again to retry.\n{where}") from error
                        if not block:
                            break
                        out.write(block)
                        received += len(block)
                        bar.update(len(block))
        # http.client ends a body cut short by a closed connection silently: count the bytes.
        if total is not None and received != total:
            raise DownloadError(f"incomplete download of {url}: received {received:,} of {total:,} bytes (the "
                                f"connection was cut); nothing was cached, run again to retry.\n{where}")
        if sha256 is not None:
            actual = sha256_of(partial)
            if actual != sha256:
                raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; "
                                    f"the download was discarded")
        problem = content_problem(partial, destination.name, thorough=True)
        if problem is None and validate is not None:
            try:
                validate(Path(partial))
            except Exception as error:  # the validator's message says what is wrong
                problem = f"is not a valid {destination.name} ({error})"
        if problem is not None:
            raise DownloadError(f"the download of {url} {problem}; nothing was cached.\n{where}")
        os.chmod(partial, 0o644)  # mkstemp makes it private; a cache may be shared
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return destination


def _cached_problem(target: Path, sha256: Optional[str], validate: Optional[Validator]) -> Optional[str]:
    """Why the cached `target` must not be used (cheap checks only), or None."""
    if not target.is_file():
        return "is missing"
    if sha256 is not None and sha256_of(target) != sha256:
        return f"does not match its expected sha256 {sha256}"
    problem = content_problem(target, thorough=False)
    if problem is None and validate is not None:
        try:
            validate(target)
        except Exception as error:  # the validator's message says what is wrong
            problem = f"is not a valid {target.name} ({error})"
    return problem


def move_aside(target: Path) -> Path:
    """Rename a bad file to `<name>.bad-<time>` (kept for inspection; never used again)."""
    aside = target.with_name(f"{target.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    if aside.exists():
        aside = aside.with_name(f"{aside.name}-{os.getpid()}")
    os.replace(target, aside)
    return aside


def cached_file(url: str, filename: Optional[str] = None, cache: Union[str, Path, None] = None,
                sha256: Optional[str] = None, progress: bool = True, validate: Optional[Validator] = None,
                validate_cached: bool = True) -> Path:
    """Return the cached copy of `url`, downloading it first if it is not in the cache.

    `validate` checks every download before it is renamed into the cache; with `validate_cached`
    False a cached copy gets only the cheap checks (the caller checks it when it reads it).

    `filename` (default: the URL's last path component) must be a plain file name. A cached
    copy that fails the cheap checks (sha256, torch container, HTML, `validate`) is moved aside
    to `<name>.bad-<timestamp>` and downloaded once more. Concurrent callers for one file take
    turns on `<name>.lock`; the later one uses the earlier one's download.
    """
    directory = cache_dir(cache)
    if filename is None:
        filename = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
        if not filename:
            raise ValueError(f"cannot name the cache file of {url}: its path has no file name; pass filename=...")
    _check_plain_filename(filename, directory)
    target = directory / filename
    cached_validate = validate if validate_cached else None
    if _cached_problem(target, sha256, cached_validate) is None:
        return target  # no lock needed to read a file that is only ever renamed into place
    check_url(url)
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path_for(target), what=f"downloading {target}", blocking=True):
        problem = _cached_problem(target, sha256, cached_validate)  # another process may have fetched it meanwhile
        if problem is None:
            return target
        moved: Optional[Path] = None
        if target.exists():
            moved = move_aside(target)
            logger.warning("cached file %s %s; moved it to %s and downloading it again", target, problem, moved)
        try:
            return download_url(url, target, sha256=sha256, progress=progress, validate=validate)
        except DownloadError as error:
            if moved is None:
                raise
            raise DownloadError(f"{error}\nThe copy that was in the cache {problem}; it was moved to {moved} "
                                f"(delete it once a good copy is in place).") from error


def copy_into_cache(path: Union[str, Path], filename: Optional[str] = None,
                    cache: Union[str, Path, None] = None) -> Path:
    """Put a manually downloaded file where `cached_file` will find it (checked, then copied atomically)."""
    source = Path(path)
    directory = cache_dir(cache)
    name = source.name if filename is None else filename
    _check_plain_filename(name, directory)
    if not source.is_file():
        raise FileNotFoundError(f"file to copy into the cache not found: {source}")
    problem = content_problem(source, name, thorough=True)
    if problem is not None:
        raise ValueError(f"{source} {problem}; not copied into the cache")
    target = directory / name
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path_for(target), what=f"downloading {target}", blocking=True):
        handle, partial = tempfile.mkstemp(prefix=name + ".", suffix=".part", dir=directory)
        os.close(handle)
        try:
            shutil.copyfile(source, partial)
            os.chmod(partial, 0o644)
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return target
