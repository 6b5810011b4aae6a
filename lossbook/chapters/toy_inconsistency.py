"""The 3-class toy of AutoLoss-AR Section III-A (Eq. 3): f(x) = softmax(W x), x in [-1, 1]^2.

The attacks of :mod:`lossbook.core.attacks` work in the box [0, 1]^d, so the toy model reads
u = (x + 1) / 2 in [0, 1]^2. Distances scale by 1/2 in every norm: a ball of radius eps around x
is the ball of radius eps / 2 around u.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

from lossbook import store
from lossbook.config import NORMS, RESULTS_DIR, check_choice, check_eps
from lossbook.core.attacks import evaluate_losses
from lossbook.core.losses import HANDCRAFTED, compile_formula
from lossbook.core.stats import count_interval
from lossbook.params import (
    Param,
    choice,
    common,
    is_point,
    number,
    whole,
    with_name,
)
from lossbook.search.engine import GPConfig, run_search
from lossbook.search.fitness import Evaluator
from lossbook.search.settings import Setting

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


# ------------------------------------------------------------------------------------------------
# Exact inner maximization of the 0-1 loss for the linear toy
# ------------------------------------------------------------------------------------------------
def _box(x: np.ndarray, eps: float, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the perturbation delta: the square [-1, 1]^2 (and, for l_inf, the ball)."""
    lo, hi = -1 - x, 1 - x
    if norm == "linf":
        lo, hi = np.maximum(lo, -eps), np.minimum(hi, eps)
    return lo, hi


def max_linear(a: np.ndarray, x: np.ndarray, eps: float, norm: str) -> float:
    """Exact max of a . delta over {||delta||_p <= eps, x + delta in [-1, 1]^2} (2-d).

    l_inf: a box, closed form. l_1: fractional knapsack (spend the budget on the coordinate with the
    largest |a_i| first, up to the box), which is optimal for a linear objective. l_2: the maximum
    is at an extreme point of disc ∩ rectangle: the disc's own maximizer if it lies in the box,
    else a rectangle vertex inside the disc or a circle-edge intersection.
    """
    lo, hi = _box(x, eps, norm)
    cap = np.where(a >= 0, hi, -lo)  # room in the improving direction (>= 0: x is in the square)
    if norm == "linf":
        return float(np.abs(a) @ cap)
    if norm == "l1":
        total, budget = 0.0, eps
        for i in np.argsort(-np.abs(a)):
            step = min(budget, cap[i])
            total += abs(a[i]) * step
            budget -= step
        return float(total)
    na = np.linalg.norm(a)
    if na == 0:
        return 0.0
    d = eps * a / na
    if np.all(d >= lo - 1e-12) and np.all(d <= hi + 1e-12):
        return float(a @ d)
    cands = [np.array([u, v]) for u in (lo[0], hi[0]) for v in (lo[1], hi[1])]
    cands = [c for c in cands if c @ c <= eps ** 2 + 1e-12]
    for i in range(2):  # circle ∩ the edges delta_i = lo_i or hi_i
        for b in (lo[i], hi[i]):
            if b * b <= eps ** 2:
                r = np.sqrt(eps ** 2 - b * b)
                for s in (r, -r):
                    c = np.empty(2)
                    c[i], c[1 - i] = b, s
                    if lo[1 - i] - 1e-12 <= s <= hi[1 - i] + 1e-12:
                        cands.append(c)
    return float(max(a @ c for c in cands)) if cands else 0.0


def max_margin(x: np.ndarray, label: int, eps: float, norm: str) -> float:
    """max over x' in B(x, eps) ∩ [-1, 1]^2 of max_{j != label} (z_j - z_label): > 0 iff breakable."""
    Wn = W.numpy().astype(np.float64)
    return max(float((Wn[j] - Wn[label]) @ x + max_linear(Wn[j] - Wn[label], x, eps, norm))
               for j in range(3) if j != label)


def exactly_breakable(x: np.ndarray, label: int, eps: float, norm: str) -> bool:
    """Whether some x' in B(x, eps) ∩ [-1, 1]^2 is misclassified (its score for another class
    exceeds the label's): the exact inner maximization of the 0-1 loss."""
    return max_margin(x, label, eps, norm) > 0


