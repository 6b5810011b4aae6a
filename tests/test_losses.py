import math

import pytest
import torch

from lossbook.core import losses as L


def test_protected_primitives_at_zero_negative_and_large():
    x = torch.tensor([[0.0, -4.0, 1e30, -1e-30]])
    g = L.GAMMA
    assert L.Inv(x).tolist()[0] == pytest.approx([0.0, -1 / (4 + g), 1e-30, -1 / g], rel=1e-5)
    assert L.Sqrt(x).tolist()[0] == pytest.approx([0.0, -math.sqrt(4 + g), 1e15, -math.sqrt(g)], rel=1e-5)
    assert L.Log(x).tolist()[0] == pytest.approx([0.0, -math.log(4 + g), math.log(1e30), -math.log(g)], rel=1e-5)
    for f in (L.Inv, L.Sqrt, L.Log):  # finite values and gradients at 0
        z = torch.zeros(3, requires_grad=True)
        f(z).sum().backward()
        assert torch.isfinite(z.grad).all()
    assert torch.isinf(L.Exp(torch.tensor(100.0)))  # overflow is left to the attack's validity check


def test_aggregations_keep_class_dimension_and_broadcast():
    p = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 0.0]])
    assert L.Max(p).tolist() == [[3.0], [0.0]]
    assert L.Sum(p).tolist() == [[6.0], [0.0]]
    assert L.Softmax(p).shape == (2, 3) and L.Softmax(p).sum(1).tolist() == pytest.approx([1, 1])
    assert L.Add(p, L.Max(p)).shape == (2, 3)
    assert L.Add(p, 1).tolist()[1] == [1.0, 1.0, 1.0]
    assert L.Exp(1).item() == pytest.approx(math.e)


def test_per_sample_is_eq9_without_the_mean():
    v = torch.arange(6.0).reshape(2, 3)
    assert L.per_sample(v, 2).tolist() == [3.0, 12.0]
    assert L.reduce(v, 2).item() == 7.5
    assert L.per_sample(torch.tensor(2.0), 4).tolist() == [2.0] * 4
    with pytest.raises(ValueError, match="one row per sample"):
        L.per_sample(torch.zeros(3, 2), 2)


def _logits():
    torch.manual_seed(1)
    p = torch.randn(6, 10) * 3
    y = torch.tensor([0, 3, 9, 5, 5, 1])
    return p, torch.nn.functional.one_hot(y, 10).float(), y


def test_cw_margin_and_dlr_match_their_formulas():
    p, q, y = _logits()
    for n in range(6):
        z = p[n].tolist()
        zy = z[y[n]]
        other = max(v for i, v in enumerate(z) if i != y[n])
        top = sorted(z, reverse=True)
        assert L.margin_loss(p, q)[n, 0].item() == pytest.approx(other - zy, abs=1e-5)
        assert L.cw_loss(p, q)[n, 0].item() == pytest.approx(min(other - zy, 0.0), abs=1e-5)
        assert L.dlr_loss(p, q)[n, 0].item() == pytest.approx(-(zy - other) / (top[0] - top[2] + 1e-12), abs=1e-5)
    # DLR is invariant to shifting and scaling the logits
    assert torch.allclose(L.dlr_loss(3 * p + 7, q), L.dlr_loss(p, q), atol=1e-5)
    with pytest.raises(ValueError, match="at least 3 classes"):
        L.dlr_loss(p[:, :2], q[:, :2])


def test_handcrafted_formulas_agree_with_the_torch_versions():
    p, q, _ = _logits()
    p = p / 3  # moderate logits: the protected Log adds gamma to probabilities
    assert torch.allclose(L.compile_formula(L.HANDCRAFTED_FORMULAS["ce"])(p, q), L.cross_entropy(p, q), atol=1e-3)
    assert torch.allclose(L.compile_formula(L.HANDCRAFTED_FORMULAS["margin"])(p, q), L.margin_loss(p, q), atol=1e-4)
    assert torch.allclose(L.compile_formula(L.HANDCRAFTED_FORMULAS["cw"])(p, q), 2 * L.cw_loss(p, q), atol=1e-4)


def test_formula_compile_pretty_and_errors():
    f = L.compile_formula("Mul(Log(Softmax(p)), q)")
    p, q, _ = _logits()
    assert torch.allclose(f(p, q), L.Log(L.Softmax(p)) * q)
    assert L.pretty("Mul(Log(Softmax(p)), q)") == "Log(Softmax(p)) * q"
    assert L.pretty("Add(p, Neg(Mul(q, Add(p, 1))))") == "p - q * (p + 1)"
    assert L.pretty("Neg(Add(p, q))") == "-(p + q)"
    assert L.formula_size("Add(p, Neg(q))") == 4
    assert L.get_loss("dlr") is L.dlr_loss and L.get_loss("Neg(p)")(p, q).shape == p.shape
    with pytest.raises(ValueError, match="unknown operation 'Pow'"):
        L.compile_formula("Pow(p, q)")
    with pytest.raises(ValueError, match="Add takes 2 argument"):
        L.compile_formula("Add(p)")
    with pytest.raises(ValueError, match="constant 2 not allowed"):
        L.compile_formula("Mul(p, 2)")
    with pytest.raises(ValueError, match="unknown input 'os'"):
        L.compile_formula("Abs(os)")
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        L.get_loss("hinge")


def test_a_formula_is_compiled_once():
    """The GP search compiles the same formulas again and again: the compiled loss is cached (a refactor
    once moved the cache onto the checker and left compilation uncached)."""
    f = "Neg(Sum(Mul(q, Log(Softmax(p)))))"
    assert L.compile_formula(f) is L.compile_formula(f)
