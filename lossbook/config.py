"""Scale presets and the papers' settings tables, as data in one place.

Every chapter takes a ``scale``:

* ``smoke`` -- seconds on a CPU, tiny subsets; what CI runs.
* ``cpu``   -- minutes on 2 CPU cores, fewer epochs/images; clearly labelled in every result.
* ``paper`` -- the papers' own settings, meant for a GPU.

Models have one more scale, ``cpu-long``: the two CIFAR-10 adversarially trained networks trained for 30
epochs on the CPU (the paper arm's sensitivity to training length, ``book/protocol_q1.md``).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

SCALES = ("smoke", "cpu", "paper")
#: the scales a model can be trained at: the book's, and ``cpu-long`` (CIFAR-10 AT only)
MODEL_SCALES = (*SCALES, "cpu-long")
DATASETS = ("mnist", "cifar10")
NETS = ("net1", "net2")
TRAININGS = ("st", "at")
NORMS = ("linf", "l1", "l2")
#: the 24 AutoLoss-AR settings <dataset>-<net>-<training>-<norm>, MNIST first (cheaper), in the order the grid runs them
SETTINGS = tuple(f"{d}-{n}-{t}-{norm}" for d in DATASETS for t in TRAININGS for n in NETS for norm in NORMS)
#: Image shape (channels, height, width) per dataset; pixels in [0, 1].
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
#: ATRAS training recipes: ours, and one that reproduces the paper's dead deep MLPs (sigmoid + plain SGD).
FAILURE_MODES = ("none", "sigmoid-sgd")

#: Root of the repository (the folder that holds ``lossbook/``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where computed results live (plain CSV/JSON files and small checkpoints): ``LOSSBOOK_RESULTS`` names
#: another folder, e.g. one that every node of a cluster can read and write.
RESULTS_DIR = Path(os.environ.get("LOSSBOOK_RESULTS") or REPO_ROOT / "results").expanduser()


def check_choice(name: str, value, allowed: Iterable) -> None:
    """Raise ``ValueError`` naming the parameter, the bad value and the allowed values."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def largest_eps(norm: str, dim: int, side: float = 1.0) -> float:
    """The largest meaningful radius for inputs in a box of the given side in ``dim`` dimensions:
    beyond it the ball holds the whole box (l_inf: side, l_2: side * sqrt(dim), l_1: side * dim)."""
    check_choice("norm", norm, NORMS)
    return side * {"linf": 1.0, "l2": math.sqrt(dim), "l1": float(dim)}[norm]


def check_eps(norm: str, eps: float, dim: int, side: float = 1.0) -> None:
    """One line if ``eps`` is not a radius that means something in a box of the given side (images:
    [0, 1]^dim); a warning where it is so large that the ball of every input holds the box's centre
    (half the largest radius): every image can then be moved to that one grey image."""
    top = largest_eps(norm, dim, side)
    if not 0 < eps <= top:
        box = f"[0, 1]^{dim}" if side == 1 else f"a box of side {side:g} in {dim} dimensions"
        raise ValueError(f"eps={eps:g} under {norm} is not allowed for inputs in {box}; allowed: "
                         f"0 < eps <= {top:g} (a larger ball holds every point of the box)")
    if eps >= top / 2:
        warnings.warn(f"eps={eps:g} under {norm} reaches the centre of the box (the uniform grey image) from every "
                      f"input: the attacked risk then says more about that one image than about robustness; eps < "
                      f"{top / 2:g} avoids it", stacklevel=2)


def check_dataset_eps(dataset: str, norm: str, eps: float) -> None:
    """:func:`check_eps` for a dataset's images."""
    check_choice("dataset", dataset, DATASETS)
    check_eps(norm, eps, math.prod(SHAPES[dataset]))


# ---------------------------------------------------------------------------------------------
# AutoLoss-AR, Table III: eps per (dataset, norm) for NET-1 ST, NET-2 ST, NET-1 AT, NET-2 AT.
# ---------------------------------------------------------------------------------------------
_TABLE_III = {
    "mnist": {"linf": (0.07, 0.07, 0.28, 0.24), "l1": (25.0, 25.0, 34.0, 36.0), "l2": (1.3, 1.4, 5.1, 5.6)},
    "cifar10": {"linf": (0.005, 0.005, 0.024, 0.024), "l1": (7.4, 7.4, 34.0, 34.0), "l2": (0.19, 0.18, 0.9, 0.9)},
}
_TABLE_III_COLUMNS = (("net1", "st"), ("net2", "st"), ("net1", "at"), ("net2", "at"))


