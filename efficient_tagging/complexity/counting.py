"""Model complexity: parameters, multiply-accumulate operations, peak memory, receptive field.

The definitions follow EfficientAT's complexity helpers so that the numbers for the
MobileNet ("mn") students are identical to the ones EfficientAT publishes, and they are
extended where the reference helpers stop working (DyMN's dynamic convolutions,
attention layers of transformer teachers).

Everything is computed from a single *trace*: one forward pass with hooks on the layers
that matter (:func:`trace_model`). The pass only needs tensor shapes, so it also works on
a model built on PyTorch's ``meta`` device (no memory, no arithmetic), which is what the
command-line tool does::

    with torch.device("meta"):
        model = MobileNet(width_mult=4.0)
    report = complexity_report(model, spectrogram_shape(n_mels=128, hop_size=320))

All counts are **per example**: a trace run with batch size B divides every count by B
(EfficientAT requires B = 1; so does nothing here, but B = 1 is the default).

Multiply-accumulate operations (MACs), as EfficientAT's ``count_macs`` counts them:

* convolution: ``out_channels * out_h * out_w * (k_h * k_w * in_channels / groups + bias)``;
* linear layer: ``weights + biases`` per position it is applied to (the reference counts
  one position; both agree for the (B, features) inputs of MN's MLP head and SE layers.
  For per-frame Linear layers, e.g. MN's attention-pooling head, counting every frame is
  the correct cost, as EfficientAT's transformer counter does);
* dynamic convolution (DyMN): the convolution with the sample's kernel, counted like a
  static one, plus the kernel aggregation (``K`` multiply-adds per element of one
  kernel); its attention Linear is counted as a linear layer;
* attention (teachers): ``2 * tokens_q * tokens_k * dim`` for ``Q K^T`` and ``A V``
  (summed over heads, ``dim`` = all heads together), plus the projections;
* not counted (same convention as the reference): normalisation layers (foldable into the
  preceding conv), activations (incl. Dy-ReLU's ``max`` of affine pieces), pooling,
  softmax, element-wise products (SE / coordinate-attention scaling, residual adds).

Custom modules can plug in without changes here, in two ways (a module's own method
takes precedence):

* define ``complexity_macs(self, inputs, output) -> int`` returning the MACs of the
  module's *own* computation for the call as executed (the whole batch; ``inputs`` are the
  positional arguments of ``forward``). Child modules are still counted by their own
  rules, so only count what the children do not (e.g. attention's matmuls, not its
  ``qkv`` Linear);
* or call :func:`register_macs_rule` with a module type and a function
  ``fn(module, inputs, output) -> int`` with the same meaning.

Peak activation memory (kB = 1000 bytes, ``bits_per_elem`` bits per stored value),
following EfficientAT's analytical model (weights are assumed to be streamed from flash,
so only activations count; a layer needs its input and output at the same time):

* :func:`peak_memory_cnn`: every convolution needs ``input + output`` elements, plus the
  block input inside a residual block after the block's first convolution (the
  residual branch must be kept until the final add). DyMN's dynamic convolutions count as
  convolutions; the context-path convolutions of a dynamic block run while the block
  input waits for the main path, so they add the block input too.
* :func:`peak_memory_mnv3` ("memory-efficient inference", MobileNetV2 paper, Sec. 5.3):
  an inverted-residual block whose expanded representation only needs per-channel
  operations can be computed in 8 channel slices, so only 1/8 of the expanded tensor
  (before and after the depthwise conv) is materialised: ``in + out + exp_in/8 +
  exp_out/8``. A block with squeeze-excitation needs the global mean of the full expanded
  tensor, so it is fully materialised: ``exp_out + out + in`` (the last conv's input and
  output plus the residual). The stem is fused into the first block when that block can
  be streamed (MN): ``stem_input + out + slices``. The final 1x1 conv and the head are
  not counted (as in the reference). For DyMN dynamic blocks, every input-dependent
  quantity (kernel attention, Dy-ReLU coefficients, coordinate attention maps) is derived
  from the *block input*, so they stream like plain blocks; their context tensors (the
  outputs of the context convolutions) are added, and the per-sample mixed kernels are
  treated like weights (they can be mixed slice by slice on the fly). The first DyMN
  block needs the whole stem output for its context, so the stem is not fused there and
  costs ``input + output`` on its own.

Receptive field (:func:`receptive_field`): EfficientAT's ``receptive_field_cnn`` chain
formula over every (dynamic) convolution in execution order, ``rf = s * rf + (k_eff - s)``
applied from the last layer to the first, with ``k_eff = (k - 1) * dilation + 1``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_BITS_PER_ELEM",
    "ComplexityReport",
    "BlockRecord",
    "LayerRecord",
    "ModelTrace",
    "complexity_report",
    "count_macs",
    "count_params",
    "frontend_spectrogram_shape",
    "macs_by_layer",
    "peak_memory_cnn",
    "peak_memory_mnv3",
    "receptive_field",
    "receptive_field_of_layers",
    "register_macs_rule",
    "spectrogram_frames",
    "spectrogram_shape",
    "trace_model",
]

DEFAULT_BITS_PER_ELEM = 16
# EfficientAT's complexity.py measures a 10-second clip at 32 kHz.
DEFAULT_SAMPLE_RATE = 32000
DEFAULT_DURATION_S = 10.0
# Number of channel slices assumed by memory-efficient inference (EfficientAT's choice).
MEMORY_EFFICIENT_SLICES = 8

MacsRule = Callable[[nn.Module, tuple, Any], int]
_USER_RULES: list[tuple[type, MacsRule]] = []


# --------------------------------------------------------------------------------------
# spectrogram size
# --------------------------------------------------------------------------------------
def spectrogram_frames(num_samples: int, hop_size: int, preemphasis: bool = True) -> int:
    """Frames of the EfficientAT log-mel frontend for a waveform of ``num_samples`` samples.

    Pre-emphasis without padding drops one sample, and the centred STFT yields
    ``1 + samples // hop`` frames, hence ``1 + (num_samples - 1) // hop_size``.
    """
    if hop_size < 1:
        raise ValueError(f"hop_size must be >= 1, got {hop_size}")
    samples = num_samples - 1 if preemphasis else num_samples
    if samples < 1:
        raise ValueError(f"need at least {2 if preemphasis else 1} samples, got {num_samples}")
    return 1 + samples // hop_size


def _num_samples(sample_rate: int, duration: float) -> int:
    num = int(round(sample_rate * duration))
    if num < 2:
        raise ValueError(f"duration {duration} s at {sample_rate} Hz gives fewer than 2 samples")
    return num


def spectrogram_shape(n_mels: int = 128, hop_size: int = 320, sample_rate: int = DEFAULT_SAMPLE_RATE,
                      duration: float = DEFAULT_DURATION_S) -> tuple[int, int, int, int]:
    """Model input shape ``(1, 1, n_mels, frames)`` for a clip of ``duration`` seconds (analytic)."""
    return (1, 1, int(n_mels), spectrogram_frames(_num_samples(sample_rate, duration), hop_size))


def frontend_spectrogram_shape(n_mels: int = 128, hop_size: int = 320, sample_rate: int = DEFAULT_SAMPLE_RATE,
                               duration: float = DEFAULT_DURATION_S, win_length: int = 800,
                               n_fft: int = 1024) -> tuple[int, int, int, int]:
    """Like :func:`spectrogram_shape`, but measured by running the mel frontend on zeros.

    This is what EfficientAT's complexity.py does; both functions agree (a test checks it).
    """
    from ..frontends.mel import AugmentMelSTFT  # local import: the frontend is optional here

    mel = AugmentMelSTFT(n_mels=n_mels, sr=sample_rate, win_length=win_length, hopsize=hop_size, n_fft=n_fft)
    mel.eval()
    with torch.no_grad():
        spec = mel(torch.zeros(1, _num_samples(sample_rate, duration)))
    return (1, 1, int(spec.shape[1]), int(spec.shape[2]))


# --------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------
def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (EfficientAT: ``sum(p.numel() for p in model.parameters())``)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


# --------------------------------------------------------------------------------------
# MAC rules
# --------------------------------------------------------------------------------------
def register_macs_rule(module_type: type, rule: MacsRule) -> None:
    """Count modules of ``module_type`` with ``rule(module, inputs, output) -> int``.

    ``rule`` returns the MACs of the module's own computation for the call as executed
    (whole batch, children excluded). Rules registered later win over earlier ones and
    over the built-in rules; a module's ``complexity_macs`` method wins over all.
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"register_macs_rule: expected an nn.Module subclass, got {module_type!r}")
    _USER_RULES.insert(0, (module_type, rule))


