"""EfficientAT's MobileNetV3 audio tagger ("mn" models), checkpoint-compatible.

Architecture (MobileNetV3-Large adapted to 1-channel log-mel spectrograms, B x 1 x F x T):

* ``features.0``: 3x3 stride-2 stem conv -> BN -> Hardswish.
* ``features.1`` ... ``features.15``: inverted-residual blocks (``MOBILENETV3_BLOCKS``):
  optional 1x1 expansion -> depthwise kxk conv -> optional squeeze-excitation -> 1x1
  linear projection, with a residual connection when shape is preserved. Four blocks
  down-sample with the configurable ``strides``; ``dilated`` turns the last three blocks
  into stride-1, dilation-2 blocks; ``reduced_tail`` halves the tail width.
* ``features.16``: 1x1 conv to ``6 * C`` channels -> BN -> Hardswish.
* ``classifier``: one of three heads, ``'mlp'`` (pool -> Linear -> Hardswish -> Dropout ->
  Linear), ``'fully_convolutional'`` (1x1 conv -> BN -> pool) or
  ``'multihead_attention_pooling'`` (PSLA-style attention pooling over time).

``forward`` returns ``(logits, embedding)`` where ``embedding`` is the globally averaged
``features`` output (``6 * C`` values, e.g. 960 for mn10), as in EfficientAT.

Module names, parameter shapes and the state_dict key order match EfficientAT's
``models/mn/model.py`` so released checkpoints load with ``strict=True``; body
BatchNorms use eps=1e-3 / momentum=0.01 (the fully-convolutional head's BN keeps
PyTorch's defaults, like the reference).

Deliberate differences from the reference (none affects the released checkpoints):

* Logits are always ``(B, num_classes)``; the reference squeezes them to ``(B,)`` when
  ``num_classes == 1``.
* Frequency squeeze-excitation (``'f'`` in ``se_dims``), which crashes in the reference,
  works (see :class:`SqueezeExcitation`).
* Time squeeze-excitation accepts inputs whose length differs from ``input_dim_t``
  (the pooled profile is resampled to the trained size and the scale back; identical to
  the reference at the trained length), and the frequency / time sizes of the SE layers
  are computed with the strides actually used, so ``dilated=True`` works with ``'t'``/``'f'``
  (the reference sizes them as if the dilated block still had stride 2).
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..frontends import DEFAULT_PREPROCESSING
from .family import ModelFamily, PretrainedEntry, catalogue_entry
from .layers import (
    LAST_CHANNEL,
    MOBILENETV3_BLOCKS,
    STEM_CHANNELS,
    ConvNormActivation,
    check_spectrogram_input,
    conv_output_size,
    init_mobilenet_weights,
    make_divisible,
    mlp_head_per_frame,
    mlp_head,
)

__all__ = [
    "HEAD_TYPES",
    "SE_AGGREGATIONS",
    "ConcurrentSqueezeExcitation",
    "InvertedResidual",
    "MobileNet",
    "MultiHeadAttentionPooling",
    "SqueezeExcitation",
]

HEAD_TYPES: tuple[str, ...] = ("mlp", "fully_convolutional", "multihead_attention_pooling")
SE_AGGREGATIONS: tuple[str, ...] = ("max", "avg", "add", "min")
# se_dims letter -> tensor axis of a (B, C, F, T) feature map
_SE_AXES = {"c": 1, "f": 2, "t": 3}


def _resample_profile(profile: Tensor, size: int) -> Tensor:
    """Resample the last axis of a (B, L) profile to ``size`` values.

    Shrinking averages the frames each output bin covers (a pooled profile is a mean, so
    area averaging keeps that meaning and avoids skipping frames); stretching
    interpolates linearly.
    """
    length = profile.shape[-1]
    if length == size:
        return profile
    if length > size:
        return F.adaptive_avg_pool1d(profile.unsqueeze(1), size).squeeze(1)
    return F.interpolate(profile.unsqueeze(1), size=size, mode="linear", align_corners=False).squeeze(1)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation along one axis of a (B, C, F, T) tensor.

    The tensor is averaged over the two other non-batch axes, giving a (B, L) profile;
    ``fc1`` -> ReLU -> ``fc2`` -> sigmoid turns it into a per-position scale that multiplies
    the input (broadcast along the averaged axes).

    The Linear layers are sized for ``input_dim`` positions (the size at the trained
    input length). Along frequency or time a different actual size L is handled by
    resampling the profile to ``input_dim`` before the MLP and the resulting scale back to
    L (area averaging when shrinking, linear interpolation when stretching). At L ==
    ``input_dim`` no resampling happens, so the result equals EfficientAT's exactly.
    """

    def __init__(self, input_dim: int, squeeze_dim: int, axis: int) -> None:
        super().__init__()
        if axis not in (1, 2, 3):
            raise ValueError(f"SqueezeExcitation: axis must be 1 (channel), 2 (frequency) or 3 (time), got {axis}")
        self.fc1 = nn.Linear(input_dim, squeeze_dim)
        self.fc2 = nn.Linear(squeeze_dim, input_dim)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Sigmoid()
        self.input_dim = input_dim
        self.axis = axis

    def scale(self, x: Tensor) -> Tensor:
        """The multiplicative scale, shaped to broadcast against ``x``."""
        reduce_axes = [a for a in (1, 2, 3) if a != self.axis]
        profile = x.mean(dim=reduce_axes)  # (B, L)
        length = profile.shape[-1]
        if self.axis == 1 and length != self.input_dim:
            # channel counts are fixed by the weights; a mismatch is a wiring error
            raise ValueError(f"SqueezeExcitation: expected {self.input_dim} channels, got shape {tuple(x.shape)}")
        profile = _resample_profile(profile, self.input_dim)
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(profile))))
        scale = _resample_profile(scale, length)
        shape = [x.shape[0], 1, 1, 1]
        shape[self.axis] = length
        return scale.view(shape)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale(x)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


