"""Every parameter of every chapter reaches what it names.

Each chapter runs once at smoke scale, in a fresh results folder, with *every* parameter at a value
other than its default (one run per chapter with all of them changed keeps this at minutes; one run per
parameter would take a quarter of an hour). Then one check per parameter: the value is in the request
recorded beside the result it shapes, or, for the parameters that only change what is shown, in the
executed chapter's output. A parameter of a schema without a check here fails the coverage test.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from lossbook import store
from lossbook.chapters.registry import CHAPTERS

pytestmark = pytest.mark.notebooks

#: the non-default values, per chapter (fast ones); chapters run in this order, later ones reading the
#: results of earlier ones (04 and 05 study the loss chapter 03 searched)
VARIANTS = {
    "01_toy_inconsistency": {"seed": 1, "norm": "l2", "eps": 0.25, "x0": "0.1,0.2", "fig_eps": 0.3, "n_points": 200,
                             "interactive": True, "recompute": True},
    "02_training": {"seed": 1, "dataset": "mnist", "net": "net1", "training": "st", "recompute": True},
    "03_gp_search": {"settings": "mnist-net1-at-l2,cifar10-net1-st-l2", "runs": 2, "seed": 3, "eps": "1.5", "grid_scale": "paper",
                     "recompute": True},
    "04_transfer": {"seed": 2, "sources": "mnist-net1-at-l2", "cifar_searched": "cifar10-net1-st-l2",
                    "cifar_sources": "none", "mnist_norms": "l1", "cifar_norms": "l2", "n_images": 16, "recompute": True},
    "05_landscape": {"seed": 4, "source": "mnist-net1-at-l2", "losses": "search", "datasets": "mnist", "n_images": 3, "steps": 15,
                     "resolution": 7, "per_kind": 2, "n_examples": 1 + 4, "recompute": True},
    "06_atras_sweep": {"seed": 5, "dataset": "mnist", "eps": 0.05, "epochs": 2, "adv_epochs": 1, "architectures": "0,1",
                       "failure_mode": "none", "recompute": True},
    "07_exact_risk": {"studies": "mnist-mlp64-fgsm-linf-eps0.05", "n_images": 4, "time_limit": 2.0, "recompute": True},
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory, data_available):
    """Every chapter at smoke scale with its variant, in one fresh results folder (smoke models copied in)."""
    from lossbook.config import RESULTS_DIR
    from lossbook.core.train import ensure_trained

    ensure_trained(["mnist", "cifar10"], ["net1", "net2"], ["st", "at"], "smoke", progress=False)
    root = tmp_path_factory.mktemp("results")
    shutil.copytree(RESULTS_DIR / "models" / "smoke", root / "models" / "smoke")
    return root, {ch: run_in(root, ch, "smoke", VARIANTS[ch]) for ch in VARIANTS}


def run_in(root: Path, chapter: str, scale: str, extra: dict):
    """The chapter executed with ``LOSSBOOK_RESULTS=root`` (the kernel inherits it), as a notebook."""
    import os

    from lossbook.publish.build import run_chapter

    old = os.environ.get("LOSSBOOK_RESULTS")
    os.environ["LOSSBOOK_RESULTS"] = str(root)
    try:
        for attempt in (1, 2):  # a kernel that never answers (seen with ipykernel 7, one start in a few) is retried once
            try:
                path = run_chapter(chapter, scale, extra=dict(extra), out_dir=root / "executed", cell_timeout=600)
                return nbformat.read(path, as_version=4)
            except Exception as exc:  # nbclient's CellTimeoutError
                if attempt == 2 or "Timeout" not in type(exc).__name__:
                    raise
    finally:
        os.environ.pop("LOSSBOOK_RESULTS") if old is None else os.environ.__setitem__("LOSSBOOK_RESULTS", old)


def requests(root: Path, under: str, pattern: str = "*") -> list[tuple[str, dict]]:
    """(file name, request) of every result under ``root/under`` matching ``pattern``."""
    return [(p.name, rec["request"]) for p, rec in store.records(root / under) if p.match(pattern)]


def output_text(nb) -> str:
    """Everything the executed chapter showed, as one string (HTML, Markdown, text, widget views)."""
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", ""))
            parts += [json.dumps(v) if not isinstance(v, str) else v for v in o.get("data", {}).values()]
    return "\n".join(parts)


def _toy(root, _):
    return requests(root, "toy/smoke", "risk.csv")[0][1]


def _models(root, _):
    return [r for n, r in requests(root, "models/smoke", "*.log.csv")]


def _runs(root, _, setting="mnist-net1-at-l2"):
    return [r for n, r in requests(root, f"search/smoke/{setting}", "run-*.json")]


def _searched(root, nb):
    """The runs of both settings chapter 03 searched."""
    return _runs(root, nb) + _runs(root, nb, "cifar10-net1-st-l2")


def _grid_budget_shown(root, nb):
    """Chapter 03 states the budget of the grid it shows; each scale's differs (and the variant's is neither
    the chapter's scale nor the default), so the sentence names the grid_scale that reached it."""
    from lossbook.chapters.gp_search import budget

    said = {s: f"A grid run evaluates {budget(s)['trees']:,} trees on {budget(s)['images']} images" for s in
            ("smoke", "cpu", "paper")}
    assert len(set(said.values())) == 3
    return [s for s, line in said.items() if line in output_text(nb)] == ["paper"]


