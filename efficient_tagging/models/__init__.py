"""Model families (one file each, `family.ModelFamily`), the release catalogue and the `get_model` factory."""
from .factory import create_model, get_model, load_weights, read_checkpoint, save_checkpoint
from .family import ModelFamily
from .registry import CATALOGUE, FAMILIES, PretrainedEntry, family_of, get_entry, get_family, known_names

__all__ = ["CATALOGUE", "FAMILIES", "ModelFamily", "PretrainedEntry", "create_model", "family_of", "get_entry",
           "get_family", "get_model", "known_names", "load_weights", "read_checkpoint", "save_checkpoint"]
