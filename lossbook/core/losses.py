"""Surrogate losses: the AutoLoss-AR primitives (Table I), handcrafted baselines, formulas.

A loss is any callable ``loss(p, q) -> Tensor`` with ``p`` the logits (N, C) and ``q`` the one-hot
label (N, C). It returns per-class values (N, C), per-sample values (N, 1) or (N,), or a constant;
:func:`per_sample` sums over the class (or singleton) dimension, the paper's Eq. 9 without the
batch mean. Attacks *maximize* a loss.

Formulas are strings in prefix form over the primitives, the inputs ``p``, ``q`` and the
constants ``0`` and ``1`` (e.g. ``"Neg(Sum(Mul(q, Log(Softmax(p)))))"``); this is also how DEAP
prints a tree. :func:`compile_formula` turns one into a loss, :func:`pretty` into readable infix.
"""
from __future__ import annotations

import ast
import functools
from typing import Callable

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: gamma of the protected primitives (Inv, Sqrt, Log): keeps them finite at 0.
GAMMA = 1e-6


def _t(x, ref=None) -> torch.Tensor:
    """Constants (Python numbers) become float32 tensors, so every primitive accepts them."""
    if torch.is_tensor(x):
        return x
    return torch.tensor(float(x), dtype=torch.float32, device=None if ref is None else ref.device)


# ---- Table I ------------------------------------------------------------------------------------
def Add(x, y):
    """x + y (broadcasting (N, C) with (N, 1))."""
    return _t(x) + _t(y)


def Mul(x, y):
    """x * y."""
    return _t(x) * _t(y)


def Neg(x):
    """-x."""
    return -_t(x)


def Abs(x):
    """|x|."""
    return _t(x).abs()


def Inv(x):
    """Protected inverse sign(x) / (|x| + gamma); 0 at 0."""
    x = _t(x)
    return torch.sign(x) / (x.abs() + GAMMA)


def Sqrt(x):
    """Protected root sign(x) * sqrt(|x| + gamma); odd, 0 at 0."""
    x = _t(x)
    return torch.sign(x) * torch.sqrt(x.abs() + GAMMA)


def Square(x):
    """x ** 2."""
    return _t(x).square()


def Exp(x):
    """e ** x (may overflow to Inf: such a loss is reported invalid by the attacks)."""
    return torch.exp(_t(x))


def Log(x):
    """Protected logarithm sign(x) * log(|x| + gamma); odd, 0 at 0."""
    x = _t(x)
    return torch.sign(x) * torch.log(x.abs() + GAMMA)


def _classwise(x: torch.Tensor) -> torch.Tensor:
    # aggregations act on the class dimension; a constant is a single "class"
    return x.reshape(1, 1) if x.dim() == 0 else x


def Max(x):
    """Maximum over the class dimension, kept: (N, C) -> (N, 1)."""
    return _classwise(_t(x)).amax(dim=-1, keepdim=True)


def Sum(x):
    """Sum over the class dimension, kept: (N, C) -> (N, 1)."""
    return _classwise(_t(x)).sum(dim=-1, keepdim=True)


def Softmax(x):
    """Softmax over the class dimension (shape kept)."""
    return torch.softmax(_classwise(_t(x)), dim=-1)


#: The primitive set of Table I: name -> (function, arity).
PRIMITIVES: dict[str, tuple[Callable, int]] = {
    "Add": (Add, 2), "Mul": (Mul, 2), "Neg": (Neg, 1), "Abs": (Abs, 1), "Inv": (Inv, 1), "Sqrt": (Sqrt, 1),
    "Square": (Square, 1), "Exp": (Exp, 1), "Log": (Log, 1), "Max": (Max, 1), "Sum": (Sum, 1),
    "Softmax": (Softmax, 1),
}
TERMINALS = ("p", "q", "0", "1")


# ---- Eq. 9 ---------------------------------------------------------------------------------------
def per_sample(values: torch.Tensor, n: int) -> torch.Tensor:
    """Per-sample loss (N,) from a loss output: sum over the class or singleton dimension.

    A constant output (a tree without ``p``) is broadcast to every sample.
    """
    if values.numel() == 1 and (values.dim() == 0 or values.shape[0] != n or n == 1):
        return values.reshape(()).expand(n)
    if values.shape[0] != n:
        raise ValueError(f"a loss must return one row per sample (N={n}), got shape {tuple(values.shape)}")
    return values.reshape(n, -1).sum(dim=1)


