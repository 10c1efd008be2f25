"""Segmentation losses: Focal Tversky (lung) and a partial-label loss (infection, binary or multiclass).

Focal Tversky (Abraham & Khan 2019, arXiv:1810.07842): for class ``c`` with probabilities ``p`` and
one-hot target ``g`` summed over the batch and pixels,
``TI_c = (TP + s) / (TP + alpha * FN + beta * FP + s)`` and ``FTL = mean_c (1 - TI_c) ** (1 / gamma)``.
``alpha = 0.7`` weighs false negatives more than false positives (``beta = 0.3``), which favours keeping
dense (consolidated) lung inside the mask; ``gamma = 4/3`` focuses on the harder, less accurate classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def focal_tversky_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.7,
    beta: float = 0.3,
    gamma: float = 4.0 / 3.0,
    smooth: float = 1.0,
    classes: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Focal Tversky loss.

    Args:
        probs: ``(B, C, H, W)`` class probabilities (softmax output), or ``(B, 1, H, W)`` sigmoid output.
        target: ``(B, H, W)`` integer labels in ``0..C-1`` (or ``0/1`` for a single channel).
        classes: which channels enter the mean (default: all but the background of a multi-class output).
    """
    n_classes = probs.shape[1]
    if n_classes == 1:
        onehot = target.unsqueeze(1).float()
        classes = (0,)
    else:
        onehot = F.one_hot(target.long(), n_classes).permute(0, 3, 1, 2).float()
        classes = classes if classes is not None else tuple(range(1, n_classes))
    dims = (0, 2, 3)
    tp = (probs * onehot).sum(dims)
    fn = ((1 - probs) * onehot).sum(dims)
    fp = (probs * (1 - onehot)).sum(dims)
    tversky = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
    idx = torch.tensor(classes, device=probs.device)
    return ((1 - tversky[idx]).clamp_min(0) ** (1.0 / gamma)).mean()


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of one foreground probability map ``(B, H, W)`` against a 0/1 target (batch-pooled)."""
    inter = (prob * target).sum()
    return 1 - (2 * inter + smooth) / (prob.sum() + target.sum() + smooth)


def partial_label_infection_loss(
    logits: torch.Tensor, target: torch.Tensor, multiclass: torch.Tensor, class_weight: float = 1.0
) -> torch.Tensor:
    """Infection loss for mixed supervision.

    ``logits`` ``(B, 3, H, W)`` (background, GGO, consolidation); ``target`` ``(B, H, W)``: for multiclass
    samples 0/1/2, for binary-only samples 0/1 (1 = infection of unknown type); ``multiclass`` ``(B,)`` bool.

    Every sample supervises the union ``p_inf = p_ggo + p_cons`` (binary cross-entropy + soft Dice);
    multiclass samples also supervise the classes (cross-entropy + soft Dice of GGO and consolidation).
    """
    probs = torch.softmax(logits.float(), dim=1)
    union_t = (target > 0).float()
    p_inf = (probs[:, 1] + probs[:, 2]).clamp(1e-6, 1 - 1e-6)
    loss = F.binary_cross_entropy(p_inf, union_t) + soft_dice_loss(p_inf, union_t)
    mc = multiclass.bool()
    if bool(mc.any()):
        t = target[mc].long()
        loss = loss + class_weight * F.cross_entropy(logits[mc].float(), t)
        for c in (1, 2):
            if bool((t == c).any()):
                loss = loss + 0.5 * class_weight * soft_dice_loss(probs[mc][:, c], (t == c).float())
    return loss
