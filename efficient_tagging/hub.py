"""Download cache for checkpoints and metadata files.

Files are fetched once into a cache directory and reused. The directory is chosen, in
order, by an explicit `cache_dir` argument, the `EFFICIENT_TAGGING_CACHE` environment
variable, the `pretrained/` folder of a source checkout, or `~/.cache/efficient_tagging`.
Downloads go to a temporary file that is renamed into place only when complete (and, if a
checksum is known, verified), so an interrupted download never leaves a truncated file
that later looks valid.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, Union

from tqdm.auto import tqdm

CACHE_ENV = "EFFICIENT_TAGGING_CACHE"
_SOURCE_CHECKOUT_CACHE = Path(__file__).resolve().parents[1] / "pretrained"


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


def download_url(url: str, destination: Union[str, Path], sha256: Optional[str] = None,
                 progress: bool = True, timeout: float = 60.0) -> Path:
    """Download `url` (http(s) or file://) to `destination` atomically; verify `sha256` if given."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=destination.name + ".", suffix=".part", dir=destination.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as error:
                reason = getattr(error, "reason", error)
                raise DownloadError(
                    f"could not download {url} ({reason}).\n"
                    f"If this machine is offline, download the file elsewhere and put it at:\n  {destination}\n"
                    f"(the cache directory can be changed with the {CACHE_ENV} environment variable "
                    f"or the cache_dir argument).") from error
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=destination.name,
                          disable=not progress, leave=False) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
        if sha256 is not None:
            actual = sha256_of(partial)
            if actual != sha256:
                raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; "
                                    f"the download was discarded")
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return destination


def cached_file(url: str, filename: Optional[str] = None, cache: Union[str, Path, None] = None,
                sha256: Optional[str] = None, progress: bool = True) -> Path:
    """Return the cached copy of `url`, downloading it first if it is not in the cache."""
    if filename is None:
        filename = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    target = cache_dir(cache) / filename
    if target.is_file():
        if sha256 is not None and sha256_of(target) != sha256:
            raise DownloadError(f"cached file {target} does not match its expected sha256 {sha256}; "
                                f"delete it to download it again")
        return target
    return download_url(url, target, sha256=sha256, progress=progress)


def copy_into_cache(path: Union[str, Path], filename: Optional[str] = None,
                    cache: Union[str, Path, None] = None) -> Path:
    """Put a manually downloaded file where `cached_file` will find it."""
    target = cache_dir(cache) / (filename or Path(path).name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return target
