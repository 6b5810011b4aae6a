"""Exact adversarial risk of small ReLU networks by mixed-integer linear programming (HiGHS), with
decisions a skeptic can audit (:mod:`lossbook.core.certify`).

For an image x with label y, a ReLU network f (its float32 weights read as real numbers) and the feasible
set ``{x' : ||x' - x||_p <= eps, 0 <= x' <= 1}``, x is *vulnerable* iff some wrong class c reaches
``f_c(x') - f_y(x') >= 0`` (ties count as adversarial). The decision rule (:func:`settings` records it):

* **vulnerable**: a stored *witness* -- a float32 point that lies in the ball and the box exactly (rational
  check) and whose certified float64 margin ``f_c - f_y`` (rounding errors bounded) is >= 0 for some c.
  Every vulnerable image keeps its witness, whether an attack or the solver found it.
* **robust**: every wrong class proven to satisfy ``f_c - f_y <= -delta`` on the whole set, with
  ``delta = max(DELTA_REL * max(1, max |f(x)|), SLACK_FACTOR * slack)``, where ``slack``
  (:func:`tolerance_slack`) is the worst logit error that HiGHS's tolerances (:data:`SOLVER_OPTIONS`) admit on
  this image's problem. A class is ruled out by (in order) the output bounds, the LP relaxation's bound
  re-derived from its dual (both certified in float64), or an infeasible MILP asking for
  ``f_c - f_y >= -delta``. That last kind is the solver's word (HiGHS's branch and bound, SCIP's for l_2):
  nothing checkable is stored, and ``delta`` only keeps the threshold row clear of the tolerances, not a
  wrong pruning. Each image records how many classes each kind ruled out, so a reader sees which verdicts
  rest on the solver.
* **unknown**: anything else -- the time limit, or a maximum that lies in ``[-delta, 0)``. Unknown images
  widen R to an interval.

Each ReLU a = max(z, 0) whose pre-activation bounds [l, u] straddle 0 gets the standard encoding (a binary d
per *unstable* neuron): ``a >= 0, a >= z, a <= z - l (1 - d), a <= u d``. The bounds are certified
(outward-rounded interval arithmetic; the first layer exactly over the box, by a greedy knapsack for l_1,
and by ``||W_j||_2`` for l_2; then one LP per unstable neuron of later layers, its bound taken from the
dual). Binaries of the last hidden layer whose weight in f_c - f_y is <= 0 are relaxed (lowering such an
activation only raises f_c - f_y, and the triangle's lowest point is the ReLU). A solver point whose
certified pre-activations leave the bounds stops the study (:class:`UnsoundBounds`).

**l_2** is not linear. For the LP filter the ball is replaced by a polytope that contains it -- the box of
the l_inf ball of the same radius, cut by tangent half-spaces ``<g, x' - x> <= eps`` (``||g|| = 1``,
right-hand side rounded up), one more cut through each LP optimum outside the ball, for at most
``L2_LP_SHARE`` of the time limit -- and the LP's dual bound lets the inputs range over the ball and the box
exactly. The classes left go to SCIP with the ball as a convex quadratic constraint.

The verified function is the network as float64 affine maps: an MLP's float32 weights exactly; for a CNN
each convolution with its BatchNorm (and the last convolution with the average pooling and the Linear layer)
composed in float64, so it differs from the float32 PyTorch model by rounding only. Each witness also
records whether the float32 model misclassifies it.
"""
from __future__ import annotations

import importlib.metadata
import time
from dataclasses import dataclass, field

import highspy
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from tqdm.auto import tqdm

from lossbook import store
from lossbook.config import check_choice, quiet
from lossbook.core import certify
from lossbook.core.attacks import pgd
from lossbook.core.losses import cross_entropy, dlr_loss, margin_loss
from lossbook.core.models import eval_mode

NORMS_EXACT = ("linf", "l1", "l2")
STATUSES = ("robust", "vulnerable", "unknown")
#: l_2: at most this many tangent cuts per LP relaxation of a class (the MILP adds more as it needs them)
LP_CUTS = 200
#: robust means every wrong class is proven to stay delta below y, ``delta >= DELTA_REL * max(1, max |f(x)|)``
DELTA_REL = 1e-4
#: HiGHS's tolerances (tighter than its defaults of 1e-6 / 1e-7, so that their worst effect on a logit stays
#: far below delta: :func:`tolerance_slack`)
SOLVER_OPTIONS = {"mip_feasibility_tolerance": 1e-9, "primal_feasibility_tolerance": 1e-9,
                  "dual_feasibility_tolerance": 1e-9}
#: and ``delta >= SLACK_FACTOR * tolerance_slack`` (the tolerances' worst effect on a logit difference)
SLACK_FACTOR = 10.0
#: LP relaxations with more columns than this are solved by HiGHS's interior-point method (the paper's CNN:
#: ~14,000 columns, 2-4x faster than dual simplex there); smaller ones by simplex
IPM_ABOVE_COLUMNS = 5000
#: bumped whenever the decision logic changes (part of every study's request, with :func:`settings`)
VERIFIER_VERSION = 2
#: how a wrong class was ruled out (the kinds an audit accepts)
RULED_OUT_BY = ("bounds", "lp-dual", "milp")


#: back-substituted (CROWN-style) bounds for networks with max-pooling (:func:`certify.backward_bounds`). Measured
#: on NET-1, they leave about half the unstable ReLUs of interval bounds (PGD-AT, eps 0.02: 110-139 instead of
#: 180-264 on three images; 0.4 s each). The NET-1 studies were verified again under them (chapter 07's Table
#: 7.3b compares the verdicts); turned off, a study made with them is not read (its settings differ).
BACKWARD_FOR_MAXPOOL = True


def has_maxpool(net) -> bool:
    """Whether the network has a max-pool; ``net``: its ops, an MLP's ``[(W, b), ...]`` or the PyTorch model."""
    if isinstance(net, nn.Module):
        return any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    return any(isinstance(op, certify.MaxPool) for op in certify.as_ops(net))


def uses_backward(net) -> bool:
    """Whether the verifier back-substitutes bounds for this network (one with a max-pool, when switched on)."""
    return BACKWARD_FOR_MAXPOOL and has_maxpool(net)


def settings(norm: str = "linf", backward: bool = False) -> dict:
    """Everything a verdict under ``norm`` depends on besides the model, images, eps and time limit: part of
    every study's request, so a study made under other settings is never reused. ``backward``: the network's
    bounds are back-substituted (:func:`uses_backward`)."""
    extra = {"l2_solver": _scip_version(), "l2_solver_options": dict(SCIP_OPTIONS), "l2_lp_share": L2_LP_SHARE} \
        if norm == "l2" else {}
    if backward:
        extra["backward_bounds"] = "CROWN-style back-substitution for the unstable neurons, rounding bounded"
    return {**extra, "verifier": VERIFIER_VERSION,
            "rule": "witness margin >= 0 (ties adversarial); robust: every class <= -delta, delta = "
                    "max(delta_rel * max(1, max|f(x)|), slack_factor * tolerance slack)",
            "delta_rel": DELTA_REL, "slack_factor": SLACK_FACTOR,
            "solver": f"HiGHS {importlib.metadata.version('highspy')}", "solver_options": dict(SOLVER_OPTIONS),
            "lp_cuts": LP_CUTS, "ipm_above_columns": IPM_ABOVE_COLUMNS, "bounds": "outward-rounded, LP from the dual",
            "lp_tightening": "per unstable neuron where interval bounds leave a class, networks without max-pooling only",
            "witness": "float32 point, exact ball/box check, float64 margin with rounding bound"}


