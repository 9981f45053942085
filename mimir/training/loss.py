"""The mean-variance (heteroscedastic Gaussian) loss with missing targets.

For a batch the network gives (B, T, 2): standardised mean ``m`` and log
variance ``s`` per target. With standardised targets ``y`` (B, T), NaN where
missing, the loss is::

    mean over present entries of  exp(-s) * (y - m)^2 + s

which is twice the Gaussian negative log-likelihood up to a constant.
Missing entries contribute nothing (neither value nor gradient); a batch in
which every target is missing has loss 0 with a zero gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


def split_output(output: Tensor, num_targets: int) -> tuple[Tensor, Tensor]:
    """(mean, log variance), each (B, T), from network output (B, 2T) or (B, T, 2)."""
    out = output.reshape(output.shape[0], num_targets, 2)
    return out[..., 0], out[..., 1]


def mean_variance_loss(output: Tensor, target: Tensor) -> Tensor:
    """Gaussian mean-variance loss over the present targets (scalar tensor).

    Parameters
    ----------
    output:
        (B, 2T) or (B, T, 2) network output: standardised mean and log variance.
    target:
        (B, T) standardised targets; NaN marks a missing value.
    """
    num_targets = target.shape[1]
    mean, logvar = split_output(output, num_targets)
    present = torch.isfinite(target)
    zero = torch.zeros_like(mean)
    # Mask the inputs (not only the result) so that no inf/NaN of a missing
    # entry can leak into the gradient: a missing entry is exp(0) * 0 + 0.
    y = torch.where(present, target.to(mean.dtype), zero)
    m = torch.where(present, mean, zero)
    s = torch.where(present, logvar, zero)
    per_entry = torch.exp(-s) * torch.square(y - m) + s
    count = present.sum()
    return per_entry.sum() / count.clamp(min=1).to(per_entry.dtype)