def exact_risk(x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> tuple[float, np.ndarray]:
    """The true adversarial risk R on the points (x, y) and the per-point outcome."""
    check_choice("norm", norm, NORMS)
    xs, ys = x.double().numpy(), y.numpy()
    broken = np.array([exactly_breakable(xi, int(yi), eps, norm) for xi, yi in zip(xs, ys)])
    return float(broken.mean()), broken


def grid_breakable(x: np.ndarray, label: int, eps: float, norm: str, n: int = 401) -> bool:
    """Cross-check by a dense grid over the ball (may miss thin regions; never claims too much)."""
    t = np.linspace(-eps, eps, n)
    d = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
    keep = {"linf": np.abs(d).max(1), "l2": np.linalg.norm(d, axis=1), "l1": np.abs(d).sum(1)}[norm] <= eps
    pts = x + d[keep]
    pts = pts[(np.abs(pts) <= 1).all(1)]
    return bool(((pts @ W.numpy().T.astype(np.float64)).argmax(1) != label).any())


# ------------------------------------------------------------------------------------------------
# Fig. 1: the surrogate's maximizer versus the 0-1 loss's
# ------------------------------------------------------------------------------------------------
def feasible_polygon(x0: np.ndarray, eps: float, norm: str, arc_points: int = 1024) -> np.ndarray:
    """Boundary points of B(x0, eps) ∩ [-1, 1]^2: the exact vertices for l_inf / l_1 (the ball's
    polygon clipped by the square), dense boundary points for l_2 (circle points clamped into the
    square: clamping towards a square that holds x0 never increases the distance, and it traces
    both the arcs inside the square and the square's edges inside the disc)."""
    if norm == "l2":
        t = np.linspace(0, 2 * np.pi, arc_points, endpoint=False)
        return np.clip(x0 + eps * np.stack([np.cos(t), np.sin(t)], 1), -1, 1)
    ring = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]] if norm == "linf" else [[1, 0], [0, 1], [-1, 0], [0, -1]], float)
    poly = x0 + ring * eps
    for axis in (0, 1):  # Sutherland-Hodgman clipping by the square's four half-planes
        for sign in (1, -1):
            out = []
            for i in range(len(poly)):
                p, q = poly[i], poly[(i + 1) % len(poly)]
                pin, qin = sign * p[axis] <= 1, sign * q[axis] <= 1
                if pin:
                    out.append(p)
                if pin != qin:
                    out.append(p + (sign - p[axis]) / (q[axis] - p[axis]) * (q - p))
            poly = np.array(out)
    return poly


def ce(x: np.ndarray, label: int = 0) -> np.ndarray:
    """Cross-entropy -log softmax(W x)_label at points x (..., 2); convex in x."""
    z = x @ W.numpy().T.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return (m[..., 0] + np.log(np.exp(z - m).sum(-1))) - z[..., label]


def ce_maximizer(x0: np.ndarray, eps: float, norm: str, label: int = 0) -> np.ndarray:
    """The point of B(x0, eps) ∩ square that maximizes CE: CE is convex, so it is a vertex of the
    feasible polygon (exact for l_inf / l_1; on the fine polygon for l_2)."""
    poly = feasible_polygon(x0, eps, norm)
    return poly[np.argmax(ce(poly, label))]


def predict(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float64) @ W.numpy().T.astype(np.float64)).argmax(-1)


@dataclass
class Counterexample:
    """A ball where the CE maximizer keeps the label but another point of the ball does not."""

    norm: str
    label: int
    x0: np.ndarray
    eps: float
    ce_max: np.ndarray  # the CE maximizer (classified 0)
    wrong: np.ndarray  # a misclassified point of the same ball (the 0-1 loss's maximizer)


def misclassified_point(x0: np.ndarray, eps: float, norm: str, label: int = 0) -> np.ndarray | None:
    """A point of the ball ∩ square classified != label, maximizing the best competing margin."""
    poly = feasible_polygon(x0, eps, norm)
    z = poly @ W.numpy().T.astype(np.float64)
    margin = np.delete(z, label, axis=1).max(1) - z[:, label]
    i = np.argmax(margin)  # the margins are linear: their max over the polygon is at a vertex
    return poly[i] if margin[i] > 0 else None


def find_counterexample(norm: str, label: int = 0, eps_grid=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8),
                        n: int = 33) -> Counterexample | None:
    """Search a grid of centres of class ``label`` for the paper's Fig. 1 situation; among the hits,
    the one whose CE maximizer keeps the label with the largest margin (the clearest picture).
    None if the grid holds no such ball."""
    check_choice("norm", norm, NORMS)
    t = np.linspace(-0.95, 0.95, n)
    best, best_margin = None, -np.inf
    for eps in eps_grid:
        for a in t:
            for b in t:
                x0 = np.array([a, b])
                if predict(x0) != label:
                    continue
                m = ce_maximizer(x0, eps, norm, label)
                z = m @ W.numpy().T.astype(np.float64)
                margin = z[label] - np.delete(z, label).max()
                if margin <= 0:
                    continue
                wrong = misclassified_point(x0, eps, norm, label)
                if wrong is not None and margin > best_margin:
                    best, best_margin = Counterexample(norm, label, x0, eps, m, wrong), margin
    return best


