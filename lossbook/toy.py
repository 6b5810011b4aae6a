"""The 3-class toy of AutoLoss-AR Section III-A (Eq. 3): f(x) = softmax(W x), x in [-1, 1]^2.

The attacks of :mod:`lossbook.attacks` work in the box [0, 1]^d, so the toy model reads
u = (x + 1) / 2 in [0, 1]^2. Distances scale by 1/2 in every norm: a ball of radius eps around x
is the ball of radius eps / 2 around u.
"""
from __future__ import annotations

import torch
from torch import nn

#: The weights of Eq. 3.
W = torch.tensor([[0.2, 0.8], [0.9, 0.4], [0.3, 0.9]])


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1]^2 -> [0, 1]^2."""
    return (x + 1) / 2


def from_unit(u: torch.Tensor) -> torch.Tensor:
    """[0, 1]^2 -> [-1, 1]^2."""
    return 2 * u - 1


class ToyModel(nn.Module):
    """Logits W x of the toy, taking u = (x + 1) / 2 in [0, 1]^2 as input (no bias, as Eq. 3)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(W)
        self.linear.weight.requires_grad_(False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.linear(from_unit(u.reshape(len(u), 2)))


def sample(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n points uniform in [-1, 1]^2, labelled by the model's own prediction (the toy's data
    distribution: every clean point is correctly classified)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    return x, (x @ W.T).argmax(1)
