import numpy as np
import pytest

from lossbook.core import stats


def test_gain_counts_and_exact_mcnemar():
    a = np.array([1] * 10 + [0] * 90, bool)  # A alone breaks 10 images
    b = np.zeros(100, bool)
    g = stats.paired_gain(a, b)
    assert (g.gain_pp, g.only_a, g.only_b, g.n) == (10.0, 10, 0, 100)
    assert g.p_value == pytest.approx(2 * 0.5 ** 10)
    assert 0 < g.ci_low < 10 < g.ci_high
    assert stats.verdict(g) == "reproduced"
    # swapped: the mirror image
    h = stats.paired_gain(b, a)
    assert (h.gain_pp, h.ci_low, h.ci_high) == (-10.0, -g.ci_high, -g.ci_low)
    assert stats.verdict(h) == "not reproduced"


def test_concordant_images_do_not_count():
    a = np.array([1] * 50 + [0] * 50, bool)
    g = stats.paired_gain(a, a)
    assert (g.gain_pp, g.ci_low, g.ci_high, g.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert stats.verdict(g) == "not reproduced"  # equal to CE is not a gain


def test_balanced_discordance_is_inconclusive():
    a = np.array([1, 0] * 20 + [0] * 60, bool)
    b = np.array([0, 1] * 20 + [0] * 60, bool)
    g = stats.paired_gain(a, b)
    assert g.gain_pp == 0 and g.ci_low < 0 < g.ci_high and g.p_value == 1.0
    assert stats.verdict(g) == "inconclusive"


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    a = rng.random(1000) < 0.62
    b = np.where(rng.random(1000) < 0.9, a, ~a)  # 10% discordant
    g = stats.paired_gain(a, b, n_boot=20000)
    d = a.astype(float) - b.astype(float)
    se = 100 * d.std(ddof=1) / np.sqrt(len(d))
    assert g.ci_low == pytest.approx(g.gain_pp - 1.96 * se, abs=0.25)
    assert g.ci_high == pytest.approx(g.gain_pp + 1.96 * se, abs=0.25)
    assert stats.paired_gain(a, b, n_boot=20000) == g  # seeded: the same interval every time


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"same non-zero length, got \(3,\) and \(4,\)"):
        stats.paired_gain(np.zeros(3), np.zeros(4))


def test_risk_interval_is_clopper_pearson():
    lo, hi = stats.risk_interval(np.array([1] * 7 + [0] * 3))
    assert lo == pytest.approx(0.3475, abs=1e-3) and hi == pytest.approx(0.9333, abs=1e-3)


def test_majority_verdict_is_a_two_sided_sign_test():
    assert stats.majority_verdict(14, 24)[0] == "inconclusive"
    assert stats.majority_verdict(24, 24)[0] == "reproduced" and stats.majority_verdict(0, 24)[0] == "not reproduced"
    assert stats.majority_verdict(0, 0) == ("inconclusive", 1.0)
    verdict, p = stats.majority_verdict(7, 7)
    assert verdict == "reproduced" and p == pytest.approx(2 / 2 ** 7)


def test_count_interval_equals_the_interval_of_the_outcomes():
    outcomes = np.r_[np.ones(14), np.zeros(986)]
    assert stats.count_interval(14, 1000) == stats.risk_interval(outcomes)
    lo, hi = stats.count_interval(0, 200)
    assert lo == 0.0 and 0.0 < hi < 0.02


def test_the_power_of_the_direction_test_grows_with_the_gain_and_is_nan_where_the_gain_cannot_occur():
    from lossbook.core.stats import power_of_direction

    small, large = power_of_direction(60, 1000, 1.0), power_of_direction(60, 1000, 3.0)
    assert 0 < small < large < 1
    assert power_of_direction(60, 1000, 0.0) == 0.0
    assert power_of_direction(10, 1000, 2.0) != power_of_direction(10, 1000, 2.0)  # NaN: 2 pp needs 20 discordant
    # the exact test needs 6 of 6 wins at 95%: with 6 discordant images and a 0.5 pp gain (pi = 11/12)
    assert power_of_direction(6, 1000, 0.5) == pytest.approx((11 / 12) ** 6)


def test_the_agresti_min_interval_is_unconditional_and_brackets_the_gain():
    from lossbook.core.stats import agresti_min_interval, exact_gain

    ci = agresti_min_interval(35, 4, 1000)
    assert ci.ci_low == pytest.approx(1.87, abs=0.01) and ci.ci_high == pytest.approx(4.32, abs=0.01)
    broken_a = np.r_[np.ones(35, bool), np.zeros(4, bool), np.zeros(961, bool)]
    broken_b = np.r_[np.zeros(35, bool), np.ones(4, bool), np.zeros(961, bool)]
    exact = exact_gain(broken_a, broken_b)
    assert exact.ci_high < ci.ci_high  # the conditional interval cannot pass the discordant share
    none = agresti_min_interval(0, 0, 1000)
    assert none.ci_low < 0 < none.ci_high  # no discordant image: not a zero-width interval
