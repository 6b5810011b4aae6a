import numpy as np
import pytest
import torch

from lossbook.core import attacks as A
from lossbook.core import losses as L


# --------------------------------------------------------------------------------------- projections
def _reference_projection(v, lo, hi, eps, norm):
    """Independent float64 reference: the KKT form with its multiplier found by exhaustive search
    over the breakpoints (l1) or a fine 1-d solve (l2)."""
    v, lo, hi = (np.asarray(a, np.float64) for a in (v, lo, hi))
    if norm == "linf":
        return np.clip(v, np.maximum(lo, -eps), np.minimum(hi, eps))
    if norm == "l1":
        def at(lam):
            return np.clip(np.sign(v) * np.maximum(np.abs(v) - lam, 0), lo, hi)
        if np.abs(at(0.0)).sum() <= eps:
            return at(0.0)
        cap = np.where(v >= 0, hi, -lo)
        pts = np.unique(np.concatenate([[0.0], np.abs(v), np.maximum(np.abs(v) - cap, 0)]))
        norms = np.array([np.abs(at(t)).sum() for t in pts])
        j = np.nonzero(norms <= eps)[0][0]  # the norm is piecewise linear between breakpoints
        a, b, na, nb = pts[j - 1], pts[j], norms[j - 1], norms[j]
        return at(a + (na - eps) / (na - nb) * (b - a))
    from scipy.optimize import brentq
    def at2(s):
        return np.clip(v / (1 + s), lo, hi)
    if np.linalg.norm(at2(0.0)) <= eps:
        return at2(0.0)
    s = brentq(lambda s: np.linalg.norm(at2(s)) - eps, 0.0, 1e9, xtol=1e-14)
    return at2(s)


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 0.7), ("l1", 1.2)])
def test_projection_matches_reference_on_small_vectors(norm, eps):
    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        d = int(torch.randint(1, 7, (1,), generator=gen))
        x = torch.rand(1, d, generator=gen)
        if trial % 3 == 0:  # adversarial cases: pixels on the box's faces, huge steps
            x = (x > 0.5).float()
        v = torch.randn(1, d, generator=gen) * (10 if trial % 2 else 1)
        got = A.project(v, x, norm, eps)[0].double().numpy()
        ref = _reference_projection(v[0].numpy(), -x[0].numpy(), 1 - x[0].numpy(), eps, norm)
        np.testing.assert_allclose(got, ref, atol=2e-5, err_msg=f"{norm} trial {trial}")


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 2.0), ("l1", 15.0)])
def test_projection_is_feasible_and_optimal_on_images(norm, eps):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(32, 1, 28, 28, generator=gen)
    x[:8] = (x[:8] > 0.7).float()  # MNIST-like: most pixels on the box's faces
    v = torch.randn(32, 1, 28, 28, generator=gen) * torch.logspace(-3, 1, 32).view(-1, 1, 1, 1)
    p = A.project(v, x, norm, eps)
    assert (A.lp_norm(p, norm) <= eps * (1 + 1e-5)).all()
    assert ((x + p) >= 0).all() and ((x + p) <= 1).all()
    # optimality: <v - P(v), z - P(v)> <= 0 for feasible z (here: other projections)
    for _ in range(5):
        z = A.project(torch.randn_like(v), x, norm, eps)
        inner = ((v - p) * (z - p)).flatten(1).sum(1)
        assert (inner <= 1e-3 * (1 + (v - p).flatten(1).norm(dim=1))).all()
    assert torch.equal(A.project(p, x, norm, eps), p) or torch.allclose(A.project(p, x, norm, eps), p, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_start_is_inside_the_ball(norm):
    d = A.random_start(100, 784, norm, 0.5, torch.Generator().manual_seed(0))
    assert (A.lp_norm(d, norm) <= 0.5 + 1e-5).all() and (A.lp_norm(d, norm) > 0).all()


def test_cosine_schedule():
    a = A.step_sizes(0.1, 10)
    assert a[0] == pytest.approx(0.1) and a[5] == pytest.approx(0.05) and all(x > y for x, y in zip(a, a[1:]))
    assert A.step_sizes(0.1, 4, "constant", 0.02) == [0.02] * 4
    with pytest.raises(ValueError, match="unknown schedule 'linear'; allowed: 'cosine', 'constant'"):
        A.step_sizes(0.1, 4, "linear")


# -------------------------------------------------------------------------------------------- PGD
@pytest.fixture(scope="module")
def evalset(trained_mlp, mnist_small):
    _, _, xt, yt = mnist_small
    x, y, idx = A.evaluation_set(trained_mlp, xt, yt, n=200)
    return trained_mlp, x, y


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5), ("l1", 10.0)])
def test_returned_points_are_feasible(evalset, norm, eps):
    model, x, y = evalset
    for mode in A.MODES:
        r = A.pgd(model, x, y, [L.cross_entropy, L.dlr_loss], norm=norm, eps=eps, steps=5, mode=mode)
        delta = (r.x_adv - x.unsqueeze(0)).reshape(2 * len(x), -1)
        assert (A.lp_norm(delta, norm) <= eps * (1 + 1e-5)).all()
        assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
        # what is called broken really is misclassified at x_adv
        pred = model(r.x_adv.reshape(-1, 1, 28, 28)).argmax(1).reshape(2, -1)
        assert torch.equal(pred.ne(y), r.broken)


