"""Dynamic MobileNet ("DyMN"), checkpoint- and numerically compatible with EfficientAT.

DyMN (Schmid et al., "Dynamic Convolutional Neural Networks as Efficient Pre-trained
Audio Models") keeps the MobileNetV3-Large layout of the MN students -- a 3x3 stride-2
stem (`in_c`), the 15 inverted-residual blocks of `MOBILENETV3_BLOCKS` (`layers`), a
1x1 conv to 6x the last block width (`out_c`) and an MLP head (`classifier`) -- but
makes every block input-dependent:

* **Context generation** (`context_gen`). The block input (B, C, F, T) is averaged over
  time (a frequency profile) and over frequency (a time profile); both sequences are
  concatenated and passed through a shared 1x1 conv + BN + Hardswish to H channels.
  The mean over all F + T positions, `h_c` (B, H, 1, 1), parameterises the dynamic
  convolutions and Dy-ReLU; the two sequences, mapped back to the expanded width by
  `conv_f` / `conv_t` (pooled with the block stride first), drive coordinate attention.
* **Dynamic convolution** (`exp_conv`, `depth_conv`, `proj_conv`). Each holds K candidate
  kernels; a per-sample softmax attention over them (logits from `h_c`, divided by a
  temperature) mixes one kernel per sample. The batch is folded into the channel axis so
  the whole batch runs as a single grouped convolution.
* **Dy-ReLU-B** (`depth_act`). A per-sample, per-channel piecewise-linear activation
  `max_m(a_m x + b_m)` with coefficients predicted from `h_c`.
* **Coordinate attention** (`ca`). The depthwise output is rescaled by
  sigmoid(frequency attention) and sigmoid(time attention).

The attention temperature is training state, not a weight: a fresh model starts at
`T_max` (30 by default) and a trainer lowers it each epoch with `update_temperature`
(`dymn_temperature` is the schedule). Released AudioSet checkpoints were trained down to
1.0, which is why EfficientAT replaces `T_max` by `pretrain_final_temp` when loading
them; a loader in this package must do the same (`model.set_temperature(1.0)`).

Module names, parameter shapes and the state_dict order (`layers.*` before `in_c.*`)
follow EfficientAT so that its released `dymnXY_*` files load with `strict=True`.
"""
from __future__ import annotations

import copy
import math
from typing import Any, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    BN_EPS,
    BN_MOMENTUM,
    LAST_CHANNEL,
    MOBILENETV3_BLOCKS,
    STEM_CHANNELS,
    BlockSpec,
    ConvNormActivation,
    check_spectrogram_input,
    mlp_head_per_frame,
    init_mobilenet_weights,
    make_divisible,
    mlp_head,
)
from .family import ModelFamily, PretrainedEntry
from .mobilenet import WIDTHS, InvertedResidual, efficientat_entry

__all__ = [
    "DyMN",
    "DynamicConv2d",
    "DyReLUB",
    "CoordinateAttention",
    "ContextGenerator",
    "DynamicInvertedResidual",
    "dymn_temperature",
    "DY_BLOCK_MODES",
]

# Which of the 15 blocks are dynamic. "replace_se" keeps plain (SE-free) MN blocks where
# MobileNetV3 has no squeeze-excitation and uses dynamic blocks only where it has SE.
DY_BLOCK_MODES: dict[str, tuple[bool, ...]] = {
    "all": (True,) * len(MOBILENETV3_BLOCKS),
    "replace_se": tuple(spec.use_se for spec in MOBILENETV3_BLOCKS),
}


def dymn_temperature(
    epoch: float,
    T_max: float = 30.0,
    T0_slope: float = 1.0,
    T1_slope: float = 0.02,
    T_min: float = 1.0,
) -> float:
    """Kernel-attention temperature of EfficientAT's DyMN training schedule at `epoch`.

    Two linear decays: a steep one from `T_max` (slope `T0_slope`) and a gentle one
    (slope `T1_slope`) that takes over once the steep one reaches ~1, floored at `T_min`:
    ``max(T_max - T0_slope*epoch, 1 + T1_slope*(T_max - 1)/T0_slope - T1_slope*epoch, T_min)``.
    """
    if T0_slope == 0:
        raise ValueError("dymn_temperature: T0_slope must be non-zero (the schedule divides by it)")
    steep = T_max - T0_slope * epoch
    gentle = 1 + T1_slope * (T_max - 1) / T0_slope - T1_slope * epoch
    return float(max(steep, gentle, T_min))


