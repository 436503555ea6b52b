"""Graph rewrites for export: modules that compute what the PyTorch ones do in a form ONNX can hold.

- the in-graph mel frontend is ``frontends.mel.GraphMelFrontend``, beside the frontend it equals;
- :func:`exportable_model`: the model in its family's export form (for DyMN a copy whose dynamic
  convolutions are batch-free and whose fixed average pools are convolutions, see ``models.dymn``);
- the graphs that are exported: spectrogram or waveform in, logits (and probabilities) out.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..models.registry import family_of

def exportable_model(model: nn.Module) -> nn.Module:
    """The model itself, or an eval-mode copy in its family's exportable form of the same function
    (`ModelFamily.export_form`: DyMN's batch-free dynamic convolutions, average pools as convolutions)."""
    family = family_of(model)
    return family.export_form(model) if family is not None else model


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
