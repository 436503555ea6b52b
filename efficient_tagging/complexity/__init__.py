"""Model complexity: parameters, multiply-accumulate operations, peak memory, receptive field.

- ``counting``: the measures themselves, from one traced forward pass (EfficientAT's definitions);
- ``targets``: what the complexity tool measures (catalogue rows, presets, fresh configs with
  overrides), built shape-only on the meta device, and the catalogue table;
- ``formatting``: the tool's sentences, table and JSON records;
- ``plot``: the complexity-vs-mAP plot (matplotlib, imported when drawing).

The names of the former single module stay importable from here.
"""
from .counting import (
    DEFAULT_BITS_PER_ELEM,
    DEFAULT_DURATION_S,
    DEFAULT_SAMPLE_RATE,
    MEMORY_EFFICIENT_SLICES,
    BlockRecord,
    ComplexityReport,
    LayerRecord,
    MacsRule,
    ModelTrace,
    cnn_memory_elements,
    complexity_report,
    count_macs,
    count_params,
    frontend_spectrogram_shape,
    macs_by_layer,
    mnv3_memory_elements,
    peak_memory_cnn,
    peak_memory_mnv3,
    receptive_field,
    receptive_field_of_layers,
    register_macs_rule,
    spectrogram_frames,
    spectrogram_shape,
    trace_model,
)
from .formatting import clip_phrase, describe_measurement, format_table, measurement_record
from .plot import ComplexityPlot, label_text_extent, place_labels, plot_complexity, write_plot
from .targets import (
    DEFAULT_MODEL,
    STUDENT_ARCHS,
    TEACHER_ARCHS,
    Target,
    TargetError,
    build_model,
    catalogue_targets,
    exact_catalogue_entry,
    measure,
    resolve_target,
    run_table,
    token_info,
)

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
    # public in counting too (the constants and the memory models' element lists)
    "DEFAULT_DURATION_S",
    "DEFAULT_SAMPLE_RATE",
    "MEMORY_EFFICIENT_SLICES",
    "MacsRule",
    "cnn_memory_elements",
    "mnv3_memory_elements",
    # what the complexity tool measures, and its output forms
    "ComplexityPlot",
    "DEFAULT_MODEL",
    "STUDENT_ARCHS",
    "TEACHER_ARCHS",
    "Target",
    "TargetError",
    "build_model",
    "catalogue_targets",
    "clip_phrase",
    "describe_measurement",
    "exact_catalogue_entry",
    "format_table",
    "label_text_extent",
    "measure",
    "measurement_record",
    "place_labels",
    "plot_complexity",
    "resolve_target",
    "run_table",
    "token_info",
    "write_plot",
]
