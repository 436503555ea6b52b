"""Building blocks shared by the model families.

Module layouts here define state_dict keys, so they follow the references' naming: a
student conv unit is a Sequential whose `.0` is the convolution and `.1` the BatchNorm
(EfficientAT); the transformers' token MLP holds `fc1` / `fc2` (timm's ViT layout, which
PaSST and AST checkpoints use). The transformer pieces are written here rather than imported
from timm because importing timm costs about 1.5 s of a tagging command's start.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn

# EfficientAT's body BatchNorms use these values (torchvision's MobileNetV3 choice);
# using PyTorch's default eps 1e-5 changes official-checkpoint outputs drastically.
BN_EPS = 0.001
BN_MOMENTUM = 0.01


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round a (width-scaled) channel count to a multiple of `divisor`.

    Never rounds down by more than 10 %: if it would, one more `divisor` is added.
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Output length of a convolution along one axis (PyTorch's formula)."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


class ConvNormActivation(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation, keyed `.0`, `.1`, `.2`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        activation: Optional[Callable[..., nn.Module]] = nn.ReLU,
        norm_eps: float = BN_EPS,
        norm_momentum: float = BN_MOMENTUM,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                      dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=norm_eps, momentum=norm_momentum),
        ]
        if activation is not None:
            layers.append(activation(inplace=True) if activation in (nn.ReLU, nn.Hardswish) else activation())
        super().__init__(*layers)
        self.out_channels = out_channels
        self.stride = stride
        self.kernel_size = kernel_size
        self.dilation = dilation


class BlockSpec(NamedTuple):
    """One row of the MobileNetV3-Large body table (channel counts before width scaling)."""

    in_channels: int
    kernel_size: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (Hardswish)
    stride_index: Optional[int]  # index into `strides` for down-sampling blocks, None = stride 1


# The 15 inverted-residual blocks shared by mn and dymn. Blocks 2, 4, 7 and 13 (1-based)
# down-sample with strides[0..3]; the last three blocks are the ones `reduced_tail` halves
# and `dilated` dilates.
MOBILENETV3_BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec(16, 3, 16, 16, False, "RE", None),
    BlockSpec(16, 3, 64, 24, False, "RE", 0),
    BlockSpec(24, 3, 72, 24, False, "RE", None),
    BlockSpec(24, 5, 72, 40, True, "RE", 1),
    BlockSpec(40, 5, 120, 40, True, "RE", None),
    BlockSpec(40, 5, 120, 40, True, "RE", None),
    BlockSpec(40, 3, 240, 80, False, "HS", 2),
    BlockSpec(80, 3, 200, 80, False, "HS", None),
    BlockSpec(80, 3, 184, 80, False, "HS", None),
    BlockSpec(80, 3, 184, 80, False, "HS", None),
    BlockSpec(80, 3, 480, 112, True, "HS", None),
    BlockSpec(112, 3, 672, 112, True, "HS", None),
    BlockSpec(112, 5, 672, 160, True, "HS", 3),
    BlockSpec(160, 5, 960, 160, True, "HS", None),
    BlockSpec(160, 5, 960, 160, True, "HS", None),
)
STEM_CHANNELS = 16
LAST_CHANNEL = 1280  # hidden size of the MLP head before width scaling


def check_spectrogram_input(x: Tensor, expected_n_mels: Optional[int], model_name: str, channels: int = 1) -> None:
    """Raise a ValueError naming the problem if `x` is not a (B, channels, n_mels, T) spectrogram batch."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{model_name}: expected a torch.Tensor spectrogram, got {type(x).__name__}")
    if x.dim() != 4:
        hint = ""
        if x.dim() == 3:
            hint = " (a (B, n_mels, T) log-mel batch needs a channel axis: x.unsqueeze(1))"
        elif x.dim() == 2:
            hint = " (this looks like a waveform batch: run the mel frontend first)"
        raise ValueError(
            f"{model_name}: expected a spectrogram of shape (batch, {channels}, n_mels, time), "
            f"got rank {x.dim()} shape {tuple(x.shape)}{hint}")
    if x.shape[1] != channels:
        raise ValueError(f"{model_name}: expected {channels} input channel(s), got shape {tuple(x.shape)} "
                         f"(channel axis = {x.shape[1]})")
    if expected_n_mels is not None and x.shape[2] != expected_n_mels:
        raise ValueError(
            f"{model_name}: expected {expected_n_mels} mel bins (frequency axis), got shape {tuple(x.shape)}; "
            f"build the model for {x.shape[2]} mel bins (mn: input_dim_f, PaSST: img_size) or use a frontend "
            f"with n_mels={expected_n_mels}")


