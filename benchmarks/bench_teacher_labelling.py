"""Teacher-labelling throughput: fp32 eager attention vs fp32 SDPA vs the labelling default.

Models (random weights; the speed does not depend on them):
  PaSST-S  passt_s_swa_p16_128_ap476 architecture, 32 kHz 10 s clips -> PaSST mel frontend -> 128 x 998
  AST      base384, 16 kHz 10 s clips -> Kaldi fbank (ASTFbank) -> 1024 frames x 128 bins

Paths:
  eager    float32, explicit softmax(q k^T) v attention (PaSST: `Attention.use_sdpa = False`; AST has
           no such flag, so the benchmark swaps `F.scaled_dot_product_attention` in models/ast.py for
           the explicit math while the eager path runs): the reference implementations' computation
  sdpa32   float32 with `F.scaled_dot_product_attention`: `ex_teacher_labels.py --precision 32`
  default  what `ex_teacher_labels.py` runs without flags (`--precision auto`): bf16 weights (cast
           once; frontends stay fp32) + `torch.autocast(bfloat16)` + SDPA where the device has native
           bf16 (the header says which), else the same as sdpa32

Every round runs each path once per model, in rotating order; the table gives the median
(min/max) clips/s over rounds, the median of per-round ratios to eager, and max |logit
difference| to eager on the same batch.

    python benchmarks/bench_teacher_labelling.py                # batch 8, 3 rounds (~5 min on 2 CPU cores)
    python benchmarks/bench_teacher_labelling.py --quick        # 1 clip, 2 rounds
    python benchmarks/bench_teacher_labelling.py --batch-size 32 --rounds 5 --device cuda
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import time
import types
from pathlib import Path

from _common import rotated  # puts the checkout on sys.path

import torch
import torch.nn.functional as F
from torch import nn

from efficient_tagging.hardware import resolve_precision
from efficient_tagging.labelling import cast_model_weights


def _explicit_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q @ k.transpose(-2, -1)) * scale
    if attn_mask is not None:
        attn = attn + attn_mask
    return attn.softmax(dim=-1) @ v


@contextlib.contextmanager
def eager_attention():
    """Explicit attention in PaSST (class flag) and AST (module-level F swapped, restored after)."""
    from efficient_tagging.models import ast as ast_module
    from efficient_tagging.models import passt as passt_module
    saved_flag, saved_f = passt_module.Attention.use_sdpa, ast_module.F
    passt_module.Attention.use_sdpa = False
    proxy = types.SimpleNamespace(**{name: getattr(F, name) for name in dir(F) if not name.startswith("__")})
    proxy.scaled_dot_product_attention = _explicit_sdpa
    ast_module.F = proxy
    try:
        yield
    finally:
        passt_module.Attention.use_sdpa = saved_flag
        ast_module.F = saved_f


class Tagger(nn.Module):
    def __init__(self, frontend: nn.Module, model: nn.Module, frames: int, layout: str) -> None:
        super().__init__()
        self.frontend, self.model, self.frames, self.layout = frontend, model, frames, layout

    def forward(self, waveform):
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            spec = self.frontend(waveform.float())
        if self.layout == "passt":
            spec = spec[..., : self.frames].unsqueeze(1)
            out = self.model(spec)
            return out[0] if isinstance(out, tuple) else out
        return self.model(spec)


def build(name: str):
    torch.manual_seed(0)
    if name == "PaSST-S":
        from efficient_tagging.frontends import build_frontend
        from efficient_tagging.models.passt import build_passt_from_reference_args
        from efficient_tagging.models.registry import PASST_PREPROCESSING
        model = build_passt_from_reference_args("passt_s_swa_p16_128_ap476")
        frontend = build_frontend({k: v for k, v in PASST_PREPROCESSING.items() if k != "frontend"})
        return Tagger(frontend, model, 998, "passt").eval(), 32000
    from efficient_tagging.frontends.ast_fbank import ASTFbank
    from efficient_tagging.models.ast import ASTModel
    model = ASTModel(imagenet_pretrain=False, audioset_pretrain=False, model_size="base384", verbose=False)
    return Tagger(ASTFbank(target_length=1024, layout="btf"), model, 1024, "ast").eval(), 16000


@torch.no_grad()
def run_path(tagger, waveform, path, precision):
    device = waveform.device
    ctx = eager_attention() if path == "eager" else contextlib.nullcontext()
    reduced = path == "default" and precision == "bf16"
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if reduced
           else torch.autocast(device_type=device.type, enabled=False))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with ctx, amp:
        logits = tagger(waveform)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, logits.float().cpu()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8,
                        help="clips per forward pass (labelling runs at 32 by default; 8 keeps a CPU run near 5 min)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes of each path first")
    parser.add_argument("--models", nargs="+", default=["PaSST-S", "AST-base384"], choices=["PaSST-S", "AST-base384"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="1 clip, 2 rounds, no warm-up beyond one pass")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.rounds, args.warmup = 1, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = resolve_precision("auto", device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, device {device}, "
          f"batch {args.batch_size}, {args.rounds} rounds; labelling default here: precision {precision} "
          f"({'native bf16' if precision == 'bf16' else 'no native bf16'})", flush=True)
    paths = ["eager", "sdpa32", "default"]
    results = []
    for name in args.models:
        tagger, sr = build(name)
        tagger = tagger.to(device)
        # The default casts the networks' weights once, as label_dataset does (frontends stay fp32).
        taggers = {"eager": tagger, "sdpa32": tagger,
                   "default": cast_model_weights(copy.deepcopy(tagger), precision)}
        waveform = 0.1 * torch.randn(args.batch_size, 10 * sr, generator=torch.Generator().manual_seed(1))
        waveform = waveform.to(device)
        for _ in range(args.warmup):
            for path in paths:
                run_path(taggers[path], waveform, path, precision)
        times = {p: [] for p in paths}
        logits = {}
        for r in range(args.rounds):
            for path in rotated(paths, r):
                seconds, logits[path] = run_path(taggers[path], waveform, path, precision)
                times[path].append(seconds)
        rate = {p: [args.batch_size / t for t in times[p]] for p in paths}
        row = {"model": name, "precision_default": precision}
        for p in paths:
            row[f"{p}_clips_s"] = statistics.median(rate[p])
            row[f"{p}_min_max"] = [min(rate[p]), max(rate[p])]
            row[f"{p}_paired_vs_eager"] = statistics.median(rate[p][i] / rate["eager"][i] for i in range(args.rounds))
            row[f"{p}_max_abs_dlogit"] = float((logits[p] - logits["eager"]).abs().max())
        results.append(row)
        print(f"{name}: done", flush=True)
        del tagger, taggers
    print()
    print("| model | path | clips/s (min/max) | vs eager (paired) | max abs dlogit vs eager |")
    print("| --- | --- | --- | --- | --- |")
    labels = {"eager": "fp32, explicit attention", "sdpa32": "fp32 + SDPA (`--precision 32`)",
              "default": f"default (`auto` = {precision})"}
    for r in results:
        for p in paths:
            low, high = r[f"{p}_min_max"]
            print(f"| {r['model']} | {labels[p]} | {r[f'{p}_clips_s']:.3f} ({low:.3f}/{high:.3f}) "
                  f"| {r[f'{p}_paired_vs_eager']:.2f}x | {r[f'{p}_max_abs_dlogit']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
