"""Numerics that do not depend on which x86 CPU a run happens to land on.

PyTorch picks its CPU kernels at run time by instruction set: ATen's vectorised kernels
(softmax, layer norm, GELU, reductions ...) and oneDNN's convolutions use AVX-512 where the
CPU has it and AVX2 elsewhere, and the two round differently. Training amplifies those
last-bit differences, so the same seeded run ends at different numbers on two machines of one
cloud "kind" whose CPUs differ (e.g. AMD EPYC generations with and without AVX-512). The
thread count changes the reduction order too.

Intel's MKL (PyTorch's matrix products and FFTs on x86) does the same: on an Intel CPU with
AVX-512 it runs AVX-512 kernels, elsewhere other paths (measured on an Intel Xeon: float32
GEMM, batched matmul and STFT results change bit patterns between the two).

`portable_cpu_numerics` caps all three at AVX2 (every x86-64 CPU of the last decade has it;
MKL through its conditional-numerical-reproducibility branch `MKL_CBWR=AVX2`) and fixes the
thread count. What that buys (tests/test_reproducibility.py):
- the same numbers on CPUs *of one vendor* with AVX2, with or without AVX-512/AMX: ATen and
  oneDNN run their AVX2 kernels everywhere, and MKL its AVX2 branch on every Intel CPU;
- not across vendors: MKL's ISA branches are Intel-only. On other CPUs `MKL_CBWR=AVX2` runs
  MKL's AUTO branch in reproducible mode (oneMKL developer guide, "Getting Started with
  Conditional Numerical Reproducibility"), which rounds differently from the Intel AVX2 branch
  (measured on an AMD EPYC, family 26: a PaSST forward pass changes bit patterns between
  `MKL_CBWR=AVX2` and `MKL_ENABLE_INSTRUCTIONS=AVX2`; on Intel the two are equal). So a seeded
  demo run gives one set of numbers on Intel machines and another on AMD machines.

The limits are read when the first kernel of each library runs, so call it before any tensor
computation; it reports whether the ATen cap took effect.
"""
from __future__ import annotations

import logging
import os
import platform

import torch

from efficient_tagging.hardware import cpu_description, cpu_vendor, has_cpu_flag, pin_threads

logger = logging.getLogger(__name__)

PORTABLE_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def portable_cpu_numerics(threads: int = 2) -> dict[str, object]:
    """Cap CPU kernels at AVX2 and use `threads` intra-op threads; returns what is in force.

    Variables the user already set are left alone. On CPUs without AVX2 (or not x86) only the
    thread count is fixed. The returned dict goes into run records (`cpu_numerics`).
    """
    applied: dict[str, object] = {}
    if platform.machine().lower() in ("x86_64", "amd64") and has_cpu_flag("avx2"):
        for name, value in PORTABLE_ISA.items():
            os.environ.setdefault(name, value)
            applied[name] = os.environ[name]
    pin_threads(threads)  # kept on busy cores too: the thread count changes the numbers
    applied["threads"] = torch.get_num_threads()
    applied["aten_capability"] = torch.backends.cpu.get_cpu_capability()
    # the numbers are the same only among CPUs of one vendor (see the module docstring): record it
    applied["cpu_vendor"] = cpu_vendor()
    applied["cpu"] = cpu_description()
    if "ATEN_CPU_CAPABILITY" in applied and applied["aten_capability"] != applied["ATEN_CPU_CAPABILITY"].upper():
        logger.warning("portable CPU numerics: ATen kernels were already dispatched as %s (call "
                       "portable_cpu_numerics before any tensor computation)", applied["aten_capability"])
    return applied