def _cross(root, nb, dataset):
    """(source, target norm) of every cross-setting pair on ``dataset``'s models."""
    return {(r["source"], t["norm"]) for r in _transfer(root, nb) if r["what"] == "cross setting"
            for t in r["targets"] if t["dataset"] == dataset}


def _transfer(root, _):
    return [r for n, r in requests(root, "transfer/smoke", "*.csv")]


def _landscape(root, _):
    return [r for n, r in requests(root, "landscape/smoke", "*.json")]


def _atras(root, _):
    return [r for n, r in requests(root, "atras/smoke", "*.csv") if "what" not in r]


def _exact(root, _):
    return [r for n, r in requests(root, "exact/smoke", "*-outcomes.csv")]


V = VARIANTS
#: (chapter, parameter) -> check(root, executed notebook) -> bool
CHECKS = {
    ("01_toy_inconsistency", "seed"): lambda root, nb: _toy(root, nb)["seed"] == 1,
    ("01_toy_inconsistency", "norm"): lambda root, nb: _toy(root, nb)["norms"] == ["l2"],
    ("01_toy_inconsistency", "eps"): lambda root, nb: _toy(root, nb)["eps"] == {"l2": 0.25},
    ("01_toy_inconsistency", "n_points"): lambda root, nb: _toy(root, nb)["n_points"] == 200,
    ("01_toy_inconsistency", "x0"): lambda root, nb: "[0.1 0.2]" in output_text(nb),
    ("01_toy_inconsistency", "fig_eps"): lambda root, nb: ">0.300000<" in output_text(nb),
    ("01_toy_inconsistency", "interactive"): lambda root, nb: "application/vnd.jupyter.widget-view+json" in json.dumps(
        [o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])]),
    ("02_training", "seed"): lambda root, nb: {r["seed"] for r in _models(root, nb) if "at_eps" in r} == {0, 1},
    ("02_training", "dataset"): lambda root, nb: [(r["dataset"], r["net"], r["training"]) for r in _models(root, nb)
                                                  if r["seed"] == 1] == [("mnist", "net1", "st")],
    ("02_training", "net"): lambda root, nb: all(r["net"] == "net1" for r in _models(root, nb) if r["seed"] == 1),
    ("02_training", "training"): lambda root, nb: all(r["training"] == "st" for r in _models(root, nb) if r["seed"] == 1),
    ("03_gp_search", "settings"): lambda root, nb: len(_runs(root, nb)) == 2 and
    {r["setting"]["dataset"] for r in _searched(root, nb)} == {"mnist", "cifar10"},
    ("03_gp_search", "runs"): lambda root, nb: sorted(r["seed"] for r in _searched(root, nb)) == [3, 3, 4, 4],
    ("03_gp_search", "seed"): lambda root, nb: min(r["seed"] for r in _searched(root, nb)) == 3,
    ("03_gp_search", "eps"): lambda root, nb: {r["setting"]["eps"] for r in _searched(root, nb)} == {1.5},
    ("03_gp_search", "grid_scale"): _grid_budget_shown,
    ("04_transfer", "seed"): lambda root, nb: {r["seed"] for r in _transfer(root, nb)} == {2},
    ("04_transfer", "n_images"): lambda root, nb: {r["n_images"] for r in _transfer(root, nb) if "n_images" in r} == {16},
    # the MNIST-searched sources (CIFAR-10's own searched loss, cifar_searched's, is a source too)
    ("04_transfer", "sources"): lambda root, nb: {r["source"] for r in _transfer(root, nb)
                                                  if not r["source"].startswith("cifar10")} == {"mnist-net1-at-l2"},
    ("04_transfer", "mnist_norms"): lambda root, nb: {n for _, n in _cross(root, nb, "mnist")} == {"l1"},
    # default "all": no CIFAR-10 map at smoke scale; asked for: l_2 targets only
    ("04_transfer", "cifar_norms"): lambda root, nb: {n for _, n in _cross(root, nb, "cifar10")} == {"l2"},
    # default "grid": no CIFAR-10 setting judged in a fresh folder, so the MNIST losses would be the sources
    ("04_transfer", "cifar_searched"): lambda root, nb: {s for s, _ in _cross(root, nb, "cifar10")} == {"cifar10-net1-st-l2"},
    # no MNIST loss carried to a CIFAR-10 model (default: the first of two is carried at smoke scale)
    ("04_transfer", "cifar_sources"): lambda root, nb: not any(r.get("target", "").startswith("cifar10")
                                                             and r["source"].startswith("mnist")
                                                             for r in _transfer(root, nb)),
    ("05_landscape", "seed"): lambda root, nb: {r["seed"] for r in _landscape(root, nb)} == {4},
    ("05_landscape", "source"): lambda root, nb: {r["source"] for r in _landscape(root, nb)} == {"mnist-net1-at-l2"},
    # "search": the scale's search of the source itself (the default, "arm", studies the smoke arm's loss)
    ("05_landscape", "losses"): lambda root, nb: not any(r["source"].startswith("smoke-arm:") for r in _landscape(root, nb)),
    ("05_landscape", "datasets"): lambda root, nb: {r["target"].split("-")[0] for r in _landscape(root, nb)} == {"mnist"},
    ("05_landscape", "n_images"): lambda root, nb: {r["n_images"] for r in _landscape(root, nb)} == {3},
    ("05_landscape", "steps"): lambda root, nb: {r["steps"] for r in _landscape(root, nb)} == {15},
    ("05_landscape", "resolution"): lambda root, nb: {r["resolution"] for r in _landscape(root, nb)} == {7},
    ("05_landscape", "per_kind"): lambda root, nb: {r["per_kind"] for r in _landscape(root, nb)} == {2},
    ("05_landscape", "n_examples"): lambda root, nb: {r["n_examples"] for r in _landscape(root, nb)} == {5},
    ("06_atras_sweep", "seed"): lambda root, nb: {r["seed"] for r in _atras(root, nb)} == {5},
    ("06_atras_sweep", "dataset"): lambda root, nb: {r["dataset"] for r in _atras(root, nb)} == {"mnist"},
    ("06_atras_sweep", "eps"): lambda root, nb: {r["eps"] for r in _atras(root, nb)} == {0.05},
    ("06_atras_sweep", "epochs"): lambda root, nb: {r["epochs"] for r in _atras(root, nb)} == {2},
    ("06_atras_sweep", "adv_epochs"): lambda root, nb: {r["adv_epochs"] for r in _atras(root, nb)} == {1},
    ("06_atras_sweep", "architectures"): lambda root, nb: len(store.load(root / "atras/smoke/mnist.csv")) == 2,
    ("06_atras_sweep", "failure_mode"): lambda root, nb: not (root / "atras/smoke/failure-sigmoid-sgd").exists(),
    ("07_exact_risk", "studies"): lambda root, nb: [r["study"]["eps"] for r in _exact(root, nb)] == [0.05],  # smoke has 0.05 and 0.02
    ("07_exact_risk", "n_images"): lambda root, nb: [r["n_images"] for r in _exact(root, nb)] == [4],
    ("07_exact_risk", "time_limit"): lambda root, nb: [r["study"]["time_limit"] for r in _exact(root, nb)] == [2.0],
}
#: parameters every chapter has, checked by the tests at the end: ``scale`` (smoke: every result above
#: lies under a smoke folder) and ``recompute``
COMMON = ("scale", "recompute")


