"""Model + frontend + labels: tagging waveforms and files (`AudioTagger`), ensembles, tags over
time and events (`windows`), live streams (`streaming`), HEAR embeddings (`hear`)."""
from .ensemble import TeacherEnsemble
from .hear import HearModel
from .streaming import StreamingTagger
from .tagger import AudioTagger, Tag, TaggingMixin, load_tagger
from .windows import Event, TagsOverTime, detect_events, frame_tags, tag_over_time

__all__ = ["AudioTagger", "Event", "HearModel", "StreamingTagger", "Tag", "TaggingMixin", "TagsOverTime",
           "TeacherEnsemble", "detect_events", "frame_tags", "load_tagger", "tag_over_time"]