@pytest.mark.parametrize("norm,eps_list", [("linf", [0.02, 0.05, 0.1, 0.2]), ("l2", [0.5, 1.0, 2.0, 3.0]),
                                           ("l1", [3.0, 8.0, 15.0, 30.0])])
def test_pgd_ce_lowers_accuracy_monotonically_in_eps(evalset, norm, eps_list):
    model, x, y = evalset
    risks = [A.adversarial_risk(model, x, y, L.cross_entropy, norm, eps, steps=10).risk for eps in eps_list]
    assert risks == sorted(risks) and risks[-1] > risks[0] + 0.2, risks


def test_any_mode_counts_at_least_final(evalset):
    model, x, y = evalset
    for norm, eps in [("linf", 0.06), ("l2", 1.0), ("l1", 6.0)]:
        kw = dict(norm=norm, eps=eps, steps=10, seed=3)
        r_any = A.pgd(model, x, y, [L.cross_entropy, L.cw_loss], mode="any", **kw)
        r_fin = A.pgd(model, x, y, [L.cross_entropy, L.cw_loss], mode="final", **kw)
        assert (r_any.broken | ~r_fin.broken).all()  # final-broken implies any-broken
        assert (r_any.risk >= r_fin.risk).all()


@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("l2", 1.0), ("l1", 8.0)])
def test_many_losses_at_once_equal_separate_runs(evalset, norm, eps):
    model, x, y = evalset
    losses = [L.cross_entropy, L.cw_loss, L.dlr_loss, L.margin_loss, L.compile_formula("Mul(Log(Softmax(p)), q)")]
    together = A.pgd(model, x, y, losses, norm=norm, eps=eps, steps=10, seed=7, chunk=97)
    for k, loss in enumerate(losses):
        alone = A.pgd(model, x, y, loss, norm=norm, eps=eps, steps=10, seed=7)
        assert torch.equal(alone.broken[0], together.broken[k]), k
        assert torch.allclose(alone.x_adv[0], together.x_adv[k], atol=1e-5), k


def test_invalid_loss_is_flagged_without_touching_its_neighbours(evalset):
    model, x, y = evalset
    inf_loss = L.compile_formula("Exp(Exp(Exp(Exp(Square(Mul(p, p))))))")  # overflows to Inf
    def nan_grad(p, q):  # finite value, NaN gradient
        return torch.sqrt(p - p)
    def raises(p, q):
        raise RuntimeError("boom")
    losses = [L.cross_entropy, inf_loss, L.dlr_loss, nan_grad, raises]
    r = A.pgd(model, x, y, losses, norm="linf", eps=0.06, steps=10, seed=2)
    assert r.invalid.tolist() == [False, True, False, True, True]
    assert r.risk[1] == 0 and r.risk[3] == 0 and r.risk[4] == 0
    assert "Inf" in r.errors[1] and "gradient" in r.errors[3] and "boom" in r.errors[4]
    for k, loss in [(0, L.cross_entropy), (2, L.dlr_loss)]:
        alone = A.pgd(model, x, y, loss, norm="linf", eps=0.06, steps=10, seed=2)
        assert torch.equal(alone.broken[0], r.broken[k])


def test_constant_loss_is_valid_and_moves_nothing(evalset):
    model, x, y = evalset
    r = A.pgd(model, x, y, L.compile_formula("Add(1, 1)"), norm="linf", eps=0.05, steps=3, random_init=False)
    assert not r.invalid[0] and torch.equal(r.x_adv[0], x)


