"""PGD under l_inf / l_2 / l_1 with any surrogate loss, FGSM, and adversarial-risk estimates.

The engine runs K losses together: the K attacks on the same N images are stacked into K x N rows;
every PGD step makes one forward/backward of the model over the rows still under attack (in
chunks), and each loss is applied to its own slice of the logits. Per-sample losses never mix
rows and the model is in eval mode, so each row's gradient is exactly that of a separate attack.

Conventions
-----------
* The feasible set is the ball ``||x' - x||_p <= eps`` intersected with the box ``[0, 1]``; every
  returned point lies in it (to float tolerance). Projections are exact Euclidean projections
  onto ball and box together.
* Random start: one draw per image from ``seed`` (uniform in the l_inf / l_2 / l_1 ball, then
  clipped to the box), shared by every loss -- common random numbers, so two losses differ only
  by the loss.
* Step sizes: the cosine schedule ``alpha_i = 0.5 * eps * (1 + cos(pi * i / steps))`` (default),
  or a constant ``step_size``. l_inf: sign step; l_2: normalised gradient; l_1: SLIDE-style
  steepest ascent on the top ``l1_top`` fraction of coordinates (by |gradient|, among those that
  can still move inside the box), with l_1 length alpha.
* "any" mode (default): a sample is broken if any visited point -- the clean point, the random
  start, each iterate -- is misclassified; broken rows leave the batch. "final" mode: only the
  last iterate counts.
* A row whose step leaves its point unchanged (zero gradient, a tree without ``p``, or a step
  into the normal cone of the feasible set) would stay there for every later step, since steps
  and projections are deterministic and scale-free in alpha: it leaves the batch too ("frozen").
* A loss whose value or gradient is NaN/Inf (or that raises) is *invalid*: its rows leave the
  batch, its risk is reported as 0 and ``invalid`` is set; other losses are unaffected.

Reproducibility: on CPU the results are deterministic for a given seed. Results of K losses run
together equal K separate runs; the floating-point sums of a convolution may differ in the last
bit between batch sizes, which could flip a sign step of an exactly-zero-ish gradient component,
so "equal" is tested on the outcomes (broken masks, risks) and x_adv to 1e-5.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from lossbook.config import NORMS, check_choice, check_eps
from lossbook.core import data
from lossbook.core.checks import Diagnostics, model_checks
from lossbook.core.losses import Loss, cross_entropy, per_sample
from lossbook.core.models import eval_mode, model_device, predict

MODES = ("any", "final")
SCHEDULES = ("cosine", "constant")


# ------------------------------------------------------------------------------------------------
# Projections onto {d : ||d||_p <= eps, lo <= d <= hi}, with lo <= 0 <= hi (lo = -x, hi = 1 - x).
# All work on flattened rows (B, D).
# ------------------------------------------------------------------------------------------------
def _bisect(norm_at: Callable[[torch.Tensor], torch.Tensor], lo: torch.Tensor, hi: torch.Tensor,
            eps: float, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bisection for a decreasing norm_at(lam): returns the bracket (lam_lo, lam_hi) per row."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        over = norm_at(mid) > eps
        lo = torch.where(over, mid, lo)
        hi = torch.where(over, hi, mid)
    return lo, hi


def project_linf(delta: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact projection onto the l_inf ball ∩ box (coordinate-wise clipping)."""
    return torch.minimum(torch.maximum(delta, lo.clamp(min=-eps)), hi.clamp(max=eps))


def project_l2(delta: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps: float, iters: int = 30) -> torch.Tensor:
    """Exact projection onto the l_2 ball ∩ box: d = clip(t * v, lo, hi) with the largest t in (0, 1]
    such that ||d||_2 <= eps (KKT of the joint problem; t found by bisection)."""
    clipped = torch.minimum(torch.maximum(delta, lo), hi)
    out_rows = clipped.norm(dim=1) > eps
    if not out_rows.any():
        return clipped
    v, l, h = delta[out_rows], lo[out_rows], hi[out_rows]
    # parametrise by s = 1/t - 1 >= 0 (decreasing norm); at s = ||v||/eps the norm is <= eps
    s_lo = torch.zeros(len(v), 1, dtype=v.dtype, device=v.device)
    s_hi = (v.norm(dim=1, keepdim=True) / eps).clamp(min=1.0)
    _, s_hi = _bisect(lambda s: torch.minimum(torch.maximum(v / (1 + s), l), h).norm(dim=1, keepdim=True),
                      s_lo, s_hi, eps, iters)
    res = clipped.clone()
    res[out_rows] = torch.minimum(torch.maximum(v / (1 + s_hi), l), h)
    return res


