"""PaSST: audio spectrogram transformer trained with Patchout (Koutini et al., 2021).

A re-implementation of the ``PaSST`` class of the reference repository (kkoutini/PaSST,
``models/passt.py``) that loads the official checkpoints unchanged (same state_dict keys and
shapes) and reproduces the reference outputs in eval mode.

Input and output
    ``forward(x)`` takes a log-mel batch ``(B, in_chans, F, T)`` with ``F == img_size[0]``
    and returns ``(logits, embedding)``: ``logits`` (B, num_classes) and ``embedding``
    (B, embedding_dim). With the distillation token (all released models) the embedding is
    the mean of the final-normed class and distillation tokens and the logits are
    ``head(embedding)``; ``head_dist`` is kept in the state_dict for checkpoint
    compatibility but never used (as in the reference).

Computation (eval)
    1. 16x16 patch-embedding convolution with stride ``stride`` -> ``(B, E, F', T')``.
    2. Factorised positional embeddings: ``time_new_pos_embed`` (1, E, 1, img_size[1] //
       stride_t) and ``freq_new_pos_embed`` (1, E, img_size[0] // stride_f, 1) are added.
       A shorter input (T' below the trained time grid) uses the *first* T' time
       embeddings; a longer input is cut to the trained grid (its extra patches are
       dropped, with a warning; use :meth:`PaSST.sliding_window_forward` to cover long
       inputs).
    3. Tokens in frequency-major order (index ``f * T' + t``), then the class token (and
       the distillation token), each plus its ``new_pos_embed`` entry, are prepended.
    4. Pre-norm transformer blocks (LayerNorm eps 1e-6, exact erf GELU), final LayerNorm
       (eps 1e-6), head = LayerNorm (PyTorch default eps 1e-5) + Linear.

Training
    * time positional embeddings: an input shorter than the trained grid gets a random
      offset into ``time_new_pos_embed`` (uniform over all offsets that fit);
    * structured patchout: ``s_patchout_t`` random time columns and ``s_patchout_f``
      random frequency rows of the patch grid are removed (the remaining ones keep their
      order and positional embeddings);
    * unstructured patchout: ``u_patchout`` random tokens of the flattened sequence are
      removed.
    The random draws use PyTorch's global generator in the reference's order (time
    offset, time columns, frequency rows, tokens), so a seeded run picks the same
    patches as the reference. Where the reference would fail (removing at least as many
    columns/rows/tokens as exist; structured time patchout after an over-long input was
    cut) at least one column/row/token is kept and the current (cut) sizes are used.
    Patchout is never applied in eval mode.

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention` (same scale
``head_dim ** -0.5``); set ``Attention.use_sdpa = False`` (class or instance attribute)
for the explicit softmax formulation. Each attention module exposes ``qkv`` and
``num_heads``, so :func:`efficient_tagging.complexity.count_macs` counts its matmuls.
"""
from __future__ import annotations

import math
import re
import warnings
from collections import OrderedDict
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_  # timm's trunc_normal_ is the same function

from .family import ModelFamily, PretrainedEntry
from .layers import DropPath, TokenMlp, check_spectrogram_input, mean_over_windows, sliding_window_starts

__all__ = [
    "PASST_ARCHITECTURES",
    "Attention",
    "Block",
    "PaSST",
    "PatchEmbed",
    "build_passt_from_reference_args",
]

IntPair = Union[int, Sequence[int]]

