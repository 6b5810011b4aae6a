"""ATRAS (Alparslan & Kim): FGSM attacks and FGSM adversarial training over 40 MLP architectures.

For each architecture and dataset, the paper's six columns:

1. ``train_acc`` / 2. ``test_acc``: clean accuracy of the standard-trained (ST) MLP;
3. ``acc_attacked_before_at``: its test accuracy under FGSM (white-box, crafted on itself);
4. ``adv_train_acc`` / 5. ``adv_test_acc``: clean accuracy of the FGSM-adversarially-trained MLP;
6. ``acc_attacked_after_at``: its test accuracy under FGSM crafted on itself.

Choices the paper leaves open (each a field of :class:`ATRASConfig`, stated in the chapter):
ReLU, Adam (lr 1e-3), batch 128, PyTorch's default initialisation; FGSM eps 0.1 (MNIST) and 8/255
(CIFAR-10); adversarial training *continues from the ST model* on Goodfellow et al.'s 50/50 mix of
clean and FGSM examples (FGSM crafted on the current model for each batch).
"""
from __future__ import annotations

import ast
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from lossbook import store
from lossbook.config import DATASETS, FAILURE_MODES, RESULTS_DIR, SCALES, check_choice, check_dataset_eps, quiet
from lossbook.core import data
from lossbook.core.attacks import fgsm
from lossbook.core.models import accuracy, build_model, n_params
from lossbook.core.stats import NOT_COMPARABLE
from lossbook.core.train import adversarial_loss, fit
from lossbook.params import (
    Param,
    choice,
    common,
    is_architecture,
    listing,
    number,
    whole,
    with_name,
)

#: The 40 hidden-layer lists of the paper's Tables I and II, in their order.
ARCHITECTURES: list[list[int]] = [
    [8, 16, 32, 64, 128, 256, 512, 1024], [16, 32, 64, 128, 256, 512, 1024], [24, 48, 96, 192, 384, 768],
    [32, 64, 128, 256, 512, 1024], [40, 80, 160, 320, 640], [48, 96, 192, 384, 768], [56, 112, 224, 448, 896],
    [64, 128, 256, 512, 1024], [8, 32, 128, 512], [16, 64, 256, 1024], [24, 96, 384], [32, 128, 512],
    [40, 160, 640], [48, 192, 768], [56, 224, 896], [64, 256, 1024], [8, 64, 512], [16, 128, 1024], [24, 192],
    [32, 256], [40, 320], [48, 384], [56, 448], [64, 512], [8, 128], [16, 256], [24, 384], [32, 512], [40, 640],
    [48, 768], [56, 896], [64, 1024], [8, 256], [16, 512], [24, 768], [32, 1024], [40], [48], [56], [64],
]

#: The paper's depth summaries: mean change (pp) of accuracy under FGSM after vs before AT.
PAPER_DEPTH_SUMMARY = {
    "mnist": {"1": 4.58, "2": -2.5, "3": 4.06, ">3": 0.99},
    "cifar10": {"1": 35.2, "2": -44.5, "3": 31.30, ">3": 7.28},
}
COLUMNS = ["train_acc", "test_acc", "acc_attacked_before_at", "adv_train_acc", "adv_test_acc", "acc_attacked_after_at"]
PAPER_TABLES = Path(__file__).parent / "paper_data" / "atras_tables.csv"


@dataclass(frozen=True)
class ATRASConfig:
    """Everything that determines one dataset's sweep."""

    dataset: str
    scale: str
    epochs: int  # standard training
    adv_epochs: int  # FGSM adversarial training (continuing from the ST model)
    eps: float  # FGSM radius (l_inf, images in [0, 1])
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    activation: str = "relu"
    at_mix: float = 0.5  # weight of the FGSM examples in the AT loss (Goodfellow et al.: 0.5)
    n_train: int | None = None
    n_test: int | None = None
    seed: int = 0
    failure_mode: str = "none"  # "sigmoid-sgd": sigmoid units + plain SGD (lr 0.01), to probe the paper's dead MLPs

    def __post_init__(self):
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("scale", self.scale, SCALES)
        check_choice("failure_mode", self.failure_mode, FAILURE_MODES)
        check_dataset_eps(self.dataset, "linf", self.eps)  # FGSM is an l_inf attack