def project_l1(delta: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps: float, iters: int = 24) -> torch.Tensor:
    """Exact projection onto the l_1 ball ∩ box: d_i = clip(soft_threshold(v_i, lam), lo_i, hi_i)
    with the smallest lam >= 0 such that ||d||_1 <= eps.

    lam is bracketed by bisection and then solved exactly on the final bracket, where the norm is
    linear in lam unless a breakpoint falls inside it (then the feasible end of the bracket is kept).
    """
    clipped = torch.minimum(torch.maximum(delta, lo), hi)
    out_rows = clipped.abs().sum(dim=1) > eps
    if not out_rows.any():
        return clipped
    v, l, h = delta[out_rows], lo[out_rows], hi[out_rows]
    a = v.abs()
    cap = torch.where(v >= 0, h, -l)  # room in the direction of v

    def shrunk(lam):
        return torch.minimum((a - lam).clamp(min=0), cap)

    lam_lo = torch.zeros(len(v), 1, dtype=v.dtype, device=v.device)
    lam_hi = a.amax(dim=1, keepdim=True)
    lam_lo, lam_hi = _bisect(lambda lam: shrunk(lam).sum(dim=1, keepdim=True), lam_lo, lam_hi, eps, iters)
    # exact finish: on [lam_lo, lam_hi] the norm is sum over "linear" coordinates of (a - lam) plus
    # the saturated caps; solve norm(lam) = eps for that active set
    mid = 0.5 * (lam_lo + lam_hi)
    linear = (a > mid) & (a - mid < cap)
    n_lin = linear.sum(dim=1, keepdim=True)
    sat = ((a - mid) >= cap) & (cap > 0)
    total = (a * linear).sum(dim=1, keepdim=True) + (cap * sat).sum(dim=1, keepdim=True)
    lam = torch.where(n_lin > 0, (total - eps) / n_lin.clamp(min=1), lam_hi)
    lam = torch.minimum(torch.maximum(lam, lam_lo), lam_hi)
    d = shrunk(lam)
    d = torch.where((d.sum(dim=1, keepdim=True) > eps), shrunk(lam_hi), d)
    res = clipped.clone()
    res[out_rows] = torch.sign(v) * d
    return res


_PROJECT = {"linf": project_linf, "l2": project_l2, "l1": project_l1}


