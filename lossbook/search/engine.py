"""AutoLoss-AR: genetic programming over loss trees (Section IV, Table IV), with DEAP.

Read top to bottom, the set-up follows the paper's Section IV-C:

1. *Search space*: a DEAP ``PrimitiveSet`` with inputs ``p`` (logits) and ``q`` (one-hot label),
   the constants 0 and 1, and the 12 primitives of Table I (:mod:`lossbook.core.losses`).
2. *Initialisation*: ``ps`` trees by ramped half-and-half, depths ``init_depth`` (2..5 by default).
3. *Evaluation*: fitness = R'' reached by PGD-10 with the tree as surrogate on the evaluation set
   (the first n test images the model classifies correctly); NaN/Inf or an exception gives 0. All
   new trees of a generation are attacked together (:func:`lossbook.core.attacks.evaluate_losses`), with
   the same random starts, so a tree's fitness depends on its formula only: it is cached by
   formula, and by behaviour -- trees whose logit gradients point the same way share one attack
   (:mod:`lossbook.search.fitness`; ``semantic_cache=False`` turns that off).
4. *Selection*: ``st`` tournaments of size ``ts``.
5. *Crossover and mutation*: one-point crossover with probability ``cp``, uniform subtree mutation
   with probability ``mp`` (DEAP's ``varAnd``); trees higher than ``md`` are refused (static limit).

A run checkpoints after every generation (population, hall of fame, logbook, cache, RNG state) and
resumes from it: on CPU a resumed run ends exactly as an uninterrupted one.
"""
from __future__ import annotations

import json
import operator
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from deap import algorithms, base, creator, gp, tools
from tqdm.auto import tqdm

from lossbook import store
from lossbook.core.attacks import evaluate_losses
from lossbook.search.fitness import COUNTERS, Evaluator  # noqa: F401 (Evaluator is part of this module's API)
from lossbook.config import (DATASETS, NETS, NORMS, RESULTS_DIR, SCALES, TRAININGS, check_choice, check_dataset_eps,
                     paper_eps, quiet)
from lossbook.core.losses import HANDCRAFTED, HANDCRAFTED_FORMULAS, PRIMITIVES, compile_formula, formula_size, pretty


# ------------------------------------------------------------------------------------------------
# Hyper-parameters (Table IV) and scales
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GPConfig:
    """Hyper-parameters of one GP run (names as the paper's Table IV)."""

    gn: int = 100  # generations
    md: int = 25  # maximum tree height
    ps: int = 200  # population size
    ts: int = 3  # tournament size
    st: int = 200  # selections per generation
    cp: float = 0.5  # crossover probability
    mp: float = 0.3  # mutation probability
    init_depth: tuple = (2, 5)  # ramped half-and-half depths of the initial trees
    mut_depth: tuple = (0, 2)  # depths of the subtrees grown by mutation
    n_images: int = 1000  # evaluation set: first n correctly classified test images
    steps: int = 10  # PGD steps of the fitness attack
    hof: int = 10  # hall-of-fame size
    seed_losses: tuple = ()  # handcrafted trees put into the initial population (not in the paper)
    semantic_cache: bool = True  # share one attack among trees of equal behaviour (lossbook.search.fitness)

    def identity(self) -> dict:
        """What defines the search (everything but how its fitness is computed): runs made with equal
        identities answer the same request."""
        d = json.loads(json.dumps(asdict(self)))
        d.pop("semantic_cache")
        return d


