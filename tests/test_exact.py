"""Exact verification by MILP against answers known otherwise: brute force on a fine grid (2-D ReLU
nets) and the toy's closed form (a linear net); counterexamples are real; proofs are never broken."""
import re

import numpy as np
import pytest
import torch
from torch import nn

from lossbook.chapters import toy_inconsistency as toy
from lossbook.core import attacks as A
from lossbook.core import exact as X
from lossbook.core import losses as L

pytest.importorskip("highspy")


def _relu_net(seed=0, widths=(12, 12)):
    """A small ReLU net fitted to a 3-class pattern on the unit square (boundaries inside it)."""
    torch.manual_seed(seed)
    mods, w = [nn.Flatten()], 2
    for h in widths:
        mods += [nn.Linear(w, h), nn.ReLU()]
        w = h
    mods.append(nn.Linear(w, 3))
    model = nn.Sequential(*mods)
    u = torch.rand(600, 2)
    y = ((u[:, 0] > 0.5).long() + (u[:, 1] > 0.3 + 0.4 * u[:, 0]).long()) % 3
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(u), y).backward()
        opt.step()
    return model.eval()


def _norm(d, norm):
    return {"linf": np.abs(d).max(-1), "l1": np.abs(d).sum(-1), "l2": np.linalg.norm(d, axis=-1)}[norm]


def _grid_breakable(model, x, y, norm, eps, n=241):
    a = np.linspace(max(0, x[0] - eps), min(1, x[0] + eps), n)
    b = np.linspace(max(0, x[1] - eps), min(1, x[1] + eps), n)
    pts = np.stack(np.meshgrid(a, b), -1).reshape(-1, 2)
    d = pts - x
    keep = _norm(d, norm) <= eps
    with torch.no_grad():
        pred = model(torch.tensor(pts[keep], dtype=torch.float32)).argmax(1).numpy()
    return bool((pred != y).any())


@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("l1", 0.1), ("l2", 0.08)])
def test_two_dimensional_relu_net_against_brute_force(norm, eps):
    model = _relu_net()
    layers = X.relu_layers(model)
    rng = np.random.default_rng(0)
    xs = rng.random((40, 2)).astype(np.float32).astype(float)  # float32 points, as images are
    with torch.no_grad():
        ys = model(torch.tensor(xs, dtype=torch.float32)).argmax(1).numpy()
    agree = 0
    for i, (x, y) in enumerate(zip(xs, ys)):
        r = X.verify_image(model, layers, x, int(y), norm, eps, (2,), index=i, time_limit=30)
        grid = _grid_breakable(model, x, int(y), norm, eps)
        assert r.status in ("robust", "vulnerable")
        if grid:
            assert r.status == "vulnerable", f"point {i}: the grid breaks it, the MILP says robust"
        if r.status == "vulnerable":
            w = r.witness.astype(float)
            assert _norm(w - x, norm) <= eps and 0 <= w.min() <= w.max() <= 1 and r.predicted != y
            assert r.witness_margin >= 0
        agree += (r.status == "vulnerable") == grid
    assert agree >= 36  # disagreements only where the breaking region is finer than the grid
    assert 5 <= sum(_grid_breakable(model, x, int(y), norm, eps) for x, y in zip(xs, ys)) <= 35  # not vacuous


@pytest.mark.parametrize("norm", ["linf", "l1", "l2"])
def test_linear_toy_against_its_closed_form(norm):
    Wt = toy.W.double()
    lin = nn.Sequential(nn.Linear(2, 3))  # logits W (2u - 1): the toy on the unit square
    with torch.no_grad():
        lin[0].weight.copy_(2 * Wt)
        lin[0].bias.copy_(-Wt.sum(1))
    layers = X.relu_layers(lin)
    x, y = toy.sample(60, seed=3)
    eps = 0.3  # in the toy's [-1, 1] units; half of it on the unit square
    for xi, yi in zip(x, y):
        r = X.verify_image(lin, layers, toy.to_unit(xi).double().numpy(), int(yi), norm, eps / 2, (2,))
        assert (r.status == "vulnerable") == toy.exactly_breakable(xi.double().numpy(), int(yi), eps, norm)


