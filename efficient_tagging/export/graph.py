"""Graph rewrites for export: modules that compute what the PyTorch ones do in a form ONNX can hold.

- the in-graph mel frontend is ``frontends.mel.GraphMelFrontend``, beside the frontend it equals;
- :func:`exportable_model`: a copy of a student whose DyMN dynamic convolutions are their batch-free
  form (``models.dymn.BatchFreeDynamicConv2d``) and whose fixed average pools are convolutions;
- the graphs that are exported: spectrogram or waveform in, logits (and probabilities) out.
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.dymn import BatchFreeDynamicConv2d

# --------------------------------------------------------------------------------------
# graph modules
# --------------------------------------------------------------------------------------
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


def exportable_model(model: nn.Module) -> nn.Module:
    """The model itself, or an eval-mode copy in an exportable form of the same function.

    DyMN: dynamic convs become :class:`BatchFreeDynamicConv2d`, its context generator's strided
    average pools :class:`AvgPoolAsConv`. Other models are returned unchanged.
    """
    from ..models.dymn import DynamicConv2d

    if not any(isinstance(m, DynamicConv2d) for m in model.modules()):
        return model
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


def _global_pools_as_means(exported: Any) -> int:
    """Rewrite `adaptive_avg_pool2d` nodes that pool whole axes (output size 1 per pooled axis, the
    input size on the others -- DyMN's ``(None, 1)`` / ``(1, None)`` profiles) into `mean`.

    The same function; needed because the ATen decomposition of adaptive pooling turns a symbolic
    input length into a fixed kernel (the example's length), which would be wrong at any other
    length. Returns the number of nodes rewritten.
    """
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    aten = torch.ops.aten
    targets = (aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default)
    rewritten = 0
    graph = exported.graph_module.graph
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in targets:
            continue
        source, size = node.args[0], list(node.args[1])
        shape = source.meta["val"].shape
        axes: list[int] = []
        for axis, out in zip((len(shape) - 2, len(shape) - 1), size):
            if statically_known_true(out == shape[axis]):
                continue  # this axis is kept as it is
            if isinstance(out, int) and out == 1:
                axes.append(axis)
                continue
            axes = []
            break
        if axes:
            node.target, node.args, node.kwargs = aten.mean.dim, (source, axes, True), {}
            rewritten += 1
    if rewritten:
        graph.lint()
        exported.graph_module.recompile()
    return rewritten


class _ExportGraph(nn.Module):
    """What goes into the ONNX file: [frontend ->] model -> logits [, probabilities]."""

    def __init__(self, model: nn.Module, frontend: Optional[nn.Module], probabilities: bool,
                 task: Optional[str]) -> None:
        super().__init__()
        self.model = model
        self.frontend = frontend
        self.probabilities = probabilities
        self.softmax = task == "multiclass"

    def _outputs(self, spectrogram: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        logits = self.model(spectrogram)[0]
        if not self.probabilities:
            return logits
        return logits, (torch.softmax(logits, dim=-1) if self.softmax else torch.sigmoid(logits))


class _WaveformGraph(_ExportGraph):
    def forward(self, waveform: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        assert self.frontend is not None
        return self._outputs(self.frontend(waveform).unsqueeze(1))


class _SpectrogramGraph(_ExportGraph):
    def forward(self, spectrogram: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        return self._outputs(spectrogram)
