"""Why are searched losses better? Local loss landscapes (the paper's Fig. 9) and examples (Fig. 10).

For an image x, PGD-100 is run with CE and with a searched loss (mode "final", every step recorded).
The plane through x spanned by the two final perturbations is given an orthonormal basis:
``u`` along the searched loss's perturbation (horizontal axis, as the paper) and ``v`` along CE's,
orthogonalized against ``u`` (vertical). On a grid of that plane we evaluate the model's 0-1 outcome,
CE and the searched loss; the PGD paths are projected onto the plane. Grid points are clipped to the
image box [0, 1] (the model's domain), so far from x the "plane" bends where pixels saturate.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lossbook import store
from lossbook.chapters.transfer import (
    arm_source,
    evaluation_note,
    held_out_skip,
    models_on,
    prepare_smoke,
    same_setting_on,
    searched_loss,
)
from lossbook.config import DATASETS, RESULTS_DIR, check_choice
from lossbook.core.attacks import pgd
from lossbook.core.losses import cross_entropy, per_sample
from lossbook.core.models import eval_mode, model_device, predict
from lossbook.core.stats import NOT_RUN, majority_verdict
from lossbook.params import (
    Param,
    choice,
    common,
    is_setting,
    listing,
    whole,
)
from lossbook.search.settings import parse_setting, setting_images

#: How an example is explained (the paper's two reasons), decided from CE at the two endpoints.
EXPLANATIONS = {
    "optimization": "the searched loss's adversary has a higher CE than CE's own: PGD on CE missed a "
                    "better (and misclassified) point that the searched loss found",
    "consistency": "CE's own endpoint has the higher CE yet is still classified correctly: maximizing CE "
                   "does not maximize the 0-1 loss here, the searched loss is locally more consistent with it",
}


def plane_basis(d_searched: torch.Tensor, d_ce: torch.Tensor, generator: torch.Generator | None = None,
                tol: float = 1e-8) -> torch.Tensor:
    """Orthonormal basis (2, D) of the plane spanned by two perturbations (flattened).

    Row 0 is ``d_searched`` normalized; row 1 is ``d_ce`` with its component along row 0 removed,
    normalized. Where a perturbation is zero or the two are parallel, the missing direction is a
    random unit vector orthogonal to the other (so both perturbations still lie in the plane).
    """
    a, b = d_searched.flatten().double(), d_ce.flatten().double()
    if a.shape != b.shape:
        raise ValueError(f"perturbations differ in size: {tuple(d_searched.shape)} vs {tuple(d_ce.shape)}")
    gen = generator or torch.Generator().manual_seed(0)

    def unit_orthogonal(v: torch.Tensor, to: torch.Tensor | None) -> torch.Tensor | None:
        if to is not None:
            v = v - (v @ to) * to
        n = v.norm()
        return v / n if n > tol * max(1.0, float(b.norm()), float(a.norm())) else None

    u = unit_orthogonal(a, None)
    if u is None:  # the searched loss left x where it was: take CE's direction first
        u = unit_orthogonal(b, None)
        if u is None:
            u = unit_orthogonal(torch.randn(a.shape, generator=gen, dtype=torch.float64), None)
    v = unit_orthogonal(b, u)
    while v is None:
        v = unit_orthogonal(torch.randn(a.shape, generator=gen, dtype=torch.float64), u)
    return torch.stack([u, v]).to(d_searched.dtype)


def coordinates(deltas: torch.Tensor, basis: torch.Tensor) -> np.ndarray:
    """Coordinates (..., 2) in the plane of flattened perturbations (..., D)."""
    return (deltas.double() @ basis.T.double()).numpy()


def explain(broken_searched: bool, broken_ce: bool, ce_at_searched_end: float, ce_at_ce_end: float) -> str | None:
    """Which of the paper's two reasons an image shows; None unless the searched loss breaks it and CE
    does not."""
    if not broken_searched or broken_ce:
        return None
    return "optimization" if ce_at_searched_end > ce_at_ce_end else "consistency"


@dataclass
class Landscape:
    """One image's landscape: grid axes, outcomes and loss values, PGD paths in plane coordinates."""

    index: int  # test-set index of the image
    label: int
    a: np.ndarray  # (R,) coordinates along u (searched direction)
    b: np.ndarray  # (R,) coordinates along v (CE direction, orthogonalized)
    correct: np.ndarray  # (R, R) bool, [i, j] at (a[j], b[i])
    ce: np.ndarray  # (R, R)
    searched: np.ndarray  # (R, R)
    path_ce: np.ndarray  # (steps + 1, 2)
    path_searched: np.ndarray  # (steps + 1, 2)
    broken_ce: bool  # outcome of PGD at its final point
    broken_searched: bool
    ce_at_ce_end: float
    ce_at_searched_end: float

    @property
    def explanation(self) -> str | None:
        """Which of the paper's two reasons the example shows (only when the searched loss wins)."""
        return explain(self.broken_searched, self.broken_ce, self.ce_at_searched_end, self.ce_at_ce_end)