# Arch names accepted by the reference ``get_model`` -> (embed_dim, depth, num_heads).
# All are distilled ViT-B/16 style models; PaSST-L ("light") only has 7 blocks.
_PASST_S = (768, 12, 12)
PASST_ARCHITECTURES: dict[str, tuple[int, int, int]] = {
    "passt_deit_bd_p16_384": _PASST_S,
    "passt_s_kd_p16_128_ap486": _PASST_S,
    "passt_l_kd_p16_128_ap47": (768, 7, 12),
    "passt_s_swa_p16_128_ap476": _PASST_S,
    "passt_s_swa_p16_128_ap4761": _PASST_S,
    "passt_s_p16_128_ap472": _PASST_S,
    "passt_s_p16_s16_128_ap468": _PASST_S,
    "passt_s_swa_p16_s16_128_ap473": _PASST_S,
    "passt_s_swa_p16_s14_128_ap471": _PASST_S,
    "passt_s_p16_s14_128_ap469": _PASST_S,
    "passt_s_swa_p16_s12_128_ap473": _PASST_S,
    "passt_s_p16_s12_128_ap470": _PASST_S,
    "passt_s_f128_20sec_p16_s10_ap474": _PASST_S,
    "passt_s_f128_30sec_p16_s10_ap473": _PASST_S,
}
PASST_PATCH_SIZE = 16

_WEIGHT_INITS = ("", "nlhb")


def _pair(name: str, value: IntPair) -> tuple[int, int]:
    """A positive int or a 2-sequence of positive ints as an (f, t) tuple."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (frequency, time), got {value!r}")
        pair = (value[0], value[1])
    else:
        pair = (value, value)
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must contain positive integers, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _keep_sorted(n: int, drop: int) -> Tensor:
    """Sorted indices of ``n - drop`` random positions out of ``n`` (at least one kept)."""
    keep = max(1, n - drop)
    return torch.randperm(n)[:keep].sort().values


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: one Conv2d (kernel ``patch_size``, stride ``stride``).

    ``grid_size`` is the size of the positional-embedding grid, ``img_size // stride``
    per axis (as in the reference), which for the released configurations equals the
    number of patches of an ``img_size`` input.
    """

    def __init__(self, img_size: IntPair = 224, patch_size: IntPair = 16, stride: IntPair = 16, in_chans: int = 3,
                 embed_dim: int = 768, norm_layer: Optional[Callable[[int], nn.Module]] = None,
                 flatten: bool = True) -> None:
        super().__init__()
        self.img_size = _pair("img_size", img_size)
        self.patch_size = _pair("patch_size", patch_size)
        self.stride = _pair("stride", stride)
        self.grid_size = (self.img_size[0] // self.stride[0], self.img_size[1] // self.stride[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = flatten
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # (B, E, F', T') -> (B, N, E)
        return self.norm(x)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm / PaSST layout)."""

    #: use ``F.scaled_dot_product_attention``; False = explicit softmax(q k^T * scale) v
    use_sdpa: bool = True

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dimension {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        if self.use_sdpa:
            dropout = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer: Callable[..., nn.Module] = nn.GELU,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = TokenMlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _block_layer_norm(dim: int) -> nn.LayerNorm:
    """The reference's default ``norm_layer``: LayerNorm with eps 1e-6."""
    return nn.LayerNorm(dim, eps=1e-6)


