"""Do searched losses transfer? The paper's Question 2 (Figs. 5-8), beside handcrafted references.

Every comparison attacks the same images with the same random starts for every loss (one
:func:`~lossbook.core.attacks.evaluate_losses` call), and reports CE, C&W and DLR beside the searched
loss. Results are saved under ``results/transfer/<scale>/`` as CSV with a JSON of what made them;
a saved result is reused only when that JSON matches the request.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm.auto import tqdm

from lossbook import store
from lossbook.chapters.gp_search import PLANS, read_summary, summary_path
from lossbook.chapters.paper_arm import ARMS, ArmPlan, arm_runs, arm_setting, best_run, judge_setting, load_summary
from lossbook.config import NETS, NORMS, RESULTS_DIR, SCALES, TRAININGS, check_choice, quiet, train_config
from lossbook.core import data
from lossbook.core.attacks import evaluate_losses, evaluation_set
from lossbook.core.losses import HANDCRAFTED, compile_formula, pretty
from lossbook.core.stats import NOT_RUN, majority_verdict
from lossbook.core.train import ensure_trained, load_model
from lossbook.params import (
    Param,
    common,
    is_setting,
    listing,
    whole,
)
from lossbook.search.runs import load_runs, search_setting
from lossbook.search.settings import (
    SEARCH_PRESETS,
    Setting,
    auto_setting,
    make_setting,
    parse_setting,
    saved_auto_setting,
    setting_images,
)

#: The handcrafted references shown beside every searched loss (margin equals C&W at kappa 0).
REFERENCES = ("ce", "cw", "dlr")


@dataclass(frozen=True)
class TransferConfig:
    """What every transfer experiment evaluates on."""

    n_images: int | None  # first n correctly classified test images; None: all of them
    steps: tuple = (10, 100)  # PGD iterations compared (Figs. 5/6)
    eps_factors: tuple = (0.5, 0.75, 1.0, 1.25, 1.5)  # eps sweep, relative to the setting's eps
    cross_steps: int = 10  # PGD iterations of the cross-setting table (the search's attack)
    seed: int = 0  # random starts, shared by every loss compared


TRANSFER_PRESETS = {
    "smoke": TransferConfig(n_images=32, steps=(10, 20), eps_factors=(0.5, 1.0, 1.5)),
    "cpu": TransferConfig(n_images=1000, eps_factors=(0.5, 1.0, 1.5)),
    "paper": TransferConfig(n_images=None),
}


def transfer_config(scale: str, **overrides) -> TransferConfig:
    """The preset of a scale, with fields overridden (None values ignored)."""
    check_choice("scale", scale, SCALES)
    return replace(TRANSFER_PRESETS[scale], **{k: v for k, v in overrides.items() if v is not None})


def transfer_dir(scale: str, root: Path | None = None) -> Path:
    return (root or RESULTS_DIR / "transfer") / scale


# ------------------------------------------------------------------------------------------------
# The searched losses, by setting name
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchedLoss:
    """The best loss found for one setting (over its runs) and the setting it was found under."""

    source: str  # setting name, e.g. "mnist-net1-at-linf", or "<preset>:<setting>"
    setting: Setting
    formula: str
    fitness: float  # R'' on the search's own images
    model_scale: str  # the scale of the models it was searched on (and is evaluated on)

    @property
    def pretty(self) -> str:
        return pretty(self.formula)

    def loss(self) -> Callable:
        return compile_formula(self.formula)


def split_source(source: str) -> tuple[str | None, str]:
    """``"grid:cifar10-net1-st-linf"`` -> ("grid", "cifar10-net1-st-linf"): a source searched under
    another preset than the chapter's scale (chapter 3's grid); a plain setting name -> (None, name)."""
    preset, _, name = source.rpartition(":")
    if preset:
        check_choice(f"search preset of source {source!r}", preset, SEARCH_PRESETS)
    parse_setting(name)
    return preset or None, name


def file_safe(source: str) -> str:
    return source.replace(":", "-")


#: an arm's search preset -> its plan: a source "paper-arm:<setting>" is the paper arm's loss for it
ARM_PRESETS = {plan.preset: plan for plan in ARMS.values()}


def arm_of(source: str) -> ArmPlan | None:
    """The arm a source belongs to (``"paper-arm:mnist-net1-st-linf"``: the paper arm), else None."""
    return ARM_PRESETS.get(split_source(source)[0])


def searched_loss(source: str, scale: str, root: Path | None = None) -> SearchedLoss:
    """The best run's loss of a searched setting (``FileNotFoundError`` if it was not searched); a
    ``"<preset>:"`` prefix reads the runs of that preset (e.g. ``grid:``) instead of the scale's. An arm's
    preset (``paper-arm:``) gives the arm's selected loss (the best of its unseeded runs, as
    :mod:`~lossbook.chapters.paper_arm` judges it) on the arm's model and at the arm's eps."""
    preset, name = split_source(source)
    plan = ARM_PRESETS.get(preset)
    if plan is not None:
        dataset = parse_setting(name)[0]
        runs = arm_runs(name, plan, root, compute=False)
        if len(runs) < len(plan.seeds_of(dataset)):
            raise FileNotFoundError(f"the {plan.name} arm has {len(runs)} of the {len(plan.seeds_of(dataset))} runs of "
                                    f"{name}; run `python -m lossbook paper-arm --arm {plan.name} --settings {name}`")
        best = best_run(runs)
        return SearchedLoss(source, arm_setting(name, plan, root), best["best"], float(best["best_fitness"]),
                            plan.scale_of(dataset))
    best = max(load_runs(name, preset or scale, root), key=lambda r: r["best_fitness"])
    return SearchedLoss(source, Setting(**best["setting"]), best["best"], float(best["best_fitness"]), scale)


def chapter_arm_name(scale: str) -> str:
    """The arm the chapters read at a scale: the paper arm's committed results, the smoke arm at smoke scale."""
    return "smoke" if scale == "smoke" else "paper"


