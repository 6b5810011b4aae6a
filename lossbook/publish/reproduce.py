"""The whole chain of the book at one scale, in order, with resume: ``python -m lossbook reproduce``.

Steps, each a list of units that are either done (their result is on disk, made for this request) or
not:

1. ``models``      -- the 8 NET-1/NET-2 models (``lossbook.core.train``; an interrupted one resumes per epoch)
2. ``eps``         -- the eps of the 24 settings by the auto rule (``calibration.json``)
3. ``grid``        -- the 24 settings: the plan's GP runs each, held-out check, ``summary.csv`` row
                      (an interrupted GP run resumes per generation)
4. ``chapters``    -- the chapters that compute (transfer, landscapes, ATRAS, exact risk), executed
                      with ``recompute=True``: what is missing is computed, what is saved is loaded
5. ``book``        -- every chapter executed from the saved results and the HTML built

Time left is estimated from what finished: a unit's measured seconds (a model's training time, a GP
run's seconds, a chapter's execution time) stand for the units of the same kind still to do. Kinds
with nothing finished yet are counted as *unmeasured*, not guessed.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lossbook import store
from lossbook.chapters.gp_search import PLANS, grid_setting, read_summary, run_config, run_grid, summary_path
from lossbook.chapters.registry import CHAPTERS
from lossbook.config import DATASETS, NETS, RESULTS_DIR, SCALES, SETTINGS, TRAININGS, check_choice, train_config
from lossbook.core.train import checkpoint_path, load_record, train
from lossbook.publish.build import build, run_chapter
from lossbook.search.runs import run_request, search_dir
from lossbook.search.settings import parse_setting, saved_auto_setting

STEPS = ("models", "eps", "grid", "chapters", "book")


@dataclass
class Unit:
    """One piece of the chain: its label, the kind whose measured times estimate it, whether it is
    done, how long it took where measured, and how to do it."""

    step: str
    label: str
    kind: str
    done: Callable[[], bool]
    run: Callable[[], None]
    seconds: Callable[[], float | None] = lambda: None
    parts: Callable[[], tuple[int, int]] | None = None  # (done, total) sub-units, e.g. GP runs
    part_seconds: Callable[[], list[float]] = field(default=lambda: [])


def _model_units(scale: str, datasets) -> list[Unit]:
    units = []
    for ds in datasets:
        for net in NETS:
            for tr in TRAININGS:
                cfg = train_config(ds, net, tr, scale)
                path = checkpoint_path(cfg)

                def done(cfg=cfg, path=path):
                    return path.exists() and \
                        load_record(cfg.dataset, cfg.net, cfg.training, scale)["config"] == cfg.to_dict()

                def seconds(cfg=cfg, done=done):
                    return load_record(cfg.dataset, cfg.net, cfg.training, scale)["train_seconds"] if done() else None

                units.append(Unit("models", cfg.name(), f"model {ds} {tr}", done,
                                  lambda cfg=cfg: train(cfg, progress=True), seconds))
    return units


def _grid_units(scale: str, datasets) -> tuple[list[Unit], list[Unit]]:
    plan = PLANS[scale]
    eps_units, grid_units = [], []
    for name in SETTINGS:
        if name.split("-")[0] not in datasets:
            continue
        def known(name=name):  # the setting at its eps, where the eps is calibrated already
            return saved_auto_setting(*parse_setting(name), plan.scale)

        eps_units.append(Unit("eps", name, "eps", lambda known=known: known() is not None,
                              lambda name=name: grid_setting(name, plan)))

        def runs_on_disk(known=known):
            setting = known()
            if setting is None:
                return []
            found = []
            for seed, seeded in plan.seeds:
                path = search_dir(setting, plan.preset) / f"run-{seed}.json"
                if store.matches(path, run_request(setting, run_config(plan, seeded), plan.scale, seed)):
                    found.append(store.load(path)["seconds"])
            return found

        def judged(name=name):
            return summary_path(plan).exists() and any(r["setting"] == name for r in read_summary(plan))

        grid_units.append(Unit("grid", name, f"gp run {name.split('-')[0]}", judged,
                               lambda name=name: run_grid(scale, settings=[name], progress=True),
                               parts=lambda f=runs_on_disk: (len(f()), len(plan.seeds)), part_seconds=runs_on_disk))
    return eps_units, grid_units


def _stamp(chapter: str, scale: str) -> Path:
    return RESULTS_DIR / "reproduce" / scale / f"{chapter}.json"


def _chapter_units(scale: str) -> list[Unit]:
    units = []
    for ch in (name for name, chapter in CHAPTERS.items() if chapter.computes):
        request = {"chapter": ch, "scale": scale, "recompute": True}

        def run(ch=ch, request=request):
            t0 = time.perf_counter()
            run_chapter(ch, scale, recompute=True)
            store.save(_stamp(ch, scale), {"seconds": round(time.perf_counter() - t0, 1)}, request)

        def seconds(ch=ch, request=request):
            return store.load(_stamp(ch, scale), request)["seconds"] if store.matches(_stamp(ch, scale), request) else None

        units.append(Unit("chapters", ch, f"chapter {ch}", lambda ch=ch, r=request: store.matches(_stamp(ch, scale), r),
                          run, seconds))
    return units


def _book_unit(scale: str) -> Unit:
    """The book is built every time the chain runs (it is the chain's last step); its stamp keeps the
    time the last build took, for the estimate."""
    request = {"book": scale}

    def run():
        t0 = time.perf_counter()
        build(scale=scale, recompute=False)
        store.save(_stamp("book", scale), {"seconds": round(time.perf_counter() - t0, 1)}, request)

    def seconds():
        stamp = _stamp("book", scale)
        return store.load(stamp, request)["seconds"] if store.matches(stamp, request) else None

    return Unit("book", "the book", "book", lambda: False, run, seconds)


def chain(scale: str, datasets=DATASETS, steps=STEPS) -> list[Unit]:
    """Every unit of the chain at ``scale`` for ``datasets``, in order, limited to ``steps``."""
    check_choice("scale", scale, SCALES)
    for d in datasets:
        check_choice("dataset", d, DATASETS)
    for s in steps:
        check_choice("step", s, STEPS)
    eps_units, grid_units = _grid_units(scale, datasets)
    units = _model_units(scale, datasets) + eps_units + grid_units
    if tuple(datasets) == DATASETS:  # the chapters and the book need both datasets
        units += _chapter_units(scale) + [_book_unit(scale)]
    return [u for u in units if u.step in steps]


def status(units: list[Unit]) -> list[dict]:
    """Per step: units done and total, measured seconds, the estimate of the time left and how many
    units of the rest have no measured kind to go by."""
    measured: dict[str, list[float]] = {}
    state = []
    for u in units:
        done = u.done()
        if u.parts is not None:  # a setting: its GP runs are the measured parts
            measured.setdefault(u.kind, []).extend(u.part_seconds())
            state.append((u, done, u.parts()))
        else:
            secs = u.seconds()
            if secs is not None:
                measured.setdefault(u.kind, []).append(secs)
            state.append((u, done, None))
    rows = {}
    for u, done, parts in state:
        r = rows.setdefault(u.step, {"step": u.step, "done": 0, "total": 0, "left_s": 0.0, "unmeasured": 0,
                                     "runs_done": 0, "runs_total": 0})
        r["total"] += 1
        r["done"] += done
        if parts is not None:
            r["runs_done"] += parts[0]
            r["runs_total"] += parts[1]
        if done:
            continue
        if parts is not None:
            per_run = measured.get(u.kind)
            if per_run:
                r["left_s"] += statistics.median(per_run) * (parts[1] - parts[0])
            else:
                r["unmeasured"] += 1
        elif measured.get(u.kind):
            r["left_s"] += statistics.median(measured[u.kind])
        else:
            r["unmeasured"] += 1
    return list(rows.values())


def report(rows: list[dict]) -> str:
    """The status as lines a user reads: what is done, what remains, the estimated time left."""
    lines = []
    for r in rows:
        runs = f" ({r['runs_done']}/{r['runs_total']} GP runs)" if r["runs_total"] else ""
        left = f"~{r['left_s'] / 3600:.1f} h left" if r["left_s"] else ""
        unmeasured = f"{r['unmeasured']} not yet measured" if r["unmeasured"] else ""
        rest = "; ".join(x for x in (left, unmeasured) if x) or ("done" if r["done"] == r["total"] else "")
        lines.append(f"{r['step']:<9} {r['done']}/{r['total']} done{runs}: {rest}")
    total = sum(r["left_s"] for r in rows)
    unmeasured = sum(r["unmeasured"] for r in rows)
    lines.append(f"estimated time left: {total / 3600:.1f} h for the measured kinds"
                 + (f", plus {unmeasured} units of kinds with nothing finished yet" if unmeasured else ""))
    return "\n".join(lines)


def reproduce(scale: str, datasets=DATASETS, steps=STEPS, dry_run: bool = False, log=print) -> list[dict]:
    """Run every unit of the chain that is not done, in order, printing the status before each step
    (``dry_run``: print it and run nothing). Returns the final status."""
    units = chain(scale, datasets, steps)
    log(report(status(units)))
    if dry_run:
        return status(units)
    for step in STEPS:
        todo = [u for u in units if u.step == step and not u.done()]
        for i, u in enumerate(todo):
            log(f"[{step} {i + 1}/{len(todo)}] {u.label}")
            u.run()
        if todo:
            log(report(status(units)))
    return status(units)
