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
from lossbook.params import SCHEMAS

pytestmark = pytest.mark.notebooks

#: the non-default values, per chapter (fast ones); chapters run in this order, later ones reading the
#: results of earlier ones (04 and 05 study the loss chapter 03 searched)
VARIANTS = {
    "01_toy_inconsistency": {"seed": 1, "norm": "l2", "eps": 0.25, "x0": "0.1,0.2", "fig_eps": 0.3, "n_points": 200,
                             "interactive": True, "recompute": True},
    "02_training": {"seed": 1, "dataset": "mnist", "net": "net1", "training": "st", "recompute": True},
    "03_gp_search": {"settings": "mnist-net1-at-l2", "runs": 2, "seed": 3, "eps": "1.5", "grid_scale": "smoke",
                     "recompute": True},
    "04_transfer": {"seed": 2, "sources": "mnist-net1-at-l2", "cifar_searched": "none", "cifar_sources": "none",
                    "mnist_norms": "l1", "cifar_norms": "linf", "n_images": 16, "recompute": True},
    "05_landscape": {"seed": 4, "source": "mnist-net1-at-l2", "datasets": "mnist", "n_images": 2, "steps": 15,
                     "resolution": 7, "per_kind": 2, "n_examples": 2, "recompute": True},
    "06_atras_sweep": {"seed": 5, "dataset": "mnist", "eps": 0.05, "epochs": 2, "adv_epochs": 2, "architectures": "0,1",
                       "failure_mode": "none", "recompute": True},
    "07_exact_risk": {"studies": "mnist-mlp64-fgsm-linf-eps0.05", "n_images": 4, "time_limit": 2.0, "recompute": True},
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory, data_available):
    """Every chapter at smoke scale with its variant, in one fresh results folder (smoke models copied in)."""
    import os

    from lossbook.book import run_chapter
    from lossbook.config import RESULTS_DIR
    from lossbook.train import ensure_trained

    ensure_trained(["mnist", "cifar10"], ["net1", "net2"], ["st", "at"], "smoke", progress=False)
    root = tmp_path_factory.mktemp("results")
    shutil.copytree(RESULTS_DIR / "models" / "smoke", root / "models" / "smoke")
    old = os.environ.get("LOSSBOOK_RESULTS")
    os.environ["LOSSBOOK_RESULTS"] = str(root)
    try:
        books = {ch: nbformat.read(run_chapter(ch, "smoke", extra={k: v for k, v in VARIANTS[ch].items()},
                                               out_dir=root / "executed"), as_version=4) for ch in VARIANTS}
    finally:
        os.environ.pop("LOSSBOOK_RESULTS") if old is None else os.environ.__setitem__("LOSSBOOK_RESULTS", old)
    return root, books


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


