"""The paper's 24 settings, searched and judged: AutoLoss-AR's Question 1 with statistics.

``python -m lossbook grid --scale cpu`` runs, setting by setting, the GP runs of the ``grid``
preset on the cpu models (eps by the ``auto`` rule of :func:`lossbook.search.settings.auto_setting`), then
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

import pandas as pd
from tqdm.auto import tqdm

from lossbook import runner, store
from lossbook.config import (
    NETS,
    RESULTS_DIR,
    SCALES,
    SETTINGS,
    TRAININGS,
    check_choice,
    check_dataset_eps,
    quiet,
)
from lossbook.core.attack_registry import grid_losses
from lossbook.core.stats import paired_gain, verdict
from lossbook.core.train import ensure_trained
from lossbook.params import (
    EPS_RULES,
    Param,
    choice,
    common,
    eps_rule,
    setting_list,
    whole,
    with_name,
)
from lossbook.search.engine import checkpoint_path
from lossbook.search.runs import heldout_attacks, search_dir, search_setting
from lossbook.search.settings import SEARCH_PRESETS, Setting, auto_setting, parse_setting, resolve_setting

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
#: the losses compared on held-out images (the registry's PGD-10 entries marked ``grid``)
LOSS_NAMES = grid_losses()


def heldout_outcomes(setting: Setting, plan: GridPlan, best: dict, root: Path | None = None,
                     tag: str = "grid") -> dict:
    """Per-image outcomes (broken or not) of the best loss and CE/C&W/DLR on held-out images under
    PGD-``s`` for each ``s`` in ``plan.heldout_steps``; cached in ``heldout-<tag>.npz`` + ``.json``
    beside the runs and reused only for the same request."""
    folder = search_dir(setting, plan.preset, root)
    request = {"setting": asdict(setting), "formula": best["best"], "run_seed": best["seed"],
               "search_images": best["gp"]["n_images"], "n": plan.heldout_images, "steps": list(plan.heldout_steps),
               "seed": plan.heldout_seed, "model_scale": plan.scale, "losses": list(LOSS_NAMES)}
    meta, arrays = folder / f"heldout-{tag}.json", folder / f"heldout-{tag}.npz"
    if store.matches(meta, request):
        saved, z = store.load(meta, request), store.load(arrays, request)
        return {**saved, "broken": {int(s): z[f"pgd{s}"] for s in plan.heldout_steps}}
    results, idx = heldout_attacks(setting, plan.scale, best["best"], best["gp"]["n_images"], plan.heldout_images,
                                   tuple(plan.heldout_steps), plan.heldout_seed, LOSS_NAMES)
    broken = {steps: res.broken.numpy() for steps, res in results.items()}
    out = {"request": request, "test_indices": [int(i) for i in idx],
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
        ensure_trained(sorted({s.split("-")[0] for s in settings}), list(NETS), list(TRAININGS), "smoke",
                       progress=progress)
    for name in settings:  # the eps of every setting first, on the driver (calibration.json is shared)
        grid_setting(name, plan, root)
    if backend == "ray":
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


# ------------------------------------------------------------------------------------------------
# The grid on a Ray cluster (lossbook.runner): one task per (setting, run), then one per held-out check
# ------------------------------------------------------------------------------------------------
def _run_task(name: str, seed: int, seeded: bool, plan, root: str) -> dict:
    """One GP run of the grid on a worker: loads it if finished, else resumes or starts it."""
    root_p = Path(root)
    setting = grid_setting(name, plan, root_p)
    cfg = run_config(plan, seeded)
    done = search_setting(setting, plan.preset, runs=1, seed=seed, model_scale=plan.scale, root=root_p, cfg=cfg,
                          load_only=True)
    if done:
        runner.log_event(root_p, plan.preset, setting=name, seed=seed, event="finished earlier")
        return done[0]
    ckpt = checkpoint_path(search_dir(setting, plan.preset, root_p), seed)
    runner.log_event(root_p, plan.preset, setting=name, seed=seed, event="resume" if ckpt.exists() else "start")
    rec = search_setting(setting, plan.preset, runs=1, seed=seed, model_scale=plan.scale, root=root_p, cfg=cfg,
                         progress=False)[0]
    runner.log_event(root_p, plan.preset, setting=name, seed=seed, event="done")
    return rec


def _heldout_task(name: str, plan, best: dict, root: str) -> dict:
    """The held-out outcomes of a setting's best loss on a worker (cached in the store like the runs)."""
    return heldout_outcomes(grid_setting(name, plan, Path(root)), plan, best, Path(root))


