"""Landscape planes (Fig. 9): an orthonormal basis holding both perturbations, the grid's origin is the
clean image, paths in plane coordinates, the explanation rule, and saving."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossbook.chapters import landscape as LS
from lossbook.core.losses import HANDCRAFTED, cross_entropy


def _check_plane(d_s, d_c):
    B = LS.plane_basis(d_s, d_c).double()
    assert B.shape == (2, d_s.numel())
    assert torch.allclose(B @ B.T, torch.eye(2, dtype=torch.float64), atol=1e-6)
    for d in (d_s.flatten().double(), d_c.flatten().double()):  # both lie in the plane
        assert torch.allclose((d @ B.T) @ B, d, atol=1e-6)
    return B


def test_plane_basis_is_orthonormal_and_contains_both_perturbations():
    g = torch.Generator().manual_seed(0)
    d_s, d_c = torch.randn(1, 28, 28, generator=g), torch.randn(1, 28, 28, generator=g)
    B = _check_plane(d_s, d_c)
    assert torch.allclose(B[0], d_s.flatten().double() / d_s.norm(), atol=1e-6)  # first axis: the searched loss's
    _check_plane(d_s, -2.5 * d_s)  # parallel perturbations: a second, orthogonal axis is made up
    _check_plane(torch.zeros(50), d_c.flatten()[:50])  # the searched loss did not move
    _check_plane(torch.zeros(50), torch.zeros(50))


def test_plane_basis_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="perturbations differ in size"):
        LS.plane_basis(torch.ones(4), torch.ones(5))


def test_grid_origin_reproduces_the_clean_prediction(trained_mlp, mnist_small):
    _, _, xt, yt = mnist_small
    with torch.no_grad():
        pred = trained_mlp(xt[:20]).argmax(1)
    wrong = int((pred != yt[:20]).nonzero()[0]) if (pred != yt[:20]).any() else None
    B = LS.plane_basis(torch.randn(784), torch.randn(784))
    axis = np.linspace(-2, 2, 9)  # odd: 0 is the middle point
    for i in [0, 1] + ([wrong] if wrong is not None else []):
        correct, ce, ls = LS.evaluate_plane(trained_mlp, xt[i], int(yt[i]), B, axis, axis, HANDCRAFTED["cw"])
        assert correct.shape == ce.shape == ls.shape == (9, 9)
        assert bool(correct[4, 4]) == bool(pred[i] == yt[i])
        with torch.no_grad():
            logits = trained_mlp(xt[i:i + 1])
        q = F.one_hot(yt[i:i + 1], 10).float()
        assert ce[4, 4] == pytest.approx(float(cross_entropy(logits, q).sum()), rel=1e-5)
    # a label the model does not predict: the origin is "misclassified"
    correct, _, _ = LS.evaluate_plane(trained_mlp, xt[0], int((pred[0] + 1) % 10), B, axis, axis, cross_entropy)
    assert not correct[4, 4]


def test_race_paths_lie_in_the_plane_and_end_at_the_final_perturbation(trained_mlp, mnist_small):
    _, _, xt, yt = mnist_small
    x, y = xt[:6], yt[:6]
    r = LS.race(trained_mlp, x, y, HANDCRAFTED["cw"], "linf", 0.1, steps=5, seed=0)
    assert r.deltas.shape == (6, 2, 6, 784) and r.broken.shape == (2, 6)
    assert r.deltas.abs().max() <= 0.1 + 1e-6
    it = LS.landscape(trained_mlp, x[3], int(y[3]), 1234, r, 3, HANDCRAFTED["cw"], resolution=7)
    assert it.path_ce.shape == it.path_searched.shape == (6, 2)
    # the final points of both paths are represented exactly in plane coordinates
    assert np.linalg.norm(it.path_searched[-1]) == pytest.approx(float(r.deltas[-1, 0, 3].norm()), rel=1e-5)
    assert np.linalg.norm(it.path_ce[-1]) == pytest.approx(float(r.deltas[-1, 1, 3].norm()), rel=1e-5)
    assert it.path_searched[-1][1] == pytest.approx(0, abs=1e-5)  # on the searched-loss axis
    assert it.a.max() >= np.abs(it.path_ce).max() and it.correct.shape == (7, 7)
    with pytest.raises(ValueError, match="resolution must be at least 3"):
        LS.landscape(trained_mlp, x[0], int(y[0]), 0, r, 0, cross_entropy, resolution=2)


def test_explanation_rule():
    assert LS.explain(True, False, ce_at_searched_end=3.0, ce_at_ce_end=2.0) == "optimization"
    assert LS.explain(True, False, ce_at_searched_end=1.0, ce_at_ce_end=2.0) == "consistency"
    assert LS.explain(True, True, 3.0, 2.0) is None and LS.explain(False, False, 3.0, 2.0) is None


def test_pick_takes_the_clearest_searched_only_wins():
    r = LS.Race(deltas=torch.zeros(2, 2, 4, 3), broken=torch.tensor([[True, True, True, False], [False, False, True, False]]),
                ce_end=torch.tensor([[5.0, 1.0, 9.0, 9.0], [2.0, 1.5, 1.0, 1.0]]))
    assert r.explanations() == ["optimization", "consistency", None, None]
    assert LS.pick(r) == {"optimization": [0], "consistency": [1]}


def test_save_and_load_round_trip(trained_mlp, mnist_small, tmp_path):
    _, _, xt, yt = mnist_small
    r = LS.race(trained_mlp, xt[:4], yt[:4], HANDCRAFTED["cw"], "l2", 1.0, steps=3)
    items = [LS.landscape(trained_mlp, xt[n], int(yt[n]), n, r, n, HANDCRAFTED["cw"], resolution=5) for n in (0, 2)]
    ex = LS.examples(trained_mlp, xt[:4], yt[:4], np.arange(4), r, n=3)
    assert ex.clean.shape == ex.adv_ce.shape == (3, 1, 28, 28) and len(ex.pred_searched) == 3
    path = tmp_path / "study.npz"
    LS.save(path, items, ex, {"request": {"k": 1}})
    items2, ex2, meta = LS.load(path)
    assert meta["request"] == {"k": 1} and [i.index for i in items2] == [0, 2]
    for a, b in zip(items, items2):
        assert np.array_equal(a.correct, b.correct) and np.allclose(a.path_ce, b.path_ce)
        assert a.explanation == b.explanation
    assert np.array_equal(ex.adv_searched, ex2.adv_searched) and np.array_equal(ex.pred_ce, ex2.pred_ce)


def test_the_conclusion_names_the_dominant_explanation():
    from lossbook.chapters import landscape as LS

    def meta(opt, con, ce_only=1, source="paper-arm:mnist-net1-at-linf"):
        return (None, None, {"request": {"source": source},
                             "outcomes": {"images": 50, "searched only": opt + con, "CE only": ce_only, "both": 10,
                                          "neither": 5, "searched only, optimization": opt,
                                          "searched only, consistency": con}})
    text = LS.conclusion({"mnist": meta(3, 1), "cifar10": meta(0, 2, source="paper-arm:cifar10-net1-at-linf")})
    assert "**optimization** dominates" in text and "**local consistency** dominates" in text
    assert "* **paper-arm:mnist-net1-at-linf on mnist**" in text and "**paper-arm:cifar10-net1-at-linf on cifar10**" in text
    assert "neither explanation is needed" in LS.conclusion({"mnist": meta(0, 0)})
    assert "no conclusion" in LS.conclusion({})


def test_q3_is_counted_once_for_the_chapter_and_the_glance_page():
    from lossbook.chapters import landscape as LS
    from lossbook.publish import glance

    meta = {"outcomes": {"searched only, optimization": 1, "searched only, consistency": 9, "searched only": 10,
                         "images": 50, "CE only": 2}}
    a = LS.q3_answer(meta, "local consistency")
    assert (a["consistency"], a["optimization"], a["verdict"]) == (9, 1, "reproduced") and a["p"] < 0.05
    assert LS.q3_answer(meta, "optimization")["verdict"] == "not reproduced"
    text = LS.takeaway({"cifar10": (None, None, meta)})
    assert "1 by optimization and 9 by local consistency; the paper's answer (local consistency) is reproduced" in text
    for row in LS.glance_rows("cpu"):
        if row["ours"] != glance.NOT_RUN:
            assert row["verdict"] in ("reproduced", "not reproduced", "inconclusive") and "by optimization" in row["ours"]
