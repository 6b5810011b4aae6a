"""Sound arithmetic for the exact verifier: what a skeptic can check without trusting a solver.

Three things make a verdict of :mod:`lossbook.core.exact` auditable:

* **Enclosures in float64.** :func:`affine_bounds` bounds ``W a + b`` over a box of activations and widens
  the result by a bound on every rounding error made computing it (Higham's ``gamma_n``), then one ulp
  outward. :func:`logits_enclosure` is a float64 forward pass with the same error bound carried
  through the layers, so the *exact* logits of the network (its float32 weights read as real numbers) at a
  given point lie within ``logits +- err``.
* **LP bounds from the dual.** :func:`safe_lp_bound` re-derives an upper bound on an LP's maximum from
  any dual vector (weak duality, Neumaier and Shcherbina 2004): for ``max c'v`` over
  ``rl <= A v <= ru``, ``cl <= v <= cu`` and any ``y``, ``c'v <= sum_i sup y_i (A v)_i + sum_j sup r_j v_j``
  with ``r = c - A'y``. The bound holds whatever the solver's tolerances were; only its tightness
  depends on them.
* **Witnesses checked exactly.** :func:`in_feasible_set` decides ``||p - x||_p <= eps`` and ``0 <= p <= 1``
  in rational arithmetic (``fractions.Fraction``, where a float test could be wrong);
  :func:`make_witness` moves a candidate point into the set in float32 steps that keep it there and
  :func:`witness_margin` is the certified lower bound of its best wrong class's margin
  ``f_c - f_y``. A witness counts as adversarial when that bound is ``>= 0`` (ties are adversarial).

Nothing here calls a solver: ``python -m lossbook audit`` re-checks the committed studies with it alone.
"""
from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

#: unit roundoff of float64
UNIT = 2.0 ** -53
#: room added to every computed error bound (the bound itself is computed in float64)
SAFETY = 1.01
TINY = 1e-300


def gamma(n: int) -> float:
    """Higham's bound on the relative error of an n-term float64 sum of products: n u / (1 - n u)."""
    return n * UNIT / (1 - n * UNIT)


def outward(lo: np.ndarray, hi: np.ndarray, err) -> tuple[np.ndarray, np.ndarray]:
    """[lo - err, hi + err], then one ulp further out."""
    err = SAFETY * np.asarray(err, float) + TINY
    return np.nextafter(lo - err, -np.inf), np.nextafter(hi + err, np.inf)


