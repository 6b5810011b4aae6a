"""Every option of every CLI command reaches the function that does the work.

Each case runs ``python -m lossbook <command> ...`` (through :func:`lossbook.__main__.main`) with one
option at a value other than its default, with the working functions replaced by recorders, and checks
that the value arrived. That these functions carry their arguments on into the results they write is
tested where they are defined and, chapter by chapter, in ``test_parameters_reach.py``. An option of the
parser without a case here fails the coverage test.
"""
from __future__ import annotations

import pandas as pd
import pytest

from lossbook.__main__ import build_parser, main
from lossbook.chapters.atras_sweep import ARCHITECTURES


class Recorder:
    """Stands in for a working function: keeps each call's arguments, returns ``result``."""

    def __init__(self, result=None):
        self.calls, self.result = [], result

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result(*args, **kwargs) if callable(self.result) else self.result

    @property
    def args(self):
        return self.calls[-1][0]

    @property
    def kwargs(self):
        return self.calls[-1][1]


@pytest.fixture
def spies(monkeypatch):
    """Recorders in place of every function a CLI command hands its work to."""
    import lossbook.chapters.atras_regime as atras_regime
    import lossbook.chapters.atras_sweep as atras
    import lossbook.chapters.exact_risk as exact_risk
    import lossbook.chapters.gp_search as grid
    import lossbook.chapters.landscape as landscape
    import lossbook.chapters.paper_arm as paper_arm
    import lossbook.core.train as train
    import lossbook.publish.build as book
    import lossbook.publish.reproduce as reproduce
    import lossbook.search.runs as search_runs
    import lossbook.search.settings as search_settings

    s = {
        "train": Recorder({"test_acc": 0.5, "train_seconds": 1.0}),
        "search_setting": Recorder([]),
        "resolve_setting": Recorder(lambda d, n, t, norm, scale, eps, n_images: search_settings.Setting(
            d, n, t, norm, 0.1 if isinstance(eps, str) else eps)),
        "run_grid": Recorder("summary.csv"),
        "run_arm": Recorder("summary.csv"),
        "atras_config": Recorder(lambda ds, scale, **kw: (ds, scale, kw)),
        "dataset_results": Recorder((pd.DataFrame(), None)),
        "run_study": Recorder(pd.DataFrame()),
        "run_paper_net": Recorder(None),
        "audit_study": Recorder([]),
        "chapter_studies": Recorder(({}, [], 100)),
        "build": Recorder(),
        "run_chapter": Recorder("out.ipynb"),
        "reproduce": Recorder(),
        "run_sweep": Recorder(pd.DataFrame()),
        "run_transfer": Recorder(pd.DataFrame()),
        "claim_rows": Recorder([]),
    }
    monkeypatch.setattr(train, "train", s["train"])
    monkeypatch.setattr(train, "write_accuracies", Recorder("accuracies.csv"))
    monkeypatch.setattr(search_runs, "search_setting", s["search_setting"])
    monkeypatch.setattr(search_settings, "resolve_setting", s["resolve_setting"])
    monkeypatch.setattr(grid, "run_grid", s["run_grid"])
    monkeypatch.setattr(paper_arm, "run_arm", s["run_arm"])
    for name in ("atras_config", "dataset_results"):
        monkeypatch.setattr(atras, name, s[name])
    monkeypatch.setattr(atras, "depth_summary", Recorder(pd.DataFrame()))
    for name in ("run_sweep", "run_transfer", "claim_rows"):
        monkeypatch.setattr(atras_regime, name, s[name])
    monkeypatch.setattr(exact_risk, "run_study", s["run_study"])
    monkeypatch.setattr(exact_risk, "run_paper_net", s["run_paper_net"])
    monkeypatch.setattr(exact_risk, "eps_curve", Recorder(pd.DataFrame()))
    monkeypatch.setattr(exact_risk, "audit_study", s["audit_study"])
    monkeypatch.setattr(exact_risk, "exact_summary", Recorder({"R_low": 0.0, "R_high": 0.0, "unknown": 0, "robust": 0,
                                                         "vulnerable": 0, "images": 0, "milp_median_s": 0.0}))
    monkeypatch.setattr(landscape, "chapter_studies", s["chapter_studies"])
    for name in ("build", "run_chapter"):
        monkeypatch.setattr(book, name, s[name])
    monkeypatch.setattr(book, "export_html", Recorder("out.html"))
    monkeypatch.setattr(reproduce, "reproduce", s["reproduce"])
    return s


