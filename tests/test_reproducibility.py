"""Portable CPU numerics: the demo's kernels and threads do not depend on which CPU of one vendor it runs on."""
import json
import os
import subprocess
import sys

import pytest

from efficient_tagging.hardware import cpu_description, cpu_vendor, has_cpu_flag
from efficient_tagging.train.reproducibility import PORTABLE_ISA

PROBE = """
import hashlib, os, sys, torch
if sys.argv[1] == "call":
    from efficient_tagging.train.reproducibility import portable_cpu_numerics
    settings = portable_cpu_numerics(threads=2)
else:
    torch.set_num_threads(2)
    settings = {}
from efficient_tagging import get_model
torch.manual_seed(0)
model = get_model(arch="passt", embed_dim=48, depth=1, num_heads=3, patch_size=[32, 4], stride=[32, 4],
                  img_size=[32, 40], num_classes=5).train()
conv = torch.nn.Conv2d(1, 8, 3)
x = torch.randn(4, 1, 32, 40)
# MKL's STFT and matrix products (AVX-512 kernels on Intel CPUs that have them)
waveform = torch.randn(4, 8000)
spectrum = torch.stft(waveform, 512, 160, 400, torch.hann_window(400), return_complex=True).abs()
mel = torch.matmul(torch.rand(64, 257), spectrum)
loss = model(x)[0].square().mean() + conv(x).square().mean() + mel.log1p().mean()
loss.backward()
grads = torch.cat([p.grad.flatten() for p in list(model.parameters()) + list(conv.parameters())])
results = torch.cat([grads, mel.detach().flatten()])  # the mel values carry no gradient: hash them too
print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(),
      hashlib.sha1(results.numpy().tobytes()).hexdigest(), settings.get("ATEN_CPU_CAPABILITY"))
"""


def _run(mode: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in (
        "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")}
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300,
                            env={**clean, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


requires_avx2 = pytest.mark.skipif(not has_cpu_flag("avx2"), reason="portable numerics cap x86-64 CPUs at AVX2")


@requires_avx2
def test_the_cap_called_after_import_equals_the_cap_set_before_start():
    """Called after `import torch`, the cap takes effect as if the variables had been set before the
    process started. True on every vendor (checked on Intel Xeon AVX-512/AMX and AMD EPYC family 26)."""
    called = _run("call")
    assert called[0] == "AVX2" and called[1] == "2" and called[3] == "avx2"
    preset = _run("plain", **PORTABLE_ISA)
    assert called[2] == preset[2], f"on {cpu_description()}"


@requires_avx2
def test_the_cap_equals_a_cpu_of_the_same_vendor_without_avx512():
    """What an AVX2-only CPU of the same vendor computes, emulated by also limiting MKL's dispatch to
    AVX2 (`MKL_ENABLE_INSTRUCTIONS`, which an AVX2-only CPU does by itself): the same numbers.
    Checked on Intel Xeon (AVX-512/AMX) and AMD EPYC family 26 (AVX-512)."""
    called = _run("call")
    avx2_cpu = _run("plain", **PORTABLE_ISA, MKL_ENABLE_INSTRUCTIONS="AVX2")
    assert called[2] == avx2_cpu[2], f"on {cpu_description()}"


@requires_avx2
@pytest.mark.skipif(cpu_vendor() != "intel", reason=(
    "Intel-only claim: MKL's reproducible AVX2 branch exists only on Intel CPUs; on other vendors "
    "MKL_CBWR=AVX2 runs MKL's AUTO branch, which rounds differently from MKL's plain AVX2 dispatch "
    "(measured on AMD EPYC family 26), so across vendors the numbers differ"))
def test_on_intel_the_mkl_cap_is_mkls_plain_avx2_path():
    """On Intel, MKL_CBWR=AVX2 gives what MKL computes on an AVX2-only Intel CPU without any cap."""
    called = _run("call")
    avx2_machine = _run("plain", ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    assert called[2] == avx2_machine[2], f"on {cpu_description()}"


def test_user_settings_are_kept():
    """In a child process: the libraries read these variables once, at their first call, so setting
    them in the pytest process (even briefly, with monkeypatch) would change its numbers for good
    (MKL initialises inside `torch.set_num_threads`) and differ from those of the subprocesses that
    later tests start."""
    from efficient_tagging.train.reproducibility import PORTABLE_ISA

    user_values = {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
    assert set(PORTABLE_ISA) <= set(user_values)
    probe = ("import json, os\n"
             "from efficient_tagging.train.reproducibility import portable_cpu_numerics\n"
             "settings = portable_cpu_numerics(threads=1)\n"
             f"print(json.dumps([settings['threads'], {{n: os.environ[n] for n in {sorted(user_values)!r}}}]))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **user_values})
    assert result.returncode == 0, result.stderr[-2000:]
    threads, kept = json.loads(result.stdout.strip().splitlines()[-1])
    assert threads == 1 and kept == user_values