def _check_temperature(value: float, name: str = "temperature") -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"DyMN: {name} must be a finite positive number, got {value}")
    return value


class DynamicContext(NamedTuple):
    """What the context generator hands to the dynamic parts of one block."""

    h_c: Tensor  # (B, H, 1, 1) context vector for Dy-Conv attention and Dy-ReLU
    g_f: Tensor  # (B, expanded, F', 1) frequency attention logits (coordinate attention)
    g_t: Tensor  # (B, expanded, 1, T') time attention logits


class StaticWrapper(nn.Module):
    """Runs a context-free module inside a dynamic block (used by the no_dy* ablations).

    The wrapped module sits under `.module`, as in EfficientAT, so the state_dict keys of
    ablated models (e.g. `exp_conv.module.weight`) match the reference.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, ctx: DynamicContext) -> Tensor:
        return self.module(x)


class DynamicConv2d(nn.Module):
    """Convolution whose kernel is a per-sample attention-weighted mix of K candidates.

    `weight` has EfficientAT's layout (1, 1, K, out * in/groups * k * k): each row is one
    flattened (out, in/groups, k, k) kernel. No bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        context_dim: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        num_kernels: int = 4,
        temperature: float = 30.0,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"DynamicConv2d: channels ({in_channels}, {out_channels}) not divisible by groups={groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.num_kernels = num_kernels
        self.temperature = _check_temperature(temperature)  # plain attribute: not saved
        kernel_numel = out_channels * (in_channels // groups) * kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(1, 1, num_kernels, kernel_numel))
        # Linear H -> K producing the attention logits; a Sequential for the `residuals.0` key.
        self.residuals = nn.Sequential(nn.Linear(context_dim, num_kernels))
        # None for every trained model (no key in the state_dict); set by `fold_norm_` in inference copies
        self.bias: Optional[nn.Parameter]
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each candidate gets Kaiming-normal (fan_out) init, as a static conv would.
        fan_out = self.out_channels * self.kernel_size * self.kernel_size
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out))

    def forward(self, x: Tensor, ctx: DynamicContext) -> Tensor:
        b, c, f, t = x.shape
        logits = self.residuals(ctx.h_c.reshape(b, -1))                    # (B, K)
        attention = torch.softmax(logits / self.temperature, dim=-1)
        kernels = attention @ self.weight.reshape(self.num_kernels, -1)     # (B, out*in/g*k*k)
        kernels = kernels.reshape(b * self.out_channels, self.in_channels // self.groups,
                                  self.kernel_size, self.kernel_size)
        # Fold the batch into the channel axis: sample i only sees its own kernel group.
        bias = None if self.bias is None else self.bias.repeat(b)
        out = F.conv2d(x.reshape(1, b * c, f, t), kernels, bias, self.stride, self.padding,
                       self.dilation, self.groups * b)
        return out.reshape(b, self.out_channels, out.shape[-2], out.shape[-1])

    @torch.no_grad()
    def fold_norm_(self, norm: nn.BatchNorm2d) -> None:
        """Fold the eval-mode BatchNorm that follows into every candidate kernel (and a bias): the
        mixed kernel is linear in the candidates, so scaling each scales the mix (inference only)."""
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        candidates = self.weight.reshape(self.num_kernels, self.out_channels, -1)
        self.weight.copy_((candidates * scale[None, :, None]).reshape_as(self.weight))
        bias = shift if self.bias is None else self.bias * scale + shift
        self.bias = nn.Parameter(bias.clone(), requires_grad=False)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}, num_kernels={self.num_kernels}, temperature={self.temperature}")


