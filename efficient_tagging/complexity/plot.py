"""The complexity-vs-mAP trade-off plot of measured catalogue rows, with labels placed without overlap.

matplotlib is imported inside the functions: it is optional, and measuring never needs it.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

from .counting import ComplexityReport
from .targets import STUDENT_ARCHS, TEACHER_ARCHS, Target, family_for

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in display pixels

# Offsets (points) tried around each point: rings of growing radius, 12 directions per ring.
_RINGS = [5, 12, 20, 30, 42, 56, 72, 90, 110, 132, 156, 182, 210]
_DIRECTIONS = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in
               (20, -20, 160, 200, 60, -60, 120, 240, 90, 270, 0, 180)]


class ComplexityPlot(NamedTuple):
    figure: Any
    axes: Any
    labels: list  # matplotlib Annotations, one per labelled point
    points: int  # models plotted


class _Placement(NamedTuple):
    dx: float  # offset from the anchor, points
    dy: float
    ha: str
    va: str
    box: Box  # the label's box (with its gap) in display pixels


def _boxes_overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _candidate(px: float, py: float, width: float, height: float, radius: float, direction: tuple[float, float],
               to_pixels: float, gap: float) -> _Placement:
    """The label box at ``radius`` points from (px, py) in ``direction``, aligned away from the point."""
    cx, cy = direction
    dx, dy = radius * cx, radius * cy
    ha = "left" if cx > 0.1 else "right" if cx < -0.1 else "center"
    va = "bottom" if cy > 0.5 else "top" if cy < -0.5 else "center"
    x0 = px + dx * to_pixels - (0 if ha == "left" else width if ha == "right" else width / 2)
    y0 = py + dy * to_pixels - (0 if va == "bottom" else height if va == "top" else height / 2)
    return _Placement(dx, dy, ha, va, (x0 - gap, y0 - gap, x0 + width + gap, y0 + height + gap))


def _first_free(point: tuple[float, float], size: tuple[float, float], frame: Any, taken: Sequence[Box],
                to_pixels: float, gap: float) -> Optional[_Placement]:
    """The first candidate (inner rings first) inside ``frame`` that overlaps none of ``taken``."""
    for radius in _RINGS:
        for direction in _DIRECTIONS:
            place = _candidate(*point, *size, radius, direction, to_pixels, gap)
            box = place.box
            inside = box[0] >= frame.x0 and box[2] <= frame.x1 and box[1] >= frame.y0 and box[3] <= frame.y1
            if inside and not any(_boxes_overlap(box, other) for other in taken):
                return place
    return None


def place_labels(ax: Any, anchors: Sequence[tuple[float, float]], texts: Sequence[str], fontsize: float = 7) -> list:
    """Annotate each anchor (data coordinates) with its text so that no two labels overlap.

    Greedy placement in display space: labels are placed from the most crowded anchor outwards;
    each tries offsets on rings of growing radius (12 directions per ring) and takes the first
    whose text box lies inside the axes and intersects neither an already placed label nor a
    marker. Labels away from their point get a thin leader line. The axes limits and layout must
    be final before this is called (display coordinates are used).
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_pixels = fig.dpi / 72.0
    points_px = [tuple(ax.transData.transform(anchor)) for anchor in anchors]
    frame = ax.get_window_extent(renderer)
    marker_half = 4.0 * to_pixels  # markers are ~6 pt wide; keep labels just off them
    markers = [(x - marker_half, y - marker_half, x + marker_half, y + marker_half) for x, y in points_px]
    gap = 1.5 * to_pixels  # white space kept between boxes

    def crowding(i: int) -> int:
        x, y = points_px[i]
        return sum(abs(x - u) < 80 * to_pixels and abs(y - v) < 40 * to_pixels for u, v in points_px)

    order = sorted(range(len(anchors)), key=lambda i: (-crowding(i), points_px[i][0]))
    placed: list[Box] = []
    labels: list = [None] * len(anchors)
    for i in order:
        probe = ax.text(0, 0, texts[i], fontsize=fontsize, transform=None)  # only measured
        box = probe.get_window_extent(renderer)
        probe.remove()
        px, py = points_px[i]
        # a label must miss the labels placed so far and every other point's marker
        taken = placed + [m for j, m in enumerate(markers) if j != i]
        place = _first_free((px, py), (box.width, box.height), frame, taken, to_pixels, gap)
        if place is None:  # nowhere free: the far end of the last ring, counted as a failure by the test
            place = _Placement(_RINGS[-1], 0.0, "left", "center", (px, py, px, py))
        leader = (dict(arrowstyle="-", color="0.6", lw=0.5, shrinkA=1, shrinkB=3)
                  if math.hypot(place.dx, place.dy) > 14 else None)
        labels[i] = ax.annotate(texts[i], anchors[i], xytext=(place.dx, place.dy), textcoords="offset points",
                                fontsize=fontsize, ha=place.ha, va=place.va, zorder=4, arrowprops=leader)
        placed.append(place.box)
    return labels