GRID_GENERATIONS, GRID_POPULATION = 25, 60
SEARCH_PRESETS = {
    "smoke": GPConfig(gn=2, ps=8, st=8, n_images=32, hof=3),
    # sized so that one run takes minutes on 2 CPU cores (~2M image-steps of MNIST NET-1)
    # The cpu budget is ~3% of Table IV's evaluations; from random trees alone it did not get past CE
    # (two unseeded runs on MNIST NET-1 ST: 0.692 = CE and 0.417), so its initial population
    # holds the CE, C&W and margin trees (a labelled departure from the paper).
    "cpu": GPConfig(gn=15, ps=40, st=40, n_images=400, seed_losses=("ce", "cw", "margin")),
    "paper": GPConfig(),
    # the 24-setting grid on the cpu models (lossbook.chapters.gp_search): a larger budget made affordable by the
    # semantic cache, and the paper's initialisation (random trees only) unless a run is seeded
    "grid": GPConfig(gn=GRID_GENERATIONS, ps=GRID_POPULATION, st=GRID_POPULATION, n_images=400),
    # Question 1's paper arm (lossbook.chapters.paper_arm, book/protocol_q1.md): the grid's budget, unseeded runs
    # only, on the models of the protocol; identical to "grid" so that the grid's unseeded runs of the
    # same setting and eps answer the same request
    "paper-arm": GPConfig(gn=GRID_GENERATIONS, ps=GRID_POPULATION, st=GRID_POPULATION, n_images=400),
    "smoke-arm": GPConfig(gn=2, ps=8, st=8, n_images=32, hof=3),
}
RUNS = {"smoke": 1, "cpu": 2, "paper": 20, "grid": 3, "paper-arm": 3, "smoke-arm": 2}
#: the models a preset searches on by default (a preset that is not a scale)
PRESET_MODEL_SCALE = {"grid": "cpu"}


@dataclass(frozen=True)
class Setting:
    """What is attacked: dataset x net x training x norm at eps."""

    dataset: str
    net: str
    training: str
    norm: str
    eps: float

    def name(self) -> str:
        return f"{self.dataset}-{self.net}-{self.training}-{self.norm}"


def parse_setting(name: str) -> tuple[str, str, str, str]:
    """``"mnist-net1-st-linf"`` -> ("mnist", "net1", "st", "linf"), with a clear error otherwise."""
    parts = name.split("-")
    if len(parts) != 4:
        raise ValueError(f"setting {name!r} is not of the form <dataset>-<net>-<training>-<norm>, "
                         f"e.g. 'mnist-net1-st-linf'")
    for what, v, allowed in zip(("dataset", "net", "training", "norm"), parts, (DATASETS, NETS, TRAININGS, NORMS)):
        check_choice(f"{what} in setting {name!r}", v, allowed)
    return tuple(parts)


def make_setting(dataset: str, net: str, training: str, norm: str, eps: float | None = None) -> Setting:
    """A setting with the paper's Table III eps unless ``eps`` is given."""
    for n, v, allowed in (("dataset", dataset, DATASETS), ("net", net, NETS), ("training", training, TRAININGS),
                          ("norm", norm, NORMS)):
        check_choice(n, v, allowed)
    if eps is not None:
        check_dataset_eps(dataset, norm, float(eps))
    return Setting(dataset, net, training, norm, float(eps) if eps is not None else paper_eps(dataset, net, training, norm))


# ------------------------------------------------------------------------------------------------
# The search space
# ------------------------------------------------------------------------------------------------
def primitive_set() -> gp.PrimitiveSet:
    """Inputs p, q; constants 0, 1; the 12 primitives of Table I."""
    pset = gp.PrimitiveSet("LOSS", 2)
    pset.renameArguments(ARG0="p", ARG1="q")
    for name, (fn, arity) in PRIMITIVES.items():
        pset.addPrimitive(fn, arity, name=name)
    pset.addTerminal(0, name="0")
    pset.addTerminal(1, name="1")
    return pset


def _creator() -> None:
    if not hasattr(creator, "LossFitness"):
        creator.create("LossFitness", base.Fitness, weights=(1.0,))
    if not hasattr(creator, "LossTree"):
        creator.create("LossTree", gp.PrimitiveTree, fitness=creator.LossFitness)


def toolbox(pset: gp.PrimitiveSet, cfg: GPConfig) -> base.Toolbox:
    """Registration by registration, Section IV-C."""
    _creator()
    tb = base.Toolbox()
    tb.register("expr", gp.genHalfAndHalf, pset=pset, min_=cfg.init_depth[0], max_=cfg.init_depth[1])
    tb.register("individual", tools.initIterate, creator.LossTree, tb.expr)
    tb.register("population", tools.initRepeat, list, tb.individual)
    tb.register("select", tools.selTournament, tournsize=cfg.ts)
    tb.register("mate", gp.cxOnePoint)
    tb.register("expr_mut", gp.genFull, min_=cfg.mut_depth[0], max_=cfg.mut_depth[1])
    tb.register("mutate", gp.mutUniform, expr=tb.expr_mut, pset=pset)
    limit = gp.staticLimit(key=operator.attrgetter("height"), max_value=cfg.md)
    tb.decorate("mate", limit)
    tb.decorate("mutate", limit)
    return tb


