"""One parameter schema per chapter, shared by the notebooks, `run -p` and the command line."""
import ast
import json
import re
from pathlib import Path

import pytest

from lossbook.__main__ import main
from lossbook.chapters import registry as P

NBS = Path(__file__).resolve().parent.parent / "nbs"


@pytest.mark.parametrize("chapter", sorted(P.CHAPTERS))
def test_each_notebook_defines_exactly_its_schema(chapter):
    nb = json.loads((NBS / f"{chapter}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    defaults = {t.targets[0].id: ast.literal_eval(t.value) for t in ast.parse("".join(cell["source"])).body}
    assert defaults == {k: p.default for k, p in P.schema(chapter).items()}
    assert P.check(chapter, dict(defaults)) == defaults


def test_run_p_converts_text_to_the_parameters_type():
    assert P.convert("02_training", "seed", "1") == 1  # before: "parameter seed='1' is not allowed"
    assert P.convert("03_gp_search", "recompute", "true") is True
    assert P.convert("06_atras_sweep", "eps", "0.05") == 0.05
    with pytest.raises(P.ParameterError, match=r"parameter seed='x' is not a whole number; allowed values: "
                                               r"a whole number >= 0"):
        P.convert("02_training", "seed", "x")


def test_unknown_names_are_errors():
    ns = {k: p.default for k, p in P.schema("02_training").items()} | {"sede": 1}
    with pytest.raises(P.ParameterError, match=r"unknown parameter 'sede' of chapter 02_training; allowed: scale, seed"):
        P.check("02_training", ns)
    with pytest.raises(P.ParameterError, match="unknown parameter 'sede'"):
        P.convert("02_training", "sede", "1")
    assert main(["run", "02_training", "-p", "sede=1"]) == 2
    with pytest.raises(P.ParameterError, match=r"allowed: scale, seed, recompute, dataset, net, training; did you mean 'seed'\?$"):
        P.convert("02_training", "sede", "1")
    with pytest.raises(P.ParameterError, match=r"allowed: scale, seed, recompute, dataset, net, training$"):
        P.convert("02_training", "zzz", "1")  # nothing near: no guess
    assert P.ParameterError("x")._render_traceback_() == ["ParameterError: x"]  # a notebook shows this line only
    assert P.validate("06_atras_sweep", "eps", 0.5) == 0.5
    with pytest.raises(P.ParameterError, match=r"allowed values: 0 \(the chapter's default\) or a number > 0$"):
        P.validate("06_atras_sweep", "eps", -0.5)


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
                       "argument --population: 0 is not allowed"),
                      (["atras", "--epochs", "-1"], "argument --epochs: -1 is not allowed; allowed: an integer >= 1"),
                      (["atras", "--adv-epochs", "0"], "argument --adv-epochs: 0 is not allowed; allowed: an integer >= 1"),
                      (["atras", "--eps", "-0.1"], "argument --eps: '-0.1' is not allowed; allowed: a number > 0"),
                      (["train", "--seed", "-5"], "argument --seed: '-5' is not allowed; allowed: a whole number >= 0"),
                      (["landscape", "--seed", "1.5"], "argument --seed: '1.5' is not allowed; allowed: a whole number >= 0"),
                      (["exact", "--time-limit", "-3"], "argument --time-limit: '-3' is not allowed; allowed: a number > 0"),
                      (["exact", "--time-limit", "nan"], "argument --time-limit: 'nan' is not allowed; allowed: a number > 0"),
                      (["exact", "--eps", "inf"], "argument --eps: 'inf' is not allowed; allowed: a number > 0")]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_a_model_not_trained_at_that_scale_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("lossbook.core.train.RESULTS_DIR", tmp_path)
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


# ---- an eps is bounded by the norm and the images it applies to: refused before anything runs ----------
class Reached(Exception):
    """Raised by a spy standing for the expensive step (papermill, a solver, a search, a sweep)."""


def _spy(*args, **kwargs):
    raise Reached


@pytest.mark.parametrize("chapter, values, message", [
    ("03_gp_search", {"eps": "50"}, "eps=50 under linf is not allowed for inputs in [0, 1]^784; allowed: 0 < eps <= 1"),
    ("03_gp_search", {"eps": "5", "settings": "mnist-net1-st-l1,cifar10-net1-st-linf"},
     "eps=5 under linf is not allowed for inputs in [0, 1]^3072"),
    ("03_gp_search", {"eps": "30", "settings": "mnist-net1-st-l2"}, "allowed: 0 < eps <= 28"),
    ("06_atras_sweep", {"eps": 2.0, "dataset": "cifar10"}, "eps=2 under linf"),
    ("01_toy_inconsistency", {"eps": 2.5}, "eps=2.5 under linf is not allowed for inputs in a box of side 2"),
    ("01_toy_inconsistency", {"fig_eps": 3.0, "norm": "l2"}, "allowed: 0 < eps <= 2.82843"),
])
def test_an_eps_outside_its_norms_box_is_refused_by_the_chapter(chapter, values, message):
    with pytest.raises(P.ParameterError) as e:
        P.check_relations(chapter, values)
    assert str(e.value).startswith(f"parameter {next(iter(values))}=") and message in str(e.value)


