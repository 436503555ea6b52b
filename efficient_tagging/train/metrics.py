"""Tagging metrics: per-class average precision, ROC AUC, mAP and d-prime.

Scores come from scikit-learn's `average_precision_score` and `roc_auc_score`, the functions
EfficientAT's evaluation uses. Where the reference would average in a meaningless value (AP
of a class with no positives) or crash (AUC of a class with a single label value), we put NaN
and leave the class out of the mean, counting how many were left out. On AudioSet's eval set,
where every class has positives, the numbers equal the reference's.

Fine-tuning adds single-label metrics (accuracy, per-class accuracy, confusion matrix and its
CSV/PNG writers), accuracy per group (e.g. DCASE20 device) and the partial-label (OpenMIC)
mAP over known entries only; each function names its reference.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from ..locking import FileLock, lock_path_for

ArrayLike = Union[np.ndarray, torch.Tensor]


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def _columns(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    # Boolean column selection returns a Fortran-ordered copy, on which sklearn's multilabel
    # scoring is >10x slower; a C-ordered copy keeps 20k x 527 at a few seconds.
    return np.ascontiguousarray(x[:, keep])


def _binary_targets(targets: ArrayLike) -> np.ndarray:
    # Eval targets usually arrive as float 0./1. tensors; sklearn wants a binary indicator.
    t = _to_numpy(targets)
    if t.ndim != 2:
        raise ValueError(f"targets must be N x C, got shape {t.shape}")
    return (t >= 0.5).astype(np.int8)


def average_precision_per_class(targets: ArrayLike, scores: ArrayLike) -> np.ndarray:
    """AP of each class (C,); NaN for classes without a positive example."""
    t, s = _binary_targets(targets), _to_numpy(scores).astype(np.float64)
    ap = np.full(t.shape[1], np.nan)
    valid = t.sum(axis=0) > 0
    if valid.any():
        ap[valid] = average_precision_score(_columns(t, valid), _columns(s, valid), average=None)
    return ap


def roc_auc_per_class(targets: ArrayLike, scores: ArrayLike) -> np.ndarray:
    """ROC AUC of each class (C,); NaN where a class has only positives or only negatives."""
    t, s = _binary_targets(targets), _to_numpy(scores).astype(np.float64)
    auc = np.full(t.shape[1], np.nan)
    positives = t.sum(axis=0)
    valid = (positives > 0) & (positives < t.shape[0])
    if valid.any():
        auc[valid] = roc_auc_score(_columns(t, valid), _columns(s, valid), average=None)
    return auc


def mean_average_precision(targets: ArrayLike, scores: ArrayLike) -> float:
    """Mean AP over classes that have positives (NaN if none do).

    How many classes were left out is `num_classes_ignored` in `evaluate_predictions`.
    """
    ap = average_precision_per_class(targets, scores)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else math.nan


def d_prime(auc: Union[float, np.ndarray]) -> Union[float, np.ndarray]:
    """Sensitivity index d' = sqrt(2) * inverse normal CDF of the AUC (0 at chance, AUC 0.5)."""
    value = math.sqrt(2.0) * norm.ppf(auc)
    return float(value) if np.ndim(value) == 0 else value


def evaluate_predictions(targets: ArrayLike, logits: ArrayLike) -> dict[str, Any]:
    """All tagging metrics for N x C targets and logits (or any monotone scores).

    Returns `mAP`, `mean_roc_auc`, `d_prime` (of the mean AUC, as AudioSet papers report it),
    `per_class_ap` (list, NaN for ignored classes), `num_classes_evaluated` and
    `num_classes_ignored` (classes without positives).
    """
    # Both metrics only rank the scores, so logits work as well as probabilities and avoid the
    # ties a saturated float32 sigmoid would create.
    ap = average_precision_per_class(targets, logits)
    auc = roc_auc_per_class(targets, logits)
    evaluated = int(np.isfinite(ap).sum())
    mean_auc = float(np.nanmean(auc)) if np.isfinite(auc).any() else math.nan
    return {
        "mAP": float(np.nanmean(ap)) if evaluated else math.nan,
        "mean_roc_auc": mean_auc,
        "d_prime": d_prime(mean_auc) if math.isfinite(mean_auc) else math.nan,
        "per_class_ap": [float(v) for v in ap],
        "num_classes_evaluated": evaluated,
        "num_classes_ignored": int(ap.size - evaluated),
    }