def tree_from_formula(formula: str, pset: gp.PrimitiveSet | None = None):
    """A DEAP individual from its formula string (the inverse of ``str(tree)``). The formula is checked
    against the primitives first: DEAP's parser evaluates tokens it does not know."""
    from lossbook.core.losses import check_formula

    check_formula(formula)
    _creator()
    return creator.LossTree(gp.PrimitiveTree.from_string(formula, pset or primitive_set()))


# ------------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------------
def _assign(population, evaluator: Evaluator) -> dict:
    """Fitness of the individuals without one; the evaluator's counters of this generation."""
    new = [ind for ind in population if not ind.fitness.valid]
    fits, _ = evaluator([str(ind) for ind in new])
    for ind, f in zip(new, fits):
        ind.fitness.values = (f,)
    return {c: evaluator.last[c] for c in COUNTERS}


def _stats(population) -> dict:
    fits = np.array([ind.fitness.values[0] for ind in population])
    sizes = np.array([len(ind) for ind in population])
    heights = np.array([ind.height for ind in population])
    return {"max": float(fits.max()), "mean": float(fits.mean()), "min": float(fits.min()),
            "invalid_or_zero": int((fits == 0).sum()), "size_mean": float(sizes.mean()), "size_max": int(sizes.max()),
            "height_max": int(heights.max())}


#: a run's checkpoint beside its result: plain JSON (formulas as strings, parsed against the primitives
#: when read back; the RNG state as numbers), so that opening a results folder can never run code
CHECKPOINT_SUFFIX = ".ckpt.json"


def checkpoint_path(out: Path, seed: int) -> Path:
    return out / f"run-{seed}{CHECKPOINT_SUFFIX}"


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_atomic(path, json.dumps(state).encode())  # a kill or a full disk never leaves half a checkpoint


def _checkpoint_request(evaluator: Evaluator, cfg: GPConfig, seed: int) -> dict:
    """What a checkpoint was made for: a resumed run must answer the same request."""
    setting = evaluator.setting
    return {"setting": json.loads(json.dumps(asdict(setting))) if hasattr(setting, "__dataclass_fields__")
            else str(setting), "gp": cfg.identity(), "seed": seed, "n_images": len(evaluator.x),
            "steps": evaluator.steps}


def _load_checkpoint(path: Path, request: dict) -> dict:
    """A run's checkpoint, refused (naming the file and what differs) if made for another request or not
    plain JSON (a pickle is never read: it could run code)."""
    try:
        st = json.loads(path.read_text())
        if not isinstance(st, dict):
            raise ValueError(f"a JSON {type(st).__name__}, not an object")
        version, state, gauss = st["random"]
        st["random"] = (version, tuple(state), gauss)
    except Exception as exc:
        raise ValueError(f"{path}: unreadable search checkpoint ({type(exc).__name__}: {str(exc)[:80]}; a checkpoint is "
                         f"plain JSON); delete it to start the run anew") from None
    made = st.get("request")
    if made != request:
        diff = sorted(k for k in request if (made or {}).get(k) != request[k])
        raise ValueError(f"{path}: checkpoint made for another request (differs in {', '.join(diff) or 'format'}: "
                         f"{', '.join(f'{k}={(made or {}).get(k)!r}' for k in diff)}, asked "
                         f"{', '.join(f'{k}={request[k]!r}' for k in diff)}); delete it or ask for what it was made for")
    return st