def test_fgsm_respects_eps_and_lowers_accuracy(evalset):
    model, x, y = evalset
    xa = A.fgsm(model, x, y, eps=0.1)
    assert (xa - x).abs().max() <= 0.1 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    acc = model(xa).argmax(1).eq(y).float().mean()
    assert acc < 0.7  # the evaluation set starts at 100%


def test_clear_errors(evalset):
    model, x, y = evalset
    with pytest.raises(ValueError, match="unknown norm 'l0'; allowed: 'linf', 'l1', 'l2'"):
        A.pgd(model, x, y, norm="l0")
    with pytest.raises(ValueError, match="unknown mode 'all'; allowed: 'any', 'final'"):
        A.pgd(model, x, y, mode="all")
    with pytest.raises(ValueError, match=r"eps=0 under linf is not allowed .* allowed: 0 < eps <= 1"):
        A.pgd(model, x, y, eps=0)
    with pytest.raises(ValueError, match="only .* classified correctly; asked for n=100000"):
        A.evaluation_set(model, x, y, n=100000)


# --------------------------------------------------------------------------------------- diagnostics
def F32(v):
    return float(torch.tensor(v, dtype=torch.float32))


def test_diagnostics_fire_on_the_faults_they_name(trained_mlp, mnist_small):
    _, _, xt, yt = mnist_small
    x, y = xt[:64], yt[:64]
    clean = A.pgd(trained_mlp, x, y, [L.cross_entropy], eps=0.1, steps=3).diagnostics
    assert clean.warnings() == [] and clean.rows == 64 and clean.max_perturbation[0] <= F32(0.1)

    constant = A.pgd(trained_mlp, x, y, [L.compile_formula("Sum(q)")], eps=0.1, steps=3, mode="final").diagnostics
    assert constant.zero_gradient_rows == [64] and "exactly zero gradient" in constant.warnings()[0]

    probs = torch.nn.Sequential(trained_mlp, torch.nn.Softmax(dim=1))
    assert "probabilities" in A.pgd(probs, x, y, eps=0.1, steps=2).diagnostics.warnings()[0]

    class Noisy(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x) + 0.01 * torch.randn(len(x), 10)

    assert "differ" in A.pgd(Noisy(trained_mlp), x, y, eps=0.1, steps=2).diagnostics.warnings()[0]


@pytest.mark.parametrize("norm,eps", [("l1", 1e-4), ("l2", 1e-5), ("linf", 1e-6), ("l1", 3.0)])
def test_returned_points_never_leave_the_ball(norm, eps, trained_mlp, mnist_small):
    """x + delta is rounded to float32; the returned points are nudged back inside."""
    _, _, xt, yt = mnist_small
    res = A.pgd(trained_mlp, xt[:100], yt[:100], [L.cross_entropy, L.margin_loss], norm=norm, eps=eps, steps=5,
                mode="final")
    d = res.x_adv - xt[:100].unsqueeze(0)
    assert (A.lp_norm(d.reshape(-1, 784), norm) <= eps).all()
    assert (res.x_adv >= 0).all() and (res.x_adv <= 1).all()
    assert max(res.diagnostics.max_perturbation) <= F32(eps)  # eps as the float32 the points are made of


def test_eps_beyond_the_box_is_refused_in_one_line():
    """eps = 50 under l_inf used to pass and report R = 1; each norm has a largest meaningful radius."""
    from lossbook.config import largest_eps
    from lossbook.core.attacks import check_eps, pgd
    from lossbook.search.settings import make_setting

    assert largest_eps("linf", 784) == 1.0 and largest_eps("l2", 784) == 28.0 and largest_eps("l1", 784) == 784.0
    with pytest.raises(ValueError, match=r"^eps=50 under linf is not allowed for inputs in \[0, 1\]\^784; allowed: 0 < eps <= 1 "):
        make_setting("mnist", "net1", "st", "linf", 50)
    with pytest.raises(ValueError, match=r"allowed: 0 < eps <= 55.4256"):
        make_setting("cifar10", "net1", "st", "l2", 60)
    with pytest.raises(ValueError, match=r"eps=-0.5 under l1 .* allowed: 0 < eps <= 4"):
        check_eps("l1", -0.5, 4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="eps=2 under linf"):
        pgd(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), eps=2.0)
    assert make_setting("mnist", "net1", "st", "l1", 784).eps == 784.0
