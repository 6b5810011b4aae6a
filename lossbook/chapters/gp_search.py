"""The paper's 24 settings, searched and judged: AutoLoss-AR's Question 1 with statistics.

``python -m lossbook grid --scale cpu`` runs, setting by setting, the GP runs of the ``grid``
preset on the cpu models (eps by the ``auto`` rule of :func:`lossbook.search.engine.auto_setting`), then
re-evaluates the best run's loss and the CE, C&W and DLR baselines on held-out images (the next
``heldout_images`` correctly classified test images, which the search never saw) with new random
starts under PGD-10 and PGD-100, and writes one row per setting to ``summary.csv``: the gain over
CE with its paired interval and McNemar p-value (:mod:`lossbook.core.stats`) and the verdict. Finished
runs are skipped, interrupted ones resume from their checkpoints; every finished run and setting
is on disk at once, so the command can be stopped and started again at any time.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lossbook import store
from lossbook.config import DATASETS, NETS, NORMS, RESULTS_DIR, SCALES, TRAININGS, check_choice
from lossbook.core.losses import HANDCRAFTED, compile_formula
from lossbook.search.engine import SEARCH_PRESETS, Setting, auto_setting, search_dir, search_setting
from lossbook.core.stats import paired_gain, verdict

#: the 24 settings, MNIST first (cheaper), in the order the grid runs them
SETTINGS = tuple(f"{d}-{n}-{t}-{norm}" for d in DATASETS for t in TRAININGS for n in NETS for norm in NORMS)

#: AutoLoss-AR Section V-C: the best searched loss's gain over CE (PGD-10, %), per setting
PAPER_GAIN_PP = {
    "mnist-net1-st": (1.8, 2.9, 2.1), "mnist-net2-st": (1.1, 0.9, 0.9), "mnist-net1-at": (1.8, 1.2, 1.0),
    "mnist-net2-at": (2.9, 0.9, 0.9), "cifar10-net1-st": (0.7, 1.1, 1.0), "cifar10-net2-st": (1.1, 1.1, 1.1),
    "cifar10-net1-at": (2.0, 1.9, 1.9), "cifar10-net2-at": (1.9, 1.9, 1.8),
}
_PAPER_NORM_ORDER = ("linf", "l1", "l2")


def paper_gain(setting_name: str) -> float:
    """The paper's reported best gain over CE (pp, PGD-10) for a setting."""
    d, n, t, norm = setting_name.split("-")
    return PAPER_GAIN_PP[f"{d}-{n}-{t}"][_PAPER_NORM_ORDER.index(norm)]


@dataclass(frozen=True)
class GridPlan:
    """What the grid runs at one scale: the search preset, the models, the runs and the held-out check."""

    scale: str  # the models' scale
    preset: str  # the search preset (results under results/search/<preset>/)
    unseeded_runs: int  # runs with the paper's initialisation (random trees only)
    seeded_runs: int  # runs whose initial population also holds CE, C&W, margin (labelled)
    heldout_images: int
    heldout_steps: tuple = (10, 100)
    heldout_seed: int = 1000  # new random starts: not the search's
    gp_overrides: tuple = ()  # (name, value) pairs changing the preset (e.g. a longer smoke run in a test)

    @property
    def seeds(self) -> list[tuple[int, bool]]:
        """(seed, seeded?) of each run."""
        return [(s, False) for s in range(self.unseeded_runs)] + \
            [(self.unseeded_runs + s, True) for s in range(self.seeded_runs)]


PLANS = {
    "smoke": GridPlan("smoke", "smoke", 1, 1, 32, heldout_steps=(10, 20)),
    "cpu": GridPlan("cpu", "grid", 2, 1, 1000),
    "paper": GridPlan("paper", "paper", 20, 0, 1000),
}
SEEDED = ("ce", "cw", "margin")


def run_config(plan: GridPlan, seeded: bool):
    """The GP configuration of a run: the plan's preset (with its overrides), seeded or not."""
    cfg = replace(SEARCH_PRESETS[plan.preset], **dict(plan.gp_overrides))
    return replace(cfg, seed_losses=SEEDED if seeded else ())


