"""Release catalogue: pretrained names -> architecture, config, preprocessing, download source.

Every EfficientAT release name resolves here to the exact model config and the mel
frontend settings it was trained with, plus the published numbers as metadata. Names
keep EfficientAT's spelling (including its `mn40_as(2)`-style duplicates), so a user's
existing code and files keep working.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

EFFICIENTAT_RELEASE = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"

# The 32 kHz mel frontend every EfficientAT student was trained with (AugmentMelSTFT defaults).
DEFAULT_PREPROCESSING: dict[str, Any] = {"sr": 32000, "n_mels": 128, "win_length": 800, "hopsize": 320, "n_fft": 1024}


@dataclass(frozen=True)
class PretrainedEntry:
    """One downloadable checkpoint and everything needed to rebuild and feed its model."""

    name: str
    arch: str  # "mn" or "dymn" (teachers are added by the teacher catalogue)
    filename: str
    config: dict[str, Any]  # model constructor kwargs (reference argument names)
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    dataset: str = "audioset"  # "audioset" (527 AudioSet classes) or "imagenet" (1000-class ImageNet pre-training)
    published_map: Optional[float] = None  # AudioSet eval mAP, from the release file name / README
    published_params_m: Optional[float] = None  # as printed in the EfficientAT README
    published_gmacs: Optional[float] = None
    url: str = ""
    sha256: Optional[str] = None  # not published upstream; verified when set
    description: str = ""

    @property
    def num_classes(self) -> int:
        return int(self.config.get("num_classes", 527))


def _map_from_filename(filename: str) -> Optional[float]:
    match = re.search(r"mAP_(\d{3})", filename)
    return int(match.group(1)) / 1000 if match else None


CATALOGUE: dict[str, PretrainedEntry] = {}


def _add(name: str, arch: str, filename: str, config: dict[str, Any], *, preprocessing: Optional[dict] = None,
         dataset: str = "audioset", published_map: Optional[float] = None, params_m: Optional[float] = None,
         gmacs: Optional[float] = None, description: str = "") -> None:
    num_classes = 1000 if dataset == "imagenet" else 527
    prep = dict(DEFAULT_PREPROCESSING, **(preprocessing or {}))
    full_config = {"num_classes": num_classes, **config}
    if arch == "mn":
        full_config.setdefault("input_dim_f", prep["n_mels"])
    if arch == "dymn":
        # The reference runs released DyMNs at their final training temperature (1.0).
        full_config.setdefault("T_max", 1.0)
    CATALOGUE[name] = PretrainedEntry(
        name=name, arch=arch, filename=filename, config=full_config, preprocessing=prep, dataset=dataset,
        published_map=published_map if published_map is not None else _map_from_filename(filename),
        published_params_m=params_m, published_gmacs=gmacs, url=EFFICIENTAT_RELEASE + filename,
        description=description)


_WIDTHS = {"01": 0.1, "02": 0.2, "04": 0.4, "05": 0.5, "10": 1.0, "20": 2.0, "30": 3.0, "40": 4.0}

# --- MobileNetV3, ImageNet pre-training (1000-class heads; fine-tune with num_classes=...) --------
_add("mn10_im_pytorch", "mn", "mn10_im_pytorch.pt", {"width_mult": 1.0}, dataset="imagenet",
     description="torchvision's ImageNet MobileNetV3-Large weights in EfficientAT layout")
for _w in ("01", "02", "04", "05", "10", "20", "30", "40"):
    _add(f"mn{_w}_im", "mn", f"mn{_w}_im.pt", {"width_mult": _WIDTHS[_w]}, dataset="imagenet",
         description=f"width {_WIDTHS[_w]} MobileNetV3 trained on ImageNet")

# --- MobileNetV3 students distilled on AudioSet ---------------------------------------------------
#        name            file                            width  params(M) GMACs   (README table)
for _name, _file, _w, _params, _gmacs in (
        ("mn01_as", "mn01_as_mAP_298.pt", "01", None, None),
        ("mn02_as", "mn02_as_mAP_378.pt", "02", None, None),
        ("mn04_as", "mn04_as_mAP_432.pt", "04", 0.983, 0.11),
        ("mn05_as", "mn05_as_mAP_443.pt", "05", 1.43, 0.16),
        ("mn10_as", "mn10_as_mAP_471.pt", "10", 4.88, 0.54),
        ("mn20_as", "mn20_as_mAP_478.pt", "20", 17.91, 2.06),
        ("mn30_as", "mn30_as_mAP_482.pt", "30", 39.09, 4.55),
        ("mn40_as", "mn40_as_mAP_484.pt", "40", 68.43, 8.03),
        ("mn40_as(2)", "mn40_as_mAP_483.pt", "40", 68.43, 8.03),
        ("mn40_as(3)", "mn40_as_mAP_483(2).pt", "40", 68.43, 8.03),
        ("mn40_as_no_im_pre", "mn40_as_no_im_pre_mAP_483.pt", "40", 68.43, 8.03),
        ("mn40_as_no_im_pre(2)", "mn40_as_no_im_pre_mAP_483(2).pt", "40", 68.43, 8.03),
        ("mn40_as_no_im_pre(3)", "mn40_as_no_im_pre_mAP_482.pt", "40", 68.43, 8.03),
        ("mn40_as_ext", "mn40_as_ext_mAP_487.pt", "40", 68.43, 8.03),
        ("mn40_as_ext(2)", "mn40_as_ext_mAP_486.pt", "40", 68.43, 8.03),
        ("mn40_as_ext(3)", "mn40_as_ext_mAP_485.pt", "40", 68.43, 8.03),
):
    _add(_name, "mn", _file, {"width_mult": _WIDTHS[_w]}, params_m=_params, gmacs=_gmacs,
         description=f"width {_WIDTHS[_w]} MobileNetV3 distilled from a PaSST ensemble on AudioSet"
         + (" (300 epochs)" if "ext" in _name else "") + (" (no ImageNet init)" if "no_im_pre" in _name else ""))

# --- mn10 trained with other time/frequency resolutions (hop_X = X ms at 32 kHz) -------------------
for _name, _file, _prep, _gmacs in (
        ("mn10_as_hop_5", "mn10_as_hop_5_mAP_475.pt", {"hopsize": 160}, None),
        ("mn10_as_hop_15", "mn10_as_hop_15_mAP_463.pt", {"hopsize": 480}, 0.36),
        ("mn10_as_hop_20", "mn10_as_hop_20_mAP_456.pt", {"hopsize": 640}, 0.27),
        ("mn10_as_hop_25", "mn10_as_hop_25_mAP_447.pt", {"hopsize": 800}, 0.22),
        ("mn10_as_mels_40", "mn10_as_mels_40_mAP_453.pt", {"n_mels": 40}, 0.21),
        ("mn10_as_mels_64", "mn10_as_mels_64_mAP_461.pt", {"n_mels": 64}, 0.27),
        ("mn10_as_mels_256", "mn10_as_mels_256_mAP_474.pt", {"n_mels": 256}, 1.08),
):
    _add(_name, "mn", _file, {"width_mult": 1.0}, preprocessing=_prep, params_m=4.88, gmacs=_gmacs,
         description="mn10 trained with " + ", ".join(f"{k}={v}" for k, v in _prep.items()))

# --- fully convolutional head (and fewer down-sampling steps in time/frequency) -------------------
for _name, _file, _strides in (
        ("mn10_as_fc", "mn10_as_fc_mAP_465.pt", [2, 2, 2, 2]),
        ("mn10_as_fc_s2221", "mn10_as_fc_s2221_mAP_466.pt", [2, 2, 2, 1]),
        ("mn10_as_fc_s2211", "mn10_as_fc_s2211_mAP_466.pt", [2, 2, 1, 1]),
):
    _add(_name, "mn", _file, {"width_mult": 1.0, "head_type": "fully_convolutional", "strides": _strides},
         description=f"mn10 with a fully convolutional head, strides {_strides}")

# --- dynamic MobileNets ------------------------------------------------------------------------------
for _w in ("04", "10", "20"):
    _add(f"dymn{_w}_im", "dymn", f"dymn{_w}_im.pt", {"width_mult": _WIDTHS[_w]}, dataset="imagenet",
         description=f"width {_WIDTHS[_w]} dynamic MobileNet trained on ImageNet")
for _name, _file, _w, _params, _gmacs in (
        ("dymn04_as", "dymn04_as.pt", "04", 1.97, 0.12),
        ("dymn10_as", "dymn10_as.pt", "10", 10.57, 0.58),
        ("dymn20_as", "dymn20_as_mAP_493.pt", "20", 40.02, 2.2),
        ("dymn20_as(1)", "dymn20_as.pt", "20", 40.02, 2.2),
        ("dymn20_as(2)", "dymn20_as_mAP_489.pt", "20", 40.02, 2.2),
        ("dymn20_as(3)", "dymn20_as_mAP_490.pt", "20", 40.02, 2.2),
):
    _add(_name, "dymn", _file, {"width_mult": _WIDTHS[_w]}, params_m=_params, gmacs=_gmacs,
         description=f"width {_WIDTHS[_w]} dynamic MobileNet distilled on AudioSet")
for _w in ("04", "10"):
    _add(f"dymn{_w}_replace_se_as", "dymn", f"dymn{_w}_replace_se_as.pt",
         {"width_mult": _WIDTHS[_w], "use_dy_blocks": "replace_se"},
         description=f"width {_WIDTHS[_w]} DyMN with dynamic blocks only where MobileNetV3 has SE")


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
