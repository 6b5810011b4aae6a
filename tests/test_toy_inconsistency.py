import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from lossbook.chapters import toy_inconsistency as toy
from lossbook.core import losses
from lossbook.core.attacks import lp_norm


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_exact_decision_agrees_with_a_dense_grid(norm):
    rng = np.random.default_rng(1)
    for _ in range(150):
        x = rng.uniform(-1, 1, 2)
        label, eps = int(toy.predict(x)), rng.uniform(0.01, 0.6)
        exact, grid = toy.exactly_breakable(x, label, eps, norm), toy.grid_breakable(x, label, eps, norm)
        if grid:  # a misclassified grid point is a proof: the exact decision must see it
            assert exact, (x, eps)
        elif exact:  # the grid may only miss a region thinner than its spacing
            assert toy.max_margin(x, label, eps, norm) < 2 * (2 * eps / 400), (x, eps)


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_max_linear_equals_a_linear_program(norm):
    rng = np.random.default_rng(2)
    for _ in range(100):
        x, a, eps = rng.uniform(-1, 1, 2), rng.normal(size=2), rng.uniform(0.01, 1.0)
        # variables (d, t): maximize a.d, |d_i| <= t_i, sum t <= eps (l1) or d in the l_inf box; x + d in the square
        if norm == "l1":
            A = [[1, 0, -1, 0], [-1, 0, -1, 0], [0, 1, 0, -1], [0, -1, 0, -1], [0, 0, 1, 1]]
            res = linprog(-np.r_[a, 0, 0], A_ub=A, b_ub=[0, 0, 0, 0, eps],
                          bounds=[(-1 - x[0], 1 - x[0]), (-1 - x[1], 1 - x[1]), (0, None), (0, None)])
        else:
            res = linprog(-a, bounds=[(max(-1 - xi, -eps), min(1 - xi, eps)) for xi in x])
        assert toy.max_linear(a, x, eps, norm) == pytest.approx(-res.fun, abs=1e-7)


def test_max_linear_l2_against_the_boundary():
    rng = np.random.default_rng(3)
    for _ in range(100):
        x, a, eps = rng.uniform(-1, 1, 2), rng.normal(size=2), rng.uniform(0.01, 1.0)
        best_sampled = ((toy.feasible_polygon(x, eps, "l2", arc_points=20000) - x) @ a).max()
        exact = toy.max_linear(a, x, eps, "l2")
        # never below a feasible point; above the sampled boundary only by its angular resolution
        assert best_sampled - 1e-9 <= exact <= best_sampled + 2e-4 * np.linalg.norm(a)


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 0.3), ("l1", 0.3)])
def test_exact_risk_bounds_every_attack(norm, eps):
    rows = toy.risk_table(norm, eps, {**losses.HANDCRAFTED, "odd": losses.compile_formula("Sqrt(Softmax(p))")},
                          n_points=300, seed=4, steps=(10, 50))
    for r in rows:
        assert r["R''"] <= r["R (exact)"] + 1e-9, r
    assert rows[0]["R (exact)"] > 0


def test_pgd_points_on_the_toy_are_in_the_ball():
    from lossbook.core.attacks import pgd

    x, y = toy.sample(100, 0)
    res = pgd(toy.ToyModel(), toy.to_unit(x), y, losses.cw_loss, norm="l1", eps=0.15, steps=10)
    d = toy.from_unit(res.x_adv[0]) - x  # back in the square's units: radius 2 * 0.15
    assert (lp_norm(d, "l1") <= 0.3 + 1e-5).all() and (toy.from_unit(res.x_adv[0]).abs() <= 1 + 1e-6).all()
    broken_exact = toy.exact_risk(x, y, 0.3, "l1")[1]
    assert not (res.broken[0].numpy() & ~broken_exact).any()  # whatever PGD breaks is breakable