def grid_setting(name: str, plan: GridPlan, root: Path | None = None) -> Setting:
    """The setting with its eps by the auto rule (Table III where CE breaks 50-90%, else calibrated)."""
    d, n, t, norm = name.split("-")
    return auto_setting(d, n, t, norm, plan.scale, n_images=SEARCH_PRESETS[plan.preset].n_images, root=root)


def run_setting(name: str, plan: GridPlan, root: Path | None = None, progress: bool = True, log=print) -> list[dict]:
    """All runs of one setting (finished ones are loaded, interrupted ones resumed)."""
    setting = grid_setting(name, plan, root)
    records = []
    for seed, seeded in plan.seeds:
        cfg = run_config(plan, seeded)
        done = search_setting(setting, plan.preset, runs=1, seed=seed, model_scale=plan.scale, root=root, cfg=cfg,
                              load_only=True)
        if done:
            records += done
            log(f"{name} run seed {seed}: finished earlier, skipped (R''={done[0]['best_fitness']:.3f})")
            continue
        t0 = time.perf_counter()
        rec = search_setting(setting, plan.preset, runs=1, seed=seed, model_scale=plan.scale, root=root, cfg=cfg,
                             progress=progress)[0]
        records.append(rec)
        log(f"{name} run seed {seed}{' (seeded)' if seeded else ''}: R''={rec['best_fitness']:.3f}, gain over CE "
            f"{rec['gain_over_ce_pp']:+.1f} pp, {rec['attacked']} of {rec['asked']} trees attacked, "
            f"{time.perf_counter() - t0:.0f} s: {rec['best_pretty']}")
    return records


# ------------------------------------------------------------------------------------------------
# Held-out re-evaluation with per-image outcomes
# ------------------------------------------------------------------------------------------------
LOSS_NAMES = ("searched", "ce", "cw", "dlr")


def heldout_outcomes(setting: Setting, plan: GridPlan, best: dict, root: Path | None = None,
                     tag: str = "grid") -> dict:
    """Per-image outcomes (broken or not) of the best loss and CE/C&W/DLR on held-out images under
    PGD-``s`` for each ``s`` in ``plan.heldout_steps``; cached in ``heldout-<tag>.npz`` + ``.json``
    beside the runs and reused only for the same request."""
    from lossbook.core import data
    from lossbook.core.attacks import evaluate_losses, evaluation_set
    from lossbook.core.train import load_model

    folder = search_dir(setting, plan.preset, root)
    request = {"setting": asdict(setting), "formula": best["best"], "run_seed": best["seed"],
               "search_images": best["gp"]["n_images"], "n": plan.heldout_images, "steps": list(plan.heldout_steps),
               "seed": plan.heldout_seed, "model_scale": plan.scale, "losses": list(LOSS_NAMES)}
    meta, arrays = folder / f"heldout-{tag}.json", folder / f"heldout-{tag}.npz"
    if store.matches(meta, request):
        saved, z = store.load(meta, request), store.load(arrays, request)
        return {**saved, "broken": {int(s): z[f"pgd{s}"] for s in plan.heldout_steps}}
    model = load_model(setting.dataset, setting.net, setting.training, plan.scale)
    xt, yt = data.load(setting.dataset, "test")
    n_search = best["gp"]["n_images"]
    x, y, idx = evaluation_set(model, xt, yt, n=n_search + plan.heldout_images)
    x, y = x[n_search:], y[n_search:]
    losses = [compile_formula(best["best"])] + [HANDCRAFTED[k] for k in LOSS_NAMES[1:]]
    broken = {}
    for steps in plan.heldout_steps:
        res = evaluate_losses(model, x, y, losses, norm=setting.norm, eps=setting.eps, steps=steps,
                              seed=plan.heldout_seed)
        broken[steps] = res.broken.numpy()
    out = {"request": request, "test_indices": [int(i) for i in idx[n_search:]],
           "risk": {f"pgd{s}": dict(zip(LOSS_NAMES, b.mean(1).round(4).tolist())) for s, b in broken.items()}}
    store.save(arrays, {f"pgd{s}": b for s, b in broken.items()}, request)
    store.save(meta, out, request)  # written last: marks the pair complete
    return {**out, "broken": broken}