def test_every_parameter_has_a_non_default_value_and_a_check():
    for chapter, schema in ((n, c.parameters) for n, c in CHAPTERS.items()):
        for name, param in schema.items():
            if name in COMMON:
                continue
            assert (chapter, name) in CHECKS, f"no check that {chapter}'s {name} reaches its result"
            assert name in VARIANTS[chapter] and VARIANTS[chapter][name] != param.default, (chapter, name)
    assert set(CHECKS) <= {(c, n) for c, ch in CHAPTERS.items() for n in ch.parameters}


@pytest.mark.slow
@pytest.mark.parametrize("chapter,name", sorted(CHECKS))
def test_the_parameter_reaches_its_result(ran, chapter, name):
    root, books = ran
    assert CHECKS[(chapter, name)](root, books[chapter]), f"{chapter}: {name}={VARIANTS[chapter][name]!r} did not reach"


@pytest.mark.slow
def test_every_result_is_a_smoke_result(ran):
    root, _ = ran
    paths = [p.relative_to(root).as_posix() for p, _ in store.records(root)]
    assert paths and all("/smoke" in p for p in paths), [p for p in paths if "/smoke" not in p][:3]


#: the parts of a result a recomputation reproduces (wall-clock times differ from run to run)
SAME = {"toy/smoke/risk.csv": None, "search/smoke/mnist-net1-st-linf/run-0.json": ("best", "best_fitness", "hall_of_fame"),
        "models/smoke/mnist-net1-st.log.csv": ("epoch", "train_loss", "test_acc")}