@pytest.mark.parametrize("norm,label", [("linf", 0), ("l2", 0), ("l1", 2)])
def test_counterexample_is_real(norm, label):
    c = toy.find_counterexample(norm, label)
    assert toy.predict(c.x0) == label
    # the CE maximizer keeps the label; no point of the ball has a larger CE
    assert toy.predict(c.ce_max) == label
    dense = toy.feasible_polygon(c.x0, c.eps, norm, arc_points=4096) if norm == "l2" else None
    rng = np.random.default_rng(0)
    inside = c.x0 + rng.uniform(-c.eps, c.eps, (20000, 2))
    inside = inside[(np.abs(inside) <= 1).all(1) & (lp_norm(torch.tensor(inside - c.x0), norm).numpy() <= c.eps)]
    assert toy.ce(inside, label).max() <= toy.ce(c.ce_max, label) + 1e-6
    if dense is not None:
        assert toy.ce(dense, label).max() <= toy.ce(c.ce_max, label) + 1e-6
    # and a point of the same ball is misclassified
    assert toy.predict(c.wrong) != label
    assert float(lp_norm(torch.tensor(c.wrong - c.x0)[None], norm)) <= c.eps + 1e-9
    assert np.all(np.abs(c.wrong) <= 1 + 1e-12)


def test_no_l1_counterexample_for_class_0():
    assert toy.find_counterexample("l1", 0) is None


def test_the_chapter_centre_is_parsed_or_refused_in_one_line():
    import numpy as np

    from lossbook.chapters import toy_inconsistency as toy

    assert toy.parse_centre("auto", 0.0) is None
    assert np.allclose(toy.parse_centre("0.2,-0.1", 0.25), [0.2, -0.1])
    for bad in ("2,0", "0.1", "a,b"):
        with pytest.raises(ValueError, match=rf"x0='{bad}' is not allowed; allowed values: 'auto' or 'a,b'"):
            toy.parse_centre(bad, 0.25)
    with pytest.raises(ValueError, match="fig_eps > 0"):
        toy.parse_centre("0.2,0.1", 0.0)
    cases, missing = toy.chapter_cases(["linf", "l1"])  # the searched balls: CE's maximizer stays correct
    assert len(cases) + len(missing) == 2
    for c in cases:
        assert int(toy.predict(c.ce_max)) == c.label != int(toy.predict(c.wrong))


def test_conclusion_is_computed_from_the_table():
    import pandas as pd

    rows = []
    for steps, shift in ((10, 0.01), (100, 0.0)):
        for s, e in (("ce", 0.14), ("cw", 0.06), ("searched", 0.04)):
            rows.append({"norm": "linf", "eps": 0.2, "surrogate": s, "steps": steps, "R (exact)": 0.49,
                         "E = R - R''": e + shift})
        for s, e in (("ce", 0.0), ("cw", 0.03), ("searched", 0.02)):
            rows.append({"norm": "l1", "eps": 0.3, "surrogate": s, "steps": steps, "R (exact)": 0.4, "E = R - R''": e})
    text = toy.conclusion(pd.DataFrame(rows), 1000)
    linf, l1 = text.splitlines()[:2]
    assert "no surrogate closes the gap" in linf and "the tightest is searched (E = 4.0 pp [" in linf
    assert "CE's E is 14.0 pp" in linf and "10.0 pp more" in linf and "by more than 1.0 pp" in linf
    assert l1.startswith("* **l1**") and "ce closes the gap" in l1 and "CE is the tightest (E = 0.0 pp [0.0, 0.4])" in l1


def test_the_takeaway_reads_the_risk_table():
    import pandas as pd

    from lossbook.chapters import toy_inconsistency as toy

    df = pd.DataFrame({"norm": ["linf"] * 4, "eps": 0.3, "R (exact)": 0.5, "steps": [10, 10, 100, 100],
                       "surrogate": ["ce", "searched"] * 2, "E = R - R''": [0.2, 0.1, 0.14, 0.04]})
    assert toy.takeaway(df) == ("With PGD-100, linf (exact R 0.500): CE misses 14.0 pp, the tightest surrogate, "
                                "searched, 4.0 pp. Table 1.2 has every surrogate with its interval.")


def test_the_sliders_draw_once_outside_any_widget(monkeypatch):
    """A static run must not wait on a widget: the first drawing goes to the cell's output."""
    from lossbook.chapters import toy_inconsistency as toy

    drawn, shown = [], []
    monkeypatch.setattr(toy, "draw_ball", lambda **kw: drawn.append(kw))
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    toy.sliders()
    assert drawn == [{}] and len(shown) == 2  # the controls and the (empty) area slider moves redraw into
    controls = shown[0].children
    controls[2].value = 0.3  # a slider move redraws with every control's value
    assert drawn[-1] == {"a": -0.9, "b": 0.0, "radius": 0.3, "ball": "linf"}
