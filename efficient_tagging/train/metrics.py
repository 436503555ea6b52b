"""Tagging metrics: per-class average precision, ROC AUC, mAP and d-prime.

Scores come from scikit-learn's `average_precision_score` and `roc_auc_score`, the functions
EfficientAT's evaluation uses. Where the reference would average in a meaningless value (AP
of a class with no positives) or crash (AUC of a class with a single label value), we put NaN
and leave the class out of the mean, counting how many were left out. On AudioSet's eval set,
where every class has positives, the numbers equal the reference's.
"""
from __future__ import annotations

import math
from typing import Any, Union

import numpy as np
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

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