@pytest.mark.parametrize("norm,eps", [("linf", 0.08), ("l2", 0.1)])
def test_proven_robust_points_are_never_broken_by_an_attack(norm, eps):
    model = _relu_net(seed=0)
    layers = X.relu_layers(model)
    rng = np.random.default_rng(1)
    xs = rng.random((30, 2)).astype(np.float32).astype(float)
    with torch.no_grad():
        ys = model(torch.tensor(xs, dtype=torch.float32)).argmax(1)
    res = [X.verify_image(model, layers, x, int(y), norm, eps, (2,)) for x, y in zip(xs, ys)]
    robust = torch.tensor([r.status == "robust" for r in res])
    assert robust.any() and (~robust).any()
    att = A.pgd(model, torch.tensor(xs, dtype=torch.float32), ys, [L.cross_entropy, L.margin_loss, L.dlr_loss],
                norm=norm, eps=eps, steps=100)
    assert not (att.broken.any(0) & robust).any()
    lo, hi = X.exact_risk(res)
    assert lo == hi == pytest.approx(float((~robust).double().mean()))


def test_only_relu_mlps_are_accepted():
    with pytest.raises(ValueError, match="needs a ReLU MLP .* found Conv2d where a Linear was expected"):
        X.relu_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(2, 3)))
    with pytest.raises(ValueError, match="found Sigmoid where a ReLU was expected"):
        X.relu_layers(nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 3)))


