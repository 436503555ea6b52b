"""efficient_tagging: efficient large-scale audio tagging by Transformer-to-CNN knowledge distillation.

Public entry points:
    get_model(pretrained_name=None, *, arch="mn", **config)  -> nn.Module
    AugmentMelSTFT(...)                                       -> waveform to log-mel frontend
"""
from .frontend import AugmentMelSTFT
from .labels import LabelMap, audioset_labels
from .models import CATALOGUE, create_model, get_entry, get_model, known_names, save_checkpoint

__version__ = "0.1.0"

__all__ = ["AugmentMelSTFT", "CATALOGUE", "LabelMap", "audioset_labels", "create_model", "get_entry", "get_model",
           "known_names", "save_checkpoint", "__version__"]
