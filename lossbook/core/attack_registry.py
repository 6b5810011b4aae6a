"""Every attack the book runs, by name: FGSM, PGD-k with each loss, and torchattacks' APGD and
AutoAttack. Chapter 07 runs the attacks of :data:`ATTACKS` defined under its norm, the grid of
chapter 03 compares the PGD-10 losses marked ``grid``, and the figures take their colours and labels
from here; adding an attack is one entry in :data:`ATTACKS`.

:func:`run_attacks` runs any list of them on the same images. Every attack's returned points are
checked to lie in the ball and the box before they are re-predicted (:func:`check_in_ball_and_box`);
the PGD entries of one step count run together, one batched :func:`lossbook.core.attacks.pgd` call
over all their losses, with the same random starts. (The searches, chapters 03-05 and the grid call
``pgd`` directly, for its many losses at once; ``pgd`` projects exactly and nudges every returned
point inside the ball and the box itself, and reports the largest perturbation in its diagnostics.)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from lossbook.config import NORMS
from lossbook.core.attacks import fgsm, lp_norm, pgd
from lossbook.core.losses import HANDCRAFTED
from lossbook.core.models import predict

#: torchattacks' norms (its APGD and AutoAttack offer no l_1)
LIBRARY_NORMS = {"linf": "Linf", "l2": "L2"}


def _torchattacks():
    try:
        import torchattacks
    except ImportError as exc:  # pragma: no cover - installed by `make setup`
        raise ImportError("the library attacks need torchattacks==3.5.1: pip install --no-deps torchattacks==3.5.1 "
                          "(without --no-deps it downgrades requests)") from exc
    return torchattacks


def apgd(loss: str) -> Callable:
    """torchattacks' APGD with ``loss`` ("ce" or "dlr"), 100 steps, one restart."""
    def make(model, norm: str, eps: float, seed: int):
        return _torchattacks().APGD(model, norm=LIBRARY_NORMS[norm], eps=eps, steps=100, n_restarts=1, loss=loss,
                                    seed=seed)
    return make


def autoattack(model, norm: str, eps: float, seed: int):
    """torchattacks' AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square)."""
    return _torchattacks().AutoAttack(model, norm=LIBRARY_NORMS[norm], eps=eps, version="standard", n_classes=10,
                                      seed=seed)


@dataclass(frozen=True)
class Attack:
    """One named attack. ``kind``: "fgsm"; "pgd" (lossbook's PGD, ``steps`` iterations, surrogate ``loss``:
    a key of :data:`lossbook.core.losses.HANDCRAFTED`, or "searched" for a loss the caller supplies); or
    "library" (``make(model, norm, eps, seed)`` returns a torchattacks attack). ``norms``: where it is
    defined; ``grid``: a PGD-10 loss the grid of chapter 03 compares on held-out images."""

    name: str
    kind: str
    norms: tuple = NORMS
    steps: int | None = None
    loss: str | None = None
    make: Callable | None = None
    grid: bool = False


def _pgd(steps: int, loss: str, grid: bool = False) -> Attack:
    return Attack(f"PGD-{steps} {loss}", "pgd", steps=steps, loss=loss, grid=grid)


#: The attacks, in the order chapter 07's tables show them. ``grid=True`` is part of the request of the
#: grid's committed held-out files: changing it makes them stale (they are recomputed, never reused).
ATTACKS: dict[str, Attack] = {a.name: a for a in (
    Attack("FGSM", "fgsm", norms=("linf",)),
    _pgd(10, "ce", grid=True), _pgd(10, "cw", grid=True), _pgd(10, "margin"), _pgd(10, "dlr", grid=True),
    _pgd(10, "searched", grid=True),
    _pgd(100, "ce"), _pgd(100, "cw"), _pgd(100, "margin"), _pgd(100, "dlr"), _pgd(100, "searched"),
    Attack("APGD-CE", "library", tuple(LIBRARY_NORMS), make=apgd("ce")),
    Attack("APGD-DLR", "library", tuple(LIBRARY_NORMS), make=apgd("dlr")),
    Attack("AutoAttack", "library", tuple(LIBRARY_NORMS), make=autoattack),
)}