def arm_source(name: str, scale: str) -> str:
    """The source of the scale's arm for setting ``name`` (``"paper-arm:<name>"``); at smoke scale the
    smoke arm judges it first where it has not (seconds)."""
    arm = chapter_arm_name(scale)
    if arm == "smoke":
        done = load_summary(arm)
        if done is None or name not in set(done.setting):
            judge_setting(name, ARMS[arm], progress=False, log=lambda *a: None)
    return f"{ARMS[arm].preset}:{name}"


def arm_sources(arm: str, dataset: str) -> list[str]:
    """The sources of every setting of ``dataset`` that ``arm`` has judged (``"<preset>:<setting>"``). The
    smoke arm first judges its one setting of the dataset where missing (seconds)."""
    if arm == "smoke":
        arm_source(f"{dataset}-net1-st-linf", "smoke")
    summary = load_summary(arm)
    names = [] if summary is None else [n for n in summary.setting if n.startswith(dataset + "-")]
    return [f"{ARMS[arm].preset}:{n}" for n in names]


def models_on(dataset: str, found: SearchedLoss) -> str:
    """The scale of the models a loss is evaluated on for ``dataset``: its arm's models there, else its own."""
    plan = arm_of(found.source)
    return plan.scale_of(dataset) if plan is not None else found.model_scale


def held_out_skip(found: SearchedLoss) -> int:
    """Test images skipped before the evaluation set: an arm's losses are evaluated after the first
    ``n_images`` of its search preset (the images every search of the arm selected on, on every model),
    so that their results are held out; 0 for other sources (the stated, optimistic evaluation set)."""
    plan = arm_of(found.source)
    return SEARCH_PRESETS[plan.preset].n_images if plan is not None else 0


def regime(losses) -> str:
    """One sentence per dataset on what the given searched losses are and where they are evaluated
    (which search, which models and their epochs, which eps rule, which images): the chapters' "what
    differs from the paper", computed from the losses shown rather than written by hand."""
    by_dataset: dict[str, list[SearchedLoss]] = {}
    for f in losses:
        by_dataset.setdefault(f.setting.dataset, []).append(f)
    out = []
    for ds, fs in by_dataset.items():
        epochs = sorted({train_config(ds, f.setting.net, f.setting.training, f.model_scale).epochs for f in fs})
        models = f"{'/'.join(sorted({f.model_scale for f in fs}))} models ({'-'.join(map(str, epochs))} " \
                 f"epoch{'s' if epochs != [1] else ''})"
        arms = {arm_of(f.source) for f in fs}
        if arms == {None}:
            presets = sorted({split_source(f.source)[0] or f.model_scale for f in fs})
            out.append(f"{ds}: the best losses of our {', '.join(presets)} searches (seeded runs among them), on the "
                       f"{models}, at the search's eps, on evaluation images that include the search's own")
        else:
            names = ", ".join(sorted(p.name for p in arms if p is not None))
            out.append(f"{ds}: the {names} arm's selected losses (unseeded runs only), on the {models}, at the eps of "
                       f"the paper's rule (CE-PGD-10 R'' about 0.7), on test images after the {held_out_skip(fs[0])} "
                       f"the searches used")
    return "; ".join(out) + "." if out else "No searched loss is shown at this scale."


def evaluation_note(model_scale: str, scale: str, skip: int = 0) -> dict:
    """A request's model scale and skipped images, named only where they differ from the chapter's
    defaults (so that records made before arms existed stay valid)."""
    return {**({} if model_scale == scale else {"model_scale": model_scale}), **({"skip": skip} if skip else {})}