_EPS = {"mnist": 0.1, "cifar10": 8 / 255}
_SCALE = {
    "smoke": dict(epochs=1, adv_epochs=1, n_train=2000, n_test=500),
    "cpu": dict(epochs=2, adv_epochs=2),
    "paper": dict(epochs=10, adv_epochs=10),
}


def atras_config(dataset: str, scale: str, **overrides) -> ATRASConfig:
    """The sweep's configuration for a dataset at a scale (overrides: any field)."""
    check_choice("scale", scale, SCALES)
    kw = dict(dataset=dataset, scale=scale, eps=_EPS.get(dataset, 0.1), **_SCALE[scale])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return ATRASConfig(**kw)


def depth_group(hidden) -> str:
    """'1', '2', '3' or '>3' hidden layers."""
    n = len(hidden)
    return str(n) if n <= 3 else ">3"


# ------------------------------------------------------------------------------------------------
# One architecture
# ------------------------------------------------------------------------------------------------
def make_model(cfg: ATRASConfig, hidden) -> torch.nn.Module:
    """The MLP with ``hidden`` widths (sigmoid units in the failure recipe)."""
    act = "sigmoid" if cfg.failure_mode == "sigmoid-sgd" else cfg.activation
    return build_model(cfg.dataset, "mlp", hidden=list(hidden), activation=act)


def make_optimizer(cfg: ATRASConfig, model):
    """Adam or SGD as ``cfg`` says; plain SGD at lr 0.01 in the failure recipe."""
    if cfg.failure_mode == "sigmoid-sgd":
        return torch.optim.SGD(model.parameters(), lr=0.01)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)


def fgsm_loss(eps: float, mix: float):
    """ATRAS's adversarial training loss: (1 - mix) clean CE + mix CE on FGSM examples at ``eps``."""
    return adversarial_loss(lambda model, xb, yb: fgsm(model, xb, yb, eps), mix)


def _acc(model, x, y, batch: int = 4096) -> float:
    return accuracy(model, x, y, batch)


def fgsm_accuracy(model, x, y, eps: float, source=None) -> float:
    """Accuracy of ``model`` on FGSM examples crafted on ``source`` (default: on ``model`` itself)."""
    xa = fgsm(source or model, x, y, eps)
    return _acc(model, xa, y)


def run_architecture(cfg: ATRASConfig, hidden, splits, progress: bool = True) -> tuple[dict, torch.nn.Module]:
    """Train, attack, adversarially train and attack again one MLP; returns its row and the ST model."""
    x, y, xt, yt = splits
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = make_model(cfg, hidden)
    model.train()
    fit(model, make_optimizer(cfg, model), x, y, cfg.epochs, cfg.batch_size, gen, desc=f"{hidden} ST", progress=progress)
    row = {"dataset": cfg.dataset, "hidden": str(list(hidden)), "depth": len(hidden), "params": n_params(model),
           "train_acc": _acc(model, x, y), "test_acc": _acc(model, xt, yt),
           "acc_attacked_before_at": fgsm_accuracy(model, xt, yt, cfg.eps)}
    standard = {k: v.clone() for k, v in model.state_dict().items()}
    # adversarial training continues from the ST model, with a fresh optimizer
    fit(model, make_optimizer(cfg, model), x, y, cfg.adv_epochs, cfg.batch_size, gen, fgsm_loss(cfg.eps, cfg.at_mix),
        f"{hidden} AT", progress)
    row.update({"adv_train_acc": _acc(model, x, y), "adv_test_acc": _acc(model, xt, yt),
                "acc_attacked_after_at": fgsm_accuracy(model, xt, yt, cfg.eps),
                "seconds": round(time.perf_counter() - t0, 1)})
    st_model = make_model(cfg, hidden)
    st_model.load_state_dict(standard)
    return row, st_model.eval()


# ------------------------------------------------------------------------------------------------
# The sweep (resumable: one CSV row per finished architecture)
# ------------------------------------------------------------------------------------------------
def sweep_dir(scale: str, failure_mode: str = "none", root: Path | None = None) -> Path:
    base = (root or RESULTS_DIR / "atras") / scale
    return base if failure_mode == "none" else base / f"failure-{failure_mode}"


def load_splits(cfg: ATRASConfig):
    x, y = data.load(cfg.dataset, "train", cfg.n_train)
    xt, yt = data.load(cfg.dataset, "test", cfg.n_test)
    return x, y, xt, yt


