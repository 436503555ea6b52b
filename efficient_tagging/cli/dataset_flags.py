"""Command-line flags that say which dataset to read, shared by fine-tuning, labelling and evaluation.

The flags are EfficientAT's (`--dataset_dir`, `--fold`, `--variable_eval_length`) plus the own-data
ones (`--train_csv/--eval_csv/--audio_root`, `--audio_dir/--eval_fraction`, `--task`);
`source_from_args` turns them into a `DatasetSource`. A recipe command shows only its dataset's
flags (`kind="esc50"` ...); `kind="any"` adds `--dataset KIND` and all of them.
"""
from __future__ import annotations

import argparse
from typing import Optional, Union

from ..data.datasets.source import DATASET_KINDS, DatasetSource, DatasetSourceError
from ..models.factory import AUDIOSET_CLIP_SECONDS

LAYOUTS = {
    "esc50": "meta/esc50.csv + audio/*.wav (44.1 kHz; or a pre-resampled audio_32k/), as unzipped from "
             "github.com/karolpiczak/ESC-50",
    "fsd50k": "PaSST's FSD50K.{train,val,eval}_mp3.hdf (the raw Zenodo release is converted by "
              "prepare_audioset.py --fsd50k_dir RAW --output_dir DIR)",
    "dcase20": "TAU Urban Acoustic Scenes 2020 Mobile, development: audio/, meta.csv (tab-separated), "
               "evaluation_setup/fold1_train.csv and fold1_evaluate.csv",
    "openmic": "PaSST's openmic_{train,test}.csv_mp3.hdf (the release openmic-2018-v1.0.0 is converted by "
               "prepare_audioset.py --openmic_dir RAW --output_dir DIR)",
}
OWN_KINDS = ("csv", "folder")


def add_dataset_arguments(parser: argparse.ArgumentParser, kind: str = "any") -> None:
    """The flags of dataset `kind` ("esc50", "fsd50k", "dcase20", "openmic", "own" = csv or folder, "any")."""
    group = parser.add_argument_group("dataset")
    if kind == "any":
        group.add_argument("--dataset", choices=[k for k in DATASET_KINDS if k != "hdf5"], default=None,
                           help="which layout --dataset_dir (or the csv/folder flags) holds; without it, the "
                                "AudioSet-format --hdf5 files")
    if kind in ("any", *LAYOUTS):
        layout = LAYOUTS.get(kind, "the dataset's official layout")
        group.add_argument("--dataset_dir", default=None, metavar="DIR",
                           help=f"root of the dataset as downloaded: {layout}")
    if kind in ("any", "esc50"):
        group.add_argument("--fold", type=int, default=1, choices=range(1, 6), metavar="{1..5}",
                           help="ESC-50: the fold held out for evaluation; the other four are trained on (default: 1)")
    if kind in ("any", "fsd50k", "openmic"):
        group.add_argument("--variable_eval_length", action="store_true", default=False,
                           help="evaluate every clip at its own length, one clip per forward pass (EfficientAT's "
                                "FSD50K flag; default: cut/padded to --clip_length)")
    if kind in ("any", "own"):
        group.add_argument("--train_csv", default=None, metavar="CSV",
                           help="own data: a CSV with columns filename,labels (several labels separated by ';')")
        group.add_argument("--eval_csv", default=None, metavar="CSV",
                           help="own data: the evaluation CSV, same columns, the training CSV's classes")
        group.add_argument("--audio_root", default=None, metavar="DIR",
                           help="own data: folder the CSV file names are relative to (default: the CSV's folder)")
        group.add_argument("--audio_dir", default=None, metavar="DIR",
                           help="own data instead of CSVs: one sub-folder per class (ImageFolder convention), or "
                                "train/<class>/ + eval/<class>/ sub-trees")
        group.add_argument("--eval_fraction", type=float, default=0.2,
                           help="--audio_dir without train/ + eval/: the share of each class held out for "
                                "evaluation, drawn with --split_seed (default: 0.2)")
        group.add_argument("--split_seed", type=int, default=0,
                           help="seed of the --eval_fraction split and of random crops of long clips (default: 0)")
        group.add_argument("--task", choices=["multiclass", "multilabel"], default=None,
                           help="own data: one label per clip (cross-entropy, accuracy) or any number (BCE, mAP); "
                                "default: inferred from the labels (multilabel as soon as a row has 0 or 2+), "
                                "and printed")


def own_kind(args: argparse.Namespace) -> Optional[str]:
    """"csv" or "folder" from which own-data flags are set (None: neither)."""
    if getattr(args, "train_csv", None) and getattr(args, "audio_dir", None):
        raise DatasetSourceError("give either --train_csv (CSV lists) or --audio_dir (class folders), not both")
    if getattr(args, "train_csv", None):
        return "csv"
    if getattr(args, "audio_dir", None):
        return "folder"
    return None


def source_from_args(args: argparse.Namespace, kind: str) -> DatasetSource:
    """The DatasetSource the flags describe; `kind` as given to `add_dataset_arguments`.

    A missing flag is a DatasetSourceError naming it.
    """
    if kind == "any":
        kind = getattr(args, "dataset", None) or own_kind(args) or "hdf5"
    elif kind == "own":
        kind = own_kind(args) or ""
        if not kind:
            raise DatasetSourceError("own data needs --train_csv CSV (with --eval_csv, --audio_root) or "
                                     "--audio_dir DIR (one sub-folder per class)")
    values = {name: getattr(args, name) for name in ("dataset_dir", "fold", "train_csv", "eval_csv", "audio_root",
                                                     "audio_dir", "eval_fraction", "task", "variable_eval_length")
              if getattr(args, name, None) is not None}
    if getattr(args, "split_seed", None) is not None:
        values["seed"] = args.split_seed
    if kind == "hdf5":
        values["train_hdf5"] = list(getattr(args, "hdf5", None) or getattr(args, "train_hdf5", None) or [])
        values["eval_hdf5"] = list(getattr(args, "eval_hdf5", None) or [])
    return DatasetSource(kind=kind, **values)


def clip_length_with_source(flag: Optional[float], stored: Union[float, str, None],
                            holder: str = "the checkpoint") -> tuple[float, str]:
    """Seconds per clip for evaluating / labelling with a trained model, and where the number came
    from (printed): `--clip_length`, else the clip length stored with the model (what it was
    trained and evaluated on), else the AudioSet recipe's 10 s."""
    if flag is not None:
        differs = stored is not None and float(stored) != float(flag)
        return float(flag), "--clip_length" + (f"; {holder} says {float(stored):g} s" if differs else "")
    if stored is not None:
        return float(stored), f"stored in {holder}; --clip_length overrides"
    return AUDIOSET_CLIP_SECONDS, f"the AudioSet default: {holder} stores none; --clip_length overrides"
