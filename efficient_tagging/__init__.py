"""efficient_tagging: efficient large-scale audio tagging by Transformer-to-CNN knowledge distillation.

Public entry points:
    get_model(pretrained_name=None, *, arch="mn", **config)  -> nn.Module
    AugmentMelSTFT(...)                                       -> waveform to log-mel frontend
    AudioTagger.from_pretrained(name)                        -> model + frontend + labels: tags waveforms/files
    TeacherEnsemble(members)                                  -> mean of several taggers' logits
    finetune(model, train_data, eval_data, task=..., recipe=..., **settings) -> FinetuneResult
    DatasetSource(kind, ...)                                  -> ESC-50 / FSD50K / DCASE20 / OpenMIC / CSV / folder
"""
from typing import Any

from .frontends import ASTFbank, AugmentMelSTFT, build_frontend
from .labels import LabelMap, audioset_labels
from .models import CATALOGUE, create_model, get_entry, get_model, known_names, save_checkpoint
from .tagging import AudioTagger, Tag, TeacherEnsemble

__version__ = "0.1.0"

__all__ = ["ASTFbank", "AudioTagger", "AugmentMelSTFT", "CATALOGUE", "LabelMap", "Tag", "TeacherEnsemble",
           "audioset_labels", "build_frontend", "create_model", "get_entry", "get_model", "known_names",
           "save_checkpoint", "__version__", "finetune", "DatasetSource", "cross_validate"]

# The training floor (and h5py, tqdm, ...) is imported when first used, not with the package.
_LAZY = {"finetune": "efficient_tagging.train.finetune", "cross_validate": "efficient_tagging.train.finetune",
         "DatasetSource": "efficient_tagging.data.datasets.source"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'efficient_tagging' has no attribute {name!r}")