# ------------------------------------------------------------------------------------------------
# R, R'' and E = R - R'' per surrogate
# ------------------------------------------------------------------------------------------------
TOY_SEARCH = {  # GP budget on the toy: attacks on 2-d points cost next to nothing
    "smoke": dict(gn=3, ps=20),
    "cpu": dict(gn=10, ps=100),
    "paper": dict(gn=30, ps=200),
}


def search_toy_loss(norm: str, eps: float, scale: str, n_points: int = 500, seed: int = 0) -> dict:
    """GP search (PGD-10 fitness) for a surrogate on the toy, on the sample drawn with ``seed``."""
    check_choice("scale", scale, tuple(TOY_SEARCH))
    x, y = sample(n_points, seed)
    ev = Evaluator(ToyModel(), to_unit(x), y, Setting("toy", "linear", "st", norm, eps / 2), seed=seed)
    cfg = GPConfig(**TOY_SEARCH[scale], st=TOY_SEARCH[scale]["ps"], n_images=n_points, hof=5)
    return run_search(ev, cfg, seed=seed, progress=False)


def risk_table(norm: str, eps: float, surrogates: dict, n_points: int = 1000, seed: int = 1,
               steps: tuple = (10, 100)) -> list[dict]:
    """Exact R and PGD estimates R'' for each surrogate on ``n_points`` toy points (drawn with
    ``seed``), eps in the toy's [-1, 1]^2 units. One row per (surrogate, steps), with E = R - R''."""
    x, y = sample(n_points, seed)
    R, _ = exact_risk(x, y, eps, norm)
    names = list(surrogates)
    rows = []
    for k in steps:
        res = evaluate_losses(ToyModel(), to_unit(x), y, list(surrogates.values()), norm=norm, eps=eps / 2,
                              steps=k, seed=seed)
        for name, r, bad in zip(names, res.risk.tolist(), res.invalid.tolist()):
            rows.append({"norm": norm, "eps": eps, "surrogate": name, "steps": k, "R (exact)": R,
                         "R''": r, "E = R - R''": R - r, "invalid": bad})
    return rows


