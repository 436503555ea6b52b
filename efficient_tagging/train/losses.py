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

`kd_lambda` is the formula's weight, with the reference's one exception: `kd_lambda == 0` switches
distillation off (label loss only), here and in the trainer alike (`uses_teacher`).

Fine-tuning task kinds (single-label CE with mixup, masked BCE for partial labels, Hinton KD for
single-label) and the one entry point `task_loss` follow `distillation_loss` below; each
documents its reference formula. `kd_temperature` gives each kind's default temperature.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor


#: the distillation temperature when none is given, per task kind. Multi-label: 1, the AudioSet
#: recipe's (EfficientAT's ex_audioset.py). Single-label: 4, the usual value for Hinton's loss
#: (no anchor fine-tunes with KD); measured on the own-data learning benchmark (benchmarks/RESULTS.md):
#: with T = 1 the KD student was 3.1 points below no KD over three seeds, with T = 4 0.6 points
#: (within one standard error).
DEFAULT_KD_TEMPERATURE = {"multilabel": 1.0, "partial_multilabel": 1.0, "multiclass": 4.0}


def kd_temperature(kind: str, temperature: Optional[float] = None) -> float:
    """The distillation temperature of task `kind`: `temperature` if given, else the kind's default."""
    if temperature is None:
        if kind not in DEFAULT_KD_TEMPERATURE:
            raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(DEFAULT_KD_TEMPERATURE)}")
        return DEFAULT_KD_TEMPERATURE[kind]
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return float(temperature)


def _reduce(per_clip: Tensor, reduction: str, mean_name: str) -> Tensor:
    """`per_clip` as it is ("none") or its mean (`mean_name`: "mean", or "batchmean" where torch names it so)."""
    if reduction == "none":
        return per_clip
    if reduction != mean_name:
        raise ValueError(f"reduction must be '{mean_name}' or 'none', got {reduction!r}")
    return per_clip.mean()


def check_kd_lambda(kd_lambda: float) -> float:
    """The one range rule of `kd_lambda` (the label-loss weight): [0, 1]."""
    if not 0.0 <= kd_lambda <= 1.0:
        raise ValueError(f"kd_lambda must be in [0, 1], got {kd_lambda}")
    return float(kd_lambda)


def uses_teacher(kd_lambda: float, teacher_logits_available: bool) -> bool:
    """Whether a teacher enters the loss: when its logits are there and `kd_lambda > 0` (EfficientAT's
    rule: `kd_lambda == 0` switches distillation off, it does not mean "teacher only")."""
    return teacher_logits_available and kd_lambda > 0


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
    check_kd_lambda(kd_lambda)
    if not uses_teacher(kd_lambda, teacher_logits is not None):
        teacher_logits = None
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


# ------------------------------------------------------------------ fine-tuning task kinds
# The functions below extend the loss to the task kinds of fine-tuning (issue 10). Unlike
# `distillation_loss`, they take the *unmixed* targets plus the mixup pairs and do all the
# mixing themselves, so one call site serves every kind (integer class labels cannot be mixed
# before the loss, and partial labels must not have their known-mask mixed).

TASK_KINDS = ("multilabel", "multiclass", "partial_multilabel")

MixPairs = Union[tuple[Tensor, Tensor], Sequence[tuple[Tensor, Tensor]], None]


def _mix_pairs(mixup: MixPairs) -> list[tuple[Tensor, Tensor]]:
    """One (permutation, lam) pair or a sequence of them (applied in order) as a list."""
    if mixup is None or len(mixup) == 0:
        return []
    if isinstance(mixup[0], Tensor):  # a single pair: its first item is the permutation
        return [mixup]  # type: ignore[list-item]
    return list(mixup)  # type: ignore[arg-type]


def _apply_mix(x: Tensor, permutation: Tensor, lam: Union[Tensor, float]) -> Tensor:
    """x * lam + x[permutation] * (1 - lam), lam per sample (B,) or scalar, broadcast over classes."""
    batch = x.shape[0]
    permutation = permutation.to(x.device)
    if permutation.shape != (batch,):
        raise ValueError(f"mixup permutation has shape {tuple(permutation.shape)}, expected ({batch},)")
    lam = torch.as_tensor(lam, dtype=x.dtype, device=x.device)
    if lam.numel() == batch:
        lam = lam.reshape((batch,) + (1,) * (x.dim() - 1))
    elif lam.numel() == 1:
        lam = lam.reshape(())
    else:
        raise ValueError(f"mixup lam has {lam.numel()} values, expected 1 or the batch size {batch}")
    return lam * x + (1.0 - lam) * x[permutation]


