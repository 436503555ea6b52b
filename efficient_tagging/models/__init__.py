"""Model families (one file each), the release catalogue and the `get_model` factory."""
from .factory import ARCHITECTURES, create_model, get_model, load_weights, read_checkpoint, save_checkpoint
from .registry import CATALOGUE, PretrainedEntry, get_entry, known_names

__all__ = ["ARCHITECTURES", "CATALOGUE", "PretrainedEntry", "create_model", "get_entry", "get_model",
           "known_names", "load_weights", "read_checkpoint", "save_checkpoint"]