def test_a_set_resumes_where_it_stopped_and_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    model = _relu_net(seed=0)
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.random((12, 2)), dtype=torch.float32)
    with torch.no_grad():
        y = model(x).argmax(1)
    request = {"what": "test", "eps": 0.08}
    straight = X.verify_set(model, x, y, "linf", 0.08, tmp_path / "a.json", request, progress=False)
    calls = {"n": 0}
    real = X.verify_image

    def dies_after_five(*a, **k):
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(X, "verify_image", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        X.verify_set(model, x, y, "linf", 0.08, tmp_path / "b.json", request, progress=False)
    monkeypatch.setattr(X, "verify_image", real)
    from lossbook import store

    assert len(store.load(tmp_path / "b.json", request)) == 5
    resumed = X.verify_set(model, x, y, "linf", 0.08, tmp_path / "b.json", request, progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(resumed) == strip(straight)
    import pandas as pd

    from lossbook.chapters.exact_risk import exact_summary

    s = exact_summary(pd.DataFrame(resumed))
    assert s["images"] == 12 and s["robust"] + s["vulnerable"] + s["unknown"] == 12 and s["R_low"] <= s["R_high"]


def _tiny_cnn(seed=0):
    """Conv(1->3, 3x3 'same') + BatchNorm + ReLU + MaxPool(2) + global average pooling + Linear, on 2x2 images:
    every layer kind of the paper's NET-1, in 4 input dimensions (small enough for a grid)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.3, 0.3)
    return model.eval()


def test_a_cnn_becomes_ops_that_compute_the_same_logits():
    model = _tiny_cnn()
    ops = X.network_ops(model, (1, 2, 2))
    assert [type(o).__name__ for o in ops] == ["Affine", "Relu", "MaxPool", "Affine"]
    x = torch.rand(20, 1, 2, 2)
    with torch.no_grad():
        f32 = model(x).double().numpy()
    from lossbook.core import certify

    f64 = np.stack([certify.logits_enclosure(ops, xi.reshape(-1).double().numpy())[0] for xi in x])
    assert np.abs(f64 - f32).max() < 1e-5
    with pytest.raises(ValueError, match="handles 2x2 max-pooling with stride 2 only"):
        X.network_ops(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3), nn.Flatten(),
                                    nn.Linear(2, 3)), (1, 6, 6))


@pytest.mark.parametrize("norm,eps,backward", [("linf", 0.1, False), ("l1", 0.2, False), ("linf", 0.1, True)])
def test_a_cnn_with_batchnorm_and_max_pooling_against_brute_force(norm, eps, backward, monkeypatch):
    monkeypatch.setattr(X, "BACKWARD_FOR_MAXPOOL", backward)  # with back-substituted bounds, the same verdicts
    model = _tiny_cnn(seed=2)  # a seed whose boundary crosses the unit box (27 images of class 0, 3 of class 2)
    ops = X.network_ops(model, (1, 2, 2))
    rng = np.random.default_rng(3)
    xs = rng.random((30, 4)).astype(np.float32).astype(float)
    with torch.no_grad():
        ys = model(torch.tensor(xs, dtype=torch.float32).view(-1, 1, 2, 2)).argmax(1).numpy()
    grid = np.linspace(-1, 1, 17)
    offsets = np.stack(np.meshgrid(grid, grid, grid, grid), -1).reshape(-1, 4)
    agree, broken = 0, 0
    for i, (x, y) in enumerate(zip(xs, ys)):
        r = X.verify_image(model, ops, x, int(y), norm, eps, index=i, time_limit=30)
        pts = np.clip(x + eps * offsets, 0, 1)
        pts = pts[_norm(pts - x, norm) <= eps]
        with torch.no_grad():
            found = bool((model(torch.tensor(pts, dtype=torch.float32).view(-1, 1, 2, 2)).argmax(1).numpy() != y).any())
        assert r.status in ("robust", "vulnerable")
        if found:
            assert r.status == "vulnerable", f"point {i}: the grid breaks it, the verifier says robust"
        agree += (r.status == "vulnerable") == found
        broken += found
    assert agree >= 27 and 3 <= broken <= 27  # disagreements only where the region is finer than the grid


def test_the_l2_first_layer_bound_over_ball_and_box_is_valid_and_tight():
    rng = np.random.default_rng(7)
    W = rng.normal(size=(6, 20))
    x = rng.random(20).astype(np.float32).astype(float)
    x[:8] = 0.0  # pixels at 0 can only go up: the box cuts the ball
    eps = 0.8
    from lossbook.core.certify import ball_box_max

    bound, _ = ball_box_max(W, x, eps)
    for _ in range(2000):  # random points of the ball and the box never exceed it
        d = rng.normal(size=20)
        d *= eps * rng.random() ** (1 / 20) / np.linalg.norm(d)
        d = np.clip(d, -x, 1 - x)
        assert np.all(W @ d <= bound + 1e-12)
    # tight: the box maximiser at the bisection's multiplier, pulled into the ball, comes within 1e-6
    t = np.ones(6)
    for j in range(6):
        lo_t, hi_t = 0.0, 100.0
        for _ in range(200):
            mid = (lo_t + hi_t) / 2
            lo_t, hi_t = (mid, hi_t) if np.linalg.norm(np.clip(mid * W[j], -x, 1 - x)) < eps else (lo_t, mid)
        t[j] = lo_t
    reached = np.array([W[j] @ np.clip(t[j] * W[j], -x, 1 - x) for j in range(6)])
    assert np.all(bound - reached < 1e-6)
    lo, hi = X.first_layer_bounds(W, np.zeros(6), x, "l2", eps)
    ball_only = W @ x + eps * np.linalg.norm(W, axis=1)
    assert np.all(hi <= ball_only + 1e-9) and np.any(hi < ball_only - 0.1)  # tighter than the ball's bound


def test_a_solver_point_outside_the_bounds_stops_the_study():
    """Any point the solver returns is checked against the bounds the MILP was built on: a feasible point whose
    certified value leaves them means the bounds were unsound, and the study stops (UnsoundBounds)."""
    from lossbook.core import certify

    ops = certify.as_ops(X.relu_layers(_relu_net()))
    x = np.array([0.4, 0.6])
    bounds = X.tightened_bounds(ops, x, "linf", 0.05, lp=False)
    X._check_point(ops, bounds, x)  # the image itself lies inside its own bounds: nothing raised
    (l0, u0) = bounds[0]
    z = ops[0].W @ x + ops[0].b
    j = int(np.argmax(z - l0))
    shrunk = [(np.where(np.arange(len(l0)) == j, z[j] + 1e-3, l0), u0)] + bounds[1:]  # excludes the image's value
    with pytest.raises(X.UnsoundBounds, match=f"op 0 unit {j}: a feasible point's value"):
        X._check_point(ops, shrunk, x)


def test_the_tolerance_slack_of_a_linear_net_is_its_closed_form():
    """One affine op under l_inf: each input column may be off by 2 tau_f (bounds and the ball row), each
    output row by |W| times that plus 2 tau_f; two logits and the threshold row give 2 * max + tau_f."""
    from lossbook.core import certify

    W, b = np.array([[1.0, -2.0], [0.5, 0.25]]), np.zeros(2)
    ops = [certify.Affine(W, b)]
    tau = max(X.SOLVER_OPTIONS["primal_feasibility_tolerance"], X.SOLVER_OPTIONS["mip_feasibility_tolerance"])
    expected = 2 * (np.abs(W) @ np.full(2, 2 * tau) + 2 * tau).max() + tau
    assert X.tolerance_slack(ops, [None], "linf", 0.1) == pytest.approx(expected, rel=1e-12)
    # a ReLU adds the integrality slack times its big-M: a wider bound, a larger slack
    net = certify.as_ops(X.relu_layers(_relu_net()))
    narrow = X.tightened_bounds(net, np.array([0.4, 0.6]), "linf", 0.01, lp=False)
    wide = X.tightened_bounds(net, np.array([0.4, 0.6]), "linf", 0.2, lp=False)
    assert 0 < X.tolerance_slack(net, narrow, "linf", 0.01) < X.tolerance_slack(net, wide, "linf", 0.2)


def _two_block_cnn(seed=0):
    """NET-1's shape in miniature on 8x8 images: two conv + BatchNorm + ReLU + 2x2 max-pool blocks, a last conv,
    global average pooling and a linear layer."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    with torch.no_grad():
        for bn in (model[1], model[5]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.3, 0.3)
    return model.eval()


@pytest.mark.parametrize("eps", [0.02, 0.1])
def test_back_substituted_bounds_contain_every_sampled_point_and_are_tighter(eps):
    from lossbook.core import certify

    ops = X.network_ops(_two_block_cnn(), (1, 8, 8))
    rng = np.random.default_rng(0)
    x = rng.random(64)
    interval = X.tightened_bounds(ops, x, "linf", eps, lp=False)
    crown = X.tightened_bounds(ops, x, "linf", eps, lp=False, backward=True)
    lo_in, hi_in = X.input_box(x, "linf", eps)
    pts = np.concatenate([lo_in + (hi_in - lo_in) * rng.random((1500, 64)),  # inside, and at random vertices
                          np.where(rng.random((500, 64)) < 0.5, lo_in, hi_in)])
    for p in pts:
        for k, (value, _) in enumerate(certify.enclosures(ops, p)):
            lo, hi = crown[k]
            assert np.all(lo <= value) and np.all(value <= hi), f"op {k}: a feasible point leaves the bounds"
    affine = [k for k, op in enumerate(ops) if isinstance(op, certify.Affine)]
    widths = {k: (float((interval[k][1] - interval[k][0]).sum()), float((crown[k][1] - crown[k][0]).sum()))
              for k in affine}
    assert all(after <= before for before, after in widths.values())
    assert widths[affine[-1]][1] < 0.9 * widths[affine[-1]][0]  # the logits: much tighter than intervals


def test_back_substitution_is_part_of_the_settings_only_where_it_is_used(monkeypatch):
    from lossbook.core import certify

    cnn, mlp = X.network_ops(_tiny_cnn(), (1, 2, 2)), certify.as_ops(X.relu_layers(_relu_net()))
    assert X.BACKWARD_FOR_MAXPOOL  # on: the committed NET-1 studies were made with it
    monkeypatch.setattr(X, "BACKWARD_FOR_MAXPOOL", False)
    assert not X.uses_backward(cnn) and "backward_bounds" not in X.settings("linf", X.uses_backward(cnn))
    assert not X.uses_backward(_tiny_cnn())
    monkeypatch.setattr(X, "BACKWARD_FOR_MAXPOOL", True)
    assert X.uses_backward(cnn) and not X.uses_backward(mlp)  # MLPs keep their LP-tightened bounds
    assert X.uses_backward(_tiny_cnn()) and not X.uses_backward(_relu_net())  # read from the PyTorch model alike
    assert "backward_bounds" in X.settings("linf", X.uses_backward(cnn))


def test_back_substituted_margins_bound_every_sampled_margin_and_beat_the_logit_bounds():
    from lossbook.core import certify

    ops = X.network_ops(_two_block_cnn(seed=1), (1, 8, 8))
    rng = np.random.default_rng(2)
    x, eps = rng.random(64), 0.05
    y = int(np.argmax(certify.logits_enclosure(ops, x)[0]))
    bounds, margins = X.bounds_and_margins(ops, x, y, "linf", eps, lp=False, backward=True)
    lo_in, hi_in = X.input_box(x, "linf", eps)
    for p in np.concatenate([lo_in + (hi_in - lo_in) * rng.random((1000, 64)),
                             np.where(rng.random((300, 64)) < 0.5, lo_in, hi_in)]):
        f = certify.logits_enclosure(ops, p)[0]
        assert np.all(np.delete(f - f[y] <= margins, y))
    l_out, u_out = bounds[-1]
    assert np.all(np.delete(margins < u_out - l_out[y], y))  # both ends move together: a tighter bound


def _small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(6, 3))
    for m in net:
        if isinstance(m, nn.BatchNorm2d):  # statistics far from the identity, so that BatchNorm's terms matter
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.1, 2), m.weight.data.uniform_(0.5, 2)
    return net.eval()