def _mix_all(x: Tensor, mixes: list[tuple[Tensor, Tensor]]) -> Tensor:
    for permutation, lam in mixes:
        x = _apply_mix(x, permutation, lam)
    return x


def _teacher_mask(has_teacher: Optional[Tensor], batch: int, device: torch.device,
                  mixes: list[tuple[Tensor, Tensor]]) -> Tensor:
    """(B,) bool: clips with a teacher; a mixed clip has one only if both its sources do."""
    if has_teacher is None:
        mask = torch.ones(batch, dtype=torch.bool, device=device)
    else:
        if has_teacher.numel() != batch:
            raise ValueError(f"has_teacher has {has_teacher.numel()} values for a batch of {batch}")
        mask = has_teacher.to(device=device, dtype=torch.bool).reshape(batch)
    for permutation, _ in mixes:
        mask = mask & mask[permutation.to(device)]
    return mask


def _class_probabilities(labels: Tensor, num_classes: int) -> Tensor:
    """Integer labels (B,) -> one-hot float; (B, C) class probabilities pass through as float."""
    if labels.dim() == 1:
        if labels.is_floating_point():
            raise ValueError(f"single-label targets of shape (B,) must be integer class indices, got {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"class index out of range [0, {num_classes}): min {int(labels.min())}, "
                             f"max {int(labels.max())}")
        return F.one_hot(labels.long(), num_classes).float()
    if labels.dim() == 2 and labels.shape[1] == num_classes:
        return labels.float()
    raise ValueError(f"single-label targets must be (B,) class indices or (B, {num_classes}) class "
                     f"probabilities, got shape {tuple(labels.shape)}")


