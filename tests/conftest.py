"""Shared test helpers: where the read-only reference material lives, and fixture discovery."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The tagging command's default backend (auto) exports a student once per model to run it in
# OpenVINO / ONNX Runtime: the command-line tests (a fresh model each) keep PyTorch unless they name a
# backend; tests/test_backends.py and test_one_answer.py cover the others.
os.environ.setdefault("EFFICIENT_TAGGING_BACKEND", "torch")
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "reference"
METRO_WAV = SHARED / "data" / "metro_station-paris.wav"
LABELS_CSV = SHARED / "data" / "class_labels_indices.csv"


def fixture_files(*kinds: str) -> list[Path]:
    """Fixture files of the given kinds (read at collection time, so new files are picked up)."""
    if not FIXTURES.is_dir():
        return []
    files = []
    for path in sorted(FIXTURES.glob("*.pt")):
        if ".state_dict-" in path.name:
            continue
        if torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("kind") in kinds:
            files.append(path)
    return files


def load_fixture(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def float_state_dict(state_dict: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


requires_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared (reference fixtures and data) not present")


def make_tiny_audioset(path: Path, num_clips: int = 24, num_classes: int = 4, sample_rate: int = 16000,
                       seconds: float = 1.0, seed: int = 0, codec: str = "flac") -> Path:
    """A small AudioSet-format HDF5: each class is a tone at its own frequency, 1-2 classes per clip."""
    import numpy as np

    from efficient_tagging.audio import encode_audio
    from efficient_tagging.data.hdf5 import AudioSetHDF5Writer
    from efficient_tagging.labels import LabelMap

    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    labels = LabelMap.from_names([f"tone_{i}" for i in range(num_classes)])
    with AudioSetHDF5Writer(path, num_classes=num_classes, sample_rate=sample_rate, label_map=labels) as writer:
        for i in range(num_clips):
            target = np.zeros(num_classes, dtype=bool)
            target[rng.choice(num_classes, size=int(rng.integers(1, 3)), replace=False)] = True
            wave = 0.01 * rng.standard_normal(len(t))
            for c in np.flatnonzero(target):
                wave += 0.2 * np.sin(2 * np.pi * 300 * (c + 1) * t)
            writer.add(f"Ytiny_{i:04d}.{codec}", encode_audio(wave.astype(np.float32), sample_rate, codec), target)
    return path


def corrupt_clip(path: Path, audio_name: str) -> None:
    """Replace one clip's encoded bytes in an AudioSet-format HDF5 by noise that no decoder reads."""
    import h5py
    import numpy as np

    with h5py.File(path, "r+") as handle:
        names = [n.decode() for n in handle["audio_name"][()]]
        handle["mp3"][names.index(audio_name)] = np.frombuffer(np.random.default_rng(0).bytes(600), dtype=np.uint8)


def save_tiny_teacher(path: Path, num_classes: int = 4, seed: int = 0) -> Path:
    """A tiny mn checkpoint (width 0.1, 32 mels at 16 kHz) that tags `make_tiny_audioset` data."""
    from efficient_tagging import get_model, save_checkpoint
    from efficient_tagging.labels import LabelMap

    torch.manual_seed(seed)
    model = get_model(arch="mn", width_mult=0.1, num_classes=num_classes, input_dim_f=32)
    return save_checkpoint(path, model, preprocessing={"sr": 16000, "n_mels": 32, "hopsize": 320},
                           labels=LabelMap.from_names([f"tone_{i}" for i in range(num_classes)]))


def labelling_args(data: Path, output: Path, teachers, *extra: str) -> list[str]:
    """ex_teacher_labels.py flags for the tiny data: 1 s clips, batches of 4, flushed every 2 batches."""
    teachers = [teachers] if isinstance(teachers, (str, Path)) else teachers
    return ["--hdf5", str(data), "--output", str(output), "--teachers", *map(str, teachers), "--clip_length", "1",
            "--batch_size", "4", "--num_workers", "0", "--flush_every", "2", "--no_progress", *extra]


@pytest.fixture(autouse=True, scope="session")
def _interactive_sigint():
    """Run the tests with Python's Ctrl-C handler even when pytest was started with SIGINT ignored.

    A job started in the background by a non-interactive shell (`cmd &`, nohup, some CI runners)
    inherits SIGINT = SIG_IGN; Python then keeps it ignored, our stop-on-signal code rightly
    leaves it ignored, and so would every subprocess the tests start (an ignored disposition
    survives exec). The Ctrl-C tests describe an interactive process: install Python's handler
    (a caught signal is reset to the default in exec'd children) for the session.
    """
    import signal

    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """Every test leaves SIGINT/SIGTERM as it found them: later tests (and the subprocesses they
    start, which inherit SIG_IGN) depend on the default Ctrl-C behaviour."""
    import signal

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    after = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    if after != before:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
        pytest.fail(f"the test changed the signal handlers (SIGINT, SIGTERM) from {before} to {after}")


