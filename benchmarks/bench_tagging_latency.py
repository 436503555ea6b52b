"""Tagging latency of mn10 (or dymn10) on one 10-s clip, batch 1 (issue 12, target 1): the default path vs eager.

Paths, timed in interleaved rounds in one process (these CPUs change speed by up to 3x for tens of
seconds, so every round times every path once and the table reports medians):

* model only, on the log-mel spectrogram of the clip:
  - ``reference eager``: EfficientAT's own mn10 (``--reference_checkout PATH``), same weights, no_grad;
  - ``ours eager``: ``AudioTagger(model, fast=False)`` -- the model as built, under no_grad;
  - ``ours default``: ``AudioTagger(model)`` -- the inference copy (BatchNorm folded, channels-last)
    under inference_mode, what the tagging CLI and ``AudioTagger`` run;
  - ``bf16 (opt-in)``: the inference copy in bfloat16 (weights and activations);
  - ``onnxruntime`` (``--onnx``, needs the onnx extra): the exported spectrogram graph;
  - ``openvino`` (``--openvino``, needs the openvino extra): the same export, OpenVINO CPU, f32;
* end to end (``tag_file``: decode + resample + mel + model + top-k) for eager, the torch fast path
  and (``--openvino``) the default backend choice (``export.backends.use_backend(tagger, "auto")``), and with
  ``--reference_checkout`` (and librosa installed, as the reference needs) the reference's
  ``inference.py`` path: ``librosa.load(path, sr=32000, mono=True)`` -> its ``AugmentMelSTFT`` ->
  its model -> sigmoid -> top-10.

Every round times every path once, in an order rotated by one path per round.

Weights: random with realistic activations (``tests/conftest.py: randomised_student``, logits of
std 3). Errors: max |delta logit| / max |logit| against ours eager; bf16 also top-5 agreement and
mean |delta prob|.

    python benchmarks/bench_tagging_latency.py                      # ~2 min on 2 cores
    python benchmarks/bench_tagging_latency.py --reference_checkout /path/to/EfficientAT --onnx --openvino
    python benchmarks/bench_tagging_latency.py --batch_size 32 --rounds 5    # batched (32 clips)
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from _common import REPO, reference_model, rotated  # puts the checkout on sys.path

sys.path.insert(0, str(REPO / "tests"))

from conftest import METRO_WAV, metro_long, randomised_student  # noqa: E402
from efficient_tagging.tagging.tagger import AudioTagger  # noqa: E402


def reference_file_path(checkout: Path, model: torch.nn.Module) -> Optional[Callable[[Path], torch.Tensor]]:
    """EfficientAT's inference.py computation for one file (None without librosa)."""
    try:
        import librosa
    except ImportError:
        print("(librosa not installed: no reference end-to-end path; pip install librosa soxr)")
        return None
    sys.path.insert(0, str(checkout))
    from models.preprocess import AugmentMelSTFT as ReferenceMel

    mel = ReferenceMel(n_mels=128, sr=32000, win_length=800, hopsize=320).eval()

    def run(path: Path) -> torch.Tensor:
        waveform, _ = librosa.load(str(path), sr=32000, mono=True)
        with torch.no_grad():
            logits, _ = model(mel(torch.from_numpy(waveform[None, :])).unsqueeze(0))
        return torch.sigmoid(logits.float()).squeeze().topk(10).indices

    return run


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference_checkout", type=Path, default=None, help="an EfficientAT checkout to time")
    parser.add_argument("--arch", choices=("mn", "dymn"), default="mn", help="mn10 or dymn10")
    parser.add_argument("--onnx", action="store_true", help="also time ONNX Runtime (exports the model, ~40 s)")
    parser.add_argument("--openvino", action="store_true",
                        help="also time OpenVINO on the same export, and end to end the default backend choice "
                             "(backend auto: export cached in a temporary folder)")
    parser.add_argument("--batch_size", type=int, default=1,
                        help="clips per model call (different 10-s stretches of the long test audio)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (model-only paths)")
    parser.add_argument("--file_rounds", type=int, default=8, help="interleaved rounds (end-to-end paths)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = randomised_student(args.arch, width_mult=1.0, logit_std=3.0)
    eager, default = AudioTagger(model, fast=False), AudioTagger(model)
    audio = metro_long(60)
    starts = [(i * 37 * 32000 // 10) % (50 * 32000) for i in range(args.batch_size)]  # 3.7-s steps, wrapping
    batch = torch.stack([audio[start:start + 320000] for start in starts])
    clip = batch[:1]
    with torch.no_grad():
        spectrogram = eager.frontend(batch).unsqueeze(1)
        fast_model = default.inference_model()
        expected = model(spectrogram)[0]
    from efficient_tagging.models.fused import inference_copy

    bf16_model = inference_copy(model).to(torch.bfloat16)

    def run_eager() -> torch.Tensor:
        with torch.no_grad():
            return model(spectrogram)[0]

    def run_default() -> torch.Tensor:
        with torch.inference_mode():
            return fast_model(spectrogram)[0]

    def run_bf16() -> torch.Tensor:
        with torch.inference_mode():
            return bf16_model(spectrogram.to(torch.bfloat16))[0].float()

    paths: dict[str, Callable[[], torch.Tensor]] = {"ours eager (fp32)": run_eager, "ours default": run_default}
    from efficient_tagging.hardware import native_bf16

    if native_bf16("cpu"):
        paths["bf16 (opt-in)"] = run_bf16
    else:  # emulated bf16 is ~30x slower than fp32 (883 vs 31 ms measured on an AVX2 CPU): not a path to offer
        print("bf16 (opt-in): skipped, this CPU has no native bf16 (AVX512-BF16 / AMX-BF16)")
    if args.reference_checkout is not None:
        reference = reference_model(args.reference_checkout, model.state_dict(), args.arch)

        def run_reference() -> torch.Tensor:
            with torch.no_grad():
                return reference(spectrogram)[0]

        paths = {"reference eager (fp32)": run_reference, **paths}
    workdir = None
    if args.onnx or args.openvino:
        from efficient_tagging.export.onnx import OnnxTagger, export_onnx

        workdir = tempfile.TemporaryDirectory()
        exported = export_onnx(eager, Path(workdir.name) / "mn10.onnx", check_audio=clip[0])
        array = spectrogram.numpy()
        for runtime, wanted in (("onnxruntime", args.onnx), ("openvino", args.openvino)):
            if wanted:
                engine = OnnxTagger(exported, threads=args.threads, runtime=runtime).engine
                paths[f"{runtime} (fp32)"] = lambda engine=engine: torch.from_numpy(engine.run(array))

    times: dict[str, list[float]] = {name: [] for name in paths}
    outputs: dict[str, torch.Tensor] = {}
    for name, run in paths.items():  # warm-up (and the outputs compared below)
        outputs[name] = run().float()
    for round_index in range(args.rounds):
        for name in rotated(list(paths), round_index):
            start = time.perf_counter()
            paths[name]()
            times[name].append(time.perf_counter() - start)

    file_paths: dict[str, Callable[[Path], object]] = {
        "ours eager (fp32)": lambda path: eager.tag_file(path, top_k=10),
        "ours torch fast path": lambda path: default.tag_file(path, top_k=10)}
    if args.openvino:
        from efficient_tagging.export.backends import use_backend

        automatic = AudioTagger(model)
        chosen = use_backend(automatic, "auto", cache_dir=Path(workdir.name) / "cache", threads=args.threads)
        file_paths[f"ours default (auto: {chosen})"] = lambda path: automatic.tag_file(path, top_k=10)
    if args.reference_checkout is not None:
        reference_run = reference_file_path(args.reference_checkout, reference)
        if reference_run is not None:
            file_paths = {"reference inference.py": reference_run, **file_paths}
    file_times: dict[str, list[float]] = {name: [] for name in file_paths}
    source = METRO_WAV if METRO_WAV.is_file() else None
    if source is not None:
        for run_file in file_paths.values():
            run_file(source)
        for round_index in range(args.file_rounds):
            for name in rotated(list(file_paths), round_index):
                start = time.perf_counter()
                file_paths[name](source)
                file_times[name].append(time.perf_counter() - start)

    base = statistics.median(times["ours eager (fp32)"])
    ref = statistics.median(times["reference eager (fp32)"]) if "reference eager (fp32)" in times else None
    print(f"{args.arch}10, 10-s clips, batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}; medians of {args.rounds} interleaved rounds")
    print(f"{'path':26s} {'ms':>8s} {'vs eager':>9s} {'vs ref':>7s} {'max rel err':>12s}  agreement")
    probabilities = torch.sigmoid(expected)
    for name in paths:
        median = statistics.median(times[name])
        error = float((outputs[name] - expected).abs().max() / expected.abs().max())
        agreement = ""
        if name.startswith(("bf16", "onnx", "openvino")):
            p = torch.sigmoid(outputs[name])
            same = sum(set(p[i].topk(5).indices.tolist()) == set(probabilities[i].topk(5).indices.tolist())
                       for i in range(p.shape[0]))
            agreement = (f"top-5 same {same}/{p.shape[0]}, mean |dprob| "
                         f"{float((p - probabilities).abs().mean()):.1e}")
        versus_ref = f"{ref / median:6.2f}x" if ref else "      -"
        print(f"{name:26s} {1000 * median:8.1f} {base / median:8.2f}x {versus_ref} {error:12.1e}  {agreement}")
    if source is not None:
        print(f"\nend to end, tag_file({source.name}): decode + resample + mel + model + top-10; "
              f"medians of {args.file_rounds} rounds")
        file_base = statistics.median(file_times["ours eager (fp32)"])
        file_ref = statistics.median(file_times["reference inference.py"]) if "reference inference.py" in file_times \
            else None
        print(f"{'path':26s} {'ms':>8s} {'vs eager':>9s} {'vs ref':>7s}")
        for name, values in file_times.items():
            median = statistics.median(values)
            versus_ref = f"{file_ref / median:6.2f}x" if file_ref else "      -"
            print(f"{name:26s} {1000 * median:8.1f} {file_base / median:8.2f}x {versus_ref}")
    with contextlib.suppress(Exception):
        if workdir is not None:
            workdir.cleanup()


if __name__ == "__main__":
    main()