def test_the_float32_error_bound_is_its_closed_form_on_one_layer():
    """One Linear with W = [1, 1], b = -1 on the box [0, 1]^2: |W| |a| + |b| is at most 3, so the bound is
    1.01 * gamma_3 * 3, with u = 2^-24 + 2^-53 and gamma_3 = 3u / (1 - 3u) = 1.7881397e-7: 5.418063e-7. A
    BatchNorm after it (alpha = 3 / 2, mean 0.5, beta 0.25) adds alpha times that and gamma_8 = 4.7683739e-7
    times its own terms alpha (1 + 1.8e-7 + 0.5) + 0.25 = 2.5000003: 1.01 (8.127095e-7 + 1.1920936e-6) = 2.016724e-6."""
    lin = nn.Linear(2, 1)
    lin.weight.data[:] = torch.tensor([[1.0, 1.0]])
    lin.bias.data[:] = -1.0
    (e,) = X.float32_logit_error(nn.Sequential(lin).eval(), np.zeros(2), np.ones(2), (2,))
    assert e == pytest.approx(5.418063e-7, rel=1e-6)
    bn = nn.BatchNorm1d(1).eval()
    bn.running_mean[:], bn.running_var[:], bn.weight.data[:], bn.bias.data[:] = 0.5, 4.0 - bn.eps, 3.0, 0.25
    (e2,) = X.float32_logit_error(nn.Sequential(lin, bn).eval(), np.zeros(2), np.ones(2), (2,))
    assert e2 == pytest.approx(2.016724e-6, rel=1e-6)


