"""Export of taggers to other runtimes: ONNX (`onnx.py`: export, ONNX Runtime tagger, int8 quantization).

Needs the `onnx` extra (`pip install 'efficient_tagging[onnx]'`); onnx / onnxruntime / onnxscript are
imported when first used, so importing this package does not require them.
"""
from .onnx import (
    DEFAULT_OPSET,
    EXPORTERS,
    AgreementReport,
    OnnxMetadata,
    OnnxTagger,
    agreement_report,
    calibration_waveforms,
    export_onnx,
    max_logit_difference,
    quantize_int8,
    read_onnx_metadata,
)

__all__ = ["AgreementReport", "DEFAULT_OPSET", "EXPORTERS", "OnnxMetadata", "OnnxTagger", "agreement_report",
           "calibration_waveforms", "export_onnx", "max_logit_difference", "quantize_int8", "read_onnx_metadata"]
