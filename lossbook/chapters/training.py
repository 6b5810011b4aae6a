"""Chapter 02: the NET-1/NET-2 models every later chapter attacks, their training curves and what
adversarial training cost in clean accuracy. The training itself is :mod:`lossbook.core.train`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lossbook import store
from lossbook.config import DATASETS, NETS, TRAININGS, train_config
from lossbook.core.train import checkpoint_path
from lossbook.params import Param, choice, common


def training_logs(records: list[dict], root: Path | None = None):
    """The per-epoch logs of the given models as one DataFrame (columns: model, dataset, training, ...)."""
    frames = []
    for rec in records:
        cfg = train_config(**{k: rec["config"][k] for k in ("dataset", "net", "training", "scale", "seed")})
        df = store.load(checkpoint_path(cfg, root).with_suffix(".log.csv"))
        df.insert(0, "model", cfg.name())
        df.insert(1, "dataset", cfg.dataset)
        df.insert(2, "net", cfg.net.upper().replace("NET", "NET-"))
        df.insert(3, "training", cfg.training.upper())
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def takeaway(records: list[dict]) -> str:
    """Chapter 02's answer: each model's clean test accuracy and epochs at this scale."""
    if not records:
        return "No model is available at this scale."
    parts = [f"{r['config']['dataset']} {r['config']['net'].upper()} {r['config']['training'].upper()} "
             f"{r['test_acc']:.1%} after {r['config']['epochs']} epochs" for r in records]
    return "Clean test accuracy: " + "; ".join(parts) + "."


def conclusion(records: list[dict]) -> str:
    """Chapter 02's closing paragraph from its models' records: what PGD-AT cost in clean accuracy per
    (dataset, net), and the training time of the whole set."""
    by = {(r["config"]["dataset"], r["config"]["net"], r["config"]["training"]): r for r in records}
    lines = []
    for (ds, net, tr), r in by.items():
        st = by.get((ds, net, "st"))
        if tr == "st" or st is None:
            continue
        lines.append(f"* {ds} {net.upper()}: {tr.upper()} reaches {r['test_acc']:.1%} clean test accuracy, "
                     f"{abs(100 * (st['test_acc'] - r['test_acc'])):.1f} pp "
                     f"{'below' if st['test_acc'] >= r['test_acc'] else 'above'} ST's {st['test_acc']:.1%}.")
    total = sum(r.get("train_seconds", 0) for r in records) / 60
    scale = records[0]["config"].get("scale", "") if records else ""
    return "\n".join(lines + [f"\n{len(records)} models, {total:.0f} minutes of training in all at `{scale}` scale "
                              "(the records say on which device). These are the models every later chapter attacks."])


#: chapter 02's parameters (papermill, ``run -p``; checked before its kernel starts)
PARAMETERS: dict[str, Param] = {
    **common("smoke | cpu (committed models) | paper"),
    "dataset": Param("all", choice(DATASETS + ("all",))), "net": Param("all", choice(NETS + ("all",))),
    "training": Param("all", choice(TRAININGS + ("all",))),
}
