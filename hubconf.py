"""torch.hub entry points of efficient_tagging: every release of the catalogue, and a tagger.

    model = torch.hub.load("path/to/checkout", "mn10_as", source="local")          # downloads the weights once
    model = torch.hub.load("path/to/checkout", "mn04_as", source="local", pretrained=False)  # architecture only
    tagger = torch.hub.load("path/to/checkout", "tagger", "dymn10_as", source="local")
    tags = tagger.tag_file("clip.wav", top_k=5)

One entry per catalogue name (`efficient_tagging.models.registry`): the name itself where it is a
Python identifier, otherwise the name with ``(N)`` written ``_N`` and other characters (``-``,
``.``, spaces) written ``_``: ``mn40_as(2)`` -> ``mn40_as_2``,
``passt-s-f128-30sec-p16-s10-ap473-swa`` -> ``passt_s_f128_30sec_p16_s10_ap473_swa``,
``ast_audioset_10_10_0.4593`` -> ``ast_audioset_10_10_0_4593``. Each returns what
``efficient_tagging.get_model(name, **kwargs)`` returns: the weights come through the package's
download cache (``pretrained/`` of a checkout, ``EFFICIENT_TAGGING_CACHE``,
``EFFICIENT_TAGGING_MIRROR``). The entries are made from the catalogue, so a release added there
is an entry here. Everything in this file that is not an entry starts with ``_`` (torch.hub lists
every public callable).
"""
from __future__ import annotations

import re as _re

dependencies = ["torch", "timm", "numpy", "av"]

import efficient_tagging as _efficient_tagging  # noqa: E402  (torch.hub reads `dependencies` first)
from efficient_tagging.models import registry as _registry  # noqa: E402


def _hub_name(catalogue_name: str) -> str:
    """The Python identifier torch.hub users type for a catalogue name."""
    name = _re.sub(r"\((\d+)\)", r"_\1", catalogue_name.strip())
    return _re.sub(r"[^0-9A-Za-z_]", "_", name)


def _build(catalogue_name: str, pretrained: bool, kwargs: dict):
    if pretrained:
        return _efficient_tagging.get_model(catalogue_name, **kwargs)
    if "weights" in kwargs:
        raise ValueError("weights= loads a release file: it needs pretrained=True")
    entry = _registry.get_entry(catalogue_name)
    config = dict(kwargs)
    if entry.arch == "ast" and "num_classes" in config:  # get_model's one spelling for every family
        config["label_dim"] = config.pop("num_classes")
    model = _efficient_tagging.get_model(arch=entry.arch, **{**entry.config, **config})
    # the release's frontend settings, so that a tagger built on this model feeds it the right spectrogram
    model.preprocessing = dict(entry.preprocessing)
    model.dataset = entry.dataset
    return model


def _make_entry(catalogue_name: str):
    entry = _registry.get_entry(catalogue_name)

    def load(pretrained: bool = True, **kwargs):
        return _build(catalogue_name, pretrained, kwargs)

    published = (f" Published AudioSet mAP {entry.published_map}."
                 if entry.published_map and entry.dataset == "audioset" else "")
    load.__name__ = load.__qualname__ = _hub_name(catalogue_name)
    load.__doc__ = (
        f"{catalogue_name.strip()}: {entry.description} ({entry.arch}, {entry.num_classes} classes, "
        f"{entry.preprocessing.get('sr', 32000)} Hz input).{published}\n\n"
        f"    pretrained (default True): load the release weights, downloaded once into the package cache\n"
        f"        from {entry.url};\n"
        f"        False builds the architecture with fresh weights (no download).\n"
        f"    kwargs: passed to efficient_tagging.get_model (e.g. num_classes=50 for a new head,\n"
        f"        cache_dir=..., weights=<local copy of the release file>).\n"
        f"    Returns the nn.Module; forward(spectrogram (B, 1, n_mels, T)) -> (logits, embedding).\n"
        f"    Its `preprocessing` attribute holds the frontend settings (efficient_tagging.build_frontend).")
    return load


def tagger(name: str = "mn10_as", pretrained: bool = True, **kwargs):
    """An AudioTagger (model + its frontend + labels) for a catalogue name or checkpoint path.

    name: a catalogue name (its hub spelling works too, e.g. "mn40_as_2") or a checkpoint path.
    pretrained (default True): load the weights (and the AudioSet label list, downloaded once);
        False builds the architecture with fresh weights and its release frontend, without labels.
    kwargs: passed to AudioTagger.from_pretrained / efficient_tagging.get_model.
    Returns an AudioTagger: tag_file(path, top_k=10), tag_waveform(waveform), probabilities(batch).
    """
    catalogue_name = _ENTRY_NAMES.get(name, name)
    if pretrained:
        return _efficient_tagging.AudioTagger.from_pretrained(catalogue_name, **kwargs)
    return _efficient_tagging.AudioTagger(_build(catalogue_name, False, kwargs))


_ENTRY_NAMES: dict = {}  # hub name -> catalogue name
for _catalogue_name in _registry.known_names():
    _name = _hub_name(_catalogue_name)
    if _name in _ENTRY_NAMES or _name in globals():
        raise RuntimeError(f"hubconf: catalogue names {_ENTRY_NAMES.get(_name)!r} and {_catalogue_name!r} "
                           f"both map to the entry {_name!r}")
    _ENTRY_NAMES[_name] = _catalogue_name
    globals()[_name] = _make_entry(_catalogue_name)
del _catalogue_name, _name
