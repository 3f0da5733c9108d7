"""The digits task shared by `narset demo` and the evidence harness (benchmarks/ml_effect.py): scikit-learn's
bundled 8x8 digits in one fixed split, and the 64 -> hidden -> 10 MLP. Imports torch and scikit-learn."""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DigitsMLP", "digits_split"]

Batch = tuple[torch.Tensor, torch.Tensor]


@cache
def digits_split() -> tuple[Batch, Batch, Batch]:
    """(train, validation, test): 1000, 300 and 497 samples, pixels scaled to [0, 1]; the same for every seed,
    which varies only the initialisation and the batch order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return (x[:1000], y[:1000]), (x[1000:1300], y[1000:1300]), (x[1300:], y[1300:])


class DigitsMLP(nn.Module):
    """64 -> hidden -> 10 with a ReLU; the hosts are `fc1` and `fc2`."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))