# ------------------------------------------------------------------ fine-tuning task kinds
# Single-label metrics (ESC-50, DCASE20, own data), per-group accuracy (DCASE20 devices) and
# mAP with partial labels (OpenMIC), plus the confusion-matrix writers (CSV and PNG).

PathLike = Union[str, "os.PathLike[str]"]


def _class_indices(labels: ArrayLike, num_classes: int) -> np.ndarray:
    """(N,) integer labels, or (N, C) one-hot / class probabilities reduced by argmax."""
    y = _to_numpy(labels)
    if y.ndim == 2:
        if y.shape[1] != num_classes:
            raise ValueError(f"labels have {y.shape[1]} columns, logits {num_classes}")
        # EfficientAT's ESC-50 evaluation: accuracy_score(targets.argmax(axis=1), outputs.argmax(axis=1))
        return y.argmax(axis=1).astype(np.int64)
    if y.ndim != 1:
        raise ValueError(f"labels must be (N,) class indices or (N, C), got shape {y.shape}")
    if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError("labels of shape (N,) must be integer class indices")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"class index out of range [0, {num_classes}): min {y.min()}, max {y.max()}")
    return y


def _predictions_and_labels(logits: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, int]:
    scores = _to_numpy(logits)
    if scores.ndim != 2:
        raise ValueError(f"logits must be N x C, got shape {scores.shape}")
    y = _class_indices(labels, scores.shape[1])
    if y.shape[0] != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} rows of logits but {y.shape[0]} labels")
    return scores.argmax(axis=1).astype(np.int64), y, scores.shape[1]


