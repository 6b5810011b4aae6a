"""Exact adversarial risk of small ReLU networks by mixed-integer linear programming (HiGHS).

For an image x with label y, a ReLU network f and the feasible set ``{x' : ||x' - x||_p <= eps,
0 <= x' <= 1}`` (p = inf or 1: both linear), x is *vulnerable* iff for some wrong class c

    max_{x'} f_c(x') - f_y(x') > 0,

a MILP with the standard exact encoding of each ReLU a = max(z, 0) whose pre-activation bounds
[l, u] straddle 0 (a binary d per such *unstable* neuron):

    a >= 0,  a >= z,  a <= z - l (1 - d),  a <= u d.

Neurons with u <= 0 are 0 and those with l >= 0 are the identity: they need no binary, so the
bounds are tightened first -- exactly for the first layer (a linear function over the feasible set:
the box for l_inf, a greedy knapsack for l_1), by interval arithmetic, then by one LP per
unstable neuron of the later layers (the triangle relaxation of the layers before).

:func:`verify_image` first tries the attacks' counterexamples (an image any attack breaks needs no
solver). Then, per wrong class c (in the order given, e.g. by the attack's margins):

1. classes that the output bounds or the **LP relaxation** (binaries relaxed: milliseconds) cannot let
   win by ``MARGIN`` are ruled out, since the relaxation's optimum bounds the exact one from above;
2. for the others, one MILP asks whether some feasible point gives class c a logit at least ``MARGIN``
   above y's, with f_c - f_y as the objective (it guides the branching; the first feasible point
   ends the search). Binaries of the last hidden layer whose weight in f_c - f_y is <= 0 are relaxed
   (lowering such an activation only raises f_c - f_y, and the triangle's lowest point is the ReLU).

A feasible point is a counterexample once a float32 forward pass of the model itself confirms it;
an infeasible problem is HiGHS's proof that c cannot win. Each image ends *robust* (every class
proven unable to win by ``MARGIN``), *vulnerable* or *unknown* (time limit).

**l_2** is not linear. The ball is replaced by a polytope that contains it -- the box of the l_inf
ball of the same radius, cut by tangent half-spaces ``<g, x' - x> <= eps`` (``||g|| = 1``) -- so that
*infeasible* stays a proof. A solver point outside the ball adds the tangent cut through its direction
and the problem is solved again (outer approximation: the cuts are kept for every later class), until a
point inside the ball is confirmed by the model, the problem is infeasible, or time runs out. First-layer
bounds take the tighter of the box's and ``W x + b +- eps ||W_j||_2``. This decides l_2 images exactly
where it converges; where it does not, the image is *unknown* and R an interval, as for the other norms.
Measured on the FGSM-AT [64] MLP at eps 0.1 (12 images, 30 s limit, 1 core): 6 unknown with the plain feasibility MILP,
1 with the LP filter, the relaxed last layer and the guiding objective.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import highspy
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lossbook import store
from lossbook.config import check_choice, quiet
from lossbook.core.attacks import pgd, project
from lossbook.core.losses import cross_entropy, dlr_loss, margin_loss
from lossbook.core.models import eval_mode

NORMS_EXACT = ("linf", "l1", "l2")
#: l_2: at most this many tangent cuts per LP relaxation of a class (the MILP adds more as it needs them)
LP_CUTS = 200
#: a counterexample must beat the true class's logit by this much (float64 solver, float32 model)
MARGIN = 1e-5
STATUSES = ("robust", "vulnerable", "unknown")


# ------------------------------------------------------------------------------------------------
# The network as matrices
# ------------------------------------------------------------------------------------------------
def relu_layers(model: nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W, b) of each Linear layer of a ReLU MLP (``Flatten``, ``Linear``, ``ReLU``, ..., ``Linear``),
    in float64; anything else is refused with what was found."""
    mods = [m for m in model.modules() if not isinstance(m, nn.Sequential) and m is not model] \
        if isinstance(model, nn.Sequential) else list(model.children())
    layers, expect_linear = [], True
    for m in mods:
        if isinstance(m, nn.Flatten):
            continue
        if isinstance(m, nn.Linear) and expect_linear:
            layers.append((m.weight.detach().double().cpu().numpy(),
                           (m.bias.detach().double().cpu().numpy() if m.bias is not None else np.zeros(m.out_features))))
            expect_linear = False
        elif isinstance(m, nn.ReLU) and not expect_linear:
            expect_linear = True
        else:
            raise ValueError(f"exact verification needs a ReLU MLP (Flatten, Linear, ReLU, ..., Linear); found "
                             f"{type(m).__name__} where a {'Linear' if expect_linear else 'ReLU'} was expected")
    if not layers or expect_linear:
        raise ValueError("exact verification needs a ReLU MLP ending in a Linear layer")
    return layers