def run_sweep(cfg: ATRASConfig, archs: list | None = None, root: Path | None = None, progress: bool = True,
              keep_models: list | None = None) -> tuple[pd.DataFrame, dict]:
    """Run (or resume) the sweep of ``archs`` (default: all 40) for one dataset.

    Rows are appended to ``<dataset>.csv`` as each architecture finishes, with the configuration in
    ``<dataset>.json``; a rerun skips the finished ones. ST models of the architectures in
    ``keep_models`` are returned (for the transfer matrix; finished ones are retrained for it).
    """
    archs = [list(a) for a in (archs or ARCHITECTURES)]
    folder = sweep_dir(cfg.scale, cfg.failure_mode, root)
    folder.mkdir(parents=True, exist_ok=True)
    out, request = folder / f"{cfg.dataset}.csv", asdict(cfg)
    done = store.load(out, request) if out.exists() else pd.DataFrame()  # another configuration: stops, naming it
    finished = set(done["hidden"]) if len(done) else set()
    keep = {str(list(a)) for a in (keep_models or [])}
    splits = load_splits(cfg)
    models = {}
    bar = tqdm(archs, desc=f"ATRAS {cfg.dataset} [{cfg.scale}]", **quiet(progress))
    skipped = [str(h) for h in archs if str(h) in finished and str(h) not in keep]
    if skipped:
        print(f"ATRAS {cfg.dataset} [{cfg.scale}]: {len(skipped)} of {len(archs)} architectures finished earlier, skipped")
    for hidden in bar:
        key = str(hidden)
        if key in finished and key not in keep:
            continue
        row, st_model = run_architecture(cfg, hidden, splits, progress=False)
        if key in keep:
            models[key] = st_model
        if key not in finished:  # the table is rewritten (atomically) with each finished architecture
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            store.save(out, done, request)
            finished.add(key)
        bar.set_postfix(last=key, test=f"{row['test_acc']:.3f}", fgsm=f"{row['acc_attacked_before_at']:.3f}")
    df = store.load(out, request)
    order = {str(a): i for i, a in enumerate(archs)}
    df = df[df["hidden"].isin(order)].assign(_o=lambda d: d["hidden"].map(order)).sort_values("_o").drop(columns="_o")
    return df.reset_index(drop=True), models


def transfer_matrix(models: dict, x, y, eps: float) -> pd.DataFrame:
    """Accuracy of model j (columns) on FGSM examples crafted on model i (rows)."""
    names = list(models)
    adv = {i: fgsm(models[i], x, y, eps) for i in names}
    return pd.DataFrame([[_acc(models[j], adv[i], y) for j in names] for i in names], index=names, columns=names)


# ------------------------------------------------------------------------------------------------
# The paper's summaries
# ------------------------------------------------------------------------------------------------
def param_count(dataset: str, hidden) -> int:
    """Parameters of the MLP with these hidden widths (weights and biases)."""
    widths = [784 if dataset == "mnist" else 3072] + list(hidden) + [10]
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


def paper_tables() -> pd.DataFrame:
    """The paper's Tables I and II as printed (cited data), with depth and parameter counts added."""
    df = pd.read_csv(PAPER_TABLES, comment="#")
    hidden = df["hidden"].map(ast.literal_eval)
    return df.assign(depth=hidden.map(len), params=[param_count(d, h) for d, h in zip(df["dataset"], hidden)])


