"""One parameter schema per chapter, shared by the notebooks, `run -p` and the command line."""
import ast
import json
import re
from pathlib import Path

import pytest

from lossbook import params as P
from lossbook.__main__ import main

NBS = Path(__file__).resolve().parent.parent / "nbs"


@pytest.mark.parametrize("chapter", sorted(P.SCHEMAS))
def test_each_notebook_defines_exactly_its_schema(chapter):
    nb = json.loads((NBS / f"{chapter}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    defaults = {t.targets[0].id: ast.literal_eval(t.value) for t in ast.parse("".join(cell["source"])).body}
    assert defaults == {k: p.default for k, p in P.SCHEMAS[chapter].items()}
    assert P.check(chapter, dict(defaults)) == defaults


def test_run_p_converts_text_to_the_parameters_type():
    assert P.convert("02_training", "seed", "1") == 1  # before: "parameter seed='1' is not allowed"
    assert P.convert("03_gp_search", "recompute", "true") is True
    assert P.convert("06_atras_sweep", "eps", "0.05") == 0.05
    with pytest.raises(P.ParameterError, match=r"parameter seed='x' is not a whole number; allowed values: "
                                               r"a whole number >= 0"):
        P.convert("02_training", "seed", "x")


def test_unknown_names_are_errors():
    ns = {k: p.default for k, p in P.SCHEMAS["02_training"].items()} | {"sede": 1}
    with pytest.raises(P.ParameterError, match=r"unknown parameter 'sede' of chapter 02_training; allowed: scale, seed"):
        P.check("02_training", ns)
    with pytest.raises(P.ParameterError, match="unknown parameter 'sede'"):
        P.convert("02_training", "sede", "1")
    assert main(["run", "02_training", "-p", "sede=1"]) == 2


@pytest.mark.parametrize("chapter,name,value,ok", [
    ("03_gp_search", "eps", 1e-05, True), ("03_gp_search", "eps", 0, False), ("03_gp_search", "eps", "auto", True),
    ("03_gp_search", "eps", "big", False), ("04_transfer", "mnist_norms", "linf,l3", False),
    ("04_transfer", "mnist_norms", "l2,linf", True), ("06_atras_sweep", "architectures", 36, True),
    ("06_atras_sweep", "architectures", "36,99", False), ("05_landscape", "steps", 0, False),
    ("01_toy_inconsistency", "x0", "-0.9,0.1", True), ("01_toy_inconsistency", "x0", "2,0", False),
    ("02_training", "scale", "huge", False), ("03_gp_search", "settings", "mnist-net1-st-linf,cifar10-net3-at-l2", False),
])
def test_allowed_values(chapter, name, value, ok):
    if ok:
        assert P.validate(chapter, name, value) is not None
    else:
        with pytest.raises(P.ParameterError, match=f"parameter {name}=.* is not allowed; allowed values: "):
            P.validate(chapter, name, value)


def test_papermill_numbers_for_text_parameters_are_coerced():
    assert P.validate("06_atras_sweep", "architectures", 36) == "36"
    assert P.validate("06_atras_sweep", "eps", 0) == 0.0


def test_cli_arguments_share_the_validators(capsys):
    for argv, msg in [(["search", "--dataset", "mnist", "--net", "net1", "--training", "st", "--eps", "0"],
                       "argument --eps: '0' is not allowed; allowed: 'auto', 'paper', 'calibrate' or a number > 0"),
                      (["search", "--dataset", "mnist", "--net", "net1", "--training", "st", "--runs", "0"],
                       "argument --runs: 0 is not allowed; allowed: an integer >= 1"),
                      (["atras", "--architectures", "-1"], "argument --architectures: '-1' is not allowed; allowed: an index 0..39"),
                      (["search", "--dataset", "mnist", "--net", "net1", "--training", "st", "--population", "0"],
                       "argument --population: 0 is not allowed")]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_a_model_not_trained_at_that_scale_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("lossbook.train.RESULTS_DIR", tmp_path)
    assert main(["search", "--dataset", "mnist", "--net", "net1", "--training", "st", "--scale", "paper"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trained model mnist-net1-st at scale 'paper'" in err[0]


@pytest.mark.parametrize("command", ["grid", "reproduce", "exact", "landscape", "train"])
def test_help_says_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in out and "(default: False)" not in out
    assert not re.search(r"\(default: [^)]*\) \(default:", out)  # a help text stating its default gets no second one