def grid_sources(spec: str, scale: str, dataset: str = "cifar10") -> list[str]:
    """Sources searched by chapter 3's grid at this scale: "grid" (every setting of ``dataset`` the grid
    has judged), "none", or comma-separated setting names; prefixed with the grid's preset where it is not
    the scale's own. At smoke scale one CIFAR-10 setting, searched here where missing (seconds)."""
    plan = PLANS[scale]
    if spec == "none":
        return []
    if spec == "arm":
        return arm_sources(chapter_arm_name(scale), dataset)
    if spec == "grid":
        if scale == "smoke":
            names = [f"{dataset}-net1-st-linf"]
        else:
            judged = read_summary(plan) if summary_path(plan).exists() else []
            names = [r["setting"] for r in judged if r["setting"].startswith(dataset + "-")]
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        parse_setting(n)
    if scale == "smoke":
        prepare_smoke(names, datasets=(dataset,))
    return [n if plan.preset == scale else f"{plan.preset}:{n}" for n in names]


def searched_sources(scale: str, dataset: str | None = None, root: Path | None = None) -> list[str]:
    """Names of the settings with finished search runs at a scale (optionally of one dataset)."""
    folder = (root or RESULTS_DIR / "search") / scale
    names = sorted(p.parent.name for p in folder.glob("*/run-*.json"))
    return [n for n in dict.fromkeys(names) if dataset is None or n.startswith(dataset + "-")]


def prepare_smoke(sources: list[str], datasets=("mnist",), progress: bool = False) -> None:
    """At smoke scale (seconds): train the smoke models the chapters need and search missing sources."""
    for src in sources:
        dataset, net, training, norm = parse_setting(src)
        ensure_trained(sorted({dataset, *datasets}), [net], [training], "smoke", progress=progress)
        if src not in searched_sources("smoke", dataset):
            search_setting(make_setting(dataset, net, training, norm), "smoke", progress=progress)


