"""`inference.py`: tag an audio file with a pretrained or local model (or an ensemble) and print the top-k labels."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence


from ..tagging.ensemble import TeacherEnsemble
from ..train.distributed import select_device
from ..tagging.tagger import load_tagger
from .help import HelpFormatter


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (bad values exit with code 2 and a usage message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (the number of labels to print), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Tag an audio file with a pretrained or local model and print the top-k AudioSet labels.",
        formatter_class=HelpFormatter)
    parser.add_argument("--audio_path", required=True, help="audio file in any format FFmpeg/PyAV decodes")
    parser.add_argument("--model_name", default="mn10_as",
                        help="catalogue name (see `python complexity/complexity.py --table`); with --model_path "
                             "it gives the architecture/frontend of a plain official state_dict")
    parser.add_argument("--model_path", default=None,
                        help="local checkpoint: this project's checkpoint, or a plain official state_dict "
                             "(then --model_name says which architecture it is)")
    parser.add_argument("--ensemble", nargs="+", default=None, metavar="NAME",
                        help="tag with the mean logits of several catalogue models (e.g. PaSST teachers and "
                             "students; each with its own frontend); replaces --model_name/--model_path")
    parser.add_argument("--top_k", type=positive_int, default=10, help="number of labels to print (at least 1)")
    parser.add_argument("--labels_path", default=None,
                        help="AudioSet class_labels_indices.csv (default: cache, downloaded if missing)")
    parser.add_argument("--cache_dir", default=None, help="download cache (default: $EFFICIENT_TAGGING_CACHE, "
                                                          "the repo's pretrained/ or ~/.cache/efficient_tagging)")
    parser.add_argument("--cuda", action="store_true", help="run on the GPU; an error if there is none")
    parser.add_argument("--json", action="store_true", help="print the tags as JSON")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # library warnings (e.g. a truncated file: decoded vs stated duration) go to stderr
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        if args.ensemble:
            tagger = TeacherEnsemble.from_names(args.ensemble, cache_dir=args.cache_dir, labels_path=args.labels_path)
        else:
            tagger = load_tagger(args.model_name, args.model_path, labels_path=args.labels_path,
                                 cache_dir=args.cache_dir)
        tagger = tagger.to(select_device(args.cuda))  # --cuda without a GPU: an error, not a silent CPU run
        tags = tagger.tag_file(args.audio_path, top_k=args.top_k)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{"label": t.label, "index": t.index, "probability": t.probability} for t in tags], indent=1))
    else:
        print("************* Acoustic Event Detected: *****************")
        for tag in tags:
            print(f"{tag.label}: {tag.probability:.3f}")
        print("********************************************************")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