def input_box(x: np.ndarray, norm: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate bounds of the feasible set (exact for l_inf; the l_inf hull for l_1 and l_2)."""
    return np.maximum(x - eps, 0.0), np.minimum(x + eps, 1.0)


def first_layer_bounds(W: np.ndarray, b: np.ndarray, x: np.ndarray, norm: str, eps: float):
    """Bounds of W x' + b over the feasible set: exact for l_inf (the box) and l_1 (a greedy knapsack:
    move the coordinates with the largest |w| first, each as far as the box lets it); for l_2 the
    tighter of the box's bounds and the ball's ``W x + b +- eps ||W_j||_2`` (each contains the set)."""
    lo, hi = input_box(x, norm, eps)
    base = W @ x + b
    if norm in ("linf", "l2"):
        Wp, Wn = np.clip(W, 0, None), np.clip(W, None, 0)
        box_lo, box_hi = Wp @ lo + Wn @ hi + b, Wp @ hi + Wn @ lo + b
        if norm == "linf":
            return box_lo, box_hi
        reach = eps * np.linalg.norm(W, axis=1)
        return np.maximum(box_lo, base - reach), np.minimum(box_hi, base + reach)
    up_room, down_room = hi - x, x - lo  # how far each coordinate can go up or down

    def best(Ws):  # max over ||d||_1 <= eps, lo <= x + d <= hi of Ws d, per row
        cap = np.where(Ws > 0, up_room, down_room)  # room in the direction that helps
        gain = np.abs(Ws)
        order = np.argsort(-gain, axis=1)
        g, c = np.take_along_axis(gain, order, 1), np.take_along_axis(cap, order, 1)
        used_before = np.cumsum(c, axis=1) - c
        take = np.clip(eps - used_before, 0, None)
        return (g * np.minimum(c, take)).sum(1)

    return base - best(-W), base + best(W)


# ------------------------------------------------------------------------------------------------
# The MILP
# ------------------------------------------------------------------------------------------------
class _Model:
    """Columns and rows of one image's problem in HiGHS (inputs, then per layer z and a, then binaries)."""

    def __init__(self, layers, x, norm, eps, bounds, integer: bool, time_limit: float):
        self.h = h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", float(time_limit))
        h.setOptionValue("threads", 1)
        h.setOptionValue("mip_max_improving_sols", 1)  # one counterexample is enough
        self.inf = highspy.kHighsInf
        self.x0, self.norm, self.eps = x, norm, eps
        lo, hi = input_box(x, norm, eps)
        self.n = 0
        self.x_cols = self._cols(lo, hi)
        if norm == "l1":  # x' = x + d+ - d-, d+, d- >= 0, sum(d+ + d-) <= eps
            dp, dm = self._cols(np.zeros_like(x), hi - x), self._cols(np.zeros_like(x), x - lo)
            for i in range(len(x)):
                self._row(x[i], x[i], [self.x_cols[i], dp[i], dm[i]], [1.0, -1.0, 1.0])
            self._row(-self.inf, eps, list(dp) + list(dm), [1.0] * (2 * len(x)))
        prev = self.x_cols
        self.unstable = self.stable = 0
        self.binaries = []
        self.last_binaries: dict[int, int] = {}  # neuron of the last hidden layer -> its binary's column
        for k, (W, b) in enumerate(layers):
            l, u = bounds[k]
            z = self._cols(l, u)
            for j in range(W.shape[0]):  # z_j - W_j a = b_j
                nz = np.nonzero(W[j])[0]
                self._row(b[j], b[j], [z[j]] + [prev[i] for i in nz], [1.0] + list(-W[j, nz]))
            if k == len(layers) - 1:
                self.logits = z
                break
            a = self._cols(np.maximum(l, 0), np.maximum(u, 0))
            for j in range(W.shape[0]):
                if u[j] <= 0 or l[j] >= 0:  # stable: a = 0 (bounds) or a = z
                    self.stable += 1
                    if l[j] >= 0:
                        self._row(0.0, 0.0, [a[j], z[j]], [1.0, -1.0])
                    continue
                self.unstable += 1
                d = self._cols(np.zeros(1), np.ones(1))[0]
                self.binaries.append(d)
                if k == len(layers) - 2:
                    self.last_binaries[j] = d
                self._row(0.0, self.inf, [a[j], z[j]], [1.0, -1.0])  # a >= z
                self._row(-self.inf, -l[j], [a[j], z[j], d], [1.0, -1.0, -l[j]])  # a <= z - l (1 - d)
                self._row(-self.inf, 0.0, [a[j], d], [1.0, -u[j]])  # a <= u d
            prev = a
        self.integer = integer
        if integer and self.binaries:
            self._integrality(self.binaries, True)

    def cut(self, point: np.ndarray) -> bool:
        """l_2: if ``point`` lies outside the ball, add the tangent half-space that separates it
        (``<g, x' - x> <= eps`` with g its unit direction, valid for the whole ball). Returns whether it did."""
        if self.norm != "l2" or point is None:
            return False
        d = point - self.x0
        r = float(np.linalg.norm(d))
        if r <= self.eps * (1 + 1e-6):
            return False
        g = d / r
        nz = np.nonzero(g)[0]
        self._row(-self.inf, self.eps + float(g[nz] @ self.x0[nz]), [self.x_cols[i] for i in nz], list(g[nz]))
        return True

    def point(self) -> np.ndarray | None:
        """The solver's input point, if it has a feasible one."""
        if self.h.getInfo().primal_solution_status != 2:
            return None
        return np.array(self.h.getSolution().col_value)[self.x_cols]

    def _integrality(self, cols, integer: bool) -> None:
        kind = highspy.HighsVarType.kInteger if integer else highspy.HighsVarType.kContinuous
        if len(cols):
            self.h.changeColsIntegrality(len(cols), np.array(cols, dtype=np.int32), np.array([kind] * len(cols)))

    def lp_candidates(self, classes: list[int], y: int) -> list[int]:
        """The classes whose LP relaxation (binaries relaxed) still lets them beat y by ``MARGIN``: for the
        others the relaxation's optimum, an upper bound on the exact one, proves they cannot win."""
        self._integrality(self.binaries, False)
        keep = []
        for c in classes:
            self.objective({self.logits[c]: 1.0, self.logits[y]: -1.0})
            for _ in range(LP_CUTS + 1):  # l_2: cut the optimum off while it lies outside the ball
                self.h.run()
                ok = self.h.getModelStatus().name == "kOptimal"
                if (not ok or self.h.getInfo().objective_function_value < MARGIN or self.norm != "l2"
                        or not self.cut(self.point())):
                    break
            if not ok or self.h.getInfo().objective_function_value >= MARGIN:
                keep.append(c)
        self.objective({})
        if self.integer:
            self._integrality(self.binaries, True)
        return keep

    def for_class(self, w_out: np.ndarray) -> int:
        """Keep binaries only where they matter for "class c beats y": a neuron of the last hidden layer
        whose weight in f_c - f_y is <= 0 can take a = max(z, 0) in the triangle relaxation (lowering a
        only raises f_c - f_y, and the lowest a in the triangle is max(z, 0)), so its binary is relaxed.
        Returns the number of binaries kept."""
        if not self.integer:
            return 0
        relax = [d for j, d in self.last_binaries.items() if w_out[j] <= 0]
        keep = [d for j, d in self.last_binaries.items() if w_out[j] > 0]
        self._integrality(relax, False)
        self._integrality(keep, True)
        return len(self.binaries) - len(relax)

    def _cols(self, lo, hi) -> np.ndarray:
        n = len(lo)
        self.h.addVars(n, np.asarray(lo, float), np.asarray(hi, float))
        idx = np.arange(self.n, self.n + n)
        self.n += n
        return idx

    def _row(self, lower, upper, cols, vals) -> None:
        self.h.addRow(float(lower), float(upper), len(cols), np.asarray(cols, np.int32), np.asarray(vals, float))

    def objective(self, coefs: dict, maximize: bool = True) -> None:
        cost = np.zeros(self.n)
        for c, v in coefs.items():
            cost[c] += v
        self.h.changeColsCost(self.n, np.arange(self.n, dtype=np.int32), cost)
        self.h.changeObjectiveSense(highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize)


