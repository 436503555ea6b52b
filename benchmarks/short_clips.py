"""Short clips: tagging the metro recording cut to 1 s, as is / zero-padded / repeated to 10 s.

EfficientAT #3: a 1-s clip tagged by a model trained on 10-s clips gets diluted tags. This compares
the three ways of feeding it, each against the tags of the whole 10-s recording (the best guess of
what the clip "is"): mean and max |delta prob| over the 527 classes, and how many of the whole
recording's top-10 classes are in the clip's top 10. Cuts at several offsets (0, 2, 4, 6, 8 s).

Models: `--models` catalogue names (need their weights in the download cache; trained weights are
what this question is about) and/or the reference-fixture cases `fixture:mn04`, `fixture:mn10`
(random weights with BatchNorm statistics from real audio: they respond to the audio, but not
with AudioSet meaning; the default when no trained weights are available offline).

    python benchmarks/short_clips.py
    python benchmarks/short_clips.py --models mn10_as fixture:mn10
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from _common import REPO  # puts the checkout on sys.path

from efficient_tagging.audio import load_audio
from efficient_tagging.models.factory import get_model
from efficient_tagging.tagging.tagger import AudioTagger

SHARED = REPO.parent / "shared"


def load(spec: str) -> AudioTagger:
    if spec.startswith("fixture:"):
        fixture = torch.load(SHARED / "fixtures" / "reference" / f"{spec.split(':', 1)[1]}.pt", weights_only=True)
        config = {k: v for k, v in fixture["config"].items() if k != "pretrained_name"}
        model = get_model(arch=fixture["kind"], **config)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in fixture["state_dict"].items()})
        model.dataset = "audioset"  # trained-length rule of the catalogue: 10-s clips
        return AudioTagger(model.eval())
    return AudioTagger.from_pretrained(spec, labels_path=SHARED / "data" / "class_labels_indices.csv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["fixture:mn04", "fixture:mn10"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    audio = load_audio(SHARED / "data" / "metro_station-paris.wav", 32000)
    print("\n| model | 1-s clip fed as | mean abs dprob vs whole 10 s | max abs dprob | top-10 overlap (of 10) |")
    print("| --- | --- | --- | --- | --- |")
    for spec in args.models:
        tagger = load(spec)
        whole = tagger.probabilities(audio[None])[0]
        top_whole = set(whole.topk(10).indices.tolist())
        rows: dict[str, list[tuple[float, float, int]]] = {"as is (no padding)": [], "zero-padded to 10 s": [],
                                                           "repeated to 10 s (default)": []}
        with torch.no_grad():
            for offset in (0, 2, 4, 6, 8):
                clip = audio[offset * 32000:(offset + 1) * 32000]
                variants = {
                    "as is (no padding)": torch.sigmoid(tagger(clip[None]))[0],
                    "zero-padded to 10 s": tagger.probabilities(torch.cat([clip, torch.zeros(9 * 32000)])[None])[0],
                    "repeated to 10 s (default)": tagger.probabilities(clip[None])[0],
                }
                for name, probs in variants.items():
                    delta = (probs - whole).abs()
                    rows[name].append((float(delta.mean()), float(delta.max()),
                                       len(top_whole & set(probs.topk(10).indices.tolist()))))
        for name, values in rows.items():
            print(f"| {spec} | {name} | {statistics.mean(v[0] for v in values):.4f} | "
                  f"{statistics.mean(v[1] for v in values):.3f} | {statistics.mean(v[2] for v in values):.1f} |")
    print("\n(means over 1-s cuts at 0, 2, 4, 6, 8 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
