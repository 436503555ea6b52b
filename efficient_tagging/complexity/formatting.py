"""The complexity tool's forms of a measurement: EfficientAT-style sentences, the catalogue table
and JSON records. Everything here returns text or dicts; the command prints them."""
from __future__ import annotations

from typing import Any, Sequence

from .counting import ComplexityReport
from .targets import Target, family_for


def clip_phrase(duration: float) -> str:
    """How EfficientAT's sentences name the clip, e.g. "10-seconds"."""
    return f"{duration:g}-seconds"


def measurement_record(target: Target, report: ComplexityReport, layers: Sequence = ()) -> dict[str, Any]:
    """One JSON-friendly record: the report's exact numbers plus what was measured."""
    data = report.to_dict()
    data.update(model=target.name, arch=target.arch, config=target.config, preprocessing=target.preprocessing,
                duration=target.duration, published_map=target.published_map, catalogue_entry=target.catalogue_entry)
    if "tokens" in target.extra:
        data.update(tokens=target.extra["tokens"], token_grid=target.extra["grid"],
                    prefix_tokens=target.extra["prefix_tokens"])
    if layers:
        data["layers"] = [dict(name=l.name, type=l.type_name, kind=l.kind, macs=l.macs,
                               output_shape=list(l.output_shape) if l.output_shape else None) for l in layers]
    return data


def _memory_sentences(target: Target, report: ComplexityReport, clip: str, complexity_type: str,
                      memory_efficient: bool) -> list[str]:
    name = target.name
    if family_for(target.arch).is_teacher:
        return [f"Model '{name}': peak memory n/a (the CNN peak-memory models do not apply to transformers)."]
    lines = []
    if complexity_type == "all" or memory_efficient:
        if report.peak_memory_efficient_kb is None:
            lines.append(f"Model '{name}': memory-efficient peak memory is not defined (no inverted-residual blocks).")
        else:
            lines.append(f"Model '{name}' inference (memory efficient) of a single {clip} audio clip has a peak memory "
                         f"of {report.peak_memory_efficient_kb:.2f} kB.")
    if complexity_type == "all" or not memory_efficient:
        if report.peak_memory_kb is None:
            lines.append(f"Model '{name}': layer-by-layer peak memory is not defined (no convolutions).")
        else:
            lines.append(f"Model '{name}' inference of a single {clip} audio clip has a peak memory of "
                         f"{report.peak_memory_kb:.2f} kB.")
    return lines


def _detail_lines(target: Target, report: ComplexityReport, complexity_type: str, layers: Sequence) -> list[str]:
    """The exact numbers under the sentences: input, tokens, params/MACs, memory unit, per-layer MACs."""
    teacher = family_for(target.arch).is_teacher
    p = target.preprocessing
    hop = p.get("hopsize", "10 ms" if p.get("frontend") == "ast_fbank" else "?")
    lines = [f"  input spectrogram: {tuple(report.input_shape)} (n_mels={report.n_mels}, frames={report.frames}, "
             f"sr={p['sr']}, hop={hop}, frontend={p.get('frontend', 'mel')})"]
    if "tokens" in target.extra:
        grid_f, grid_t = target.extra["grid"]
        lines.append(f"  tokens: {target.extra['tokens']} ({grid_f}\u00d7{grid_t} patches + "
                     f"{target.extra['prefix_tokens']})")
    if complexity_type in ("computation", "all"):
        field_text = ("global (self-attention; patches are 16x16)" if teacher
                      else f"(freq, time): {report.receptive_field}")
        lines.append(f"  params: {report.params:,}   MACs: {report.macs:,}   receptive field {field_text}")
        shares = ", ".join(f"{kind} {macs / report.macs:.1%}" for kind, macs in report.macs_by_kind.items()
                           if report.macs)
        if shares:
            lines.append(f"  MACs by layer type: {shares}")
    if complexity_type in ("memory", "all") and not teacher:
        lines.append(f"  memory at {report.bits_per_elem} bits per element (kB = 1000 bytes)")
    if layers:
        width = max(len(l.name) for l in layers)
        lines.append(f"  {'layer':<{width}}  {'type':<18} {'MACs':>15}  output")
        for l in layers:
            shape = tuple(l.output_shape[1:]) if l.output_shape else ""
            lines.append(f"  {l.name:<{width}}  {l.type_name:<18} {l.macs:>15,}  {shape}")
    return lines


def describe_measurement(target: Target, report: ComplexityReport, complexity_type: str, memory_efficient: bool,
                         layers: Sequence = ()) -> list[str]:
    """EfficientAT-style sentences ('computation', 'memory' or 'all'), then the exact numbers."""
    clip = clip_phrase(target.duration)
    if target.preprocessing.get("frontend") == "ast_fbank":
        clip = f"{target.preprocessing.get('target_length', 1024) / 100:g}-seconds (AST fbank input)"
    lines = []
    if complexity_type in ("computation", "all"):
        lines.append(f"Model '{target.name}' has {report.params / 1e6:.2f} million parameters and inference of a "
                     f"single {clip} audio clip requires {report.macs / 1e9:.2f} billion multiply-accumulate "
                     "operations.")
    if complexity_type in ("memory", "all"):
        lines.extend(_memory_sentences(target, report, clip, complexity_type, memory_efficient))
    return lines + _detail_lines(target, report, complexity_type, layers)


def format_table(rows: Sequence[tuple[Target, ComplexityReport]]) -> str:
    """Aligned plain-text table."""
    header = ("model", "arch", "input", "params (M)", "MACs (G)", "mAP", "mem eff. (kB)", "mem (kB)", "RF")
    lines = []
    for target, r in rows:
        dataset = target.extra.get("dataset", "audioset")
        published = "-" if target.published_map is None else f"{target.published_map:.3f}"
        if target.published_map is not None and dataset != "audioset":
            published += f" ({'OpenMIC' if dataset == 'openmic' else dataset})"  # not an AudioSet mAP: say so
        lines.append((
            target.name, target.arch, f"{r.n_mels}x{r.frames}", f"{r.params / 1e6:.3f}", f"{r.macs / 1e9:.3f}",
            published,
            f"{r.peak_memory_efficient_kb:.1f}" if r.peak_memory_efficient_kb is not None else "-",
            f"{r.peak_memory_kb:.1f}" if r.peak_memory_kb is not None else "-",
            # a transformer's receptive field is the whole input after the first attention layer
            "global" if family_for(target.arch).is_teacher else f"{r.receptive_field[0]}x{r.receptive_field[1]}"))
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    left = {0, 1}  # text columns left-aligned, numbers right-aligned

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(row) for row in lines)])