def run_search(evaluator: Evaluator, cfg: GPConfig, seed: int, checkpoint: Path | None = None,
               progress: bool = True, stop_after: int | None = None, desc: str = "GP") -> dict:
    """One GP run. Resumes from ``checkpoint`` if it exists (and was made for the same setting, GP
    configuration, seed and evaluation set: otherwise it stops and says what differs);
    ``stop_after`` generations end the call early (as a kill would). Returns the run's record
    (best formula, hall of fame, logbook with the fitness caches' counters per generation)."""
    pset = primitive_set()
    tb = toolbox(pset, cfg)
    request = _checkpoint_request(evaluator, cfg, seed)
    if checkpoint is not None and checkpoint.exists():
        st = _load_checkpoint(checkpoint, request)
        population = [tree_from_formula(f, pset) for f in st["population"]]
        for ind, fit in zip(population, st["fitness"]):
            ind.fitness.values = (fit,)
        hof = tools.HallOfFame(cfg.hof)  # restored in its exact order (ties included)
        hof.items = [_with_fitness(tree_from_formula(f, pset), v) for f, v in zip(st["hof"], st["hof_fitness"])]
        hof.keys = [ind.fitness for ind in reversed(hof.items)]
        logbook, start_gen, elapsed = st["logbook"], st["generation"] + 1, st["elapsed"]
        evaluator.restore(st["evaluator"])
        random.setstate(st["random"])
    else:
        random.seed(seed)
        population = tb.population(n=cfg.ps)
        for i, name in enumerate(cfg.seed_losses):  # seeded initialisation (an option; the paper has none)
            population[i] = tree_from_formula(HANDCRAFTED_FORMULAS[name], pset)
        hof = tools.HallOfFame(cfg.hof)
        logbook, start_gen, elapsed = [], 0, 0.0

    bar = tqdm(range(start_gen, cfg.gn + 1), desc=desc, **quiet(progress), initial=start_gen, total=cfg.gn + 1)
    for done, gen in enumerate(bar):
        if stop_after is not None and done >= stop_after:
            bar.close()
            return {"interrupted_at_generation": gen}
        t0 = time.perf_counter()
        if gen > 0:  # generation 0 is the initial population
            population = algorithms.varAnd(tb.select(population, cfg.st), tb, cfg.cp, cfg.mp)
        counts = _assign(population, evaluator)
        hof.update(population)
        elapsed += time.perf_counter() - t0
        row = {"generation": gen, **counts, **_stats(population), "best_so_far": float(hof[0].fitness.values[0]),
               "seconds": round(elapsed, 2)}
        logbook.append(row)
        bar.set_postfix(best=f"{row['best_so_far']:.3f}", mean=f"{row['mean']:.3f}", attacked=counts["attacked"])
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {
                "request": request, "generation": gen, "population": [str(i) for i in population],
                "fitness": [i.fitness.values[0] for i in population], "hof": [str(i) for i in hof],
                "hof_fitness": [i.fitness.values[0] for i in hof], "logbook": logbook,
                "evaluator": evaluator.state(), "random": random.getstate(), "elapsed": elapsed})
    hof, checked = _verified(hof, evaluator, cfg, pset)
    best = hof[0]
    totals = {c: sum(r[c] for r in logbook) + checked.get(c, 0) for c in COUNTERS}
    return {
        "seed": seed, "best": str(best), "best_pretty": pretty(str(best)), "best_fitness": best.fitness.values[0],
        "best_size": formula_size(str(best)),
        "hall_of_fame": [{"formula": str(i), "pretty": pretty(str(i)), "fitness": i.fitness.values[0]} for i in hof],
        "logbook": logbook, "semantic_cache": evaluator.semantic, **totals,
        # distinct behaviours attacked: asked / signatures bounds what any cache keyed on behaviour can save
        "signatures": len(evaluator.signatures) if evaluator.semantic else None,
        # the names earlier run files used: attacks run, and formula-cache hits
        "evaluations": totals["attacked"], "cache_hits": totals["formula_hits"],
        "disagreement_list": list(evaluator.disagreements), "seconds": round(elapsed, 1),
    }