def metro_long(seconds: float, sample_rate: int = 32000) -> torch.Tensor:
    """`seconds` of real audio built from the shared metro recording (10 s): the recording, then
    reversed, shifted, half-speed-and-back and quieter copies of it, so no two 10-s stretches match."""
    from efficient_tagging.audio import load_audio

    metro = load_audio(METRO_WAV, sample_rate=sample_rate).reshape(-1)
    parts = [metro, metro.flip(0), 0.5 * metro.roll(sample_rate + 18000), metro[::2].repeat_interleave(2),
             metro.flip(0).roll(1234), 0.3 * metro]
    return torch.cat(parts)[: int(round(seconds * sample_rate))].contiguous()


def randomised_student(arch: str = "mn", seed: int = 0, logit_std: float = 1.0, dynamic_scale: float = 0.2,
                       preprocessing: Optional[dict] = None, **config) -> torch.nn.Module:
    """A random mn / dymn student with realistic activations at every input length, in eval mode.

    The fixtures' recipe (README of the reference fixtures): conv/linear weights N(0, 1/fan_in),
    biases N(0, 0.01), norm weights U(0.5, 1.5); BatchNorm statistics measured on real audio
    (the metro recording at 1, 3, 10 and 30 s, and demo clips: a random DyMN calibrated at one
    length, or on one kind of sound, explodes on others). DyMN's dynamic maps (kernel attention, Dy-ReLU coefficients, coordinate attention)
    are scaled by `dynamic_scale` (the fixtures use 0.5 for one input; 0.2 keeps the random network
    stable from 1 to 60 s); the classifier is scaled so that the logits of 10 s have std `logit_std`.
    `preprocessing`: the frontend settings (default: the 32 kHz catalogue mel), stored on the model
    as a checkpoint of this project stores them (with `clip_length`, if given).
    """
    import math

    from efficient_tagging.frontends import build_frontend
    from efficient_tagging.models import get_model
    from efficient_tagging.models.dymn import ContextGenerator, DynamicConv2d, DyReLUB

    generator = torch.Generator().manual_seed(seed)
    model = get_model(arch=arch, **config)
    dynamic: set[int] = set()
    for module in model.modules():
        parts = {DynamicConv2d: "residuals", DyReLUB: "coef_net"}
        if type(module) in parts:
            dynamic |= {id(p) for p in getattr(module, parts[type(module)]).parameters()}
        if isinstance(module, ContextGenerator):
            dynamic |= {id(p) for p in [*module.conv_f.parameters(), *module.conv_t.parameters()]}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)):
                if module.weight is not None:
                    module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                    module.bias.copy_(0.01 * torch.randn(module.bias.shape, generator=generator))
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.reset_running_stats()
                    module.momentum = None  # cumulative average over the calibration passes
                continue
            for name, parameter in module.named_parameters(recurse=False):
                if parameter.dim() == 1:
                    parameter.copy_(0.01 * torch.randn(parameter.shape, generator=generator))
                    continue
                fan_in = parameter[0].numel()
                if isinstance(module, DynamicConv2d):
                    fan_in = module.in_channels // module.groups * module.kernel_size ** 2
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / math.sqrt(fan_in))
                if id(parameter) in dynamic:
                    parameter.mul_(dynamic_scale)
        frontend = build_frontend(preprocessing or {})
        rate = int(frontend.sr)
        audio = metro_long(60, sample_rate=rate)
        model.train()
        for seconds in (1, 3, 10, 30):
            n = seconds * rate
            model(frontend(torch.stack([audio[:n], audio[-n:]])).unsqueeze(1))
        # and the embedded demo clips (tones and events over a -55 dB floor: far quieter bands
        # than the recording), which the export checks run on
        import numpy as np

        from efficient_tagging.data.demo import synthesise_clip

        rng = np.random.default_rng(seed)
        demo = [torch.from_numpy(synthesise_clip(rng, rate, 4.0)[0]).float() for _ in range(4)]
        model(frontend(torch.stack(demo)).unsqueeze(1))
        model.eval()
        logits = model(frontend(audio[:10 * rate].reshape(1, -1)).unsqueeze(1))[0]
        classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        classifier.weight.mul_(logit_std / float(logits.std()))
        if classifier.bias is not None:
            classifier.bias.mul_(logit_std / float(logits.std()))
    if preprocessing is not None:
        model.preprocessing = dict(preprocessing)
    return model


def published_tagger(name: str = "mn10_as"):
    """The tagger of a published catalogue model if its weights are in the download cache; skips the
    test otherwise (CI has no network, and these checks need trained weights, not random ones)."""
    from efficient_tagging.hub import cache_dir
    from efficient_tagging.tagging import AudioTagger

    try:
        cached = any(p.name.startswith(name) for p in cache_dir().rglob("*.pt"))
    except OSError:
        cached = False
    if not cached:
        pytest.skip(f"{name} weights not in the download cache")
    return AudioTagger.from_pretrained(name, labels_path=LABELS_CSV)
