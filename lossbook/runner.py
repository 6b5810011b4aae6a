"""The grid on a Ray cluster: one Ray task per (setting, run), then one per setting's held-out check.

``python -m lossbook grid --backend ray --address HOST:PORT`` (or ``RAY_ADDRESS``) runs the same
grid as the local backend, on an existing Ray cluster. What makes that safe is the results store:

* every task writes its run through :mod:`lossbook.store` (atomically), into a results folder that
  **every node can read and write** (``--results DIR``, or ``LOSSBOOK_RESULTS``; by default the
  repository's ``results/``, which is shared only when all nodes run on one machine);
* a task checkpoints after every GP generation; a task that Ray retries because its worker or node
  died resumes from that checkpoint, and a finished run is never computed again (a task first
  looks for the finished run file);
* the driver shows one progress bar over tasks and prints a line per finished run; it writes
  ``summary.csv`` itself, as the local backend does.

Each task declares its resources: one GPU where the cluster has GPUs, else one CPU. Every task
appends one line per event (start, resume, done) to ``<results>/search/<preset>/ray-tasks.log``,
with the node it ran on, so what was recovered can be read afterwards.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from lossbook.config import quiet


def _log_event(root: Path, preset: str, **event) -> None:
    path = root / preset / "ray-tasks.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": round(time.time(), 3), "node": os.environ.get("LOSSBOOK_NODE", ""),
                       "pid": os.getpid(), **event}) + "\n"
    with open(path, "a") as fh:  # one short write in append mode: lines of concurrent tasks do not interleave
        fh.write(line)


def read_events(root: Path, preset: str) -> list[dict]:
    """The task events of a grid (see the module docstring)."""
    path = Path(root) / preset / "ray-tasks.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run_task(name: str, seed: int, seeded: bool, plan, root: str) -> dict:
    """One GP run of the grid on a worker: loads it if finished, else resumes or starts it."""
    from lossbook.chapters import gp_search as grid
    from lossbook.search.engine import checkpoint_path, search_dir, search_setting

    root_p = Path(root)
    setting = grid.grid_setting(name, plan, root_p)
    cfg = grid.run_config(plan, seeded)
    done = search_setting(setting, plan.preset, runs=1, seed=seed, model_scale=plan.scale, root=root_p, cfg=cfg,
                          load_only=True)
    if done:
        _log_event(root_p, plan.preset, setting=name, seed=seed, event="finished earlier")
        return done[0]
    ckpt = checkpoint_path(search_dir(setting, plan.preset, root_p), seed)
    _log_event(root_p, plan.preset, setting=name, seed=seed, event="resume" if ckpt.exists() else "start")
    rec = search_setting(setting, plan.preset, runs=1, seed=seed, model_scale=plan.scale, root=root_p, cfg=cfg,
                         progress=False)[0]
    _log_event(root_p, plan.preset, setting=name, seed=seed, event="done")
    return rec


def _heldout_task(name: str, plan, best: dict, root: str) -> dict:
    """The held-out outcomes of a setting's best loss on a worker (cached in the store like the runs)."""
    from lossbook.chapters import gp_search as grid

    return grid.heldout_outcomes(grid.grid_setting(name, plan, Path(root)), plan, best, Path(root))


def run_grid_ray(plan, settings: list[str], root: Path, address: str | None = None, progress: bool = True,
                 log=print, max_retries: int = 3) -> dict:
    """The grid's runs and held-out checks as Ray tasks (``root``: the search results folder, shared by
    every node); returns the summary rows by setting."""
    import ray

    from lossbook.chapters import gp_search as grid

    env = {k: os.environ[k] for k in ("LOSSBOOK_DATA", "LOSSBOOK_CHUNK", "LOSSBOOK_RESULTS") if k in os.environ}
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", runtime_env={"env_vars": env},
             log_to_driver=False, ignore_reinit_error=True)
    try:
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        run_task = ray.remote(max_retries=max_retries, **resources)(_run_task)
        held_task = ray.remote(max_retries=max_retries, **resources)(_heldout_task)
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
                rows[name] = grid.summary_row(name, grid.grid_setting(name, plan, root), runs[name], ray.get(ref), plan)
        bar.close()
        return rows
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------------------
# Exact verification (chapter 07): one task per shard of a study's images
# ------------------------------------------------------------------------------------------------
def shard_path(study, scale: str, first: int, root: Path | None) -> Path:
    from lossbook.chapters.exact_risk import study_dir

    return study_dir(scale, root) / "shards" / f"{study.name()}-from{first}.json"


def _exact_task(study, scale: str, first: int, last: int, root: str | None) -> list[dict]:
    """Verify images ``first:last`` of a study on a worker, saved image by image in the shard's own file
    (a retried task resumes there)."""
    from lossbook.core import exact
    from lossbook.chapters.exact_risk import MODELS, exact_request, load_verified_model, study_images

    root_p = Path(root) if root else None
    model = load_verified_model(study.model, scale, train=False, root=root_p)
    x, y, idx = study_images(model, MODELS[study.model].dataset, study.n_images)
    path = shard_path(study, scale, first, root_p)
    events = path.parent
    _log_event(events, "", study=study.name(), first=first, event="resume" if path.exists() else "start")
    rows = exact.verify_set(model, x[first:last], y[first:last], study.norm, study.eps, path, exact_request(study),
                            indices=idx[first:last].tolist(), time_limit=study.time_limit, progress=False)
    _log_event(events, "", study=study.name(), first=first, event="done")
    return rows


def verify_study_ray(study, scale: str, root: Path | None = None, address: str | None = None, shard: int = 50,
                     progress: bool = True, max_retries: int = 3) -> list[dict]:
    """The exact verification of a study as Ray tasks over shards of ``shard`` images; the rows, merged in
    image order, are saved where the local path keeps them (so ``run_study`` then only runs the attacks)."""
    import ray

    from lossbook import store
    from lossbook.chapters.exact_risk import exact_path, exact_request, load_verified_model

    load_verified_model(study.model, scale, root=root)  # trained once, here, before the tasks read it
    env = {k: os.environ[k] for k in ("LOSSBOOK_DATA", "LOSSBOOK_CHUNK", "LOSSBOOK_RESULTS") if k in os.environ}
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", runtime_env={"env_vars": env},
             log_to_driver=False, ignore_reinit_error=True)
    try:
        task = ray.remote(max_retries=max_retries, num_cpus=1)(_exact_task)
        refs = [task.remote(study, scale, a, min(a + shard, study.n_images), str(root) if root else None)
                for a in range(0, study.n_images, shard)]
        rows = []
        for _ in tqdm(range(len(refs)), desc=f"{study.name()} on Ray ({len(ray.nodes())} nodes)", **quiet(progress)):
            ready, refs = ray.wait(refs, num_returns=1)
            rows += ray.get(ready[0])
    finally:
        ray.shutdown()
    path, request = exact_path(study, scale, root), exact_request(study)
    saved = store.load(path, request) if store.matches(path, request) else []
    merged = {r["index"]: r for r in saved + rows}
    store.save(path, list(merged.values()), request)
    return rows