def affine_bounds(W: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds of ``W a + b`` over ``lo <= a <= hi`` (interval arithmetic, rounding errors included)."""
    Wp, Wn = np.clip(W, 0, None), np.clip(W, None, 0)
    out_lo, out_hi = Wp @ lo + Wn @ hi + b, Wp @ hi + Wn @ lo + b
    return outward(out_lo, out_hi, rounding_error(W, b, np.maximum(np.abs(lo), np.abs(hi))))


def rounding_error(W: np.ndarray, b: np.ndarray, magnitude: np.ndarray, extra=0.0) -> np.ndarray:
    """A bound on the rounding error of any float64 evaluation of ``W a + b`` (or of its interval ends)
    with ``|a| <= magnitude``; ``extra`` adds the magnitude of further terms computed alongside."""
    return gamma(W.shape[1] + 2) * (np.abs(W) @ magnitude + np.abs(b) + extra)


@dataclass(frozen=True, eq=False)
class Affine:
    """``z = W a + b`` (dense float64: a Linear layer, or a convolution with its BatchNorm folded in)."""

    W: np.ndarray
    b: np.ndarray


@dataclass(frozen=True, eq=False)
class Relu:
    """``a = max(z, 0)`` elementwise."""


@dataclass(frozen=True, eq=False)
class MaxPool:
    """``m_g = max_{i in groups[g]} a_i`` (``groups``: one row of input indices per output)."""

    groups: np.ndarray


def as_ops(net) -> list:
    """A network as a list of :class:`Affine` / :class:`Relu` / :class:`MaxPool`; an MLP's ``[(W, b), ...]``
    (ReLU between the layers) is converted."""
    if net and isinstance(net[0], tuple):
        ops = []
        for k, (W, b) in enumerate(net):
            ops.append(Affine(np.asarray(W, float), np.asarray(b, float)))
            if k < len(net) - 1:
                ops.append(Relu())
        return ops
    return list(net)


def enclosures(net, point: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """A float64 forward pass at ``point``: per op, its output and a bound on the accumulated rounding
    error (ReLU and max are 1-Lipschitz in the max norm, so they pass the error on unchanged)."""
    a, err, out = np.asarray(point, float), np.zeros(len(point)), []
    for op in as_ops(net):
        if isinstance(op, Affine):
            z = op.W @ a + op.b
            err = SAFETY * (rounding_error(op.W, op.b, np.abs(a)) + np.abs(op.W) @ err) + TINY
            a = z
        elif isinstance(op, Relu):
            a = np.maximum(a, 0.0)
        else:
            a, err = a[op.groups].max(1), err[op.groups].max(1)
        out.append((a, err))
    return out


def logits_enclosure(net, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A float64 forward pass at ``point`` and a bound on its total rounding error: the exact logits lie
    within ``logits +- err``."""
    return enclosures(net, point)[-1]


def margin_lower_bounds(net, point: np.ndarray, y: int) -> np.ndarray:
    """Per class c, a certified lower bound of ``f_c(point) - f_y(point)`` (``-inf`` at c = y)."""
    z, err = logits_enclosure(net, point)
    diff = z - z[y]
    low = diff - SAFETY * (err + err[y] + 2 * UNIT * np.abs(diff)) - TINY
    low[y] = -np.inf
    return low


def preactivations_enclosure(net, point: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per op, an enclosure ``(v - err, v + err)`` of the exact values of its output at ``point``."""
    return [(v - e, v + e) for v, e in enclosures(net, point)]


# ------------------------------------------------------------------------------------------------
# The feasible set, exactly
# ------------------------------------------------------------------------------------------------
def in_feasible_set(p: np.ndarray, x: np.ndarray, norm: str, eps: float) -> bool:
    """Whether ``0 <= p <= 1`` and ``||p - x||_norm <= eps`` hold exactly for the float values given
    (rational arithmetic wherever float64 rounding could decide the answer)."""
    p, x = np.asarray(p, float), np.asarray(x, float)
    if p.shape != x.shape or not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        return False
    d = np.abs(p - x)  # each within a relative u of the exact |p_i - x_i|
    E = Fraction(eps)
    if norm == "linf":
        if np.all(d <= eps * (1 - 4 * UNIT)):
            return True
        if np.any(d > eps * (1 + 4 * UNIT)):
            return False
        close = np.nonzero(d > eps * (1 - 4 * UNIT))[0]
        return all(abs(Fraction(float(p[i])) - Fraction(float(x[i]))) <= E for i in close)
    moved = np.nonzero(p != x)[0]
    diffs = [abs(Fraction(float(p[i])) - Fraction(float(x[i]))) for i in moved]
    if norm == "l1":
        return sum(diffs, Fraction(0)) <= E
    if norm == "l2":
        return sum((t * t for t in diffs), Fraction(0)) <= E * E
    raise ValueError(f"norm {norm!r}; allowed: 'linf', 'l1', 'l2'")


def _box32(x: np.ndarray, norm: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """float32 coordinate bounds inside ``[max(x - eps, 0), min(x + eps, 1)]`` for l_inf (inside [0, 1] else)."""
    x32 = x.astype(np.float32)
    if norm != "linf":
        return np.zeros_like(x32), np.ones_like(x32)
    lo, hi = np.maximum(np.nextafter(x - eps, np.inf), 0.0), np.minimum(np.nextafter(x + eps, -np.inf), 1.0)
    lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    lo32 = np.where(lo32.astype(float) < lo, np.nextafter(lo32, np.float32(np.inf)), lo32)  # rounded outward: step in
    hi32 = np.where(hi32.astype(float) > hi, np.nextafter(hi32, np.float32(-np.inf)), hi32)
    return np.minimum(np.maximum(lo32, np.float32(0)), x32), np.maximum(np.minimum(hi32, np.float32(1)), x32)


def make_witness(candidate: np.ndarray, x: np.ndarray, norm: str, eps: float) -> np.ndarray | None:
    """A float32 point in the feasible set close to ``candidate`` (clipped to the box, then, for l_1 and
    l_2, pulled towards ``x`` until the exact check passes), or None if none was found. ``x`` must be
    float32-representable (the images are)."""
    x = np.asarray(x, float)
    lo, hi = _box32(x, norm, eps)
    p = np.clip(np.asarray(candidate, float).astype(np.float32), lo, hi)
    if norm == "linf":
        return p if in_feasible_set(p, x, norm, eps) else None
    x32 = x.astype(np.float32)
    size = {"l1": lambda d: np.abs(d).sum(), "l2": lambda d: np.sqrt((d * d).sum())}[norm](p.astype(float) - x)
    scale = min(1.0, eps / size) if size > 0 else 1.0
    for _ in range(40):
        q = np.clip((x + scale * (p.astype(float) - x)).astype(np.float32), np.minimum(x32, p), np.maximum(x32, p))
        if in_feasible_set(q, x, norm, eps):
            return q
        scale *= 1 - 1e-6
    return None


def exact_logits(net, point: np.ndarray) -> list[Fraction]:
    """The network's logits at ``point`` in rational arithmetic (slow: used only where float64 cannot
    decide a sign, e.g. at a tie)."""
    a = [Fraction(float(v)) for v in point]
    for op in as_ops(net):
        if isinstance(op, Affine):
            a = [sum((Fraction(float(row[i])) * a[i] for i in np.nonzero(row)[0] if a[i] != 0), Fraction(float(bj)))
                 for row, bj in zip(op.W, op.b)]
        elif isinstance(op, Relu):
            a = [max(v, Fraction(0)) for v in a]
        else:
            a = [max(a[i] for i in g) for g in op.groups]
    return a


def witness_margin(net, point: np.ndarray, y: int) -> tuple[int, float]:
    """The wrong class with the largest certified margin lower bound at ``point``, and that bound. Where the
    float64 enclosure straddles 0 for some class, the margins are computed exactly instead (so that a tie,
    margin 0, counts as adversarial)."""
    low = margin_lower_bounds(net, point, y)
    c = int(np.argmax(low))
    if low[c] >= 0:
        return c, float(low[c])
    z, err = logits_enclosure(net, point)
    high = z - z[y] + SAFETY * (err + err[y] + 2 * UNIT * np.abs(z - z[y])) + TINY
    high[y] = -np.inf
    if high.max() < 0:
        return c, float(low[c])
    exact = exact_logits(net, point)
    margins = [exact[k] - exact[y] if k != y else None for k in range(len(exact))]
    best = max((k for k in range(len(exact)) if k != y), key=lambda k: margins[k])
    return best, float(margins[best]) if margins[best] >= 0 else float(low[c])


def encode_point(p: np.ndarray) -> str:
    """A float32 point as text for a JSON row (zlib, then base64): exact, and small."""
    return base64.b64encode(zlib.compress(np.asarray(p, np.float32).tobytes(), 9)).decode("ascii")


def decode_point(text: str) -> np.ndarray:
    """The point of :func:`encode_point`, as float64 (every float32 is a float64)."""
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), np.float32).astype(float)


# ------------------------------------------------------------------------------------------------
# LP bounds from the dual
# ------------------------------------------------------------------------------------------------
def ball_box_max(W: np.ndarray, x: np.ndarray, eps: float, iterations: int = 60):
    """Upper bounds of ``W_j d`` over ``||d||_2 <= eps`` and the box ``-x <= d <= 1 - x``, per row, from the
    Lagrangian dual: for any ``t > 0``, ``max_box W_j d - (||d||^2 - eps^2) / (2 t)`` bounds the maximum, and the
    box maximiser is ``d = clip(t W_j, -x, 1 - x)``. ``t`` is found by bisection on ``||d(t)|| = eps`` (any
    ``t`` gives a valid bound: the bisection only makes it tight). Returns (bound, magnitude of its terms)."""
    lo, hi = -x, 1.0 - x
    t_lo, t_hi = np.zeros(len(W)), np.ones(len(W))

    def norm_at(t):
        return np.linalg.norm(np.clip(t[:, None] * W, lo, hi), axis=1)

    for _ in range(60):  # grow until the box point leaves the ball (or the box is inside it)
        grow = norm_at(t_hi) < eps
        if not grow.any():
            break
        t_hi = np.where(grow, t_hi * 4, t_hi)
    for _ in range(iterations):
        mid = (t_lo + t_hi) / 2
        inside = norm_at(mid) < eps
        t_lo, t_hi = np.where(inside, mid, t_lo), np.where(inside, t_hi, mid)
    d = np.clip(t_hi[:, None] * W, lo, hi)
    sq = (d * d).sum(1)
    penalty = np.maximum(sq - eps * eps, 0.0) / (2 * t_hi)  # 0 where the box lies inside the ball
    return (W * d).sum(1) - penalty + 0.0, np.abs(W * d).sum(1) + (sq + eps * eps) / (2 * t_hi)


def safe_lp_bound(A, row_lo, row_hi, col_lo, col_hi, cost, y, ball=None) -> float:
    """An upper bound on ``max cost'v`` over ``row_lo <= A v <= row_hi``, ``col_lo <= v <= col_hi`` from the
    dual vector ``y`` (any ``y`` gives one; a good one gives a tight one). ``A`` is a scipy sparse matrix;
    columns must be bounded. With ``ball = (cols, x0, eps)`` those columns also lie in the l_2 ball of radius
    eps around x0 and in [0, 1] (:func:`ball_box_max` bounds their term). Rounding errors of the computation
    are bounded and added."""
    y = np.asarray(y, float).copy()
    y[(y > 0) & ~np.isfinite(row_hi)] = 0.0  # a term that would be +inf: that row's multiplier may be dropped
    y[(y < 0) & ~np.isfinite(row_lo)] = 0.0
    At = A.T.tocsr()
    r = cost - At @ y
    r_err = SAFETY * gamma(int(np.diff(At.indptr).max(initial=0)) + 1) * (abs(At) @ np.abs(y) + np.abs(cost)) + TINY
    r_lo, r_hi = r - r_err, r + r_err
    col_terms = np.maximum.reduce([r_lo * col_lo, r_lo * col_hi, r_hi * col_lo, r_hi * col_hi])
    if ball is not None:  # sup of r_x . x over the ball and [0, 1]: r_x . x0 + sup_d r_x . d, plus r's error (|x| <= 1)
        cols, x0, eps = ball
        rx = r[cols]
        up, mag = ball_box_max(rx[None, :], np.asarray(x0, float), eps)
        dot = float(rx @ x0)
        ball_term = dot + float(up[0]) + float(r_err[cols].sum()) + 2 * gamma(len(cols) + 4) * (
            float(np.abs(rx) @ np.abs(x0)) + float(mag[0]) * (len(cols) + 4))
        keep = np.ones(len(col_terms), bool)
        keep[cols] = False
        col_terms = np.concatenate([col_terms[keep], [ball_term]])
    row_terms = np.where(y > 0, y * np.where(np.isfinite(row_hi), row_hi, 0.0),
                         np.where(y < 0, y * np.where(np.isfinite(row_lo), row_lo, 0.0), 0.0))
    terms = np.concatenate([col_terms, row_terms])
    if not np.all(np.isfinite(terms)):
        return float("inf")
    total = float(terms.sum())
    return total + SAFETY * gamma(len(terms) + 2) * float(np.abs(terms).sum()) * 2 + TINY


# ------------------------------------------------------------------------------------------------
# Back-substituted linear bounds (CROWN / DeepPoly style), with every rounding error bounded
# ------------------------------------------------------------------------------------------------
def _magnitude(bounds_k) -> np.ndarray:
    lo, hi = bounds_k
    return np.maximum(np.abs(lo), np.abs(hi))


def backward_upper(ops, bounds, k: int, rows: np.ndarray, box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A sound upper bound of ``rows @ v_k`` over the feasible points, where ``v_k`` is the output of op ``k``
    (an :class:`Affine`) and ``bounds[i]`` encloses every op i's output for i < k. The rows are carried back
    through the ops to the input (Affine exactly; a ReLU by CROWN's relaxations: the chord above an unstable
    one, the lower line 0 or identity below it; a max-pool by its lead input below and its largest upper bound
    above), then maximised over ``box``, which contains the inputs. Every float64 rounding is bounded
    (Higham's gamma, as in :func:`affine_bounds`) and added, so the result holds for the exact network."""
    lam = np.asarray(rows, float)
    const = np.zeros(lam.shape[0])
    err = np.zeros(lam.shape[0])  # the exact rows@v_k is at most lam @ v + const + err (v: current op's input)
    for i in range(k, -1, -1):
        op = ops[i]
        prev = bounds[i - 1] if i > 0 else box
        mag = _magnitude(prev)
        if isinstance(op, Affine):
            n = op.W.shape[1]
            new = lam @ op.W
            err += SAFETY * gamma(n + 2) * (np.abs(lam) @ (np.abs(op.W) @ mag + np.abs(op.b)) + np.abs(const)) + TINY
            const = const + lam @ op.b
            lam = new
        elif isinstance(op, Relu):
            lo, hi = prev
            active, unstable = lo >= 0, (lo < 0) & (hi > 0)
            slope = np.where(unstable, hi / np.where(unstable, hi - lo, 1.0), 0.0)
            # |slope - hi / (hi - lo)| <= 3 UNIT slope, so the chord through (lo, 0) is off by at most that
            # times (hi - lo) <= 3 UNIT hi at hi: widen it by 4 UNIT hi
            chord_gap = np.where(unstable, 4 * UNIT * hi, 0.0)
            below = np.where(unstable & (hi > -lo), 1.0, 0.0)  # CROWN's lower line: identity or 0
            pos = lam > 0
            up_coef = np.where(active, 1.0, slope)
            coef = np.where(pos, up_coef[None, :], np.where(active, 1.0, below)[None, :])
            shift = np.where(pos & unstable[None, :], -slope * lo + chord_gap, 0.0)  # the chord's offset
            new = lam * coef
            add = (lam * shift).sum(1)
            err += SAFETY * (2 * UNIT * (np.abs(new) @ mag) + gamma(lam.shape[1] + 2) * (np.abs(lam) @ np.abs(
                np.where(unstable, slope * np.abs(lo) + chord_gap, 0.0)))) + TINY
            const = const + add
            lam = new
        else:  # MaxPool: m_g = max over groups[g] of v
            lo, hi = prev
            g = op.groups
            lead = g[np.arange(len(g)), lo[g].argmax(1)]  # the input with the largest lower bound
            decided = lo[lead] >= np.where(g == lead[:, None], -np.inf, hi[g]).max(1)
            top = hi[g].max(1)
            new = np.zeros((lam.shape[0], len(lo)))
            pos = lam > 0
            take = np.where(pos, decided[None, :], True)  # below: m >= v_lead always; above: only if decided
            np.add.at(new.T, lead, (lam * take).T)
            add = (lam * np.where(pos & ~decided[None, :], top[None, :], 0.0)).sum(1)
            err += SAFETY * gamma(lam.shape[1] + 2) * (np.abs(lam) @ np.abs(top)) + TINY
            const = const + add
            lam = new
    lo_in, hi_in = box
    value = np.clip(lam, 0, None) @ hi_in + np.clip(lam, None, 0) @ lo_in + const
    err += SAFETY * gamma(lam.shape[1] + 2) * (np.abs(lam) @ _magnitude(box) + np.abs(const)) + TINY
    return np.nextafter(value + SAFETY * err + TINY, np.inf)


def backward_bounds(ops, bounds, k: int, box, neurons=None) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds of op ``k``'s output (an :class:`Affine`) by :func:`backward_upper`, for ``neurons`` (default:
    all), intersected with ``bounds[k]`` where that is given; the others keep ``bounds[k]``."""
    lo, hi = (np.array(b, float) for b in bounds[k])
    idx = np.arange(len(lo)) if neurons is None else np.asarray(neurons, int)
    if len(idx):
        eye = np.zeros((len(idx), len(lo)))
        eye[np.arange(len(idx)), idx] = 1.0
        hi[idx] = np.minimum(hi[idx], backward_upper(ops, bounds, k, eye, box))
        lo[idx] = np.maximum(lo[idx], -backward_upper(ops, bounds, k, -eye, box))
    return lo, hi


def margin_upper_bounds(ops, bounds, y: int, box) -> np.ndarray:
    """Per class c, a sound upper bound of ``f_c - f_y`` over the feasible points, by back-substituting the
    rows ``e_c - e_y`` from the logits (op ``len(ops) - 1``) to the input (:func:`backward_upper`); ``-inf`` at
    c = y. Tighter than ``u_c - l_y`` from the logits' own bounds, which ignores that both move together."""
    k = len(ops) - 1
    n = len(bounds[k][0])
    rows = np.eye(n)
    rows[:, y] -= 1.0
    out = backward_upper(ops, bounds, k, rows, box)
    out[y] = -np.inf
    return out