#: How the figures draw each PGD loss: colour and label.
LOSS_STYLE = {"ce": ("#d62728", "CE"), "searched": ("#1f77b4", "searched"), "cw": ("#7f7f7f", "C&W"),
              "dlr": ("#2ca02c", "DLR"), "margin": ("#9467bd", "margin")}


def attack_names(norm: str, searched: bool = True) -> list[str]:
    """The attacks defined under ``norm``, in :data:`ATTACKS`' order (without "searched" PGD unless
    ``searched``)."""
    return [a.name for a in ATTACKS.values() if norm in a.norms and (searched or a.loss != "searched")]


def pgd10_losses() -> tuple[str, ...]:
    """Every loss of a registered PGD-10 attack, the searched one first (chapter 03's held-out check at ``cpu``)."""
    losses = [a.loss for a in ATTACKS.values() if a.kind == "pgd" and a.steps == 10]
    return ("searched", *(loss for loss in losses if loss != "searched"))


def grid_losses() -> tuple[str, ...]:
    """The losses the grid compares on held-out images: the searched one first, then the handcrafted."""
    marked = [a.loss for a in ATTACKS.values() if a.grid]
    return ("searched", *(loss for loss in marked if loss != "searched"))


def check_in_ball_and_box(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float, name: str) -> None:
    """RuntimeError unless every point of ``x_adv`` lies in the ``norm`` ball of radius ``eps`` around ``x``
    (float32 slack) and in the box [0, 1]."""
    if float(lp_norm((x_adv - x).flatten(1), norm).max()) > eps * (1 + 1e-5) + 1e-6 or float(x_adv.min()) < 0 \
            or float(x_adv.max()) > 1:
        raise RuntimeError(f"{name} returned points outside the {norm} ball of radius {eps} or the box [0, 1]")


def run_attacks(names: list[str], model, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float,
                searched_loss=None, seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """One boolean column per named attack (True: it broke the image), one row per image. The PGD
    attacks of one step count run as one batched call; ``searched_loss`` is the "searched" PGD loss."""
    log = print if progress else (lambda *_: None)
    chosen = [ATTACKS[n] for n in names]
    out: dict[str, np.ndarray] = {}
    for a in chosen:
        if a.kind == "fgsm":
            xa = fgsm(model, x, y, eps)
            check_in_ball_and_box(xa, x, norm, eps, a.name)
            out[a.name] = (predict(model, xa) != y).numpy()
    for steps in dict.fromkeys(a.steps for a in chosen if a.kind == "pgd"):
        group = [a for a in chosen if a.kind == "pgd" and a.steps == steps]
        losses = [searched_loss if a.loss == "searched" else HANDCRAFTED[a.loss] for a in group]
        t0 = time.perf_counter()
        res = pgd(model, x, y, losses, norm=norm, eps=eps, steps=steps, seed=seed)  # with the points, to check them
        for k, a in enumerate(group):
            check_in_ball_and_box(res.x_adv[k], x, norm, eps, a.name)
            out[a.name] = res.broken[k].numpy()
        log(f"PGD-{steps} x {len(losses)} losses: {time.perf_counter() - t0:.1f} s")
    library = [a for a in chosen if a.kind == "library"]
    if library:
        torch.manual_seed(seed)
    for a in library:
        t0 = time.perf_counter()
        xa = a.make(model, norm, eps, seed)(x, y).detach()
        check_in_ball_and_box(xa, x, norm, eps, a.name)
        out[a.name] = (predict(model, xa) != y).numpy()
        log(f"{a.name}: {time.perf_counter() - t0:.1f} s")
    return pd.DataFrame({n: out[n] for n in names})