def reduce(values: torch.Tensor, n: int) -> torch.Tensor:
    """The paper's Eq. 9: sum over classes, mean over the batch."""
    return per_sample(values, n).mean()


# ---- handcrafted losses ---------------------------------------------------------------------------
def _true_and_best_other(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z_y = (p * q).sum(dim=1)
    z_other = p.masked_fill(q.bool(), float("-inf")).amax(dim=1)
    return z_y, z_other


def cross_entropy(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Cross-entropy -sum_c q_c log softmax(p)_c, per sample (N, 1); the paper's baseline."""
    return -(q * F.log_softmax(p, dim=1)).sum(dim=1, keepdim=True)


def margin_loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Margin logit loss max_{i != y} z_i - z_y (Uesato et al. 2018); > 0 iff misclassified."""
    z_y, z_other = _true_and_best_other(p, q)
    return (z_other - z_y).unsqueeze(1)


def cw_loss(p: torch.Tensor, q: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """Carlini & Wagner's untargeted loss, to maximize: min(max_{i != y} z_i - z_y, kappa)."""
    return margin_loss(p, q).clamp(max=kappa)


def dlr_loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """AutoAttack's difference-of-logits-ratio loss -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12).

    Needs at least 3 classes; invariant to shifting and scaling the logits.
    """
    if p.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {p.shape[1]}")
    z_y, z_other = _true_and_best_other(p, q)
    top = p.sort(dim=1, descending=True).values
    return (-(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)).unsqueeze(1)


#: The handcrafted references of the book, by name.
HANDCRAFTED: dict[str, Loss] = {"ce": cross_entropy, "cw": cw_loss, "margin": margin_loss, "dlr": dlr_loss}

#: The same losses written in Table I's primitives where that is possible. A large constant is
#: built as Exp(Exp(Exp(1))) = e**(e**e) ~ 3.8e6; "min(m, 0)" as (m - |m|)/2, scaled by 2 (the
#: attacks' steps are scale-free). DLR needs the third-largest logit, which no primitive gives.
_MARGIN = "Add(Max(Add(p, Neg(Mul(q, Exp(Exp(Exp(1))))))), Neg(Sum(Mul(q, p))))"
HANDCRAFTED_FORMULAS: dict[str, str] = {
    "ce": "Neg(Sum(Mul(q, Log(Softmax(p)))))",
    "margin": _MARGIN,
    "cw": f"Add({_MARGIN}, Neg(Abs({_MARGIN})))",
}


#: The losses the AutoLoss-AR authors released (``bs1``-``bs6`` in ``losses.py`` of
#: github.com/xpf/Tightening-Approximation-Error, searched on RobustBench CIFAR-10 models), transcribed
#: into this module's primitives. Their constants 2, 5, 6 and 10 lie outside Table I's 0 and 1; their
#: protected operations add 1e-12 where ours add GAMMA, and bs1 divides where we use Inv (the divisor,
#: a softmax maximum, is at least 1/C, so the difference is below 1e-5 relative).
RELEASED_FORMULAS: dict[str, str] = {
    "bs1": "Exp(Mul(10, Mul(Softmax(p), Inv(Max(Softmax(p))))))",
    "bs2": "Exp(Neg(Max(Softmax(Add(p, Mul(2, Softmax(Mul(5, p))))))))",
    "bs3": "Mul(Softmax(Neg(Softmax(Mul(Mul(Exp(p), 2), p)))), Add(Softmax(Mul(2, p)), Mul(2, q)))",
    "bs4": "Square(Add(Softmax(Add(Add(Softmax(Mul(2, p)), Neg(q)), p)), Neg(q)))",
    "bs5": "Exp(Neg(Max(Add(Softmax(Add(Exp(Add(Softmax(Add(Exp(p), p)), 1)), p)), 1))))",
    "bs6": "Inv(Sum(Mul(Softmax(Sqrt(Mul(Mul(Mul(6, p), p), p))), Add(1, q))))",
}


def released_loss(name: str) -> Loss:
    """One of the authors' released losses by name (``bs1``..``bs6``)."""
    if name not in RELEASED_FORMULAS:
        raise ValueError(f"unknown released loss {name!r}; allowed: {', '.join(RELEASED_FORMULAS)}")
    return compile_formula(RELEASED_FORMULAS[name], any_constant=True)


def get_loss(name: str) -> Loss:
    """A handcrafted loss by name (``ce``, ``cw``, ``margin``, ``dlr``) or a formula string."""
    if name in HANDCRAFTED:
        return HANDCRAFTED[name]
    if "(" in name or name in TERMINALS:
        return compile_formula(name)
    raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(HANDCRAFTED)} or a formula over "
                     f"{', '.join(PRIMITIVES)} and {', '.join(TERMINALS)}")


