"""Datasets and data utilities: AudioSet-format HDF5, file datasets (ESC-50, DCASE2020, CSV, folders),
teacher logits, waveform cache, sampling, augmentation.

`efficient_tagging.data.prepare` (the HDF5 packer) and the FSD50K / OpenMIC rooms of `data.datasets`
(readers with their release converters) are not imported here.
"""
from .augment import WavmixResult, gain_augment, mix, mixstyle, mixup, roll_waveforms, wavmix
from .clip_dataset import ClipDataset
from .datasets import DCASE20, ESC50, CSVDataset, DatasetSource, FileClipDataset, FolderDataset
from .hdf5 import (AudioSetDataset, AudioSetHDF5Writer, pack_targets, read_audio_names, read_label_map,
                   unpack_targets)
from .sampling import DistributedWeightedSampler, class_balanced_weights
from .teacher_logits import TeacherLogits, TeacherLogitsWriter
from .waveform_cache import CachedWaveforms, WaveformCache

__all__ = [
    "AudioSetDataset", "AudioSetHDF5Writer", "CSVDataset", "CachedWaveforms", "ClipDataset", "DCASE20", "DatasetSource", "ESC50", "FileClipDataset",
    "FolderDataset", "DistributedWeightedSampler", "TeacherLogits", "TeacherLogitsWriter", "WaveformCache",
    "WavmixResult", "class_balanced_weights", "gain_augment", "mix", "mixstyle", "mixup", "pack_targets", "read_audio_names",
    "read_label_map", "roll_waveforms", "unpack_targets", "wavmix",
]