class UnsoundBounds(RuntimeError):
    """A point of the feasible set whose certified pre-activations leave the bounds the MILP was built on."""


# ------------------------------------------------------------------------------------------------
# The network as matrices
# ------------------------------------------------------------------------------------------------
def leaf_modules(model: nn.Module) -> list[nn.Module]:
    """The modules a network applies in order: a Sequential's leaves (nested Sequentials opened), else the
    model's children."""
    if isinstance(model, nn.Sequential):
        return [m for m in model.modules() if not isinstance(m, nn.Sequential)]
    return list(model.children())


def relu_layers(model: nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W, b) of each Linear layer of a ReLU MLP (``Flatten``, ``Linear``, ``ReLU``, ..., ``Linear``),
    in float64; anything else is refused with what was found."""
    layers, expect_linear = [], True
    mods = leaf_modules(model)
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


def network_ops(model: nn.Module, shape: tuple) -> list:
    """A ReLU network (an MLP or a Table-II CNN) as :mod:`lossbook.core.certify` ops in float64, for inputs of
    ``shape``. A Linear layer keeps its weights exactly; any other run of linear modules (a convolution and
    the BatchNorm after it, or convolution, global average pooling, flatten and the last Linear) is
    composed into one affine map in float64 (BatchNorm folded: the verified function differs from the float32
    PyTorch model by rounding only); ReLU stays; 2x2 max-pooling becomes index groups."""
    mods = leaf_modules(model)
    ops, pending, cur = [], [], tuple(shape)

    def flush():
        nonlocal pending, cur
        if not pending:
            return
        kinds = [type(m) for m in pending]
        n = int(np.prod(cur))
        if kinds in ([nn.Linear], [nn.Flatten, nn.Linear]):
            lin = pending[-1]
            W = lin.weight.detach().double().cpu().numpy()
            b = lin.bias.detach().double().cpu().numpy() if lin.bias is not None else np.zeros(lin.out_features)
        else:
            with torch.no_grad():
                b_t = _apply_linear(pending, torch.zeros(1, *cur, dtype=torch.float64), bias=True)
                W_t = _apply_linear(pending, torch.eye(n, dtype=torch.float64).view(n, *cur), bias=False)
            b, W = b_t.reshape(-1).numpy(), W_t.reshape(n, -1).T.numpy().copy()
        ops.append(certify.Affine(W, b))
        with torch.no_grad():
            cur = tuple(_apply_linear(pending, torch.zeros(1, *cur, dtype=torch.float64), bias=True).shape[1:])
        pending = []

    for m in mods:
        if isinstance(m, LINEAR_MODULES):
            if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
                raise ValueError(f"exact verification handles zero padding only, found {m}")
            if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size not in (1, (1, 1)):
                raise ValueError(f"exact verification handles global average pooling only, found {m}")
            pending.append(m)
        elif isinstance(m, nn.ReLU):
            flush()
            if not ops:
                raise ValueError("exact verification needs a linear layer before the first ReLU")
            ops.append(certify.Relu())
        elif isinstance(m, nn.MaxPool2d):
            flush()
            if m.kernel_size not in (2, (2, 2)) or m.stride not in (2, (2, 2)) or m.padding not in (0, (0, 0)) \
                    or m.dilation not in (1, (1, 1)) or m.ceil_mode:
                raise ValueError(f"exact verification handles 2x2 max-pooling with stride 2 only, found {m}")
            c, h, w = cur
            idx = np.arange(c * h * w).reshape(c, h, w)[:, :h // 2 * 2, :w // 2 * 2]
            groups = idx.reshape(c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 2, 4).reshape(-1, 4)
            ops.append(certify.MaxPool(groups))
            cur = (c, h // 2, w // 2)
        else:
            raise ValueError(f"exact verification handles Linear, Conv2d, BatchNorm, ReLU, 2x2 MaxPool, global average "
                             f"pooling and Flatten; found {type(m).__name__}")
    flush()
    if not ops or not isinstance(ops[-1], certify.Affine):
        raise ValueError("exact verification needs a network ending in a linear layer")
    return ops


LINEAR_MODULES = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout)


def _apply_linear(mods, t: torch.Tensor, bias: bool) -> torch.Tensor:
    """A run of linear modules in float64 (eval mode), with or without their constant terms."""
    for m in mods:
        if isinstance(m, nn.Conv2d):
            t = nn.functional.conv2d(t, m.weight.double(), m.bias.double() if bias and m.bias is not None else None,
                                     m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            s = m.weight.double() / torch.sqrt(m.running_var.double() + m.eps)
            view = (1, -1) + (1,) * (t.dim() - 2)
            t = t * s.view(view) + ((m.bias.double() - m.running_mean.double() * s).view(view) if bias else 0.0)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            t = t.mean((2, 3), keepdim=True)
        elif isinstance(m, nn.Flatten):
            t = t.flatten(1)
        elif isinstance(m, nn.Linear):
            t = nn.functional.linear(t, m.weight.double(), m.bias.double() if bias and m.bias is not None else None)
    return t


def input_box(x: np.ndarray, norm: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate bounds of the feasible set (for l_inf the set itself; the l_inf hull for l_1 and l_2), rounded
    to nearest: a feasible point lies within one ulp (< 2.3e-16) of this box in each coordinate, far inside the
    2e-9 per input that :func:`tolerance_slack` allows for. (Rounding them outward instead made HiGHS's interior
    point method stall on the CNN's LP: 60 s instead of 1 s on NET-1's test image 7 at eps 0.005.)"""
    return np.maximum(x - eps, 0.0), np.minimum(x + eps, 1.0)


def _first_layer_raw(W: np.ndarray, b: np.ndarray, x: np.ndarray, norm: str, eps: float):
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


def first_layer_bounds(W: np.ndarray, b: np.ndarray, x: np.ndarray, norm: str, eps: float):
    """Certified bounds of the first layer's pre-activations (:func:`_first_layer_raw`; for l_2 also the dual
    bound over the ball and the box together, :func:`lossbook.core.certify.ball_box_max`), widened by a bound on its rounding
    errors: the sums of products, the knapsack's running sums and the l_2 terms."""
    lo, hi = _first_layer_raw(W, b, x, norm, eps)
    n = W.shape[1]
    extra = 0.0 if norm == "linf" else (n + eps) * np.abs(W).sum(1)
    if norm == "l2":
        base = W @ x + b
        up, up_mag = certify.ball_box_max(W, x, eps)
        down, down_mag = certify.ball_box_max(-W, x, eps)
        hi, lo = np.minimum(hi, base + up), np.maximum(lo, base - down)
        extra = extra + np.maximum(up_mag, down_mag) * (n + 4)
    return certify.outward(lo, hi, certify.rounding_error(W, b, np.ones(n), extra))


