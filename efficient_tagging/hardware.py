"""What the machine computes natively, the precision a job runs at when the user leaves it to us, and
the device a run asked for (checked to exist).

`--precision auto` (the labelling default) means: bf16 where the hardware multiplies bf16
natively, float32 elsewhere. "Natively" matters on CPUs: oneDNN accepts bf16 on any AVX-512 CPU,
but without the AVX512-BF16 / AMX-BF16 instructions it emulates them and is slower than float32.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Protocol, Union

import torch

logger = logging.getLogger(__name__)

#: the precisions a job can be asked for; "auto" resolves to one of the others
PRECISION_CHOICES = ("auto", "32", "16", "bf16")


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=None)
def _cpu_info_field(name: str) -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return ""


def cpu_vendor() -> str:
    """"intel", "amd", or another lower-case word ("" where /proc/cpuinfo says nothing, e.g. macOS).

    Needed because Intel's MKL runs different code on other vendors' CPUs: its reproducible
    ISA branches (`MKL_CBWR=AVX2`) exist only on Intel; elsewhere it uses its AUTO branch.
    """
    vendor = _cpu_info_field("vendor_id").lower()
    return {"genuineintel": "intel", "authenticamd": "amd"}.get(vendor, vendor)


def cpu_description() -> str:
    """One line for benchmark tables, run records and test messages, e.g.
    "AMD EPYC (family 26 model 2), avx2 avx512f avx512_bf16, 2 cores"."""
    flags = _cpu_flags()
    isa = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if flag in flags]
    name = _cpu_info_field("model name") or platform.processor() or platform.machine()
    family, model = _cpu_info_field("cpu family"), _cpu_info_field("model")
    where = f" (family {family} model {model})" if family else ""
    return f"{name}{where}, {' '.join(isa) or 'no AVX2'}, {available_cpus()} cores"


def has_cpu_flag(flag: str) -> bool:
    """Whether /proc/cpuinfo lists `flag` (e.g. "avx2"); False where it cannot be read."""
    return flag in _cpu_flags()


def native_bf16(device: Union[str, torch.device] = "cpu") -> bool:
    """Whether `device` computes bf16 matrix products natively.

    CUDA: the GPU supports bf16 (Ampere and newer). CPU: x86 with AVX512-BF16 or AMX-BF16 (read
    from /proc/cpuinfo; elsewhere, e.g. macOS or ARM, False: float32 is the safe choice there)
    and a oneDNN build that uses them.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = _cpu_flags()
    if not ({"avx512_bf16", "amx_bf16"} & flags):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: Union[str, torch.device] = "cpu") -> str:
    """`precision` with "auto" replaced: "bf16" where `device` has native bf16, else "32"; an explicit
    "bf16" on a device without native bf16 falls back to "32" with a logged one-line note."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    if precision == "bf16" and not native_bf16(device):
        # emulated bf16 is no saving: measured 30x slower than float32 on an AVX2-only CPU (883 vs 31 ms)
        logger.warning("bf16 was asked for, but %s has no native bf16 (%s): running in float32 instead",
                       torch.device(device).type.upper(), "AVX512-BF16 / AMX-BF16" if torch.device(device).type == "cpu"
                       else "an Ampere or newer GPU")
        return "32"
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "32"


def in_cpu_pieces(compute: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor,
                  budget: int, cost_per_row: int) -> torch.Tensor:
    """`compute(rows)`, on the CPU run over pieces of about `budget / cost_per_row` rows (at least one)
    and concatenated along the first axis.

    For row-independent signal work (STFT, fbank, resampling): a whole batch's intermediates fall
    out of the CPU caches, and cache-sized pieces were measured 1.2-3x faster on 32 10-s clips
    (benchmarks/RESULTS.md, target 5), with the same values bit for bit. An accelerator, an empty
    batch and a `torch.compile` trace take the rows in one pass.
    """
    if rows.device.type != "cpu" or rows.shape[0] <= 1 or torch.compiler.is_compiling():
        return compute(rows)
    step = max(1, budget // max(1, cost_per_row))
    if step >= rows.shape[0]:
        return compute(rows)
    return torch.cat([compute(piece) for piece in rows.split(step)])


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: an integer fixes the intra-op thread count of long CPU jobs (training, labelling); "auto" (default) adapts
THREADS_ENV = "EFFICIENT_TAGGING_THREADS"
#: thread counts the user fixed for the whole process: left alone by `contended_threads`
_USER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_pinned_threads: Optional[int] = None


def pin_threads(threads: int) -> None:
    """`torch.set_num_threads(threads)`, marked as chosen on purpose (e.g. for reproducible numerics):
    `contended_threads` keeps it while the count is still in force."""
    global _pinned_threads
    torch.set_num_threads(threads)
    _pinned_threads = torch.get_num_threads()


def _allowed_cpu_ids() -> Optional[set[int]]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _proc_stat_ticks(cpu_ids: set[int]) -> Optional[tuple[int, int, int]]:
    """(busy, total, cpus found) clock ticks summed over the `cpu_ids` lines of /proc/stat; None off Linux.

    Busy is everything but idle and iowait; steal counts as busy (a hypervisor gave the core away).
    """
    try:
        text = Path("/proc/stat").read_text()
    except OSError:
        return None
    busy = total = found = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in cpu_ids:
            continue
        values = [int(v) for v in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(values)
        busy += sum(values) - values[3] - (values[4] if len(values) > 4 else 0)
        found += 1
    return (busy, total, found) if found else None


def _own_cpu_ticks() -> Optional[int]:
    """User + system clock ticks of this process (all its threads) from /proc/self/stat."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # fields 14 and 15 (utime, stime); fields[0] is field 3
    except (OSError, IndexError, ValueError):
        return None


