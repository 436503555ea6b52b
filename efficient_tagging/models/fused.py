"""Inference copies of models: the same function, computed faster.

:func:`fold_batchnorm` fuses every eval-mode BatchNorm2d that directly follows a Conv2d inside an
``nn.Sequential`` (the convolution-norm-activation blocks of the students) into the convolution's
weights and bias: ``bn(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` and
``b' = (b - m) * g / sqrt(v + eps) + beta`` per output channel, one pass over the activations instead
of two. Only Sequential containers are rewritten, because there the order of the children is the
order of the computation, plus blocks that fold their own norms (``fold_batchnorm_``: DyMN's
dynamic convolutions, whose candidate kernels each take the norm's scale, as the mixed kernel is
linear in them). :func:`inference_copy` adds the channels-last memory layout, which the
CPU convolution kernels (oneDNN) prefer, and, on a CPU with oneDNN in float32, :func:`fuse_pointwise`:
each convolution becomes one oneDNN primitive with its activation (ReLU, Hardswish) and, in the
residual blocks, the skip addition as post-ops, its weights reordered once into oneDNN's blocked
layout instead of on every call (the "prepacked weights" of TorchScript's freezing and inductor,
through the same `torch.ops.mkldnn._convolution_pointwise` kernels inductor's CPU backend emits).

The copies are for inference only (no training: BatchNorm statistics are frozen into the weights)
and leave the original model untouched. Their outputs equal the original's within float rounding
(tests/test_inference_fast_path.py: max relative logit error, measured on mn10, stated there).
"""
from __future__ import annotations

import copy
import functools
import logging
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .mobilenet import InvertedResidual

__all__ = ["fold_batchnorm", "inference_copy", "count_foldable_batchnorms", "fuse_pointwise",
           "pointwise_fusion_available", "OneDnnConv2d"]

logger = logging.getLogger(__name__)

# activation module -> oneDNN post-op name (the names inductor's CPU fusion passes use)
_POST_OPS = {nn.ReLU: "relu", nn.Hardswish: "hardswish"}


def _foldable_pairs(model: nn.Module) -> list[tuple[nn.Sequential, str, str]]:
    pairs = []
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if (isinstance(conv, nn.Conv2d) and type(norm) is nn.BatchNorm2d and norm.track_running_stats
                    and norm.running_mean is not None and conv.out_channels == norm.num_features):
                pairs.append((module, first, second))
    return pairs


