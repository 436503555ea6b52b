"""Model + frontend + labels: tagging waveforms and files (`AudioTagger`), ensembles of taggers."""
from .ensemble import TeacherEnsemble
from .tagger import AudioTagger, Tag, TaggingMixin, load_tagger

__all__ = ["AudioTagger", "Tag", "TaggingMixin", "TeacherEnsemble", "load_tagger"]