def run_grid_ray(plan, settings: list[str], root: Path, address: str | None = None, progress: bool = True,
                 log=print, max_retries: int = 3) -> dict:
    """The grid's runs and held-out checks as Ray tasks (``root``: the search results folder, shared by
    every node); returns the summary rows by setting."""
    with runner.cluster(address) as ray:
        run_task = runner.remote(ray, _run_task, max_retries)
        held_task = runner.remote(ray, _heldout_task, max_retries)
        pending = {run_task.remote(name, seed, seeded, plan, str(root)): (name, seed, seeded)
                   for name in settings for seed, seeded in plan.seeds}
        runs: dict[str, list] = {name: [] for name in settings}
        rows, held_pending = {}, {}
        bar = tqdm(total=len(pending) + len(settings), desc=f"grid on Ray ({len(ray.nodes())} nodes)", **quiet(progress))
        while pending or held_pending:
            ready, _ = ray.wait(list(pending) + list(held_pending), num_returns=1)
            ref = ready[0]
            bar.update(1)
            if ref in pending:
                name, seed, seeded = pending.pop(ref)
                rec = ray.get(ref)
                runs[name].append(rec)
                log(f"{name} run seed {seed}{' (seeded)' if seeded else ''}: R''={rec['best_fitness']:.3f}, gain over "
                    f"CE {rec['gain_over_ce_pp']:+.1f} pp")
                if len(runs[name]) == len(plan.seeds):
                    best = max(runs[name], key=lambda r: r["best_fitness"])
                    held_pending[held_task.remote(name, plan, best, str(root))] = name
            else:
                name = held_pending.pop(ref)
                rows[name] = summary_row(name, grid_setting(name, plan, root), runs[name], ray.get(ref), plan)
        bar.close()
        return rows


#: chapter 03's parameters (papermill, ``run -p``; checked before its kernel starts)
PARAMETERS: dict[str, Param] = {
    **common("smoke | cpu (committed results) | paper"),
    "settings": Param("mnist-net1-st-linf,mnist-net2-st-linf,mnist-net1-at-linf,mnist-net2-at-linf", setting_list),
    "runs": Param(0, whole(), "runs per setting; 0: the scale's default"),
    "eps": Param("auto", eps_rule, "auto | paper | calibrate | a number"),
    "grid_scale": Param("cpu", choice(SCALES), "whose 24-setting grid the chapter shows"),
}


def check_parameters(v: dict) -> None:
    """A numeric eps is a radius under each chosen setting's norm, bounded by its images."""
    if v["eps"] not in EPS_RULES:  # a number: a radius under each chosen setting's norm
        for setting in v["settings"].split(","):
            dataset, _, _, norm = setting.strip().split("-")
            with_name("eps", v["eps"], lambda: check_dataset_eps(dataset, norm, float(v["eps"])))


#: Table 3.6's columns: the grid summary's names, as the chapter shows them
GRID_TABLE_COLUMNS = {
    "setting": "setting", "eps": "eps", "runs": "runs", "seeded_runs": "seeded runs", "runs_beating_ce": "runs beating CE",
    "paper_gain_pp": "paper's gain", "search_gain_pp": "in-sample gain", "heldout_gain_pp": "held-out gain",
    "ci_low": "95% low", "ci_high": "95% high", "p_value": "p",
    "gain_over_best_handcrafted_pp": "gain over best handcrafted",
    "verdict": "verdict", "heldout_gain_pp_pgd100": "held-out gain, PGD-100", "verdict_pgd100": "verdict, PGD-100",
    "best_pretty": "best loss"}


def grid_table(summary: pd.DataFrame):
    """Table 3.6: the grid's summary with readable column names, gains in pp to one decimal, eps to 3 digits."""
    table = summary[list(GRID_TABLE_COLUMNS)].rename(columns=GRID_TABLE_COLUMNS)
    pp = [GRID_TABLE_COLUMNS[c] for c in GRID_TABLE_COLUMNS if "gain" in c or c.startswith("ci_")]
    return table.style.format({"eps": "{:.3g}", "p": "{:.2g}", **{c: "{:+.1f}" for c in pp}}).hide(axis="index")
