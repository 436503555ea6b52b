"""Training utilities: distillation loss, LR schedules, metrics, run tracking, distributed helpers."""
from .distributed import DistInfo, all_gather_tensors, barrier, cleanup, init_distributed, is_main_process, reduce_sum
from .losses import distillation_loss
from .metrics import (average_precision_per_class, d_prime, evaluate_predictions, mean_average_precision,
                      roc_auc_per_class)
from .schedules import exp_warmup_linear_down, make_lr_scheduler
from .tracking import RunTracker

__all__ = ["DistInfo", "RunTracker", "all_gather_tensors", "average_precision_per_class", "barrier", "cleanup",
           "d_prime", "distillation_loss", "evaluate_predictions", "exp_warmup_linear_down", "init_distributed",
           "is_main_process", "make_lr_scheduler", "mean_average_precision", "reduce_sum", "roc_auc_per_class"]