SEARCH = ["search", "--dataset", "mnist", "--net", "net1", "--training", "st"]
STUDY = "mnist-mlp64-st-linf-eps0.1"

#: (command, option dest) -> (argv, check(spies) -> bool)
CASES = {
    ("train", "dataset"): (["train", "--dataset", "cifar10"], lambda s: {a[0].dataset for a, _ in s["train"].calls} == {"cifar10"}),
    ("train", "net"): (["train", "--net", "net2"], lambda s: {a[0].net for a, _ in s["train"].calls} == {"net2"}),
    ("train", "training"): (["train", "--training", "at"], lambda s: {a[0].training for a, _ in s["train"].calls} == {"at"}),
    ("train", "scale"): (["train", "--scale", "smoke"], lambda s: {a[0].scale for a, _ in s["train"].calls} == {"smoke"}),
    ("train", "seed"): (["train", "--seed", "7"], lambda s: {a[0].seed for a, _ in s["train"].calls} == {7}),
    ("train", "force"): (["train", "--force"], lambda s: all(k["force"] for _, k in s["train"].calls)),
    ("search", "dataset"): (SEARCH, lambda s: s["resolve_setting"].args[:3] == ("mnist", "net1", "st")),
    ("search", "net"): ([*SEARCH[:4], "net2", *SEARCH[5:]], lambda s: s["resolve_setting"].args[1] == "net2"),
    ("search", "training"): ([*SEARCH[:6], "at"], lambda s: s["resolve_setting"].args[2] == "at"),
    ("search", "norm"): ([*SEARCH, "--norm", "l1", "l2"],
                         lambda s: [a[3] for a, _ in s["resolve_setting"].calls] == ["l1", "l2"]),
    ("search", "scale"): ([*SEARCH, "--scale", "smoke"],
                          lambda s: s["resolve_setting"].args[4] == "smoke" and s["search_setting"].args[1] == "smoke"),
    ("search", "runs"): ([*SEARCH, "--runs", "3"], lambda s: s["search_setting"].kwargs["runs"] == 3),
    ("search", "seed"): ([*SEARCH, "--seed", "9"], lambda s: s["search_setting"].kwargs["seed"] == 9),
    ("search", "eps"): ([*SEARCH, "--eps", "0.2"], lambda s: s["resolve_setting"].args[5] == 0.2),
    ("search", "generations"): ([*SEARCH, "--generations", "4"], lambda s: s["search_setting"].kwargs["cfg"].gn == 4),
    ("search", "population"): ([*SEARCH, "--population", "6"],
                               lambda s: (s["search_setting"].kwargs["cfg"].ps, s["search_setting"].kwargs["cfg"].st) == (6, 6)),
    ("search", "images"): ([*SEARCH, "--images", "50"], lambda s: s["search_setting"].kwargs["cfg"].n_images == 50
                           and s["resolve_setting"].args[6] == 50),
    ("search", "force"): ([*SEARCH, "--force"], lambda s: s["search_setting"].kwargs["force"] is True
                          and len(s["search_setting"].calls) == 1),  # no look for finished runs first
    ("search", "semantic_cache"): ([*SEARCH, "--no-semantic-cache"],
                                   lambda s: s["search_setting"].kwargs["cfg"].semantic_cache is False),
    ("grid", "scale"): (["grid", "--scale", "paper"], lambda s: s["run_grid"].args == ("paper",)),
    ("grid", "settings"): (["grid", "--settings", "mnist-net1-st-l1"],
                           lambda s: s["run_grid"].kwargs["settings"] == ["mnist-net1-st-l1"]),
    ("grid", "quiet"): (["grid", "--quiet"], lambda s: s["run_grid"].kwargs["progress"] is False),
    ("grid", "backend"): (["grid", "--backend", "ray"], lambda s: s["run_grid"].kwargs["backend"] == "ray"),
    ("grid", "address"): (["grid", "--address", "10.0.0.1:6379"],
                          lambda s: s["run_grid"].kwargs["address"] == "10.0.0.1:6379"),
    ("atras-regime", "dataset"): (["atras-regime", "--dataset", "cifar10"],
                                  lambda s: [a[0] for a, _ in s["run_sweep"].calls] == ["cifar10"]),
    ("atras-regime", "scale"): (["atras-regime", "--scale", "smoke"], lambda s: s["run_sweep"].args[1].scale == "smoke"),
    ("atras-regime", "no_transfer"): (["atras-regime", "--no-transfer"],
                                      lambda s: not s["run_transfer"].calls and len(s["run_sweep"].calls) == 2),
    ("atras-regime", "quiet"): (["atras-regime", "--quiet"], lambda s: s["run_sweep"].kwargs["progress"] is False
                                and s["run_transfer"].kwargs["progress"] is False),
    ("paper-arm", "arm"): (["paper-arm", "--arm", "smoke"], lambda s: s["run_arm"].args == ("smoke",)),
    ("paper-arm", "datasets"): (["paper-arm", "--datasets", "cifar10"],
                                lambda s: {x.split("-")[0] for x in s["run_arm"].kwargs["settings"]} == {"cifar10"}
                                and len(s["run_arm"].kwargs["settings"]) == 12),
    ("paper-arm", "settings"): (["paper-arm", "--settings", "cifar10-net2-at-l2"],
                                lambda s: s["run_arm"].kwargs["settings"] == ["cifar10-net2-at-l2"]),
    ("paper-arm", "no_seeded"): (["paper-arm", "--no-seeded"], lambda s: s["run_arm"].kwargs["seeded"] is False),
    ("paper-arm", "quiet"): (["paper-arm", "--quiet"], lambda s: s["run_arm"].kwargs["progress"] is False),
    ("atras", "dataset"): (["atras", "--dataset", "cifar10"], lambda s: [c[0][0] for c in s["atras_config"].calls] == ["cifar10"]),
    ("atras", "scale"): (["atras", "--scale", "smoke"], lambda s: s["atras_config"].args[1] == "smoke"),
    ("atras", "architectures"): (["atras", "--architectures", "3", "5"],
                                 lambda s: s["dataset_results"].args[1] == [ARCHITECTURES[3], ARCHITECTURES[5]]),
    ("atras", "eps"): (["atras", "--eps", "0.03"], lambda s: s["atras_config"].kwargs["eps"] == 0.03),
    ("atras", "epochs"): (["atras", "--epochs", "4"], lambda s: s["atras_config"].kwargs["epochs"] == 4),
    ("atras", "adv_epochs"): (["atras", "--adv-epochs", "5"], lambda s: s["atras_config"].kwargs["adv_epochs"] == 5),
    ("atras", "seed"): (["atras", "--seed", "3"], lambda s: s["atras_config"].kwargs["seed"] == 3),
    ("atras", "failure_mode"): (["atras", "--failure-mode", "sigmoid-sgd"],
                                lambda s: s["atras_config"].kwargs["failure_mode"] == "sigmoid-sgd"),
    ("exact", "scale"): (["exact", "--scale", "smoke"], lambda s: s["run_study"].args[1] == "smoke"),
    ("exact", "studies"): (["exact", "--studies", STUDY], lambda s: [c[0][0].name() for c in s["run_study"].calls] == [STUDY]),
    ("exact", "images"): (["exact", "--studies", STUDY, "--images", "7"], lambda s: s["run_study"].args[0].n_images == 7),
    ("exact", "time_limit"): (["exact", "--studies", STUDY, "--time-limit", "3.5"],
                              lambda s: s["run_study"].args[0].time_limit == 3.5),
    ("exact", "eps"): (["exact", "--studies", STUDY, "--eps", "0.02"], lambda s: s["run_study"].args[0].eps == 0.02),
    ("exact", "quiet"): (["exact", "--studies", STUDY, "--quiet"], lambda s: s["run_study"].kwargs["progress"] is False),
    ("exact", "backend"): (["exact", "--studies", STUDY, "--backend", "ray"], lambda s: s["run_study"].kwargs["backend"] == "ray"),
    ("exact", "address"): (["exact", "--studies", STUDY, "--address", "h:1"], lambda s: s["run_study"].kwargs["address"] == "h:1"),
    ("exact", "paper_net"): (["exact", "--paper-net", "mnist-net1-st"],
                             lambda s: s["run_paper_net"].args[0] == "mnist-net1-st" and not s["run_study"].calls),
    ("audit", "scale"): (["audit", "--scale", "smoke"], lambda s: s["audit_study"].args[1] == "smoke"),
    ("audit", "studies"): (["audit", "--studies", STUDY], lambda s: [c[0][0].name() for c in s["audit_study"].calls] == [STUDY]),
    ("audit", "lp_dual"): (["audit", "--lp-dual", "all"], lambda s: s["audit_study"].kwargs["lp_dual"] is None),
    ("landscape", "source"): (["landscape", "--source", "mnist-net2-st-l2"],
                              lambda s: s["chapter_studies"].args[0] == "mnist-net2-st-l2"),
    ("landscape", "datasets"): (["landscape", "--datasets", "cifar10"], lambda s: s["chapter_studies"].args[1] == ["cifar10"]),
    ("landscape", "scale"): (["landscape", "--scale", "smoke"], lambda s: s["chapter_studies"].args[2] == "smoke"),
    ("landscape", "images"): (["landscape", "--images", "5"], lambda s: s["chapter_studies"].args[3] == 5),
    ("landscape", "steps"): (["landscape", "--steps", "20"], lambda s: s["chapter_studies"].args[4] == 20),
    ("landscape", "resolution"): (["landscape", "--resolution", "9"], lambda s: s["chapter_studies"].args[5] == 9),
    ("landscape", "seed"): (["landscape", "--seed", "6"], lambda s: s["chapter_studies"].kwargs["seed"] == 6),
    ("book", "scale"): (["book", "--scale", "smoke"], lambda s: s["build"].kwargs["scale"] == "smoke"),
    ("book", "recompute"): (["book", "--recompute"], lambda s: s["build"].kwargs["recompute"] is True),
    ("book", "chapters"): (["book", "--chapters", "02_training"], lambda s: s["build"].kwargs["chapters"] == ["02_training"]),
    ("book", "no_execute"): (["book", "--no-execute"], lambda s: s["build"].kwargs["execute"] is False),
    ("run", "chapters"): (["run", "01_toy_inconsistency", "06_atras_sweep"],
                          lambda s: [a[0] for a, _ in s["run_chapter"].calls] == ["01_toy_inconsistency", "06_atras_sweep"]),
    ("run", "scale"): (["run", "02_training", "--scale", "cpu"], lambda s: s["run_chapter"].args[1] == "cpu"),
    ("run", "recompute"): (["run", "02_training", "--recompute"], lambda s: s["run_chapter"].args[2] is True),
    ("run", "param"): (["run", "02_training", "-p", "seed=1", "-p", "net=net2"],
                       lambda s: s["run_chapter"].kwargs["extra"] == {"seed": "1", "net": "net2"}),
    ("run", "out"): (["run", "02_training", "--out", "/tmp/x"], lambda s: str(s["run_chapter"].kwargs["out_dir"]) == "/tmp/x"),
    # the default: runs/, never the book's own executed chapters (book/chapters/)
    ("reproduce", "scale"): (["reproduce", "--scale", "cpu"], lambda s: s["reproduce"].args == ("cpu",)),
    ("reproduce", "datasets"): (["reproduce", "--datasets", "mnist"], lambda s: s["reproduce"].kwargs["datasets"] == ["mnist"]),
    ("reproduce", "steps"): (["reproduce", "--steps", "grid"], lambda s: s["reproduce"].kwargs["steps"] == ["grid"]),
    ("reproduce", "dry_run"): (["reproduce", "--dry-run"], lambda s: s["reproduce"].kwargs["dry_run"] is True),
}