def _runs(root, _):
    return [r for n, r in requests(root, "search/smoke/mnist-net1-at-l2", "run-*.json")]


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
    ("03_gp_search", "settings"): lambda root, nb: len(_runs(root, nb)) == 2,
    ("03_gp_search", "runs"): lambda root, nb: sorted(r["seed"] for r in _runs(root, nb)) == [3, 4],
    ("03_gp_search", "seed"): lambda root, nb: min(r["seed"] for r in _runs(root, nb)) == 3,
    ("03_gp_search", "eps"): lambda root, nb: {r["setting"]["eps"] for r in _runs(root, nb)} == {1.5},
    ("03_gp_search", "grid_scale"): lambda root, nb: "No setting of the 24 has been searched and judged at this scale" in
    output_text(nb),
    ("04_transfer", "seed"): lambda root, nb: {r["seed"] for r in _transfer(root, nb)} == {2},
    ("04_transfer", "n_images"): lambda root, nb: {r["n_images"] for r in _transfer(root, nb) if "n_images" in r} == {16},
    ("04_transfer", "sources"): lambda root, nb: {r["source"] for r in _transfer(root, nb)} == {"mnist-net1-at-l2"},
    ("04_transfer", "mnist_norms"): lambda root, nb: {t["norm"] for r in _transfer(root, nb) if r["what"] == "cross setting"
                                                      for t in r["targets"]} == {"l1"},
    ("04_transfer", "cifar_norms"): lambda root, nb: "cifar10" not in json.dumps(
        [r for r in _transfer(root, nb) if r["what"] == "cross setting"]),  # no CIFAR-10 source: its table is empty
    ("04_transfer", "cifar_searched"): lambda root, nb: not any("grid:" in json.dumps(r) for r in _transfer(root, nb)),
    ("04_transfer", "cifar_sources"): lambda root, nb: not any(r.get("target", "").startswith("cifar10")
                                                             for r in _transfer(root, nb)),
    ("05_landscape", "seed"): lambda root, nb: {r["seed"] for r in _landscape(root, nb)} == {4},
    ("05_landscape", "source"): lambda root, nb: {r["source"] for r in _landscape(root, nb)} == {"mnist-net1-at-l2"},
    ("05_landscape", "datasets"): lambda root, nb: {r["target"].split("-")[0] for r in _landscape(root, nb)} == {"mnist"},
    ("05_landscape", "n_images"): lambda root, nb: {r["n_images"] for r in _landscape(root, nb)} == {2},
    ("05_landscape", "steps"): lambda root, nb: {r["steps"] for r in _landscape(root, nb)} == {15},
    ("05_landscape", "resolution"): lambda root, nb: {r["resolution"] for r in _landscape(root, nb)} == {7},
    ("05_landscape", "per_kind"): lambda root, nb: {r["per_kind"] for r in _landscape(root, nb)} == {2},
    ("05_landscape", "n_examples"): lambda root, nb: {r["n_examples"] for r in _landscape(root, nb)} == {2},
    ("06_atras_sweep", "seed"): lambda root, nb: {r["seed"] for r in _atras(root, nb)} == {5},
    ("06_atras_sweep", "dataset"): lambda root, nb: {r["dataset"] for r in _atras(root, nb)} == {"mnist"},
    ("06_atras_sweep", "eps"): lambda root, nb: {r["eps"] for r in _atras(root, nb)} == {0.05},
    ("06_atras_sweep", "epochs"): lambda root, nb: {r["epochs"] for r in _atras(root, nb)} == {2},
    ("06_atras_sweep", "adv_epochs"): lambda root, nb: {r["adv_epochs"] for r in _atras(root, nb)} == {2},
    ("06_atras_sweep", "architectures"): lambda root, nb: len(store.load(root / "atras/smoke/mnist.csv")) == 2,
    ("06_atras_sweep", "failure_mode"): lambda root, nb: not (root / "atras/smoke/failure-sigmoid-sgd").exists(),
    ("07_exact_risk", "studies"): lambda root, nb: [r["study"]["model"] for r in _exact(root, nb)] == ["mnist-mlp64-fgsm"],
    ("07_exact_risk", "n_images"): lambda root, nb: [r["n_images"] for r in _exact(root, nb)] == [4],
    ("07_exact_risk", "time_limit"): lambda root, nb: [r["study"]["time_limit"] for r in _exact(root, nb)] == [2.0],
}
#: parameters every chapter has and that need no check of their own: ``scale`` (smoke: every result above
#: lies under a smoke folder) and ``recompute`` (True above: a fresh folder, so everything was computed)
COMMON = ("scale", "recompute")


def test_every_parameter_has_a_non_default_value_and_a_check():
    for chapter, schema in SCHEMAS.items():
        for name, param in schema.items():
            if name in COMMON:
                continue
            assert (chapter, name) in CHECKS, f"no check that {chapter}'s {name} reaches its result"
            assert name in VARIANTS[chapter] and VARIANTS[chapter][name] != param.default, (chapter, name)
    assert set(CHECKS) <= {(c, n) for c, s in SCHEMAS.items() for n in s}


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