def _verified(hof, evaluator: Evaluator, cfg: GPConfig, pset):
    """The hall of fame with every borrowed fitness replaced by the tree's own attack (re-ranked), and
    the counters of that check."""
    if not evaluator.semantic:
        return hof, {}
    evaluator.verify([str(i) for i in hof])
    out = tools.HallOfFame(cfg.hof)
    out.update([_with_fitness(tree_from_formula(str(i), pset), evaluator.cache[str(i)]) for i in hof])
    return out, {c: evaluator.last[c] for c in ("attacked", "spot_checks", "disagreements")}


def _with_fitness(ind, value):
    ind.fitness.values = (value,)
    return ind


# ------------------------------------------------------------------------------------------------
# Calibration (the paper's rule: eps such that CE-PGD-10 gives R'' ~ 0.7)
# ------------------------------------------------------------------------------------------------
def calibrate_eps(model, x, y, norm: str, target: float = 0.7, steps: int = 10, seed: int = 0,
                  lo: float | None = None, hi: float | None = None, iters: int = 12, tol: float = 0.01) -> float:
    """The eps at which CE-PGD-``steps`` reaches R'' ~= ``target`` on (x, y), by bisection (R'' grows with eps)."""
    check_choice("norm", norm, NORMS)
    lo = lo if lo is not None else 0.0
    hi = hi if hi is not None else {"linf": 0.5, "l2": 10.0, "l1": 100.0}[norm]
    ce = HANDCRAFTED["ce"]
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        r = float(evaluate_losses(model, x, y, [ce], norm=norm, eps=mid, steps=steps, seed=seed).risk[0])
        if abs(r - target) <= tol:
            return mid
        lo, hi = (mid, hi) if r < target else (lo, mid)
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------------
# Runs on disk
# ------------------------------------------------------------------------------------------------
def gp_identity(gp: dict) -> dict:
    """The identity (:meth:`GPConfig.identity`) of a GP configuration saved in a run file."""
    return {k: v for k, v in gp.items() if k != "semantic_cache"}


def search_dir(setting: Setting, scale: str, root: Path | None = None) -> Path:
    return (root or RESULTS_DIR / "search") / scale / setting.name()


def search_setting(setting: Setting, scale: str, runs: int | None = None, seed: int = 0,
                   model_scale: str | None = None, root: Path | None = None, progress: bool = True,
                   cfg: GPConfig | None = None, device: torch.device | None = None,
                   load_only: bool = False, force: bool = False) -> list[dict]:
    """Run (or resume, or load) ``runs`` independent GP runs of one setting; seeds seed, seed+1, ...
    With ``load_only`` only the finished runs on disk are returned (possibly none); with ``force``
    finished runs are searched again, each replacing its file only when it is complete.

    Each finished run is saved as ``run-<seed>.json`` (config, best loss, CE/C&W/DLR baselines on
    the same set, logbook) and ``run-<seed>.csv`` (per-generation statistics).
    """
    from lossbook.core import data
    from lossbook.core.attacks import evaluation_set
    from lossbook.core.train import load_model

    check_choice("search preset", scale, SEARCH_PRESETS)
    cfg = cfg or SEARCH_PRESETS[scale]
    runs = runs if runs is not None else RUNS[scale]
    model_scale = model_scale or PRESET_MODEL_SCALE.get(scale, scale)
    check_choice("model scale", model_scale, SCALES)
    out = search_dir(setting, scale, root)
    request = lambda run_seed: run_request(setting, cfg, model_scale, run_seed)  # noqa: E731
    if load_only:
        return [store.load(p, request(seed + r)) for r in range(runs)
                if store.matches(p := out / f"run-{seed + r}.json", request(seed + r))]
    if model_scale == "smoke":  # smoke models cost seconds: train them where missing
        from lossbook.core.train import ensure_trained

        ensure_trained([setting.dataset], [setting.net], [setting.training], "smoke", progress=progress)
    model = load_model(setting.dataset, setting.net, setting.training, model_scale, device=device)
    xt, yt = data.load(setting.dataset, "test")
    x, y, idx = evaluation_set(model, xt, yt, n=cfg.n_images)
    records = []
    for r in range(runs):
        run_seed = seed + r
        path, ckpt = out / f"run-{run_seed}.json", checkpoint_path(out, run_seed)
        if path.exists() and not force:
            if store.matches(path, request(run_seed)) or scale != "smoke":  # else: smoke results are redone
                records.append(store.load(path, request(run_seed)))  # another request: stops, naming what differs
                continue
        ev = Evaluator(model, x, y, setting, steps=cfg.steps, seed=run_seed, semantic=cfg.semantic_cache)
        baselines = ev.handcrafted()
        if baselines["ce"] >= 1.0:
            print(f"note: {setting.name()} at eps={setting.eps:g}: CE-PGD-{cfg.steps} already breaks every image, so no "
                  f"loss can do better; a smaller eps (the paper's rule: R'' about 0.7) is needed", file=sys.stderr)
        if scale == "smoke" and ckpt.exists():  # smoke checkpoints are cheap: one of another request is redone
            try:
                _load_checkpoint(ckpt, _checkpoint_request(ev, cfg, run_seed))
            except ValueError:
                ckpt.unlink()
        rec = run_search(ev, cfg, run_seed, checkpoint=ckpt, progress=progress, desc=f"{setting.name()} run {r + 1}/{runs}")
        rec = {"setting": asdict(setting), "scale": scale, "model_scale": model_scale, "gp": asdict(cfg),
               "evaluation_set": f"first {cfg.n_images} correctly classified test images", "baselines": baselines,
               "gain_over_ce_pp": round(100 * (rec["best_fitness"] - baselines["ce"]), 2),
               "cache_hit_rate": rec["cache_hits"] / max(1, rec["asked"]),
               "attacks_saved": 1 - rec["attacked"] / max(1, rec["asked"]),
               "device": str(next(model.parameters()).device), "diagnostics": ev.diagnostics, **rec}
        store.save(out / f"run-{run_seed}.csv", pd.DataFrame(rec["logbook"]), request(run_seed))
        store.save(path, rec, request(run_seed))  # replaces an earlier result only now, complete
        ckpt.unlink(missing_ok=True)
        records.append(store.normalize(rec))  # as it will read back
    return records


