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
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from deap import algorithms, base, creator, gp, tools
from tqdm.auto import tqdm

from lossbook import store
from lossbook.config import (
    check_choice,
    quiet,
)
from lossbook.core.losses import (
    HANDCRAFTED_FORMULAS,
    PRIMITIVES,
    check_formula,
    formula_size,
    pretty,
)
from lossbook.search.fitness import COUNTERS, Evaluator


# ------------------------------------------------------------------------------------------------
# Hyper-parameters (Table IV)
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
    selection: str = "tournament"  # Table IV; "lexicase": over per-image outcomes (the authors' released code)
    size_limit: str = "height"  # md limits the tree's height (Table IV); "nodes": its node count (released code)

    def __post_init__(self):
        check_choice("selection", self.selection, SELECTIONS)
        check_choice("size limit", self.size_limit, SIZE_LIMITS)

    def identity(self) -> dict:
        """What defines the search (everything but how its fitness is computed): runs made with equal
        identities answer the same request. Selection and size limit are named only where they are not
        Table IV's, so that the runs made before they were options keep their requests."""
        d = json.loads(json.dumps(asdict(self)))
        d.pop("semantic_cache")
        for key, table_iv in (("selection", "tournament"), ("size_limit", "height")):
            if d[key] == table_iv:
                d.pop(key)
        return d


#: selection schemes and size limits a run can use (Table IV's first)
SELECTIONS = ("tournament", "lexicase")
SIZE_LIMITS = ("height", "nodes")


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
    if cfg.selection == "tournament":
        tb.register("select", tools.selTournament, tournsize=cfg.ts)  # lexicase: registered by run_search
    tb.register("mate", gp.cxOnePoint)
    tb.register("expr_mut", gp.genFull, min_=cfg.mut_depth[0], max_=cfg.mut_depth[1])
    tb.register("mutate", gp.mutUniform, expr=tb.expr_mut, pset=pset)
    limit = gp.staticLimit(key=operator.attrgetter("height") if cfg.size_limit == "height" else len, max_value=cfg.md)
    tb.decorate("mate", limit)
    tb.decorate("mutate", limit)
    return tb


def select_lexicase(population, k: int, outcomes: dict) -> list:
    """``k`` selections by lexicase over per-image outcomes (the authors' released code): for each, the
    images in a random order, keeping at every image the candidates that break it if any does, until
    one candidate is left or the images run out (then a random one of them). Uses the GP's ``random``."""
    cases = {id(ind): outcomes[str(ind)] for ind in population}
    n = len(next(iter(cases.values())))
    chosen = []
    for _ in range(k):
        candidates, order = list(population), list(range(n))
        random.shuffle(order)
        for i in order:
            best = [ind for ind in candidates if cases[id(ind)][i]]
            if best:
                candidates = best
            if len(candidates) == 1:
                break
        chosen.append(random.choice(candidates))
    return chosen


def tree_from_formula(formula: str, pset: gp.PrimitiveSet | None = None):
    """A DEAP individual from its formula string (the inverse of ``str(tree)``). The formula is checked
    against the primitives first: DEAP's parser evaluates tokens it does not know."""
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


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_atomic(path, json.dumps(state).encode())  # a kill or a full disk never leaves half a checkpoint


def checkpoint_request(evaluator: Evaluator, cfg: GPConfig, seed: int) -> dict:
    """What a checkpoint was made for: a resumed run must answer the same request."""
    setting = evaluator.setting
    return {"setting": json.loads(json.dumps(asdict(setting))) if hasattr(setting, "__dataclass_fields__")
            else str(setting), "gp": cfg.identity(), "seed": seed, "n_images": len(evaluator.x),
            "steps": evaluator.steps}


def load_checkpoint(path: Path, request: dict) -> dict:
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
    if cfg.selection == "lexicase":
        if evaluator.outcomes is None:
            raise ValueError("lexicase selection needs an Evaluator made with outcomes=True (and semantic=False)")
        tb.register("select", select_lexicase, outcomes=evaluator.outcomes)
    request = checkpoint_request(evaluator, cfg, seed)
    if checkpoint is not None and checkpoint.exists():
        st = load_checkpoint(checkpoint, request)
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
            save_checkpoint(checkpoint, {
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


# ------------------------------------------------------------------------------------------------
# Runs on disk
# ------------------------------------------------------------------------------------------------
def gp_identity(gp: dict) -> dict:
    """The identity (:meth:`GPConfig.identity`) of a GP configuration saved in a run file."""
    return {k: v for k, v in gp.items() if k != "semantic_cache"}


def with_overrides(cfg: GPConfig, **kw) -> GPConfig:
    """A copy of ``cfg`` with some hyper-parameters changed (None values ignored)."""
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})


