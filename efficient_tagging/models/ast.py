"""AST, the Audio Spectrogram Transformer (Gong, Chung & Glass, Interspeech 2021).

A re-implementation that is checkpoint- and numerically compatible with the reference
``ASTModel`` of ``YuanGongND/ast`` (``src/models/ast_models.py``):

* the same constructor arguments and defaults, the same module names and state-dict keys
  (``v.cls_token``, ``v.pos_embed``, ``v.dist_token``, ``v.patch_embed.proj.*``,
  ``v.blocks.N.*``, ``v.norm.*``, the unused ImageNet heads ``v.head*`` and
  ``mlp_head.0/1.*``), so the official ``audioset_*.pth`` files load with ``strict=True``
  once their DataParallel ``module.`` prefix is stripped (:func:`load_official_checkpoint`);
* the same forward pass: input ``(B, T, F)`` is turned into a one-channel image with
  frequency as height, cut into 16x16 patches with stride ``(fstride, tstride)``
  (tokens in frequency-major order), prefixed with a cls and a distillation token, run
  through 12 pre-norm ViT blocks (LayerNorm eps 1e-6, exact GELU, qkv with bias), and the
  mean of the two prefix-token outputs goes through ``mlp_head`` (LayerNorm with the torch
  default eps 1e-5, then Linear). ``forward`` returns raw logits; apply ``sigmoid`` for
  AudioSet-style multi-label scores.
* the same weight-adaptation rules, as pure functions: :func:`adapt_imagenet_patch_embedding`,
  :func:`adapt_imagenet_pos_embed` and :func:`adapt_audioset_pos_embed`.

Differences from the reference (none changes results in float32 on CPU):

* Attention uses ``torch.nn.functional.scaled_dot_product_attention`` (differences of
  about 1e-6 in the logits against the explicit softmax).
* ``forward`` is not wrapped in ``torch.cuda.amp.autocast`` (the reference always runs in
  float16 autocast on CUDA); use ``torch.autocast`` yourself where you want it.
* Nothing is printed: ``verbose=True`` (the reference default) logs the summary through
  :mod:`logging` at INFO level.
* Pretrained weights are never fetched behind the caller's back from fixed relative
  paths: ImageNet (DeiT) weights come from an ``imagenet_state_dict`` argument or the DeiT
  release file (:data:`DEIT_CHECKPOINT_URLS`, the file timm's ``fb_in1k`` weights come from)
  fetched into the project's download cache; the AudioSet checkpoint from an
  ``audioset_state_dict`` argument (a state dict, a file path or a URL) or the same cache.
  Nothing goes through timm's or Hugging Face's hub. Offline, the error comes at once and
  says which file to download, where to put it, and what to pass instead.
* ``audioset_pretrain=True`` with a stride other than 10 is rejected in the constructor;
  the reference accepts it and then fails in ``forward`` (its loaded patch conv keeps
  stride 10 while the position embedding is sized for the requested strides).
* The input shape is checked in ``forward`` with an error that names the shapes.

:class:`ASTTagger` is the same model (same keys, same weights) with this project's
tagger interface: ``forward`` takes a ``(B, 1, F, T)`` spectrogram and returns
``(logits, embedding)``, as the trainer expects. Pair it with
:class:`efficient_tagging.frontends.ASTFbank` (``layout="b1ft"``), which produces the
reference's Kaldi fbank features.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .family import ModelFamily, PretrainedEntry
from .layers import TokenMlp, mean_over_windows, sliding_window_starts

logger = logging.getLogger(__name__)

PATCH_SIZE = 16
NUM_PREFIX_TOKENS = 2  # cls + distillation token

# The official AudioSet checkpoint the reference constructor loads for audioset_pretrain=True
# (its code downloads this URL and stores it under the name below).
AUDIOSET_CHECKPOINT_URL = "https://www.dropbox.com/s/cv4knew8mvbrnvq/audioset_0.4593.pth?dl=1"
AUDIOSET_CHECKPOINT_FILENAME = "audioset_10_10_0.4593.pth"
# Patch grid (frequency, time) of that checkpoint: 128 mel bins x 1024 frames at stride 10.
AUDIOSET_CHECKPOINT_GRID = (12, 101)

# The DeiT-distilled ImageNet release files (facebookresearch/deit; the URLs timm's `.fb_in1k`
# weights name) the ImageNet initialisation starts from, by timm model name. Each holds
# {"model": state_dict} in timm's DeiT layout; cached under the URL's file name.
_DEIT_RELEASE = "https://dl.fbaipublicfiles.com/deit/"
DEIT_CHECKPOINT_URLS: dict[str, str] = {
    "deit_tiny_distilled_patch16_224": _DEIT_RELEASE + "deit_tiny_distilled_patch16_224-b40b3cf7.pth",
    "deit_small_distilled_patch16_224": _DEIT_RELEASE + "deit_small_distilled_patch16_224-649709d9.pth",
    "deit_base_distilled_patch16_224": _DEIT_RELEASE + "deit_base_distilled_patch16_224-df68dfff.pth",
    "deit_base_distilled_patch16_384": _DEIT_RELEASE + "deit_base_distilled_patch16_384-d0272ac0.pth",
}

StateDictSource = Union[Mapping[str, Tensor], str, os.PathLike]


@dataclass(frozen=True)
class ASTSize:
    """Layer sizes of one ``model_size`` and the DeiT model its ImageNet weights come from."""

    embed_dim: int
    num_heads: int
    depth: int
    deit_grid: int  # side of the DeiT position grid (224 / 16 = 14, 384 / 16 = 24)
    timm_name: str  # timm >= 1.0 model name
    reference_timm_name: str  # the timm 0.4.5 name the reference uses

    @property
    def mlp_hidden(self) -> int:
        return 4 * self.embed_dim


MODEL_SIZES: dict[str, ASTSize] = {
    "tiny224": ASTSize(192, 3, 12, 14, "deit_tiny_distilled_patch16_224", "vit_deit_tiny_distilled_patch16_224"),
    "small224": ASTSize(384, 6, 12, 14, "deit_small_distilled_patch16_224", "vit_deit_small_distilled_patch16_224"),
    "base224": ASTSize(768, 12, 12, 14, "deit_base_distilled_patch16_224", "vit_deit_base_distilled_patch16_224"),
    "base384": ASTSize(768, 12, 12, 24, "deit_base_distilled_patch16_384", "vit_deit_base_distilled_patch16_384"),
}

# Official release files (YuanGongND/ast README) and the constructor arguments they were trained with.
_AS = dict(label_dim=527, input_fdim=128, input_tdim=1024, model_size="base384")
OFFICIAL_CHECKPOINTS: dict[str, dict[str, Any]] = {
    "audioset_10_10_0.4593": dict(url="https://www.dropbox.com/s/ca0b1v2nlxzyeb4/audioset_10_10_0.4593.pth?dl=1",
                                  config=dict(_AS, fstride=10, tstride=10)),
    "audioset_10_10_0.4495": dict(url="https://www.dropbox.com/s/1tv0hovue1bxupk/audioset_10_10_0.4495.pth?dl=1",
                                  config=dict(_AS, fstride=10, tstride=10)),
    "audioset_10_10_0.4483": dict(url="https://www.dropbox.com/s/6u5sikl4b9wo4u5/audioset_10_10_0.4483.pth?dl=1",
                                  config=dict(_AS, fstride=10, tstride=10)),
    "audioset_10_10_0.4475": dict(url="https://www.dropbox.com/s/kt6i0v9fvfm1mbq/audioset_10_10_0.4475.pth?dl=1",
                                  config=dict(_AS, fstride=10, tstride=10)),
    "audioset_12_12_0.4467": dict(url="https://www.dropbox.com/s/snfhx3tizr4nuc8/audioset_12_12_0.4467.pth?dl=1",
                                  config=dict(_AS, fstride=12, tstride=12)),
    "audioset_14_14_0.4431": dict(url="https://www.dropbox.com/s/z18s6pemtnxm4k7/audioset_14_14_0.4431.pth?dl=1",
                                  config=dict(_AS, fstride=14, tstride=14)),
    "audioset_16_16_0.4422": dict(url="https://www.dropbox.com/s/mdsa4t1xmcimia6/audioset_16_16_0.4422.pth?dl=1",
                                  config=dict(_AS, fstride=16, tstride=16)),
    "speechcommands_10_10_0.9812": dict(
        url="https://www.dropbox.com/s/q0tbqpwv44pquwy/speechcommands_10_10_0.9812.pth?dl=1",
        config=dict(label_dim=35, input_fdim=128, input_tdim=128, model_size="base384", fstride=10, tstride=10)),
}


# --------------------------------------------------------------------------------------
# Shapes and weight-adaptation rules (pure functions)
# --------------------------------------------------------------------------------------
def patch_grid(fstride: int, tstride: int, input_fdim: int, input_tdim: int) -> tuple[int, int]:
    """``(f, t)``: patches along frequency and time of a 16x16 conv with stride (fstride, tstride).

    Frames beyond the last full window are dropped (no padding), as in the reference.
    """
    for name, value in (("fstride", fstride), ("tstride", tstride), ("input_fdim", input_fdim),
                        ("input_tdim", input_tdim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if input_fdim < PATCH_SIZE or input_tdim < PATCH_SIZE:
        raise ValueError(f"the input must be at least {PATCH_SIZE}x{PATCH_SIZE} (one patch), got "
                         f"input_fdim={input_fdim}, input_tdim={input_tdim}")
    return (input_fdim - PATCH_SIZE) // fstride + 1, (input_tdim - PATCH_SIZE) // tstride + 1


def _split_pos_embed(pos_embed: Tensor, grid: Optional[tuple[int, int]], what: str) -> tuple[Tensor, Tensor]:
    """``(prefix rows (1, 2, D), grid (1, D, h, w))`` of a ``(1, 2 + h*w, D)`` position embedding."""
    if not isinstance(pos_embed, Tensor) or pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        shape = tuple(pos_embed.shape) if isinstance(pos_embed, Tensor) else type(pos_embed).__name__
        raise ValueError(f"{what} must have shape (1, 2 + h*w, D), got {shape}")
    num_patches = pos_embed.shape[1] - NUM_PREFIX_TOKENS
    if grid is None:
        side = math.isqrt(max(num_patches, 0))
        if num_patches < 1 or side * side != num_patches:
            raise ValueError(f"{what} of shape {tuple(pos_embed.shape)} has {num_patches} patch rows after the "
                             f"2 prefix rows, which is not a square grid")
        grid = (side, side)
    elif num_patches != grid[0] * grid[1]:
        raise ValueError(f"{what} of shape {tuple(pos_embed.shape)} does not hold 2 + {grid[0]}x{grid[1]} rows")
    dim = pos_embed.shape[2]
    prefix = pos_embed[:, :NUM_PREFIX_TOKENS]
    patches = pos_embed[:, NUM_PREFIX_TOKENS:].transpose(1, 2).reshape(1, dim, grid[0], grid[1])
    return prefix, patches


def _fit_axis(grid: Tensor, axis: int, size: int, cut: bool) -> Tensor:
    """Cut ``size`` rows/columns from the middle of ``grid`` along ``axis`` (2 = frequency, 3 = time),
    or bilinearly resize that axis to ``size`` (align_corners=False) keeping the other one."""
    if cut:
        start = grid.shape[axis] // 2 - size // 2
        return grid.narrow(axis, start, size)
    target = [grid.shape[2], grid.shape[3]]
    target[axis - 2] = size
    return F.interpolate(grid, size=tuple(target), mode="bilinear", align_corners=False)


def _join_pos_embed(prefix: Tensor, grid: Tensor) -> Tensor:
    """Flatten a ``(1, D, f, t)`` grid frequency-major and put the prefix rows in front."""
    dim, f, t = grid.shape[1:]
    return torch.cat([prefix, grid.reshape(1, dim, f * t).transpose(1, 2)], dim=1)


def adapt_imagenet_patch_embedding(weight: Tensor, bias: Optional[Tensor] = None
                                   ) -> tuple[Tensor, Optional[Tensor]]:
    """DeiT RGB patch conv ``(D, 3, 16, 16)`` -> AST one-channel conv ``(D, 1, 16, 16)``.

    The input channels are summed (a grey image fed to all three channels gives the same
    response); the bias is copied unchanged. The new stride is set by the model, not here.
    """
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"patch weight must have shape (D, C, 16, 16), got {shape}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"patch bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    new_bias = bias.detach().clone() if bias is not None else None
    return weight.detach().sum(dim=1, keepdim=True), new_bias


def adapt_imagenet_pos_embed(deit_pos_embed: Tensor, grid_f: int, grid_t: int) -> Tensor:
    """DeiT position embedding ``(1, 2 + hw*hw, D)`` -> AST ``(1, 2 + grid_f*grid_t, D)``.

    The patch rows form an ``hw x hw`` grid (rows = image height = frequency). The time axis
    is handled first: ``grid_t <= hw`` keeps the middle columns ``[hw//2 - grid_t//2, ... + grid_t)``,
    otherwise the grid is bilinearly resized to ``(hw, grid_t)``. Then frequency the same
    way (``<=``: middle rows; otherwise resize to ``(grid_f, grid_t)``). The cls and
    distillation rows are kept unchanged in front.
    """
    prefix, grid = _split_pos_embed(deit_pos_embed.detach(), None, "deit_pos_embed")
    hw = grid.shape[2]
    grid = _fit_axis(grid, 3, grid_t, cut=grid_t <= hw)
    grid = _fit_axis(grid, 2, grid_f, cut=grid_f <= hw)
    return _join_pos_embed(prefix, grid)


def adapt_audioset_pos_embed(checkpoint_pos_embed: Tensor, grid_f: int, grid_t: int,
                             checkpoint_grid: tuple[int, int] = AUDIOSET_CHECKPOINT_GRID) -> Tensor:
    """AudioSet checkpoint position embedding ``(1, 2 + 12*101, D)`` -> ``(1, 2 + grid_f*grid_t, D)``.

    Time first: ``grid_t < 101`` keeps the middle columns ``[50 - grid_t//2, ... + grid_t)``,
    otherwise bilinear resize to ``(12, grid_t)`` (an exact identity at 101). Then frequency:
    ``grid_f < 12`` keeps the middle rows ``[6 - grid_f//2, ... + grid_f)``, ``grid_f > 12``
    resizes to ``(grid_f, grid_t)``, 12 is left alone. Note the strict ``<`` here against the
    ``<=`` of :func:`adapt_imagenet_pos_embed`; at equality both are the identity.
    """
    prefix, grid = _split_pos_embed(checkpoint_pos_embed.detach(), tuple(checkpoint_grid), "checkpoint_pos_embed")
    source_f, source_t = checkpoint_grid
    grid = _fit_axis(grid, 3, grid_t, cut=grid_t < source_t)
    if grid_f != source_f:
        grid = _fit_axis(grid, 2, grid_f, cut=grid_f < source_f)
    return _join_pos_embed(prefix, grid)


def strip_module_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``module.`` prefix that ``nn.DataParallel`` training leaves on every key."""
    return {(key[len("module."):] if key.startswith("module.") else key): value for key, value in state_dict.items()}


def _read_state_dict(source: StateDictSource, what: str, default_filename: Optional[str] = None,
                     argument: str = "the state dict", cache: Union[str, os.PathLike, None] = None,
                     alternatives: str = "") -> dict[str, Tensor]:
    """A state dict given as a mapping, a local file or an https/file URL (downloaded into the cache)."""
    if isinstance(source, Mapping):
        return dict(source)
    text = os.fspath(source)
    downloaded = "://" in text
    if downloaded:
        from ..hub import DownloadError, cached_file  # late: tests replace hub.cached_file
        try:
            path = cached_file(text, default_filename, cache=cache, progress=False)
        except DownloadError as error:
            raise DownloadError(f"{error}\nAlternatively pass {argument} yourself: a state dict or a local "
                                f"file path of the {what} checkpoint{alternatives}.") from error
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{what} checkpoint not found: {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged or non-torch files
        advice = f"; it is the cached download of {text}: delete {path} and run again to download it again" \
            if downloaded else ""
        raise ValueError(f"{path}: not a readable PyTorch checkpoint of the {what} weights "
                         f"({type(error).__name__}: {error}){advice}") from error
    for wrapper in ("state_dict", "model"):  # this project's checkpoint files; the DeiT release files
        if isinstance(content, Mapping) and isinstance(content.get(wrapper), Mapping):
            content = content[wrapper]
            break
    if not isinstance(content, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(content).__name__})")
    return dict(content)


# --------------------------------------------------------------------------------------
# Layers (key names as timm 0.4.5's DeiT, which the reference wraps as `v`)
# --------------------------------------------------------------------------------------
class ASTPatchEmbed(nn.Module):
    """``proj``: Conv2d(1, D, 16x16, stride (fstride, tstride)); output ``(B, f*t, D)`` frequency-major."""

    def __init__(self, embed_dim: int, fstride: int, tstride: int, num_patches: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=(PATCH_SIZE, PATCH_SIZE), stride=(fstride, tstride))
        self.num_patches = num_patches

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (q, k, v blocks of D features each,
    head-major inside), softmax scale ``head_dim ** -0.5``, no mask."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = TokenMlp(dim, hidden_features=mlp_hidden, act_layer=nn.GELU)  # exact (erf) GELU

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DistilledViT(nn.Module):
    """The reference's ``v``: a DeiT-distilled ViT whose patch conv and position grid fit the spectrogram.

    Parameter registration order reproduces the reference state-dict order
    (cls_token, pos_embed, dist_token, patch_embed, blocks, norm, head, head_dist).
    ``head`` / ``head_dist`` are DeiT's 1000-class ImageNet heads: kept for checkpoint
    compatibility, never used.
    """

    def __init__(self, size: ASTSize, fstride: int, tstride: int, grid: tuple[int, int]) -> None:
        super().__init__()
        dim = size.embed_dim
        num_patches = grid[0] * grid[1]
        self.grid = grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + NUM_PREFIX_TOKENS, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embed = ASTPatchEmbed(dim, fstride, tstride, num_patches)
        self.pos_drop = nn.Identity()  # dropout p=0 in the reference
        self.blocks = nn.ModuleList([Block(dim, size.num_heads, size.mlp_hidden) for _ in range(size.depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 1000)
        self.head_dist = nn.Linear(dim, 1000)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's fresh init: timm ViT init (truncated normal std 0.02 for tokens, position
        embedding and Linear weights, zero biases, identity LayerNorms) and PyTorch's default
        init for the new patch conv."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.patch_embed.proj.reset_parameters()
        for token in (self.cls_token, self.dist_token, self.pos_embed):
            nn.init.trunc_normal_(token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1, F, T)`` image -> final-norm token outputs ``(B, 2 + f*t, D)``."""
        b = x.shape[0]
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.dist_token.expand(b, -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------
class ASTModel(nn.Module):
    """Audio Spectrogram Transformer with the reference's interface.

    Args (names and defaults of the reference):
        label_dim: number of classes (527 AudioSet, 50 ESC-50, 35 Speech Commands).
        fstride, tstride: patch stride along frequency / time (16 = no overlap, 10 = overlap 6).
        input_fdim, input_tdim: mel bins and frames of the input, e.g. 128 x 1024 (10.24 s).
        imagenet_pretrain: initialise from the DeiT ImageNet model of ``model_size``
            (patch conv summed over RGB, position embedding cut/interpolated to the patch
            grid). The weights come from ``imagenet_state_dict`` or, when that is None, from
            the DeiT release file of :data:`DEIT_CHECKPOINT_URLS`, downloaded once into the
            project cache (:func:`efficient_tagging.hub.cached_file`, ``cache_dir``); offline
            with no cached copy the error names the URL and the cache path.
        audioset_pretrain: initialise the transformer from the official AudioSet checkpoint
            (base384, stride 10 only; needs ``imagenet_pretrain=True`` like the reference;
            ``mlp_head`` is new). The checkpoint comes from ``audioset_state_dict`` (a state
            dict, a local path or a URL) or is downloaded into the project cache
            (:func:`efficient_tagging.hub.cached_file`, file ``audioset_10_10_0.4593.pth``).
        model_size: ``tiny224``, ``small224``, ``base224`` or ``base384``.
        verbose: log a summary (INFO level of this module's logger); never prints.
        imagenet_state_dict: DeiT-distilled state dict in timm layout (``cls_token``,
            ``pos_embed``, ``dist_token``, ``patch_embed.proj.*``, ``blocks.*``, ``norm.*``,
            ``head*``), used when ``imagenet_pretrain=True``.
        audioset_state_dict: official AudioSet checkpoint (with or without ``module.``),
            used when ``audioset_pretrain=True``.
        cache_dir: download cache for the DeiT / AudioSet files (default:
            :func:`efficient_tagging.hub.cache_dir`).

    ``forward(x)``: ``x`` is ``(B, T, F)`` = (batch, frames, mel bins), as produced by
    :class:`efficient_tagging.frontends.ASTFbank`; returns raw logits ``(B, label_dim)``.
    ``forward_features(x)``: the pooled embedding ``(B, D)`` (mean of the final-norm cls and
    distillation tokens), the input of ``mlp_head``.
    """

    def __init__(self, label_dim: int = 527, fstride: int = 10, tstride: int = 10, input_fdim: int = 128,
                 input_tdim: int = 1024, imagenet_pretrain: bool = True, audioset_pretrain: bool = False,
                 model_size: str = "base384", verbose: bool = True, *,
                 imagenet_state_dict: Optional[StateDictSource] = None,
                 audioset_state_dict: Optional[StateDictSource] = None,
                 cache_dir: Union[str, os.PathLike, None] = None) -> None:
        super().__init__()
        if model_size not in MODEL_SIZES:
            raise ValueError(f"model_size must be one of {', '.join(MODEL_SIZES)}, got {model_size!r}")
        if isinstance(label_dim, bool) or not isinstance(label_dim, int) or label_dim < 1:
            raise ValueError(f"label_dim must be a positive int, got {label_dim!r}")
        grid = patch_grid(fstride, tstride, input_fdim, input_tdim)
        if audioset_pretrain:
            if not imagenet_pretrain:
                raise ValueError("a model pretrained on AudioSet only is not available: use imagenet_pretrain=True "
                                 "with audioset_pretrain=True (the official checkpoint was ImageNet-initialised)")
            if model_size != "base384":
                raise ValueError(f"the AudioSet-pretrained checkpoint is base384, got model_size={model_size!r}")
            if (fstride, tstride) != (10, 10):
                raise ValueError(f"audioset_pretrain=True needs fstride=tstride=10 (the checkpoint's patch conv has "
                                 f"stride 10), got fstride={fstride}, tstride={tstride}; the reference would fail "
                                 f"in forward with these strides")

        size = MODEL_SIZES[model_size]
        self.label_dim = label_dim
        self.num_classes = label_dim
        self.fstride, self.tstride = fstride, tstride
        self.input_fdim, self.input_tdim = input_fdim, input_tdim
        self.model_size = model_size
        self.embedding_dim = size.embed_dim
        self.original_embedding_dim = size.embed_dim  # reference attribute name
        self.imagenet_pretrain = bool(imagenet_pretrain)
        self.audioset_pretrain = bool(audioset_pretrain)
        self.f_dim, self.t_dim = grid
        self._cache_dir = cache_dir

        # Fetch and adapt pretrained weights before building anything (fails fast when offline).
        pretrained: Optional[dict[str, Tensor]] = None
        if audioset_pretrain:
            pretrained, source_name = self._audioset_weights(audioset_state_dict), "audioset_state_dict"
        elif imagenet_pretrain:
            pretrained, source_name = self._imagenet_weights(size, imagenet_state_dict), "imagenet_state_dict"

        self.v = DistilledViT(size, fstride, tstride, grid)
        self.mlp_head = nn.Sequential(nn.LayerNorm(size.embed_dim), nn.Linear(size.embed_dim, label_dim))
        if pretrained is not None:
            self._load_v(pretrained, source_name)

        if verbose:
            logger.info("AST %s: ImageNet pretraining %s, AudioSet pretraining %s; frequency stride %d, time stride "
                        "%d; %dx%d = %d patches for %dx%d input; %d labels", model_size, imagenet_pretrain,
                        audioset_pretrain, fstride, tstride, grid[0], grid[1], grid[0] * grid[1], input_fdim,
                        input_tdim, label_dim)

    # -- pretrained initialisation ---------------------------------------------------------
    def _imagenet_weights(self, size: ASTSize, source: Optional[StateDictSource]) -> dict[str, Tensor]:
        """The DeiT state dict adapted to this model's ``v`` (patch conv summed over RGB, pos-embed fitted)."""
        if source is None:
            if size.timm_name not in DEIT_CHECKPOINT_URLS:
                raise ValueError(f"no DeiT release file is known for {size.timm_name} (model_size="
                                 f"{self.model_size!r}): pass imagenet_state_dict=... or imagenet_pretrain=False")
            source = DEIT_CHECKPOINT_URLS[size.timm_name]
        state = _read_state_dict(
            source, f"ImageNet DeiT ({size.timm_name})", argument="ASTModel(..., imagenet_state_dict=...)",
            cache=self._cache_dir,
            alternatives=(", or build a randomly initialised model with imagenet_pretrain=False (e.g. to load a "
                          "full AST checkpoint afterwards)"))
        state = {key[2:] if key.startswith("v.") else key: value for key, value in strip_module_prefix(state).items()}
        needed = ("pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias")
        missing = [key for key in needed if key not in state]
        if missing:
            raise KeyError(f"imagenet_state_dict lacks {missing}: expected a timm DeiT-distilled state dict "
                           f"({size.timm_name})")
        deit_pos = state["pos_embed"]
        expected = (1, NUM_PREFIX_TOKENS + size.deit_grid ** 2, size.embed_dim)
        if tuple(deit_pos.shape) != expected:
            raise ValueError(f"imagenet_state_dict pos_embed has shape {tuple(deit_pos.shape)}, expected {expected} "
                             f"for {size.timm_name} (model_size={self.model_size!r})")
        weight, bias = adapt_imagenet_patch_embedding(state["patch_embed.proj.weight"], state["patch_embed.proj.bias"])
        state["patch_embed.proj.weight"], state["patch_embed.proj.bias"] = weight, bias
        state["pos_embed"] = adapt_imagenet_pos_embed(deit_pos, self.f_dim, self.t_dim)
        return state

    def _audioset_weights(self, source: Optional[StateDictSource]) -> dict[str, Tensor]:
        """The official checkpoint's ``v.*`` weights with the pos-embed fitted to this model's grid."""
        if source is None:
            source = AUDIOSET_CHECKPOINT_URL
        state = strip_module_prefix(_read_state_dict(source, "official AST AudioSet", AUDIOSET_CHECKPOINT_FILENAME,
                                                     "ASTModel(..., audioset_state_dict=...)", cache=self._cache_dir))
        state = {key[2:]: value for key, value in state.items() if key.startswith("v.")}
        if "pos_embed" not in state:
            raise KeyError("audioset_state_dict has no v.pos_embed: expected the official AST AudioSet checkpoint")
        pos = state["pos_embed"]
        expected = (1, NUM_PREFIX_TOKENS + AUDIOSET_CHECKPOINT_GRID[0] * AUDIOSET_CHECKPOINT_GRID[1], 768)
        if tuple(pos.shape) != expected:
            raise ValueError(f"audioset_state_dict v.pos_embed has shape {tuple(pos.shape)}, expected {expected} "
                             f"(base384, 128x1024 input, stride 10)")
        state["pos_embed"] = adapt_audioset_pos_embed(pos, self.f_dim, self.t_dim)
        return state

    def _load_v(self, state: dict[str, Tensor], what: str) -> None:
        expected = set(self.v.state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"{what} does not match the AST {self.model_size} transformer: missing {missing[:8]}"
                           f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                           f"{' ...' if len(unexpected) > 8 else ''}")
        with torch.no_grad():
            self.v.load_state_dict({key: value.detach() for key, value in state.items()}, strict=True)

    # -- description -----------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture without fetching pretrained weights
        (``imagenet_pretrain`` and ``audioset_pretrain`` are False: the weights come from a checkpoint)."""
        return dict(label_dim=self.label_dim, fstride=self.fstride, tstride=self.tstride,
                    input_fdim=self.input_fdim, input_tdim=self.input_tdim, imagenet_pretrain=False,
                    audioset_pretrain=False, model_size=self.model_size, verbose=False)

    @property
    def grid(self) -> tuple[int, int]:
        """``(f, t)``: the patch grid along frequency and time."""
        return self.f_dim, self.t_dim

    def get_shape(self, fstride: int, tstride: int, input_fdim: int = 128, input_tdim: int = 1024) -> tuple[int, int]:
        """Reference helper: the patch grid ``(f, t)`` (computed arithmetically, no RNG use)."""
        return patch_grid(fstride, tstride, input_fdim, input_tdim)

    def extra_repr(self) -> str:
        return (f"model_size={self.model_size!r}, label_dim={self.label_dim}, input={self.input_tdim}x"
                f"{self.input_fdim} (TxF), stride=({self.fstride}, {self.tstride}), grid={self.f_dim}x{self.t_dim}")

    # -- forward ---------------------------------------------------------------------------
    def _check_input(self, x: Tensor, layout: str = "(B, T, F)") -> None:
        if not isinstance(x, Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"AST expects input of shape {layout} = (batch, {self.input_tdim} frames, "
                             f"{self.input_fdim} mel bins), got {shape}")
        frames, bins = x.shape[1], x.shape[2]
        if bins != self.input_fdim:
            raise ValueError(f"AST was built for input_fdim={self.input_fdim} mel bins, got input of shape "
                             f"{layout} = {tuple(x.shape)} with {bins} bins")
        t = (frames - PATCH_SIZE) // self.tstride + 1 if frames >= PATCH_SIZE else 0
        if t != self.t_dim:
            raise ValueError(f"AST was built for input_tdim={self.input_tdim} frames ({self.t_dim} time patches at "
                             f"tstride {self.tstride}), got input of shape {layout} = {tuple(x.shape)} with {frames} "
                             f"frames ({t} time patches); pad or cut the input to {self.input_tdim} frames")

    def forward_tokens(self, x: Tensor) -> Tensor:
        """All final-norm token outputs ``(B, 2 + f*t, D)`` for input ``(B, T, F)``."""
        self._check_input(x)
        return self.v(x.unsqueeze(1).transpose(2, 3))

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled embedding ``(B, D)``: mean of the cls and distillation token outputs, for input ``(B, T, F)``."""
        tokens = self.forward_tokens(x)
        return (tokens[:, 0] + tokens[:, 1]) / 2

    def forward(self, x: Tensor) -> Tensor:
        """Raw logits ``(B, label_dim)`` for input ``(B, T, F)``."""
        return self.mlp_head(self.forward_features(x))


class ASTTagger(ASTModel):
    """:class:`ASTModel` with this project's tagger interface (same constructor, keys and weights).

    ``forward(spec)`` takes a ``(B, 1, F, T)`` spectrogram (the layout of the project's
    frontends; use :class:`efficient_tagging.frontends.ASTFbank` with ``layout="b1ft"``
    for the reference features) or the reference's own ``(B, T, F)`` layout (what
    ``ASTModel.forward`` and the AST fixtures take), and returns
    ``(logits (B, label_dim), embedding (B, D))`` like the students. The logits equal
    ``ASTModel.forward`` on the same features.
    """

    @classmethod
    def from_model(cls, model: ASTModel) -> "ASTTagger":
        """A tagger that shares ``model``'s parameters (no copy)."""
        with torch.device("meta"):
            tagger = cls(**model.config)
        tagger.load_state_dict(model.state_dict(keep_vars=True), strict=True, assign=True)
        tagger.imagenet_pretrain, tagger.audioset_pretrain = model.imagenet_pretrain, model.audioset_pretrain
        return tagger

    def to_time_major(self, spec: Tensor) -> Tensor:
        """``(B, 1, F, T)`` -> the reference layout ``(B, T, F)`` (a view); ``(B, T, F)`` passes as is."""
        if isinstance(spec, Tensor) and spec.dim() == 3:
            if spec.shape[2] != self.input_fdim:
                raise ValueError(f"ASTTagger was built for input_fdim={self.input_fdim} mel bins, got a rank-3 input "
                                 f"(the reference layout (B, T, F)) of shape {tuple(spec.shape)}")
            return spec
        if not isinstance(spec, Tensor) or spec.dim() != 4 or spec.shape[1] != 1:
            shape = tuple(spec.shape) if isinstance(spec, Tensor) else type(spec).__name__
            raise ValueError(f"ASTTagger expects a spectrogram of shape (B, 1, F, T) = (batch, 1, "
                             f"{self.input_fdim} mel bins, {self.input_tdim} frames), or the reference layout "
                             f"(B, T, F), got {shape}")
        if spec.shape[2] != self.input_fdim:
            raise ValueError(f"ASTTagger was built for input_fdim={self.input_fdim} mel bins, got a spectrogram of "
                             f"shape (B, 1, F, T) = {tuple(spec.shape)}")
        return spec[:, 0].transpose(1, 2)

    def forward_features(self, spec: Tensor) -> Tensor:
        """Pooled embedding ``(B, D)`` for a ``(B, 1, F, T)`` spectrogram or a reference-layout ``(B, T, F)`` input."""
        x = self.to_time_major(spec)
        try:
            return super().forward_features(x)
        except ValueError as error:
            raise ValueError(f"{error} (ASTTagger input of shape {tuple(spec.shape)})") from None

    def forward_head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, embedding)`` from :meth:`forward_features`."""
        return self.mlp_head(features), features

    def forward(self, spec: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """``(logits, embedding)`` for a ``(B, 1, F, T)`` spectrogram or a reference-layout ``(B, T, F)`` input."""
        return self.forward_head(self.forward_features(spec))

    # ----------------------------------------------------------------------------------
    # long inputs: the positional embeddings fix the input length, so longer clips are tagged
    # as the mean over full-length windows
    # ----------------------------------------------------------------------------------
    @property
    def window_frames(self) -> int:
        """The input length the model was built for (``input_tdim``): the sliding window."""
        return int(self.input_tdim)

    def needs_sliding_windows(self, frames: int) -> bool:
        return frames > self.input_tdim

    def window_starts(self, frames: int, hop_frames: Optional[int] = None) -> list[int]:
        """First frame of every window :meth:`sliding_window_forward` uses for ``frames`` frames."""
        hop = max(1, self.input_tdim // 4) if hop_frames is None else int(hop_frames)
        return sliding_window_starts(frames, self.input_tdim, hop)

    def sliding_window_forward(self, spec: Tensor, hop_frames: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """``(logits, embedding)`` of a ``(B, 1, F, T)`` spectrogram with ``T >= input_tdim`` frames.

        Windows are ``input_tdim`` frames long (the length the positional embeddings were
        made for; 10.24 s for the AudioSet checkpoints), start every ``hop_frames`` (default
        a quarter window) plus one window ending at the last frame, and the logits (before any
        sigmoid) and embeddings are averaged over them, the rule PaSST's sliding windows use.
        Shorter inputs must be padded to ``input_tdim`` first, as the fbank frontend does
        (the reference pads before normalisation, so the model cannot do it).
        """
        self.to_time_major(spec)  # validates the shape
        if spec.shape[-1] < self.input_tdim:
            raise ValueError(f"ASTTagger.sliding_window_forward needs at least input_tdim={self.input_tdim} frames "
                             f"(pad short clips in the frontend: ASTFbank(target_length={self.input_tdim})), got "
                             f"shape {tuple(spec.shape)}")
        starts = self.window_starts(spec.shape[-1], hop_frames)
        return mean_over_windows(self, spec, starts, self.input_tdim)


def load_official_checkpoint(source: StateDictSource, cls: type = ASTModel, **config: Any) -> ASTModel:
    """Build an AST from an official full checkpoint (e.g. ``audioset_10_10_0.4593.pth``) and load it strictly.

    ``source``: a state dict, a local path, a URL, or a name in :data:`OFFICIAL_CHECKPOINTS`
    (downloaded into the project cache). ``config`` overrides the constructor arguments
    (default: the named checkpoint's, else base384 / 527 labels / 128x1024 / stride 10);
    the pretrained flags are always off since the checkpoint holds every weight.
    """
    defaults: dict[str, Any] = dict(label_dim=527, fstride=10, tstride=10, input_fdim=128, input_tdim=1024,
                                    model_size="base384")
    filename = None
    if isinstance(source, str) and source in OFFICIAL_CHECKPOINTS:
        entry = OFFICIAL_CHECKPOINTS[source]
        defaults.update(entry["config"])
        filename = source + ".pth"
        source = entry["url"]
    defaults.update(config)
    defaults.update(imagenet_pretrain=False, audioset_pretrain=False)
    defaults.setdefault("verbose", False)
    state = strip_module_prefix(_read_state_dict(source, "AST", filename, "load_official_checkpoint(source=...)"))
    model = cls(**defaults)
    own = model.state_dict()
    mismatched = [f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
                  for key, value in state.items() if key in own and tuple(own[key].shape) != tuple(value.shape)]
    if mismatched:
        raise ValueError("the checkpoint does not fit an AST built with " +
                         ", ".join(f"{k}={v!r}" for k, v in defaults.items() if k != "verbose") +
                         ": " + "; ".join(mismatched[:4]))
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------------------
# the family: the official AST AudioSet checkpoints, AST's fbank settings, weight-less shapes
# --------------------------------------------------------------------------------------
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
_AST_RELEASES = (("audioset_10_10_0.4593", "ca0b1v2nlxzyeb4", 10),
                 ("audioset_10_10_0.4495", "1tv0hovue1bxupk", 10),
                 ("audioset_10_10_0.4483", "6u5sikl4b9wo4u5", 10),
                 ("audioset_10_10_0.4475", "kt6i0v9fvfm1mbq", 10),
                 ("audioset_12_12_0.4467", "snfhx3tizr4nuc8", 12),
                 ("audioset_14_14_0.4431", "z18s6pemtnxm4k7", 14),
                 ("audioset_16_16_0.4422", "mdsa4t1xmcimia6", 16))


class ASTFamily(ModelFamily):
    name = "ast"
    model_class = ASTTagger
    class_count_key = "label_dim"
    is_teacher = True
    plot_style = ("D", "tab:purple", "AST (teacher)")

    def token_info(self, model: nn.Module, input_shape: Sequence[int]) -> Optional[dict[str, Any]]:
        # its fixed patch grid (the fbank cuts / pads the input to input_tdim) plus cls and distillation tokens
        grid_f, grid_t = model.grid
        return {"tokens": grid_f * grid_t + 2, "grid": [grid_f, grid_t], "prefix_tokens": 2}

    def catalogue(self) -> list[PretrainedEntry]:
        return [PretrainedEntry(
            name=f"ast_{checkpoint}", arch="ast", filename=f"{checkpoint}.pth", config=ast_config(stride, stride),
            preprocessing=dict(AST_PREPROCESSING), dataset="audioset",
            published_map=float(checkpoint.rsplit("_", 1)[1]),
            url=f"https://www.dropbox.com/s/{dropbox_id}/{checkpoint}.pth?dl=1",
            description=f"AST base384, stride {stride}x{stride}, AudioSet (official checkpoint) -- transformer teacher")
            for checkpoint, dropbox_id, stride in _AST_RELEASES]

    def presets(self) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        return {f"ast_{size}": (ast_config(model_size=size), dict(AST_PREPROCESSING))
                for size in ("base384", "base224", "small224", "tiny224")}

    def fresh_config(self, config: dict[str, Any], cache_dir: Any) -> dict[str, Any]:
        if cache_dir is not None:  # the ImageNet init downloads DeiT weights into the same cache
            config = {**config}
            config.setdefault("cache_dir", cache_dir)
        return config

    def shapes_only_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "imagenet_pretrain": False}  # no DeiT download

    def input_config(self, *, num_classes: int, n_mels: int, frames: int,
                     shape: dict[str, Any]) -> dict[str, Any]:
        return dict(label_dim=num_classes, input_fdim=n_mels, input_tdim=frames, imagenet_pretrain=False,
                    audioset_pretrain=False)


FAMILY = ASTFamily()