def run_request(setting: Setting, cfg: GPConfig, model_scale: str, seed: int) -> dict:
    """What a run file answers: the setting, the GP configuration's identity, the models, the seed."""
    return {"setting": asdict(setting), "gp": cfg.identity(), "model_scale": model_scale, "seed": seed}


def load_runs(setting_name: str, scale: str, root: Path | None = None) -> list[dict]:
    """All finished runs of a setting (by name, e.g. ``"mnist-net1-st-linf"``) at a scale."""
    folder = (root or RESULTS_DIR / "search") / scale / setting_name
    runs = [store.load(p) for p in sorted(folder.glob("run-*.json"))]
    if not runs:
        raise FileNotFoundError(f"no search results for {setting_name!r} at scale {scale!r} in {folder}; run "
                                f"`python -m lossbook search` for it first")
    return runs


def load_searched_loss(setting_name: str, scale: str, run: str | int = "best", root: Path | None = None):
    """The loss found for a setting, as a callable: the best over runs, or a given run's seed."""
    runs = load_runs(setting_name, scale, root)
    if run == "best":
        rec = max(runs, key=lambda r: r["best_fitness"])
    else:
        match = [r for r in runs if r["seed"] == int(run)]
        if not match:
            raise ValueError(f"no run with seed {run} for {setting_name!r}; seeds: {[r['seed'] for r in runs]}")
        rec = match[0]
    return compile_formula(rec["best"])


def with_overrides(cfg: GPConfig, **kw) -> GPConfig:
    """A copy of ``cfg`` with some hyper-parameters changed (None values ignored)."""
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})


def _calibration(key: str, dataset: str, net: str, training: str, scale: str, n_images: int, compute,
                 root: Path | None, device) -> dict:
    """An entry of ``results/search/<scale>/calibration.json``; ``compute(model, x, y)`` makes it when
    missing, on the model's evaluation set (first ``n_images`` correctly classified test images)."""
    from lossbook.core import data
    from lossbook.core.attacks import evaluation_set
    from lossbook.core.train import load_model

    path = (root or RESULTS_DIR / "search") / scale / "calibration.json"
    request = {"what": "eps calibration", "scale": scale}
    table = store.load(path, request) if path.exists() else {}
    if key not in table:
        model = load_model(dataset, net, training, scale, device=device)
        xt, yt = data.load(dataset, "test")
        x, y, _ = evaluation_set(model, xt, yt, n=n_images)
        table[key] = {**compute(model, x, y), "n_images": n_images}
        store.save(path, dict(sorted(table.items())), request)
    return table[key]