def single_label_loss(logits: Tensor, labels: Tensor, mixup: MixPairs = None,
                      reduction: str = "mean") -> Tensor:
    """Cross-entropy for single-label tasks (ESC-50, DCASE20) with mixup as EfficientAT computes it.

    Reference (EfficientAT `ex_esc50.py`, `ex_dcase20.py`): mixup is applied to the log-mel
    spectrograms with a per-sample lam ~ Beta(a, a) folded to max(lam, 1 - lam) and a batch
    permutation (`helpers.utils.mixup`), and the loss is

        samples_loss = lam * CE(logits, y, reduction="none") + (1 - lam) * CE(logits, y[perm], reduction="none")
        loss = samples_loss.mean()

    `y` there is an integer class index (DCASE20 without wavmix) or a one-hot / wavmix-soft
    class-probability vector (ESC-50's dataset always yields one-hot; both datasets' wavmix
    yields l * y1 + (1 - l) * y2), for which `F.cross_entropy` is the soft-target CE
    -sum(q * log_softmax(logits)). Soft-target CE is linear in q, so the reference's mixed loss
    equals the CE against the mixed probabilities; that is what is computed here, which also
    lets several mixes be chained (wavmix on the waveforms, then mixup on the spectrograms).

    Args:
        logits: (B, C) raw outputs.
        labels: (B,) integer class indices or (B, C) class probabilities, *not* yet mixed.
        mixup: None, one (permutation (B,), lam (B,) or scalar) pair, or a sequence of such
            pairs applied in order; lam is the weight of the clip's own label.
        reduction: "mean" (the reference) or "none" for the (B,) per-clip losses.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    # float32 even under autocast, as in distillation_loss
    student = logits.float()
    targets = _mix_all(_class_probabilities(labels.to(student.device), student.shape[1]), _mix_pairs(mixup))
    per_clip = -(targets * F.log_softmax(student, dim=1)).sum(dim=1)
    if reduction == "none":
        return per_clip
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return per_clip.mean()


def split_partial_targets(raw_targets: Tensor, num_classes: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """OpenMIC's packed (B, 2C) targets -> (binary labels (B, C) float, known mask (B, C) bool).

    Reference (EfficientAT `ex_openmic.py`): `y_mask = y[:, 20:]; y = (y[:, :20] > 0.5).float()`:
    the first half holds the (soft) instrument relevance, binarised at > 0.5, the second half
    says which labels were annotated. The reference multiplies the loss by the raw mask; the
    mask is binary in the PaSST OpenMIC files, here it is thresholded at 0.5 to a bool.
    """
    if raw_targets.dim() != 2 or raw_targets.shape[1] % 2:
        raise ValueError(f"partial-label targets must be (B, 2C): C labels then C known flags, "
                         f"got shape {tuple(raw_targets.shape)}")
    classes = raw_targets.shape[1] // 2 if num_classes is None else num_classes
    if raw_targets.shape[1] != 2 * classes:
        raise ValueError(f"partial-label targets have {raw_targets.shape[1]} columns, expected 2 x {classes}")
    return (raw_targets[:, :classes] > 0.5).float(), raw_targets[:, classes:] > 0.5


def reference_partial_wavmix(targets: Tensor, known_mask: Tensor, permutation: Tensor,
                             lam: Union[Tensor, float]) -> tuple[Tensor, Tensor]:
    """Labels and mask after waveform mixing the way EfficientAT's OpenMIC pipeline ends up with them.

    Reference (EfficientAT `datasets/openmic.py` `MixupDataset`, then `ex_openmic.py`): each
    clip's labels are zeroed where unknown, mixed with weight l >= 0.5, the known mask becomes
    the union of both clips' masks, and the training loop binarises the mixed labels at > 0.5
    (so a label survives only where the dominant clip has it, or both do). Use this after
    `data.augment.wavmix` (pass its permutation and lam) to reproduce the reference; the
    result feeds `masked_bce_loss` as unmixed targets. Note the reference's union marks a label
    as known-negative where only the non-dominant clip annotated it positive.
    """
    known = known_mask.to(torch.bool)
    zeroed = targets.float() * known.float()
    mixed = _apply_mix(zeroed, permutation, lam)
    permutation = permutation.to(known.device)
    return (mixed > 0.5).float(), known | known[permutation]


def _masked_bce_per_clip(logits: Tensor, targets: Tensor, known: Tensor) -> Tensor:
    # torch.where, not mask * bce: an unknown target may be NaN (0 * NaN is NaN) and must not
    # reach the loss or the gradient.
    safe_targets = torch.where(known, targets, torch.zeros_like(targets))
    bce = F.binary_cross_entropy_with_logits(logits, safe_targets, reduction="none")
    # Mean over *all* C classes, not over the known ones: the reference's
    # `(y_mask * samples_loss).mean()` divides by B * C.
    return torch.where(known, bce, torch.zeros_like(bce)).mean(dim=1)


def _partial_inputs(logits: Tensor, targets: Tensor, known_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if logits.dim() != 2 or targets.shape != logits.shape or known_mask.shape != logits.shape:
        raise ValueError(f"logits, targets and known_mask must all be (B, C); got {tuple(logits.shape)}, "
                         f"{tuple(targets.shape)}, {tuple(known_mask.shape)}")
    student = logits.float()
    return student, targets.to(student.device).float(), known_mask.to(device=student.device, dtype=torch.bool)


def _mix_partial(targets: Tensor, known: Tensor, mixes: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The mixed labels; the known mask stays each clip's own, as in the reference."""
    # Unknown labels enter the mix as 0, as in the reference, whose > 0.5 binarisation turns
    # OpenMIC's 0.5 relevance of unannotated labels into 0 (and it removes NaN placeholders).
    return _mix_all(torch.where(known, targets, torch.zeros_like(targets)), mixes)


def masked_bce_loss(logits: Tensor, targets: Tensor, known_mask: Tensor, mixup: MixPairs = None,
                    reduction: str = "mean") -> Tensor:
    """BCE for partially labelled multi-label tasks (OpenMIC): unknown labels give no loss, no gradient.

    Reference (EfficientAT `ex_openmic.py`):

        y_mix = y * lam + y[perm] * (1 - lam)          # only the labels are mixed
        samples_loss = y_mask * BCE(logits, y_mix, reduction="none")
        loss = samples_loss.mean()                     # mean over all B * C entries

    so the known mask of a mixed clip is its *own* mask: a label the partner clip did not
    annotate enters the mix as 0. The reduction divides by B * C, including unknown entries,
    like the reference (so a batch with few known labels gives a small loss, exactly as there).

    Args:
        logits: (B, C) raw outputs.
        targets: (B, C) labels in [0, 1], not yet mixed (see `split_partial_targets`); unknown
            entries may hold anything, NaN included: they enter a mix as 0, as in the
            reference (OpenMIC's 0.5 for "not annotated" fails its > 0.5 binarisation).
        known_mask: (B, C) bool (or 0/1), True where the label is known.
        mixup: None, one (permutation, lam) pair or a sequence applied in order.
        reduction: "mean" or "none" for the (B,) per-clip losses (each a mean over C).
    """
    student, targets, known = _partial_inputs(logits, targets, known_mask)
    targets = _mix_partial(targets, known, _mix_pairs(mixup))
    return _reduce(_masked_bce_per_clip(student, targets, known), reduction, "mean")