def sliding_window_starts(frames: int, window: int, hop: int) -> list[int]:
    """First frame of every window that tags an input of `frames` frames (transformer teachers).

    Windows start at 0, hop, 2*hop, ... while a whole window fits, plus one window ending
    exactly at the last frame if the regular ones do not reach it: every frame is covered and
    no window is padded. An input no longer than one window is a single window at 0.
    """
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be positive frame counts, got window={window}, hop={hop}")
    if frames <= window:
        return [0]
    starts = list(range(0, frames - window + 1, hop))
    if starts[-1] != frames - window:
        starts.append(frames - window)
    return starts


def mean_over_windows(forward: Callable[[Tensor], tuple[Tensor, Tensor]], x: Tensor, starts: list[int],
                      window: int) -> tuple[Tensor, Tensor]:
    """Unweighted means of `forward`'s (logits, embedding) over time windows of a (B, C, F, T) input.

    Logits are averaged before any sigmoid (the reference PaSST wrapper's rule).
    """
    logits_sum: Optional[Tensor] = None
    embedding_sum: Optional[Tensor] = None
    for start in starts:
        logits, embedding = forward(x[..., start:start + window])
        logits_sum = logits if logits_sum is None else logits_sum + logits
        embedding_sum = embedding if embedding_sum is None else embedding_sum + embedding
    if logits_sum is None or embedding_sum is None:
        raise ValueError("no windows to average over")
    return logits_sum / len(starts), embedding_sum / len(starts)


def forward_spectrogram(model: nn.Module, spectrogram: Tensor) -> tuple[Tensor, Tensor]:
    """Inference forward of any tagger in this package on a frontend's output, at any length.

    Adds the channel axis to (B, F, T) mel output; transformer teachers (PaSST, AST) whose input
    is longer than their positional embeddings allow are run as the mean over sliding windows
    (their `needs_sliding_windows` / `sliding_window_forward`). Returns (logits, embedding).
    """
    if spectrogram.dim() == 3:  # mel frontends: (B, F, T) -> (B, 1, F, T)
        spectrogram = spectrogram.unsqueeze(1)
    needs_windows = getattr(model, "needs_sliding_windows", None)
    if needs_windows is not None and needs_windows(spectrogram.shape[-1]):
        return model.sliding_window_forward(spectrogram)
    return model(spectrogram)


class TokenMlp(nn.Module):
    """A transformer block's feed-forward part: Linear -> activation -> dropout -> Linear -> dropout.

    Keys `fc1.*` / `fc2.*`, as in timm's `Mlp` (the layout of PaSST and AST checkpoints).
    """

    def __init__(self, in_features: int, hidden_features: int, act_layer: type[nn.Module] = nn.GELU,
                 drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random subset of the batch (each
    sample kept with probability 1 - `drop_prob`) and scale the kept ones by 1 / (1 - `drop_prob`)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        if keep > 0.0:
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def mlp_head(in_features: int, hidden: int, num_classes: int) -> nn.Sequential:
    """EfficientAT's MLP head: global average pool -> Linear -> Hardswish -> Dropout(0.2) -> Linear.

    Keys `.2` and `.5` hold the two Linear layers, as in the released checkpoints.
    """
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(start_dim=1),
        nn.Linear(in_features, hidden),
        nn.Hardswish(inplace=True),
        nn.Dropout(p=0.2),
        nn.Linear(hidden, num_classes),
    )


