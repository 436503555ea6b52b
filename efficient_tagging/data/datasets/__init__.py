"""File-based datasets for fine-tuning, each reading its official layout as downloaded.

All produce `ClipDataset` items (the `AudioSetDataset` item dict) and attributes
(num_classes, targets, label_map, task, audio_names, teacher_coverage()).
"""
from .audio_files import (AUDIO_EXTENSIONS, ClipLengthEstimate, DatasetLayoutError, FileClipDataset, estimate_clip_length,
                   probe_duration)
from .dcase20 import (DCASE20, DCASE20_DEVICES, DCASE20_SCENES, DCASE20_UNSEEN_DEVICES, dcase20_train_eval,
                      device_from_filename)
from .esc50 import ESC50, ESC50_NUM_CLASSES, esc50_folds, esc50_train_eval, read_esc50_meta
from .own import CSVDataset, FolderDataset, infer_task, split_indices
from .source import DATASET_KINDS, DEFAULT_CLIP_LENGTH, DatasetSource, DatasetSourceError

__all__ = [
    "AUDIO_EXTENSIONS", "CSVDataset", "DATASET_KINDS", "DEFAULT_CLIP_LENGTH", "DatasetSource", "DatasetSourceError", "ClipLengthEstimate", "DCASE20", "DCASE20_DEVICES", "DCASE20_SCENES",
    "DCASE20_UNSEEN_DEVICES", "DatasetLayoutError", "ESC50", "ESC50_NUM_CLASSES", "FileClipDataset", "FolderDataset",
    "dcase20_train_eval", "device_from_filename", "esc50_folds", "esc50_train_eval", "estimate_clip_length",
    "infer_task", "probe_duration", "read_esc50_meta", "split_indices",
]
