"""Coverage of the two intervals chapter 06 could judge a depth-group gap on (book/protocol_atras.md, revision 3).

ATRAS's one-hidden-layer group has 4 architectures; the deeper groups have 18, 8 and 10. The gap of two group
means is judged on an interval over architecture means. This script draws normal data of those group sizes with
a known gap and counts how often each interval holds it:

(a) the percentile bootstrap that resamples architectures within their group (``bootstrap_contrasts``'s form),
(b) Welch's interval (``lossbook.core.stats.welch_interval``),

at 95% and at the Bonferroni level the C1 rule uses for "not reproduced" (1 - 0.05/3). It prints the coverage of
each with its binomial standard error. Not a speed benchmark: a check of the statistics, seeded, in seconds.
Usage: ``python benchmarks/coverage_atras_intervals.py [--reps 2000] [--boot 1000]``.
"""
from __future__ import annotations

import argparse

import numpy as np

from lossbook.chapters.atras_regime import PAIRWISE_LEVEL
from lossbook.core.stats import welch_interval


def percentile_bootstrap(a: np.ndarray, b: np.ndarray, level: float, n_boot: int, rng) -> tuple[float, float]:
    """The percentile interval of mean(a) - mean(b), each side resampled within itself."""
    da = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
    db = b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(da - db, [tail, 100 - tail])
    return float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{args.reps} data sets per row, {args.boot} bootstrap resamples; normal data, sd 1 in each group, gap 0.5")
    print(f"{'one layer vs':>14} {'level':>6} {'bootstrap':>10} {'Welch':>8}   (binomial s.e. about "
          f"{np.sqrt(0.95 * 0.05 / args.reps):.3f})")
    for n_other in (18, 8, 10):
        for level in (0.95, PAIRWISE_LEVEL):
            hits = {"bootstrap": 0, "Welch": 0}
            for _ in range(args.reps):
                a, b = rng.normal(0.5, 1.0, 4), rng.normal(0.0, 1.0, n_other)
                for name, (lo, hi) in (("bootstrap", percentile_bootstrap(a, b, level, args.boot, rng)),
                                       ("Welch", welch_interval(a, b, level))):
                    hits[name] += lo <= 0.5 <= hi
            print(f"{n_other:>11} ar. {level:>6.4f} {hits['bootstrap'] / args.reps:>10.3f} "
                  f"{hits['Welch'] / args.reps:>8.3f}")


if __name__ == "__main__":
    main()