def busy_cores_of_others(interval: float = 0.3) -> tuple[float, str]:
    """(cores' worth of CPU time other processes use on the cores this process may run on, how measured).

    Linux: /proc/stat of the allowed cores sampled over `interval` seconds, less this process's own
    CPU time (/proc/self/stat). Elsewhere: the 1-minute load average less one (this process), scaled to
    the allowed share of the machine's cores; (0.0, "not measured") where neither exists.
    """
    cpu_ids = _allowed_cpu_ids()
    before, own_before = (_proc_stat_ticks(cpu_ids), _own_cpu_ticks()) if cpu_ids else (None, None)
    if before is not None and own_before is not None:
        time.sleep(interval)
        after, own_after = _proc_stat_ticks(cpu_ids), _own_cpu_ticks()
        if after is not None and own_after is not None and after[1] > before[1]:
            busy = (after[0] - before[0]) - (own_after - own_before)
            per_cpu = (after[1] - before[1]) / after[2]
            return min(float(after[2]), max(0.0, busy / per_cpu)), f"/proc/stat over {interval:.1f} s"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0, "not measured"
    share = available_cpus() / max(1, os.cpu_count() or 1)
    return max(0.0, load - 1.0) * share, "1-min load average"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def contended_threads(cores: Optional[int] = None, busy: Optional[float] = None, current: Optional[int] = None,
                      environ: Optional[Mapping[str, str]] = None) -> tuple[int, str]:
    """(intra-op threads for long CPU work in this process, one line saying why).

    OpenMP threads spin-wait for each other, so a thread that shares its core with another busy
    process holds up all of them: a training step of mn04 on 2 cores took 18x longer with two
    busy-looping processes beside it (issue 26; benchmarks/bench_contention.py). So the count is the
    cores this process may use (`cores`: its affinity mask) less those other processes keep busy
    (`busy`: cores' worth, measured by `busy_cores_of_others` when None, rounded half up), at least
    1 and at most the count in force (`current`: `torch.get_num_threads()`); a lower count the user
    chose stays. Left alone: counts fixed by `OMP_NUM_THREADS` / `MKL_NUM_THREADS` or `pin_threads`;
    `EFFICIENT_TAGGING_THREADS=N` forces N ("auto", the default, decides as above).
    """
    environ = os.environ if environ is None else environ
    current = torch.get_num_threads() if current is None else current
    setting = environ.get(THREADS_ENV, "auto").strip().lower() or "auto"
    if setting != "auto":
        try:
            forced = int(setting)
        except ValueError:
            forced = 0
        if forced < 1:
            raise ValueError(f"{THREADS_ENV}={environ[THREADS_ENV]!r}: expected a positive integer or 'auto'")
        return forced, f"{THREADS_ENV}={forced}: {_plural(forced, 'intra-op thread')}"
    for name in _USER_THREAD_VARIABLES:
        if name in environ:
            return current, f"{name}={environ[name]} set: keeping {_plural(current, 'intra-op thread')}"
    if _pinned_threads is not None and current == _pinned_threads:
        return current, f"{_plural(current, 'intra-op thread')} fixed by pin_threads (e.g. portable numerics): kept"
    if current <= 1 and busy is None:
        return current, "1 intra-op thread already: nothing to reduce"
    cores = available_cpus() if cores is None else max(1, int(cores))
    how = ""
    if busy is None:
        busy, how = busy_cores_of_others()
        how = f" ({how})"
    wanted = max(1, min(current, cores - math.floor(busy + 0.5)))
    where = f"{_plural(cores, 'core')}, ~{busy:.1f} busy with other processes{how}"
    if wanted < current:
        return wanted, (f"{where}: {_plural(wanted, 'intra-op thread')} instead of {current} "
                        f"({THREADS_ENV}=N to choose)")
    return wanted, f"{where}: {_plural(wanted, 'intra-op thread')}"


