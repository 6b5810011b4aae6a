"""The verifier's sound arithmetic against exact rationals: enclosures contain the exact logits, the
feasible-set check is exact at the boundary, LP bounds from the dual are never below the optimum, ties
are adversarial, and an audit finds a tampered witness."""
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linprog

from lossbook.core import certify as C


def _layers(seed=0, widths=(6, 5, 4), n_in=8):
    rng = np.random.default_rng(seed)
    dims = (n_in, *widths)
    return [(rng.normal(size=(o, i)).astype(np.float32).astype(float), rng.normal(size=o).astype(np.float32).astype(float))
            for i, o in zip(dims, dims[1:])]


def test_the_float64_enclosure_contains_the_exact_logits():
    layers = _layers()
    rng = np.random.default_rng(1)
    for _ in range(5):
        p = rng.random(8).astype(np.float32).astype(float)
        z, err = C.logits_enclosure(layers, p)
        exact = C.exact_logits(layers, p)
        for zc, ec, ex in zip(z, err, exact):
            assert Fraction(float(zc - ec)) <= ex <= Fraction(float(zc + ec))
        assert 0 < err.max() < 1e-12  # a real bound, and a small one
        low = C.margin_lower_bounds(layers, p, 0)
        assert all(Fraction(float(low[c])) <= exact[c] - exact[0] for c in range(1, 4)) and low[0] == -np.inf


def test_affine_bounds_contain_every_point_of_the_box():
    W, b = _layers()[0]
    lo, hi = np.full(8, 0.2), np.full(8, 0.7)
    out_lo, out_hi = C.affine_bounds(W, b, lo, hi)
    rng = np.random.default_rng(2)
    for p in rng.uniform(0.2, 0.7, size=(200, 8)):
        z = W @ p + b
        assert np.all(out_lo <= z) and np.all(z <= out_hi)
    corner = np.where(W[0] > 0, hi, lo)  # the maximiser of row 0
    assert out_hi[0] - (W[0] @ corner + b[0]) < 1e-12


@pytest.mark.parametrize("norm", ["linf", "l1", "l2"])
def test_the_feasible_set_check_is_exact_at_the_boundary(norm):
    x = np.array([0.25, 0.5, 0.75, 0.0])
    eps = 0.125  # exact in binary
    step = {"linf": np.array([eps, -eps, eps, eps]), "l1": np.array([eps / 2, -eps / 4, eps / 4, 0.0]),
            "l2": np.array([eps, 0.0, 0.0, 0.0])}[norm]
    p = x + step
    assert C.in_feasible_set(p, x, norm, eps)
    beyond = p.copy()
    beyond[0] = np.nextafter(beyond[0], 1.0)  # one ulp further out
    assert not C.in_feasible_set(beyond, x, norm, eps)
    assert not C.in_feasible_set(np.array([0.25, 0.5, 0.75, -1e-300]), x, norm, eps)  # below the box
    with pytest.raises(ValueError, match="norm 'l3'; allowed: 'linf', 'l1', 'l2'"):
        C.in_feasible_set(p, x, "l3", eps)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l1", 0.3), ("l2", 0.2)])
def test_a_witness_is_moved_into_the_set_and_stays_close(norm, eps):
    rng = np.random.default_rng(3)
    x = rng.random(50).astype(np.float32).astype(float)
    cand = np.clip(x + rng.normal(scale=eps, size=50), -0.1, 1.1)  # outside the ball and the box
    w = C.make_witness(cand, x, norm, eps)
    assert w is not None and w.dtype == np.float32 and C.in_feasible_set(w.astype(float), x, norm, eps)
    assert np.array_equal(C.decode_point(C.encode_point(w)), w.astype(float))
    inside = C.make_witness(x + 0.5 * C.make_witness(cand, x, norm, eps).astype(float) - 0.5 * x, x, norm, eps)
    assert inside is not None


def test_lp_bounds_from_the_dual_are_valid_for_any_dual_and_tight_for_the_optimal_one():
    rng = np.random.default_rng(4)
    A = rng.normal(size=(6, 5))
    row_lo, row_hi = np.full(6, -np.inf), rng.random(6) + 0.5
    col_lo, col_hi = -np.ones(5), np.ones(5)
    c = rng.normal(size=5)
    opt = linprog(-c, A_ub=A, b_ub=row_hi, bounds=list(zip(col_lo, col_hi)), method="highs")
    best = -opt.fun
    y_opt = -opt.ineqlin.marginals  # scipy's duals for the minimisation of -c
    tight = C.safe_lp_bound(sp.csr_matrix(A), row_lo, row_hi, col_lo, col_hi, c, y_opt)
    assert best <= tight <= best + 1e-9
    for y in [np.zeros(6), rng.random(6), -rng.random(6)]:  # any dual: still an upper bound (looser)
        assert C.safe_lp_bound(sp.csr_matrix(A), row_lo, row_hi, col_lo, col_hi, c, y) >= best
    assert C.safe_lp_bound(sp.csr_matrix(A), row_lo, row_hi, col_lo, col_hi, c, np.zeros(6)) == pytest.approx(
        np.abs(c).sum(), rel=1e-12)


def test_a_tie_is_adversarial():
    W = np.array([[1.0, -1.0], [1.0, -1.0]])  # two classes with identical logits everywhere
    layers = [(W, np.zeros(2))]
    c, m = C.witness_margin(layers, np.array([0.5, 0.25]), 0)
    assert c == 1 and m == 0.0
    layers = [(np.array([[1.0, 0.0], [0.0, 1.0]]), np.zeros(2))]
    c, m = C.witness_margin(layers, np.array([0.5, 0.25]), 0)
    assert m < 0  # class 1 is 0.25 below: not adversarial


def test_an_audit_finds_a_tampered_witness_and_a_robust_image_without_proofs():
    from lossbook.core import exact as X

    layers = _layers(seed=1, widths=(6, 3), n_in=4)  # a net whose decision boundary crosses the unit box
    rng = np.random.default_rng(5)
    for _ in range(200):  # an image and a witness of it
        x = rng.random(4).astype(np.float32).astype(float)
        y = int(np.argmax(C.logits_enclosure(layers, x)[0]))
        w = C.make_witness(x + rng.normal(scale=0.3, size=4), x, "linf", 0.3)
        if w is not None and C.witness_margin(layers, w.astype(float), y)[1] >= 0:
            break
    else:
        raise AssertionError("no image with a witness: the test would be vacuous")
    images = {0: (x, y), 1: (x, y)}
    delta = X.DELTA_REL * max(1.0, float(np.abs(C.logits_enclosure(layers, x)[0]).max()))
    good = [{"index": 0, "label": y, "status": "vulnerable", "by": "attack", "witness": C.encode_point(w)},
            {"index": 1, "label": y, "status": "robust", "by": "milp", "delta": delta, "slack": 0.0,
             "ruled_out": {"bounds": 1, "lp-dual": 1, "milp": 0}}]
    assert X.audit_rows(layers, good, images, "linf", 0.3) == []
    moved = w.copy()
    moved[0] = np.float32(min(1.0, x[0] + 0.31)) if x[0] < 0.6 else np.float32(max(0.0, x[0] - 0.31))
    bad = [{**good[0], "witness": C.encode_point(moved)}, {**good[1], "ruled_out": {"bounds": 1}}]
    problems = X.audit_rows(layers, bad, images, "linf", 0.3)
    assert any("image 0: the witness lies outside the linf ball" in p for p in problems)
    assert any("image 1: robust, but the proofs {'bounds': 1} do not cover the 2 wrong classes" in p for p in problems)