def label_text_extent(label: Any, renderer: Any) -> Any:
    """Display box of an annotation's text alone (an Annotation's own extent includes its leader line)."""
    import matplotlib.text as mtext
    label.update_positions(renderer)
    return mtext.Text.get_window_extent(label, renderer)


def _on_audioset(target: Target) -> bool:
    return target.published_map is not None and target.extra.get("dataset", "audioset") == "audioset"


def _scatter_families(ax: Any, points: Sequence[tuple[Target, ComplexityReport]]
                      ) -> list[tuple[Target, ComplexityReport]]:
    """One marker style per family; returns the points to label (the best of each MACs value)."""
    to_label: list[tuple[Target, ComplexityReport]] = []
    for arch in (*STUDENT_ARCHS, *TEACHER_ARCHS):
        marker, color, label = family_for(arch).plot_style
        sel = [(t, r) for t, r in points if t.arch == arch]
        if sel:
            ax.scatter([r.macs / 1e9 for _, r in sel], [t.published_map for t, _ in sel], marker=marker, s=28,
                       color=color, label=label, zorder=3)
        # re-runs of one architecture (e.g. mn40_as, mn40_as(2)) share a MACs value: label the best only
        best: dict[int, tuple[Target, ComplexityReport]] = {}
        for t, r in sel:
            if r.macs not in best or t.published_map > best[r.macs][0].published_map:
                best[r.macs] = (t, r)
        to_label.extend(best.values())
    return to_label


def _frame_axes(ax: Any, points: Sequence[tuple[Target, ComplexityReport]], other_datasets: Sequence[str]) -> None:
    """Axis scales, titles and limits that leave room for labels around the outermost points."""
    ax.set_xscale("log")
    ax.set_xlabel("MACs per 10-s clip (billions, log scale)")
    ax.set_ylabel("published AudioSet mAP")
    title = "Complexity vs. performance of the released models"
    if other_datasets:
        title += f"\n(not shown: models whose published mAP is on another dataset: {', '.join(other_datasets)})"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if points:
        macs = [r.macs / 1e9 for _, r in points]
        maps = [t.published_map for t, _ in points]
        ax.set_xlim(min(macs) / 2.5, max(macs) * 4.0)
        span = max(maps) - min(maps) or 0.05
        ax.set_ylim(min(maps) - 0.12 * span, max(maps) + 0.12 * span)
        ax.legend(loc="lower right", fontsize=8)


def plot_complexity(rows: Sequence[tuple[Target, ComplexityReport]]) -> ComplexityPlot:
    """MACs (log x) vs published AudioSet mAP of the rows with an AudioSet mAP, labels placed without overlap.

    Rows whose published mAP is on another dataset (the OpenMIC-2008 PaSST models) are left out:
    they do not belong on the AudioSet axis.
    """
    import matplotlib
    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    points = [(t, r) for t, r in rows if _on_audioset(t)]
    other = sorted({str(t.extra.get("dataset")) for t, _ in rows
                    if t.published_map is not None and not _on_audioset(t)})
    fig, ax = plt.subplots(figsize=(12, 8), dpi=120)
    to_label = _scatter_families(ax, points)
    _frame_axes(ax, points, other)
    fig.tight_layout()
    labels = place_labels(ax, [(r.macs / 1e9, t.published_map) for t, r in to_label], [t.name for t, _ in to_label])
    return ComplexityPlot(fig, ax, labels, len(points))


def write_plot(rows: Sequence[tuple[Target, ComplexityReport]], path: str) -> int:
    """Write :func:`plot_complexity` to ``path`` (PNG); returns the number of plotted models."""
    import matplotlib.pyplot as plt

    plot = plot_complexity(rows)
    plot.figure.savefig(path, dpi=plot.figure.dpi)
    plt.close(plot.figure)
    return plot.points