def depth_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean change (pp) of accuracy under FGSM after vs before AT, by dataset and depth group."""
    d = df.assign(depth_group=df["hidden"].map(lambda h: depth_group(ast.literal_eval(h) if isinstance(h, str) else h)),
                  change_pp=100 * (df["acc_attacked_after_at"] - df["acc_attacked_before_at"]))
    out = d.groupby(["dataset", "depth_group"], sort=False)["change_pp"].agg(["mean", "count"]).reset_index()
    out["paper_pp"] = [PAPER_DEPTH_SUMMARY.get(ds, {}).get(g, np.nan) for ds, g in zip(out["dataset"], out["depth_group"])]
    order = {"1": 0, "2": 1, "3": 2, ">3": 3}
    return out.sort_values(["dataset", "depth_group"], key=lambda s: s.map(order) if s.name == "depth_group" else s)


def with_overrides(cfg: ATRASConfig, **kw) -> ATRASConfig:
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})


#: The architectures of the transfer matrix at cpu scale: one to eight hidden layers, narrow and wide.
TRANSFER_SUBSET = [[64], [8, 256], [64, 1024], [24, 96, 384], [64, 256, 1024], [8, 32, 128, 512],
                   [40, 80, 160, 320, 640], [8, 16, 32, 64, 128, 256, 512, 1024]]


SMOKE_ARCHITECTURES = (36, 24, 8)  # indices: three sizes, seconds on a CPU


def chapter_architectures(spec: str, scale: str) -> list:
    """The architectures of a run: ``"all"`` (the 40 of the paper; three at smoke scale) or
    comma-separated indices into :data:`ARCHITECTURES` (validated by :mod:`lossbook.params`)."""
    if spec == "all":
        return list(ARCHITECTURES) if scale != "smoke" else [ARCHITECTURES[i] for i in SMOKE_ARCHITECTURES]
    idx = [int(i) for i in str(spec).split(",")]
    bad = [i for i in idx if not 0 <= i < len(ARCHITECTURES)]
    if bad:
        raise ValueError(f"architecture index {bad[0]} is not allowed; allowed: 0..{len(ARCHITECTURES) - 1}")
    return [ARCHITECTURES[i] for i in idx]


def failure_architectures(archs: list, scale: str) -> list:
    """The MLPs the failure switch is tried on: the four deepest (>= 5 hidden layers) of ``archs``;
    the first two at smoke scale."""
    return [a for a in archs if len(a) >= 5][:4] if scale != "smoke" else list(archs)[:2]


def chapter_configs(datasets: list, scale: str, eps: float = 0.0, epochs: int = 0, adv_epochs: int = 0,
                    seed: int = 0) -> dict:
    """Chapter 06's configuration per dataset ({dataset: ATRASConfig}); 0 keeps the scale's default."""
    return {ds: atras_config(ds, scale, eps=eps or None, epochs=epochs or None, adv_epochs=adv_epochs or None,
                             seed=seed) for ds in datasets}


def failure_results(configs: dict, archs: list, scale: str, failure_mode: str, compute: bool) -> pd.DataFrame:
    """The deep MLPs of :func:`failure_architectures` trained with the ``failure_mode`` recipe, every
    dataset of ``configs`` ({dataset: ATRASConfig}); empty where the mode is "none" or nothing is saved."""
    if failure_mode == "none":
        return pd.DataFrame()
    rows = []
    for cfg in configs.values():
        df, _ = dataset_results(with_overrides(cfg, failure_mode=failure_mode), failure_architectures(archs, scale),
                                [], compute=compute)
        if df is not None and not df.empty:
            rows.append(df.assign(recipe=failure_mode))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def transfer_architectures(archs: list, scale: str) -> list:
    """The architectures of the transfer matrix: all of ``archs`` at smoke and paper scale, else those
    of :data:`TRANSFER_SUBSET` among them."""
    return list(archs) if scale in ("smoke", "paper") else [a for a in TRANSFER_SUBSET if a in archs]


def dataset_results(cfg: ATRASConfig, archs: list, transfer_archs: list, compute: bool, n_transfer: int = 2000,
                    root: Path | None = None, progress: bool = True) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The sweep table and the transfer matrix of one dataset: computed (resuming a partial sweep) when
    ``compute``, else loaded from ``results/atras/<scale>/`` (None where nothing is saved)."""
    folder = sweep_dir(cfg.scale, cfg.failure_mode, root)
    tpath = folder / f"transfer-{cfg.dataset}.csv"
    if not compute:
        out = folder / f"{cfg.dataset}.csv"
        df = store.load(out, asdict(cfg)) if out.exists() else None
        if df is not None:
            order = {str(list(a)): i for i, a in enumerate(archs)}
            df = df[df["hidden"].isin(order)].sort_values("hidden", key=lambda h: h.map(order)).reset_index(drop=True)
        tm = store.load(tpath).set_index("source") if tpath.exists() else None
        return df, tm
    df, models = run_sweep(cfg, archs, root=root, progress=progress, keep_models=transfer_archs)
    tm = None
    if len(models) > 1:
        _, _, xt, yt = load_splits(cfg)
        tm = transfer_matrix(models, xt[:n_transfer], yt[:n_transfer], cfg.eps)
        store.save(tpath, tm.rename_axis("source").reset_index(),
                   {"what": "transfer matrix", **asdict(cfg), "architectures": list(tm.index), "images": n_transfer})
        tm = tm.rename_axis("source")
    return df, tm


