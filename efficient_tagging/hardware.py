"""What the machine computes natively, the precision a job runs at when the user leaves it to us, and
the device a run asked for (checked to exist).

`--precision auto` (the labelling default) means: bf16 where the hardware multiplies bf16
natively, float32 elsewhere. "Natively" matters on CPUs: oneDNN accepts bf16 on any AVX-512 CPU,
but without the AVX512-BF16 / AMX-BF16 instructions it emulates them and is slower than float32.
"""
from __future__ import annotations

import functools
import logging
import os
import platform
from pathlib import Path
from typing import Callable, Optional, Protocol, Union

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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}{where}, {' '.join(isa) or 'no AVX2'}, {cores} cores"


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