def _part(content, keys):
    import pandas as pd

    if isinstance(content, pd.DataFrame):
        return content if keys is None else content[[k for k in keys if k in content.columns]]
    return {k: content[k] for k in keys}


def _plant(path: Path, keys):
    """Replace a saved result by an altered one for the same request (what a stale result looks like to
    the chapter); return (the original's reproducible part, the altered one's)."""
    import pandas as pd

    original, request = store.load(path), store.record(path)["request"]
    if isinstance(original, pd.DataFrame):  # halved: still a valid share, so the chapter runs through
        column = (keys or original.select_dtypes("number").columns)[-1]
        altered = original.assign(**{column: original[column] / 2 + 0.001})
    else:
        altered = {**original, "best_fitness": original["best_fitness"] / 2 + 0.001}
    store.save(path, altered, request)
    return _part(original, keys), _part(altered, keys)


def _same(a, b) -> bool:
    """Equal results; a table's numbers to float rounding (a retrained model's loss can differ in its last
    bits between processes: bitwise reproducibility of CPU training is not promised)."""
    import numpy as np
    import pandas as pd

    if not isinstance(a, pd.DataFrame):
        return a == b
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    num = a.select_dtypes("number").columns
    return (list(a.columns) == list(b.columns) and len(a) == len(b) and a.drop(columns=num).equals(b.drop(columns=num))
            and np.allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=1e-6, atol=0))


