"""Command lines: argparse and wiring only, one module per command; each has `main(argv) -> exit code`.

audioset (ex_audioset.py), label (ex_teacher_labels.py), prepare (prepare_audioset.py), tag (inference.py),
complexity (complexity/complexity.py), fbank_stats (`python -m efficient_tagging.cli.fbank_stats`);
train_flags holds the training flags the training commands share.
"""
