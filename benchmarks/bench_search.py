"""Benchmark: one GP run of a search preset with the semantic fitness cache on and off.

Same setting, seed, images and random starts; prints, for each: wall time, trees asked for,
trees attacked, formula-cache and semantic hits, spot checks, disagreements, and the best fitness
and formula; then every fitness the cache-on run took without an attack, against the cache-off
run's attack of the same formula (all of them, not only the spot checks).
Usage: ``python benchmarks/bench_search.py --setting mnist-net1-at-linf --preset cpu``.
Needs the trained models and the calibration of ``results/search/<scale>/calibration.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from lossbook.search.engine import run_search, with_overrides
from lossbook.search.fitness import Evaluator
from lossbook.search.settings import SEARCH_PRESETS, auto_setting, parse_setting, setting_images


def one_run(model, x, y, setting, cfg, seed: int, semantic: bool) -> tuple[dict, Evaluator]:
    ev = Evaluator(model, x, y, setting, steps=cfg.steps, seed=seed, semantic=semantic)
    t0 = time.perf_counter()
    rec = run_search(ev, with_overrides(cfg, semantic_cache=semantic), seed, progress=False)
    keep = ("asked", "attacked", "formula_hits", "semantic_hits", "probe_invalid", "spot_checks", "disagreements",
            "best_fitness", "best", "signatures")
    return {"semantic_cache": semantic, "wall_s": round(time.perf_counter() - t0, 1), **{k: rec[k] for k in keep},
            "disagreement_list": rec["disagreement_list"]}, ev


def borrowed_vs_attacked(on: Evaluator, off: Evaluator) -> dict:
    """Every fitness the cache-on run took without an attack -- a semantic hit never re-attacked, or 0
    for a tree invalid on the probe -- against the attack of the same formula in the cache-off run,
    where that run asked for it too: the error rate over all of them, not only the spot checks."""
    invalid = {f for f, why in on.errors.items() if "on the probe" in why}
    out = {}
    for kind, formulas in (("borrowed", on.borrowed), ("probe_invalid", invalid)):
        common = sorted(f for f in formulas if f in off.cache)
        wrong = [f for f in common if on.cache[f] != off.cache[f]]
        out[kind] = {"all": len(formulas), "compared": len(common), "wrong": len(wrong),
                     "wrong_list": [{"formula": f, "cache_on": on.cache[f], "attacked": off.cache[f]} for f in wrong]}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", default="mnist-net1-at-linf")
    ap.add_argument("--preset", default="cpu", choices=sorted(SEARCH_PRESETS))
    ap.add_argument("--model-scale", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    dataset, net, training, norm = parse_setting(args.setting)
    cfg = SEARCH_PRESETS[args.preset]
    setting = auto_setting(dataset, net, training, norm, args.model_scale, n_images=cfg.n_images)
    model, x, y, _ = setting_images(setting, args.model_scale, cfg.n_images)
    print(f"{args.setting} eps={setting.eps} [{args.preset} preset: {cfg.gn} generations x {cfg.ps} trees, "
          f"{cfg.n_images} images] on {platform.machine()}, {torch.get_num_threads()} threads, seed {args.seed}")
    (on, ev_on), (off, ev_off) = (one_run(model, x, y, setting, cfg, args.seed, semantic) for semantic in (True, False))
    rows, check = [on, off], borrowed_vs_attacked(ev_on, ev_off)
    for r in rows:
        print(f"cache {'on ' if r['semantic_cache'] else 'off'}: {r['wall_s']:7.1f} s, asked {r['asked']}, attacked "
              f"{r['attacked']} (formula hits {r['formula_hits']}, semantic hits {r['semantic_hits']}, invalid on "
              f"the probe {r['probe_invalid']}, spot checks {r['spot_checks']}, disagreements {r['disagreements']}); "
              f"best {r['best_fitness']:.4f}: {r['best']}")
    print(f"wall time off/on = {off['wall_s'] / on['wall_s']:.2f}; attacks off/on = "
          f"{off['attacked'] / max(1, on['attacked']):.2f}; asked/attacked with the cache = "
          f"{on['asked'] / max(1, on['attacked']):.2f}; disagreements / spot checks = "
          f"{on['disagreements']}/{on['spot_checks']}; asked/distinct signatures = "
          f"{on['asked'] / max(1, on['signatures']):.2f} (the most a cache keyed on behaviour can save)")
    b, i = check["borrowed"], check["probe_invalid"]
    print(f"fitness taken without an attack, against the cache-off attack of the same formula: semantic hits "
          f"{b['wrong']} wrong of {b['compared']} compared ({b['all']} in all); invalid on the probe "
          f"{i['wrong']} wrong of {i['compared']} compared ({i['all']} in all)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"setting": args.setting, "eps": setting.eps, "preset": args.preset,
                                               "seed": args.seed, "runs": rows,
                                               "borrowed_check": check}, indent=1))


if __name__ == "__main__":
    main()
