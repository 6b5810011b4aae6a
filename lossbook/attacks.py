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
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .config import NORMS, check_choice
from .losses import Loss, cross_entropy, per_sample

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
# The engine
# ------------------------------------------------------------------------------------------------
@dataclass
class AttackResult:
    """Outcome of K attacks (one per loss) on the same N images."""

    broken: torch.Tensor  # (K, N) bool: sample counted as misclassified
    invalid: torch.Tensor  # (K,) bool: the loss produced NaN/Inf or raised
    x_adv: torch.Tensor | None  # (K, N, ...) adversarial points (first misclassified point in "any" mode)
    errors: list  # (K,) message of what made a loss invalid, or None
    trajectory: list | None = None  # with record=True: the perturbation after the random start and each step

    @property
    def risk(self) -> torch.Tensor:
        """R'' per loss: fraction of broken samples, 0 for an invalid loss."""
        return self.broken.float().mean(dim=1).masked_fill(self.invalid, 0.0)


def default_chunk(device: torch.device) -> int:
    """Images per forward/backward: large on a GPU, moderate on a CPU."""
    return 32768 if device.type == "cuda" else 2048


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, losses: Loss | Sequence[Loss] = cross_entropy,
        norm: str = "linf", eps: float = 0.1, steps: int = 10, schedule: str = "cosine",
        step_size: float | None = None, mode: str = "any", random_init: bool = True, seed: int = 0,
        generator: torch.Generator | None = None, l1_top: float = 0.05, chunk: int | None = None,
        return_x: bool = True, record: bool = False) -> AttackResult:
    """Run PGD with each of ``losses`` (one loss or a list of K) on images ``x`` with labels ``y``.

    One forward/backward per step over all rows still under attack; see the module docstring for
    the conventions. ``generator`` (a CPU ``torch.Generator``) overrides ``seed`` for the random start.
    """
    check_choice("norm", norm, NORMS)
    check_choice("mode", mode, MODES)
    single = callable(losses)
    loss_list = [losses] if single else list(losses)
    if not loss_list:
        raise ValueError("pgd needs at least one loss")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} images but y has {len(y)} labels")

    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    K, N = len(loss_list), len(x)
    img_shape = tuple(x.shape[1:])
    D = math.prod(img_shape)
    chunk = chunk or default_chunk(dev)
    x_flat = x.reshape(N, D).to(dev)
    y = y.to(dev)
    n_classes = None

    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    lo, hi = -x_flat, 1 - x_flat
    if random_init:
        delta0 = project(random_start(N, D, norm, eps, gen).to(dev), x_flat, norm, eps)
    else:
        delta0 = torch.zeros_like(x_flat)
    delta = delta0.repeat(K, 1)  # rows k * N + n
    broken = torch.zeros(K * N, dtype=torch.bool, device=dev)
    frozen = torch.zeros(K * N, dtype=torch.bool, device=dev)  # stuck for good; outcome known
    invalid = torch.zeros(K, dtype=torch.bool)
    errors: list = [None] * K
    x_best = None
    alphas = step_sizes(eps, steps, schedule, step_size)
    trajectory = [delta.clone().cpu()] if record else None

    # the clean point is part of the ball: in "any" mode a misclassified clean image is broken
    if mode == "any":
        with torch.no_grad():
            clean_wrong = torch.cat([model(x_flat[i:i + chunk].view(-1, *img_shape)).argmax(1)
                                     for i in range(0, N, chunk)]).ne(y)
        broken |= clean_wrong.repeat(K)
        x_best = torch.where(broken[:, None], x_flat.repeat(K, 1), torch.zeros(1, device=dev)) if return_x else None

    def active_rows() -> torch.Tensor:
        alive = ~invalid.to(dev).repeat_interleave(N) & ~frozen
        if mode == "any":
            alive &= ~broken
        return alive.nonzero().squeeze(1)

    def forward(rows: torch.Tensor, with_grad: bool):
        """Logits and (optionally) input gradients of the rows, chunk by chunk."""
        nonlocal n_classes
        all_logits, all_grads = [], []
        for c0 in range(0, len(rows), chunk):
            r = rows[c0:c0 + chunk]
            n_idx = r % N
            xa = (x_flat[n_idx] + delta[r]).view(-1, *img_shape)
            if not with_grad:
                with torch.no_grad():
                    all_logits.append(model(xa))
                continue
            xa.requires_grad_(True)
            logits = model(xa)
            n_classes = logits.shape[1]
            q = F.one_hot(y[n_idx], n_classes).to(logits.dtype)
            k_idx = r // N
            ks, counts = torch.unique_consecutive(k_idx, return_counts=True)
            total, start = logits.new_zeros(()), 0
            for k, cnt in zip(ks.tolist(), counts.tolist()):
                sl = slice(start, start + cnt)
                start += cnt
                try:
                    v = per_sample(loss_list[k](logits[sl], q[sl]), cnt)
                except Exception as exc:  # a malformed loss: invalid, others go on
                    invalid[k] = True
                    errors[k] = f"{type(exc).__name__}: {exc}"
                    continue
                if not torch.isfinite(v).all():
                    invalid[k] = True
                    errors[k] = "loss value is NaN or Inf"
                    continue
                if v.requires_grad:
                    total = total + v.sum()
            if total.requires_grad:
                (g,) = torch.autograd.grad(total, xa)
                g = g.reshape(len(r), D)
            else:
                g = torch.zeros(len(r), D, device=dev)
            all_logits.append(logits.detach())
            all_grads.append(g)
        logits = torch.cat(all_logits) if all_logits else torch.empty(0, 1, device=dev)
        grads = torch.cat(all_grads) if all_grads else None
        return logits, grads

    for i in range(steps):
        rows = active_rows()
        if len(rows) == 0:
            break
        logits, g = forward(rows, with_grad=True)
        # gradients: NaN/Inf makes the whole loss invalid
        bad = ~torch.isfinite(g).all(dim=1)
        if bad.any():
            for k in torch.unique(rows[bad] // N).tolist():
                if not invalid[k]:
                    invalid[k] = True
                    errors[k] = "gradient is NaN or Inf"
        keep = ~invalid.to(dev)[rows // N]
        rows, logits, g = rows[keep], logits[keep], g[keep]
        wrong = logits.argmax(1).ne(y[rows % N])
        if mode == "any" and wrong.any():
            hit = rows[wrong]
            broken[hit] = True
            if return_x:
                x_best[hit] = x_flat[hit % N] + delta[hit]
            rows, g, wrong = rows[~wrong], g[~wrong], wrong[~wrong]
        if len(rows) == 0:
            continue
        n_idx = rows % N
        old = delta[rows]
        new = _PROJECT[norm](old + alphas[i] * _ascent_direction(g, old, lo[n_idx], hi[n_idx], norm, l1_top),
                             lo[n_idx], hi[n_idx], eps)
        stuck = (new == old).all(dim=1)
        if stuck.any():  # their outcome at this point is final
            frozen[rows[stuck]] = True
            if mode == "final":
                broken[rows[stuck]] = wrong[stuck]
        delta[rows] = new
        if record:
            trajectory.append(delta.clone().cpu())

    # the last iterate (frozen rows were decided when they froze)
    rows = active_rows()
    if len(rows):
        logits, _ = forward(rows, with_grad=False)
        wrong = logits.argmax(1).ne(y[rows % N])
        if mode == "final":
            broken[rows] = wrong
        elif wrong.any():
            hit = rows[wrong]
            broken[hit] = True
            if return_x:
                x_best[hit] = x_flat[hit % N] + delta[hit]

    x_adv = None
    if return_x:
        x_last = x_flat.repeat(K, 1) + delta
        x_adv = x_last if mode == "final" else torch.where(broken[:, None], x_best, x_last)
        x_adv = x_adv.view(K, N, *img_shape)
    model.train(was_training)
    broken = broken.view(K, N).cpu()
    broken[invalid] = False
    return AttackResult(broken=broken, invalid=invalid, x_adv=x_adv, errors=errors, trajectory=trajectory)


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: Loss = cross_entropy,
         batch_size: int = 4096) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al.): one l_inf step of size eps, clipped to [0, 1]."""
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev).clone().requires_grad_(True)
        logits = model(xb)
        q = F.one_hot(y[i:i + batch_size].to(dev), logits.shape[1]).to(logits.dtype)
        (g,) = torch.autograd.grad(per_sample(loss(logits, q), len(xb)).sum(), xb)
        out.append((xb.detach() + eps * g.sign()).clamp(0, 1))
    model.train(was_training)
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
def evaluation_set(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int = 1000,
                   batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` images of (x, y) that ``model`` classifies correctly, and their indices."""
    from .train import predict

    ok = predict(model, x, batch_size).eq(y).nonzero().squeeze(1)[:n]
    if len(ok) < n:
        raise ValueError(f"only {len(ok)} of {len(x)} images are classified correctly; asked for n={n}")
    return x[ok], y[ok], ok