def mlp_head_per_frame(head: nn.Sequential, features: Tensor) -> Tensor:
    """The MLP head applied to every time frame of the body output: (B, D, F', T') -> (B, C, T').

    The head's global pool is replaced by a mean over frequency only. A decision-level
    approximation: the head is non-linear, so the mean of these frame logits is not the clip logits.
    """
    frames = features.mean(dim=2).transpose(1, 2)  # (B, T', D)
    return head[2:](frames).transpose(1, 2)  # Linear -> Hardswish -> Dropout -> Linear, per frame


def init_mobilenet_weights(model: nn.Module) -> None:
    """Fresh-model initialisation of EfficientAT (torchvision's MobileNetV3 scheme).

    Modules that initialise themselves (e.g. DyMN's dynamic kernels) are not plain
    Conv2d/Linear/BatchNorm2d and are left alone.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def min_input_frames(model: nn.Module, n_mels: int) -> int:
    """Shortest spectrogram (frames) for which every time axis of a CNN student is >= 2 frames long.

    Models without a frame-level body (`forward_frames`: the transformer teachers) return 1. Below
    this length ``torch.export`` specialises size-1 axes (broadcasting), so exports refuse shorter
    inputs; the input contract pads every path to at least this much (one rule for PyTorch and
    ONNX). E.g. 33 frames (0.33 s at 32 kHz) for strides 2,2,2,2 (total stride 32).
    """
    forward_features = getattr(model, "forward_features", None)
    if forward_features is None or not hasattr(model, "forward_frames"):
        return 1
    config = getattr(model, "config", None)
    key = (type(model).__name__, repr(sorted(config.items())) if isinstance(config, dict) else None, n_mels)
    if key[1] is not None and key in _MIN_FRAMES:
        return _MIN_FRAMES[key]
    # probed in eval mode (a batch of one cannot pass BatchNorm in training mode, and training mode
    # would update its running statistics); every module's own mode is restored afterwards
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        frames = _probe_min_frames(model, forward_features, n_mels)
    finally:
        for module, training in modes.items():
            module.training = training
    if key[1] is not None:
        _MIN_FRAMES[key] = frames
    return frames


_MIN_FRAMES: dict[tuple, int] = {}


def _probe_min_frames(model: nn.Module, forward_features: Callable[[Tensor], Tensor], n_mels: int) -> int:
    parameter = next(model.parameters())

    def long_enough(frames: int) -> bool:
        probe = torch.zeros(1, 1, n_mels, frames, dtype=parameter.dtype, device=parameter.device)
        with torch.no_grad():
            return forward_features(probe).shape[-1] >= 2

    # CNN students pad "same" everywhere: T frames give ceil(T / stride) output frames, so the answer is
    # stride + 1 -- found from one probe and checked with two (three small forward passes, not a search)
    probe = 256
    with torch.no_grad():
        out = forward_features(torch.zeros(1, 1, n_mels, probe, dtype=parameter.dtype, device=parameter.device))
    stride = probe // max(1, int(out.shape[-1]))
    if stride >= 1 and long_enough(stride + 1) and (stride == 1 or not long_enough(stride)):
        return stride + 1
    low, high = 1, 2
    while not long_enough(high):
        low, high = high, high * 2
        if high > 1 << 16:
            raise ValueError(f"{type(model).__name__}: no input length gives a time axis of >= 2 frames")
    while high - low > 1:  # long_enough(high) holds, long_enough(low) does not (or low == 1)
        middle = (low + high) // 2
        low, high = (low, middle) if long_enough(middle) else (middle, high)
    return low if long_enough(low) else high