@pytest.mark.parametrize("chapter, values", [
    ("03_gp_search", {"eps": "5", "settings": "mnist-net1-st-l1,mnist-net2-st-l2"}),  # l_1 <= 784, l_2 <= 28
    ("03_gp_search", {"eps": "calibrate"}), ("06_atras_sweep", {"eps": 1.0}), ("06_atras_sweep", {"eps": 0.0}),
    ("01_toy_inconsistency", {"eps": 2.5, "norm": "l2"}), ("01_toy_inconsistency", {"eps": 4.0, "norm": "l1"}),
    ("05_landscape", {"steps": 3}),  # a chapter without an eps has no relation to break
])
def test_an_eps_inside_its_box_passes(chapter, values):
    P.check_relations(chapter, values)


def test_the_notebooks_check_applies_the_relations():
    namespace = {k: p.default for k, p in P.schema("03_gp_search").items()} | {"eps": "50"}
    with pytest.raises(P.ParameterError, match="eps=50 under linf"):
        P.check("03_gp_search", namespace)


@pytest.mark.parametrize("argv, message", [
    (["run", "03_gp_search", "--scale", "smoke", "-p", "eps=50"], "parameter eps='50' is not allowed: eps=50 under linf"),
    (["run", "06_atras_sweep", "--scale", "smoke", "-p", "eps=2"], "parameter eps=2.0 is not allowed: eps=2 under linf"),
    (["run", "01_toy_inconsistency", "--scale", "smoke", "-p", "eps=2.5"], "eps=2.5 under linf"),
])
def test_run_refuses_an_out_of_box_eps_before_the_kernel_starts(argv, message, capsys, monkeypatch):
    monkeypatch.setattr("papermill.execute_notebook", _spy)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    with pytest.raises(Reached):  # control: the same chapter with an eps inside the box reaches papermill
        main([*argv[:-1], argv[-1].split("=")[0] + "=0.5"])


@pytest.mark.parametrize("argv, spied, message", [
    (["exact", "--scale", "smoke", "--eps", "50"], "lossbook.chapters.exact_risk.run_study", "eps=50 under linf"),
    (["exact", "--scale", "cpu", "--studies", "mnist-mlp64-fgsm-l1-eps5", "mnist-mlp64-st-linf-eps0.1", "--eps", "5"],
     "lossbook.chapters.exact_risk.run_study", "eps=5 under linf"),  # the l_1 study would be fine: nothing runs
    (["search", "--scale", "smoke", "--dataset", "mnist", "--net", "net1", "--training", "st", "--norm", "l1", "linf",
      "--eps", "5"], "lossbook.search.runs.search_setting", "eps=5 under linf"),
    (["atras", "--scale", "smoke", "--eps", "2"], "lossbook.chapters.atras_sweep.dataset_results", "eps=2 under linf"),
])
def test_cli_refuses_an_out_of_box_eps_before_any_work(argv, spied, message, capsys, monkeypatch):
    monkeypatch.setattr(spied, _spy)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "allowed: 0 < eps <= 1" in err[0]


def test_a_study_name_is_checked_before_the_kernel_starts(capsys, monkeypatch):
    monkeypatch.setattr("papermill.execute_notebook", _spy)
    assert main(["run", "07_exact_risk", "--scale", "smoke", "-p", "studies=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parameter studies='nope' is not allowed: unknown study at scale smoke 'nope'; allowed: " \
        "'mnist-mlp64-fgsm-linf-eps0.05', 'mnist-mlp64-fgsm-linf-eps0.02'" in err[0]
    with pytest.raises(Reached):
        main(["run", "07_exact_risk", "--scale", "smoke", "-p", "studies=mnist-mlp64-fgsm-linf-eps0.02"])


def test_a_full_disk_is_one_line(capsys, monkeypatch):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lossbook.core.train.train", full)
    assert main(["train", "--dataset", "mnist", "--net", "net1", "--training", "st", "--scale", "smoke", "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m lossbook train: error: [Errno 28] No space left on device"]


def test_an_eps_that_reaches_the_grey_image_from_every_input_is_warned_about():
    import warnings

    from lossbook.config import check_dataset_eps

    with pytest.warns(UserWarning, match=r"eps=0.5 under linf reaches the centre of the box \(the uniform grey image\) "
                                         r"from every input.*eps < 0.5 avoids it"):
        check_dataset_eps("mnist", "linf", 0.5)
    with pytest.warns(UserWarning, match="eps < 14 avoids it"):
        check_dataset_eps("mnist", "l2", 14.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_dataset_eps("mnist", "linf", 0.3)
        check_dataset_eps("cifar10", "l1", 34.0)