class PaSST(nn.Module):
    """PaSST audio tagger (reference class ``PaSST``; see the module docstring).

    Args (reference names and defaults):
        u_patchout: tokens removed at random during training (unstructured patchout).
        s_patchout_t: time columns of the patch grid removed during training.
        s_patchout_f: frequency rows of the patch grid removed during training.
        img_size: trained input size (F, T); F must match the input, T sizes the time
            positional embeddings (``T // stride_t`` of them).
        patch_size: patch (conv kernel) size, int or (f, t).
        stride: patch stride, int or (f, t) (released models: 10, 12, 14 or 16).
        in_chans: input channels.
        num_classes: number of logits (0: ``head`` has no Linear; logits = normed features).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer size.
        representation_size: pre-logits Linear + tanh of this size (only without
            distillation, as in the reference); the embedding then has this size.
        distilled: add the DeiT distillation token and ``head_dist`` (all releases).
        drop_rate, attn_drop_rate, drop_path_rate: dropout / stochastic depth (linearly
            increasing over the blocks).
        embed_layer: patch-embedding class, called like :class:`PatchEmbed` with
            ``flatten=False`` (None: :class:`PatchEmbed`).
        norm_layer: ``norm_layer(dim)`` for the block and final norms (None: LayerNorm
            eps 1e-6).
        act_layer: MLP activation class (None: exact GELU).
        weight_init: ``''`` (reference initialisation) or ``'nlhb'`` (additionally the
            classifier biases start at ``-log(num_classes)``). The reference's ``'jax'``
            modes are not supported there either.
    """

    def __init__(
        self,
        u_patchout: int = 0,
        s_patchout_t: int = 0,
        s_patchout_f: int = 0,
        img_size: IntPair = (128, 998),
        patch_size: IntPair = 16,
        stride: IntPair = 16,
        in_chans: int = 1,
        num_classes: int = 527,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        representation_size: Optional[int] = None,
        distilled: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        embed_layer: Optional[Callable[..., nn.Module]] = None,
        norm_layer: Optional[Callable[[int], nn.Module]] = None,
        act_layer: Optional[Callable[..., nn.Module]] = None,
        weight_init: str = "",
    ) -> None:
        super().__init__()
        self._store_arguments(u_patchout, s_patchout_t, s_patchout_f, img_size, patch_size, stride, in_chans,
                              num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, representation_size,
                              distilled, drop_rate, attn_drop_rate, drop_path_rate, embed_layer, norm_layer,
                              act_layer, weight_init)
        norm = norm_layer or _block_layer_norm
        act = act_layer or nn.GELU
        self.num_tokens = 2 if self.distilled else 1
        # trained input size, EfficientAT-style names
        self.input_dim_f, self.input_dim_t = self.img_size

        # Built in this order on purpose: it fixes the state_dict key order and the order in
        # which the modules draw their initial weights from the RNG.
        self._build_embeddings(embed_layer)
        rates = torch.linspace(0, self.drop_path_rate, depth, device="cpu").tolist() if depth else []
        self.blocks = nn.Sequential(*[
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                  drop=self.drop_rate, attn_drop=self.attn_drop_rate, drop_path=rates[i], norm_layer=norm,
                  act_layer=act)
            for i in range(depth)])
        self.norm = norm(embed_dim)
        self._build_head()
        self.init_weights(weight_init)

    def _store_arguments(self, u_patchout: Any, s_patchout_t: Any, s_patchout_f: Any, img_size: IntPair,
                         patch_size: IntPair, stride: IntPair, in_chans: Any, num_classes: Any, embed_dim: Any,
                         depth: Any, num_heads: Any, mlp_ratio: Any, qkv_bias: bool,
                         representation_size: Optional[int], distilled: bool, drop_rate: Any, attn_drop_rate: Any,
                         drop_path_rate: Any, embed_layer: Optional[Callable[..., nn.Module]],
                         norm_layer: Optional[Callable[[int], nn.Module]],
                         act_layer: Optional[Callable[..., nn.Module]], weight_init: str) -> None:
        """Check the constructor arguments (a ValueError names the first bad one) and store them as
        attributes, normalised (pairs as tuples, counts as int, rates as float), for `config`."""
        self.u_patchout = _check_count("u_patchout", u_patchout)
        self.s_patchout_t = _check_count("s_patchout_t", s_patchout_t)
        self.s_patchout_f = _check_count("s_patchout_f", s_patchout_f)
        self.img_size = _pair("img_size", img_size)
        self.patch_size = _pair("patch_size", patch_size)
        self.stride = _pair("stride", stride)
        self.in_chans = _check_count("in_chans", in_chans, 1)
        self.num_classes = _check_count("num_classes", num_classes)
        self.embed_dim = _check_count("embed_dim", embed_dim, 1)
        self.depth = _check_count("depth", depth)
        self.num_heads = _check_count("num_heads", num_heads, 1)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        if representation_size is not None:
            representation_size = _check_count("representation_size", representation_size)
        self.representation_size = representation_size
        self.distilled = bool(distilled)
        self.drop_rate = _check_rate("drop_rate", drop_rate)
        self.attn_drop_rate = _check_rate("attn_drop_rate", attn_drop_rate)
        self.drop_path_rate = _check_rate("drop_path_rate", drop_path_rate)
        if weight_init not in _WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {_WEIGHT_INITS}, got {weight_init!r} "
                             "(the reference does not support the 'jax' modes either)")
        self.weight_init = weight_init
        self._embed_layer, self._norm_layer, self._act_layer = embed_layer, norm_layer, act_layer
        for name, value in (("embed_layer", embed_layer), ("norm_layer", norm_layer), ("act_layer", act_layer)):
            if value is not None and not callable(value):
                raise ValueError(f"{name} must be callable or None, got {value!r}")

    def _build_embeddings(self, embed_layer: Optional[Callable[..., nn.Module]]) -> None:
        """The patch embedding, the class (and distillation) token and the positional embeddings."""
        embed_dim = self.embed_dim
        self.patch_embed = (embed_layer or PatchEmbed)(
            img_size=self.img_size, patch_size=self.patch_size, stride=self.stride, in_chans=self.in_chans,
            embed_dim=embed_dim, flatten=False)
        grid_f, grid_t = self.patch_embed.grid_size
        if grid_f < 1 or grid_t < 1:
            raise ValueError(f"img_size={self.img_size} is smaller than one stride {self.stride}: empty patch grid")

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.distilled else None
        self.new_pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim))  # class/dist tokens
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid_f, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, 1, grid_t))
        self.pos_drop = nn.Dropout(p=self.drop_rate)

    def _build_head(self) -> None:
        """The optional pre-logits layer, `head` and, for distilled models, `head_dist`; sets `embedding_dim`."""
        embed_dim, num_classes = self.embed_dim, self.num_classes
        if self.representation_size and not self.distilled:
            self.num_features = self.representation_size
            self.pre_logits: nn.Module = nn.Sequential(OrderedDict([
                ("fc", nn.Linear(embed_dim, self.representation_size)),
                ("act", nn.Tanh()),
            ]))
        else:
            self.num_features = embed_dim
            self.pre_logits = nn.Identity()
        self.embedding_dim = self.num_features

        # head LayerNorm keeps PyTorch's default eps (1e-5), unlike the blocks
        self.head = nn.Sequential(
            nn.LayerNorm(self.num_features),
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity())
        self.head_dist: Optional[nn.Module] = None
        if self.distilled:
            # checkpoint compatibility only: never used by forward
            self.head_dist = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    # ----------------------------------------------------------------------------------
    # construction helpers
    # ----------------------------------------------------------------------------------
    def init_weights(self, mode: str = "") -> None:
        """Reference initialisation: truncated normal (std 0.02) for tokens, positional
        embeddings and every Linear weight, zero biases, LayerNorm (1, 0); the patch
        convolution keeps PyTorch's default. ``'nlhb'``: classifier biases -log(C)."""
        for param in (self.new_pos_embed, self.freq_new_pos_embed, self.time_new_pos_embed, self.cls_token):
            trunc_normal_(param, std=0.02)
        if self.dist_token is not None:
            trunc_normal_(self.dist_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if "nlhb" in mode and self.num_classes > 0:
            for head in (self.head[1], self.head_dist):
                if isinstance(head, nn.Linear):
                    nn.init.constant_(head.bias, -math.log(self.num_classes))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this model (``PaSST(**model.config)``).

        ``embed_layer`` / ``norm_layer`` / ``act_layer`` are included only when set.
        """
        cfg: dict[str, Any] = dict(
            u_patchout=self.u_patchout, s_patchout_t=self.s_patchout_t, s_patchout_f=self.s_patchout_f,
            img_size=self.img_size, patch_size=self.patch_size, stride=self.stride, in_chans=self.in_chans,
            num_classes=self.num_classes, embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias, representation_size=self.representation_size,
            distilled=self.distilled, drop_rate=self.drop_rate, attn_drop_rate=self.attn_drop_rate,
            drop_path_rate=self.drop_path_rate, weight_init=self.weight_init)
        for name, value in (("embed_layer", self._embed_layer), ("norm_layer", self._norm_layer),
                            ("act_layer", self._act_layer)):
            if value is not None:
                cfg[name] = value
        return cfg

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"new_pos_embed", "freq_new_pos_embed", "time_new_pos_embed", "cls_token", "dist_token"}

    @property
    def time_grid(self) -> int:
        """Number of time positional embeddings (trained time patches)."""
        return int(self.time_new_pos_embed.shape[-1])

    @property
    def window_frames(self) -> int:
        """Trained input length in frames (``img_size[1]``): the default sliding window."""
        return self.img_size[1]

    # ----------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        check_spectrogram_input(x, self.img_size[0], "PaSST", channels=self.in_chans)
        if x.shape[3] < self.patch_size[1]:
            raise ValueError(f"PaSST: input of shape {tuple(x.shape)} is shorter than one patch "
                             f"({self.patch_size[1]} frames)")

    def _add_positional_embeddings(self, x: Tensor) -> Tensor:
        """Add time and frequency embeddings to the (B, E, F', T') patch grid (cut if too long)."""
        time_embed = self.time_new_pos_embed
        grid_t = time_embed.shape[-1]
        length = x.shape[-1]
        if length < grid_t:
            if self.training:
                offset = int(torch.randint(1 + grid_t - length, (1,)).item())
            else:
                offset = 0
            time_embed = time_embed[:, :, :, offset:offset + length]
        elif length > grid_t:
            warnings.warn(f"PaSST: {length} time patches (input shape ...x{length}) exceed the {grid_t} trained "
                          f"time positional embeddings; the input is cut to the first {grid_t} patches "
                          "(use sliding_window_forward for long inputs)", stacklevel=3)
            x = x[:, :, :, :grid_t]
        if x.shape[2] != self.freq_new_pos_embed.shape[2]:
            raise ValueError(
                f"PaSST: the patch grid has {x.shape[2]} frequency rows but there are "
                f"{self.freq_new_pos_embed.shape[2]} frequency positional embeddings (img_size={self.img_size}, "
                f"patch_size={self.patch_size}, stride={self.stride} are inconsistent)")
        return x + time_embed + self.freq_new_pos_embed

    def forward_features(self, x: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """Final-normed class token (after ``pre_logits``), or (class, dist) tokens if distilled."""
        self._check_input(x)
        x = self.patch_embed(x)  # (B, E, F', T')
        batch = x.shape[0]
        x = self._add_positional_embeddings(x)

        if self.training and self.s_patchout_t:
            x = x[:, :, :, _keep_sorted(x.shape[3], self.s_patchout_t).to(x.device)]
        if self.training and self.s_patchout_f:
            x = x[:, :, _keep_sorted(x.shape[2], self.s_patchout_f).to(x.device), :]
        x = x.flatten(2).transpose(1, 2)  # (B, N, E), frequency-major token order
        if self.training and self.u_patchout:
            x = x[:, _keep_sorted(x.shape[1], self.u_patchout).to(x.device), :]

        tokens = [self.cls_token.expand(batch, -1, -1) + self.new_pos_embed[:, :1, :]]
        if self.dist_token is not None:
            tokens.append(self.dist_token.expand(batch, -1, -1) + self.new_pos_embed[:, 1:, :])
        x = torch.cat(tokens + [x], dim=1)
        x = self.pos_drop(x)
        x = self.blocks(x)
        x = self.norm(x)
        if self.dist_token is None:
            return self.pre_logits(x[:, 0])
        return x[:, 0], x[:, 1]

    def forward_head(self, features: Union[Tensor, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """``(logits, embedding)`` from :meth:`forward_features` (``head_dist`` is not used)."""
        embedding = (features[0] + features[1]) / 2 if isinstance(features, tuple) else features
        return self.head(embedding), embedding

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits (B, num_classes), embedding (B, embedding_dim))`` for a (B, C, F, T) batch."""
        return self.forward_head(self.forward_features(x))

    # ----------------------------------------------------------------------------------
    # long inputs
    # ----------------------------------------------------------------------------------
    def window_starts(self, frames: int, window_frames: Optional[int] = None,
                      hop_frames: Optional[int] = None) -> list[int]:
        """First frame of every window :meth:`sliding_window_forward` uses for ``frames`` frames."""
        window = self.window_frames if window_frames is None else _check_count("window_frames", window_frames, 1)
        if window < self.patch_size[1]:
            raise ValueError(f"window_frames={window} is shorter than one patch ({self.patch_size[1]} frames)")
        hop = max(1, window // 4) if hop_frames is None else _check_count("hop_frames", hop_frames, 1)
        return sliding_window_starts(frames, window, hop)

    def needs_sliding_windows(self, frames: int) -> bool:
        """True when ``frames`` give more time patches than there are time positional embeddings.

        A 10-s clip gives 1000 frames for PaSST's 998-frame grid; both make 99 time patches, so
        the plain forward pass (which uses the same grid) is what the reference runs.
        """
        return (frames - self.patch_size[1]) // self.stride[1] + 1 > self.time_grid

    def sliding_window_forward(self, x: Tensor, window_frames: Optional[int] = None,
                               hop_frames: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """``(logits, embedding)`` of an input of any length, averaged over overlapping windows.

        Rule: with ``W = window_frames`` (default: the trained length ``img_size[1]``) and
        ``H = hop_frames`` (default ``W // 4``, i.e. 2.5 s hops of 10 s windows, like the
        scene embeddings of the reference's HEAR wrapper), an input of ``T <= W`` frames is
        passed through :meth:`forward` unchanged. Longer inputs are split into windows
        starting at ``0, H, 2H, ...`` while they fit, plus one window ending exactly at the
        last frame if the regular ones do not reach it (no padding; every frame is
        covered). Each window is a plain forward pass (shorter-than-grid windows use the
        first time embeddings), and logits and embeddings are the unweighted means over
        windows. Logits are averaged before any sigmoid, as in the reference wrapper.
        """
        self._check_input(x)
        starts = self.window_starts(x.shape[-1], window_frames, hop_frames)
        if len(starts) == 1:
            return self(x)
        window = self.window_frames if window_frames is None else int(window_frames)
        return mean_over_windows(self, x, starts, window)

    def sliding_window_logits(self, x: Tensor, window_frames: Optional[int] = None,
                              hop_frames: Optional[int] = None) -> Tensor:
        """Logits of :meth:`sliding_window_forward` (window-averaged, before any sigmoid)."""
        return self.sliding_window_forward(x, window_frames, hop_frames)[0]


def build_passt_from_reference_args(
    arch: str,
    n_classes: int = 527,
    in_channels: int = 1,
    fstride: int = 10,
    tstride: int = 10,
    input_fdim: int = 128,
    input_tdim: int = 998,
    u_patchout: int = 0,
    s_patchout_t: int = 0,
    s_patchout_f: int = 0,
) -> PaSST:
    """Build the model PaSST's ``get_model(arch, pretrained=False, ...)`` builds.

    Every known ``arch`` (:data:`PASST_ARCHITECTURES`) is a distilled transformer with
    16x16 patches: 768 wide, 12 heads, 12 blocks (7 for ``passt_l_kd_p16_128_ap47``).
    ``(input_fdim, input_tdim)`` becomes ``img_size``, ``(fstride, tstride)`` the stride.
    No weights are loaded. Unlike the reference, a stride different from the one in the
    arch name is accepted silently (the reference only warns too).
    """
    if arch not in PASST_ARCHITECTURES:
        raise ValueError(f"unknown PaSST arch {arch!r}; known: {', '.join(sorted(PASST_ARCHITECTURES))}")
    embed_dim, depth, num_heads = PASST_ARCHITECTURES[arch]
    return PaSST(u_patchout=u_patchout, s_patchout_t=s_patchout_t, s_patchout_f=s_patchout_f,
                 img_size=(input_fdim, input_tdim), patch_size=PASST_PATCH_SIZE, stride=(fstride, tstride),
                 in_chans=in_channels, num_classes=n_classes, embed_dim=embed_dim, depth=depth,
                 num_heads=num_heads, distilled=True)


# --------------------------------------------------------------------------------------
# the family: kkoutini/PaSST's release rows, PaSST's own frontend, weight-less shapes
# --------------------------------------------------------------------------------------
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


def _release_entry(name: str, path: str, input_tdim: int, num_classes: int) -> PretrainedEntry:
    key = name.strip().replace("-", "_")
    preprocessing = dict(PASST_PREPROCESSING)
    hop = re.search(r"stfthop(\d+)", key)
    if hop:
        preprocessing["hopsize"] = int(hop.group(1))  # 100 / 160 samples at 32 kHz: 3200 / 2000 frames per 10 s
    dataset = "openmic" if key.startswith("openmic") else "audioset"
    what = ("PaSST-L (7 blocks)" if key.startswith("passt_l_") else "PaSST-S") + f", stride {passt_config(name)['stride'][0]}"
    return PretrainedEntry(
        name=name, arch="passt", filename=path.split("/")[-1], config=passt_config(name, input_tdim, num_classes),
        preprocessing=preprocessing, dataset=dataset, published_map=_map_from_passt_name(name),
        url=PASST_RELEASE + path,
        description=f"{what}, trained input 128x{input_tdim} frames (hop {preprocessing['hopsize']})"
        + (" on OpenMIC-2018 (20 instruments; published value is OpenMIC mAP). Hop 320 as in the "
           "reference's HEAR wrapper for OpenMIC, which pairs this kind of model (more time positions than "
           "a 10 s clip needs) with the standard 10 ms mel: a 10 s clip uses the first 99 time positions"
           if dataset == "openmic" else " on AudioSet") + " -- transformer teacher")


class PaSSTFamily(ModelFamily):
    name = "passt"
    model_class = PaSST
    is_teacher = True
    plot_style = ("^", "tab:green", "PaSST (teacher)")

    def token_info(self, model: nn.Module, input_shape: Sequence[int]) -> Optional[dict[str, Any]]:
        # patches at the model's stride over (F, T), the time axis cut to its time positional
        # embeddings (a 10-s clip, 1000 frames, gives 12 x 99 patches for stride 10), plus the
        # class (and distillation) tokens
        (pf, pt), (sf, st) = model.patch_size, model.stride
        grid_f = (int(input_shape[-2]) - pf) // sf + 1
        grid_t = min((int(input_shape[-1]) - pt) // st + 1, int(model.time_grid))
        prefix = 2 if getattr(model, "dist_token", None) is not None else 1
        return {"tokens": grid_f * grid_t + prefix, "grid": [grid_f, grid_t], "prefix_tokens": prefix}

    def catalogue(self) -> list[PretrainedEntry]:
        return [_release_entry(*row) for row in _PASST_RELEASES]

    def presets(self) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        return {"passt_s": (passt_config("passt_s_p16_128"), dict(PASST_PREPROCESSING)),
                "passt_l": (passt_config("passt_l_p16_128"), dict(PASST_PREPROCESSING))}

    def input_config(self, *, num_classes: int, n_mels: int, frames: int,
                     shape: dict[str, Any]) -> dict[str, Any]:
        # a transformer teacher: its sizes come from the caller's model options (embed_dim, depth, ...)
        return dict(num_classes=num_classes, img_size=[n_mels, frames], distilled=True)


FAMILY = PaSSTFamily()