class DyReLUB(nn.Module):
    """Dy-ReLU-B: per-sample, per-channel `max_m(a_m * x + b_m)` with M pieces.

    θ = 2·sigmoid(Linear(h_c)) − 1 is read channel-major as (B, C, 2M); the coefficients
    are θ·lambdas + init_v, so an untrained net starts at (a, b) = (1, 0, ..., 0), i.e. ReLU.
    """

    def __init__(self, channels: int, context_dim: int, num_pieces: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.num_pieces = num_pieces
        # Constant buffers, but persistent: they are part of EfficientAT's state_dict.
        self.register_buffer("lambdas", torch.tensor([1.0] * num_pieces + [0.5] * num_pieces))
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * num_pieces - 1)))
        self.coef_net = nn.Sequential(nn.Linear(context_dim, 2 * num_pieces * channels))

    def forward(self, x: Tensor, ctx: DynamicContext) -> Tensor:
        b = x.shape[0]
        theta = 2 * torch.sigmoid(self.coef_net(ctx.h_c.reshape(b, -1))) - 1
        coefs = theta.reshape(b, self.channels, 1, 1, 2 * self.num_pieces) * self.lambdas + self.init_v
        m = self.num_pieces
        # Running maximum over the pieces: avoids materialising a (B, C, F, T, M) tensor.
        out = x * coefs[..., 0] + coefs[..., m]
        for i in range(1, m):
            out = torch.maximum(out, x * coefs[..., i] + coefs[..., m + i])
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_pieces={self.num_pieces}"


class CoordinateAttention(nn.Module):
    """Rescale by sigmoid of the frequency and time attention maps from the context."""

    def forward(self, x: Tensor, ctx: DynamicContext) -> Tensor:
        return x * torch.sigmoid(ctx.g_f) * torch.sigmoid(ctx.g_t)