def calibrated_setting(dataset: str, net: str, training: str, norm: str, scale: str, n_images: int = 1000,
                       target: float = 0.7, root: Path | None = None, device: torch.device | None = None) -> Setting:
    """A setting whose eps makes CE-PGD-10 reach R'' ~= ``target`` on our own model (the paper's rule).

    The calibrated eps is stored in ``results/search/<scale>/calibration.json`` and reused.
    """
    paper = make_setting(dataset, net, training, norm)
    entry = _calibration(f"{paper.name()}@{target}", dataset, net, training, scale, n_images,
                         lambda m, x, y: {"eps": round(calibrate_eps(m, x, y, norm, target=target), 5),
                                          "paper_eps": paper.eps, "target": target}, root, device)
    return replace(paper, eps=entry["eps"])


def heldout_check(setting: Setting, scale: str, runs: list[dict], n: int | None = None, seed: int = 1000,
                  steps: int = 10, root: Path | None = None, device: torch.device | None = None) -> dict:
    """R'' of the best found loss and of the handcrafted losses on *unseen* images.

    A run's fitness is measured on the images the search selected on. Here the best loss is
    re-evaluated on the next ``n`` correctly classified test images (after the search's), with new
    random starts; saved as ``heldout.json`` beside the runs.
    """
    from lossbook.core import data
    from lossbook.core.attacks import evaluation_set
    from lossbook.core.train import load_model

    best = max(runs, key=lambda r: r["best_fitness"])
    n_search = best["gp"]["n_images"]
    n = n or n_search
    path = search_dir(setting, scale, root) / "heldout.json"
    request = {"setting": asdict(setting), "scale": scale, "formula": best["best"], "steps": steps, "seed": seed,
               "n": n}

    def compute() -> dict:
        model = load_model(setting.dataset, setting.net, setting.training, best["model_scale"], device=device)
        xt, yt = data.load(setting.dataset, "test")
        x, y, idx = evaluation_set(model, xt, yt, n=n_search + n)
        x, y = x[n_search:], y[n_search:]
        names = ["searched"] + list(HANDCRAFTED)
        res = evaluate_losses(model, x, y, [compile_formula(best["best"])] + list(HANDCRAFTED.values()),
                              norm=setting.norm, eps=setting.eps, steps=steps, seed=seed)
        return {**request, "images": f"correctly classified test images {n_search + 1}..{n_search + n} (unseen by "
                f"the search)", "test_indices": [int(idx[n_search]), int(idx[-1])],
                "risk": dict(zip(names, res.risk.tolist()))}

    return store.cached(path, request, compute)


#: the auto rule keeps Table III's eps where CE-PGD-10 breaks this share of the images
AUTO_BAND = (0.5, 0.9)


def saved_auto_setting(dataset: str, net: str, training: str, norm: str, scale: str,
                       root: Path | None = None) -> Setting | None:
    """The setting :func:`auto_setting` would return, read from ``calibration.json`` without computing
    anything; None where its eps is not calibrated yet."""
    paper = make_setting(dataset, net, training, norm)
    path = (root or RESULTS_DIR / "search") / scale / "calibration.json"
    request = {"what": "eps calibration", "scale": scale}
    table = store.load(path, request) if store.matches(path, request) else {}
    first = table.get(f"{paper.name()}@table-iii")
    if first is None:
        return None
    if AUTO_BAND[0] <= first["ce_risk"] <= AUTO_BAND[1]:
        return paper
    calibrated = table.get(f"{paper.name()}@0.7")
    return replace(paper, eps=calibrated["eps"]) if calibrated else None


