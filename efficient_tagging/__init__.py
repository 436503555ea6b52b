"""efficient_tagging: efficient large-scale audio tagging by Transformer-to-CNN knowledge distillation.

Public entry points:
    get_model(pretrained_name=None, *, arch="mn", **config)  -> nn.Module
    AugmentMelSTFT(...)                                       -> waveform to log-mel frontend
    AudioTagger.from_pretrained(name)                        -> model + frontend + labels: tags waveforms/files
    TeacherEnsemble(members)                                  -> mean of several taggers' logits
"""
from .frontends import ASTFbank, AugmentMelSTFT, build_frontend
from .labels import LabelMap, audioset_labels
from .models import CATALOGUE, create_model, get_entry, get_model, known_names, save_checkpoint
from .tagging import AudioTagger, Tag, TeacherEnsemble

__version__ = "0.1.0"

__all__ = ["ASTFbank", "AudioTagger", "AugmentMelSTFT", "CATALOGUE", "LabelMap", "Tag", "TeacherEnsemble",
           "audioset_labels", "build_frontend", "create_model", "get_entry", "get_model", "known_names",
           "save_checkpoint", "__version__"]
