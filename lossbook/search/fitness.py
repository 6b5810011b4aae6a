"""Fitness of loss trees: R'' by PGD on a fixed evaluation set, attacked as rarely as possible.

Two caches stand in front of the attack:

* **by formula** -- a formula attacked once in a run is never attacked again (exact: every
  attack of a run uses the same images and random starts);
* **by behaviour** (the *semantic cache*) -- PGD only sees a loss through the direction of its
  gradient with respect to the logits ``p``, row by row: the l_inf step takes the sign of the
  input gradient, the l_2 step its normalised direction, the l_1 step the top coordinates of
  ``|g|`` with their signs, and none of them changes when a row's gradient is scaled by a
  positive factor; breaks and early exits depend on the prediction only. So two trees whose
  logit gradients point the same way everywhere get the same trajectory and the same fitness.
  A tree's *signature* is its logit gradient on a fixed probe of logit rows (the model's logits
  at the clean images and at random points of the ball, with their labels, each also scaled by
  the factors of ``PROBE_SCALES``), each row divided by its norm, rounded to ``PROBE_DECIMALS``
  and hashed. The scaled rows keep the prediction and shrink the logits: a tree with a threshold
  at a constant, such as ``-|1 - p_y|``, behaves like ``-p_y`` wherever the model is confident
  and differs only once an attack has pulled ``p_y`` below 1, which unscaled rows rarely show.
  A tree whose value or gradient is NaN/Inf on the probe is invalid (fitness 0, as the paper's
  rule) without an attack.

The semantic cache is an approximation -- the probe is finite and float32 rounding differs
between algebraically equal trees -- so it checks itself: each call re-attacks a random share
(``spot_share``, at least one) of its semantic hits; a signature whose hit disagrees with its
stored fitness is recorded and, from then on, its members are attacked one by one.
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter

import numpy as np
import torch

from lossbook.core.attacks import evaluate_losses, project, random_start
from lossbook.core.losses import HANDCRAFTED, compile_formula, per_sample
from lossbook.core.models import eval_mode, model_device

PROBE_DECIMALS = 4
#: each kept probe row enters at these scales (1 = as the model gives it); see the module docstring
PROBE_SCALES = (1.0, 0.5, 0.2)
#: the per-call counters of :class:`Evaluator`, in the order of the search's per-generation CSV
COUNTERS = ("asked", "attacked", "formula_hits", "semantic_hits", "probe_invalid", "spot_checks", "disagreements")


@torch.no_grad()
def probe_logits(model, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, rows: int = 256,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``rows`` logit rows and their one-hot labels: half at clean images, half at random points
    of the ``norm`` ball of radius ``eps`` around the same images (drawn from ``seed``); only the
    rows the model classifies correctly are kept, since a misclassified row is broken before any
    step (the search's "any" mode), so a loss's gradient there never matters. Each kept row comes
    once per factor of ``PROBE_SCALES``, so there are up to ``rows * len(PROBE_SCALES)`` rows."""
    n = max(1, min(len(x), rows // 2))
    xs, ys = x[:n], y[:n]
    flat = xs.reshape(n, -1)
    gen = torch.Generator().manual_seed(seed)
    delta = project(random_start(n, flat.shape[1], norm, eps, gen), flat, norm, eps)
    dev = model_device(model)
    with eval_mode(model):
        p = torch.cat([model(xs.to(dev)), model((flat + delta).view_as(xs).to(dev))]).float().cpu()
    labels = ys.repeat(2).cpu()
    right = p.argmax(1).eq(labels)
    p, q = p[right], torch.nn.functional.one_hot(labels[right], p.shape[1]).float()
    return torch.cat([p * s for s in PROBE_SCALES]), q.repeat(len(PROBE_SCALES), 1)


def probe_id(p: torch.Tensor, q: torch.Tensor) -> str:
    """A short hash of a probe: signatures are comparable only between equal probes."""
    return hashlib.sha1(p.double().numpy().tobytes() + q.numpy().tobytes()).hexdigest()[:12]


def signature(loss, p: torch.Tensor, q: torch.Tensor, decimals: int = PROBE_DECIMALS) -> str | None:
    """The behaviour signature of a loss (a formula or a callable) on probe rows (p, q), or None if
    its value or gradient is NaN/Inf there (or it raises)."""
    pp = p.clone().requires_grad_(True)
    try:
        fn = compile_formula(loss) if isinstance(loss, str) else loss
        v = per_sample(fn(pp, q), len(pp))
    except Exception:  # a malformed tree: invalid
        return None
    if not torch.isfinite(v).all():
        return None
    g = torch.autograd.grad(v.sum(), pp)[0] if v.requires_grad else torch.zeros_like(pp)
    if not torch.isfinite(g).all():
        return None
    g = g.double()
    norm = g.norm(dim=1, keepdim=True)
    direction = torch.where(norm > 0, g / norm.clamp(min=1e-300), torch.zeros_like(g))
    rounded = np.round(direction.numpy(), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return hashlib.sha1(rounded.tobytes()).hexdigest()[:20]


class Evaluator:
    """R'' of formulas on a fixed evaluation set (the GP's fitness), with a cache by formula and,
    unless ``semantic=False``, the semantic cache of the module docstring.

    Every formula is attacked with the same random starts (``seed``), so its fitness depends on the
    formula only; up to ``group`` formulas are attacked together. After each call ``last`` holds
    the call's counters (:data:`COUNTERS`), ``totals`` their sums over the run.
    """

    def __init__(self, model, x, y, setting, steps: int = 10, seed: int = 0, group: int | None = None,
                 semantic: bool = True, spot_share: float = 0.05, probe_rows: int = 256, outcomes: bool = False):
        if outcomes and semantic:
            raise ValueError("per-image outcomes (lexicase selection) need every tree's own attack: pass semantic=False")
        self.model, self.x, self.y, self.setting = model, x, y, setting
        #: per formula, which evaluation images its attack broke (kept with ``outcomes``: lexicase's cases)
        self.outcomes: dict[str, np.ndarray] | None = {} if outcomes else None
        self.steps, self.seed, self.semantic, self.spot_share = steps, seed, semantic, spot_share
        self.group = group or (200 if model_device(model).type == "cuda" else 64)
        self.cache: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.signatures: dict[str, float] = {}  # signature -> fitness of its first attacked member
        self.split: set[str] = set()  # signatures with a disagreement: members are attacked one by one
        self.disagreements: list[dict] = []
        self.borrowed: set[str] = set()  # formulas whose fitness came from a semantic hit
        self.totals: Counter = Counter()
        self.last: Counter = Counter()
        self.calls = 0
        self.diagnostics: list[str] = []
        self._probe = probe_logits(model, x, y, setting.norm, setting.eps, probe_rows, seed) if semantic else None
        self.probe = probe_id(*self._probe) if semantic else None

    # ---- the attack ------------------------------------------------------------------------
    def attack(self, formulas: list[str]) -> dict[str, float]:
        """R'' of each formula by PGD (0 for an invalid loss), ``group`` formulas at a time."""
        out = {}
        for i in range(0, len(formulas), self.group):
            part = formulas[i:i + self.group]
            res = evaluate_losses(self.model, self.x, self.y, [compile_formula(f) for f in part],
                                  norm=self.setting.norm, eps=self.setting.eps, steps=self.steps, seed=self.seed)
            for k, (f, r, bad, err) in enumerate(zip(part, res.risk.tolist(), res.invalid.tolist(), res.errors)):
                out[f] = 0.0 if bad else float(r)
                if bad:
                    self.errors[f] = err
                if self.outcomes is not None:
                    self.outcomes[f] = np.zeros(len(self.x), bool) if bad else res.broken[k].cpu().numpy().copy()
        self.last["attacked"] += len(formulas)
        return out

    def handcrafted(self) -> dict[str, float]:
        """R'' of CE, C&W, margin and DLR on the same set with the same starts."""
        res = evaluate_losses(self.model, self.x, self.y, list(HANDCRAFTED.values()), norm=self.setting.norm,
                              eps=self.setting.eps, steps=self.steps, seed=self.seed)
        self.diagnostics = res.diagnostics.warnings()  # what the checks say of the model under these attacks
        return dict(zip(HANDCRAFTED, res.risk.tolist()))

    # ---- the caches --------------------------------------------------------------------------
    def __call__(self, formulas: list[str]) -> tuple[list[float], int]:
        """Fitness of each formula, and how many of them came from the formula cache."""
        self.calls += 1
        self.last = Counter({c: 0 for c in COUNTERS})
        todo = list(dict.fromkeys(f for f in formulas if f not in self.cache))
        self.last["asked"], self.last["formula_hits"] = len(formulas), len(formulas) - len(todo)
        if self.semantic:
            self._semantic(todo)
        else:
            self.cache.update(self.attack(todo))
        self.totals.update(self.last)
        return [self.cache[f] for f in formulas], self.last["formula_hits"]

    def _semantic(self, todo: list[str]) -> None:
        p, q = self._probe
        first: dict[str, str] = {}  # signature -> the formula attacked for it in this call
        misses, hits = [], []  # hits: (formula, signature)
        for f in todo:
            sig = signature(f, p, q)
            if sig is None:
                self.cache[f], self.errors[f] = 0.0, "loss value or gradient is NaN or Inf on the probe"
                self.last["probe_invalid"] += 1
            elif sig in self.split or (sig not in self.signatures and sig not in first):
                misses.append(f)
                first.setdefault(sig, f)
            else:
                hits.append((f, sig))
        rng = random.Random(f"spot-{self.seed}-{self.calls}")  # its own stream: the GP's RNG is untouched
        n_spot = min(len(hits), max(1, round(self.spot_share * len(hits)))) if hits else 0
        spots = rng.sample(hits, n_spot)
        fits = self.attack(misses + [f for f, _ in spots])
        for sig, f in first.items():
            self.signatures.setdefault(sig, fits[f])
        for f, sig in spots:
            if fits[f] != self.signatures[sig]:
                self.split.add(sig)
                self.disagreements.append({"formula": f, "signature": sig, "stored": self.signatures[sig],
                                           "attacked": fits[f], "call": self.calls})
                self.last["disagreements"] += 1
        self.last["spot_checks"] = n_spot
        spotted = {f for f, _ in spots}
        again = [f for f, sig in hits if sig in self.split and f not in spotted]  # no fitness from a bad merge
        fits.update(self.attack(again))
        for f, sig in hits:
            if f not in fits:
                fits[f] = self.signatures[sig]
                self.borrowed.add(f)
                self.last["semantic_hits"] += 1
        self.cache.update(fits)

    def verify(self, formulas: list[str]) -> dict[str, float]:
        """Attack those of ``formulas`` whose fitness was borrowed from a semantic hit (e.g. the hall of
        fame at the end of a run), so that a reported fitness is always an attack's own; a changed
        fitness is recorded as a disagreement. Returns the changes (formula -> attacked fitness)."""
        todo = [f for f in dict.fromkeys(formulas) if f in self.borrowed]
        self.last = Counter({c: 0 for c in COUNTERS})
        fits = self.attack(todo)
        changed = {f: v for f, v in fits.items() if v != self.cache[f]}
        for f, v in changed.items():
            self.disagreements.append({"formula": f, "signature": None, "stored": self.cache[f], "attacked": v,
                                       "call": "verify"})
        self.last["disagreements"] = len(changed)
        self.last["spot_checks"] = len(todo)
        self.totals.update(self.last)
        self.cache.update(fits)
        self.borrowed -= set(todo)
        return changed

    # ---- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything a resumed run needs to continue exactly."""
        out = {"cache": dict(self.cache), "errors": dict(self.errors), "signatures": dict(self.signatures),
               "split": sorted(self.split), "borrowed": sorted(self.borrowed),
               "disagreements": list(self.disagreements), "totals": dict(self.totals), "calls": self.calls,
               "probe": self.probe}
        if self.outcomes is not None:  # packed bits, as hex: JSON-safe and small
            out["outcomes"] = {f: np.packbits(v).tobytes().hex() for f, v in self.outcomes.items()}
        return out

    def restore(self, state: dict) -> None:
        """Continue from :meth:`state`. The formula cache is always taken (exact); the signature table
        only if it was made on this probe (another version or machine may give other probe rows)."""
        self.cache.update(state["cache"])
        self.errors.update(state.get("errors", {}))
        if self.outcomes is not None:
            n = len(self.x)
            self.outcomes.update({f: np.unpackbits(np.frombuffer(bytes.fromhex(h), np.uint8))[:n].astype(bool)
                                  for f, h in state.get("outcomes", {}).items()})
        if state.get("probe") == self.probe:
            self.signatures.update(state.get("signatures", {}))
            self.split.update(state.get("split", ()))
        self.borrowed.update(state.get("borrowed", ()))
        self.disagreements = list(state.get("disagreements", []))
        self.totals = Counter(state.get("totals", {}))
        self.calls = state.get("calls", 0)