# ------------------------------------------------------------------------------------------------
# Saved results
# ------------------------------------------------------------------------------------------------
def _cached(path: Path, meta: dict, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``path`` (CSV) if the store's record says it was made with ``meta``, else ``compute()`` saved there."""
    return store.cached(path, meta, compute)


def saved(path: Path) -> pd.DataFrame | None:
    """A saved result table (validated against its record), or None where none is saved."""
    return store.load(path) if path.exists() else None


def _evaluation(setting: Setting, model_scale: str, n_images: int | None, device=None, skip: int = 0):
    model, x, y, _ = setting_images(setting, model_scale, n_images, skip=skip, device=device)
    return model, x, y


def scaled_eps(eps: float, factor: float, norm: str) -> float:
    """``factor`` x ``eps``, rounded; an l_inf radius is capped at 1 (images live in [0, 1])."""
    e = round(eps * factor, 6)
    return min(e, 1.0) if norm == "linf" else e


def _attack_all(model, x, y, named: dict, norm: str, eps: float, steps: int, seed: int) -> dict:
    res = evaluate_losses(model, x, y, list(named.values()), norm=norm, eps=eps, steps=steps, seed=seed)
    return dict(zip(named, res.risk.tolist()))


# ------------------------------------------------------------------------------------------------
# Figs. 5/6: other eps, other attack budget
# ------------------------------------------------------------------------------------------------
def same_setting_on(dataset: str, found: SearchedLoss, scale: str, device=None) -> Setting:
    """The source's net, training and norm on ``dataset``: the source setting itself, or on another
    dataset at the eps :func:`~lossbook.search.settings.auto_setting` picks for our model there (for an
    arm's loss: the eps of the arm's rule on the arm's model there)."""
    s = found.setting
    if dataset == s.dataset:
        return s
    plan = arm_of(found.source)
    if plan is not None:
        return arm_setting(f"{dataset}-{s.net}-{s.training}-{s.norm}", plan)
    return auto_setting(dataset, s.net, s.training, s.norm, scale, n_images=SEARCH_PRESETS[scale].n_images,
                        device=device)


def eps_sweep(source: str, scale: str, cfg: TransferConfig | None = None, dataset: str | None = None,
              root: Path | None = None, compute: bool = True, progress: bool = True,
              device=None) -> pd.DataFrame | None:
    """R'' of the searched loss of ``source`` and of CE/C&W/DLR for eps = factor x the setting's eps and
    PGD with each of ``cfg.steps`` iterations, on the source's own model and norm (Figs. 5/6) or, with
    ``dataset``, on the same net/training/norm of another dataset (a transferred loss).

    Rows: source, target, formula, eps, factor, steps, loss, risk, n_images, seed.
    """
    cfg = cfg or TRANSFER_PRESETS[scale]
    found = searched_loss(source, scale)
    path_target = found.setting.name() if dataset in (None, found.setting.dataset) else \
        found.setting.name().replace(found.setting.dataset, dataset, 1)
    path = transfer_dir(scale, root) / f"eps-{path_target}--from-{file_safe(source)}.csv"
    if not compute:
        return saved(path)
    t = same_setting_on(dataset or found.setting.dataset, found, scale, device)
    models = models_on(t.dataset, found)
    meta = {"what": "eps sweep", "scale": scale, "source": source, "formula": found.formula, "target": t.name(),
            "eps": t.eps, **asdict(cfg), **evaluation_note(models, scale, held_out_skip(found))}

    def run() -> pd.DataFrame:
        model, x, y = _evaluation(t, models, cfg.n_images, device, held_out_skip(found))
        named = {"searched": found.loss(), **{k: HANDCRAFTED[k] for k in REFERENCES}}
        rows = []
        grid = [(f, m) for m in cfg.steps for f in cfg.eps_factors]
        for factor, steps in tqdm(grid, desc=f"eps sweep {t.name()} <- {source}", **quiet(progress)):
            eps = scaled_eps(t.eps, factor, t.norm)
            for loss, risk in _attack_all(model, x, y, named, t.norm, eps, steps, cfg.seed).items():
                rows.append({"source": source, "target": t.name(), "formula": found.pretty, "eps": eps,
                             "factor": factor, "steps": steps, "loss": loss, "risk": risk, "n_images": len(x),
                             "seed": cfg.seed})
        return pd.DataFrame(rows)

    return _cached(path, meta, run)


# ------------------------------------------------------------------------------------------------
# Fig. 7: other data (MNIST's extended test set, QMNIST test50k)
# ------------------------------------------------------------------------------------------------
def extended_data(source: str, scale: str, cfg: TransferConfig | None = None, root: Path | None = None,
                  compute: bool = True, progress: bool = True, device=None,
                  loader: Callable | None = None) -> pd.DataFrame | None:
    """PGD-10 R'' over the eps sweep on the original MNIST test set and on QMNIST's 50k extended
    test set (first n correctly classified images of each). Raises :class:`~lossbook.core.data.DataError`
    where the extended set cannot be loaded. Rows: data, eps, factor, loss, risk, n_images."""
    cfg = cfg or TRANSFER_PRESETS[scale]
    found = searched_loss(source, scale)
    s = found.setting
    if s.dataset != "mnist":
        raise ValueError(f"the extended test set exists for MNIST only; {source!r} is a {s.dataset} setting")
    path = transfer_dir(scale, root) / f"extended-{file_safe(source)}.csv"
    meta = {"what": "extended data", "scale": scale, "source": source, "formula": found.formula, "eps": s.eps,
            **asdict(cfg), **evaluation_note(found.model_scale, scale, held_out_skip(found))}
    if not compute:
        return saved(path)

    def run() -> pd.DataFrame:
        model = load_model(s.dataset, s.net, s.training, found.model_scale, device=device)
        x_ext, y_ext = (loader or data.load_qmnist_extended)()
        sets = {"MNIST test": data.load("mnist", "test"), "QMNIST extended (test50k)": (x_ext, y_ext)}
        named = {"searched": found.loss(), **{k: HANDCRAFTED[k] for k in REFERENCES}}
        rows = []
        for name, (xs, ys) in sets.items():
            skip = held_out_skip(found) if name == "MNIST test" else 0  # the extended set holds no search image
            x, y, _ = evaluation_set(model, xs, ys, n=None if cfg.n_images is None else skip + cfg.n_images)
            x, y = x[skip:], y[skip:]
            for factor in tqdm(cfg.eps_factors, desc=f"{source} on {name}", **quiet(progress)):
                eps = scaled_eps(s.eps, factor, s.norm)
                for loss, risk in _attack_all(model, x, y, named, s.norm, eps, cfg.steps[0], cfg.seed).items():
                    rows.append({"source": source, "data": name, "eps": eps, "factor": factor, "loss": loss,
                                 "risk": risk, "n_images": len(x)})
        return pd.DataFrame(rows)

    return _cached(path, meta, run)


# ------------------------------------------------------------------------------------------------
# Fig. 8: other models and norms
# ------------------------------------------------------------------------------------------------
def target_settings(dataset: str, scale: str, norms=NORMS, device=None, compute: bool = True,
                    arm: ArmPlan | None = None) -> list[Setting] | None:
    """Every (net, training, norm) of a dataset at the eps the search chapter would use for it
    (Table III unless CE-PGD-10 leaves the 0.5-0.9 band on our model, else calibrated to 0.7), or, for
    an ``arm``, at the eps of the arm's rule on the arm's models. With ``compute=False`` the eps are only
    read (None if one of them is not calibrated yet)."""
    if arm is not None:
        return [arm_setting(f"{dataset}-{net}-{training}-{norm}", arm)
                for training in TRAININGS for net in NETS for norm in norms]
    if not compute:
        found = [saved_auto_setting(dataset, net, training, norm, scale)
                 for training in TRAININGS for net in NETS for norm in norms]
        return None if None in found else found
    n = SEARCH_PRESETS[scale].n_images
    return [auto_setting(dataset, net, training, norm, scale, n_images=n, device=device)
            for training in TRAININGS for net in NETS for norm in norms]


def cross_path(datasets, scale: str, source: str, root: Path | None = None) -> Path:
    """Where one source's row of the cross-setting table of these datasets' targets is saved."""
    return transfer_dir(scale, root) / f"cross-{'-'.join(sorted(datasets))}--from-{file_safe(source)}.csv"


def _cross_request(found: SearchedLoss, targets: list[Setting], scale: str, cfg: TransferConfig, models: str,
                   skip: int) -> dict:
    return {"what": "cross setting", "scale": scale, "source": found.source, "formula": found.formula,
            "targets": [asdict(t) for t in targets], **asdict(cfg), **evaluation_note(models, scale, skip)}


def cross_setting(sources: list[str], targets: list[Setting], scale: str, cfg: TransferConfig | None = None,
                  root: Path | None = None, compute: bool = True, progress: bool = True,
                  device=None) -> pd.DataFrame | None:
    """Each source's searched loss evaluated under every target (model, norm, eps), with PGD-
    ``cfg.cross_steps``, beside CE, C&W and DLR on the same images and starts.

    One row per (source, target): risk_searched, risk_ce, risk_cw, risk_dlr, gain_over_ce_pp,
    gain_over_best_reference_pp (over the best of CE/C&W/DLR). Each source's rows are saved in their
    own file with what made them (its formula, the targets, ``cfg``), so adding a source computes only
    its rows. The sources without rows saved for this request are computed together (one attack per
    target); with ``compute=False`` they are left out (None if none is saved).
    """
    cfg = cfg or TRANSFER_PRESETS[scale]
    if not sources or not targets:
        raise ValueError("cross_setting needs at least one source and one target")
    found = {src: searched_loss(src, scale) for src in sources}
    datasets = {t.dataset for t in targets}
    models = {models_on(d, f) for f in found.values() for d in datasets}
    if len(models) != 1:
        raise ValueError(f"cross_setting: the sources' models differ ({', '.join(sorted(models))}); compare sources of "
                         f"one arm or one scale")
    models, skips = models.pop(), {held_out_skip(f) for f in found.values()}
    if len(skips) != 1:
        raise ValueError("cross_setting: the sources' evaluation sets differ (an arm's losses skip its search "
                         "images); compare sources of one arm or one scale")
    skip = skips.pop()
    paths = {src: cross_path(datasets, scale, src, root) for src in found}
    requests = {src: _cross_request(f, targets, scale, cfg, models, skip) for src, f in found.items()}
    tables = {src: store.load(paths[src], requests[src]) for src in found if store.matches(paths[src], requests[src])}
    todo = [src for src in found if src not in tables]
    if todo and compute:
        partial = transfer_dir(scale, root) / "partial"
        new = _cross_rows({src: found[src] for src in todo}, targets, models, cfg, progress, device, skip, partial)
        for src in todo:
            tables[src] = new[new["source"] == src].reset_index(drop=True)
            store.save(paths[src], tables[src], requests[src])
        for done in _partial_paths(partial, {src: found[src] for src in todo}, targets, models, cfg, skip):
            for path in (done, store.record_path(done)):
                path.unlink(missing_ok=True)
    if not tables:
        return None
    return pd.concat([tables[src] for src in found if src in tables], ignore_index=True)


def _target_request(found: dict[str, SearchedLoss], t: Setting, models: str, cfg: TransferConfig, skip: int) -> dict:
    return {"what": "cross setting, one target", "sources": {k: v.formula for k, v in found.items()},
            "target": asdict(t), **asdict(cfg), "model_scale": models, "skip": skip}


def _partial_paths(folder: Path, found: dict[str, SearchedLoss], targets: list[Setting], models: str,
                   cfg: TransferConfig, skip: int) -> list[Path]:
    """Where each target's rows of an unfinished cross-setting table wait (named by their request's hash)."""
    def name(t: Setting) -> str:
        request = json.dumps(_target_request(found, t, models, cfg, skip), sort_keys=True, default=str)
        return f"{t.name()}--{hashlib.sha256(request.encode()).hexdigest()[:16]}.csv"
    return [folder / name(t) for t in targets]


def _cross_rows(found: dict[str, SearchedLoss], targets: list[Setting], models: str, cfg: TransferConfig,
                progress: bool, device, skip: int = 0, partial: Path | None = None) -> pd.DataFrame:
    """Every source under every target, one batched attack per target. With ``partial`` each target's rows
    are saved there as they finish, so an interrupted table resumes at its first unfinished target."""
    paths = _partial_paths(partial, found, targets, models, cfg, skip) if partial is not None else [None] * len(targets)
    tables = []
    for t, path in tqdm(list(zip(targets, paths)), desc="cross-setting targets", **quiet(progress)):
        def one_target(t=t) -> pd.DataFrame:
            model, x, y = _evaluation(t, models, cfg.n_images, device, skip)
            named = {**{f"src:{k}": v.loss() for k, v in found.items()}, **{k: HANDCRAFTED[k] for k in REFERENCES}}
            risk = _attack_all(model, x, y, named, t.norm, t.eps, cfg.cross_steps, cfg.seed)
            refs = {k: risk[k] for k in REFERENCES}
            return pd.DataFrame([{"source": src, "target": t.name(), "target_eps": t.eps, "n_images": len(x),
                                  "risk_searched": risk[f"src:{src}"], **{f"risk_{k}": v for k, v in refs.items()},
                                  "gain_over_ce_pp": round(100 * (risk[f"src:{src}"] - refs["ce"]), 2),
                                  "gain_over_best_reference_pp": round(100 * (risk[f"src:{src}"] - max(refs.values())), 2)}
                                 for src in found])
        tables.append(one_target() if path is None else
                      store.cached(path, _target_request(found, t, models, cfg, skip), one_target))
    return pd.concat(tables, ignore_index=True)


def away_from_source(table: pd.DataFrame) -> pd.DataFrame:
    """The cells of a cross-setting table whose target is not the setting the source was searched under
    (whatever the source's preset prefix)."""
    searched_under = table["source"].map(lambda s: split_source(s)[1])  # "grid:<setting>" -> "<setting>"
    return table[searched_under != table["target"]]


def q2_answer(table: pd.DataFrame) -> dict:
    """Question 2 on one dataset's cross-setting table, counted once for the chapter and the glance page.

    The unit of the test is the searched loss (its cells share images and starts, so they are not
    independent): per loss, the mean gain over CE across the cells away from its own setting; the losses
    with a positive mean (k_losses) among those with a non-zero one (n_losses), the exact sign test's
    verdict and p. By cell, descriptive: cells with a gain (k) among those with a gain or a loss (n, ties
    left out), the median gain, the number of losses."""
    off = away_from_source(table)
    k, n = int((off["gain_over_ce_pp"] > 0).sum()), int((off["gain_over_ce_pp"] != 0).sum())
    per_loss = off.groupby("source")["gain_over_ce_pp"].mean()
    k_losses, n_losses = int((per_loss > 0).sum()), int((per_loss != 0).sum())
    verdict, p = majority_verdict(k_losses, n_losses)
    return {"k_losses": k_losses, "n_losses": n_losses, "verdict": verdict, "p": p, "k": k, "n": n,
            "ties": len(off) - n, "median_pp": float(off["gain_over_ce_pp"].median()),
            "losses": int(table["source"].nunique())}


def q2_sentence(a: dict) -> str:
    """:func:`q2_answer` in words, the same on the chapter and the glance page."""
    return (f"the mean gain over CE away from its own setting is positive for {a['k_losses']} of {a['n_losses']} "
            f"searched losses (sign test over losses p = {a['p']:.2g}, {a['verdict']}); by cell, {a['k']} of {a['n']} "
            f"cells with a difference favour the searched loss ({a['ties']} ties; median {a['median_pp']:+.1f} pp)")


def takeaway(cross: dict) -> str:
    """Chapter 04's answer from its cross-setting tables (dataset -> table)."""
    if not cross:
        return "No cross-setting table is available at this scale."
    parts = []
    for ds, table in cross.items():
        parts.append(f"{ds}: {q2_sentence(q2_answer(table))}")
    return "; ".join(parts) + ". Each loss counts once in the test: its cells share images and starts."


def gain_matrix(table: pd.DataFrame, column: str = "gain_over_ce_pp") -> pd.DataFrame:
    """The cross-setting table as a source x target matrix of one column (Fig. 8)."""
    check_choice("column", column, [c for c in table.columns if c.startswith("gain")])
    src = list(dict.fromkeys(table["source"]))
    tgt = list(dict.fromkeys(table["target"]))
    return table.pivot(index="source", columns="target", values=column).loc[src, tgt]


def summary(sweeps: list[pd.DataFrame]) -> pd.DataFrame:
    """At the search's own eps (factor 1): R'' of each loss per source and PGD budget, and the gains
    of the searched loss over CE and over the best of C&W/DLR, in pp."""
    rows = []
    for df in sweeps:
        at = df[df["factor"] == 1.0]
        for (source, target, steps), g in at.groupby(["source", "target", "steps"], sort=False):
            r = dict(zip(g["loss"], g["risk"]))
            rows.append({"searched under": source, "evaluated on": target, "steps": steps, "eps": g["eps"].iloc[0],
                         **{f"R'' {k}": r[k] for k in ("searched",) + REFERENCES},
                         "gain over CE (pp)": 100 * (r["searched"] - r["ce"]),
                         "gain over best of C&W/DLR (pp)": 100 * (r["searched"] - max(r["cw"], r["dlr"]))})
    return pd.DataFrame(rows)


def verdicts(sweeps: list[pd.DataFrame], cross: dict[str, pd.DataFrame]) -> list[str]:
    """One sentence per (source, target, budget) of the sweeps at the search's eps, and one per
    cross-setting table counting the (source, target) cells with a positive gain away from the source."""
    out = []
    for _, r in summary(sweeps).iterrows():
        out.append(f"{r['searched under']} on {r['evaluated on']}, PGD-{r['steps']}: {r['gain over CE (pp)']:+.1f} pp "
                   f"over CE, {r['gain over best of C&W/DLR (pp)']:+.1f} pp over the better of C&W and DLR")
    for ds, table in cross.items():
        off = away_from_source(table)
        out.append(f"{ds}, other (model, norm) than searched under: gain over CE > 0 in "
                   f"{int((off['gain_over_ce_pp'] > 0).sum())} of {len(off)} cells (median "
                   f"{off['gain_over_ce_pp'].median():+.1f} pp); over the best of CE/C&W/DLR > 0 in "
                   f"{int((off['gain_over_best_reference_pp'] > 0).sum())} (median "
                   f"{off['gain_over_best_reference_pp'].median():+.1f} pp)")
    return out


def chapter_sources(sources: str, cifar_sources: str, scale: str) -> tuple[list[str], list[str], dict, list[str]]:
    """Chapter 04's sources: the MNIST sources ("arm": the settings the scale's arm judged, its selected
    losses; "all": every searched setting at this scale), the sources carried to CIFAR-10 ("none" or
    names; the arm's losses for them with "arm"), the searched losses found ({name: SearchedLoss}) and the
    names without a saved search. At smoke scale one source of each kind, searched here where missing
    (seconds)."""
    carried = [] if cifar_sources == "none" else [s.strip() for s in cifar_sources.split(",") if s.strip()]
    for name in carried:
        parse_setting(name)
    if sources == "arm":
        arm = chapter_arm_name(scale)
        names = arm_sources(arm, "mnist")
        carried = [arm_source(n, scale) for n in carried[:1 if scale == "smoke" else None]]
    elif sources == "all":
        names = ["mnist-net1-st-linf"] if scale == "smoke" else searched_sources(scale, "mnist")
    else:
        names = [s.strip() for s in sources.split(",") if s.strip()]
    for name in names + carried:
        split_source(name)  # a malformed name stops here with a clear message
    if scale == "smoke" and sources != "arm":
        carried = carried[:1]
        prepare_smoke(names + carried, datasets=("mnist", "cifar10") if carried else ("mnist",))
    found = {}
    for name in dict.fromkeys(names + carried):
        try:
            found[name] = searched_loss(name, scale)
        except FileNotFoundError:
            pass
    missing = [n for n in dict.fromkeys(names + carried) if n not in found]
    return [n for n in names if n in found], [n for n in carried if n in found], found, missing


def chapter_sweeps(names: list[str], scale: str, cfg: TransferConfig, compute: bool,
                   dataset: str | None = None) -> tuple[list[pd.DataFrame], list[str]]:
    """Chapter 04's eps sweeps of ``names`` (on ``dataset``'s model of the same net, training and norm;
    their own model by default) and the names without one (not computed, or no model at this scale)."""
    sweeps, missing = [], []
    for name in names:
        try:
            df = eps_sweep(name, scale, cfg, dataset=dataset, compute=compute)
        except FileNotFoundError:  # the target model is not trained at this scale
            df = None
        (sweeps.append(df) if df is not None else missing.append(name))
    return sweeps, missing


def other_data_panels(names: list[str], sweeps: list[pd.DataFrame], scale: str, cfg: TransferConfig,
                      compute: bool) -> tuple[list[pd.DataFrame], str]:
    """Fig. 7's panels: each source on QMNIST's extended test set where it can be had, else the PGD-10
    curves on the original test set; with a note saying which (empty when the extended set was used)."""
    extended, note = [], ""
    for name in names:
        try:
            df = extended_data(name, scale, cfg, compute=compute)
        except data.DataError as exc:
            note = f"Extended test set not available, showing the original test set only.\n{exc}"
            break
        if df is not None:
            extended.append(df)
    if extended:
        return [g.assign(target=f"{name} | {data_name}", steps=10)
                for d in extended for (name, data_name), g in d.groupby(["source", "data"], sort=False)], ""
    if not note:
        note = ("No results on QMNIST's extended test set are saved at this scale (it needs a download, which the "
                "machine that made them did not have; rerun with recompute=True where torchvision can fetch it). "
                "Showing the original test set only.")
    return [d[d["steps"] == min(d["steps"])].assign(target=lambda d: d["target"] + " | MNIST test")
            for d in sweeps], note


def chapter_norms(spec: str, what: str) -> list[str]:
    """Norms named by a chapter parameter: "all" or comma-separated names (each checked)."""
    norms = list(NORMS) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    for n in norms:
        check_choice(f"norm in {what}", n, NORMS)
    return norms


def chapter_cross(names: list[str], scale: str, cfg: TransferConfig, compute: bool, mnist_norms: str = "all",
                  cifar_norms: str = "all", cifar_names: list[str] | None = None
                  ) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Fig. 8's cross-setting tables per dataset (at smoke scale: MNIST, and CIFAR-10 only when its norms are
    asked for; l_inf unless asked) and what is
    missing from them. CIFAR-10's rows are ``cifar_names`` (its own searched losses) where given, else
    the MNIST ``names`` carried across data. Without ``compute`` a table holds the sources whose rows
    were saved for exactly these targets and settings; the others are listed as missing."""
    cross, missing = {}, []
    specs = {"mnist": mnist_norms, "cifar10": cifar_norms}
    asked = {"mnist": chapter_norms(mnist_norms, "mnist_norms"), "cifar10": chapter_norms(cifar_norms, "cifar_norms")}
    for ds in ("mnist",) if scale == "smoke" and cifar_norms == "all" else ("mnist", "cifar10"):
        # smoke scale: l_inf unless norms were asked for (an asked norm was silently dropped before)
        norms = ["linf"] if scale == "smoke" and specs[ds] == "all" else asked[ds]
        sources = cifar_names if ds == "cifar10" and cifar_names else names
        arms = {arm_of(s) for s in sources}
        table = None
        try:
            targets = target_settings(ds, scale, norms=norms, compute=compute, arm=arms.pop() if len(arms) == 1 else None)
            if sources and targets:
                table = cross_setting(sources, targets, scale, cfg, compute=compute)
        except FileNotFoundError:  # a model of this dataset is not trained at this scale
            pass
        have = set() if table is None else set(table["source"])
        if table is not None:
            cross[ds] = table
        if not sources or have != set(sources):
            lacking = [s for s in sources if s not in have]
            missing.append(f"cross-setting rows for {ds} ({', '.join(lacking) or 'no sources'})")
    return cross, missing


def saved_cross(scale: str) -> dict[str, pd.DataFrame]:
    """The cross-setting tables chapter 04 shows with its default parameters, read without computing
    (by :func:`chapter_cross`): dataset -> the rows saved for exactly that request. Empty at smoke
    scale, where the chapter computes its own and nothing is committed."""
    if scale == "smoke":
        return {}
    names, _, _, _ = chapter_sources(PARAMETERS["sources"].default, "none", scale)
    cross, _ = chapter_cross(names, scale, TRANSFER_PRESETS[scale], compute=False,
                             cifar_names=grid_sources(PARAMETERS["cifar_searched"].default, scale, "cifar10"))
    return cross


#: chapter 04's parameters (papermill, ``run -p``; checked before its kernel starts)
PARAMETERS: dict[str, Param] = {
    **common("smoke | cpu (committed results) | paper"),
    "sources": Param("arm", listing(is_setting, "settings", ("arm", "all"))),
    "cifar_searched": Param("arm", listing(is_setting, "settings", ("arm", "grid", "none"))),
    "cifar_sources": Param("mnist-net1-at-linf,mnist-net2-at-linf", listing(is_setting, "settings", ("none",))),
    "mnist_norms": Param("all", listing(lambda s: s in NORMS, "norms", ("all",))),
    "cifar_norms": Param("all", listing(lambda s: s in NORMS, "norms", ("all",))),
    "n_images": Param(0, whole(), "evaluation images; 0: the scale's default"),
}


# ------------------------------------------------------------------------------------------------
# The glance page's rows (lossbook.publish.glance)
# ------------------------------------------------------------------------------------------------
#: the label of chapter 04's section on other models and norms, where the glance page's rows link
GLANCE_TARGET = "q2-answer"


def glance_rows(scale: str) -> list[dict]:
    """Q2: the searched losses keep a gain over CE under other (model, norm) settings (Fig. 8)."""
    rows, cross = [], saved_cross(scale)
    for ds in ("mnist", "cifar10"):
        table = cross.get(ds)
        if table is None or table.empty:
            rows.append({"paper": "AutoLoss-AR", "claim": f"Q2: searched losses transfer to other models and norms ({ds})",
                         "the paper's number": "stated: mostly (Fig. 8)", "ours": NOT_RUN, "scale": scale,
                         "verdict": NOT_RUN})
            continue
        a = q2_answer(table)
        rows.append({"paper": "AutoLoss-AR", "claim": f"Q2: searched losses transfer to other models and norms ({ds})",
                     "the paper's number": "stated: mostly (Fig. 8)",
                     "ours": f"{a['k_losses']} of {a['n_losses']} searched losses gain over CE on average away from their "
                     f"own setting (sign test over losses p = {a['p']:.2g}; by cell {a['k']} of {a['n']}, median "
                     f"{a['median_pp']:+.1f} pp)",
                     "scale": scale, "verdict": a["verdict"]})
    return [{**row, "target": GLANCE_TARGET} for row in rows]
