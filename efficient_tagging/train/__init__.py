"""Training utilities: distillation loss, LR schedules, metrics, run tracking, distributed helpers."""
from .distributed import DistInfo, all_gather_tensors, barrier, cleanup, init_distributed, is_main_process, reduce_sum
from .losses import (TASK_KINDS, distillation_loss, masked_bce_loss, reference_partial_wavmix, single_label_kd_loss,
                     single_label_loss, split_partial_targets, task_loss)
from .metrics import (accuracy_by_group, average_precision_per_class, d_prime, evaluate_masked_predictions,
                      evaluate_predictions, masked_average_precision_per_class, masked_map, masked_roc_auc_per_class,
                      mean_average_precision, multiclass_metrics, plot_confusion_matrix, roc_auc_per_class,
                      write_confusion_matrix_csv)
from .schedules import exp_warmup_linear_down, make_lr_scheduler
from .tracking import RunTracker

__all__ = ["DistInfo", "RunTracker", "TASK_KINDS", "accuracy_by_group", "all_gather_tensors",
           "average_precision_per_class", "barrier", "cleanup", "d_prime", "distillation_loss",
           "evaluate_masked_predictions", "evaluate_predictions", "exp_warmup_linear_down", "init_distributed",
           "is_main_process", "make_lr_scheduler", "masked_average_precision_per_class", "masked_bce_loss", "masked_map",
           "masked_roc_auc_per_class", "mean_average_precision", "multiclass_metrics", "plot_confusion_matrix",
           "reduce_sum", "reference_partial_wavmix", "roc_auc_per_class", "single_label_kd_loss", "single_label_loss",
           "split_partial_targets", "task_loss", "write_confusion_matrix_csv"]
