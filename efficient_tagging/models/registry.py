"""The table of model families and the release catalogue they hold.

Each family module (`mobilenet`, `dymn`, `passt`, `ast`) owns its catalogue rows and its rules
(`family.ModelFamily`); this module only collects them. Names keep the releases' spelling
(EfficientAT's `mn40_as(2)`-style duplicates, PaSST's dashes and trailing spaces), so a
user's existing code and files keep working. EfficientAT students use the "mel" frontend
(the default); the teachers name theirs in `preprocessing["frontend"]` ("passt_mel" /
"ast_fbank"). `ARCHITECTURE_PRESETS` names weight-less teacher shapes (`ast_base384`,
`passt_s`, ...).
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from .ast import AST_PREPROCESSING, ast_config
from .ast import FAMILY as AST_FAMILY
from .dymn import FAMILY as DYMN_FAMILY
from .family import ModelFamily, PretrainedEntry
from .mobilenet import EFFICIENTAT_RELEASE
from .mobilenet import FAMILY as MN_FAMILY
from .passt import FAMILY as PASST_FAMILY
from .passt import PASST_PREPROCESSING, PASST_RELEASE, passt_config

__all__ = ["AST_PREPROCESSING", "ARCHITECTURE_PRESETS", "CATALOGUE", "EFFICIENTAT_RELEASE", "FAMILIES",
           "PASST_PREPROCESSING", "PASST_RELEASE", "PretrainedEntry", "ast_config", "family_of", "get_entry",
           "get_family", "is_teacher", "known_names", "passt_config"]

#: architecture name -> family, in catalogue order
FAMILIES: dict[str, ModelFamily] = {family.name: family
                                    for family in (MN_FAMILY, DYMN_FAMILY, PASST_FAMILY, AST_FAMILY)}

CATALOGUE: dict[str, PretrainedEntry] = {entry.name: entry for family in FAMILIES.values()
                                         for entry in family.catalogue()}

#: name -> (arch, config, preprocessing): shapes without released weights (complexity, fresh training)
ARCHITECTURE_PRESETS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    name: (family.name, config, preprocessing)
    for family in FAMILIES.values() for name, (config, preprocessing) in family.presets().items()}


def get_family(arch: str) -> ModelFamily:
    """The family named `arch`; an unknown name raises a ValueError listing the known ones."""
    try:
        return FAMILIES[arch]
    except (KeyError, TypeError):
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(FAMILIES))}") from None


def family_of(model: nn.Module) -> Optional[ModelFamily]:
    """The family of a model (by its `arch`, set by `create_model`, else by its class); None for a
    model of no family here (e.g. a user's own module)."""
    arch = getattr(model, "arch", None)
    if isinstance(arch, str) and arch in FAMILIES:
        return FAMILIES[arch]
    for family in FAMILIES.values():
        if isinstance(model, family.model_class):
            return family
    return None


def is_teacher(model: nn.Module) -> bool:
    """A transformer teacher (fixed input length; long inputs tagged as the mean over windows)."""
    family = family_of(model)
    return family is not None and family.is_teacher


def known_names(arch: Optional[str] = None) -> list[str]:
    """All catalogue names (optionally of one architecture family), in catalogue order."""
    return [name for name, entry in CATALOGUE.items() if arch is None or entry.arch == arch]


def get_entry(name: str) -> PretrainedEntry:
    """Look up a release name; an unknown name raises a KeyError listing the known ones."""
    try:
        return CATALOGUE[name]
    except KeyError:
        stripped = name.strip()
        for candidate in CATALOGUE:
            if candidate.strip() == stripped:
                return CATALOGUE[candidate]
        raise KeyError(f"unknown pretrained model {name!r}. Known names: {', '.join(known_names())}") from None