def single_label_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
                         mixup: MixPairs = None, reduction: str = "batchmean") -> Tensor:
    """Hinton's distillation term: T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    Reference: Hinton, Vinyals & Dean (2015), "Distilling the knowledge in a neural network",
    in the usual PyTorch form `F.kl_div(log_softmax(s / T), softmax(t / T), "batchmean") * T**2`
    (no anchor fine-tunes with KD; EfficientAT's AudioSet KD is the multi-label BCE form).
    The T^2 keeps the gradient scale independent of T. Unlike the multi-label form, the
    temperature softens the student too, as Hinton's does.

    Mixup: teacher logits belong to the unmixed clips; their *distributions* are mixed with the
    clips' (permutation, lam) pairs, like the labels (mixing logits would not be a mixture).

    Args:
        student_logits, teacher_logits: (B, C).
        temperature: T > 0.
        mixup: None, one (permutation, lam) pair or a sequence applied in order.
        reduction: "batchmean" (sum over classes, mean over clips) or "none" for (B,) per clip.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                         f"{tuple(student_logits.shape)} differ in shape")
    student = student_logits.float()
    teacher_probs = _mix_all(F.softmax(teacher_logits.to(student.device).float() / temperature, dim=1),
                             _mix_pairs(mixup))
    # kl_div uses xlogy: classes the teacher gives probability 0 contribute 0, not NaN
    per_clip = F.kl_div(F.log_softmax(student / temperature, dim=1), teacher_probs,
                        reduction="none").sum(dim=1) * temperature ** 2
    return _reduce(per_clip, reduction, "batchmean")


def _combine_with_teacher(label_per_clip: Tensor, kd_per_clip: Tensor, mask: Tensor,
                          kd_lambda: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The per-clip rule of `distillation_loss`: kd_lambda * label + (1 - kd_lambda) * kd where a
    teacher is present, label loss alone where not; batch mean; detached components."""
    per_clip = torch.where(mask, kd_lambda * label_per_clip + (1.0 - kd_lambda) * kd_per_clip, label_per_clip)
    n_teacher = mask.sum()
    # where(), not multiplication: rows without a teacher may be non-finite
    kd_mean = torch.where(mask, kd_per_clip, torch.zeros_like(kd_per_clip)).sum() / n_teacher.clamp(min=1)
    return per_clip.mean(), {
        "label_loss": label_per_clip.mean().detach(),
        "kd_loss": kd_mean.detach(),
        "teacher_fraction": (n_teacher.float() / mask.numel()).detach(),
    }


