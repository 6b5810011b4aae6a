"""Diagnostics of an attack result, in the spirit of AutoAttack's checks: signs that an evaluation
may be wrong, reported with every :class:`lossbook.core.attacks.AttackResult` and shown where they fire.

* **zero gradients** -- rows whose step left them in place because the loss's input gradient was
  exactly 0 (a constant loss, saturated softmax, or gradient masking by the model);
* **probabilities instead of logits** -- every output row lies in [0, 1] and sums to 1: a softmax
  inside the model flattens the losses that expect logits (CE becomes meaningless);
* **randomness** -- two forward passes on the same input differ (dropout, noise): the attack then
  optimizes a moving target, and R'' depends on luck;
* **perturbation size** -- the largest norm of a returned perturbation, which must not exceed eps.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Diagnostics:
    """What the checks found on one attack (one entry per loss where it is per loss)."""

    norm: str
    eps: float
    zero_gradient_rows: list = field(default_factory=list)  # (K,) rows frozen by an exactly zero gradient
    rows: int = 0  # images per loss
    outputs_probabilities: bool = False
    random_outputs: bool = False
    max_perturbation: list | None = None  # (K,) largest ||x_adv - x|| of the returned points

    def warnings(self) -> list[str]:
        """One sentence per check that fired."""
        out = []
        if self.outputs_probabilities:
            out.append("the model's outputs look like probabilities (rows in [0, 1] summing to 1), not logits: "
                       "losses such as CE expect logits; remove the final softmax")
        if self.random_outputs:
            out.append("two forward passes on the same input differ: the model is random in eval mode, so R'' "
                       "depends on chance (use EOT or make the model deterministic)")
        share = max((z / self.rows for z in self.zero_gradient_rows), default=0.0) if self.rows else 0.0
        if share >= 0.1:
            out.append(f"up to {share:.0%} of the images of a loss stopped on an exactly zero gradient: a constant or "
                       f"saturated loss, or gradient masking")
        if self.max_perturbation is not None and max(self.max_perturbation, default=0.0) > self.eps * (1 + 1e-6):
            out.append(f"a returned perturbation has {self.norm} norm {max(self.max_perturbation):.6g} > eps {self.eps}")
        return out

    def as_dict(self) -> dict:
        return {**asdict(self), "warnings": self.warnings()}


@torch.no_grad()
def model_checks(model, x: torch.Tensor, n: int = 32) -> tuple[bool, bool]:
    """(outputs look like probabilities, two forward passes differ) on the first ``n`` images."""
    xb = x[:n]
    a, b = model(xb), model(xb)
    probs = bool((a >= 0).all() and (a <= 1).all() and torch.allclose(a.sum(1), torch.ones(len(a), device=a.device),
                                                                       atol=1e-4))
    return probs, not torch.equal(a, b)
