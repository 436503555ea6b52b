"""`python -m efficient_tagging.cli.fbank_stats --hdf5 data.h5`: AST fbank normalisation statistics of a dataset."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable, Optional, Sequence

from torch import Tensor

from ..data.hdf5 import AudioSetDataset
from ..frontends.ast_fbank import SAMPLE_RATE, compute_fbank_stats
from .help import HelpFormatter


def _dataset_waveforms(dataset: Any, max_clips: Optional[int], skipped: list) -> Iterable[Tensor]:
    limit = len(dataset) if max_clips is None else min(max_clips, len(dataset))
    for index in range(limit):
        item = dataset[index]
        if not item.get("decoded", True):
            skipped.append(item.get("audio_name"))
            continue
        yield item["waveform"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m efficient_tagging.cli.fbank_stats --hdf5 data.h5 [...]``: print the fbank mean/std of a dataset."""
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m efficient_tagging.cli.fbank_stats",
        description="Compute the AST input normalisation statistics (fbank mean and std) of AudioSet-format HDF5 "
                    "files; the audio is resampled to 16 kHz. Use the results as ASTFbank(norm_mean=..., "
                    "norm_std=...).")
    parser.add_argument("--hdf5", nargs="+", required=True, help="AudioSet-format HDF5 file(s)")
    parser.add_argument("--clip-length", type=float, default=10.0, help="seconds per clip (default 10)")
    parser.add_argument("--target-length", type=int, default=1024,
                        help="pad/cut every clip to this many frames before counting, as the reference recipe "
                             "does (default 1024; 0 = natural frames only)")
    parser.add_argument("--num-mel-bins", type=int, default=128, help="mel bins of the fbank")
    parser.add_argument("--max-clips", type=int, default=None, help="use only the first N clips")
    args = parser.parse_args(argv)

    dataset = AudioSetDataset(args.hdf5, sample_rate=SAMPLE_RATE, clip_length=args.clip_length,
                              replace_undecodable=False)
    skipped: list = []
    try:
        mean, std = compute_fbank_stats(_dataset_waveforms(dataset, args.max_clips, skipped),
                                        sample_rate=SAMPLE_RATE, num_mel_bins=args.num_mel_bins,
                                        target_length=args.target_length or None)
    finally:
        dataset.close()
    used = (len(dataset) if args.max_clips is None else min(args.max_clips, len(dataset))) - len(skipped)
    print(f"clips: {used} (undecodable, skipped: {len(skipped)})")
    print(f"norm_mean={mean:.7g}")
    print(f"norm_std={std:.7g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