def multiclass_metrics(logits: ArrayLike, labels: ArrayLike,
                       class_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix of a single-label task.

    Reference: EfficientAT's `ex_esc50.py` / `ex_dcase20.py` report
    `sklearn.metrics.accuracy_score(labels, logits.argmax(axis=1))` (labels one-hot in ESC-50,
    reduced by argmax; integer in DCASE20); both forms are accepted here. Per-class accuracy
    (the recall of each class) and the confusion matrix are additions; a class without
    examples has per-class accuracy NaN and is left out of `mean_class_accuracy`.

    Returns: `accuracy`, `mean_class_accuracy` (macro average, "balanced accuracy"),
    `per_class_accuracy` {name: value}, `per_class_count` {name: examples},
    `confusion_matrix` (C x C int64 array, rows = true class, columns = predicted),
    `class_names`, `num_examples`.
    """
    predictions, y, num_classes = _predictions_and_labels(logits, labels)
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y, predictions), 1)
    counts = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, np.diag(matrix) / np.maximum(counts, 1), np.nan)
    total = int(counts.sum())
    return {
        "accuracy": float(np.trace(matrix) / total) if total else math.nan,
        "mean_class_accuracy": float(np.nanmean(per_class)) if np.isfinite(per_class).any() else math.nan,
        "per_class_accuracy": {name: float(v) for name, v in zip(names, per_class)},
        "per_class_count": {name: int(c) for name, c in zip(names, counts)},
        "confusion_matrix": matrix,
        "class_names": names,
        "num_examples": total,
    }


def accuracy_by_group(logits: ArrayLike, labels: ArrayLike, groups: Sequence[Any],
                      seen_groups: Optional[Sequence[Any]] = None) -> dict[str, dict[str, Any]]:
    """Accuracy per group of clips (e.g. per DCASE20 recording device), with counts.

    Each group's entry has `accuracy`, `correct` and `count`; the overall accuracy is
    sum(accuracy * count) / sum(count) over the groups. With `seen_groups` (e.g. the devices
    of the training split) each entry also says `seen`: False marks DCASE20's unseen devices.
    Groups are keyed by their string form, in sorted order (a, b, c, s1, ... for DCASE20).
    (The reference reports overall accuracy only; this table is an addition.)
    """
    predictions, y, _ = _predictions_and_labels(logits, labels)
    group_keys = np.asarray([str(g) for g in groups])
    if group_keys.shape[0] != y.shape[0]:
        raise ValueError(f"{group_keys.shape[0]} group values for {y.shape[0]} clips")
    seen = None if seen_groups is None else {str(g) for g in seen_groups}
    correct = predictions == y
    table: dict[str, dict[str, Any]] = {}
    for key in sorted(set(group_keys.tolist())):
        members = group_keys == key
        n_correct, n = int(correct[members].sum()), int(members.sum())
        entry: dict[str, Any] = {"accuracy": n_correct / n, "correct": n_correct, "count": n}
        if seen is not None:
            entry["seen"] = key in seen
        table[key] = entry
    return table


def _binary_known(targets: ArrayLike, known_mask: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t, known = _to_numpy(targets), _to_numpy(known_mask)
    if t.ndim != 2 or known.shape != t.shape:
        raise ValueError(f"targets and known_mask must both be N x C, got {t.shape} and {known.shape}")
    # > 0.5 as the reference's `y[:, :20] > 0.5` (OpenMIC relevance; unannotated labels are 0.5)
    return (np.nan_to_num(t, nan=0.0) > 0.5), known.astype(bool)


def _per_class_over_known(metric: Any, targets: ArrayLike, scores: ArrayLike, known_mask: ArrayLike,
                          needs_negatives: bool) -> np.ndarray:
    """`metric(y, s)` of each class over the clips where that class is known; NaN where the known
    clips have no positive (or, with `needs_negatives`, no negative)."""
    t, known = _binary_known(targets, known_mask)
    s = _to_numpy(scores).astype(np.float64)
    if s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and targets {t.shape} differ in shape")
    values = np.full(t.shape[1], np.nan)
    for c in range(t.shape[1]):
        rows = known[:, c]
        positives = int(t[rows, c].sum())
        if positives and (not needs_negatives or positives < int(rows.sum())):
            values[c] = metric(t[rows, c].astype(np.int8), s[rows, c])
    return values


def masked_average_precision_per_class(targets: ArrayLike, scores: ArrayLike, known_mask: ArrayLike) -> np.ndarray:
    """AP of each class over the clips where that class is known (C,); NaN where no known positive.

    Reference (EfficientAT `ex_openmic.py` `_test`):
    `average_precision_score(targets[:, i], outputs[:, i], sample_weight=mask[:, i])` per class;
    a zero weight removes the clip from the ranking, so this equals AP over the known entries.
    Deliberate difference: a class without known positives gets NaN (left out of the mean) where
    the reference would average in sklearn's degenerate value; scores may be logits, as AP only
    ranks them (the reference ranks sigmoid(logits), equal up to float32 saturation ties).
    """
    return _per_class_over_known(average_precision_score, targets, scores, known_mask, needs_negatives=False)


def masked_roc_auc_per_class(targets: ArrayLike, scores: ArrayLike, known_mask: ArrayLike) -> np.ndarray:
    """ROC AUC of each class over its known clips (the reference's `roc_auc_score(..., sample_weight=mask)`);
    NaN where the known clips of a class are all positive or all negative."""
    return _per_class_over_known(roc_auc_score, targets, scores, known_mask, needs_negatives=True)


def masked_map(targets: ArrayLike, scores: ArrayLike, known_mask: ArrayLike) -> float:
    """Mean over classes of `masked_average_precision_per_class` (classes without known positives
    left out; NaN if none has one). The reference's OpenMIC mAP is the plain mean of the per-class APs."""
    ap = masked_average_precision_per_class(targets, scores, known_mask)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else math.nan


def evaluate_masked_predictions(targets: ArrayLike, logits: ArrayLike, known_mask: ArrayLike) -> dict[str, Any]:
    """`evaluate_predictions` for partial labels: `mAP`, `mean_roc_auc`, `per_class_ap`,
    `num_classes_evaluated`, `num_classes_ignored`, each over the known entries only."""
    ap = masked_average_precision_per_class(targets, logits, known_mask)
    auc = masked_roc_auc_per_class(targets, logits, known_mask)
    evaluated = int(np.isfinite(ap).sum())
    return {
        "mAP": float(np.nanmean(ap)) if evaluated else math.nan,
        "mean_roc_auc": float(np.nanmean(auc)) if np.isfinite(auc).any() else math.nan,
        "per_class_ap": [float(v) for v in ap],
        "num_classes_evaluated": evaluated,
        "num_classes_ignored": int(ap.size - evaluated),
    }


def _checked_matrix(matrix: ArrayLike, class_names: Sequence[str]) -> np.ndarray:
    m = _to_numpy(matrix) if not isinstance(matrix, (list, tuple)) else np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square C x C, got shape {m.shape}")
    if len(class_names) != m.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {m.shape[0]} x {m.shape[0]} confusion matrix")
    return m


def _write_atomically(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file and rename, locked against a second writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path_for(path), what=f"writing {path}"):
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return path


def write_confusion_matrix_csv(path: PathLike, matrix: ArrayLike, class_names: Sequence[str]) -> Path:
    """The confusion matrix as CSV: a header `true \\ predicted,<class>,...`, then one row per true
    class starting with its name. Written atomically (temp + rename) under a lock."""
    m = _checked_matrix(matrix, class_names)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true \\ predicted", *class_names])
    integral = np.issubdtype(m.dtype, np.integer)
    for name, row in zip(class_names, m):
        writer.writerow([name, *(int(v) if integral else float(v) for v in row)])
    return _write_atomically(path, buffer.getvalue().encode("utf-8"))


def plot_confusion_matrix(path: PathLike, matrix: ArrayLike, class_names: Sequence[str],
                          title: Optional[str] = None, dpi: int = 120) -> Path:
    """The confusion matrix as a PNG: cells coloured by the row-normalised rate (so rare and
    common classes read alike), non-zero counts written in the cells, every class named.

    The figure grows with the class count so 50 classes (ESC-50) stay legible; matplotlib's
    Agg canvas is used directly (no pyplot, no global backend switch). Written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = _checked_matrix(matrix, class_names).astype(np.float64)
    n = m.shape[0]
    rows = m.sum(axis=1, keepdims=True)
    rates = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    longest = max((len(str(name)) for name in class_names), default=1)
    cell = 0.32 if n > 20 else 0.6                       # inches per cell
    label_room = 0.9 + 0.065 * min(longest, 40)          # inches for the tick labels
    side = max(4.0, n * cell)
    figure = Figure(figsize=(side + label_room + 1.2, side + label_room + 0.6), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_axes([(label_room) / (side + label_room + 1.2), label_room / (side + label_room + 0.6),
                            side / (side + label_room + 1.2), side / (side + label_room + 0.6)])
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    font = 7 if n > 20 else 9
    axes.set_xticks(range(n))
    axes.set_yticks(range(n))
    axes.set_xticklabels([str(c) for c in class_names], rotation=90, fontsize=font)
    axes.set_yticklabels([str(c) for c in class_names], fontsize=font)
    axes.set_xlabel("predicted", fontsize=font + 2)
    axes.set_ylabel("true", fontsize=font + 2)
    if title:
        axes.set_title(title, fontsize=font + 3)
    integral = np.allclose(m, np.round(m))
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                text = f"{int(round(m[i, j]))}" if integral else f"{m[i, j]:.2g}"
                axes.text(j, i, text, ha="center", va="center", fontsize=font if n > 20 else font - 1,
                          color="white" if rates[i, j] > 0.5 else "black")
    colorbar_axes = figure.add_axes([(label_room + side + 0.2) / (side + label_room + 1.2),
                                     label_room / (side + label_room + 0.6), 0.2 / (side + label_room + 1.2),
                                     side / (side + label_room + 0.6)])
    colorbar = figure.colorbar(image, cax=colorbar_axes)
    colorbar.set_label("share of the true class", fontsize=font + 1)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return _write_atomically(path, buffer.getvalue())