def project(delta: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project perturbations ``delta`` of images ``x`` (same shape) onto the ``norm`` ball ∩ [0, 1] box."""
    check_choice("norm", norm, NORMS)
    shape = delta.shape
    d, xx = delta.reshape(len(delta), -1), x.reshape(len(x), -1)
    return _PROJECT[norm](d, -xx, 1 - xx, eps).reshape(shape)


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row l_p norm of perturbations (any shape with a leading batch dimension)."""
    d = delta.reshape(len(delta), -1)
    return {"linf": lambda: d.abs().amax(1), "l2": lambda: d.norm(dim=1), "l1": lambda: d.abs().sum(1)}[norm]()


# ------------------------------------------------------------------------------------------------
# Random starts and steps
# ------------------------------------------------------------------------------------------------
def random_start(n: int, dim: int, norm: str, eps: float, generator: torch.Generator) -> torch.Tensor:
    """(n, dim) points drawn uniformly from the ``norm`` ball of radius eps (on the CPU, from ``generator``)."""
    if norm == "linf":
        return (torch.rand(n, dim, generator=generator) * 2 - 1) * eps
    if norm == "l2":
        g = torch.randn(n, dim, generator=generator)
        r = torch.rand(n, 1, generator=generator) ** (1.0 / dim)
        return g / g.norm(dim=1, keepdim=True).clamp(min=1e-12) * r * eps
    # l1: exponential spacings give a uniform point of the simplex; random signs fill the ball
    e = -torch.log(torch.rand(n, dim + 1, generator=generator).clamp(min=1e-12))
    signs = torch.randint(0, 2, (n, dim), generator=generator) * 2 - 1
    return (e[:, :dim] / e.sum(dim=1, keepdim=True)) * signs * eps


def step_sizes(eps: float, steps: int, schedule: str = "cosine", step_size: float | None = None) -> list[float]:
    """Step length of each iteration: cosine decay from eps (default) or a constant."""
    check_choice("schedule", schedule, SCHEDULES)
    if schedule == "constant":
        return [step_size if step_size is not None else 2.5 * eps / steps] * steps
    return [0.5 * eps * (1 + math.cos(math.pi * i / steps)) for i in range(steps)]


def _ascent_direction(g: torch.Tensor, delta: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, norm: str,
                      l1_top: float) -> torch.Tensor:
    """Steepest-ascent direction of unit length in ``norm`` (rows of zeros where the gradient is 0)."""
    if norm == "linf":
        return g.sign()
    if norm == "l2":
        return g / g.norm(dim=1, keepdim=True).clamp(min=1e-12)
    # l1: only coordinates that can still move in the gradient's direction
    movable = ((g > 0) & (delta < hi)) | ((g < 0) & (delta > lo))
    score = g.abs() * movable
    k = max(1, int(round(l1_top * g.shape[1])))
    top = score.topk(k, dim=1)
    e = torch.zeros_like(g).scatter_(1, top.indices, (top.values > 0).to(g.dtype))
    e = e * g.sign()
    return e / e.abs().sum(dim=1, keepdim=True).clamp(min=1.0)


# ------------------------------------------------------------------------------------------------
# Rows per forward/backward: measured once per (architecture, input shape, device, threads)
# ------------------------------------------------------------------------------------------------
CHUNK_CANDIDATES = {"cpu": (64, 128, 256, 512, 1024, 2048), "cuda": (1024, 2048, 4096, 8192, 16384, 32768, 65536)}
_CHUNK_CACHE: dict[tuple, int] = {}
SMALL_BATCH = 256  # attacks of at most this many rows run as one batch, without measuring


def _chunk_key(model: torch.nn.Module, img_shape: tuple, dev: torch.device) -> tuple:
    return (repr(model), tuple(img_shape), str(dev), torch.get_num_threads())


def measure_chunk(model: torch.nn.Module, img_shape: tuple, dev: torch.device, candidates=None,
                  min_images: int = 256, repeats: int = 2) -> dict[int, float]:
    """Images per second of forward + input gradient (the engine's inner work) at each batch size:
    one warm-up, then the best of ``repeats`` passes over at least ``min_images`` images."""
    candidates = candidates or CHUNK_CANDIDATES["cuda" if dev.type == "cuda" else "cpu"]
    gen = torch.Generator().manual_seed(0)
    speed = {}
    with eval_mode(model):
        for b in candidates:
            try:
                xb = torch.rand(b, *img_shape, generator=gen).to(dev)
                passes = max(1, -(-min_images // b))
                best = math.inf
                for rep in range(repeats + 1):
                    _sync(dev)
                    t0 = time.perf_counter()
                    for _ in range(passes):
                        xa = xb.clone().requires_grad_(True)
                        torch.autograd.grad(model(xa).sum(), xa)
                    _sync(dev)
                    if rep:  # the first pass warms up
                        best = min(best, time.perf_counter() - t0)
                speed[b] = passes * b / best
            except torch.cuda.OutOfMemoryError:
                break
    return speed


def default_chunk(model: torch.nn.Module, img_shape: tuple, dev: torch.device | None = None) -> int:
    """The fastest batch size of :func:`measure_chunk`, measured once per architecture, input shape,
    device and thread count in a process (``LOSSBOOK_CHUNK`` overrides it)."""
    if os.environ.get("LOSSBOOK_CHUNK"):
        return int(os.environ["LOSSBOOK_CHUNK"])
    dev = dev or model_device(model)
    key = _chunk_key(model, img_shape, dev)
    if key not in _CHUNK_CACHE:
        speed = measure_chunk(model, img_shape, dev)
        _CHUNK_CACHE[key] = max(speed, key=speed.get)
    return _CHUNK_CACHE[key]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------
# The engine: K losses x N images as K * N rows (row k * N + n is loss k on image n)
# ------------------------------------------------------------------------------------------------
@dataclass
class AttackResult:
    """Outcome of K attacks (one per loss) on the same N images."""

    broken: torch.Tensor  # (K, N) bool: sample counted as misclassified
    invalid: torch.Tensor  # (K,) bool: the loss produced NaN/Inf or raised
    x_adv: torch.Tensor | None  # (K, N, ...) adversarial points (first misclassified point in "any" mode)
    errors: list  # (K,) message of what made a loss invalid, or None
    trajectory: list | None = None  # with record=True: the perturbation after the random start and each step
    diagnostics: Diagnostics | None = None  # lossbook.core.checks: zero gradients, probabilities, randomness, norms

    @property
    def risk(self) -> torch.Tensor:
        """R'' per loss: fraction of broken samples, 0 for an invalid loss."""
        return self.broken.float().mean(dim=1).masked_fill(self.invalid, 0.0)


class LossBank:
    """The model and K losses over the rows: each loss sees only its own rows' logits.

    :meth:`gradients` is one forward/backward per chunk of rows; a loss that raises, or whose
    value is NaN/Inf, is marked invalid in ``invalid``/``errors`` and contributes no gradient.
    """

    def __init__(self, model, losses: list, x_flat: torch.Tensor, y: torch.Tensor, img_shape: tuple, chunk: int):
        self.model, self.losses, self.x, self.y = model, losses, x_flat, y
        self.img_shape, self.chunk, self.N = img_shape, chunk, len(x_flat)
        self.invalid = torch.zeros(len(losses), dtype=torch.bool)
        self.errors: list = [None] * len(losses)

    def mark_invalid(self, k: int, why: str) -> None:
        if not self.invalid[k]:
            self.invalid[k], self.errors[k] = True, why

    def _points(self, rows: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return (self.x[rows % self.N] + delta[rows]).view(-1, *self.img_shape)

    @torch.no_grad()
    def logits(self, rows: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Logits at the rows' current points (no gradient)."""
        return torch.cat([self.model(self._points(rows[i:i + self.chunk], delta))
                          for i in range(0, len(rows), self.chunk)])

    def _summed_loss(self, rows: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Sum over rows of each row's own loss (rows are sorted, so each loss is one slice)."""
        q = F.one_hot(self.y[rows % self.N], logits.shape[1]).to(logits.dtype)
        ks, counts = torch.unique_consecutive(rows // self.N, return_counts=True)
        total, start = logits.new_zeros(()), 0
        for k, cnt in zip(ks.tolist(), counts.tolist()):
            sl, start = slice(start, start + cnt), start + cnt
            try:
                v = per_sample(self.losses[k](logits[sl], q[sl]), cnt)
            except Exception as exc:  # a malformed loss: invalid, the others go on
                self.mark_invalid(k, f"{type(exc).__name__}: {exc}")
                continue
            if not torch.isfinite(v).all():
                self.mark_invalid(k, "loss value is NaN or Inf")
            elif v.requires_grad:
                total = total + v.sum()
        return total

    def gradients(self, rows: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (detached) and input gradients (len(rows), D) at the rows' current points."""
        all_logits, all_grads = [], []
        for i in range(0, len(rows), self.chunk):
            r = rows[i:i + self.chunk]
            xa = self._points(r, delta).requires_grad_(True)
            logits = self.model(xa)
            total = self._summed_loss(r, logits)
            if total.requires_grad:
                g = torch.autograd.grad(total, xa)[0].reshape(len(r), -1)
            else:  # no loss of the chunk depends on the input
                g = torch.zeros(len(r), delta.shape[1], device=delta.device)
            all_logits.append(logits.detach())
            all_grads.append(g)
        return torch.cat(all_logits), torch.cat(all_grads)


def ascent_step(delta: torch.Tensor, g: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, norm: str, alpha: float,
                eps: float, l1_top: float = 0.05) -> torch.Tensor:
    """One PGD step: ``alpha`` along the steepest-ascent direction of ``norm``, then the exact projection."""
    return _PROJECT[norm](delta + alpha * _ascent_direction(g, delta, lo, hi, norm, l1_top), lo, hi, eps)


class RowBook:
    """Which rows are broken (misclassified at a visited point), frozen (a step left them in place,
    so every later step would too) or belong to an invalid loss; and the first adversarial points."""

    def __init__(self, bank: LossBank, mode: str, return_x: bool, device):
        K, N = len(bank.losses), bank.N
        self.bank, self.mode, self.N = bank, mode, N
        self.broken = torch.zeros(K * N, dtype=torch.bool, device=device)
        self.frozen = torch.zeros(K * N, dtype=torch.bool, device=device)
        self.zero_gradient = torch.zeros(K, dtype=torch.long)  # rows frozen by an exactly zero gradient, per loss
        self.x_best = torch.zeros(K * N, bank.x.shape[1], device=device) if return_x and mode == "any" else None

    def active(self) -> torch.Tensor:
        """Rows still under attack (sorted)."""
        alive = ~self.bank.invalid.to(self.broken.device).repeat_interleave(self.N) & ~self.frozen
        if self.mode == "any":
            alive &= ~self.broken
        return alive.nonzero().squeeze(1)

    def drop_invalid(self, rows, logits, g):
        """Mark losses with a NaN/Inf gradient invalid; keep the rows of valid losses."""
        bad = ~torch.isfinite(g).all(dim=1)
        for k in torch.unique(rows[bad] // self.N).tolist():
            self.bank.mark_invalid(k, "gradient is NaN or Inf")
        keep = ~self.bank.invalid.to(rows.device)[rows // self.N]
        return rows[keep], logits[keep], g[keep]

    def record_breaks(self, rows, wrong, delta):
        """In "any" mode, misclassified rows are broken at their current point and leave the attack."""
        if self.mode != "any" or not wrong.any():
            return torch.ones_like(wrong)
        hit = rows[wrong]
        self.broken[hit] = True
        if self.x_best is not None:
            self.x_best[hit] = self.bank.x[hit % self.N] + delta[hit]
        return ~wrong

    def freeze(self, rows, wrong, old, new, g) -> None:
        """Rows whose step changed nothing are decided where they stand."""
        stuck = (new == old).all(dim=1)
        self.frozen[rows[stuck]] = True
        flat = rows[stuck & (g == 0).all(dim=1)] // self.N
        self.zero_gradient += torch.bincount(flat.cpu(), minlength=len(self.zero_gradient))
        if self.mode == "final":
            self.broken[rows[stuck]] = wrong[stuck]

    def decide_last(self, rows, wrong, delta) -> None:
        """The outcome at the last iterate of the rows still active after the last step."""
        if self.mode == "final":
            self.broken[rows] = wrong
        else:
            self.record_breaks(rows, wrong, delta)


def _nudge_inside(x_flat: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Returned points whose perturbation exceeds eps after float32 rounding of x + delta are moved
    towards x until it does not: l_inf coordinate by coordinate (one float at a time), l_1/l_2 by
    shrinking the whole perturbation a little more at each try."""
    for i in range(16):
        d = x_adv - x_flat
        n = lp_norm(d, norm)
        over = n > eps
        if not over.any():
            return x_adv
        if norm == "linf":
            bad = over[:, None] & (d.abs() > eps)
            x_adv = torch.where(bad, torch.nextafter(x_adv, x_flat), x_adv)
        else:
            shrink = max(0.5, 1 - 1e-6 * 4 ** i)
            x_adv[over] = (x_flat[over] + d[over] * (eps / n[over] * shrink).unsqueeze(1)).clamp(0, 1)
    return torch.where((lp_norm(x_adv - x_flat, norm) > eps)[:, None], x_flat, x_adv)  # never reached in practice


def _check_pgd_args(loss_list, x, y, norm, eps, steps, mode) -> None:
    check_choice("norm", norm, NORMS)
    check_choice("mode", mode, MODES)
    if not loss_list:
        raise ValueError("pgd needs at least one loss")
    check_eps(norm, eps, x[0].numel() if len(x) else 1)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} images but y has {len(y)} labels")


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, losses: Loss | Sequence[Loss] = cross_entropy,
        norm: str = "linf", eps: float = 0.1, steps: int = 10, schedule: str = "cosine",
        step_size: float | None = None, mode: str = "any", random_init: bool = True, seed: int = 0,
        generator: torch.Generator | None = None, l1_top: float = 0.05, chunk: int | None = None,
        return_x: bool = True, record: bool = False) -> AttackResult:
    """Run PGD with each of ``losses`` (one loss or a list of K) on images ``x`` with labels ``y``.

    One forward/backward per step over all rows still under attack; see the module docstring for
    the conventions. ``generator`` (a CPU ``torch.Generator``) overrides ``seed`` for the random start;
    ``chunk`` (rows per forward) defaults to the measured fastest size (:func:`default_chunk`).
    """
    loss_list = [losses] if callable(losses) else list(losses)
    _check_pgd_args(loss_list, x, y, norm, eps, steps, mode)
    dev, (K, N), img_shape = model_device(model), (len(loss_list), len(x)), tuple(x.shape[1:])
    x_flat, y = x.reshape(N, -1).to(dev), y.to(dev)
    lo, hi = -x_flat, 1 - x_flat
    with eval_mode(model):
        chunk = chunk or (K * N if K * N <= SMALL_BATCH else default_chunk(model, img_shape, dev))
        bank = LossBank(model, loss_list, x_flat, y, img_shape, chunk)
        book = RowBook(bank, mode, return_x, dev)
        looks_like_probabilities, random_outputs = model_checks(model, x_flat[:32].view(-1, *img_shape))
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        delta0 = project(random_start(N, x_flat.shape[1], norm, eps, gen).to(dev), x_flat, norm, eps) \
            if random_init else torch.zeros_like(x_flat)
        delta = delta0.repeat(K, 1)
        trajectory = [delta.clone().cpu()] if record else None
        if mode == "any":  # the clean point is part of the ball: a misclassified clean image is broken
            clean_wrong = bank.logits(torch.arange(N, device=dev), torch.zeros_like(x_flat)).argmax(1).ne(y)
            book.record_breaks(torch.arange(K * N, device=dev), clean_wrong.repeat(K), torch.zeros_like(delta))
        for alpha in step_sizes(eps, steps, schedule, step_size):
            rows = book.active()
            if len(rows) == 0:
                break
            rows, logits, g = book.drop_invalid(rows, *bank.gradients(rows, delta))
            wrong = logits.argmax(1).ne(y[rows % N])
            go_on = book.record_breaks(rows, wrong, delta)
            rows, g, wrong = rows[go_on], g[go_on], wrong[go_on]
            old, n_idx = delta[rows], rows % N
            delta[rows] = new = ascent_step(old, g, lo[n_idx], hi[n_idx], norm, alpha, eps, l1_top)
            book.freeze(rows, wrong, old, new, g)
            if record:
                trajectory.append(delta.clone().cpu())
        rows = book.active()  # the last iterate (frozen rows were decided when they froze)
        if len(rows):
            book.decide_last(rows, bank.logits(rows, delta).argmax(1).ne(y[rows % N]), delta)
    diagnostics = Diagnostics(norm, eps, rows=N, outputs_probabilities=looks_like_probabilities,
                              random_outputs=random_outputs)
    return _result(book, bank, x_flat, delta, return_x, img_shape, trajectory, diagnostics)


def _result(book: RowBook, bank: LossBank, x_flat, delta, return_x, img_shape, trajectory,
            diagnostics: Diagnostics) -> AttackResult:
    """The (K, N) outcome; the returned points inside the ball after rounding; the diagnostics."""
    K, N = len(bank.losses), bank.N
    x_adv = None
    diagnostics.zero_gradient_rows = book.zero_gradient.tolist()
    if return_x:
        x_rep = x_flat.repeat(K, 1)
        x_adv = x_rep + delta
        if book.x_best is not None:
            x_adv = torch.where(book.broken[:, None], book.x_best, x_adv)
        x_adv = _nudge_inside(x_rep, x_adv, diagnostics.norm, diagnostics.eps)
        diagnostics.max_perturbation = lp_norm(x_adv - x_rep, diagnostics.norm).view(K, N).amax(1).tolist()
        x_adv = x_adv.view(K, N, *img_shape)
    broken = book.broken.view(K, N).cpu()
    broken[bank.invalid] = False
    return AttackResult(broken=broken, invalid=bank.invalid, x_adv=x_adv, errors=bank.errors, trajectory=trajectory,
                        diagnostics=diagnostics)


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: Loss = cross_entropy,
         batch_size: int = 4096) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al.): one l_inf step of size eps, clipped to [0, 1]."""
    if eps != 0:  # eps 0 is the clean accuracy (ATRAS's sweeps start there)
        check_eps("linf", eps, x[0].numel() if len(x) else 1)
    dev = model_device(model)
    out = []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev).clone().requires_grad_(True)
            logits = model(xb)
            q = F.one_hot(y[i:i + batch_size].to(dev), logits.shape[1]).to(logits.dtype)
            (g,) = torch.autograd.grad(per_sample(loss(logits, q), len(xb)).sum(), xb)
            out.append((xb.detach() + eps * g.sign()).clamp(0, 1))
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------
# Adversarial risk
# ------------------------------------------------------------------------------------------------
@dataclass
class RiskResult:
    """R'' of one loss: the fraction of broken samples and which ones."""

    risk: float
    broken: torch.Tensor  # (N,) bool
    invalid: bool


def adversarial_risk(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss = cross_entropy,
                     norm: str = "linf", eps: float = 0.1, steps: int = 10, **kwargs) -> RiskResult:
    """The estimate R'' (AutoLoss-AR Eq. 4) of the adversarial risk by PGD-``steps`` with ``loss``.

    ``x``, ``y`` are the evaluation set; the book's searches use :func:`evaluation_set` -- the first
    n (default 1,000) test images that the model classifies correctly, so R'' starts from 0.
    """
    res = pgd(model, x, y, loss, norm=norm, eps=eps, steps=steps, return_x=False, **kwargs)
    return RiskResult(risk=float(res.risk[0]), broken=res.broken[0], invalid=bool(res.invalid[0]))


def evaluate_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, losses: Sequence[Loss],
                    norm: str = "linf", eps: float = 0.1, steps: int = 10, **kwargs) -> AttackResult:
    """R'' of K losses at once (same images, same random starts): ``.risk`` (K,), ``.invalid`` (K,)."""
    return pgd(model, x, y, list(losses), norm=norm, eps=eps, steps=steps, return_x=False, **kwargs)


@torch.no_grad()
def evaluation_set(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int | None = 1000,
                   batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` images of (x, y) that ``model`` classifies correctly (all of them when ``n`` is
    None), and their indices."""
    ok = predict(model, x, batch_size).eq(y).nonzero().squeeze(1)[:n]
    if n is not None and len(ok) < n:
        raise ValueError(f"only {len(ok)} of {len(x)} images are classified correctly; asked for n={n}")
    return x[ok], y[ok], ok


def evaluation_images(model: torch.nn.Module, dataset: str, n: int | None = None, skip: int = 0):
    """The ``n`` test images of ``dataset`` that ``model`` classifies correctly after the first ``skip``
    such images (all of them when ``n`` is None), and their test indices."""
    xt, yt = data.load(dataset, "test")
    x, y, idx = evaluation_set(model, xt, yt, n=skip + n if n is not None else None)
    return x[skip:], y[skip:], idx[skip:]