@pytest.mark.parametrize("module, said", [
    (nn.Tanh(), "cannot bound Tanh; allowed: Linear, Conv2d (zero padding)"),
    (nn.AdaptiveAvgPool2d(2), "cannot bound AdaptiveAvgPool2d(output_size=2); allowed:"),
    (nn.MaxPool2d(2, 2, ceil_mode=True), "cannot bound MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, "
                                         "ceil_mode=True); allowed:"),
    (nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), "cannot bound Conv2d with padding_mode='reflect'"),
    (nn.BatchNorm2d(1, affine=False), "affine=False, bias=False, track_running_stats=True) without affine parameters"),
])
def test_the_float32_error_bound_refuses_in_one_line_what_it_cannot_bound(module, said):
    net = nn.Sequential(nn.Conv2d(1, 1, 1), module).eval()
    with pytest.raises(ValueError, match=re.escape(said)) as err:
        X.float32_logit_error(net, np.zeros(16), np.ones(16), (1, 4, 4))
    assert "\n" not in str(err.value) and "a float32 model in eval mode" in str(err.value)


def test_the_float32_error_bound_refuses_other_dtypes_training_mode_and_reduced_precision():
    lin = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="is for a float32 model; found parameters of torch.float64"):
        X.float32_logit_error(nn.Sequential(nn.Linear(2, 1).double()).eval(), np.zeros(2), np.ones(2), (2,))
    with pytest.raises(ValueError, match=re.escape("is for a model in eval mode (BatchNorm's running statistics")):
        X.float32_logit_error(nn.Sequential(lin).train(), np.zeros(2), np.ones(2), (2,))
    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with pytest.raises(ValueError, match="float32 matmul precision is 'high', allowed: 'highest'"):
            X.float32_logit_error(nn.Sequential(lin).eval(), np.zeros(2), np.ones(2), (2,))
    finally:
        torch.set_float32_matmul_precision(precision)