def _as_tuple(value: Any) -> tuple[int, ...]:
    """Kernel size as a tuple (an int means a square 2-D kernel)."""
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * 2


def _pair(value: Any) -> tuple[int, int]:
    """(frequency, time) value of an int or 2-tuple conv attribute."""
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1])) if len(value) else (1, 1)
    return (int(value), int(value))


def _first_tensor(obj: Any) -> Optional[Tensor]:
    """The first tensor in a (possibly nested) forward input/output."""
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(obj, dict):
        for item in obj.values():
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _is_dynamic_conv(module: nn.Module) -> bool:
    """DyMN-style dynamic convolution: K candidate kernels mixed per sample.

    Recognised by duck typing (so that other implementations plug in too): the module has
    ``in_channels``, ``out_channels``, ``kernel_size``, ``groups``, ``num_kernels`` and a
    ``weight`` holding ``num_kernels`` kernels.
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        return False
    needed = ("in_channels", "out_channels", "kernel_size", "groups", "num_kernels", "weight")
    if not all(hasattr(module, a) for a in needed):
        return False
    weight = getattr(module, "weight")
    if not isinstance(weight, Tensor):
        return False
    k_h, k_w = _pair(module.kernel_size)
    kernel_numel = module.out_channels * (module.in_channels // module.groups) * k_h * k_w
    return weight.numel() == module.num_kernels * kernel_numel


def _is_conv_like(module: nn.Module) -> bool:
    """Layers that enter the receptive field and the peak-memory models."""
    return (isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd)) \
        or _is_dynamic_conv(module)


def _conv_macs(module: nn.Module, inputs: tuple, output: Any) -> int:
    out = _first_tensor(output)
    kernel_ops = math.prod(_as_tuple(module.kernel_size)) * (module.in_channels // module.groups)
    bias_ops = 1 if getattr(module, "bias", None) is not None else 0
    return out.numel() * (kernel_ops + bias_ops)


def _conv_transpose_macs(module: nn.Module, inputs: tuple, output: Any) -> int:
    # every input element is scattered into k * out/groups outputs
    x, out = _first_tensor(inputs), _first_tensor(output)
    kernel_ops = math.prod(_as_tuple(module.kernel_size)) * (module.out_channels // module.groups)
    bias_ops = out.numel() if module.bias is not None else 0
    return x.numel() * kernel_ops + bias_ops


def _dynamic_conv_macs(module: nn.Module, inputs: tuple, output: Any) -> int:
    x, out = _first_tensor(inputs), _first_tensor(output)
    batch = x.shape[0]
    k_h, k_w = _pair(module.kernel_size)
    per_kernel = module.out_channels * (module.in_channels // module.groups) * k_h * k_w
    conv = out.numel() * (k_h * k_w * (module.in_channels // module.groups))  # like a static conv
    # the per-sample kernel is sum_k attention_k * kernel_k: K multiply-adds per element
    aggregation = batch * module.num_kernels * per_kernel
    bias = out.numel() if getattr(module, "bias", None) is not None else 0
    return conv + aggregation + bias


def _linear_macs(module: nn.Module, inputs: tuple, output: Any) -> int:
    x = _first_tensor(inputs)
    positions = x.numel() // module.in_features  # batch x tokens/frames the layer is applied to
    bias_ops = module.bias.numel() if module.bias is not None else 0
    return positions * (module.weight.numel() + bias_ops)


def _mha_macs(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> int:
    """nn.MultiheadAttention: input/output projections (done functionally, so its
    ``out_proj`` child is never called) plus the two attention matmuls."""
    names = ("query", "key", "value")
    tensors = list(args[:3]) + [kwargs[n] for n in names[len(args[:3]):] if n in kwargs]
    query, key = tensors[0], tensors[1] if len(tensors) > 1 else tensors[0]
    if query.dim() == 2:  # unbatched (L, E)
        batch, len_q, len_k = 1, query.shape[0], key.shape[0]
    elif module.batch_first:
        batch, len_q, len_k = query.shape[0], query.shape[1], key.shape[1]
    else:
        batch, len_q, len_k = query.shape[1], query.shape[0], key.shape[0]
    e = module.embed_dim
    has_bias = module.in_proj_bias is not None
    proj = len_q * e * (e + has_bias) + len_k * e * (module.kdim + has_bias) + len_k * e * (module.vdim + has_bias)
    out_bias = 1 if module.out_proj.bias is not None else 0
    proj += len_q * e * (e + out_bias)
    attention = 2 * len_q * len_k * e  # Q K^T and A V, summed over heads
    return batch * (proj + attention)


def _is_qkv_attention(module: nn.Module) -> bool:
    """timm / PaSST style self-attention: a ``qkv`` Linear + ``num_heads``; matmuls done inline."""
    return isinstance(getattr(module, "qkv", None), nn.Linear) and hasattr(module, "num_heads")


def _qkv_attention_macs(module: nn.Module, inputs: tuple, output: Any) -> int:
    x = _first_tensor(inputs)  # (B, N, C)
    batch, tokens = x.shape[0], x.shape[-2]
    inner = module.qkv.out_features // 3
    # qkv / proj Linear layers are children and counted by the linear rule
    return batch * 2 * tokens * tokens * inner


def _builtin_rule(module: nn.Module) -> Optional[Callable[..., int]]:
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return _conv_transpose_macs
    if isinstance(module, nn.modules.conv._ConvNd):
        return _conv_macs
    if isinstance(module, nn.Linear):
        return _linear_macs
    if _is_dynamic_conv(module):
        return _dynamic_conv_macs
    if _is_qkv_attention(module):
        return _qkv_attention_macs
    return None


def _macs_rule(module: nn.Module) -> tuple[Optional[Callable[..., int]], str]:
    """(rule taking (module, args, kwargs, output), kind) for ``module``; (None, '') if uncounted."""
    hook = getattr(module, "complexity_macs", None)
    if callable(hook):
        return (lambda m, a, kw, o: int(hook(a, o))), "custom"
    for module_type, rule in _USER_RULES:
        if isinstance(module, module_type):
            return (lambda m, a, kw, o, _r=rule: int(_r(m, a, o))), "custom"
    if isinstance(module, nn.MultiheadAttention):
        return _mha_macs, "attention"
    rule = _builtin_rule(module)
    if rule is None:
        return None, ""
    if _is_dynamic_conv(module):
        kind = "dynamic_conv"
    elif isinstance(module, nn.modules.conv._ConvNd):
        kind = "conv"
    elif isinstance(module, nn.Linear):
        kind = "linear"
    else:
        kind = "attention"
    return (lambda m, a, kw, o, _r=rule: int(_r(m, a, o))), kind


# --------------------------------------------------------------------------------------
# tracing
# --------------------------------------------------------------------------------------
@dataclass
class LayerRecord:
    """One counted or conv-like layer call, in execution order (per-example numbers)."""

    name: str
    type_name: str
    kind: str  # "conv", "dynamic_conv", "linear", "attention", "custom"
    macs: int
    input_shape: Optional[tuple[int, ...]]
    output_shape: Optional[tuple[int, ...]]
    conv_like: bool = False
    kernel_size: Optional[tuple[int, int]] = None
    stride: Optional[tuple[int, int]] = None
    dilation: Optional[tuple[int, int]] = None
    groups: int = 1
    in_channels: Optional[int] = None
    block: Optional[str] = None  # innermost enclosing residual block, if any
    reads_block_input: bool = False  # the layer consumes that block's input tensor itself

    @property
    def input_elems(self) -> int:
        """Elements of one example's input (batch axis excluded)."""
        return math.prod(self.input_shape[1:]) if self.input_shape else 0

    @property
    def output_elems(self) -> int:
        """Elements of one example's output (batch axis excluded)."""
        return math.prod(self.output_shape[1:]) if self.output_shape else 0