class ContextGenerator(nn.Module):
    """Builds the per-sample context (h_c, g_f, g_t) of a dynamic block from its input."""

    def __init__(self, in_channels: int, context_dim: int, expanded_channels: int, stride: int = 1) -> None:
        super().__init__()
        # A 1x1 conv over the concatenated (F + T, 1) sequence = one Linear shared by both axes.
        self.joint_conv = nn.Conv2d(in_channels, context_dim, kernel_size=1, bias=False)
        self.joint_norm = nn.BatchNorm2d(context_dim, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.joint_act = nn.Hardswish(inplace=True)
        self.conv_f = nn.Conv2d(context_dim, expanded_channels, kernel_size=1, bias=True)
        self.conv_t = nn.Conv2d(context_dim, expanded_channels, kernel_size=1, bias=True)
        if stride > 1:
            # Attention maps must match the depthwise output, which is down-sampled by `stride`
            # (3-tap pools, zero padding counted in the average like the reference).
            self.pool_f: nn.Module = nn.AvgPool2d(kernel_size=(3, 1), stride=(stride, 1), padding=(1, 0))
            self.pool_t: nn.Module = nn.AvgPool2d(kernel_size=(1, 3), stride=(1, stride), padding=(0, 1))
        else:
            self.pool_f = nn.Identity()
            self.pool_t = nn.Identity()

    def forward(self, x: Tensor) -> DynamicContext:
        freq_profile = F.adaptive_avg_pool2d(x, (None, 1))                      # (B, C, F, 1)
        time_profile = F.adaptive_avg_pool2d(x, (1, None)).permute(0, 1, 3, 2)  # (B, C, T, 1)
        n_freq = freq_profile.shape[2]
        joint = torch.cat([freq_profile, time_profile], dim=2)
        joint = self.joint_act(self.joint_norm(self.joint_conv(joint)))        # (B, H, F + T, 1)
        h_f, h_t = torch.split(joint, [n_freq, joint.shape[2] - n_freq], dim=2)
        h_c = joint.mean(dim=2, keepdim=True)                                  # (B, H, 1, 1)
        g_f = self.conv_f(self.pool_f(h_f))
        g_t = self.conv_t(self.pool_t(h_t.permute(0, 1, 3, 2)))
        return DynamicContext(h_c, g_f, g_t)


def _activation(name: str) -> type[nn.Module]:
    return nn.Hardswish if name == "HS" else nn.ReLU


class DynamicInvertedResidual(nn.Module):
    """Inverted residual block with dynamic convs, Dy-ReLU-B and coordinate attention.

    expand (dynamic 1x1, skipped if expanded == in) -> BN -> act -> depthwise dynamic kxk
    -> BN -> Dy-ReLU-B -> coordinate attention -> project (dynamic 1x1) -> BN (+ input).
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int,
        expanded_channels: int,
        out_channels: int,
        activation: str,
        stride: int,
        context_dim: int,
        dyrelu_k: int = 2,
        dyconv_k: int = 4,
        no_dyrelu: bool = False,
        no_dyconv: bool = False,
        no_ca: bool = False,
        temperature: float = 30.0,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"DynamicInvertedResidual: stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.context_dim = context_dim
        act = _activation(activation)

        def conv(cin: int, cout: int, k: int, s: int, groups: int) -> nn.Module:
            padding = (k - 1) // 2
            if no_dyconv:
                return StaticWrapper(nn.Conv2d(cin, cout, k, s, padding, groups=groups, bias=False))
            return DynamicConv2d(cin, cout, context_dim, k, s, padding, groups=groups,
                                 num_kernels=dyconv_k, temperature=temperature)

        def norm(channels: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)

        # Registration order below fixes the state_dict order (context_gen comes last).
        if expanded_channels != in_channels:
            self.exp_conv = conv(in_channels, expanded_channels, 1, 1, 1)
            self.exp_norm: nn.Module = norm(expanded_channels)
            self.exp_act: nn.Module = act(inplace=True)
        else:
            self.exp_conv = StaticWrapper(nn.Identity())
            self.exp_norm = nn.Identity()
            self.exp_act = nn.Identity()

        self.depth_conv = conv(expanded_channels, expanded_channels, kernel_size, stride, expanded_channels)
        self.depth_norm = norm(expanded_channels)
        self.depth_act = (StaticWrapper(act(inplace=True)) if no_dyrelu
                          else DyReLUB(expanded_channels, context_dim, num_pieces=dyrelu_k))
        self.ca = StaticWrapper(nn.Identity()) if no_ca else CoordinateAttention()

        self.proj_conv = conv(expanded_channels, out_channels, 1, 1, 1)
        self.proj_norm = norm(out_channels)

        self.context_gen = ContextGenerator(in_channels, context_dim, expanded_channels, stride=stride)

    @torch.no_grad()
    def fold_batchnorm_(self) -> int:
        """Fold each convolution's BatchNorm into it, in place (inference copies only: see
        `models.fused.fold_batchnorm`); returns how many norms were folded."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        folded = 0
        for conv_name, norm_name in (("exp_conv", "exp_norm"), ("depth_conv", "depth_norm"), ("proj_conv", "proj_norm")):
            conv, norm = getattr(self, conv_name), getattr(self, norm_name)
            if type(norm) is not nn.BatchNorm2d:
                continue
            if isinstance(conv, DynamicConv2d):
                conv.fold_norm_(norm)
            elif isinstance(conv, StaticWrapper) and isinstance(conv.module, nn.Conv2d):
                conv.module = fuse_conv_bn_eval(conv.module, norm)
            else:
                continue
            setattr(self, norm_name, nn.Identity())
            folded += 1
        gen = self.context_gen
        if type(gen.joint_norm) is nn.BatchNorm2d:
            gen.joint_conv = fuse_conv_bn_eval(gen.joint_conv, gen.joint_norm)
            gen.joint_norm = nn.Identity()
            folded += 1
        return folded

    def forward(self, x: Tensor) -> Tensor:
        ctx = self.context_gen(x)
        out = self.exp_act(self.exp_norm(self.exp_conv(x, ctx)))
        out = self.depth_act(self.depth_norm(self.depth_conv(out, ctx)), ctx)
        out = self.ca(out, ctx)
        out = self.proj_norm(self.proj_conv(out, ctx))
        if self.use_res_connect:
            out = out + x
        return out