def test_the_float32_error_bound_covers_every_sampled_float32_evaluation():
    """A CNN with BatchNorm, max-pooling and global average pooling: at random float32 points of a box, the
    float32 logits lie within the bound of the float64 ones (float64 stands in for the exact values: its own
    error is about 1e-16 of theirs). The worst case is loose by orders of magnitude, as expected."""
    net = _small_cnn()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 64)
    lo, hi = np.maximum(x - 0.1, 0), np.minimum(x + 0.1, 1)
    bound = X.float32_logit_error(net, lo, hi, (1, 8, 8))
    p = torch.tensor(rng.uniform(lo, hi, (500, 64)), dtype=torch.float32)
    with torch.no_grad():
        f32 = net(p.view(-1, 1, 8, 8)).double()
        f64 = net.double()(p.double().view(-1, 1, 8, 8))
    seen = (f32 - f64).abs().max(0).values.numpy()
    assert (seen <= bound).all() and (seen > 0).any()
    assert (bound < 1e-3).all()  # not vacuous: a thousandth on logits of order one


def test_a_robust_verdict_carries_to_float32_where_its_proven_margin_leaves_room_for_the_rounding():
    """A robust row proves every margin <= -delta; bounds derived again may prove less than that. The float32
    model is robust where the lower of the two, plus the float32 errors, stays below 0."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = np.random.default_rng(1).uniform(0, 1, 64)
    with torch.no_grad():
        y = int(net(torch.tensor(x, dtype=torch.float32).view(1, 64)).argmax())
    ops = X.network_ops(net, (64,))

    def need(eps):
        e = X.float32_logit_error(net, *X.input_box(x, "linf", eps), (64,))
        return max(e[c] + e[y] for c in range(3) if c != y)

    # a wide ball: the bounds prove nothing (some margin's bound is above 0), so delta alone must cover the errors
    bounds, margins = X.bounds_and_margins(ops, x, y, "linf", 0.5, False, X.uses_backward(ops))
    assert (np.delete(X.margin_bounds(bounds, y, margins), y) > 0).any()
    rows = [{"index": 0, "status": "robust", "delta": 2 * need(0.5)},
            {"index": 1, "status": "robust", "delta": need(0.5) / 2}, {"index": 2, "status": "vulnerable", "delta": 1.0}]
    images = {0: (x, y), 1: (x, y), 2: (x, y)}
    out = X.float32_carried(net, rows, images, "linf", 0.5, (64,))
    assert (out["robust"], out["carried"]) == (2, 1) and out["delta_classes"] >= 1
    assert out["median_ratio"] == pytest.approx(2.0)  # over the row that does not carry over: its error is 2 delta
    # a tiny ball: the bounds prove margins far below the errors, so even a delta smaller than them carries over
    small = [{"index": 0, "status": "robust", "delta": need(1e-4) / 2}]
    out = X.float32_carried(net, small, images, "linf", 1e-4, (64,))
    assert (out["robust"], out["carried"], out["delta_classes"]) == (1, 1, 0) and np.isnan(out["median_ratio"])


def test_a_sequential_float32_sum_comes_within_a_few_percent_of_the_bound():
    """The bound's gamma_n term is not loose by a factor: summing 1 and 999 terms of 2^-24 left to right in
    float32 rounds every addition back to 1, an error of 999 * 2^-24, against a bound of 1.01 gamma32(1001)
    times the sum; a bound with half that gamma would not cover it."""
    n = 1000
    a = np.full(n, 2.0 ** -24)
    a[0] = 1.0
    lin = nn.Linear(n, 1, bias=False)
    lin.weight.data[:] = 1.0
    (bound,) = X.float32_logit_error(nn.Sequential(lin).eval(), a, a, (n,))
    total = np.float32(0)
    for v in a.astype(np.float32):
        total = np.float32(total + v)
    error = abs(float(total) - a.sum())  # a.sum() in float64 is exact here
    assert total == np.float32(1) and error == (n - 1) * 2.0 ** -24
    assert 0.95 * bound < error <= bound