class ConcurrentSqueezeExcitation(nn.Module):
    """Several SE layers applied to the same input, merged element-wise with ``se_agg``.

    One layer per letter of ``se_dims`` (``c`` channel, ``f`` frequency, ``t`` time), in
    that order (``conc_se_layers.k``); each squeeze size is
    ``make_divisible(size // se_r, 8)``.
    """

    def __init__(self, channels: int, freq_size: int, time_size: int, se_dims: str,
                 se_agg: str = "max", se_r: int = 4) -> None:
        super().__init__()
        if se_agg not in SE_AGGREGATIONS:
            raise ValueError(f"se_agg must be one of {SE_AGGREGATIONS}, got {se_agg!r}")
        sizes = {1: channels, 2: freq_size, 3: time_size}
        self.conc_se_layers = nn.ModuleList()
        for letter in se_dims:
            axis = _SE_AXES[letter]
            size = sizes[axis]
            self.conc_se_layers.append(SqueezeExcitation(size, make_divisible(size // se_r, 8), axis))
        self.se_agg = se_agg

    def forward(self, x: Tensor) -> Tensor:
        outs = [layer(x) for layer in self.conc_se_layers]
        if len(outs) == 1:
            # max/min/mean/sum of a single tensor is the tensor itself
            return outs[0]
        stacked = torch.stack(outs, dim=0)
        if self.se_agg == "max":
            return stacked.amax(dim=0)
        if self.se_agg == "min":
            return stacked.amin(dim=0)
        if self.se_agg == "avg":
            return stacked.mean(dim=0)
        return stacked.sum(dim=0)

    def extra_repr(self) -> str:
        return f"se_agg={self.se_agg!r}"


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: [1x1 expand] -> depthwise kxk -> [SE] -> 1x1 project (+ input).

    ``freq_size`` / ``time_size`` are the block's output sizes at the trained input size;
    they only size frequency / time SE layers.
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int,
        expanded_channels: int,
        out_channels: int,
        use_se: bool,
        activation: str,
        stride: int,
        dilation: int,
        freq_size: int,
        time_size: int,
        se_dims: Optional[str],
        se_agg: str = "max",
        se_r: int = 4,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        act_layer = nn.Hardswish if activation == "HS" else nn.ReLU
        self.use_res_connect = stride == 1 and in_channels == out_channels

        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(ConvNormActivation(in_channels, expanded_channels, kernel_size=1, activation=act_layer))
        # a dilated block keeps its resolution: dilation replaces the stride
        depthwise_stride = 1 if dilation > 1 else stride
        layers.append(ConvNormActivation(expanded_channels, expanded_channels, kernel_size=kernel_size,
                                         stride=depthwise_stride, groups=expanded_channels, dilation=dilation,
                                         activation=act_layer))
        if use_se and se_dims:
            layers.append(ConcurrentSqueezeExcitation(expanded_channels, freq_size, time_size, se_dims, se_agg, se_r))
        layers.append(ConvNormActivation(expanded_channels, out_channels, kernel_size=1, activation=None))
        self.block = nn.Sequential(*layers)

        self.out_channels = out_channels
        self.freq_size = freq_size
        self.time_size = time_size

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if self.use_res_connect:
            # out-of-place so that hooks holding the projection BN output see it unchanged
            out = out + x
        return out


class MultiHeadAttentionPooling(nn.Module):
    """PSLA-style multi-head attention pooling over time (https://arxiv.org/abs/2102.01243).

    The (B, C, F, T) map is averaged over frequency; per frame a Linear layer produces,
    for each head and class, an attention logit and a value. Attention = sigmoid clamped
    to [eps, 1 - eps], normalised to sum 1 over time; each head pools its values with it,
    and the heads are combined with the learnt weights ``head_weight`` (init 1 / heads).
    """

    def __init__(self, in_dim: int, num_classes: int, num_heads: int = 4, eps: float = 1e-7) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.eps = eps
        self.subspace_proj = nn.Linear(in_dim, num_classes * 2 * num_heads)
        self.head_weight = nn.Parameter(torch.full((1, num_heads, 1), 1.0 / num_heads))

    def forward(self, x: Tensor) -> Tensor:
        x = x.mean(dim=2).transpose(1, 2)  # (B, T, C)
        b, t, _ = x.shape
        # (B, T, 2, heads, classes) -> (2, B, heads, T, classes)
        proj = self.subspace_proj(x).reshape(b, t, 2, self.num_heads, self.num_classes).permute(2, 0, 3, 1, 4)
        att, val = proj[0], proj[1]
        att = torch.sigmoid(att).clamp(self.eps, 1.0 - self.eps)
        att = att / att.sum(dim=2, keepdim=True)
        out = (att * val).sum(dim=2) * self.head_weight  # (B, heads, classes)
        return out.sum(dim=1)

    def frame_values(self, x: Tensor) -> Tensor:
        """(B, classes, T): each frame's values combined over heads, as if attention chose that
        frame alone -- the clip logits are an attention-weighted average of these per head."""
        x = x.mean(dim=2).transpose(1, 2)
        b, t, _ = x.shape
        proj = self.subspace_proj(x).reshape(b, t, 2, self.num_heads, self.num_classes)
        values = proj[:, :, 1].permute(0, 2, 1, 3)  # (B, heads, T, classes)
        return (values * self.head_weight.unsqueeze(-1)).sum(dim=1).transpose(1, 2)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _validate_arguments(num_classes: Any, width_mult: Any, strides: Any, head_type: Any,
                        multihead_attention_heads: Any, input_dim_f: Any, input_dim_t: Any,
                        se_dims: Any, se_agg: Any, se_r: Any) -> tuple[int, int, int, int]:
    """Raise a ValueError for any invalid constructor argument; return strides as a tuple."""
    _check_positive_int("num_classes", num_classes)
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
    if isinstance(strides, (str, bytes)) or not isinstance(strides, Sequence) or len(strides) != 4:
        raise ValueError(f"strides must be a sequence of 4 strides (blocks 2, 4, 7, 13), got {strides!r}")
    if any(isinstance(s, bool) or s not in (1, 2) for s in strides):
        raise ValueError(f"every stride must be 1 or 2, got strides={strides!r}")
    if head_type not in HEAD_TYPES:
        raise ValueError(f"unknown head_type {head_type!r}; must be one of {', '.join(map(repr, HEAD_TYPES))}")
    _check_positive_int("multihead_attention_heads", multihead_attention_heads)
    _check_positive_int("input_dim_f", input_dim_f)
    _check_positive_int("input_dim_t", input_dim_t)
    if not isinstance(se_dims, str) or (se_dims != "none" and not (
            1 <= len(se_dims) <= 3 and all(letter in _SE_AXES for letter in se_dims))):
        raise ValueError(
            f"se_dims must be 'none' or 1 to 3 letters from 'c' (channel), 'f' (frequency), 't' (time), "
            f"e.g. 'c' or 'ct'; got {se_dims!r}")
    if se_agg not in SE_AGGREGATIONS:
        raise ValueError(f"se_agg must be one of {', '.join(map(repr, SE_AGGREGATIONS))}, got {se_agg!r}")
    _check_positive_int("se_r", se_r)
    return tuple(int(s) for s in strides)  # type: ignore[return-value]


class MobileNet(nn.Module):
    """EfficientAT MobileNetV3 ("mn") audio tagger; see the module docstring.

    The constructor takes EfficientAT ``get_model``'s arguments (without
    ``pretrained_name``) with the same defaults and meaning:

    Args:
        num_classes: number of logits.
        width_mult: channel multiplier (mn04 = 0.4, mn10 = 1.0, mn40 = 4.0).
        reduced_tail: halve the channels of the last three blocks and the MLP hidden size.
        dilated: last three blocks use dilation 2 and stride 1.
        strides: strides of the four down-sampling blocks (blocks 2, 4, 7, 13).
        head_type: ``'mlp'``, ``'fully_convolutional'`` or ``'multihead_attention_pooling'``.
        multihead_attention_heads: heads of the attention-pooling head.
        input_dim_f: number of mel bins (checked in ``forward``; sizes frequency SE).
        input_dim_t: trained number of frames (sizes time SE; other lengths still work).
        se_dims: ``'none'`` or 1-3 letters of ``c``/``f``/``t``; one SE layer per letter.
        se_agg: merge of concurrent SE outputs: ``'max'``, ``'avg'``, ``'add'``, ``'min'``.
        se_r: SE reduction factor.
    """

    def __init__(
        self,
        num_classes: int = 527,
        width_mult: float = 1.0,
        reduced_tail: bool = False,
        dilated: bool = False,
        strides: Sequence[int] = (2, 2, 2, 2),
        head_type: str = "mlp",
        multihead_attention_heads: int = 4,
        input_dim_f: int = 128,
        input_dim_t: int = 1000,
        se_dims: str = "c",
        se_agg: str = "max",
        se_r: int = 4,
    ) -> None:
        super().__init__()
        strides = _validate_arguments(num_classes, width_mult, strides, head_type, multihead_attention_heads,
                                      input_dim_f, input_dim_t, se_dims, se_agg, se_r)
        self.num_classes = num_classes
        self.width_mult = float(width_mult)
        self.reduced_tail = bool(reduced_tail)
        self.dilated = bool(dilated)
        self.strides = strides
        self.head_type = head_type
        self.multihead_attention_heads = multihead_attention_heads
        self.input_dim_f = input_dim_f
        self.input_dim_t = input_dim_t
        self.se_dims = se_dims
        self.se_agg = se_agg
        self.se_r = se_r

        # Built in this order on purpose: it fixes the state_dict key order and the order in
        # which the modules draw their initial weights from the RNG.
        tail_divider = 2 if self.reduced_tail else 1
        self.features = self._build_features(tail_divider)
        self.last_channel = self._width_scaled(LAST_CHANNEL // tail_divider)  # MLP hidden size
        self.classifier: nn.Module = self._build_classifier()
        init_mobilenet_weights(self)

    def _width_scaled(self, channels: int) -> int:
        """`channels` of the width-1.0 model times `width_mult`, rounded to a multiple of 8 as EfficientAT does."""
        return make_divisible(channels * self.width_mult, 8)

    def _build_features(self, tail_divider: int) -> nn.Sequential:
        """The body: stem, the 15 inverted-residual blocks, the last 1x1 conv; sets `embedding_dim`."""
        num_blocks = len(MOBILENETV3_BLOCKS)
        layers: list[nn.Module] = [
            ConvNormActivation(1, self._width_scaled(STEM_CHANNELS), kernel_size=3, stride=2,
                               activation=nn.Hardswish)
        ]
        # Frequency / time sizes after each block at the trained input size (only used
        # to size frequency / time SE layers), following the strides actually applied.
        f_size = conv_output_size(self.input_dim_f, 3, 2, 1)
        t_size = conv_output_size(self.input_dim_t, 3, 2, 1)
        for index, spec in enumerate(MOBILENETV3_BLOCKS):
            in_c, expanded_c, out_c = spec.in_channels, spec.expanded_channels, spec.out_channels
            in_tail = index >= num_blocks - 3
            if in_tail:
                # reduced_tail halves the tail; the first tail block keeps its 112 inputs
                if index > num_blocks - 3:
                    in_c //= tail_divider
                    expanded_c //= tail_divider
                out_c //= tail_divider
            dilation = 2 if (self.dilated and in_tail) else 1
            stride = 1 if spec.stride_index is None else self.strides[spec.stride_index]
            applied_stride = 1 if dilation > 1 else stride
            padding = (spec.kernel_size - 1) // 2 * dilation
            f_size = conv_output_size(f_size, spec.kernel_size, applied_stride, padding, dilation)
            t_size = conv_output_size(t_size, spec.kernel_size, applied_stride, padding, dilation)
            layers.append(InvertedResidual(
                self._width_scaled(in_c), spec.kernel_size, self._width_scaled(expanded_c),
                self._width_scaled(out_c), spec.use_se, spec.activation, stride, dilation, f_size, t_size,
                None if self.se_dims == "none" else self.se_dims, self.se_agg, self.se_r))
        last_in = layers[-1].out_channels
        self.embedding_dim = 6 * last_in
        layers.append(ConvNormActivation(last_in, self.embedding_dim, kernel_size=1, activation=nn.Hardswish))
        return nn.Sequential(*layers)

    def _build_classifier(self) -> nn.Module:
        """The `head_type` head on the body's `embedding_dim` channels."""
        if self.head_type == "mlp":
            return mlp_head(self.embedding_dim, self.last_channel, self.num_classes)
        if self.head_type == "fully_convolutional":
            return nn.Sequential(
                nn.Conv2d(self.embedding_dim, self.num_classes, kernel_size=1, bias=False),
                nn.BatchNorm2d(self.num_classes),  # PyTorch defaults (eps 1e-5), as in the reference
                nn.AdaptiveAvgPool2d(1),
            )
        return MultiHeadAttentionPooling(self.embedding_dim, self.num_classes,
                                         num_heads=self.multihead_attention_heads)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (EfficientAT ``get_model`` names) that rebuild this model."""
        return dict(num_classes=self.num_classes, width_mult=self.width_mult, reduced_tail=self.reduced_tail,
                    dilated=self.dilated, strides=self.strides, head_type=self.head_type,
                    multihead_attention_heads=self.multihead_attention_heads, input_dim_f=self.input_dim_f,
                    input_dim_t=self.input_dim_t, se_dims=self.se_dims, se_agg=self.se_agg, se_r=self.se_r)

    def forward_features(self, x: Tensor) -> Tensor:
        """Body output (B, embedding_dim, F', T') for a (B, 1, input_dim_f, T) spectrogram."""
        check_spectrogram_input(x, self.input_dim_f, "MobileNet")
        return self.features(x)

    def forward_head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits (B, num_classes), embedding (B, embedding_dim))`` from the body output."""
        embedding = F.adaptive_avg_pool2d(features, 1).flatten(1)
        logits = self.classifier(features).flatten(1)
        return logits, embedding

    @property
    def frame_logits_exact(self) -> bool:
        """True when the mean of `forward_frames` over time equals the clip logits (eval mode)."""
        return self.head_type == "fully_convolutional"

    def forward_frames(self, features: Tensor) -> Tensor:
        """Logits per output time frame (B, num_classes, T') from the body output, no time pooling.

        ``fully_convolutional``: the 1x1 conv + BatchNorm, averaged over frequency only -- exact, their
        mean over time is the clip logits. ``mlp``: the MLP per frame (decision-level approximation).
        ``mha``: each frame's attention values (approximation; the clip logits weight them by attention).
        """
        if self.head_type == "fully_convolutional":
            return self.classifier[:-1](features).mean(dim=2)
        if self.head_type == "mlp":
            return mlp_head_per_frame(self.classifier, features)
        return self.classifier.frame_values(features)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits, embedding)`` for a (B, 1, n_mels, T) log-mel batch.

        Shapes are always (B, num_classes) and (B, embedding_dim), also for B = 1 and
        num_classes = 1 (the reference returns (B,) logits in the latter case).
        """
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------------------
# the family: EfficientAT's release rows and the rules of building an mn model
# --------------------------------------------------------------------------------------
EFFICIENTAT_RELEASE = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
WIDTHS = {"01": 0.1, "02": 0.2, "04": 0.4, "05": 0.5, "10": 1.0, "20": 2.0, "30": 3.0, "40": 4.0}


def map_from_filename(filename: str) -> Optional[float]:
    """The AudioSet mAP an EfficientAT release file name states (`mn10_as_mAP_471.pt` -> 0.471)."""
    match = re.search(r"mAP_(\d{3})", filename)
    return int(match.group(1)) / 1000 if match else None


def efficientat_entry(name: str, arch: str, filename: str, config: dict[str, Any], *,
                      preprocessing: Optional[dict[str, Any]] = None, published_map: Optional[float] = None,
                      **details: Any) -> PretrainedEntry:
    """A catalogue row of an EfficientAT release file (mn and dymn)."""
    return catalogue_entry(name, arch, filename, config, url=EFFICIENTAT_RELEASE + filename,
                           preprocessing=preprocessing,
                           published_map=published_map if published_map is not None else map_from_filename(filename),
                           **details)


def _mn_entry(name: str, filename: str, config: dict[str, Any], *, preprocessing: Optional[dict[str, Any]] = None,
              **details: Any) -> PretrainedEntry:
    # a released mn was trained on the mel bins of its preprocessing: its input check and
    # frequency-SE sizes follow them
    n_mels = dict(DEFAULT_PREPROCESSING, **(preprocessing or {}))["n_mels"]
    return efficientat_entry(name, "mn", filename, {**config, "input_dim_f": n_mels}, preprocessing=preprocessing,
                             **details)


def _catalogue() -> list[PretrainedEntry]:
    rows = [_mn_entry("mn10_im_pytorch", "mn10_im_pytorch.pt", {"width_mult": 1.0}, dataset="imagenet",
                      description="torchvision's ImageNet MobileNetV3-Large weights in EfficientAT layout")]
    # ImageNet pre-training (1000-class heads; fine-tune with num_classes=...)
    rows += [_mn_entry(f"mn{w}_im", f"mn{w}_im.pt", {"width_mult": WIDTHS[w]}, dataset="imagenet",
                       description=f"width {WIDTHS[w]} MobileNetV3 trained on ImageNet") for w in WIDTHS]
    # students distilled on AudioSet:  name   file   width  params(M) GMACs   (EfficientAT README table)
    for name, filename, w, params, gmacs in (
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
            ("mn40_as_ext(3)", "mn40_as_ext_mAP_485.pt", "40", 68.43, 8.03)):
        rows.append(_mn_entry(
            name, filename, {"width_mult": WIDTHS[w]}, params_m=params, gmacs=gmacs,
            description=f"width {WIDTHS[w]} MobileNetV3 distilled from a PaSST ensemble on AudioSet"
            + (" (300 epochs)" if "ext" in name else "") + (" (no ImageNet init)" if "no_im_pre" in name else "")))
    # mn10 trained with other time/frequency resolutions (hop_X = X ms at 32 kHz)
    for name, filename, preprocessing, gmacs in (
            ("mn10_as_hop_5", "mn10_as_hop_5_mAP_475.pt", {"hopsize": 160}, None),
            ("mn10_as_hop_15", "mn10_as_hop_15_mAP_463.pt", {"hopsize": 480}, 0.36),
            ("mn10_as_hop_20", "mn10_as_hop_20_mAP_456.pt", {"hopsize": 640}, 0.27),
            ("mn10_as_hop_25", "mn10_as_hop_25_mAP_447.pt", {"hopsize": 800}, 0.22),
            ("mn10_as_mels_40", "mn10_as_mels_40_mAP_453.pt", {"n_mels": 40}, 0.21),
            ("mn10_as_mels_64", "mn10_as_mels_64_mAP_461.pt", {"n_mels": 64}, 0.27),
            ("mn10_as_mels_256", "mn10_as_mels_256_mAP_474.pt", {"n_mels": 256}, 1.08)):
        rows.append(_mn_entry(name, filename, {"width_mult": 1.0}, preprocessing=preprocessing, params_m=4.88,
                              gmacs=gmacs, description="mn10 trained with "
                              + ", ".join(f"{k}={v}" for k, v in preprocessing.items())))
    # fully convolutional head (and fewer down-sampling steps in time/frequency)
    for name, filename, strides in (
            ("mn10_as_fc", "mn10_as_fc_mAP_465.pt", [2, 2, 2, 2]),
            ("mn10_as_fc_s2221", "mn10_as_fc_s2221_mAP_466.pt", [2, 2, 2, 1]),
            ("mn10_as_fc_s2211", "mn10_as_fc_s2211_mAP_466.pt", [2, 2, 1, 1])):
        rows.append(_mn_entry(name, filename, {"width_mult": 1.0, "head_type": "fully_convolutional",
                                               "strides": strides},
                              description=f"mn10 with a fully convolutional head, strides {strides}"))
    return rows


class MobileNetFamily(ModelFamily):
    name = "mn"
    model_class = MobileNet
    complexity_options = frozenset({"head_type", "se_dims"})
    mel_bins_argument = "input_dim_f"  # the input check and the frequency SE sizes follow it
    plot_style = ("o", "tab:blue", "MobileNetV3 (mn)")

    def catalogue(self) -> list[PretrainedEntry]:
        return _catalogue()

    def input_config(self, *, num_classes: int, n_mels: int, frames: int,
                     shape: dict[str, Any]) -> dict[str, Any]:
        return dict(num_classes=num_classes, width_mult=shape["width_mult"], head_type=shape["head_type"],
                    se_dims=shape["se_dims"], strides=list(shape["strides"]), input_dim_f=n_mels, input_dim_t=frames)

    def start_options(self, *, n_mels: int, pretrain_final_temp: float) -> dict[str, Any]:
        # the mel bins the run feeds it (its weights do not depend on them; the input check and
        # the frequency SE sizes do)
        return {"input_dim_f": n_mels}


FAMILY = MobileNetFamily()