def tightened_bounds(layers, x: np.ndarray, norm: str, eps: float, lp: bool = True,
                     time_limit: float = 10.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-activation bounds of every layer: exact for the first, then interval arithmetic, then
    (``lp``) one LP per unstable neuron over the relaxation of the layers before."""
    bounds = [first_layer_bounds(*layers[0], x, norm, eps)]
    for k in range(1, len(layers)):
        W, b = layers[k]
        l, u = bounds[-1]
        al, au = np.maximum(l, 0), np.maximum(u, 0)
        Wp, Wn = np.clip(W, 0, None), np.clip(W, None, 0)
        lo, hi = Wp @ al + Wn @ au + b, Wp @ au + Wn @ al + b
        if lp:
            relax = _Model(layers[:k + 1], x, norm, eps, bounds + [(lo, hi)], integer=False, time_limit=time_limit)
            for j in np.nonzero((lo < 0) & (hi > 0))[0]:
                for sense, arr in ((False, lo), (True, hi)):
                    relax.objective({relax.logits[j]: 1.0}, maximize=sense)
                    relax.h.run()
                    if relax.h.getModelStatus().name == "kOptimal":
                        v = relax.h.getInfo().objective_function_value
                        arr[j] = min(arr[j], v) if sense else max(arr[j], v)
        bounds.append((lo, hi))
    return bounds


# ------------------------------------------------------------------------------------------------
# One image, many images
# ------------------------------------------------------------------------------------------------
@dataclass
class ImageResult:
    index: int
    label: int
    status: str  # robust | vulnerable | unknown
    by: str  # "attack", "milp" or "time limit"
    seconds: float
    unstable: int = 0
    stable: int = 0
    counterexample: np.ndarray | None = field(default=None, repr=False)
    predicted: int | None = None


def _misclassified(model, x_adv: np.ndarray, y: int, shape) -> tuple[bool, int]:
    with torch.no_grad():
        p = int(model(torch.tensor(x_adv, dtype=torch.float32).view(1, *shape)).argmax(1))
    return p != y, p


def _inside(x_adv: np.ndarray, x: np.ndarray, norm: str, eps: float) -> np.ndarray:
    """The solver's point moved into the feasible set in float32 (solver tolerances are ~1e-9)."""
    xt, dt = torch.tensor(x, dtype=torch.float32), torch.tensor(x_adv - x, dtype=torch.float32)
    return (xt + project(dt[None], xt[None], norm, eps)[0]).clamp(0, 1).numpy()


def verify_image(model, layers, x: np.ndarray, y: int, norm: str, eps: float, shape, index: int = 0,
                 class_order=None, candidates=(), time_limit: float = 60.0, lp_bounds: bool = True) -> ImageResult:
    """Decide one image (see the module docstring); ``candidates`` are attack points tried first."""
    t0 = time.perf_counter()
    for cand in candidates:
        wrong, pred = _misclassified(model, cand, y, shape)
        if wrong:
            return ImageResult(index, y, "vulnerable", "attack", time.perf_counter() - t0, counterexample=cand,
                               predicted=pred)
    bounds = tightened_bounds(layers, x, norm, eps, lp=lp_bounds)
    n_classes = layers[-1][0].shape[0]
    classes = [c for c in (class_order if class_order is not None else range(n_classes)) if c != y]
    l_out, u_out = bounds[-1]
    classes = [c for c in classes if u_out[c] - l_out[y] > 0]  # the others are ruled out by the bounds alone
    m = _Model(layers, x, norm, eps, bounds, integer=True, time_limit=time_limit) if classes else None
    if m is not None:  # the LP relaxation rules out, in milliseconds, every class it cannot let win
        classes = m.lp_candidates(classes, y)
    unknown = False
    for c in classes:
        left = time_limit - (time.perf_counter() - t0)
        if left <= 0:
            unknown = True
            break
        # feasibility: is there a point whose class c scores at least MARGIN above y? (a feasible point
        # ends the search; an infeasible problem proves class c cannot win)
        m.h.setOptionValue("time_limit", float(left))
        m.for_class(layers[-1][0][c] - layers[-1][0][y])
        # the objective f_c - f_y guides the branching (nodes whose bound falls below MARGIN are infeasible);
        # the first feasible point ends the search (mip_max_improving_sols = 1)
        m.objective({m.logits[c]: 1.0, m.logits[y]: -1.0})
        while True:  # once for l_inf and l_1; for l_2 until no point outside the ball is left
            row = m.h.getNumRow()
            m._row(MARGIN, m.inf, [m.logits[c], m.logits[y]], [1.0, -1.0])
            m.h.run()
            status, raw = m.h.getModelStatus().name, m.point()
            m.h.deleteRows(1, np.array([row], dtype=np.int32))
            point = None if raw is None else _inside(raw, x, norm, eps)
            if point is not None:
                wrong, pred = _misclassified(model, point, y, shape)
                if wrong:  # (for l_2 a point outside the ball, pulled into it, may already do)
                    return ImageResult(index, y, "vulnerable", "milp", time.perf_counter() - t0, m.unstable,
                                       m.stable, point, pred)
            left = time_limit - (time.perf_counter() - t0)
            if raw is None or left <= 0 or not m.cut(raw):
                break
            m.h.setOptionValue("time_limit", float(left))
        if status == "kInfeasible":
            continue
        unknown = True  # time limit, or a point that float32 does not confirm
        break
    unstable, stable = (m.unstable, m.stable) if m is not None else _count_unstable(bounds)
    return ImageResult(index, y, "unknown" if unknown else "robust", "time limit" if unknown else "milp",
                       time.perf_counter() - t0, unstable, stable)


def _count_unstable(bounds) -> tuple[int, int]:
    hidden = bounds[:-1]
    unstable = sum(int(((l < 0) & (u > 0)).sum()) for l, u in hidden)
    return unstable, sum(len(l) for l, _ in hidden) - unstable


def exact_risk(results: list[ImageResult]) -> tuple[float, float]:
    """R as an interval [vulnerable share, vulnerable + unknown share] (a number where none is unknown)."""
    n = len(results)
    v = sum(r.status == "vulnerable" for r in results)
    u = sum(r.status == "unknown" for r in results)
    return v / n, (v + u) / n


def check_norm(norm: str) -> None:
    check_choice("norm for exact verification", norm, NORMS_EXACT)


# ------------------------------------------------------------------------------------------------
# A set of images, resumable
# ------------------------------------------------------------------------------------------------
def _row(r: ImageResult) -> dict:
    return {"index": r.index, "label": r.label, "status": r.status, "by": r.by, "seconds": round(r.seconds, 3),
            "unstable": r.unstable, "stable": r.stable, "predicted": r.predicted,
            # the solver's points are kept (an attack's point is found again by the same attack)
            "counterexample": None if r.counterexample is None or r.by != "milp" else
            np.asarray(r.counterexample, np.float32).tolist()}


def attack_candidates(model, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, steps: int = 100, seed: int = 0):
    """PGD-``steps`` with CE, margin and DLR on every image: per image the points that break it, and the
    wrong classes ordered by the largest margin any of the attacks reached (most threatening first)."""
    res = pgd(model, x, y, [cross_entropy, margin_loss, dlr_loss], norm=norm, eps=eps, steps=steps, seed=seed)
    with torch.no_grad():
        logits = torch.stack([model(res.x_adv[k]) for k in range(3)])  # (3, N, C)
    margin = (logits - logits.gather(2, y.view(1, -1, 1).expand(3, -1, 1))).amax(0)  # (N, C)
    cands = [[res.x_adv[k, i].reshape(-1).numpy().astype(np.float64) for k in range(3) if res.broken[k, i]]
             for i in range(len(x))]
    order = [[int(c) for c in torch.argsort(margin[i], descending=True)] for i in range(len(x))]
    return cands, order


def verify_set(model, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, path, request: dict,
               indices=None, time_limit: float = 60.0, progress: bool = True) -> list[dict]:
    """Decide every image of (x, y); each finished image is saved at once (``path``, through the
    store, for ``request``), so an interrupted run resumes where it stopped. Returns one row per image."""

    check_norm(norm)
    indices = list(range(len(x))) if indices is None else list(indices)
    rows = store.load(path, request) if store.matches(path, request) else []
    done = {r["index"] for r in rows}
    todo = [k for k, i in enumerate(indices) if i not in done]
    if todo:
        with eval_mode(model):
            layers = relu_layers(model)
            cands, order = attack_candidates(model, x, y, norm, eps)  # all images: the same starts on a resume
            shape = tuple(x.shape[1:])
            for k in tqdm(todo, desc=f"exact {norm} eps={eps}", **quiet(progress)):
                r = verify_image(model, layers, x[k].reshape(-1).double().numpy(), int(y[k]), norm, eps, shape,
                                 index=indices[k], class_order=order[k], candidates=cands[k], time_limit=time_limit)
                rows.append(_row(r))
                store.save(path, rows, request)
    by_index = {r["index"]: r for r in rows}
    return [by_index[i] for i in indices]
