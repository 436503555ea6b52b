"""Class-balanced sampling (the reference's AudioSet recipe), usable with DistributedDataParallel."""
from __future__ import annotations

from typing import Iterator, Optional, Union

import numpy as np
import torch
from torch.utils.data import Sampler


def class_balanced_weights(targets: np.ndarray, offset: int = 100, sum_weights: bool = True,
                           chunk_rows: int = 65536, source: str = "") -> np.ndarray:
    """Per-clip sampling weights that balance classes, as in EfficientAT/PaSST.

    Same formula as the reference's `get_ft_cls_balanced_sample_weights`:

        count_c  = offset + number of clips labelled with class c
        weight_c = 1000 / count_c
        w_i      = sum_c y_ic * weight_c        (max_c instead of the sum if sum_weights=False)

    The offset keeps very rare classes from dominating. Clips without any label get weight 0
    and are never drawn. `targets` is the (N, C) multi-hot matrix (e.g. `AudioSetDataset.targets`);
    it is processed in row chunks so AudioSet-sized matrices need no float copy.
    Targets without a single positive label (every clip would get weight 0) are a ValueError
    naming `source` (the data files). Returns float64 (N,).
    """
    targets = np.asarray(targets)
    if targets.ndim != 2:
        raise ValueError(f"targets must be an (N, num_classes) multi-hot matrix, got shape {targets.shape}")
    counts = np.zeros(targets.shape[1], dtype=np.float64)
    for start in range(0, len(targets), chunk_rows):
        counts += (targets[start:start + chunk_rows] > 0).sum(axis=0)
    if len(targets) and not counts.any():
        raise ValueError(no_positive_labels_message(len(targets), targets.shape[1], source))
    class_weights = 1000.0 / (counts + offset)
    weights = np.empty(len(targets), dtype=np.float64)
    for start in range(0, len(targets), chunk_rows):
        block = (targets[start:start + chunk_rows] > 0)
        if sum_weights:
            weights[start:start + len(block)] = block @ class_weights
        else:
            weights[start:start + len(block)] = (block * class_weights).max(axis=1, initial=0.0)
    return weights


def no_positive_labels_message(num_clips: int, num_classes: int, source: str = "") -> str:
    where = f" in {source}" if source else ""
    return (f"the dataset has no positive labels: all {num_clips} clips{where} have an all-zero target over "
            f"{num_classes} classes, so class-balanced sampling has nothing to draw. Check the 'target' column "
            f"(packed multi-hot bits) and num_classes of the file(s), or the label CSV used to prepare them")


def check_positive_labels(targets: np.ndarray, source: str = "", chunk_rows: int = 65536) -> None:
    """Raise a ValueError naming `source` if no clip of `targets` (N, C) has a single positive label."""
    targets = np.asarray(targets)
    for start in range(0, len(targets), chunk_rows):
        if targets[start:start + chunk_rows].any():
            return
    if len(targets):
        raise ValueError(no_positive_labels_message(len(targets), targets.shape[1] if targets.ndim == 2 else 0,
                                                    source))


def _distributed_defaults(num_replicas: Optional[int], rank: Optional[int]) -> tuple[int, int]:
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if initialised else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
    return num_replicas, rank


class DistributedWeightedSampler(Sampler[int]):
    """Weighted random sampling whose epoch is split across DDP ranks.

    Every rank draws the same `num_samples` indices (rounded up to a multiple of the world
    size) with `torch.multinomial` from a generator seeded by `seed + epoch`, and keeps every
    `num_replicas`-th one starting at its rank: the ranks together reproduce one
    single-process epoch and all get the same number of samples. Call `set_epoch` before
    each epoch. Works without torch.distributed (one replica, rank 0).

    Like the reference (`WeightedRandomSampler(replacement=False)`), an epoch is drawn without
    replacement by default: no clip repeats within an epoch, so an epoch can hold at most as
    many clips as have a non-zero weight. `replacement=True` (`--sampler_replacement`) lifts that.
    """

    def __init__(self, weights: Union[np.ndarray, torch.Tensor, list], num_samples: int,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None, replacement: bool = False,
                 seed: int = 0):
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if self.weights.ndim != 1 or len(self.weights) == 0:
            raise ValueError(f"weights must be a non-empty 1-D sequence, got shape {tuple(self.weights.shape)}")
        if not torch.isfinite(self.weights).all() or (self.weights < 0).any():
            raise ValueError("weights must be finite and non-negative")
        if self.weights.sum() <= 0:
            raise ValueError(f"weights must be finite, non-negative and not all zero: all {len(self.weights)} are "
                             f"zero, so no clip can be drawn (class-balanced weights are all zero when the dataset "
                             f"has no positive labels)")
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.num_replicas, self.rank = _distributed_defaults(num_replicas, rank)
        self.num_samples = int(num_samples)  # per epoch, over all ranks
        self.samples_per_rank = -(-self.num_samples // self.num_replicas)
        self.total_size = self.samples_per_rank * self.num_replicas
        nonzero = int((self.weights > 0).sum())
        if not replacement and self.total_size > nonzero:
            raise ValueError(f"cannot draw an epoch of {self.total_size} clips without replacement from "
                             f"{nonzero} clips with a non-zero sampling weight: lower --epoch_len to at most "
                             f"{nonzero}, or pass --sampler_replacement")
        self.replacement = replacement
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> torch.Tensor:
        """All ranks' indices of the current epoch (identical on every rank)."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.multinomial(self.weights, self.total_size, self.replacement, generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.samples_per_rank

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
