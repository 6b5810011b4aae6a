"""GP runs on disk: search a setting (resuming interrupted runs), load finished runs and their best
loss, and re-evaluate the best loss on held-out images."""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from lossbook import store
from lossbook.config import MODEL_SCALES, RESULTS_DIR, check_choice
from lossbook.core.attack_registry import pgd10_losses
from lossbook.core.attacks import evaluate_losses
from lossbook.core.losses import HANDCRAFTED, compile_formula
from lossbook.core.train import ensure_trained
from lossbook.search.engine import GPConfig, checkpoint_path, checkpoint_request, load_checkpoint, run_search
from lossbook.search.fitness import Evaluator
from lossbook.search.settings import PRESET_MODEL_SCALE, RUNS, SEARCH_PRESETS, Setting, setting_images


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
    check_choice("search preset", scale, SEARCH_PRESETS)
    cfg = cfg or SEARCH_PRESETS[scale]
    runs = runs if runs is not None else RUNS[scale]
    model_scale = model_scale or PRESET_MODEL_SCALE.get(scale, scale)
    check_choice("model scale", model_scale, MODEL_SCALES)
    out = search_dir(setting, scale, root)
    request = lambda run_seed: run_request(setting, cfg, model_scale, run_seed)  # noqa: E731
    if load_only:
        return [store.load(p, request(seed + r)) for r in range(runs)
                if store.matches(p := out / f"run-{seed + r}.json", request(seed + r))]
    if model_scale == "smoke":  # smoke models cost seconds: train them where missing
        ensure_trained([setting.dataset], [setting.net], [setting.training], "smoke", progress=progress)
    model, x, y, _ = setting_images(setting, model_scale, cfg.n_images, device=device)
    records = []
    for r in range(runs):
        run_seed = seed + r
        path, ckpt = out / f"run-{run_seed}.json", checkpoint_path(out, run_seed)
        if path.exists() and not force:
            if store.matches(path, request(run_seed)) or scale != "smoke":  # else: smoke results are redone
                records.append(store.load(path, request(run_seed)))  # another request: stops, naming what differs
                continue
        ev = Evaluator(model, x, y, setting, steps=cfg.steps, seed=run_seed, semantic=cfg.semantic_cache,
                       outcomes=cfg.selection == "lexicase")
        baselines = ev.handcrafted()
        if baselines["ce"] >= 1.0:
            print(f"note: {setting.name()} at eps={setting.eps:g}: CE-PGD-{cfg.steps} already breaks every image, so no "
                  f"loss can do better; a smaller eps (the paper's rule: R'' about 0.7) is needed", file=sys.stderr)
        if scale == "smoke" and ckpt.exists():  # smoke checkpoints are cheap: one of another request is redone
            try:
                load_checkpoint(ckpt, checkpoint_request(ev, cfg, run_seed))
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


def heldout_attacks(setting: Setting, model_scale: str, formula: str, n_search: int, n: int, steps: tuple, seed: int,
                    losses: tuple, device=None) -> tuple[dict, torch.Tensor]:
    """The searched loss ``formula`` (named "searched" in ``losses``) and the named handcrafted ones under
    PGD-s for each s in ``steps``, all on the same held-out images: the ``n`` correctly classified test
    images after the search's first ``n_search``. Returns ({s: AttackResult}, the images' test indices)."""
    model, x, y, idx = setting_images(setting, model_scale, n, skip=n_search, device=device)
    fns = [compile_formula(formula) if k == "searched" else HANDCRAFTED[k] for k in losses]
    return {s: evaluate_losses(model, x, y, fns, norm=setting.norm, eps=setting.eps, steps=s, seed=seed)
            for s in steps}, idx


def heldout_check(setting: Setting, scale: str, runs: list[dict], n: int | None = None, seed: int = 1000,
                  steps: int = 10, root: Path | None = None, device: torch.device | None = None) -> dict:
    """R'' of the best found loss and of the handcrafted losses on *unseen* images.

    A run's fitness is measured on the images the search selected on. Here the best loss is
    re-evaluated on the next ``n`` correctly classified test images (after the search's), with new
    random starts; saved as ``heldout.json`` beside the runs.
    """
    best = max(runs, key=lambda r: r["best_fitness"])
    n_search = best["gp"]["n_images"]
    n = n or n_search
    path = search_dir(setting, scale, root) / "heldout.json"
    request = {"setting": asdict(setting), "scale": scale, "formula": best["best"], "steps": steps, "seed": seed,
               "n": n}

    def compute() -> dict:
        names = pgd10_losses()
        results, idx = heldout_attacks(setting, best["model_scale"], best["best"], n_search, n, (steps,), seed, names,
                                       device)
        return {**request, "images": f"correctly classified test images {n_search + 1}..{n_search + n} (unseen by "
                f"the search)", "test_indices": [int(idx[0]), int(idx[-1])],
                "risk": dict(zip(names, results[steps].risk.tolist()))}

    return store.cached(path, request, compute)