def summary_row(name: str, setting: Setting, runs: list[dict], held: dict, plan: GridPlan) -> dict:
    """One row of ``summary.csv``: search and held-out gains, the interval, the p-value, the verdict."""
    best = max(runs, key=lambda r: r["best_fitness"])
    row = {"setting": name, "eps": setting.eps, "runs": len(runs),
           "seeded_runs": sum(bool(r["gp"].get("seed_losses")) for r in runs), "paper_gain_pp": paper_gain(name),
           "search_gain_pp": round(best["gain_over_ce_pp"], 2),
           "runs_beating_ce": sum(r["best_fitness"] > r["baselines"]["ce"] for r in runs)}
    for steps in plan.heldout_steps:
        b = held["broken"][steps]
        g = paired_gain(b[0], b[1])
        best_hand = max(range(1, len(LOSS_NAMES)), key=lambda k: b[k].mean())
        suffix = "" if steps == plan.heldout_steps[0] else f"_pgd{steps}"
        row.update({f"heldout_gain_pp{suffix}": round(g.gain_pp, 2), f"ci_low{suffix}": round(g.ci_low, 2),
                    f"ci_high{suffix}": round(g.ci_high, 2), f"p_value{suffix}": float(f"{g.p_value:.4g}"),
                    f"gain_over_best_handcrafted_pp{suffix}": round(100 * (b[0].mean() - b[best_hand].mean()), 2),
                    f"best_handcrafted{suffix}": LOSS_NAMES[best_hand], f"verdict{suffix}": verdict(g)})
    row.update({"heldout_images": plan.heldout_images, "best_run_seed": best["seed"], "best_formula": best["best"],
                "best_pretty": best["best_pretty"]})
    return row


def summary_request(plan: GridPlan) -> dict:
    """What ``summary.csv`` answers: the plan (its GP overrides only where it has some)."""
    d = asdict(plan)
    if not d["gp_overrides"]:
        d.pop("gp_overrides")
    return {"what": "grid summary", **d}


def summary_path(plan: GridPlan, root: Path | None = None) -> Path:
    return (root or RESULTS_DIR / "search") / plan.preset / "summary.csv"


def write_summary(rows: list[dict], plan: GridPlan, root: Path | None = None) -> Path:
    """Add ``rows`` to ``summary.csv`` (one row per finished setting, in the grid's order; a setting's new
    row replaces its old one). The rows saved meanwhile by another grid process are kept."""
    import pandas as pd

    def merged(current):
        by = {r["setting"]: r for r in (current.to_dict("records") if current is not None else [])}
        by.update({r["setting"]: r for r in rows})
        return pd.DataFrame(sorted(by.values(), key=lambda r: SETTINGS.index(r["setting"])))

    return store.update(summary_path(plan, root), summary_request(plan), merged)


BACKENDS = ("local", "ray")