def claims(df: pd.DataFrame, transfers: dict | None = None) -> pd.DataFrame:
    """The paper's conclusions, tested on a sweep table (and the transfer matrices, by dataset): one row
    per claim with the statistic and whether our numbers support it."""
    rows = []
    for ds, d in df.groupby("dataset", sort=False):
        change = 100 * (d["acc_attacked_after_at"] - d["acc_attacked_before_at"])
        rho = spearmanr(d["params"], change).statistic
        by_depth = depth_summary(d).set_index("depth_group")["mean"]
        rows.append({"dataset": ds, "claim": "adversarial training recovers most on smaller architectures",
                     "evidence": f"Spearman(params, recovery) = {rho:+.2f}; largest mean recovery at depth "
                                 f"{by_depth.idxmax()} ({by_depth.max():+.1f} pp)",
                     "supported": bool(rho < 0 and by_depth.idxmax() == "1")})
        rho2 = spearmanr(d["params"], d["acc_attacked_after_at"]).statistic
        best = d.loc[d["acc_attacked_after_at"].idxmax()]
        rows.append({"dataset": ds, "claim": "accuracy under attack after AT is highest on smaller architectures",
                     "evidence": f"Spearman(params, accuracy) = {rho2:+.2f}; best {best['hidden']} "
                                 f"({best['acc_attacked_after_at']:.3f}, {int(best['params']):,} parameters)",
                     "supported": bool(rho2 < 0)})
        m = (transfers or {}).get(ds)
        if m is not None:
            size = {h: param_count(ds, ast.literal_eval(h)) for h in m.index}
            clean = dict(zip(d["hidden"], d["test_acc"]))
            drops = [clean[j] - m.loc[i, j] for i in m.index for j in m.columns if size[i] < size[j]]
            back = [clean[j] - m.loc[i, j] for i in m.index for j in m.columns if size[i] > size[j]]
            rows.append({"dataset": ds, "claim": "FGSM examples crafted on a smaller network fool larger ones",
                         "evidence": f"mean drop of a larger network's accuracy on them: {100 * np.mean(drops):.1f} pp "
                                     f"over {len(drops)} (smaller, larger) pairs (min {100 * np.min(drops):.1f} pp); "
                                     f"larger to smaller: {100 * np.mean(back):.1f} pp",
                         "supported": bool(np.mean(drops) > 0.1)})
    return pd.DataFrame(rows)


def takeaway(ours: pd.DataFrame, transfers: dict, paper: pd.DataFrame, configs: dict) -> tuple[str, str]:
    """Chapter 06's answer (how many of the paper's conclusions our sweep supports, per dataset) and how
    its regime differs from the paper's (FGSM eps, epochs, median accuracies beside the paper's tables)."""
    if ours.empty:
        return "No sweep is available at this scale.", "Nothing to compare."
    table = claims(ours, transfers)
    answer = "; ".join(f"{ds}: {int(d['supported'].sum())} of {len(d)} of the paper's conclusions supported by our sweep"
                       for ds, d in table.groupby("dataset", sort=False))
    med = lambda df, ds, col: 100 * df.loc[df["dataset"] == ds, col].median()
    differs = "; ".join(
        f"{ds}: FGSM eps {configs[ds].eps:.3g}, {configs[ds].epochs}+{configs[ds].adv_epochs} epochs, one seed; median "
        f"clean accuracy {med(ours, ds, 'test_acc'):.0f}% (paper {med(paper, ds, 'test_acc'):.0f}%), under FGSM before "
        f"adversarial training {med(ours, ds, 'acc_attacked_before_at'):.0f}% "
        f"(paper {med(paper, ds, 'acc_attacked_before_at'):.0f}%)"
        for ds in ours["dataset"].unique() if ds in configs)
    return answer + " (descriptive: no interval).", differs + ". Where the regimes differ this much, a conclusion " \
        "that does not hold here is not a failure of the paper's claim in its own regime."