def _check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"DyMN: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _validate_arguments(num_classes: Any, width_mult: Any, strides: Sequence[int], context_ratio: Any,
                        min_context_size: Any, max_context_size: Any, dyrelu_k: Any, dyconv_k: Any,
                        use_dy_blocks: Any, T_max: float, T_min: float, pretrain_final_temp: float,
                        T0_slope: float, T1_slope: float) -> tuple[int, ...]:
    """Raise a ValueError for the first invalid `DyMN` argument found; return strides as a tuple."""
    _check_positive_int(num_classes, "num_classes")
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) \
            or not math.isfinite(width_mult) or width_mult <= 0:
        raise ValueError(f"DyMN: width_mult must be a finite positive number, got {width_mult!r}")
    strides = tuple(strides)
    if len(strides) != 4 or any(isinstance(s, bool) or s not in (1, 2) for s in strides):
        raise ValueError(f"DyMN: strides must be 4 values, each 1 or 2, got {strides!r}")
    _check_positive_int(context_ratio, "context_ratio")
    _check_positive_int(min_context_size, "min_context_size")
    _check_positive_int(max_context_size, "max_context_size")
    if min_context_size > max_context_size:
        raise ValueError(f"DyMN: min_context_size ({min_context_size}) > max_context_size ({max_context_size})")
    _check_positive_int(dyrelu_k, "dyrelu_k")
    _check_positive_int(dyconv_k, "dyconv_k")
    if use_dy_blocks not in DY_BLOCK_MODES:
        raise ValueError(f"DyMN: use_dy_blocks must be one of {sorted(DY_BLOCK_MODES)}, got {use_dy_blocks!r}")
    _check_temperature(T_max, "T_max")
    _check_temperature(T_min, "T_min")
    _check_temperature(pretrain_final_temp, "pretrain_final_temp")
    if not math.isfinite(T0_slope) or T0_slope == 0:
        raise ValueError(f"DyMN: T0_slope must be finite and non-zero, got {T0_slope!r}")
    if not math.isfinite(T1_slope):
        raise ValueError(f"DyMN: T1_slope must be finite, got {T1_slope!r}")
    return strides