def run_grid(scale: str = "cpu", settings=None, root: Path | None = None, progress: bool = True, log=print,
             backend: str = "local", address: str | None = None, plan: GridPlan | None = None) -> Path:
    """Search and judge every setting (default: all 24) at ``scale``; returns ``summary.csv``'s path.

    ``backend="ray"`` runs the runs and held-out checks as Ray tasks on the cluster at ``address``
    (:mod:`lossbook.runner`); the results are the same files.
    """
    check_choice("scale", scale, SCALES)
    check_choice("backend", backend, BACKENDS)
    plan = plan or PLANS[scale]
    settings = list(settings or SETTINGS)
    for s in settings:
        check_choice("setting", s, SETTINGS)
    if plan.scale == "smoke":
        from lossbook.core.train import ensure_trained

        ensure_trained(sorted({s.split("-")[0] for s in settings}), list(NETS), list(TRAININGS), "smoke",
                       progress=progress)
    for name in settings:  # the eps of every setting first, on the driver (calibration.json is shared)
        grid_setting(name, plan, root)
    if backend == "ray":
        from lossbook.runner import run_grid_ray

        rows = run_grid_ray(plan, settings, Path(root or RESULTS_DIR / "search"), address, progress, log)
        return write_summary(list(rows.values()), plan, root)
    t_start = time.perf_counter()
    path = summary_path(plan, root)
    for i, name in enumerate(settings):
        setting = grid_setting(name, plan, root)
        runs = run_setting(name, plan, root, progress, log)
        held = heldout_outcomes(setting, plan, max(runs, key=lambda r: r["best_fitness"]), root)
        r = summary_row(name, setting, runs, held, plan)
        path = write_summary([r], plan, root)
        log(f"[{i + 1}/{len(settings)}] {name} eps={setting.eps}: held-out gain over CE {r['heldout_gain_pp']:+.1f} pp "
            f"[{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] (paper {r['paper_gain_pp']:+.1f}): {r['verdict']}; "
            f"{time.perf_counter() - t_start:.0f} s so far")
    return path


def read_summary(plan: GridPlan | str, root: Path | None = None) -> list[dict]:
    """The rows of ``summary.csv`` (numbers as numbers)."""
    plan = PLANS[plan] if isinstance(plan, str) else plan
    return store.load(summary_path(plan, root), summary_request(plan)).to_dict("records")


# ------------------------------------------------------------------------------------------------
# What the chapters show
# ------------------------------------------------------------------------------------------------
def load_summary(scale: str = "cpu", root: Path | None = None):
    """``summary.csv`` of the grid at ``scale`` as a DataFrame (validated), or None if none is saved."""
    plan = PLANS[scale]
    path = summary_path(plan, root)
    return store.load(path, summary_request(plan)) if path.exists() else None


def grid_runs(scale: str = "cpu", settings=None, root: Path | None = None) -> dict[str, list[dict]]:
    """The finished runs of each setting of the grid (settings without a finished run are left out)."""
    plan = PLANS[scale]
    out = {}
    for name in settings or SETTINGS:
        runs = []
        for seed, seeded in plan.seeds:
            path = search_dir(Setting(*name.split("-"), 0.0), plan.preset, root) / f"run-{seed}.json"
            if path.exists():
                rec = store.load(path)
                if rec["gp"]["gn"] == SEARCH_PRESETS[plan.preset].gn and rec["seed"] == seed:
                    runs.append(rec)
        if runs:
            out[name] = runs
    return out


def budget(scale: str = "cpu") -> dict:
    """A grid run's budget beside Table IV's: trees evaluated (population x generations) and images."""
    cfg, paper = SEARCH_PRESETS[PLANS[scale].preset], SEARCH_PRESETS["paper"]
    trees, paper_trees = cfg.ps * (cfg.gn + 1), paper.ps * (paper.gn + 1)
    return {"trees": trees, "paper_trees": paper_trees, "share_of_trees": trees / paper_trees,
            "images": cfg.n_images, "paper_images": paper.n_images,
            "share_of_image_attacks": trees * cfg.n_images / (paper_trees * paper.n_images)}


def answer(summary, steps_suffix: str = "") -> str:
    """AutoLoss-AR's Question 1 in one sentence, counted from ``summary.csv`` (None: nothing judged yet)."""
    if summary is None or summary.empty:
        return ("No setting of the 24 has been searched and judged at this scale yet "
                "(`python -m lossbook grid --scale cpu`).")
    counts = summary[f"verdict{steps_suffix}"].value_counts()
    n = len(summary)
    parts = ", ".join(f"{int(counts.get(v, 0))} {v}" for v in ("reproduced", "not reproduced", "inconclusive"))
    rest = "" if n == len(SETTINGS) else f"; the other {len(SETTINGS) - n} settings are not run at this scale yet"
    return (f"Of the {n} of {len(SETTINGS)} settings searched and judged on held-out images, the paper's claim "
            f"(a searched loss beats CE) is {parts}{rest}.")