@contextlib.contextmanager
def threads_for_cpu_work(device: Union[str, torch.device], log: bool = True) -> Iterator[int]:
    """For a long job on `device`: on the CPU, the `contended_threads` count in force inside (the
    previous count again after), said in one log line (a warning when it lowers the count); elsewhere
    nothing changes. Yields the intra-op thread count."""
    if torch.device(device).type != "cpu":
        yield torch.get_num_threads()
        return
    previous = torch.get_num_threads()
    threads, reason = contended_threads(current=previous)
    if log:
        (logger.warning if threads < previous else logger.info)("CPU threads: %s", reason)
    if threads != previous:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if threads != previous and torch.get_num_threads() == threads:
            torch.set_num_threads(previous)


class DeviceUnavailable(RuntimeError):
    """The run asked for a device this machine does not have."""


NO_CUDA_MESSAGE = "--cuda given but no CUDA device is available; drop --cuda to run on the CPU"


class _HasDevice(Protocol):
    device: torch.device  # e.g. train.distributed.DistInfo: this process's device under torchrun


def _checked_device(name: str) -> torch.device:
    """``name`` (cpu, cuda, cuda:N, mps) as a device, after checking that this machine has it."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"--device {name} given but no CUDA device is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(f"--device {name} given but this machine has "
                                    f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 ...)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"--device {name} given but MPS is not available here; use --device cpu")
    return device


def select_device(cuda: bool = False, dist_info: Optional[_HasDevice] = None, *,
                  device: Optional[str] = None) -> torch.device:
    """The device a run asked for: ``cuda`` (this rank's GPU when ``dist_info`` has one), else the
    named ``device`` (cpu, cuda, cuda:N, mps), else the CPU.

    A device this machine lacks is a DeviceUnavailable error, never a silent fall-back to the CPU
    (a run meant for a GPU would otherwise crawl for days unnoticed). The messages name the
    commands' flags (--cuda, --device), which is how every run asks for a device.
    """
    if cuda:
        if not torch.cuda.is_available():
            raise DeviceUnavailable(NO_CUDA_MESSAGE)
        if dist_info is not None and dist_info.device.type == "cuda":
            return dist_info.device
        return torch.device("cuda")
    if device is None:
        return torch.device("cpu")
    return _checked_device(device)
