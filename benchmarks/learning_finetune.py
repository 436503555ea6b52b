"""Does `ex_finetune.py` learn on real-looking own data with its defaults, and does KD help?

The acceptance check of the fine-tuning issue ("learning on real-looking data"):

1. generate a CSV dataset (`train.csv`, `eval.csv`: `filename,labels`, one label per row) of
   1 s clips at `--sample_rate` (22.05 kHz), written as FLAC and WAV through
   `efficient_tagging.audio.encode_audio`, with 12 classes whose identity is a timbre or a
   shape, never one frequency: three synthetic vowels (formant-filtered glottal pulse trains),
   plucked strings, bowed strings, bells (inharmonic partials), square-wave synths, rising and
   falling chirps, pink/brown noise bursts, fricative-like hiss and click trains. Every clip
   draws a pitch from a wide per-class range, a "speaker"/instrument variation, an onset and
   a duration inside the second, a gain and a background noise of random colour and SNR.
   Deterministic (one seed per clip derived from `--seed`, split, class and index);
2. train an mn04 student (`--model_width 0.4`) from scratch with every default of the own-data
   recipe (only the dataset flags, `--num_workers 0`, outputs; `--n_epochs` only when given);
3. train a wider student (`--teacher_width`, default 1.0) the same way, label the training CSV
   with its last.pt through `ex_teacher_labels.py`, train the mn04 student again with
   `--teacher_preds` (the recipe's default kd_lambda) and otherwise identical flags; steps 2
   and 3's student runs repeat per `--train_seeds` (default 0 1 2), compared pairwise;
4. print chance / no-KD / teacher / KD accuracy (last epoch = the reported one, and the best
   epoch) with wall times, optionally appended to `benchmarks/RESULTS.md` (`--results_md`).

Nothing here is tuned to the synthetic set: the point is that the defaults must learn.

    python benchmarks/learning_finetune.py                       # full run (~25-35 min on 2 CPU cores)
    python benchmarks/learning_finetune.py --quick               # smoke run (~2 min)
    python benchmarks/learning_finetune.py --results_md          # and append the table to RESULTS.md
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from scipy import signal

from _common import REPO  # puts the checkout on sys.path

from efficient_tagging.audio import encode_audio

# ----------------------------------------------------------------------------- the sounds

# vowel formants (Peterson & Barney, adult male; F1..F4 Hz) and bandwidths
VOWELS = {
    "vowel_a": (730.0, 1090.0, 2440.0, 3400.0),
    "vowel_i": (270.0, 2290.0, 3010.0, 3700.0),
    "vowel_u": (300.0, 870.0, 2240.0, 3300.0),
}
FORMANT_BW = (80.0, 100.0, 140.0, 200.0)
BELL_RATIOS = np.array([0.56, 0.92, 1.19, 1.71, 2.0, 2.74, 3.0, 3.76, 4.07])  # Risset's bell partials


def _envelope(n: int, sr: int, attack: float, release: float, kind: str = "linear") -> np.ndarray:
    """An attack-sustain-release amplitude envelope of n samples."""
    env = np.ones(n)
    a, r = max(1, min(n // 2, int(attack * sr))), max(1, min(n // 2, int(release * sr)))
    env[:a] = np.linspace(0.0, 1.0, a) ** (2.0 if kind == "slow" else 1.0)
    env[n - r:] *= np.linspace(1.0, 0.0, r)
    return env


def _pitch_track(rng: np.random.Generator, n: int, sr: int, f0: float, glide: float, vibrato_depth: float,
                 jitter: float = 0.0) -> np.ndarray:
    """Instantaneous frequency (Hz): a linear glide by `glide` (ratio), vibrato and slow jitter."""
    t = np.arange(n) / sr
    dur = max(n / sr, 1e-3)
    track = f0 * glide ** (t / dur)
    rate = rng.uniform(4.0, 7.0)
    track = track * (1.0 + vibrato_depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    if jitter > 0:
        knots = rng.normal(0.0, jitter, size=max(2, int(dur * 30)))
        track = track * (1.0 + np.interp(t, np.linspace(0, dur, knots.size), knots))
    return track


def _harmonics(freq: np.ndarray, sr: int, amplitudes: Callable[[int], float], max_k: int = 60,
               decays: Optional[Callable[[int], float]] = None, phase_rng: Optional[np.random.Generator] = None
               ) -> np.ndarray:
    """Additive synthesis of the harmonics k*freq below Nyquist (amplitude a(k), optional decay d(k) /s)."""
    phase = 2 * np.pi * np.cumsum(freq) / sr
    t = np.arange(freq.size) / sr
    out = np.zeros(freq.size)
    top = float(freq.max())
    for k in range(1, max_k + 1):
        if k * top >= 0.45 * sr:
            break
        partial = amplitudes(k) * np.sin(k * phase + (phase_rng.uniform(0, 2 * np.pi) if phase_rng else 0.0))
        if decays is not None:
            partial *= np.exp(-decays(k) * t)
        out += partial
    return out


def _coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=float)
    f[0] = 1.0
    noise = np.fft.irfft(spectrum / f ** (exponent / 2.0), n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def _resonator(x: np.ndarray, sr: int, freq: float, bandwidth: float) -> np.ndarray:
    """A two-pole resonator (formant filter), unity gain at its centre frequency."""
    r = np.exp(-np.pi * bandwidth / sr)
    theta = 2 * np.pi * freq / sr
    a = [1.0, -2 * r * np.cos(theta), r * r]
    gain = abs(np.polyval(a[::-1], np.exp(-1j * theta)))  # |A(e^{j theta})|
    return signal.lfilter([gain], a, x)


def vowel(rng: np.random.Generator, n: int, sr: int, name: str) -> np.ndarray:
    scale = rng.uniform(0.85, 1.25)  # vocal-tract length: male .. child
    f0 = rng.uniform(85.0, 330.0)
    freq = _pitch_track(rng, n, sr, f0, glide=rng.uniform(0.8, 1.25), vibrato_depth=rng.uniform(0.0, 0.02),
                        jitter=0.01)
    phase = np.cumsum(freq) / sr
    saw = 2.0 * (phase % 1.0) - 1.0  # glottal flow derivative ~ sawtooth with a spectral tilt
    source = signal.lfilter([1.0], [1.0, -rng.uniform(0.6, 0.9)], np.diff(saw, prepend=saw[0]))
    source += rng.uniform(0.0, 0.15) * rng.standard_normal(n)  # aspiration
    out = np.zeros(n)
    for formant, bandwidth in zip(VOWELS[name], FORMANT_BW):
        out += _resonator(source, sr, min(formant * scale * rng.uniform(0.95, 1.05), 0.45 * sr),
                          bandwidth * rng.uniform(0.8, 1.3))
    return out * _envelope(n, sr, rng.uniform(0.02, 0.06), rng.uniform(0.04, 0.12))


def pluck(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0 = rng.uniform(80.0, 1000.0)
    freq = np.full(n, f0 * rng.uniform(0.995, 1.005))
    position = rng.uniform(0.08, 0.4)  # plucking position along the string
    d0, d1 = rng.uniform(2.0, 8.0), rng.uniform(0.5, 3.0)
    out = _harmonics(freq, sr, lambda k: abs(np.sin(np.pi * k * position)) / k ** 1.2,
                     decays=lambda k: d0 + d1 * k, phase_rng=rng)
    return out * _envelope(n, sr, 0.002, 0.01)


def bowed(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0 = rng.uniform(100.0, 900.0)
    freq = _pitch_track(rng, n, sr, f0, glide=1.0, vibrato_depth=rng.uniform(0.004, 0.015))
    tilt = rng.uniform(0.8, 1.3)
    out = _harmonics(freq, sr, lambda k: 1.0 / k ** tilt, phase_rng=rng)
    b, a = signal.butter(2, min(rng.uniform(2000.0, 6000.0), 0.45 * sr), fs=sr)  # body / bow
    out = signal.lfilter(b, a, out) + 0.02 * rng.standard_normal(n)  # bow noise
    return out * _envelope(n, sr, rng.uniform(0.08, 0.25), rng.uniform(0.05, 0.2), kind="slow")


def bell(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0 = rng.uniform(200.0, 1500.0)
    t = np.arange(n) / sr
    out = np.zeros(n)
    for ratio in BELL_RATIOS * rng.uniform(0.98, 1.02, size=BELL_RATIOS.size):
        if ratio * f0 >= 0.45 * sr:
            continue
        decay = rng.uniform(1.5, 4.0) * (1.0 + ratio)  # higher partials die faster
        out += rng.uniform(0.3, 1.0) * np.exp(-decay * t) * np.sin(2 * np.pi * ratio * f0 * t + rng.uniform(0, 6.3))
    return out * _envelope(n, sr, 0.001, 0.02)


def square(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0 = rng.uniform(100.0, 800.0)
    freq = _pitch_track(rng, n, sr, f0, glide=1.0, vibrato_depth=rng.uniform(0.0, 0.005))
    out = _harmonics(freq, sr, lambda k: (1.0 / k) if k % 2 else 0.0)
    return out * _envelope(n, sr, rng.uniform(0.005, 0.03), rng.uniform(0.01, 0.05))


def chirp(rng: np.random.Generator, n: int, sr: int, up: bool) -> np.ndarray:
    low = rng.uniform(150.0, 1500.0)
    ratio = rng.uniform(2.0, 6.0)
    freq = np.geomspace(low, min(low * ratio, 0.4 * sr), n)
    if not up:
        freq = freq[::-1]
    second = rng.uniform(0.0, 0.5)
    out = _harmonics(freq, sr, lambda k: 1.0 if k == 1 else (second if k == 2 else 0.0), max_k=2)
    return out * _envelope(n, sr, rng.uniform(0.005, 0.03), rng.uniform(0.01, 0.05))


def noise_burst(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out = _coloured_noise(rng, n, rng.uniform(1.0, 2.0))  # pink .. brown: rumble, wind, surf
    b, a = signal.butter(2, min(rng.uniform(1500.0, 6000.0), 0.45 * sr), fs=sr)
    out = signal.lfilter(b, a, out)
    return out * _envelope(n, sr, rng.uniform(0.01, 0.2), rng.uniform(0.05, 0.3))


def hiss(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    low = rng.uniform(2500.0, 6000.0)  # a fricative "sss"/"shh"
    b, a = signal.butter(4, [low, min(low * rng.uniform(1.5, 2.5), 0.45 * sr)], btype="bandpass", fs=sr)
    out = signal.lfilter(b, a, rng.standard_normal(n))
    return out * _envelope(n, sr, rng.uniform(0.02, 0.08), rng.uniform(0.03, 0.1))


def click_train(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    rate = rng.uniform(4.0, 40.0)  # clicks per second: a ticking clock .. a ratchet
    resonance = rng.uniform(1000.0, 6000.0)
    length = int(0.006 * sr)
    tt = np.arange(length) / sr
    click = np.sin(2 * np.pi * resonance * tt) * np.exp(-tt * rng.uniform(800.0, 2000.0))
    out = np.zeros(n + length)
    position = rng.uniform(0.0, 1.0 / rate)
    while position * sr < n:
        start = int(position * sr)
        out[start:start + length] += click * rng.uniform(0.6, 1.0)
        position += (1.0 / rate) * rng.uniform(0.9, 1.1)
    return out[:n]


CLASSES: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "vowel_a": lambda rng, n, sr: vowel(rng, n, sr, "vowel_a"),
    "vowel_i": lambda rng, n, sr: vowel(rng, n, sr, "vowel_i"),
    "vowel_u": lambda rng, n, sr: vowel(rng, n, sr, "vowel_u"),
    "pluck": pluck,
    "bowed": bowed,
    "bell": bell,
    "square": square,
    "chirp_up": lambda rng, n, sr: chirp(rng, n, sr, up=True),
    "chirp_down": lambda rng, n, sr: chirp(rng, n, sr, up=False),
    "noise_burst": noise_burst,
    "hiss": hiss,
    "click_train": click_train,
}
SPLITS = {"train": 0, "eval": 1}


def make_clip(class_index: int, split: str, index: int, seed: int, sample_rate: int) -> np.ndarray:
    """One 1 s clip of class `class_index`: the event at a random onset/duration, gain, background noise."""
    rng = np.random.default_rng([seed, SPLITS[split], class_index, index])
    n = sample_rate
    duration = rng.uniform(0.35, 0.95)
    length = int(duration * n)
    onset = int(rng.uniform(0.0, 1.0 - duration) * n)
    event = list(CLASSES.values())[class_index](rng, length, sample_rate)
    event = event / (np.sqrt(np.mean(event ** 2)) + 1e-12)
    clip = np.zeros(n)
    clip[onset:onset + length] = event
    snr_db = rng.uniform(3.0, 30.0)
    background = _coloured_noise(rng, n, rng.choice([0.0, 1.0, 2.0])) * 10 ** (-snr_db / 20.0)
    if rng.random() < 0.3:  # mains hum in some recordings
        t = np.arange(n) / sample_rate
        hum = rng.choice([50.0, 60.0])
        background += rng.uniform(0.01, 0.05) * (np.sin(2 * np.pi * hum * t) + 0.5 * np.sin(4 * np.pi * hum * t))
    clip = clip + background
    peak_db = rng.uniform(-30.0, -1.0)
    return (clip / (np.abs(clip).max() + 1e-12) * 10 ** (peak_db / 20.0)).astype(np.float32)


def generate_dataset(data_dir: Path, train_per_class: int, eval_per_class: int, seed: int,
                     sample_rate: int) -> dict[str, Any]:
    """Write clips/ + train.csv + eval.csv under data_dir (deterministic); returns a description."""
    data_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train": train_per_class, "eval": eval_per_class}
    names = list(CLASSES)
    for split, per_class in counts.items():
        (data_dir / "clips" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for class_index, name in enumerate(names):
            for index in range(per_class):
                codec = "flac" if (class_index + index) % 2 == 0 else "wav"
                relative = f"clips/{split}/{name}_{index:03d}.{codec}"
                samples = make_clip(class_index, split, index, seed, sample_rate)
                (data_dir / relative).write_bytes(encode_audio(samples, sample_rate, codec))
                rows.append((relative, name))
        with open(data_dir / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "labels"])
            writer.writerows(rows)
    return {"classes": names, "train_clips": train_per_class * len(names), "eval_clips": eval_per_class * len(names),
            "sample_rate": sample_rate}


# ----------------------------------------------------------------------------- the runs

def run_logged(name: str, command: list[str], log_dir: Path) -> float:
    """Run `command` from the repository root, output to the terminal and log_dir/name.log; wall seconds."""
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"\n$ {shlex.join(command)}", flush=True)
    started = time.time()
    with open(log_dir / f"{name}.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            if "it/s]" not in line and "s/it]" not in line:  # progress-bar refreshes stay in the log
                sys.stdout.write(line)
                sys.stdout.flush()
        code = process.wait()
    seconds = time.time() - started
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}); see {log_dir / (name + '.log')}")
    return seconds


def finetune_command(args: argparse.Namespace, data_dir: Path, width: float, name: str,
                     teacher_preds: Optional[Path] = None, seed: Optional[int] = None) -> list[str]:
    work = Path(args.work_dir)
    command = [sys.executable, "experiments/ex_finetune.py", "--train_csv", str(data_dir / "train.csv"),
               "--eval_csv", str(data_dir / "eval.csv"), "--model_width", f"{width:g}",
               "--out_dir", str(work / name), "--results_json", str(work / f"{name}.json"),
               "--num_workers", "0", "--wandb", "disabled", "--runs_dir", str(work / "runs"), "--no_progress"]
    if args.cache:
        command += ["--cache_path", str(work / "cache")]
    if args.task != "none":
        command += ["--task", args.task]
    if args.n_epochs is not None:
        command += ["--n_epochs", str(args.n_epochs)]
    if teacher_preds is not None:
        command += ["--teacher_preds", str(teacher_preds)]
    if seed is not None:  # the training seed (order, augmentation, initialisation); the dataset stays the same
        command += ["--seed", str(seed)]
    return command


def summarise(path: Path) -> dict[str, Any]:
    payload = json.loads(path.read_text())
    last, best = payload.get("last") or {}, payload.get("best") or {}
    history = payload.get("history") or []
    return {"accuracy": last.get("accuracy", payload.get("accuracy")), "epoch": last.get("epoch"),
            "best": best.get("accuracy"), "best_epoch": best.get("epoch"),
            "curve": [record.get("accuracy") for record in history],
            "train_loss": [record.get("train_loss", record.get("loss")) for record in history],
            "recipe_choices": payload.get("recipe_choices") or {}, "payload": payload}


def _short(command: list[str], work: Path) -> str:
    """A command line as it reads from the repository root with W = the work directory."""
    text = shlex.join(["python", *command[1:]])
    return text.replace(str(work), "W")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def build_table(rows: list[dict[str, Any]], chance: float) -> list[str]:
    lines = ["| run | accuracy (last epoch, reported) | best epoch accuracy | mean of the last 10 epochs | wall s |",
             "| --- | --- | --- | --- | --- |", f"| chance (1/classes) | {chance:.3f} | | | |"]
    for row in rows:
        if "accuracy" in row:
            best = f"{_fmt(row['best'])} (epoch {row['best_epoch']})" if row.get("best") is not None else ""
            tail = [v for v in row["curve"][-10:] if v is not None]
            lines.append(f"| {row['name']} | {_fmt(row['accuracy'])} (epoch {row['epoch']}) | {best} | "
                         f"{_fmt(float(np.mean(tail)) if tail else None)} | {row['seconds']:.0f} |")
        else:
            lines.append(f"| {row['name']} | | | | {row['seconds']:.0f} |")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--work_dir", default="/tmp/learning_finetune", help="dataset, checkpoints, logs, JSONs")
    parser.add_argument("--clips_per_class", type=int, default=36, help="training clips per class")
    parser.add_argument("--eval_clips_per_class", type=int, default=10, help="evaluation clips per class")
    parser.add_argument("--sample_rate", type=int, default=22050, help="sample rate of the generated files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated dataset")
    parser.add_argument("--n_epochs", type=int, default=None,
                        help="pass --n_epochs to every training run; none = the recipe's default")
    parser.add_argument("--student_width", type=float, default=0.4, help="--model_width of the student")
    parser.add_argument("--teacher_width", type=float, default=1.0, help="--model_width of the wider student (teacher)")
    parser.add_argument("--no_cache", dest="cache", action="store_false",
                        help="no --cache_path: decode and resample every clip every epoch (the default caches the "
                             "decoded 32 kHz waveforms once in WORK_DIR/cache, a speed setting, not a recipe one)")
    parser.add_argument("--task", default="multiclass", choices=["multiclass", "none"],
                        help="pass --task multiclass (what ex_finetune.py infers from these CSVs anyway); 'none' "
                             "leaves the task to the command's inference (the same answer here)")
    parser.add_argument("--train_seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds of the student runs: no KD and KD are trained once per seed (same "
                             "dataset, same teacher logits) and compared pairwise; 0 is the trainer's default")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 6 train / 3 eval clips per class, 3 epochs (numbers mean nothing)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the dataset and runs already in --work_dir (results JSON present)")
    parser.add_argument("--results_md", nargs="?", const=str(REPO / "benchmarks" / "RESULTS.md"), default=None,
                        metavar="FILE", help="append the table as markdown to FILE (flag alone: benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips_per_class, args.eval_clips_per_class = 6, 3
        args.n_epochs = args.n_epochs or 3
    started = time.time()
    work = Path(args.work_dir)
    data_dir, logs = work / "data", work / "logs"

    if not (args.reuse and (data_dir / "eval.csv").is_file()):
        t0 = time.time()
        info = generate_dataset(data_dir, args.clips_per_class, args.eval_clips_per_class, args.seed, args.sample_rate)
        print(f"dataset: {len(info['classes'])} classes ({', '.join(info['classes'])}), {info['train_clips']} train / "
              f"{info['eval_clips']} eval clips of 1 s at {args.sample_rate} Hz (flac + wav) in {data_dir} "
              f"({time.time() - t0:.0f} s)", flush=True)
    num_classes = len(CLASSES)
    chance = 1.0 / num_classes

    def train(name: str, width: float, teacher_preds: Optional[Path] = None,
              seed: Optional[int] = None) -> dict[str, Any]:
        json_path = work / f"{name}.json"
        seconds_path = work / f"{name}.seconds"
        command = finetune_command(args, data_dir, width, name, teacher_preds, seed)
        if args.reuse and json_path.is_file() and seconds_path.is_file():
            seconds = float(seconds_path.read_text())
        else:
            seconds = run_logged(name, command, logs)
            seconds_path.write_text(f"{seconds}")
        return {"name": name, "seconds": seconds, "command": command, **summarise(json_path)}

    teacher = train("teacher", args.teacher_width)
    logits = work / "teacher_logits.h5"
    label_seconds_path = work / "labelling.seconds"
    label_command = [sys.executable, "experiments/ex_teacher_labels.py", "--train_csv", str(data_dir / "train.csv"),
                     "--eval_csv", str(data_dir / "eval.csv"), "--teachers", str(work / "teacher" / "last.pt"),
                     "--output", str(logits), "--num_workers", "0", "--no_progress"]
    if args.reuse and logits.is_file() and label_seconds_path.is_file():
        label_seconds = float(label_seconds_path.read_text())
    else:
        if logits.exists():
            logits.unlink()
        label_seconds = run_logged("labelling", label_command, logs)
        label_seconds_path.write_text(f"{label_seconds}")
    # one no-KD and one KD student per training seed, interleaved so that a slow phase of the
    # machine hits both arms alike
    pairs = []
    for seed in args.train_seeds:
        nokd = train(f"student_nokd_seed{seed}", args.student_width, seed=seed)
        kd = train(f"student_kd_seed{seed}", args.student_width, teacher_preds=logits, seed=seed)
        pairs.append((seed, nokd, kd))

    from efficient_tagging.train.finetune import OWN_RECIPE
    from efficient_tagging.train.losses import kd_temperature
    kd_lambda = pairs[0][2]["payload"].get("kd_lambda", OWN_RECIPE.kd_lambda)  # not passed: the recipe's
    # not passed either: the task's default (the generated set is single-label)
    temperature = kd_temperature(pairs[0][2]["payload"].get("task") or "multiclass", OWN_RECIPE.temperature)
    epochs = pairs[0][1]["epoch"]
    rows: list[dict[str, Any]] = [{**teacher, "name": f"mn width {args.teacher_width:g}, from scratch (teacher)"},
                                  {"name": "labelling the training CSV with the teacher's last.pt",
                                   "seconds": label_seconds}]
    for seed, nokd, kd in pairs:
        rows.append({**nokd, "name": f"mn width {args.student_width:g}, from scratch, no KD, seed {seed}"})
        rows.append({**kd, "name": f"mn width {args.student_width:g}, from scratch, KD, seed {seed}"})
    table = build_table(rows, chance)
    n_eval = args.eval_clips_per_class * num_classes
    differences = np.array([kd["accuracy"] - nokd["accuracy"] for _, nokd, kd in pairs], dtype=float)
    nokd_mean = float(np.mean([nokd["accuracy"] for _, nokd, _ in pairs]))
    kd_mean = float(np.mean([kd["accuracy"] for _, _, kd in pairs]))
    mean_difference = float(differences.mean())
    # standard error of the mean paired difference over seeds (needs >= 2 seeds); with one seed,
    # the binomial standard error of a difference of two accuracies on n_eval clips
    if len(differences) > 1:
        difference_se = float(differences.std(ddof=1) / np.sqrt(len(differences)))
    else:
        p_mean = (nokd_mean + kd_mean) / 2
        difference_se = float(np.sqrt(2 * p_mean * (1 - p_mean) / n_eval))
    seed_table = ["| training seed | no KD | KD | KD - no KD |", "| --- | --- | --- | --- |"]
    for (seed, nokd, kd), difference in zip(pairs, differences):
        seed_table.append(f"| {seed} | {_fmt(nokd['accuracy'])} | {_fmt(kd['accuracy'])} | {difference:+.3f} "
                          f"({round(difference * n_eval):+d} clips) |")
    seed_table.append(f"| mean | {nokd_mean:.3f} | {kd_mean:.3f} | {mean_difference:+.3f} +- {difference_se:.3f} |")
    print("\n================ learning on real-looking own data ================")
    print("\n".join(table))
    print()
    print("\n".join(seed_table))
    print("\naccuracy per epoch (eval):")
    for row in rows:
        if "curve" in row:
            print(f"  {row['name']}: {' '.join(_fmt(v) for v in row['curve'])}")
    for name, why in pairs[0][1]["recipe_choices"].items():
        print(f"recipe choice (no-KD run): {name} = {why}")
    epochs_note = (f"--n_epochs {args.n_epochs} (given)" if args.n_epochs is not None
                   else f"the recipe's default n_epochs ({epochs})")
    print(f"epochs: {epochs_note}; KD with the recipe's default kd_lambda"
          f"{'' if kd_lambda is None else f' = {kd_lambda:g}'} and the task's default temperature {temperature:g}")
    verdict_learn = all(nokd["accuracy"] is not None and nokd["accuracy"] > 3 * chance for _, nokd, _ in pairs)
    # "not worse": the mean paired difference is not below zero by more than its standard error
    verdict_kd = mean_difference >= -difference_se - 1e-9
    kd_line = (f"KD - no KD (last epoch, mean over {len(pairs)} training seed(s)): {mean_difference:+.3f} "
               f"(standard error {difference_se:.3f}; {mean_difference * n_eval:+.1f} of {n_eval} eval clips); "
               f"not worse than no KD (mean difference >= -1 standard error): {'yes' if verdict_kd else 'NO'}; "
               f"better: {'yes' if mean_difference > difference_se else 'no'}")
    print(f"learns clearly above chance (> 3x chance, every seed): {'yes' if verdict_learn else 'NO'}")
    print(kd_line)
    total = teacher["seconds"] + label_seconds + sum(n["seconds"] + k["seconds"] for _, n, k in pairs)
    print(f"wall time of all steps: {total:.0f} s (this invocation: {time.time() - started:.0f} s)")

    if args.results_md:
        command = "python benchmarks/learning_finetune.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        info_line = (f"{len(CLASSES)} classes ({', '.join(CLASSES)}), {args.clips_per_class * num_classes} train / "
                     f"{args.eval_clips_per_class * num_classes} eval clips of 1 s at {args.sample_rate} Hz "
                     f"(flac + wav), seed {args.seed}")
        import torch
        first_nokd, first_kd = pairs[0][1], pairs[0][2]
        block = [
            "", f"## Learning on real-looking own data ({datetime.date.today().isoformat()})", "",
            f"`{command.strip()}`, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; all steps took {total / 60:.0f} min "
            f"of wall time.", "",
            f"Dataset: {info_line}. Every run has the own-data recipe's defaults ({epochs_note}; KD: "
            f"`--teacher_preds`, default kd_lambda{'' if kd_lambda is None else f' {kd_lambda:g}'}, "
            f"default temperature {temperature:g}); "
            f"the teacher is trained once with `--model_width {args.teacher_width:g}`, the students once per "
            f"training seed ({', '.join(str(seed) for seed in args.train_seeds)}) with and without KD:", "",
            "```", _short(teacher["command"], work), _short(label_command, work), _short(first_nokd["command"], work),
            _short(first_kd["command"], work), "```",
            "", *table, "", *seed_table, "",
            "Eval accuracy per epoch:", "",
            *[f"- {row['name']}: {' '.join(_fmt(v) for v in row['curve'])}" for row in rows if "curve" in row],
            "",
            f"Learns clearly above chance (> 3x chance, every seed): {'yes' if verdict_learn else 'NO'}. "
            f"{kd_line}.", "",
        ]
        with open(args.results_md, "a") as handle:
            handle.write("\n".join(block))
        print(f"appended to {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