def task_loss(kind: str, logits: Tensor, targets: Tensor, *, known_mask: Optional[Tensor] = None,
              teacher_logits: Optional[Tensor] = None, has_teacher: Optional[Tensor] = None,
              kd_lambda: float = 0.1, temperature: Optional[float] = None,
              mixup: MixPairs = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The training loss of every task kind, with optional knowledge distillation: one entry point.

    Per clip, as in the AudioSet recipe (`distillation_loss`):

        loss_i = kd_lambda * label_i + (1 - kd_lambda) * kd_i    if clip i (and its mix partners) has a teacher
        loss_i = label_i                                         otherwise (or teacher_logits is None)

    and the loss is the batch mean. Per kind:

    - "multilabel": label = BCE, kd = BCE against sigmoid(teacher / T): exactly
      `distillation_loss` on the mixed labels.
    - "multiclass": label = `single_label_loss` (EfficientAT's mixup CE), kd = Hinton's
      `single_label_kd_loss` (T^2-scaled KL, teacher distributions mixed like the labels).
    - "partial_multilabel": label = `masked_bce_loss` (EfficientAT's OpenMIC loss: unknown labels
      give nothing, mean over all B * C entries), kd = BCE against sigmoid(teacher / T) over
      *all* classes: the teacher's guesses are exactly what a partially annotated clip lacks.

    Everything here takes the *unmixed* targets (and teacher logits of the unmixed clips): pass
    the batch's mixing steps as `mixup`, one (permutation, lam) pair or a sequence applied in
    order (wavmix, then mixup), and they are applied to labels and teacher probabilities alike.

    Args:
        kind: "multilabel", "multiclass" or "partial_multilabel".
        logits: (B, C) student outputs.
        targets: (B, C) multi-hot / soft labels; for "multiclass" also (B,) class indices.
        known_mask: (B, C) for "partial_multilabel" (required there, refused elsewhere).
        teacher_logits: (B, C) or None for the label loss only.
        has_teacher: (B,) bool, clips whose teacher row is valid; None means all.
        kd_lambda: weight of the label loss in [0, 1].
        temperature: softens the teacher (and, for "multiclass", the student, as Hinton's does);
            None = `kd_temperature(kind)` (1 for the multi-label kinds, 4 for "multiclass").

    Returns:
        The scalar loss and the detached components `label_loss`, `kd_loss` (mean over clips
        with a teacher, 0 when none) and `teacher_fraction`, as `distillation_loss` returns.
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(TASK_KINDS)}")
    check_kd_lambda(kd_lambda)
    if not uses_teacher(kd_lambda, teacher_logits is not None):
        teacher_logits, has_teacher = None, None
    if (known_mask is None) != (kind != "partial_multilabel"):
        raise ValueError("known_mask is required for kind 'partial_multilabel' and only for it"
                         f" (kind {kind!r}, known_mask {'given' if known_mask is not None else 'missing'})")
    temperature = kd_temperature(kind, temperature)
    mixes = _mix_pairs(mixup)
    student = logits.float()

    if kind == "multilabel":
        return _multilabel_task_loss(student, targets, teacher_logits, has_teacher, kd_lambda, temperature, mixes)
    if kind == "multiclass":
        label_per_clip = single_label_loss(student, targets, mixes, reduction="none")
    else:
        assert known_mask is not None  # required for this kind, checked above
        label_per_clip = _partial_label_per_clip(student, targets, known_mask, mixes)

    if teacher_logits is None:
        zero = student.new_zeros(())
        loss = label_per_clip.mean()
        return loss, {"label_loss": loss.detach(), "kd_loss": zero, "teacher_fraction": zero}
    kd_per_clip, mask = _fine_tuning_kd_per_clip(kind, student, teacher_logits, has_teacher, temperature, mixes)
    return _combine_with_teacher(label_per_clip, kd_per_clip, mask, kd_lambda)


def _multilabel_task_loss(student: Tensor, targets: Tensor, teacher_logits: Optional[Tensor],
                          has_teacher: Optional[Tensor], kd_lambda: float, temperature: float,
                          mixes: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
    """`task_loss` of kind "multilabel": the AudioSet recipe's `distillation_loss` on the mixed labels."""
    if targets.shape != student.shape:
        raise ValueError(f"multi-label targets {tuple(targets.shape)} and logits {tuple(student.shape)} "
                         f"differ in shape")
    labels = _mix_all(targets.to(student.device).float(), mixes)
    return distillation_loss(student, labels, teacher_logits, kd_lambda, temperature, has_teacher,
                             teacher_mix=mixes or None)


def _partial_label_per_clip(student: Tensor, targets: Tensor, known_mask: Tensor,
                            mixes: list[tuple[Tensor, Tensor]]) -> Tensor:
    """(B,) label losses of kind "partial_multilabel": `masked_bce_loss` per clip."""
    # `_partial_inputs` hands back the float32 `student` itself; it is called for its checks
    # and for the targets and known mask on the student's device
    student, labels, known = _partial_inputs(student, targets, known_mask)
    return _masked_bce_per_clip(student, _mix_partial(labels, known, mixes), known)


def _fine_tuning_kd_per_clip(kind: str, student: Tensor, teacher_logits: Tensor, has_teacher: Optional[Tensor],
                             temperature: float, mixes: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """(B,) distillation losses of kind "multiclass" (Hinton's) or "partial_multilabel" (BCE against
    the softened teacher over all classes), and the (B,) mask of the mixed clips that have a teacher."""
    if teacher_logits.shape != student.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and logits {tuple(student.shape)} "
                         f"differ in shape")
    batch = student.shape[0]
    mask = _teacher_mask(has_teacher, batch, student.device, [])
    # Missing rows become 0 before softmax/sigmoid: NaN placeholders must not poison the gradient.
    teacher = torch.where(mask[:, None], teacher_logits.to(student.device).float(), torch.zeros_like(student))
    mask = _teacher_mask(mask, batch, student.device, mixes)
    if kind == "multiclass":
        return single_label_kd_loss(student, teacher, temperature, mixes, reduction="none"), mask
    teacher_probs = _mix_all(torch.sigmoid(teacher / temperature), mixes)
    return F.binary_cross_entropy_with_logits(student, teacher_probs, reduction="none").mean(dim=1), mask
