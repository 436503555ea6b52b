"""Inference copies of models: the same function, computed faster.

:func:`fold_batchnorm` fuses every eval-mode BatchNorm2d that directly follows a Conv2d inside an
``nn.Sequential`` (the convolution-norm-activation blocks of the students) into the convolution's
weights and bias: ``bn(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` and
``b' = (b - m) * g / sqrt(v + eps) + beta`` per output channel, one pass over the activations instead
of two. Only Sequential containers are rewritten, because there the order of the children is the
order of the computation, plus blocks that fold their own norms (``fold_batchnorm_``: DyMN's
dynamic convolutions, whose candidate kernels each take the norm's scale, as the mixed kernel is
linear in them). :func:`inference_copy` adds the channels-last memory layout, which the
CPU convolution kernels (oneDNN) prefer.

The copies are for inference only (no training: BatchNorm statistics are frozen into the weights)
and leave the original model untouched. Their outputs equal the original's within float rounding
(tests/test_inference_fast_path.py: max relative logit error, measured on mn10, stated there).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm", "inference_copy", "count_foldable_batchnorms"]


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


def inference_copy(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy for fast inference: BatchNorm folded and/or channels-last weights."""
    fast = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    for parameter in fast.parameters():
        parameter.requires_grad_(False)
    return fast