def conclusion(claims_table: pd.DataFrame, exact_fgsm_gap: str = "") -> str:
    """Chapter 06's closing paragraph from :func:`claims`: how many of the paper's conclusions our numbers
    support per dataset, which do not hold, and (where chapter 07 measured it) how far FGSM, the paper's
    only attack, sits from the exact risk."""
    lines = []
    for ds, d in claims_table.groupby("dataset", sort=False):
        no = d.loc[~d["supported"], "claim"].tolist()
        lines.append(f"* {ds}, earlier sweep (descriptive): {int(d['supported'].sum())} of {len(d)} conclusions supported"
                     + (f"; not supported: {'; '.join(no)}." if no else "."))
    if exact_fgsm_gap:
        lines.append(f"* {exact_fgsm_gap}")
    return "\n".join(lines)


#: chapter 06's parameters (papermill, ``run -p``; checked before its kernel starts)
PARAMETERS: dict[str, Param] = {
    **common("smoke | cpu (committed) | paper"),
    "dataset": Param("all", choice(DATASETS + ("all",))),
    "eps": Param(0.0, number(0, zero_means_default=True), "FGSM radius"),
    "epochs": Param(0, whole(), "standard-training epochs; 0: the scale's default"),
    "adv_epochs": Param(0, whole(), "adversarial-training epochs; 0: the scale's default"),
    "architectures": Param("all", listing(is_architecture, "indices 0..39", ("all",))),
    "failure_mode": Param("sigmoid-sgd", choice(FAILURE_MODES)),
}


def check_parameters(v: dict) -> None:
    """FGSM's eps is an l_inf radius, bounded by each chosen dataset's images (0: the default)."""
    for dataset in DATASETS if v["dataset"] == "all" else (v["dataset"],):
        if v["eps"]:
            with_name("eps", v["eps"], lambda: check_dataset_eps(dataset, "linf", v["eps"]))


# ------------------------------------------------------------------------------------------------
# The glance page's rows (lossbook.publish.glance)
# ------------------------------------------------------------------------------------------------
#: the label of chapter 06's section testing the paper's conclusions, where the glance page's rows link
GLANCE_TARGET = "atras-claims"


#: the regime matches the paper's where the median clean accuracy and the median accuracy under FGSM
#: before adversarial training are both within this many points of the paper's tables (the paper's eps
#: was small: 92-95% of MNIST images survive it)
REGIME_TOLERANCE_PP = 10.0


def regime_gaps_pp(ours: pd.DataFrame, paper: pd.DataFrame, dataset: str) -> dict:
    """Median clean accuracy and median accuracy under FGSM before adversarial training, ours minus the
    paper's tables (pp)."""
    med = lambda df, col: 100 * df.loc[df["dataset"] == dataset, col].median()  # noqa: E731
    return {col: float(med(ours, col) - med(paper, col)) for col in ("test_acc", "acc_attacked_before_at")}


def glance_rows(scale: str) -> list[dict]:
    """The glance page's rows: each ATRAS claim per dataset, from the saved sweep; "not comparable" where
    our FGSM regime is more than :data:`REGIME_TOLERANCE_PP` from the paper's (a verdict there would not
    be about the paper's claim)."""
    rows, paper = [], paper_tables()
    for ds in ("mnist", "cifar10"):
        cfg = atras_config(ds, scale)
        df, tm = dataset_results(cfg, [list(a) for a in ARCHITECTURES], [], compute=False)
        if df is None or df.empty:
            continue
        gaps = regime_gaps_pp(df.assign(dataset=ds), paper, ds)
        comparable = max(map(abs, gaps.values())) <= REGIME_TOLERANCE_PP
        regime = (f"vs the paper's medians: clean {gaps['test_acc']:+.0f} pp, under FGSM before AT "
                  f"{gaps['acc_attacked_before_at']:+.0f} pp at eps {cfg.eps:.3g}")
        for _, c in claims(df, {ds: tm} if tm is not None else None).iterrows():
            no_number = c["claim"].startswith("FGSM examples")  # the paper reports no transfer numbers
            rows.append({"paper": "ATRAS", "claim": f"{c['claim']} ({ds})",
                         "the paper's number": "no number in the paper" if no_number else "stated, Tables I-II",
                         "ours": f"{c['evidence']} ({len(df)} MLPs, descriptive; {regime})", "scale": scale,
                         "verdict": NOT_COMPARABLE if not comparable else
                         "reproduced" if c["supported"] else "not reproduced"})
    return [{**row, "target": GLANCE_TARGET} for row in rows]
