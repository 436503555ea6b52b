"""Release catalogue: pretrained names -> architecture, config, preprocessing, download source.

Every EfficientAT release name resolves here to the exact model config and the mel
frontend settings it was trained with, plus the published numbers as metadata. Names
keep EfficientAT's spelling (including its `mn40_as(2)`-style duplicates), so a user's
existing code and files keep working.

The transformer teachers are catalogued too: every PaSST release (kkoutini/PaSST names,
quirks such as dashes and trailing spaces kept) and the official AST AudioSet checkpoints
(`ast_audioset_10_10_0.4593`, ...), each with its own frontend in `preprocessing["frontend"]`
("passt_mel" / "ast_fbank"; EfficientAT students use "mel", the default).
`ARCHITECTURE_PRESETS` names weight-less teacher shapes (`ast_base384`, `passt_s`, ...).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from ..frontends import DEFAULT_PREPROCESSING

EFFICIENTAT_RELEASE = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"



@dataclass(frozen=True)
class PretrainedEntry:
    """One downloadable checkpoint and everything needed to rebuild and feed its model."""

    name: str
    arch: str  # "mn", "dymn", or the teachers "passt" / "ast"
    filename: str
    config: dict[str, Any]  # model constructor kwargs (reference argument names)
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    dataset: str = "audioset"  # "audioset" (527 AudioSet classes), "imagenet" (1000-class ImageNet pre-training)
    #                           or "openmic" (20 OpenMIC-2018 instruments, PaSST only)
    published_map: Optional[float] = None  # AudioSet eval mAP, from the release file name / README
    published_params_m: Optional[float] = None  # as printed in the EfficientAT README
    published_gmacs: Optional[float] = None
    url: str = ""
    sha256: Optional[str] = None  # not published upstream; verified when set
    description: str = ""

    @property
    def num_classes(self) -> int:
        return int(self.config.get("num_classes", self.config.get("label_dim", 527)))


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
# (the files of DyMN-S/M name no mAP: theirs are EfficientAT's README table's, 45.0 and 47.7)
for _name, _file, _w, _params, _gmacs, _map in (
        ("dymn04_as", "dymn04_as.pt", "04", 1.97, 0.12, 0.450),
        ("dymn10_as", "dymn10_as.pt", "10", 10.57, 0.58, 0.477),
        ("dymn20_as", "dymn20_as_mAP_493.pt", "20", 40.02, 2.2, None),
        ("dymn20_as(1)", "dymn20_as.pt", "20", 40.02, 2.2, None),
        ("dymn20_as(2)", "dymn20_as_mAP_489.pt", "20", 40.02, 2.2, None),
        ("dymn20_as(3)", "dymn20_as_mAP_490.pt", "20", 40.02, 2.2, None),
):
    _add(_name, "dymn", _file, {"width_mult": _WIDTHS[_w]}, params_m=_params, gmacs=_gmacs, published_map=_map,
         description=f"width {_WIDTHS[_w]} dynamic MobileNet distilled on AudioSet")
for _w in ("04", "10"):
    _add(f"dymn{_w}_replace_se_as", "dymn", f"dymn{_w}_replace_se_as.pt",
         {"width_mult": _WIDTHS[_w], "use_dy_blocks": "replace_se"},
         description=f"width {_WIDTHS[_w]} DyMN with dynamic blocks only where MobileNetV3 has SE")


# --- transformer teachers: PaSST (kkoutini/PaSST releases) --------------------------------------------
PASST_RELEASE = "https://github.com/kkoutini/PaSST/releases/download/"
# PaSST's own mel frontend (its AugmentMelSTFT defaults): like EfficientAT's but without filterbank
# jitter ranges of 10 / 2000 -> fmin_aug_range=1, fmax_aug_range=1000 (so fmax = 16000 - 500 = 15500 Hz).
PASST_PREPROCESSING: dict[str, Any] = {"frontend": "passt_mel", "sr": 32000, "n_mels": 128, "win_length": 800,
                                       "hopsize": 320, "n_fft": 1024, "fmin_aug_range": 1, "fmax_aug_range": 1000}

#   name (release spelling, quirks kept)          release tag / file                                          input_tdim classes
_PASST_RELEASES: tuple[tuple[str, str, int, int], ...] = (
    ("passt_s_swa_p16_128_ap476", "v0.0.1-audioset/passt-s-f128-p16-s10-ap.476-swa.pt", 998, 527),
    ("passt_s_kd_p16_128_ap486", "v.0.0.9/passt-s-kd-ap.486.pt", 998, 527),
    ("passt_l_kd_p16_128_ap47", "v.0.0.10/passt-l-kd-ap.47.pt", 998, 527),
    ("passt_s_swa_p16_128_ap4761", "v0.0.2-audioset/passt-s-f128-p16-s10-ap.4761-swa.pt", 998, 527),
    ("passt_s_p16_128_ap472", "v0.0.2-audioset/passt-s-f128-p16-s10-ap.472.pt", 998, 527),
    ("passt_s_p16_s16_128_ap468", "v0.0.2-audioset/passt-s-f128-p16-s16-ap.468.pt", 998, 527),
    ("passt_s_swa_p16_s16_128_ap473", "v0.0.2-audioset/passt-s-f128-p16-s16-ap.473-swa.pt", 998, 527),
    ("passt_s_swa_p16_s14_128_ap471", "v0.0.2-audioset/passt-s-f128-p16-s14-ap.471-swa.pt", 998, 527),
    ("passt_s_p16_s14_128_ap469", "v0.0.2-audioset/passt-s-f128-p16-s14-ap.469.pt", 998, 527),
    ("passt_s_swa_p16_s12_128_ap473", "v0.0.2-audioset/passt-s-f128-p16-s12-ap.473-swa.pt", 998, 527),
    ("passt_s_p16_s12_128_ap470", "v0.0.2-audioset/passt-s-f128-p16-s12-ap.470.pt", 998, 527),
    ("passt_s_swa_f128_stfthop100_p16_s10_ap473",
     "v0.0.3-audioset/passt-s-f128-stfthop100-p16-s10-ap.473-swa.pt", 3200, 527),
    ("passt_s_swa_f128_stfthop160_p16_s10_ap473",
     "v0.0.3-audioset/passt-s-f128-stfthop160-p16-s10-ap.473-swa.pt", 2000, 527),
    ("passt-s-f128-20sec-p16-s10-ap474-swa", "v0.0.5/passt-s-f128-20sec-p16-s10-ap.474-swa.pt", 2000, 527),
    ("passt-s-f128-30sec-p16-s10-ap473-swa", "v0.0.5/passt-s-f128-30sec-p16-s10-ap.473-swa.pt", 3000, 527),
    ("openmic2008_passt_u_f128_p16_s10_ap85_swa",
     "v0.0.4-openmic/openmic2008.passt-u-f128-p16-s10-ap.85-swa.pt", 3200, 20),
    ("openmic2008_passt_u_f128_p16_s10_ap85  ", "v0.0.4-openmic/openmic2008.passt-u-f128-p16-s10-ap.85.pt", 2000, 20),
)


def passt_config(name: str, input_tdim: int = 998, num_classes: int = 527) -> dict[str, Any]:
    """`PaSST(**config)` kwargs of a release, as PaSST's `get_model(arch=name, ...)` builds it.

    Distilled ViT-B/16 body (768 wide, 12 heads, 12 blocks; 7 for PaSST-L `passt_l_*`),
    stride from the name (`_s12_` -> 12, default 10), `img_size = (128, input_tdim)`.
    """
    key = name.strip().replace("-", "_")
    match = re.search(r"_s(\d\d)(?:_|$)", key)
    stride = int(match.group(1)) if match else 10
    depth = 7 if key.startswith("passt_l_") else 12
    return {"img_size": (128, int(input_tdim)), "patch_size": 16, "stride": (stride, stride), "in_chans": 1,
            "num_classes": int(num_classes), "embed_dim": 768, "depth": depth, "num_heads": 12, "distilled": True}


def _map_from_passt_name(name: str) -> Optional[float]:
    match = re.search(r"ap\.?(\d+)", name)
    return float("0." + match.group(1)) if match else None


for _name, _path, _tdim, _classes in _PASST_RELEASES:
    _key = _name.strip().replace("-", "_")
    _prep = dict(PASST_PREPROCESSING)
    _hop = re.search(r"stfthop(\d+)", _key)
    if _hop:
        _prep["hopsize"] = int(_hop.group(1))  # 100 / 160 samples at 32 kHz: 3200 / 2000 frames per 10 s
    _dataset = "openmic" if _key.startswith("openmic") else "audioset"
    _what = ("PaSST-L (7 blocks)" if _key.startswith("passt_l_") else "PaSST-S") + f", stride {passt_config(_name)['stride'][0]}"
    CATALOGUE[_name] = PretrainedEntry(
        name=_name, arch="passt", filename=_path.split("/")[-1], config=passt_config(_name, _tdim, _classes),
        preprocessing=_prep, dataset=_dataset, published_map=_map_from_passt_name(_name),
        url=PASST_RELEASE + _path,
        description=f"{_what}, trained input 128x{_tdim} frames (hop {_prep['hopsize']})"
        + (" on OpenMIC-2018 (20 instruments; published value is OpenMIC mAP). Hop 320 as in the "
           "reference's HEAR wrapper for OpenMIC, which pairs this kind of model (more time positions than "
           "a 10 s clip needs) with the standard 10 ms mel: a 10 s clip uses the first 99 time positions"
           if _dataset == "openmic" else " on AudioSet") + " -- transformer teacher")

# --- transformer teachers: AST (YuanGongND/ast, official AudioSet checkpoints) ----------------------
# Fbank settings of the AST AudioSet recipe (ASTFbank defaults: 16 kHz Kaldi fbank, 10 ms shift).
AST_PREPROCESSING: dict[str, Any] = {"frontend": "ast_fbank", "sr": 16000, "n_mels": 128, "target_length": 1024,
                                     "norm_mean": -4.2677393, "norm_std": 4.5689974}


def ast_config(fstride: int = 10, tstride: int = 10, label_dim: int = 527, input_tdim: int = 1024,
               model_size: str = "base384") -> dict[str, Any]:
    """`ASTModel(**config)` kwargs that rebuild an official checkpoint without downloading anything."""
    return {"label_dim": label_dim, "fstride": fstride, "tstride": tstride, "input_fdim": 128,
            "input_tdim": input_tdim, "imagenet_pretrain": False, "audioset_pretrain": False,
            "model_size": model_size, "verbose": False}


#   checkpoint                 dropbox id (README / download_models.sh)   stride
for _ckpt, _id, _stride in (
        ("audioset_10_10_0.4593", "ca0b1v2nlxzyeb4", 10),
        ("audioset_10_10_0.4495", "1tv0hovue1bxupk", 10),
        ("audioset_10_10_0.4483", "6u5sikl4b9wo4u5", 10),
        ("audioset_10_10_0.4475", "kt6i0v9fvfm1mbq", 10),
        ("audioset_12_12_0.4467", "snfhx3tizr4nuc8", 12),
        ("audioset_14_14_0.4431", "z18s6pemtnxm4k7", 14),
        ("audioset_16_16_0.4422", "mdsa4t1xmcimia6", 16),
):
    CATALOGUE[f"ast_{_ckpt}"] = PretrainedEntry(
        name=f"ast_{_ckpt}", arch="ast", filename=f"{_ckpt}.pth", config=ast_config(_stride, _stride),
        preprocessing=dict(AST_PREPROCESSING), dataset="audioset", published_map=float(_ckpt.rsplit("_", 1)[1]),
        url=f"https://www.dropbox.com/s/{_id}/{_ckpt}.pth?dl=1",
        description=f"AST base384, stride {_stride}x{_stride}, AudioSet (official checkpoint) -- transformer teacher")

# --- architecture presets: no released weights, for complexity / fresh training only --------------
# name -> (arch, config, preprocessing)
ARCHITECTURE_PRESETS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "passt_s": ("passt", passt_config("passt_s_p16_128"), dict(PASST_PREPROCESSING)),
    "passt_l": ("passt", passt_config("passt_l_p16_128"), dict(PASST_PREPROCESSING)),
    "ast_base384": ("ast", ast_config(), dict(AST_PREPROCESSING)),
    "ast_base224": ("ast", ast_config(model_size="base224"), dict(AST_PREPROCESSING)),
    "ast_small224": ("ast", ast_config(model_size="small224"), dict(AST_PREPROCESSING)),
    "ast_tiny224": ("ast", ast_config(model_size="tiny224"), dict(AST_PREPROCESSING)),
}


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
