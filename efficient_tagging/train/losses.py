"""Knowledge-distillation loss for training students on teacher logits.

The loss follows EfficientAT's `ex_audioset.py`:

    loss = kd_lambda * BCE(student_logits, labels)
         + (1 - kd_lambda) * BCE(student_logits, sigmoid(teacher_logits / temperature))

The temperature softens only the teacher: the reference divides the stored teacher logits by
the temperature before the sigmoid and feeds the student's raw logits to the BCE. Both terms
are means over classes and clips (the reference's `reduction="none"` followed by `.mean()`).

Mixup: the reference mixes the distillation *loss* of the two mixed clips with the mixup
weight. BCE with logits is linear in its target, so that equals the BCE against the mixed
teacher *probabilities*; `teacher_mix` below does exactly that. Mixing teacher *logits* would
be wrong (sigmoid is not linear), which is why the mixing happens here, after the sigmoid.
Labels are taken as given: the caller passes them already mixed (soft targets).

Clips without teacher logits (`has_teacher` False) get the label loss with weight 1, so
each clip's loss is

    loss_i = kd_lambda * label_i + (1 - kd_lambda) * kd_i    if clip i has a teacher
    loss_i = label_i                                         otherwise

and the batch loss is the mean of `loss_i`. With every clip covered this is exactly the
reference; a clip with no teacher still trains on its labels at full strength instead of
being silently down-weighted by `kd_lambda`.

`kd_lambda` is the formula's weight here (0 would mean teacher only); the trainer follows the
reference's rule that `kd_lambda == 0` switches distillation off by passing no teacher.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def distillation_loss(student_logits: Tensor, labels: Tensor, teacher_logits: Optional[Tensor],
                      kd_lambda: float, temperature: float, has_teacher: Optional[Tensor] = None, *,
                      teacher_mix: Union[tuple[Tensor, Tensor], Sequence[tuple[Tensor, Tensor]], None] = None,
                      ) -> tuple[Tensor, dict[str, Tensor]]:
    """Label BCE plus distillation BCE against temperature-softened teacher probabilities.

    Args:
        student_logits: (B, C) raw student outputs (no temperature applied, as in the reference).
        labels: (B, C) targets in [0, 1], already mixup-mixed if mixup is used.
        teacher_logits: (B, C) teacher logits of the *unmixed* clips, or None for label loss only.
            Rows of clips without a teacher may hold anything (zeros, NaN); they are masked.
        kd_lambda: weight of the label loss; 1 - kd_lambda weighs the distillation loss.
        temperature: teacher logits are divided by this before the sigmoid.
        has_teacher: (B,) bool mask of clips that have teacher logits; None means all do.
        teacher_mix: optional (permutation (B,), lam (B,) or scalar) from mixup, or a sequence of
            such pairs applied in order (wavmix, then mixup). Teacher
            probabilities become lam * p + (1 - lam) * p[permutation], and a mixed clip counts
            as having a teacher only if both of its source clips have one.

    Returns:
        The scalar loss and detached components: `label_loss` (mean label BCE over all clips),
        `kd_loss` (mean distillation BCE over clips with a teacher; 0 when there are none) and
        `teacher_fraction` (share of clips with a teacher).
    """
    if not 0.0 <= kd_lambda <= 1.0:
        raise ValueError(f"kd_lambda must be in [0, 1], got {kd_lambda}")
    # BCE in float32 even under autocast: fp16 log-sigmoid loses the small targets' signal.
    student = student_logits.float()
    label_per_clip = F.binary_cross_entropy_with_logits(student, labels.float(), reduction="none").mean(dim=1)
    batch = student.shape[0]

    if teacher_logits is None:
        zero = student.new_zeros(())
        loss = label_per_clip.mean()
        return loss, {"label_loss": loss.detach(), "kd_loss": zero, "teacher_fraction": zero}

    if has_teacher is None:
        mask = torch.ones(batch, dtype=torch.bool, device=student.device)
    else:
        mask = has_teacher.to(device=student.device, dtype=torch.bool).reshape(batch)
    # Replace missing rows before the sigmoid: 0 * NaN would still poison the loss and its gradient.
    teacher = torch.where(mask[:, None], teacher_logits.to(student.device).float(), torch.zeros_like(student))
    teacher_probs = torch.sigmoid(teacher / temperature)

    if teacher_mix is not None:
        # One (permutation, lam) pair, or several applied in order (e.g. wavmix, then mixup).
        mixes = [teacher_mix] if isinstance(teacher_mix[0], Tensor) else list(teacher_mix)
        for permutation, lam in mixes:
            permutation = permutation.to(student.device)
            lam = torch.as_tensor(lam, dtype=student.dtype, device=student.device)
            lam = lam.reshape(batch, 1) if lam.numel() == batch else lam.reshape(1, 1)
            teacher_probs = lam * teacher_probs + (1.0 - lam) * teacher_probs[permutation]
            mask = mask & mask[permutation]

    kd_per_clip = F.binary_cross_entropy_with_logits(student, teacher_probs, reduction="none").mean(dim=1)
    per_clip = torch.where(mask, kd_lambda * label_per_clip + (1.0 - kd_lambda) * kd_per_clip, label_per_clip)
    loss = per_clip.mean()

    n_teacher = mask.sum()
    # clamp keeps the division defined when no clip has a teacher; the masked sum is 0 then.
    kd_mean = (kd_per_clip * mask).sum() / n_teacher.clamp(min=1)
    components = {
        "label_loss": label_per_clip.mean().detach(),
        "kd_loss": kd_mean.detach(),
        "teacher_fraction": (n_teacher.float() / batch).detach(),
    }
    return loss, components