# ------------------------------------------------------------------------------------------------
# The MILP
# ------------------------------------------------------------------------------------------------
class _Model:
    """Columns and rows of one image's problem in HiGHS: the inputs, then each op's outputs (a stable ReLU, or
    a max-pool that one input decides, reuses its input's column), then the binaries."""

    def __init__(self, net, x, norm, eps, bounds, integer: bool, time_limit: float):
        self.h = h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", float(time_limit))
        h.setOptionValue("threads", 1)
        for k, v in SOLVER_OPTIONS.items():
            h.setOptionValue(k, v)
        h.setOptionValue("mip_max_improving_sols", 1)  # one point past the threshold is enough
        self.inf = highspy.kHighsInf
        self.x0, self.norm, self.eps = x, norm, eps
        ops = certify.as_ops(net)
        lo, hi = input_box(x, norm, eps)
        self.n = 0
        self.x_cols = self._cols(lo, hi)
        if norm == "l1":  # x' = x + d+ - d-, d+, d- >= 0, sum(d+ + d-) <= eps
            dp, dm = self._cols(np.zeros_like(x), hi - x), self._cols(np.zeros_like(x), x - lo)  # within an ulp
            for i in range(len(x)):
                self._row(x[i], x[i], [self.x_cols[i], dp[i], dm[i]], [1.0, -1.0, 1.0])
            self._row(-self.inf, eps, list(dp) + list(dm), [1.0] * (2 * len(x)))
        prev, prev_bounds = self.x_cols, (lo, hi)
        self.unstable = self.stable = 0
        self.binaries = []
        self.last_binaries: dict[int, int] = {}  # neuron of a ReLU just before the last op -> its binary's column
        for k, op in enumerate(ops):
            l, u = bounds[k]
            if isinstance(op, certify.Affine):
                z = self._cols(l, u)
                for j in range(op.W.shape[0]):  # z_j - W_j a = b_j
                    nz = np.nonzero(op.W[j])[0]
                    self._row(op.b[j], op.b[j], [z[j]] + [prev[i] for i in nz], [1.0] + list(-op.W[j, nz]))
                prev = z
            elif isinstance(op, certify.Relu):
                prev = self._relu(prev, *prev_bounds, last=k == len(ops) - 2)
            else:
                prev = self._maxpool(prev, *prev_bounds, op.groups, l, u)
            prev_bounds = (l, u)
        self.logits = prev
        self.integer = integer
        if integer and self.binaries:
            self._integrality(self.binaries, True)
        self._matrix_key, self._matrix = None, None

    def _relu(self, z, l, u, last: bool) -> np.ndarray:
        a = z.copy()
        for j in range(len(z)):
            if l[j] >= 0:  # stable: a = z (the same column)
                self.stable += 1
                continue
            if u[j] <= 0:  # stable: a = 0
                self.stable += 1
                a[j] = self._cols(np.zeros(1), np.zeros(1))[0]
                continue
            self.unstable += 1
            a[j] = self._cols(np.zeros(1), np.array([u[j]]))[0]
            d = self._cols(np.zeros(1), np.ones(1))[0]
            self.binaries.append(d)
            if last:
                self.last_binaries[j] = d
            self._row(0.0, self.inf, [a[j], z[j]], [1.0, -1.0])  # a >= z
            self._row(-self.inf, -l[j], [a[j], z[j], d], [1.0, -1.0, -l[j]])  # a <= z - l (1 - d)
            self._row(-self.inf, 0.0, [a[j], d], [1.0, -u[j]])  # a <= u d
        return a

    def _maxpool(self, a, l, u, groups, out_l, out_u) -> np.ndarray:
        """m = max of each group: inputs whose upper bound is at most another's lower bound cannot exceed it;
        one candidate left is the max (its column); else m >= a_i and m <= a_i + (U - l_i)(1 - s_i) with one
        binary s_i per candidate, sum s_i = 1."""
        m = np.empty(len(groups), dtype=int)
        for g, idx in enumerate(groups):
            lead = idx[int(np.argmax(l[idx]))]  # the input with the highest lower bound: the max is at least l[lead]
            cand = [lead] + [i for i in idx if i != lead and u[i] > l[lead]]
            if len(cand) == 1:
                m[g] = a[cand[0]]
                continue
            top = u[idx].max()
            m[g] = self._cols(np.array([out_l[g]]), np.array([out_u[g]]))[0]
            s = self._cols(np.zeros(len(cand)), np.ones(len(cand)))
            self.binaries += list(s)
            for i, si in zip(cand, s):
                self._row(0.0, self.inf, [m[g], a[i]], [1.0, -1.0])  # m >= a_i
                self._row(-self.inf, top - l[i], [m[g], a[i], si], [1.0, -1.0, top - l[i]])  # m <= a_i + (U - l_i)(1 - s_i)
            self._row(1.0, 1.0, list(s), [1.0] * len(s))
        return m

    def cut(self, point: np.ndarray) -> bool:
        """l_2: if ``point`` lies outside the ball, add the tangent half-space that separates it
        (``<g, x' - x> <= eps`` with g its unit direction, valid for the whole ball; the right-hand side is
        rounded up by a bound on its errors). Returns whether it did."""
        if self.norm != "l2" or point is None:
            return False
        d = point - self.x0
        r = float(np.linalg.norm(d))
        if r <= self.eps * (1 + 1e-6):
            return False
        g = d / r
        nz = np.nonzero(g)[0]
        # <g, x'> <= eps ||g|| + <g, x0> for the whole ball; ||g|| and the sum are computed with small errors
        rhs = self.eps * float(np.linalg.norm(g)) + float(g[nz] @ self.x0[nz])
        rhs += 1e-9 * (self.eps + float(np.abs(g[nz]) @ np.abs(self.x0[nz])))
        self._row(-self.inf, rhs, [self.x_cols[i] for i in nz], list(g[nz]))
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

    def safe_bound(self, coefs: dict) -> float:
        """A certified upper bound on the maximum of ``sum coefs[c] * v_c`` over the LP relaxation, from the
        dual of the LP just solved (:func:`lossbook.core.certify.safe_lp_bound`; either sign convention of
        the duals gives a valid bound, the smaller is kept)."""
        lp = self.h.getLp()
        key = (lp.num_row_, lp.num_col_)
        if key != self._matrix_key:
            a = lp.a_matrix_
            if a.format_ != highspy.MatrixFormat.kColwise:  # the arrays below are read as columns
                raise RuntimeError(f"HiGHS returned its matrix as {a.format_}, not column-wise")
            self._matrix = (sp.csc_matrix((np.asarray(a.value_), np.asarray(a.index_), np.asarray(a.start_)),
                                          shape=(lp.num_row_, lp.num_col_)).tocsr(),
                            np.asarray(lp.row_lower_), np.asarray(lp.row_upper_),
                            np.asarray(lp.col_lower_), np.asarray(lp.col_upper_))
            self._matrix_key = key
        A, rl, ru, cl, cu = self._matrix
        cost = np.zeros(self.n)
        for c, v in coefs.items():
            cost[c] += v
        y = np.asarray(self.h.getSolution().row_dual, float)
        if len(y) != A.shape[0] or not np.all(np.isfinite(y)):
            y = np.zeros(A.shape[0])
        ball = (self.x_cols, self.x0, self.eps) if self.norm == "l2" else None  # the inputs range over the ball itself
        return min(certify.safe_lp_bound(A, rl, ru, cl, cu, cost, y, ball),
                   certify.safe_lp_bound(A, rl, ru, cl, cu, cost, -y, ball))

    def lp_ruled_out(self, classes: list[int], y: int, delta: float, deadline: float = float("inf")) -> list[int]:
        """The classes whose LP relaxation (binaries relaxed) proves ``f_c - f_y <= -delta``: the bound comes
        from the dual (certified; for l_2 with the inputs ranging over the ball and the box exactly). For l_2,
        while the bound is not enough, the LP's optimum is cut off where it lies outside the ball (at most
        ``LP_CUTS`` cuts per class, and not past ``deadline``, a ``time.perf_counter()`` value)."""
        self._integrality(self.binaries, False)
        self.lp_solver(True)
        out = []
        for c in classes:
            coefs = {self.logits[c]: 1.0, self.logits[y]: -1.0}
            self.objective(coefs)
            for _ in range(LP_CUTS + 1):
                self.h.run()
                if self.h.getModelStatus().name != "kOptimal" and self.n > IPM_ABOVE_COLUMNS:  # interior point stalled:
                    self.h.setOptionValue("solver", "simplex")  # dual simplex for this class
                    self.h.run()
                    self.lp_solver(True)
                if self.safe_bound(coefs) <= -delta:
                    out.append(c)
                    break
                ok = self.h.getModelStatus().name == "kOptimal"
                if (not ok or self.h.getInfo().objective_function_value <= -delta or self.norm != "l2"
                        or time.perf_counter() > deadline or not self.cut(self.point())):
                    break
        self.objective({})
        self.lp_solver(False)
        if self.integer:
            self._integrality(self.binaries, True)
        return out

    def lp_solver(self, relaxed: bool) -> None:
        """Interior point for the LP relaxation of a large problem (:data:`IPM_ABOVE_COLUMNS`), HiGHS's own
        choice otherwise (and always for the MILP)."""
        self.h.setOptionValue("solver", "ipm" if relaxed and self.n > IPM_ABOVE_COLUMNS else "choose")

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