@torch.no_grad()
def evaluate_plane(model: torch.nn.Module, x: torch.Tensor, y: int, basis: torch.Tensor, a: np.ndarray,
                   b: np.ndarray, loss: Callable, batch: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0-1 outcome (correct?), CE and ``loss`` (per sample) at x + a_j u + b_i v, clipped to [0, 1]."""
    dev = model_device(model)
    aa, bb = np.meshgrid(a, b)  # [i, j] -> (a[j], b[i])
    coef = torch.tensor(np.stack([aa.ravel(), bb.ravel()], 1), dtype=basis.dtype)
    pts = (x.reshape(1, -1) + coef @ basis).clamp_(0, 1).to(x.dtype)
    correct, ce, ls = [], [], []
    with eval_mode(model):
        for i in range(0, len(pts), batch):
            logits = model(pts[i:i + batch].view(-1, *x.shape).to(dev)).float()
            q = F.one_hot(torch.full((len(logits),), int(y), device=dev), logits.shape[1]).float()
            correct.append(logits.argmax(1).eq(int(y)).cpu())
            ce.append(per_sample(cross_entropy(logits, q), len(logits)).cpu())
            ls.append(per_sample(loss(logits, q), len(logits)).cpu())
    shape = aa.shape
    return (torch.cat(correct).view(shape).numpy(), torch.cat(ce).view(shape).numpy(),
            torch.cat(ls).view(shape).numpy())


@dataclass
class Race:
    """PGD with the searched loss (row 0) and CE (row 1) on the same N images from the same starts."""

    deltas: torch.Tensor  # (T, 2, N, D): the perturbation after the random start and after each step
    broken: torch.Tensor  # (2, N) bool: final iterate misclassified
    ce_end: torch.Tensor  # (2, N): CE at each final iterate

    def explanations(self) -> list[str | None]:
        return [explain(bool(self.broken[0, n]), bool(self.broken[1, n]), float(self.ce_end[0, n]),
                        float(self.ce_end[1, n])) for n in range(self.broken.shape[1])]


def race(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Callable, norm: str, eps: float,
         steps: int = 100, seed: int = 0) -> Race:
    """PGD-``steps`` (mode "final", every step recorded) with ``loss`` and with CE."""
    res = pgd(model, x, y, [loss, cross_entropy], norm=norm, eps=eps, steps=steps, mode="final", seed=seed,
              record=True)
    N = len(x)
    deltas = torch.stack(res.trajectory).view(len(res.trajectory), 2, N, -1)
    with torch.no_grad():
        dev = next(model.parameters()).device
        logits = model(res.x_adv.reshape(2 * N, *x.shape[1:]).to(dev)).float()
        q = F.one_hot(y.repeat(2).to(dev), logits.shape[1]).float()
        ce_end = per_sample(cross_entropy(logits, q), 2 * N).view(2, N).cpu()
    return Race(deltas=deltas, broken=res.broken, ce_end=ce_end)


def landscape(model: torch.nn.Module, x: torch.Tensor, y: int, index: int, r: Race, n: int, loss: Callable,
              resolution: int = 41, margin: float = 1.25) -> Landscape:
    """Image ``n`` of a race: its plane, a ``resolution`` x ``resolution`` grid spanning ``margin`` x the
    farthest point of either path, and both paths in plane coordinates."""
    if resolution < 3:
        raise ValueError(f"resolution must be at least 3 grid points per axis, got {resolution}")
    d_s, d_c = r.deltas[:, 0, n], r.deltas[:, 1, n]
    basis = plane_basis(d_s[-1], d_c[-1])
    path_s, path_c = coordinates(d_s, basis), coordinates(d_c, basis)
    reach = max(np.abs(path_s).max(), np.abs(path_c).max(), 1e-3) * margin
    axis = np.linspace(-reach, reach, resolution)
    correct, ce, ls = evaluate_plane(model, x, y, basis, axis, axis, loss)
    return Landscape(index=int(index), label=int(y), a=axis, b=axis.copy(), correct=correct, ce=ce, searched=ls,
                     path_ce=path_c, path_searched=path_s, broken_ce=bool(r.broken[1, n]),
                     broken_searched=bool(r.broken[0, n]), ce_at_ce_end=float(r.ce_end[1, n]),
                     ce_at_searched_end=float(r.ce_end[0, n]))


def pick(r: Race, per_kind: int = 1) -> dict[str, list[int]]:
    """Images (positions in the race) showing each explanation: among those the searched loss breaks
    and CE does not, the ones with the largest CE gap between the two endpoints (the clearest cases)."""
    kinds = r.explanations()
    gap = (r.ce_end[0] - r.ce_end[1]).abs()
    return {kind: sorted((n for n, k in enumerate(kinds) if k == kind), key=lambda n: -float(gap[n]))[:per_kind]
            for kind in EXPLANATIONS}


# ------------------------------------------------------------------------------------------------
# Fig. 10: qualitative examples
# ------------------------------------------------------------------------------------------------
@dataclass
class Examples:
    """Clean images and their CE and searched-loss adversaries (PGD, final iterate), with predictions."""

    index: np.ndarray  # (n,) test-set indices
    label: np.ndarray
    clean: np.ndarray  # (n, C, H, W) float32 in [0, 1]
    adv_ce: np.ndarray
    adv_searched: np.ndarray
    pred_ce: np.ndarray
    pred_searched: np.ndarray


@torch.no_grad()
def examples(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, indices, r: Race, n: int = 4) -> Examples:
    """Up to ``n`` images of a race that the searched loss breaks and CE does not (filled up with images
    both break, then with the rest), with both final adversaries and the predictions on them."""
    bs, bc = r.broken[0], r.broken[1]
    order = torch.cat([(bs & ~bc).nonzero(), (bs & bc).nonzero(), (~bs).nonzero()]).squeeze(1)[:n]
    flat = x[order].reshape(len(order), -1)
    adv = [(flat + r.deltas[-1, k, order]).view(-1, *x.shape[1:]) for k in (0, 1)]
    pred = [predict(model, a).numpy() for a in adv]
    return Examples(index=np.asarray(indices)[order.numpy()], label=y[order].numpy(), clean=x[order].numpy(),
                    adv_ce=adv[1].numpy(), adv_searched=adv[0].numpy(), pred_ce=pred[1], pred_searched=pred[0])


# ------------------------------------------------------------------------------------------------
# One study (a searched loss on one model): run, save, load
# ------------------------------------------------------------------------------------------------
def landscape_dir(scale: str, root: Path | None = None) -> Path:
    return (root or RESULTS_DIR / "landscape") / scale


_ARRAYS = ("a", "b", "correct", "ce", "searched", "path_ce", "path_searched")
_SCALARS = ("index", "label", "broken_ce", "broken_searched", "ce_at_ce_end", "ce_at_searched_end")


def save(path: Path, items: list[Landscape], ex: Examples, meta: dict) -> None:
    """Arrays to ``path`` (.npz), ``meta`` and per-image scalars to ``path`` with suffix .json; both
    through the store with ``meta["request"]`` (the .json, written last, marks the pair complete)."""
    arrays = {f"{k}_{i}": np.asarray(getattr(it, k)) for i, it in enumerate(items) for k in _ARRAYS}
    arrays.update({f"ex_{k}": np.asarray(getattr(ex, k)) for k in Examples.__dataclass_fields__})
    store.save(path, arrays, meta["request"])
    meta = {**meta, "landscapes": [{k: _plain(getattr(it, k)) for k in _SCALARS} | {"explanation": it.explanation}
                                   for it in items]}
    store.save(path.with_suffix(".json"), meta, meta["request"])


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def load(path: Path, request: dict | None = None) -> tuple[list[Landscape], Examples, dict]:
    """What :func:`save` wrote (validated; with ``request``, only if made for it)."""
    meta = store.load(path.with_suffix(".json"), request)
    z = store.load(path, meta["request"])
    items = [Landscape(**{k: z[f"{k}_{i}"] for k in _ARRAYS}, **{k: im[k] for k in _SCALARS})
             for i, im in enumerate(meta["landscapes"])]
    ex = Examples(**{k: z[f"ex_{k}"] for k in Examples.__dataclass_fields__})
    return items, ex, meta


def study(source: str, scale: str, dataset: str | None = None, n_images: int = 64, steps: int = 100,
          resolution: int = 41, per_kind: int = 1, n_examples: int = 4, seed: int = 0, compute: bool = True,
          root: Path | None = None, device=None):
    """Landscapes (Fig. 9) and examples (Fig. 10) of the loss searched under ``source``, attacked on the
    source's own model, or on the same net/training/norm of another ``dataset`` (a transferred loss,
    at that setting's eps as chosen by :func:`lossbook.search.settings.auto_setting`).

    The race runs on the first ``n_images`` correctly classified test images (for an arm's loss: after
    the arm's search images, so that none of them was selected on); ``meta["outcomes"]`` counts how each
    of them came out, and how the searched-only wins split between the explanations.
    Returns (landscapes, examples, meta), or None where nothing is saved and ``compute`` is False.
    """
    found = searched_loss(source, scale)
    target = same_setting_on(dataset or found.setting.dataset, found, scale, device)
    models, skip = models_on(target.dataset, found), held_out_skip(found)
    path = landscape_dir(scale, root) / f"{target.name()}--from-{source.replace(':', '-')}.npz"
    request = {"scale": scale, "source": source, "formula": found.formula, "target": target.name(), "eps": target.eps,
               "norm": target.norm, "n_images": n_images, "steps": steps, "resolution": resolution,
               "per_kind": per_kind, "n_examples": n_examples, "seed": seed, **evaluation_note(models, scale, skip)}
    if store.matches(path.with_suffix(".json"), request):
        return load(path, request)
    if not compute:
        return None
    model, x, y, idx = setting_images(target, models, n_images, skip=skip, device=device)
    loss = found.loss()
    r = race(model, x, y, loss, target.norm, target.eps, steps=steps, seed=seed)
    chosen = [n for kind in EXPLANATIONS for n in pick(r, per_kind)[kind]] or [0]  # none: show the first image
    items = [landscape(model, x[n], int(y[n]), int(idx[n]), r, n, loss, resolution=resolution) for n in chosen]
    kinds = r.explanations()
    bs, bc = r.broken[0], r.broken[1]
    outcomes = {"images": len(x), "searched only": int((bs & ~bc).sum()), "CE only": int((~bs & bc).sum()),
                "both": int((bs & bc).sum()), "neither": int((~bs & ~bc).sum()),
                **{f"searched only, {k}": kinds.count(k) for k in EXPLANATIONS}}
    meta = {"request": request, "formula_pretty": found.pretty, "outcomes": outcomes,
            "how picked": "among the images the searched loss breaks and CE does not, for each explanation the "
                          f"{per_kind} with the largest |CE(searched end) - CE(CE end)|; where there is no such image, the "
                          "first image of the set"}
    save(path, items, examples(model, x, y, idx, r, n=n_examples), meta)
    return load(path, request)


#: per scale: raced images, grid points per axis, and the most PGD steps (smoke caps the race)
PRESETS = {"smoke": {"n_images": 1, "resolution": 9, "max_steps": 20},
           "cpu": {"n_images": 200, "resolution": 61, "max_steps": None},
           "paper": {"n_images": 1000, "resolution": 101, "max_steps": None}}


def study_source(source: str, dataset: str, losses: str, scale: str) -> str:
    """The loss chapter 05 studies on ``dataset``: with ``losses="arm"`` the scale's arm's own loss for
    the same net, training and norm on that dataset; with ``"search"`` the scale's search of ``source``
    (carried to another dataset where ``dataset`` differs)."""
    check_choice("losses", losses, LOSSES)
    if losses == "search":
        return source
    _, net, training, norm = parse_setting(source)
    return arm_source(f"{dataset}-{net}-{training}-{norm}", scale)


#: which losses chapter 05 studies: each dataset's own arm loss, or one search carried across datasets
LOSSES = ("arm", "search")


def chapter_studies(source: str, datasets: list[str], scale: str, n_images: int = 0, steps: int = 100,
                    resolution: int = 0, per_kind: int = 1, n_examples: int = 4, seed: int = 0,
                    recompute: bool = False, losses: str = "arm") -> tuple[dict, list[str], int]:
    """Chapter 05's studies, one per dataset ({dataset: study}), what is missing at this scale, and the
    steps actually raced. ``n_images``/``resolution`` 0 take the scale's :data:`PRESETS`; at smoke scale
    the models and the search (or the smoke arm) are made where missing (seconds) and the race is capped."""
    check_choice("scale", scale, PRESETS)
    check_choice("losses", losses, LOSSES)
    parse_setting(source)
    for d in datasets:
        check_choice("dataset in datasets", d, DATASETS)
    preset = PRESETS[scale]
    steps = min(steps, preset["max_steps"]) if preset["max_steps"] else steps
    if scale == "smoke" and losses == "search":
        prepare_smoke([source], datasets=datasets)
    studies, missing = {}, []
    for d in datasets:
        try:
            studies[d] = study(study_source(source, d, losses, scale), scale, dataset=d,
                               n_images=n_images or preset["n_images"], steps=steps,
                               resolution=resolution or preset["resolution"], per_kind=per_kind, n_examples=n_examples,
                               seed=seed, compute=recompute or scale == "smoke")
        except FileNotFoundError:  # no search or no model at this scale
            studies[d] = None
        if studies[d] is None:
            del studies[d]
            missing.append(f"{source} on {d}")
    return studies, missing, steps


#: Question 3 as the paper answers it: the explanation that dominates per dataset
PAPER_Q3 = {"mnist": "optimization", "cifar10": "local consistency"}


def q3_answer(meta: dict, stated: str) -> dict:
    """Question 3 on one race, counted once for the chapter and the glance page: of the images only the
    searched loss broke, how many each explanation accounts for, and the exact sign test of "most are
    explained by ``stated``"."""
    o = meta["outcomes"]
    opt, con = o["searched only, optimization"], o["searched only, consistency"]
    verdict, p = majority_verdict(opt if stated == "optimization" else con, opt + con)
    return {"optimization": opt, "consistency": con, "searched_only": o["searched only"], "images": o["images"],
            "ce_only": o["CE only"], "verdict": verdict, "p": p}


def takeaway(studies: dict) -> str:
    """Chapter 05's answer per dataset against the paper's (MNIST: optimization; CIFAR-10: local consistency)."""
    if not studies:
        return "No landscape study is available at this scale."
    parts = []
    for d, (_, _, meta) in studies.items():
        stated = PAPER_Q3.get(d, "optimization")
        a = q3_answer(meta, stated)
        parts.append(f"{d}: of {a['searched_only']} images only the searched loss broke ({a['images']} raced; CE alone "
                     f"broke {a['ce_only']}), {a['optimization']} by optimization and {a['consistency']} by local "
                     f"consistency; the paper's answer ({stated}) is {a['verdict']} (sign test p = {a['p']:.2g})")
    return "; ".join(parts) + "."


def conclusion(studies: dict) -> str:
    """Chapter 05's closing paragraph from its counts: which explanation dominates, per dataset."""
    if not studies:
        return "No landscape study is available at this scale, so this chapter draws no conclusion."
    lines = []
    for d, (_, _, meta) in studies.items():
        o = meta["outcomes"]
        opt, con, only = o["searched only, optimization"], o["searched only, consistency"], o["searched only"]
        if only == 0:
            verdict = "the searched loss broke no image that CE missed, so neither explanation is needed here"
        else:
            lead = "optimization" if opt > con else "local consistency" if con > opt else "neither (a tie)"
            verdict = (f"of the {only} images only the searched loss broke, {opt} are explained by optimization and "
                       f"{con} by local consistency: **{lead}** dominates")
        lines.append(f"* **{meta['request']['source']} on {d}** ({o['images']} images raced; CE alone broke "
                     f"{o['CE only']}): {verdict}.")
    return "\n".join(lines)


#: chapter 05's parameters (papermill, ``run -p``; checked before its kernel starts)
PARAMETERS: dict[str, Param] = {
    **common("smoke | cpu (committed results) | paper"),
    "source": Param("mnist-net1-at-linf", lambda v: None if isinstance(v, str) and is_setting(v) else
                    "a setting such as 'mnist-net1-at-linf'"),
    "losses": Param("arm", choice(LOSSES), "'arm': each dataset's own paper-arm loss for the source's net, training "
                    "and norm; 'search': the scale's search of the source, carried to the other datasets"),
    "datasets": Param("mnist,cifar10", listing(lambda s: s in DATASETS, "datasets")),
    "n_images": Param(0, whole(), "raced images; 0: the scale's default"),
    "steps": Param(100, whole(1), "PGD iterations of the race"),
    "resolution": Param(0, whole(), "grid points per axis; 0: the scale's default"),
    "per_kind": Param(1, whole(1), "images shown per explanation"),
    "n_examples": Param(4, whole(1), "qualitative examples per dataset"),
}


# ------------------------------------------------------------------------------------------------
# The glance page's rows (lossbook.publish.glance)
# ------------------------------------------------------------------------------------------------
#: the label of chapter 05's section on what the landscapes say, where the glance page's rows link
GLANCE_TARGET = "q3-answer"


def glance_rows(scale: str) -> list[dict]:
    """Q3: why the searched loss wins (MNIST: easier to optimize; CIFAR-10: better local consistency)."""
    source = PARAMETERS["source"].default
    try:
        studies, _, _ = chapter_studies(source, list(PAPER_Q3), scale) if scale != "smoke" else ({}, [], 0)
    except (FileNotFoundError, ValueError):
        studies = {}
    rows = []
    for ds, stated in PAPER_Q3.items():
        row = {"paper": "AutoLoss-AR", "claim": f"Q3: the searched loss wins mostly by {stated} ({ds})",
               "the paper's number": "stated (Fig. 9)", "scale": scale}
        st = studies.get(ds)
        if st is None:
            rows.append({**row, "ours": NOT_RUN, "verdict": NOT_RUN})
            continue
        a = q3_answer(st[2], stated)
        rows.append({**row, "ours": f"of {a['searched_only']} images only the searched loss broke: {a['optimization']} by "
                     f"optimization, {a['consistency']} by local consistency (sign test p = {a['p']:.2g}; {a['images']} "
                     f"raced)", "verdict": a["verdict"]})
    return [{**row, "target": GLANCE_TARGET} for row in rows]