class DyMN(nn.Module):
    """EfficientAT dynamic MobileNet. `forward(x)` maps (B, 1, n_mels, T) to (logits, embedding).

    Arguments are those of EfficientAT's DyMN `get_model` (minus `pretrained_name`), with the
    same defaults. `T_max` is the initial attention temperature; `pretrain_final_temp` is only
    recorded (EfficientAT uses it instead of `T_max` when loading released weights).
    """

    def __init__(
        self,
        num_classes: int = 527,
        width_mult: float = 1.0,
        strides: Sequence[int] = (2, 2, 2, 2),
        context_ratio: int = 4,
        max_context_size: int = 128,
        min_context_size: int = 32,
        dyrelu_k: int = 2,
        no_dyrelu: bool = False,
        dyconv_k: int = 4,
        no_dyconv: bool = False,
        T_max: float = 30.0,
        T0_slope: float = 1.0,
        T1_slope: float = 0.02,
        T_min: float = 1,
        pretrain_final_temp: float = 1.0,
        no_ca: bool = False,
        use_dy_blocks: str = "all",
    ) -> None:
        super().__init__()
        strides = _validate_arguments(num_classes, width_mult, strides, context_ratio, min_context_size,
                                      max_context_size, dyrelu_k, dyconv_k, use_dy_blocks, T_max, T_min,
                                      pretrain_final_temp, T0_slope, T1_slope)

        self._config = dict(
            num_classes=num_classes, width_mult=width_mult, strides=strides, context_ratio=context_ratio,
            max_context_size=max_context_size, min_context_size=min_context_size, dyrelu_k=dyrelu_k,
            no_dyrelu=no_dyrelu, dyconv_k=dyconv_k, no_dyconv=no_dyconv, T_max=T_max, T0_slope=T0_slope,
            T1_slope=T1_slope, T_min=T_min, pretrain_final_temp=pretrain_final_temp, no_ca=no_ca,
            use_dy_blocks=use_dy_blocks)
        self.num_classes = num_classes
        self.width_mult = float(width_mult)
        self.strides = strides
        self.use_dy_blocks = use_dy_blocks
        self.T_max, self.T0_slope, self.T1_slope, self.T_min = float(T_max), float(T0_slope), float(T1_slope), float(T_min)
        self.pretrain_final_temp = float(pretrain_final_temp)
        self._temperature = float(T_max)

        # Built in this order on purpose: it fixes the state_dict key order and the order in
        # which the modules draw their initial weights from the RNG.
        # `layers` is registered before `in_c` (EfficientAT's state_dict lists `layers.*` first)
        # but filled after it (EfficientAT builds the stem first).
        self.layers = nn.ModuleList()
        self.in_c = ConvNormActivation(1, self._width_scaled(STEM_CHANNELS), kernel_size=3, stride=2,
                                       activation=nn.Hardswish)
        self.layers.extend(self._build_blocks(
            use_dy_blocks, context_ratio, self._width_scaled(min_context_size), self._width_scaled(max_context_size),
            dyrelu_k=dyrelu_k, dyconv_k=dyconv_k, no_dyrelu=no_dyrelu, no_dyconv=no_dyconv, no_ca=no_ca,
            temperature=T_max))

        last_in = self._width_scaled(MOBILENETV3_BLOCKS[-1].out_channels)
        self.embedding_dim = 6 * last_in
        self.out_c = ConvNormActivation(last_in, self.embedding_dim, kernel_size=1, activation=nn.Hardswish)
        hidden = self._width_scaled(LAST_CHANNEL)
        self.classifier = mlp_head(self.embedding_dim, hidden, self.num_classes)
        init_mobilenet_weights(self)

    def _width_scaled(self, channels: float) -> int:
        """`channels` of the width-1.0 model times `width_mult`, rounded to a multiple of 8 as EfficientAT does."""
        return make_divisible(channels * self.width_mult, 8)

    def _build_blocks(self, use_dy_blocks: str, context_ratio: int, min_context: int, max_context: int,
                      **dynamic_options: Any) -> list[nn.Module]:
        """The 15 blocks: dynamic ones (`dynamic_options` go to each) where `use_dy_blocks` says so."""
        blocks: list[nn.Module] = []
        spec: BlockSpec
        for spec, dynamic in zip(MOBILENETV3_BLOCKS, DY_BLOCK_MODES[use_dy_blocks]):
            stride = 1 if spec.stride_index is None else self.strides[spec.stride_index]
            cin, cexp, cout = (self._width_scaled(spec.in_channels), self._width_scaled(spec.expanded_channels),
                               self._width_scaled(spec.out_channels))
            if dynamic:
                context_dim = min(max(make_divisible(cexp // context_ratio, 8), min_context), max_context)
                blocks.append(DynamicInvertedResidual(
                    cin, spec.kernel_size, cexp, cout, spec.activation, stride, context_dim, **dynamic_options))
            else:
                # `replace_se`: a plain MN block, never with SE (keys `layers.i.block.*`).
                blocks.append(InvertedResidual(
                    in_channels=cin, kernel_size=spec.kernel_size, expanded_channels=cexp, out_channels=cout,
                    use_se=False, activation=spec.activation, stride=stride, dilation=1,
                    freq_size=0, time_size=0, se_dims=None))
        return blocks

    # ----- attention temperature -------------------------------------------------------
    @property
    def temperature(self) -> float:
        """Current kernel-attention temperature of the dynamic convolutions."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.set_temperature(value)

    def set_temperature(self, t: float) -> None:
        """Set the kernel-attention temperature of every dynamic convolution."""
        t = _check_temperature(t)
        self._temperature = t
        for m in self.modules():
            if isinstance(m, DynamicConv2d):
                m.temperature = t

    def update_temperature(self, epoch: float) -> float:
        """Apply the training schedule (`dymn_temperature`) for `epoch`; returns the new value.

        A trainer calls this at the start of every epoch.
        """
        t = dymn_temperature(epoch, self.T_max, self.T0_slope, self.T1_slope, self.T_min)
        self.set_temperature(t)
        return t

    # EfficientAT's trainers call `update_params(epoch)`.
    update_params = update_temperature

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (EfficientAT `get_model` names) that rebuild this model."""
        return dict(self._config)

    # ----- forward -------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """Body output (B, embedding_dim, F', T') for a (B, 1, n_mels, T) spectrogram."""
        check_spectrogram_input(x, None, "DyMN")
        x = self.in_c(x)
        for layer in self.layers:
            x = layer(x)
        return self.out_c(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 1, n_mels, T) -> (logits (B, num_classes), embedding (B, 6C))."""
        return self.forward_head(self.forward_features(x))

    frame_logits_exact = False  # the MLP head is non-linear after its pooling

    def forward_frames(self, features: Tensor) -> Tensor:
        """Logits per output time frame (B, num_classes, T'): the MLP head per frame (a
        decision-level approximation, see `layers.mlp_head_per_frame`)."""
        return mlp_head_per_frame(self.classifier, features)

    def forward_head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, embedding) from the body output; embedding = pooled `out_c` output."""
        embedding = F.adaptive_avg_pool2d(features, (1, 1)).flatten(1)
        # Unlike the reference's `.squeeze()`, keep (B, num_classes) for any B and num_classes.
        logits = self.classifier(features)
        return logits, embedding


# --------------------------------------------------------------------------------------
# export form (ONNX Conv has a fixed group count: the batch cannot be folded into it)
# --------------------------------------------------------------------------------------
class BatchFreeDynamicConv2d(nn.Module):
    """A DyMN ``DynamicConv2d`` written without the batch in the convolution's ``group`` count.

    Wraps (shares the parameters of) the original module; ``forward(x, ctx)`` is the same function.
    1x1 convolutions (``groups == 1``): a batched matmul with each sample's mixed kernel. Others:
    one static grouped conv with the K candidate kernels, whose outputs are mixed per sample with
    the attention weights (convolution is linear in its kernel).
    """

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor, ctx: Any) -> Tensor:
        c = self.conv
        b = x.shape[0]
        attention = torch.softmax(c.residuals(ctx.h_c.reshape(b, -1)) / c.temperature, dim=-1)  # (B, K)
        kernels, groups = c.num_kernels, c.groups
        if c.kernel_size == 1 and groups == 1 and c.padding == 0:
            mixed = (attention @ c.weight.reshape(kernels, -1)).reshape(b, c.out_channels, c.in_channels)
            if c.stride > 1:
                x = x[:, :, ::c.stride, ::c.stride]
            # (B, 1, O, I) @ (B, F, I, T): no reshape merging F and T, which torch.export could only
            # trace with guards on the time length
            return torch.matmul(mixed.unsqueeze(1), x.transpose(1, 2)).transpose(1, 2)
        per_group = c.out_channels // groups
        weight = c.weight.reshape(kernels, groups, per_group, c.in_channels // groups, c.kernel_size, c.kernel_size)
        weight = weight.transpose(0, 1).reshape(groups * kernels * per_group, c.in_channels // groups,
                                                c.kernel_size, c.kernel_size)
        out = F.conv2d(x, weight, None, c.stride, c.padding, c.dilation, groups)  # (B, g*K*per_group, F', T')
        f, t = out.shape[-2], out.shape[-1]
        out = out.reshape(b, groups, kernels, per_group, f, t)
        out = (out * attention.reshape(b, 1, kernels, 1, 1, 1)).sum(dim=2)
        return out.reshape(b, c.out_channels, f, t)


class AvgPoolAsConv(nn.Module):
    """``nn.AvgPool2d`` (zero padding counted, floor mode) as a depthwise conv with weights 1/(kh*kw).

    Same function; exported because ``torch.export`` turns the pooling output-size formula into
    guards on the parity of the time length (it would only export for one parity), while the
    convolution's size formula stays symbolic.
    """

    def __init__(self, pool: nn.AvgPool2d) -> None:
        super().__init__()
        pair = nn.modules.utils._pair
        self.kernel_size, self.stride, self.padding = pair(pool.kernel_size), pair(pool.stride), pair(pool.padding)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        weight = torch.full((channels, 1, *self.kernel_size), 1.0 / (self.kernel_size[0] * self.kernel_size[1]),
                            dtype=x.dtype, device=x.device)
        return F.conv2d(x, weight, None, self.stride, self.padding, 1, channels)


def _pool_as_conv(module: nn.Module) -> bool:
    return (isinstance(module, nn.AvgPool2d) and module.count_include_pad and not module.ceil_mode
            and module.divisor_override is None)


def export_form(model: nn.Module) -> nn.Module:
    """An eval-mode copy of a DyMN whose dynamic convs are :class:`BatchFreeDynamicConv2d` and whose
    context generators' strided average pools are :class:`AvgPoolAsConv` (the same function)."""
    clone = copy.deepcopy(model).eval()
    for name, module in list(clone.named_modules()):
        replacement: Optional[nn.Module] = None
        if isinstance(module, DynamicConv2d):
            replacement = BatchFreeDynamicConv2d(module)
        elif _pool_as_conv(module):
            replacement = AvgPoolAsConv(module)
        if replacement is not None:
            parent_name, _, child = name.rpartition(".")
            parent = clone.get_submodule(parent_name) if parent_name else clone
            setattr(parent, child, replacement)
    return clone


# --------------------------------------------------------------------------------------
# the family: EfficientAT's DyMN release rows and the temperature rules
# --------------------------------------------------------------------------------------
def _dymn_entry(name: str, filename: str, config: dict[str, Any], **details: Any) -> PretrainedEntry:
    # The reference runs released DyMNs at their final training temperature (1.0).
    return efficientat_entry(name, "dymn", filename, {**config, "T_max": 1.0}, **details)


def _catalogue() -> list[PretrainedEntry]:
    rows = [_dymn_entry(f"dymn{w}_im", f"dymn{w}_im.pt", {"width_mult": WIDTHS[w]}, dataset="imagenet",
                        description=f"width {WIDTHS[w]} dynamic MobileNet trained on ImageNet") for w in ("04", "10", "20")]
    # (the files of DyMN-S/M name no mAP: theirs are EfficientAT's README table's, 45.0 and 47.7)
    for name, filename, w, params, gmacs, published_map in (
            ("dymn04_as", "dymn04_as.pt", "04", 1.97, 0.12, 0.450),
            ("dymn10_as", "dymn10_as.pt", "10", 10.57, 0.58, 0.477),
            ("dymn20_as", "dymn20_as_mAP_493.pt", "20", 40.02, 2.2, None),
            ("dymn20_as(1)", "dymn20_as.pt", "20", 40.02, 2.2, None),
            ("dymn20_as(2)", "dymn20_as_mAP_489.pt", "20", 40.02, 2.2, None),
            ("dymn20_as(3)", "dymn20_as_mAP_490.pt", "20", 40.02, 2.2, None)):
        rows.append(_dymn_entry(name, filename, {"width_mult": WIDTHS[w]}, params_m=params, gmacs=gmacs,
                                published_map=published_map,
                                description=f"width {WIDTHS[w]} dynamic MobileNet distilled on AudioSet"))
    rows += [_dymn_entry(f"dymn{w}_replace_se_as", f"dymn{w}_replace_se_as.pt",
                         {"width_mult": WIDTHS[w], "use_dy_blocks": "replace_se"},
                         description=f"width {WIDTHS[w]} DyMN with dynamic blocks only where MobileNetV3 has SE")
             for w in ("04", "10")]
    return rows


#: where a checkpoint stores the attention temperature a DyMN was saved at
CHECKPOINT_TEMPERATURE_KEY = "dymn_temperature"


class DyMNFamily(ModelFamily):
    name = "dymn"
    model_class = DyMN
    plot_style = ("s", "tab:red", "dynamic MobileNet (dymn)")

    def catalogue(self) -> list[PretrainedEntry]:
        return _catalogue()

    def input_config(self, *, num_classes: int, n_mels: int, frames: int,
                     shape: dict[str, Any]) -> dict[str, Any]:
        return dict(num_classes=num_classes, width_mult=shape["width_mult"], strides=list(shape["strides"]))

    def pretrained_configs(self, config: dict[str, Any], stored: dict[str, Any]
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
        config, stored = dict(config), dict(stored)
        if "pretrain_final_temp" in config and "T_max" not in config:
            # EfficientAT's get_dymn: a DyMN built on pretrained weights starts its attention at
            # `pretrain_final_temp` (1.0 for released AudioSet weights; its AudioSet recipe passes
            # 30 and anneals it with the training schedule, e.g. when starting from dymn10_im).
            config["T_max"] = config["pretrain_final_temp"]
        elif "T_max" not in config and "T_max" not in stored:
            # Released DyMNs run at their final training temperature, as the reference does.
            stored["T_max"] = stored.get("pretrain_final_temp", 1.0)
        return config, stored

    def start_options(self, *, n_mels: int, pretrain_final_temp: float) -> dict[str, Any]:
        return {"pretrain_final_temp": pretrain_final_temp}

    def restore_state(self, model: nn.Module, metadata: dict[str, Any], config: dict[str, Any]) -> None:
        # a temperature the caller chose wins over the stored one
        if CHECKPOINT_TEMPERATURE_KEY in metadata and not {"T_max", "pretrain_final_temp"} & set(config):
            model.set_temperature(metadata[CHECKPOINT_TEMPERATURE_KEY])

    def checkpoint_state(self, model: nn.Module) -> dict[str, Any]:
        # Training state, not a weight: a DyMN saved mid-schedule (or at its end, 1.0) must be
        # evaluated at that temperature, not at the T_max its config starts from.
        return {CHECKPOINT_TEMPERATURE_KEY: float(model.temperature)}

    def start_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {CHECKPOINT_TEMPERATURE_KEY: model.update_temperature(epoch)}  # anneal the attention temperature

    def export_form(self, model: nn.Module) -> nn.Module:
        return export_form(model)


FAMILY = DyMNFamily()
