"""Export of taggers to other runtimes, one room per job: `graph.py` (rewrites that make a model
exportable; the in-graph mel frontend is `frontends.mel.GraphMelFrontend`), `onnx.py` (export_onnx, add_frontend), `metadata.py` (what an
export stores about itself, read back and checked), `runtime.py` (OnnxTagger: ONNX Runtime behind the
tagging API), `quantize.py` (int8 and its agreement report).

Needs the `onnx` extra (`pip install 'efficient_tagging[onnx]'`); onnx / onnxruntime / onnxscript are
imported when first used, so importing this package does not require them.
"""
from .metadata import DEFAULT_OPSET, EXPORTERS, OnnxMetadata, read_onnx_metadata
from .onnx import add_frontend, export_onnx
from .quantize import AgreementReport, agreement_report, calibration_waveforms, quantize_int8
from .runtime import OnnxTagger, max_logit_difference

__all__ = ["AgreementReport", "DEFAULT_OPSET", "EXPORTERS", "OnnxMetadata", "OnnxTagger", "add_frontend",
           "agreement_report", "calibration_waveforms", "export_onnx", "max_logit_difference", "quantize_int8",
           "read_onnx_metadata"]