def parser_options() -> set[tuple[str, str]]:
    """(command, dest) of every option and positional of every subcommand, but help."""
    ap = build_parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    return {(cmd, a.dest) for cmd, p in sub.choices.items() for a in p._actions if a.dest != "help"}


def test_every_cli_option_has_a_case():
    assert parser_options() == set(CASES), sorted(parser_options() ^ set(CASES))


@pytest.mark.parametrize("command,dest", sorted(CASES))
def test_the_cli_option_reaches_the_function(spies, command, dest, capsys):
    argv, check = CASES[(command, dest)]
    assert main(argv) == 0, capsys.readouterr().err
    assert check(spies), f"python -m lossbook {' '.join(argv)}: {dest} did not reach the call"


def test_each_case_sets_its_option_off_its_default():
    """A case at the default value would pass whether or not the option reached anything."""
    ap = build_parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    for (command, dest), (argv, _) in CASES.items():
        action = next(a for a in sub.choices[command]._actions if a.dest == dest)
        assert getattr(ap.parse_args(argv), dest) != action.default, (command, dest)


# ---- the options that no chapter parameter shares, end to end: from the command line to the stored
# request (or, for a switch that by design does not change results, to the stored run), in a fresh
# results folder. --backend/--address leave the results unchanged by design: test_ray_cluster runs the grid on
# two Ray nodes and compares it with the local backend.
def _cli(root, *argv):
    import os
    import subprocess
    import sys

    env = {**os.environ, "LOSSBOOK_RESULTS": str(root), "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "lossbook", *argv], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture
def fresh_results(tmp_path, data_available):
    """A results folder holding only the smoke models (trained once here if missing)."""
    import shutil

    from lossbook.config import RESULTS_DIR
    from lossbook.core.train import ensure_trained

    ensure_trained(["mnist"], ["net1"], ["st"], "smoke", progress=False)
    shutil.copytree(RESULTS_DIR / "models" / "smoke", tmp_path / "models" / "smoke")
    return tmp_path


def _records(root, under, pattern="*"):
    from lossbook import store

    return [(p, rec) for p, rec in store.records(root / under) if p.match(pattern)]


def test_search_options_reach_the_stored_run(fresh_results):
    import json

    _cli(fresh_results, *SEARCH, "--norm", "l2", "--scale", "smoke", "--eps", "0.5", "--generations", "1",
         "--population", "4", "--images", "16", "--no-semantic-cache", "--runs", "1", "--seed", "5")
    ((path, rec),) = _records(fresh_results, "search/smoke/mnist-net1-st-l2", "run-*.json")
    gp = rec["request"]["gp"]
    assert path.name == "run-5.json" and rec["request"]["setting"]["eps"] == 0.5
    assert (gp["gn"], gp["ps"], gp["st"], gp["n_images"]) == (1, 4, 4, 16)
    run = json.loads(path.read_text())
    assert run["semantic_cache"] is False and run["semantic_hits"] == 0 and run["signatures"] is None


def test_exact_options_reach_the_stored_study(fresh_results):
    _cli(fresh_results, "exact", "--scale", "smoke", "--studies", "mnist-mlp64-fgsm-linf-eps0.02", "--eps", "0.03",
         "--images", "2", "--time-limit", "2", "--quiet")
    ((_, rec),) = _records(fresh_results, "exact/smoke", "*-outcomes.csv")
    study = rec["request"]["study"]
    assert (study["eps"], study["time_limit"], rec["request"]["n_images"]) == (0.03, 2.0, 2)


def test_atras_failure_mode_reaches_the_stored_sweep(fresh_results):
    _cli(fresh_results, "atras", "--scale", "smoke", "--dataset", "mnist", "--architectures", "0",
         "--failure-mode", "sigmoid-sgd", "--epochs", "1", "--adv-epochs", "1")
    ((path, rec),) = _records(fresh_results, "atras/smoke", "mnist.csv")
    assert path.parent.name == "failure-sigmoid-sgd" and rec["request"]["failure_mode"] == "sigmoid-sgd"


def test_paper_arm_no_seeded_runs_no_seeded_search(fresh_results):
    setting = "mnist-net1-st-linf"
    _cli(fresh_results, "paper-arm", "--arm", "smoke", "--settings", setting, "--no-seeded", "--quiet")
    runs = [rec["request"]["gp"]["seed_losses"] for _, rec in _records(fresh_results, f"search/smoke-arm/{setting}", "run-*.json")]
    assert runs and not any(runs)
    _cli(fresh_results, "paper-arm", "--arm", "smoke", "--settings", setting, "--quiet")  # control: the seeded run
    runs = [rec["request"]["gp"]["seed_losses"] for _, rec in _records(fresh_results, f"search/smoke-arm/{setting}", "run-*.json")]
    assert sum(map(bool, runs)) == 1


def test_run_writes_into_runs_and_leaves_the_books_chapters_alone(spies):
    main(["run", "02_training"])
    assert str(spies["run_chapter"].kwargs["out_dir"]) == "runs"


def test_audit_lp_dual_takes_a_count_or_all():
    import argparse

    from lossbook.__main__ import _lp_dual_count

    assert _lp_dual_count("all") is None and _lp_dual_count("7") == 7
    with pytest.raises(argparse.ArgumentTypeError, match="'-1' is not allowed; allowed: a whole number >= 0, or 'all'"):
        _lp_dual_count("-1")