# ------------------------------------------------------------------------------------------------
# Fig. 1
# ------------------------------------------------------------------------------------------------
def plot_fig1(cases: list, res: int = 300):
    """One panel per counterexample: the 0-1 loss l(f(x), label) as regions (grey = misclassified),
    the cross-entropy l_CE(f(x), label) as a heat map with contours, the ball, the CE maximizer
    (still correct) and a misclassified point of the same ball."""
    fig, axes = plt.subplots(1, len(cases), figsize=(4.6 * len(cases), 4.4), squeeze=False)
    t = np.linspace(-1, 1, res)
    gx, gy = np.meshgrid(t, t)
    pts = np.stack([gx, gy], -1)
    for ax, c in zip(axes[0], cases):
        loss = ce(pts, c.label)
        wrong = predict(pts) != c.label
        im = ax.imshow(loss, extent=(-1, 1, -1, 1), origin="lower", cmap="magma", alpha=0.85)
        ax.contourf(gx, gy, wrong, levels=[0.5, 1.5], colors="none", hatches=["////"])
        ax.contour(gx, gy, wrong, levels=[0.5], colors="white", linewidths=1.5)
        cs = ax.contour(gx, gy, loss, levels=8, colors="k", linewidths=0.5, alpha=0.6)
        ax.clabel(cs, fontsize=8)
        poly = feasible_polygon(c.x0, c.eps, c.norm)
        ax.fill(poly[:, 0], poly[:, 1], facecolor="none", edgecolor="cyan", lw=2)
        ax.plot(*c.x0, "o", color="cyan", ms=6, label="x0")
        ax.plot(*c.ce_max, "*", color="red", ms=14, mec="white", label=f"CE maximizer (class {predict(c.ce_max)})")
        ax.plot(*c.wrong, "X", color="lime", ms=11, mec="k", label=f"misclassified (class {predict(c.wrong)})")
        ax.set(title=f"{c.norm}: label {c.label}, eps={c.eps:g}", xlim=(-1, 1), ylim=(-1, 1), xlabel="$x_0$",
               ylabel="$x_1$")
        ax.legend(loc="lower left", fontsize=9, framealpha=0.9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cross-entropy")
    return fig


DEFAULT_EPS = {"linf": 0.2, "l2": 0.3, "l1": 0.3}  # in [-1, 1]^2 units


def chapter_results(norms: list, eps: dict, scale: str, n_points: int = 1000, seed: int = 0,
                    recompute: bool = False, root: Path | None = None) -> tuple:
    """The toy chapter's numbers: per norm, a GP-found loss (searched on the sample of ``seed``)
    and the R / R'' / E table of CE, C&W, margin, DLR and the found loss (on a fresh sample,
    ``seed + 1``) for PGD-10 and PGD-100. Saved under ``results/toy/<scale>/`` and reloaded when the
    parameters match."""

    folder = (root or RESULTS_DIR / "toy") / scale
    config = {"norms": list(norms), "eps": {n: float(eps[n]) for n in norms}, "n_points": n_points, "seed": seed,
              "scale": scale, "search": TOY_SEARCH[scale],
              "data": "points uniform in [-1, 1]^2 labelled by the model's own prediction"}
    meta = folder / "toy.json"
    if not recompute and store.matches(meta, config):
        return store.load(folder / "risk.csv", config), store.load(meta, config)["found"]
    found, rows = {}, []
    for norm in norms:
        rec = search_toy_loss(norm, eps[norm], scale, n_points=min(n_points, 500), seed=seed)
        found[norm] = {"formula": rec["best"], "pretty": rec["best_pretty"], "fitness": rec["best_fitness"]}
        sur = {**HANDCRAFTED, "searched": compile_formula(rec["best"])}
        rows += risk_table(norm, eps[norm], sur, n_points=n_points, seed=seed + 1)
    df = pd.DataFrame(rows)
    store.save(folder / "risk.csv", df, config)
    store.save(meta, {"config": config, "found": found}, config)  # written last: it marks the pair complete
    return df, found


def draw_ball(a: float = -0.9, b: float = 0.0, radius: float = 0.5, ball: str = "linf") -> None:
    """Fig. 1 for one ball: centre (a, b), its radius and norm, CE's maximizer and a misclassified point."""
    c0 = np.array([a, b])
    lab = int(predict(c0))
    wrong = misclassified_point(c0, radius, ball, lab)
    plot_fig1([Counterexample(ball, lab, c0, radius, ce_maximizer(c0, radius, ball, lab),
                              wrong if wrong is not None else c0)])
    plt.show()


def sliders() -> None:
    """Sliders for Fig. 1's centre, radius and norm. The first drawing goes to the cell's own output, so a
    static run (papermill) waits on no widget; only slider moves, in a live session, redraw into the
    widget's area (``ipywidgets.interact`` made papermill hang: it waited on its Output widget)."""
    import ipywidgets as widgets
    from IPython.display import display

    controls = {"a": widgets.FloatSlider(value=-0.9, min=-1, max=1, step=0.01, description="centre a"),
                "b": widgets.FloatSlider(value=0.0, min=-1, max=1, step=0.01, description="centre b"),
                "radius": widgets.FloatSlider(value=0.5, min=0.02, max=1, step=0.01, description="radius"),
                "ball": widgets.Dropdown(options=list(NORMS), value="linf", description="ball")}
    out = widgets.Output()

    def redraw(_):
        with out:
            out.clear_output(wait=True)
            draw_ball(**{k: w.value for k, w in controls.items()})

    for w in controls.values():
        w.observe(redraw, names="value")
    display(widgets.VBox(list(controls.values())), out)
    draw_ball()


def parse_centre(x0: str, fig_eps: float):
    """Chapter 01's ``x0`` parameter: None for "auto", else the 2-D centre 'a,b' with |a|, |b| <= 1."""
    if x0 == "auto":
        return None
    try:
        centre = np.array([float(v) for v in x0.split(",")])
    except ValueError:
        centre = np.zeros(0)
    if centre.shape != (2,) or not np.all(np.abs(centre) <= 1) or not fig_eps > 0:
        raise ValueError(f"parameter x0={x0!r} is not allowed; allowed values: 'auto' or 'a,b' with -1 <= a, b <= 1 "
                         f"(and fig_eps > 0)")
    return centre


def chapter_cases(norms, centre=None, fig_eps: float = 0.0) -> tuple[list, list[tuple[str, str]]]:
    """Fig. 1's balls, one per norm: the given ball (``centre``, ``fig_eps``) or, without one, the first
    class (the paper draws class 0) that has a ball where CE's maximizer stays correct while a
    misclassified point exists; and (norm, why) for the norms without such a ball."""
    cases, missing = [], []
    for n in norms:
        if centre is not None:
            label = int(predict(centre))
            c = Counterexample(n, label, centre, fig_eps, ce_maximizer(centre, fig_eps, n, label),
                               misclassified_point(centre, fig_eps, n, label))
            cases.append(c) if c.wrong is not None else missing.append((n, "the given ball holds no misclassified point"))
            continue
        c = next((c for c in (find_counterexample(n, label) for label in (0, 1, 2)) if c is not None), None)
        cases.append(c) if c is not None else missing.append((n, "no ball on the search grid"))
    return cases, missing


def takeaway(df) -> str:
    """Chapter 01's answer in one sentence per norm: the exact R, CE's error E and the tightest surrogate's,
    with the most PGD steps of the table."""
    top = df["steps"].max()
    parts = []
    for norm, d in df[df["steps"] == top].groupby("norm", sort=False):
        e = 100 * d.set_index("surrogate")["E = R - R''"]
        best = e.idxmin()
        parts.append(f"{norm} (exact R {d['R (exact)'].iloc[0]:.3f}): CE misses {e['ce']:.1f} pp, "
                     + ("the least of all surrogates" if best == "ce" or e[best] == e["ce"]
                        else f"the tightest surrogate, {best}, {e[best]:.1f} pp"))
    return f"With PGD-{top}, " + "; ".join(parts) + ". Table 1.2 has every surrogate with its interval."


def conclusion(df, n_points: int) -> str:
    """Chapter 01's closing paragraph, computed from its risk table: per norm, the tightest surrogate and
    CE's error E (the share of the ``n_points`` points broken exactly but not by PGD, with a 95%
    Clopper-Pearson interval), and what more PGD steps changed."""
    top, low = df["steps"].max(), df["steps"].min()
    lines = []
    for norm, d in df[df["steps"] == top].groupby("norm", sort=False):
        e = d.set_index("surrogate")["E = R - R''"]
        best = e.idxmin()

        def pp(s):
            lo, hi = count_interval(round(e[s] * n_points), n_points)
            return f"{100 * e[s]:.1f} pp [{100 * lo:.1f}, {100 * hi:.1f}]"

        closed = [s for s in e.index if e[s] <= 0]
        d_low = df[(df["steps"] == low) & (df["norm"] == norm)].set_index("surrogate")["E = R - R''"]
        moved = 100 * (d_low - e).abs().max()
        lines.append(f"* **{norm}** (eps {d['eps'].iloc[0]:g}, exact R = {d['R (exact)'].iloc[0]:.3f}): "
                     + (f"{', '.join(closed)} close{'s' if len(closed) == 1 else ''} the gap; " if closed
                        else "no surrogate closes the gap; ")
                     + (f"CE is the tightest (E = {pp('ce')})" if best == "ce" else
                        f"the tightest is {best} (E = {pp(best)}), CE's E is {pp('ce')}, "
                        f"{100 * (e['ce'] - e[best]):.1f} pp more")
                     + f"; PGD-{top} instead of PGD-{low} moves no surrogate's E by more than {moved:.1f} pp.")
    return "\n".join(lines + ["", f"Intervals: 95% Clopper-Pearson over the {n_points} points of the evaluation "
                              "sample. An error that more steps do not shrink is the surrogate's, not the optimizer's."])


#: chapter 01's parameters (papermill, ``run -p``; checked before its kernel starts)
PARAMETERS: dict[str, Param] = {
    **common("size of the GP search on the toy (all run in seconds)"),
    "norm": Param("all", choice(NORMS + ("all",))),
    "eps": Param(0.0, number(0, zero_means_default=True), "radius for the risk table"),
    "x0": Param("auto", lambda v: None if v == "auto" or (isinstance(v, str) and is_point(v)) else
                "'auto' or 'a,b' with -1 <= a, b <= 1", "centre of the Fig. 1 ball"),
    "fig_eps": Param(0.0, number(0, zero_means_default=True), "radius of the Fig. 1 ball when x0 is given"),
    "n_points": Param(1000, whole(1), "toy points for the risk table"),
    "interactive": Param(False, choice((True, False)), "sliders in a live session"),
}


def check_parameters(v: dict) -> None:
    """The toy lives in [-1, 1]^2 (a box of side 2); 0 means the chapter's default radius."""
    for name in ("eps", "fig_eps"):
        for norm in NORMS if v["norm"] == "all" else (v["norm"],):
            if v[name]:
                with_name(name, v[name], lambda: check_eps(norm, v[name], 2, side=2.0))
