"""The two registries: every attack by name (core.attack_registry) and every chapter (chapters.registry).
Adding an attack or a chapter is one entry; what reads the registries must follow."""
import pandas as pd
import pytest
import torch

from lossbook.chapters import exact_risk, registry
from lossbook.core import attack_registry as AR
from lossbook.core.losses import cross_entropy
from lossbook.core.models import build_model
from lossbook.params import Param, ParameterError, whole
from lossbook.publish import glance


@pytest.fixture(scope="module")
def mlp():
    """A small MLP on random 'images' in [0, 1]: every attack runs on it in seconds."""
    torch.manual_seed(0)
    model = build_model("mnist", "mlp", hidden=[16]).eval()
    x = torch.rand(6, 1, 28, 28)
    return model, x, model(x).argmax(1)  # its own predictions: every image starts correctly classified


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 1.0), ("l1", 5.0)])
def test_every_registered_attack_runs_and_its_points_pass_the_ball_and_box_check(mlp, norm, eps):
    model, x, y = mlp
    names = AR.attack_names(norm)
    table = AR.run_attacks(names, model, x, y, norm, eps, searched_loss=cross_entropy)
    assert list(table.columns) == names and len(table) == len(x) and table.dtypes.eq(bool).all()
    assert ("FGSM" in names) == (norm == "linf") and ("AutoAttack" in names) == (norm in AR.LIBRARY_NORMS)
    assert table["PGD-10 searched"].equals(table["PGD-10 ce"])  # the same loss, the same starts


def test_a_point_outside_the_ball_or_the_box_stops_the_attack():
    x = torch.full((2, 4), 0.5)
    AR.check_in_ball_and_box(x + 0.1, x, "linf", 0.1, "ok")
    with pytest.raises(RuntimeError, match=r"^bad returned points outside the linf ball of radius 0.1 or the box"):
        AR.check_in_ball_and_box(x + 0.2, x, "linf", 0.1, "bad")
    with pytest.raises(RuntimeError, match="or the box"):
        AR.check_in_ball_and_box(torch.full((2, 4), 1.05), torch.ones(2, 4), "linf", 0.1, "bad")


def test_one_registry_entry_adds_an_attack_to_chapter_07(mlp, monkeypatch):
    """An attack whose points leave the ball is refused; a PGD-20 entry joins chapter 07's batched PGD."""
    model, x, y = mlp
    monkeypatch.setitem(AR.ATTACKS, "PGD-20 ce", AR.Attack("PGD-20 ce", "pgd", steps=20, loss="ce"))
    assert "PGD-20 ce" in exact_risk.attack_names("l2")
    table = exact_risk.attack_outcomes(model, x, y, "l2", 1.0)
    assert "PGD-20 ce" in table.columns and "PGD-10 searched" not in table.columns  # no searched loss given
    escaping = AR.Attack("escape", "library", ("linf",), make=lambda m, norm, eps, seed: lambda xs, ys: xs + 2 * eps)
    monkeypatch.setitem(AR.ATTACKS, "escape", escaping)
    with pytest.raises(RuntimeError, match="escape returned points outside the linf ball"):
        exact_risk.attack_outcomes(model, x.clamp(0.2, 0.8), y, "linf", 0.05)


def test_the_grid_compares_the_registered_losses_in_its_committed_order():
    assert AR.grid_losses() == ("searched", "ce", "cw", "dlr")  # part of the request of every held-out file


def test_the_chapter_registry_is_what_the_book_reads():
    from lossbook.publish.build import NBS_DIR, available_chapters
    from lossbook.publish.reproduce import chain

    assert available_chapters() == list(registry.CHAPTERS)  # every registered chapter has its notebook
    assert sorted(p.stem for p in NBS_DIR.glob("*.ipynb")) == list(registry.CHAPTERS)  # and no notebook is unlisted
    computing = [u.label for u in chain("cpu") if u.step == "chapters"]
    assert computing == [n for n, c in registry.CHAPTERS.items() if c.computes]


def test_one_registry_entry_adds_a_chapter(monkeypatch):
    """A chapter registered once: its parameters are checked, its claims reach the glance page."""
    row = {"paper": "AutoLoss-AR", "claim": "a new claim", "the paper's number": "1", "ours": "2", "scale": "cpu",
           "verdict": "reproduced"}
    new = registry.Chapter("08_new", {**registry.CHAPTERS["02_training"].parameters, "steps": Param(3, whole(1))},
                           glance_rows=lambda scale: [row])
    monkeypatch.setitem(registry.CHAPTERS, "08_new", new)
    assert registry.convert("08_new", "steps", "5") == 5
    with pytest.raises(ParameterError, match=r"parameter steps=0 is not allowed; allowed values: a whole number >= 1"):
        registry.validate("08_new", "steps", 0)
    table = glance.claims_table("cpu")
    assert isinstance(table, pd.DataFrame) and table.iloc[-1]["claim"] == "a new claim"
    assert table.iloc[-1]["section"] == "chapters/08_new" and table.iloc[-1]["heading"] == registry.PAPERS_CLAIMS
    with pytest.raises(ParameterError, match="unknown chapter '09_none'; allowed: '01_toy_inconsistency'"):
        registry.schema("09_none")


def test_every_chapter_module_sits_in_the_chapters_import_contract():
    """A new chapter module must be placed in the layers of pyproject.toml (else nothing checks its imports)."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    root = Path(__file__).resolve().parent.parent
    contracts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    chapters = next(c for c in contracts if c.get("containers") == ["lossbook.chapters"])
    placed = {m.strip() for layer in chapters["layers"] for m in layer.split("|")}
    modules = {p.stem for p in (root / "lossbook" / "chapters").glob("*.py") if p.stem != "__init__"}
    assert placed == modules