def count_foldable_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm2d layers :func:`fold_batchnorm` fuses: those after a Conv2d in a Sequential,
    plus those a block folds itself (`fold_batchnorm_`, e.g. DyMN's dynamic convolutions)."""
    own = sum(1 for module in model.modules() if callable(getattr(module, "fold_batchnorm_", None))
              for name in ("exp_norm", "depth_norm", "proj_norm", "context_gen")
              if type(getattr(module, name, None)) is nn.BatchNorm2d
              or type(getattr(getattr(module, name, None), "joint_norm", None)) is nn.BatchNorm2d)
    return len(_foldable_pairs(model)) + own


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each Conv2d -> BatchNorm2d pair (in a Sequential) fused."""
    folded = copy.deepcopy(model).eval()
    for container, conv_name, norm_name in _foldable_pairs(folded):
        conv, norm = container._modules[conv_name], container._modules[norm_name]
        container._modules[conv_name] = fuse_conv_bn_eval(conv, norm)
        container._modules[norm_name] = nn.Identity()
    for module in list(folded.modules()):  # families whose blocks know their own order (DyMN)
        fold = getattr(module, "fold_batchnorm_", None)
        if callable(fold):
            fold()
    return folded


def _convolution_pointwise(x: Tensor, weight: Tensor, bias: Optional[Tensor], conv: "OneDnnConv2d",
                           residual: Optional[Tensor]) -> Tensor:
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, conv.padding, conv.stride, conv.dilation,
                                                       conv.groups, conv.post_op, [], "")
    # "add" (out of place), not "sum", which accumulates into the residual's own buffer
    return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, weight, bias, conv.padding, conv.stride,
                                                          conv.dilation, conv.groups, "add", None,
                                                          None if conv.post_op == "none" else conv.post_op, [], "")


class OneDnnConv2d(nn.Module):
    """An eval-only Conv2d (+ activation, + residual addition) computed by one oneDNN primitive.

    The weights are reordered into oneDNN's blocked layout at the first call, for that call's input
    shape (like inductor's freezing, which packs for the example shape); inputs of other shapes stay
    exact, oneDNN then picks its primitive for them. The packed copy is a plain attribute: not in
    ``state_dict()`` and not moved by ``.to()`` -- these modules live in inference copies, which their
    owner rebuilds when the device or weights change. The fused kernel runs for float32 CPU inputs
    without gradients; anything else (a copy cast to bfloat16 or moved to a GPU, autograd) computes
    the same function with plain ops.
    """

    def __init__(self, conv: nn.Conv2d, post_op: str = "none") -> None:
        super().__init__()
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError(f"OneDnnConv2d needs explicit zero padding, got padding={conv.padding!r}, "
                             f"padding_mode={conv.padding_mode!r}")
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.post_op = post_op
        self.weight = nn.Parameter(conv.weight.detach().contiguous(memory_format=torch.channels_last),
                                   requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self._packed: Optional[Tensor] = None
        self.train(False)  # eval-only

    def _packed_weight(self, x: Tensor) -> Tensor:
        if self._packed is None:
            self._packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.detach().to_mkldnn(), self.padding, self.stride, self.dilation, self.groups,
                list(x.shape))
        return self._packed

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                or torch.is_grad_enabled() or (residual is not None and self.post_op not in ("none", "relu"))):
            # (oneDNN fuses only ReLU after an addition; MobileNet projections have no activation)
            # e.g. a copy moved to bfloat16 or to a GPU by hand, or gradients wanted: the same function
            # from plain ops (the packed weights are float32 CPU and carry no autograd)
            return self._plain(x, residual)
        return _convolution_pointwise(x, self._packed_weight(x), self.bias, self, residual)

    def _plain(self, x: Tensor, residual: Optional[Tensor]) -> Tensor:
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            out = out + residual
        if self.post_op == "relu":
            return F.relu(out)
        if self.post_op == "hardswish":
            return F.hardswish(out)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, post_op={self.post_op!r}")


class _FusedInvertedResidual(nn.Module):
    """An InvertedResidual whose projection convolution adds the skip connection as a post-op."""

    def __init__(self, block: InvertedResidual) -> None:
        super().__init__()
        self.body = nn.Sequential(*list(block.block.children())[:-1])
        self.project = block.block[-1]
        self.out_channels, self.freq_size, self.time_size = block.out_channels, block.freq_size, block.time_size

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.body(x), residual=x)


@functools.lru_cache(maxsize=None)
def _probe_pointwise_kernels() -> bool:
    """Whether this torch build runs the fused kernels (and gives the plain convolution's result)."""
    try:
        conv = nn.Conv2d(4, 8, 3, padding=1).eval()
        fused = OneDnnConv2d(conv, "relu").eval()
        x = torch.randn(1, 4, 6, 5).contiguous(memory_format=torch.channels_last)
        other = torch.randn(1, 8, 6, 5).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ok = torch.allclose(fused(x), torch.relu(conv(x)), atol=1e-5) and torch.allclose(
                fused(x, residual=other), torch.relu(conv(x) + other), atol=1e-5)
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        logger.info("oneDNN fused convolutions unavailable (%s): plain convolutions", error)
        return False
    if not ok:
        logger.warning("oneDNN fused convolutions disagree with plain ones on this build: not used")
    return ok


def pointwise_fusion_available() -> bool:
    """True where :func:`fuse_pointwise` applies: a torch build with oneDNN that runs its fused kernels."""
    return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                and hasattr(torch.ops.mkldnn, "_convolution_pointwise") and _probe_pointwise_kernels())


def fuse_pointwise(model: nn.Module) -> int:
    """In place: each Conv2d in a Sequential, with the ReLU/Hardswish after it, becomes one
    :class:`OneDnnConv2d`; residual MobileNet blocks also fuse their skip addition. For an eval
    model with BatchNorm already folded (:func:`fold_batchnorm`). Returns the convolutions fused."""
    fused = 0
    for container in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(container._modules)
        for index, name in enumerate(names):
            conv = container._modules[name]
            if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                continue
            # the activation after the convolution, past the Identity a folded BatchNorm left
            after = index + 1
            while after < len(names) and type(container._modules[names[after]]) is nn.Identity:
                after += 1
            following = container._modules[names[after]] if after < len(names) else None
            post_op = _POST_OPS.get(type(following), "none")
            container._modules[name] = OneDnnConv2d(conv, post_op)
            if post_op != "none":
                container._modules[names[after]] = nn.Identity()
            fused += 1
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if (isinstance(child, InvertedResidual) and child.use_res_connect
                    and _fusable_projection(child.block[-1])):
                projection = child.block[-1]
                child.block[-1] = projection[0]  # the OneDnnConv2d; the rest are Identities after folding
                parent._modules[child_name] = _FusedInvertedResidual(child)
    return fused


def _fusable_projection(module: nn.Module) -> bool:
    # the projection after folding: Sequential(OneDnnConv2d (no activation), Identity)
    return (isinstance(module, nn.Sequential) and isinstance(module[0], OneDnnConv2d) and module[0].post_op == "none"
            and all(isinstance(rest, nn.Identity) for rest in list(module.children())[1:]))


def inference_copy(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True,
                   fuse: Optional[bool] = None) -> nn.Module:
    """An eval-mode copy for fast inference: BatchNorm folded, channels-last weights and, where
    `fuse` (default: float32 CPU weights and :func:`pointwise_fusion_available`), oneDNN fused
    convolutions with prepacked weights (:func:`fuse_pointwise`)."""
    fast = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    for parameter in fast.parameters():
        parameter.requires_grad_(False)
    if fuse is None:
        tensors = [*fast.parameters(), *fast.buffers()]
        fuse = (fold_bn and bool(tensors) and all(t.device.type == "cpu" for t in tensors)
                and all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
                and pointwise_fusion_available())
    if fuse:
        fuse_pointwise(fast)
    return fast