def tightened_bounds(net, x: np.ndarray, norm: str, eps: float, lp: bool = True,
                     time_limit: float = 10.0, backward: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Certified bounds of every op's output: the first (affine) op exactly over the set (up to rounding, bounded),
    then outward-rounded interval arithmetic; with ``backward``, each later affine op's neurons that interval
    arithmetic leaves unstable (all of them at the logits) tightened by back-substitution to the input
    (:func:`lossbook.core.certify.backward_bounds`); and (``lp``) for each later affine op one LP per unstable
    neuron over the relaxation of the ops before, its bound re-derived from the LP's dual."""
    ops = certify.as_ops(net)
    if not isinstance(ops[0], certify.Affine):
        raise ValueError(f"exact verification needs a network that starts with a linear layer, found "
                         f"{type(ops[0]).__name__}")
    bounds = [first_layer_bounds(ops[0].W, ops[0].b, x, norm, eps)]
    for k in range(1, len(ops)):
        op, (l, u) = ops[k], bounds[-1]
        if isinstance(op, certify.Relu):
            bounds.append((np.maximum(l, 0.0), np.maximum(u, 0.0)))
            continue
        if isinstance(op, certify.MaxPool):
            bounds.append((l[op.groups].max(1), u[op.groups].max(1)))
            continue
        lo, hi = certify.affine_bounds(op.W, op.b, l, u)
        if backward:
            last = k == len(ops) - 1
            lo, hi = certify.backward_bounds(ops, bounds + [(lo, hi)], k, input_box(x, norm, eps),
                                             None if last else np.nonzero((lo < 0) & (hi > 0))[0])
        if lp and k < len(ops) - 1:  # the logits' bounds come from the per-class LPs instead
            relax = _Model(ops[:k + 1], x, norm, eps, bounds + [(lo, hi)], integer=False, time_limit=time_limit)
            relax.lp_solver(True)
            for j in np.nonzero((lo < 0) & (hi > 0))[0]:
                for sign in (1.0, -1.0):
                    relax.objective({relax.logits[j]: sign})
                    relax.h.run()
                    bound = relax.safe_bound({relax.logits[j]: sign})  # max of sign * z_j
                    if sign > 0:
                        hi[j] = min(hi[j], bound)
                    else:
                        lo[j] = max(lo[j], -bound)
        bounds.append((lo, hi))
    return bounds


def tolerance_slack(net, bounds, norm: str, eps: float) -> float:
    """The largest error in f_c - f_y that a MILP point meeting HiGHS's tolerances (not exactly feasible)
    could carry, for any pair of classes: integrality slack tau_i lets an unstable activation (or a max) be off
    by ``tau_i`` times its big-M, row and bound slack ``tau_f`` per row; the errors are carried to the logits
    through ``|W|``. An infeasible MILP counts as a proof only where this is below delta / SLACK_FACTOR."""
    tau_i = SOLVER_OPTIONS["mip_feasibility_tolerance"]
    tau_f = max(SOLVER_OPTIONS["primal_feasibility_tolerance"], tau_i)
    ops = certify.as_ops(net)
    n_in = ops[0].W.shape[1]
    err = np.full(n_in, tau_f * (2 * n_in + 2 if norm == "l1" else 2))  # input columns (and the l_1 budget row)
    prev = None
    for k, op in enumerate(ops):
        if isinstance(op, certify.Affine):
            err = np.abs(op.W) @ err + 2 * tau_f  # the row z = W a + b, and z's bounds
        elif isinstance(op, certify.Relu):
            l, u = prev
            err = err + 3 * tau_f + tau_i * np.maximum(np.abs(l), np.abs(u))
        else:
            l, u = prev
            big_m = u[op.groups].max(1, keepdims=True) - l[op.groups]
            err = err[op.groups].max(1) + 3 * tau_f + tau_i * big_m.max(1) * op.groups.shape[1]
        prev = bounds[k]
    return float(2 * err.max() + tau_f)  # two logits, and the threshold row


# ------------------------------------------------------------------------------------------------
# l_2: the ball as a convex quadratic constraint (SCIP)
# ------------------------------------------------------------------------------------------------
#: SCIP's tolerances for the l_2 problems (its feasibility tolerance, as HiGHS's above)
SCIP_OPTIONS = {"numerics/feastol": 1e-9}
#: l_2: the share of the time limit the LP relaxation's cutting planes may use before SCIP takes over
L2_LP_SHARE = 0.25


def _scip_version() -> str:
    try:
        return f"SCIP via PySCIPOpt {importlib.metadata.version('pyscipopt')}"
    except importlib.metadata.PackageNotFoundError:
        return "SCIP (PySCIPOpt not installed)"


def _scip_class(ops, x, eps, bounds, c, y, delta, time_limit, first_only: bool):
    """One class of an l_2 image: does a point of the ball ``sum (x'_i - x_i)^2 <= eps^2`` (exactly, a convex
    quadratic constraint) and the box reach ``f_c - f_y >= -delta``? The network is encoded as for HiGHS
    (:class:`_Model`). Returns (status, the point's inputs or None, {SCIP's dual bound on the maximum of
    ``f_c - f_y``, its branch-and-bound nodes, its seconds, the stage it stopped in}); with ``first_only`` the
    search stops at the first such point, else it maximises ``f_c - f_y``."""
    try:
        from pyscipopt import Model, quicksum
    except ImportError as exc:  # pragma: no cover - installed by `make setup`
        raise ImportError("exact l_2 verification needs PySCIPOpt: pip install pyscipopt") from exc
    m = Model()
    m.hideOutput()
    m.setParam("limits/time", max(float(time_limit), 0.1))
    m.setParam("parallel/maxnthreads", 1)
    for k, v in SCIP_OPTIONS.items():
        m.setParam(k, v)
    if first_only:
        m.setParam("limits/solutions", 1)
    lo, hi = input_box(x, "l2", eps)
    xs = [m.addVar(lb=float(lo[i]), ub=float(hi[i])) for i in range(len(x))]
    m.addCons(quicksum((xs[i] - float(x[i])) * (xs[i] - float(x[i])) for i in range(len(x)))
              <= float(np.nextafter(eps * eps, np.inf)))
    prev, prev_b = xs, (lo, hi)
    for k, op in enumerate(ops):
        l, u = bounds[k]
        if isinstance(op, certify.Affine):
            z = [m.addVar(lb=float(l[j]), ub=float(u[j])) for j in range(op.W.shape[0])]
            for j in range(op.W.shape[0]):
                nz = np.nonzero(op.W[j])[0]
                m.addCons(z[j] - quicksum(float(op.W[j, i]) * prev[i] for i in nz) == float(op.b[j]))
            prev = z
        elif isinstance(op, certify.Relu):
            pl, pu = prev_b
            out = []
            for j, zj in enumerate(prev):
                if pl[j] >= 0:
                    out.append(zj)
                elif pu[j] <= 0:
                    out.append(0.0)
                else:
                    a, d = m.addVar(lb=0.0, ub=float(pu[j])), m.addVar(vtype="B")
                    m.addCons(a >= zj)
                    m.addCons(a <= zj - float(pl[j]) * (1 - d))
                    m.addCons(a <= float(pu[j]) * d)
                    out.append(a)
            prev = out
        else:
            raise ValueError("exact l_2 verification handles MLPs (no max-pooling)")
        prev_b = (l, u)
    diff = prev[c] - prev[y]
    m.addCons(diff >= -delta)
    m.setObjective(diff, "maximize")
    m.optimize()
    status = m.getStatus()
    point = None
    if m.getNSols() > 0:
        sol = m.getBestSol()
        point = np.array([m.getSolVal(sol, v) for v in xs])
    return status, point, {"bound": float(m.getDualbound()), "nodes": int(m.getNNodes()),
                           "seconds": round(float(m.getSolvingTime()), 1), "stage": m.getStageName()}


# ------------------------------------------------------------------------------------------------
# One image, many images
# ------------------------------------------------------------------------------------------------
@dataclass
class ImageResult:
    index: int
    label: int
    status: str  # robust | vulnerable | unknown
    by: str  # "attack" or "milp" (a decision), "time limit" or "margin" (unknown: a maximum in [-delta, 0))
    seconds: float
    unstable: int = 0
    stable: int = 0
    witness: np.ndarray | None = field(default=None, repr=False)
    predicted: int | None = None  # the witness's class with the largest certified margin
    float32_fooled: bool | None = None  # whether the float32 PyTorch model misclassifies the witness too
    witness_margin: float | None = None  # its certified lower bound (>= 0)
    delta: float = 0.0
    ruled_out: dict = field(default_factory=dict)  # how many wrong classes each kind of proof ruled out
    slack: float = 0.0
    open_class: dict | None = None  # l_2, unknown: the class SCIP stopped on, its bound, nodes, seconds and stage


class _Witnesses:
    """Turns candidate points into witnesses (:mod:`lossbook.core.certify`) for one image."""

    def __init__(self, layers, x, y, norm, eps):
        self.layers, self.x, self.y, self.norm, self.eps = layers, x, y, norm, eps

    def check(self, candidate, bounds=None) -> tuple[np.ndarray, int, float] | None:
        """(point, class, certified margin) when the candidate, moved into the set, is adversarial. With
        ``bounds`` (a solver's point), the point moved into the set must also respect them: one that does
        not stops the study (:class:`UnsoundBounds`)."""
        p = certify.make_witness(candidate, self.x, self.norm, self.eps)
        if p is None:
            return None
        if bounds is not None:
            _check_point(self.layers, bounds, p.astype(float))
        c, low = certify.witness_margin(self.layers, p.astype(float), self.y)
        return (p, c, low) if low >= 0 else None


class SolverContradiction(RuntimeError):
    """The solver found a point past the threshold, then called the same problem infeasible."""


def _check_point(layers, bounds, point: np.ndarray) -> None:
    """A point of the feasible set must have every op's certified output inside the bounds."""
    for k, ((zl, zh), (l, u)) in enumerate(zip(certify.preactivations_enclosure(layers, point), bounds)):
        if np.any(zh < l) or np.any(zl > u):
            j = int(np.argmax(np.maximum(l - zh, zl - u)))
            raise UnsoundBounds(f"op {k} unit {j}: a feasible point's value [{zl[j]:.6g}, {zh[j]:.6g}] "
                                f"leaves the bounds [{l[j]:.6g}, {u[j]:.6g}] the MILP was built on")


def margin_bounds(bounds, y: int, margins=None) -> np.ndarray:
    """Per class, a sound upper bound of f_c - f_y: the logits' bounds (``bounds[-1]``) give u_c - l_y, rounded
    up; ``margins`` (:func:`certify.margin_upper_bounds`), where given, may be tighter."""
    l_out, u_out = bounds[-1]
    gap = u_out - l_out[y]
    gap = gap + 4 * certify.UNIT * np.abs(gap) + certify.TINY
    return gap if margins is None else np.minimum(gap, margins)


def ruled_out_by_bounds(bounds, classes, y: int, delta: float, margins=None) -> list[int]:
    """The classes of ``classes`` whose f_c - f_y is at most -delta by :func:`margin_bounds`."""
    gap = margin_bounds(bounds, y, margins)
    return [c for c in classes if gap[c] <= -delta]


def bounds_and_margins(ops, x: np.ndarray, y: int, norm: str, eps: float, lp: bool, backward: bool):
    """The ops' certified bounds (:func:`tightened_bounds`) and, with ``backward``, the back-substituted upper
    bounds of every margin f_c - f_y (None without)."""
    bounds = tightened_bounds(ops, x, norm, eps, lp=lp, backward=backward)
    margins = certify.margin_upper_bounds(ops, bounds, y, input_box(x, norm, eps)) if backward else None
    return bounds, margins


def verify_image(model, layers, x: np.ndarray, y: int, norm: str, eps: float, shape=None, index: int = 0,
                 class_order=None, candidates=(), time_limit: float = 60.0, lp_bounds: bool = True) -> ImageResult:
    """Decide one image by the rule of the module docstring; ``candidates`` are attack points tried first.
    (``model`` and ``shape`` are unused: every check is made on ``layers`` in float64.)"""
    t0 = time.perf_counter()
    ops = certify.as_ops(layers)
    wit = _Witnesses(ops, x, y, norm, eps)
    logits_x, _ = certify.logits_enclosure(ops, x)
    delta = rule_delta(logits_x)  # raised below where the solver's tolerances need more room
    for cand in candidates:
        found = wit.check(cand)
        if found is not None:
            p, c, low = found
            return ImageResult(index, y, "vulnerable", "attack", time.perf_counter() - t0, witness=p, predicted=c,
                               witness_margin=low, delta=delta)
    n_classes = ops[-1].W.shape[0]
    classes = [c for c in (class_order if class_order is not None else range(n_classes)) if c != y]

    backward = uses_backward(ops)
    bounds, margins = bounds_and_margins(ops, x, y, norm, eps, False, backward)  # interval (and back-substituted)
    if lp_bounds and len(ruled_out_by_bounds(bounds, classes, y, delta, margins)) < len(classes):  # LP where needed
        bounds, margins = bounds_and_margins(ops, x, y, norm, eps, True, backward)
    slack = tolerance_slack(ops, bounds, norm, eps)
    delta = max(delta, SLACK_FACTOR * slack)
    ruled = {k: 0 for k in RULED_OUT_BY}
    by_bounds = ruled_out_by_bounds(bounds, classes, y, delta, margins)
    ruled["bounds"] = len(by_bounds)
    classes = [c for c in classes if c not in by_bounds]
    m = _Model(ops, x, norm, eps, bounds, integer=True, time_limit=time_limit) if classes else None
    if m is not None:
        lp_out = m.lp_ruled_out(classes, y, delta, deadline=t0 + time_limit * (L2_LP_SHARE if norm == "l2" else 1))
        ruled["lp-dual"] = len(lp_out)
        classes = [c for c in classes if c not in lp_out]
    unknown = None

    def result(status, by, **kw):
        unstable, stable = (m.unstable, m.stable) if m is not None else _count_unstable(ops, bounds)
        return ImageResult(index, y, status, by, time.perf_counter() - t0, unstable, stable, delta=delta,
                           ruled_out=ruled, slack=slack, **kw)

    for c in classes if norm == "l2" else ():  # the ball exactly, as a quadratic constraint (SCIP)
        status = None
        for first_only in (True, False):  # the first point past -delta; then, if it is no witness, the maximum
            left = time_limit - (time.perf_counter() - t0)
            if left <= 0:
                break
            status, raw, info = _scip_class(ops, x, eps, bounds, c, y, delta, left, first_only)
            found = wit.check(raw, bounds) if raw is not None else None
            if found is not None:
                p, cw, low = found
                return result("vulnerable", "milp", witness=p, predicted=cw, witness_margin=low)
            if raw is None:
                if not first_only and status == "infeasible":
                    raise SolverContradiction(f"image {index}, class {c}: SCIP found a point, then infeasibility")
                break
        if status == "infeasible":
            ruled["milp"] += 1
            continue
        unknown = "margin" if status == "optimal" else "time limit"
        open_class = {"class": int(c), "tried": classes.index(c) + 1, "of": len(classes), **info} \
            if status is not None else {"class": int(c), "tried": classes.index(c), "of": len(classes)}
        break
    for c in classes if norm != "l2" and not unknown else ():
        left = time_limit - (time.perf_counter() - t0)
        if left <= 0:
            unknown = "time limit"
            break
        m.for_class(ops[-1].W[c] - ops[-1].W[y])
        m.objective({m.logits[c]: 1.0, m.logits[y]: -1.0})  # guides the branching
        for first_only in (True, False):  # the first point past -delta; then, if it is no witness, the maximum
            m.h.setOptionValue("mip_max_improving_sols", 1 if first_only else 2147483647)
            status, raw = None, None
            while True:  # once for l_inf and l_1; for l_2 until no point outside the ball is left
                left = time_limit - (time.perf_counter() - t0)
                if left <= 0:
                    break
                m.h.setOptionValue("time_limit", float(left))
                row = m.h.getNumRow()
                m._row(-delta, m.inf, [m.logits[c], m.logits[y]], [1.0, -1.0])
                m.h.run()
                status, raw = m.h.getModelStatus().name, m.point()
                m.h.deleteRows(1, np.array([row], dtype=np.int32))
                if raw is not None:
                    found = wit.check(raw, bounds)
                    if found is not None:
                        p, cw, low = found
                        return result("vulnerable", "milp", witness=p, predicted=cw, witness_margin=low)
                if raw is None or not m.cut(raw):
                    break
            if not first_only and status == "kInfeasible":
                raise SolverContradiction(f"image {index}, class {c}: HiGHS found a point, then infeasibility")
            if status == "kInfeasible" or raw is None:
                break
        if status == "kInfeasible":
            ruled["milp"] += 1
            continue
        unknown = "margin" if status in ("kOptimal", "kInfeasible") else "time limit"
        break
    if unknown:
        return result("unknown", unknown, **({"open_class": open_class} if norm == "l2" else {}))
    return result("robust", "milp")


def float32_fooled(model, witness: np.ndarray, y: int, shape) -> bool:
    """Whether the float32 PyTorch model misclassifies a witness (the verified function is its float64 form)."""
    with torch.no_grad():
        return bool(int(model(torch.tensor(witness, dtype=torch.float32).view(1, *shape)).argmax(1)) != y)


# ------------------------------------------------------------------------------------------------
# The float32 model: how far its computed logits can sit from the verified function's
# ------------------------------------------------------------------------------------------------
#: unit roundoff of float32 (the PyTorch model's arithmetic)
UNIT32 = 2.0 ** -24
#: roundings one BatchNorm output may take in eval mode (var + eps, sqrt, divide, multiply, subtract, add),
#: with room: its error is at most gamma32(BN_ROUNDINGS) (|alpha| (|z| + |mean|) + |beta|)
BN_ROUNDINGS = 8


def gamma32(n: int) -> float:
    """Higham's gamma_n for float32, with float64's unit roundoff added to every term: it also covers the
    float64 rounding that separates the verified (BatchNorm-folded, float64) network from the modules' real
    composition."""
    u = UNIT32 + certify.UNIT
    return n * u / (1 - n * u)


#: what :func:`float32_logit_error` bounds (said in its refusals)
FLOAT32_MODULES = ("Linear, Conv2d (zero padding), BatchNorm1d/2d (affine, running statistics), ReLU, "
                   "MaxPool2d(2, 2), AdaptiveAvgPool2d(1), Flatten, Dropout; a float32 model in eval mode")


def _float32_refusal(m: nn.Module) -> str | None:
    """Why :func:`float32_logit_error` cannot bound module ``m`` (None: it can)."""
    if isinstance(m, (nn.Linear, nn.ReLU, nn.Flatten, nn.Dropout)):
        return None
    if isinstance(m, nn.Conv2d):
        return None if m.padding_mode == "zeros" else f"Conv2d with padding_mode={m.padding_mode!r}"
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return None if m.affine and m.running_mean is not None else f"{m} without affine parameters or running statistics"
    if isinstance(m, nn.MaxPool2d):
        square = all(v in (k, (k, k)) for v, k in ((m.kernel_size, 2), (m.stride, 2), (m.padding, 0), (m.dilation, 1)))
        return None if square and not m.ceil_mode else str(m)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return None if m.output_size in (1, (1, 1)) else str(m)
    return type(m).__name__


def float32_modules(model: nn.Module) -> list[nn.Module]:
    """The model's modules, once each is known to be one :func:`float32_logit_error` can bound; anything else
    is refused in one line with what is allowed."""
    if torch.get_float32_matmul_precision() != "highest":
        raise ValueError(f"the float32 error bound assumes full float32 products; torch's float32 matmul precision "
                         f"is {torch.get_float32_matmul_precision()!r}, allowed: 'highest'")
    dtypes = sorted({str(p.dtype) for p in model.parameters()} - {"torch.float32"})
    if dtypes:
        raise ValueError(f"the float32 error bound is for a float32 model; found parameters of {', '.join(dtypes)}")
    if model.training:
        raise ValueError("the float32 error bound is for a model in eval mode (BatchNorm's running statistics, no "
                         "dropout); call model.eval() first")
    mods = leaf_modules(model)
    for m in mods:
        why = _float32_refusal(m)
        if why is not None:
            raise ValueError(f"the float32 error bound cannot bound {why}; allowed: {FLOAT32_MODULES}")
    return mods


def float32_logit_error(model: nn.Module, lo: np.ndarray, hi: np.ndarray, shape: tuple) -> np.ndarray:
    """A bound, per logit, on |f32(p) - f(p)| for every float32 input p with lo <= p <= hi: f32 is the PyTorch
    model evaluated in float32, module by module, f the exact function of its float32 parameters. Each linear
    module (Linear, Conv2d, bias included) adds Higham's gamma32(fan-in + 1) |W| |a| + |b| to |W| times the error
    it receives; BatchNorm adds gamma32(BN_ROUNDINGS) times its terms' magnitudes; global average pooling its sum's
    bound; ReLU and max-pooling pass the error on (1-Lipschitz). Magnitudes come from interval bounds over the
    box in float64, widened by 1e-9 relative, and the total by :data:`certify.SAFETY` (both far above the float64
    rounding of this computation itself). It assumes that every linear module is computed as sums of
    products in float32 (direct or GEMM convolution, as PyTorch does on a CPU; not Winograd or FFT, nor TF32)."""
    mods = float32_modules(model)
    with torch.no_grad():
        lo_t = torch.as_tensor(lo, dtype=torch.float64).view(1, *shape)
        hi_t = torch.as_tensor(hi, dtype=torch.float64).view(1, *shape)
        err = torch.zeros_like(lo_t)
        for m in mods:
            size = torch.maximum(lo_t.abs(), hi_t.abs()) * (1 + 1e-9) + err  # |computed input|
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w_abs = m.weight.detach().double().abs()
                b_abs = m.bias.detach().double().abs() if m.bias is not None else None
                fan_in = m.weight[0].numel()
                if isinstance(m, nn.Linear):
                    lin = lambda t, w, b: nn.functional.linear(t, w, b)  # noqa: E731
                else:
                    lin = lambda t, w, b: nn.functional.conv2d(t, w, b, m.stride, m.padding, m.dilation,  # noqa: E731
                                                               m.groups)
                mid, rad = (lo_t + hi_t) / 2, (hi_t - lo_t) / 2
                center = lin(mid, m.weight.detach().double(), m.bias.detach().double() if m.bias is not None else None)
                spread = lin(rad, w_abs, None)
                err = lin(err, w_abs, None) + gamma32(fan_in + 1) * lin(size, w_abs, b_abs)
                lo_t, hi_t = center - spread, center + spread
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                view = (1, -1) + (1,) * (lo_t.dim() - 2)
                alpha = (m.weight.double() / torch.sqrt(m.running_var.double() + m.eps)).view(view)
                mean, beta = m.running_mean.double().view(view), m.bias.double().view(view)
                ends = ((lo_t - mean) * alpha + beta, (hi_t - mean) * alpha + beta)
                lo_t, hi_t = torch.minimum(*ends), torch.maximum(*ends)
                err = alpha.abs() * err + gamma32(BN_ROUNDINGS) * (alpha.abs() * (size + mean.abs()) + beta.abs())
            elif isinstance(m, nn.ReLU):
                lo_t, hi_t = lo_t.clamp(min=0), hi_t.clamp(min=0)
            elif isinstance(m, nn.MaxPool2d):
                pool = nn.functional.max_pool2d
                lo_t, hi_t, err = pool(lo_t, 2, 2), pool(hi_t, 2, 2), pool(err, 2, 2)
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                n = lo_t.shape[2] * lo_t.shape[3]
                lo_t, hi_t = lo_t.mean((2, 3), keepdim=True), hi_t.mean((2, 3), keepdim=True)
                err = err.mean((2, 3), keepdim=True) + gamma32(n + 1) * size.mean((2, 3), keepdim=True)
            elif isinstance(m, nn.Flatten):
                lo_t, hi_t, err = lo_t.flatten(1), hi_t.flatten(1), err.flatten(1)
    return certify.SAFETY * err.reshape(-1).numpy()


def float32_carried(model: nn.Module, rows: list[dict], images: dict, norm: str, eps: float, shape: tuple) -> dict:
    """Whether each robust verdict holds for the float32 model too. A robust row proves f_c - f_y <= -delta for
    every wrong class c, and bounds derived again without a solver (interval, and back-substituted where the
    study used them: :func:`margin_bounds`) may prove a lower ceiling; the float32 model is robust there if,
    for every c, that ceiling plus the float32 errors of f_c and f_y (:func:`float32_logit_error`) stays
    below 0. Returns the robust rows' count, how many carry over, how many classes of the carried rows needed
    the verdict's delta (the rest: bounds alone, no solver's word), and, over the rows that do not carry over,
    the median ratio of the error bound to delta."""
    ops = network_ops(model, shape)
    backward = uses_backward(ops)
    robust, carried, delta_classes, ratios = 0, 0, 0, []
    for r in rows:
        if r["status"] != "robust":
            continue
        x, y = images[r["index"]]
        e = float32_logit_error(model, *input_box(x, norm, eps), shape)
        bounds, margins = bounds_and_margins(ops, x, y, norm, eps, False, backward)
        by_bounds = margin_bounds(bounds, y, margins)
        wrong = [c for c in range(len(e)) if c != y]
        robust += 1
        if all(min(by_bounds[c], -r["delta"]) + e[c] + e[y] < 0 for c in wrong):
            carried += 1
            delta_classes += sum(by_bounds[c] + e[c] + e[y] >= 0 for c in wrong)  # carried by the verdict's delta
        else:
            ratios.append(max(e[c] + e[y] for c in wrong) / r["delta"])
    return {"robust": robust, "carried": carried, "delta_classes": int(delta_classes),
            "median_ratio": float(np.median(ratios)) if ratios else float("nan")}


def network_hash(model: nn.Module) -> str:
    """A hash of a model's parameters and buffers: part of a study's request, so that verdicts made for other
    weights are never reused."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def rule_delta(logits: np.ndarray) -> float:
    """The smallest delta the rule allows at an image with these logits: ``DELTA_REL * max(1, max |f(x)|)``."""
    return DELTA_REL * max(1.0, float(np.abs(logits).max()))


def _count_unstable(ops, bounds) -> tuple[int, int]:
    """(unstable, stable) ReLUs: those whose input bounds straddle 0, and the others."""
    inputs = [bounds[k - 1] for k, op in enumerate(ops) if isinstance(op, certify.Relu)]
    unstable = sum(int(((l < 0) & (u > 0)).sum()) for l, u in inputs)
    return unstable, sum(len(l) for l, _ in inputs) - unstable


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
            "unstable": r.unstable, "stable": r.stable, "predicted": r.predicted, "delta": r.delta,
            "ruled_out": dict(r.ruled_out), "slack": r.slack, "witness_margin": r.witness_margin,
            "witness": None if r.witness is None else certify.encode_point(r.witness),
            "float32_fooled": r.float32_fooled, **({"open_class": r.open_class} if r.open_class else {})}


def attack_candidates(model, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, steps: int = 100, seed: int = 0):
    """PGD-``steps`` with CE, margin and DLR on every image: per image the final points of the three attacks
    (each may be a witness), and the wrong classes ordered by the largest margin any of them reached (most
    threatening first)."""
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
            layers = network_ops(model, tuple(x.shape[1:]))
            cands, order = attack_candidates(model, x, y, norm, eps)  # all images: the same starts on a resume
            # LP-tightened bounds cost one LP per unstable neuron: worth it on the MLPs, minutes per image on a CNN
            lp = not has_maxpool(layers)
            for k in tqdm(todo, desc=f"exact {norm} eps={eps}", **quiet(progress)):
                r = verify_image(model, layers, x[k].reshape(-1).double().numpy(), int(y[k]), norm, eps,
                                 index=indices[k], class_order=order[k], candidates=cands[k], time_limit=time_limit,
                                 lp_bounds=lp)
                if r.witness is not None:
                    r.float32_fooled = float32_fooled(model, r.witness, int(y[k]), tuple(x.shape[1:]))
                rows.append(_row(r))
                store.save(path, rows, request)
    by_index = {r["index"]: r for r in rows}
    return [by_index[i] for i in indices]


# ------------------------------------------------------------------------------------------------
# The audit: every stored decision re-checked without a solver
# ------------------------------------------------------------------------------------------------
#: seconds per LP relaxation when the audit derives LP-dual proofs again (a timed-out LP proves nothing)
LP_AUDIT_TIME_LIMIT = 60.0


def audit_rows(layers, rows: list[dict], images: dict, norm: str, eps: float, backward: bool = False,
               lp_dual: int | None = 0) -> list[str]:
    """What is wrong with a study's stored rows (empty: nothing), checked in float64 and rationals only. Fully
    re-checked: each vulnerable image's witness lies in the ball and the box exactly and has certified margin
    >= 0 under the verified function; each robust image's classes ruled out by bounds are ruled out again by
    bounds derived afresh (interval arithmetic, then, where that is not enough, LP bounds re-derived from the
    dual: an LP solver runs, but its answer is checked, not trusted). Checked for form only: each robust image
    names a known kind of proof for every wrong class, with a delta of the rule (the LP-dual and MILP proofs
    of single classes are not stored); every unknown image says why; no image appears twice. ``images`` maps
    each row's index to its (float64 image, label); ``backward``: the study's bounds were back-substituted
    (its rule says so), and so are the bounds derived again. ``lp_dual``: for this many robust images with
    LP-dual proofs (the first ones; None: all), those proofs are derived again too: the LP relaxations are
    solved afresh and each bound is taken from the dual, so the bounds and the LP duals together must rule
    out at least as many classes as the row claims for both."""
    problems = []
    seen = [r["index"] for r in rows]
    twice = sorted({i for i in seen if seen.count(i) > 1})
    if twice:
        problems.append(f"images {twice[:5]} appear more than once")
    layers = certify.as_ops(layers)
    n_classes = layers[-1].W.shape[0]
    pooled = has_maxpool(layers)
    lp_checked = 0
    for r in rows:
        i = r["index"]
        if i not in images:
            problems.append(f"image {i}: not among the study's images")
            continue
        x, label = images[i]
        where = f"image {i}"
        if r["label"] != label:
            problems.append(f"{where}: label {r['label']} stored, the dataset says {label}")
        least = rule_delta(certify.logits_enclosure(layers, x)[0])
        if r["status"] == "vulnerable":
            if not r.get("witness"):
                problems.append(f"{where}: vulnerable without a witness")
                continue
            p = certify.decode_point(r["witness"])
            if not certify.in_feasible_set(p, x, norm, eps):
                problems.append(f"{where}: the witness lies outside the {norm} ball of radius {eps} or the box")
            c, low = certify.witness_margin(layers, p, label)
            if low < 0:
                problems.append(f"{where}: the witness's certified margin is {low:.3g} < 0 (class {c})")
        elif r["status"] == "robust":
            ruled = r.get("ruled_out") or {}
            if set(ruled) - set(RULED_OUT_BY) or sum(ruled.values()) != n_classes - 1 or min(ruled.values()) < 0:
                problems.append(f"{where}: robust, but the proofs {ruled} do not cover the {n_classes - 1} wrong classes")
            delta, slack = r.get("delta", 0.0), r.get("slack", float("inf"))
            if delta < least * (1 - 1e-12):
                problems.append(f"{where}: delta {delta:.6g} stored, the rule asks at least {least:.6g}")
            if delta < SLACK_FACTOR * slack * (1 - 1e-12):
                problems.append(f"{where}: delta {delta:.6g} is less than {SLACK_FACTOR:g} times the tolerance slack "
                                f"{slack:.3g}")
            claimed, claimed_lp = ruled.get("bounds", 0), ruled.get("lp-dual", 0)
            check_lp = claimed_lp and (lp_dual is None or lp_checked < lp_dual)
            if claimed or check_lp:
                wrong = [c for c in range(n_classes) if c != label]
                bounds, margins = bounds_and_margins(layers, x, label, norm, eps, False, backward)
                found = ruled_out_by_bounds(bounds, wrong, label, delta, margins)
                if (check_lp or len(found) < claimed) and not pooled:  # LP-tightened, as the study's were
                    bounds, margins = bounds_and_margins(layers, x, label, norm, eps, True, backward)
                    found = ruled_out_by_bounds(bounds, wrong, label, delta, margins)
                if len(found) < claimed:
                    problems.append(f"{where}: robust with {claimed} classes ruled out by bounds, but bounds derived "
                                    f"afresh rule out {len(found)}")
                if check_lp:
                    lp_checked += 1
                    rest = [c for c in wrong if c not in found]
                    got = len(found) + (len(_Model(layers, x, norm, eps, bounds, integer=False,
                                                   time_limit=LP_AUDIT_TIME_LIMIT).lp_ruled_out(rest, label, delta))
                                        if rest else 0)
                    if got < claimed + claimed_lp:
                        problems.append(f"{where}: robust with {claimed + claimed_lp} classes ruled out by bounds and "
                                        f"LP duals, but derived afresh they rule out {got}")
        elif r["status"] == "unknown":
            if r["by"] not in ("time limit", "margin"):
                problems.append(f"{where}: unknown for no stated reason ({r['by']!r})")
        else:
            problems.append(f"{where}: status {r['status']!r}; allowed: {', '.join(map(repr, STATUSES))}")
    return problems