@dataclass
class BlockRecord:
    """One call of an inverted-residual-style block (a module with ``use_res_connect``)."""

    name: str
    type_name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    use_res_connect: bool
    has_se: bool  # needs the full expanded tensor (squeeze-excitation) -> cannot stream
    dynamic: bool  # has a context path (DyMN): streams, but not fused with the stem
    layers: list[LayerRecord] = field(default_factory=list)

    @property
    def input_elems(self) -> int:
        return math.prod(self.input_shape[1:])

    @property
    def output_elems(self) -> int:
        return math.prod(self.output_shape[1:])


@dataclass
class ModelTrace:
    """Everything the complexity measures need, from one forward pass."""

    input_shape: tuple[int, ...]
    batch_size: int
    layers: list[LayerRecord]
    blocks: list[BlockRecord]

    @property
    def macs(self) -> int:
        return int(sum(layer.macs for layer in self.layers))

    @property
    def conv_layers(self) -> list[LayerRecord]:
        return [layer for layer in self.layers if layer.conv_like]

    def macs_by_kind(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for layer in self.layers:
            totals[layer.kind] = totals.get(layer.kind, 0) + layer.macs
        return totals


def _is_block(module: nn.Module) -> bool:
    return isinstance(getattr(module, "use_res_connect", None), bool)


def _has_se(module: nn.Module) -> bool:
    # squeeze-excitation scales by a statistic of the whole expanded tensor
    return any("SqueezeExcitation" in type(m).__name__ for m in module.modules())


def _is_dynamic_block(module: nn.Module) -> bool:
    return any(_is_dynamic_conv(m) or type(m).__name__ == "ContextGenerator" for m in module.modules())


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def trace_model(model: nn.Module, input_shape: Sequence[int], *, example_input: Optional[Tensor] = None) -> ModelTrace:
    """Run one forward pass (eval mode, no grad) and record every counted layer and block.

    The input is zeros of ``input_shape`` on the model's device and dtype (values do not
    matter, only shapes); a model on the ``meta`` device is traced without computation.
    The model's train/eval flags are restored afterwards.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) < 1 or input_shape[0] < 1:
        raise ValueError(f"input_shape must start with a positive batch size, got {input_shape}")
    batch = input_shape[0]
    layers: list[LayerRecord] = []
    blocks: list[BlockRecord] = []
    block_stack: list[tuple[str, Tensor, int]] = []  # (name, input tensor, index into `blocks`)
    handles = []

    def per_example(value: int) -> int:
        return value // batch if value % batch == 0 else int(round(value / batch))

    def make_layer_hook(name: str, rule: Optional[Callable[..., int]], kind: str, conv_like: bool):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x, out = _first_tensor(args) if args else _first_tensor(kwargs), _first_tensor(output)
            macs = per_example(rule(module, args, kwargs, output)) if rule is not None else 0
            record = LayerRecord(
                name=name, type_name=type(module).__name__, kind=kind or "conv", macs=macs,
                input_shape=tuple(x.shape) if x is not None else None,
                output_shape=tuple(out.shape) if out is not None else None, conv_like=conv_like)
            if conv_like:
                record.kernel_size = _pair(module.kernel_size)
                record.stride = _pair(getattr(module, "stride", 1))
                record.dilation = _pair(getattr(module, "dilation", 1))
                record.groups = int(getattr(module, "groups", 1))
                record.in_channels = int(module.in_channels)
            if block_stack:
                block_name, block_input, index = block_stack[-1]
                record.block = block_name
                record.reads_block_input = any(a is block_input for a in args)
                blocks[index].layers.append(record)
            layers.append(record)
        return hook

    def make_block_pre_hook(name: str):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            x = _first_tensor(args)
            blocks.append(BlockRecord(name=name, type_name=type(module).__name__, input_shape=tuple(x.shape),
                                      output_shape=(), use_res_connect=bool(module.use_res_connect),
                                      has_se=_has_se(module), dynamic=_is_dynamic_block(module)))
            block_stack.append((name, x, len(blocks) - 1))
        return pre_hook

    def block_post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        _, _, index = block_stack.pop()
        blocks[index].output_shape = tuple(_first_tensor(output).shape)

    for name, module in model.named_modules():
        rule, kind = _macs_rule(module)
        conv_like = _is_conv_like(module)
        if rule is not None or conv_like:
            handles.append(module.register_forward_hook(make_layer_hook(name, rule, kind, conv_like), with_kwargs=True))
        if _is_block(module):
            handles.append(module.register_forward_pre_hook(make_block_pre_hook(name)))
            handles.append(module.register_forward_hook(block_post_hook))

    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        if example_input is None:
            device, dtype = _model_device_dtype(model)
            example_input = torch.zeros(input_shape, device=device, dtype=dtype)
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.training = flag
    return ModelTrace(input_shape=input_shape, batch_size=batch, layers=layers, blocks=blocks)


def _get_trace(model: nn.Module, input_shape: Sequence[int], trace: Optional[ModelTrace]) -> ModelTrace:
    return trace if trace is not None else trace_model(model, input_shape)


# --------------------------------------------------------------------------------------
# MACs
# --------------------------------------------------------------------------------------
def count_macs(model: nn.Module, input_shape: Sequence[int], *, trace: Optional[ModelTrace] = None) -> int:
    """Multiply-accumulate operations for one example of ``input_shape`` (see module doc)."""
    return _get_trace(model, input_shape, trace).macs


def macs_by_layer(model: nn.Module, input_shape: Sequence[int], *,
                  trace: Optional[ModelTrace] = None) -> list[LayerRecord]:
    """Per-layer breakdown: every counted layer call with its MACs, in execution order."""
    return list(_get_trace(model, input_shape, trace).layers)


# --------------------------------------------------------------------------------------
# peak memory
# --------------------------------------------------------------------------------------
def _kb(elements: float, bits_per_elem: int) -> float:
    return elements * bits_per_elem / (8 * 1000)


def cnn_memory_elements(trace: ModelTrace) -> list[tuple[str, float]]:
    """(layer name, activation elements) for every conv call, as in :func:`peak_memory_cnn`."""
    blocks = {b.name: b for b in trace.blocks}
    result: list[tuple[str, float]] = []
    main_path_started: dict[str, bool] = {}
    for layer in trace.conv_layers:
        mem = layer.input_elems + layer.output_elems
        block = blocks.get(layer.block) if layer.block else None
        if block is not None:
            started = main_path_started.get(block.name, False)
            if layer.reads_block_input:
                # the first consumer of the block input: the input *is* the residual
                main_path_started[block.name] = True
            elif not started:
                # context path (DyMN): the block input waits for the main path
                mem += block.input_elems
            elif block.use_res_connect:
                # later convs: the residual branch is kept for the final add
                mem += block.input_elems
        result.append((layer.name, mem))
    return result


def peak_memory_cnn(model: nn.Module, input_shape: Sequence[int], bits_per_elem: int = DEFAULT_BITS_PER_ELEM, *,
                    trace: Optional[ModelTrace] = None) -> float:
    """Peak activation memory in kB of layer-by-layer inference (EfficientAT's ``peak_memory_cnn``)."""
    elements = cnn_memory_elements(_get_trace(model, input_shape, trace))
    if not elements:
        raise ValueError("peak_memory_cnn: the model ran no convolution")
    return max(_kb(mem, bits_per_elem) for _, mem in elements)


def _streamed_expansion(block: BlockRecord) -> tuple[int, int, int]:
    """(expanded channels, stride_f, stride_t) of a block's depthwise (grouped) conv.

    Without a grouped conv, the widest conv input and stride 1 are used.
    """
    main = [layer for layer in block.layers if layer.conv_like]
    grouped = [layer for layer in main if layer.groups > 1]
    if grouped:
        dw = grouped[-1]
        return dw.in_channels, dw.stride[0], dw.stride[1]
    channels = max((layer.in_channels for layer in main), default=block.input_shape[1])
    return channels, 1, 1


def mnv3_memory_elements(trace: ModelTrace, slices: int = MEMORY_EFFICIENT_SLICES) -> list[tuple[str, float]]:
    """(block name, activation elements) per block, as in :func:`peak_memory_mnv3`."""
    if not trace.blocks:
        raise ValueError("peak_memory_mnv3: the model has no inverted-residual blocks (modules with use_res_connect)")
    first_block = trace.blocks[0]
    # convolutions before the first block form the stem
    stem: list[LayerRecord] = []
    for layer in trace.layers:
        if layer.block is not None:
            break
        if layer.conv_like:
            stem.append(layer)
    fuse_stem = bool(stem) and not first_block.has_se and not first_block.dynamic
    result: list[tuple[str, float]] = []
    if stem and not fuse_stem:
        for layer in stem:
            result.append((layer.name, layer.input_elems + layer.output_elems))
    for block in trace.blocks:
        if block.has_se:
            # full expanded tensor at the last conv (input + output) + residual/block input
            last = [layer for layer in block.layers if layer.conv_like][-1]
            mem = last.input_elems + block.output_elems + block.input_elems
        else:
            expanded, s_f, s_t = _streamed_expansion(block)
            f_in, t_in = block.input_shape[2], block.input_shape[3]
            slice_in = f_in * t_in * expanded / slices  # before the depthwise conv
            slice_out = (f_in // s_f) * (t_in // s_t) * expanded / slices  # after it (EfficientAT's floor)
            block_in = stem[0].input_elems if (fuse_stem and block is first_block) else block.input_elems
            mem = block_in + block.output_elems + slice_in + slice_out
            if block.dynamic:
                # context tensors (outputs of the context-path convs) live during the block
                mem += sum(layer.output_elems for layer in block.layers
                           if layer.conv_like and not layer.reads_block_input and _before_main_path(block, layer))
        result.append((block.name, mem))
    return result


def _before_main_path(block: BlockRecord, layer: LayerRecord) -> bool:
    """Whether ``layer`` runs before the block's first consumer of its input (= context path)."""
    for candidate in block.layers:
        if candidate is layer:
            return True
        if candidate.conv_like and candidate.reads_block_input:
            return False
    return False


def peak_memory_mnv3(model: nn.Module, input_shape: Sequence[int], bits_per_elem: int = DEFAULT_BITS_PER_ELEM, *,
                     trace: Optional[ModelTrace] = None, slices: int = MEMORY_EFFICIENT_SLICES) -> float:
    """Peak activation memory in kB with memory-efficient (channel-sliced) inference.

    EfficientAT's ``peak_memory_mnv3`` for MN models; also defined for DyMN (module doc).
    """
    elements = mnv3_memory_elements(_get_trace(model, input_shape, trace), slices)
    return max(_kb(mem, bits_per_elem) for _, mem in elements)


# --------------------------------------------------------------------------------------
# receptive field
# --------------------------------------------------------------------------------------
def receptive_field_of_layers(
        layers: Iterable[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]) -> tuple[int, int]:
    """Receptive field (freq, time) of a chain of (kernel, stride, dilation) layers, first to last."""
    rf_f, rf_t = 1, 1
    for (k_f, k_t), (s_f, s_t), (d_f, d_t) in reversed(list(layers)):
        rf_f = s_f * rf_f + ((k_f - 1) * d_f + 1 - s_f)
        rf_t = s_t * rf_t + ((k_t - 1) * d_t + 1 - s_t)
    return rf_f, rf_t


def receptive_field(model: nn.Module, input_shape: Sequence[int] = (1, 1, 128, 1000), *,
                    trace: Optional[ModelTrace] = None) -> tuple[int, int]:
    """(frequency, time) receptive field as EfficientAT's ``receptive_field_cnn`` computes it.

    All (dynamic) convolutions are chained in execution order; 1x1 stride-1 convs of side
    paths (SE, context) do not change it. 595 for MobileNetV3 with strides (2, 2, 2, 2).
    """
    convs = _get_trace(model, input_shape, trace).conv_layers
    return receptive_field_of_layers((c.kernel_size, c.stride, c.dilation) for c in convs)


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
@dataclass
class ComplexityReport:
    """All complexity measures of one model for one input size (per example)."""

    params: int
    macs: int
    peak_memory_kb: Optional[float]  # layer-by-layer (peak_memory_cnn)
    peak_memory_efficient_kb: Optional[float]  # memory-efficient inference (peak_memory_mnv3)
    receptive_field: tuple[int, int]  # (frequency, time)
    input_shape: tuple[int, ...]
    bits_per_elem: int = DEFAULT_BITS_PER_ELEM
    model: Optional[str] = None
    macs_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def n_mels(self) -> int:
        return int(self.input_shape[-2])

    @property
    def frames(self) -> int:
        return int(self.input_shape[-1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists; includes n_mels and frames)."""
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["receptive_field"] = list(self.receptive_field)
        data["n_mels"] = self.n_mels
        data["frames"] = self.frames
        return data


def complexity_report(model: nn.Module, input_shape: Sequence[int] = (1, 1, 128, 1000),
                      bits_per_elem: int = DEFAULT_BITS_PER_ELEM, *, model_name: Optional[str] = None,
                      trace: Optional[ModelTrace] = None) -> ComplexityReport:
    """Params, MACs, both peak memories and receptive field from a single trace.

    A peak memory that is undefined for the model (no convs / no blocks) is None.
    """
    trace = _get_trace(model, input_shape, trace)
    try:
        mem_cnn: Optional[float] = peak_memory_cnn(model, input_shape, bits_per_elem, trace=trace)
    except ValueError:
        mem_cnn = None
    try:
        mem_eff: Optional[float] = peak_memory_mnv3(model, input_shape, bits_per_elem, trace=trace)
    except ValueError:
        mem_eff = None
    return ComplexityReport(
        params=count_params(model), macs=trace.macs, peak_memory_kb=mem_cnn, peak_memory_efficient_kb=mem_eff,
        receptive_field=receptive_field(model, input_shape, trace=trace), input_shape=tuple(trace.input_shape),
        bits_per_elem=int(bits_per_elem), model=model_name, macs_by_kind=trace.macs_by_kind())
