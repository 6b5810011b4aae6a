"""Statistics behind a verdict: paired comparisons of two attacks on the same images.

Two attacks on the same N images give paired outcomes (broken or not). Their difference in R''
is the difference of the discordant counts over N: ``b`` images only attack A breaks, ``c`` only
attack B breaks, gain = (b - c) / N. The uncertainty comes from the images (which ones happened
to be drawn); it is given as

* a 95% interval of the gain by the paired bootstrap over images (percentile, ``n_boot`` draws,
  seeded: the same numbers on every run), and
* the exact McNemar test of "no difference": under the null each discordant image is equally
  likely to favour A or B, so ``b ~ Binomial(b + c, 1/2)``; two-sided p-value.

A verdict on "A beats B" (the paper's claim, A = the searched loss, B = CE):
*reproduced* if the gain is > 0 and the interval lies above 0; *not reproduced* if the gain is at
most 0 and the interval's upper end is at most 0; *inconclusive* otherwise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom, binomtest, norm, t

VERDICTS = ("reproduced", "not reproduced", "inconclusive")


@dataclass(frozen=True)
class PairedGain:
    """Gain of attack A over attack B on the same images, in percentage points."""

    gain_pp: float
    ci_low: float
    ci_high: float
    p_value: float
    only_a: int  # images only A breaks
    only_b: int  # images only B breaks
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def paired_gain(broken_a, broken_b, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> PairedGain:
    """Gain of A over B (pp) with its paired-bootstrap interval and the exact McNemar p-value."""
    a, b = np.asarray(broken_a, bool), np.asarray(broken_b, bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired outcomes must be two 1-d arrays of the same non-zero length, got "
                         f"{a.shape} and {b.shape}")
    n = len(a)
    diff = a.astype(np.int8) - b.astype(np.int8)  # +1: only A, -1: only B
    only_a, only_b = int((diff == 1).sum()), int((diff == -1).sum())
    rng = np.random.default_rng(seed)
    # the bootstrap only needs how often each discordant kind is drawn: multinomial counts
    probs = np.array([only_a, only_b, n - only_a - only_b]) / n
    draws = rng.multinomial(n, probs, size=n_boot)
    boot = 100.0 * (draws[:, 0] - draws[:, 1]) / n
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return PairedGain(gain_pp=100.0 * (only_a - only_b) / n, ci_low=float(lo), ci_high=float(hi), p_value=float(p),
                      only_a=only_a, only_b=only_b, n=n)


def verdict(g: PairedGain) -> str:
    """The three-way verdict on "A beats B" of the module docstring."""
    if g.gain_pp > 0 and g.ci_low > 0:
        return "reproduced"
    if g.gain_pp <= 0 and g.ci_high <= 0:
        return "not reproduced"
    return "inconclusive"


def count_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a share k / n."""
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def risk_interval(broken, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of an R'' from its per-image outcomes."""
    return count_interval(int(np.sum(broken)), int(np.size(broken)), level)


def majority_verdict(k: int, n: int, level: float = 0.05) -> tuple[str, float]:
    """Verdict on "most of n cases go the stated way" from the k that do, by a two-sided exact sign
    test: *reproduced* / *not reproduced* where the majority is significant, else *inconclusive*."""
    if n == 0:
        return "inconclusive", 1.0
    p = float(binomtest(int(k), int(n), 0.5).pvalue)
    if p >= level:
        return "inconclusive", p
    return ("reproduced" if 2 * k > n else "not reproduced"), p


# ------------------------------------------------------------------------------------------------
# Question 1's protocol (book/protocol_q1.md): exact interval, Holm, size, pooled
# ------------------------------------------------------------------------------------------------
DIRECTIONS = ("reproduced", "not reproduced", "inconclusive")
SIZES = ("consistent", "smaller than the paper's", "larger than the paper's")


@dataclass(frozen=True)
class ExactGain:
    """Gain of A over B (pp) on N paired images, with the exact conditional interval of the protocol:
    a Clopper-Pearson interval for the share of A among the discordant images, mapped to the gain.
    It excludes 0 exactly when McNemar's exact two-sided p < 1 - level."""

    gain_pp: float
    ci_low: float
    ci_high: float
    p_value: float
    only_a: int
    only_b: int
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def exact_gain(broken_a, broken_b, level: float = 0.95) -> ExactGain:
    """The protocol's paired comparison of A and B: gain, exact interval, McNemar's exact p."""
    a, b = np.asarray(broken_a, bool), np.asarray(broken_b, bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired outcomes must be two 1-d arrays of the same non-zero length, got "
                         f"{a.shape} and {b.shape}")
    n, only_a, only_b = len(a), int((a & ~b).sum()), int((b & ~a).sum())
    m = only_a + only_b
    if m == 0:
        return ExactGain(0.0, 0.0, 0.0, 1.0, 0, 0, n)
    test = binomtest(only_a, m, 0.5)
    ci = test.proportion_ci(confidence_level=level, method="exact")
    to_gain = lambda pi: 100.0 * m / n * (2 * pi - 1)  # noqa: E731
    return ExactGain(100.0 * (only_a - only_b) / n, to_gain(ci.low), to_gain(ci.high), float(test.pvalue),
                     only_a, only_b, n)


@dataclass(frozen=True)
class Interval:
    ci_low: float
    ci_high: float


def welch_interval(a, b, level: float = 0.95) -> tuple[float, float]:
    """Welch's interval for mean(a) - mean(b) (unequal variances, Satterthwaite's degrees of freedom); NaN where a
    side has fewer than two values. With groups as small as 4, it keeps its level where a percentile bootstrap
    of the same means does not (book/protocol_atras.md, revision 3)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    diff = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    if se == 0:
        return diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(t.ppf(0.5 + level / 2, df)) * se
    return diff - half, diff + half


def agresti_min_interval(only_a: int, only_b: int, n: int, level: float = 0.95) -> Interval:
    """An unconditional interval (pp) for the paired difference of two proportions (Agresti and Min 2005:
    Wald's interval after adding 1/2 to each cell of the 2x2 table). Unlike the exact conditional interval,
    its ends are not held within the discordant share, so it can judge the size of a gain; the protocol's
    size verdict keeps the conditional one, and this one is shown beside it."""
    a, b, m = only_a + 0.5, only_b + 0.5, n + 2
    diff = (a - b) / m
    se = np.sqrt(max((a + b) - (a - b) ** 2 / m, 0.0)) / m
    z = norm.ppf(0.5 + level / 2)
    return Interval(100 * (diff - z * se), 100 * (diff + z * se))


def direction(g) -> str:
    """The protocol's direction verdict: the interval above 0, below 0, or touching it."""
    if g.ci_low > 0:
        return "reproduced"
    if g.ci_high < 0:
        return "not reproduced"
    return "inconclusive"


def power_of_direction(discordant: int, n: int, gain_pp: float, level: float = 0.95) -> float:
    """The chance that the protocol's direction verdict says "reproduced" (exact interval above 0) when the
    true gain is ``gain_pp``, given ``discordant`` discordant images of ``n`` (conditional on that count, as
    the exact test is): the searched loss wins each discordant image with probability
    ``(1 + gain * n / discordant) / 2``. NaN where that count cannot hold such a gain (gain > discordant / n)."""
    if gain_pp <= 0:
        return 0.0
    if discordant <= 0 or gain_pp / 100 * n > discordant:
        return float("nan")
    pi = (1 + gain_pp / 100 * n / discordant) / 2
    k_min = next((k for k in range(discordant + 1)
                  if binomtest(k, discordant, 0.5).proportion_ci(confidence_level=level, method="exact").low > 0.5),
                 None)
    return 0.0 if k_min is None else float(binom.sf(k_min - 1, discordant, pi))


def size_verdict(g, paper_gain_pp: float) -> str:
    """Where the paper's gain lies relative to the interval of ours."""
    if g.ci_high < paper_gain_pp:
        return "smaller than the paper's"
    if g.ci_low > paper_gain_pp:
        return "larger than the paper's"
    return "consistent"


def holm(p_values, family_size: int | None = None) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given). With ``family_size`` larger than the p-values
    given, the missing hypotheses are taken as the largest p-values (the adjustment is then valid whatever
    their values turn out to be)."""
    p = np.asarray(p_values, float)
    order = np.argsort(p, kind="stable")
    k = len(p)
    m = k if family_size is None else family_size
    if m < k:
        raise ValueError(f"family_size {m} is smaller than the {k} p-values given")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(k)) * p[order]))
    out = np.empty(k)
    out[order] = adjusted
    return out


def pooled_gain(pairs, n_boot: int = 10_000, level: float = 0.95, seed: int = 0,
                resample_settings: bool = True) -> tuple[float, float, float]:
    """Mean gain (pp) over settings, each given as (only_a, only_b, n), with a two-stage percentile
    bootstrap interval: settings drawn with replacement, then each drawn setting's images (as
    multinomial counts of the discordant kinds). Without ``resample_settings`` the settings stay as
    they are and only their images are drawn: an interval about these settings, not settings like them."""
    pairs = np.asarray(pairs, float)
    if pairs.ndim != 2 or pairs.shape[1] != 3 or len(pairs) == 0:
        raise ValueError(f"pooled_gain needs rows (only_a, only_b, n), got shape {pairs.shape}")
    gains = 100.0 * (pairs[:, 0] - pairs[:, 1]) / pairs[:, 2]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(pairs), size=(n_boot, len(pairs))) if resample_settings else \
        np.tile(np.arange(len(pairs)), (n_boot, 1))
    boot = np.empty(n_boot)
    for i, row in enumerate(picks):
        a, b, n = pairs[row, 0], pairs[row, 1], pairs[row, 2].astype(int)
        probs = np.stack([a / n, b / n, 1 - (a + b) / n], axis=1)
        draws = np.array([rng.multinomial(k, pr) for k, pr in zip(n, probs)])
        boot[i] = np.mean(100.0 * (draws[:, 0] - draws[:, 1]) / n)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(gains.mean()), float(lo), float(hi)


#: the verdict of a claim whose result is not computed at the scale shown
NOT_RUN = "not run at this scale"
#: the verdict of a claim whose computation at the scale shown is under way (verdicts are read once it is complete)
PENDING = "pending (its run is under way)"
#: a claim measured but not judged (the protocol gives it no verdict, e.g. an in-sample success rate)
DESCRIPTIVE = "descriptive (no verdict)"
#: a claim whose regime here differs too much from the paper's for a verdict about the paper's claim
NOT_COMPARABLE = "not comparable (regime differs)"