@pytest.mark.slow
@pytest.mark.parametrize("chapter, extra, result", [
    ("01_toy_inconsistency", {"norm": "linf", "n_points": 100}, "toy/smoke/risk.csv"),
    ("02_training", {"dataset": "mnist", "net": "net1", "training": "st"}, "models/smoke/mnist-net1-st.log.csv"),
    ("03_gp_search", {"settings": "mnist-net1-st-linf", "runs": 1}, "search/smoke/mnist-net1-st-linf/run-0.json"),
])
def test_recompute_redoes_a_saved_result_and_false_keeps_it(data_available, tmp_path, chapter, extra, result):
    """Chapters 01-03 redo saved results with recompute=True and show them as they are with False (a
    planted, altered result shows which happened)."""
    from lossbook.config import RESULTS_DIR

    shutil.copytree(RESULTS_DIR / "models" / "smoke", tmp_path / "models" / "smoke")
    run_in(tmp_path, chapter, "smoke", extra | {"recompute": False})
    original, altered = _plant(tmp_path / result, SAME[result])
    run_in(tmp_path, chapter, "smoke", extra | {"recompute": False})
    assert _same(_part(store.load(tmp_path / result), SAME[result]), altered)  # shown, not redone
    run_in(tmp_path, chapter, "smoke", extra | {"recompute": True})
    assert _same(_part(store.load(tmp_path / result), SAME[result]), original)  # redone (seeded: the same result)


#: cheap requests at cpu scale, and where their results land
AT_CPU = {
    "04_transfer": ({"sources": "mnist-net1-at-linf", "cifar_searched": "none", "cifar_sources": "none",
                     "mnist_norms": "linf", "n_images": 2}, "transfer/cpu"),
    "05_landscape": ({"source": "mnist-net1-at-linf", "datasets": "mnist", "n_images": 1, "steps": 2, "resolution": 3,
                      "n_examples": 1}, "landscape/cpu"),
    "06_atras_sweep": ({"dataset": "mnist", "architectures": "0", "epochs": 1, "adv_epochs": 1}, "atras/cpu"),
    "07_exact_risk": ({"studies": "mnist-mlp64-st-linf-eps0.065", "n_images": 2, "time_limit": 2.0}, "exact/cpu"),
}


@pytest.mark.slow
@pytest.mark.parametrize("chapter", sorted(AT_CPU))
def test_recompute_at_cpu_scale_computes_only_when_asked(data_available, tmp_path, chapter):
    """Chapters 04-07 show saved results with recompute=False and compute what is missing with True (at
    smoke scale they compute what is missing either way). The inputs (cpu models and searches) are copied
    into a fresh folder; the chapter's own results are not there."""
    from lossbook.config import RESULTS_DIR

    for part in ("models/cpu", "search/cpu"):
        shutil.copytree(RESULTS_DIR / part, tmp_path / part)
    extra, under = AT_CPU[chapter]
    nb = run_in(tmp_path, chapter, "cpu", extra | {"recompute": False})
    assert list(store.records(tmp_path / under)) == [] and "python -m lossbook" in output_text(nb)
    run_in(tmp_path, chapter, "cpu", extra | {"recompute": True})
    assert list(store.records(tmp_path / under))


def test_the_issues_command_runs_on_a_fresh_results_folder(data_available, tmp_path):
    """`python -m lossbook run 02_training --scale smoke -p seed=1` once failed on a fresh clone: the
    seed-1 models were trained, then looked for without their seed. The text goes through `-p` here."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LOSSBOOK_RESULTS": str(tmp_path)}
    cmd = [sys.executable, "-m", "lossbook", "run", "02_training", "--scale", "smoke", "-p", "seed=1", "--out",
           str(tmp_path / "executed")]
    for _ in range(2):  # the second call finds the trained models
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
    seeds = {rec["request"]["seed"] for p, rec in store.records(tmp_path / "models" / "smoke") if p.name.endswith(".log.csv")}
    assert seeds == {1} and (tmp_path / "models" / "smoke" / "mnist-net1-st-seed1.pt").exists()