def paper_eps(dataset: str, net: str, training: str, norm: str) -> float:
    """The eps of the AutoLoss-AR paper's Table III for one setting."""
    check_choice("dataset", dataset, DATASETS)
    check_choice("net", net, NETS)
    check_choice("training", training, TRAININGS)
    check_choice("norm", norm, NORMS)
    return _TABLE_III[dataset][norm][_TABLE_III_COLUMNS.index((net, training))]


# ---------------------------------------------------------------------------------------------
# Training (AutoLoss-AR Section V-B.8 and V-B.3)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model; saved inside each checkpoint."""

    dataset: str
    net: str
    training: str  # "st" or "at"
    scale: str
    epochs: int
    batch_size: int
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple = ()  # epochs after which lr is divided by 10
    n_train: int | None = None  # None = full training set
    at_eps: float = 0.0  # l_inf radius of PGD adversarial training
    at_steps: int = 7
    at_step_size: float = 0.0  # 2.5 * eps / steps (Madry et al.'s rule)
    seed: int = 0

    def name(self) -> str:
        return f"{self.dataset}-{self.net}-{self.training}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


_AT_EPS = {"mnist": 0.1, "cifar10": 0.01}
_BATCH = {"mnist": 1024, "cifar10": 512}

# Epochs per (scale, dataset, training); cpu-scale values were chosen so that the 8 models train
# in about an hour on 2 cores (see results/models/cpu/accuracies.csv for the measured times).
_EPOCHS = {
    "smoke": {("mnist", "st"): 1, ("mnist", "at"): 1, ("cifar10", "st"): 1, ("cifar10", "at"): 1},
    "cpu": {("mnist", "st"): 10, ("mnist", "at"): 6, ("cifar10", "st"): 15, ("cifar10", "at"): 4},
    "paper": {k: 160 for k in (("mnist", "st"), ("mnist", "at"), ("cifar10", "st"), ("cifar10", "at"))},
    # the paper arm's training-length sensitivity: the CIFAR-10 AT models at 7.5x the cpu epochs
    "cpu-long": {("cifar10", "at"): 30},
}
# The cpu scale uses a larger learning rate than the paper's 0.01: with 4-10 epochs instead of 160
# the paper's rate leaves the networks far from converged.
_LR = {"smoke": 0.05, "cpu": 0.05, "paper": 0.01, "cpu-long": 0.05}
_N_TRAIN = {"smoke": 512, "cpu": None, "paper": None, "cpu-long": None}


def train_config(dataset: str, net: str, training: str, scale: str, seed: int = 0, **overrides) -> TrainConfig:
    """The training configuration of one model at one scale (paper's optimizer; epochs per scale)."""
    check_choice("dataset", dataset, DATASETS)
    check_choice("net", net, NETS)
    check_choice("training", training, TRAININGS)
    check_choice("scale", scale, MODEL_SCALES)
    if (dataset, training) not in _EPOCHS[scale]:
        trains = ", ".join(f"{d} {t}" for d, t in _EPOCHS[scale])
        raise ValueError(f"scale {scale!r} trains only: {trains} (asked: {dataset} {training})")
    epochs = _EPOCHS[scale][(dataset, training)]
    if scale == "paper":
        milestones = (80, 120)
    else:  # same shape as the paper's schedule: drop at 1/2 and 3/4 of training
        milestones = tuple(sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)})) if epochs > 1 else ()
    at_eps = _AT_EPS[dataset] if training == "at" else 0.0
    cfg = dict(
        dataset=dataset, net=net, training=training, scale=scale, epochs=epochs,
        batch_size=_BATCH[dataset] if scale != "smoke" else 128, lr=_LR[scale], milestones=milestones,
        n_train=_N_TRAIN[scale], at_eps=at_eps, at_steps=7 if scale != "smoke" else 2,
        at_step_size=2.5 * at_eps / 7 if scale != "smoke" else 2.5 * at_eps / 2, seed=seed,
    )
    cfg.update(overrides)
    return TrainConfig(**cfg)


def quiet(progress: bool) -> dict:
    """tqdm keyword arguments: none when ``progress`` (so that ``TQDM_DISABLE`` can still silence the bar,
    as the book's runner does), ``disable=True`` otherwise."""
    return {} if progress else {"disable": True}