# ---- formulas -------------------------------------------------------------------------------------
def _check_node(node: ast.AST, formula: str, any_constant: bool = False) -> None:
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in PRIMITIVES or node.keywords:
            raise ValueError(f"formula {formula!r}: unknown operation {ast.unparse(node.func)!r}; "
                             f"allowed: {', '.join(PRIMITIVES)}")
        arity = PRIMITIVES[node.func.id][1]
        if len(node.args) != arity:
            raise ValueError(f"formula {formula!r}: {node.func.id} takes {arity} argument(s), got {len(node.args)}")
        for a in node.args:
            _check_node(a, formula, any_constant)
    elif isinstance(node, ast.Name):
        if node.id not in ("p", "q"):
            raise ValueError(f"formula {formula!r}: unknown input {node.id!r}; allowed: p, q, 0, 1")
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)) or (
                node.value not in (0, 1) and not any_constant):
            raise ValueError(f"formula {formula!r}: constant {node.value!r} not allowed; allowed: 0, 1")
    else:
        raise ValueError(f"formula {formula!r}: not an expression over the primitives ({ast.dump(node)[:40]})")


def check_formula(formula: str, any_constant: bool = False) -> ast.Expression:
    """The formula's syntax tree once it is known to hold only Table I primitives, ``p``, ``q``, ``0`` and
    ``1``; else ``ValueError`` naming what was wrong. Run before any other parser sees a stored formula."""
    try:
        tree = ast.parse(str(formula).strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"formula {formula!r} does not parse: {exc.msg}") from None
    _check_node(tree.body, formula, any_constant)
    return tree


@functools.lru_cache(maxsize=4096)
def compile_formula(formula: str, any_constant: bool = False) -> Loss:
    """Compile a prefix formula (DEAP's ``str(tree)``) into a loss callable ``loss(p, q)``.

    Only the Table I primitives, ``p``, ``q``, ``0`` and ``1`` are accepted (``any_constant``: any
    number, for the authors' released losses); anything else raises ``ValueError`` naming what was wrong.
    """
    tree = check_formula(formula, any_constant)
    code = compile(tree, "<formula>", "eval")
    namespace = {name: fn for name, (fn, _) in PRIMITIVES.items()}

    def loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return _t(eval(code, {"__builtins__": {}}, {**namespace, "p": p, "q": q}), p)

    loss.__name__ = "formula"
    loss.__doc__ = f"Loss compiled from {formula}"
    loss.formula = formula  # type: ignore[attr-defined]
    return loss


_INFIX_PRECEDENCE = {"Add": 1, "Mul": 2, "Neg": 3}


def pretty(formula: str) -> str:
    """Readable infix form of a prefix formula: ``Mul(Log(Softmax(p)), q)`` -> ``Log(Softmax(p)) * q``."""
    tree = ast.parse(formula.strip(), mode="eval").body

    def go(node, parent_prec=0) -> str:
        if isinstance(node, ast.Constant):
            return str(node.value)
        if isinstance(node, ast.Name):
            return node.id
        name = node.func.id
        args = node.args
        if name == "Add":
            s = f"{go(args[0], 1)} + {go(args[1], 1)}"
            # a + -b reads better as a - b
            if isinstance(args[1], ast.Call) and args[1].func.id == "Neg":
                s = f"{go(args[0], 1)} - {go(args[1].args[0], 2)}"
            prec = 1
        elif name == "Mul":
            s, prec = f"{go(args[0], 2)} * {go(args[1], 2)}", 2
        elif name == "Neg":
            s, prec = f"-{go(args[0], 3)}", 3
        else:
            return f"{name}({', '.join(go(a) for a in args)})"
        return f"({s})" if prec < parent_prec or (prec == parent_prec and parent_prec == 3) else s

    return go(tree)


def formula_size(formula: str) -> int:
    """Number of nodes of a formula's tree."""
    def count(node) -> int:
        return 1 + sum(count(a) for a in node.args) if isinstance(node, ast.Call) else 1

    return count(ast.parse(formula.strip(), mode="eval").body)