def auto_setting(dataset: str, net: str, training: str, norm: str, scale: str, n_images: int = 1000,
                 band: tuple = AUTO_BAND, root: Path | None = None, device: torch.device | None = None) -> Setting:
    """Table III's eps where it puts *our* model in the paper's regime (CE-PGD-10 R'' within ``band``),
    else the paper's own rule: the eps where CE-PGD-10 reaches R'' = 0.7 (:func:`calibrated_setting`).
    The measured R'' at Table III's eps is stored in ``calibration.json``."""
    paper = make_setting(dataset, net, training, norm)

    def ce_risk(model, x, y):
        r = evaluate_losses(model, x, y, [HANDCRAFTED["ce"]], norm=norm, eps=paper.eps, steps=10).risk[0]
        return {"eps": paper.eps, "ce_risk": round(float(r), 4)}

    entry = _calibration(f"{paper.name()}@table-iii", dataset, net, training, scale, n_images, ce_risk, root, device)
    if band[0] <= entry["ce_risk"] <= band[1]:
        return paper
    return calibrated_setting(dataset, net, training, norm, scale, n_images=n_images, root=root, device=device)


def resolve_setting(dataset: str, net: str, training: str, norm: str, scale: str, eps="auto",
                    n_images: int = 1000) -> Setting:
    """The setting searched at ``eps``: "auto" (:func:`auto_setting`), "paper" (Table III), "calibrate"
    (CE-PGD-10 R'' = 0.7) or a number. One rule for the CLI and chapter 03."""
    if eps == "calibrate":
        return calibrated_setting(dataset, net, training, norm, scale, n_images=n_images)
    if eps == "auto":
        return auto_setting(dataset, net, training, norm, scale, n_images=n_images)
    return make_setting(dataset, net, training, norm, None if eps == "paper" else float(eps))


def chapter_runs(names: list[str], scale: str, eps="auto", runs: int | None = None, seed: int = 0,
                 recompute: bool = False) -> tuple[dict, list[str]]:
    """Chapter 03's runs: {setting name: (setting, run records)} and the settings missing at this scale.
    Saved runs are loaded; at smoke scale (or with ``recompute``) they are searched, and a recomputed
    run replaces its saved file only when it is complete."""
    cfg = SEARCH_PRESETS[scale]
    results, missing = {}, []
    for name in names:
        try:
            setting = resolve_setting(*parse_setting(name), scale, eps, n_images=cfg.n_images)
        except FileNotFoundError:  # its model is not trained at this scale yet
            missing.append(name)
            continue
        recs = search_setting(setting, scale, runs=runs, seed=seed, load_only=scale != "smoke" and not recompute,
                              force=recompute)
        (results.__setitem__(name, (setting, recs)) if recs else missing.append(name))
    return results, missing


#: how chapter 03 shows :func:`runs_table`
RUNS_FORMAT = {"R'' searched": "{:.3f}", "R'' CE": "{:.3f}", "R'' best of C&W/margin/DLR": "{:.3f}",
               "gain over CE (pp)": "{:+.1f}", "gain over best handcrafted (pp)": "{:+.1f}", "attacks saved": "{:.0%}",
               "minutes": "{:.1f}"}


def runs_table(results: dict) -> pd.DataFrame:
    """One row per run of ``{name: (setting, run records)}``: the best loss, R'' of it, of CE and of the best
    of C&W/margin/DLR on the search images, both gains in pp, the share of attacks the cache saved, minutes."""
    rows = []
    for name, (setting, recs) in results.items():
        for r in recs:
            b = r["baselines"]
            best_hand = max(b["cw"], b["margin"], b["dlr"])
            rows.append({"setting": name, "eps": setting.eps, "run seed": r["seed"], "best loss": r["best_pretty"],
                         "R'' searched": r["best_fitness"], "R'' CE": b["ce"], "R'' best of C&W/margin/DLR": best_hand,
                         "gain over CE (pp)": 100 * (r["best_fitness"] - b["ce"]),
                         "gain over best handcrafted (pp)": 100 * (r["best_fitness"] - best_hand),
                         "attacks saved": r.get("attacks_saved", r["cache_hit_rate"]), "minutes": r["seconds"] / 60})
    return pd.DataFrame(rows)
